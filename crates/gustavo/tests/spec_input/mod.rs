//! Issue 7: regression tests for what the app format did to its input — values rewritten by
//! YAML typing (D), host ports that took no address or protocol (item 5), and specs the
//! API accepted although the CLI would have refused them (item 2).

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::*;

const WAIT: Duration = Duration::from_secs(60);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A loopback port nobody holds right now (the OS picks it).
fn free_tcp_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Defect D: env values reach the store, the API and the container as written — `NO` is
/// not `false`, `1.10` not `1.1`, `0777` not `777`.
#[test]
fn issue7_d_env_values_stay_as_written() {
    require_docker_and_registry();
    let server = Server::start();
    let node = unique("envtext");
    let group = unique("envg");
    let _a = Agent::start(&server, &node, &[&group], &[]);
    let file = server.spec(
        "env.yml",
        "app:\n  docker_image: gustavo-test/busybox:latest\n  env_vars: {COUNTRY: NO, V: 1.10, O: 0777, Y: yes, H: 0x50, Q: \"quoted\"}\n",
    );
    server.ok(&[
        "apps",
        "create",
        "-n",
        "app",
        "-f",
        &file,
        "-d",
        &group,
        "--wait",
        "--timeout",
        "60s",
    ]);
    let want = [
        ("COUNTRY", "NO"),
        ("V", "1.10"),
        ("O", "0777"),
        ("Y", "yes"),
        ("H", "0x50"),
        ("Q", "quoted"),
    ];
    let app = server.json(&["apps", "get", "-n", "app"]);
    for (k, v) in want {
        assert_eq!(app["spec"]["env_vars"][k], v, "{k} in {app}");
    }
    let env: Vec<String> =
        serde_json::from_str(&inspect(&format!("{node}.app.1"), "{{json .Config.Env}}").unwrap())
            .unwrap();
    for (k, v) in want {
        assert!(env.contains(&format!("{k}={v}")), "{k}={v} not in {env:?}");
    }
    // The same file again is the same spec: nothing to change.
    let out = server.ok(&["apps", "update", "-n", "app", "-f", &file]);
    assert!(out.contains("unchanged"), "{out}");

    // A value left empty is refused, naming the key, and the app is left as it was.
    let empty = server.spec(
        "empty.yml",
        "app:\n  docker_image: gustavo-test/busybox:latest\n  env_vars:\n    COUNTRY: NO\n    MISSING:\n",
    );
    let out = server.cli(&["apps", "update", "-n", "app", "-f", &empty]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("env var `MISSING` has no value") && err.contains("line 5"),
        "{err}"
    );
    let after = server.json(&["apps", "get", "-n", "app"]);
    assert_eq!(after["revision"], app["revision"]);
}

/// Defect D: a port is a decimal number or an error naming it as written; `0o777` and
/// `0x50` are not bound as 511 and 80. Nothing is stored.
#[test]
fn issue7_d_ports_not_in_decimal_are_refused() {
    let server = Server::start();
    for (ports, written) in [
        ("[0o777]", "0o777"),
        ("[{0x50: 80}]", "0x50"),
        ("[{8080: 0x50}]", "0x50"),
        ("[0777]", "0777"),
        ("[\"0x50\"]", "0x50"),
    ] {
        let f = server.spec(
            "ports.yml",
            &format!(
                "app:\n  docker_image: gustavo-test/busybox:latest\n  starting_ports: {ports}\n"
            ),
        );
        let out = server.cli(&["apps", "create", "-n", "app", "-f", &f]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{ports}: {err}");
        assert!(
            err.contains(&format!("port `{written}` is not a decimal number")),
            "{ports}: {err}"
        );
        assert!(err.contains("line 3"), "{ports}: {err}");
    }
    // The API refuses the same in JSON.
    let rt = rt();
    let client = server.client(&server.admin);
    let body = json!({"name": "app", "spec": {"docker_image": "x", "starting_ports": ["0x50"]}});
    let (status, resp) = rt
        .block_on(client.raw(
            reqwest::Method::POST,
            "/api/v1/apps",
            Some(serde_json::to_vec(&body).unwrap()),
        ))
        .unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&resp));
    let v: Value = serde_json::from_slice(&resp).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("port `0x50`"),
        "{v}"
    );
    assert_eq!(server.json(&["apps", "list"]), json!([]));
}

/// Item 5: `"127.0.0.1:PORT": 8080` binds on 127.0.0.1 only, and `/udp` publishes a UDP
/// port, in the engine's own terms.
#[test]
fn issue7_5_host_ports_take_an_address_and_a_protocol() {
    require_docker_and_registry();
    let server = Server::start();
    let node = unique("bind");
    let group = unique("bindg");
    let _a = Agent::start(&server, &node, &[&group], &[]);
    let (tcp, udp) = (free_tcp_port(), free_udp_port());
    let yaml = format!(
        "web:\n  docker_image: gustavo-test/web:v1\n  starting_ports:\n    - \"127.0.0.1:{tcp}\": 8080\n    - \"127.0.0.1:{udp}/udp\": \"9999/udp\"\n"
    );
    let file = server.spec("web.yml", &yaml);
    server.ok(&[
        "apps",
        "create",
        "-n",
        "web",
        "-f",
        &file,
        "-d",
        &group,
        "--wait",
        "--timeout",
        "60s",
    ]);
    let c = format!("{node}.web.1");
    let bindings: Value =
        serde_json::from_str(&inspect(&c, "{{json .HostConfig.PortBindings}}").unwrap()).unwrap();
    assert_eq!(
        bindings,
        json!({
            "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": tcp.to_string()}],
            "9999/udp": [{"HostIp": "127.0.0.1", "HostPort": udp.to_string()}],
        })
    );
    let published = docker(&["port", &c]);
    assert!(
        published.contains(&format!("8080/tcp -> 127.0.0.1:{tcp}"))
            && published.contains(&format!("9999/udp -> 127.0.0.1:{udp}")),
        "{published}"
    );
    // It serves on 127.0.0.1 …
    wait_for("the web replica to serve on 127.0.0.1", WAIT, || {
        http_get(tcp) == "v1"
    });
    // … and on no other address of this host (the Docker bridge's gateway is one).
    let gateway = docker(&[
        "network",
        "inspect",
        "bridge",
        "-f",
        "{{(index .IPAM.Config 0).Gateway}}",
    ]);
    if let Ok(ip) = gateway.parse::<std::net::IpAddr>() {
        let other = SocketAddr::new(ip, tcp);
        assert!(
            TcpStream::connect_timeout(&other, Duration::from_secs(2)).is_err(),
            "port {tcp} answers on {ip}, not only on 127.0.0.1"
        );
    }
    // The spec shows the binding as written, and it reads back.
    let app = server.json(&["apps", "get", "-n", "web"]);
    assert_eq!(
        app["spec"]["starting_ports"],
        json!([
            {format!("127.0.0.1:{tcp}"): 8080},
            {format!("127.0.0.1:{udp}"): "9999/udp"}
        ])
    );

    // Changing only the address recreates the container with the new binding.
    let id = inspect(&c, "{{.Id}}").unwrap();
    server.spec("web.yml", &yaml.replace("127.0.0.1:", "127.0.0.2:"));
    server.ok(&[
        "apps",
        "update",
        "-n",
        "web",
        "-f",
        &file,
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert_ne!(inspect(&c, "{{.Id}}").unwrap(), id);
    let bindings: Value =
        serde_json::from_str(&inspect(&c, "{{json .HostConfig.PortBindings}}").unwrap()).unwrap();
    assert_eq!(bindings["8080/tcp"][0]["HostIp"], "127.0.0.2");
}

/// Item 2: the API applies the format's rules to a raw JSON body — bad image references,
/// NUL and control characters in env names and values, relative volume paths, 10,000
/// groups — with a 400 whose JSON error names the field, and stores nothing.
#[test]
fn issue7_2_raw_posts_get_the_same_checks_as_the_cli() {
    let server = Server::start();
    let rt = rt();
    let client = server.client(&server.admin);
    let post = |body: Value| {
        let (status, resp) = rt
            .block_on(client.raw(
                reqwest::Method::POST,
                "/api/v1/apps",
                Some(serde_json::to_vec(&body).unwrap()),
            ))
            .unwrap();
        let v: Value = serde_json::from_slice(&resp).expect("error bodies are JSON");
        (status, v)
    };
    let many: Vec<String> = (0..10_000).map(|i| format!("g{i}")).collect();
    let cases = [
        (
            json!({"name": "a", "spec": {"docker_image": "../../etc/passwd"}}),
            "docker_image `../../etc/passwd`",
        ),
        (
            json!({"name": "a", "spec": {"docker_image": "x@sha256:zz"}}),
            "docker_image `x@sha256:zz`",
        ),
        (
            json!({"name": "a", "spec": {"docker_image": "x", "env_vars": {"K": "a\u{0}b"}}}),
            "env var `K`",
        ),
        (
            json!({"name": "a", "spec": {"docker_image": "x", "env_vars": {"K": {"secret": "s\u{1b}"}}}}),
            "env var `K`",
        ),
        (
            json!({"name": "a", "spec": {"docker_image": "x", "env_vars": {"K\u{0}": "v"}}}),
            "env var name",
        ),
        (
            json!({"name": "a", "spec": {"docker_image": "x", "volumes": ["./data:/data"]}}),
            "volume `./data:/data`",
        ),
        (
            json!({"name": "a", "spec": {"docker_image": "x", "volumes": ["etc/../x:/data"]}}),
            "volume `etc/../x:/data`",
        ),
        (
            json!({"name": "a", "spec": {"docker_image": "x"}, "groups": many}),
            "at most 64 device groups, got 10000",
        ),
    ];
    for (body, want) in &cases {
        let (status, v) = post(body.clone());
        assert_eq!(status, 400, "{want}: {v}");
        assert_eq!(v["error"]["code"], "bad_request", "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(want), "want {want:?} in {msg}");
    }
    // Nothing was stored: no app, and none of the 10,000 groups.
    assert_eq!(server.json(&["apps", "list"]), json!([]));
    let groups = server.json(&["groups", "list"]);
    assert!(
        !groups
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"].as_str().is_some_and(|n| n.starts_with('g'))),
        "{groups}"
    );

    // An update gets the same checks and leaves the stored app as it was.
    let (status, v) = post(json!({"name": "a", "spec": {"docker_image": "x"}}));
    assert_eq!(status, 201, "{v}");
    for (body, want) in &cases {
        let mut update = json!({"spec": body["spec"]});
        if let Some(g) = body.get("groups") {
            update["groups"] = g.clone();
        }
        let (status, resp) = rt
            .block_on(client.raw(
                reqwest::Method::PUT,
                "/api/v1/apps/a",
                Some(serde_json::to_vec(&update).unwrap()),
            ))
            .unwrap();
        let v: Value = serde_json::from_slice(&resp).unwrap();
        assert_eq!(status, 400, "{want}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(want),
            "{want}: {v}"
        );
    }
    let app = server.json(&["apps", "get", "-n", "a"]);
    assert_eq!(app["spec"]["docker_image"], "x");
    assert_eq!(app["revision"], v["revision"]);
}
