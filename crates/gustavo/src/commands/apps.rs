//! `gustavo apps …`: the seed's app commands.

use std::io::Read;
use std::path::Path;

use anyhow::Result;
use gustavo_client::Client;
use gustavo_model::api::App;
use gustavo_model::spec;

use crate::cli::{AppsCmd, Cli, Format, WaitArgs};
use crate::output::{ago, changed, confirm, data, show};
use crate::{EXIT_USAGE, Exit, connect, registry, rollout};

/// Reads an app file (`-` is stdin), at most [`spec::MAX_SPEC_BYTES`]: the server would
/// refuse more, and `-f /dev/zero` must not fill the memory.
pub(super) fn read_app_file(file: &Path) -> Result<String> {
    let limit = spec::MAX_SPEC_BYTES;
    let what = if file == Path::new("-") {
        "stdin".to_string()
    } else {
        file.display().to_string()
    };
    let mut buf = Vec::new();
    let read = if file == Path::new("-") {
        std::io::stdin()
            .lock()
            .take(limit as u64 + 1)
            .read_to_end(&mut buf)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(limit as u64 + 1).read_to_end(&mut buf))
    };
    read.map_err(|e| Exit(EXIT_USAGE, format!("-f: cannot read {what}: {e}")))?;
    if buf.len() > limit {
        return Err(Exit(
            EXIT_USAGE,
            format!(
                "-f: {what} is larger than the limit for app files ({} MiB); an app file \
                 is a few KB",
                limit / (1024 * 1024)
            ),
        )
        .into());
    }
    String::from_utf8(buf)
        .map_err(|_| Exit(EXIT_USAGE, format!("-f: {what} is not UTF-8 text")).into())
}

/// Reads and validates a spec file, picking the app called `name`.
fn read_spec(file: &Path, name: &str) -> Result<spec::AppSpec> {
    let text = read_app_file(file)?;
    spec::parse_one(&text, name)
        .map_err(|e| Exit(EXIT_USAGE, format!("{}: {e}", file.display())).into())
}

async fn maybe_wait(client: &Client, name: &str, verb: &str, w: &WaitArgs) -> Result<()> {
    if w.wait {
        rollout::wait(client, name, verb, w.timeout).await?;
    }
    Ok(())
}

/// `device group a` or `device groups a, b`.
fn on_groups(groups: &[String]) -> String {
    match groups {
        [one] => format!("device group {one}"),
        many => format!("device groups {}", many.join(", ")),
    }
}

/// The app file of one app, with what the file cannot hold in a comment.
fn app_file(app: &App) -> Result<String> {
    Ok(format!(
        "# app {} at revision {}, on {} (give groups to `apps update` with -d)\n{}",
        app.name,
        app.revision,
        on_groups(&app.groups),
        gustavo_model::appfile::app_file(&app.name, &app.spec)?
    ))
}

fn print_app(
    format: Format,
    app: &App,
    devices: Option<&gustavo_model::api::RolloutSummary>,
) -> Result<()> {
    match format {
        Format::Json => crate::output::json(app),
        Format::Yaml => outln!("{}", app_file(app)?.trim_end()),
        Format::Table => {
            outln!("name:      {}", app.name);
            outln!("groups:    {}", app.groups.join(", "));
            outln!("revision:  {}", app.revision);
            outln!("updated:   {}", ago(app.updated_at));
            outln!("image:     {}", app.spec.docker_image);
            match (&app.digest, &app.digest_error) {
                (Some(d), _) => outln!("digest:    {d}"),
                (None, Some(e)) => outln!("digest:    not pinned: {e}"),
                (None, None) => outln!("digest:    not pinned"),
            }
            if let Some(d) = devices.filter(|d| d.revision == app.revision) {
                outln!(
                    "devices:   {} of {} run revision {}{}",
                    d.converged,
                    d.total,
                    d.revision,
                    if d.failed > 0 {
                        format!(
                            ", {} failed (`gustavo rollouts get {}` says why)",
                            d.failed, app.name
                        )
                    } else {
                        String::new()
                    }
                );
            }
            if let Some(r) = &app.rollout {
                outln!(
                    "rollout:   revision {} {}{}",
                    r.to_revision,
                    r.state.as_str(),
                    r.reason
                        .as_deref()
                        .map(|w| format!(": {w}"))
                        .unwrap_or_default()
                );
            }
            if let Some(n) = app.spec.replicas {
                outln!("replicas:  {} placed of {n}", app.placements.len());
                for i in 1..=n {
                    match app.placements.get(&i) {
                        Some(node) => outln!("  {i}: {node}"),
                        None => outln!("  {i}: pending (no eligible node can take it)"),
                    }
                }
            }
            outln!("spec:");
            let text = gustavo_model::appfile::app_file(&app.name, &app.spec)?;
            // The spec's lines, without the `name:` line above them.
            for line in text.lines().skip(1) {
                outln!("{line}");
            }
        }
    }
    Ok(())
}

/// The image's digest from its registry, so every device runs the same bits; a warning,
/// and no pin, when the registry cannot say.
async fn pin(spec: &spec::AppSpec) -> Option<String> {
    match registry::resolve_digest(&spec.docker_image).await {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("warning: cannot pin the image to a digest ({e}); devices will pull the tag");
            None
        }
    }
}

/// `sha256:0123456789ab` — enough to tell digests apart in a table.
fn short_digest(d: &str) -> String {
    d.chars().take(19).collect()
}

/// The seed's lines before a create: the server, then what the registry holds (update
/// runs the same registry check, without the server line).
async fn preamble(cli: &Cli, client: &Client, spec: &spec::AppSpec, create: bool) {
    if cli.output == Format::Table {
        if create {
            outln!(
                "gustavo@{}",
                client
                    .base()
                    .trim_start_matches("http://")
                    .trim_start_matches("https://")
            );
        }
        registry::check(&spec.docker_image).await;
    }
}

pub async fn run(cli: &Cli, cmd: &AppsCmd) -> Result<()> {
    // Files are read (and refused) before anything is asked of the server.
    let spec = match cmd {
        AppsCmd::Create { name, file, .. } | AppsCmd::Update { name, file, .. } => {
            Some(read_spec(file, name.get())?)
        }
        _ => None,
    };
    let client = connect::client(cli)?;
    match cmd {
        AppsCmd::Create {
            name, groups, wait, ..
        } => {
            let name = name.get();
            let spec = spec.expect("read above for create");
            preamble(cli, &client, &spec, true).await;
            let digest = pin(&spec).await;
            let app = client
                .create_app_pinned(name, &spec, groups, digest)
                .await?;
            match cli.output {
                Format::Table => changed(
                    "app",
                    &app.name,
                    &format!("created on {}", on_groups(&app.groups)),
                    Some(app.revision),
                ),
                f => data(f, &app),
            }
            maybe_wait(&client, name, "running", wait).await
        }
        AppsCmd::Update {
            name, groups, wait, ..
        } => {
            let name = name.get();
            let spec = spec.expect("read above for update");
            let before = client.get_app(name).await?;
            preamble(cli, &client, &spec, false).await;
            let new_groups = (!groups.is_empty()).then(|| groups.clone());
            let digest = pin(&spec).await;
            let app = client
                .update_app_pinned(name, &spec, new_groups, digest)
                .await?;
            match cli.output {
                Format::Table if app.revision == before.revision => {
                    changed("app", &app.name, "unchanged", Some(app.revision))
                }
                Format::Table if app.groups != before.groups => changed(
                    "app",
                    &app.name,
                    &format!("updated, now on {}", on_groups(&app.groups)),
                    Some(app.revision),
                ),
                Format::Table => changed("app", &app.name, "updated", Some(app.revision)),
                f => data(f, &app),
            }
            let staged = app
                .rollout
                .as_ref()
                .is_some_and(|r| r.to_revision == app.revision && r.state.is_active());
            if staged && cli.output == Format::Table {
                eprintln!(
                    "{name}: rolling out in waves; follow it with `gustavo rollouts get {name}`"
                );
            }
            if staged && wait.wait {
                return rollout::wait_staged(&client, name, wait.timeout).await;
            }
            maybe_wait(&client, name, "running", wait).await
        }
        AppsCmd::History { name } => {
            let name = name.get();
            let h = client.app_history(name).await?;
            let current = client.get_app(name).await.ok().map(|a| a.revision);
            let rows = h
                .iter()
                .rev()
                .map(|r| {
                    let mark = if Some(r.revision) == current {
                        " *"
                    } else {
                        ""
                    };
                    vec![
                        format!("{}{mark}", r.revision),
                        ago(r.at),
                        r.who.clone(),
                        r.spec.docker_image.clone(),
                        r.digest
                            .as_deref()
                            .map(short_digest)
                            .unwrap_or_else(|| "-".into()),
                        r.outcome.clone(),
                    ]
                })
                .collect();
            show(
                cli.output,
                &h,
                &["revision", "when", "who", "image", "digest", "outcome"],
                rows,
            );
            Ok(())
        }
        AppsCmd::Rollback { name, to, wait } => {
            let name = name.get();
            let app = client.rollback_app(name, *to).await?;
            match cli.output {
                Format::Table => changed("app", &app.name, "rolled back", Some(app.revision)),
                f => data(f, &app),
            }
            maybe_wait(&client, name, "running", wait).await
        }
        AppsCmd::Delete { name, yes, wait } => {
            let name = name.get();
            if !yes
                && !confirm(&format!(
                    "About to delete app {name} and its containers on every device; continue?"
                ))
            {
                return Err(Exit(1, "cancelled".into()).into());
            }
            let revision = client.delete_app(name).await?;
            match cli.output {
                Format::Table => changed("app", name, "deleted", Some(revision)),
                f => data(
                    f,
                    &serde_json::json!({"deleted": name, "revision": revision}),
                ),
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
            let app = client.get_app(name.get()).await?;
            // Where the devices stand, for a person (a failed update is otherwise only in
            // `rollouts get` and the events).
            let devices = match cli.output {
                Format::Table => client.rollout_summary(&app.name).await.ok(),
                _ => None,
            };
            print_app(cli.output, &app, devices.as_ref())
        }
        AppsCmd::Start { name, wait }
        | AppsCmd::Stop { name, wait }
        | AppsCmd::Restart { name, wait } => {
            let name = name.get();
            let (action, done, verb) = match cmd {
                AppsCmd::Start { .. } => ("start", "started", "running"),
                AppsCmd::Stop { .. } => ("stop", "stopped", "stopped"),
                _ => ("restart", "restarted", "running"),
            };
            let before = client.get_app(name).await?;
            let app = client.app_action(name, action).await?;
            match cli.output {
                Format::Table if app.revision == before.revision => changed(
                    "app",
                    &app.name,
                    &format!("already {done}"),
                    Some(app.revision),
                ),
                Format::Table => changed("app", &app.name, done, Some(app.revision)),
                f => data(f, &app),
            }
            maybe_wait(&client, name, verb, wait).await
        }
    }
}
