//! `gustavo apps …`: the seed's app commands.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, Result};
use gustavo_client::Client;
use gustavo_model::api::App;
use gustavo_model::spec;

use crate::cli::{AppsCmd, Cli, Format, WaitArgs};
use crate::output::{ago, parse_duration, show};
use crate::{EXIT_USAGE, Exit, connect, registry, rollout};

/// Reads and validates a spec file, picking the app called `name`.
fn read_spec(file: &std::path::Path, name: &str) -> Result<spec::AppSpec> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    spec::parse_one(&text, name)
        .map_err(|e| Exit(EXIT_USAGE, format!("{}: {e}", file.display())).into())
}

async fn maybe_wait(client: &Client, name: &str, verb: &str, w: &WaitArgs) -> Result<()> {
    if w.wait {
        let timeout = parse_duration("timeout", &w.timeout)?;
        rollout::wait(client, name, verb, timeout).await?;
    }
    Ok(())
}

fn confirm(question: &str) -> bool {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).is_ok() && matches!(line.trim(), "y" | "Y" | "yes")
}

fn print_app(format: Format, app: &App) {
    match format {
        Format::Json => crate::output::json(app),
        Format::Table => {
            outln!("name:      {}", app.name);
            outln!("groups:    {}", app.groups.join(", "));
            outln!("revision:  {}", app.revision);
            outln!("updated:   {}", ago(app.updated_at));
            outln!("spec:");
            let yaml = serde_json::to_value(&app.spec).expect("specs serialize");
            for line in serde_json::to_string_pretty(&yaml)
                .expect("values serialize")
                .lines()
            {
                outln!("  {line}");
            }
        }
    }
}

pub async fn run(cli: &Cli, cmd: &AppsCmd) -> Result<()> {
    let client = connect::client(cli)?;
    match cmd {
        AppsCmd::Create {
            name,
            file,
            groups,
            wait,
        } => {
            let spec = read_spec(file, name)?;
            if cli.output == Format::Table {
                outln!(
                    "gustavo@{}",
                    client
                        .base()
                        .trim_start_matches("http://")
                        .trim_start_matches("https://")
                );
                registry::check(&spec.docker_image).await;
            }
            let app = client.create_app(name, &spec, groups).await?;
            if cli.output == Format::Table {
                outln!("created app : {} (revision {})", app.name, app.revision);
                for g in &app.groups {
                    outln!("attached to device group : {g}");
                }
            } else {
                crate::output::json(&app);
            }
            maybe_wait(&client, name, "running", wait).await
        }
        AppsCmd::Update {
            name,
            file,
            groups,
            wait,
        } => {
            let spec = read_spec(file, name)?;
            let before = client.get_app(name).await?;
            let groups = (!groups.is_empty()).then(|| groups.clone());
            let app = client.update_app(name, &spec, groups).await?;
            if cli.output == Format::Json {
                crate::output::json(&app);
            } else if app.revision == before.revision {
                outln!("app {} unchanged (revision {})", app.name, app.revision);
            } else {
                outln!("updated app : {} (revision {})", app.name, app.revision);
            }
            maybe_wait(&client, name, "running", wait).await
        }
        AppsCmd::Delete { name, yes, wait } => {
            if !yes
                && std::io::stdin().is_terminal()
                && !confirm(&format!(
                    "About to delete app {name} and its containers on every device; continue?"
                ))
            {
                return Err(Exit(1, "cancelled".into()).into());
            }
            let revision = client.delete_app(name).await?;
            match cli.output {
                Format::Json => {
                    crate::output::json(&serde_json::json!({"deleted": name, "revision": revision}))
                }
                Format::Table => outln!("deleted app : {name} (revision {revision})"),
            }
            maybe_wait(&client, name, "clear", wait).await
        }
        AppsCmd::List => {
            let apps = client.list_apps().await?;
            let rows = apps
                .iter()
                .map(|a| {
                    vec![
                        a.name.clone(),
                        a.spec.docker_image.clone(),
                        if a.spec.running { "running" } else { "stopped" }.into(),
                        a.groups.join(","),
                        a.revision.to_string(),
                        ago(a.updated_at),
                    ]
                })
                .collect();
            show(
                cli.output,
                &apps,
                &["name", "image", "desired", "groups", "revision", "updated"],
                rows,
            );
            Ok(())
        }
        AppsCmd::Get { name } => {
            print_app(cli.output, &client.get_app(name).await?);
            Ok(())
        }
        AppsCmd::Start { name, wait }
        | AppsCmd::Stop { name, wait }
        | AppsCmd::Restart { name, wait } => {
            let (action, verb) = match cmd {
                AppsCmd::Start { .. } => ("start", "running"),
                AppsCmd::Stop { .. } => ("stop", "stopped"),
                _ => ("restart", "running"),
            };
            let app = client.app_action(name, action).await?;
            match cli.output {
                Format::Json => crate::output::json(&app),
                Format::Table => outln!("{action}: app {} (revision {})", app.name, app.revision),
            }
            maybe_wait(&client, name, verb, wait).await
        }
    }
}
