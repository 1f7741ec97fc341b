//! `gustavo server`: the control plane, plus an agent for this machine so one command gives
//! a working cluster (as k3s does).

use std::sync::Arc;

use anyhow::{Context, Result};
use gustavo_agent::AgentConfig;
use gustavo_agent::docker::DockerRuntime;
use gustavo_agent::reconcile::ReconcileConfig;
use gustavo_client::config::ClientFile;
use gustavo_model::names;
use gustavo_server::{Server, ServerConfig, Timeouts, TlsMode};

use crate::cli::{Cli, ServerArgs};
use crate::connect::{default_data_dir, host_name};
use crate::{EXIT_USAGE, Exit};

pub async fn run(_cli: &Cli, args: &ServerArgs) -> Result<()> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let agent_name = args.agent_name.clone().unwrap_or_else(host_name);
    if !args.no_agent {
        names::validate("node", &agent_name)
            .map_err(|e| Exit(EXIT_USAGE, format!("--agent-name: {e}")))?;
        for g in &args.agent_groups {
            names::validate("group", g)
                .map_err(|e| Exit(EXIT_USAGE, format!("--agent-group: {e}")))?;
        }
    }
    if args.body_limit < 1024 {
        return Err(Exit(
            EXIT_USAGE,
            "--body-limit must be at least 1024 bytes".into(),
        )
        .into());
    }
    let mut deadlines = Vec::new();
    for (flag, value) in [
        ("handshake-timeout", &args.handshake_timeout),
        ("header-timeout", &args.header_timeout),
        ("body-timeout", &args.body_timeout),
        ("idle-timeout", &args.idle_timeout),
    ] {
        let d = crate::output::parse_duration(flag, value)?;
        if d.is_zero() {
            return Err(Exit(EXIT_USAGE, format!("--{flag} must be above zero")).into());
        }
        deadlines.push(d);
    }
    let [handshake, header_read, body, idle] = deadlines[..] else {
        unreachable!("four deadlines were parsed above")
    };
    if args.max_connections == Some(0) {
        return Err(Exit(EXIT_USAGE, "--max-connections must be at least 1".into()).into());
    }
    for san in &args.tls_sans {
        gustavo_server::tls::validate_san(san).map_err(|e| Exit(EXIT_USAGE, e.to_string()))?;
    }
    let tls = if args.insecure_http {
        if !args.tls_sans.is_empty() {
            return Err(Exit(
                EXIT_USAGE,
                "--tls-san makes no sense with --insecure-http".into(),
            )
            .into());
        }
        TlsMode::Insecure
    } else if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        TlsMode::Files {
            cert: cert.clone(),
            key: key.clone(),
        }
    } else {
        TlsMode::Generated {
            extra_sans: args.tls_sans.clone(),
        }
    };
    let sinfonia = sinfonia_config(args)?;
    let replica_grace = crate::output::parse_duration("replica-grace", &args.replica_grace)?;
    if replica_grace < std::time::Duration::from_secs(1) {
        return Err(Exit(EXIT_USAGE, "--replica-grace must be at least 1s".into()).into());
    }
    let callback_expiry = crate::output::parse_duration("callback-expiry", &args.callback_expiry)?;
    if callback_expiry < std::time::Duration::from_secs(1) {
        return Err(Exit(EXIT_USAGE, "--callback-expiry must be at least 1s".into()).into());
    }
    let weights = gustavo_model::schedule::Weights {
        cpu: args.score_cpu,
        memory: args.score_memory,
        disk: args.score_disk,
    };
    if [weights.cpu, weights.memory, weights.disk]
        .iter()
        .any(|w| !w.is_finite() || *w < 0.0)
    {
        return Err(Exit(
            EXIT_USAGE,
            "--score-cpu, --score-memory and --score-disk must be finite and not negative".into(),
        )
        .into());
    }
    let pressure = match args.pressure.as_str() {
        "off" => None,
        "on" => Some(gustavo_model::pressure::Thresholds::default()),
        s => Some(
            gustavo_model::pressure::Thresholds::parse(s)
                .map_err(|e| Exit(EXIT_USAGE, format!("--pressure: {e}")))?,
        ),
    };
    let watch_hosts = match &args.watch {
        None => Vec::new(),
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| Exit(EXIT_USAGE, format!("--watch {}: {e}", file.display())))?;
            gustavo_model::watched::parse_nodes_yaml(&text)
                .map_err(|e| Exit(EXIT_USAGE, format!("--watch {}: {e}", file.display())))?
        }
    };
    if let Some(dir) = &args.docker_cert_path {
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            if !dir.join(f).is_file() {
                return Err(Exit(
                    EXIT_USAGE,
                    format!("--docker-cert-path {}: no {f} there", dir.display()),
                )
                .into());
            }
        }
    }
    if args.print_config {
        outln!("{}", crate::config_file::print("server"));
        return Ok(());
    }
    // The local agent needs the engine; find out before binding anything.
    let runtime = if args.no_agent {
        None
    } else {
        Some(Arc::new(DockerRuntime::connect().await.context(
            "the server's own agent needs a Docker engine (start one, or run with --no-agent)",
        )?))
    };

    let max_connections = connection_budget(args.max_connections);

    let server = Server::bind(ServerConfig {
        data_dir: data_dir.clone(),
        listen: args.listen,
        body_limit: args.body_limit,
        tls,
        host: host_name(),
        timeouts: Timeouts {
            handshake,
            header_read,
            body,
            idle,
            ..Timeouts::default()
        },
        max_connections,
        weights,
        replica_grace,
        callback_expiry,
        sinfonia,
        pressure,
        watch: gustavo_server::controllers::watched::WatchConfig {
            docker_cert_path: args.docker_cert_path.clone(),
        },
        watch_hosts,
    })
    .await?;
    let addr = server.addr;
    let tokens = server.tokens.clone();
    let scheme = server.scheme();
    let ca_pem = server.ca.as_ref().map(|c| c.pem.clone());
    if tokens.created {
        eprintln!(
            "gustavo: created admin token at {}",
            tokens.admin_path.display()
        );
    }
    match &server.ca {
        Some(ca) => eprintln!(
            "gustavo: TLS on; CA fingerprint (SHA-256) {}{}",
            ca.fingerprint,
            if server.sans.is_empty() {
                String::new()
            } else {
                format!("; certificate names: {}", server.sans.join(", "))
            }
        ),
        None => eprintln!(
            "gustavo: WARNING: --insecure-http: plain HTTP, tokens and secrets cross the network in clear"
        ),
    }
    let url = format!("{scheme}://{addr}");
    tracing::info!(
        data_dir = %data_dir.display(),
        max_connections = server.max_connections(),
        "listening on {url}"
    );

    let local = if addr.ip().is_unspecified() {
        format!("{scheme}://127.0.0.1:{}", addr.port())
    } else {
        url.clone()
    };
    // The CLI on this machine reads this to find the server, its CA and the admin token
    // without flags (as kubectl reads k3s's kubeconfig).
    let client_toml = data_dir.join("client.toml");
    ClientFile {
        server: Some(local.clone()),
        token: Some(tokens.admin.clone()),
        ca: ca_pem.clone(),
        ca_file: None,
        user: None,
    }
    .save(&client_toml)?;
    eprintln!(
        "gustavo: listening on {url}; client config: {}; join token: {}",
        client_toml.display(),
        tokens.join_path.display()
    );
    let serve = tokio::spawn(server.serve(super::shutdown_signal()));
    if let Some(runtime) = runtime {
        let cfg = AgentConfig {
            server: local,
            join_token: Some(tokens.join.clone()),
            ca_pem,
            rotate: false,
            name: agent_name,
            groups: args.agent_groups.clone(),
            labels: Default::default(),
            data_dir: super::agent::local_data_dir(&data_dir),
            heartbeat: std::time::Duration::from_secs(5),
            wait: std::time::Duration::from_secs(30),
            reconcile: ReconcileConfig::default(),
            allow_exec: false,
            wireguard: Default::default(),
            stream: true,
        };
        tokio::spawn(async move {
            if let Err(e) = gustavo_agent::run(cfg, runtime, None, std::future::pending()).await {
                tracing::error!(error = %e, "the local agent stopped");
            }
        });
    }
    serve.await.context("the server task failed")??;
    Ok(())
}

/// Raises the open-file limit to the hard limit, and sizes the connection cap to fit in it
/// with a reserve (see `gustavo_server::conns`): `--max-connections` when given and it
/// fits, lowered with a warning when it does not.
fn connection_budget(wanted: Option<usize>) -> usize {
    use gustavo_server::conns;
    let limit = match conns::raise_fd_limit() {
        Ok(l) => {
            if l.now > l.before {
                tracing::info!(
                    "raised the open-file limit from {} to {} (the hard limit)",
                    l.before,
                    l.now
                );
            } else {
                tracing::info!("open-file limit: {} (the hard limit)", l.now);
            }
            l.now
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit; assuming 1024");
            1024
        }
    };
    let allowed = conns::max_connections_allowed(limit);
    let max = match wanted {
        Some(n) if n > allowed => {
            tracing::warn!(
                wanted = n,
                allowed,
                fd_limit = limit,
                reserve = conns::fd_reserve(limit),
                "--max-connections does not fit in the open-file limit with its reserve; lowered"
            );
            allowed
        }
        Some(n) => n,
        None => conns::default_max_connections(limit),
    };
    tracing::info!("at most {max} client connections (open-file limit {limit})");
    max
}

/// The deploy API's settings from the flags, each bad one named.
fn sinfonia_config(args: &ServerArgs) -> Result<gustavo_server::ops::deployments::SinfoniaConfig> {
    use gustavo_model::lease::LeaseConfig;
    use gustavo_model::matcher::Matcher;
    use gustavo_model::sites::Cidr;
    let usage = |m: String| anyhow::Error::from(Exit(EXIT_USAGE, m));
    let duration = crate::output::parse_duration("lease-duration", &args.lease_duration)?;
    let grace = crate::output::parse_duration("lease-grace", &args.lease_grace)?;
    if duration.as_secs() < 1 {
        return Err(usage("--lease-duration must be at least 1s".into()));
    }
    let client_network =
        Cidr::parse(&args.client_network).map_err(|e| usage(format!("--client-network: {e}")))?;
    if client_network.v4_hosts().is_none() {
        return Err(usage("--client-network must be an IPv4 network".into()));
    }
    let matchers =
        Matcher::parse_chain(&args.matchers).map_err(|e| usage(format!("--matchers: {e}")))?;
    for d in &args.client_dns {
        if d.is_empty() || d.len() > 253 || d.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(usage(format!("--client-dns `{d}`: an address or a domain")));
        }
    }
    Ok(gustavo_server::ops::deployments::SinfoniaConfig {
        lease: LeaseConfig {
            duration_s: duration.as_secs(),
            grace_s: grace.as_secs(),
        },
        client_network,
        matchers,
        dns: args.client_dns.clone(),
        anonymous_per_minute: args.anonymous_deploys_per_minute.max(1),
        ..Default::default()
    })
}
