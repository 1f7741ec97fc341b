//! Prometheus metrics of the control plane, served at `GET /metrics` (OpenMetrics text when
//! the scraper asks for it, else Prometheus text 0.0.4).
//!
//! What is counted where:
//! - requests by route template, method and status, and their latency — the `track`
//!   middleware, around every route;
//! - agents waiting in a desired-state long-poll — `api::desired`, through a guard that
//!   counts down however the wait ends;
//! - commit batches (jobs per batch, seconds per commit) — the writer in `state.rs`;
//! - desired states computed — `api::desired`;
//! - nodes by status — computed from the cluster when scraped, never stale.
//!
//! Labels are bounded: routes are templates (`/api/v1/apps/{name}`), never raw paths, so a
//! scanner cannot grow the series without limit.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gustavo_model::exposition;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s: long-polls end near their wait, so the top buckets see them.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric of the server, registered once.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub long_polls: Gauge,
    pub commit_jobs: Histogram,
    pub commit_seconds: Histogram,
    pub commits_failed: Counter,
    pub desired_computed: Counter,
    nodes: Family<StatusLabels, Gauge>,
    revision: Gauge<u64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("gustavo_server");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's headers to its response, by route template and method",
            latency.clone(),
        );
        let long_polls = Gauge::default();
        registry.register(
            "desired_long_polls_waiting",
            "Agents waiting in a desired-state long-poll now",
            long_polls.clone(),
        );
        let commit_jobs = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register(
            "commit_batch_jobs",
            "Mutations committed together in one store transaction",
            commit_jobs.clone(),
        );
        let commit_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "commit_duration_seconds",
            "Time to apply and commit one batch, durable on return",
            commit_seconds.clone(),
        );
        let commits_failed = Counter::default();
        registry.register(
            "commits_failed",
            "Batches the store refused (nothing of them was applied)",
            commits_failed.clone(),
        );
        let desired_computed = Counter::default();
        registry.register(
            "desired_states_computed",
            "Desired states computed for nodes",
            desired_computed.clone(),
        );
        let nodes = Family::<StatusLabels, Gauge>::default();
        registry.register("nodes", "Registered nodes by status", nodes.clone());
        let revision = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "revision",
            "The cluster's desired-state revision",
            revision.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            long_polls,
            commit_jobs,
            commit_seconds,
            commits_failed,
            desired_computed,
            nodes,
            revision,
        }
    }

    /// The text exposition, with the values computed at scrape time brought up to date.
    pub fn render(&self, nodes_by_status: &[(&str, i64)], revision: u64) -> String {
        for (status, n) in nodes_by_status {
            self.nodes
                .get_or_create(&StatusLabels {
                    status: (*status).to_string(),
                })
                .set(*n);
        }
        self.revision.set(revision);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Counts a long-poll as waiting for as long as it lives.
pub struct Waiting(Gauge);

impl Waiting {
    pub fn new(g: &Gauge) -> Waiting {
        g.inc();
        Waiting(g.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Middleware: counts every request by route template, method and status, with latency.
pub async fn track(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        // Unmatched paths share one label, so scanners cannot grow the series.
        .unwrap_or_else(|| "other".into());
    let method = req.method().as_str().to_string();
    let resp = next.run(req).await;
    let m = &s.shared.metrics;
    m.requests
        .get_or_create(&RequestLabels {
            route: route.clone(),
            method: method.clone(),
            status: resp.status().as_u16().to_string(),
        })
        .inc();
    m.latency
        .get_or_create(&RouteLabels { route, method })
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// `GET /metrics`: for people and scrapers holding a user or admin token (a Prometheus
/// scrape config takes it as `authorization: {credentials_file: …}`); node tokens are
/// refused, so a device cannot read the fleet's figures.
pub async fn metrics(
    p: Principal,
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    p.person()?;
    let (nodes, revision) = {
        let c = s.shared.read();
        let now = crate::now();
        let mut by_status: std::collections::BTreeMap<String, i64> =
            [("ready".to_string(), 0), ("offline".to_string(), 0)].into();
        for name in c.nodes.keys() {
            let st = format!("{:?}", c.node_status(name, now)).to_lowercase();
            *by_status.entry(st).or_default() += 1;
        }
        (by_status, c.revision)
    };
    let nodes: Vec<(&str, i64)> = nodes.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let body = s.shared.metrics.render(&nodes, revision);
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    Ok(if exposition::wants_openmetrics(accept) {
        ([(CONTENT_TYPE, exposition::OPENMETRICS)], body).into_response()
    } else {
        let text = exposition::prometheus_text(&body);
        ([(CONTENT_TYPE, exposition::PROMETHEUS_TEXT)], text).into_response()
    })
}
