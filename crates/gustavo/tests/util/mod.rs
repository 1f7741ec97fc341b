//! Shared helpers for the integration tests: spawn the real `gustavo` binary (server and
//! agents) on loopback with fresh data dirs and logs in files, run CLI commands as a user
//! would, and look at the real Docker engine.
//!
//! Every test names its nodes uniquely (test name + process id), so tests run in parallel on
//! one engine without touching each other's containers, and every agent's containers are
//! removed when the test ends.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_gustavo");

/// The local registry the test script starts (scripts/test-registry.sh).
pub fn registry() -> String {
    std::env::var("GUSTAVO_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into())
}

/// Fails loudly when a real component is missing: a test that skips would pass for nothing.
pub fn require_docker_and_registry() {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    assert!(
        matches!(&ok, Ok(o) if o.status.success()),
        "the Docker engine is required for this test (run scripts/test.sh): {ok:?}"
    );
    let reg = registry();
    let answered = std::net::TcpStream::connect_timeout(
        &reg.parse().expect("registry address"),
        Duration::from_secs(2),
    )
    .is_ok();
    assert!(
        answered,
        "the test registry at {reg} is required (run scripts/test.sh)"
    );
}

/// A command's stderr, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The first of `n` consecutive host ports that are free now (on every address), so tests
/// that publish ports do not collide with each other or with another run on the engine.
pub fn free_ports(n: u16) -> u16 {
    for _ in 0..200 {
        let first = std::net::TcpListener::bind("0.0.0.0:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("an ephemeral port");
        if first.checked_add(n).is_none() {
            continue;
        }
        let held: Vec<_> = (first..first + n)
            .map_while(|p| std::net::TcpListener::bind(("0.0.0.0", p)).ok())
            .collect();
        if held.len() == usize::from(n) {
            return first;
        }
    }
    panic!("no block of {n} free ports");
}

/// A name unique to this test process.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", std::process::id() % 100_000)
}

pub fn wait_for(what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    wait_for_showing(what, timeout, f, String::new)
}

/// [`wait_for`], and on a timeout what `show` says (the state to read the failure by).
pub fn wait_for_showing(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
    show: impl FnOnce() -> String,
) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}{}", show());
}

pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `docker inspect -f FORMAT NAME`, or None if no such container.
pub fn inspect(name: &str, format: &str) -> Option<String> {
    let out = Command::new("docker")
        .args(["inspect", "-f", format, name])
        .output()
        .expect("docker runs");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Names of a node's containers in the given Docker state filter (e.g. `running`).
pub fn containers_of(node: &str, status: Option<&str>) -> Vec<String> {
    let label = format!("label=gustavo.node={node}");
    let mut args = vec!["ps", "-a", "--filter", &label, "--format", "{{.Names}}"];
    let st;
    if let Some(s) = status {
        st = format!("status={s}");
        args.extend(["--filter", &st]);
    }
    let mut v: Vec<String> = docker(&args)
        .lines()
        .map(String::from)
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v
}

/// A container's CPU limit in nano-CPUs, as `docker inspect` shows it (-1: no such container).
pub fn nano_cpus(container: &str) -> i64 {
    inspect(container, "{{.HostConfig.NanoCpus}}")
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(-1)
}

/// A container's memory and memory+swap limits in bytes (-2: unreadable).
pub fn memory_limits(container: &str) -> (i64, i64) {
    let v = inspect(
        container,
        "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}}",
    )
    .unwrap_or_default();
    let mut it = v.split_whitespace().map(|x| x.parse().unwrap_or(-2));
    (it.next().unwrap_or(-2), it.next().unwrap_or(-2))
}

/// A container's state (`running`, `exited`…; empty: no such container).
pub fn state(container: &str) -> String {
    inspect(container, "{{.State.Status}}").unwrap_or_default()
}

/// A plain HTTP GET on loopback, returning the body ("" when nothing answers).
pub fn http_get(port: u16) -> String {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(
        &([127, 0, 0, 1], port).into(),
        Duration::from_secs(1),
    ) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn spawn(args: &[&str], log: &Path) -> Child {
    spawn_wrapped(&[], args, log)
}

/// Spawns `gustavo ARGS`, or `WRAPPER… gustavo ARGS` (e.g. `prlimit --nofile=…`).
fn spawn_wrapped(wrapper: &[String], args: &[&str], log: &Path) -> Child {
    let out = std::fs::File::create(log).expect("log file");
    let mut cmd = match wrapper.split_first() {
        Some((program, pre)) => {
            let mut c = Command::new(program);
            c.args(pre).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    cmd.args(args)
        .env("GUSTAVO_LOG", "info,gustavo=debug")
        .env_remove("GUSTAVO_SERVER")
        .env_remove("GUSTAVO_TOKEN")
        .env_remove("GUSTAVO_CONFIG")
        .env_remove("GUSTAVO_CA_FILE")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log file"))
        .stderr(out)
        .spawn()
        .expect("gustavo starts")
}

/// A `gustavo server --no-agent` on a loopback port with its own data dir.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub admin: String,
    pub join: String,
    child: Option<Child>,
    listen: String,
    extra: Vec<String>,
    wrapper: Vec<String>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// A server with extra flags, e.g. `--insecure-http`.
    pub fn start_with(extra: &[&str]) -> Server {
        Server::start_wrapped(&[], extra)
    }

    /// A server run by a wrapper command, e.g. `prlimit --nofile=128:512`, with extra flags.
    pub fn start_wrapped(wrapper: &[&str], extra: &[&str]) -> Server {
        Server::start_full("127.0.0.1:0", wrapper, extra)
    }

    /// A server listening on `listen` (e.g. a test network's gateway, `172.31.0.1:0`, for
    /// agents in containers to reach), with extra flags.
    pub fn start_on(listen: &str, extra: &[&str]) -> Server {
        Server::start_full(listen, &[], extra)
    }

    fn start_full(listen: &str, wrapper: &[&str], extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = Server {
            dir,
            url: String::new(),
            admin: String::new(),
            join: String::new(),
            child: None,
            listen: listen.into(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            wrapper: wrapper.iter().map(|a| a.to_string()).collect(),
        };
        s.launch();
        s
    }

    pub fn tls(&self) -> bool {
        self.url.starts_with("https://")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The server's CA certificate (PEM file), which clients must trust.
    pub fn ca_file(&self) -> PathBuf {
        self.data_dir().join("ca.crt")
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.ca_file()).expect("the server wrote its CA")
    }

    /// The client config the server wrote for its admin.
    pub fn config(&self) -> PathBuf {
        self.data_dir().join("client.toml")
    }

    /// An API client trusting this server's CA, presenting `token`.
    pub fn client(&self, token: &str) -> gustavo_client::Client {
        let ca = self.tls().then(|| self.ca_pem());
        gustavo_client::Client::with_ca(&self.url, token, ca.as_deref()).expect("client")
    }

    /// Runs a CLI command with `input` on stdin (passwords).
    pub fn cli_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = Command::new(BIN)
            .args(args)
            .env("GUSTAVO_CONFIG", self.config())
            .env_remove("GUSTAVO_SERVER")
            .env_remove("GUSTAVO_TOKEN")
            .env_remove("GUSTAVO_CA_FILE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gustavo runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().expect("gustavo runs")
    }

    /// Creates a user with the CLI and logs them in; returns their session token.
    pub fn user(&self, name: &str, role: &str, groups: &[&str]) -> String {
        let mut args = vec!["users", "create", name, "--role", role];
        for g in groups {
            args.extend(["--group", g]);
        }
        let out = self.cli_stdin(&args, "pass-word-1\n");
        assert!(
            out.status.success(),
            "users create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(self.client("").login(name, "pass-word-1", None))
            .expect("login")
            .token
    }

    fn launch(&mut self) {
        let data = self.data_dir();
        let _ = std::fs::remove_file(data.join("client.toml"));
        let mut args = vec![
            "server",
            "--no-agent",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &self.listen,
        ];
        // Node pressure acts on the whole machine's load, which the suite's parallel tests
        // drive up: off unless a test asks for it.
        if !self.extra.iter().any(|a| a.starts_with("--pressure")) {
            args.extend(["--pressure", "off"]);
        }
        args.extend(self.extra.iter().map(String::as_str));
        let child = spawn_wrapped(&self.wrapper, &args, &self.dir.path().join("server.log"));
        self.child = Some(child);
        wait_for(
            "the server to write client.toml",
            Duration::from_secs(20),
            || data.join("client.toml").exists(),
        );
        let cfg = gustavo_client::config::ClientFile::load(&data.join("client.toml"))
            .expect("the server writes a valid client.toml");
        self.url = cfg.server.expect("client.toml names the server");
        let insecure = self.extra.iter().any(|a| a == "--insecure-http");
        // TLS is on by default: the URL is https and the config carries the CA.
        if !insecure {
            assert!(self.url.starts_with("https://"), "{}", self.url);
            assert!(cfg.ca.is_some_and(|c| c.contains("BEGIN CERTIFICATE")));
        }
        // Restarts keep the port, so agents find the server again.
        self.listen = self
            .url
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .to_string();
        self.admin = cfg.token.expect("client.toml holds the admin token");
        self.join = std::fs::read_to_string(data.join("join-token"))
            .unwrap()
            .trim()
            .to_string();
        let url = self.url.clone();
        let ca = if insecure {
            Vec::new()
        } else {
            vec![
                "--ca-file".to_string(),
                self.ca_file().display().to_string(),
            ]
        };
        let mut last;
        let start = Instant::now();
        loop {
            let out = Command::new(BIN)
                .args(["--server", &url, "--token", "x", "groups", "list"])
                .args(&ca)
                .env_remove("GUSTAVO_CONFIG")
                .output()
                .expect("gustavo runs");
            last = String::from_utf8_lossy(&out.stderr).to_string();
            if last.contains("401") {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the server did not answer within 20s: {last}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `kill -9`: nothing is flushed, nothing is said.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Restarts the server on the same data dir and port with `extra` flags in place of
    /// those it was started with (e.g. another `--pressure`).
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|a| a.to_string()).collect();
        self.restart();
    }

    /// Runs a CLI command against this server as admin, with the client config the
    /// server wrote (server, CA, admin token).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("GUSTAVO_CONFIG", self.config())
            .env_remove("GUSTAVO_SERVER")
            .env_remove("GUSTAVO_TOKEN")
            .env_remove("GUSTAVO_CA_FILE")
            .stdin(Stdio::null())
            .output()
            .expect("gustavo runs")
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "gustavo {args:?} failed ({:?}):\nstdout: {}\nstderr: {}\nserver log tail:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 30)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Writes a spec file into the test dir and returns its path.
    pub fn spec(&self, file: &str, yaml: &str) -> String {
        let p = self.dir.path().join(file);
        std::fs::write(&p, yaml).unwrap();
        p.to_str().unwrap().to_string()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("valid JSON output")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A `gustavo agent` for one simulated device, sharing the machine's Docker engine.
pub struct Agent {
    pub name: String,
    pub dir: tempfile::TempDir,
    args: Vec<String>,
    child: Option<Child>,
}

impl Agent {
    pub fn start(server: &Server, name: &str, groups: &[&str], labels: &[&str]) -> Agent {
        Agent::start_with(server, name, groups, labels, &[])
    }

    /// Like `start`, with extra flags; an extra `--heartbeat`, `--resync` or `--listen`
    /// replaces the test default.
    pub fn start_with(
        server: &Server,
        name: &str,
        groups: &[&str],
        labels: &[&str],
        extra: &[&str],
    ) -> Agent {
        let mut args: Vec<String> = vec!["--token".into(), server.join.clone()];
        for g in groups {
            args.extend(["--group".into(), g.to_string()]);
        }
        for l in labels {
            args.extend(["--label".into(), l.to_string()]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        Agent::start_args(server, name, &args)
    }

    /// An agent with the usual server, name, data dir and timings, plus `extra` flags
    /// (which must say how it joins: `--token …` or `--token-file …`).
    pub fn start_args(server: &Server, name: &str, extra: &[String]) -> Agent {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--server".into(),
            server.url.clone(),
            "--name".into(),
            name.into(),
            "--data-dir".into(),
            dir.path().join("data").to_str().unwrap().into(),
        ];
        // Every agent gets its own local listener port; `listen_url` finds it in the log.
        // WireGuard is off unless a test turns it on with its own interface name and port
        // (parallel tests' agents share one host's interfaces and UDP ports).
        for (flag, value) in [
            ("--heartbeat", "1s"),
            ("--resync", "2s"),
            ("--listen", "127.0.0.1:0"),
            ("--wireguard", "off"),
        ] {
            if !extra.iter().any(|e| e == flag) {
                args.extend([flag.into(), value.into()]);
            }
        }
        args.extend(extra.iter().cloned());
        let mut a = Agent {
            name: name.into(),
            dir,
            args,
            child: None,
        };
        a.launch();
        let node = name.to_string();
        wait_for(
            &format!("node {name} to register"),
            Duration::from_secs(20),
            || {
                server
                    .cli(&["-o", "json", "nodes", "list"])
                    .stdout
                    .windows(node.len() + 2)
                    .any(|w| w == format!("\"{node}\"").as_bytes())
            },
        );
        a
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let child = Command::new(BIN)
            .args(&args)
            .env("GUSTAVO_LOG", "info,gustavo=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("agent starts");
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// The URL of the agent's local listener, from its log (waits for it).
    pub fn listen_url(&self) -> String {
        let mut url = String::new();
        wait_for(
            "the agent's local listener",
            Duration::from_secs(20),
            || {
                let log = self.log();
                let Some(line) = log.lines().rev().find(|l| l.contains("local listener on "))
                else {
                    return false;
                };
                let rest = &line[line.find("http://").unwrap_or(0)..];
                url = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                !url.is_empty()
            },
        );
        url
    }

    /// Adds flags for the next (re)start.
    pub fn add_args(&mut self, args: &[&str]) {
        self.args.extend(args.iter().map(|a| a.to_string()));
    }

    /// `kill -9` the agent; its containers stay.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        // A create the killed agent had sent may still land in the engine after the first
        // sweep (the engine finishes a create whose client went away): sweep again after
        // a moment, so no container of this node outlives the test.
        for pause in [0, 500] {
            std::thread::sleep(Duration::from_millis(pause));
            let ids = docker(&[
                "ps",
                "-aq",
                "--filter",
                &format!("label=gustavo.node={}", self.name),
            ]);
            let ids: Vec<&str> = ids.lines().filter(|l| !l.is_empty()).collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                docker(&args);
            }
        }
    }
}
