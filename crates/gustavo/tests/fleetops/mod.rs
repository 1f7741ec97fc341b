//! Fleet operations (issue 14, Cloudmesh's `docker` command): one command on many nodes
//! through their agents (`gustavo exec`, `gustavo docker`), and hosts installed and joined
//! over SSH (`gustavo hosts install|check`) against real sshd test hosts.

use std::time::Duration;

use crate::util::*;

const WAIT: Duration = Duration::from_secs(90);

fn status_of(server: &Server, node: &str) -> String {
    let nodes = server.json(&["nodes", "list"]);
    nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .map(|n| n["status"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

/// Three agents: one allows commands, one does not, one is stopped. `exec` and `docker` over
/// a host list print one row per node — ran, refused, offline — and every run is audited.
#[test]
fn exec_and_docker_across_agents() {
    require_docker_and_registry();
    let server = Server::start();
    let prefix = unique("fx");
    let group = unique("fxg");
    let (a, b, c) = (
        format!("{prefix}-1"),
        format!("{prefix}-2"),
        format!("{prefix}-3"),
    );
    let _a = Agent::start_with(&server, &a, &[&group], &[], &["--allow-exec"]);
    let _b = Agent::start(&server, &b, &[&group], &[]);
    let mut agent_c = Agent::start_with(&server, &c, &[&group], &[], &["--allow-exec"]);
    agent_c.kill();
    wait_for("the stopped node to count as offline", WAIT, || {
        status_of(&server, &c) == "offline"
    });

    // A host list in pdsh syntax names the three.
    let list = format!("{prefix}-[1-3]");
    let out = server.cli(&[
        "exec",
        "--nodes",
        &list,
        "--",
        "echo hi;",
        "echo there >&2; uname -s",
    ]);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("{table}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "not every node ran it: {}",
        stderr(&out)
    );
    let row = |n: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(n))
            .unwrap_or_else(|| panic!("no row for {n}: {table}"))
            .to_string()
    };
    assert!(table.lines().next().unwrap().contains("HOST"), "{table}");
    let ra = row(&a);
    assert!(
        ra.contains("exited") && ra.contains(" 0 ") && ra.contains("hi ⏎ Linux"),
        "{ra}"
    );
    let rb = row(&b);
    assert!(
        rb.contains("refused") && rb.contains("--allow-exec"),
        "{rb}"
    );
    let rc = row(&c);
    assert!(rc.contains("offline"), "{rc}");
    assert!(
        stderr(&out).contains("1 offline, 1 refused"),
        "{}",
        stderr(&out)
    );

    // JSON has the whole output, both streams, per node, in the order named.
    let v = json_any(
        &server,
        &[
            "exec",
            "-d",
            &group,
            "--",
            "echo hi; echo there >&2; exit 3",
        ],
    );
    let results = v["results"].as_array().unwrap();
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["node"].as_str().unwrap())
        .collect();
    assert_eq!(names, [a.as_str(), b.as_str(), c.as_str()]);
    assert_eq!(results[0]["status"], "exited");
    assert_eq!(results[0]["exit_code"], 3);
    assert_eq!(results[0]["stdout"], "hi\n");
    assert_eq!(results[0]["stderr"], "there\n");
    assert_eq!(results[1]["status"], "refused");
    assert_eq!(results[2]["status"], "offline");

    // `docker ARGS`: the node's docker CLI, arguments passed as they are.
    let want = docker(&["version", "--format", "{{.Server.Version}}"]);
    let out = server.ok(&[
        "docker",
        "--nodes",
        &a,
        "--",
        "version",
        "--format",
        "{{.Server.Version}}",
    ]);
    eprintln!("{out}");
    assert!(row_has(&out, &a, want.trim()), "{out}");

    // The timeout kills it and says so.
    let v = json_any(
        &server,
        &["exec", "--nodes", &a, "--timeout", "1s", "--", "sleep 30"],
    );
    assert_eq!(v["results"][0]["status"], "timeout", "{v}");

    // Admins only.
    let op = unique("fxop");
    let token = server.user(&op, "operator", &[]);
    let out = server.cli(&["--token", &token, "exec", "--nodes", &a, "--", "id"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("403"), "{}", stderr(&out));
    // A name that is not a node runs nothing, and says which.
    let out = server.cli(&[
        "exec",
        "--nodes",
        &format!("{a},nosuch{prefix}"),
        "--",
        "id",
    ]);
    assert!(
        !out.status.success() && stderr(&out).contains(&format!("nosuch{prefix}")),
        "{}",
        stderr(&out)
    );
    // A bad host list is a usage error naming it.
    let out = server.cli(&["exec", "--nodes", "red[05-01]", "--", "id"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("runs backwards"), "{}", stderr(&out));

    // Every run is in the audit log: per node, the command line and the outcome.
    let log = server.json(&["audit", "--object", &format!("node:{a}")]);
    let details: Vec<String> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "exec")
        .map(|e| e["detail"].as_str().unwrap().to_string())
        .collect();
    assert!(
        details
            .iter()
            .any(|d| d == "exit 0: echo hi; echo there >&2; uname -s"),
        "{details:?}"
    );
    assert!(
        details.iter().any(|d| d.starts_with("timeout: sleep 30")),
        "{details:?}"
    );
    let log = server.json(&["audit", "--object", &format!("node:{b}")]);
    assert!(
        log.as_array().unwrap().iter().any(|e| e["action"] == "exec"
            && e["allowed"] == false
            && e["detail"].as_str().unwrap().starts_with("refused")),
        "{log}"
    );
}

/// `-o json` output of a command that may exit non-zero (a run with a failed node does).
fn json_any(server: &Server, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["-o", "json"];
    a.extend(args);
    let out = server.cli(&a);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", stderr(&out)))
}

fn row_has(table: &str, node: &str, text: &str) -> bool {
    table
        .lines()
        .any(|l| l.split_whitespace().next() == Some(node) && l.contains(text))
}

/// The test hosts' image, built by scripts/test-images.sh (debootstrap + docker import).
const HOST_IMAGE: &str = "gustavo-test/debian-host:bookworm-1";

/// Debian test hosts running sshd on a private Docker network, removed (with the network
/// and anything their agents made) when dropped.
struct TestHosts {
    network: String,
    gateway: String,
    names: Vec<String>,
    ips: Vec<String>,
}

impl TestHosts {
    fn start(n: usize, pubkey: &str) -> TestHosts {
        let present = std::process::Command::new("docker")
            .args(["image", "inspect", HOST_IMAGE])
            .output()
            .unwrap();
        assert!(
            present.status.success(),
            "the test host image {HOST_IMAGE} is missing: run scripts/test-images.sh"
        );
        let network = unique("gus-fleet-net");
        docker(&[
            "network",
            "create",
            "--label",
            "gustavo-test=fleetops",
            &network,
        ]);
        let gateway = docker(&[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
            &network,
        ])
        .trim()
        .to_string();
        let mut hosts = TestHosts {
            network,
            gateway,
            names: Vec::new(),
            ips: Vec::new(),
        };
        for i in 1..=n {
            let name = format!("{}-{i}", unique("gush"));
            // The host engine's socket stands in for a Docker engine inside the test host:
            // Docker's packages are installed from Debian's .debs for real, and their CLI
            // then talks to this engine (no engine runs inside an unprivileged container).
            docker(&[
                "run",
                "-d",
                "--name",
                &name,
                "--hostname",
                &name,
                "--network",
                &hosts.network,
                "--label",
                "gustavo-test=fleetops",
                "-e",
                &format!("AUTHORIZED_KEY={pubkey}"),
                "-v",
                "/var/run/docker.sock:/var/run/docker.sock",
                HOST_IMAGE,
            ]);
            hosts.names.push(name.clone());
            let ip = docker(&[
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                &name,
            ])
            .trim()
            .to_string();
            hosts.ips.push(ip);
        }
        for name in &hosts.names {
            wait_for(&format!("sshd on {name}"), WAIT, || {
                let out = std::process::Command::new("docker")
                    .args(["logs", name])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stderr).contains("Server listening")
            });
        }
        hosts
    }
}

impl Drop for TestHosts {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = docker(&["rm", "-f", name]);
            let ids = docker(&[
                "ps",
                "-aq",
                "--filter",
                &format!("label=gustavo.node={name}"),
            ]);
            for id in ids.lines().filter(|l| !l.is_empty()) {
                let _ = docker(&["rm", "-f", id]);
            }
        }
        let _ = docker(&["network", "rm", &self.network]);
    }
}

/// `hosts install` against real sshd test hosts: an unknown host key is refused; with
/// --accept-new-host-keys Docker is installed from Debian's packages, the binary and an init
/// script go on, and the agents join, in parallel, while an unreachable address fails alone;
/// a second run changes nothing; `hosts check` shows it all; `exec` reaches the new nodes.
#[test]
fn hosts_install_over_ssh_joins_hosts() {
    require_docker_and_registry();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id_ed25519");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen (openssh-client) is installed");
    assert!(out.status.success(), "{}", stderr(&out));
    let pubkey = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let hosts = TestHosts::start(2, pubkey.trim());
    let server = Server::start_on(&format!("{}:0", hosts.gateway), &[]);
    let known = dir.path().join("known_hosts");
    std::fs::write(&known, "").unwrap();
    let pw = dir.path().join("sudo-pw");
    std::fs::write(&pw, "gus-sudo-pw\n").unwrap();
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let group = unique("fleetg");
    // Nothing listens there: refused at once, on this machine.
    let dead = format!("127.0.0.1:{}", free_ports(1));
    // `gus` (sudo with a password) on the first host, root on the second.
    let list = format!("{},root@{},{dead}", hosts.ips[0], hosts.ips[1]);
    let base = |extra: &[&str], list: &str| -> std::process::Output {
        let mut args = vec![
            "hosts".to_string(),
            "install".into(),
            list.into(),
            "--user".into(),
            "gus".into(),
            "--ssh-key".into(),
            key.to_str().unwrap().into(),
            "--known-hosts".into(),
            known.to_str().unwrap().into(),
            "--sudo-password-file".into(),
            pw.to_str().unwrap().into(),
            "--join".into(),
            "--group".into(),
            group.clone(),
            "--agent-arg=--allow-exec".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        server.cli(&args)
    };

    // Unknown host keys: refused, nothing remembered, nothing done.
    let out = base(&[], &list);
    let (table, err) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        stderr(&out),
    );
    eprintln!("{table}\n{err}");
    assert_eq!(out.status.code(), Some(1));
    for ip in &hosts.ips {
        assert!(
            table.lines().any(|l| l.contains(ip.as_str())
                && l.contains("failed")
                && l.contains("host key not trusted")),
            "{ip}: {table}"
        );
    }
    assert!(
        table
            .lines()
            .any(|l| l.trim_start().starts_with(&dead) && l.contains("unreachable")),
        "{table}"
    );
    assert_eq!(std::fs::read_to_string(&known).unwrap(), "");

    // Accepting new keys: both hosts installed and joined in parallel; the dead one fails alone.
    let out = base(&["--accept-new-host-keys"], &list);
    let (table, err) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        stderr(&out),
    );
    eprintln!("{table}\n{err}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "only the unreachable host fails"
    );
    for (ip, name) in hosts.ips.iter().zip(&hosts.names) {
        let row = table
            .lines()
            .find(|l| l.contains(ip.as_str()))
            .unwrap_or_else(|| panic!("no row for {ip}: {table}"));
        assert!(
            row.contains(name.as_str()) && row.contains("changed"),
            "{row}"
        );
        for change in [
            "docker installed from apt-get",
            "binary",
            "init script",
            "join token",
            "agent started",
        ] {
            assert!(row.contains(change), "{change} in {row}");
        }
        assert!(row.contains("node ready"), "{row}");
    }
    assert!(
        err.contains("2 hosts changed, 0 unchanged, 1 failed"),
        "{err}"
    );
    for name in &hosts.names {
        assert_eq!(status_of(&server, name), "ready", "{name} joined");
    }
    let known_text = std::fs::read_to_string(&known).unwrap();
    assert!(known_text.lines().count() >= 2, "{known_text}");

    // Again (keys now known, no --accept-new-host-keys): nothing changes, and it says so.
    let two = format!("{},root@{}", hosts.ips[0], hosts.ips[1]);
    let out = base(&[], &two);
    let (table, err) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        stderr(&out),
    );
    eprintln!("{table}\n{err}");
    assert!(out.status.success(), "{err}");
    assert_eq!(
        table.lines().filter(|l| l.contains("unchanged")).count(),
        2,
        "{table}"
    );
    assert!(err.contains("nothing changed on 2 hosts"), "{err}");

    // hosts check: reachable, OS, Docker, agent, joined.
    let out = server.cli(&[
        "hosts",
        "check",
        &list,
        "--user",
        "gus",
        "--ssh-key",
        key.to_str().unwrap(),
        "--known-hosts",
        known.to_str().unwrap(),
        "--sudo-password-file",
        pw.to_str().unwrap(),
    ]);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("{table}\n{}", stderr(&out));
    assert_eq!(out.status.code(), Some(1), "the dead host is unreachable");
    let engine = docker(&["version", "--format", "{{.Server.Version}}"]);
    for ip in &hosts.ips {
        let row = table.lines().find(|l| l.contains(ip.as_str())).unwrap();
        assert!(
            row.contains("Linux x86_64") || row.contains("Linux aarch64"),
            "{row}"
        );
        assert!(row.contains("Debian GNU/Linux 12"), "{row}");
        assert!(row.contains(engine.trim()), "{row}");
        assert!(row.contains("running") && row.contains("ready"), "{row}");
    }
    assert!(
        table
            .lines()
            .any(|l| l.trim_start().starts_with(&dead) && l.contains(" no ")),
        "{table}"
    );

    // The joined hosts run commands: exec through their own agents, no SSH.
    let nodes = hosts.names.join(",");
    let out = server.ok(&["exec", "--nodes", &nodes, "--", "cat /etc/debian_version"]);
    eprintln!("{out}");
    for name in &hosts.names {
        assert!(
            row_has(&out, name, "exited") && row_has(&out, name, "12."),
            "{out}"
        );
    }
    // And their Docker, installed from Debian's packages (its CLI, talking to the engine).
    let out = server.ok(&[
        "docker",
        "--nodes",
        &nodes,
        "--",
        "version",
        "--format",
        "{{.Server.Version}}",
    ]);
    eprintln!("{out}");
    for name in &hosts.names {
        assert!(row_has(&out, name, engine.trim()), "{out}");
    }
}

/// The systemd unit `hosts install` writes passes `systemd-analyze verify` (the test hosts
/// run no systemd, so they get the init script; this checks the unit's text instead), and
/// the init script passes `sh -n`.
#[test]
fn the_service_files_are_valid() {
    use gustavo_model::hostinstall::AgentService;
    let dir = tempfile::tempdir().unwrap();
    let bin = std::fs::canonicalize(BIN).unwrap();
    let svc = AgentService {
        binary: bin.to_str().unwrap().into(),
        server: "https://10.0.0.1:7420".into(),
        group: "edge".into(),
        extra: vec!["--allow-exec".into()],
    };
    let unit = dir.path().join("gustavo-agent.service");
    std::fs::write(&unit, svc.systemd_unit().unwrap()).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian's systemd package) is installed");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    // Unknown keys are only warned about: none may name the unit.
    assert!(!err.contains("gustavo-agent.service"), "{err}");
    let init = dir.path().join("gustavo-agent");
    std::fs::write(&init, svc.init_script().unwrap()).unwrap();
    let out = std::process::Command::new("sh")
        .arg("-n")
        .arg(&init)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}
