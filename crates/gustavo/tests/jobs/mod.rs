//! Issue 9 item 5: jobs — one-shot runs on the best node with callbacks delivered to a
//! real HTTP server (also across a server restart), failures with exit codes and retries,
//! scheduled jobs on every member that keep running while the server is down, and named
//! errors for bad job files. Real agents, the real Docker engine.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::*;

/// A pinned tag of the busybox test image: present locally, so no run tries a pull.
const IMAGE: &str = "gustavo-test/busybox:alt";

/// Removes the job containers of the given nodes when the test ends (the agents' own
/// cleanup removes only their app containers).
pub struct JobContainers(pub Vec<String>);

impl Drop for JobContainers {
    fn drop(&mut self) {
        for n in &self.0 {
            let ids = docker(&[
                "ps",
                "-aq",
                "--filter",
                &format!("label=gustavo.node={n}/jobs"),
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

/// Names of the job containers a node ever had, as Docker lists them now.
fn job_containers(node: &str) -> Vec<String> {
    docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=gustavo.node={node}/jobs"),
        "--format",
        "{{.Names}}",
    ])
    .lines()
    .filter(|l| !l.is_empty())
    .map(String::from)
    .collect()
}

/// A tiny HTTP server that records every POST body (as JSON) and answers 200.
pub struct Receiver {
    pub got: Arc<Mutex<Vec<serde_json::Value>>>,
    pub port: u16,
}

impl Receiver {
    pub fn start_on(port: u16) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the receiver");
        let port = listener.local_addr().unwrap().port();
        let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let sink = got.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut rd = BufReader::new(conn.try_clone().unwrap());
                let mut len = 0usize;
                let mut line = String::new();
                let mut first = true;
                let mut post = false;
                loop {
                    line.clear();
                    if rd.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    if first {
                        post = line.starts_with("POST ");
                        first = false;
                    }
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = l.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                let _ = rd.read_exact(&mut body);
                if post && let Ok(v) = serde_json::from_slice(&body) {
                    sink.lock().unwrap().push(v);
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Receiver { got, port }
    }

    pub fn start() -> Receiver {
        Receiver::start_on(0)
    }

    fn states(&self, job: &str) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["job"] == job)
            .map(|v| v["state"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    fn find(&self, job: &str, state: &str) -> Option<serde_json::Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .find(|v| v["job"] == job && v["state"] == state)
            .cloned()
    }
}

fn job(server: &Server, name: &str) -> serde_json::Value {
    server.json(&["jobs", "get", name])
}

#[test]
fn a_one_shot_job_runs_once_on_the_best_node_and_its_callbacks_arrive() {
    require_docker_and_registry();
    let server = Server::start();
    let group = unique("jobs");
    let names = [unique("joba"), unique("jobb")];
    let _agents: Vec<Agent> = names
        .iter()
        .map(|n| Agent::start(&server, n, &[&group], &[]))
        .collect();
    let _cleanup = JobContainers(names.to_vec());
    let rx = Receiver::start();
    let f = server.spec(
        "once.yml",
        &format!(
            "hello:\n  docker_image: {IMAGE}\n  command: [sh, -c, 'echo hello from $GUSTAVO_NODE run $GUSTAVO_RUN']\n  callback_url: http://127.0.0.1:{}/hook\n",
            rx.port
        ),
    );
    wait_for("both nodes ready", Duration::from_secs(30), || {
        let nodes = server.json(&["nodes", "list"]);
        nodes
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["groups"][0] == group.as_str() && n["status"] == "ready")
            .count()
            == 2
    });
    let out = server.ok(&[
        "jobs", "run", "-n", "hello", "-f", &f, "-d", &group, "--wait",
    ]);
    assert!(out.contains("job hello succeeded on"), "{out}");
    let j = job(&server, "hello");
    assert_eq!(j["state"], "succeeded", "{j}");
    let runs = j["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "one run, on one node: {j}");
    let node = runs[0]["node"].as_str().unwrap().to_string();
    assert!(names.contains(&node), "{node}");
    assert_eq!(runs[0]["exit_code"], 0);
    let logs = server.ok(&["jobs", "logs", "hello"]);
    assert!(logs.contains(&format!("hello from {node} run 1")), "{logs}");
    // Only that node ran a container for it.
    let other = names.iter().find(|n| **n != node).unwrap();
    assert!(
        job_containers(other).is_empty(),
        "{:?}",
        job_containers(other)
    );

    // Each state change was POSTed: pending, running, succeeded, with the fields promised.
    wait_for("the callbacks", Duration::from_secs(30), || {
        rx.find("hello", "succeeded").is_some()
    });
    let done = rx.find("hello", "succeeded").unwrap();
    assert_eq!(done["node"], node.as_str(), "{done}");
    assert_eq!(done["run"], 1, "{done}");
    assert_eq!(done["exit_code"], 0, "{done}");
    assert!(done["time"].as_u64().unwrap() > 0, "{done}");
    wait_for("every state's callback", Duration::from_secs(30), || {
        let s = rx.states("hello");
        ["pending", "running", "succeeded"]
            .iter()
            .all(|w| s.iter().any(|x| x == w))
    });
    let out = server.ok(&["jobs", "list"]);
    assert!(out.contains("hello") && out.contains("succeeded"), "{out}");

    // The event log tells the job's story and an app's rollout.
    let app = server.spec(
        "app.yml",
        &format!("tick:\n  docker_image: {IMAGE}\n  command: [sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 1; done']\n"),
    );
    server.ok(&[
        "apps",
        "create",
        "tick",
        "-f",
        &app,
        "-d",
        &group,
        "--wait",
        "--timeout",
        "90s",
    ]);
    let start = std::time::Instant::now();
    loop {
        let ev = server.ok(&["events"]);
        if ev.contains("rollout of tick revision") && ev.contains("converged on 2/2 nodes") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no rollout events:\n{ev}\nrollout: {}",
            server.ok(&["apps", "get", "tick"])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let ev = server.ok(&["events"]);
    assert!(
        ev.contains("hello run 1 on") && ev.contains("succeeded"),
        "{ev}"
    );
    assert!(
        ev.contains("rollout of tick revision") && ev.contains("started (2 nodes)"),
        "{ev}"
    );

    // Deleting it forgets it.
    server.ok(&["jobs", "delete", "hello"]);
    let out = server.cli(&["jobs", "get", "hello"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    server.ok(&["apps", "delete", "tick", "-y"]);
}

#[test]
fn a_callback_is_delivered_after_a_server_restart() {
    require_docker_and_registry();
    let mut server = Server::start();
    let group = unique("jobcb");
    let name = unique("jobcb");
    let _agent = Agent::start(&server, &name, &[&group], &[]);
    let _cleanup = JobContainers(vec![name.clone()]);
    // A port where nothing listens yet.
    let port = free_ports(1);
    let f = server.spec(
        "cb.yml",
        &format!(
            "later:\n  docker_image: {IMAGE}\n  command: [sh, -c, 'echo done']\n  callback_url: http://127.0.0.1:{port}/hook\n"
        ),
    );
    server.ok(&[
        "jobs", "run", "-n", "later", "-f", &f, "-d", &group, "--wait",
    ]);
    // The deliveries wait in the outbox, tried and failed.
    wait_for("a failed delivery attempt", Duration::from_secs(30), || {
        let cbs = server.json(&["jobs", "callbacks"]);
        cbs.as_array().unwrap().iter().any(|c| {
            c["id"].as_str().unwrap_or_default().ends_with("/succeeded")
                && c["attempts"].as_u64().unwrap_or(0) >= 1
                && !c["last_error"].is_null()
        })
    });
    // kill -9 the server; it comes back with its outbox, and the receiver comes up.
    server.restart();
    let rx = Receiver::start_on(port);
    wait_for(
        "the succeeded callback after the restart",
        Duration::from_secs(120),
        || rx.find("later", "succeeded").is_some(),
    );
    let done = rx.find("later", "succeeded").unwrap();
    assert_eq!(done["node"], name.as_str(), "{done}");
    assert_eq!(done["exit_code"], 0, "{done}");
    wait_for("the outbox to empty", Duration::from_secs(120), || {
        server
            .json(&["jobs", "callbacks"])
            .as_array()
            .unwrap()
            .is_empty()
    });
    let states = rx.states("later");
    for s in ["pending", "running", "succeeded"] {
        assert_eq!(
            states.iter().filter(|x| *x == s).count(),
            1,
            "each change delivered once: {states:?}"
        );
    }
}

#[test]
fn a_failing_job_reports_its_exit_code_and_retries_and_a_deadline_kills() {
    require_docker_and_registry();
    let server = Server::start();
    let group = unique("jobfail");
    let names = [unique("jfa"), unique("jfb")];
    let _agents: Vec<Agent> = names
        .iter()
        .map(|n| Agent::start(&server, n, &[&group], &[]))
        .collect();
    let _cleanup = JobContainers(names.to_vec());
    let f = server.spec(
        "fail.yml",
        &format!(
            "boom:\n  docker_image: {IMAGE}\n  command: [sh, -c, 'echo about to fail; echo boom >&2; exit 3']\n  retries: 1\n  retry_backoff: 1s\nslow:\n  docker_image: {IMAGE}\n  command: [sh, -c, 'echo started; sleep 300']\n  deadline: 2s\n"
        ),
    );
    wait_for("both nodes ready", Duration::from_secs(30), || {
        server
            .json(&["nodes", "list"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["groups"][0] == group.as_str() && n["status"] == "ready")
            .count()
            == 2
    });
    let out = server.cli(&[
        "jobs", "run", "-n", "boom", "-f", &f, "-d", &group, "--wait",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("job boom failed") && err.contains("exit code 3"),
        "{err}"
    );
    assert!(err.contains("boom"), "the last lines are shown: {err}");
    let j = job(&server, "boom");
    assert_eq!(j["state"], "failed", "{j}");
    let runs = j["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "the first attempt and one retry: {j}");
    for r in runs {
        assert_eq!(r["state"], "failed", "{j}");
        assert_eq!(r["exit_code"], 3, "{j}");
        assert!(r["logs"].as_str().unwrap().contains("boom"), "{j}");
    }
    // The retry went to the node that had not failed it yet.
    assert_ne!(runs[0]["node"], runs[1]["node"], "{j}");
    assert!(
        j["reason"].as_str().unwrap().contains("attempt 2 of 2"),
        "{j}"
    );

    // A run past its deadline is killed and fails, saying why.
    let out = server.cli(&[
        "jobs", "run", "-n", "slow", "-f", &f, "-d", &group, "--wait",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("deadline of 2s exceeded"), "{err}");
    let j = job(&server, "slow");
    let run = &j["runs"][0];
    assert!(run["logs"].as_str().unwrap().contains("started"), "{j}");
    let node = run["node"].as_str().unwrap();
    wait_for(
        "the killed run's container to go",
        Duration::from_secs(30),
        || !job_containers(node).iter().any(|c| c.contains(".slow.")),
    );
}

#[test]
fn a_scheduled_job_runs_on_every_member_and_keeps_running_without_the_server() {
    require_docker_and_registry();
    let mut server = Server::start();
    let group = unique("jobcron");
    let names = [unique("jca"), unique("jcb")];
    let _agents: Vec<Agent> = names
        .iter()
        .map(|n| Agent::start(&server, n, &[&group], &[]))
        .collect();
    let _cleanup = JobContainers(names.to_vec());
    let f = server.spec(
        "cron.yml",
        &format!(
            "tick:\n  docker_image: {IMAGE}\n  command: [sh, -c, 'echo tick on $GUSTAVO_NODE at $GUSTAVO_RUN']\n  schedule: '@every 2s'\n"
        ),
    );
    let out = server.ok(&["jobs", "run", "-n", "tick", "-f", &f, "-d", &group]);
    assert!(out.contains("scheduled `@every 2s`"), "{out}");
    // Every member runs it, and says so.
    wait_for(
        "a succeeded run from each member",
        Duration::from_secs(60),
        || {
            let j = job(&server, "tick");
            names.iter().all(|n| {
                j["runs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["node"] == n.as_str() && r["state"] == "succeeded")
            })
        },
    );
    let j = job(&server, "tick");
    assert_eq!(j["state"], "scheduled", "{j}");
    let r = j["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["state"] == "succeeded")
        .unwrap()
        .clone();
    assert!(r["logs"].as_str().unwrap().contains("tick on"), "{r}");

    // The server goes away: each agent keeps running it from its own clock.
    server.kill();
    let killed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let before: Vec<BTreeSet<String>> = names
        .iter()
        .map(|n| job_containers(n).into_iter().collect())
        .collect();
    let start = Instant::now();
    let mut seen: Vec<BTreeSet<String>> = before.clone();
    wait_for(
        "new runs on every member while the server is down",
        Duration::from_secs(60),
        || {
            for (i, n) in names.iter().enumerate() {
                seen[i].extend(job_containers(n));
            }
            seen.iter()
                .zip(&before)
                .all(|(s, b)| s.difference(b).count() >= 2)
        },
    );
    assert!(start.elapsed() < Duration::from_secs(120));

    // Back: the runs made while it was away are reported.
    server.restart();
    wait_for(
        "runs from the outage reported",
        Duration::from_secs(60),
        || {
            let j = job(&server, "tick");
            names.iter().all(|n| {
                j["runs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["node"] == n.as_str() && r["run"].as_u64().unwrap_or(0) > killed)
            })
        },
    );

    // Deleted: no new runs.
    server.ok(&["jobs", "delete", "tick"]);
    std::thread::sleep(Duration::from_secs(3));
    let after: BTreeSet<String> = job_containers(&names[0]).into_iter().collect();
    std::thread::sleep(Duration::from_secs(5));
    let later: BTreeSet<String> = job_containers(&names[0]).into_iter().collect();
    assert!(
        later.difference(&after).next().is_none(),
        "no run after the delete: {:?}",
        later.difference(&after).collect::<Vec<_>>()
    );
}

#[test]
fn bad_job_files_get_named_errors() {
    let server = Server::start();
    for (yaml, want) in [
        (
            "j:\n  docker_image: x\n  colour: red\n",
            "unknown field `colour`",
        ),
        (
            "j:\n  docker_image: x\n  schedule: '61 * * * *'\n",
            "schedule `61 * * * *`: minute",
        ),
        (
            "j:\n  docker_image: x\n  schedule: '@every 0s'\n",
            "between 1s",
        ),
        (
            "j:\n  docker_image: x\n  callback_url: ftp://example/x\n",
            "only http:// and https://",
        ),
        (
            "j:\n  docker_image: x\n  schedule: '* * * * *'\n  replicas: 2\n",
            "schedule and replicas cannot both be set",
        ),
        (
            "j:\n  docker_image: x\n  replicas: 3\n",
            "replicas does not apply to jobs",
        ),
        (
            "j:\n  docker_image: x\n  retries: -1\n",
            "retries: a whole number from 0 to 100, got -1",
        ),
        ("j:\n  docker_image: 'Bad Image'\n", "Bad Image"),
        ("k:\n  docker_image: x\n", "job `j` is not in the file"),
    ] {
        let f = server.spec("bad.yml", yaml);
        let out = server.cli(&["jobs", "run", "-n", "j", "-f", &f]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(64), "{yaml}: {err}");
        assert!(err.contains(want), "{yaml}: wanted `{want}` in: {err}");
    }
    // The server applies the same rules to a raw request.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = server.client(&server.admin);
    for (body, want) in [
        (
            r#"{"name": "j", "spec": {"docker_image": "x", "callback_url": "file:///etc/passwd"}}"#,
            "only http:// and https://",
        ),
        (
            r#"{"name": "j", "spec": {"docker_image": "x", "schedule": "@every 1s", "replicas": 2}}"#,
            "schedule and replicas",
        ),
        (
            r#"{"name": "j", "spec": {"docker_image": "x", "nope": 1}}"#,
            "unknown field `nope`",
        ),
    ] {
        let (status, answer) = rt
            .block_on(client.raw(reqwest::Method::POST, "/api/v1/jobs", Some(body.into())))
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer.contains(want), "{body}: {answer}");
    }
    assert!(
        server
            .json(&["jobs", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    );
}
