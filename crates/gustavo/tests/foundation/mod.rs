//! Issue 7: regression tests for the foundation defects a new user and a hostile one hit.
//! Each test is named after its defect.

use std::time::Duration;

use gustavo_model::api::RegisterRequest;

use crate::util::*;

const WAIT: Duration = Duration::from_secs(60);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn reg(name: &str, replace: bool) -> RegisterRequest {
    RegisterRequest {
        name: name.into(),
        groups: vec!["elsewhere".into()],
        labels: Default::default(),
        cpus: 1,
        memory_mb: 512,
        agent_version: "test".into(),
        heartbeat_s: 5,
        replace,
        token: None,
    }
}

/// Defect A: a join token — even one bound to an unrelated group — cannot take over an
/// existing node by its name. The real agent keeps its credential, its group and its
/// containers; a second device with the same name is told why and stops; an admin can
/// still replace a node explicitly; the audit log names the node.
#[test]
fn issue7_a_join_token_cannot_take_over_a_node() {
    require_docker_and_registry();
    let server = Server::start();
    let rt = rt();
    let node = unique("owner");
    let group = unique("keep");
    let a = Agent::start(&server, &node, &[&group], &[]);
    let f = server.spec(
        "app.yml",
        "app:\n  docker_image: gustavo-test/busybox:latest\n",
    );
    server.ok(&[
        "apps",
        "create",
        "-n",
        "app",
        "-f",
        &f,
        "-d",
        &group,
        "--wait",
        "--timeout",
        "60s",
    ]);
    let c = format!("{node}.app.1");
    let id_before = inspect(&c, "{{.Id}}").unwrap();

    // A join token bound to another group, used with the existing node's name.
    let tok = server.ok(&["tokens", "create", "--group", "intruders"]);
    let secret = tok.trim().split("::").last().unwrap().to_string();
    let err = rt
        .block_on(server.client(&secret).register(&reg(&node, false)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("409") || err.contains("conflict"), "{err}");
    assert!(
        err.contains(&format!("node `{node}` already exists")),
        "{err}"
    );
    // Asking to replace it needs an admin.
    let err = rt
        .block_on(server.client(&secret).register(&reg(&node, true)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("only an admin"), "{err}");

    // A second device with the same hostname: the real agent stops with the reason.
    let mut twin = Agent::start(&server, &node, &[&group], &[]);
    wait_for("the twin agent to give up", WAIT, || {
        twin.exited().is_some()
    });
    assert!(!twin.exited().unwrap().success());
    assert!(twin.log().contains("already exists"), "{}", twin.log());
    // Dropping `twin` would remove the node's containers by label: keep them.
    std::mem::forget(twin);

    // Nothing moved: same groups, same container, and the real agent still follows changes.
    let n = rt
        .block_on(server.client(&server.admin).get_node(&node))
        .unwrap();
    assert_eq!(n.groups, vec![group.clone()]);
    assert_eq!(inspect(&c, "{{.Id}}").unwrap(), id_before);
    let f2 = server.spec(
        "app2.yml",
        "app:\n  docker_image: gustavo-test/busybox:latest\n  env_vars: {V: \"2\"}\n",
    );
    server.ok(&[
        "apps",
        "update",
        "-n",
        "app",
        "-f",
        &f2,
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert!(inspect(&c, "{{.Config.Env}}").unwrap().contains("V=2"));
    drop(a);

    // The refusals are in the audit log under the node's name.
    let audit = server.json(&["audit", "--object", &format!("node:{node}")]);
    let refused: Vec<&serde_json::Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["status"] == 409)
        .collect();
    assert!(!refused.is_empty(), "{audit}");
    assert!(
        refused[0]["detail"]
            .as_str()
            .unwrap()
            .contains("already exists")
    );

    // An admin may replace it explicitly: a new credential for the same node.
    let resp = rt
        .block_on(server.client(&server.admin).register(&reg(&node, true)))
        .expect("an admin replaces the node");
    assert_eq!(resp.node, node);
    assert!(!resp.token.is_empty());
}

/// Defect C: an app whose command exits 3 is a failure, not "running": `--wait` exits
/// non-zero naming the exit code and the last log line, and `cache containers` shows both.
#[test]
fn issue7_c_crash_loops_fail_with_exit_code_and_log() {
    require_docker_and_registry();
    let server = Server::start();
    let node = unique("crash");
    let group = unique("crashg");
    let a = Agent::start(&server, &node, &[&group], &[]);
    let f = server.spec(
        "crash.yml",
        "crash:\n  docker_image: gustavo-test/busybox:latest\n  command: \"sh -c 'echo boom-from-app; exit 3'\"\n",
    );
    let out = server.cli(&[
        "apps",
        "create",
        "-n",
        "crash",
        "-f",
        &f,
        "-d",
        &group,
        "--wait",
        "--timeout",
        "90s",
    ]);
    let err = stderr(&out);
    assert!(!out.status.success(), "--wait must fail: {err}");
    assert!(err.contains("exited with code 3"), "{err}");
    assert!(err.contains("boom-from-app"), "{err}");
    assert!(
        !err.contains("timed out"),
        "it fails before the timeout: {err}"
    );

    let table = server.ok(&["cache", "containers", "-d", &group]);
    assert!(table.contains("crashlooping"), "{table}");
    assert!(table.contains("exit 3"), "{table}");
    assert!(table.contains("exited with code 3"), "{table}");
    let json = server.json(&["cache", "containers", "-d", &group]);
    let c = json
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["app"] == "crash")
        .unwrap_or_else(|| panic!("no crash container in {json}"));
    assert_eq!(c["exit_code"], 3, "{c}");
    assert_eq!(c["state"], "crashlooping", "{c}");
    // The event log names the device and its error (the rollouts controller, once a
    // second): the error as the first look at the failed device found it — the exit code,
    // the crash loop, the container not getting ready, or the engine refusing a start
    // while it restarts the container itself, depending on the moment — so what is
    // checked is that the container's error is given, naming it (the error's words are
    // checked above). On a timeout the events and the agent's log are shown.
    let name = c["name"]
        .as_str()
        .unwrap_or_else(|| panic!("no name in {c}"));
    let failed_on = format!("failed on {node}: container `{name}`: ");
    wait_for_showing(
        "the failure event",
        Duration::from_secs(30),
        || {
            server
                .ok(&["events"])
                .lines()
                .any(|l| l.contains("rollout of crash revision") && l.contains(&failed_on))
        },
        || {
            format!(
                "\nevents:\n{}\nagent log:\n{}",
                server.ok(&["events"]),
                a.log()
            )
        },
    );
    server.ok(&["apps", "delete", "-n", "crash"]);
}

/// Defect C: a healthcheck that always fails makes the app fail with the check's output,
/// well before `--wait`'s timeout.
#[test]
fn issue7_c_failing_healthcheck_fails_the_wait() {
    require_docker_and_registry();
    let server = Server::start();
    let node = unique("sick");
    let group = unique("sickg");
    let _a = Agent::start(&server, &node, &[&group], &[]);
    let f = server.spec(
        "sick.yml",
        "sick:\n  docker_image: gustavo-test/busybox:latest\n  healthcheck: {test: \"echo not-today; exit 1\", interval: 1s, timeout: 1s, retries: 2, start_period: 0s}\n",
    );
    let started = std::time::Instant::now();
    let out = server.cli(&[
        "apps",
        "create",
        "-n",
        "sick",
        "-f",
        &f,
        "-d",
        &group,
        "--wait",
        "--timeout",
        "120s",
    ]);
    let err = stderr(&out);
    assert!(!out.status.success(), "--wait must fail: {err}");
    assert!(err.contains("unhealthy"), "{err}");
    assert!(err.contains("not-today"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(110),
        "it fails before the timeout: {err}"
    );
    server.ok(&["apps", "delete", "-n", "sick"]);
}

/// Defect 8: a container stopped with `docker kill` comes back at once, not at the next
/// periodic resync (set to a minute here so only the engine's events can bring it back).
#[test]
fn issue7_8_docker_kill_comes_back_without_a_resync() {
    require_docker_and_registry();
    let server = Server::start();
    let node = unique("killed");
    let group = unique("killedg");
    let a = Agent::start_with(&server, &node, &[&group], &[], &["--resync", "120s"]);
    let f = server.spec("k.yml", "k:\n  docker_image: gustavo-test/busybox:latest\n");
    server.ok(&[
        "apps",
        "create",
        "-n",
        "k",
        "-f",
        &f,
        "-d",
        &group,
        "--wait",
        "--timeout",
        "60s",
    ]);
    let c = format!("{node}.k.1");
    let before = inspect(&c, "{{.State.StartedAt}}").expect("container exists");
    docker(&["kill", &c]);
    // Well under the 120 s resync; generous for a loaded machine.
    wait_for(
        "the killed container to run again",
        Duration::from_secs(45),
        || {
            inspect(&c, "{{.State.Running}} {{.State.StartedAt}}")
                .is_some_and(|s| s.starts_with("true") && !s.ends_with(&before))
        },
    );
    drop(a);
}

/// Defect 8: `--wait` keeps following when the server restarts mid-rollout, and prints
/// its final line once.
#[test]
fn issue7_8_wait_survives_a_server_restart() {
    require_docker_and_registry();
    let mut server = Server::start();
    let node = unique("patient");
    let group = unique("patientg");
    let _a = Agent::start(&server, &node, &[&group], &[]);
    // Healthy only after a few seconds, so the rollout is still going when the server dies.
    let f = server.spec(
        "slow.yml",
        "slow:\n  docker_image: gustavo-test/busybox:latest\n  command: \"sh -c 'sleep 6; touch /tmp/ok; sleep 3600'\"\n  healthcheck: {test: \"test -f /tmp/ok\", interval: 1s, timeout: 1s, retries: 30, start_period: 0s}\n",
    );
    let waiting = std::process::Command::new(BIN)
        .args([
            "apps",
            "create",
            "-n",
            "slow",
            "-f",
            &f,
            "-d",
            &group,
            "--wait",
            "--timeout",
            "90s",
        ])
        .env("GUSTAVO_CONFIG", server.config())
        .env_remove("GUSTAVO_SERVER")
        .env_remove("GUSTAVO_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the app to be created", WAIT, || {
        server
            .json(&["apps", "list"])
            .to_string()
            .contains("\"slow\"")
    });
    server.kill();
    std::thread::sleep(Duration::from_secs(2));
    server.restart();
    let out = waiting.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(
        out.status.success(),
        "--wait follows through the restart: {err}"
    );
    assert!(err.contains("reconnected"), "{err}");
    assert_eq!(
        err.lines()
            .filter(|l| l.contains("1/1 devices running"))
            .count(),
        1,
        "the final line comes once: {err}"
    );
    server.ok(&["apps", "delete", "-n", "slow"]);
}
