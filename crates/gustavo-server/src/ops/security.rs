//! Security operations: login and logout, join tokens, node credential rotation, users,
//! user groups (grants), device-group policies and the audit log. All but login, logout
//! and rotation are for admins only.

use std::net::IpAddr;
use std::sync::LazyLock;

use gustavo_model::access::{ANY, Grants, GroupPolicy, JoinToken, Privilege};
use gustavo_model::auth_api::{
    AuditEntry, CreateJoinToken, CreateUser, JoinTokenInfo, LoginRequest, LoginResponse,
    NewJoinToken, RotateResponse, UserGroupInfo, UserInfo,
};
use gustavo_model::{names, spec};
use gustavo_store::{
    AuditQuery, AuthChange, Change, TokenKind, TokenRecord, UserGroupRecord, UserRecord,
};

use super::{OpError, Ops, check_name};
use crate::auth::{Principal, hash_token, new_token};
use crate::now;
use crate::security::{hash_password, token_record, verify_password};

/// Sessions last this long unless the login asks for less (or more, up to the maximum).
pub const SESSION_TTL_S: u64 = 12 * 3600;
pub const MAX_SESSION_TTL_S: u64 = 30 * 24 * 3600;
pub const MIN_PASSWORD: usize = 8;

/// Checked when the user does not exist, so the answer takes as long as for a wrong
/// password and does not tell which names exist.
static DUMMY_HASH: LazyLock<String> =
    LazyLock::new(|| hash_password("not a real password").unwrap_or_default());

fn token_info(t: &TokenRecord, now: u64) -> JoinTokenInfo {
    let state = if t.revoked {
        "revoked"
    } else if !t.usable_at(now) {
        "expired"
    } else {
        "active"
    };
    JoinTokenInfo {
        id: t.id.clone(),
        group: t.group.clone(),
        created_at: t.created_at,
        expires_at: t.expires_at,
        state: state.into(),
        description: t.description.clone(),
    }
}

fn user_info(u: &UserRecord) -> UserInfo {
    UserInfo {
        name: u.name.clone(),
        role: u.role,
        groups: u.groups.clone(),
        created_at: u.created_at,
    }
}

fn group_info(g: &UserGroupRecord, users: &[UserRecord]) -> UserGroupInfo {
    UserGroupInfo {
        name: g.name.clone(),
        grants: g.grants.clone(),
        members: users
            .iter()
            .filter(|u| u.groups.contains(&g.name))
            .map(|u| u.name.clone())
            .collect(),
    }
}

/// A device-group policy as asked for: the privileges allowed and the image allowlist.
#[derive(Debug, Clone, Default)]
pub struct PolicyInput {
    pub allow: Vec<Privilege>,
    pub images: Vec<String>,
}

impl Ops {
    // ---- login ----------------------------------------------------------------------

    /// Password to session token, throttled per user name and address.
    pub async fn login(&self, from: IpAddr, req: LoginRequest) -> Result<LoginResponse, OpError> {
        let sec = &self.sec;
        let address = from.to_string();
        // Throttling keys on the name only when it is a valid one, so a flood of long or
        // random names costs one key per address, not one per name.
        let valid = names::validate("user", &req.user).is_ok() && req.password.len() <= 1024;
        let key = if valid { req.user.as_str() } else { "" };
        if let Some(wait) = sec.login.check(key, &address, now()) {
            return Err(OpError::TooManyRequests(wait));
        }
        if !valid {
            sec.login.failed(key, &address, now());
            return Err(OpError::BadLogin);
        }
        let user = sec.user(&req.user);
        let hash = user
            .as_ref()
            .map(|u| u.password_hash.clone())
            .unwrap_or_else(|| DUMMY_HASH.clone());
        let ok = {
            let _permit = sec
                .hashing
                .acquire()
                .await
                .map_err(|_| OpError::Unavailable("the server is shutting down"))?;
            let password = req.password.clone();
            tokio::task::spawn_blocking(move || verify_password(&password, &hash))
                .await
                .unwrap_or(false)
        };
        let Some(user) = user.filter(|_| ok) else {
            sec.login.failed(&req.user, &address, now());
            return Err(OpError::BadLogin);
        };
        sec.login.succeeded(&user.name);
        let ttl = req
            .ttl_s
            .unwrap_or(SESSION_TTL_S)
            .clamp(60, MAX_SESSION_TTL_S);
        let secret = new_token("user");
        let t = now();
        let rec = token_record(
            &secret,
            TokenKind::Session,
            Some(user.name.clone()),
            None,
            t,
            Some(ttl),
            format!("login from {address}"),
        );
        let expires_at = rec.expires_at.unwrap_or(t + ttl);
        sec.commit(vec![AuthChange::PutToken(rec)]).await?;
        tracing::info!(user = %user.name, %address, "logged in");
        Ok(LoginResponse {
            user: user.name,
            role: user.role,
            token: secret,
            expires_at,
        })
    }

    /// Revokes the session token `token`, which `p` presented.
    pub async fn logout(&self, p: &Principal, token: &str) -> Result<(), OpError> {
        if !matches!(p, Principal::User(_)) {
            return Err(OpError::Forbidden("log out: it is not a session token"));
        }
        if let crate::security::Lookup::Token(mut rec) = self.sec.lookup(&hash_token(token), now())
        {
            rec.revoked = true;
            self.sec.commit(vec![AuthChange::PutToken(rec)]).await?;
        }
        Ok(())
    }

    // ---- join tokens and node credentials ---------------------------------------------

    pub fn list_tokens(&self, p: &Principal) -> Result<Vec<JoinTokenInfo>, OpError> {
        p.require_admin()?;
        let t = now();
        Ok(self
            .sec
            .join_tokens()
            .iter()
            .map(|r| token_info(r, t))
            .collect())
    }

    /// A new join token; its secret is in the answer and nowhere else.
    pub async fn create_token(
        &self,
        p: &Principal,
        req: CreateJoinToken,
    ) -> Result<NewJoinToken, OpError> {
        p.require_admin()?;
        if let Some(g) = &req.group {
            check_name("group", g)?;
        }
        if req.ttl_s == Some(0) {
            return Err(OpError::BadRequest("ttl must be above zero".into()));
        }
        if req.description.len() > 256 {
            return Err(OpError::BadRequest(
                "the description is longer than 256 characters".into(),
            ));
        }
        let secret = new_token("join");
        let t = now();
        let rec = token_record(
            &secret,
            TokenKind::Join,
            None,
            req.group,
            t,
            req.ttl_s,
            req.description,
        );
        let info = token_info(&rec, t);
        self.sec.commit(vec![AuthChange::PutToken(rec)]).await?;
        let token = JoinToken {
            ca_fingerprint: self.sec.ca.as_ref().map(|c| c.fingerprint.clone()),
            secret,
        }
        .to_string();
        Ok(NewJoinToken { info, token })
    }

    pub async fn revoke_token(&self, p: &Principal, id: &str) -> Result<(), OpError> {
        p.require_admin()?;
        let mut rec = self
            .sec
            .token_by_id(id)
            .filter(|t| t.kind == TokenKind::Join)
            .ok_or_else(|| OpError::NotFound(format!("join token `{id}` does not exist")))?;
        if !rec.revoked {
            rec.revoked = true;
            self.sec.commit(vec![AuthChange::PutToken(rec)]).await?;
        }
        Ok(())
    }

    /// A new credential for the calling node; the old one stops working as soon as this
    /// returns.
    pub async fn rotate_node(
        &self,
        p: &Principal,
        name: String,
    ) -> Result<RotateResponse, OpError> {
        if *p != Principal::Node(name.clone()) {
            return Err(OpError::Forbidden(
                "rotate this node's credential (only the node itself may)",
            ));
        }
        let token = new_token("node");
        let hash = hash_token(&token);
        let node = name.clone();
        self.shared
            .mutate(move |c, _rev| {
                let mut rec =
                    c.nodes.get(&node).cloned().ok_or_else(|| {
                        OpError::NotFound(format!("node `{node}` does not exist"))
                    })?;
                // The node's revision stays: a new credential changes nothing it must run.
                rec.token_hash = hash;
                Ok((vec![Change::PutNode(rec)], ()))
            })
            .await?;
        tracing::info!(node = %name, "node credential rotated");
        Ok(RotateResponse { node: name, token })
    }

    // ---- users ------------------------------------------------------------------------

    pub fn list_users(&self, p: &Principal) -> Result<Vec<UserInfo>, OpError> {
        p.require_admin()?;
        Ok(self.sec.users().iter().map(user_info).collect())
    }

    pub async fn create_user(&self, p: &Principal, req: CreateUser) -> Result<UserInfo, OpError> {
        p.require_admin()?;
        check_name("user", &req.name)?;
        if req.name == "admin" {
            return Err(OpError::BadRequest(
                "the name `admin` is the bootstrap admin's".into(),
            ));
        }
        for g in &req.groups {
            check_name("user group", g)?;
        }
        if req.password.chars().count() < MIN_PASSWORD || req.password.len() > 1024 {
            return Err(OpError::BadRequest(format!(
                "the password must have {MIN_PASSWORD} to 1024 characters"
            )));
        }
        if self.sec.user(&req.name).is_some() {
            return Err(OpError::Conflict(format!(
                "user `{}` already exists",
                req.name
            )));
        }
        let hash = {
            let _permit = self
                .sec
                .hashing
                .acquire()
                .await
                .map_err(|_| OpError::Unavailable("the server is shutting down"))?;
            let password = req.password.clone();
            tokio::task::spawn_blocking(move || hash_password(&password))
                .await
                .map_err(|e| OpError::Internal(format!("hashing failed: {e}")))??
        };
        let mut groups = req.groups.clone();
        groups.dedup();
        let rec = UserRecord {
            name: req.name,
            role: req.role,
            password_hash: hash,
            groups,
            created_at: now(),
        };
        let info = user_info(&rec);
        self.sec.commit(vec![AuthChange::PutUser(rec)]).await?;
        Ok(info)
    }

    /// Deletes a user and revokes every session they hold.
    pub async fn delete_user(&self, p: &Principal, name: String) -> Result<(), OpError> {
        p.require_admin()?;
        if self.sec.user(&name).is_none() {
            return Err(OpError::NotFound(format!("user `{name}` does not exist")));
        }
        let mut changes: Vec<AuthChange> = self
            .sec
            .sessions_of(&name)
            .into_iter()
            .map(|mut t| {
                t.revoked = true;
                AuthChange::PutToken(t)
            })
            .collect();
        changes.push(AuthChange::DeleteUser(name));
        self.sec.commit(changes).await?;
        Ok(())
    }

    // ---- user groups ------------------------------------------------------------------

    pub fn list_user_groups(&self, p: &Principal) -> Result<Vec<UserGroupInfo>, OpError> {
        p.require_admin()?;
        let users = self.sec.users();
        Ok(self
            .sec
            .user_groups()
            .iter()
            .map(|g| group_info(g, &users))
            .collect())
    }

    /// Creates or replaces a user group with its grants.
    pub async fn put_user_group(
        &self,
        p: &Principal,
        name: String,
        grants: Grants,
    ) -> Result<UserGroupInfo, OpError> {
        p.require_admin()?;
        check_name("user group", &name)?;
        for a in grants.apps.keys().filter(|k| *k != ANY) {
            check_name("app", a)?;
        }
        for g in grants.device_groups.keys().filter(|k| *k != ANY) {
            check_name("group", g)?;
        }
        let rec = UserGroupRecord { name, grants };
        self.sec
            .commit(vec![AuthChange::PutUserGroup(rec.clone())])
            .await?;
        Ok(group_info(&rec, &self.sec.users()))
    }

    pub async fn delete_user_group(&self, p: &Principal, name: String) -> Result<(), OpError> {
        p.require_admin()?;
        if !self.sec.user_groups().iter().any(|g| g.name == name) {
            return Err(OpError::NotFound(format!(
                "user group `{name}` does not exist"
            )));
        }
        self.sec
            .commit(vec![AuthChange::DeleteUserGroup(name)])
            .await?;
        Ok(())
    }

    // ---- device-group policies --------------------------------------------------------

    pub fn list_policies(&self, p: &Principal) -> Result<Vec<GroupPolicy>, OpError> {
        p.require_admin()?;
        Ok(self.sec.policies().into_values().collect())
    }

    pub async fn put_policy(
        &self,
        p: &Principal,
        group: String,
        input: PolicyInput,
    ) -> Result<GroupPolicy, OpError> {
        p.require_admin()?;
        check_name("group", &group)?;
        for i in &input.images {
            spec::validate_image(i).map_err(|e| OpError::BadRequest(format!("images: {e}")))?;
        }
        let mut allow = input.allow;
        allow.sort();
        allow.dedup();
        let policy = GroupPolicy {
            group,
            allow,
            images: input.images,
        };
        self.sec
            .commit(vec![AuthChange::PutPolicy(policy.clone())])
            .await?;
        Ok(policy)
    }

    pub async fn delete_policy(&self, p: &Principal, group: String) -> Result<(), OpError> {
        p.require_admin()?;
        if !self.sec.policies().contains_key(&group) {
            return Err(OpError::NotFound(format!(
                "device group `{group}` has no policy"
            )));
        }
        self.sec
            .commit(vec![AuthChange::DeletePolicy(group)])
            .await?;
        Ok(())
    }

    // ---- audit ------------------------------------------------------------------------

    /// The audit log, oldest first, after what is queued for it is written.
    pub async fn audit(
        &self,
        p: &Principal,
        query: AuditQuery,
    ) -> Result<Vec<AuditEntry>, OpError> {
        p.require_admin()?;
        self.sec.audit.flush().await;
        let store = self.sec.store.clone();
        tokio::task::spawn_blocking(move || store.read_audit(&query))
            .await
            .map_err(|e| OpError::Internal(format!("audit read failed: {e}")))?
            .map_err(|e| OpError::Internal(format!("cannot read the audit log: {e}")))
    }
}
