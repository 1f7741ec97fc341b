//! Issue 10: staged updates — waves, health gates, automatic rollback, history and pinned
//! digests — with several real agents on one engine and the local registry.

use std::time::Duration;

use crate::util::*;

/// Pushes a new image `REG/repo:tag` to the test registry, made from the busybox test image
/// with `cmd` as its command (a new config, so a new image ID and digest each time).
fn push_image(repo: &str, tag: &str, cmd: &str) -> String {
    let reference = format!("{}/{repo}:{tag}", registry());
    let cid = docker(&["create", "gustavo-test/busybox:latest"]);
    let cid = cid.trim();
    docker(&[
        "commit",
        "--change",
        &format!("CMD [\"sh\", \"-c\", \"{cmd}\"]"),
        cid,
        &reference,
    ]);
    docker(&["rm", "-f", cid]);
    docker(&["push", &reference]);
    reference
}

/// Forgets a pushed image locally (the registry keeps it; agents pull it back).
fn drop_local(reference: &str) {
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", reference])
        .output();
}

/// The image ID and an env value of the one container `node` runs for the app.
fn running_version(node: &str, env: &str) -> Option<(String, String)> {
    let names = containers_of(node, Some("running"));
    let name = names.first()?;
    let image = inspect(name, "{{.Image}}")?;
    let envs = inspect(name, "{{json .Config.Env}}")?;
    let value = serde_json::from_str::<Vec<String>>(&envs)
        .ok()?
        .into_iter()
        .find_map(|e| e.strip_prefix(&format!("{env}=")).map(str::to_string))
        .unwrap_or_default();
    Some((image, value))
}

fn container_ids(node: &str) -> Vec<String> {
    containers_of(node, None)
        .iter()
        .filter_map(|n| inspect(n, "{{.Id}}"))
        .collect()
}

fn staged_state(server: &Server, app: &str) -> String {
    let v = server.json(&["rollouts", "get", app]);
    v["staged"]["record"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_bad_update_halts_after_the_first_device_and_is_rolled_back() {
    require_docker_and_registry();
    let server = Server::start();
    let group = unique("rb");
    let prefix = unique("rbn");
    let names: Vec<String> = ["a", "b", "c", "d"]
        .iter()
        .map(|s| format!("{prefix}{s}"))
        .collect();
    let _agents: Vec<Agent> = names
        .iter()
        .map(|n| Agent::start(&server, n, &[&group], &[]))
        .collect();
    let repo = unique("rbimg");
    let good = push_image(
        &repo,
        "good",
        "trap 'exit 0' TERM; while true; do sleep 1; done",
    );
    let bad = push_image(&repo, "bad", "exit 3");
    let spec = |image: &str| {
        format!(
            "w:\n  docker_image: {image}\n  networks: []\n  restart: always\n  rollout:\n    batch: 1\n    health_wait: 2s\n    deadline: 60s\n"
        )
    };
    let f = server.spec("w.yml", &spec(&good));
    server.ok(&[
        "apps",
        "create",
        "w",
        "-f",
        &f,
        "-d",
        &group,
        "--wait",
        "--timeout",
        "120s",
    ]);
    let shown = server.ok(&["apps", "get", "w"]);
    assert!(
        shown.contains("digest:    sha256:"),
        "pinned at create:\n{shown}"
    );
    assert!(shown.contains("devices:   4 of 4 run revision"), "{shown}");
    let before: Vec<Vec<String>> = names.iter().map(|n| container_ids(n)).collect();
    let first_rev = server.json(&["apps", "get", "w"])["revision"]
        .as_u64()
        .unwrap();

    let f = server.spec("w.yml", &spec(&bad));
    let out = server.cli(&[
        "apps",
        "update",
        "w",
        "-f",
        &f,
        "--wait",
        "--timeout",
        "120s",
    ]);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "a rolled-back update fails --wait:\n{err}"
    );
    assert!(err.contains("rolled back"), "{err}");
    assert!(err.contains(&names[0]), "names the failing device:\n{err}");

    // The three others never left the old version: the very same containers.
    for (i, n) in names.iter().enumerate().skip(1) {
        assert_eq!(container_ids(n), before[i], "{n} was never touched");
    }
    // The first one is back on the good image.
    let good_id = docker(&["image", "inspect", "-f", "{{.Id}}", &good]);
    wait_for(
        "the first device to run the good image again",
        Duration::from_secs(60),
        || running_version(&names[0], "X").is_some_and(|(img, _)| img == good_id.trim()),
    );
    let v = server.json(&["apps", "get", "w"]);
    assert_eq!(v["rollout"]["state"], "rolled_back", "{v}");
    assert!(
        v["spec"]["docker_image"]
            .as_str()
            .unwrap()
            .ends_with(":good"),
        "{v}"
    );
    let shown = server.ok(&["rollouts", "get", "w"]);
    assert!(shown.contains("rolled back"), "{shown}");
    assert!(shown.contains("failed"), "{shown}");

    // History: create, the bad revision rolled back, the automatic rollback.
    let h = server.json(&["apps", "history", "w"]);
    let outcomes: Vec<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes[0], "applied", "{h}");
    assert_eq!(outcomes[1], "rolled back", "{h}");
    assert!(
        outcomes[2].starts_with("applied (automatic rollback"),
        "{h}"
    );
    assert_eq!(h[0]["revision"].as_u64(), Some(first_rev));
    let events = server.ok(&["events"]);
    assert!(events.contains("wave 1 started"), "{events}");
    assert!(events.contains("halted"), "{events}");
    server.ok(&["apps", "delete", "w", "-y", "--wait", "--timeout", "60s"]);
    drop_local(&good);
    drop_local(&bad);
}

#[test]
fn waves_of_one_with_a_manual_pause_a_pinned_latest_an_offline_device_and_rollback_to() {
    require_docker_and_registry();
    let mut server = Server::start();
    let group = unique("wv");
    let prefix = unique("wvn");
    let names: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|s| format!("{prefix}{s}"))
        .collect();
    let mut agents: Vec<Agent> = names
        .iter()
        .map(|n| Agent::start(&server, n, &[&group], &[]))
        .collect();
    let repo = unique("wvimg");
    let sleeper = "trap 'exit 0' TERM; while true; do sleep 1; done";
    let latest = push_image(&repo, "latest", sleeper);
    let a_id = docker(&["image", "inspect", "-f", "{{.Id}}", &latest])
        .trim()
        .to_string();
    let spec = |v: &str| {
        format!(
            "w:\n  docker_image: {latest}\n  networks: []\n  env_vars: {{V: \"{v}\"}}\n  rollout:\n    batch: 1\n    health_wait: 1s\n    pause: manual\n"
        )
    };
    let f = server.spec("w.yml", &spec("1"));
    server.ok(&[
        "apps",
        "create",
        "w",
        "-f",
        &f,
        "-d",
        &group,
        "--wait",
        "--timeout",
        "120s",
    ]);
    let rev1 = server.json(&["apps", "get", "w"])["revision"]
        .as_u64()
        .unwrap();

    // The last device goes offline before the update: it is not in any wave.
    agents[2].kill();
    wait_for(
        "the third device to be offline",
        Duration::from_secs(40),
        || {
            server
                .json(&["nodes", "list"])
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["name"] == names[2].as_str() && n["status"] == "offline")
        },
    );

    let f = server.spec("w.yml", &spec("2"));
    server.ok(&["apps", "update", "w", "-f", &f]);
    wait_for(
        "wave 1 to finish and pause",
        Duration::from_secs(90),
        || staged_state(&server, "w") == "paused",
    );
    let env_of = |n: &str| running_version(n, "V").map(|(_, v)| v);
    assert_eq!(env_of(&names[0]).as_deref(), Some("2"), "wave 1 took it");
    assert_eq!(
        env_of(&names[1]).as_deref(),
        Some("1"),
        "the rest keeps the old spec"
    );

    // `latest` moves mid-rollout: the remaining devices still get the pinned digest.
    drop_local(&latest);
    let moved = push_image(&repo, "latest", &format!("echo moved; {sleeper}"));
    assert_eq!(moved, latest);
    // The server dies while the rollout waits and comes back before its devices do:
    // resumed at once, the next wave still goes device by device (a restart used to count
    // every not-yet-reconnected device as offline and complete the rollout on the spot).
    server.restart();
    server.ok(&["rollouts", "resume", "w"]);
    wait_for("wave 2 after the restart", Duration::from_secs(60), || {
        server
            .ok(&["events"])
            .contains(&format!("wave 2 started on {}", names[1]))
    });
    // With the last online device done, the rollout completes (the offline one is
    // pending); the CLI follows it.
    let out = server.cli(&["rollouts", "get", "w"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("the rollout to complete", Duration::from_secs(90), || {
        staged_state(&server, "w") == "completed"
    });
    assert_eq!(
        running_version(&names[1], "V"),
        Some((a_id.clone(), "2".to_string())),
        "the pinned digest, not the re-pushed latest"
    );

    // The offline device catches up on return, with the same bits.
    agents[2].restart();
    wait_for(
        "the returning device to catch up",
        Duration::from_secs(90),
        || running_version(&names[2], "V") == Some((a_id.clone(), "2".to_string())),
    );

    // Back to the first revision exactly: spec, digest and what runs.
    let h = server.json(&["apps", "history", "w"]);
    let first = h
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["revision"].as_u64() == Some(rev1))
        .unwrap()
        .clone();
    server.ok(&[
        "apps",
        "rollback",
        "w",
        "--to",
        &rev1.to_string(),
        "--wait",
        "--timeout",
        "120s",
    ]);
    let now = server.json(&["apps", "get", "w"]);
    assert_eq!(now["spec"], first["spec"], "the spec of revision {rev1}");
    assert_eq!(now["digest"], first["digest"]);
    for n in &names {
        assert_eq!(
            running_version(n, "V"),
            Some((a_id.clone(), "1".to_string())),
            "{n} runs revision {rev1}"
        );
    }
    server.ok(&["apps", "delete", "w", "-y", "--wait", "--timeout", "60s"]);
    drop_local(&latest);
}

#[test]
fn bad_rollout_blocks_and_actions_get_named_errors() {
    require_docker_and_registry();
    let server = Server::start();
    let f = server.spec(
        "b.yml",
        "b:\n  docker_image: gustavo-test/busybox:latest\n  rollout:\n    batch: 0\n",
    );
    let out = server.cli(&["apps", "create", "b", "-f", &f]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("rollout.batch"), "{}", stderr(&out));
    let f = server.spec(
        "b.yml",
        "b:\n  docker_image: gustavo-test/busybox:latest\n  rollout:\n    pause: later\n",
    );
    let out = server.cli(&["apps", "create", "b", "-f", &f]);
    assert!(stderr(&out).contains("manual"), "{}", stderr(&out));
    let f = server.spec(
        "b.yml",
        "b:\n  docker_image: gustavo-test/busybox:latest\n  rollout:\n    batchsize: 2\n",
    );
    let out = server.cli(&["apps", "create", "b", "-f", &f]);
    assert!(stderr(&out).contains("batchsize"), "{}", stderr(&out));
    // An app without a rollout block has no staged rollout to pause.
    let f = server.spec("p.yml", "p:\n  docker_image: gustavo-test/busybox:latest\n");
    server.ok(&["apps", "create", "p", "-f", &f, "-d", &unique("none")]);
    // `rollouts get` shows where its devices stand all the same.
    let shown = server.ok(&["rollouts", "get", "p"]);
    assert!(
        shown.contains("on every device at once") && shown.contains("0 of 0 device(s) run it"),
        "{shown}"
    );
    let out = server.cli(&["rollouts", "pause", "p"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no staged rollout"),
        "{}",
        stderr(&out)
    );
    let out = server.cli(&["apps", "rollback", "p"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no earlier revision"),
        "{}",
        stderr(&out)
    );
    let out = server.cli(&["apps", "rollback", "p", "--to", "999"]);
    assert!(stderr(&out).contains("no revision 999"), "{}", stderr(&out));
}
