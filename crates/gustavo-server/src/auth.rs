//! Bearer tokens. Four kinds: the bootstrap admin token (`<data-dir>/admin-token`), users'
//! session tokens (from `login`), join tokens (agents registering), and one token per node
//! (issued at registration, rotated by the node). Only SHA-256 hashes are
//! kept in memory and in the store, and a token is found by its hash in O(1) — never by
//! scanning users with a slow hash per request (Nebula's mistake). Authentication runs
//! before any handler or cache (Nebula served cached answers unauthenticated).

use std::path::Path;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use gustavo_model::access::{JoinToken, Role, Subject};
use gustavo_store::TokenKind;

use crate::conns::{Conn, Credential};
use crate::error::ApiError;
use crate::security::{Lookup, bootstrap_admin};
use crate::{AppState, now};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The bootstrap admin token from the data dir.
    Admin,
    /// A person, by a session token from `login` or `users create`.
    User(Subject),
    /// A join token; nodes registering with it are put in `group` when it is set.
    Join {
        id: String,
        group: Option<String>,
    },
    Node(String),
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token with a readable kind prefix, e.g. `gus_node_3f…`.
pub fn new_token(kind: &str) -> String {
    gustavo_model::api::make_token(kind, rand::random())
}

/// Reads the token kept in `path`, or creates one (mode 0600) on first start.
pub fn load_or_create(path: &Path, kind: &str) -> std::io::Result<(String, bool)> {
    let create = || {
        let token = new_token(kind);
        write_private(path, &format!("{token}\n"))?;
        Ok((token, true))
    };
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok((s.trim().to_string(), false)),
        Ok(_) => create(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(),
        Err(e) => Err(e),
    }
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Finds who presents `token`. Unknown, expired and revoked tokens are told apart, so a
/// person knows to log in again or to ask for a new one.
pub fn authenticate(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    // A join token's secret follows the CA fingerprint; agents send the secret alone, but
    // accept the whole token too.
    let secret = JoinToken::parse(token)
        .map(|t| t.secret)
        .unwrap_or_else(|_| token.to_string());
    let h = hash_token(&secret);
    if h == state.sec.admin_hash {
        return Ok(Principal::Admin);
    }
    match state.sec.lookup(&h, now()) {
        Lookup::Token(t) => match t.kind {
            TokenKind::Join => {
                return Ok(Principal::Join {
                    id: t.id,
                    group: t.group,
                });
            }
            TokenKind::Session => {
                let user = t.user.unwrap_or_default();
                return state.sec.subject(&user).map(Principal::User).ok_or(
                    ApiError::TokenRefused("belongs to a user that no longer exists"),
                );
            }
        },
        Lookup::Dead(t) if t.revoked => return Err(ApiError::TokenRefused("was revoked")),
        Lookup::Dead(_) => return Err(ApiError::TokenRefused("has expired")),
        Lookup::Unknown => {}
    }
    match state.shared.read().node_by_token_hash(&h) {
        Some(node) => Ok(Principal::Node(node.to_string())),
        None => Err(ApiError::TokenRefused(
            "is not known to this server (mistyped, or another server's)",
        )),
    }
}

fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Who a request's bearer token names (`None`: no token), found once per request by the
/// [`identify`] middleware and read by both the `Principal` extractor and the audit log.
#[derive(Debug, Clone)]
pub struct Identity(pub Option<Result<Principal, ApiError>>);

/// Middleware: authenticates the request once, before anything else looks at it.
pub async fn identify(
    axum::extract::State(s): axum::extract::State<AppState>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let id = bearer(req.headers()).map(|t| authenticate(&s, t));
    req.extensions_mut().insert(Identity(id));
    next.run(req).await
}

/// The request's identity: the one [`identify`] found, or found now (a router used
/// without the middleware, as in unit tests).
fn identity_of(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    ext: &axum::http::Extensions,
) -> Option<Result<Principal, ApiError>> {
    match ext.get::<Identity>() {
        Some(Identity(id)) => id.clone(),
        None => bearer(headers).map(|t| authenticate(state, t)),
    }
}

/// Who the audit log names for a request: the principal, or `anonymous`.
pub fn actor_of(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    ext: &axum::http::Extensions,
) -> String {
    match identity_of(state, headers, ext) {
        Some(Ok(p)) => p.actor(),
        Some(Err(_)) => "invalid-token".into(),
        None => "anonymous".into(),
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let p = identity_of(state, &parts.headers, &parts.extensions)
            .ok_or(ApiError::Unauthenticated)??;
        // The connection has proven something: under pressure it is shed after those that
        // have not (see `conns`). On a connection let in past the cap, only admins go on.
        if let Some(conn) = parts.extensions.get::<Arc<Conn>>() {
            conn.credential(if p.is_admin() {
                Credential::Admin
            } else {
                Credential::Valid
            });
            if conn.admin_only() && !p.is_admin() {
                return Err(ApiError::Unavailable(
                    "the server is at its connection limit (--max-connections); only admins are let in until connections free up",
                ));
            }
        }
        Ok(p)
    }
}

impl Principal {
    /// How the audit log names this principal.
    pub fn actor(&self) -> String {
        match self {
            Principal::Admin => "admin".into(),
            Principal::User(s) => format!("user:{}", s.name),
            Principal::Join { id, .. } => format!("join:{id}"),
            Principal::Node(n) => format!("node:{n}"),
        }
    }

    /// The person behind a request, as role plus grants; agents and join tokens are none.
    pub fn person(&self) -> Result<Subject, ApiError> {
        match self {
            Principal::Admin => Ok(bootstrap_admin()),
            Principal::User(s) => Ok(s.clone()),
            _ => Err(ApiError::Forbidden("act for a person")),
        }
    }

    pub fn is_admin(&self) -> bool {
        match self {
            Principal::Admin => true,
            Principal::User(s) => s.role == Role::Admin,
            _ => false,
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden("manage the cluster"))
        }
    }

    /// A node may act only on itself; an admin may act for any node.
    pub fn require_node(&self, name: &str) -> Result<(), ApiError> {
        match self {
            Principal::Node(n) if n == name => Ok(()),
            p if p.is_admin() => Ok(()),
            _ => Err(ApiError::Forbidden("act for this node")),
        }
    }
}
