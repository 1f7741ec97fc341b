//! `gustavo server`: the control plane, plus an agent for this machine so one command gives
//! a working cluster (as k3s does).

use std::sync::Arc;

use anyhow::{Context, Result};
use gustavo_agent::AgentConfig;
use gustavo_agent::docker::DockerRuntime;
use gustavo_agent::reconcile::ReconcileConfig;
use gustavo_model::names;
use gustavo_server::{Server, ServerConfig};

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
    // The local agent needs the engine; find out before binding anything.
    let runtime = if args.no_agent {
        None
    } else {
        Some(Arc::new(DockerRuntime::connect().await.context(
            "the server's own agent needs a Docker engine (start one, or run with --no-agent)",
        )?))
    };

    let server = Server::bind(ServerConfig {
        data_dir: data_dir.clone(),
        listen: args.listen,
        body_limit: args.body_limit,
    })
    .await?;
    let addr = server.addr;
    let tokens = server.tokens.clone();
    if tokens.created {
        eprintln!(
            "gustavo: created admin token at {}",
            tokens.admin_path.display()
        );
        eprintln!(
            "gustavo: created join token at {}",
            tokens.join_path.display()
        );
    }
    tracing::info!(%addr, data_dir = %data_dir.display(), "server listening");
    eprintln!(
        "gustavo: server listening on {addr}; admin token: {}, join token: {}",
        tokens.admin_path.display(),
        tokens.join_path.display()
    );

    let local = if addr.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", addr.port())
    } else {
        format!("http://{addr}")
    };
    // The CLI on this machine reads this to find the server without flags.
    std::fs::write(data_dir.join("server-url"), format!("{local}\n"))
        .with_context(|| format!("cannot write {}", data_dir.join("server-url").display()))?;
    let serve = tokio::spawn(server.serve(super::shutdown_signal()));
    if let Some(runtime) = runtime {
        let cfg = AgentConfig {
            server: local,
            join_token: Some(tokens.join.clone()),
            name: agent_name,
            groups: args.agent_groups.clone(),
            labels: Default::default(),
            data_dir: super::agent::local_data_dir(&data_dir),
            heartbeat: std::time::Duration::from_secs(5),
            wait: std::time::Duration::from_secs(30),
            reconcile: ReconcileConfig::default(),
        };
        tokio::spawn(async move {
            if let Err(e) = gustavo_agent::run(cfg, runtime, std::future::pending()).await {
                tracing::error!(error = %e, "the local agent stopped");
            }
        });
    }
    serve.await.context("the server task failed")??;
    Ok(())
}
