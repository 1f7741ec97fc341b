//! Issue 8: Prometheus metrics on the server and on the agent's local listener, checked
//! with the real `promtool check metrics`.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::*;

/// `promtool check metrics` on `text`; panics with its complaints. promtool is required:
/// scripts/test.sh installs it (Debian's `prometheus` package).
fn promtool_check(what: &str, text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is required (apt-get install prometheus; scripts/test.sh does)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool rejects the {what} metrics:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn get(url: &str, token: Option<&str>, ca: Option<&std::path::Path>) -> (u16, String) {
    let mut args = vec!["-sS".to_string(), "-w".into(), "\n%{http_code}".into()];
    if let Some(t) = token {
        args.extend(["-H".into(), format!("Authorization: Bearer {t}")]);
    }
    if let Some(ca) = ca {
        args.extend(["--cacert".into(), ca.display().to_string()]);
    }
    args.push(url.into());
    let out = Command::new("curl")
        .args(&args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn server_and_agent_metrics_pass_promtool() {
    require_docker_and_registry();
    let server = Server::start();
    let group = unique("metrics");
    let node = unique("metricsnode");
    let agent = Agent::start(&server, &node, &[&group], &[]);
    let f = server.spec("m.yml", "m:\n  docker_image: gustavo-test/busybox:latest\n");
    server.ok(&[
        "apps",
        "create",
        "-n",
        "m",
        "-f",
        &f,
        "-d",
        &group,
        "--wait",
        "--timeout",
        "60s",
    ]);

    // The server: people only; a node's token is refused.
    let url = format!("{}/metrics", server.url);
    let ca = server.ca_file();
    let (code, body) = get(&url, None, Some(&ca));
    assert_eq!(code, 401, "{body}");
    let node_token = std::fs::read_to_string(agent.dir.path().join("data/node.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["token"].as_str().map(String::from))
        .expect("the agent keeps its token in node.json");
    let (code, _) = get(&url, Some(&node_token), Some(&ca));
    assert_eq!(code, 403);
    let (code, text) = get(&url, Some(&server.admin), Some(&ca));
    assert_eq!(code, 200, "{text}");
    promtool_check("server", &text);
    assert!(
        text.contains("gustavo_server_http_requests_total{route=\"/api/v1/apps\",method=\"POST\",status=\"201\"}")
            || text.contains("gustavo_server_http_requests_total{route=\"/api/v1/apps\",method=\"POST\",status=\"200\"}"),
        "{text}"
    );
    assert_eq!(
        value(&text, "gustavo_server_nodes{status=\"ready\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(value(&text, "gustavo_server_commit_batch_jobs_count").unwrap() >= 1.0);
    assert!(value(&text, "gustavo_server_desired_states_computed_total").unwrap() >= 1.0);
    // The agent is in a long-poll right now.
    assert!(
        value(&text, "gustavo_server_desired_long_polls_waiting").unwrap() >= 1.0,
        "{text}"
    );

    // The agent's local listener: /health and /metrics.
    let base = agent.listen_url();
    let (code, health) = get(&format!("{base}/health"), None, None);
    assert_eq!(code, 200, "{health}");
    let h: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["node"], node.as_str());
    let mut text = String::new();
    wait_for(
        "the agent to count its running container",
        Duration::from_secs(20),
        || {
            text = get(&format!("{base}/metrics"), None, None).1;
            value(&text, "gustavo_agent_containers{state=\"running\"}") == Some(1.0)
        },
    );
    promtool_check("agent", &text);
    assert!(
        value(&text, "gustavo_agent_reconcile_passes_total").unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        value(&text, "gustavo_agent_image_pulls_total{result=\"ok\"}").unwrap() >= 1.0,
        "{text}"
    );
    let (code, _) = get(&format!("{base}/nope"), None, None);
    assert_eq!(code, 404);
    server.ok(&["apps", "delete", "-n", "m"]);
}
