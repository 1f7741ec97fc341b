//! `gustavo nodes list|remove`.

use anyhow::Result;

use crate::cli::{Cli, Format, NodesCmd};
use crate::connect;
use crate::output::{ago, changed, data, show};

pub async fn run(cli: &Cli, cmd: &NodesCmd) -> Result<()> {
    let client = connect::client(cli)?;
    match cmd {
        NodesCmd::List => {
            let nodes = client.list_nodes(None, None).await?;
            let rows = nodes
                .iter()
                .map(|n| {
                    vec![
                        n.name.clone(),
                        n.status.as_str().into(),
                        n.groups.join(","),
                        n.labels
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(","),
                        format!("{} cpu / {} MB", n.cpus, n.memory_mb),
                        ago(n.last_seen),
                    ]
                })
                .collect();
            show(
                cli.output,
                &nodes,
                &[
                    "node",
                    "status",
                    "groups",
                    "labels",
                    "capacity",
                    "last seen",
                ],
                rows,
            );
        }
        NodesCmd::Remove { name } => {
            let revision = client.delete_node(name).await?;
            match cli.output {
                Format::Table => changed("node", name, "removed", revision),
                f => data(
                    f,
                    &serde_json::json!({"removed": name, "revision": revision}),
                ),
            }
        }
    }
    Ok(())
}
