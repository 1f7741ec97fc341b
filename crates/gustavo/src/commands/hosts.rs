//! `gustavo hosts install LIST` and `gustavo hosts check LIST`: hosts over SSH (Cloudmesh's
//! `cms docker deploy --host=NAMES`, done safely — see `ssh.rs` for the SSH options).
//!
//! Install, per host, all hosts at once (at most `--parallel`), each step with a deadline:
//! 1. connect: `uname -s`, `uname -m`, `id -u`, and whether sudo needs a password;
//! 2. refuse anything but Linux, and a host whose architecture the binary to copy is not for;
//! 3. sudo: none as root, `sudo -n` where allowed, else `sudo -S` fed the password (read once
//!    per run from `--sudo-password-file` or a prompt);
//! 4. probe the host's facts as root (`hostinstall::probe_script`);
//! 5. Docker from the host's own packages where missing (`--force`: reinstalled); started if
//!    its engine does not answer;
//! 6. the binary, copied when its SHA-256 differs;
//! 7. the service (a systemd unit when systemd runs, else an init script), written when its
//!    text differs;
//! 8. with `--join`: a join token made for this run, written for a host not joined yet;
//! 9. the agent (re)started when anything it runs changed, started when stopped.
//!
//! A step that changes nothing says nothing, so a second run reports every host unchanged.
//! One host failing (unreachable, untrusted key, not Linux) fails alone, with the step named.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use gustavo_model::hostinstall::{
    AgentService, BINARY_PATH, Facts, Host, INIT_PATH, TOKEN_PATH, UNIT_PATH,
    docker_install_command, probe_script, rust_arch, sh_quote, sha256_hex,
};
use serde::Serialize;

use crate::cli::{Cli, Format, HostsCmd, HostsInstallArgs, HostsSshArgs};
use crate::output::{last_seen, parse_duration, show};
use crate::ssh::{Remote, RemoteError, SshOptions, SystemSsh};
use crate::{EXIT_USAGE, Exit};

/// A step that failed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    pub step: &'static str,
    pub message: String,
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.message)
    }
}

fn fail(step: &'static str, message: impl Into<String>) -> StepError {
    StepError {
        step,
        message: message.into(),
    }
}

fn remote(step: &'static str) -> impl Fn(RemoteError) -> StepError {
    move |e| fail(step, e.to_string())
}

/// How root is reached on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sudo {
    Root,
    NoPassword,
    Password(String),
}

impl Sudo {
    /// `script` run as root, and what to feed it.
    fn wrap(&self, script: &str) -> (String, Vec<u8>) {
        match self {
            Sudo::Root => (script.to_string(), Vec::new()),
            Sudo::NoPassword => (format!("sudo -n sh -c {}", sh_quote(script)), Vec::new()),
            Sudo::Password(p) => (
                format!("sudo -S -p '' sh -c {}", sh_quote(script)),
                format!("{p}\n").into_bytes(),
            ),
        }
    }
}

/// What every host of a run shares.
pub struct Ctx {
    pub force: bool,
    pub step_timeout: Duration,
    pub binary: Arc<Vec<u8>>,
    pub binary_sha: String,
    /// The architecture the binary to copy is for (Rust's name).
    pub binary_arch: String,
    pub service: AgentService,
    /// The join token made for this run (with --join).
    pub token: Option<String>,
    /// The sudo password, asked for once, when the first host needs it.
    pub password: tokio::sync::OnceCell<Option<String>>,
    pub password_source: Box<dyn Fn() -> Option<String> + Send + Sync>,
}

impl Ctx {
    async fn password(&self) -> Option<String> {
        self.password
            .get_or_init(|| async { (self.password_source)() })
            .await
            .clone()
    }
}

/// What was done on one host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostReport {
    /// The host's name: the node name its agent uses.
    pub node: String,
    pub changes: Vec<String>,
    pub docker: String,
    pub agent: String,
    /// Whether the agent should register now (started with a join token, not joined yet).
    #[serde(skip)]
    pub expect_join: bool,
}

/// Connects, checks the host and finds how to be root.
async fn connect<R: Remote>(r: &R, ctx: &Ctx, arch_check: bool) -> Result<Sudo, StepError> {
    let out = r
        .run(
            "connect",
            "uname -s; uname -m; id -u; if sudo -n true 2>/dev/null; then echo sudo-ok; fi",
            b"",
            ctx.step_timeout,
        )
        .await
        .map_err(remote("connect"))?;
    let lines: Vec<&str> = out.stdout.lines().map(str::trim).collect();
    let os = lines.first().copied().unwrap_or_default();
    if os != "Linux" {
        return Err(fail(
            "check",
            format!("not a Linux machine (uname -s says `{os}`)"),
        ));
    }
    let machine = lines.get(1).copied().unwrap_or_default();
    if arch_check && ctx.binary_arch != "*" && rust_arch(machine) != ctx.binary_arch {
        return Err(fail(
            "check",
            format!(
                "the host is {machine} but the binary to copy is for {}; pass --binary with a gustavo built for {}",
                ctx.binary_arch,
                rust_arch(machine)
            ),
        ));
    }
    if lines.get(2).copied() == Some("0") {
        return Ok(Sudo::Root);
    }
    if lines.contains(&"sudo-ok") {
        return Ok(Sudo::NoPassword);
    }
    let Some(pw) = ctx.password().await else {
        return Err(fail(
            "sudo",
            "sudo asks for a password: pass --sudo-password-file, or run at a terminal to be asked",
        ));
    };
    let out = r
        .run(
            "sudo",
            "sudo -S -p '' true",
            format!("{pw}\n").as_bytes(),
            ctx.step_timeout,
        )
        .await
        .map_err(remote("sudo"))?;
    if !out.ok() {
        return Err(fail(
            "sudo",
            format!("sudo refused: {}", last_line(&out.stderr)),
        ));
    }
    Ok(Sudo::Password(pw))
}

fn last_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("(no message)")
        .to_string()
}

/// Runs `script` as root; a non-zero exit fails `step`.
async fn root<R: Remote>(
    r: &R,
    sudo: &Sudo,
    ctx: &Ctx,
    step: &'static str,
    script: &str,
) -> Result<String, StepError> {
    let (cmd, stdin) = sudo.wrap(script);
    let out = r
        .run(step, &cmd, &stdin, ctx.step_timeout)
        .await
        .map_err(remote(step))?;
    if !out.ok() {
        return Err(fail(
            step,
            format!("exit {}: {}", out.code, last_line(&out.stderr)),
        ));
    }
    Ok(out.stdout)
}

/// Puts `bytes` at `path` with `mode`, owned by root: uploaded as the login user to a
/// private temp file, then moved into place as root (so stdin never carries both the sudo
/// password and the data).
async fn put<R: Remote>(
    r: &R,
    sudo: &Sudo,
    ctx: &Ctx,
    step: &'static str,
    bytes: &[u8],
    path: &str,
    mode: &str,
) -> Result<(), StepError> {
    let out = r
        .run(
            step,
            "umask 077; f=$(mktemp /tmp/gustavo-upload.XXXXXX) && cat >\"$f\" && echo \"$f\"",
            bytes,
            ctx.step_timeout,
        )
        .await
        .map_err(remote(step))?;
    let tmp = out.stdout.trim().to_string();
    if !out.ok() || !tmp.starts_with("/tmp/gustavo-upload.") {
        return Err(fail(
            step,
            format!("upload failed: {}", last_line(&out.stderr)),
        ));
    }
    let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("/");
    root(
        r,
        sudo,
        ctx,
        step,
        &format!(
            "mkdir -p {dir} && install -m {mode} -o root -g root {tmp} {path}; s=$?; rm -f {tmp}; exit $s"
        ),
    )
    .await?;
    Ok(())
}

/// Installs one host. `progress` gets a line per step that does something.
pub async fn install_host<R: Remote>(
    r: &R,
    ctx: &Ctx,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<HostReport, StepError> {
    progress("connecting");
    let sudo = connect(r, ctx, true).await?;
    let facts = Facts::parse(&root(r, &sudo, ctx, "probe", &probe_script()).await?);
    let mut report = HostReport {
        node: facts.hostname.clone(),
        ..HostReport::default()
    };

    // Docker, from the distribution's packages.
    let mut docker = facts.docker.clone();
    if docker.is_none() || ctx.force {
        let pkg = facts.pkg.as_deref().unwrap_or_default();
        let Some(cmd) = docker_install_command(pkg, docker.is_some()) else {
            return Err(fail(
                "docker",
                "no package manager known here (apt-get, dnf, yum, zypper, apk) to install Docker with",
            ));
        };
        progress(&format!("installing Docker with {pkg}"));
        root(r, &sudo, ctx, "docker", &cmd).await?;
        docker = Some(
            root(r, &sudo, ctx, "docker", "docker --version")
                .await?
                .trim()
                .to_string(),
        );
        report.changes.push(format!(
            "docker {} from {pkg}",
            if facts.docker.is_some() {
                "reinstalled"
            } else {
                "installed"
            }
        ));
    }
    let mut engine = facts.engine.clone();
    let info = "docker info --format '{{.ServerVersion}}'";
    if engine.is_none() && docker.is_some() {
        // Just installed, the engine may answer already (a package that starts it).
        engine = root(r, &sudo, ctx, "docker", info)
            .await
            .ok()
            .map(|v| v.trim().to_string());
        if engine.is_none() {
            progress("starting Docker");
            let start = if facts.systemd {
                "systemctl enable --now docker"
            } else {
                "service docker start || /etc/init.d/docker start"
            };
            // Not fatal: the agent waits for the engine and reports it.
            let _ = root(r, &sudo, ctx, "docker", start).await;
            engine = root(r, &sudo, ctx, "docker", info)
                .await
                .ok()
                .map(|v| v.trim().to_string());
            if engine.is_some() {
                report.changes.push("docker started".into());
            }
        }
    }
    report.docker = match (&engine, &docker) {
        (Some(v), _) => v.clone(),
        (None, Some(_)) => "installed, engine not answering".into(),
        (None, None) => "missing".into(),
    };

    // The binary.
    let mut restart = false;
    if facts.binary.as_deref() != Some(ctx.binary_sha.as_str()) || ctx.force {
        progress(&format!(
            "copying gustavo ({} MB)",
            ctx.binary.len() / (1024 * 1024)
        ));
        put(r, &sudo, ctx, "binary", &ctx.binary, BINARY_PATH, "0755").await?;
        let sum = root(r, &sudo, ctx, "binary", &format!("sha256sum {BINARY_PATH}")).await?;
        if !sum.starts_with(&ctx.binary_sha) {
            return Err(fail(
                "binary",
                "the copy's SHA-256 differs from the original",
            ));
        }
        report.changes.push("binary".into());
        restart = true;
    }

    // The service.
    let (text, path, mode) = if facts.systemd {
        (ctx.service.systemd_unit(), UNIT_PATH, "0644")
    } else {
        (ctx.service.init_script(), INIT_PATH, "0755")
    };
    let text = text.map_err(|e| fail("service", e.to_string()))?;
    if facts.service.as_deref() != Some(sha256_hex(text.as_bytes()).as_str()) || ctx.force {
        progress("installing the service");
        put(r, &sudo, ctx, "service", text.as_bytes(), path, mode).await?;
        let enable = if facts.systemd {
            "systemctl daemon-reload && systemctl enable gustavo-agent"
        } else {
            "{ update-rc.d gustavo-agent defaults || chkconfig --add gustavo-agent || rc-update add gustavo-agent default; } >/dev/null 2>&1; true"
        };
        root(r, &sudo, ctx, "service", enable).await?;
        report.changes.push(
            if facts.systemd {
                "systemd unit"
            } else {
                "init script"
            }
            .into(),
        );
        restart = true;
    }

    // The join token.
    let mut has_token = facts.token;
    if let Some(token) = ctx.token.as_deref().filter(|_| !facts.joined) {
        progress("writing the join token");
        put(r, &sudo, ctx, "join", token.as_bytes(), TOKEN_PATH, "0600").await?;
        report.changes.push("join token".into());
        has_token = true;
        restart = true;
        report.expect_join = true;
    }

    // The agent: only once it can join (or has).
    let (start, restart_cmd) = if facts.systemd {
        (
            "systemctl start gustavo-agent",
            "systemctl restart gustavo-agent",
        )
    } else {
        (
            "/etc/init.d/gustavo-agent start",
            "/etc/init.d/gustavo-agent restart",
        )
    };
    if facts.joined || has_token {
        if !facts.running {
            progress("starting the agent");
            root(r, &sudo, ctx, "agent", start).await?;
            report.changes.push("agent started".into());
        } else if restart {
            progress("restarting the agent");
            root(r, &sudo, ctx, "agent", restart_cmd).await?;
            report.changes.push("agent restarted".into());
        }
        report.agent = if facts.joined {
            "running, joined".into()
        } else {
            "running".into()
        };
    } else {
        report.agent = "installed, not joined (use --join)".into();
    }
    Ok(report)
}

/// What `hosts check` shows for one host.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckRow {
    pub host: String,
    pub reachable: bool,
    pub error: Option<String>,
    pub node: String,
    pub os: String,
    pub docker: String,
    pub agent: String,
    pub joined: String,
    pub last_seen: Option<u64>,
}

/// Checks one host: its facts as root where it can be, as the login user otherwise.
pub async fn check_host<R: Remote>(r: &R, ctx: &Ctx) -> Result<Facts, StepError> {
    let sudo = match connect(r, ctx, false).await {
        Ok(s) => Some(s),
        Err(e) if e.step == "sudo" => None,
        Err(e) => return Err(e),
    };
    let script = probe_script();
    let text = match &sudo {
        Some(s) => root(r, s, ctx, "probe", &script).await?,
        None => {
            r.run("probe", &script, b"", ctx.step_timeout)
                .await
                .map_err(remote("probe"))?
                .stdout
        }
    };
    Ok(Facts::parse(&text))
}

pub async fn run(cli: &Cli, cmd: &HostsCmd) -> Result<()> {
    match cmd {
        HostsCmd::Install(args) => install(cli, args).await,
        HostsCmd::Check(args) => check(cli, args).await,
    }
}

fn usage(msg: String) -> anyhow::Error {
    Exit(EXIT_USAGE, msg).into()
}

/// The hosts of the list, and the SSH settings, checked before anything connects.
fn prepare(args: &HostsSshArgs) -> Result<(Vec<Host>, SshOptions, tempfile::TempDir)> {
    let names = gustavo_model::hostlist::expand(&args.hosts).map_err(|e| usage(e.to_string()))?;
    let hosts = names
        .iter()
        .map(|n| Host::parse(n))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| usage(e.to_string()))?;
    if let Some(k) = &args.ssh_key {
        crate::ssh::check_key(k).map_err(usage)?;
    }
    if args.parallel == 0 {
        return Err(usage("--parallel must be at least 1".into()));
    }
    let connect_timeout = parse_duration("connect-timeout", &args.connect_timeout)?;
    // ssh's ControlPath must be short (a Unix socket path): a private dir under /tmp.
    let control = tempfile::Builder::new()
        .prefix("gus-ssh.")
        .tempdir_in("/tmp")
        .context("cannot make a directory for ssh's control sockets")?;
    let opts = SshOptions {
        user: args.user.clone(),
        port: args.port,
        key: args.ssh_key.clone(),
        known_hosts: args.known_hosts.clone(),
        accept_new: args.accept_new_host_keys,
        connect_timeout,
        control_dir: control.path().to_path_buf(),
    };
    Ok((hosts, opts, control))
}

/// Reads the sudo password: from the file (which only its owner may read), else a prompt
/// at a terminal, else none.
fn password_source(file: Option<PathBuf>) -> Box<dyn Fn() -> Option<String> + Send + Sync> {
    Box::new(move || match &file {
        Some(p) => std::fs::read_to_string(p)
            .ok()
            .map(|s| s.lines().next().unwrap_or_default().to_string()),
        None => {
            use std::io::IsTerminal;
            if !std::io::stdin().is_terminal() {
                return None;
            }
            super::login::read_password("sudo password for the hosts: ", false).ok()
        }
    })
}

fn check_password_file(file: &Option<PathBuf>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(p) = file {
        let meta = std::fs::metadata(p)
            .map_err(|e| usage(format!("--sudo-password-file {}: {e}", p.display())))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(usage(format!(
                "--sudo-password-file {}: readable or writable by group or others; run chmod 600 on it",
                p.display()
            )));
        }
    }
    Ok(())
}

/// Runs `f` on every host, at most `parallel` at once, results in the list's order.
async fn each_host<T, F, Fut>(hosts: &[Host], parallel: usize, f: F) -> Vec<T>
where
    F: Fn(Host) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    use futures_lite::*;
    let limit = Arc::new(tokio::sync::Semaphore::new(parallel));
    let futs = hosts.iter().cloned().map(|h| {
        let limit = limit.clone();
        let fut = f(h);
        async move {
            let _slot = limit.acquire().await;
            fut.await
        }
    });
    join_all(futs).await
}

/// A small `join_all` (the binary does not depend on `futures`).
mod futures_lite {
    pub async fn join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
        let mut set = Vec::new();
        for f in futs {
            set.push(Box::pin(f));
        }
        let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (i, f) in set.iter_mut().enumerate() {
                if out[i].is_none() {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => out[i] = Some(v),
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        out.into_iter().flatten().collect()
    }
}

/// Whether a server URL names this machine's loopback (useless to another host).
fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let host = rest.split('/').next().unwrap_or_default();
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn progress_line(host: &str, msg: &str) {
    eprintln!("{host}: {msg}");
}

async fn install(cli: &Cli, args: &HostsInstallArgs) -> Result<()> {
    let (hosts, opts, _control) = prepare(&args.ssh)?;
    check_password_file(&args.ssh.sudo_password_file)?;
    let step_timeout = parse_duration("step-timeout", &args.ssh.step_timeout)?;
    gustavo_model::names::validate("group", &args.group)
        .map_err(|e| usage(format!("--group: {e}")))?;
    let binary_path = match &args.binary {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("cannot find this gustavo binary to copy")?,
    };
    let binary = std::fs::read(&binary_path)
        .with_context(|| format!("cannot read the binary {}", binary_path.display()))?;
    // A binary given with --binary is taken to be for the hosts' architecture (checked by
    // running `gustavo --version` on the host would need it copied first).
    let binary_arch = if args.binary.is_some() {
        "*".to_string()
    } else {
        std::env::consts::ARCH.to_string()
    };
    let target = crate::connect::target(cli)?;
    let server = args
        .join_server
        .clone()
        .unwrap_or_else(|| target.server.clone());
    let service = AgentService {
        binary: BINARY_PATH.into(),
        server: crate::connect::normalize_server(&server),
        group: args.group.clone(),
        extra: args.agent_args.clone(),
    };
    service.args().map_err(|e| usage(e.to_string()))?;
    if args.join_server.is_none() && is_loopback_url(&service.server) {
        return Err(usage(format!(
            "the hosts would reach the server at {}, which is each host itself; pass --join-server URL with an address the hosts can reach",
            service.server
        )));
    }
    let client = if args.join {
        Some(crate::connect::client(cli)?)
    } else {
        None
    };
    let mut token_id = None;
    let token = match &client {
        Some(c) => {
            let t = c
                .create_join_token(&gustavo_model::auth_api::CreateJoinToken {
                    group: Some(args.group.clone()),
                    ttl_s: Some(3600),
                    description: format!("gustavo hosts install {}", args.ssh.hosts),
                })
                .await
                .context("cannot make a join token for the run")?;
            token_id = Some(t.info.id.clone());
            Some(t.token)
        }
        None => None,
    };
    let ctx = Arc::new(Ctx {
        force: args.force,
        step_timeout,
        binary_sha: sha256_hex(&binary),
        binary: Arc::new(binary),
        binary_arch,
        service,
        token,
        password: tokio::sync::OnceCell::new(),
        password_source: password_source(args.ssh.sudo_password_file.clone()),
    });
    let results = each_host(&hosts, args.ssh.parallel, |h| {
        let (ctx, opts) = (ctx.clone(), opts.clone());
        async move {
            let ssh = SystemSsh::new(&opts, &h);
            let name = h.spec.clone();
            let progress = move |m: &str| progress_line(&name, m);
            let r = install_host(&ssh, &ctx, &progress).await;
            ssh.close().await;
            match &r {
                Ok(rep) if rep.changes.is_empty() => progress_line(&h.spec, "unchanged"),
                Ok(rep) => progress_line(&h.spec, &format!("done: {}", rep.changes.join(", "))),
                Err(e) => progress_line(&h.spec, &format!("FAILED at {e}")),
            }
            (h, r)
        }
    })
    .await;

    // Joined: wait for each host that was given a token to show up ready on the server.
    let mut joined: HashMap<String, String> = HashMap::new();
    if let Some(c) = &client {
        let want: Vec<String> = results
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .filter(|r| r.expect_join)
            .map(|r| r.node.clone())
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let nodes = c.list_nodes(None, None).await.unwrap_or_default();
            for n in &nodes {
                joined.insert(n.name.clone(), n.status.as_str().to_string());
            }
            let all = want
                .iter()
                .all(|w| joined.get(w).is_some_and(|s| s == "ready"));
            if all || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // A token nobody needed is revoked at once.
        if want.is_empty()
            && let Some(id) = &token_id
        {
            let _ = c.revoke_join_token(id).await;
        }
    }

    #[derive(Serialize)]
    struct Row {
        host: String,
        node: String,
        result: String,
        docker: String,
        agent: String,
        changes: Vec<String>,
        error: Option<String>,
    }
    let mut rows_out = Vec::new();
    let mut failed = 0;
    let mut changed = 0;
    for (h, r) in &results {
        rows_out.push(match r {
            Ok(rep) => {
                if !rep.changes.is_empty() {
                    changed += 1;
                }
                let agent = match joined.get(&rep.node) {
                    Some(s) => format!("{}, node {s}", rep.agent.trim_end_matches(", joined")),
                    None => rep.agent.clone(),
                };
                Row {
                    host: h.spec.clone(),
                    node: rep.node.clone(),
                    result: if rep.changes.is_empty() {
                        "unchanged".into()
                    } else {
                        "changed".into()
                    },
                    docker: rep.docker.clone(),
                    agent,
                    changes: rep.changes.clone(),
                    error: None,
                }
            }
            Err(e) => {
                failed += 1;
                Row {
                    host: h.spec.clone(),
                    node: String::new(),
                    result: "failed".into(),
                    docker: String::new(),
                    agent: String::new(),
                    changes: Vec::new(),
                    error: Some(e.to_string()),
                }
            }
        });
    }
    let table = rows_out
        .iter()
        .map(|r| {
            vec![
                r.host.clone(),
                r.node.clone(),
                r.result.clone(),
                r.docker.clone(),
                r.agent.clone(),
                match &r.error {
                    Some(e) => e.clone(),
                    None => r.changes.join(", "),
                },
            ]
        })
        .collect();
    show(
        cli.output,
        &rows_out,
        &["host", "node", "result", "docker", "agent", "changes"],
        table,
    );
    if cli.output == Format::Table {
        let ok = results.len() - failed;
        if changed == 0 && failed == 0 {
            eprintln!("nothing changed on {ok} hosts");
        } else {
            eprintln!(
                "{changed} hosts changed, {} unchanged, {failed} failed",
                ok - changed
            );
        }
    }
    if failed > 0 {
        return Err(Exit(1, String::new()).into());
    }
    Ok(())
}

async fn check(cli: &Cli, args: &HostsSshArgs) -> Result<()> {
    let (hosts, opts, _control) = prepare(args)?;
    check_password_file(&args.sudo_password_file)?;
    let step_timeout = parse_duration("step-timeout", &args.step_timeout)?;
    let ctx = Arc::new(Ctx {
        force: false,
        step_timeout,
        binary: Arc::new(Vec::new()),
        binary_sha: String::new(),
        binary_arch: "*".into(),
        service: AgentService {
            binary: BINARY_PATH.into(),
            server: String::new(),
            group: String::new(),
            extra: Vec::new(),
        },
        token: None,
        password: tokio::sync::OnceCell::new(),
        password_source: password_source(args.sudo_password_file.clone()),
    });
    let results = each_host(&hosts, args.parallel, |h| {
        let (ctx, opts) = (ctx.clone(), opts.clone());
        async move {
            let ssh = SystemSsh::new(&opts, &h);
            let r = check_host(&ssh, &ctx).await;
            ssh.close().await;
            (h, r)
        }
    })
    .await;
    // Joined and last seen, from the server when this CLI can reach one.
    let nodes = match crate::connect::client(cli) {
        Ok(c) => c.list_nodes(None, None).await.unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let by_name: HashMap<&str, &gustavo_model::api::Node> =
        nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let rows: Vec<CheckRow> = results
        .into_iter()
        .map(|(h, r)| match r {
            Ok(f) => {
                let node = by_name.get(f.hostname.as_str());
                CheckRow {
                    host: h.spec,
                    reachable: true,
                    error: None,
                    node: f.hostname.clone(),
                    os: format!("{} {}, {}", f.os, f.arch, f.distro),
                    docker: match (&f.engine, &f.docker) {
                        (Some(v), _) => v.clone(),
                        (None, Some(_)) => "installed, engine not answering".into(),
                        (None, None) => "missing".into(),
                    },
                    agent: match (f.binary.is_some(), f.running) {
                        (_, true) => format!(
                            "running{}",
                            f.version
                                .as_deref()
                                .map(|v| format!(" ({v})"))
                                .unwrap_or_default()
                        ),
                        (true, false) => "installed, stopped".into(),
                        (false, false) => "missing".into(),
                    },
                    joined: match node {
                        Some(n) => n.status.as_str().into(),
                        None if f.joined => "joined elsewhere?".into(),
                        None => "no".into(),
                    },
                    last_seen: node.map(|n| n.last_seen),
                }
            }
            Err(e) => CheckRow {
                host: h.spec,
                reachable: false,
                error: Some(e.to_string()),
                ..CheckRow::default()
            },
        })
        .collect();
    let table = rows
        .iter()
        .map(|r| {
            if let Some(e) = &r.error {
                return vec![
                    r.host.clone(),
                    "no".into(),
                    e.clone(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ];
            }
            vec![
                r.host.clone(),
                "yes".into(),
                r.os.clone(),
                r.docker.clone(),
                r.agent.clone(),
                r.joined.clone(),
                r.last_seen.map(last_seen).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    show(
        cli.output,
        &rows,
        &[
            "host",
            "reachable",
            "os",
            "docker",
            "agent",
            "joined",
            "last seen",
        ],
        table,
    );
    if rows.iter().any(|r| !r.reachable) {
        return Err(Exit(1, String::new()).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::ssh::Output;

    /// A host in memory: answers each script by what it starts with, records every script.
    struct FakeHost {
        facts: Mutex<String>,
        connect: String,
        log: Mutex<Vec<String>>,
        fail_on: Option<(&'static str, RemoteError)>,
    }

    impl FakeHost {
        fn new(connect: &str, facts: &str) -> FakeHost {
            FakeHost {
                facts: Mutex::new(facts.into()),
                connect: connect.into(),
                log: Mutex::new(Vec::new()),
                fail_on: None,
            }
        }
        fn log(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }
    }

    impl Remote for FakeHost {
        async fn run(
            &self,
            what: &str,
            script: &str,
            stdin: &[u8],
            _t: Duration,
        ) -> Result<Output, RemoteError> {
            self.log
                .lock()
                .unwrap()
                .push(format!("{what}: {script} <{} bytes>", stdin.len()));
            if let Some((step, e)) = &self.fail_on
                && *step == what
            {
                return Err(e.clone());
            }
            let stdout = if what == "connect" {
                self.connect.clone()
            } else if what == "probe" {
                self.facts.lock().unwrap().clone()
            } else if script.contains("mktemp") {
                "/tmp/gustavo-upload.abc\n".into()
            } else if script.contains("sha256sum") {
                format!("{} /usr/local/bin/gustavo\n", sha256_hex(b"BIN"))
            } else if script.contains("docker info") {
                "20.10.24\n".into()
            } else {
                String::new()
            };
            Ok(Output {
                code: 0,
                stdout,
                stderr: String::new(),
            })
        }
    }

    fn ctx(token: Option<&str>) -> Ctx {
        Ctx {
            force: false,
            step_timeout: Duration::from_secs(5),
            binary: Arc::new(b"BIN".to_vec()),
            binary_sha: sha256_hex(b"BIN"),
            binary_arch: "x86_64".into(),
            service: AgentService {
                binary: BINARY_PATH.into(),
                server: "https://10.0.0.1:7420".into(),
                group: "edge".into(),
                extra: vec![],
            },
            token: token.map(String::from),
            password: tokio::sync::OnceCell::new(),
            password_source: Box::new(|| Some("pw".into())),
        }
    }

    const FRESH: &str = "os=Linux\narch=x86_64\nhostname=red01\ninit=sysv\npkg=apt-get\n";

    #[tokio::test]
    async fn a_fresh_host_gets_everything_in_order() {
        let h = FakeHost::new("Linux\nx86_64\n1000\n", FRESH);
        let c = ctx(Some("G10abc::tok"));
        let r = install_host(&h, &c, &|_| {}).await.unwrap();
        assert_eq!(r.node, "red01");
        assert_eq!(
            r.changes,
            [
                "docker installed from apt-get",
                "binary",
                "init script",
                "join token",
                "agent started"
            ]
        );
        assert!(r.expect_join);
        let log = h.log();
        // sudo with the password, fed on stdin, never on the command line.
        assert!(
            log.iter()
                .any(|l| l.starts_with("sudo: sudo -S -p '' true <3 bytes>"))
        );
        assert!(log.iter().all(|l| !l.contains("pw")), "{log:#?}");
        assert!(
            log.iter()
                .any(|l| l.contains("apt-get install -y -q docker.io"))
        );
        assert!(
            log.iter()
                .any(|l| l.starts_with("binary: umask 077") && l.ends_with("<3 bytes>"))
        );
        assert!(
            log.iter()
                .any(|l| l.contains("/etc/init.d/gustavo-agent start"))
        );
    }

    #[tokio::test]
    async fn a_host_as_it_should_be_changes_nothing() {
        let c = ctx(Some("tok"));
        let init = c.service.init_script().unwrap();
        let facts = format!(
            "{FRESH}uid=0\ndocker=Docker version 20.10\nengine=20.10\nbinary={}\nservice={}\njoined=yes\ntoken=yes\nrunning=yes\n",
            sha256_hex(b"BIN"),
            sha256_hex(init.as_bytes())
        );
        let h = FakeHost::new("Linux\nx86_64\n0\n", &facts);
        let r = install_host(&h, &c, &|_| {}).await.unwrap();
        assert!(r.changes.is_empty(), "{:?}", r.changes);
        assert!(!r.expect_join);
        // Root: no sudo at all; only the connect and the probe ran.
        assert_eq!(h.log().len(), 2, "{:#?}", h.log());
        assert!(
            h.log()
                .iter()
                .all(|l| !l.contains("sudo -S") && !l.contains("sudo -n sh"))
        );
    }

    #[tokio::test]
    async fn force_reinstalls_and_restarts() {
        let mut c = ctx(None);
        c.force = true;
        let init = c.service.init_script().unwrap();
        let facts = format!(
            "{FRESH}docker=Docker version 20.10\nengine=20.10\nbinary={}\nservice={}\njoined=yes\nrunning=yes\n",
            sha256_hex(b"BIN"),
            sha256_hex(init.as_bytes())
        );
        let h = FakeHost::new("Linux\nx86_64\n1000\nsudo-ok\n", &facts);
        let r = install_host(&h, &c, &|_| {}).await.unwrap();
        assert_eq!(
            r.changes,
            [
                "docker reinstalled from apt-get",
                "binary",
                "init script",
                "agent restarted"
            ]
        );
        assert!(h.log().iter().any(|l| l.contains("sudo -n sh -c")));
        assert!(h.log().iter().any(|l| l.contains("--reinstall")));
    }

    #[tokio::test]
    async fn wrong_hosts_fail_at_a_named_step() {
        let c = ctx(None);
        let e = install_host(&FakeHost::new("Darwin\narm64\n501\n", ""), &c, &|_| {})
            .await
            .unwrap_err();
        assert_eq!(e.step, "check");
        assert!(e.message.contains("not a Linux machine"), "{e}");
        let e = install_host(&FakeHost::new("Linux\naarch64\n0\n", ""), &c, &|_| {})
            .await
            .unwrap_err();
        assert!(
            e.message
                .contains("the host is aarch64 but the binary to copy is for x86_64"),
            "{e}"
        );
        let mut h = FakeHost::new("", "");
        h.fail_on = Some((
            "connect",
            RemoteError::HostKey("Host key verification failed.".into()),
        ));
        let e = install_host(&h, &c, &|_| {}).await.unwrap_err();
        assert_eq!(e.step, "connect");
        assert!(e.message.contains("--accept-new-host-keys"), "{e}");
        let mut c2 = ctx(None);
        c2.password_source = Box::new(|| None);
        let e = install_host(&FakeHost::new("Linux\nx86_64\n1000\n", FRESH), &c2, &|_| {})
            .await
            .unwrap_err();
        assert_eq!(e.step, "sudo");
        assert!(e.message.contains("--sudo-password-file"), "{e}");
    }

    #[test]
    fn loopback_servers_are_caught() {
        assert!(is_loopback_url("https://127.0.0.1:7420"));
        assert!(is_loopback_url("https://localhost:7420/"));
        assert!(is_loopback_url("http://[::1]:7420"));
        assert!(!is_loopback_url("https://10.0.0.1:7420"));
        assert!(!is_loopback_url("https://edge.example:7420"));
    }

    #[tokio::test]
    async fn systemd_hosts_get_a_unit() {
        let facts =
            format!("{FRESH}init=systemd\nuid=0\ndocker=D\nengine=1\n").replace("init=sysv\n", "");
        let h = FakeHost::new("Linux\nx86_64\n0\n", &facts);
        let r = install_host(&h, &ctx(Some("t")), &|_| {}).await.unwrap();
        assert!(
            r.changes.contains(&"systemd unit".to_string()),
            "{:?}",
            r.changes
        );
        assert!(
            h.log()
                .iter()
                .any(|l| l.contains("systemctl daemon-reload && systemctl enable gustavo-agent"))
        );
        assert!(
            h.log()
                .iter()
                .any(|l| l.contains("systemctl start gustavo-agent"))
        );
    }
}
