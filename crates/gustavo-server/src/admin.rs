//! The security API's handlers: the CA for joining agents, login and logout, join tokens,
//! node credential rotation, users, user groups (grants), device-group policies and the
//! audit log. Everything here but the CA, login and `whoami` is for admins only.

use std::net::SocketAddr;
use std::sync::LazyLock;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use gustavo_model::access::{ANY, Grants, GroupPolicy, Privilege};
use gustavo_model::auth_api::{
    AuditEntry, CreateJoinToken, CreateUser, JoinTokenInfo, LoginRequest, LoginResponse,
    NewJoinToken, RotateResponse, UserGroupInfo, UserInfo, WhoAmI,
};
use gustavo_model::{access::JoinToken, names, spec};
use gustavo_store::{
    AuditQuery, AuthChange, Change, TokenKind, TokenRecord, UserGroupRecord, UserRecord,
};
use serde::Deserialize;

use crate::api::{JsonBody, QueryParams};
use crate::audit::ActorNote;
use crate::auth::{Principal, hash_token, new_token};
use crate::error::ApiError;
use crate::security::{hash_password, token_record, verify_password};
use crate::{AppState, now};

/// Sessions last this long unless the login asks for less (or more, up to the maximum).
pub const SESSION_TTL_S: u64 = 12 * 3600;
pub const MAX_SESSION_TTL_S: u64 = 30 * 24 * 3600;
pub const MIN_PASSWORD: usize = 8;

fn check_name(kind: &'static str, name: &str) -> Result<(), ApiError> {
    names::validate(kind, name).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// `GET /api/v1/ca`, unauthenticated: the CA a joining agent checks against the
/// fingerprint in its join token before trusting anything else from this server.
pub async fn ca(State(s): State<AppState>) -> Result<Response, ApiError> {
    let ca = s.sec.ca.as_ref().ok_or_else(|| {
        ApiError::NotFound("this server runs without TLS (--insecure-http): it has no CA".into())
    })?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-pem-file")],
        ca.pem.clone(),
    )
        .into_response())
}

pub async fn whoami(p: Principal) -> Json<WhoAmI> {
    let role = p.person().ok().map(|s| s.role);
    Json(WhoAmI {
        actor: p.actor(),
        role,
    })
}

// ---- login ------------------------------------------------------------------------------

/// Checked when the user does not exist, so the answer takes as long as for a wrong
/// password and does not tell which names exist.
static DUMMY_HASH: LazyLock<String> =
    LazyLock::new(|| hash_password("not a real password").unwrap_or_default());

pub async fn login(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    JsonBody(req): JsonBody<LoginRequest>,
) -> Response {
    let actor = if names::validate("user", &req.user).is_ok() {
        format!("user:{}", req.user)
    } else {
        "anonymous".to_string()
    };
    let mut resp = match login_inner(&s, addr, req).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    };
    resp.extensions_mut().insert(ActorNote(actor));
    resp
}

async fn login_inner(
    s: &AppState,
    addr: SocketAddr,
    req: LoginRequest,
) -> Result<LoginResponse, ApiError> {
    let address = addr.ip().to_string();
    // Throttling keys on the name only when it is a valid one, so a flood of long or
    // random names costs one key per address, not one per name.
    let valid = names::validate("user", &req.user).is_ok() && req.password.len() <= 1024;
    let key = if valid { req.user.as_str() } else { "" };
    if let Some(wait) = s.sec.login.check(key, &address, now()) {
        return Err(ApiError::TooManyRequests(wait));
    }
    if !valid {
        s.sec.login.failed(key, &address, now());
        return Err(ApiError::BadLogin);
    }
    let user = s.sec.user(&req.user);
    let hash = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| DUMMY_HASH.clone());
    let ok = {
        let _permit = s
            .sec
            .hashing
            .acquire()
            .await
            .map_err(|_| ApiError::Unavailable("the server is shutting down"))?;
        let password = req.password.clone();
        tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .unwrap_or(false)
    };
    let Some(user) = user.filter(|_| ok) else {
        s.sec.login.failed(&req.user, &address, now());
        return Err(ApiError::BadLogin);
    };
    s.sec.login.succeeded(&user.name);
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
    s.sec.commit(vec![AuthChange::PutToken(rec)]).await?;
    tracing::info!(user = %user.name, %address, "logged in");
    Ok(LoginResponse {
        user: user.name,
        role: user.role,
        token: secret,
        expires_at,
    })
}

/// `POST /api/v1/logout`: revokes the session token presented.
pub async fn logout(
    p: Principal,
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    if !matches!(p, Principal::User(_)) {
        return Err(ApiError::Forbidden("log out: it is not a session token"));
    }
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    if let crate::security::Lookup::Token(mut rec) = s.sec.lookup(&hash_token(token), now()) {
        rec.revoked = true;
        s.sec.commit(vec![AuthChange::PutToken(rec)]).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---- join tokens ------------------------------------------------------------------------

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

pub async fn list_tokens(
    p: Principal,
    State(s): State<AppState>,
) -> Result<Json<Vec<JoinTokenInfo>>, ApiError> {
    p.require_admin()?;
    let t = now();
    Ok(Json(
        s.sec
            .join_tokens()
            .iter()
            .map(|r| token_info(r, t))
            .collect(),
    ))
}

pub async fn create_token(
    p: Principal,
    State(s): State<AppState>,
    JsonBody(req): JsonBody<CreateJoinToken>,
) -> Response {
    match create_token_inner(p, s, req).await {
        Ok(r) => {
            let object = format!("token:{}", r.1.info.id);
            crate::audit::noted(r, Some(object), None)
        }
        Err(e) => e.into_response(),
    }
}

async fn create_token_inner(
    p: Principal,
    s: AppState,
    req: CreateJoinToken,
) -> Result<(StatusCode, Json<NewJoinToken>), ApiError> {
    p.require_admin()?;
    if let Some(g) = &req.group {
        check_name("group", g)?;
    }
    if req.ttl_s == Some(0) {
        return Err(ApiError::BadRequest("ttl must be above zero".into()));
    }
    if req.description.len() > 256 {
        return Err(ApiError::BadRequest(
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
    s.sec.commit(vec![AuthChange::PutToken(rec)]).await?;
    let token = JoinToken {
        ca_fingerprint: s.sec.ca.as_ref().map(|c| c.fingerprint.clone()),
        secret,
    }
    .to_string();
    Ok((StatusCode::CREATED, Json(NewJoinToken { info, token })))
}

pub async fn revoke_token(
    p: Principal,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    p.require_admin()?;
    let mut rec = s
        .sec
        .token_by_id(&id)
        .filter(|t| t.kind == TokenKind::Join)
        .ok_or_else(|| ApiError::NotFound(format!("join token `{id}` does not exist")))?;
    if !rec.revoked {
        rec.revoked = true;
        s.sec.commit(vec![AuthChange::PutToken(rec)]).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/nodes/{name}/rotate`, by the node itself: a new credential; the old one
/// stops working as soon as this answers.
pub async fn rotate(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<RotateResponse>, ApiError> {
    if p != Principal::Node(name.clone()) {
        return Err(ApiError::Forbidden(
            "rotate this node's credential (only the node itself may)",
        ));
    }
    let token = new_token("node");
    let hash = hash_token(&token);
    let node = name.clone();
    s.shared
        .mutate(move |c, _rev| {
            let mut rec = c
                .nodes
                .get(&node)
                .cloned()
                .ok_or_else(|| ApiError::NotFound(format!("node `{node}` does not exist")))?;
            // The node's revision stays: a new credential changes nothing it must run.
            rec.token_hash = hash;
            Ok((vec![Change::PutNode(rec)], ()))
        })
        .await?;
    tracing::info!(node = %name, "node credential rotated");
    Ok(Json(RotateResponse { node: name, token }))
}

// ---- users ------------------------------------------------------------------------------

fn user_info(u: &UserRecord) -> UserInfo {
    UserInfo {
        name: u.name.clone(),
        role: u.role,
        groups: u.groups.clone(),
        created_at: u.created_at,
    }
}

pub async fn list_users(
    p: Principal,
    State(s): State<AppState>,
) -> Result<Json<Vec<UserInfo>>, ApiError> {
    p.require_admin()?;
    Ok(Json(s.sec.users().iter().map(user_info).collect()))
}

pub async fn create_user(
    p: Principal,
    State(s): State<AppState>,
    JsonBody(req): JsonBody<CreateUser>,
) -> Response {
    let object = names::validate("user", &req.name)
        .is_ok()
        .then(|| format!("user:{}", req.name));
    let r = create_user_inner(p, s, req).await;
    crate::audit::noted(r, object, None)
}

async fn create_user_inner(
    p: Principal,
    s: AppState,
    req: CreateUser,
) -> Result<(StatusCode, Json<UserInfo>), ApiError> {
    p.require_admin()?;
    check_name("user", &req.name)?;
    if req.name == "admin" {
        return Err(ApiError::BadRequest(
            "the name `admin` is the bootstrap admin's".into(),
        ));
    }
    for g in &req.groups {
        check_name("user group", g)?;
    }
    if req.password.chars().count() < MIN_PASSWORD || req.password.len() > 1024 {
        return Err(ApiError::BadRequest(format!(
            "the password must have {MIN_PASSWORD} to 1024 characters"
        )));
    }
    if s.sec.user(&req.name).is_some() {
        return Err(ApiError::Conflict(format!(
            "user `{}` already exists",
            req.name
        )));
    }
    let hash = {
        let _permit = s
            .sec
            .hashing
            .acquire()
            .await
            .map_err(|_| ApiError::Unavailable("the server is shutting down"))?;
        let password = req.password.clone();
        tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .map_err(|e| ApiError::Internal(format!("hashing failed: {e}")))??
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
    s.sec.commit(vec![AuthChange::PutUser(rec)]).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// Deletes a user and revokes every session they hold.
pub async fn delete_user(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    p.require_admin()?;
    if s.sec.user(&name).is_none() {
        return Err(ApiError::NotFound(format!("user `{name}` does not exist")));
    }
    let mut changes: Vec<AuthChange> = s
        .sec
        .sessions_of(&name)
        .into_iter()
        .map(|mut t| {
            t.revoked = true;
            AuthChange::PutToken(t)
        })
        .collect();
    changes.push(AuthChange::DeleteUser(name));
    s.sec.commit(changes).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- user groups ------------------------------------------------------------------------

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

pub async fn list_user_groups(
    p: Principal,
    State(s): State<AppState>,
) -> Result<Json<Vec<UserGroupInfo>>, ApiError> {
    p.require_admin()?;
    let users = s.sec.users();
    Ok(Json(
        s.sec
            .user_groups()
            .iter()
            .map(|g| group_info(g, &users))
            .collect(),
    ))
}

/// `PUT /api/v1/user-groups/{name}` with the group's grants; creates or replaces it.
pub async fn put_user_group(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
    JsonBody(grants): JsonBody<Grants>,
) -> Result<Json<UserGroupInfo>, ApiError> {
    p.require_admin()?;
    check_name("user group", &name)?;
    for a in grants.apps.keys().filter(|k| *k != ANY) {
        check_name("app", a)?;
    }
    for g in grants.device_groups.keys().filter(|k| *k != ANY) {
        check_name("group", g)?;
    }
    let rec = UserGroupRecord { name, grants };
    s.sec
        .commit(vec![AuthChange::PutUserGroup(rec.clone())])
        .await?;
    Ok(Json(group_info(&rec, &s.sec.users())))
}

pub async fn delete_user_group(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    p.require_admin()?;
    if !s.sec.user_groups().iter().any(|g| g.name == name) {
        return Err(ApiError::NotFound(format!(
            "user group `{name}` does not exist"
        )));
    }
    s.sec
        .commit(vec![AuthChange::DeleteUserGroup(name)])
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- device-group policies --------------------------------------------------------------

pub async fn list_policies(
    p: Principal,
    State(s): State<AppState>,
) -> Result<Json<Vec<GroupPolicy>>, ApiError> {
    p.require_admin()?;
    Ok(Json(s.sec.policies().into_values().collect()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    #[serde(default)]
    allow: Vec<Privilege>,
    #[serde(default)]
    images: Vec<String>,
}

pub async fn put_policy(
    p: Principal,
    State(s): State<AppState>,
    Path(group): Path<String>,
    JsonBody(body): JsonBody<PolicyBody>,
) -> Result<Json<GroupPolicy>, ApiError> {
    p.require_admin()?;
    check_name("group", &group)?;
    for i in &body.images {
        spec::validate_image(i).map_err(|e| ApiError::BadRequest(format!("images: {e}")))?;
    }
    let mut allow = body.allow;
    allow.sort();
    allow.dedup();
    let policy = GroupPolicy {
        group,
        allow,
        images: body.images,
    };
    s.sec
        .commit(vec![AuthChange::PutPolicy(policy.clone())])
        .await?;
    Ok(Json(policy))
}

pub async fn delete_policy(
    p: Principal,
    State(s): State<AppState>,
    Path(group): Path<String>,
) -> Result<StatusCode, ApiError> {
    p.require_admin()?;
    if !s.sec.policies().contains_key(&group) {
        return Err(ApiError::NotFound(format!(
            "device group `{group}` has no policy"
        )));
    }
    s.sec.commit(vec![AuthChange::DeletePolicy(group)]).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- audit ------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    since: Option<u64>,
    user: Option<String>,
    object: Option<String>,
    limit: Option<usize>,
}

pub async fn audit(
    p: Principal,
    State(s): State<AppState>,
    QueryParams(q): QueryParams<AuditParams>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    p.require_admin()?;
    s.sec.audit.flush().await;
    let query = AuditQuery {
        since: q.since,
        actor: q.user,
        object: q.object,
        limit: q.limit.unwrap_or(1000),
    };
    let store = s.sec.store.clone();
    let rows = tokio::task::spawn_blocking(move || store.read_audit(&query))
        .await
        .map_err(|e| ApiError::Internal(format!("audit read failed: {e}")))?
        .map_err(|e| ApiError::Internal(format!("cannot read the audit log: {e}")))?;
    Ok(Json(rows))
}
