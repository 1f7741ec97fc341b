//! Issue 7, items 4, 6 and 2 (the CLI's part): how the CLI behaves for a person — whose
//! credentials it uses, names, app files that round-trip, one line per change, group
//! deletion, completion, bounded reads — and the agent's join-token file and logs. Each
//! test runs the real binary against a server of its own.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::util::*;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// Runs the CLI as a person on the server's machine: HOME is `home`, the server's data dir
/// is where the CLI looks for the admin's client.toml, and no flag or variable says more.
fn person(server: &Server, home: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("HOME", home)
        .env("GUSTAVO_DATA_DIR", server.data_dir())
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("GUSTAVO_CONFIG")
        .env_remove("GUSTAVO_SERVER")
        .env_remove("GUSTAVO_TOKEN")
        .env_remove("GUSTAVO_CA_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gustavo runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().expect("gustavo runs")
}

fn must(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Item 4: on the server's machine, `login` then `logout` leaves the admin's CLI working;
/// while logged in, whoami and every refusal say whose credentials were used, and the
/// admin's config is pointed at.
#[test]
fn issue7_logout_does_not_lock_the_admin_out() {
    let server = Server::start();
    let home = server.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let user_cfg = home.join(".config/gustavo/client.toml");
    let admin_cfg = server.data_dir().join("client.toml");

    // With no login, the CLI acts as the admin, from the server's client.toml, and says so.
    let who = must(&person(&server, &home, &["whoami"], ""), "whoami");
    assert!(who.starts_with("admin (admin)\n"), "{who}");
    assert!(
        who.contains(&format!(
            "credentials: the token in {}",
            admin_cfg.display()
        )),
        "{who}"
    );
    must(
        &server.cli_stdin(
            &["users", "create", "lena", "--role", "viewer"],
            "pass-word-1\n",
        ),
        "users create",
    );

    // Login needs no flags here: the server's config says where the server is.
    let out = person(
        &server,
        &home,
        &["login", "-u", "lena", "--password-stdin"],
        "pass-word-1\n",
    );
    must(&out, "login");
    // The shadowing is said, once, at login.
    assert!(
        text(&out.stderr).contains(&format!("instead of using {}", admin_cfg.display())),
        "{}",
        text(&out.stderr)
    );
    let who = must(&person(&server, &home, &["whoami"], ""), "whoami");
    assert!(who.starts_with("user:lena (viewer)\n"), "{who}");

    // A refusal names the identity and the config used, and the admin's config.
    let f = server.spec("a.yml", "a:\n  docker_image: x\n");
    let out = person(&server, &home, &["apps", "create", "a", "-f", &f], "");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("403"), "{err}");
    assert!(
        err.contains(&format!(
            "credentials: user lena's session in {}",
            user_cfg.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("--config {}", admin_cfg.display())),
        "{err}"
    );

    // Logout: the session is revoked and the token leaves the file; the file keeps only
    // the server's address and CA, and no longer shadows the admin's config.
    let out = must(&person(&server, &home, &["logout"], ""), "logout");
    assert!(out.contains("user lena logged out"), "{out}");
    let kept = gustavo_client::config::ClientFile::load(&user_cfg).unwrap();
    assert_eq!((kept.token, kept.user), (None, None));
    let who = must(&person(&server, &home, &["whoami"], ""), "whoami");
    assert!(who.starts_with("admin (admin)\n"), "{who}");
    must(
        &person(&server, &home, &["apps", "create", "a", "-f", &f], ""),
        "apps create as admin after logout",
    );
    // Logging out again is harmless, and logging in again needs no flags either.
    must(&person(&server, &home, &["logout"], ""), "second logout");
    must(
        &person(
            &server,
            &home,
            &["login", "-u", "lena", "--password-stdin"],
            "pass-word-1\n",
        ),
        "login again",
    );
    // What lena may not see answers 404; the note says whose eyes looked.
    let out = person(&server, &home, &["apps", "get", "a"], "");
    let err = text(&out.stderr);
    assert!(
        err.contains("404") && err.contains("credentials: user lena's session"),
        "{err}"
    );

    // A config holding nothing but a session (as a hand-made one might) is removed.
    let bare = server.dir.path().join("bare.toml");
    std::fs::write(&bare, "token = \"gus_user_x\"\nuser = \"lena\"\n").unwrap();
    let out = person(
        &server,
        &home,
        &[
            "logout",
            "--config",
            bare.to_str().unwrap(),
            "--server",
            &server.url,
            "--ca-file",
            server.ca_file().to_str().unwrap(),
        ],
        "",
    );
    must(&out, "logout of a bare config");
    assert!(!bare.exists(), "the empty config is left behind");
    // The admin's own config is never "logged out" of.
    let out = person(
        &server,
        &home,
        &["logout", "--config", admin_cfg.to_str().unwrap()],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no login session"));
    assert!(
        gustavo_client::config::ClientFile::load(&admin_cfg)
            .unwrap()
            .token
            .is_some()
    );

    // With no token anywhere, the error says where it looked.
    let nowhere = server.dir.path().join("empty-home");
    std::fs::create_dir_all(&nowhere).unwrap();
    let out = Command::new(BIN)
        .args(["apps", "list"])
        .env("HOME", &nowhere)
        .env("GUSTAVO_DATA_DIR", nowhere.join("data"))
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("GUSTAVO_CONFIG")
        .env_remove("GUSTAVO_TOKEN")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no token") && err.contains("not found") && err.contains("gustavo login"),
        "{err}"
    );
}

const TRICKY: &str = r#"web:
    docker_image: "127.0.0.1:1/gustavo-test-nowhere:v1"
    env_vars:
        COUNTRY: "NO"
        V: "1.10"
        O: "0777"
        GREETING: "say \"hi\""
    starting_ports:
      - 9000: 9000
    containers_per: {server: 2}
    command: ["sh", "-c", "sleep 3600"]
    memory: 64m
    labels: {tier: web}
    healthcheck: {test: "true", interval: 2s}
"#;

/// Item 6: `apps get NAME` (positional or -n), `-o yaml` that round-trips into
/// `apps update -f` (also from stdin), and `apps update` running the registry check.
#[test]
fn issue7_apps_get_yaml_round_trips_into_update() {
    let server = Server::start();
    let f = server.spec("web.yml", TRICKY);
    let out = server.cli(&["apps", "create", "web", "-f", &f, "-d", "site"]);
    must(&out, "apps create");
    // The registry check, which create has always run.
    assert!(
        text(&out.stderr).contains("cannot reach registry 127.0.0.1:1"),
        "{}",
        text(&out.stderr)
    );

    // The same app either way (the `updated: …ago` line may tick between the two).
    let without_age = |s: String| -> String {
        s.lines()
            .filter(|l| !l.starts_with("updated:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let positional = server.ok(&["apps", "get", "web"]);
    assert_eq!(
        without_age(positional.clone()),
        without_age(server.ok(&["apps", "get", "-n", "web"]))
    );
    assert!(positional.contains("COUNTRY: \"NO\""), "{positional}");

    // The app file: back in unchanged, from a file or from stdin.
    let yaml = server.ok(&["apps", "get", "web", "-o", "yaml"]);
    assert!(yaml.starts_with("# app web at revision "), "{yaml}");
    for quoted in [r#""NO""#, r#""1.10""#, r#""0777""#] {
        assert!(yaml.contains(quoted), "{quoted} not kept as text:\n{yaml}");
    }
    let back = server.spec("back.yml", &yaml);
    let out = server.cli(&["apps", "update", "web", "-f", &back]);
    let said = must(&out, "apps update from the app file");
    assert!(said.contains("app web unchanged (revision "), "{said}");
    // Update runs the same registry check as create.
    assert!(
        text(&out.stderr).contains("cannot reach registry 127.0.0.1:1"),
        "{}",
        text(&out.stderr)
    );
    let out = must(
        &server.cli_stdin(&["apps", "update", "web", "-f", "-"], &yaml),
        "apps update -f -",
    );
    assert!(out.contains("app web unchanged"), "{out}");

    // An edit made in the app file lands, and the other values keep their text.
    let edited = server.spec("edited.yml", &yaml.replace("\"1.10\"", "\"1.20\""));
    let out = server.ok(&["apps", "update", "web", "-f", &edited]);
    assert!(out.contains("app web updated (revision "), "{out}");
    let app = server.json(&["apps", "get", "web"]);
    let env = &app["spec"]["env_vars"];
    assert_eq!(
        (&env["V"], &env["COUNTRY"], &env["O"]),
        (
            &serde_json::json!("1.20"),
            &serde_json::json!("NO"),
            &serde_json::json!("0777")
        )
    );
    assert_eq!(app["groups"], serde_json::json!(["site"]));

    // -o yaml works for lists too.
    let groups = server.ok(&["groups", "list", "-o", "yaml"]);
    assert!(groups.starts_with("- apps:\n"), "{groups}");
}

/// Item 6: every change prints `<kind> <name> <what> (revision N)`, one line.
#[test]
fn issue7_every_change_prints_one_line_in_one_style() {
    let server = Server::start();
    let f = server.spec("app.yml", "app:\n  docker_image: x\n");
    let line = |args: &[&str]| -> String {
        let out = server.ok(args);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?} printed {out}");
        lines[0].to_string()
    };
    let revision = |l: &str, prefix: &str| -> u64 {
        let rest = l
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("`{l}` does not start with `{prefix}`"));
        rest.strip_prefix(" (revision ")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("`{l}` does not end with (revision N)"))
    };
    // No registry host in the image: create prints only the server line before its own.
    let out = server.ok(&["apps", "create", "app", "-f", &f]);
    let created = out.lines().last().unwrap();
    let r1 = revision(created, "app app created on device group default");
    let r2 = revision(&line(&["apps", "stop", "app"]), "app app stopped");
    let r3 = revision(&line(&["apps", "start", "app"]), "app app started");
    let r4 = revision(&line(&["apps", "restart", "app"]), "app app restarted");
    let r5 = revision(
        &line(&["apps", "update", "app", "-f", &f, "-d", "other"]),
        "app app updated, now on device group other",
    );
    assert!(r1 < r2 && r2 < r3 && r3 < r4 && r4 < r5);
    assert_eq!(
        revision(&line(&["apps", "start", "app"]), "app app already started"),
        r5
    );
    let r6 = revision(&line(&["apps", "delete", "app", "-y"]), "app app deleted");
    assert!(r6 > r5);

    // Nodes: the removal's revision comes back from the server.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let secret = server.join.split("::").last().unwrap().to_string();
    rt.block_on(
        server
            .client(&secret)
            .register(&gustavo_model::api::RegisterRequest {
                name: "dev1".into(),
                groups: vec!["g".into()],
                labels: Default::default(),
                cpus: 1,
                memory_mb: 512,
                agent_version: "test".into(),
                heartbeat_s: 5,
                replace: false,
                token: None,
            }),
    )
    .unwrap();
    let r7 = revision(&line(&["nodes", "remove", "dev1"]), "node dev1 removed");
    assert!(r7 > r6);

    // People, grants, policies and tokens live outside the revision counter.
    let out = server.cli_stdin(
        &["users", "create", "ana", "--role", "operator"],
        "pw-pw-pw-1\n",
    );
    assert_eq!(
        must(&out, "users create").trim(),
        "user ana created (operator)"
    );
    assert_eq!(
        line(&["user-groups", "set", "cams", "-d", "g=rw"]),
        "user group cams set"
    );
    assert_eq!(
        line(&["policy", "set", "g", "--allow", "devices"]),
        "policy g set"
    );
    assert_eq!(line(&["policy", "delete", "g"]), "policy g deleted");
    assert_eq!(
        line(&["user-groups", "delete", "cams"]),
        "user group cams deleted"
    );
    assert_eq!(line(&["users", "delete", "ana"]), "user ana deleted");
    let out = server.cli(&["tokens", "create", "--description", "t"]);
    let err = text(&out.stderr);
    must(&out, "tokens create");
    let id = err
        .strip_prefix("join token ")
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("{err}"))
        .to_string();
    assert!(err.contains(" created (group: any"), "{err}");
    assert_eq!(
        line(&["tokens", "revoke", &id]),
        format!("join token {id} revoked")
    );
}

/// Item 6: `groups delete` forgets an unused group, and refuses (409) one that an app or a
/// device still uses, naming them.
#[test]
fn issue7_groups_delete() {
    let server = Server::start();
    let f = server.spec("app.yml", "app:\n  docker_image: x\n");
    server.ok(&["apps", "create", "app", "-f", &f, "-d", "old"]);
    let out = server.cli(&["groups", "delete", "old"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("409") && err.contains("still used by apps app"),
        "{err}"
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let secret = server.join.split("::").last().unwrap().to_string();
    let resp = rt
        .block_on(
            server
                .client(&secret)
                .register(&gustavo_model::api::RegisterRequest {
                    name: "cam1".into(),
                    groups: vec!["cams".into()],
                    labels: Default::default(),
                    cpus: 1,
                    memory_mb: 512,
                    agent_version: "test".into(),
                    heartbeat_s: 5,
                    replace: false,
                    token: None,
                }),
        )
        .unwrap();
    // The register answer says which groups the node is in.
    assert_eq!(resp.groups, vec!["cams".to_string()]);
    let out = server.cli(&["groups", "delete", "cams"]);
    let err = text(&out.stderr);
    assert!(err.contains("409") && err.contains("devices cam1"), "{err}");

    // Once the app has moved, the group goes.
    server.ok(&["apps", "update", "app", "-f", &f, "-d", "new"]);
    let out = server.ok(&["groups", "delete", "old"]);
    assert!(out.starts_with("group old deleted (revision "), "{out}");
    let out = server.cli(&["groups", "get", "old"]);
    assert!(text(&out.stderr).contains("404"), "{}", text(&out.stderr));
    let listed = server.json(&["groups", "list"]);
    assert!(
        !listed
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "old"),
        "{listed}"
    );
    // Unknown groups are a 404; the audit log names the group deleted.
    let out = server.cli(&["groups", "delete", "never"]);
    assert!(text(&out.stderr).contains("404"), "{}", text(&out.stderr));
    let audit = server.json(&["audit", "--object", "group:old"]);
    assert!(
        audit.as_array().unwrap().iter().any(|e| e["action"]
            .as_str()
            .unwrap_or_default()
            .contains("DELETE")
            && e["allowed"] == true),
        "{audit}"
    );
}

/// One server per data dir: a second one on it stops before it writes anything (two
/// would hand out the same revisions for different changes), and so does one whose
/// database it could not write, naming the file.
#[test]
fn one_server_per_data_dir_and_a_database_it_cannot_write_is_said_at_start() {
    let server = Server::start();
    let data = server.data_dir();
    let start = |dir: &Path| {
        Command::new(BIN)
            .args([
                "server",
                "--no-agent",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .expect("gustavo runs")
    };
    let client_toml = std::fs::read_to_string(data.join("client.toml")).unwrap();
    let out = start(&data);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is in use by another gustavo server"), "{err}");
    assert_eq!(
        std::fs::read_to_string(data.join("client.toml")).unwrap(),
        client_toml,
        "the running server's client.toml is left alone"
    );
    server.ok(&["groups", "list"]);

    // A database the server may not write (an SD card gone read-only, say): said at the
    // start, not as an error on every change. As root only an immutable file is refused.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data").join("gustavo.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::write(&db, b"").unwrap();
    let chattr = Command::new("chattr")
        .arg("+i")
        .arg(&db)
        .output()
        .expect("chattr runs");
    assert!(
        chattr.status.success(),
        "chattr +i: {}",
        text(&chattr.stderr)
    );
    let out = start(db.parent().unwrap());
    let _ = Command::new("chattr").arg("-i").arg(&db).output();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("the database at {} is read-only", db.display())),
        "{err}"
    );
    // A file where the data dir should be: said once.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = start(&file);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.matches("File exists").count(), 1, "{err}");
}

/// A group's pressure can be set before anything names the group (it is made, as an app
/// makes its groups); clearing the thresholds of a group nobody made is a 404.
#[test]
fn group_pressure_set_before_the_group_has_members() {
    let server = Server::start();
    server.ok(&[
        "groups",
        "set-pressure",
        "kiosks",
        "--settings",
        "cpu=90/70",
    ]);
    let g = server.json(&["groups", "get", "kiosks"]);
    assert_eq!(g["pressure"]["cpu"]["high"], 90.0, "{g}");
    assert_eq!(g["apps"], serde_json::json!([]), "{g}");
    let out = server.cli(&["groups", "clear-pressure", "never"]);
    let err = text(&out.stderr);
    assert!(err.contains("404") && err.contains("`never`"), "{err}");
    assert!(server.cli(&["groups", "get", "never"]).status.code() != Some(0));
    server.ok(&["groups", "clear-pressure", "kiosks"]);
    server.ok(&["groups", "delete", "kiosks"]);
}

/// Item 2, the CLI's part: `-f` is read only up to the app-file limit, and more is a usage
/// error that names the limit — `-f /dev/zero` ends at once instead of filling memory.
#[test]
fn issue7_app_files_are_read_with_a_bound() {
    let server = Server::start();
    let out = server.cli(&["apps", "create", "x", "-f", "/dev/zero"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("/dev/zero") && err.contains("4 MiB"), "{err}");
    let big = server.dir.path().join("big.yml");
    std::fs::write(
        &big,
        format!(
            "x:\n  docker_image: x\n  labels: {{k: \"{}\"}}\n",
            "a".repeat(5 << 20)
        ),
    )
    .unwrap();
    let out = server.cli(&["apps", "update", "x", "-f", big.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("4 MiB"), "{}", text(&out.stderr));
    // Nothing reached the server.
    assert_eq!(server.json(&["apps", "list"]), serde_json::json!([]));
}

/// Item 6: completion scripts for bash, zsh and fish; the bash one is valid bash.
#[test]
fn issue7_shell_completion() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completion", shell])
            .output()
            .unwrap();
        let script = must(&out, shell);
        assert!(
            script.contains("gustavo") && script.contains("apps"),
            "{shell}: {script}"
        );
        if shell == "bash" {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("gustavo.bash");
            std::fs::write(&p, &script).unwrap();
            let check = Command::new("bash").arg("-n").arg(&p).output().unwrap();
            assert!(check.status.success(), "{}", text(&check.stderr));
        }
    }
    // Every flag of `apps create` says what it is for.
    let help = must(
        &Command::new(BIN)
            .args(["apps", "create", "--help"])
            .output()
            .unwrap(),
        "help",
    );
    for flag in [
        "--name <NAME>  ",
        "--file <FILE>  ",
        "--device-group <GROUP>  ",
    ] {
        let line = help
            .lines()
            .find(|l| l.contains(flag))
            .unwrap_or_else(|| panic!("{flag} missing:\n{help}"));
        assert!(
            line.split(flag).nth(1).is_some_and(|d| d.trim().len() > 10),
            "{flag} has no description: {line}"
        );
    }
}

/// Item 6, the agent: the join token comes from a private file (a readable one is refused
/// with a clear error), the agent logs the groups it really joined (a group-bound token
/// overrides --group), its log file has no colour codes, and `--wait` prints its final
/// line once.
#[test]
fn issue7_agent_token_file_groups_and_wait() {
    require_docker_and_registry();
    let server = Server::start();
    let group = unique("bound");
    let node = unique("tokfile");
    let out = server.cli(&["tokens", "create", "--group", &group]);
    let token = must(&out, "tokens create").trim().to_string();
    let file = server.dir.path().join("join-token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();

    // Readable by others: refused before anything starts, naming the file and the fix.
    let out = Command::new(BIN)
        .args(["agent", "--server", &server.url, "--name", &node])
        .arg("--token-file")
        .arg(&file)
        .env_remove("GUSTAVO_TOKEN")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains(&format!("--token-file {}", file.display())) && err.contains("chmod 600"),
        "{err}"
    );

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let agent = Agent::start_args(
        &server,
        &node,
        &[
            "--token-file".into(),
            file.to_str().unwrap().into(),
            "--group".into(),
            "asked-for".into(),
        ],
    );
    wait_for("the agent to log its groups", WAIT_LOG, || {
        agent.log().contains("joined other device groups")
    });
    let log = agent.log();
    assert!(log.contains(&format!("groups=[\"{group}\"]")), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file:\n{log}"
    );

    let f = server.spec(
        "app.yml",
        "app:\n  docker_image: gustavo-test/busybox:latest\n",
    );
    let out = server.cli(&[
        "apps",
        "create",
        "app",
        "-f",
        &f,
        "-d",
        &group,
        "--wait",
        "--timeout",
        "60s",
    ]);
    let err = text(&out.stderr);
    must(&out, "apps create --wait");
    assert_eq!(
        err.matches("1/1 devices running").count(),
        1,
        "the final line is printed more than once:\n{err}"
    );
    let out = server.cli(&["apps", "delete", "app", "-y", "--wait", "--timeout", "60s"]);
    must(&out, "apps delete --wait");
    assert_eq!(
        text(&out.stderr).matches("1/1 devices clear").count(),
        1,
        "{}",
        text(&out.stderr)
    );
}

const WAIT_LOG: Duration = Duration::from_secs(30);

/// What a walk-through of the README found: a host list that cannot be read is a usage error
/// (64) in `cache` as in `exec`; a token the server does not know is called that (not
/// "missing or malformed"); and `server --print-config | head` ends quietly instead of
/// panicking (it printed with `println!`, not `outln!`).
#[test]
fn walkthrough_host_lists_unknown_tokens_and_closed_pipes() {
    let server = Server::start();
    let out = server.cli(&["cache", "hosts", "-h", "red[5-1]"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("runs backwards"), "{err}");

    let out = Command::new(BIN)
        .args(["apps", "list"])
        .env("GUSTAVO_CONFIG", server.config())
        .env("GUSTAVO_TOKEN", "gus_sess_0123456789abcdef0123456789abcdef")
        .env_remove("GUSTAVO_SERVER")
        .env_remove("GUSTAVO_CA_FILE")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("not known to this server"), "{err}");
    assert!(!err.contains("malformed"), "{err}");

    // The reader is gone before the first line is written: the write fails with EPIPE.
    let mut child = Command::new(BIN)
        .args(["server", "--print-config"])
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    // A reader that went away is not an error (`output::outln!`).
    assert_eq!(out.status.code(), Some(0), "{err}");
}
