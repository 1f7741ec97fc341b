//! `gustavo rollouts get|pause|resume|abort APP`: staged rollouts of apps with a
//! `rollout:` block.

use anyhow::Result;
use gustavo_model::api::Rollout;

use crate::cli::{Cli, Format, RolloutsCmd};
use crate::output::{data, show};
use crate::{Exit, connect};

/// The rollout as a few lines and a table of devices.
fn print(format: Format, r: &Rollout) -> Result<()> {
    let Some(st) = &r.staged else {
        if format != Format::Table {
            data(format, r);
            return Ok(());
        }
        return Err(Exit(
            1,
            format!(
                "app `{}` has no staged rollout (add a rollout: block to its spec); \
                 `gustavo apps get {}` shows where its devices are",
                r.app, r.app
            ),
        )
        .into());
    };
    if format != Format::Table {
        data(format, r);
        return Ok(());
    }
    let rec = &st.record;
    let from = rec.from.revision;
    outln!(
        "{}: revision {} (from {from}) {}, wave {}",
        r.app,
        rec.to_revision,
        rec.state.as_str(),
        rec.wave
    );
    let count = |s: &str| st.devices.iter().filter(|d| d.state == s).count();
    outln!(
        "devices: {} done, {} updating, {} failed, {} waiting, {} offline (of {})",
        count("done"),
        count("updating"),
        count("failed"),
        count("waiting"),
        count("offline"),
        st.devices.len()
    );
    if let Some(why) = &rec.reason {
        outln!("reason: {why}");
    }
    let rows = st
        .devices
        .iter()
        .map(|d| {
            vec![
                d.node.clone(),
                if d.wave == 0 {
                    "-".into()
                } else {
                    d.wave.to_string()
                },
                d.state.clone(),
                d.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    show(
        format,
        &st.devices,
        &["node", "wave", "state", "error"],
        rows,
    );
    Ok(())
}

pub async fn run(cli: &Cli, cmd: &RolloutsCmd) -> Result<()> {
    let client = connect::client(cli)?;
    let (name, action) = match cmd {
        RolloutsCmd::Get { name } => (name.get(), None),
        RolloutsCmd::Pause { name } => (name.get(), Some("pause")),
        RolloutsCmd::Resume { name } => (name.get(), Some("resume")),
        RolloutsCmd::Abort { name } => (name.get(), Some("abort")),
    };
    let r = match action {
        None => client.rollout(name).await?,
        Some(a) => client.rollout_action(name, a).await?,
    };
    print(cli.output, &r)
}
