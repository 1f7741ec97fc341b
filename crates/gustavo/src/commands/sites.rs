//! `gustavo sites import|list|delete`.

use anyhow::{Context, Result};
use gustavo_model::compat::sinfonia::parse_cloudlets;

use crate::cli::{Cli, Format, SitesCmd};
use crate::output::{changed, data, show};
use crate::{EXIT_USAGE, Exit, connect};

pub async fn run(cli: &Cli, cmd: &SitesCmd) -> Result<()> {
    match cmd {
        SitesCmd::Import { file } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            // The whole file is checked before anything is sent.
            let sites = parse_cloudlets(&text)
                .map_err(|e| Exit(EXIT_USAGE, format!("{}: {e}", file.display())))?;
            let client = connect::client(cli)?;
            let mut out = Vec::new();
            for site in &sites {
                let v = client
                    .put_site(site)
                    .await
                    .with_context(|| format!("site `{}`", site.name))?;
                if cli.output == Format::Table {
                    changed("site", &site.name, "set", Some(v.site.revision));
                }
                out.push(v);
            }
            if cli.output != Format::Table {
                data(cli.output, &out);
            }
            Ok(())
        }
        SitesCmd::List => {
            let client = connect::client(cli)?;
            let sites = client.list_sites().await?;
            let rows = sites
                .iter()
                .map(|s| {
                    let ratio = |k: &str| {
                        s.live
                            .get(k)
                            .map(|v| format!("{:.0}%", v * 100.0))
                            .unwrap_or_else(|| "-".into())
                    };
                    vec![
                        s.site.name.clone(),
                        match (&s.site.node, &s.site.group) {
                            (Some(n), _) => format!("node {n}"),
                            (None, Some(g)) => format!("group {g}"),
                            _ => "-".into(),
                        },
                        s.nodes
                            .iter()
                            .map(|n| {
                                format!("{}{}", n.name, if n.ready { "" } else { " (offline)" })
                            })
                            .collect::<Vec<_>>()
                            .join(","),
                        s.site
                            .locations
                            .iter()
                            .map(|l| format!("{},{}", l.lat, l.lon))
                            .collect::<Vec<_>>()
                            .join(" "),
                        s.site
                            .local_networks
                            .iter()
                            .map(|n| n.to_string())
                            .collect::<Vec<_>>()
                            .join(","),
                        ratio("cpu_ratio"),
                        ratio("mem_ratio"),
                        s.deployments.to_string(),
                    ]
                })
                .collect();
            show(
                cli.output,
                &sites,
                &[
                    "site",
                    "is",
                    "nodes",
                    "locations",
                    "local networks",
                    "cpu",
                    "mem",
                    "deployments",
                ],
                rows,
            );
            Ok(())
        }
        SitesCmd::Delete { name } => {
            connect::client(cli)?.delete_site(name).await?;
            changed("site", name, "deleted", None);
            Ok(())
        }
    }
}
