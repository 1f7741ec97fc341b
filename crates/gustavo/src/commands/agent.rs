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
    listen_addr(args)?;
    if args.print_config {
        println!("{}", crate::config_file::print("agent"));
        return Ok(());
    }
    let listen = listen_addr(args)?;
    let runtime = Arc::new(DockerRuntime::connect().await?);
    let listener = match listen {
        Listen::Off => None,
        Listen::At(addr, explicit) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) if explicit => {
                return Err(Exit(EXIT_USAGE, format!("--listen {addr}: {e}")).into());
            }
            // The default port may be taken (a second agent on one machine): the agent's
            // real work goes on without its local listener.
            Err(e) => {
                tracing::warn!(%addr, error = %e, "local listener not started (set --listen to another address, or off)");
                None
            }
        },
    };
    tracing::info!(node = %cfg.name, server = %cfg.server, groups = ?cfg.groups, "agent starting");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(l) = listener {
        if let Ok(a) = l.local_addr() {
            tracing::info!("local listener on http://{a} (/health, /metrics)");
        }
        let router = gustavo_agent::http::router(gustavo_agent::http::Local {
            node: cfg.name.clone(),
        });
        let mut stop = stop_rx.clone();
        tokio::spawn(gustavo_server::serve::serve(
            l,
            router,
            None,
            gustavo_server::Timeouts::default(),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ));
    }
    let result = gustavo_agent::run(cfg, runtime, super::shutdown_signal()).await;
    stop_tx.send_replace(true);
    result?;
    Ok(())
}

enum Listen {
    Off,
    /// The address, and whether it was asked for (not the default).
    At(std::net::SocketAddr, bool),
}

fn listen_addr(args: &AgentArgs) -> Result<Listen> {
    let (text, explicit) = match &args.listen {
        Some(t) => (t.as_str(), true),
        None => (gustavo_agent::http::DEFAULT_LISTEN, false),
    };
    if text == "off" {
        return Ok(Listen::Off);
    }
    let addr = text
        .parse()
        .map_err(|e| usage(format!("--listen `{text}`: {e} (expected IP:PORT or off)")))?;
    Ok(Listen::At(addr, explicit))
}

/// The data dir of the agent the server runs for its own machine.
pub fn local_data_dir(server_data_dir: &std::path::Path) -> PathBuf {
    server_data_dir.join("agent")
}
