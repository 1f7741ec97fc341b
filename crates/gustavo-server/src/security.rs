//! The security state the server keeps in memory, loaded from the [`AuthStore`] at start:
//! join tokens and user sessions by the SHA-256 of their secret (so a bearer token is found
//! with one hash and one map lookup, never by checking every user's slow hash — Nebula's
//! mistake), users, user groups with their grants, and device-group policies.
//!
//! Changes follow the desired state's rule: commit to the store first, then apply in
//! memory, so the API never shows what is not on disk.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use gustavo_model::access::{Grants, GroupPolicy, Role, Subject};
use gustavo_store::{
    AuthChange, AuthStore, StoreError, TokenKind, TokenRecord, UserGroupRecord, UserRecord,
};

use crate::audit::AuditLog;
use crate::error::ApiError;
use crate::limits::LoginLimiter;

/// The CA clients trust, when the server speaks TLS.
#[derive(Debug, Clone)]
pub struct CaInfo {
    pub pem: String,
    pub fingerprint: String,
}

#[derive(Default)]
struct Inner {
    tokens: HashMap<String, TokenRecord>,
    users: BTreeMap<String, UserRecord>,
    user_groups: BTreeMap<String, UserGroupRecord>,
    policies: BTreeMap<String, GroupPolicy>,
}

/// What a token hash turned out to be.
pub enum Lookup {
    Token(TokenRecord),
    /// Known, but past its expiry or revoked.
    Dead(TokenRecord),
    Unknown,
}

pub struct Security {
    pub store: Arc<dyn AuthStore>,
    /// SHA-256 of the bootstrap admin token (`<data-dir>/admin-token`).
    pub admin_hash: String,
    pub ca: Option<CaInfo>,
    pub login: LoginLimiter,
    /// Bounds concurrent password hashing: argon2 takes ~19 MiB and tens of ms each.
    pub hashing: tokio::sync::Semaphore,
    pub audit: AuditLog,
    inner: RwLock<Inner>,
}

impl Security {
    pub fn load(
        store: Arc<dyn AuthStore>,
        admin_hash: String,
        ca: Option<CaInfo>,
    ) -> Result<Security, StoreError> {
        let snap = store.load_auth()?;
        let mut inner = Inner::default();
        for t in snap.tokens {
            inner.tokens.insert(t.hash.clone(), t);
        }
        for u in snap.users {
            inner.users.insert(u.name.clone(), u);
        }
        for g in snap.user_groups {
            inner.user_groups.insert(g.name.clone(), g);
        }
        for p in snap.policies {
            inner.policies.insert(p.group.clone(), p);
        }
        let audit = AuditLog::start(store.clone());
        let sec = Security {
            store,
            admin_hash,
            ca,
            login: LoginLimiter::default(),
            hashing: tokio::sync::Semaphore::new(2),
            audit,
            inner: RwLock::new(inner),
        };
        sec.prune_sessions(crate::now());
        Ok(sec)
    }

    /// Forgets sessions that ended (expired or revoked) more than a day ago, so they do not
    /// pile up. Join tokens are kept, for `tokens list`.
    fn prune_sessions(&self, now: u64) {
        let dead: Vec<AuthChange> = self
            .read()
            .tokens
            .values()
            .filter(|t| {
                t.kind == TokenKind::Session
                    && (t.revoked || t.expires_at.is_some_and(|e| e + 86_400 < now))
            })
            .map(|t| AuthChange::DeleteToken(t.hash.clone()))
            .collect();
        if !dead.is_empty()
            && let Err(e) = self.commit_blocking(dead)
        {
            tracing::warn!(error = %e, "cannot prune old sessions");
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn lookup(&self, hash: &str, now: u64) -> Lookup {
        match self.read().tokens.get(hash) {
            Some(t) if t.usable_at(now) => Lookup::Token(t.clone()),
            Some(t) => Lookup::Dead(t.clone()),
            None => Lookup::Unknown,
        }
    }

    /// A user's role and the union of their user groups' grants.
    pub fn subject(&self, user: &str) -> Option<Subject> {
        let inner = self.read();
        let u = inner.users.get(user)?;
        let mut grants = Grants::default();
        for g in &u.groups {
            if let Some(ug) = inner.user_groups.get(g) {
                grants.merge(&ug.grants);
            }
        }
        Some(Subject {
            name: u.name.clone(),
            role: u.role,
            grants,
        })
    }

    pub fn user(&self, name: &str) -> Option<UserRecord> {
        self.read().users.get(name).cloned()
    }

    pub fn users(&self) -> Vec<UserRecord> {
        self.read().users.values().cloned().collect()
    }

    pub fn user_groups(&self) -> Vec<UserGroupRecord> {
        self.read().user_groups.values().cloned().collect()
    }

    pub fn join_tokens(&self) -> Vec<TokenRecord> {
        let mut v: Vec<TokenRecord> = self
            .read()
            .tokens
            .values()
            .filter(|t| t.kind == TokenKind::Join)
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        v
    }

    pub fn token_by_id(&self, id: &str) -> Option<TokenRecord> {
        self.read().tokens.values().find(|t| t.id == id).cloned()
    }

    /// Every unrevoked session of a user.
    pub fn sessions_of(&self, user: &str) -> Vec<TokenRecord> {
        self.read()
            .tokens
            .values()
            .filter(|t| {
                t.kind == TokenKind::Session && t.user.as_deref() == Some(user) && !t.revoked
            })
            .cloned()
            .collect()
    }

    pub fn policies(&self) -> BTreeMap<String, GroupPolicy> {
        self.read().policies.clone()
    }

    pub fn has_any_token(&self) -> bool {
        !self.read().tokens.is_empty()
    }

    /// Commits `changes`, then applies them in memory. Blocks on the disk: call it from a
    /// blocking thread (see [`Security::commit`]).
    pub fn commit_blocking(&self, changes: Vec<AuthChange>) -> Result<(), ApiError> {
        if changes.is_empty() {
            return Ok(());
        }
        // The write lock is held across the commit so two changes apply in commit order.
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        self.store.commit_auth(&changes).map_err(|e| {
            tracing::error!(error = %e, "security commit failed; nothing changed");
            ApiError::Internal(format!("storage failed, nothing was changed: {e}"))
        })?;
        for c in changes {
            match c {
                AuthChange::PutToken(t) => {
                    inner.tokens.insert(t.hash.clone(), t);
                }
                AuthChange::DeleteToken(h) => {
                    inner.tokens.remove(&h);
                }
                AuthChange::PutUser(u) => {
                    inner.users.insert(u.name.clone(), u);
                }
                AuthChange::DeleteUser(n) => {
                    inner.users.remove(&n);
                }
                AuthChange::PutUserGroup(g) => {
                    inner.user_groups.insert(g.name.clone(), g);
                }
                AuthChange::DeleteUserGroup(n) => {
                    inner.user_groups.remove(&n);
                }
                AuthChange::PutPolicy(p) => {
                    inner.policies.insert(p.group.clone(), p);
                }
                AuthChange::DeletePolicy(n) => {
                    inner.policies.remove(&n);
                }
            }
        }
        Ok(())
    }

    pub async fn commit(self: &Arc<Self>, changes: Vec<AuthChange>) -> Result<(), ApiError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.commit_blocking(changes))
            .await
            .map_err(|e| ApiError::Internal(format!("commit task failed: {e}")))?
    }
}

/// A new token record for `secret`, with a short public id.
pub fn token_record(
    secret: &str,
    kind: TokenKind,
    user: Option<String>,
    group: Option<String>,
    now: u64,
    ttl_s: Option<u64>,
    description: String,
) -> TokenRecord {
    let hash = crate::auth::hash_token(secret);
    TokenRecord {
        id: hash[..12].to_string(),
        hash,
        kind,
        user,
        group,
        created_at: now,
        expires_at: ttl_s.map(|t| now.saturating_add(t)),
        revoked: false,
        description,
    }
}

/// Argon2id with the crate's defaults (about 19 MiB, 2 passes); the salt is made inside.
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    use argon2::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("cannot hash the password: {e}")))
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::PasswordVerifier;
    argon2::Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

/// A subject for the bootstrap admin token.
pub fn bootstrap_admin() -> Subject {
    Subject {
        name: "admin".into(),
        role: Role::Admin,
        grants: Grants::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ended_sessions_are_pruned_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn AuthStore> =
            Arc::new(gustavo_store::SqliteStore::open(&dir.path().join("db")).unwrap());
        let now = crate::now();
        let old = token_record(
            "a",
            TokenKind::Session,
            Some("u".into()),
            None,
            now - 3 * 86_400,
            Some(60),
            String::new(),
        );
        let live = token_record(
            "b",
            TokenKind::Session,
            Some("u".into()),
            None,
            now,
            Some(600),
            String::new(),
        );
        let mut revoked = token_record(
            "c",
            TokenKind::Session,
            Some("u".into()),
            None,
            now,
            Some(600),
            String::new(),
        );
        revoked.revoked = true;
        let mut join = token_record(
            "d",
            TokenKind::Join,
            None,
            None,
            now - 3 * 86_400,
            Some(60),
            String::new(),
        );
        join.revoked = true;
        store
            .commit_auth(&[old, live.clone(), revoked, join.clone()].map(AuthChange::PutToken))
            .unwrap();
        let sec = Security::load(store.clone(), String::new(), None).unwrap();
        let mut kept: Vec<String> = store
            .load_auth()
            .unwrap()
            .tokens
            .into_iter()
            .map(|t| t.hash)
            .collect();
        kept.sort();
        let mut want = vec![live.hash.clone(), join.hash.clone()];
        want.sort();
        assert_eq!(kept, want);
        assert!(matches!(sec.lookup(&live.hash, now), Lookup::Token(_)));
        assert!(matches!(sec.lookup(&join.hash, now), Lookup::Dead(_)));
    }

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a hash"));
        // Each hash has its own salt.
        assert_ne!(h, hash_password("correct horse").unwrap());
    }
}
