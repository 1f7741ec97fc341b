//! The accept loop: TCP, then (unless `--insecure-http`) a TLS handshake with a deadline,
//! then HTTP/1.1 or HTTP/2 (told by the first bytes; TLS offers both by ALPN) served by
//! hyper with the axum router.
//!
//! Written by hand rather than `axum::serve` because every connection is bounded in time
//! and in number, whatever the client does or fails to do:
//!
//! | phase | deadline | counted from |
//! |---|---|---|
//! | TLS handshake | `--handshake-timeout` (10 s) | the accept |
//! | the first request's headers (HTTP/2: preface, settings and a request) | `--header-timeout` (10 s) | the accept |
//! | a later request's headers (HTTP/1.1) | `--header-timeout` | its first byte |
//! | a request's body | `--body-timeout` (30 s), then `408` | the end of its headers (see `body`) |
//! | nothing in progress (HTTP/1.1 keep-alive, HTTP/2 with no open stream) | `--idle-timeout` (60 s) | the end of the last request |
//!
//! A request in progress — an agent's long-poll, a `--wait` — is never idle, however long
//! it waits. How many connections may be open, and which ones go when there are too many,
//! is the connection table's business (`conns`). The peer address goes into each request
//! as axum's `ConnectInfo<SocketAddr>` (handlers use it for "from where"), and the
//! connection itself as an `Arc<Conn>`, so authentication can record what it proved.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::Service;

use crate::conns::{Admission, Conn, ConnTable};

/// Deadlines for slow and idle clients (see the module header).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From TCP accept to a finished TLS handshake.
    pub handshake: Duration,
    /// From the accept to the first request's last header; from a later request's first
    /// byte to its last header.
    pub header_read: Duration,
    /// From a request's last header to the last byte of its body.
    pub body: Duration,
    /// How long a connection with no request in progress stays open.
    pub idle: Duration,
    /// How long a shutdown waits for open connections before giving up on them.
    pub drain: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: Duration::from_secs(10),
            header_read: Duration::from_secs(10),
            body: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            drain: Duration::from_secs(5),
        }
    }
}

/// Streams one HTTP/2 connection may have open at once.
const MAX_STREAMS: u32 = 256;

/// How long a connection told to close gracefully (idle, or the server stopping) may take
/// to finish what it is sending before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting and waits
/// (up to `timeouts.drain`) for open connections to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    timeouts: Timeouts,
    table: Arc<ConnTable>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let protocols = Arc::new(protocols(&timeouts));
    let (closing_tx, closing) = watch::channel(false);
    tokio::pin!(shutdown);
    // Rate-limits the warning about failed accepts (a flood would repeat it).
    let mut warned_at: Option<tokio::time::Instant> = None;
    loop {
        // Connections told to close still hold descriptors: let them go before taking
        // more from the kernel's queue.
        table.wait_for_room(Duration::from_millis(200)).await;
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: make room by closing a
                    // connection that proved nothing, and back off instead of spinning.
                    let shed = table.shed_one();
                    if warned_at.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                        warned_at = Some(tokio::time::Instant::now());
                        tracing::warn!(error = %e, shed, open = table.open(), "accept failed");
                    }
                    let pause = if shed { 10 } else { 100 };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let ticket = match table.admit() {
            Admission::Admit(t) => t,
            Admission::Refuse => {
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        keepalive(&stream);
        let router = router.clone();
        let acceptor = acceptor.clone();
        let protocols = protocols.clone();
        let mut closing = closing.clone();
        tokio::spawn(async move {
            let conn = ticket.conn.clone();
            let svc = service(router, peer, conn.clone());
            // What serves the connection is boxed, sized to the protocol it serves: made in
            // this task's own state, the handshake and the two kinds of connection each
            // took room there (9.4 KB a connection, where serving HTTP/2 needs ~3). The
            // hyper connection is boxed on its own: moved into `connection`'s state, it
            // would take room twice (the argument, then where it is pinned).
            let serving: Pin<Box<dyn Future<Output = ()> + Send + '_>> = match acceptor {
                Some(acceptor) => {
                    let handshake = Box::pin(handshake(
                        &acceptor,
                        stream,
                        timeouts.handshake,
                        &conn,
                        &mut closing,
                        peer,
                    ));
                    let Some(tls) = handshake.await else {
                        return;
                    };
                    let c = protocols.serve_connection_with_upgrades(TokioIo::new(tls), svc);
                    Box::pin(connection(Box::pin(c), timeouts, &conn, closing, peer))
                }
                None => {
                    let c = protocols.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    Box::pin(connection(Box::pin(c), timeouts, &conn, closing, peer))
                }
            };
            serving.await;
            drop(ticket);
        });
    }
    drop(listener);
    closing_tx.send_replace(true);
    let drained = tokio::time::timeout(timeouts.drain, async {
        while !table.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::debug!("connections still open after the drain period; closing them");
    }
}

/// The per-connection service: the router, with the peer address and the connection in
/// each request's extensions, and the request counted as in progress until its response
/// has been sent (or abandoned).
fn service(
    router: Router,
    peer: SocketAddr,
    conn: Arc<Conn>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = axum::response::Response,
    Error = Infallible,
    Future: Send + 'static,
> + Send
+ 'static {
    hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let guard = conn.begin();
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(conn.clone());
        let mut router = router.clone();
        async move {
            let Ok(resp) = router.call(req).await;
            // The guard lives in the body, so the request stays in progress until the
            // last byte of the response is handed to hyper (or the client goes away).
            Ok::<_, Infallible>(resp.map(|b| {
                Body::new(b.map_frame(move |f| {
                    let _in_progress = &guard;
                    f
                }))
            }))
        }
    })
}

/// How every connection is served, made once. hyper tells HTTP/2 from HTTP/1.1 by the
/// first bytes the client sends (ALPN or not); a client that sends nothing is closed by the
/// header deadline (`connection`).
fn protocols(t: &Timeouts) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(t.header_read);
    builder
        .http2()
        .timer(TokioTimer::new())
        // No HTTP/2 PINGs: TCP keepalive (`keepalive`) finds dead peers for both HTTP
        // versions at a third of the bytes, and a PING answer is a device's uplink.
        .keep_alive_interval(None)
        .max_concurrent_streams(MAX_STREAMS)
        // h2 closes a connection once 20 streams the client reset wait to be accepted
        // (rapid-reset defence). Many agents multiplexed on one connection (a proxy, the
        // fleet simulator) reset that many in a burst under load, and losing the
        // connection drops every agent's poll on it: allow as many as may be open.
        .max_pending_accept_reset_streams(MAX_STREAMS as usize);
    builder
}

/// The TLS handshake, within `limit`; none if it failed, ran out of time, or the connection
/// was shed or the server is closing meanwhile.
async fn handshake(
    acceptor: &TlsAcceptor,
    stream: tokio::net::TcpStream,
    limit: Duration,
    conn: &Conn,
    closing: &mut watch::Receiver<bool>,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    tokio::select! {
        r = tokio::time::timeout(limit, acceptor.accept(stream)) => match r {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                None
            }
        },
        _ = conn.shed() => None,
        _ = closing.wait_for(|c| *c) => None,
    }
}

/// Serves connection `c` until it ends, is shed, stays idle past its deadline, or the
/// server stops (then it may finish what it is sending, within the drain period).
async fn connection<I, S>(
    mut c: Pin<Box<auto::UpgradeableConnection<'_, I, S, TokioExecutor>>>,
    t: Timeouts,
    conn: &Conn,
    mut closing: watch::Receiver<bool>,
    peer: SocketAddr,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = axum::response::Response,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    // Once the connection is told to close (idle, or the server stopping), it has
    // CLOSE_GRACE (or the drain period) to finish what it is sending.
    let mut closing_by: Option<tokio::time::Instant> = None;
    let mut stopping = false;
    // Made once and kept: this loop wakes at every frame the connection moves, and futures
    // made anew at each turn registered on (and left) the timer wheel and the server-wide
    // closing signal, which every connection shares.
    let shed = conn.shed();
    let went_idle = conn.went_idle();
    let stop = closing.wait_for(|c| *c);
    let timer = tokio::time::sleep(t.header_read);
    tokio::pin!(shed, went_idle, stop, timer);
    loop {
        // What the timer is for: the end of the grace once closing, otherwise the idle
        // deadline — none while a request is in progress (the end of the last one wakes
        // this loop through `went_idle`). Re-read at every wake-up: requests start
        // without telling this loop.
        let wake_at = closing_by.or_else(|| {
            (conn.idle_deadline(t.header_read, t.idle)).map(tokio::time::Instant::from_std)
        });
        if let Some(at) = wake_at
            && timer.deadline() != at
        {
            timer.as_mut().reset(at);
        }
        tokio::select! {
            r = c.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = &mut shed => {
                tracing::debug!(%peer, "connection shed to make room");
                return;
            }
            _ = &mut went_idle, if closing_by.is_none() => went_idle.set(conn.went_idle()),
            _ = &mut stop, if closing_by.is_none() => {
                stopping = true;
                c.as_mut().graceful_shutdown();
                closing_by = Some(tokio::time::Instant::now() + t.drain);
            }
            _ = &mut timer, if wake_at.is_some() => {
                if closing_by.is_some() {
                    // Closed for idleness, but a request slipped in just before: it runs to
                    // its end (its own deadlines bound it). A server stopping waits no
                    // longer.
                    if !stopping && conn.active() > 0 {
                        closing_by = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                        continue;
                    }
                    tracing::debug!(%peer, "connection did not close in time; dropping it");
                    return;
                }
                // Asked again: a request may have started since the deadline was read.
                let idle_at = conn.idle_deadline(t.header_read, t.idle);
                if idle_at.is_some_and(|at| at <= std::time::Instant::now()) {
                    if conn.requests() == 0 {
                        tracing::debug!(%peer, "no request within the header deadline; closing");
                    } else {
                        tracing::debug!(%peer, "idle connection; closing");
                    }
                    c.as_mut().graceful_shutdown();
                    closing_by = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                }
            }
        }
    }
}

/// TCP keepalive on every accepted connection: after 6 s without traffic the kernel probes,
/// and after two unanswered probes 1 s apart it closes the connection. A device that loses
/// power or its link so drops its open long-poll within 8 s, which is how the server tells
/// it is gone (`state::SYNC_GAP_S`). A probe and its answer are one empty segment each way
/// (52 bytes on the wire), cheaper than a request or an HTTP/2 PING over TLS; ten a minute
/// are ~70 bit/s of a device's uplink, the largest part of its idle cost.
fn keepalive(stream: &tokio::net::TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(6))
        .with_interval(Duration::from_secs(1))
        .with_retries(2);
    let sock = socket2::SockRef::from(stream);
    if let Err(e) = sock.set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
    // Keepalive probes only an idle connection. When the device went silent with data of
    // ours unacknowledged (an answer, an HTTP/2 frame), the kernel retransmits for many
    // minutes instead; this bounds that to 10 s as well.
    if let Err(e) = sock.set_tcp_user_timeout(Some(Duration::from_secs(10))) {
        tracing::debug!(error = %e, "cannot set TCP_USER_TIMEOUT");
    }
}
