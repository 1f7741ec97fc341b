//! The `gustavo` binary: glue only. Each subcommand lives in its own file under
//! `commands/`; the work itself is in the library crates.

#[macro_use]
mod output;
mod cli;
mod commands;
mod config_file;
mod connect;
mod registry;
mod rollout;
mod ssh;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

/// mimalloc rather than glibc's malloc: a loaded server spent ~25 % of its CPU allocating
/// and freeing (BENCHMARKS.md, "The sync protocol at scale").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for invalid configuration or usage (sysexits' EX_USAGE), as linkerd does.
pub const EXIT_USAGE: u8 = 64;

/// An error that should end the program with a specific exit code.
#[derive(Debug)]
pub struct Exit(pub u8, pub String);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Exit {}

/// Logs go to stderr, coloured only for a person at a terminal: a file, a pipe or journald
/// gets plain text (and `NO_COLOR` turns colour off everywhere).
fn init_tracing(default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("GUSTAVO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

fn main() -> ExitCode {
    // One TLS crypto provider for the whole process, chosen before anything can use TLS.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let argv = match config_file::fold_in(std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(Exit(code, msg)) => {
            eprintln!("error: {msg}");
            return ExitCode::from(code);
        }
    };
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // The runtime's shape is chosen once, here: the server wants every core; the agent and
    // the CLI are small and run on one thread.
    let multi = matches!(cli.command, Command::Server(_) | Command::Bench(_));
    init_tracing(match cli.command {
        Command::Server(_) | Command::Agent(_) => "info",
        // A hundred thousand simulated agents retrying would drown the terminal.
        Command::Bench(_) => "error",
        _ => "warn",
    });
    let rt = if multi {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(exit) = e.downcast_ref::<Exit>() {
                if !exit.1.is_empty() {
                    let msg = config_file::blame(&exit.1).unwrap_or_else(|| exit.1.clone());
                    eprintln!("error: {msg}");
                }
                return ExitCode::from(exit.0);
            }
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each said once: many errors already end with
/// their cause's words ("cannot use data dir D: File exists (os error 17)"), which
/// `{:#}` would repeat.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let said = cause.to_string();
        if out.is_empty() {
            out = said;
        } else if !out.contains(&said) {
            out.push_str(": ");
            out.push_str(&said);
        }
    }
    out
}
