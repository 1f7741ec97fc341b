//! Durable security state, kept apart from the desired state: join tokens and user
//! sessions (only their SHA-256 hashes), users (argon2 password hashes), user groups with
//! their grants, per-device-group policies, and the audit log.
//!
//! None of it takes a revision: changing who may act changes nothing a node must run, so
//! it never wakes agents. Commits are atomic and durable like [`crate::Store::commit`].

use gustavo_model::access::{Grants, GroupPolicy, Role};
use serde::{Deserialize, Serialize};

use crate::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// Lets an agent register (`POST /nodes/register`).
    Join,
    /// A person's API token, from `gustavo login` or `users create`.
    Session,
}

/// A bearer token as stored: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// A short public name for listing and revoking (a prefix of the hash).
    pub id: String,
    /// SHA-256 (hex) of the secret.
    pub hash: String,
    pub kind: TokenKind,
    /// The user a session belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// For a join token: the device group a node joining with it is put in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub created_at: u64,
    /// Unix seconds; `None` never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(default)]
    pub revoked: bool,
    #[serde(default)]
    pub description: String,
}

impl TokenRecord {
    pub fn usable_at(&self, now: u64) -> bool {
        !self.revoked && self.expires_at.is_none_or(|e| now < e)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    pub role: Role,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// The user groups whose grants apply.
    #[serde(default)]
    pub groups: Vec<String>,
    pub created_at: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserGroupRecord {
    pub name: String,
    #[serde(default)]
    pub grants: Grants,
}

/// One entry of the audit log: the API's own type, stored as it is served.
pub use gustavo_model::auth_api::AuditEntry as AuditRecord;

/// Filters for reading the audit log; every field narrows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub since: Option<u64>,
    /// Matches the actor exactly, or `user:NAME` when given a bare name.
    pub actor: Option<String>,
    /// Matches objects that start with it (`app:web` or `app:`).
    pub object: Option<String>,
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AuthChange {
    PutToken(TokenRecord),
    /// Forgets a token by its hash (expired sessions are pruned at start).
    DeleteToken(String),
    PutUser(UserRecord),
    DeleteUser(String),
    PutUserGroup(UserGroupRecord),
    DeleteUserGroup(String),
    PutPolicy(GroupPolicy),
    DeletePolicy(String),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthSnapshot {
    pub tokens: Vec<TokenRecord>,
    pub users: Vec<UserRecord>,
    pub user_groups: Vec<UserGroupRecord>,
    pub policies: Vec<GroupPolicy>,
}

pub trait AuthStore: Send + Sync + 'static {
    fn load_auth(&self) -> Result<AuthSnapshot, StoreError>;
    /// Applies every change or none; durable when it returns.
    fn commit_auth(&self, changes: &[AuthChange]) -> Result<(), StoreError>;
    /// Appends entries in one transaction.
    fn append_audit(&self, entries: &[AuditRecord]) -> Result<(), StoreError>;
    /// The newest `limit` matching entries, oldest first.
    fn read_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;
}
