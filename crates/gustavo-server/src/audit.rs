//! The audit log: every request that may change something — who, what, when, from where,
//! and whether it was allowed — is stored. Reads (`GET`) and the agents' high-volume
//! syncs, heartbeats and status reports are not changes and are left out (a sync is a
//! `POST` a minute from every device: auditing it cost 5 % of the server's CPU at 10,000
//! agents and a row per device per minute).
//!
//! Entries carry the method, path, status and, for a refusal, the error message — never a
//! request body, so a secret in a spec cannot reach the log. They are written by one
//! background task in batches (one transaction each), so a burst of requests costs one
//! fsync, not one per request; reading the log first waits for what is queued.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gustavo_store::{AuditRecord, AuthStore};
use tokio::sync::{mpsc, oneshot};

use crate::{AppState, now};

/// The longest detail kept per entry.
const MAX_DETAIL: usize = 300;
/// Entries queued before a new one waits for room.
const QUEUE: usize = 10_000;

/// Set on a response by a handler or by [`crate::error::ApiError`] so the audit entry can
/// say why a request was refused.
#[derive(Debug, Clone)]
pub struct ErrorNote(pub String);

/// Set on a response by a handler: the object a request touched (`app:web`) when the path
/// does not name it (a create names it in the body), and the revision a change made.
#[derive(Debug, Clone)]
pub struct ObjectNote {
    pub object: Option<String>,
    pub revision: Option<u64>,
}

/// Marks a handler's answer, success or refusal, with what it touched for the audit log.
pub fn noted(resp: impl IntoResponse, object: Option<String>, revision: Option<u64>) -> Response {
    let mut resp = resp.into_response();
    resp.extensions_mut()
        .insert(ObjectNote { object, revision });
    resp
}

/// The object a request path names: `/api/v1/apps/web/stop` → `app:web`; a collection
/// alone (`POST /api/v1/apps`) gives its kind.
pub fn object_of(path: &str) -> String {
    let rest = path
        .strip_prefix("/api/v1/")
        .unwrap_or(path)
        .trim_end_matches('/');
    let mut parts = rest.split('/');
    let kind = match parts.next().unwrap_or_default() {
        "apps" => "app",
        "nodes" => "node",
        "groups" => "group",
        "tokens" => "token",
        "users" => "user",
        "user-groups" => "user-group",
        "policies" => "policy",
        "jobs" => "job",
        "login" | "logout" => "session",
        other => return other.to_string(),
    };
    match parts.next() {
        Some(name) if !name.is_empty() && name != "register" => format!("{kind}:{name}"),
        _ => kind.to_string(),
    }
}

/// Set on a response by a handler that knows better who acted (login: the user named in
/// the body, since no token was presented).
#[derive(Debug, Clone)]
pub struct ActorNote(pub String);

enum Msg {
    Entry(AuditRecord),
    Flush(oneshot::Sender<()>),
}

pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
}

impl AuditLog {
    /// Starts the writer task (needs a tokio runtime).
    pub fn start(store: Arc<dyn AuthStore>) -> AuditLog {
        let (tx, mut rx) = mpsc::channel::<Msg>(QUEUE);
        tokio::spawn(async move {
            let mut buf = Vec::new();
            while rx.recv_many(&mut buf, 4096).await > 0 {
                let mut entries = Vec::new();
                let mut waiters = Vec::new();
                for m in buf.drain(..) {
                    match m {
                        Msg::Entry(e) => entries.push(e),
                        Msg::Flush(w) => waiters.push(w),
                    }
                }
                if !entries.is_empty() {
                    let store = store.clone();
                    let n = entries.len();
                    let r = tokio::task::spawn_blocking(move || store.append_audit(&entries)).await;
                    match r {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, lost = n, "cannot write the audit log")
                        }
                        Err(e) => tracing::error!(error = %e, lost = n, "audit writer failed"),
                    }
                }
                for w in waiters {
                    let _ = w.send(());
                }
            }
        });
        AuditLog { tx }
    }

    /// Queues an entry, waiting while the queue is full: a burst of audited requests
    /// (100,000 devices joining) is slowed to what the log can write, never dropped.
    pub async fn record(&self, entry: AuditRecord) {
        if self.tx.send(Msg::Entry(entry)).await.is_err() {
            tracing::error!("the audit writer has stopped; an entry was dropped");
        }
    }

    /// Waits until everything queued so far is on disk.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Whether a request is a change worth an audit entry.
fn audited(method: &Method, path: &str) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        && !path.ends_with("/heartbeat")
        && !path.ends_with("/status")
        && !path.ends_with("/sync")
        && !path.ends_with("/stream")
}

/// Middleware: runs the request, then records it.
pub async fn record(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if !audited(&method, &path) {
        return next.run(req).await;
    }
    let address = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let actor = crate::auth::actor_of(&s, req.headers(), req.extensions());
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let actor = resp
        .extensions()
        .get::<ActorNote>()
        .map(|a| a.0.clone())
        .unwrap_or(actor);
    let mut detail = resp
        .extensions()
        .get::<ErrorNote>()
        .map(|n| n.0.clone())
        .unwrap_or_default();
    if detail.len() > MAX_DETAIL {
        let mut cut = MAX_DETAIL;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
    }
    let note = resp.extensions().get::<ObjectNote>();
    let object = note
        .and_then(|n| n.object.clone())
        .unwrap_or_else(|| object_of(&path));
    let revision = note.and_then(|n| n.revision);
    s.sec
        .audit
        .record(AuditRecord {
            id: 0,
            at: now(),
            actor,
            address,
            action: format!("{method} {path}"),
            object,
            allowed: status < 400,
            status,
            detail,
            revision,
        })
        .await;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_protocol_is_not_audited() {
        for path in [
            "/api/v1/nodes/n1/sync",
            "/api/v1/nodes/n1/heartbeat",
            "/api/v1/nodes/n1/status",
        ] {
            assert!(!audited(&Method::POST, path), "{path}");
        }
        assert!(audited(&Method::POST, "/api/v1/apps"));
        assert!(audited(&Method::POST, "/api/v1/nodes/register"));
    }

    /// A burst far larger than the queue (100,000 devices joining) is slowed, never lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_past_the_queue_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(gustavo_store::SqliteStore::open(&dir.path().join("g.db")).unwrap());
        let log = AuditLog::start(store.clone());
        let n = QUEUE * 3;
        for i in 0..n {
            log.record(AuditRecord {
                id: 0,
                at: 1,
                actor: "join".into(),
                address: "127.0.0.1".into(),
                action: "POST /api/v1/nodes/register".into(),
                object: format!("node:n{i}"),
                allowed: true,
                status: 200,
                detail: String::new(),
                revision: None,
            })
            .await;
        }
        log.flush().await;
        let newest = store
            .read_audit(&gustavo_store::AuditQuery {
                limit: 1,
                ..Default::default()
            })
            .unwrap();
        // Ids count every row written.
        assert_eq!(newest[0].id as usize, n);
        assert_eq!(newest[0].object, format!("node:n{}", n - 1));
    }

    #[test]
    fn objects_from_paths() {
        assert_eq!(object_of("/api/v1/apps/web/stop"), "app:web");
        assert_eq!(object_of("/api/v1/apps"), "app");
        assert_eq!(object_of("/api/v1/nodes/register"), "node");
        assert_eq!(object_of("/api/v1/nodes/cam-1/rotate"), "node:cam-1");
        assert_eq!(object_of("/api/v1/tokens/ab12"), "token:ab12");
        assert_eq!(object_of("/api/v1/user-groups/ops"), "user-group:ops");
        assert_eq!(object_of("/api/v1/login"), "session");
        assert_eq!(object_of("/api/v1/elsewhere"), "elsewhere");
    }
}
