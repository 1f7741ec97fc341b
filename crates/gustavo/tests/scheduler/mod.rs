//! Issue 9: replicated apps placed by score, moved when their node is lost, kept away
//! from cordoned nodes — with several real agents on one engine.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::util::*;

fn placements(server: &Server, app: &str) -> BTreeMap<String, String> {
    let v = server.json(&["apps", "get", app]);
    v["placements"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn running(node: &str) -> usize {
    containers_of(node, Some("running")).len()
}

#[test]
fn replicas_spread_move_off_a_lost_node_and_its_stale_copy_stops() {
    require_docker_and_registry();
    let server = Server::start_with(&["--replica-grace", "3s"]);
    let group = unique("sched");
    let names: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|s| format!("{}{s}", unique("sch")))
        .collect();
    let mut agents: Vec<Agent> = names
        .iter()
        .map(|n| Agent::start(&server, n, &[&group], &[]))
        .collect();
    let f = server.spec(
        "r.yml",
        "r:\n  docker_image: gustavo-test/busybox:latest\n  replicas: 2\n",
    );
    server.ok(&[
        "apps",
        "create",
        "r",
        "-f",
        &f,
        "-d",
        &group,
        "--wait",
        "--timeout",
        "90s",
    ]);
    let p = placements(&server, "r");
    assert_eq!(p.len(), 2, "{p:?}");
    assert_ne!(p["1"], p["2"], "two replicas on two distinct nodes: {p:?}");
    let total: usize = names.iter().map(|n| running(n)).sum();
    assert_eq!(total, 2, "exactly two containers run");
    let shown = server.ok(&["apps", "get", "r"]);
    assert!(shown.contains("replicas:  2 placed of 2"), "{shown}");

    // The scores are there, with their parts.
    let scores = server.json(&["nodes", "score", "--for", "r"]);
    assert_eq!(scores.as_array().unwrap().len(), 3, "{scores}");
    assert!(scores[0]["free_cores"].as_f64().is_some(), "{scores}");

    // kill -9 the agent of replica 1: its container stays, the replica moves.
    let lost = p["1"].clone();
    let idx = names.iter().position(|n| *n == lost).unwrap();
    agents[idx].kill();
    assert_eq!(
        running(&lost),
        1,
        "the killed agent's container keeps running"
    );
    let started = std::time::Instant::now();
    let mut moved = BTreeMap::new();
    wait_for(
        "replica 1 to run elsewhere",
        Duration::from_secs(60),
        || {
            moved = placements(&server, "r");
            moved.get("1").is_some_and(|n| *n != lost)
                && moved.get("1").is_some_and(|n| running(n) == 1)
        },
    );
    eprintln!(
        "replica running elsewhere {:?} after the kill",
        started.elapsed()
    );
    assert_eq!(moved["2"], p["2"], "replica 2 did not move: {moved:?}");
    assert_ne!(moved["1"], moved["2"]);

    // The lost node comes back: it stops its stale copy and gets nothing back.
    agents[idx].restart();
    wait_for("the stale copy to stop", Duration::from_secs(30), || {
        containers_of(&lost, None).is_empty()
    });
    let total: usize = names.iter().map(|n| running(n)).sum();
    assert_eq!(total, 2, "no duplicates after the node came back");
    assert_eq!(placements(&server, "r"), moved, "nothing flapped back");
    // Every transition is an event.
    let mut events = String::new();
    wait_for(
        "the node's return to be an event",
        Duration::from_secs(10),
        || {
            events = server.json(&["events"]).to_string();
            events.contains(&format!("{lost} is back"))
        },
    );
    for what in [
        format!("{lost} is offline"),
        format!("{lost} is lost"),
        format!("{lost} is back"),
        format!("replica 1 of r placed on {} (was on {lost})", moved["1"]),
    ] {
        assert!(events.contains(&what), "no event `{what}` in {events}");
    }
    server.ok(&["apps", "delete", "r", "-y"]);
}

#[test]
fn cordoned_nodes_take_no_new_replicas_and_bad_placement_is_named() {
    require_docker_and_registry();
    let server = Server::start();
    let group = unique("cord");
    let a = format!("{}a", unique("cordn"));
    let b = format!("{}b", unique("cordn"));
    let _aa = Agent::start(&server, &a, &[&group], &["disk=ssd"]);
    let _ab = Agent::start(&server, &b, &[&group], &[]);
    // Follow the events while it happens, as a dashboard would.
    let mut follower = std::process::Command::new(BIN)
        .args(["-o", "json", "events", "--follow"])
        .env("GUSTAVO_CONFIG", server.config())
        .env_remove("GUSTAVO_SERVER")
        .env_remove("GUSTAVO_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lines = {
        let out = follower.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        rx
    };
    server.ok(&["nodes", "cordon", &a]);
    let cordoned = format!("{a} cordoned");
    let seen = (0..40)
        .filter_map(|_| lines.recv_timeout(Duration::from_millis(500)).ok())
        .find(|l| l.contains(&cordoned));
    let _ = follower.kill();
    let _ = follower.wait();
    let seen = seen.expect("the follower prints the cordon as it happens");
    let e: serde_json::Value = serde_json::from_str(&seen).unwrap();
    assert_eq!(e["kind"], "node");
    assert_eq!(e["object"], format!("node:{a}"));
    let nodes = server.json(&["nodes", "list"]);
    let row = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == a.as_str())
        .unwrap();
    assert_eq!(row["cordoned"], true, "{row}");
    // Agents label themselves with their architecture, for node_selector.
    assert_eq!(row["labels"]["arch"], std::env::consts::ARCH, "{row}");

    // Only the cordoned node has the label: the replica stays pending.
    let f = server.spec(
        "s.yml",
        "s:\n  docker_image: gustavo-test/busybox:latest\n  replicas: 1\n  node_selector: {disk: ssd}\n",
    );
    server.ok(&["apps", "create", "s", "-f", &f, "-d", &group]);
    assert!(placements(&server, "s").is_empty());
    let shown = server.ok(&["apps", "get", "s"]);
    assert!(shown.contains("1: pending"), "{shown}");
    let scores = server.json(&["nodes", "score", "--for", "s"]);
    let why: BTreeMap<String, String> = scores
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["node"].as_str().unwrap().to_string(),
                s["ineligible"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(why[&a], "cordoned", "{scores}");
    assert_eq!(why[&b], "no label disk=ssd", "{scores}");

    // Uncordoned, it takes the replica.
    server.ok(&["nodes", "uncordon", &a]);
    wait_for(
        "the replica to be placed on the uncordoned node",
        Duration::from_secs(30),
        || placements(&server, "s").get("1") == Some(&a) && running(&a) == 1,
    );
    assert_eq!(running(&b), 0);

    // replicas and containers_per together are refused, naming both.
    let bad = server.spec(
        "bad.yml",
        "bad:\n  docker_image: gustavo-test/busybox:latest\n  replicas: 2\n  containers_per: {server: 1}\n",
    );
    let out = server.cli(&["apps", "create", "bad", "-f", &bad, "-d", &group]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("replicas") && err.contains("containers_per"),
        "{err}"
    );
    server.ok(&["apps", "delete", "s", "-y"]);
}

#[test]
fn drain_moves_replicas_with_no_gap() {
    require_docker_and_registry();
    let server = Server::start();
    let group = unique("drain");
    let a = format!("{}a", unique("drn"));
    let b = format!("{}b", unique("drn"));
    let _aa = Agent::start(&server, &a, &[&group], &[]);
    let _ab = Agent::start(&server, &b, &[&group], &[]);
    // Both replicas on a: b is cordoned while they are placed.
    server.ok(&["nodes", "cordon", &b]);
    let f = server.spec(
        "d.yml",
        "d:\n  docker_image: gustavo-test/busybox:latest\n  replicas: 2\n  max_per_node: 2\n",
    );
    server.ok(&[
        "apps",
        "create",
        "d",
        "-f",
        &f,
        "-d",
        &group,
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert_eq!(running(&a), 2);
    server.ok(&["nodes", "uncordon", &b]);

    // Watch the app's running containers across both nodes while a drains.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (a, b, stop) = (a.clone(), b.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut least = usize::MAX;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                least = least.min(running(&a) + running(&b));
                std::thread::sleep(Duration::from_millis(100));
            }
            least
        })
    };
    let out = server.ok(&["nodes", "drain", &a, "--wait", "--timeout", "90s"]);
    assert!(out.contains("draining"), "{out}");
    wait_for("both replicas to run on b", Duration::from_secs(30), || {
        running(&b) == 2 && containers_of(&a, None).is_empty()
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let least = watcher.join().unwrap();
    assert!(
        least >= 2,
        "a replica was down during the drain (least {least} running)"
    );
    let p = placements(&server, "d");
    assert!(p.values().all(|n| *n == b), "{p:?}");
    let nodes = server.ok(&["nodes", "list"]);
    assert!(nodes.contains("(draining)"), "{nodes}");
    server.ok(&["apps", "delete", "d", "-y"]);
}
