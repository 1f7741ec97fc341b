//! `gustavo nodes list|get|import|remove|score|cordon|drain|uncordon`.

use anyhow::Result;

use crate::cli::{Cli, Format, NodesCmd};
use crate::connect;
use crate::output::{ago, changed, confirm, data, last_seen, show};

pub async fn run(cli: &Cli, cmd: &NodesCmd) -> Result<()> {
    if let NodesCmd::Import { file, pressure } = cmd {
        return import(cli, file, pressure.as_deref()).await;
    }
    let client = connect::client(cli)?;
    match cmd {
        NodesCmd::Import { .. } => unreachable!("handled above"),
        NodesCmd::List => {
            let nodes = client.list_nodes(None, None).await?;
            let rows = nodes
                .iter()
                .map(|n| {
                    vec![
                        n.name.clone(),
                        if n.draining {
                            format!("{} (draining)", n.status.as_str())
                        } else if n.cordoned {
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
                        last_seen(n.last_seen),
                        n.pressure
                            .as_ref()
                            .map(|p| p.summary())
                            .unwrap_or_else(|| "-".into()),
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
                    "pressure",
                ],
                rows,
            );
        }
        NodesCmd::Get { name } => {
            let nodes = client.list_nodes(None, Some(name)).await?;
            let Some(n) = nodes.into_iter().find(|n| &n.name == name) else {
                anyhow::bail!("no node named `{name}`");
            };
            match cli.output {
                Format::Table => print_node(&n),
                f => data(f, &n),
            }
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
            let action = if on { "cordon" } else { "uncordon" };
            let revision = client.cordon(name, action).await?;
            let what = if on { "cordoned" } else { "uncordoned" };
            match cli.output {
                Format::Table => changed("node", name, what, Some(revision)),
                f => data(
                    f,
                    &serde_json::json!({"node": name, "cordoned": on, "revision": revision}),
                ),
            }
        }
        NodesCmd::Drain {
            name,
            wait,
            timeout,
        } => {
            let timeout = crate::output::parse_duration("timeout", timeout)?;
            let revision = client.cordon(name, "drain").await?;
            match cli.output {
                Format::Table => changed("node", name, "draining", Some(revision)),
                f => data(
                    f,
                    &serde_json::json!({"node": name, "draining": true, "revision": revision}),
                ),
            }
            if *wait {
                wait_drained(&client, name, timeout).await?;
            }
        }
        NodesCmd::Remove { name, yes } => {
            if !yes
                && !confirm(&format!(
                    "About to remove device {name}: its credential stops working at once and its \
                     replicas are placed elsewhere; continue?"
                ))
            {
                return Err(crate::Exit(1, "cancelled".into()).into());
            }
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

/// Waits until no replicated app has a replica (or a copy being handed off) on `node`.
async fn wait_drained(
    client: &gustavo_client::Client,
    node: &str,
    timeout: std::time::Duration,
) -> Result<()> {
    let start = std::time::Instant::now();
    loop {
        let apps = client.list_apps().await?;
        let left: Vec<String> = apps
            .iter()
            .filter(|a| {
                a.placements
                    .values()
                    .chain(a.handoff.values())
                    .any(|n| n == node)
            })
            .map(|a| a.name.clone())
            .collect();
        if left.is_empty() {
            eprintln!("{node}: drained ({:.1}s)", start.elapsed().as_secs_f64());
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(crate::Exit(
                1,
                format!(
                    "{node}: still runs replicas of {} after {}s (can another node take them?)",
                    left.join(", "),
                    timeout.as_secs()
                ),
            )
            .into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// `nodes import nodes.yaml`: the whole file is checked before anything is sent.
async fn import(cli: &Cli, file: &std::path::Path, pressure: Option<&str>) -> Result<()> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let usage = |e: String| crate::Exit(crate::EXIT_USAGE, e);
    let hosts = gustavo_model::watched::parse_nodes_yaml(&text)
        .map_err(|e| usage(format!("{}: {e}", file.display())))?;
    let pressure = pressure
        .map(gustavo_model::pressure::Thresholds::parse)
        .transpose()
        .map_err(|e| usage(format!("--pressure: {e}")))?;
    let client = connect::client(cli)?;
    let req = gustavo_model::watched::ImportRequest { hosts, pressure };
    let r = client.import_watched(&req).await?;
    match cli.output {
        Format::Table => {
            for n in &r.added {
                changed("node", n, "watched through Glances", Some(r.revision));
            }
            for n in &r.updated {
                changed("node", n, "updated", Some(r.revision));
            }
            let same = req.hosts.len() - r.added.len() - r.updated.len();
            if same > 0 {
                outln!("{same} host(s) unchanged");
            }
        }
        f => data(f, &r),
    }
    Ok(())
}

/// `nodes get` as a person reads it.
fn print_node(n: &gustavo_model::api::Node) {
    let mut lines = vec![
        ("node", n.name.clone()),
        ("status", n.status.as_str().to_string()),
        (
            "groups",
            if n.groups.is_empty() {
                "- (none: nothing is placed here)".into()
            } else {
                n.groups.join(",")
            },
        ),
        ("address", n.address.clone()),
        ("agent", n.agent_version.clone()),
        ("capacity", format!("{} cpu / {} MB", n.cpus, n.memory_mb)),
        ("last seen", last_seen(n.last_seen)),
        ("applied revision", n.applied_revision.to_string()),
    ];
    if n.cordoned || n.draining {
        let what = if n.draining { "draining" } else { "cordoned" };
        lines.push(("scheduling", what.into()));
    }
    match &n.pressure {
        None if n.pressure_watched => lines.push(("pressure", "on, nothing reported yet".into())),
        None => lines.push(("pressure", "off".into())),
        Some(p) => {
            lines.push(("pressure", format!("{} since {}", p.level, ago(p.since))));
            if let Some(r) = &p.reason {
                lines.push((
                    "why",
                    format!(
                        "{} {:.1} over {} (since {})",
                        r.metric,
                        r.value,
                        r.threshold,
                        ago(r.since)
                    ),
                ));
            }
            if !p.throttled.is_empty() {
                lines.push(("throttled", p.throttled.join(", ")));
            }
            if !p.stopped.is_empty() {
                lines.push(("stopped", p.stopped.join(", ")));
            }
        }
    }
    for (k, v) in lines {
        outln!("{:<17} {v}", format!("{k}:"));
    }
}
