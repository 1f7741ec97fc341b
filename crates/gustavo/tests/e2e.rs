//! End-to-end tests: the real `gustavo` binary, the real Docker engine, the real registry.
//! Each test reads as the user story it checks.

mod cli_habits;
mod config_files;
mod connections;
mod fleetops;
mod foundation;
mod glances;
mod jobs;
mod metrics;
mod networks;
mod peer;
mod pressure;
mod rollouts;
mod samsung;
mod scheduler;
mod security;
mod sinfonia;
mod spec_input;
mod sync;
mod util;

use std::time::Duration;

use util::*;

const WAIT: Duration = Duration::from_secs(60);

fn seed_yaml(image: &str, cache: &str, port: u16) -> String {
    format!(
        r#"test_linreg:
    docker_image: "{image}"
    env_vars:
        CACHE: "{cache}"
        NETRESTRICT: "0.0.0.0/0"
    networks:
        - "nebula"
    volumes:
      - "/tmp/:/tmp/1"
      - "/var/tmp/:/var/tmp/1:rw"
    starting_ports:
      - {port}: 9000
      - {port2}: 30303
    running: True
    rolling_restart: True
    containers_per:
        server: 1
    privileged: False
    devices: []
"#,
        port2 = port + 100
    )
}

/// The seed's walk-through, with the seed's file, on a device of group `bca`. (Host ports
/// make it one device per engine; several devices are covered by the two-agent test.)
#[test]
fn seed_walkthrough() {
    require_docker_and_registry();
    let server = Server::start();
    let n1 = unique("walk");
    let group = unique("bca");
    let _a1 = Agent::start(&server, &n1, &[&group], &[]);
    let reg = registry();

    // Create: the registry is checked and the containers start on every device.
    let file = server.spec(
        "test_linreg.yml",
        &seed_yaml(&format!("{reg}/test_linreg"), "64", 21000),
    );
    let out = server.ok(&[
        "apps",
        "create",
        "-n",
        "test_linreg",
        "-f",
        &file,
        "-d",
        &group,
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert!(
        out.contains("test_linreg:latest has been found in registry"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "app test_linreg created on device group {group} (revision "
        )),
        "{out}"
    );
    {
        let c = format!("{n1}.test_linreg.1");
        assert_eq!(
            inspect(&c, "{{.State.Running}}").as_deref(),
            Some("true"),
            "{c} runs"
        );
        let env = inspect(&c, "{{json .Config.Env}}").unwrap();
        assert!(
            env.contains("CACHE=64") && env.contains("NETRESTRICT=0.0.0.0/0"),
            "{env}"
        );
        let binds = inspect(&c, "{{json .HostConfig.Binds}}").unwrap();
        assert!(
            binds.contains("/tmp/:/tmp/1") && binds.contains("/var/tmp/:/var/tmp/1:rw"),
            "{binds}"
        );
        let nets = inspect(&c, "{{json .NetworkSettings.Networks}}").unwrap();
        assert!(nets.contains("\"nebula\""), "{nets}");
    }
    let ports = inspect(
        &format!("{n1}.test_linreg.1"),
        "{{json .HostConfig.PortBindings}}",
    )
    .unwrap();
    assert!(
        ports.contains("\"9000/tcp\"") && ports.contains("21000") && ports.contains("21100"),
        "{ports}"
    );

    // Update an env var: the containers are recreated with it.
    let old_id = inspect(&format!("{n1}.test_linreg.1"), "{{.Id}}").unwrap();
    server.spec(
        "test_linreg.yml",
        &seed_yaml(&format!("{reg}/test_linreg"), "1064", 21000),
    );
    server.ok(&[
        "apps",
        "update",
        "-n",
        "test_linreg",
        "-f",
        &file,
        "--wait",
        "--timeout",
        "60s",
    ]);
    let env = inspect(&format!("{n1}.test_linreg.1"), "{{json .Config.Env}}").unwrap();
    assert!(env.contains("CACHE=1064"), "{env}");
    assert_ne!(
        inspect(&format!("{n1}.test_linreg.1"), "{{.Id}}").unwrap(),
        old_id
    );

    // The same file again changes nothing: no container is touched.
    let id = inspect(&format!("{n1}.test_linreg.1"), "{{.Id}}").unwrap();
    let out = server.ok(&["apps", "update", "-n", "test_linreg", "-f", &file]);
    assert!(out.contains("unchanged"), "{out}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        inspect(&format!("{n1}.test_linreg.1"), "{{.Id}}").unwrap(),
        id
    );

    // Update the image: the new image rolls out.
    server.spec(
        "test_linreg.yml",
        &seed_yaml(&format!("{reg}/test_multiple_linreg"), "1064", 21000),
    );
    server.ok(&[
        "apps",
        "update",
        "-n",
        "test_linreg",
        "-f",
        &file,
        "--wait",
        "--timeout",
        "60s",
    ]);
    let image = inspect(&format!("{n1}.test_linreg.1"), "{{.Config.Image}}").unwrap();
    // The tag was resolved to a digest when the update was accepted (pinned digests), so
    // the device runs exactly those bits and `docker ps` shows tag and digest.
    assert!(
        image.starts_with(&format!("{reg}/test_multiple_linreg:latest@sha256:")),
        "{image}"
    );

    // The cache views show hosts, vitals and containers.
    let hosts = server.ok(&["cache", "hosts", "-d", &group]);
    assert!(
        hosts.contains(&n1) && hosts.contains("ready") && hosts.contains("127.0.0.1"),
        "{hosts}"
    );
    wait_for("vitals from the device", WAIT, || {
        let v = server.json(&["cache", "vitals", "-d", &group]);
        v.as_array()
            .unwrap()
            .iter()
            .all(|r| r["vitals"]["memory_total_mb"].as_u64().unwrap_or(0) > 0)
    });
    let vitals = server.ok(&["cache", "vitals", "-h", &n1]);
    assert!(vitals.contains(&n1) && vitals.contains("MB"), "{vitals}");
    assert!(
        !server
            .ok(&["cache", "vitals", "-h", "nobody"])
            .contains(&n1)
    );
    let containers = server.ok(&["cache", "containers", "-d", &group]);
    assert!(
        containers.contains(&format!("{n1}.test_linreg.1")) && containers.contains("running"),
        "{containers}"
    );

    // Delete: the containers leave the device.
    server.ok(&[
        "apps",
        "delete",
        "-n",
        "test_linreg",
        "-y",
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert!(containers_of(&n1, None).is_empty());
    let apps = server.json(&["apps", "list"]);
    assert_eq!(apps.as_array().unwrap().len(), 0);
}

/// Every container option of the app format reaches Docker.
#[test]
fn container_options_reach_docker() {
    require_docker_and_registry();
    let server = Server::start();
    let node = unique("opts");
    let group = unique("optg");
    let _a = Agent::start(&server, &node, &[&group], &["site=north"]);
    let port = free_ports(2);
    let yaml = r#"web:
  docker_image: gustavo-test/web:v1
  starting_ports: [{PORT: 8080}]
  containers_per: {server: 2}
  env_vars: {WHERE: "{{node.name}}@{{node.label.site}}/{{replica}}", NUM: 7}
  cpus: 0.5
  memory: 64m
  labels: {tier: front}
  restart: always
hostnet:
  docker_image: gustavo-test/busybox:latest
  networks: [host]
  command: "sh -c 'echo started; sleep 3600'"
  containers_per: {cpu: 1}
stopped:
  docker_image: gustavo-test/busybox:latest
  running: false
"#;
    let yaml = yaml.replace("PORT", &port.to_string());
    let file = server.spec("apps.yml", &yaml);
    for app in ["web", "hostnet", "stopped"] {
        server.ok(&[
            "apps",
            "create",
            "-n",
            app,
            "-f",
            &file,
            "-d",
            &group,
            "--wait",
            "--timeout",
            "60s",
        ]);
    }
    // Two replicas; replica i binds host port + i.
    let (w1, w2) = (format!("{node}.web.1"), format!("{node}.web.2"));
    wait_for("both web replicas to serve", WAIT, || {
        http_get(port) == "v1" && http_get(port + 1) == "v1"
    });
    let env = inspect(&w2, "{{json .Config.Env}}").unwrap();
    assert!(
        env.contains(&format!("WHERE={node}@north/2"))
            && env.contains("NUM=7")
            && env.contains(&format!("GUSTAVO_NODE={node}")),
        "{env}"
    );
    assert_eq!(
        inspect(&w1, "{{.HostConfig.NanoCpus}}").unwrap(),
        "500000000"
    );
    assert_eq!(
        inspect(&w1, "{{.HostConfig.Memory}}").unwrap(),
        (64 * 1024 * 1024).to_string()
    );
    assert_eq!(
        inspect(&w1, "{{.HostConfig.RestartPolicy.Name}}").unwrap(),
        "always"
    );
    assert_eq!(
        inspect(&w1, "{{index .Config.Labels \"tier\"}}").unwrap(),
        "front"
    );
    // cpu: 1 per core; host networking; command override.
    let cores = std::thread::available_parallelism().unwrap().get();
    let host_containers: Vec<String> = containers_of(&node, Some("running"))
        .into_iter()
        .filter(|c| c.contains(".hostnet."))
        .collect();
    assert_eq!(host_containers.len(), cores, "{host_containers:?}");
    let h1 = format!("{node}.hostnet.1");
    assert_eq!(inspect(&h1, "{{.HostConfig.NetworkMode}}").unwrap(), "host");
    assert_eq!(
        inspect(&h1, "{{json .Config.Cmd}}").unwrap(),
        r#"["sh","-c","echo started; sleep 3600"]"#
    );
    assert!(docker(&["logs", &h1]).contains("started"));
    // running: false runs nothing, and reports the app as stopped.
    assert!(
        !containers_of(&node, None)
            .iter()
            .any(|c| c.contains(".stopped."))
    );
    server.ok(&[
        "apps",
        "start",
        "-n",
        "stopped",
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert!(containers_of(&node, Some("running")).contains(&format!("{node}.stopped.1")));
    server.ok(&[
        "apps",
        "stop",
        "-n",
        "stopped",
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert!(
        !containers_of(&node, None)
            .iter()
            .any(|c| c.contains(".stopped."))
    );
    // restart recreates every replica.
    let id = inspect(&w1, "{{.Id}}").unwrap();
    server.ok(&["apps", "restart", "-n", "web", "--wait", "--timeout", "60s"]);
    assert_ne!(inspect(&w1, "{{.Id}}").unwrap(), id);
}

/// A rolling update of three replicas never has fewer than two running.
#[test]
fn rolling_update_keeps_two_running() {
    require_docker_and_registry();
    let server = Server::start();
    let node = unique("roll");
    let _a = Agent::start(&server, &node, &["rolling"], &[]);
    let reg = registry();
    let port = free_ports(3);
    let yaml = |tag: &str| {
        format!(
            "web:\n  docker_image: {reg}/web:{tag}\n  rolling_restart: true\n  containers_per: {{server: 3}}\n  starting_ports: [{{{port}: 8080}}]\n  healthcheck: {{test: \"wget -q -O /dev/null http://127.0.0.1:8080/\", interval: 1s, retries: 3}}\n"
        )
    };
    let file = server.spec("web.yml", &yaml("v1"));
    server.ok(&[
        "apps",
        "create",
        "-n",
        "web",
        "-f",
        &file,
        "-d",
        "rolling",
        "--wait",
        "--timeout",
        "90s",
    ]);
    assert_eq!(containers_of(&node, Some("running")).len(), 3);
    assert!((0..3).all(|i| http_get(port + i) == "v1"));

    // Watch the engine while the update runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, node) = (stop.clone(), node.clone());
        std::thread::spawn(move || {
            let mut min = usize::MAX;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                min = min.min(containers_of(&node, Some("running")).len());
                std::thread::sleep(Duration::from_millis(20));
            }
            min
        })
    };
    server.spec("web.yml", &yaml("v2"));
    server.ok(&[
        "apps",
        "update",
        "-n",
        "web",
        "-f",
        &file,
        "--wait",
        "--timeout",
        "120s",
    ]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let min_running = watcher.join().unwrap();
    assert!(
        min_running >= 2,
        "only {min_running} replicas were running at one point"
    );
    assert!((0..3).all(|i| http_get(port + i) == "v2"));
    // And the replicas were replaced in order, one at a time.
    let log = _a.log();
    let order: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("removing") || l.contains("creating"))
        .collect();
    assert!(order.len() >= 9, "{order:?}");
}

/// A restarted agent adopts its containers: nothing is stopped or recreated.
#[test]
fn agent_restart_adopts_containers() {
    require_docker_and_registry();
    let server = Server::start();
    let node = unique("adopt");
    let mut agent = Agent::start(&server, &node, &["adopt"], &[]);
    let file = server.spec(
        "a.yml",
        "app:\n  docker_image: gustavo-test/busybox:latest\n  containers_per: {server: 2}\n",
    );
    server.ok(&[
        "apps",
        "create",
        "-n",
        "app",
        "-f",
        &file,
        "-d",
        "adopt",
        "--wait",
        "--timeout",
        "60s",
    ]);
    let ids = docker(&[
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=gustavo.node={node}"),
    ]);
    agent.restart();
    // Give the restarted agent several reconcile passes.
    std::thread::sleep(Duration::from_secs(6));
    let after = docker(&[
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=gustavo.node={node}"),
    ]);
    assert_eq!(ids, after, "container IDs changed across an agent restart");
    assert!(!agent.log().contains("removing"), "{}", agent.log());
    server.ok(&[
        "apps",
        "update",
        "-n",
        "app",
        "-f",
        &server.spec(
            "a.yml",
            "app:\n  docker_image: gustavo-test/busybox:latest\n  containers_per: {server: 3}\n",
        ),
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert_eq!(containers_of(&node, Some("running")).len(), 3);
}

/// With the server gone the device keeps running its apps — across its own restart — and
/// converges when the server returns.
#[test]
fn offline_autonomy() {
    require_docker_and_registry();
    let mut server = Server::start();
    let node = unique("offl");
    let mut agent = Agent::start(&server, &node, &["offline"], &[]);
    let file = server.spec(
        "a.yml",
        "app:\n  docker_image: gustavo-test/busybox:latest\n  env_vars: {V: \"1\"}\n",
    );
    server.ok(&[
        "apps",
        "create",
        "-n",
        "app",
        "-f",
        &file,
        "-d",
        "offline",
        "--wait",
        "--timeout",
        "60s",
    ]);
    let c = format!("{node}.app.1");
    let id = inspect(&c, "{{.Id}}").unwrap();

    server.kill();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        inspect(&c, "{{.State.Running}}").as_deref(),
        Some("true"),
        "the container keeps running without the server"
    );

    // The agent restarts while the server is away, and a container crashes meanwhile:
    // the agent works from its cache and brings the container back.
    agent.kill();
    // Docker's own restart policy must not be what brings it back here.
    docker(&["update", "--restart", "no", &c]);
    docker(&["kill", &c]);
    agent.restart();
    wait_for(
        "the agent to restart the crashed container from its cache",
        WAIT,
        || inspect(&c, "{{.State.Running}}").as_deref() == Some("true"),
    );
    assert_eq!(
        inspect(&c, "{{.Id}}").unwrap(),
        id,
        "restarted in place, not recreated"
    );
    assert!(
        agent.log().contains("restored desired state from disk"),
        "{}",
        agent.log()
    );

    // The server returns; a change made now reaches the device.
    server.restart();
    server.ok(&[
        "apps",
        "update",
        "-n",
        "app",
        "-f",
        &server.spec(
            "a.yml",
            "app:\n  docker_image: gustavo-test/busybox:latest\n  env_vars: {V: \"2\"}\n",
        ),
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert!(inspect(&c, "{{json .Config.Env}}").unwrap().contains("V=2"));
    assert_eq!(
        containers_of(&node, None).len(),
        1,
        "no duplicates after reconnecting"
    );
}

/// Containers killed or removed by hand come back.
#[test]
fn crashed_and_removed_containers_come_back() {
    require_docker_and_registry();
    let server = Server::start();
    let node = unique("crash");
    let _a = Agent::start(&server, &node, &["crash"], &[]);
    let file = server.spec("a.yml", "app:\n  docker_image: gustavo-test/busybox:latest\n  restart: \"no\"\n  containers_per: {server: 1}\n");
    let file2 = server.spec(
        "b.yml",
        "keep:\n  docker_image: gustavo-test/busybox:latest\n",
    );
    server.ok(&[
        "apps",
        "create",
        "-n",
        "keep",
        "-f",
        &file2,
        "-d",
        "crash",
        "--wait",
        "--timeout",
        "60s",
    ]);
    let c = format!("{node}.keep.1");
    // Killed by hand: running again (Docker's restart policy or the reconciler).
    docker(&["kill", &c]);
    wait_for("the killed container to run again", WAIT, || {
        inspect(&c, "{{.State.Running}}").as_deref() == Some("true")
    });
    // Removed by hand: only the reconciler can bring it back.
    docker(&["rm", "-f", &c]);
    wait_for("the removed container to be recreated", WAIT, || {
        inspect(&c, "{{.State.Running}}").as_deref() == Some("true")
    });
    // restart: "no" means an exited container may stay down.
    server.ok(&[
        "apps",
        "create",
        "-n",
        "app",
        "-f",
        &file,
        "-d",
        "crash",
        "--wait",
        "--timeout",
        "60s",
    ]);
    let once = format!("{node}.app.1");
    docker(&["stop", "-t", "1", &once]);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        inspect(&once, "{{.State.Running}}").as_deref(),
        Some("false")
    );
}

/// A missing image fails that app on that device only; the running version is untouched.
#[test]
fn bad_image_fails_only_that_app() {
    require_docker_and_registry();
    let server = Server::start();
    let node = unique("badimg");
    let _a = Agent::start(&server, &node, &["badimg"], &[]);
    let reg = registry();
    let good_yaml = format!("app:\n  docker_image: {reg}/test_linreg\n");
    let good = server.spec("a.yml", &good_yaml);
    let other = server.spec(
        "o.yml",
        "other:\n  docker_image: gustavo-test/busybox:latest\n",
    );
    server.ok(&[
        "apps",
        "create",
        "-n",
        "app",
        "-f",
        &good,
        "-d",
        "badimg",
        "--wait",
        "--timeout",
        "60s",
    ]);
    server.ok(&[
        "apps",
        "create",
        "-n",
        "other",
        "-f",
        &other,
        "-d",
        "badimg",
        "--wait",
        "--timeout",
        "60s",
    ]);
    let c = format!("{node}.app.1");
    let id = inspect(&c, "{{.Id}}").unwrap();

    let bad = server.spec(
        "a.yml",
        &format!("app:\n  docker_image: {reg}/test_linreg:no-such-tag\n"),
    );
    let out = server.cli(&[
        "apps",
        "update",
        "-n",
        "app",
        "-f",
        &bad,
        "--wait",
        "--timeout",
        "60s",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "--wait must fail");
    assert!(
        stderr.contains(&node) && stderr.contains("no-such-tag"),
        "{stderr}"
    );
    // The old version keeps running, untouched; the error is the app's status.
    assert_eq!(inspect(&c, "{{.Id}}").unwrap(), id);
    assert_eq!(inspect(&c, "{{.State.Running}}").as_deref(), Some("true"));
    let rows = server.ok(&["cache", "containers", "-h", &node]);
    assert!(rows.contains("no-such-tag"), "{rows}");
    // Other apps are unaffected and still change normally.
    server.ok(&[
        "apps",
        "update",
        "-n",
        "other",
        "-f",
        &server.spec(
            "o.yml",
            "other:\n  docker_image: gustavo-test/busybox:latest\n  env_vars: {X: y}\n",
        ),
        "--wait",
        "--timeout",
        "60s",
    ]);
    // Fixing the spec recovers, and the old container was never touched.
    server.spec("a.yml", &good_yaml);
    server.ok(&[
        "apps",
        "update",
        "-n",
        "app",
        "-f",
        &good,
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert_eq!(inspect(&c, "{{.Id}}").unwrap(), id);
}

/// Two agents in two groups on one engine each run only their group's apps.
#[test]
fn two_agents_two_groups_share_one_engine() {
    require_docker_and_registry();
    let server = Server::start();
    let (n1, n2) = (unique("grpa"), unique("grpb"));
    let (g1, g2) = (unique("east"), unique("west"));
    let _a1 = Agent::start(&server, &n1, &[&g1], &[]);
    let _a2 = Agent::start(&server, &n2, &[&g2], &[]);
    let file = server.spec(
        "a.yml",
        "app:\n  docker_image: gustavo-test/busybox:latest\n",
    );
    server.ok(&[
        "apps",
        "create",
        "-n",
        "app",
        "-f",
        &file,
        "-d",
        &g1,
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert_eq!(
        containers_of(&n1, Some("running")),
        vec![format!("{n1}.app.1")]
    );
    assert!(containers_of(&n2, None).is_empty());
    // Moving the app to the other group moves the containers.
    server.ok(&[
        "apps",
        "update",
        "-n",
        "app",
        "-f",
        &file,
        "-d",
        &g2,
        "--wait",
        "--timeout",
        "60s",
    ]);
    wait_for("the first device to drop the app", WAIT, || {
        containers_of(&n1, None).is_empty()
    });
    assert_eq!(
        containers_of(&n2, Some("running")),
        vec![format!("{n2}.app.1")]
    );
    let groups = server.json(&["groups", "list"]);
    let west = groups
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == g2.as_str())
        .unwrap()
        .clone();
    assert_eq!(west["apps"][0], "app");
    assert_eq!(west["nodes"][0], n2.as_str());
    // An app on both groups runs on both devices; deleting it clears both.
    server.ok(&[
        "apps",
        "update",
        "-n",
        "app",
        "-f",
        &file,
        "-d",
        &g1,
        "-d",
        &g2,
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert_eq!(
        containers_of(&n1, Some("running")).len() + containers_of(&n2, Some("running")).len(),
        2
    );
    server.ok(&[
        "apps",
        "delete",
        "-n",
        "app",
        "-y",
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert!(containers_of(&n1, None).is_empty() && containers_of(&n2, None).is_empty());
}

/// The server's state survives `kill -9`.
#[test]
fn server_state_survives_kill() {
    let mut server = Server::start();
    let file = server.spec(
        "a.yml",
        "app:\n  docker_image: gustavo-test/busybox:latest\n  env_vars: {K: v}\n",
    );
    server.ok(&[
        "apps", "create", "-n", "app", "-f", &file, "-d", "g1", "-d", "g2",
    ]);
    server.kill();
    server.restart();
    let app = server.json(&["apps", "get", "-n", "app"]);
    assert_eq!(app["spec"]["env_vars"]["K"], "v");
    assert_eq!(app["groups"], serde_json::json!(["g1", "g2"]));
    // The revision keeps counting up from where it was.
    let before = app["revision"].as_u64().unwrap();
    server.ok(&[
        "apps",
        "update",
        "-n",
        "app",
        "-f",
        &server.spec(
            "a.yml",
            "app:\n  docker_image: gustavo-test/busybox:latest\n",
        ),
    ]);
    assert!(
        server.json(&["apps", "get", "-n", "app"])["revision"]
            .as_u64()
            .unwrap()
            > before
    );
}

/// Bad input gets a clear error and a non-zero exit or a proper status, and nothing stored
/// is lost.
#[test]
fn bad_input_is_refused_without_harm() {
    let server = Server::start();
    let good = server.spec(
        "a.yml",
        "app:\n  docker_image: gustavo-test/busybox:latest\n",
    );
    server.ok(&["apps", "create", "-n", "app", "-f", &good]);

    let cases = [
        ("app:\n  docker_image: [oops\n", "line 2"),
        (
            "app:\n  docker_image: x\n  docker_imag: y\n",
            "unknown field `docker_imag`",
        ),
        (
            "app:\n  docker_image: x\n  starting_ports: [70000]\n",
            "out of range",
        ),
        (
            "app:\n  docker_image: x\n  containers_per: {gpu: 1}\n",
            "containers_per",
        ),
        ("other:\n  docker_image: x\n", "not in the file"),
    ];
    for (yaml, want) in cases {
        let f = server.spec("bad.yml", yaml);
        let out = server.cli(&["apps", "update", "-n", "app", "-f", &f]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{yaml:?}: {err}");
        assert!(err.contains(want), "{yaml:?}: {err}");
    }
    let out = server.cli(&["apps", "create", "-n", "x", "-f", "/nonexistent.yml"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("/nonexistent.yml")
    );

    // Bad tokens.
    let out = server.cli(&["--token", "nope", "apps", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    let out = server.cli(&["--token", &server.join, "apps", "list"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"));

    // Raw HTTP: oversized, malformed and wrong-typed bodies, unknown routes.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = server.client(&server.admin);
    let (status, body) = rt
        .block_on(client.raw(
            reqwest::Method::POST,
            "/api/v1/apps",
            Some(vec![b' '; 2 * 1024 * 1024]),
        ))
        .unwrap();
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("too_large"));
    for (body, code) in [
        (&b"{not json"[..], 400),
        (br#"{"name": "y", "spec": {"docker_image": 5}}"#, 400),
        (
            br#"{"name": "y", "spec": {"docker_image": "x"}, "extra": 1}"#,
            400,
        ),
        (br#"{"name": "a.b", "spec": {"docker_image": "x"}}"#, 400),
        (br#"{"name": "app", "spec": {"docker_image": "x"}}"#, 409),
    ] {
        let (status, resp) = rt
            .block_on(client.raw(reqwest::Method::POST, "/api/v1/apps", Some(body.to_vec())))
            .unwrap();
        assert_eq!(status, code, "{}", String::from_utf8_lossy(&resp));
        let v: serde_json::Value = serde_json::from_slice(&resp).expect("error bodies are JSON");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let (status, _) = rt
        .block_on(client.raw(reqwest::Method::GET, "/api/v1/apps/missing", None))
        .unwrap();
    assert_eq!(status, 404);
    let (status, _) = rt
        .block_on(client.raw(reqwest::Method::GET, "/api/v1/nope", None))
        .unwrap();
    assert_eq!(status, 404);
    // Health needs no token; everything else does.
    let anon = server.client("");
    assert_eq!(
        rt.block_on(anon.raw(reqwest::Method::GET, "/api/v1/health", None))
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        rt.block_on(anon.raw(reqwest::Method::GET, "/api/v1/openapi.json", None))
            .unwrap()
            .0,
        401
    );
    assert_eq!(
        rt.block_on(client.raw(reqwest::Method::GET, "/api/v1/openapi.json", None))
            .unwrap()
            .0,
        200
    );

    // A bad join token stops the agent with a clear message.
    let out = std::process::Command::new(BIN)
        .args([
            "agent",
            "--server",
            &server.url,
            "--token",
            "wrong",
            "--name",
            &unique("badjoin"),
            "--ca-file",
        ])
        .arg(server.ca_file())
        .arg("--data-dir")
        .arg(server.dir.path().join("badjoin"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("registration refused"), "{err}");
    // The server's answer once: it is the message, not also its cause.
    assert_eq!(err.matches("not known to this server").count(), 1, "{err}");
    // An unreachable server is named.
    let out = std::process::Command::new(BIN)
        .args(["--server", "127.0.0.1:1", "--token", "x", "apps", "list"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot reach the server at https://127.0.0.1:1")
    );

    // Nothing stored was lost.
    let app = server.json(&["apps", "get", "-n", "app"]);
    assert_eq!(app["spec"]["docker_image"], "gustavo-test/busybox:latest");
}

fn bench_fleet(agents: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "bench",
        "fleet",
        "--agents",
        agents,
        "--duration",
        "2s",
        "--heartbeat",
        "1s",
        "-o",
        "json",
    ];
    args.extend(extra);
    let out = std::process::Command::new(BIN)
        .args(&args)
        .env_remove("GUSTAVO_SERVER")
        .env_remove("GUSTAVO_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench fleet failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the report is JSON")
}

/// The fleet simulator: 50 simulated agents, each running two other apps, converge through
/// create, update and delete of a third, and the report's numbers agree with each other.
/// Returns the report's latencies.
fn fleet_of_50(extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["--per-connection", "20", "--updates", "2", "--apps", "3"];
    args.extend(extra);
    let r = bench_fleet("50", &args);
    assert_eq!(r["agents"], 50);
    assert_eq!(r["apps"], 3);
    assert_eq!(r["connections"], 3, "50 agents at 20 per connection");
    let changes: Vec<_> = r["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["change"].as_str().unwrap().to_string(),
                c["converged"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        vec![
            ("create".into(), 50),
            ("update".into(), 50),
            ("update".into(), 50),
            ("delete".into(), 50)
        ]
    );
    let reg_s = r["registration_s"].as_f64().unwrap();
    let rate = r["registrations_per_s"].as_f64().unwrap();
    assert!(
        reg_s > 0.0 && (rate * reg_s - 50.0).abs() < 0.01,
        "rate {rate} × {reg_s}s should be 50"
    );
    assert!(r["idle_bytes_per_agent_per_min"].as_f64().unwrap() > 0.0);
    assert!(
        r["changes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["bytes_per_agent"].as_f64().unwrap() > 0.0)
    );
    // A person's API call was timed while the changes spread, and none failed.
    let api = &r["api"];
    assert!(api["count"].as_u64().unwrap() >= 1, "{api}");
    assert_eq!(api["errors"], 0, "{api}");
    assert!(api["p50_ms"].as_f64().unwrap() <= api["max_ms"].as_f64().unwrap());
    let server = &r["server"];
    assert!(
        server["rss_mb_idle"].as_f64().unwrap() > 0.0
            && server["peak_rss_mb"].as_f64().unwrap() >= server["rss_mb_idle"].as_f64().unwrap()
    );
    r["latency"].as_array().unwrap().clone()
}

/// Streaming (the default), the agents send no request at all once registered and their
/// streams are open: reports, vitals and changes are lines on the streams.
#[test]
fn simulated_fleet_of_50_converges() {
    let latency = fleet_of_50(&[]);
    assert!(
        latency.is_empty(),
        "no request after registration: {latency:?}"
    );
}

/// Long-polling (`--no-stream`), reports and vitals ride on syncs: the agents use no
/// other request once registered.
#[test]
fn simulated_fleet_of_50_converges_long_polling() {
    let latency = fleet_of_50(&["--no-stream"]);
    let sync = latency
        .iter()
        .find(|l| l["endpoint"] == "sync")
        .expect("long-polls were measured");
    // 50 agents with vitals due every second come back at least once each in the window.
    assert!(sync["count"].as_u64().unwrap() >= 50, "{sync}");
    assert_eq!(sync["errors"], 0);
    assert!(sync["p50_ms"].as_f64().unwrap() <= sync["p99_ms"].as_f64().unwrap());
    assert!(sync["p99_ms"].as_f64().unwrap() <= sync["max_ms"].as_f64().unwrap());
    for l in &latency {
        assert!(
            ["sync", "sync-now", "register"].contains(&l["endpoint"].as_str().unwrap()),
            "{l}"
        );
    }
}

/// CI's smoke run of a thousand simulated agents. No timing is asserted.
#[test]
fn simulated_fleet_of_1000_smoke() {
    let r = bench_fleet("1000", &[]);
    assert_eq!(r["agents"], 1000);
    for c in r["changes"].as_array().unwrap() {
        assert_eq!(c["converged"], 1000, "{c}");
    }
    for l in r["latency"].as_array().unwrap() {
        assert_eq!(l["errors"], 0, "{l}");
    }
}

/// An agent started without `--group` joins `default`, where apps go when created without
/// `-d` — so the quick start reaches every device. (A README promise once untested.)
#[test]
fn agent_without_group_joins_default() {
    require_docker_and_registry();
    let server = Server::start();
    let node = unique("nogroup");
    let _a = Agent::start(&server, &node, &[], &[]);
    let nodes = server.json(&["nodes", "list"]);
    let me = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node.as_str())
        .unwrap()
        .clone();
    assert_eq!(me["groups"], serde_json::json!(["default"]));
    let file = server.spec(
        "a.yml",
        "app:\n  docker_image: gustavo-test/busybox:latest\n",
    );
    server.ok(&[
        "apps",
        "create",
        "-n",
        "app",
        "-f",
        &file,
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert_eq!(
        containers_of(&node, Some("running")),
        vec![format!("{node}.app.1")]
    );
}
