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
