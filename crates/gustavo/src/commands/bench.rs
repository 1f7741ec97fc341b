//! `gustavo bench fleet`: a simulated fleet against one server, measured.
//!
//! Registers N simulated agents (the real agent code on a simulated runtime), holds steady
//! state, then creates, updates and deletes an app on a group holding all of them, timing
//! each change until every agent reports it. Reports registration rate, per-endpoint
//! latency as the agents saw it, convergence time per change, the server's CPU and memory,
//! and loopback bytes per agent per minute while idle.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use gustavo_agent::fleet::{EndpointLatency, Fleet, FleetConfig, Latencies};
use gustavo_client::Client;
use gustavo_model::spec;
use serde::Serialize;

use crate::cli::{BenchCmd, Cli, FleetArgs, Format};
use crate::connect::normalize_server;
use crate::output::{parse_duration, show};

const IMAGE_V1: &str = "gustavo-bench/app:v1";
const IMAGE_V2: &str = "gustavo-bench/app:v2";
const GROUP: &str = "fleet";
const APP: &str = "bench";
/// The apps besides the one timed (`--apps`) are named `background-1`…
const BACKGROUND: &str = "background";
/// How often a person's API call is made while a change spreads (`nodes get` of one agent):
/// the API's latency under load is measured next to the changes (design.md §8: p99 < 100 ms).
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// The probe's row in the latency table.
const PROBE_LABEL: &str = "nodes get (admin, during the changes)";

#[derive(Debug, Serialize)]
pub struct Report {
    pub agents: usize,
    /// Apps each agent runs during the changes, the one changed included.
    pub apps: usize,
    /// Apps of a group no agent is in.
    pub other_apps: usize,
    pub heartbeat_s: f64,
    pub connections: usize,
    pub registration_s: f64,
    pub registrations_per_s: f64,
    pub idle_window_s: f64,
    /// Loopback bytes (both directions) per agent per minute while idle.
    pub idle_bytes_per_agent_per_min: f64,
    pub server: Option<ProcessStats>,
    pub changes: Vec<Change>,
    /// The simulated agents' requests from the idle window on, per endpoint (none when
    /// they stream).
    pub latency: Vec<EndpointLatency>,
    /// A person's API call while the changes spread (`nodes get` of one agent every
    /// 100 ms), over every change.
    pub api: Option<EndpointLatency>,
}

#[derive(Debug, Serialize)]
pub struct ProcessStats {
    pub pid: u32,
    /// CPU over the idle window, in % of one core.
    pub idle_cpu_percent: f64,
    pub rss_mb_idle: f64,
    pub peak_rss_mb: f64,
}

#[derive(Debug, Serialize)]
pub struct Change {
    pub change: &'static str,
    pub seconds: f64,
    pub converged: usize,
    /// CPU the server and the simulated agents used while the change spread, in seconds of
    /// one core: which side limits convergence on a shared machine.
    pub server_cpu_s: Option<f64>,
    /// Of `server_cpu_s`, the time in the kernel (system calls, TCP; on loopback a send
    /// also runs the receiving socket's side).
    pub server_kernel_cpu_s: Option<f64>,
    pub agents_cpu_s: f64,
    /// Loopback bytes while the change spread, per agent: what one change costs each
    /// device's link, both directions (with whatever else went meanwhile, e.g. vitals).
    pub bytes_per_agent: f64,
    /// The probe's API calls while the change spread (`nodes get`, every 100 ms).
    pub api: Option<EndpointLatency>,
}

/// A server the benchmark started itself, as a child process so its CPU and memory can be
/// read from /proc.
struct OwnServer {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_token(dir: &Path, file: &str) -> Result<String> {
    Ok(std::fs::read_to_string(dir.join(file))
        .with_context(|| format!("reading {file}"))?
        .trim()
        .to_string())
}

/// Starts a server over plain HTTP: the simulated agents multiplex over HTTP/2 without TLS
/// (prior knowledge), so the figures measure the protocol and the server, not TLS.
fn start_server(cpus: Option<&str>) -> Result<(OwnServer, String, String, String)> {
    let dir = tempfile::tempdir().context("creating a data dir for the server")?;
    let data = dir.path().join("data");
    let log = std::fs::File::create(dir.path().join("server.log"))?;
    let exe = std::env::current_exe().context("finding the gustavo binary")?;
    // taskset execs the server, so the child's pid is the server's.
    let mut cmd = match cpus {
        Some(list) => {
            let mut c = Command::new("taskset");
            c.args(["-c", list]).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let child = cmd
        .args([
            "server",
            "--no-agent",
            "--insecure-http",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .env("GUSTAVO_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the server (with --server-cpus: is taskset installed?)")?;
    let own = OwnServer { child, _dir: dir };
    let started = Instant::now();
    let config = data.join("client.toml");
    while !config.exists() || !data.join("join-token").exists() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the server did not start within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let file = gustavo_client::config::ClientFile::load(&config)?;
    let url = file
        .server
        .ok_or_else(|| anyhow!("client.toml names no server"))?;
    let admin = file
        .token
        .ok_or_else(|| anyhow!("client.toml holds no token"))?;
    let join = read_token(&data, "join-token")?;
    Ok((own, url, admin, join))
}

/// CPU ticks a process has used in user space and in the kernel, from /proc.
fn cpu_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}

/// CPU ticks (user + system) and RSS of a process, from /proc.
fn proc_sample(pid: u32) -> Option<(u64, f64, f64)> {
    let (user, system) = cpu_ticks(pid)?;
    let ticks = user + system;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Some((ticks, kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0))
}

/// Bytes through the loopback interface (sent; every loopback byte is also received).
fn loopback_bytes() -> u64 {
    std::fs::read_to_string("/proc/net/dev")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.trim_start().starts_with("lo:"))
                .and_then(|l| l.split_once(':'))
                .and_then(|(_, v)| v.split_whitespace().nth(8).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// Ticks per second of /proc/<pid>/stat: 100 on every Linux this runs on.
const CLK_TCK: f64 = 100.0;

/// CPU seconds used so far by a process (None when it cannot be read).
fn cpu_s(pid: Option<u32>) -> Option<f64> {
    cpu_split(pid).map(|(user, system)| user + system)
}

/// CPU seconds used so far by a process, in user space and in the kernel.
fn cpu_split(pid: Option<u32>) -> Option<(f64, f64)> {
    pid.and_then(cpu_ticks)
        .map(|(user, system)| (user as f64 / CLK_TCK, system as f64 / CLK_TCK))
}

/// A person's API call made over and over while a change spreads, on a connection and an
/// OS thread of its own: the simulated fleet saturates its core during a change, and a call
/// made from its runtime would time the fleet's queue, not the server.
struct Probe {
    /// What the probe's thread is to do.
    state: tokio::sync::watch::Sender<ProbeState>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Every call, and those of the change under way.
    all: Arc<Latencies>,
    this_change: Arc<Latencies>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeState {
    /// Between changes: no call.
    Idle,
    /// A change spreads: a call at once, then every [`PROBE_EVERY`].
    Calling,
    Stop,
}

impl Probe {
    fn new(url: &str, admin_token: &str, node: String) -> Result<Probe> {
        let (all, this_change) = (Arc::<Latencies>::default(), Arc::<Latencies>::default());
        let (a, c) = (all.observer(), this_change.observer());
        let both: gustavo_client::Observer = Arc::new(move |endpoint, took, status| {
            a(endpoint, took, status);
            c(endpoint, took, status);
        });
        let client = Client::new(url, admin_token).with_observer(both);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the API probe's runtime")?;
        let (state, mut told) = tokio::sync::watch::channel(ProbeState::Idle);
        let thread = std::thread::spawn(move || {
            rt.block_on(async {
                loop {
                    match told.wait_for(|s| *s != ProbeState::Idle).await.as_deref() {
                        Ok(ProbeState::Calling) => {}
                        _ => return,
                    }
                    // A failure is recorded (as an error) and the calls go on.
                    let _ = client.get_node(&node).await;
                    tokio::time::sleep(PROBE_EVERY).await;
                }
            })
        });
        Ok(Probe {
            state,
            thread: Some(thread),
            all,
            this_change,
        })
    }

    /// Calls from now until [`Probe::this_change`].
    fn start(&self) {
        self.this_change.reset();
        self.state.send_replace(ProbeState::Calling);
    }

    /// The latencies of every call so far.
    fn summary(&self) -> Option<EndpointLatency> {
        self.all.summary().pop()
    }

    /// Stops the calls; the latencies of those since [`Probe::start`].
    fn this_change(&self) -> Option<EndpointLatency> {
        self.state.send_replace(ProbeState::Idle);
        self.this_change.summary().pop()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.state.send_replace(ProbeState::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What every timed change is measured with.
struct Changes<'a> {
    admin: &'a Client,
    probe: Probe,
    fleet: &'a Fleet,
    server_pid: Option<u32>,
    agents: usize,
    timeout: Duration,
}

impl Changes<'_> {
    /// Applies a change and times it until every agent reports it, with the CPU each side
    /// used, while the probe calls the API.
    async fn timed(
        &self,
        change: &'static str,
        apply: impl std::future::Future<Output = Result<(), gustavo_client::ClientError>>,
    ) -> Result<Change> {
        let me = Some(std::process::id());
        let (s0, b0, l0) = (
            cpu_split(self.server_pid),
            cpu_s(me).unwrap_or(0.0),
            loopback_bytes(),
        );
        let t = Instant::now();
        self.probe.start();
        let spread = async {
            apply.await?;
            wait_converged(self.admin, APP, self.agents, t, self.timeout, change).await
        };
        let converged = match spread.await {
            Ok(n) => n,
            Err(e) => {
                stragglers(self.admin, self.fleet).await;
                return Err(e);
            }
        };
        let seconds = t.elapsed().as_secs_f64();
        let (s1, b1, l1) = (
            cpu_split(self.server_pid),
            cpu_s(me).unwrap_or(0.0),
            loopback_bytes(),
        );
        Ok(Change {
            change,
            seconds,
            converged,
            server_cpu_s: s0.zip(s1).map(|(a, b)| b.0 + b.1 - a.0 - a.1),
            server_kernel_cpu_s: s0.zip(s1).map(|(a, b)| b.1 - a.1),
            agents_cpu_s: b1 - b0,
            bytes_per_agent: l1.saturating_sub(l0) as f64 / self.agents as f64,
            api: self.probe.this_change(),
        })
    }
}

/// Prints, for a few agents that did not converge, what the server knows and what the
/// simulated device holds.
async fn stragglers(admin: &Client, fleet: &Fleet) {
    let rollout = match admin.rollout(APP).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("  cannot read the rollout to show the agents left: {e}");
            return;
        }
    };
    let left: Vec<_> = rollout.nodes.iter().filter(|n| !n.converged).collect();
    eprintln!(
        "  {} agents not converged on revision {}; the first {}:",
        left.len(),
        rollout.revision,
        left.len().min(5)
    );
    for n in left.iter().take(5) {
        eprintln!(
            "  - {}: server sees {:?}, state {:?}, ready {}/{}{}",
            n.node,
            n.node_status,
            n.state,
            n.ready,
            n.desired,
            n.error
                .as_deref()
                .map(|e| format!(", error {e}"))
                .unwrap_or_default()
        );
        if let Some(d) = fleet.describe(&n.node) {
            eprintln!("    {d}");
        }
    }
}

async fn wait_converged(
    admin: &Client,
    app: &str,
    agents: usize,
    started: Instant,
    timeout: Duration,
    what: &str,
) -> Result<usize> {
    // Often enough to time the change well, rarely enough not to load the server (a
    // summary over 100,000 nodes is work).
    let every = Duration::from_millis(match agents {
        0..10_000 => 50,
        10_000..50_000 => 100,
        _ => 250,
    });
    let mut last = usize::MAX;
    loop {
        // A slow or failed look is reported and retried: the benchmark's own polling must
        // not be what ends the run.
        let s = match admin.rollout_summary(app).await {
            Ok(s) => s,
            Err(e) => {
                if started.elapsed() > timeout {
                    bail!(
                        "{what}: the rollout summary still fails after {}s: {e}",
                        timeout.as_secs()
                    );
                }
                eprintln!("  {what}: cannot read the rollout yet: {e}");
                tokio::time::sleep(every).await;
                continue;
            }
        };
        if s.converged != last {
            eprintln!(
                "  {what}: {}/{} converged ({:.1}s)",
                s.converged,
                agents,
                started.elapsed().as_secs_f64()
            );
            last = s.converged;
        }
        if s.converged >= agents && s.total >= agents {
            return Ok(s.converged);
        }
        if started.elapsed() > timeout {
            bail!(
                "{what}: only {}/{agents} agents converged after {}s ({} failed)",
                s.converged,
                timeout.as_secs(),
                s.failed
            );
        }
        tokio::time::sleep(every).await;
    }
}

async fn fleet(cli: &Cli, args: &FleetArgs) -> Result<Report> {
    if args.agents == 0 {
        bail!(crate::Exit(
            crate::EXIT_USAGE,
            "--agents must be at least 1".into()
        ));
    }
    let heartbeat = parse_duration("heartbeat", &args.heartbeat)?;
    let idle = parse_duration("duration", &args.duration)?;
    let sim_delay = parse_duration("sim-delay", &args.sim_delay)?;
    let timeout = parse_duration("timeout", &args.timeout)?;

    let (own, url, admin_token, join_token) = match &cli.server {
        Some(s) => {
            let admin = cli
                .token
                .clone()
                .ok_or_else(|| anyhow!("--token (the admin token) is needed with --server"))?;
            let join = args
                .join_token
                .clone()
                .ok_or_else(|| anyhow!("--join-token is needed with --server"))?;
            (None, normalize_server(s), admin, join)
        }
        None => {
            let (own, url, admin, join) = start_server(args.server_cpus.as_deref())?;
            (Some(own), url, admin, join)
        }
    };
    let pid = own.as_ref().map(|o| o.child.id());
    let admin = Client::new(&url, &admin_token);
    eprintln!("bench: {} agents against {url}", args.agents);

    let cfg = FleetConfig {
        server: url.clone(),
        join_token,
        agents: args.agents,
        group: GROUP.into(),
        prefix: args.prefix.clone(),
        heartbeat,
        per_connection: args.per_connection,
        sim_delay,
        images: vec![IMAGE_V1.into(), IMAGE_V2.into()],
        stream: !args.no_stream,
    };
    let started = Instant::now();
    let fleet = Fleet::spawn(&cfg);
    let mut last = 0;
    loop {
        let s = match admin.stats().await {
            Ok(s) => s,
            Err(e) => {
                if started.elapsed() > timeout {
                    bail!(
                        "registration: the server's stats still fail after {}s: {e}",
                        timeout.as_secs()
                    );
                }
                eprintln!("  registration: cannot read the server's stats yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let registered = s.nodes;
        if registered != last {
            eprintln!(
                "  registered {registered}/{} ({:.1}s)",
                args.agents,
                started.elapsed().as_secs_f64()
            );
            last = registered;
        }
        if s.nodes >= args.agents {
            break;
        }
        if started.elapsed() > timeout {
            bail!(
                "only {}/{} agents registered after {}s",
                s.nodes,
                args.agents,
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let registration_s = started.elapsed().as_secs_f64();
    eprintln!("bench: all registered in {registration_s:.1}s");
    // Every agent's stream open (or its first long-poll answered) before the idle window:
    // at 100,000 the last streams open seconds after the last registration, and an idle
    // window over that tail measured the join burst, not steady state.
    let endpoint = if args.no_stream { "sync" } else { "stream" };
    // The apps besides the one timed, each on every agent before the idle window.
    let others = |image: &str| {
        format!("{BACKGROUND}:\n  docker_image: {image}\n  env_vars: {{MODE: background}}\n")
    };
    let background = spec::parse_one(&others(IMAGE_V1), BACKGROUND)?;
    for i in 1..args.apps {
        let name = format!("{BACKGROUND}-{i}");
        let t = Instant::now();
        admin
            .create_app(&name, &background, &[GROUP.to_string()])
            .await?;
        wait_converged(&admin, &name, args.agents, t, timeout, &name).await?;
    }
    for i in 0..args.other_apps {
        let name = format!("{BACKGROUND}-elsewhere-{i}");
        admin
            .create_app(&name, &background, &[format!("{GROUP}-elsewhere")])
            .await?;
    }
    loop {
        let open = fleet.latencies.count(endpoint);
        if open >= args.agents {
            break;
        }
        if started.elapsed() > timeout {
            bail!(
                "only {open}/{} agents had their {endpoint} answered after {}s",
                args.agents,
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "bench: every agent's {endpoint} answered after {:.1}s; idling {}s",
        started.elapsed().as_secs_f64(),
        idle.as_secs()
    );

    // Steady state: let the burst settle, then measure an idle window.
    tokio::time::sleep(Duration::from_secs(2).min(idle)).await;
    fleet.latencies.reset();
    let (bytes0, t0, proc0) = (loopback_bytes(), Instant::now(), pid.and_then(proc_sample));
    tokio::time::sleep(idle).await;
    let (bytes1, window, proc1) = (
        loopback_bytes(),
        t0.elapsed().as_secs_f64(),
        pid.and_then(proc_sample),
    );
    let server = match (pid, proc0, proc1) {
        (Some(pid), Some((c0, _, _)), Some((c1, rss, _))) => Some(ProcessStats {
            pid,
            idle_cpu_percent: (c1 - c0) as f64 / CLK_TCK / window * 100.0,
            rss_mb_idle: rss,
            peak_rss_mb: 0.0,
        }),
        _ => None,
    };
    let idle_bytes_per_agent_per_min =
        (bytes1 - bytes0) as f64 / args.agents as f64 / (window / 60.0);

    // Changes: create, update, delete, each timed until every agent reports it.
    let yaml =
        |image: &str| format!("{APP}:\n  docker_image: {image}\n  env_vars: {{MODE: bench}}\n");
    let v1 = spec::parse_one(&yaml(IMAGE_V1), APP)?;
    let v2 = spec::parse_one(&yaml(IMAGE_V2), APP)?;
    let group = [GROUP.to_string()];
    let run = Changes {
        admin: &admin,
        probe: Probe::new(
            &url,
            &admin_token,
            fleet.first_agent().unwrap_or_default().to_string(),
        )?,
        fleet: &fleet,
        server_pid: pid,
        agents: args.agents,
        timeout,
    };
    let mut changes = vec![
        run.timed("create", async {
            admin.create_app(APP, &v1, &group).await.map(|_| ())
        })
        .await?,
    ];
    for i in 0..args.updates {
        let spec = if i % 2 == 0 { &v2 } else { &v1 };
        changes.push(
            run.timed("update", async {
                admin.update_app(APP, spec, None).await.map(|_| ())
            })
            .await?,
        );
    }
    changes.push(
        run.timed("delete", async { admin.delete_app(APP).await.map(|_| ()) })
            .await?,
    );

    let peak = pid
        .and_then(proc_sample)
        .map(|(_, _, hwm)| hwm)
        .unwrap_or(0.0);
    let latency = fleet.latencies.summary();
    let api = run.probe.summary();
    drop(run);
    let connections = fleet.connections;
    fleet.stop().await;
    drop(own);
    Ok(Report {
        agents: args.agents,
        apps: args.apps.max(1),
        other_apps: args.other_apps,
        heartbeat_s: heartbeat.as_secs_f64(),
        connections,
        registration_s,
        registrations_per_s: args.agents as f64 / registration_s,
        idle_window_s: window,
        idle_bytes_per_agent_per_min,
        server: server.map(|s| ProcessStats {
            peak_rss_mb: peak,
            ..s
        }),
        changes,
        latency,
        api,
    })
}

fn print(format: Format, r: &Report) {
    if format != Format::Table {
        crate::output::data(format, r);
        return;
    }
    outln!(
        "agents {} · {} app(s) each{} · heartbeat {}s · {} HTTP/2 connections",
        r.agents,
        r.apps,
        if r.other_apps > 0 {
            format!(" · {} apps of another group", r.other_apps)
        } else {
            String::new()
        },
        r.heartbeat_s,
        r.connections
    );
    outln!(
        "registration: {:.1}s ({:.0}/s)",
        r.registration_s,
        r.registrations_per_s
    );
    outln!(
        "idle ({:.0}s window): {:.0} bytes per agent per minute on loopback ({:.1} bit/s per agent)",
        r.idle_window_s,
        r.idle_bytes_per_agent_per_min,
        r.idle_bytes_per_agent_per_min * 8.0 / 60.0
    );
    if let Some(s) = &r.server {
        outln!(
            "server: {:.1}% CPU idle, {:.0} MB RSS idle, {:.0} MB peak",
            s.idle_cpu_percent,
            s.rss_mb_idle,
            s.peak_rss_mb
        );
    }
    let rows = r
        .changes
        .iter()
        .map(|c| {
            vec![
                c.change.to_string(),
                format!("{:.2}s", c.seconds),
                c.converged.to_string(),
                c.server_cpu_s
                    .map(|s| {
                        let kernel = c.server_kernel_cpu_s.unwrap_or(0.0) / s.max(f64::EPSILON);
                        format!(
                            "{s:.2}s ({:.0} µs per agent, {:.0} % kernel)",
                            s * 1e6 / r.agents as f64,
                            kernel * 100.0
                        )
                    })
                    .unwrap_or_else(|| "-".into()),
                format!("{:.2}s", c.agents_cpu_s),
                format!("{:.0}", c.bytes_per_agent),
                c.api
                    .as_ref()
                    .map(|a| format!("{:.1} / {:.1}", a.p50_ms, a.max_ms))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    show(
        format,
        &r.changes,
        &[
            "change",
            "every agent has it",
            "agents",
            "server cpu",
            "simulator cpu",
            "bytes per agent",
            "api p50 / max ms",
        ],
        rows,
    );
    let probe = r.api.clone().map(|mut a| {
        a.endpoint = PROBE_LABEL.into();
        a
    });
    let rows = r
        .latency
        .iter()
        .chain(&probe)
        .map(|l| {
            let name = if l.endpoint == "desired" || l.endpoint == "sync" {
                format!("{} (long-poll, incl. wait)", l.endpoint)
            } else {
                l.endpoint.clone()
            };
            vec![
                name,
                l.count.to_string(),
                l.errors.to_string(),
                l.timeouts.to_string(),
                format!("{:.1}", l.p50_ms),
                format!("{:.1}", l.p99_ms),
                format!("{:.1}", l.max_ms),
            ]
        })
        .collect();
    show(
        format,
        &r.latency,
        &[
            "endpoint",
            "requests",
            "errors",
            "of them timeouts",
            "p50 ms",
            "p99 ms",
            "max ms",
        ],
        rows,
    );
}

pub async fn run(cli: &Cli, cmd: &BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Fleet(args) => {
            let report = fleet(cli, args).await?;
            print(cli.output, &report);
            if let Some(path) = &args.save {
                write_json(path, &report)?;
            }
            Ok(())
        }
    }
}

fn write_json(path: &PathBuf, r: &Report) -> Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(r)?)
        .with_context(|| format!("writing {}", path.display()))
}
