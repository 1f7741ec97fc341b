//! `gustavo agent`: join a server and keep this device's containers as it wants them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
    let join_token = match (&cli.token, &args.token_file) {
        (Some(_), Some(_)) => {
            return Err(usage(
                "give the join token once: --token (GUSTAVO_TOKEN) or --token-file \
                 (GUSTAVO_TOKEN_FILE), not both"
                    .into(),
            ));
        }
        (Some(t), None) => {
            gustavo_model::access::JoinToken::parse(t)
                .map_err(|e| usage(format!("--token: {e}")))?;
            Some(t.clone())
        }
        (None, Some(p)) => Some(read_token_file(p)?),
        (None, None) => None,
    };
    let iface = &args.wireguard_interface;
    if iface.is_empty()
        || iface.len() > 15
        || !iface
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(usage(format!(
            "--wireguard-interface `{iface}`: a Linux interface name is 1-15 letters, digits, `-`, `_` or `.`"
        )));
    }
    if args.wireguard_port == 0 {
        return Err(usage("--wireguard-port must be 1-65535".into()));
    }
    Ok(AgentConfig {
        server,
        join_token,
        ca_pem,
        rotate: args.rotate,
        name,
        groups: args.groups.clone(),
        labels,
        data_dir,
        heartbeat,
        wait: std::time::Duration::from_secs(60),
        reconcile: ReconcileConfig {
            resync,
            ..ReconcileConfig::default()
        },
        allow_exec: args.allow_exec,
        stream: !args.no_stream,
        wireguard: gustavo_agent::wireguard::WireguardConfig {
            mode: if args.wireguard == "auto" {
                gustavo_agent::wireguard::TunnelMode::Host
            } else {
                gustavo_agent::wireguard::TunnelMode::Off
            },
            interface: iface.clone(),
            port: args.wireguard_port,
        },
    })
}

/// Why a secret file may not be used: readable or writable by anyone but its owner.
fn too_open(mode: u32) -> Option<String> {
    (mode & 0o077 != 0).then(|| {
        format!(
            "it is readable or writable by group or others (mode {:04o}); run chmod 600 on it",
            mode & 0o7777
        )
    })
}

/// Reads the join token from a file only its owner may read (a token in a world-readable
/// file is as public as one on the command line).
fn read_token_file(path: &Path) -> Result<String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let bad = |why: String| usage(format!("--token-file {}: {why}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let meta = file.metadata().map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if let Some(why) = too_open(meta.permissions().mode()) {
        return Err(bad(why));
    }
    // A token is under 200 bytes; read a little more to notice a wrong file.
    let mut text = String::new();
    file.take(4096)
        .read_to_string(&mut text)
        .map_err(|e| bad(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(bad("the file is empty".into()));
    }
    gustavo_model::access::JoinToken::parse(token).map_err(|e| bad(e.to_string()))?;
    Ok(token.to_string())
}

pub async fn run(cli: &Cli, args: &AgentArgs) -> Result<()> {
    let cfg = config(cli, args)?;
    listen_addr(args)?;
    let glances = args
        .glances_listen
        .as_deref()
        .map(glances_addr)
        .transpose()?;
    if args.print_config {
        outln!("{}", crate::config_file::print("agent"));
        return Ok(());
    }
    let listen = listen_addr(args)?;
    let peer_settings = peer_settings(args, &cfg)?;
    let runtime = Arc::new(DockerRuntime::connect().await?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let peer = match peer_settings {
        Some((mut settings, addr)) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Exit(EXIT_USAGE, format!("--peer-listen {addr}: {e}")))?;
            // The port peers are told: the bound one (`:0` picks a free one).
            settings.port = l.local_addr().map(|a| a.port()).unwrap_or(addr.port());
            let started = gustavo_agent::peer::start(settings, runtime.clone())
                .map_err(|e| Exit(EXIT_USAGE, format!("--peer: {e}")))?;
            let mut stop = stop_rx.clone();
            tokio::spawn(gustavo_server::serve::serve(
                l,
                gustavo_agent::peer::router(started.node.clone()),
                Some(started.tls),
                gustavo_server::Timeouts::default(),
                gustavo_server::conns::ConnTable::new(PEER_MAX_CONNECTIONS),
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            ));
            Some(started.node)
        }
        None => None,
    };
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
    // The groups joined are logged once the server has answered (a join token may bind them).
    tracing::info!(node = %cfg.name, server = %cfg.server, requested_groups = ?cfg.groups, "agent starting");
    if let Some(l) = listener {
        if let Ok(a) = l.local_addr() {
            tracing::info!("local listener on http://{a} (/health, /metrics)");
        }
        let router = gustavo_agent::http::router(gustavo_agent::http::Local {
            node: cfg.name.clone(),
            peer: peer.clone(),
        });
        serve_local(l, router, &stop_rx);
    }
    let (client_tx, client_rx) = tokio::sync::watch::channel(None);
    if let Some(text) = &args.samsung_listen {
        let addr: std::net::SocketAddr = text.parse().map_err(|e| {
            usage(format!(
                "--samsung-listen `{text}`: {e} (expected IP:PORT, e.g. 127.0.0.1:56001)"
            ))
        })?;
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Exit(EXIT_USAGE, format!("--samsung-listen {addr}: {e}")))?;
        if let Ok(a) = l.local_addr() {
            tracing::info!(
                "Samsung Edge Orchestration API on http://{a}/api/v1/orchestration/services"
            );
        }
        let router = gustavo_agent::samsung::router(
            gustavo_agent::samsung::SamsungConfig {
                token: args.samsung_token.clone(),
                images: args.samsung_images.clone(),
                native: args.samsung_native.clone(),
            },
            client_rx,
            peer.clone(),
        );
        serve_local(l, router, &stop_rx);
    }
    if let Some(addr) = glances {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Exit(EXIT_USAGE, format!("--glances-listen {addr}: {e}")))?;
        if let Ok(a) = l.local_addr() {
            tracing::info!("Glances-compatible API on http://{a}/api/4/ and /api/3/");
        }
        let router = gustavo_agent::glances::router(Some(runtime.docker()));
        serve_local(l, router, &stop_rx);
    }
    // A peer only (no --server): no control plane to join.
    let result = if peer.is_some() && cli.server.is_none() {
        super::shutdown_signal().await;
        Ok(())
    } else {
        gustavo_agent::run(
            cfg,
            runtime,
            Some(std::sync::Arc::new(client_tx)),
            super::shutdown_signal(),
        )
        .await
    };
    stop_tx.send_replace(true);
    result?;
    Ok(())
}

/// Serves one of the agent's local APIs until `stop` turns true. A local listener has a few
/// local callers: a small connection cap bounds its descriptors.
fn serve_local(
    l: tokio::net::TcpListener,
    router: axum::Router,
    stop: &tokio::sync::watch::Receiver<bool>,
) {
    let mut stop = stop.clone();
    tokio::spawn(gustavo_server::serve::serve(
        l,
        router,
        None,
        gustavo_server::Timeouts::default(),
        gustavo_server::conns::ConnTable::new(LOCAL_MAX_CONNECTIONS),
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
    ));
}

/// Peers call each other on the peer port; a LAN has few devices.
const PEER_MAX_CONNECTIONS: usize = 256;

/// `--peer` and its flags, checked before anything starts.
fn peer_settings(
    args: &AgentArgs,
    cfg: &AgentConfig,
) -> Result<Option<(gustavo_agent::peer::PeerSettings, std::net::SocketAddr)>> {
    if !args.peer {
        if !args.peer_static.is_empty() {
            return Err(usage("--peer-static needs --peer".into()));
        }
        return Ok(None);
    }
    // The cluster file is read before anything starts.
    let cluster = gustavo_agent::peer::cluster_file(&cfg.data_dir);
    let ca = gustavo_agent::peer::trust::ClusterCa::load(&cluster).map_err(|e| {
        usage(format!(
            "--peer: {e}; make a cluster with `gustavo peer init`, then `gustavo peer join FILE` on every device"
        ))
    })?;
    let addr: std::net::SocketAddr = args.peer_listen.parse().map_err(|e| {
        usage(format!(
            "--peer-listen `{}`: {e} (expected IP:PORT, e.g. 0.0.0.0:7422)",
            args.peer_listen
        ))
    })?;
    let mut static_peers = Vec::new();
    for p in &args.peer_static {
        let parsed = p.split_once('@').and_then(|(n, a)| {
            names::validate("node", n).ok()?;
            Some((n.to_string(), a.parse::<std::net::SocketAddr>().ok()?))
        });
        static_peers.push(parsed.ok_or_else(|| {
            usage(format!(
                "--peer-static `{p}`: expected NAME@IP:PORT, e.g. pi-2@192.168.1.12:7422"
            ))
        })?);
    }
    Ok(Some((
        gustavo_agent::peer::PeerSettings {
            node: cfg.name.clone(),
            ca,
            data_dir: cfg.data_dir.clone(),
            port: addr.port(),
            mdns: args.peer_mdns == "on",
            static_peers,
            images: args.samsung_images.clone(),
        },
        addr,
    )))
}

/// `--glances-listen`: IP:PORT, or an IP alone for Glances' port.
fn glances_addr(text: &str) -> Result<std::net::SocketAddr> {
    if let Ok(a) = text.parse() {
        return Ok(a);
    }
    let ip: std::net::IpAddr = text.trim_matches(['[', ']']).parse().map_err(|_| {
        usage(format!(
            "--glances-listen `{text}`: expected IP or IP:PORT, e.g. 127.0.0.1:{}",
            gustavo_agent::glances::DEFAULT_PORT
        ))
    })?;
    Ok(std::net::SocketAddr::new(
        ip,
        gustavo_agent::glances::DEFAULT_PORT,
    ))
}

/// Connections the agent's local listener holds at most.
const LOCAL_MAX_CONNECTIONS: usize = 64;

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

#[cfg(test)]
mod tests {
    use super::too_open;

    #[test]
    fn a_token_file_must_be_private() {
        assert_eq!(too_open(0o100600), None);
        assert_eq!(too_open(0o100400), None);
        let e = too_open(0o100644).unwrap();
        assert!(e.contains("0644") && e.contains("chmod 600"), "{e}");
        assert!(too_open(0o100660).is_some());
        assert!(too_open(0o100602).is_some());
    }
}
