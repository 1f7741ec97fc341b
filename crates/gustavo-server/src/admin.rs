//! The v1 security surface: the CA for joining agents, `whoami`, and thin handlers over
//! the security operations in `ops/security.rs` (login and logout, join tokens, node
//! credential rotation, users, user groups, device-group policies, the audit log).

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use gustavo_model::access::{Grants, GroupPolicy, Privilege};
use gustavo_model::auth_api::{
    AuditEntry, CreateJoinToken, CreateUser, JoinTokenInfo, LoginRequest, RotateResponse,
    UserGroupInfo, UserInfo, WhoAmI,
};
use gustavo_model::names;
use gustavo_store::AuditQuery;
use serde::Deserialize;

use crate::AppState;
use crate::api::{JsonBody, QueryParams};
use crate::audit::ActorNote;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::ops::security::PolicyInput;

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
    let mut resp = match s.ops.login(addr.ip(), req).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    };
    resp.extensions_mut().insert(ActorNote(actor));
    resp
}

/// `POST /api/v1/logout`: revokes the session token presented.
pub async fn logout(
    p: Principal,
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    s.ops.logout(&p, token).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- join tokens ------------------------------------------------------------------------

pub async fn list_tokens(
    p: Principal,
    State(s): State<AppState>,
) -> Result<Json<Vec<JoinTokenInfo>>, ApiError> {
    s.ops.list_tokens(&p).map(Json)
}

pub async fn create_token(
    p: Principal,
    State(s): State<AppState>,
    JsonBody(req): JsonBody<CreateJoinToken>,
) -> Response {
    match s.ops.create_token(&p, req).await {
        Ok(t) => {
            let object = format!("token:{}", t.info.id);
            crate::audit::noted((StatusCode::CREATED, Json(t)), Some(object), None)
        }
        Err(e) => e.into_response(),
    }
}

pub async fn revoke_token(
    p: Principal,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.ops.revoke_token(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/nodes/{name}/rotate`, by the node itself.
pub async fn rotate(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<RotateResponse>, ApiError> {
    s.ops.rotate_node(&p, name).await.map(Json)
}

// ---- users ------------------------------------------------------------------------------

pub async fn list_users(
    p: Principal,
    State(s): State<AppState>,
) -> Result<Json<Vec<UserInfo>>, ApiError> {
    s.ops.list_users(&p).map(Json)
}

pub async fn create_user(
    p: Principal,
    State(s): State<AppState>,
    JsonBody(req): JsonBody<CreateUser>,
) -> Response {
    let object = names::validate("user", &req.name)
        .is_ok()
        .then(|| format!("user:{}", req.name));
    let r = s
        .ops
        .create_user(&p, req)
        .await
        .map(|u| (StatusCode::CREATED, Json(u)));
    crate::audit::noted(r, object, None)
}

/// Deletes a user and revokes every session they hold.
pub async fn delete_user(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.ops.delete_user(&p, name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- user groups ------------------------------------------------------------------------

pub async fn list_user_groups(
    p: Principal,
    State(s): State<AppState>,
) -> Result<Json<Vec<UserGroupInfo>>, ApiError> {
    s.ops.list_user_groups(&p).map(Json)
}

/// `PUT /api/v1/user-groups/{name}` with the group's grants; creates or replaces it.
pub async fn put_user_group(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
    JsonBody(grants): JsonBody<Grants>,
) -> Result<Json<UserGroupInfo>, ApiError> {
    s.ops.put_user_group(&p, name, grants).await.map(Json)
}

pub async fn delete_user_group(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.ops.delete_user_group(&p, name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- device-group policies --------------------------------------------------------------

pub async fn list_policies(
    p: Principal,
    State(s): State<AppState>,
) -> Result<Json<Vec<GroupPolicy>>, ApiError> {
    s.ops.list_policies(&p).map(Json)
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
    let input = PolicyInput {
        allow: body.allow,
        images: body.images,
    };
    s.ops.put_policy(&p, group, input).await.map(Json)
}

pub async fn delete_policy(
    p: Principal,
    State(s): State<AppState>,
    Path(group): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.ops.delete_policy(&p, group).await?;
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
    let query = AuditQuery {
        since: q.since,
        actor: q.user,
        object: q.object,
        limit: q.limit.unwrap_or(1000),
    };
    s.ops.audit(&p, query).await.map(Json)
}
