//! `gustavo peer init|join|list`.

use std::path::Path;

use anyhow::Result;
use gustavo_agent::peer::{PeerView, cluster_file, trust::ClusterCa};

use crate::cli::{Cli, PeerCmd};
use crate::output::{data, show};
use crate::{EXIT_USAGE, Exit};

pub async fn run(cli: &Cli, cmd: &PeerCmd) -> Result<()> {
    match cmd {
        PeerCmd::Init { out } => {
            if out.exists() {
                return Err(Exit(
                    EXIT_USAGE,
                    format!(
                        "{} exists: a new cluster would lock its devices out; remove it first",
                        out.display()
                    ),
                )
                .into());
            }
            let ca = ClusterCa::generate().map_err(|e| Exit(1, e))?;
            write_private(out, &ca.to_pem())?;
            outln!(
                "peer cluster {} written to {} (keep it secret: it admits devices)",
                &ca.fingerprint()[..16],
                out.display()
            );
            Ok(())
        }
        PeerCmd::Join { file, data_dir } => {
            let ca = ClusterCa::load(file).map_err(|e| Exit(EXIT_USAGE, e))?;
            let dir = data_dir.clone().unwrap_or_else(|| {
                crate::connect::default_data_dir().with_file_name("gustavo-agent")
            });
            let target = cluster_file(&dir);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Exit(1, format!("{}: {e}", parent.display())))?;
            }
            write_private(&target, &ca.to_pem())?;
            outln!(
                "joined peer cluster {}: {} (restart the agent with --peer)",
                &ca.fingerprint()[..16],
                target.display()
            );
            Ok(())
        }
        PeerCmd::List { agent } => {
            let url = format!("http://{agent}/peers");
            let r = reqwest::get(&url)
                .await
                .map_err(|e| Exit(1, format!("cannot reach the agent at {agent}: {e}")))?;
            if !r.status().is_success() {
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                return Err(Exit(
                    1,
                    body["message"]
                        .as_str()
                        .unwrap_or("the agent refused")
                        .to_string(),
                )
                .into());
            }
            let peers: Vec<PeerView> = r
                .json()
                .await
                .map_err(|e| Exit(1, format!("the agent's answer: {e}")))?;
            if cli.output != crate::cli::Format::Table {
                data(cli.output, &peers);
                return Ok(());
            }
            let rows = peers
                .iter()
                .map(|p| {
                    vec![
                        p.node.clone(),
                        p.state.clone(),
                        p.address.clone(),
                        p.score.map(|s| format!("{s:.2}")).unwrap_or("-".into()),
                        match p.last_seen_s {
                            0 => "now".into(),
                            u64::MAX => "never".into(),
                            s => format!("{s}s ago"),
                        },
                    ]
                })
                .collect();
            show(
                cli.output,
                &peers,
                &["node", "state", "address", "score", "last seen"],
                rows,
            );
            Ok(())
        }
    }
}

/// Writes a secret file readable by its owner only (atomically).
fn write_private(path: &Path, text: &str) -> Result<()> {
    gustavo_server::auth::write_private(path, text)
        .map_err(|e| Exit(1, format!("{}: {e}", path.display())).into())
}
