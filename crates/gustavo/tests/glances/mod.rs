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
