//! `gustavo audit [--since] [--user] [--object]`: the audit log.

use anyhow::Result;
use gustavo_client::security::AuditFilter;

use crate::cli::{AuditArgs, Cli};
use crate::connect;
use crate::output::{ago, now, parse_duration, show};

pub async fn run(cli: &Cli, args: &AuditArgs) -> Result<()> {
    let client = connect::client(cli)?;
    // `--since 1h` is relative; a bare large number is Unix seconds.
    let since = match args.since.as_deref() {
        None => None,
        Some(s) => match s.parse::<u64>() {
            Ok(n) if n > 1_000_000_000 => Some(n),
            _ => Some(now().saturating_sub(parse_duration("since", s)?.as_secs())),
        },
    };
    let entries = client
        .audit(&AuditFilter {
            since,
            user: args.user.clone(),
            object: args.object.clone(),
            limit: Some(args.limit),
        })
        .await?;
    let rows = entries
        .iter()
        .map(|e| {
            vec![
                ago(e.at),
                e.actor.clone(),
                e.address.clone(),
                e.action.clone(),
                e.object.clone(),
                e.revision.map(|r| r.to_string()).unwrap_or_default(),
                if e.allowed { "allowed" } else { "refused" }.to_string(),
                e.status.to_string(),
                e.detail.clone(),
            ]
        })
        .collect();
    show(
        cli.output,
        &entries,
        &[
            "when", "who", "from", "what", "object", "revision", "result", "status", "detail",
        ],
        rows,
    );
    Ok(())
}
