//! Client calls for the security API: join tokens, node credential rotation, login, users,
//! user groups, device-group policies and the audit log.

use gustavo_model::access::{Grants, GroupPolicy, Privilege, Role};
use gustavo_model::auth_api::{
    AuditEntry, CreateJoinToken, CreateUser, JoinTokenInfo, LoginRequest, LoginResponse,
    NewJoinToken, RotateResponse, UserGroupInfo, UserInfo, WhoAmI,
};
use reqwest::Method;

use crate::{Client, ClientError};

/// Filters for [`Client::audit`].
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub since: Option<u64>,
    pub user: Option<String>,
    pub object: Option<String>,
    pub limit: Option<usize>,
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        self.call(Method::GET, "/api/v1/whoami", Self::NONE).await
    }

    pub async fn login(
        &self,
        user: &str,
        password: &str,
        ttl_s: Option<u64>,
    ) -> Result<LoginResponse, ClientError> {
        let body = LoginRequest {
            user: user.into(),
            password: password.into(),
            ttl_s,
        };
        self.call(Method::POST, "/api/v1/login", Some(&body)).await
    }

    pub async fn logout(&self) -> Result<(), ClientError> {
        self.call_empty(Method::POST, "/api/v1/logout", Self::NONE)
            .await
    }

    pub async fn create_join_token(
        &self,
        req: &CreateJoinToken,
    ) -> Result<NewJoinToken, ClientError> {
        self.call(Method::POST, "/api/v1/tokens", Some(req)).await
    }

    pub async fn list_join_tokens(&self) -> Result<Vec<JoinTokenInfo>, ClientError> {
        self.call(Method::GET, "/api/v1/tokens", Self::NONE).await
    }

    pub async fn revoke_join_token(&self, id: &str) -> Result<(), ClientError> {
        self.call_empty(Method::DELETE, &format!("/api/v1/tokens/{id}"), Self::NONE)
            .await
    }

    /// Asks for a new node credential (with the node's current one); the old one dies.
    pub async fn rotate(&self, node: &str) -> Result<RotateResponse, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/v1/nodes/{node}/rotate"),
            Self::NONE,
        )
        .await
    }

    pub async fn list_users(&self) -> Result<Vec<UserInfo>, ClientError> {
        self.call(Method::GET, "/api/v1/users", Self::NONE).await
    }

    pub async fn create_user(
        &self,
        name: &str,
        role: Role,
        password: &str,
        groups: &[String],
    ) -> Result<UserInfo, ClientError> {
        let body = CreateUser {
            name: name.into(),
            role,
            password: password.into(),
            groups: groups.to_vec(),
        };
        self.call(Method::POST, "/api/v1/users", Some(&body)).await
    }

    pub async fn delete_user(&self, name: &str) -> Result<(), ClientError> {
        self.call_empty(Method::DELETE, &format!("/api/v1/users/{name}"), Self::NONE)
            .await
    }

    pub async fn list_user_groups(&self) -> Result<Vec<UserGroupInfo>, ClientError> {
        self.call(Method::GET, "/api/v1/user-groups", Self::NONE)
            .await
    }

    pub async fn put_user_group(
        &self,
        name: &str,
        grants: &Grants,
    ) -> Result<UserGroupInfo, ClientError> {
        self.call(
            Method::PUT,
            &format!("/api/v1/user-groups/{name}"),
            Some(grants),
        )
        .await
    }

    pub async fn delete_user_group(&self, name: &str) -> Result<(), ClientError> {
        self.call_empty(
            Method::DELETE,
            &format!("/api/v1/user-groups/{name}"),
            Self::NONE,
        )
        .await
    }

    pub async fn list_policies(&self) -> Result<Vec<GroupPolicy>, ClientError> {
        self.call(Method::GET, "/api/v1/policies", Self::NONE).await
    }

    pub async fn put_policy(
        &self,
        group: &str,
        allow: &[Privilege],
        images: &[String],
    ) -> Result<GroupPolicy, ClientError> {
        let body = serde_json::json!({ "allow": allow, "images": images });
        self.call(
            Method::PUT,
            &format!("/api/v1/policies/{group}"),
            Some(&body),
        )
        .await
    }

    pub async fn delete_policy(&self, group: &str) -> Result<(), ClientError> {
        self.call_empty(
            Method::DELETE,
            &format!("/api/v1/policies/{group}"),
            Self::NONE,
        )
        .await
    }

    pub async fn audit(&self, f: &AuditFilter) -> Result<Vec<AuditEntry>, ClientError> {
        let mut q = Vec::new();
        if let Some(s) = f.since {
            q.push(format!("since={s}"));
        }
        if let Some(u) = &f.user {
            q.push(format!("user={}", encode(u)));
        }
        if let Some(o) = &f.object {
            q.push(format!("object={}", encode(o)));
        }
        if let Some(l) = f.limit {
            q.push(format!("limit={l}"));
        }
        let path = if q.is_empty() {
            "/api/v1/audit".to_string()
        } else {
            format!("/api/v1/audit?{}", q.join("&"))
        };
        self.call(Method::GET, &path, Self::NONE).await
    }
}
