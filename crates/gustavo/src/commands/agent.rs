//! `gustavo agent`: join a server and keep this device's containers as it wants them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use gustavo_agent::AgentConfig;
use gustavo_agent::docker::DockerRuntime;
use gustavo_agent::reconcile::ReconcileConfig;
use gustavo_model::names;

use crate::cli::{AgentArgs, Cli};
use crate::connect::{host_name, normalize_server};
use crate::output::parse_duration;
use crate::{EXIT_USAGE, Exit};

fn usage(msg: String) -> anyhow::Error {
    Exit(EXIT_USAGE, msg).into()
}

/// Checks every setting before anything starts.
pub fn config(cli: &Cli, args: &AgentArgs) -> Result<AgentConfig> {
    let name = args.name.clone().unwrap_or_else(host_name);
    names::validate("node", &name).map_err(|e| usage(format!("--name: {e}")))?;
    for g in &args.groups {
        names::validate("group", g).map_err(|e| usage(format!("--group: {e}")))?;
    }
    let mut labels = BTreeMap::new();
    for l in &args.labels {
        let (k, v) = l
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| usage(format!("--label `{l}`: expected key=value")))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| crate::connect::default_data_dir().with_file_name("gustavo-agent"));
    let heartbeat = parse_duration("heartbeat", &args.heartbeat)?;
    let resync = parse_duration("resync", &args.resync)?;
    if heartbeat.is_zero() || resync.is_zero() {
        return Err(usage("--heartbeat and --resync must be above zero".into()));
    }
    let ca_pem = match &cli.ca_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| usage(format!("--ca-file: cannot read {}: {e}", p.display())))?,
        ),
        None => None,
    };
    let server = cli
        .server
        .as_deref()
        .map(normalize_server)
        .unwrap_or_else(|| crate::connect::DEFAULT_SERVER.to_string());
    if let Some(t) = &cli.token {
        gustavo_model::access::JoinToken::parse(t).map_err(|e| usage(format!("--token: {e}")))?;
    }
    Ok(AgentConfig {
        server,
        join_token: cli.token.clone(),
        ca_pem,
        rotate: args.rotate,
        name,
        groups: args.groups.clone(),
        labels,
        data_dir,
        heartbeat,
        wait: std::time::Duration::from_secs(30),
        reconcile: ReconcileConfig {
            resync,
            ..ReconcileConfig::default()
        },
    })
}

pub async fn run(cli: &Cli, args: &AgentArgs) -> Result<()> {
    let cfg = config(cli, args)?;
    if args.print_config {
        println!("{}", crate::config_file::print("agent"));
        return Ok(());
    }
    let runtime = Arc::new(DockerRuntime::connect().await?);
    tracing::info!(node = %cfg.name, server = %cfg.server, groups = ?cfg.groups, "agent starting");
    gustavo_agent::run(cfg, runtime, super::shutdown_signal()).await?;
    Ok(())
}

/// The data dir of the agent the server runs for its own machine.
pub fn local_data_dir(server_data_dir: &std::path::Path) -> PathBuf {
    server_data_dir.join("agent")
}
