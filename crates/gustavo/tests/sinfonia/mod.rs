//! Issue 13: edge sites, per-client deployments on leases, Sinfonia's deploy API — with the
//! real `sinfonia-tier3` 0.7.4 client from PyPI (installed by scripts/test.sh into a
//! virtualenv) and real agents on the Docker engine.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use gustavo_client::sinfonia::DeployHints;
use gustavo_model::wireguard::KeyPair;

use crate::util::*;

const WAIT: Duration = Duration::from_secs(90);

/// The real client: `GUSTAVO_SINFONIA_TIER3`, or where scripts/test.sh installs it. Fails
/// loudly when it is missing: a test that skipped would pass for nothing.
fn tier3() -> PathBuf {
    let path = std::env::var_os("GUSTAVO_SINFONIA_TIER3")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache")
                });
            cache.join("gustavo-test/sinfonia-venv/bin/sinfonia-tier3")
        });
    let out = Command::new(&path).arg("--version").output();
    assert!(
        matches!(&out, Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).contains("0.7.4")),
        "the real sinfonia-tier3 0.7.4 client is required at {} (scripts/test.sh installs it; \
         or set GUSTAVO_SINFONIA_TIER3): {out:?}",
        path.display()
    );
    path
}

/// A random UUID for a recipe.
fn uuid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn recipe_app(server: &Server, app: &str, uuid: &str, public: bool, requires: &str, group: &str) {
    let f = server.spec(
        &format!("{app}.yml"),
        &format!(
            "{app}:\n  docker_image: gustavo-test/busybox:latest\n  recipe:\n    uuid: {uuid}\n    public: {public}\n    requires: {{{requires}}}\n"
        ),
    );
    server.ok(&["apps", "create", "-n", app, "-f", &f, "-d", group]);
}

/// An anonymous client deploys recipe `uuid` with `key`: the first deployment's name.
fn anonymous_deploy(
    rt: &tokio::runtime::Runtime,
    server: &Server,
    uuid: &str,
    key: &str,
) -> String {
    rt.block_on(
        server
            .client("")
            .sinfonia_deploy(uuid, key, &DeployHints::default()),
    )
    .expect("deploy")[0]
        .deployment_name
        .clone()
}

fn import(server: &Server, yaml: &str) {
    let f = server.spec(&format!("{}.yaml", unique("cloudlets")), yaml);
    server.ok(&["sites", "import", &f]);
}

/// A group with one agent, which is a site of its own (no metadata but its endpoint).
fn one_site(server: &Server, group: &str, node: &str) -> (String, String, Agent) {
    let (group, node) = (unique(group), unique(node));
    let agent = Agent::start(server, &node, &[&group], &[]);
    import(
        server,
        &format!("name: {node}\nendpoint: http://x.example/api/v1/deploy\n"),
    );
    (group, node, agent)
}

fn deployments(server: &Server) -> Vec<serde_json::Value> {
    server
        .json(&["deployments", "list"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn deployment(server: &Server, name: &str) -> Option<serde_json::Value> {
    deployments(server).into_iter().find(|d| d["name"] == name)
}

/// The real client deploys a public recipe through our API and writes a valid wg.conf;
/// asking again gets the same deployment back; the backend runs on the site's node as an
/// app named after the deployment; a private recipe refuses the anonymous client; bad
/// UUIDs and keys get typed 4xx answers.
#[test]
fn real_sinfonia_client_deploys_and_writes_wg_conf() {
    require_docker_and_registry();
    let client_bin = tier3();
    let server = Server::start_with(&["--client-dns", "10.5.0.53", "--client-dns", "svc.example"]);
    let group = unique("edge");
    let node = unique("site");
    let _agent = Agent::start(&server, &node, &[&group], &[]);
    import(
        &server,
        &format!(
            "name: {node}\nendpoint: http://{node}.example:5000/api/v1/deploy\nlocation: [40.4439, -79.9444]\ntunnel_endpoint: 192.0.2.10:51820\n"
        ),
    );
    let public = uuid();
    let private = uuid();
    recipe_app(&server, "hello", &public, true, "", &group);
    recipe_app(&server, "secret", &private, false, "", &group);
    // A recipe app runs nowhere until a client asks.
    assert!(containers_of(&node, None).is_empty());

    let work = tempfile::tempdir().unwrap();
    let run = |uuid: &str| {
        Command::new(&client_bin)
            .args(["--config-debug", &server.url, uuid])
            .current_dir(work.path())
            .env("XDG_CACHE_HOME", work.path().join("cache"))
            .env("REQUESTS_CA_BUNDLE", server.ca_file())
            .output()
            .expect("sinfonia-tier3 runs")
    };
    let out = run(&public);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "sinfonia-tier3 failed: {stdout}\n{}\nserver log:\n{}",
        stderr(&out),
        tail(&server.log(), 30)
    );
    assert!(stdout.contains("Deploying... done"), "{stdout}");
    let conf = std::fs::read_to_string(work.path().join("wg.conf")).expect("wg.conf written");
    let resolv = std::fs::read_to_string(work.path().join("resolv.conf")).unwrap_or_default();

    // The key the client generated and cached is the deployment's key.
    let cached = std::fs::read_to_string(work.path().join("cache/sinfonia").join(&public))
        .expect("the client caches its key pair");
    let ds = deployments(&server);
    assert_eq!(ds.len(), 1, "{ds:?}");
    let d = &ds[0];
    let key = d["key"].as_str().unwrap();
    assert!(cached.contains(key), "cached keys {cached} vs {key}");
    let name = d["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("hello-"), "{name}");
    assert_eq!(d["site"], node.as_str());
    // This agent runs with --wireguard off: the deployment says so.
    assert_eq!(d["tunnel"]["set_up"], false);
    wait_for("the tunnel's reason", WAIT, || {
        deployment(&server, &name).is_some_and(|d| {
            d["tunnel"]["reason"]
                .as_str()
                .unwrap()
                .contains("not set up: on node")
                && d["tunnel"]["reason"]
                    .as_str()
                    .unwrap()
                    .contains("--wireguard off")
        })
    });

    // A valid WireGuard config (wg(8) format, which has no Address line: the client puts
    // the address on the interface itself): our private key, the site's public key and
    // endpoint, the pool routed through the tunnel; DNS in resolv.conf.
    let sites = server.json(&["sites", "list"]);
    let site_key = sites[0]["wg_public_key"].as_str().unwrap().to_string();
    assert_eq!(site_key.len(), 44);
    assert!(sites[0]["wg_private_key"].as_str().unwrap_or("").is_empty());
    for want in [
        "[Interface]",
        "PrivateKey = ",
        "[Peer]",
        &format!("PublicKey = {site_key}"),
        "Endpoint = 192.0.2.10:51820",
        "AllowedIPs = 10.5.0.0/16",
        "PersistentKeepalive = 30",
    ] {
        assert!(conf.contains(want), "wg.conf lacks {want:?}:\n{conf}");
    }
    let private_key = conf
        .lines()
        .find_map(|l| l.strip_prefix("PrivateKey = "))
        .unwrap()
        .trim();
    let pair = KeyPair::from_private_base64(private_key).expect("a 32-byte base64 key");
    assert_eq!(
        pair.public.to_base64(),
        key,
        "the private key matches the public one"
    );
    assert!(
        resolv.contains("nameserver 10.5.0.53")
            && resolv.contains("search svc.example")
            && resolv.contains("ndots:5"),
        "{resolv}"
    );
    assert_eq!(d["sinfonia"]["TunnelConfig"]["address"][0], "10.5.0.2/32");

    // The backend runs on the site's node, named after the deployment.
    let container = format!("{node}.{name}.1");
    wait_for("the backend to run", WAIT, || {
        inspect(&container, "{{.State.Running}}").as_deref() == Some("true")
    });
    let env = inspect(&container, "{{json .Config.Env}}").unwrap();
    assert!(env.contains("GUSTAVO_CLIENT_ADDRESS=10.5.0.2"), "{env}");
    wait_for("the lease to say Deployed", WAIT, || {
        deployment(&server, &name).is_some_and(|d| d["state"] == "Deployed")
    });

    // The same client again: the same deployment, renewed.
    let out = run(&public);
    assert!(out.status.success(), "{}", stderr(&out));
    let ds = deployments(&server);
    assert_eq!(ds.len(), 1, "{ds:?}");
    assert_eq!(ds[0]["name"], name.as_str());
    assert!(ds[0]["renewals"].as_u64().unwrap() >= 1);

    // A private recipe needs a token: the anonymous client is refused, typed.
    let out = run(&private);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("failed to deploy backend") && stdout.contains("unauthenticated"),
        "{stdout}"
    );
    // …and with a token, it deploys.
    let rt = rt();
    let admin = server.client(&server.admin);
    let k = KeyPair::from_secret(rand::random()).public;
    let got = rt
        .block_on(admin.sinfonia_deploy(&private, &k.to_urlsafe(), &DeployHints::default()))
        .expect("a token holder deploys a private recipe");
    assert_eq!(got[0].uuid, private);

    // Bad input: typed 4xx JSON, never a 500.
    let anon = server.client("");
    let good_key = KeyPair::from_secret(rand::random()).public.to_urlsafe();
    let unknown = uuid();
    for (method, path, want) in [
        (
            reqwest::Method::POST,
            format!("/api/v1/deploy/not-a-uuid/{good_key}"),
            400,
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/deploy/{public}/short"),
            400,
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/deploy/{public}/{}", "A".repeat(43) + "/x"),
            400,
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/deploy/{unknown}/{good_key}"),
            404,
        ),
        (
            reqwest::Method::GET,
            format!("/api/v1/deploy/{public}/{good_key}"),
            404,
        ),
        (
            reqwest::Method::DELETE,
            format!("/api/v1/deploy/{public}/{good_key}"),
            404,
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/deploy/{public}/{good_key}?results=many"),
            400,
        ),
        (
            reqwest::Method::GET,
            format!("/api/v1/recipe/{private}/"),
            403,
        ),
        (reqwest::Method::GET, "/api/v1/recipe/nope/".into(), 400),
    ] {
        let (status, body) = rt.block_on(anon.raw(method.clone(), &path, None)).unwrap();
        assert_eq!(
            status,
            want,
            "{method} {path}: {}",
            String::from_utf8_lossy(&body)
        );
        let v: serde_json::Value = serde_json::from_slice(&body).expect("a JSON error body");
        assert!(v["error"]["code"].is_string(), "{v}");
    }
    let (status, body) = rt
        .block_on(anon.raw(
            reqwest::Method::GET,
            &format!("/api/v1/recipe/{public}/"),
            None,
        ))
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, body) = rt
        .block_on(anon.raw(reqwest::Method::GET, "/api/v1/cloudlets/", None))
        .unwrap();
    assert_eq!(status, 200);
    let cloudlets: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(cloudlets[0]["locations"][0][0], 40.4439);
    // A tier 2 reporting itself updates its site (admin); Sinfonia's 400 without a uuid.
    let endpoint = format!("http://{node}.example:5000/api/v1/deploy");
    for (who, body, want) in [
        (
            &admin,
            serde_json::json!({"uuid": "t2", "endpoint": endpoint, "resources": {"gpu_ratio": 0.25}}),
            204,
        ),
        (&admin, serde_json::json!({"endpoint": endpoint}), 400),
        (
            &admin,
            serde_json::json!({"uuid": "t2", "endpoint": "http://nowhere/api/v1/deploy"}),
            404,
        ),
        (
            &anon,
            serde_json::json!({"uuid": "t2", "endpoint": endpoint}),
            401,
        ),
    ] {
        let (status, resp) = rt
            .block_on(who.raw(
                reqwest::Method::POST,
                "/api/v1/cloudlets/",
                Some(body.to_string().into_bytes()),
            ))
            .unwrap();
        assert_eq!(status, want, "{body}: {}", String::from_utf8_lossy(&resp));
    }
    let (_, body) = rt
        .block_on(anon.raw(reqwest::Method::GET, "/api/v1/cloudlets/", None))
        .unwrap();
    let cloudlets: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(cloudlets[0]["resources"]["gpu_ratio"], 0.25, "{cloudlets}");

    // GET shows the client's deployment; DELETE tears it down and the backend leaves.
    let my_key = KeyPair::from_private_base64(private_key)
        .unwrap()
        .public
        .to_urlsafe();
    let (status, body) = rt
        .block_on(anon.raw(
            reqwest::Method::GET,
            &format!("/api/v1/deploy/{public}/{my_key}"),
            None,
        ))
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, _) = rt
        .block_on(anon.raw(
            reqwest::Method::DELETE,
            &format!("/api/v1/deploy/{public}/{my_key}"),
            None,
        ))
        .unwrap();
    assert_eq!(status, 204);
    wait_for("the backend to leave its node", WAIT, || {
        inspect(&container, "{{.Id}}").is_none()
    });
    let events = server.ok(&["events"]);
    assert!(events.contains(&format!("{name} Initializing")), "{events}");
    assert!(events.contains(&format!("{name} Expired")), "{events}");
}

/// Selection by network, location and resources across several real agents with
/// different site metadata; `gustavo deploy --explain` says why.
#[test]
fn sites_are_chosen_by_network_location_and_resources() {
    require_docker_and_registry();
    let server = Server::start();
    let group = unique("edges");
    let (a, b, c) = (unique("pgh"), unique("lon"), unique("nyc"));
    let _aa = Agent::start(&server, &a, &[&group], &[]);
    let _ab = Agent::start(&server, &b, &[&group], &[]);
    let _ac = Agent::start(&server, &c, &[&group], &["gpu=1"]);
    import(
        &server,
        &format!(
            "name: {a}\nendpoint: http://a.example/api/v1/deploy\nlocation: [40.44, -79.94]\nlocal_networks: [192.168.0.0/16]\n---\n\
             name: {b}\nendpoint: http://b.example/api/v1/deploy\nlocations: [[51.50, -0.12], [53.48, -2.24]]\naccepted_clients: [10.0.0.0/8, 172.16.0.0/12]\n---\n\
             name: {c}\nendpoint: http://c.example/api/v1/deploy\nlocation: [40.71, -74.00]\nrejected_clients: [192.168.0.0/16]\n"
        ),
    );
    let any = uuid();
    let gpu = uuid();
    recipe_app(&server, "anyapp", &any, true, "", &group);
    recipe_app(&server, "gpuapp", &gpu, true, "gpu: 1", &group);
    let rank = |uuid: &str, ip: &str, at: &str| -> (Vec<String>, Vec<String>) {
        let e = server.json(&[
            "deploy",
            uuid,
            "--explain",
            "--client-ip",
            ip,
            "--location",
            at,
        ]);
        let kept = e["ranking"]["kept"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["site"].as_str().unwrap().to_string())
            .collect();
        let dropped = e["ranking"]["dropped"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["site"].as_str().unwrap().to_string())
            .collect();
        (kept, dropped)
    };
    // Every node reports vitals before the matcher can see it ready.
    wait_for("three sites to be candidates", WAIT, || {
        rank(&any, "8.8.8.8", "0,0").0.len() == 2
    });
    // A home client in London: the local site first, London refuses it (not in either
    // accepted network), New York rejects its network.
    let (kept, dropped) = rank(&any, "192.168.1.5", "51.5,-0.12");
    assert_eq!(kept, vec![a.clone()]);
    assert_eq!(dropped.len(), 2, "{dropped:?}");
    // A 10/8 client in London: accepted by London although it is not in 172.16/12 (any-of,
    // not Sinfonia's all-of); nearest first.
    let (kept, _) = rank(&any, "10.1.2.3", "51.5,-0.12");
    assert_eq!(kept, vec![b.clone(), c.clone(), a.clone()]);
    // From New Jersey, New York wins.
    let (kept, _) = rank(&any, "10.1.2.3", "40.73,-74.17");
    assert_eq!(kept, vec![c.clone(), a.clone(), b.clone()]);
    // Resources: only the node with a GPU meets the recipe's requirement.
    let (kept, dropped) = rank(&gpu, "10.1.2.3", "51.5,-0.12");
    assert_eq!(kept, vec![c.clone()]);
    assert_eq!(dropped.len(), 2);
    let table = server.ok(&[
        "deploy",
        &gpu,
        "--explain",
        "--client-ip",
        "10.1.2.3",
        "--location",
        "51.5,-0.12",
    ]);
    assert!(table.contains("GPUs, needs 1"), "{table}");
    assert!(table.contains("dropped"), "{table}");

    // Deploy on the two best sites through the CLI (the Sinfonia call with a token).
    let out = server.json(&[
        "deploy",
        &any,
        "--client-ip",
        "10.1.2.3",
        "--location",
        "51.5,-0.12",
        "--results",
        "2",
    ]);
    let names: Vec<String> = out
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["DeploymentName"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 2);
    let addresses: Vec<&str> = out
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["TunnelConfig"]["address"][0].as_str().unwrap())
        .collect();
    assert_ne!(addresses[0], addresses[1], "no address is given twice");
    let sites: Vec<String> = names
        .iter()
        .map(|n| {
            deployment(&server, n).unwrap()["site"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(sites, vec![b.clone(), c.clone()]);
    wait_for("both backends to run", WAIT, || {
        inspect(&format!("{b}.{}.1", names[0]), "{{.State.Running}}").as_deref() == Some("true")
            && inspect(&format!("{c}.{}.1", names[1]), "{{.State.Running}}").as_deref()
                == Some("true")
    });
    assert!(containers_of(&a, None).is_empty());
    let list = server.ok(&["sites", "list"]);
    assert!(list.contains(&b) && list.contains("CPU"), "{list}");
    // Deleting a deployment removes only its backend.
    server.ok(&["deployments", "delete", &names[0]]);
    wait_for("the deleted backend to go", WAIT, || {
        containers_of(&b, None).is_empty()
    });
    assert_eq!(containers_of(&c, Some("running")).len(), 1);
    // Without --client-key the CLI makes a key pair and prints a whole wg-quick config.
    let out = server.cli(&["deploy", &gpu, "--client-ip", "10.1.2.3"]);
    let conf = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    for want in [
        "[Interface]",
        "PrivateKey = ",
        "Address = 10.5.0.",
        "[Peer]",
        "AllowedIPs = 10.5.0.0/16",
    ] {
        assert!(conf.contains(want), "{want:?} missing:\n{conf}");
    }
    // Where to see the site's side of the tunnel (not a claim about it).
    assert!(
        stderr(&out).contains("gustavo deployments get"),
        "{}",
        stderr(&out)
    );
    // A bad location or key is a usage error naming the flag.
    let out = server.cli(&["deploy", &gpu, "--location", "100,0"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("--location"), "{}", stderr(&out));
    let out = server.cli(&["deploy", &gpu, "--client-key", "nope"]);
    assert_eq!(out.status.code(), Some(64));
}

/// A lease expires without renewal (Deployed → Expiring → Expired, backend removed) and
/// stays alive with it, across a server restart.
#[test]
fn leases_expire_without_renewal_and_live_with_it_across_a_restart() {
    require_docker_and_registry();
    // Renewals every second, anonymously: above the default rate limit for one client.
    let flags = [
        "--lease-duration",
        "6s",
        "--lease-grace",
        "4s",
        "--anonymous-deploys-per-minute",
        "1000",
    ];
    let mut server = Server::start_with(&flags);
    let (group, node, _agent) = one_site(&server, "lease", "lsite");
    let id = uuid();
    recipe_app(&server, "leased", &id, true, "", &group);
    let rt = rt();
    let idle = KeyPair::from_secret(rand::random()).public.to_urlsafe();
    let busy = KeyPair::from_secret(rand::random()).public.to_urlsafe();
    let deploy = |server: &Server, key: &str| anonymous_deploy(&rt, server, &id, key);
    let idle_name = deploy(&server, &idle);
    let busy_name = deploy(&server, &busy);
    assert_ne!(idle_name, busy_name);
    let running = |name: &str| {
        inspect(&format!("{node}.{name}.1"), "{{.State.Running}}").as_deref() == Some("true")
    };
    let gone = |name: &str| inspect(&format!("{node}.{name}.1"), "{{.Id}}").is_none();
    // Renew the busy client every second while the idle one is left alone.
    let start = std::time::Instant::now();
    let mut seen_expiring = false;
    while !(gone(&idle_name) && deployment(&server, &idle_name).is_none()) {
        assert!(
            start.elapsed() < WAIT,
            "the idle lease never expired: {:?}\n{}",
            deployment(&server, &idle_name),
            tail(&server.log(), 30)
        );
        assert_eq!(
            deploy(&server, &busy),
            busy_name,
            "renewal keeps the deployment"
        );
        seen_expiring |= deployment(&server, &idle_name).is_some_and(|d| d["state"] == "Expiring");
        std::thread::sleep(Duration::from_secs(1));
    }
    let events = server.ok(&["events"]);
    for want in [
        format!("{idle_name} Initializing → Deployed"),
        format!("{idle_name} Deployed → Expiring"),
        format!("{idle_name} Expiring → Expired"),
    ] {
        assert!(events.contains(&want), "no event {want:?}:\n{events}");
    }
    assert!(
        seen_expiring,
        "the idle lease was seen Expiring before it went"
    );
    wait_for("the renewed backend to run", WAIT, || running(&busy_name));
    assert_eq!(
        deployment(&server, &busy_name).unwrap()["state"],
        "Deployed"
    );

    // A server restart mid-lease, with another client network: the deployment is still
    // there, the same one is given back with an address of the new range, and its backend
    // never stopped.
    let container_id = inspect(&format!("{node}.{busy_name}.1"), "{{.Id}}");
    let before = deployment(&server, &busy_name).unwrap()["address"].clone();
    assert!(
        before.as_str().is_some_and(|a| a.starts_with("10.5.")),
        "{before}"
    );
    server.restart_with(&[&flags[..], &["--client-network", "10.77.0.0/24"]].concat());
    let d = deployment(&server, &busy_name).expect("the lease survives the restart");
    assert_eq!(d["key"].as_str().map(str::len), Some(44));
    assert_eq!(deploy(&server, &busy), busy_name);
    let after = deployment(&server, &busy_name).unwrap()["address"].clone();
    assert_eq!(after, "10.77.0.2", "renewed into the new range");
    assert_eq!(
        inspect(&format!("{node}.{busy_name}.1"), "{{.Id}}"),
        container_id
    );
    // Left alone now, it expires after the restart too, and its backend goes.
    wait_for("the busy lease to expire once renewals stop", WAIT, || {
        deployment(&server, &busy_name).is_none()
    });
    wait_for("its backend to leave", WAIT, || gone(&busy_name));
    // A new request after expiry starts a new deployment.
    assert_ne!(deploy(&server, &busy), busy_name);
}

/// Activity renews a lease too: a backend that sends keeps its deployment, an idle one
/// expires, and the busy one expires once it falls quiet.
#[test]
fn backend_activity_renews_a_lease() {
    require_docker_and_registry();
    let server = Server::start_with(&["--lease-duration", "6s", "--lease-grace", "4s"]);
    let (group, node, _agent) = one_site(&server, "act", "asite");
    let id = uuid();
    recipe_app(&server, "chatty", &id, true, "", &group);
    let rt = rt();
    let deploy = |key: &str| anonymous_deploy(&rt, &server, &id, key);
    let idle = deploy(&KeyPair::from_secret(rand::random()).public.to_urlsafe());
    let busy = deploy(&KeyPair::from_secret(rand::random()).public.to_urlsafe());
    let container = format!("{node}.{busy}.1");
    wait_for("the busy backend to run", WAIT, || {
        inspect(&container, "{{.State.Running}}").as_deref() == Some("true")
    });
    let gateway = inspect(
        &container,
        "{{range .NetworkSettings.Networks}}{{.Gateway}}{{end}}",
    )
    .expect("the backend has a network");
    // The busy backend sends a packet every second; the idle one nothing.
    let start = std::time::Instant::now();
    while deployment(&server, &idle).is_some() {
        assert!(
            start.elapsed() < WAIT,
            "the idle lease never expired: {:?}",
            deployment(&server, &idle)
        );
        let _ = std::process::Command::new("docker")
            .args(["exec", &container, "ping", "-c", "1", "-W", "1", &gateway])
            .output();
        assert!(
            deployment(&server, &busy).is_some(),
            "activity keeps the busy lease: {}",
            server.ok(&["events"])
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        start.elapsed() > Duration::from_secs(6),
        "the idle lease lived its duration"
    );
    let d = deployment(&server, &busy).expect("the busy lease is alive");
    assert_eq!(d["state"], "Deployed", "{d}");
    assert!(
        d["renewals"].as_u64().unwrap_or(0) > 0,
        "renewed by activity: {d}"
    );
    // Quiet now: it expires like any other.
    wait_for("the quiet lease to expire", WAIT, || {
        deployment(&server, &busy).is_none()
    });
}

/// Runs `ip`/`wg`/`wireguard-go`/`curl` and the like; panics with what it printed.
fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is required (scripts/test.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        stderr(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the test made on the host: the client's network namespace (its WireGuard interface
/// lives and dies with it), the veth pair, and the site's interface.
struct HostNet {
    ns: String,
    veth: String,
    site_if: String,
}

impl Drop for HostNet {
    fn drop(&mut self) {
        for args in [
            vec!["netns", "del", self.ns.as_str()],
            vec!["link", "del", self.veth.as_str()],
            vec!["link", "del", self.site_if.as_str()],
        ] {
            let _ = Command::new("ip").args(&args).output();
        }
    }
}

/// A real tunnel: the site's agent runs WireGuard (userspace wireguard-go here: this
/// machine has no kernel module), the real client's wg.conf brought up in a network
/// namespace reaches the backend's published port at the site address through it, the
/// handshake shows in the deployment, the client's traffic keeps the lease alive, and once
/// the client is gone the lease expires and the site's interface goes.
#[test]
fn a_client_reaches_its_backend_through_the_sites_wireguard_tunnel() {
    require_docker_and_registry();
    let client_bin = tier3();
    for tool in ["wg", "wireguard-go", "curl"] {
        sh("sh", &["-c", &format!("command -v {tool}")]);
    }
    // A pool, a veth subnet, names and ports of this run's own: parallel tests share the
    // host's routes, interfaces and UDP ports.
    let r: [u8; 2] = rand::random();
    let (a, b) = (200 + r[0] % 50, r[1]);
    let pool = format!("10.{a}.{b}.0/24");
    let site_ip = format!("10.{a}.{b}.1");
    let tag = unique("");
    let net = HostNet {
        ns: format!("gtc{tag}"),
        veth: format!("gth{tag}"),
        site_if: format!("gtw{tag}"),
    };
    let veth_ns = format!("gtn{tag}");
    let (host_ip, ns_ip) = (format!("10.197.{b}.1"), format!("10.197.{b}.2"));
    let wg_port = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.local_addr())
        .unwrap()
        .port()
        .to_string();
    let web_port = free_ports(1);

    let server = Server::start_with(&[
        "--client-network",
        &pool,
        "--lease-duration",
        "8s",
        "--lease-grace",
        "4s",
    ]);
    let group = unique("wg");
    let node = unique("wsite");
    let _agent = Agent::start_with(
        &server,
        &node,
        &[&group],
        &[],
        &[
            "--wireguard",
            "auto",
            "--wireguard-interface",
            &net.site_if,
            "--wireguard-port",
            &wg_port,
        ],
    );
    import(
        &server,
        &format!(
            "name: {node}\nendpoint: http://{node}.example/api/v1/deploy\ntunnel_endpoint: {host_ip}:{wg_port}\n"
        ),
    );
    let id = uuid();
    let f = server.spec(
        "tunnelled.yml",
        &format!(
            "tunnelled:\n  docker_image: gustavo-test/busybox:latest\n  starting_ports:\n    - \"{web_port}\": 8080\n  command: [\"sh\", \"-c\", \"mkdir -p /www && echo backend-$GUSTAVO_DEPLOYMENT > /www/index.html && exec httpd -f -p 8080 -h /www\"]\n  recipe:\n    uuid: {id}\n    public: true\n"
        ),
    );
    server.ok(&["apps", "create", "-n", "tunnelled", "-f", &f, "-d", &group]);

    // The client's side: a network namespace joined to the host by a veth pair.
    sh("ip", &["netns", "add", &net.ns]);
    sh(
        "ip",
        &[
            "link", "add", &net.veth, "type", "veth", "peer", "name", &veth_ns,
        ],
    );
    sh("ip", &["link", "set", &veth_ns, "netns", &net.ns]);
    sh(
        "ip",
        &["address", "add", &format!("{host_ip}/30"), "dev", &net.veth],
    );
    sh("ip", &["link", "set", &net.veth, "up"]);
    sh(
        "ip",
        &[
            "-n",
            &net.ns,
            "address",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &veth_ns,
        ],
    );
    sh("ip", &["-n", &net.ns, "link", "set", &veth_ns, "up"]);
    sh("ip", &["-n", &net.ns, "link", "set", "lo", "up"]);

    // The real client deploys and writes wg.conf.
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(&client_bin)
        .args(["--config-debug", &server.url, &id])
        .current_dir(work.path())
        .env("XDG_CACHE_HOME", work.path().join("cache"))
        .env("REQUESTS_CA_BUNDLE", server.ca_file())
        .output()
        .expect("sinfonia-tier3 runs");
    assert!(out.status.success(), "sinfonia-tier3: {}", stderr(&out));
    let conf_path = work.path().join("wg.conf");
    let conf = std::fs::read_to_string(&conf_path).expect("wg.conf written");
    assert!(
        conf.contains(&format!("Endpoint = {host_ip}:{wg_port}")),
        "{conf}"
    );
    let ds = deployments(&server);
    let d = &ds[0];
    let name = d["name"].as_str().unwrap().to_string();
    let address = d["address"].as_str().unwrap().to_string();
    assert_ne!(address, site_ip, "the site address is never a client's");

    // The site's agent adds the client: the deployment says its tunnel is set up.
    wait_for("the site to add the client's peer", WAIT, || {
        deployment(&server, &name).is_some_and(|d| d["tunnel"]["set_up"] == true)
    });
    let dump = sh("wg", &["show", &net.site_if, "dump"]);
    assert!(dump.contains(d["key"].as_str().unwrap()), "{dump}");
    assert!(dump.contains(&format!("{address}/32")), "{dump}");
    let shown = sh("ip", &["-o", "address", "show", "dev", &net.site_if]);
    assert!(shown.contains(&format!("{site_ip}/24")), "{shown}");

    // The client's interface, from the client's own wg.conf, in its namespace.
    let client_if = "wgc0";
    sh("ip", &["netns", "exec", &net.ns, "wireguard-go", client_if]);
    sh(
        "ip",
        &[
            "netns",
            "exec",
            &net.ns,
            "wg",
            "setconf",
            client_if,
            conf_path.to_str().unwrap(),
        ],
    );
    sh(
        "ip",
        &[
            "-n",
            &net.ns,
            "address",
            "add",
            &format!("{address}/32"),
            "dev",
            client_if,
        ],
    );
    sh("ip", &["-n", &net.ns, "link", "set", client_if, "up"]);
    sh(
        "ip",
        &["-n", &net.ns, "route", "add", &pool, "dev", client_if],
    );

    // Through the tunnel to the backend's published port at the site address.
    wait_for("the backend to run", WAIT, || {
        deployment(&server, &name).is_some_and(|d| d["state"] == "Deployed")
    });
    let url = format!("http://{site_ip}:{web_port}/");
    let fetch = || {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.ns,
                "curl",
                "-sf",
                "--max-time",
                "3",
                &url,
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let mut body = String::new();
    wait_for(
        "the backend through the tunnel",
        Duration::from_secs(30),
        || {
            body = fetch();
            !body.is_empty()
        },
    );
    assert_eq!(body, format!("backend-{name}"));
    wait_for(
        "the handshake to be reported",
        Duration::from_secs(30),
        || {
            deployment(&server, &name)
                .is_some_and(|d| d["tunnel"]["latest_handshake"].as_u64().unwrap_or(0) > 0)
        },
    );
    let shown = server.ok(&["deployments", "get", &name]);
    assert!(
        shown.contains("connected") && shown.contains(&format!("through {}", net.site_if)),
        "{shown}"
    );

    // The client's traffic keeps its 8 s lease (+4 s grace) well past its end — traffic
    // that never reaches the backend (a closed port of the site), so it is the tunnel's
    // activity that renews, not the backend's.
    let closed = format!("http://{site_ip}:1/");
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(25) {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.ns,
                "curl",
                "-s",
                "--max-time",
                "1",
                &closed,
            ])
            .output();
        assert!(
            deployment(&server, &name).is_some(),
            "tunnel traffic keeps the lease: {}",
            server.ok(&["events"])
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let d = deployment(&server, &name).expect("traffic keeps the lease");
    assert!(d["renewals"].as_u64().unwrap_or(0) > 0, "{d}");
    assert_eq!(fetch(), format!("backend-{name}"));

    // The client goes away: its lease expires, and with the site's last client the
    // site's interface goes (and wireguard-go with it).
    sh("ip", &["-n", &net.ns, "link", "del", client_if]);
    wait_for("the lease to expire", WAIT, || {
        deployment(&server, &name).is_none()
    });
    wait_for(
        "the site's interface to go",
        Duration::from_secs(30),
        || {
            !Command::new("ip")
                .args(["link", "show", "dev", &net.site_if])
                .output()
                .unwrap()
                .status
                .success()
        },
    );
}
