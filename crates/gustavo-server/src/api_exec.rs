//! The v1 mapping of `gustavo exec` / `gustavo docker` (rules in [`crate::ops::exec`]).

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gustavo_model::exec::{ExecReply, ExecRun};

use crate::AppState;
use crate::api::JsonBody;
use crate::audit::ErrorNote;
use crate::auth::Principal;
use crate::error::ApiError;

/// `POST /api/v1/exec` (admin): runs a command on nodes, answers when every node has.
pub async fn run(
    p: Principal,
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    JsonBody(run): JsonBody<ExecRun>,
) -> Result<Response, ApiError> {
    let command = run.command_line();
    let answer = s.ops.exec(&p, addr.ip().to_string(), run).await?;
    let mut resp = Json(answer).into_response();
    // The request's own audit entry names the command; each node's outcome has its own.
    resp.extensions_mut().insert(ErrorNote(command));
    Ok(resp)
}

/// `POST /api/v1/nodes/{name}/exec/{id}`: a node's answer to one of its commands.
pub async fn reply(
    p: Principal,
    State(s): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    JsonBody(reply): JsonBody<ExecReply>,
) -> Result<StatusCode, ApiError> {
    s.ops.exec_reply(&p, &name, &id, reply)?;
    Ok(StatusCode::NO_CONTENT)
}
