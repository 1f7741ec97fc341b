//! One file per subcommand.

mod agent;
mod apps;
mod audit;
mod bench;
mod cache;
mod completion;
mod deploy;
mod deployments;
mod docker;
mod events;
mod exec;
mod groups;
mod hosts;
mod jobs;
mod login;
mod nodes;
mod peer;
mod rollouts;
mod server;
mod sites;
mod tokens;
mod users;

use anyhow::Result;

use crate::cli::{Cli, Command};

pub async fn run(cli: Cli) -> Result<()> {
    let people = !matches!(
        cli.command,
        Command::Server(_)
            | Command::Agent(_)
            | Command::Bench(_)
            | Command::Completion { .. }
            | Command::Login(_)
            | Command::Logout
    );
    let r = dispatch(&cli).await;
    // A refusal names the credentials it was made with.
    if people {
        r.map_err(|e| crate::connect::explain(&cli, e))
    } else {
        r
    }
}

async fn dispatch(cli: &Cli) -> Result<()> {
    match &cli.command {
        Command::Server(args) => server::run(cli, args).await,
        Command::Agent(args) => agent::run(cli, args).await,
        Command::Apps(cmd) => apps::run(cli, cmd).await,
        Command::Rollouts(cmd) => rollouts::run(cli, cmd).await,
        Command::Groups(cmd) => groups::run(cli, cmd).await,
        Command::Nodes(cmd) => nodes::run(cli, cmd).await,
        Command::Cache(cmd) => cache::run(cli, cmd).await,
        Command::Bench(cmd) => bench::run(cli, cmd).await,
        Command::Tokens(cmd) => tokens::run(cli, cmd).await,
        Command::Users(cmd) => users::users(cli, cmd).await,
        Command::UserGroups(cmd) => users::user_groups(cli, cmd).await,
        Command::Policy(cmd) => users::policy(cli, cmd).await,
        Command::Login(args) => login::login(cli, args).await,
        Command::Logout => login::logout(cli).await,
        Command::Whoami => login::whoami(cli).await,
        Command::Audit(args) => audit::run(cli, args).await,
        Command::Events { follow, after } => events::run(cli, *follow, *after).await,
        Command::Jobs(cmd) => jobs::run(cli, cmd).await,
        Command::Exec(args) => exec::run(cli, args, gustavo_model::exec::ExecKind::Shell).await,
        Command::Docker(args) => docker::run(cli, args).await,
        Command::Hosts(cmd) => hosts::run(cli, cmd).await,
        Command::Sites(cmd) => sites::run(cli, cmd).await,
        Command::Deploy(args) => deploy::run(cli, args).await,
        Command::Deployments(cmd) => deployments::run(cli, cmd).await,
        Command::Peer(cmd) => peer::run(cli, cmd).await,
        Command::Completion { shell } => {
            completion::run(*shell);
            Ok(())
        }
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
