//! The `/api/v1` surface: each handler takes the caller (authenticated by the `Principal`
//! extractor), maps the request's wire format onto an operation of [`crate::ops`], and maps
//! the answer and any [`crate::ops::OpError`] back (`error.rs`). The rules live in the
//! operations, so every surface applies the same ones.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gustavo_model::api::{
    App, AppRevision, CreateApp, Heartbeat, HeartbeatReply, NodeContainer, NodeVitals,
    RegisterRequest, RollbackRequest, Stats, StatusReport, UpdateApp,
};
use gustavo_model::names;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::audit::noted;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::ops::agents::Form;
use crate::ops::hidden;
use crate::ops::nodes::{Cordon, NodeFilter};
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

pub async fn health() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

pub async fn openapi(p: Principal) -> Result<Response, ApiError> {
    let _ = p;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        crate::openapi::DOCUMENT.as_str(),
    )
        .into_response())
}

// ---- apps -------------------------------------------------------------------------------

/// The answer to a change that only makes a revision (a delete): `{revision}`, noted for
/// the audit log.
fn revision_answer(r: Result<u64, ApiError>) -> Response {
    let revision = r.as_ref().ok().copied();
    noted(
        r.map(|rev| Json(serde_json::json!({ "revision": rev }))),
        None,
        revision,
    )
}

pub async fn list_apps(
    p: Principal,
    State(s): State<AppState>,
) -> Result<Json<Vec<App>>, ApiError> {
    Ok(Json(s.ops.list_apps(&p.person()?)))
}

pub async fn get_app(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<App>, ApiError> {
    s.ops.get_app(&p.person()?, &name).map(Json)
}

pub async fn create_app(
    p: Principal,
    State(s): State<AppState>,
    JsonBody(req): JsonBody<CreateApp>,
) -> Response {
    let object = format!("app:{}", req.name);
    let r = async { s.ops.create_app(&p.person()?, req).await }.await;
    let revision = r.as_ref().ok().map(|a| a.revision);
    noted(
        r.map(|a| (StatusCode::CREATED, Json(a))),
        Some(object),
        revision,
    )
}

pub async fn update_app(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<UpdateApp>,
) -> Response {
    let r = async { s.ops.update_app(&p.person()?, name, req).await }.await;
    let revision = r.as_ref().ok().map(|a| a.revision);
    noted(r.map(Json), None, revision)
}

pub async fn app_action(
    p: Principal,
    State(s): State<AppState>,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let r = async {
        let who = p.person()?;
        s.ops.app_action(&who, name, action.parse()?).await
    }
    .await;
    let revision = r.as_ref().ok().map(|a| a.revision);
    noted(r.map(Json), None, revision)
}

pub async fn app_history(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<AppRevision>>, ApiError> {
    Ok(Json(s.ops.app_history(&p.person()?, &name).await?))
}

pub async fn rollback_app(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<RollbackRequest>,
) -> Response {
    let r = async { s.ops.rollback_app(&p.person()?, name, req.to).await }.await;
    let revision = r.as_ref().ok().map(|a| a.revision);
    noted(r.map(Json), None, revision)
}

pub async fn rollout_action(
    p: Principal,
    State(s): State<AppState>,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let r = async {
        let who = p.person()?;
        s.ops.rollout_action(&who, name, action.parse()?).await
    }
    .await;
    let revision = r.as_ref().ok().map(|a| a.revision);
    noted(r.map(Json), None, revision)
}

pub async fn delete_app(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Response {
    let r = async { s.ops.delete_app(&p.person()?, name).await }.await;
    revision_answer(r)
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

/// How often a waiting rollout is looked at again at most: a fleet's status reports arrive
/// by the thousand; each look recounts the nodes whose report changed since the last
/// (`rollout_counts`).
const ROLLOUT_RECHECK: Duration = Duration::from_millis(50);

pub async fn rollout(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
    QueryParams(q): QueryParams<RolloutQuery>,
) -> Result<Response, ApiError> {
    s.ops.may_read_rollout(&p.person()?, &name)?;
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
    Ok(Json(s.ops.stats()))
}

// ---- groups, nodes, cache views -----------------------------------------------------------

pub async fn list_groups(p: Principal, State(s): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(s.ops.list_groups(&p.person()?)).into_response())
}

pub async fn get_group(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(s.ops.get_group(&p.person()?, &name)?).into_response())
}

/// `PUT /api/v1/groups/{name}/pressure`: the group's node pressure thresholds.
pub async fn set_group_pressure(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
    JsonBody(t): JsonBody<gustavo_model::pressure::Thresholds>,
) -> Response {
    let r = async { s.ops.set_group_pressure(&p.person()?, name, Some(t)).await }.await;
    revision_answer(r)
}

/// `DELETE /api/v1/groups/{name}/pressure`: back to the server's thresholds.
pub async fn clear_group_pressure(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Response {
    let r = async { s.ops.set_group_pressure(&p.person()?, name, None).await }.await;
    revision_answer(r)
}

/// `DELETE /api/v1/groups/{name}`: see [`crate::ops::Ops::delete_group`].
pub async fn delete_group(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Response {
    let r = async { s.ops.delete_group(&p.person()?, name).await }.await;
    revision_answer(r)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    group: Option<String>,
    host: Option<String>,
}

impl From<Filter> for NodeFilter {
    fn from(f: Filter) -> NodeFilter {
        NodeFilter {
            group: f.group,
            host: f.host,
        }
    }
}

pub async fn list_nodes(
    p: Principal,
    State(s): State<AppState>,
    QueryParams(f): QueryParams<Filter>,
) -> Result<Response, ApiError> {
    Ok(Json(s.ops.list_nodes(&p.person()?, &f.into())).into_response())
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
    Ok(Json(s.ops.get_node(person.as_ref(), &name)?).into_response())
}

pub async fn delete_node(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Response {
    let r = async {
        p.require_admin()?;
        s.ops.delete_node(name).await
    }
    .await;
    revision_answer(r)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    #[serde(default)]
    after: u64,
    /// Seconds to wait for an event when there is none after `after` (at most 60).
    #[serde(default)]
    wait: u64,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /api/v1/events?after=ID&wait=S`: what happened after event `ID`, waiting up to
/// `S` seconds for something to happen.
pub async fn events(
    p: Principal,
    State(s): State<AppState>,
    QueryParams(q): QueryParams<EventQuery>,
) -> Result<Json<Vec<gustavo_model::api::Event>>, ApiError> {
    let who = p.person()?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    Ok(Json(
        s.ops
            .events(&who, q.after, Duration::from_secs(q.wait), limit)
            .await,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreQuery {
    app: Option<String>,
}

/// `GET /api/v1/scores?app=APP`: each node's placement score and its parts.
pub async fn scores(
    p: Principal,
    State(s): State<AppState>,
    QueryParams(q): QueryParams<ScoreQuery>,
) -> Result<Json<Vec<gustavo_model::schedule::Score>>, ApiError> {
    s.ops.scores(&p.person()?, q.app.as_deref()).map(Json)
}

/// `POST /api/v1/nodes/{name}/cordon` and `/uncordon` (admin).
pub async fn cordon(p: Principal, State(s): State<AppState>, Path(name): Path<String>) -> Response {
    cordon_as(p, s, name, Cordon::Cordon).await
}

pub async fn drain(p: Principal, State(s): State<AppState>, Path(name): Path<String>) -> Response {
    cordon_as(p, s, name, Cordon::Drain).await
}

pub async fn uncordon(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Response {
    cordon_as(p, s, name, Cordon::Uncordon).await
}

async fn cordon_as(p: Principal, s: AppState, name: String, mode: Cordon) -> Response {
    let object = format!("node:{name}");
    let r = async {
        p.require_admin()?;
        s.ops.cordon(name, mode).await
    }
    .await;
    let revision = r.as_ref().ok().copied();
    noted(
        r.map(|rev| {
            Json(serde_json::json!({
                "revision": rev,
                "cordoned": mode != Cordon::Uncordon,
                "draining": mode == Cordon::Drain,
            }))
        }),
        Some(object),
        revision,
    )
}

pub async fn containers(
    p: Principal,
    State(s): State<AppState>,
    QueryParams(f): QueryParams<Filter>,
) -> Result<Json<Vec<NodeContainer>>, ApiError> {
    Ok(Json(s.ops.containers(&p.person()?, &f.into())))
}

pub async fn vitals(
    p: Principal,
    State(s): State<AppState>,
    QueryParams(f): QueryParams<Filter>,
) -> Result<Json<Vec<NodeVitals>>, ApiError> {
    Ok(Json(s.ops.vitals(&p.person()?, &f.into())))
}

// ---- the agent protocol ------------------------------------------------------------------

/// `POST /api/v1/nodes/register`: see [`crate::ops::Ops::register`].
pub async fn register(
    p: Principal,
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> Response {
    let object = names::validate("node", &req.name)
        .is_ok()
        .then(|| format!("node:{}", req.name));
    match s.ops.register(&p, addr.ip(), req).await {
        Ok((resp, revision)) => noted(Json(resp), object, revision),
        Err(e) => noted(e, object, None),
    }
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
/// its revision is above `R`, or `304 Not Modified` after `S` seconds.
pub async fn desired(
    p: Principal,
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    QueryParams(q): QueryParams<DesiredQuery>,
) -> Result<Response, ApiError> {
    let wait = Duration::from_secs(q.wait);
    Ok(
        match s
            .ops
            .desired(&p, addr.ip(), &name, q.after, wait, Form::Full)
            .await?
        {
            Some(d) => Json(d).into_response(),
            None => StatusCode::NOT_MODIFIED.into_response(),
        },
    )
}

/// `POST /api/v1/nodes/{name}/sync`: the status report and vitals the node carries, then
/// the long-poll for its desired state (`200`, or `304` when nothing newer came); the
/// `gustavo-need-report: 1` header asks for the status report again. With the request
/// header `gustavo-form: template`, apps come as templates the agent completes; any other
/// value (a newer agent's) gets the full form rather than an error.
pub async fn sync(
    p: Principal,
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    JsonBody(req): JsonBody<gustavo_model::api::SyncRequest>,
) -> Result<Response, ApiError> {
    let form = form_of(&headers);
    let (desired, need_report) = s.ops.sync(&p, addr.ip(), &name, req, form).await?;
    let mut resp = match desired {
        Some(d) => Json(d).into_response(),
        None => StatusCode::NOT_MODIFIED.into_response(),
    };
    if need_report {
        resp.headers_mut().insert(
            gustavo_model::api::NEED_REPORT_HEADER,
            axum::http::HeaderValue::from_static("1"),
        );
    }
    Ok(resp)
}

/// The form a sync or stream asks for with the `gustavo-form` header; any value the server
/// does not know (a newer agent's) gets the full form rather than an error.
fn form_of(headers: &axum::http::HeaderMap) -> Form {
    match headers.get(gustavo_model::api::FORM_HEADER) {
        Some(v) if v.as_bytes() == b"template" => Form::Template,
        _ => Form::Full,
    }
}

/// `POST /api/v1/nodes/{name}/stream` (HTTP/2): the agent's stream, run by
/// [`crate::ops::Ops::stream`] inside the answer's body, which is its lines down.
pub async fn stream(
    p: Principal,
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    if req.version() != axum::http::Version::HTTP_2 {
        return Err(ApiError::BadRequest(
            "the stream needs HTTP/2; agents speaking HTTP/1.1 use POST /api/v1/nodes/{name}/sync"
                .into(),
        ));
    }
    s.ops.may_stream(&p, &name)?;
    let form = form_of(req.headers());
    let said = |h: &str| req.headers().get(h).is_some_and(|v| v.as_bytes() == b"1");
    let deltas = crate::ops::stream::Deltas {
        apps: said(gustavo_model::api::DELTAS_HEADER),
        pressure: said(gustavo_model::api::KEPT_PRESSURE_HEADER),
    };
    let up = crate::ops::stream::Lines::new(req.into_body(), s.body.max);
    let down = s.ops.clone().stream(addr.ip(), name, form, deltas, up);
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::new(down),
    )
        .into_response())
}

pub async fn heartbeat(
    p: Principal,
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    JsonBody(hb): JsonBody<Heartbeat>,
) -> Result<Json<HeartbeatReply>, ApiError> {
    s.ops.heartbeat(&p, addr.ip(), &name, hb).map(Json)
}

pub async fn status(
    p: Principal,
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    JsonBody(report): JsonBody<StatusReport>,
) -> Result<StatusCode, ApiError> {
    let runs = report.jobs.clone();
    s.ops.status(&p, addr.ip(), &name, report)?;
    // The caller was checked to be this node by `status`.
    s.ops.job_runs(&name, runs).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/v1/watched` (admin): watch agentless hosts through Glances.
pub async fn import_watched(
    p: Principal,
    State(s): State<AppState>,
    JsonBody(req): JsonBody<crate::ops::watched::ImportRequest>,
) -> Result<Json<crate::ops::watched::ImportResult>, ApiError> {
    s.ops.import_watched(&p.person()?, req).await.map(Json)
}

/// `GET /api/v1/watched` (admin).
pub async fn list_watched(
    p: Principal,
    State(s): State<AppState>,
) -> Result<Json<Vec<gustavo_model::watched::WatchedHost>>, ApiError> {
    s.ops.list_watched(&p.person()?).map(Json)
}
