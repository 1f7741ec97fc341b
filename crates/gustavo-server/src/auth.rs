//! Bearer tokens. Three kinds: the admin token (people and scripts), the join token (agents
//! registering), and one token per node (issued at registration). Only SHA-256 hashes are
//! kept in memory and in the store, and a token is found by its hash in O(1) — never by
//! scanning users with a slow hash per request (Nebula's mistake). Authentication runs
//! before any handler or cache (Nebula served cached answers unauthenticated).

use std::path::Path;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::ApiError;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Join,
    Node(String),
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token with a readable kind prefix, e.g. `gus_node_3f…`.
pub fn new_token(kind: &str) -> String {
    let bytes: [u8; 24] = rand::random();
    format!("gus_{kind}_{}", hex::encode(bytes))
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

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthenticated)?;
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthenticated)?;
        let h = hash_token(token);
        if h == state.admin_hash {
            return Ok(Principal::Admin);
        }
        if h == state.join_hash {
            return Ok(Principal::Join);
        }
        match state.shared.read().node_by_token_hash(&h) {
            Some(node) => Ok(Principal::Node(node.to_string())),
            None => Err(ApiError::Unauthenticated),
        }
    }
}

impl Principal {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            _ => Err(ApiError::Forbidden("manage the cluster")),
        }
    }

    /// A node may act only on itself.
    pub fn require_node(&self, name: &str) -> Result<(), ApiError> {
        match self {
            Principal::Node(n) if n == name => Ok(()),
            Principal::Admin => Ok(()),
            _ => Err(ApiError::Forbidden("act for this node")),
        }
    }
}
