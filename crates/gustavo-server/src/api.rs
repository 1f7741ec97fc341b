//! The `/api/v1` handlers. Each one authenticates, validates its input completely, then
//! either reads the in-memory cluster or commits one mutation — so a refused request never
//! leaves anything half-changed.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gustavo_model::api::{
    App, CreateApp, Heartbeat, HeartbeatReply, NodeContainer, NodeVitals, RegisterRequest,
    RegisterResponse, Stats, StatusReport, UpdateApp,
};
use gustavo_model::names;
use gustavo_store::{Change, NodeRecord};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use gustavo_model::access::{Role, Subject, check_spec};
use gustavo_model::spec::{self, EnvValue};

use crate::audit::noted;
use crate::auth::{Principal, hash_token, new_token};
use crate::error::ApiError;
use crate::{AppState, now};

/// A JSON body parsed by serde_json, with errors (and oversized bodies) mapped to our error
/// format instead of axum's plain-text rejections.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge(state.body_limit)
            } else {
                ApiError::BadRequest(format!("cannot read the request body: {e}"))
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    }
}

/// Query parameters, with errors in our JSON format instead of axum's plain text.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| QueryParams(v))
            .map_err(|e| ApiError::BadRequest(format!("invalid query string: {}", e.body_text())))
    }
}

fn check_name(kind: &'static str, name: &str) -> Result<(), ApiError> {
    names::validate(kind, name).map_err(|e| ApiError::BadRequest(e.to_string()))
}

pub async fn health() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

pub async fn openapi(p: Principal) -> Result<Response, ApiError> {
    let _ = p;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        crate::openapi::DOCUMENT,
    )
        .into_response())
}

// ---- apps -------------------------------------------------------------------------------

/// An app as people see it: secret env values replaced by `{hidden: true}`.
fn shown(app: &App) -> App {
    let mut out = app.clone();
    for v in out.spec.env_vars.values_mut() {
        *v = v.redacted();
    }
    out
}

/// Secrets come in as `{secret: VALUE}`; the sealed and hidden forms are the server's own
/// and are refused as input (a hidden value sent back would replace the secret with nothing,
/// a sealed one copied from elsewhere must not be accepted).
fn check_env_input(spec: &gustavo_model::spec::AppSpec) -> Result<(), ApiError> {
    for (k, v) in &spec.env_vars {
        if matches!(v, EnvValue::Sealed(_) | EnvValue::Hidden) {
            return Err(ApiError::BadRequest(format!(
                "env var `{k}`: give the secret's value as {{secret: VALUE}}"
            )));
        }
    }
    Ok(())
}

/// Replaces the values of secret env vars in a desired state with `<hidden>`.
fn hide_secrets(c: &crate::state::Cluster, d: &mut gustavo_model::api::DesiredState) {
    for app in &mut d.apps {
        let Some(spec) = c.apps.get(&app.name).map(|a| &a.spec) else {
            continue;
        };
        for container in &mut app.containers {
            for (k, _) in spec.env_vars.iter().filter(|(_, v)| v.is_secret()) {
                if let Some(val) = container.spec.env.get_mut(k) {
                    *val = "<hidden>".into();
                }
            }
        }
    }
}

/// Not found, to someone who may not see the object; forbidden to someone who may.
fn hidden(kind: &str, name: &str) -> ApiError {
    ApiError::NotFound(format!("{kind} `{name}` does not exist"))
}

pub async fn list_apps(
    p: Principal,
    State(s): State<AppState>,
) -> Result<Json<Vec<App>>, ApiError> {
    let who = p.person()?;
    Ok(Json(
        s.shared
            .read()
            .apps
            .values()
            .filter(|a| who.can_read_app(&a.name, &a.groups))
            .map(shown)
            .collect(),
    ))
}

pub async fn get_app(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<App>, ApiError> {
    let who = p.person()?;
    s.shared
        .read()
        .apps
        .get(&name)
        .filter(|a| who.can_read_app(&a.name, &a.groups))
        .map(shown)
        .map(Json)
        .ok_or_else(|| hidden("app", &name))
}

/// Whether `who` may change an app attached to `old` groups so it ends up on `new`: `rw`
/// on the app, and `rw` on every device group it joins or leaves (moving work onto or off
/// a group is a change to that group). Then the dangerous fields and image allowlists of
/// the groups it ends up on.
fn may_change_app(
    who: &Subject,
    name: &str,
    old: &[String],
    new: &[String],
    spec: &gustavo_model::spec::AppSpec,
    policies: &std::collections::BTreeMap<String, gustavo_model::access::GroupPolicy>,
) -> Result<(), ApiError> {
    if who.role == Role::Viewer {
        return Err(ApiError::Forbidden(
            "change apps (the viewer role only reads)",
        ));
    }
    if !old.is_empty() && !who.can_write_app(name, old) {
        return Err(ApiError::Denied(format!(
            "user `{}` has no rw grant on app `{name}`",
            who.name
        )));
    }
    for g in old
        .iter()
        .filter(|g| !new.contains(g))
        .chain(new.iter().filter(|g| !old.contains(g)))
    {
        if !who.can_write_group(g) {
            return Err(ApiError::Denied(format!(
                "user `{}` has no rw grant on device group `{g}`",
                who.name
            )));
        }
    }
    check_spec(spec, new, policies, who.is_admin()).map_err(ApiError::Denied)
}

/// The device groups of a request, by the format's rules (names, at most
/// [`spec::MAX_GROUPS`]), without duplicates.
fn check_groups(groups: &[String]) -> Result<Vec<String>, ApiError> {
    spec::validate_groups(groups).map_err(ApiError::BadRequest)
}

/// The format's rules, again, on the spec about to be stored: parsing applied them, and
/// this keeps them applied whatever built the spec.
fn check_spec_rules(spec: &spec::AppSpec) -> Result<(), ApiError> {
    spec.validate()
        .map_err(|e| ApiError::BadRequest(format!("invalid app spec: {e}")))
}

pub async fn create_app(
    p: Principal,
    State(s): State<AppState>,
    JsonBody(req): JsonBody<CreateApp>,
) -> Response {
    let object = format!("app:{}", req.name);
    let r = create_app_inner(p, s, req).await;
    let revision = r.as_ref().ok().map(|(_, a)| a.revision);
    noted(r, Some(object), revision)
}

async fn create_app_inner(
    p: Principal,
    s: AppState,
    req: CreateApp,
) -> Result<(StatusCode, Json<App>), ApiError> {
    let who = p.person()?;
    check_name("app", &req.name)?;
    let mut groups = check_groups(&req.groups)?;
    if groups.is_empty() {
        groups.push(crate::DEFAULT_GROUP.to_string());
    }
    check_spec_rules(&req.spec)?;
    check_env_input(&req.spec)?;
    let policies = s.sec.policies();
    may_change_app(&who, &req.name, &[], &groups, &req.spec, &policies)?;
    let app = s
        .shared
        .mutate(move |c, rev| {
            if c.apps.contains_key(&req.name) {
                return Err(ApiError::Conflict(format!(
                    "app `{}` already exists; use update to change it",
                    req.name
                )));
            }
            let t = now();
            let app = App {
                name: req.name,
                spec: req.spec,
                groups,
                revision: rev,
                restart_nonce: 0,
                created_at: t,
                updated_at: t,
            };
            let mut changes = c.touch_groups(&app.groups, rev);
            changes.push(Change::PutApp(Box::new(app.clone())));
            Ok((changes, app))
        })
        .await?;
    tracing::info!(app = %app.name, revision = app.revision, groups = ?app.groups, "app created");
    Ok((StatusCode::CREATED, Json(shown(&app))))
}

/// Commits a changed copy of an app at the next revision, bumping the groups it leaves and
/// joins; an unchanged app commits nothing.
async fn change_app(
    s: &AppState,
    name: String,
    edit: impl FnOnce(&mut App) -> Result<(), ApiError> + Send + 'static,
) -> Result<App, ApiError> {
    s.shared
        .mutate(move |c, rev| {
            let old = c
                .apps
                .get(&name)
                .ok_or_else(|| ApiError::NotFound(format!("app `{name}` does not exist")))?;
            let mut app = old.clone();
            edit(&mut app)?;
            if app == *old {
                return Ok((Vec::new(), app));
            }
            app.revision = rev;
            app.updated_at = now();
            let mut changes = c.touch_groups(old.groups.iter().chain(&app.groups), rev);
            changes.push(Change::PutApp(Box::new(app.clone())));
            Ok((changes, app))
        })
        .await
}

pub async fn update_app(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<UpdateApp>,
) -> Response {
    let r = update_app_inner(p, s, name, req).await;
    let revision = r.as_ref().ok().map(|a| a.revision);
    noted(r, None, revision)
}

async fn update_app_inner(
    p: Principal,
    s: AppState,
    name: String,
    req: UpdateApp,
) -> Result<Json<App>, ApiError> {
    let who = p.person()?;
    let groups = req.groups.as_deref().map(check_groups).transpose()?;
    check_spec_rules(&req.spec)?;
    check_env_input(&req.spec)?;
    let policies = s.sec.policies();
    let app = change_app(&s, name, move |app| {
        if !who.can_read_app(&app.name, &app.groups) {
            return Err(hidden("app", &app.name));
        }
        let new_groups = groups
            .filter(|g| !g.is_empty())
            .unwrap_or_else(|| app.groups.clone());
        may_change_app(
            &who,
            &app.name,
            &app.groups,
            &new_groups,
            &req.spec,
            &policies,
        )?;
        app.spec = req.spec;
        app.groups = new_groups;
        Ok(())
    })
    .await?;
    tracing::info!(app = %app.name, revision = app.revision, "app updated");
    Ok(Json(shown(&app)))
}

pub async fn app_action(
    p: Principal,
    State(s): State<AppState>,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let r = app_action_inner(p, s, name, action).await;
    let revision = r.as_ref().ok().map(|a| a.revision);
    noted(r, None, revision)
}

async fn app_action_inner(
    p: Principal,
    s: AppState,
    name: String,
    action: String,
) -> Result<Json<App>, ApiError> {
    let who = p.person()?;
    let app = change_app(&s, name, move |app| {
        if !who.can_read_app(&app.name, &app.groups) {
            return Err(hidden("app", &app.name));
        }
        if who.role == Role::Viewer || !who.can_write_app(&app.name, &app.groups) {
            return Err(ApiError::Denied(format!(
                "user `{}` may not change app `{}`",
                who.name, app.name
            )));
        }
        match action.as_str() {
            "start" => app.spec.running = true,
            "stop" => app.spec.running = false,
            "restart" => {
                if !app.spec.running {
                    return Err(ApiError::Conflict(format!(
                        "app `{}` is stopped; start it instead",
                        app.name
                    )));
                }
                app.restart_nonce += 1;
            }
            other => return Err(ApiError::NotFound(format!("no app action `{other}`"))),
        }
        Ok(())
    })
    .await?;
    Ok(Json(shown(&app)))
}

pub async fn delete_app(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Response {
    let r = delete_app_inner(p, s, name).await;
    let revision = r.as_ref().ok().and_then(|j| j["revision"].as_u64());
    noted(r, None, revision)
}

async fn delete_app_inner(
    p: Principal,
    s: AppState,
    name: String,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = p.person()?;
    let revision = s
        .shared
        .mutate(move |c, rev| {
            let app = c
                .apps
                .get(&name)
                .filter(|a| who.can_read_app(&a.name, &a.groups))
                .ok_or_else(|| hidden("app", &name))?;
            if who.role == Role::Viewer || !who.can_write_app(&app.name, &app.groups) {
                return Err(ApiError::Denied(format!(
                    "user `{}` may not delete app `{name}`",
                    who.name
                )));
            }
            // Bumping the app's groups is what makes every member drop its containers;
            // Nebula deleted the document only and left the containers running.
            let mut changes = c.touch_groups(&app.groups, rev);
            changes.push(Change::DeleteApp(name));
            Ok((changes, rev))
        })
        .await?;
    Ok(Json(serde_json::json!({ "revision": revision })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutQuery {
    /// Counts only, without the per-node rows.
    #[serde(default)]
    summary: bool,
    /// Wait up to this many seconds (at most 60) for the rollout to move: answer as soon as
    /// the number of converged devices differs from `seen`, a device fails, or every device
    /// has converged. `--wait` uses it instead of polling.
    #[serde(default)]
    wait: u64,
    /// The converged count the caller already has.
    #[serde(default)]
    seen: Option<usize>,
}

/// How often a waiting rollout is recomputed at most: a fleet's status reports arrive by
/// the thousand, and each recomputation walks every member node.
const ROLLOUT_RECHECK: Duration = Duration::from_millis(50);

pub async fn rollout(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
    QueryParams(q): QueryParams<RolloutQuery>,
) -> Result<Response, ApiError> {
    let who = p.person()?;
    {
        let c = s.shared.read();
        // A deleted app's groups are gone: only a grant on its name (or an admin) sees it.
        let groups = c
            .apps
            .get(&name)
            .map(|a| a.groups.clone())
            .unwrap_or_default();
        if !who.can_read_app(&name, &groups) {
            return Err(hidden("app", &name));
        }
    }
    if q.wait > 0 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(q.wait.min(60));
        let mut reports = s.shared.reports.subscribe();
        let mut revisions = s.shared.revision_tx.subscribe();
        loop {
            let checked = tokio::time::Instant::now();
            let moved = {
                let sum = s.shared.read().rollout_summary(&name);
                match sum {
                    None => true,
                    Some(r) => {
                        q.seen != Some(r.converged) || r.failed > 0 || r.converged >= r.total
                    }
                }
            };
            if moved || *s.shared.closing.borrow() {
                break;
            }
            reports.borrow_and_update();
            revisions.borrow_and_update();
            let woke = tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    _ = reports.changed() => {}
                    _ = revisions.changed() => {}
                }
            })
            .await;
            if woke.is_err() {
                break;
            }
            // Fold a burst of reports into one recomputation.
            tokio::time::sleep_until(checked + ROLLOUT_RECHECK).await;
        }
    }
    let c = s.shared.read();
    Ok(if q.summary {
        Json(
            c.rollout_summary(&name)
                .ok_or_else(|| hidden("app", &name))?,
        )
        .into_response()
    } else {
        Json(
            c.rollout(&name, now())
                .ok_or_else(|| hidden("app", &name))?,
        )
        .into_response()
    })
}

pub async fn stats(p: Principal, State(s): State<AppState>) -> Result<Json<Stats>, ApiError> {
    p.require_admin()?;
    let c = s.shared.read();
    let t = now();
    Ok(Json(Stats {
        revision: c.revision,
        nodes: c.nodes.len(),
        ready: c
            .nodes
            .keys()
            .filter(|n| c.node_status(n, t) == gustavo_model::api::NodeStatus::Ready)
            .count(),
        apps: c.apps.len(),
        groups: c.group_views().len(),
    }))
}

// ---- groups, nodes, cache views -----------------------------------------------------------

pub async fn list_groups(p: Principal, State(s): State<AppState>) -> Result<Response, ApiError> {
    let who = p.person()?;
    let groups: Vec<_> = s
        .shared
        .read()
        .group_views()
        .into_iter()
        .filter(|g| who.can_read_group(&g.name))
        .collect();
    Ok(Json(groups).into_response())
}

pub async fn get_group(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let who = p.person()?;
    let c = s.shared.read();
    if !c.group_exists(&name) || !who.can_read_group(&name) {
        return Err(ApiError::NotFound(format!("group `{name}` does not exist")));
    }
    Ok(Json(c.group_view(&name)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    group: Option<String>,
    host: Option<String>,
}

pub async fn list_nodes(
    p: Principal,
    State(s): State<AppState>,
    QueryParams(f): QueryParams<Filter>,
) -> Result<Response, ApiError> {
    let who = p.person()?;
    let c = s.shared.read();
    let t = now();
    let nodes: Vec<_> = c
        .filtered_nodes(f.group.as_deref(), f.host.as_deref())
        .filter(|n| who.can_read_node(&n.groups))
        .map(|n| c.node_view(n, t))
        .collect();
    Ok(Json(nodes).into_response())
}

pub async fn get_node(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    // The node itself, or a person who may see one of its groups.
    let person = match &p {
        Principal::Node(me) if *me == name => None,
        Principal::Node(_) => return Err(ApiError::Forbidden("act for this node")),
        p => Some(p.person()?),
    };
    let c = s.shared.read();
    let n = c
        .nodes
        .get(&name)
        .filter(|n| {
            person
                .as_ref()
                .is_none_or(|who| who.can_read_node(&n.groups))
        })
        .ok_or_else(|| hidden("node", &name))?;
    Ok(Json(c.node_view(n, now())).into_response())
}

pub async fn delete_node(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Response {
    let r = async {
        p.require_admin()?;
        s.shared
            .mutate(move |c, rev| {
                let node = c
                    .nodes
                    .get(&name)
                    .ok_or_else(|| ApiError::NotFound(format!("node `{name}` does not exist")))?;
                let mut changes = c.touch_groups(&node.groups, rev);
                changes.push(Change::DeleteNode(name));
                Ok((changes, rev))
            })
            .await
    }
    .await;
    match r {
        Ok(rev) => noted(StatusCode::NO_CONTENT, None, Some(rev)),
        Err(e) => e.into_response(),
    }
}

pub async fn containers(
    p: Principal,
    State(s): State<AppState>,
    QueryParams(f): QueryParams<Filter>,
) -> Result<Json<Vec<NodeContainer>>, ApiError> {
    let who = p.person()?;
    let c = s.shared.read();
    let visible = |node: &str| {
        c.nodes
            .get(node)
            .is_some_and(|n| who.can_read_node(&n.groups))
    };
    let rows = c
        .containers(f.group.as_deref(), f.host.as_deref())
        .into_iter()
        .filter(|(node, _, _)| visible(node))
        .map(|(node, mut container, app_error)| {
            container.error = container.error.or(app_error);
            NodeContainer { node, container }
        })
        .collect();
    Ok(Json(rows))
}

pub async fn vitals(
    p: Principal,
    State(s): State<AppState>,
    QueryParams(f): QueryParams<Filter>,
) -> Result<Json<Vec<NodeVitals>>, ApiError> {
    let who = p.person()?;
    let c = s.shared.read();
    let t = now();
    let rows = c
        .filtered_nodes(f.group.as_deref(), f.host.as_deref())
        .filter(|n| who.can_read_node(&n.groups))
        .map(|n| NodeVitals {
            node: n.name.clone(),
            status: c.node_status(&n.name, t),
            vitals: c.live.get(&n.name).and_then(|l| l.vitals.clone()),
        })
        .collect();
    Ok(Json(rows))
}

// ---- the agent protocol ------------------------------------------------------------------

fn validate_registration(req: &RegisterRequest) -> Result<(), ApiError> {
    check_name("node", &req.name)?;
    check_groups(&req.groups)?;
    if req.labels.len() > 64
        || req
            .labels
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 128 || v.len() > 1024)
    {
        return Err(ApiError::BadRequest(
            "labels: at most 64, keys 1-128 and values up to 1024 characters".into(),
        ));
    }
    Ok(())
}

/// `POST /api/v1/nodes/register` with the join token: creates a node that does not exist
/// yet and returns its own token. With the node's own token it updates the node's declared
/// facts and keeps the token. A join token can never take over an existing node (two
/// devices with one hostname would evict each other, and any join token would be a key to
/// every node): that is a 409 naming the node. Replacing a node's credential takes an admin
/// and `replace: true`, or removing the node first.
pub async fn register(
    p: Principal,
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> Response {
    let object = names::validate("node", &req.name)
        .is_ok()
        .then(|| format!("node:{}", req.name));
    match register_inner(p, s, addr, req).await {
        Ok((resp, revision)) => noted(resp, object, revision),
        Err(e) => noted(e, object, None),
    }
}

async fn register_inner(
    p: Principal,
    s: AppState,
    addr: SocketAddr,
    req: RegisterRequest,
) -> Result<(Json<RegisterResponse>, Option<u64>), ApiError> {
    validate_registration(&req)?;
    // A join token bound to a group puts the node in exactly that group, whatever it asks.
    let (rotate, join_group) = match &p {
        Principal::Join { group, .. } => (true, group.clone()),
        p if p.is_admin() => (true, None),
        Principal::Node(n) if *n == req.name => (false, None),
        Principal::Node(_) => return Err(ApiError::Forbidden("register another node")),
        _ => return Err(ApiError::Forbidden("register nodes")),
    };
    if req.replace && !p.is_admin() {
        return Err(ApiError::Denied(format!(
            "only an admin may replace node `{}`",
            req.name
        )));
    }
    let replace = req.replace;
    let token = rotate.then(|| new_token("node"));
    let token_hash = token.as_deref().map(hash_token);
    let name = req.name.clone();
    let revision = s
        .shared
        .mutate(move |c, rev| {
            let old = c.nodes.get(&req.name);
            // Checked here, inside the writer, so two racing joins cannot both create it.
            if rotate && old.is_some() && !replace {
                return Err(ApiError::Conflict(format!(
                    "node `{n}` already exists; if this device replaces it, remove the old one \
                     with `gustavo nodes remove {n}` and join again, or give this device \
                     another name with `gustavo agent --name`",
                    n = req.name
                )));
            }
            let bound_group = if rotate {
                join_group
            } else {
                old.and_then(|o| o.bound_group.clone())
            };
            let mut groups = match &bound_group {
                Some(g) => vec![g.clone()],
                None => req.groups.clone(),
            };
            groups.dedup();
            let record = NodeRecord {
                name: req.name.clone(),
                token_hash: token_hash
                    .or_else(|| old.map(|o| o.token_hash.clone()))
                    .unwrap_or_default(),
                groups,
                labels: req.labels.clone(),
                cpus: req.cpus.max(1),
                memory_mb: req.memory_mb,
                agent_version: req.agent_version.clone(),
                registered_at: old.map(|o| o.registered_at).unwrap_or_else(now),
                revision: rev,
                heartbeat_s: req.heartbeat_s.clamp(1, 3600),
                bound_group,
            };
            let unchanged = old.is_some_and(|o| {
                NodeRecord {
                    revision: o.revision,
                    ..record.clone()
                } == *o
            });
            if unchanged {
                return Ok((Vec::new(), None));
            }
            let mut changes = c.touch_groups(
                old.map(|o| o.groups.iter())
                    .into_iter()
                    .flatten()
                    .chain(&record.groups),
                rev,
            );
            changes.push(Change::PutNode(record));
            Ok((changes, Some(rev)))
        })
        .await?;
    seen(&s, &name, addr, |_| {});
    tracing::info!(node = %name, rotated = rotate, "node registered");
    let token = token.unwrap_or_default();
    Ok((Json(RegisterResponse { node: name, token }), revision))
}

/// Records that a node called, from where, and lets `f` update what it reported.
fn seen(s: &AppState, node: &str, addr: SocketAddr, f: impl FnOnce(&mut crate::state::Live)) {
    let c = s.shared.read();
    if !c.nodes.contains_key(node) {
        return;
    }
    let mut live = c.live.entry(node.to_string()).or_default();
    live.last_seen = now();
    live.address = Some(addr.ip());
    f(&mut live);
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredQuery {
    /// The revision the agent already has; the call waits for a newer one.
    #[serde(default)]
    after: u64,
    /// How long to wait, in seconds (at most 60).
    #[serde(default)]
    wait: u64,
}

/// `GET /api/v1/nodes/{name}/desired?after=R&wait=S`: the node's desired state as soon as
/// its revision is above `R`, or `304 Not Modified` after `S` seconds. Agents wait here
/// instead of polling, so a change reaches them at once and an idle link carries one small
/// request per wait period.
pub async fn desired(
    p: Principal,
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    QueryParams(q): QueryParams<DesiredQuery>,
) -> Result<Response, ApiError> {
    p.require_node(&name)?;
    let mut rx = s.shared.revision_tx.subscribe();
    let mut closing = s.shared.closing.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(q.wait.min(60));
    loop {
        seen(&s, &name, addr, |_| {});
        {
            let c = s.shared.read();
            let node = c
                .nodes
                .get(&name)
                .ok_or_else(|| ApiError::NotFound(format!("node `{name}` does not exist")))?;
            if c.node_revision(node) > q.after {
                let mut d = c.desired_for(node);
                // Secrets go to the node itself only; an admin looking sees them hidden.
                if !matches!(p, Principal::Node(_)) {
                    hide_secrets(&c, &mut d);
                }
                return Ok(Json(d).into_response());
            }
        }
        rx.borrow_and_update();
        if *closing.borrow_and_update() {
            return Err(ApiError::Unavailable("the server is shutting down"));
        }
        tokio::select! {
            r = tokio::time::timeout_at(deadline, rx.changed()) => match r {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return Ok(StatusCode::NOT_MODIFIED.into_response()),
            },
            _ = closing.changed() => return Err(ApiError::Unavailable("the server is shutting down")),
        }
    }
}

pub async fn heartbeat(
    p: Principal,
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    JsonBody(hb): JsonBody<Heartbeat>,
) -> Result<Json<HeartbeatReply>, ApiError> {
    p.require_node(&name)?;
    let mut need_status = false;
    seen(&s, &name, addr, |l| {
        l.vitals = Some(hb.vitals);
        need_status = !l.has_report;
    });
    Ok(Json(HeartbeatReply { need_status }))
}

pub async fn status(
    p: Principal,
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    JsonBody(report): JsonBody<StatusReport>,
) -> Result<StatusCode, ApiError> {
    p.require_node(&name)?;
    seen(&s, &name, addr, |l| {
        l.report = report;
        l.has_report = true;
    });
    s.shared.reports.send_modify(|n| *n = n.wrapping_add(1));
    Ok(StatusCode::NO_CONTENT)
}
