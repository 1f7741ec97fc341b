//! `gustavo cache hosts|vitals|containers [-d GROUP] [-h HOSTS]`: what the devices report.
//! `-h` takes a host list (`red[01-05],blue`): one name is filtered by the server, several
//! are filtered here.

use std::collections::HashSet;

use anyhow::Result;

use crate::cli::{CacheCmd, CacheFilter, Cli};
use crate::connect;
use crate::output::{ago, duration, last_seen, rate, show};

/// The `-h` host list: the one name to ask the server for, or the set to keep of all it sends.
struct Hosts {
    one: Option<String>,
    many: Option<HashSet<String>>,
}

impl Hosts {
    fn of(f: &CacheFilter) -> Result<Hosts> {
        let Some(list) = &f.host else {
            return Ok(Hosts {
                one: None,
                many: None,
            });
        };
        let mut names = gustavo_model::hostlist::expand(list)
            .map_err(|e| crate::Exit(crate::EXIT_USAGE, format!("-h: {e}")))?;
        Ok(if names.len() == 1 {
            Hosts {
                one: names.pop(),
                many: None,
            }
        } else {
            Hosts {
                one: None,
                many: Some(names.into_iter().collect()),
            }
        })
    }
    fn keep(&self, name: &str) -> bool {
        self.many.as_ref().is_none_or(|m| m.contains(name))
    }
}

pub async fn run(cli: &Cli, cmd: &CacheCmd) -> Result<()> {
    let client = connect::client(cli)?;
    match cmd {
        CacheCmd::Hosts(f) => {
            let h = Hosts::of(f)?;
            let mut nodes = client
                .list_nodes(f.group.as_deref(), h.one.as_deref())
                .await?;
            nodes.retain(|n| h.keep(&n.name));
            let rows = nodes
                .iter()
                .map(|n| {
                    vec![
                        n.name.clone(),
                        n.status.as_str().into(),
                        last_seen(n.last_seen),
                        n.address.clone(),
                        n.groups.join(","),
                        n.agent_version.clone(),
                    ]
                })
                .collect();
            show(
                cli.output,
                &nodes,
                &["host", "status", "last seen", "address", "groups", "agent"],
                rows,
            );
        }
        CacheCmd::Vitals(f) => {
            let h = Hosts::of(f)?;
            let mut vitals = client.vitals(f.group.as_deref(), h.one.as_deref()).await?;
            vitals.retain(|v| h.keep(&v.node));
            let rows = vitals
                .iter()
                .map(|nv| match &nv.vitals {
                    Some(v) => vec![
                        nv.node.clone(),
                        nv.status.as_str().into(),
                        format!("{:.1}% of {}", v.cpu_percent, v.cpus),
                        format!("{}/{} MB", v.memory_used_mb, v.memory_total_mb),
                        format!(
                            "{:.1}/{:.1} GB",
                            v.disk_used_mb as f64 / 1024.0,
                            v.disk_total_mb as f64 / 1024.0
                        ),
                        format!("{:.2} {:.2} {:.2}", v.load1, v.load5, v.load15),
                        format!("rx {} tx {}", rate(v.net_rx_bps), rate(v.net_tx_bps)),
                        duration(v.uptime_s),
                    ],
                    None => vec![
                        nv.node.clone(),
                        nv.status.as_str().into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                    ],
                })
                .collect();
            show(
                cli.output,
                &vitals,
                &[
                    "host", "status", "cpu", "memory", "disk", "load", "net", "uptime",
                ],
                rows,
            );
        }
        CacheCmd::Containers(f) => {
            let h = Hosts::of(f)?;
            let mut rows_in = client
                .containers(f.group.as_deref(), h.one.as_deref())
                .await?;
            rows_in.retain(|r| h.keep(&r.node));
            let rows = rows_in
                .iter()
                .map(|r| {
                    let c = &r.container;
                    let mut state = match &c.health {
                        Some(h) => format!("{} ({h})", c.state),
                        None => c.state.clone(),
                    };
                    if let Some(code) = c.exit_code {
                        state.push_str(&format!(", exit {code}"));
                    }
                    if c.restarts > 0 {
                        state.push_str(&format!(", {} restarts", c.restarts));
                    }
                    vec![
                        r.node.clone(),
                        c.app.clone(),
                        c.name.clone(),
                        c.image.clone(),
                        state,
                        if c.since == 0 {
                            "-".into()
                        } else {
                            ago(c.since)
                        },
                        c.error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            show(
                cli.output,
                &rows_in,
                &[
                    "host",
                    "app",
                    "container",
                    "image",
                    "state",
                    "since",
                    "error",
                ],
                rows,
            );
        }
    }
    Ok(())
}
