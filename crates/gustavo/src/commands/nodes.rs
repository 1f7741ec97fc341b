//! `gustavo nodes list|remove|score|cordon|uncordon`.

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
                        if n.cordoned {
                            format!("{} (cordoned)", n.status.as_str())
                        } else {
                            n.status.as_str().into()
                        },
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
        NodesCmd::Score { app } => {
            let scores = client.scores(app.as_deref()).await?;
            let rows = scores
                .iter()
                .map(|s| {
                    vec![
                        s.node.clone(),
                        format!("{:.2}", s.total),
                        format!("{:.2}", s.free_cores),
                        format!("{:.2}", s.free_memory_gb),
                        format!("{:.1}", s.free_disk_gb),
                        s.ineligible.clone().unwrap_or_else(|| "yes".into()),
                    ]
                })
                .collect();
            show(
                cli.output,
                &scores,
                &[
                    "node",
                    "score",
                    "free cores",
                    "free mem GB",
                    "free disk GB",
                    "eligible",
                ],
                rows,
            );
        }
        NodesCmd::Cordon { name } | NodesCmd::Uncordon { name } => {
            let on = matches!(cmd, NodesCmd::Cordon { .. });
            let revision = client.cordon(name, on).await?;
            let what = if on { "cordoned" } else { "uncordoned" };
            match cli.output {
                Format::Table => changed("node", name, what, Some(revision)),
                f => data(
                    f,
                    &serde_json::json!({"node": name, "cordoned": on, "revision": revision}),
                ),
            }
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
