//! Issue 7, defect 1: user networks on an engine shared by several agents and app workers.
//! Docker (API 1.41) makes two networks of one name when two clients create it at once; from
//! then on every create naming it failed with "network … is ambiguous", for good.

use std::time::Duration;

use crate::util::*;

const WAIT: Duration = Duration::from_secs(90);

/// IDs of the networks named exactly `name`.
fn networks_named(name: &str) -> Vec<String> {
    docker(&[
        "network",
        "ls",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("name=^{name}$"),
    ])
    .lines()
    .filter(|l| !l.is_empty())
    .map(String::from)
    .collect()
}

/// Creates a network the way a racing client does on API 1.41: no duplicate check.
fn create_duplicate(name: &str) -> String {
    let body = format!(
        r#"{{"Name":"{name}","CheckDuplicate":false,"Driver":"bridge","Labels":{{"gustavo.managed":"true"}}}}"#
    );
    let out = std::process::Command::new("curl")
        .args([
            "-sf",
            "--unix-socket",
            "/var/run/docker.sock",
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
            "http://localhost/v1.41/networks/create",
        ])
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "network create: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["Id"].as_str().unwrap().to_string()
}

/// Removes every network of this name when the test ends, whatever happened.
struct NetGuard(String);
impl Drop for NetGuard {
    fn drop(&mut self) {
        for id in networks_named(&self.0) {
            docker(&["network", "rm", &id]);
        }
    }
}

fn app_yaml(app: &str, net: &str) -> String {
    format!("{app}:\n  docker_image: gustavo-test/busybox:latest\n  networks: [\"{net}\"]\n")
}

/// Two agents on one engine and three apps created at once, all on a network that does not
/// exist yet: every container runs, and the engine ends with exactly one network of that name.
/// Deleting the apps removes the network Gustavo made.
#[test]
fn issue7_1_concurrent_creators_make_one_network() {
    require_docker_and_registry();
    let server = Server::start();
    let group = unique("netrace");
    let net = unique("gnet-race");
    let _guard = NetGuard(net.clone());
    assert!(networks_named(&net).is_empty());
    let n1 = unique("netr-a");
    let n2 = unique("netr-b");
    let _a1 = Agent::start(&server, &n1, &[&group], &[]);
    let _a2 = Agent::start(&server, &n2, &[&group], &[]);

    let apps = ["one", "two", "three"];
    std::thread::scope(|s| {
        for app in apps {
            let (server, group, net) = (&server, &group, &net);
            s.spawn(move || {
                let f = server.spec(&format!("{app}.yml"), &app_yaml(app, net));
                server.ok(&[
                    "apps",
                    "create",
                    "-n",
                    app,
                    "-f",
                    &f,
                    "-d",
                    group,
                    "--wait",
                    "--timeout",
                    "90s",
                ]);
            });
        }
    });
    for node in [&n1, &n2] {
        for app in apps {
            let c = format!("{node}.{app}.1");
            assert_eq!(inspect(&c, "{{.State.Running}}").as_deref(), Some("true"));
            let nets = inspect(&c, "{{json .NetworkSettings.Networks}}").unwrap();
            assert!(nets.contains(&format!("\"{net}\"")), "{c} on {nets}");
        }
    }
    assert_eq!(networks_named(&net).len(), 1, "exactly one network `{net}`");

    // A container disconnected by hand is replaced by one on its network.
    let c = format!("{n1}.one.1");
    let before = inspect(&c, "{{.Id}}");
    docker(&["network", "disconnect", &net, &c]);
    wait_for("the disconnected container replaced", WAIT, || {
        inspect(&c, "{{.Id}}") != before
            && inspect(&c, "{{.State.Running}}").as_deref() == Some("true")
            && inspect(&c, "{{json .NetworkSettings.Networks}}")
                .is_some_and(|n| n.contains(&format!("\"{net}\"")))
    });

    // No app uses it any more: the network Gustavo made goes away.
    for app in apps {
        server.ok(&["apps", "delete", "-n", app]);
    }
    wait_for("the unused network to be removed", WAIT, || {
        networks_named(&net).is_empty()
    });
}

/// An engine that already has duplicates (left by an older version or another tool) heals:
/// the app runs on the oldest one, and a duplicate Gustavo made is removed once empty.
#[test]
fn issue7_1_existing_duplicates_heal() {
    require_docker_and_registry();
    let server = Server::start();
    let group = unique("netheal");
    let net = unique("gnet-heal");
    let _guard = NetGuard(net.clone());
    let oldest = create_duplicate(&net);
    std::thread::sleep(Duration::from_millis(20));
    let newer = create_duplicate(&net);
    // A container that is not Gustavo's holds each network, so nothing prunes them early.
    let hold = |id: &str, which: &str| {
        let name = unique(&format!("hold-{which}"));
        docker(&[
            "create",
            "--name",
            &name,
            "--network",
            id,
            "gustavo-test/busybox:latest",
        ]);
        name
    };
    let (hold_old, hold_new) = (hold(&oldest, "old"), hold(&newer, "new"));
    assert_eq!(networks_named(&net).len(), 2, "the engine has duplicates");

    let node = unique("neth");
    let _a = Agent::start(&server, &node, &[&group], &[]);
    let f = server.spec("app.yml", &app_yaml("app", &net));
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
        "90s",
    ]);
    let c = format!("{node}.app.1");
    let joined = inspect(
        &c,
        "{{range .NetworkSettings.Networks}}{{.NetworkID}}{{end}}",
    )
    .unwrap();
    assert_eq!(joined, oldest, "the container joined the oldest network");

    // Once the duplicate is empty, the next use of the name removes it.
    docker(&["rm", "-f", &hold_new, &hold_old]);
    let f2 = server.spec("app2.yml", &app_yaml("app2", &net));
    server.ok(&[
        "apps",
        "create",
        "-n",
        "app2",
        "-f",
        &f2,
        "-d",
        &group,
        "--wait",
        "--timeout",
        "90s",
    ]);
    wait_for("the empty duplicate to be removed", WAIT, || {
        networks_named(&net) == vec![oldest.clone()]
    });
    let c2 = format!("{node}.app2.1");
    let joined = inspect(
        &c2,
        "{{range .NetworkSettings.Networks}}{{.NetworkID}}{{end}}",
    )
    .unwrap();
    assert_eq!(joined, oldest);
}
