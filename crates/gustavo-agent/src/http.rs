//! The agent's local HTTP listener (`gustavo agent --listen`, loopback by default): the
//! routes of the device's local APIs. Today `/health` and `/metrics`; the Glances and
//! Samsung APIs join here. Accepting connections (deadlines, TLS) is the server's code,
//! shared: this module only says what each route answers.

use axum::Router;
use axum::http::HeaderMap;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use gustavo_model::exposition;

use crate::metrics::METRICS;

/// The default address of the local listener: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7421";

/// What the routes need to know about the agent.
#[derive(Clone)]
pub struct Local {
    pub node: String,
    /// Peer mode: `GET /peers` lists this device and its peers (`gustavo peer list`).
    pub peer: Option<std::sync::Arc<crate::peer::PeerNode>>,
}

pub fn router(local: Local) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/peers", get(peers))
        .fallback(|| async {
            (
                axum::http::StatusCode::NOT_FOUND,
                axum::Json(serde_json::json!({"error": "not_found", "message": "no such route"})),
            )
        })
        .with_state(local)
}

async fn health(axum::extract::State(l): axum::extract::State<Local>) -> Response {
    axum::Json(serde_json::json!({
        "status": "ok",
        "node": l.node,
        "version": env!("CARGO_PKG_VERSION"),
        "applied_revision": METRICS.applied_revision.get(),
    }))
    .into_response()
}

async fn peers(axum::extract::State(l): axum::extract::State<Local>) -> Response {
    match &l.peer {
        Some(p) => axum::Json(p.list()).into_response(),
        None => (
            axum::http::StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({
                "error": "not_peer",
                "message": "this agent is not in peer mode (gustavo agent --peer)",
            })),
        )
            .into_response(),
    }
}

async fn metrics(headers: HeaderMap) -> Response {
    let body = METRICS.render();
    let accept = headers.get(ACCEPT).and_then(|v| v.to_str().ok());
    if exposition::wants_openmetrics(accept) {
        ([(CONTENT_TYPE, exposition::OPENMETRICS)], body).into_response()
    } else {
        (
            [(CONTENT_TYPE, exposition::PROMETHEUS_TEXT)],
            exposition::prometheus_text(&body),
        )
            .into_response()
    }
}
