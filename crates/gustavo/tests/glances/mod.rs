//! Issue 11, Glances: the agent's Glances-compatible API read by real clients and compared
//! field by field with real Glances servers (Debian's 3.3.1.1 for API v3, PyPI's 4.5.8 for
//! API v4), all started here.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util::*;

/// A tool scripts/test.sh installs: `var`, or its default place. Fails loudly when missing:
/// a test that skipped would pass for nothing.
fn tool(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache")
            });
        cache.join(default)
    });
    assert!(
        path.exists(),
        "{} is missing (run scripts/test.sh, which installs it, or set {var})",
        path.display()
    );
    path
}

pub fn glances3() -> PathBuf {
    std::env::var_os("GUSTAVO_GLANCES3")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/glances"))
}

pub fn glances4() -> PathBuf {
    tool("GUSTAVO_GLANCES4", "gustavo-test/glances-venv/bin/glances")
}

fn python() -> PathBuf {
    tool(
        "GUSTAVO_GLANCES_PYTHON",
        "gustavo-test/glances-venv/bin/python",
    )
}

/// A real Glances web server on a free loopback port; killed on drop.
pub struct RealGlances {
    child: Child,
    pub url: String,
    pub version: u8,
}

impl RealGlances {
    pub fn start(version: u8) -> RealGlances {
        let port = free_ports(1);
        let (bin, args): (PathBuf, Vec<String>) = match version {
            3 => {
                let bin = glances3();
                assert!(
                    bin.exists(),
                    "Debian's glances is missing (apt-get install glances python3-bottle)"
                );
                (
                    bin,
                    [
                        "-w",
                        "--disable-webui",
                        "-B",
                        "127.0.0.1",
                        "-p",
                        &port.to_string(),
                    ]
                    .map(String::from)
                    .to_vec(),
                )
            }
            _ => (
                glances4(),
                [
                    "-w",
                    "--disable-webui",
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                ]
                .map(String::from)
                .to_vec(),
            ),
        };
        let child = Command::new(&bin)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let g = RealGlances {
            child,
            url: format!("http://127.0.0.1:{port}"),
            version,
        };
        let status = format!("{}/api/{version}/status", g.url);
        wait_for(
            &format!("Glances {version} to answer"),
            Duration::from_secs(60),
            || curl_status(&status) == 200,
        );
        g
    }
}

impl Drop for RealGlances {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The HTTP status of a GET (0 when nothing answers).
pub fn curl_status(url: &str) -> u16 {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-m",
            "10",
            url,
        ])
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

fn curl_json(url: &str) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-s", "-m", "20", url])
        .output()
        .expect("curl runs");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{url}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn script(name: &str) -> String {
    format!("{}/tests/glances/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn run_python(args: &[&str]) -> String {
    let out = Command::new(python())
        .args(args)
        .output()
        .expect("python runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{args:?} failed:\n{text}");
    text
}

#[test]
fn the_agent_serves_glances_as_real_glances_does() {
    require_docker_and_registry();
    let server = Server::start();
    let group = unique("gla");
    let node = unique("gln");
    let port = free_ports(1);
    let ours = format!("http://127.0.0.1:{port}");
    let _agent = Agent::start_with(
        &server,
        &node,
        &[&group],
        &[],
        &["--glances-listen", &format!("127.0.0.1:{port}")],
    );
    let f = server.spec(
        "g.yml",
        "g:\n  docker_image: gustavo-test/busybox:latest\n  command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 3600 & wait\"]\n",
    );
    server.ok(&[
        "apps",
        "create",
        "g",
        "-f",
        &f,
        "-d",
        &group,
        "--wait",
        "--timeout",
        "90s",
    ]);
    let container = format!("{node}.g.1");
    wait_for("our Glances API", Duration::from_secs(30), || {
        curl_status(&format!("{ours}/api/4/status")) == 200
    });

    // Field by field against the real thing, both APIs.
    let real3 = RealGlances::start(3);
    let real4 = RealGlances::start(4);
    // Two rounds: the second compares answers that carry deltas since a previous call.
    for _ in 0..2 {
        for real in [&real3, &real4] {
            let out = run_python(&[
                &script("compare.py"),
                &real.version.to_string(),
                &real.url,
                &ours,
            ]);
            assert!(out.contains("plugins compared"), "{out}");
        }
    }

    // Containers: neither real Glances here has its container library, so our entries
    // are checked against the shapes Glances documents (4.0 for v4, 3.4 for v3).
    let v4 = curl_json(&format!("{ours}/api/4/containers"));
    let mine = v4
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == container.as_str())
        .unwrap_or_else(|| panic!("{container} not in {v4}"))
        .clone();
    for k in [
        "command",
        "cpu",
        "cpu_percent",
        "created",
        "engine",
        "id",
        "image",
        "io",
        "key",
        "memory",
        "memory_usage",
        "name",
        "network",
        "status",
        "uptime",
    ] {
        assert!(mine.get(k).is_some(), "v4 container lacks `{k}`: {mine}");
    }
    assert_eq!(mine["status"], "running");
    assert!(mine["memory"]["usage"].as_u64().unwrap() > 0, "{mine}");
    let v3 = curl_json(&format!("{ours}/api/3/containers"));
    let mine = v3["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == container.as_str())
        .unwrap_or_else(|| panic!("{container} not in {v3}"))
        .clone();
    for k in [
        "Command",
        "Created",
        "Id",
        "Image",
        "Status",
        "Uptime",
        "cpu",
        "cpu_percent",
        "engine",
        "io",
        "io_r",
        "io_w",
        "key",
        "memory",
        "memory_usage",
        "name",
        "network",
        "network_rx",
        "network_tx",
    ] {
        assert!(mine.get(k).is_some(), "v3 container lacks `{k}`: {mine}");
    }

    // The real clients: Home Assistant's glances-api (v3 and v4) and FRACTAL's poll.
    let out = run_python(&[&script("clients.py"), &ours, &container]);
    assert!(out.contains("FRACTAL poll"), "{out}");

    // Errors as Glances gives them; the command lines of processes are not exposed.
    assert_eq!(curl_status(&format!("{ours}/api/4/nosuch")), 400);
    assert_eq!(curl_status(&format!("{ours}/api/4/cpu/nosuchitem")), 404);
    assert_eq!(curl_status(&format!("{ours}/api/5/cpu")), 404);
    let procs = curl_json(&format!("{ours}/api/4/processlist"));
    let agent = procs
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "gustavo")
        .expect("the agent is among the processes");
    assert_eq!(agent["cmdline"], serde_json::json!(["gustavo"]), "{agent}");
}

/// A TLS front (stunnel, client certificates required) for the engine's socket: a Docker
/// API over TLS as `dockerd --tlsverify` serves it, on a free loopback port.
struct DockerTls {
    child: Child,
    port: u16,
    certs: tempfile::TempDir,
}

impl DockerTls {
    fn start() -> DockerTls {
        let certs = tempfile::tempdir().unwrap();
        let d = certs.path();
        let sh = |cmd: &str| {
            let out = Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .current_dir(d)
                .output()
                .expect("sh runs");
            assert!(
                out.status.success(),
                "{cmd}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let key = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
        sh(&format!(
            "openssl req -x509 {key} -days 2 -subj /CN=test-ca -keyout ca.key -out ca.pem"
        ));
        sh(&format!(
            "openssl req {key} -subj /CN=127.0.0.1 -keyout server.key -out server.csr && \
             printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > server.ext && \
             openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.pem"
        ));
        sh(&format!(
            "openssl req {key} -subj /CN=gustavo -keyout key.pem -out client.csr && \
             printf 'extendedKeyUsage=clientAuth\\n' > client.ext && \
             openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile client.ext -out cert.pem"
        ));
        let socket = "/var/run/docker.sock";
        assert!(std::path::Path::new(socket).exists(), "{socket} is missing");
        let port = free_ports(1);
        let dir = d.display().to_string();
        std::fs::write(
            d.join("stunnel.conf"),
            format!(
                "foreground = yes\npid =\n[docker]\naccept = 127.0.0.1:{port}\nconnect = {socket}\n\
                 cert = {dir}/server.pem\nkey = {dir}/server.key\nCAfile = {dir}/ca.pem\n\
                 verifyChain = yes\nrequireCert = yes\n"
            ),
        )
        .unwrap();
        let child = Command::new("stunnel4")
            .arg(d.join("stunnel.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stunnel4 is installed (apt-get install stunnel4)");
        let t = DockerTls { child, port, certs };
        let ping = format!(
            "curl -sf --cacert {dir}/ca.pem --cert {dir}/cert.pem --key {dir}/key.pem https://127.0.0.1:{port}/_ping"
        );
        wait_for("the Docker API over TLS", Duration::from_secs(20), || {
            Command::new("sh")
                .arg("-c")
                .arg(&ping)
                .status()
                .is_ok_and(|s| s.success())
        });
        t
    }
}

impl Drop for DockerTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Containers made for one test, removed at the end.
struct Containers(Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        let mut args = vec!["rm", "-f"];
        args.extend(self.0.iter().map(String::as_str));
        docker(&args);
    }
}

#[test]
fn agentless_hosts_are_watched_through_glances_and_acted_on_through_docker_tls() {
    require_docker_and_registry();
    let real3 = RealGlances::start(3);
    let real4 = RealGlances::start(4);
    let tls = DockerTls::start();
    let mut server =
        Server::start_with(&["--docker-cert-path", tls.certs.path().to_str().unwrap()]);
    let scope = unique("wscope");
    let sleeper = "trap 'exit 0' TERM; sleep 3600 & wait";
    let name = |s: &str| format!("{scope}-{s}");
    let (low, high, vital, byhand) = (name("low"), name("high"), name("vital"), name("byhand"));
    let _cleanup = Containers(vec![
        low.clone(),
        high.clone(),
        vital.clone(),
        byhand.clone(),
    ]);
    for (c, extra) in [
        (
            &low,
            vec!["--label", "gustavo.priority=-1", "--cpus", "1.5"],
        ),
        (
            &high,
            vec![
                "--label",
                "gustavo.priority=3",
                "--cpus",
                "1",
                "--memory",
                "256m",
            ],
        ),
        (
            &vital,
            vec!["--label", "gustavo.critical=true", "--cpus", "1"],
        ),
        (&byhand, vec![]),
    ] {
        let label = format!("scope={scope}");
        let mut args = vec!["run", "-d", "--name", c.as_str(), "--label", &label];
        args.extend(extra);
        args.extend(["gustavo-test/busybox:latest", "sh", "-c", sleeper]);
        docker(&args);
    }
    docker(&["stop", "-t", "1", &byhand]);
    let before: Vec<i64> = [&low, &high, &vital, &byhand]
        .iter()
        .map(|c| nano_cpus(c))
        .collect();
    assert_eq!(before, vec![1_500_000_000, 1_000_000_000, 1_000_000_000, 0]);
    let high_memory = memory_limits(&high);

    let (v3, v4) = (unique("gimli"), unique("legolas"));
    let port = |g: &RealGlances| g.url.rsplit(':').next().unwrap().to_string();
    let yaml = format!(
        "- node:\n    hostname: {v3}\n    IP: 127.0.0.1\n    port: {}\n\
         - node:\n    hostname: {v4}\n    IP: 127.0.0.1\n    port: {}\n    orchestrator: docker\n    docker: tcp://127.0.0.1:{}\n    scope: scope={scope}\n\
         - custom-orchestrator:\n    hostname: gandalf\n    IP: 192.168.0.53\n    port: 9999\n",
        port(&real3),
        port(&real4),
        tls.port
    );
    let file = server.spec("nodes.yaml", &yaml);
    let import = |server: &Server, settings: &str| {
        server.ok(&["nodes", "import", &file, "--pressure", settings]);
    };

    // A bad file is refused whole, naming the problem.
    let bad = server.spec("bad.yaml", "- node: {hostname: x, IP: 1.2.3.4}\n");
    let out = server.cli(&["nodes", "import", &bad]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("port"), "{}", stderr(&out));

    // Memory is over 1 % on any machine: pressured, then tainted.
    import(
        &server,
        "memory=1/0.5,samples=1,hold-down=1s,stop-interval=4s,throttle-cpus=0.2",
    );
    wait_for(
        "both hosts seen, v3 and v4 told apart",
        Duration::from_secs(60),
        || {
            let hosts = server.ok(&["cache", "hosts"]);
            hosts.contains("glances api 3") && hosts.contains("glances api 4")
        },
    );
    let vitals = server.json(&["cache", "vitals"]);
    for n in [&v3, &v4] {
        let v = vitals
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["node"] == n.as_str())
            .unwrap_or_else(|| panic!("{n} not in {vitals}"));
        assert!(
            v["vitals"]["memory_total_mb"].as_u64().unwrap() > 0
                && v["vitals"]["cpus"].as_u64().unwrap() >= 1,
            "{v}"
        );
    }
    wait_for(
        "the low-priority container throttled",
        Duration::from_secs(60),
        || nano_cpus(&low) == 200_000_000,
    );
    wait_for(
        "the low-priority container stopped first",
        Duration::from_secs(60),
        || state(&low) == "exited",
    );
    assert_eq!(
        state(&high),
        "running",
        "one per interval, lowest priority first"
    );
    wait_for("the next one stopped", Duration::from_secs(60), || {
        state(&high) == "exited"
    });
    assert_eq!(
        state(&vital),
        "running",
        "a critical container is never stopped"
    );
    assert_eq!(nano_cpus(&vital), 1_000_000_000, "nor throttled");
    wait_for("both hosts tainted", Duration::from_secs(30), || {
        let v = server.ok(&["cache", "vitals"]);
        v.lines()
            .filter(|l| (l.contains(&v3) || l.contains(&v4)) && l.contains("tainted"))
            .count()
            == 2
    });
    // Nothing is ever placed on a watched host: it is in no group.
    let node = server.json(&["nodes", "get", &v4]);
    assert_eq!(node["groups"], serde_json::json!([]), "{node}");
    assert_eq!(node["pressure"]["level"], "tainted", "{node}");

    // A server restart in the middle: the record is stored with the host.
    server.restart();
    wait_for(
        "the record back after the restart",
        Duration::from_secs(60),
        || {
            let p = &server.json(&["nodes", "get", &v4])["pressure"];
            p["level"] == "tainted" && p["stopped"].as_array().is_some_and(|s| s.len() == 2)
        },
    );

    // Release: one level at a time, exactly what was done undone.
    import(
        &server,
        "cpu=100/100,memory=100/100,load=1000/1000,disk=100/100,samples=1,hold-down=1s",
    );
    wait_for("the host ready again", Duration::from_secs(90), || {
        let p = &server.json(&["nodes", "get", &v4])["pressure"];
        p["level"] == "ready" && p.get("stopped").is_none() && p.get("throttled").is_none()
    });
    let after: Vec<i64> = [&low, &high, &vital, &byhand]
        .iter()
        .map(|c| nano_cpus(c))
        .collect();
    assert_eq!(after, before, "limits back to what they were");
    assert_eq!(memory_limits(&high), high_memory, "memory limits too");
    assert_eq!(state(&low), "running");
    assert_eq!(state(&high), "running");
    assert_eq!(
        state(&byhand),
        "exited",
        "a container stopped by hand stays stopped"
    );
    // Ready again, it still takes no work: `nodes score` says why.
    let scores = server.json(&["nodes", "score"]);
    let row = scores
        .as_array()
        .and_then(|a| a.iter().find(|s| s["node"] == v4.as_str()))
        .unwrap_or_else(|| panic!("{v4} not scored: {scores}"));
    assert_eq!(
        row["ineligible"], "no agent (watched through Glances)",
        "{row}"
    );
    let events = server.ok(&["events"]);
    assert!(
        events.contains("tainted → pressured") && events.contains("pressured → ready"),
        "{events}"
    );

    // Removing the node stops the watching.
    server.ok(&["nodes", "remove", &v3]);
    let hosts = server.ok(&["cache", "hosts"]);
    assert!(!hosts.contains(&v3), "{hosts}");
}
