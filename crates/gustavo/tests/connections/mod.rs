//! Issue 7 B, 2 and 5: connections are bounded in time and in number, oversized bodies get a
//! 413 that clients can read, and the server says where it listens. Each test drives the real
//! binary over raw TCP, TLS, hand-made HTTP/2 frames or curl, as an attacker or a user would.
//!
//! Deadlines are configured short (1–2 s) and checked against generous bounds: these tests
//! say *that* a connection is closed, not how fast.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gustavo_model::api::RegisterRequest;

use crate::util::*;

/// Generous bound for "closed after a deadline of a second or two".
const CLOSED_WITHIN: Duration = Duration::from_secs(20);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn port(server: &Server) -> u16 {
    server.url.rsplit(':').next().unwrap().parse().unwrap()
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A finished TLS handshake with the server, offering `alpn`.
fn tls(server: &Server, alpn: &[u8]) -> Tls {
    let mut roots = rustls::RootCertStore::empty();
    for c in gustavo_client::parse_pem_certs(&server.ca_pem()).unwrap() {
        roots.add(c).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut sock = TcpStream::connect(("127.0.0.1", port(server))).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)
            .expect("the TLS handshake succeeds");
    }
    // Short reads from here on, so tests can poll with their own bounds.
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert_eq!(conn.alpn_protocol(), Some(alpn));
    rustls::StreamOwned::new(conn, sock)
}

/// Reads until the server closes the connection (end of stream or reset); returns what was
/// read and whether it closed within `limit`.
fn read_until_closed(r: &mut impl Read, limit: Duration) -> (Vec<u8>, bool) {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while start.elapsed() < limit {
        match r.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A reset, or the end of the TCP stream without TLS's close_notify.
            Err(_) => return (out, true),
        }
    }
    (out, false)
}

/// True when a raw TCP connection has been closed by the server (without blocking).
fn is_closed(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let closed = match (&*s).read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

// ---- HTTP/2 by hand: just enough frames to open a connection and one stream ----------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADERS: u8 = 1;
const FRAME_GOAWAY: u8 = 7;
const FRAME_DATA: u8 = 0;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A request's header block in HPACK without compression: `:method` (2 = GET, 3 = POST)
/// and `:scheme https` from the static table, `:path` and `:authority` as literals.
fn h2_request(method_index: u8, path: &str, end_stream: bool) -> Vec<u8> {
    let mut block = vec![0x80 | method_index, 0x87];
    for (name_index, value) in [(4u8, path), (1, "127.0.0.1")] {
        block.push(name_index); // literal without indexing, indexed name
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    let flags = 0x4 | if end_stream { 0x1 } else { 0 };
    frame(FRAME_HEADERS, flags, 1, &block)
}

/// The frames in what a server sent: (type, stream, payload).
fn frames(mut bytes: &[u8]) -> Vec<(u8, u32, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 9 {
        let len =
            (usize::from(bytes[0]) << 16) | (usize::from(bytes[1]) << 8) | usize::from(bytes[2]);
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff;
        if bytes.len() < 9 + len {
            break;
        }
        out.push((bytes[3], stream, bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A TLS connection that sends nothing after its handshake, an HTTP/2 connection that sends
/// no preface, and one that sends its preface but no request are all closed once the first
/// request's deadline (counted from the accept) has passed. The server says where it listens.
#[test]
fn connections_that_send_no_request_are_closed() {
    let server = Server::start_with(&["--handshake-timeout", "1s", "--header-timeout", "2s"]);
    let log = server.log();
    assert!(
        log.contains(&format!("listening on {}", server.url)),
        "the server names the address it listens on:\n{log}"
    );

    let mut h1 = tls(&server, b"http/1.1");
    let mut h2_silent = tls(&server, b"h2");
    let mut h2_preface = tls(&server, b"h2");
    h2_preface.write_all(PREFACE).unwrap();
    h2_preface.write_all(&frame(4, 0, 0, &[])).unwrap(); // empty SETTINGS
    h2_preface.flush().unwrap();

    let (_, closed) = read_until_closed(&mut h1, CLOSED_WITHIN);
    assert!(closed, "an HTTP/1.1 connection with no request was kept");
    let (_, closed) = read_until_closed(&mut h2_silent, CLOSED_WITHIN);
    assert!(closed, "an HTTP/2 connection with no preface was kept");
    let (_, closed) = read_until_closed(&mut h2_preface, CLOSED_WITHIN);
    assert!(closed, "an HTTP/2 connection with no request was kept");
    // The server still serves.
    server.ok(&["apps", "list"]);
}

/// After its last request, a keep-alive connection is closed when it has been idle for
/// `--idle-timeout` (HTTP/2 with a GOAWAY) — but a long-poll in progress is not idle, however
/// long it waits.
#[test]
fn idle_connections_are_closed_but_long_polls_are_kept() {
    let server = Server::start_with(&["--header-timeout", "1s", "--idle-timeout", "2s"]);

    // HTTP/1.1: one request, an answer, then nothing.
    let mut h1 = tls(&server, b"http/1.1");
    h1.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    h1.flush().unwrap();
    let (got, closed) = read_until_closed(&mut h1, CLOSED_WITHIN);
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        closed,
        "an idle HTTP/1.1 keep-alive connection was kept: {got}"
    );

    // HTTP/2: one stream, its answer, then no stream: GOAWAY and close.
    let mut h2 = tls(&server, b"h2");
    h2.write_all(PREFACE).unwrap();
    h2.write_all(&frame(4, 0, 0, &[])).unwrap();
    h2.write_all(&h2_request(2, "/api/v1/health", true))
        .unwrap();
    h2.flush().unwrap();
    let (got, closed) = read_until_closed(&mut h2, CLOSED_WITHIN);
    let f = frames(&got);
    assert!(
        f.iter().any(|(k, s, _)| *k == FRAME_HEADERS && *s == 1),
        "no answer to the request: {f:?}"
    );
    assert!(
        f.iter().any(|(k, _, _)| *k == FRAME_GOAWAY),
        "no GOAWAY: {f:?}"
    );
    assert!(closed, "an HTTP/2 connection with no stream was kept");

    // A long-poll waits well past the idle timeout and gets its answer (304: nothing new).
    let rt = rt();
    let secret = server.join.split("::").last().unwrap().to_string();
    let node = unique("conn-poll");
    let reg = rt
        .block_on(server.client(&secret).register(&RegisterRequest {
            name: node.clone(),
            groups: vec!["default".into()],
            labels: Default::default(),
            cpus: 1,
            memory_mb: 512,
            agent_version: "test".into(),
            heartbeat_s: 5,
            replace: false,
            token: None,
        }))
        .expect("register");
    let agent = server.client(&reg.token);
    let current = rt
        .block_on(agent.desired(&node, 0, Duration::from_secs(0)))
        .expect("desired state")
        .expect("a first desired state")
        .revision;
    let start = Instant::now();
    let r = rt.block_on(agent.desired(&node, current, Duration::from_secs(6)));
    assert!(
        matches!(r, Ok(None)),
        "the long-poll was cut instead of answered: {r:?}\n{}",
        tail(&server.log(), 20)
    );
    assert!(start.elapsed() >= Duration::from_secs(5), "it did wait");
}

/// A login whose body never comes, or trickles in a byte at a time, is answered 408 with the
/// usual JSON error once `--body-timeout` has passed, over HTTP/1.1 and HTTP/2.
#[test]
fn bodies_that_never_arrive_get_408() {
    let server = Server::start_with(&["--body-timeout", "2s"]);

    // HTTP/1.1: headers announce 100 bytes, then none come.
    let mut silent = tls(&server, b"http/1.1");
    silent
        .write_all(b"POST /api/v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
        .unwrap();
    silent.flush().unwrap();
    let (got, closed) = read_until_closed(&mut silent, CLOSED_WITHIN);
    let got = String::from_utf8_lossy(&got);
    assert!(closed, "a request whose body never came was kept: {got}");
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains(r#""code":"timeout""#), "{got}");

    // HTTP/1.1: a byte every 300 ms, for ever.
    let mut trickle = tls(&server, b"http/1.1");
    trickle
        .write_all(b"POST /api/v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
        .unwrap();
    trickle.flush().unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut closed = false;
    let mut buf = [0u8; 4096];
    while start.elapsed() < CLOSED_WITHIN && !closed {
        if got.is_empty()
            && trickle
                .write_all(b" ")
                .and_then(|_| trickle.flush())
                .is_err()
        {
            closed = true;
        }
        // The read waits up to the socket's 200 ms timeout.
        match trickle.read(&mut buf) {
            Ok(0) => closed = true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => closed = true,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = String::from_utf8_lossy(&got);
    assert!(closed, "a trickling body was kept: {got}");
    assert!(
        got.is_empty() || got.starts_with("HTTP/1.1 408"),
        "a trickling body got something else than 408: {got}"
    );

    // HTTP/2: a POST stream whose DATA never comes.
    let mut h2 = tls(&server, b"h2");
    h2.write_all(PREFACE).unwrap();
    h2.write_all(&frame(4, 0, 0, &[])).unwrap();
    h2.write_all(&h2_request(3, "/api/v1/login", false))
        .unwrap();
    h2.flush().unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let answered = loop {
        if start.elapsed() > CLOSED_WITHIN {
            break false;
        }
        match h2.read(&mut buf) {
            Ok(0) => break false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break false,
        }
        if frames(&got)
            .iter()
            .any(|(k, s, p)| *k == FRAME_DATA && *s == 1 && contains(p, br#""code":"timeout""#))
        {
            break true;
        }
    };
    assert!(
        answered,
        "an HTTP/2 request whose body never came got no 408: {:?}",
        frames(&got)
    );
    server.ok(&["apps", "list"]);
}

/// A 2 MB or 20 MB body gets 413 with the JSON error naming the limit — over HTTP/1.1 (with
/// and without `Expect: 100-continue`) and HTTP/2, with a Content-Length or chunked — as curl
/// sees it, and the CLI prints the limit.
#[test]
fn oversized_bodies_get_413_naming_the_limit() {
    let server = Server::start();
    let curl = Command::new("curl").arg("--version").output();
    assert!(
        matches!(&curl, Ok(o) if o.status.success()),
        "curl is required for this test: {curl:?}"
    );
    let dir = server.dir.path();
    for (name, size) in [("2mb.json", 2_000_000), ("20mb.json", 20_000_000)] {
        std::fs::write(dir.join(name), vec![b' '; size]).unwrap();
    }
    let url = format!("{}/api/v1/apps", server.url);
    let auth = format!("Authorization: Bearer {}", server.admin);
    let ca = server.ca_file();
    for file in ["2mb.json", "20mb.json"] {
        for (proto, extra) in [
            ("--http2", &[][..]),
            ("--http2", &["-H", "Transfer-Encoding: chunked"][..]),
            ("--http1.1", &[][..]), // curl asks Expect: 100-continue for big bodies
            ("--http1.1", &["-H", "Expect:"][..]),
            (
                "--http1.1",
                &["-H", "Expect:", "-H", "Transfer-Encoding: chunked"][..],
            ),
        ] {
            // Several tries: an early answer that races the upload fails only sometimes.
            for _ in 0..3 {
                let out = Command::new("curl")
                    .args(["-sS", proto, "--cacert"])
                    .arg(&ca)
                    .args(["-H", &auth, "-H", "Content-Type: application/json"])
                    .args(extra)
                    .arg("--data-binary")
                    .arg(format!("@{}", dir.join(file).display()))
                    .args(["-w", "\n%{http_code}", &url])
                    .output()
                    .expect("curl runs");
                let stdout = String::from_utf8_lossy(&out.stdout);
                let what = format!(
                    "{file} {proto} {extra:?}: stdout {stdout:?}, stderr {:?}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
                assert_eq!(code, "413", "{what}");
                let v: serde_json::Value =
                    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {what}"));
                assert_eq!(v["error"]["code"], "too_large", "{what}");
                assert!(
                    v["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("1048576 bytes")),
                    "{what}"
                );
            }
        }
    }

    // The CLI shows the server's message, limit included.
    let big = format!(
        "big:\n  docker_image: gustavo-test/busybox:latest\n  env_vars:\n    BIG: \"{}\"\n",
        "x".repeat(2_000_000)
    );
    let f = server.spec("big.yml", &big);
    let out = server.cli(&["apps", "create", "-n", "big", "-f", &f]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("1048576 bytes") && err.contains("413"),
        "{err}"
    );
    // The connection was not left in a bad state: the same server keeps serving.
    server.ok(&["apps", "list"]);
}

/// Issue 7 B as it was found: with few file descriptors and a flood of connections that
/// say nothing, the admin's CLI still gets in. The server raises its soft open-file limit
/// to the hard limit at start, caps connections below it, and sheds the idle ones that
/// presented no credential to make room.
#[test]
fn an_admin_gets_in_past_a_flood_of_silent_connections() {
    let prlimit = Command::new("prlimit").arg("--version").output();
    assert!(
        matches!(&prlimit, Ok(o) if o.status.success()),
        "prlimit (util-linux) is required for this test: {prlimit:?}"
    );
    // Long first-request deadlines: the flood is not cut by time here, only by room.
    let server = Server::start_wrapped(
        &["prlimit", "--nofile=128:512"],
        &["--handshake-timeout", "120s", "--header-timeout", "120s"],
    );
    let log = server.log();
    assert!(
        log.contains("raised the open-file limit from 128 to 512"),
        "{log}"
    );
    let cap: usize = log
        .split("at most ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the server logs its connection cap:\n{log}"));
    assert!(
        cap < 512,
        "the cap keeps a reserve below the fd limit: {cap}"
    );

    let flood: Vec<TcpStream> = (0..600)
        .map(|_| TcpStream::connect(("127.0.0.1", port(&server))).unwrap())
        .collect();
    // Some that finished their handshake too, and then said nothing.
    let handshaken: Vec<Tls> = (0..20).map(|_| tls(&server, b"http/1.1")).collect();
    server.ok(&["apps", "list"]);
    server.ok(&["groups", "list"]);
    // Room was made by closing silent connections, not by refusing the admin.
    wait_for(
        "the server to shed silent connections down to its cap",
        Duration::from_secs(20),
        || flood.iter().filter(|s| !is_closed(s)).count() + handshaken.len() <= cap + 8,
    );
    assert!(
        !server.log().contains("Too many open files"),
        "{}",
        tail(&server.log(), 20)
    );
}

/// With `--max-connections` set low, silent connections are shed to let an admin in, while a
/// node's long-poll in progress — a request with a credential — is never cut.
#[test]
fn at_the_connection_cap_silent_connections_go_first() {
    let server = Server::start_with(&[
        "--max-connections",
        "8",
        "--handshake-timeout",
        "120s",
        "--header-timeout",
        "120s",
    ]);
    let rt = rt();
    let secret = server.join.split("::").last().unwrap().to_string();
    let node = unique("conn-cap");
    let reg = rt
        .block_on(server.client(&secret).register(&RegisterRequest {
            name: node.clone(),
            groups: vec!["default".into()],
            labels: Default::default(),
            cpus: 1,
            memory_mb: 512,
            agent_version: "test".into(),
            heartbeat_s: 5,
            replace: false,
            token: None,
        }))
        .expect("register");
    let agent = server.client(&reg.token);
    let current = rt
        .block_on(agent.desired(&node, 0, Duration::from_secs(0)))
        .expect("desired state")
        .expect("a first desired state")
        .revision;
    // The long-poll runs while the flood comes.
    let poll = std::thread::spawn(move || {
        rt.block_on(agent.desired(&node, current, Duration::from_secs(8)))
            .map(|d| d.is_none())
    });
    std::thread::sleep(Duration::from_millis(500));
    let flood: Vec<Tls> = (0..30).map(|_| tls(&server, b"http/1.1")).collect();
    for _ in 0..3 {
        server.ok(&["apps", "list"]);
    }
    let closed = flood
        .into_iter()
        .filter_map(|mut c| {
            let (_, closed) = read_until_closed(&mut c, Duration::from_millis(300));
            closed.then_some(())
        })
        .count();
    assert!(
        closed >= 20,
        "only {closed} of 30 silent connections were shed"
    );
    let r = poll.join().unwrap();
    assert!(
        matches!(r, Ok(true)),
        "the long-poll was cut: {r:?}\n{}",
        tail(&server.log(), 20)
    );
}
