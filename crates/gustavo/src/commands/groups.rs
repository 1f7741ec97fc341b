//! `gustavo groups list|get|delete|set-pressure|clear-pressure`.

use anyhow::Result;

use crate::cli::{Cli, Format, GroupsCmd};
use crate::connect;
use crate::output::{changed, data, show};

pub async fn run(cli: &Cli, cmd: &GroupsCmd) -> Result<()> {
    let client = connect::client(cli)?;
    let groups = match cmd {
        GroupsCmd::List => client.list_groups().await?,
        GroupsCmd::Get { name } => {
            let g = client.get_group(name.get()).await?;
            if cli.output != Format::Table {
                data(cli.output, &g);
                return Ok(());
            }
            vec![g]
        }
        GroupsCmd::SetPressure { name, settings } => {
            let t = gustavo_model::pressure::Thresholds::parse(settings)
                .map_err(|e| crate::Exit(crate::EXIT_USAGE, e.to_string()))?;
            let revision = client.set_group_pressure(name.get(), Some(&t)).await?;
            return pressure_changed(cli, name.get(), Some(&t), revision);
        }
        GroupsCmd::ClearPressure { name } => {
            let revision = client.set_group_pressure(name.get(), None).await?;
            return pressure_changed(cli, name.get(), None, revision);
        }
        GroupsCmd::Delete { name } => {
            let name = name.get();
            let revision = client.delete_group(name).await?;
            match cli.output {
                Format::Table => changed("group", name, "deleted", Some(revision)),
                f => data(
                    f,
                    &serde_json::json!({"deleted": name, "revision": revision}),
                ),
            }
            return Ok(());
        }
    };
    let rows = groups
        .iter()
        .map(|g| {
            vec![
                g.name.clone(),
                g.apps.join(","),
                g.nodes.join(","),
                g.revision.to_string(),
                g.pressure
                    .as_ref()
                    .map(|t| t.describe())
                    .unwrap_or_else(|| "server's".into()),
            ]
        })
        .collect();
    show(
        cli.output,
        &groups,
        &["group", "apps", "devices", "revision", "pressure"],
        rows,
    );
    Ok(())
}

fn pressure_changed(
    cli: &Cli,
    name: &str,
    t: Option<&gustavo_model::pressure::Thresholds>,
    revision: u64,
) -> Result<()> {
    match cli.output {
        Format::Table => {
            let what = match t {
                Some(t) => format!("pressure set to {}", t.describe()),
                None => "pressure cleared (the server's thresholds apply)".into(),
            };
            changed("group", name, &what, Some(revision));
        }
        f => data(
            f,
            &serde_json::json!({"group": name, "pressure": t, "revision": revision}),
        ),
    }
    Ok(())
}
