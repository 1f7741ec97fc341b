//! `gustavo groups list|get`.

use anyhow::Result;

use crate::cli::{Cli, Format, GroupsCmd};
use crate::connect;
use crate::output::show;

pub async fn run(cli: &Cli, cmd: &GroupsCmd) -> Result<()> {
    let client = connect::client(cli)?;
    let groups = match cmd {
        GroupsCmd::List => client.list_groups().await?,
        GroupsCmd::Get { name } => {
            let g = client.get_group(name).await?;
            if cli.output == Format::Json {
                crate::output::json(&g);
                return Ok(());
            }
            vec![g]
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
