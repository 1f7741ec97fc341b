//! `gustavo rollouts get|pause|resume|abort APP`: staged rollouts of apps with a
//! `rollout:` block.

use anyhow::Result;
use gustavo_model::api::Rollout;

use crate::cli::{Cli, Format, RolloutsCmd};
use crate::connect;
use crate::output::{data, show};

/// The rollout as a few lines and a table of devices.
fn print(format: Format, r: &Rollout) -> Result<()> {
    let Some(st) = &r.staged else {
        return print_plain(format, r);
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

/// An app without a `rollout:` block: every device takes a change at once, and this is
/// where each one stands with the current revision (or the deletion).
fn print_plain(format: Format, r: &Rollout) -> Result<()> {
    if format != Format::Table {
        data(format, r);
        return Ok(());
    }
    let failed = r.failed().count();
    outln!(
        "{}: revision {}{} on every device at once (no rollout: block), {} of {} device(s) {}{}",
        r.app,
        r.revision,
        if r.exists { "" } else { " (deleted)" },
        r.converged_count(),
        r.nodes.len(),
        if r.exists { "run it" } else { "clear" },
        if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        }
    );
    let rows = r
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.node.clone(),
                n.node_status.as_str().into(),
                if n.converged { "yes" } else { "no" }.into(),
                n.state
                    .map(|s| format!("{s:?}").to_lowercase())
                    .unwrap_or_else(|| "-".into()),
                format!("{}/{}", n.ready, n.desired),
                n.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    show(
        format,
        &r.nodes,
        &["node", "status", "has it", "app state", "ready", "error"],
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
