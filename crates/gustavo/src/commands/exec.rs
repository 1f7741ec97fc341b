//! `gustavo exec (--nodes LIST | -d GROUP) [--parallel N] [--timeout T] -- CMD…`: one command
//! on many nodes through their agents' own connections (no SSH once a node has joined), a
//! table of host, status, exit code and output — Cloudmesh's `Host | Response`, with the
//! exit code and why a node did not run it. Exits 1 unless every node ran it and exited 0.

use anyhow::Result;
use gustavo_model::exec::{ExecKind, ExecRun, ExecStatus, cut};

use crate::Exit;
use crate::cli::{Cli, ExecArgs, Format};
use crate::connect;
use crate::output::{parse_duration, show};

pub async fn run(cli: &Cli, args: &ExecArgs, kind: ExecKind) -> Result<()> {
    let nodes = match &args.nodes {
        Some(list) => gustavo_model::hostlist::expand(list)
            .map_err(|e| Exit(crate::EXIT_USAGE, format!("--nodes: {e}")))?,
        None => Vec::new(),
    };
    let timeout = parse_duration("timeout", &args.timeout)?;
    let run = ExecRun {
        nodes,
        group: args.group.clone(),
        kind,
        args: args.args.clone(),
        timeout_s: timeout.as_secs().max(1),
        parallel: args.parallel,
    };
    run.validate()
        .map_err(|e| Exit(crate::EXIT_USAGE, e.to_string()))?;
    let client = connect::client(cli)?;
    let answer = client.exec(&run).await?;
    let rows = answer
        .results
        .iter()
        .map(|r| {
            vec![
                r.node.clone(),
                r.reply.status.as_str().into(),
                r.reply
                    .exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                cut(r.response(), args.width),
            ]
        })
        .collect();
    show(
        cli.output,
        &answer,
        &["host", "status", "exit", "output"],
        rows,
    );
    let failed = answer.results.iter().filter(|r| !r.ok()).count();
    if failed > 0 {
        if cli.output == Format::Table {
            let count = |s: ExecStatus| {
                answer
                    .results
                    .iter()
                    .filter(|r| r.reply.status == s)
                    .count()
            };
            eprintln!(
                "{failed} of {} nodes did not run it cleanly ({} offline, {} refused, {} timed out, {} errors, {} non-zero exits)",
                answer.results.len(),
                count(ExecStatus::Offline),
                count(ExecStatus::Refused),
                count(ExecStatus::Timeout),
                count(ExecStatus::Error),
                answer
                    .results
                    .iter()
                    .filter(|r| r.reply.status == ExecStatus::Exited && !r.ok())
                    .count(),
            );
        }
        return Err(Exit(1, String::new()).into());
    }
    Ok(())
}
