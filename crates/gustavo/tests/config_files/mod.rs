//! Issue 8: `gustavo server` and `gustavo agent` start from TOML config files; a bad file
//! is refused, naming the key, before anything is bound.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::util::*;

/// A child process killed when the test ends, pass or fail.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn gustavo(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("GUSTAVO_SERVER")
        .env_remove("GUSTAVO_TOKEN")
        .env_remove("GUSTAVO_CONFIG")
        .env_remove("GUSTAVO_CA_FILE")
        .env_remove("GUSTAVO_LISTEN")
        .env_remove("GUSTAVO_SERVER_CONFIG")
        .env_remove("GUSTAVO_AGENT_CONFIG")
        .stdin(Stdio::null());
    c
}

fn spawn_logged(args: &[&str], log: &Path) -> Running {
    let out = std::fs::File::create(log).unwrap();
    Running(
        gustavo(args)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    )
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn server_and_agent_start_from_config_files() {
    require_docker_and_registry();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server_toml = dir.path().join("server.toml");
    std::fs::write(
        &server_toml,
        format!(
            "# a server from a file\ndata_dir = {:?}\nlisten = \"127.0.0.1:0\"\nno-agent = true\ninsecure-http = true\npressure = \"off\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let _server = spawn_logged(
        &["server", "--config", server_toml.to_str().unwrap()],
        &dir.path().join("server.log"),
    );
    wait_for("the server to start", Duration::from_secs(20), || {
        data.join("join-token").exists() && data.join("client.toml").exists()
    });
    let client = gustavo_client::config::ClientFile::load(&data.join("client.toml")).unwrap();
    let url = client.server.unwrap();
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "the file's settings apply: {url}"
    );
    let admin = client.token.unwrap();
    let join = std::fs::read_to_string(data.join("join-token")).unwrap();

    let node = unique("cfgnode");
    let agent_toml = dir.path().join("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            "server = {url:?}\ntoken = {:?}\nname = {node:?}\ngroup = [\"cfga\", \"cfgb\"]\nlabel = [\"zone=lab\"]\ndata-dir = {:?}\nheartbeat = \"1s\"\n",
            join.trim(),
            dir.path().join("agent").display().to_string()
        ),
    )
    .unwrap();
    let _agent = spawn_logged(
        &["agent", "--config", agent_toml.to_str().unwrap()],
        &dir.path().join("agent.log"),
    );
    let mut nodes = serde_json::Value::Null;
    wait_for("the agent to register", Duration::from_secs(30), || {
        let out = gustavo(&[
            "--server", &url, "--token", &admin, "-o", "json", "nodes", "list",
        ])
        .output()
        .unwrap();
        nodes = serde_json::from_slice(&out.stdout).unwrap_or_default();
        nodes.to_string().contains(&node)
    });
    let n = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node.as_str())
        .unwrap();
    let groups = n["groups"].to_string();
    assert!(groups.contains("cfga") && groups.contains("cfgb"), "{n}");

    // --print-config: file < environment < flags, with the token hidden. The file may
    // also come from GUSTAVO_AGENT_CONFIG.
    let out = gustavo(&["agent", "--print-config", "--heartbeat", "3s"])
        .env("GUSTAVO_AGENT_CONFIG", &agent_toml)
        .env("GUSTAVO_NODE_NAME", "from-env")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("heartbeat = \"3s\"  # flag"), "{stdout}");
    assert!(
        stdout.contains("name = \"from-env\"  # environment"),
        "{stdout}"
    );
    assert!(
        stdout.contains("group = [\"cfga\", \"cfgb\"]  # config file"),
        "{stdout}"
    );
    assert!(stdout.contains("token = \"<hidden>\""), "{stdout}");
    assert!(
        !stdout.contains(join.trim()),
        "the join token leaked: {stdout}"
    );
}

#[test]
fn bad_config_files_are_refused_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = dir.path().join("data");
    let head = format!(
        "listen = \"127.0.0.1:{port}\"\nno-agent = true\ndata-dir = {:?}\n",
        data.display().to_string()
    );
    let cases = [
        ("listne = \"0.0.0.0:1\"\n", "unknown key `listne`"),
        ("handshake_timeout = \"soon\"\n", "handshake-timeout"),
        ("header-timeout = \"0s\"\n", "header-timeout"),
        ("body-limit = \"lots\"\n", "body-limit"),
        ("insecure-http = \"yes\"\n", "true or false"),
        ("tls-san = \"not a list\"\nlisten = \n", "TOML parse error"),
        ("[server]\nlisten = \"x\"\n", "unknown key `server`"),
    ];
    for (extra, expected) in cases {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, format!("{head}{extra}")).unwrap();
        let out = gustavo(&["server", "--config", file.to_str().unwrap()])
            .output()
            .unwrap();
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(64), "{extra}: {stderr}");
        assert!(stderr.contains(expected), "{extra}: {stderr}");
        // Also a value the server reads after clap (a duration): the file is named.
        assert!(stderr.contains("bad.toml"), "{stderr}");
        // Nothing was bound and nothing was written.
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "{extra}: something listens on {port}"
        );
        assert!(!data.join("client.toml").exists(), "{extra}");
    }
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, "heartbeat = true\n").unwrap();
    let out = gustavo(&["agent", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("agent.toml") && stderr.contains("`heartbeat`"),
        "{stderr}"
    );
    let out = gustavo(&["agent", "--config", "/nonexistent/agent.toml"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("/nonexistent/agent.toml"), "{stderr}");
}
