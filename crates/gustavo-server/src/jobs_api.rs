//! The v1 surface of jobs: thin handlers over `ops/jobs.rs`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gustavo_model::job::{Job, RunJob};
use gustavo_store::CallbackRecord;

use crate::AppState;
use crate::api::JsonBody;
use crate::audit::noted;
use crate::auth::Principal;
use crate::error::ApiError;

pub async fn list_jobs(
    p: Principal,
    State(s): State<AppState>,
) -> Result<Json<Vec<Job>>, ApiError> {
    Ok(Json(s.ops.list_jobs(&p.person()?)))
}

pub async fn get_job(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Job>, ApiError> {
    s.ops.get_job(&p.person()?, &name).map(Json)
}

pub async fn run_job(
    p: Principal,
    State(s): State<AppState>,
    JsonBody(req): JsonBody<RunJob>,
) -> Response {
    let object = format!("job:{}", req.name);
    let r = async { s.ops.run_job(&p.person()?, req).await }.await;
    let revision = r.as_ref().ok().map(|j| j.revision);
    noted(
        r.map(|j| (StatusCode::CREATED, Json(j))),
        Some(object),
        revision,
    )
}

pub async fn delete_job(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Response {
    let object = format!("job:{name}");
    let r = async { s.ops.delete_job(&p.person()?, name).await }.await;
    let revision = r.as_ref().ok().copied();
    match r {
        Ok(rev) => noted(
            Json(serde_json::json!({ "revision": rev })),
            Some(object),
            revision,
        ),
        Err(e) => e.into_response(),
    }
}

pub async fn callbacks(
    p: Principal,
    State(s): State<AppState>,
) -> Result<Json<Vec<CallbackRecord>>, ApiError> {
    s.ops.pending_callbacks(&p.person()?).map(Json)
}

/// `POST /api/v1/nodes/{name}/services`: a device's Samsung API asks for a service.
pub async fn request_service(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<gustavo_model::compat::samsung::ServiceRun>,
) -> Response {
    let r = async {
        p.require_node(&name)?;
        s.ops.request_service(&name, req).await
    }
    .await;
    noted(r.map(|j| (StatusCode::CREATED, Json(j))), None, None)
}

/// `GET /api/v1/nodes/{name}/services/{job}`: the requesting device follows its service.
pub async fn service_status(
    p: Principal,
    State(s): State<AppState>,
    Path((name, job)): Path<(String, String)>,
) -> Result<Json<Job>, ApiError> {
    p.require_node(&name)?;
    s.ops.service_status(&name, &job).map(Json)
}
