//! One file per subcommand.

mod agent;
mod apps;
mod bench;
mod cache;
mod groups;
mod nodes;
mod server;

use anyhow::Result;

use crate::cli::{Cli, Command};

pub async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Server(args) => server::run(&cli, args).await,
        Command::Agent(args) => agent::run(&cli, args).await,
        Command::Apps(cmd) => apps::run(&cli, cmd).await,
        Command::Groups(cmd) => groups::run(&cli, cmd).await,
        Command::Nodes(cmd) => nodes::run(&cli, cmd).await,
        Command::Cache(cmd) => cache::run(&cli, cmd).await,
        Command::Bench(cmd) => bench::run(&cli, cmd).await,
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}
