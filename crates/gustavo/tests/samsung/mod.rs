//! Issue 12: Samsung Edge Orchestration's service API on the agent, with the server's
//! scheduler placing the service (peer mode is not built yet).

use std::time::Duration;

use crate::jobs::{JobContainers, Receiver};
use crate::util::*;

/// The seed's example runs `hello-world`: a local image of that name that prints and exits.
pub(crate) fn hello_world_image() {
    let present = std::process::Command::new("docker")
        .args(["image", "inspect", "hello-world:latest"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return;
    }
    let cid = docker(&["create", "gustavo-test/busybox:latest"]);
    docker(&[
        "commit",
        "--change",
        "CMD [\"sh\", \"-c\", \"echo Hello from Docker!\"]",
        cid.trim(),
        "hello-world:latest",
    ]);
    docker(&["rm", "-f", cid.trim()]);
}

fn post(port: u16, body: &str, auth: Option<&str>) -> (u16, serde_json::Value) {
    let mut args = vec![
        "-s".to_string(),
        "-o".into(),
        "-".into(),
        "-w".into(),
        "\n%{http_code}".into(),
        "-X".into(),
        "POST".into(),
        format!("http://127.0.0.1:{port}/api/v1/orchestration/services"),
        "-H".into(),
        "Content-Type: application/json".into(),
        "-d".into(),
        body.into(),
    ];
    if let Some(a) = auth {
        args.extend(["-H".into(), format!("Authorization: Bearer {a}")]);
    }
    let out = std::process::Command::new("curl")
        .args(&args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

fn statuses(r: &Receiver, service: &str) -> Vec<String> {
    r.got
        .lock()
        .unwrap()
        .iter()
        .filter(|v| v["ServiceName"] == service)
        .map(|v| v["Status"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn the_seed_readme_request_runs_on_the_best_device_and_finished_comes_back() {
    require_docker_and_registry();
    hello_world_image();
    let server = Server::start();
    let group = unique("sam");
    let a_name = format!("{}a", unique("sama"));
    let b_name = format!("{}b", unique("samb"));
    let port = free_ports(1);
    let a = Agent::start_with(
        &server,
        &a_name,
        &[&group],
        &[],
        &["--samsung-listen", &format!("127.0.0.1:{port}")],
    );
    let _b = Agent::start(&server, &b_name, &[&group], &[]);
    let _clean = JobContainers(vec![a_name.clone(), b_name.clone()]);
    // The seed's example mounts /var/run from the host: a device's request is held to its
    // group's policy like a non-admin's, so the admin allows host volumes there.
    server.ok(&["policy", "set", &group, "--allow", "host-volumes"]);
    wait_for("the Samsung API to answer", Duration::from_secs(30), || {
        post(port, "{}", None).0 == 400
    });
    let receiver = Receiver::start();

    // The seed README's body, verbatim but for the callback's port.
    let body = format!(
        "{{ \"ServiceName\": \"hello-world\", \"ServiceInfo\": [{{ \"ExecutionType\": \"container\", \"ExecCmd\": [ \"docker\", \"run\", \"-v\", \"/var/run:/var/run:rw\", \"hello-world\"]}}], \"StatusCallbackURI\": \"http://localhost:{}/api/v1/services/notification\"}}",
        receiver.port
    );
    let (code, v) = post(port, &body, None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["Message"], "ERROR_NONE", "{v}");
    assert_eq!(v["ServiceName"], "hello-world");
    assert_eq!(v["RemoteTargetInfo"]["ExecutionType"], "container");
    assert!(
        v["RemoteTargetInfo"]["Target"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{v}"
    );
    wait_for("Finished at the callback", Duration::from_secs(60), || {
        statuses(&receiver, "hello-world").contains(&"Finished".to_string())
    });
    let got = statuses(&receiver, "hello-world");
    assert_eq!(
        got,
        vec!["Started", "Finished"],
        "each state once, in order"
    );
    let fin = receiver
        .got
        .lock()
        .unwrap()
        .iter()
        .find(|v| v["Status"] == "Finished")
        .cloned()
        .unwrap();
    assert_eq!(fin["ExitCode"], 0, "{fin}");
    let job = fin["Job"].as_str().unwrap().to_string();
    let logs = server.ok(&["jobs", "logs", &job]);
    assert!(logs.contains("Hello from Docker!"), "{logs}");

    // SelfSelection "false": never on the requesting device.
    for _ in 0..3 {
        let body = format!(
            "{{\"ServiceName\": \"elsewhere\", \"SelfSelection\": \"false\", \"ServiceInfo\": [{{\"ExecutionType\": \"container\", \"ExecCmd\": [\"docker\", \"run\", \"hello-world\"]}}], \"StatusCallbackURI\": \"http://127.0.0.1:{}/n\"}}",
            receiver.port
        );
        let (code, v) = post(port, &body, None);
        assert_eq!(code, 200, "{v}");
    }
    wait_for("three Finished", Duration::from_secs(60), || {
        statuses(&receiver, "elsewhere")
            .iter()
            .filter(|s| *s == "Finished")
            .count()
            == 3
    });
    for v in receiver.got.lock().unwrap().iter() {
        if v["ServiceName"] == "elsewhere" {
            assert_eq!(v["Target"], b_name.as_str(), "not on the requester: {v}");
        }
    }

    // A failing command reports Failed with its exit code.
    let body = format!(
        "{{\"ServiceName\": \"boom\", \"ServiceInfo\": [{{\"ExecutionType\": \"container\", \"ExecCmd\": [\"docker\", \"run\", \"gustavo-test/busybox:latest\", \"sh\", \"-c\", \"exit 7\"]}}], \"StatusCallbackURI\": \"http://127.0.0.1:{}/n\"}}",
        receiver.port
    );
    assert_eq!(post(port, &body, None).0, 200);
    wait_for("Failed", Duration::from_secs(60), || {
        statuses(&receiver, "boom").contains(&"Failed".to_string())
    });
    let failed = receiver
        .got
        .lock()
        .unwrap()
        .iter()
        .find(|v| v["ServiceName"] == "boom" && v["Status"] == "Failed")
        .cloned()
        .unwrap();
    assert_eq!(failed["ExitCode"], 7, "{failed}");

    // An image that cannot be pulled: `Failed` alone (the service never started), saying why.
    let body = format!(
        "{{\"ServiceName\": \"nopull\", \"ServiceInfo\": [{{\"ExecutionType\": \"container\", \"ExecCmd\": [\"docker\", \"run\", \"{}/{}:v1\"]}}], \"StatusCallbackURI\": \"http://127.0.0.1:{}/n\"}}",
        registry(),
        unique("nosuchimage"),
        receiver.port
    );
    assert_eq!(post(port, &body, None).0, 200);
    wait_for(
        "Failed for the missing image",
        Duration::from_secs(90),
        || statuses(&receiver, "nopull").contains(&"Failed".to_string()),
    );
    assert_eq!(
        statuses(&receiver, "nopull"),
        vec!["Failed"],
        "never Started: {:?}",
        receiver.got.lock().unwrap()
    );
    let failed = receiver
        .got
        .lock()
        .unwrap()
        .iter()
        .find(|v| v["ServiceName"] == "nopull")
        .cloned()
        .unwrap();
    assert!(
        failed["Error"]
            .as_str()
            .is_some_and(|e| e.contains("nosuchimage")),
        "the reason names the image: {failed}"
    );
    drop(a);
}

#[test]
fn bad_requests_get_named_errors_and_real_status_codes() {
    require_docker_and_registry();
    let server = Server::start();
    let name = unique("samx");
    let port = free_ports(1);
    let _a = Agent::start_with(
        &server,
        &name,
        &[&unique("samg")],
        &[],
        &[
            "--samsung-listen",
            &format!("127.0.0.1:{port}"),
            "--samsung-token",
            "s3cret",
            "--samsung-image",
            "hello-world",
        ],
    );
    wait_for("the Samsung API to answer", Duration::from_secs(30), || {
        post(port, "{}", Some("s3cret")).0 == 400
    });
    let svc = |argv: &str| {
        format!(
            "{{\"ServiceName\": \"x\", \"ServiceInfo\": [{{\"ExecutionType\": \"container\", \"ExecCmd\": {argv}}}]}}"
        )
    };
    let ok_body = svc("[\"docker\", \"run\", \"hello-world\"]");
    // No token, wrong token.
    let (code, v) = post(port, &ok_body, None);
    assert_eq!(code, 401, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("bearer"),
        "{v}"
    );
    assert_eq!(post(port, &ok_body, Some("nope")).0, 401);
    let cases: Vec<(String, u16, &str)> = vec![
        ("not json".into(), 400, "not a service request"),
        ("{\"ServiceInfo\": []}".into(), 400, "ServiceName"),
        ("{\"ServiceName\": \"x\"}".into(), 400, "ServiceInfo"),
        ("{\"ServiceName\": \"x\", \"Bogus\": 1}".into(), 400, "Bogus"),
        ("{\"ServiceName\": \"x\", \"SelfSelection\": \"maybe\", \"ServiceInfo\": []}".into(), 400, "SelfSelection"),
        (svc("[\"docker\", \"run\", \"--name\", \"n\", \"hello-world\"]"), 400, "`--name`"),
        (svc("[\"docker\", \"run\", \"--frob\", \"hello-world\"]"), 400, "unknown docker run flag `--frob`"),
        (svc("[\"podman\", \"run\", \"hello-world\"]"), 400, "\\\"docker\\\", \\\"run\\\""),
        (svc("[\"docker\", \"run\", \"evil:1\"]"), 403, "allowlist"),
        ("{\"ServiceName\": \"x\", \"ServiceInfo\": [{\"ExecutionType\": \"android\", \"ExecCmd\": [\"com.x\"]}]}".into(), 400, "Android"),
        ("{\"ServiceName\": \"x\", \"ServiceInfo\": [{\"ExecutionType\": \"native\", \"ExecCmd\": [\"ls\"]}]}".into(), 400, "samsung-native"),
        (svc("[\"docker\", \"run\", \"--privileged\", \"hello-world\"]"), 403, "privileged"),
    ];
    for (body, want, says) in cases {
        let (code, v) = post(port, &body, Some("s3cret"));
        assert_eq!(code, want, "{body} → {v}");
        let text = v.to_string();
        assert!(text.contains(says), "{body}: expected `{says}` in {v}");
        assert!(v["Message"].is_string(), "the seed's body shape: {v}");
    }
    // Many requests in a row exhaust nothing (the seed took a slot of a fixed table of 1,024
    // for every request and panicked at the 1,025th). These go the whole way: parsed on the
    // device, sent to the server, refused there by the group's policy.
    let privileged = svc("[\"docker\", \"run\", \"--privileged\", \"hello-world\"]");
    for i in 0..1100 {
        let (code, v) = post(port, &privileged, Some("s3cret"));
        assert_eq!(code, 403, "request {i}: {v}");
    }
    let (code, v) = post(port, "{}", Some("s3cret"));
    assert_eq!(code, 400, "still answering after 1,100: {v}");
}
