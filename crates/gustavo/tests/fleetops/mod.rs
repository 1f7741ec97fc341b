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
