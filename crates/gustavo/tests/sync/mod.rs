//! Issue 15: the sync protocol. The agent's status report and vitals ride on its long-poll
//! (`POST …/sync`); liveness is the open poll; agents on the old protocol (`GET …/desired`,
//! `PUT …/status`, `POST …/heartbeat`) still work. No timing is asserted.

use std::process::Command;
use std::time::Duration;

use crate::util::*;

/// `curl` against the test server with its CA: (status, body).
fn curl(
    server: &Server,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    curl_with(server, token, method, path, body, &[])
}

/// [`curl`] with more arguments (`-H …`, `--http1.1`).
fn curl_with(
    server: &Server,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    more: &[&str],
) -> (u16, String) {
    let mut args: Vec<String> = vec![
        "-s".into(),
        "-m".into(),
        "30".into(),
        "--cacert".into(),
        server.ca_file().display().to_string(),
        "-X".into(),
        method.into(),
        "-H".into(),
        format!("Authorization: Bearer {token}"),
        "-w".into(),
        "\n%{http_code}".into(),
    ];
    if let Some(b) = body {
        args.extend([
            "-H".into(),
            "content-type: application/json".into(),
            "--data-binary".into(),
            b.into(),
        ]);
    }
    args.extend(more.iter().map(|a| a.to_string()));
    args.push(format!("{}{}", server.url, path));
    let out = Command::new("curl")
        .args(&args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Joins `node` to `group` with a raw register call, as an agent from before sync would;
/// returns its token.
fn join_by_curl(server: &Server, node: &str, group: &str, labels: &str, cpus: u32) -> String {
    let (code, body) = curl(
        server,
        &server.join,
        "POST",
        "/api/v1/nodes/register",
        Some(&format!(
            r#"{{"name":"{node}","groups":["{group}"],"labels":{labels},"cpus":{cpus},"memory_mb":512,"agent_version":"0.0.9","heartbeat_s":5}}"#
        )),
    );
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

fn rollout_converged(server: &Server, app: &str, node: &str) -> bool {
    // The counts kept between looks (`?summary=true`, what `--wait` reads) agree with the
    // rows built from scratch, read between two equal looks (reports keep coming).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin = server.client(&server.admin);
    let look = || {
        let s = rt.block_on(admin.rollout_summary(app)).unwrap();
        (s.total, s.converged)
    };
    for _ in 0..50 {
        let before = look();
        let r = server.json(&["rollouts", "get", app]);
        if look() != before {
            continue;
        }
        let rows = r["nodes"].as_array().cloned().unwrap_or_default();
        let converged = rows.iter().filter(|n| n["converged"] == true).count();
        assert_eq!(before, (rows.len(), converged), "{r}");
        return rows
            .iter()
            .any(|n| n["node"] == node && n["converged"] == true);
    }
    panic!("the rollout of {app} never held still for a look");
}

fn node_field(server: &Server, node: &str, field: &str) -> serde_json::Value {
    server.json(&["nodes", "get", node])[field].clone()
}

/// A report that went up on a long-poll (or a stream) stays with the server while polls
/// time out, and reaches it again after a server restart (which forgets reports) without
/// anything changing on the device. The agent sends nothing but syncs (or its stream).
fn a_report_survives_a_server_restart(streams: bool) {
    require_docker_and_registry();
    let mut server = Server::start();
    let node = unique("syncer");
    let group = unique("syncg");
    // Vitals every 3 s: each long-poll times out after 3 s and the next one goes.
    let mut flags = vec!["--heartbeat", "3s"];
    if !streams {
        flags.push("--no-stream");
    }
    let agent = Agent::start_with(&server, &node, &[&group], &[], &flags);
    let f = server.spec(
        "s.yml",
        "s:\n  docker_image: gustavo-test/busybox:latest\n  command: \"sleep 3600\"\n",
    );
    server.ok(&[
        "apps", "create", "-n", "s", "-f", &f, "-d", &group, "--wait",
    ]);
    let id = || {
        let out = Command::new("docker")
            .args(["ps", "-q", "--filter", &format!("name={node}.s.1")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let container = id();
    assert!(!container.is_empty());
    // Several vitals periods pass; the report stands and the node stays ready.
    std::thread::sleep(Duration::from_secs(8));
    assert!(rollout_converged(&server, "s", &node));
    assert_eq!(node_field(&server, &node, "status"), "ready");

    server.kill();
    std::thread::sleep(Duration::from_secs(1));
    server.restart();
    // The restarted server knows the node's report only from what the agent sends next.
    wait_for(
        "the report to come back after the restart",
        Duration::from_secs(60),
        || rollout_converged(&server, "s", &node),
    );
    assert_eq!(id(), container, "nothing was restarted on the device");
    let log = agent.log();
    if streams {
        assert!(
            log.contains("the stream to the server broke"),
            "the agent streams, and opened another after the restart: {log}"
        );
        assert!(!log.contains("long-polling instead"), "{log}");
    } else {
        assert!(log.contains("/sync"), "the agent syncs: {log}");
        assert!(!log.contains("stream"), "no stream: {log}");
    }
    for old in ["/heartbeat", "/status", "/desired"] {
        assert!(!log.contains(old), "no {old} requests: {log}");
    }
    server.ok(&["apps", "delete", "-n", "s", "--wait"]);
}

#[test]
fn a_report_on_the_long_poll_survives_poll_timeouts_and_a_server_restart() {
    a_report_survives_a_server_restart(false);
}

#[test]
fn a_report_on_the_stream_survives_a_server_restart() {
    a_report_survives_a_server_restart(true);
}

/// With the default vitals period of 60 s, the node is ready because its long-poll (or
/// stream) is open, and shows offline soon after its agent dies (the connection closes) —
/// not after three 60 s periods.
fn liveness_is_the_open_request(streams: bool) {
    require_docker_and_registry();
    let server = Server::start();
    let node = unique("liver");
    let mut flags = vec!["--heartbeat", "60s"];
    if !streams {
        flags.push("--no-stream");
    }
    let mut agent = Agent::start_with(&server, &node, &[], &[], &flags);
    // Longer than the old rule's 15 s without a request.
    std::thread::sleep(Duration::from_secs(20));
    assert_eq!(node_field(&server, &node, "status"), "ready");
    agent.kill();
    wait_for("the node to show offline", Duration::from_secs(40), || {
        node_field(&server, &node, "status") == "offline"
    });
}

#[test]
fn liveness_is_the_open_long_poll() {
    liveness_is_the_open_request(false);
}

#[test]
fn liveness_is_the_open_stream() {
    liveness_is_the_open_request(true);
}

/// The stream (`POST …/stream`, HTTP/2): the first line says what the device has, the
/// server asks for the report it lacks and sends the desired state; a change comes down as
/// a frame, a report goes up as a line and counts in the rollout. A line that is not a sync
/// request ends the stream with a last frame naming the problem; another node's token, and
/// HTTP/1.1, are refused with JSON errors.
#[test]
fn a_stream_carries_changes_down_and_reports_up() {
    use gustavo_model::api::{AppState, AppStatus, StatusReport, SyncRequest};
    require_docker_and_registry();
    let server = Server::start();
    let node = unique("streamer");
    let group = unique("streamg");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let secret = server.join.split("::").last().unwrap().to_string();
    let joined = rt
        .block_on(
            server
                .client(&secret)
                .register(&gustavo_model::api::RegisterRequest {
                    name: node.clone(),
                    groups: vec![group.clone()],
                    labels: Default::default(),
                    cpus: 1,
                    memory_mb: 512,
                    agent_version: "test".into(),
                    heartbeat_s: 60,
                    replace: false,
                    token: None,
                }),
        )
        .unwrap();
    let client = server.client(&joined.token);
    let mut stream = rt.block_on(client.stream(&node)).expect("the stream opens");
    let next = |s: &mut gustavo_client::SyncStream| {
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), s.next()).await })
            .expect("a frame within 30 s")
            .expect("the stream holds")
            .expect("the stream is open")
    };
    rt.block_on(stream.send(&SyncRequest {
        after: 0,
        session: 7,
        seq: 1,
        ..SyncRequest::default()
    }))
    .unwrap();
    let hello = next(&mut stream);
    assert!(hello.need_report, "the server has no report yet");
    assert!(hello.deltas, "the server takes report deltas");
    let first = next(&mut stream).desired.expect("the desired state");
    assert!(first.apps.is_empty());

    let f = server.spec(
        "st.yml",
        "st:\n  docker_image: gustavo-test/busybox:latest\n",
    );
    server.ok(&["apps", "create", "-n", "st", "-f", &f, "-d", &group]);
    let d = next(&mut stream).desired.expect("the change comes down");
    assert!(d.revision > first.revision);
    assert_eq!(d.apps[0].containers[0].name, format!("{node}.st.1"));
    assert!(d.apps[0].template.is_none(), "completed by the client");
    assert!(!rollout_converged(&server, "st", &node));
    let report = StatusReport {
        applied_revision: d.revision,
        apps: vec![AppStatus {
            app: "st".into(),
            revision: d.apps[0].revision,
            state: AppState::Running,
            ready: 1,
            desired: 1,
            error: None,
        }],
        ..StatusReport::default()
    };
    rt.block_on(stream.send(&SyncRequest {
        after: d.revision,
        report: Some(report.clone()),
        session: 7,
        seq: 2,
        ..SyncRequest::default()
    }))
    .unwrap();
    wait_for("the report to count", Duration::from_secs(20), || {
        rollout_converged(&server, "st", &node)
    });

    // Deltas: one on the report of request 2 that says `st` is gone counts…
    let delta = |base: u64, changed: &str, apps: Vec<AppStatus>| {
        Some(gustavo_model::api::ReportDelta {
            base,
            applied_revision: d.revision,
            changed: vec![changed.to_string()],
            apps,
            ..Default::default()
        })
    };
    let send = |stream: &mut gustavo_client::SyncStream, seq: u64, req: SyncRequest| {
        rt.block_on(stream.send(&SyncRequest {
            after: d.revision,
            session: 7,
            seq,
            ..req
        }))
        .unwrap()
    };
    send(
        &mut stream,
        3,
        SyncRequest {
            delta: delta(2, "st", vec![]),
            ..Default::default()
        },
    );
    wait_for("the delta to count", Duration::from_secs(20), || {
        !rollout_converged(&server, "st", &node)
    });
    // …one on a report the server does not have (request 2 again) is dropped, and the
    // whole report asked for…
    let running = report.apps.clone();
    send(
        &mut stream,
        4,
        SyncRequest {
            delta: delta(2, "st", running.clone()),
            ..Default::default()
        },
    );
    assert!(
        next(&mut stream).need_report,
        "the whole report is asked for"
    );
    assert!(
        !rollout_converged(&server, "st", &node),
        "the stale delta changed nothing"
    );
    // …and one on the whole report sent then changes only the app it names.
    send(
        &mut stream,
        5,
        SyncRequest {
            report: Some(report.clone()),
            ..Default::default()
        },
    );
    wait_for("the whole report to count", Duration::from_secs(20), || {
        rollout_converged(&server, "st", &node)
    });
    send(
        &mut stream,
        6,
        SyncRequest {
            delta: delta(5, "other", vec![]),
            ..Default::default()
        },
    );
    send(
        &mut stream,
        7,
        SyncRequest {
            delta: delta(6, "st", running),
            ..Default::default()
        },
    );
    // The lines are taken in order: the answer to a stale one comes after both were.
    send(
        &mut stream,
        8,
        SyncRequest {
            delta: delta(2, "st", vec![]),
            ..Default::default()
        },
    );
    assert!(next(&mut stream).need_report);
    assert!(
        rollout_converged(&server, "st", &node),
        "st untouched by a delta about another app"
    );

    // Thresholds set on the group come down whole, whatever went before (the test server
    // runs with none of its own); the apps as before stay kept (returned).
    let set_thresholds = |stream: &mut gustavo_client::SyncStream, cpu_high: u32| {
        let settings = format!("cpu={cpu_high}/50");
        server.ok(&["groups", "set-pressure", &group, "--settings", &settings]);
        let frame = next(stream);
        let d = frame.desired.expect("the thresholds come down");
        assert!(!frame.kept_pressure);
        assert_eq!(
            d.pressure.as_ref().map(|p| p.cpu.high),
            Some(f64::from(cpu_high))
        );
        (d, frame.kept)
    };
    let (pressured, kept) = set_thresholds(&mut stream, 70);
    assert_eq!(kept, ["st"]);

    // A second app comes down alone, the first kept by name (the client puts it back);
    // an update of the second too.
    let f2 = server.spec(
        "st2.yml",
        "st2:\n  docker_image: gustavo-test/busybox:latest\n",
    );
    server.ok(&["apps", "create", "-n", "st2", "-f", &f2, "-d", &group]);
    let frame = next(&mut stream);
    let two = frame.desired.expect("the second app comes down");
    assert_eq!(frame.kept, ["st"], "the first app is kept");
    assert!(frame.kept_pressure);
    assert_eq!(two.pressure, pressured.pressure);
    let names: Vec<_> = two.apps.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["st", "st2"], "whole again on the client");
    assert_eq!(two.apps[0], d.apps[0], "the kept app as it was");
    let f2 = server.spec(
        "st2b.yml",
        "st2:\n  docker_image: gustavo-test/busybox:latest\n  env_vars: {A: b}\n",
    );
    server.ok(&["apps", "update", "-n", "st2", "-f", &f2]);
    let frame = next(&mut stream);
    let three = frame.desired.expect("the update comes down");
    assert_eq!(frame.kept, ["st"]);
    assert_eq!(three.apps.len(), 2, "restored whole from what came before");
    assert_ne!(three.apps[1], two.apps[1], "the update");
    assert!(frame.kept_pressure, "unchanged thresholds are left out");
    assert_eq!(
        three.pressure, pressured.pressure,
        "and put back by the client"
    );
    // Changed, they come down whole.
    let (four, kept) = set_thresholds(&mut stream, 75);
    assert_eq!(kept, ["st", "st2"]);
    assert_eq!(four.apps.len(), 2);

    // An agent from before kept thresholds (no `gustavo-kept-pressure`) gets them in every
    // state, since it would read them absent as pressure off; its apps are still kept.
    let mut old = rt
        .block_on(client.stream_without_kept_pressure(&node))
        .expect("the stream opens");
    rt.block_on(old.send(&SyncRequest {
        after: 0,
        session: 8,
        seq: 1,
        ..SyncRequest::default()
    }))
    .unwrap();
    assert!(
        next(&mut old).desired.is_none(),
        "the answer to the first line"
    );
    for change in ["c", "d"] {
        let frame = next(&mut old);
        let d = frame.desired.expect("the state comes down");
        assert!(!frame.kept_pressure, "never left out for this agent");
        assert_eq!(d.pressure.as_ref().map(|p| p.cpu.high), Some(75.0));
        assert_eq!(d.apps.len(), 2);
        let f = server.spec(
            "st2c.yml",
            &format!(
                "st2:\n  docker_image: gustavo-test/busybox:latest\n  env_vars: {{A: {change}}}\n"
            ),
        );
        server.ok(&["apps", "update", "-n", "st2", "-f", &f]);
    }
    let frame = next(&mut old);
    assert_eq!(frame.kept, ["st"], "apps as before are still kept");
    assert!(!frame.kept_pressure);
    assert!(frame.desired.expect("the update").pressure.is_some());
    drop(old);

    // A bad line: a last frame naming it, then the end.
    let mut bad = rt.block_on(client.stream(&node)).unwrap();
    rt.block_on(bad.send_raw(b"{\"after\": \"yesterday\"}\n"))
        .unwrap();
    let last = next(&mut bad);
    let e = last.error.expect("the last frame names the problem");
    assert_eq!(e.code, "bad_request");
    assert!(e.message.contains("yesterday"), "{}", e.message);
    assert!(
        rt.block_on(bad.next()).unwrap().is_none(),
        "the stream ends"
    );
    // A line past the body limit (1 MiB by default) never ends: refused by its size.
    let mut huge = rt.block_on(client.stream(&node)).unwrap();
    rt.block_on(huge.send_raw(&vec![b' '; 1024 * 1024 + 2]))
        .unwrap();
    let e = next(&mut huge)
        .error
        .expect("the last frame names the problem");
    assert!(e.message.contains("longer than"), "{}", e.message);
    // What was stored is untouched.
    assert!(rollout_converged(&server, "st", &node));

    // Another node's stream, and HTTP/1.1: refused with JSON errors.
    let e = rt
        .block_on(server.client(&server.admin).stream(&node))
        .err()
        .unwrap();
    assert_eq!(e.status(), Some(403), "{e}");
    let (code, body) = curl_with(
        &server,
        &joined.token,
        "POST",
        &format!("/api/v1/nodes/{node}/stream"),
        Some("{}"),
        &["--http1.1"],
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("HTTP/2"), "{body}");
    drop(stream);
    server.ok(&["apps", "delete", "-n", "st"]);
}

/// An agent talking HTTP/1.1 (a server over plain HTTP, where there is no HTTP/2 without
/// prior knowledge) is refused a stream, says so once, and long-polls: its app runs.
#[test]
fn an_agent_without_http2_long_polls_instead() {
    require_docker_and_registry();
    let server = Server::start_with(&["--insecure-http"]);
    let node = unique("h1agent");
    let group = unique("h1g");
    let agent = Agent::start(&server, &node, &[&group], &[]);
    let f = server.spec(
        "h.yml",
        "h:\n  docker_image: gustavo-test/busybox:latest\n  command: \"sleep 3600\"\n",
    );
    server.ok(&[
        "apps", "create", "-n", "h", "-f", &f, "-d", &group, "--wait",
    ]);
    let log = agent.log();
    assert_eq!(
        log.matches("long-polling instead").count(),
        1,
        "said once: {log}"
    );
    server.ok(&["apps", "delete", "-n", "h", "--wait"]);
}

/// An agent speaking the protocol before sync (GET desired, PUT status, POST heartbeat)
/// still runs: its report counts in rollouts and its heartbeat keeps it ready. Bad syncs
/// are refused with a JSON error naming the problem.
#[test]
fn an_agent_on_the_old_protocol_still_works_and_bad_syncs_are_refused() {
    require_docker_and_registry();
    let server = Server::start();
    let node = unique("oldie");
    let group = unique("oldg");
    let token = join_by_curl(&server, &node, &group, "{}", 1);
    let f = server.spec("o.yml", "o:\n  docker_image: gustavo-test/busybox:latest\n");
    server.ok(&["apps", "create", "-n", "o", "-f", &f, "-d", &group]);
    let (code, body) = curl(
        &server,
        &token,
        "GET",
        &format!("/api/v1/nodes/{node}/desired?after=0&wait=5"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rev = d["revision"].as_u64().unwrap();
    let app_rev = d["apps"][0]["revision"].as_u64().unwrap();
    let report = format!(
        r#"{{"applied_revision":{rev},"apps":[{{"app":"o","revision":{app_rev},"state":"running","ready":1,"desired":1}}],"containers":[]}}"#
    );
    let (code, body) = curl(
        &server,
        &token,
        "PUT",
        &format!("/api/v1/nodes/{node}/status"),
        Some(&report),
    );
    assert_eq!(code, 204, "{body}");
    assert!(rollout_converged(&server, "o", &node));
    let vitals = r#"{"vitals":{"cpu_percent":1.0,"cpus":1,"memory_used_mb":10,"memory_total_mb":512,"disk_used_mb":1,"disk_total_mb":10,"load1":0.0,"load5":0.0,"load15":0.0,"net_rx_bps":0,"net_tx_bps":0,"uptime_s":1,"at":1}}"#;
    let (code, body) = curl(
        &server,
        &token,
        "POST",
        &format!("/api/v1/nodes/{node}/heartbeat"),
        Some(vitals),
    );
    assert_eq!((code, body.as_str()), (200, r#"{"need_status":false}"#));
    assert_eq!(node_field(&server, &node, "status"), "ready");

    // The sync protocol refuses what is not right, with a JSON error naming it.
    let sync = format!("/api/v1/nodes/{node}/sync");
    let (code, body) = curl(
        &server,
        &token,
        "POST",
        &sync,
        Some(r#"{"after":0,"wiat":5}"#),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("wiat"), "names the unknown field: {body}");
    let (code, body) = curl(&server, &token, "POST", &sync, Some("{not json"));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    let (code, body) = curl(
        &server,
        &server.admin,
        "POST",
        &sync,
        Some(r#"{"after":0,"wait":0,"report":{"applied_revision":0,"apps":[],"containers":[]}}"#),
    );
    assert_eq!(code, 403, "an admin cannot report for a node: {body}");
    let (code, _) = curl(&server, "gus_node_nope", "POST", &sync, Some("{}"));
    assert_eq!(code, 401);
    // What was stored is untouched by the refused ones.
    assert!(rollout_converged(&server, "o", &node));

    // A sync that carries no report to a server that has one answers at once (304: the
    // revision is known) without asking for it again.
    let (code, body) = curl(
        &server,
        &token,
        "POST",
        &sync,
        Some(&format!(r#"{{"after":{rev},"wait":0}}"#)),
    );
    assert_eq!(code, 304, "{body}");
    server.ok(&["apps", "delete", "-n", "o"]);
}

/// A join whose answer was lost can be sent again: with the credential the agent proposed,
/// the server answers as the first time; anyone else asking for the name is refused, and a
/// credential that is not one is refused by name.
#[test]
fn a_join_sent_again_after_a_lost_answer_succeeds() {
    let server = Server::start();
    let node = unique("again");
    let token = format!("gus_node_{}", "ab".repeat(24));
    let body = |t: &str| {
        format!(
            r#"{{"name":"{node}","labels":{{}},"cpus":1,"memory_mb":512,"agent_version":"t","token":"{t}"}}"#
        )
    };
    let join = |t: &str| {
        curl(
            &server,
            &server.join,
            "POST",
            "/api/v1/nodes/register",
            Some(&body(t)),
        )
    };
    for _ in 0..2 {
        let (code, out) = join(&token);
        assert_eq!(code, 200, "{out}");
        assert!(out.contains(&token), "{out}");
    }
    let (code, out) = join(&format!("gus_node_{}", "cd".repeat(24)));
    assert_eq!(code, 409, "{out}");
    assert!(out.contains("already exists"), "{out}");
    let (code, out) = join("hunter2");
    assert_eq!(code, 400, "{out}");
    assert!(out.contains("token"), "{out}");
    // The credential works.
    let (code, _) = curl(
        &server,
        &token,
        "GET",
        &format!("/api/v1/nodes/{node}"),
        None,
    );
    assert_eq!(code, 200);
}

/// The template form (request header `gustavo-form: template`): each app comes once per version as the containers'
/// shared part plus the node's replica numbers and labels, and completed on the device it
/// is exactly the full form an older agent gets — same names, specs and hashes, so an
/// agent that upgrades recreates nothing. An admin looking sees the full form, secrets
/// hidden.
#[test]
fn the_template_form_completes_to_exactly_the_full_form() {
    use gustavo_model::api::DesiredState;
    require_docker_and_registry();
    let server = Server::start();
    let node = unique("tmpl");
    let group = unique("tmplg");
    let token = join_by_curl(&server, &node, &group, r#"{"site":"north"}"#, 2);
    let port = free_ports(2);
    let f = server.spec(
        "t.yml",
        &format!(
            "t:\n  docker_image: gustavo-test/busybox:latest\n  starting_ports: [{{{port}: 80}}]\n  containers_per: {{cpu: 1}}\n  env_vars: {{WHERE: \"{{{{node.name}}}}@{{{{node.label.site}}}}/{{{{replica}}}}\", PASS: {{secret: hunter2}}}}\n"
        ),
    );
    server.ok(&["apps", "create", "-n", "t", "-f", &f, "-d", &group]);
    let sync = |form: &str| {
        let header = format!("gustavo-form: {form}");
        let more: &[&str] = if form.is_empty() {
            &[]
        } else {
            &["-H", &header]
        };
        let path = format!("/api/v1/nodes/{node}/sync");
        let (code, body) = curl_with(
            &server,
            &token,
            "POST",
            &path,
            Some(r#"{"after":0,"wait":0}"#),
            more,
        );
        assert_eq!(code, 200, "{body}");
        body
    };
    let full_body = sync("");
    let template_body = sync("template");
    assert!(!full_body.contains("\"template\""), "{full_body}");
    let full: DesiredState = serde_json::from_str(&full_body).unwrap();
    let mut got: DesiredState = serde_json::from_str(&template_body).unwrap();
    let app = &got.apps[0];
    assert!(
        app.template.is_some() && app.containers.is_empty(),
        "{template_body}"
    );
    assert_eq!(app.replicas, vec![1, 2], "two cpus: two replicas");
    assert_eq!(got.labels["site"], "north");
    got.complete();
    assert_eq!(got, full);
    let c = &full.apps[0].containers[1];
    assert_eq!(c.name, format!("{node}.t.2"));
    assert_eq!(c.spec.env["WHERE"], format!("{node}@north/2"));
    assert_eq!(
        c.spec.env["PASS"], "hunter2",
        "the node itself gets its secret"
    );
    assert_eq!(c.spec.ports[0].host, port + 1);

    // An unknown form is the full form (a newer agent on this server still works).
    assert_eq!(sync("someday"), full_body);
    // An admin sees the full form, the secret hidden.
    let (code, body) = curl(
        &server,
        &server.admin,
        "GET",
        &format!("/api/v1/nodes/{node}/desired?after=0&wait=0"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        !body.contains("\"template\"") && !body.contains("hunter2"),
        "{body}"
    );
    server.ok(&["apps", "delete", "-n", "t"]);
}

/// A device running two apps, on the stream: an update of one comes down alone (the other
/// kept by name) and its report goes up as a delta; the server's view of both stays whole,
/// the untouched app's container is never recreated, and deleting one leaves the other.
#[test]
fn a_change_to_one_of_two_apps_touches_only_that_app() {
    require_docker_and_registry();
    let server = Server::start();
    let node = unique("twoapps");
    let group = unique("twog");
    let _agent = Agent::start(&server, &node, &[&group], &[]);
    let image = format!("{}/web:v1", registry());
    let spec = |name: &str, v: &str| {
        format!("{name}:\n  docker_image: {image}\n  networks: []\n  env_vars: {{V: \"{v}\"}}\n")
    };
    for name in ["one", "two"] {
        let f = server.spec(&format!("{name}.yml"), &spec(name, "1"));
        server.ok(&[
            "apps",
            "create",
            name,
            "-f",
            &f,
            "-d",
            &group,
            "--wait",
            "--timeout",
            "120s",
        ]);
    }
    let (one, two) = (format!("{node}.one.1"), format!("{node}.two.1"));
    let one_id = inspect(&one, "{{.Id}}").unwrap();

    let f = server.spec("two.yml", &spec("two", "2"));
    server.ok(&[
        "apps",
        "update",
        "two",
        "-f",
        &f,
        "--wait",
        "--timeout",
        "120s",
    ]);
    let env = inspect(&two, "{{json .Config.Env}}").unwrap();
    assert!(env.contains("V=2"), "{env}");
    assert_eq!(
        inspect(&one, "{{.Id}}").unwrap(),
        one_id,
        "app one untouched"
    );
    assert!(rollout_converged(&server, "one", &node) && rollout_converged(&server, "two", &node));
    let containers = server.ok(&["cache", "containers", "-d", &group]);
    assert!(
        containers.contains(&one) && containers.contains(&two),
        "the server sees both apps' containers: {containers}"
    );

    server.ok(&["apps", "delete", "two", "-y", "--wait", "--timeout", "120s"]);
    wait_for(
        "the server to see app two gone",
        Duration::from_secs(30),
        || {
            !server
                .ok(&["cache", "containers", "-d", &group])
                .contains(&two)
        },
    );
    let containers = server.ok(&["cache", "containers", "-d", &group]);
    assert!(containers.contains(&one), "{containers}");
    assert!(rollout_converged(&server, "one", &node));
    assert_eq!(
        inspect(&one, "{{.Id}}").unwrap(),
        one_id,
        "app one untouched"
    );
}

fn create_sleeper(server: &Server, app: &str, group: &str) {
    let f = server.spec(
        &format!("{app}.yml"),
        &format!(
            "{app}:\n  docker_image: gustavo-test/busybox:latest\n  command: [\"sleep\", \"3600\"]\n  networks: []\n"
        ),
    );
    server.ok(&[
        "apps",
        "create",
        app,
        "-f",
        &f,
        "-d",
        group,
        "--wait",
        "--timeout",
        "60s",
    ]);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .output()
        .expect("cp runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A server restored from a backup is behind its devices: they hold revisions it has not
/// reached, and take only newer states. Each of them takes its state as it reconnects —
/// the server moves its revision past theirs, the second device as well as the first —
/// so what the server does not know of leaves them, and its next change reaches them.
#[test]
fn a_server_restored_from_a_backup_reaches_devices_that_are_ahead_of_it() {
    require_docker_and_registry();
    let mut server = Server::start();
    let group = unique("bk");
    let nodes = [unique("bka"), unique("bkb")];
    let _agents: Vec<Agent> = nodes
        .iter()
        .map(|n| Agent::start(&server, n, &[&group], &[]))
        .collect();
    create_sleeper(&server, "kept", &group);

    server.kill();
    let backup = tempfile::tempdir().unwrap();
    copy_dir(&server.data_dir(), backup.path());
    server.restart();
    create_sleeper(&server, "later", &group);
    create_sleeper(&server, "later2", &group);
    for n in &nodes {
        assert_eq!(containers_of(n, Some("running")).len(), 3, "{n}");
    }

    // Back to the backup: the devices are two changes ahead.
    server.kill();
    std::fs::remove_dir_all(server.data_dir()).unwrap();
    std::fs::create_dir(server.data_dir()).unwrap();
    copy_dir(backup.path(), &server.data_dir());
    server.restart();
    let only = |apps: &[&str]| {
        let nodes = nodes.clone();
        let apps: Vec<String> = apps.iter().map(|a| a.to_string()).collect();
        move || {
            nodes.iter().all(|n| {
                let want: Vec<String> = apps.iter().map(|a| format!("{n}.{a}.1")).collect();
                containers_of(n, Some("running")) == want
            })
        }
    };
    let show = || {
        let running: Vec<Vec<String>> = nodes
            .iter()
            .map(|n| containers_of(n, Some("running")))
            .collect();
        format!(": {running:?}\n{}", tail(&server.log(), 20))
    };
    // With no new change: every device drops what the restored server does not know of.
    wait_for_showing(
        "every device to run the restored server's apps only",
        Duration::from_secs(60),
        only(&["kept"]),
        show,
    );
    create_sleeper(&server, "after", &group);
    wait_for_showing(
        "the next change on every device",
        Duration::from_secs(60),
        only(&["after", "kept"]),
        show,
    );
    assert!(
        server.log().contains("moving past it"),
        "{}",
        tail(&server.log(), 20)
    );
    server.ok(&[
        "apps",
        "delete",
        "after",
        "-y",
        "--wait",
        "--timeout",
        "60s",
    ]);
    server.ok(&["apps", "delete", "kept", "-y", "--wait", "--timeout", "60s"]);
}
