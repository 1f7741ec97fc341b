//! Issue 3, security by default: TLS, CA-pinning join tokens, node identity, users, roles,
//! grants, dangerous fields, the audit log and abuse limits — each against the real binary
//! over real TLS handshakes.

use std::io::{Read, Write};
use std::time::Duration;

use gustavo_client::Client;
use gustavo_model::api::{Heartbeat, RegisterRequest, StatusReport};
use reqwest::Method;

use crate::util::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn reg(name: &str, groups: &[&str]) -> RegisterRequest {
    RegisterRequest {
        name: name.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        labels: Default::default(),
        cpus: 1,
        memory_mb: 512,
        agent_version: "test".into(),
        heartbeat_s: 5,
        replace: false,
        token: None,
    }
}

/// Registers a node through the API with the server's join token; returns its token.
fn register(server: &Server, rt: &tokio::runtime::Runtime, name: &str, groups: &[&str]) -> String {
    let secret = server.join.split("::").last().unwrap().to_string();
    rt.block_on(server.client(&secret).register(&reg(name, groups)))
        .expect("register")
        .token
}

fn status(
    rt: &tokio::runtime::Runtime,
    c: &Client,
    m: Method,
    path: &str,
    body: Option<&str>,
) -> u16 {
    rt.block_on(c.raw(m, path, body.map(|b| b.as_bytes().to_vec())))
        .expect("the server answers")
        .0
}

/// TLS is on by default: the CLI finds https and the CA in client.toml; plain HTTP to the
/// port gets no answer; a client that does not trust the CA is refused; the CA served at
/// /api/v1/ca is the one the join token pins.
#[test]
fn tls_is_on_by_default() {
    let server = Server::start();
    assert!(server.url.starts_with("https://127.0.0.1:"));
    server.ok(&["groups", "list"]);
    // On the server's machine the CLI needs no flags: it finds <data-dir>/client.toml.
    let out = std::process::Command::new(BIN)
        .args(["-o", "json", "whoami"])
        .env("GUSTAVO_DATA_DIR", server.data_dir())
        .env("HOME", server.dir.path())
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("GUSTAVO_CONFIG")
        .env_remove("GUSTAVO_SERVER")
        .env_remove("GUSTAVO_TOKEN")
        .env_remove("GUSTAVO_CA_FILE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"admin\""));

    // Plain HTTP on the TLS port: no HTTP answer comes back.
    let port: u16 = server.url.rsplit(':').next().unwrap().parse().unwrap();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /api/v1/health HTTP/1.0\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        !String::from_utf8_lossy(&buf).contains("HTTP/1."),
        "{buf:?}"
    );

    // A client that trusts no CA (or another one) cannot talk to it.
    let rt = rt();
    let err = rt
        .block_on(Client::new(&server.url, &server.admin).list_apps())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("certificate") || err.contains("issuer"),
        "{err}"
    );
    let other = Server::start();
    let out = std::process::Command::new(BIN)
        .args([
            "--server",
            &server.url,
            "--token",
            &server.admin,
            "apps",
            "list",
        ])
        .arg("--ca-file")
        .arg(other.ca_file())
        .env_remove("GUSTAVO_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    // The CA endpoint needs no token and matches the fingerprint in the join token.
    let fp = gustavo_client::ca_fingerprint(&server.ca_pem()).unwrap();
    assert!(
        server.join.starts_with(&format!("G10{fp}::")),
        "{}",
        server.join
    );
    let pem = rt
        .block_on(gustavo_client::fetch_pinned_ca(&server.url, &fp))
        .unwrap();
    assert_eq!(pem, server.ca_pem());
    // The CA key is private to the server.
    use std::os::unix::fs::PermissionsExt;
    for f in ["ca.key", "client.toml", "admin-token", "join-token"] {
        let mode = std::fs::metadata(server.data_dir().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} is readable by others");
    }
    // The CA survives a restart (agents keep trusting it).
    let mut server = server;
    server.restart();
    assert_eq!(
        gustavo_client::ca_fingerprint(&server.ca_pem()).unwrap(),
        fp
    );
    server.ok(&["groups", "list"]);
}

/// Plain HTTP only with the explicit flag; then there is no CA to fetch.
#[test]
fn plain_http_only_when_asked() {
    let server = Server::start_with(&["--insecure-http"]);
    assert!(server.url.starts_with("http://"), "{}", server.url);
    assert!(!server.join.starts_with("G10"));
    server.ok(&["groups", "list"]);
    let rt = rt();
    let c = server.client("");
    assert_eq!(status(&rt, &c, Method::GET, "/api/v1/ca", None), 404);
    assert!(server.log().contains("WARNING: --insecure-http"));
}

/// An agent refuses a server whose CA does not match its join token, with a clear error,
/// and never registers there.
#[test]
fn agent_refuses_a_server_with_the_wrong_ca() {
    let a = Server::start();
    let b = Server::start();
    let name = unique("pinned");
    // A's token (A's fingerprint) but B's address: B is an impostor for this token.
    let out = std::process::Command::new(BIN)
        .args([
            "agent", "--server", &b.url, "--token", &a.join, "--name", &name,
        ])
        .arg("--data-dir")
        .arg(b.dir.path().join("agent"))
        .env_remove("GUSTAVO_CONFIG")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("refusing the server"), "{err}");
    assert!(err.contains("fingerprint"), "{err}");
    let nodes = b.json(&["nodes", "list"]);
    assert_eq!(nodes.as_array().unwrap().len(), 0);
    // The same refusal with a CA file that does not match the token.
    let out = std::process::Command::new(BIN)
        .args([
            "agent", "--server", &a.url, "--token", &a.join, "--name", &name,
        ])
        .arg("--ca-file")
        .arg(b.ca_file())
        .arg("--data-dir")
        .arg(a.dir.path().join("agent2"))
        .env_remove("GUSTAVO_CONFIG")
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("refusing the server"),
        "{}",
        stderr(&out)
    );
}

/// A node can read only its own desired state and write only its own status and vitals;
/// removing it cuts it off at its next request; rotating its credential kills the old one.
#[test]
fn node_identity_is_enforced() {
    let server = Server::start();
    let rt = rt();
    let a_tok = register(&server, &rt, "node-a", &["g"]);
    let b_tok = register(&server, &rt, "node-b", &["g"]);
    let a = server.client(&a_tok);
    let b = server.client(&b_tok);

    assert!(rt.block_on(a.desired("node-a", 0, Duration::ZERO)).is_ok());
    let e = rt
        .block_on(a.desired("node-b", 0, Duration::ZERO))
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    let e = rt
        .block_on(a.report_status("node-b", &StatusReport::default()))
        .unwrap_err();
    assert_eq!(e.status(), Some(403));
    let e = rt
        .block_on(a.heartbeat("node-b", &Heartbeat::default()))
        .unwrap_err();
    assert_eq!(e.status(), Some(403));
    let e = rt.block_on(a.register(&reg("node-b", &[]))).unwrap_err();
    assert_eq!(e.status(), Some(403));
    assert!(
        rt.block_on(b.report_status("node-b", &StatusReport::default()))
            .is_ok()
    );

    // Rotation: the node asks for a new credential; the old one is dead at once.
    let r = rt.block_on(a.rotate("node-a")).unwrap();
    let e = rt
        .block_on(a.desired("node-a", 0, Duration::ZERO))
        .unwrap_err();
    assert_eq!(e.status(), Some(401));
    let a2 = server.client(&r.token);
    assert!(rt.block_on(a2.desired("node-a", 0, Duration::ZERO)).is_ok());
    // Nobody else may rotate a node's credential, not even an admin.
    let e = rt
        .block_on(server.client(&server.admin).rotate("node-b"))
        .unwrap_err();
    assert_eq!(e.status(), Some(403));

    // Removal cuts the node off at its next request.
    server.ok(&["nodes", "remove", "node-b"]);
    let e = rt
        .block_on(b.heartbeat("node-b", &Heartbeat::default()))
        .unwrap_err();
    assert_eq!(e.status(), Some(401));
}

/// The real agent rotates its credential with --rotate and keeps working with the new one.
#[test]
fn agent_rotates_its_credential() {
    require_docker_and_registry();
    let server = Server::start();
    let name = unique("rot");
    let mut agent = Agent::start(&server, &name, &["g"], &[]);
    let node_json = agent.dir.path().join("data/node.json");
    let before: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&node_json).unwrap()).unwrap();
    assert!(
        before["ca"]
            .as_str()
            .is_some_and(|c| c.contains("BEGIN CERTIFICATE"))
    );
    agent.kill();
    agent.add_args(&["--rotate"]);
    agent.restart();
    wait_for("the agent to rotate", Duration::from_secs(20), || {
        let now: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&node_json).unwrap()).unwrap();
        now["token"] != before["token"]
    });
    let rt = rt();
    let old = server.client(before["token"].as_str().unwrap());
    let e = rt
        .block_on(old.heartbeat(&name, &Heartbeat::default()))
        .unwrap_err();
    assert_eq!(e.status(), Some(401));
    wait_for("the node to stay ready", Duration::from_secs(20), || {
        server.json(&["nodes", "list"])[0]["status"] == "ready"
    });
    assert!(agent.log().contains("rotated the node credential"));
}

/// `tokens create|list|revoke`: a group-bound token forces the group; an expired or revoked
/// token is refused with a clear message.
#[test]
fn join_tokens_have_groups_expiry_and_revocation() {
    let server = Server::start();
    let rt = rt();
    let tok = server.ok(&["tokens", "create", "--group", "cameras", "--ttl", "1h"]);
    let tok = tok.trim();
    assert!(tok.starts_with("G10"), "{tok}");
    let secret = tok.split("::").last().unwrap();
    let c = server.client(secret);
    // The node asks for "payments" but lands in "cameras" only, and stays there when it
    // re-registers with its own token.
    let node_tok = rt
        .block_on(c.register(&reg("cam-1", &["payments"])))
        .unwrap()
        .token;
    rt.block_on(
        server
            .client(&node_tok)
            .register(&reg("cam-1", &["payments"])),
    )
    .unwrap();
    let node = rt
        .block_on(server.client(&server.admin).get_node("cam-1"))
        .unwrap();
    assert_eq!(node.groups, vec!["cameras"]);

    let list = server.json(&["tokens", "list"]);
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{list}");
    let row = rows.iter().find(|r| r["group"] == "cameras").unwrap();
    assert_eq!(row["state"], "active");
    assert!(row["expires_at"].as_u64().is_some());
    // The list never shows a secret.
    assert!(!list.to_string().contains(secret));

    let id = row["id"].as_str().unwrap();
    server.ok(&["tokens", "revoke", id]);
    let e = rt.block_on(c.register(&reg("cam-2", &[]))).unwrap_err();
    assert_eq!(e.status(), Some(401));
    assert!(e.to_string().contains("revoked"), "{e}");
    // Nodes that joined with it keep their own credential.
    assert!(
        rt.block_on(server.client(&node_tok).get_node("cam-1"))
            .is_ok()
    );

    let short = server.ok(&["tokens", "create", "--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    let e = rt
        .block_on(
            server
                .client(short.trim().split("::").last().unwrap())
                .register(&reg("late", &[])),
        )
        .unwrap_err();
    assert_eq!(e.status(), Some(401));
    assert!(e.to_string().contains("expired"), "{e}");
    let bad = server.cli(&["tokens", "create", "--group", "no.dots"]);
    assert_eq!(bad.status.code(), Some(1), "{}", stderr(&bad));
}

/// Every route × every kind of caller, with the exact status. Objects a call would destroy
/// are made per caller, so every cell sees the same world.
#[test]
fn auth_matrix() {
    let server = Server::start();
    let rt = rt();
    let admin = server.client(&server.admin);
    // Users: a viewer and an operator with grants on everything; an admin user.
    server.ok(&["user-groups", "set", "all-ro", "-d", "*=ro"]);
    server.ok(&["user-groups", "set", "all-rw", "-d", "*=rw"]);
    let viewer = server.user("viewer", "viewer", &["all-ro"]);
    let operator = server.user("oper", "operator", &["all-rw"]);
    let admin_user = server.user("boss", "admin", &[]);
    let node_a = register(&server, &rt, "node-a", &["g"]);
    let node_b = register(&server, &rt, "node-b", &["g"]);
    let expired = server.ok(&["tokens", "create", "--ttl", "1s"]);
    let expired = expired.trim().split("::").last().unwrap().to_string();

    let who: Vec<(&str, String)> = vec![
        ("none", String::new()),
        ("bad", "gus_user_nope".into()),
        ("expired", expired),
        ("viewer", viewer),
        ("operator", operator),
        ("admin", admin_user),
        ("node-a", node_a),
        ("node-b", node_b),
    ];
    // Per-caller objects for destructive calls.
    let spec = r#"{"docker_image": "gustavo-test/busybox:latest"}"#;
    for (i, _) in who.iter().enumerate() {
        let body = format!(r#"{{"name": "m{i}", "spec": {spec}, "groups": ["g"]}}"#);
        assert_eq!(
            status(&rt, &admin, Method::POST, "/api/v1/apps", Some(&body)),
            201
        );
        register(&server, &rt, &format!("victim{i}"), &["g"]);
        // A device group left empty: its app moved on.
        let body = format!(r#"{{"name": "e{i}", "spec": {spec}, "groups": ["eg{i}"]}}"#);
        assert_eq!(
            status(&rt, &admin, Method::POST, "/api/v1/apps", Some(&body)),
            201
        );
        let body = format!(r#"{{"spec": {spec}, "groups": ["g"]}}"#);
        let path = format!("/api/v1/apps/e{i}");
        assert_eq!(status(&rt, &admin, Method::PUT, &path, Some(&body)), 200);
        server.cli_stdin(&["users", "create", &format!("doomed{i}")], "pass-word-1\n");
        server.ok(&["user-groups", "set", &format!("ug{i}")]);
        server.ok(&["policy", "set", &format!("pg{i}"), "--allow", "devices"]);
    }
    let token_ids: Vec<String> = (0..who.len())
        .map(|_| {
            let t: serde_json::Value =
                serde_json::from_str(&server.ok(&["tokens", "create", "-o", "json"])).unwrap();
            t["id"].as_str().unwrap().to_string()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1100));

    const U: u16 = 401;
    const F: u16 = 403;
    // Expected: none, bad, expired, viewer, operator, admin, node-a, node-b.
    let rows: Vec<(Method, String, Option<String>, [u16; 8])> = {
        let r = |m: Method, p: &str, b: Option<&str>, e: [u16; 8]| {
            (m, p.to_string(), b.map(String::from), e)
        };
        let person_read = [U, U, U, 200, 200, 200, F, F];
        let admin_only = |ok: u16| [U, U, U, F, F, ok, F, F];
        vec![
            r(Method::GET, "/api/v1/health", None, [200; 8]),
            r(Method::GET, "/api/v1/ca", None, [200; 8]),
            r(
                Method::GET,
                "/api/v1/openapi.json",
                None,
                [U, U, U, 200, 200, 200, 200, 200],
            ),
            r(
                Method::GET,
                "/api/v1/whoami",
                None,
                [U, U, U, 200, 200, 200, 200, 200],
            ),
            r(
                Method::POST,
                "/api/v1/login",
                Some(r#"{"user": "GHOST", "password": "wrong-password"}"#),
                [U; 8],
            ),
            r(Method::GET, "/api/v1/apps", None, person_read),
            r(Method::GET, "/api/v1/apps/m0", None, person_read),
            r(
                Method::POST,
                "/api/v1/apps",
                Some("NEWAPP"),
                [U, U, U, F, 201, 201, F, F],
            ),
            r(
                Method::PUT,
                "/api/v1/apps/m0",
                Some(&format!(r#"{{"spec": {spec}}}"#)),
                [U, U, U, F, 200, 200, F, F],
            ),
            r(
                Method::POST,
                "/api/v1/apps/m0/restart",
                None,
                [U, U, U, F, 200, 200, F, F],
            ),
            r(
                Method::DELETE,
                "/api/v1/apps/MINE",
                None,
                [U, U, U, F, 200, 200, F, F],
            ),
            r(Method::GET, "/api/v1/rollouts/m0", None, person_read),
            r(Method::GET, "/api/v1/groups", None, person_read),
            r(Method::GET, "/api/v1/groups/g", None, person_read),
            r(Method::GET, "/api/v1/nodes", None, person_read),
            r(Method::GET, "/api/v1/containers", None, person_read),
            r(Method::GET, "/api/v1/vitals", None, person_read),
            r(
                Method::GET,
                "/api/v1/nodes/node-a",
                None,
                [U, U, U, 200, 200, 200, 200, F],
            ),
            r(
                Method::DELETE,
                "/api/v1/nodes/VICTIM",
                None,
                admin_only(200),
            ),
            r(
                Method::DELETE,
                "/api/v1/groups/EMPTYG",
                None,
                [U, U, U, F, 200, 200, F, F],
            ),
            r(
                Method::POST,
                "/api/v1/nodes/register",
                Some(r#"{"name": "REG", "cpus": 1, "memory_mb": 1, "agent_version": "t"}"#),
                [U, U, U, F, F, 200, F, F],
            ),
            r(
                Method::GET,
                "/api/v1/nodes/node-a/desired?wait=0",
                None,
                [U, U, U, F, F, 200, 200, F],
            ),
            r(
                Method::POST,
                "/api/v1/nodes/node-a/heartbeat",
                Some(
                    r#"{"vitals": {"cpu_percent": 0, "cpus": 1, "memory_used_mb": 0, "memory_total_mb": 0, "disk_used_mb": 0, "disk_total_mb": 0, "load1": 0, "load5": 0, "load15": 0, "net_rx_bps": 0, "net_tx_bps": 0, "uptime_s": 0, "at": 0}}"#,
                ),
                [U, U, U, F, F, 200, 200, F],
            ),
            r(
                Method::PUT,
                "/api/v1/nodes/node-a/status",
                Some(r#"{"applied_revision": 0, "apps": [], "containers": []}"#),
                [U, U, U, F, F, 204, 204, F],
            ),
            r(Method::GET, "/api/v1/tokens", None, admin_only(200)),
            r(Method::POST, "/api/v1/tokens", Some("{}"), admin_only(201)),
            r(
                Method::DELETE,
                "/api/v1/tokens/TOKEN",
                None,
                admin_only(204),
            ),
            r(Method::GET, "/api/v1/users", None, admin_only(200)),
            r(
                Method::POST,
                "/api/v1/users",
                Some(r#"{"name": "NEWUSER", "role": "viewer", "password": "pass-word-1"}"#),
                admin_only(201),
            ),
            r(
                Method::DELETE,
                "/api/v1/users/DOOMED",
                None,
                admin_only(204),
            ),
            r(Method::GET, "/api/v1/user-groups", None, admin_only(200)),
            r(
                Method::PUT,
                "/api/v1/user-groups/UG",
                Some("{}"),
                admin_only(200),
            ),
            r(
                Method::DELETE,
                "/api/v1/user-groups/UG",
                None,
                admin_only(204),
            ),
            r(Method::GET, "/api/v1/policies", None, admin_only(200)),
            r(
                Method::PUT,
                "/api/v1/policies/PG",
                Some(r#"{"allow": ["devices"]}"#),
                admin_only(200),
            ),
            r(Method::DELETE, "/api/v1/policies/PG", None, admin_only(204)),
            r(Method::GET, "/api/v1/audit", None, admin_only(200)),
            // Near the end: it changes node-b's credential.
            r(
                Method::POST,
                "/api/v1/nodes/node-b/rotate",
                None,
                [U, U, U, F, F, F, F, 200],
            ),
            // Last: it revokes the sessions. node-b's old token died in the row above.
            r(
                Method::POST,
                "/api/v1/logout",
                None,
                [U, U, U, 204, 204, 204, F, U],
            ),
        ]
    };
    let mut failures = Vec::new();
    for (m, path, body, expect) in &rows {
        for (i, (name, token)) in who.iter().enumerate() {
            let fill = |s: &str| {
                s.replace(
                    "NEWAPP",
                    &format!(r#"{{"name": "new{i}", "spec": {spec}, "groups": ["g"]}}"#),
                )
                .replace("MINE", &format!("m{i}"))
                .replace("VICTIM", &format!("victim{i}"))
                .replace("REG", &format!("reg{i}"))
                .replace("TOKEN", &token_ids[i])
                .replace("NEWUSER", &format!("new{i}"))
                .replace("DOOMED", &format!("doomed{i}"))
                .replace("GHOST", &format!("ghost{i}"))
                .replace("EMPTYG", &format!("eg{i}"))
                .replace("/UG", &format!("/ug{i}"))
                .replace("/PG", &format!("/pg{i}"))
            };
            let c = server.client(token);
            let got = status(
                &rt,
                &c,
                m.clone(),
                &fill(path),
                body.as_deref().map(fill).as_deref(),
            );
            if got != expect[i] {
                failures.push(format!(
                    "{m} {path} as {name}: got {got}, want {}",
                    expect[i]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A secret env value is encrypted at rest, delivered only to the nodes that run the app,
/// and never appears in API output, the audit log, the server's log or the database file.
#[test]
fn secrets_never_leak() {
    let server = Server::start();
    let rt = rt();
    const SECRET: &str = "s3cr3t-hunter2-value";
    let file = server.spec(
        "s.yml",
        &format!(
            "app:\n  docker_image: gustavo-test/busybox:latest\n  env_vars: {{PLAIN: visible, DB_PASS: {{secret: {SECRET}}}}}\n"
        ),
    );
    server.ok(&["apps", "create", "-n", "app", "-f", &file, "-d", "g1"]);
    let a_tok = register(&server, &rt, "in-g1", &["g1"]);
    let b_tok = register(&server, &rt, "in-g2", &["g2"]);

    // Delivered to the node that runs the app, with its value…
    let d = rt
        .block_on(server.client(&a_tok).desired("in-g1", 0, Duration::ZERO))
        .unwrap()
        .unwrap();
    assert_eq!(d.apps[0].containers[0].spec.env["DB_PASS"], SECRET);
    // An admin looking at that node's desired state sees it hidden.
    let d = rt
        .block_on(
            server
                .client(&server.admin)
                .desired("in-g1", 0, Duration::ZERO),
        )
        .unwrap()
        .unwrap();
    assert_eq!(d.apps[0].containers[0].spec.env["DB_PASS"], "<hidden>");
    // …and to no other node.
    let d = rt
        .block_on(server.client(&b_tok).desired("in-g2", 0, Duration::ZERO))
        .unwrap()
        .unwrap();
    assert!(!serde_json::to_string(&d).unwrap().contains(SECRET));

    // People see it hidden, in JSON and in tables.
    let app = server.json(&["apps", "get", "-n", "app"]);
    assert_eq!(
        app["spec"]["env_vars"]["DB_PASS"],
        serde_json::json!({"hidden": true})
    );
    assert_eq!(app["spec"]["env_vars"]["PLAIN"], "visible");
    let mut shown = server.ok(&["apps", "get", "-n", "app"]);
    shown += &server.ok(&["apps", "list", "-o", "json"]);
    // Updating with the same file changes nothing; an update echoing the hidden form is refused.
    shown += &server.ok(&["apps", "update", "-n", "app", "-f", &file]);
    assert!(shown.contains("unchanged"), "{shown}");
    let c = server.client(&server.admin);
    let (code, body) = rt
        .block_on(c.raw(
            Method::PUT,
            "/api/v1/apps/app",
            Some(br#"{"spec": {"docker_image": "x", "env_vars": {"DB_PASS": {"hidden": true}}}}"#.to_vec()),
        ))
        .unwrap();
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&body));
    // A malformed secret is refused without echoing it.
    let (code, body) = rt
        .block_on(c.raw(
            Method::PUT,
            "/api/v1/apps/app",
            Some(format!(r#"{{"spec": {{"docker_image": "x", "env_vars": {{"P": {{"secret": ["{SECRET}"]}}}}}}}}"#).into_bytes()),
        ))
        .unwrap();
    assert_eq!(code, 400);
    shown += &String::from_utf8_lossy(&body);
    // A bad YAML file with a secret in it: the CLI's error quotes no source line.
    let bad = server.spec(
        "bad.yml",
        &format!("app:\n  docker_image: x\n  env_vars: {{P: {{secrett: {SECRET}}}}}\n"),
    );
    let out = server.cli(&["apps", "update", "-n", "app", "-f", &bad]);
    assert_eq!(out.status.code(), Some(64));
    shown += &stderr(&out);
    shown += &server.ok(&["audit", "-o", "json", "--limit", "1000"]);
    assert!(!shown.contains(SECRET), "a secret leaked:\n{shown}");
    assert!(
        !server.log().contains(SECRET),
        "the server log has the secret"
    );

    // At rest: not in the database (nor its WAL), and still there after a restart.
    let mut server = server;
    server.restart();
    for f in ["gustavo.db", "gustavo.db-wal"] {
        let bytes = std::fs::read(server.data_dir().join(f)).unwrap_or_default();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{f} holds the secret in clear"
        );
    }
    let d = rt
        .block_on(server.client(&a_tok).desired("in-g1", 0, Duration::ZERO))
        .unwrap()
        .unwrap();
    assert_eq!(d.apps[0].containers[0].spec.env["DB_PASS"], SECRET);
}

/// An operator's privileged app is refused, an admin's accepted; a device group's policy
/// can allow it; the image allowlist is checked before anything runs.
#[test]
fn dangerous_fields_need_admin_or_policy() {
    let server = Server::start();
    let rt = rt();
    server.ok(&["user-groups", "set", "ops", "-d", "*=rw"]);
    let op = server.client(&server.user("olga", "operator", &["ops"]));
    let admin = server.client(&server.admin);
    let body = |name: &str, group: &str, extra: &str| {
        format!(
            r#"{{"name": "{name}", "groups": ["{group}"], "spec": {{"docker_image": "127.0.0.1:5000/web:v1"{extra}}}}}"#
        )
    };
    for extra in [
        r#", "privileged": true"#,
        r#", "devices": ["/dev/null"]"#,
        r#", "networks": ["host"]"#,
        r#", "volumes": ["/etc:/host-etc:ro"]"#,
    ] {
        let (code, resp) = rt
            .block_on(op.raw(
                Method::POST,
                "/api/v1/apps",
                Some(body("p", "edge", extra).into_bytes()),
            ))
            .unwrap();
        assert_eq!(code, 403, "{extra}: {}", String::from_utf8_lossy(&resp));
        assert!(String::from_utf8_lossy(&resp).contains("only an admin"));
    }
    // A named volume is not a host path: allowed.
    assert_eq!(
        status(
            &rt,
            &op,
            Method::POST,
            "/api/v1/apps",
            Some(&body("vol", "edge", r#", "volumes": ["data:/data"]"#))
        ),
        201
    );
    assert_eq!(
        status(
            &rt,
            &admin,
            Method::POST,
            "/api/v1/apps",
            Some(&body("p", "edge", r#", "privileged": true"#))
        ),
        201
    );
    // The operator may not even update the admin's privileged app into another shape.
    assert_eq!(
        status(
            &rt,
            &op,
            Method::PUT,
            "/api/v1/apps/p",
            Some(r#"{"spec": {"docker_image": "127.0.0.1:5000/web:v2", "privileged": true}}"#)
        ),
        403
    );
    // Policy: the group `lab` allows privileged containers and only the web image.
    server.ok(&[
        "policy",
        "set",
        "lab",
        "--allow",
        "privileged",
        "--image",
        "127.0.0.1:5000/web",
    ]);
    assert_eq!(
        status(
            &rt,
            &op,
            Method::POST,
            "/api/v1/apps",
            Some(&body("labp", "lab", r#", "privileged": true"#))
        ),
        201
    );
    let other = r#"{"name": "evil", "groups": ["lab"], "spec": {"docker_image": "evil.example/miner:latest"}}"#;
    let (code, resp) = rt
        .block_on(admin.raw(
            Method::POST,
            "/api/v1/apps",
            Some(other.as_bytes().to_vec()),
        ))
        .unwrap();
    assert_eq!(code, 403);
    assert!(String::from_utf8_lossy(&resp).contains("allowlist"));
    // Through the CLI: a clear message and a non-zero exit.
    let file = server.spec("p.yml", "p2:\n  docker_image: x\n  privileged: true\n");
    let out = std::process::Command::new(BIN)
        .args(["apps", "create", "-n", "p2", "-f", &file, "-d", "edge"])
        .env("GUSTAVO_CONFIG", server.config())
        .env("GUSTAVO_TOKEN", server.user("omar", "operator", &["ops"]))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("`privileged` is refused"),
        "{}",
        stderr(&out)
    );
}

/// Grants: lists show only what the caller may see; rw implies ro; a viewer never writes.
#[test]
fn grants_scope_what_people_see_and_change() {
    let server = Server::start();
    let rt = rt();
    let admin = server.client(&server.admin);
    for (name, group) in [("a1", "g1"), ("a2", "g2"), ("solo", "g3")] {
        let b = format!(
            r#"{{"name": "{name}", "groups": ["{group}"], "spec": {{"docker_image": "x"}}}}"#
        );
        assert_eq!(
            status(&rt, &admin, Method::POST, "/api/v1/apps", Some(&b)),
            201
        );
    }
    register(&server, &rt, "n1", &["g1"]);
    register(&server, &rt, "n2", &["g2"]);
    server.ok(&[
        "user-groups",
        "set",
        "team1",
        "-d",
        "g1=rw",
        "--app",
        "solo=ro",
    ]);
    let t = server.user("tina", "operator", &["team1"]);
    let tina = server.client(&t);
    let names = |v: Vec<String>| v;
    let apps = names(
        rt.block_on(tina.list_apps())
            .unwrap()
            .into_iter()
            .map(|a| a.name)
            .collect(),
    );
    assert_eq!(apps, vec!["a1", "solo"]);
    let nodes: Vec<String> = rt
        .block_on(tina.list_nodes(None, None))
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(nodes, vec!["n1"]);
    let groups: Vec<String> = rt
        .block_on(tina.list_groups())
        .unwrap()
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert_eq!(groups, vec!["g1"]);
    assert_eq!(
        status(&rt, &tina, Method::GET, "/api/v1/apps/a2", None),
        404
    );
    assert_eq!(
        status(&rt, &tina, Method::GET, "/api/v1/nodes/n2", None),
        404
    );
    assert_eq!(
        status(&rt, &tina, Method::GET, "/api/v1/rollouts/a2", None),
        404
    );
    // rw on g1: may change a1, and create apps there but not elsewhere.
    assert_eq!(
        status(&rt, &tina, Method::POST, "/api/v1/apps/a1/restart", None),
        200
    );
    let b = |n: &str, g: &str| {
        format!(r#"{{"name": "{n}", "groups": ["{g}"], "spec": {{"docker_image": "x"}}}}"#)
    };
    assert_eq!(
        status(
            &rt,
            &tina,
            Method::POST,
            "/api/v1/apps",
            Some(&b("t1", "g1"))
        ),
        201
    );
    assert_eq!(
        status(
            &rt,
            &tina,
            Method::POST,
            "/api/v1/apps",
            Some(&b("t2", "g2"))
        ),
        403
    );
    // Moving a1 onto g2 needs rw on g2.
    assert_eq!(
        status(
            &rt,
            &tina,
            Method::PUT,
            "/api/v1/apps/a1",
            Some(r#"{"spec": {"docker_image": "x"}, "groups": ["g2"]}"#)
        ),
        403
    );
    // ro on solo: readable, not writable.
    assert_eq!(
        status(&rt, &tina, Method::GET, "/api/v1/apps/solo", None),
        200
    );
    assert_eq!(
        status(&rt, &tina, Method::DELETE, "/api/v1/apps/solo", None),
        403
    );
    // The same grants as a viewer: reads only.
    let v = server.client(&server.user("vic", "viewer", &["team1"]));
    assert_eq!(status(&rt, &v, Method::GET, "/api/v1/apps/a1", None), 200);
    assert_eq!(
        status(&rt, &v, Method::POST, "/api/v1/apps/a1/restart", None),
        403
    );
    // Deleting a user cuts their session at once.
    server.ok(&["users", "delete", "tina"]);
    assert_eq!(status(&rt, &tina, Method::GET, "/api/v1/apps", None), 401);
}

/// Login: the CLI keeps the session in the user's config; failures are throttled per user
/// and per address without hashing; logout revokes.
#[test]
fn login_works_and_flooding_is_throttled() {
    let server = Server::start();
    server.user("lena", "viewer", &[]);
    let home = server.dir.path().join("home");
    let login = |user: &str, pw: &str| {
        let mut child = std::process::Command::new(BIN)
            .args(["login", "-u", user, "--password-stdin", "--ca-file"])
            .arg(server.ca_file())
            .args(["--server", &server.url])
            .env("HOME", &home)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("GUSTAVO_CONFIG")
            .env("GUSTAVO_DATA_DIR", server.dir.path().join("nowhere"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{pw}\n").as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = login("lena", "pass-word-1");
    assert!(out.status.success(), "{}", stderr(&out));
    let cfg = home.join(".config/gustavo/client.toml");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The CLI now works as lena with no flags at all.
    let who = std::process::Command::new(BIN)
        .args(["whoami"])
        .env("HOME", &home)
        .env_remove("GUSTAVO_CONFIG")
        .env("GUSTAVO_DATA_DIR", server.dir.path().join("nowhere"))
        .output()
        .unwrap();
    let who = String::from_utf8_lossy(&who.stdout).to_string();
    assert_eq!(who.lines().next(), Some("user:lena (viewer)"), "{who}");
    // …and says where the credentials come from.
    assert!(
        who.contains(&format!(
            "credentials: user lena's session in {}",
            cfg.display()
        )),
        "{who}"
    );

    // Flooding: 5 failures for lena, then 429 even with the right password.
    for _ in 0..5 {
        let out = login("lena", "wrong-password");
        assert!(stderr(&out).contains("HTTP 401"), "{}", stderr(&out));
    }
    let out = login("lena", "pass-word-1");
    assert!(stderr(&out).contains("HTTP 429"), "{}", stderr(&out));
    let rt = rt();
    let (code, _) = rt
        .block_on(server.client("").raw(
            Method::POST,
            "/api/v1/login",
            Some(br#"{"user": "lena", "password": "pass-word-1"}"#.to_vec()),
        ))
        .unwrap();
    assert_eq!(code, 429);
    // Past the per-address limit, other names are throttled too.
    for i in 0..20 {
        let body = format!(r#"{{"user": "ghost{i}", "password": "x"}}"#);
        rt.block_on(
            server
                .client("")
                .raw(Method::POST, "/api/v1/login", Some(body.into_bytes())),
        )
        .unwrap();
    }
    let (code, _) = rt
        .block_on(server.client("").raw(
            Method::POST,
            "/api/v1/login",
            Some(br#"{"user": "someone", "password": "x"}"#.to_vec()),
        ))
        .unwrap();
    assert_eq!(code, 429);
    // The server is fine meanwhile.
    server.ok(&["users", "list"]);
    // Logout revokes the session kept in the config.
    let out = std::process::Command::new(BIN)
        .args(["logout"])
        .env("HOME", &home)
        .env_remove("GUSTAVO_CONFIG")
        .env("GUSTAVO_DATA_DIR", server.dir.path().join("nowhere"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let audit = server.json(&["audit", "--object", "session"]);
    let refused = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == "user:lena" && e["status"] == 429)
        .count();
    assert!(refused >= 1, "{audit}");
}

/// The audit log records who changed what, from where, allowed or refused, and filters.
#[test]
fn audit_log_records_changes() {
    let server = Server::start();
    let rt = rt();
    server.ok(&["user-groups", "set", "ops", "-d", "*=rw"]);
    let op = server.client(&server.user("otto", "operator", &["ops"]));
    let ok = r#"{"name": "web", "groups": ["g"], "spec": {"docker_image": "x"}}"#;
    let bad =
        r#"{"name": "root", "groups": ["g"], "spec": {"docker_image": "x", "privileged": true}}"#;
    assert_eq!(
        status(&rt, &op, Method::POST, "/api/v1/apps", Some(ok)),
        201
    );
    assert_eq!(
        status(&rt, &op, Method::POST, "/api/v1/apps", Some(bad)),
        403
    );
    assert_eq!(status(&rt, &op, Method::GET, "/api/v1/apps", None), 200);
    server.ok(&["apps", "stop", "-n", "web"]);
    let all = server.json(&["audit"]);
    let rows = all.as_array().unwrap();
    let otto: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|e| e["actor"] == "user:otto" && e["object"] != "session")
        .collect();
    // Reads are not changes; the two creates are there, one allowed, one refused.
    assert_eq!(otto.len(), 2, "{all}");
    assert_eq!(otto[0]["action"], "POST /api/v1/apps");
    assert_eq!(otto[0]["allowed"], true);
    assert_eq!(otto[1]["allowed"], false);
    assert_eq!(otto[1]["status"], 403);
    assert!(otto[1]["detail"].as_str().unwrap().contains("privileged"));
    assert_eq!(otto[0]["address"], "127.0.0.1");
    assert!(otto[0]["at"].as_u64().unwrap() > 1_700_000_000);
    // Issue 7, defect 3: every entry names the object it touched and, for a change, the
    // revision it made; a refusal names the object too.
    assert_eq!(otto[0]["object"], "app:web", "{all}");
    let created_rev = otto[0]["revision"]
        .as_u64()
        .expect("a create has a revision");
    assert_eq!(otto[1]["object"], "app:root");
    assert!(
        otto[1].get("revision").is_none(),
        "a refusal made no revision"
    );
    let stop = rows
        .iter()
        .find(|e| e["action"] == "POST /api/v1/apps/web/stop")
        .expect("the stop is logged");
    assert_eq!(stop["object"], "app:web");
    assert!(stop["revision"].as_u64().unwrap() > created_rev, "{stop}");
    // Filters.
    let by_user = server.json(&["audit", "--user", "otto"]);
    assert_eq!(
        by_user.as_array().unwrap().len(),
        3,
        "login and two creates"
    );
    let by_object = server.json(&["audit", "--object", "app:web"]);
    assert!(
        by_object
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["object"].as_str().unwrap().starts_with("app:web"))
    );
    assert!(
        by_object
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"] == "admin")
    );
    assert_eq!(
        server
            .json(&["audit", "--since", "1h"])
            .as_array()
            .unwrap()
            .len(),
        rows.len()
    );
    // Only admins read it.
    assert_eq!(status(&rt, &op, Method::GET, "/api/v1/audit", None), 403);
    // A table for people.
    let table = server.ok(&["audit", "--user", "otto"]);
    assert!(
        table.contains("refused") && table.contains("allowed") && table.contains("app:web"),
        "{table}"
    );

    // Tokens, users and nodes are named too.
    server.ok(&["tokens", "create"]);
    server.user("ursula", "viewer", &[]);
    let entries = server.json(&["audit"]);
    let objects: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["object"].as_str().unwrap())
        .collect();
    assert!(objects.contains(&"user:ursula"), "{objects:?}");
    assert!(
        objects
            .iter()
            .any(|o| o.starts_with("token:") && o.len() > 6),
        "{objects:?}"
    );
}

/// Oversized and deeply nested bodies are refused without harm; a silent or slow client
/// does not stop others.
#[test]
fn abusive_requests_are_refused_without_harm() {
    let server = Server::start();
    let rt = rt();
    let c = server.client(&server.admin);
    let (code, _) = rt
        .block_on(c.raw(
            Method::POST,
            "/api/v1/apps",
            Some(vec![b'['; 3 * 1024 * 1024]),
        ))
        .unwrap();
    assert_eq!(code, 413);
    let deep = format!(
        r#"{{"name": "d", "spec": {{"docker_image": "x", "command": {}{}}}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let (code, body) = rt
        .block_on(c.raw(Method::POST, "/api/v1/apps", Some(deep.into_bytes())))
        .unwrap();
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("bad_request"));
    // Deep nesting in the login body too (no token needed there).
    let deep = format!(
        r#"{{"user": {}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let (code, _) = rt
        .block_on(
            server
                .client("")
                .raw(Method::POST, "/api/v1/login", Some(deep.into_bytes())),
        )
        .unwrap();
    assert_eq!(code, 400);
    // Silent connections (no TLS handshake, no bytes) do not block anyone.
    let port: u16 = server.url.rsplit(':').next().unwrap().parse().unwrap();
    let silent: Vec<_> = (0..50)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    server.ok(&["apps", "list"]);
    drop(silent);
    // A YAML alias bomb is refused by the CLI quickly.
    let mut bomb =
        String::from("app:\n  docker_image: x\n  labels: {a: &a [x,x,x,x,x,x,x,x,x,x]}\nz:\n");
    for i in 0..8 {
        let prev = if i == 0 {
            "a".into()
        } else {
            format!("l{}", i - 1)
        };
        bomb.push_str(&format!("  l{i}: &l{i} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
    }
    let f = server.spec("bomb.yml", &bomb);
    let start = std::time::Instant::now();
    let out = server.cli(&["apps", "create", "-n", "app", "-f", &f]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(start.elapsed() < Duration::from_secs(10));
    server.ok(&["apps", "list"]);
}

/// A client that never finishes its TLS handshake, or never finishes its headers, is
/// disconnected after the deadline, and others are served meanwhile.
#[test]
fn slow_clients_are_cut_off() {
    let server = Server::start_with(&["--handshake-timeout", "1s", "--header-timeout", "1s"]);
    let port: u16 = server.url.rsplit(':').next().unwrap().parse().unwrap();
    let closed_within = |mut s: std::net::TcpStream, limit: Duration| {
        s.set_read_timeout(Some(limit)).unwrap();
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    };
    // No handshake at all.
    let silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    server.ok(&["apps", "list"]);
    assert!(
        closed_within(silent, Duration::from_secs(8)),
        "a silent client was kept"
    );

    // A finished handshake, then half a request header, then nothing.
    let rt = rt();
    let ca = server.ca_pem();
    let cut = rt.block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut roots = rustls::RootCertStore::empty();
        for c in gustavo_client::parse_pem_certs(&ca).unwrap() {
            roots.add(c).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
            .connect(name, tcp)
            .await
            .expect("the handshake succeeds");
        tls.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(8), tls.read_to_end(&mut buf))
            .await
            .is_ok()
    });
    assert!(cut, "a client stuck in its headers was kept");
    server.ok(&["apps", "list"]);
}
