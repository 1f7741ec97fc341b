//! Issue 12, peer mode: devices with no server find each other over mDNS and run services
//! for each other. Four agents in their own network namespaces on one bridge (multicast
//! crosses it): three share a cluster CA, the fourth has another. The seed README's request
//! on one runs on the best device and its caller hears `Finished`; `SelfSelection: "false"`
//! runs it elsewhere; a device's own image allowlist holds for what peers give it; the
//! stranger is ignored and refused; the device running a service is
//! killed: it goes within the TTL and the service runs on the next best device; one peer is
//! also a server's agent.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(out.status.success(), "ip {args:?}: {}", stderr(&out));
}

/// What the test made on the host, undone when it ends (also on failure).
struct Lan {
    bridge: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    /// The agents, by node name.
    peers: std::collections::BTreeMap<String, Child>,
    rule: Vec<String>,
}

impl Drop for Lan {
    fn drop(&mut self) {
        for c in self.children.iter_mut().chain(self.peers.values_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        let mut del = vec!["-D".to_string()];
        del.extend(self.rule.iter().cloned());
        let _ = Command::new("iptables").args(&del).output();
        // The peers' service containers (runtime node `pe<i>-peer/jobs`), twice: a create
        // a killed agent had sent may land after the first sweep.
        for pause in [0, 500] {
            std::thread::sleep(Duration::from_millis(pause));
            let _ = Command::new("sh")
                .args(["-c", "docker ps -aq --filter label=gustavo.node | xargs -r docker inspect --format '{{.Id}} {{index .Config.Labels \"gustavo.node\"}}' | grep -- '-peer/jobs' | cut -d' ' -f1 | xargs -r docker rm -f"])
                .output();
        }
    }
}

impl Lan {
    /// A bridge and `n` namespaces on it, 10.198.X.i/24. Docker's FORWARD policy drops
    /// bridged traffic when br_netfilter is loaded: the test's own bridge is let through.
    fn new(n: usize) -> (Lan, String) {
        let tag = std::process::id() % 10_000;
        // Outside Docker's address pools (172.17-31, 192.168): its NAT rules would rewrite
        // bridged packets of an overlapping subnet.
        let net = format!("10.198.{}", 1 + rand::random::<u8>() % 250);
        let bridge = format!("gpb{tag}");
        let rule: Vec<String> = ["FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut lan = Lan {
            bridge: bridge.clone(),
            namespaces: Vec::new(),
            children: Vec::new(),
            peers: Default::default(),
            rule: rule.clone(),
        };
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["link", "set", &bridge, "up"]);
        let mut ins = vec!["-I".to_string()];
        ins.extend(rule);
        let out = Command::new("iptables")
            .args(&ins)
            .output()
            .expect("iptables runs");
        assert!(out.status.success(), "iptables: {}", stderr(&out));
        for i in 1..=n {
            let ns = format!("gpn{tag}-{i}");
            let host = format!("gpv{tag}-{i}");
            let inside = format!("gpe{tag}-{i}");
            ip(&["netns", "add", &ns]);
            lan.namespaces.push(ns.clone());
            ip(&[
                "link", "add", &host, "type", "veth", "peer", "name", &inside,
            ]);
            ip(&["link", "set", &host, "master", &bridge, "up"]);
            ip(&["link", "set", &inside, "netns", &ns]);
            ip(&[
                "-n",
                &ns,
                "address",
                "add",
                &format!("{net}.{i}/24"),
                "dev",
                &inside,
            ]);
            ip(&["-n", &ns, "link", "set", &inside, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            // Multicast out of the LAN interface (there is no default route).
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", &inside]);
        }
        (lan, net)
    }

    fn ns(&self, i: usize) -> &str {
        &self.namespaces[i - 1]
    }

    /// Runs the gustavo CLI in namespace `i`.
    fn cli(&self, i: usize, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", self.ns(i), BIN])
            .args(args)
            .output()
            .expect("gustavo runs")
    }

    fn peers(&self, i: usize) -> Vec<serde_json::Value> {
        let out = self.cli(i, &["peer", "list", "-o", "json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    fn verified(&self, i: usize) -> Vec<String> {
        let mut v: Vec<String> = self
            .peers(i)
            .iter()
            .filter(|p| p["state"] == "peer")
            .filter_map(|p| p["node"].as_str().map(String::from))
            .collect();
        v.sort();
        v
    }

    fn start_peer(&mut self, i: usize, dir: &Path, extra: &[&str]) {
        let log = std::fs::File::create(dir.join(format!("peer{i}.log"))).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns(i), BIN, "agent", "--peer"])
            .args(["--name", &format!("pe{i}")])
            .args(["--data-dir", dir.join(format!("a{i}")).to_str().unwrap()])
            .args(["--peer-listen", "0.0.0.0:7422"])
            .args(["--samsung-listen", "127.0.0.1:56001"])
            .args(extra)
            .env("RUST_LOG", "info,gustavo_agent::peer=debug")
            .stdout(Stdio::null())
            .stderr(log);
        self.peers
            .insert(format!("pe{i}"), cmd.spawn().expect("the agent starts"));
    }
}

fn post(lan: &Lan, i: usize, body: &str) -> serde_json::Value {
    let out = Command::new("ip")
        .args(["netns", "exec", lan.ns(i), "curl", "-s", "-X", "POST"])
        .args(["http://127.0.0.1:56001/api/v1/orchestration/services"])
        .args(["-H", "Content-Type: application/json", "-d", body])
        .output()
        .expect("curl runs");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The best device by the scores the requesting peer logged for `service` (ties go to
/// the first name, as the agent breaks them), leaving out devices that refuse it.
fn best_by_log(log: &Path, service: &str, refusing: &[&str]) -> String {
    let text = std::fs::read_to_string(log).unwrap();
    let line = text
        .lines()
        .rfind(|l| {
            l.contains("peer scores gathered") && l.contains(&format!("service=\"{service}\""))
        })
        .unwrap_or_else(|| panic!("no scores logged for {service}:\n{text}"));
    let scores = line.split("scores=").nth(1).unwrap();
    let mut all: Vec<(String, f64)> = scores
        .split_whitespace()
        .filter_map(|s| {
            let (n, v) = s.split_once('=')?;
            Some((n.to_string(), v.parse().ok()?))
        })
        .filter(|(n, _)| !refusing.contains(&n.as_str()))
        .collect();
    // A device that did not take it (a refusal, or no answer on a loaded machine) is
    // skipped by the agent, which logs it: the next best then runs it.
    let missed: Vec<String> = text
        .lines()
        .filter(|l| {
            l.contains("device did not take the service")
                && l.contains(&format!("service={service} "))
        })
        .filter_map(|l| {
            Some(
                l.split("target=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .to_string(),
            )
        })
        .collect();
    all.retain(|(n, _)| !missed.contains(n));
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all[0].0.clone()
}

#[test]
fn peers_find_each_other_run_services_on_the_best_and_refuse_strangers() {
    require_docker_and_registry();
    crate::samsung::hello_world_image();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let cluster = dir.join("cluster.pem");
    let stranger = dir.join("stranger.pem");
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    };
    run(&["peer", "init", "--out", cluster.to_str().unwrap()]);
    run(&["peer", "init", "--out", stranger.to_str().unwrap()]);
    for i in 1..=4 {
        let file = if i == 4 { &stranger } else { &cluster };
        let data = dir.join(format!("a{i}"));
        run(&[
            "peer",
            "join",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ]);
    }
    let (mut lan, net) = Lan::new(4);
    // pe2 is also the agent of a server (reached on the bridge's own address).
    ip(&[
        "address",
        "add",
        &format!("{net}.254/24"),
        "dev",
        &lan.bridge,
    ]);
    let server = Server::start_on(&format!("{net}.254:0"), &[]);
    lan.start_peer(1, dir, &[]);
    lan.start_peer(2, dir, &["--server", &server.url, "--token", &server.join]);
    // pe3 runs only busybox, whoever asks.
    lan.start_peer(3, dir, &["--samsung-image", "gustavo-test/busybox"]);
    // The stranger is also told where pe1 is, so it tries TLS too.
    let pe1 = format!("pe1@{net}.1:7422");
    lan.start_peer(4, dir, &["--peer-static", &pe1]);

    // 1. The three find and verify each other; nobody takes the stranger, nor it them.
    let start = Instant::now();
    for i in 1..=3 {
        let want: Vec<String> = (1..=3)
            .filter(|j| *j != i)
            .map(|j| format!("pe{j}"))
            .collect();
        while lan.verified(i) != want {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "pe{i} sees {:?}, wants {want:?}; log:\n{}",
                lan.peers(i),
                tail(
                    &std::fs::read_to_string(dir.join(format!("peer{i}.log"))).unwrap(),
                    30
                )
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        lan.verified(4).is_empty(),
        "the stranger has peers: {:?}",
        lan.peers(4)
    );
    for i in 1..=3 {
        assert!(
            !lan.peers(i).iter().any(|p| p["node"] == "pe4"),
            "pe{i} lists the stranger"
        );
    }
    // Its TLS is refused: no client certificate from the cluster's CA.
    let out = Command::new("ip")
        .args(["netns", "exec", lan.ns(4), "curl", "-sk", "--max-time", "3"])
        .arg(format!("https://{net}.1:7422/peer/v1/ping"))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "pe1 answered without a client certificate"
    );
    let listed = String::from_utf8_lossy(&lan.cli(1, &["peer", "list"]).stdout).to_string();
    assert!(
        listed.contains("pe2") && listed.contains("SCORE"),
        "{listed}"
    );
    // pe2 is a peer and its server's node at once.
    wait_for("pe2 to join its server", Duration::from_secs(30), || {
        server.ok(&["nodes", "list"]).contains("pe2")
    });

    // 2. The seed README's request, verbatim, on pe1; the callback receiver is on pe1.
    let got = dir.join("got");
    let receiver = Command::new("ip")
        .args(["netns", "exec", lan.ns(1), "python3", "-c"])
        .arg(format!(
            "import http.server\n\
             class H(http.server.BaseHTTPRequestHandler):\n\
             \x20   def do_POST(self):\n\
             \x20       b=self.rfile.read(int(self.headers.get('Content-Length',0)))\n\
             \x20       open({got:?},'a').write(b.decode()+'\\n'); self.send_response(200); self.end_headers()\n\
             \x20   def log_message(self,*a): pass\n\
             http.server.HTTPServer(('127.0.0.1',8999),H).serve_forever()\n",
            got = got.to_str().unwrap()
        ))
        .spawn()
        .unwrap();
    lan.children.push(receiver);
    std::thread::sleep(Duration::from_millis(500));
    let notes = |service: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(&got)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["ServiceName"] == service)
            .collect()
    };
    let v = post(
        &lan,
        1,
        "{ \"ServiceName\": \"hello-world\", \"ServiceInfo\": [{ \"ExecutionType\": \"container\", \"ExecCmd\": [ \"docker\", \"run\", \"-v\", \"/var/run:/var/run:rw\", \"hello-world\"]}], \"StatusCallbackURI\": \"http://localhost:8999/api/v1/services/notification\"}",
    );
    assert_eq!(v["Message"], "ERROR_NONE", "{v}");
    wait_for("Finished for hello-world", Duration::from_secs(60), || {
        notes("hello-world")
            .iter()
            .any(|n| n["Status"] == "Finished")
    });
    let n = notes("hello-world");
    let states: Vec<&str> = n.iter().filter_map(|n| n["Status"].as_str()).collect();
    assert_eq!(states, vec!["Started", "Finished"], "{n:?}");
    assert_eq!(n[1]["ExitCode"], 0);
    let best = best_by_log(&dir.join("peer1.log"), "hello-world", &["pe3"]);
    assert_eq!(
        n[1]["Target"],
        best.as_str(),
        "it ran on the best-scoring device that takes it (pe3's allowlist refuses hello-world)"
    );

    // A device's own allowlist holds for what peers give it: hello-world, not on pe1, can
    // only run on pe2.
    for k in 0..3 {
        let service = format!("picky{k}");
        let v = post(
            &lan,
            1,
            &format!(
                "{{\"ServiceName\": \"{service}\", \"SelfSelection\": \"false\", \"ServiceInfo\": [{{\"ExecutionType\": \"container\", \"ExecCmd\": [\"docker\", \"run\", \"hello-world\"]}}], \"StatusCallbackURI\": \"http://127.0.0.1:8999/n\"}}"
            ),
        );
        assert_eq!(v["RemoteTargetInfo"]["Target"], format!("{net}.2"), "{v}");
        wait_for(
            &format!("Finished for {service}"),
            Duration::from_secs(60),
            || {
                notes(&service)
                    .iter()
                    .any(|n| n["Status"] == "Finished" && n["Target"] == "pe2")
            },
        );
    }

    // And asked directly, as a member of the cluster (a certificate from its CA) over the
    // peer port, pe3 refuses hello-world by name — so the loop above could not have passed
    // with pe3 running it.
    let ca = gustavo_agent::peer::trust::ClusterCa::load(&cluster).unwrap();
    let tls = ca.identity("tester").unwrap().client_config().unwrap();
    let argv: Vec<String> = ["docker", "run", "hello-world"].map(String::from).to_vec();
    let assignment = gustavo_agent::peer::Assignment {
        id: "svc-direct-1".into(),
        service: "direct".into(),
        spec: gustavo_model::compat::samsung::service_job(
            gustavo_model::compat::samsung::parse_exec_cmd(&argv).unwrap(),
        )
        .unwrap(),
        origin: "tester".into(),
        origin_port: 1,
    };
    let pe3_addr: std::net::SocketAddr = format!("{net}.3:7422").parse().unwrap();
    let (status, body) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let r = reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .resolve("pe3.gustavo-peer", pe3_addr)
                .build()
                .unwrap()
                .post("https://pe3.gustavo-peer:7422/peer/v1/services")
                .json(&assignment)
                .send()
                .await
                .expect("pe3 answers a cluster member");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        });
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not in pe3's allowlist"), "{body}");

    // 3. SelfSelection "false": elsewhere, and the caller still hears.
    let v = post(
        &lan,
        1,
        "{\"ServiceName\": \"elsewhere\", \"SelfSelection\": \"false\", \"ServiceInfo\": [{\"ExecutionType\": \"container\", \"ExecCmd\": [\"docker\", \"run\", \"gustavo-test/busybox:latest\", \"sh\", \"-c\", \"exit 3\"]}], \"StatusCallbackURI\": \"http://127.0.0.1:8999/n\"}",
    );
    assert_eq!(v["Message"], "ERROR_NONE", "{v}");
    wait_for("Failed for elsewhere", Duration::from_secs(60), || {
        notes("elsewhere").iter().any(|n| n["Status"] == "Failed")
    });
    let failed = notes("elsewhere")
        .into_iter()
        .find(|n| n["Status"] == "Failed")
        .unwrap();
    assert_eq!(failed["ExitCode"], 3, "{failed}");
    assert_ne!(failed["Target"], "pe1", "{failed}");
    assert_eq!(
        failed["Target"].as_str().unwrap(),
        best_by_log(&dir.join("peer1.log"), "elsewhere", &[])
    );

    // 4. The device running a service dies (kill -9, no goodbye): it goes from pe1's
    //    peers within the TTL, and pe1 gives the service to the next best device, whose
    //    Finished the caller hears.
    let v = post(
        &lan,
        1,
        "{\"ServiceName\": \"moved\", \"SelfSelection\": false, \"ServiceInfo\": [{\"ExecutionType\": \"container\", \"ExecCmd\": [\"docker\", \"run\", \"gustavo-test/busybox:latest\", \"sh\", \"-c\", \"sleep 6\"]}], \"StatusCallbackURI\": \"http://127.0.0.1:8999/n\"}",
    );
    assert_eq!(v["Message"], "ERROR_NONE", "{v}");
    wait_for("Started for moved", Duration::from_secs(60), || {
        notes("moved").iter().any(|n| n["Status"] == "Started")
    });
    let first = notes("moved")[0]["Target"].as_str().unwrap().to_string();
    let mut dead = lan
        .peers
        .remove(&first)
        .expect("the target is a peer of the test");
    dead.kill().unwrap();
    let _ = dead.wait();
    let other = if first == "pe2" { "pe3" } else { "pe2" };
    wait_for(
        &format!("{first} to go from pe1's peers"),
        Duration::from_secs(20),
        || lan.verified(1) == vec![other.to_string()],
    );
    wait_for(
        "Finished for moved, from the next device",
        Duration::from_secs(60),
        || notes("moved").iter().any(|n| n["Status"] == "Finished"),
    );
    let n = notes("moved");
    let states: Vec<&str> = n.iter().filter_map(|n| n["Status"].as_str()).collect();
    assert_eq!(states, vec!["Started", "Finished"], "told once each: {n:?}");
    assert_eq!(n[1]["Target"], other, "{n:?}");
}
