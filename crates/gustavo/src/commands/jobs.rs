//! `gustavo jobs run|list|get|logs|delete|callbacks`: run-to-completion work.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use gustavo_model::job::{self, Job, JobRun, JobState};

use crate::cli::{Cli, Format, JobsCmd};
use crate::output::{ago, changed, data, parse_duration, show};
use crate::{EXIT_USAGE, Exit, connect};

fn read_job(file: &Path, name: &str) -> Result<job::JobSpec> {
    let text = super::apps::read_app_file(file)?;
    job::parse_one(&text, name)
        .map_err(|e| Exit(EXIT_USAGE, format!("{}: {e}", file.display())).into())
}

fn when(ts: u64) -> String {
    if ts == 0 { "-".into() } else { ago(ts) }
}

fn run_rows(runs: &[JobRun]) -> Vec<Vec<String>> {
    runs.iter()
        .map(|r| {
            vec![
                r.run.to_string(),
                r.node.clone(),
                r.state.as_str().into(),
                r.exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                when(r.started_at),
                when(r.finished_at),
                r.error.clone().unwrap_or_default(),
            ]
        })
        .collect()
}

fn print_job(format: Format, j: &Job) {
    match format {
        Format::Table => {
            outln!("name:      {}", j.name);
            outln!("groups:    {}", j.groups.join(", "));
            outln!("state:     {}", j.state.as_str());
            match &j.spec.schedule {
                Some(s) => outln!("schedule:  {} (every member, from its own clock)", s.0),
                None => outln!(
                    "attempt:   {} of {}{}",
                    j.attempt,
                    j.spec.retries + 1,
                    j.node
                        .as_deref()
                        .map(|n| format!(" on {n}"))
                        .unwrap_or_default()
                ),
            }
            if let Some(r) = &j.reason {
                outln!("reason:    {r}");
            }
            if let Some(u) = &j.spec.callback_url {
                outln!("callback:  {}", u.0);
            }
            outln!("revision:  {}", j.revision);
            outln!("runs:");
            let header = [
                "run", "node", "state", "exit", "started", "finished", "error",
            ];
            show(Format::Table, &j.runs, &header, run_rows(&j.runs));
        }
        other => data(other, j),
    }
}

pub async fn run(cli: &Cli, cmd: &JobsCmd) -> Result<()> {
    match cmd {
        JobsCmd::Run {
            name,
            file,
            groups,
            wait,
            timeout,
        } => {
            let name = name.get();
            let spec = read_job(file, name)?;
            let timeout = parse_duration("timeout", timeout)?;
            let client = connect::client(cli)?;
            let j = client.run_job(name, &spec, groups).await?;
            if cli.output != Format::Table && !wait {
                data(cli.output, &j);
                return Ok(());
            }
            let what = match &j.spec.schedule {
                Some(s) => format!("scheduled `{}` on {}", s.0, j.groups.join(", ")),
                None => format!("started on {}", j.groups.join(", ")),
            };
            changed("job", name, &what, Some(j.revision));
            if *wait && j.spec.is_scheduled() {
                eprintln!(
                    "(--wait applies to one-shot jobs; a scheduled job runs on its schedule: see `gustavo jobs get {name}`)"
                );
            }
            if *wait && !j.spec.is_scheduled() {
                let done = wait_for_end(&client, name, timeout).await?;
                if cli.output != Format::Table {
                    data(cli.output, &done);
                }
                return finished(&done);
            }
            Ok(())
        }
        JobsCmd::List => {
            let client = connect::client(cli)?;
            let jobs = client.list_jobs().await?;
            let rows = jobs
                .iter()
                .map(|j| {
                    let last = j.runs.last();
                    vec![
                        j.name.clone(),
                        j.state.as_str().into(),
                        j.spec
                            .schedule
                            .as_ref()
                            .map(|s| s.0.clone())
                            .unwrap_or_else(|| "once".into()),
                        j.groups.join(","),
                        last.map(|r| format!("{} {} on {}", r.run, r.state.as_str(), r.node))
                            .unwrap_or_else(|| "-".into()),
                        when(j.updated_at),
                    ]
                })
                .collect();
            show(
                cli.output,
                &jobs,
                &["name", "state", "schedule", "groups", "last run", "updated"],
                rows,
            );
            Ok(())
        }
        JobsCmd::Get { name } => {
            let client = connect::client(cli)?;
            let j = client.get_job(name.get()).await?;
            print_job(cli.output, &j);
            Ok(())
        }
        JobsCmd::Logs { name, run, node } => {
            let client = connect::client(cli)?;
            let j = client.get_job(name.get()).await?;
            let pick = j
                .runs
                .iter()
                .rev()
                .filter(|r| run.is_none_or(|n| r.run == n))
                .find(|r| node.as_deref().is_none_or(|n| r.node == n));
            let Some(r) = pick else {
                return Err(Exit(
                    1,
                    format!(
                        "job `{}` has no such run (see `gustavo jobs get {}`)",
                        j.name, j.name
                    ),
                )
                .into());
            };
            if cli.output != Format::Table {
                data(cli.output, r);
                return Ok(());
            }
            eprintln!(
                "# {} run {} on {}: {}{}",
                j.name,
                r.run,
                r.node,
                r.state.as_str(),
                r.exit_code
                    .map(|c| format!(" (exit code {c})"))
                    .unwrap_or_default()
            );
            if !r.logs.is_empty() {
                outln!("{}", r.logs.trim_end());
            }
            Ok(())
        }
        JobsCmd::Delete { name } => {
            let client = connect::client(cli)?;
            let rev = client.delete_job(name.get()).await?;
            changed("job", name.get(), "deleted", Some(rev));
            Ok(())
        }
        JobsCmd::Callbacks => {
            let client = connect::client(cli)?;
            let cbs = client.callbacks().await?;
            let rows = cbs
                .iter()
                .map(|c| {
                    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                    vec![
                        s("id"),
                        s("url"),
                        c["attempts"].to_string(),
                        when(c["next_at"].as_u64().unwrap_or(0)),
                        s("last_error"),
                    ]
                })
                .collect();
            show(
                cli.output,
                &cbs,
                &["callback", "url", "attempts", "next try", "last error"],
                rows,
            );
            Ok(())
        }
    }
}

/// Polls the job until it succeeded or failed.
async fn wait_for_end(
    client: &gustavo_client::Client,
    name: &str,
    timeout: Duration,
) -> Result<Job> {
    let start = Instant::now();
    let mut last_state = None;
    loop {
        match client.get_job(name).await {
            Ok(j) => {
                if last_state != Some(j.state) {
                    eprintln!(
                        "job {name}: {}{}",
                        j.state.as_str(),
                        j.reason
                            .as_deref()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default()
                    );
                    last_state = Some(j.state);
                }
                if matches!(j.state, JobState::Succeeded | JobState::Failed) {
                    return Ok(j);
                }
            }
            Err(e) if e.status().is_none() => eprintln!("{e}; retrying"),
            Err(e) => return Err(e.into()),
        }
        if start.elapsed() > timeout {
            return Err(Exit(
                1,
                format!("job {name} did not finish within {} s", timeout.as_secs()),
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn finished(j: &Job) -> Result<()> {
    let last = j.runs.last();
    if j.state == JobState::Succeeded {
        outln!(
            "job {} succeeded{}",
            j.name,
            last.map(|r| format!(" on {}", r.node)).unwrap_or_default()
        );
        return Ok(());
    }
    let mut msg = format!("job {} failed", j.name);
    if let Some(r) = &j.reason {
        msg.push_str(&format!(": {r}"));
    }
    if let Some(logs) = last.map(|r| r.logs.trim()).filter(|l| !l.is_empty()) {
        let lines: Vec<&str> = logs.lines().collect();
        let from = lines.len().saturating_sub(5);
        msg.push_str(&format!("\nlast lines:\n{}", lines[from..].join("\n")));
    }
    Err(Exit(1, msg).into())
}
