//! Wire types of the security API: join tokens, node credential rotation, users, login,
//! user groups, device-group policies and the audit log. Kept apart from [`crate::api`] so
//! the desired-state protocol stays small.

use serde::{Deserialize, Serialize};

use crate::access::{Grants, GroupPolicy, Role};

/// `POST /api/v1/tokens`: a new join token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJoinToken {
    /// Nodes joining with it are put in exactly this device group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Lifetime in seconds; none means it never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
    #[serde(default)]
    pub description: String,
}

/// A join token as listed: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenInfo {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// `active`, `expired` or `revoked`.
    pub state: String,
    #[serde(default)]
    pub description: String,
}

/// The answer to `POST /api/v1/tokens`: the only time the token is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewJoinToken {
    #[serde(flatten)]
    pub info: JoinTokenInfo,
    /// `G10<CA fingerprint>::<secret>` over TLS, the bare secret over plain HTTP.
    pub token: String,
}

/// `POST /api/v1/nodes/{name}/rotate`: the node's new credential; the old one is dead.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotateResponse {
    pub node: String,
    pub token: String,
}

/// `POST /api/v1/login`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
    /// Session lifetime in seconds (default 12 h, at most 30 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    pub user: String,
    pub role: Role,
    pub token: String,
    pub expires_at: u64,
}

/// `GET /api/v1/whoami`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    /// `admin`, `user:NAME`, `node:NAME` or `join:ID`.
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
}

/// `POST /api/v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub name: String,
    pub role: Role,
    pub password: String,
    /// User groups whose grants apply.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A user as listed: never the password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub name: String,
    pub role: Role,
    pub groups: Vec<String>,
    pub created_at: u64,
}

/// A user group and its grants (`PUT /api/v1/user-groups/{name}` takes the grants).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserGroupInfo {
    pub name: String,
    pub grants: Grants,
    /// Users in the group.
    #[serde(default)]
    pub members: Vec<String>,
}

/// `PUT /api/v1/policies/{group}`.
pub type PolicyInfo = GroupPolicy;

/// One entry of the audit log, as stored and as served by `GET /api/v1/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Assigned by the store, increasing.
    #[serde(default)]
    pub id: u64,
    /// Unix seconds.
    pub at: u64,
    /// Who: `user:NAME`, `admin`, `node:NAME`, `join:ID`, or `anonymous`.
    pub actor: String,
    /// From where: the peer's IP address.
    pub address: String,
    /// What: `METHOD /path`.
    pub action: String,
    /// The object touched, as `KIND:NAME` (`app:web`, `node:cam-1`, `token:ID`, `user:ana`,
    /// `group:g`, `user-group:ops`, `policy:g`), or the kind alone when no name is known.
    pub object: String,
    pub allowed: bool,
    pub status: u16,
    /// The revision a change to the desired state made, when it made one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Why it was refused, when it was; never a request body.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}
