//! `gustavo events [--follow] [--after ID]`: the control plane's event log.

use std::time::Duration;

use anyhow::Result;
use gustavo_model::api::Event;

use crate::cli::{Cli, Format};
use crate::connect;
use crate::output::{ago, show};

/// How long one long-poll waits when following.
const WAIT: Duration = Duration::from_secs(30);

fn rows(events: &[Event]) -> Vec<Vec<String>> {
    events
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                ago(e.at),
                e.kind.clone(),
                e.object.clone(),
                e.message.clone(),
            ]
        })
        .collect()
}

const HEADER: &[&str] = &["id", "when", "kind", "object", "event"];

pub async fn run(cli: &Cli, follow: bool, after: u64) -> Result<()> {
    let client = connect::client(cli)?;
    let events = client.events(after, Duration::ZERO).await?;
    if !follow {
        show(cli.output, &events, HEADER, rows(&events));
        return Ok(());
    }
    // Following: one line per event (one JSON object per line with -o json), as they come.
    let print = |events: &[Event]| {
        for e in events {
            match cli.output {
                Format::Table => outln!(
                    "{:>6}  {}  {:<9}  {:<24}  {}",
                    e.id,
                    ago(e.at),
                    e.kind,
                    e.object,
                    e.message
                ),
                _ => outln!(
                    "{}",
                    serde_json::to_string(e).expect("events always serialize")
                ),
            }
        }
    };
    print(&events);
    let mut last = events.last().map(|e| e.id).unwrap_or(after);
    loop {
        match client.events(last, WAIT).await {
            Ok(new) => {
                // A restarted server starts a new log: its ids start again from 1.
                if new.first().is_some_and(|e| e.id <= last) {
                    eprintln!("(the server restarted: a new event log)");
                }
                print(&new);
                last = new.last().map(|e| e.id).unwrap_or(last);
            }
            Err(e) => {
                eprintln!("{e}; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}
