//! `gustavo groups list|get|delete`.

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
            ]
        })
        .collect();
    show(
        cli.output,
        &groups,
        &["group", "apps", "devices", "revision"],
        rows,
    );
    Ok(())
}
