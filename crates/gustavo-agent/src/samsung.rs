//! Samsung Edge Orchestration's service API on the device (`gustavo agent --samsung-listen`,
//! the seed's `127.0.0.1:56001`): `POST /api/v1/orchestration/services`.
//!
//! A request is checked here (caller on this device, optional bearer token, image
//! allowlist, the `ExecCmd` argv), then forwarded to the server as this node; the server
//! runs it as a one-shot job on the best-scoring device of this device's groups (not this
//! one with `SelfSelection: "false"`). The answer keeps the seed's body — `Message`,
//! `ServiceName`, `RemoteTargetInfo{ExecutionType, Target}` — with real status codes for
//! errors (the seed answered 200 to everything). Then a task follows the job and POSTs
//! `Started`, `Finished` or `Failed` (with the exit code) to `StatusCallbackURI`, which the
//! seed documented and never called. It is this device that calls it, since the caller's
//! URI (often `http://localhost:…`) is only meaningful here. There is no table of
//! requests, so no limit but memory (the seed panicked at its 1,025th).
//!
//! `ExecutionType: native` runs an allowlisted program on this device; `android` is refused.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use gustavo_client::{Client, ClientError};
use gustavo_model::compat::samsung::{
    RemoteTargetInfo, ServiceRequest, ServiceResponse, ServiceRun, StatusNotification,
    parse_exec_cmd, seed_statuses, service_job,
};
use tokio::sync::watch;

/// The largest request body read.
const MAX_BODY: usize = 256 * 1024;

/// How the API is set up (agent flags or config file).
#[derive(Debug, Clone, Default)]
pub struct SamsungConfig {
    /// Callers must send `Authorization: Bearer TOKEN` when set.
    pub token: Option<String>,
    /// Images it may run; empty means any (the device groups' policies still apply).
    pub images: Vec<String>,
    /// Programs `ExecutionType: native` may run; empty refuses native.
    pub native: Vec<String>,
}

#[derive(Clone)]
struct Api {
    cfg: Arc<SamsungConfig>,
    /// The node's name and server client, once registered.
    control: watch::Receiver<Option<(String, Client)>>,
    /// Peer mode: services go to the best peer instead of through the server.
    peer: Option<Arc<crate::peer::PeerNode>>,
    http: reqwest::Client,
}

/// The router of the Samsung API.
pub fn router(
    cfg: SamsungConfig,
    control: watch::Receiver<Option<(String, Client)>>,
    peer: Option<Arc<crate::peer::PeerNode>>,
) -> Router {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    Router::new()
        .route("/api/v1/orchestration/services", post(services))
        .fallback(|| async {
            reply(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "",
                "no such route (this device serves POST /api/v1/orchestration/services)",
            )
        })
        .with_state(Api {
            cfg: Arc::new(cfg),
            control,
            peer,
            http,
        })
}

/// The seed's body, plus an `error` object naming the problem, with a real status.
fn reply(status: StatusCode, message: &str, service: &str, detail: &str) -> Response {
    let body = serde_json::json!({
        "Message": message,
        "ServiceName": service,
        "RemoteTargetInfo": null,
        "error": {"code": message.to_lowercase(), "message": detail},
    });
    (status, [(header::CONNECTION, "close")], axum::Json(body)).into_response()
}

/// The seed's rule: the caller is this device (loopback or one of its own addresses).
fn is_local(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    if ip.is_loopback() {
        return true;
    }
    let Ok(nets) = sysinfo::Networks::new_with_refreshed_list() else {
        return false;
    };
    (&nets)
        .into_iter()
        .any(|(_, data)| data.ip_networks().iter().any(|n| n.addr == ip))
}

/// Whether `image` may run here: any image with an empty allowlist, else one that matches
/// an entry (`gustavo_model::access::image_allowed`: a repository, `repo:tag`, or a digest).
pub(crate) fn image_allowed(allow: &[String], image: &str) -> bool {
    allow.is_empty()
        || allow
            .iter()
            .any(|a| gustavo_model::access::image_allowed(a, image))
}

async fn services(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !is_local(peer.ip()) {
        return reply(
            StatusCode::NOT_ACCEPTABLE,
            "NOT_ACCEPTABLE",
            "",
            &format!("callers must be on this device; {} is not", peer.ip()),
        );
    }
    if let Some(want) = &api.cfg.token {
        let got = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.strip_prefix("Bearer ").unwrap_or(v));
        if got != Some(want.as_str()) {
            return reply(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "",
                "missing or wrong bearer token (Authorization: Bearer TOKEN)",
            );
        }
    }
    if body.len() > MAX_BODY {
        return reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            "INVALID_PARAMETER",
            "",
            &format!("the body is larger than {MAX_BODY} bytes"),
        );
    }
    let req: ServiceRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                "INVALID_PARAMETER",
                "",
                &format!("the body is not a service request: {e}"),
            );
        }
    };
    let name = req.service_name.clone().unwrap_or_default();
    if name.is_empty() {
        return reply(
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER",
            "",
            "ServiceName is required",
        );
    }
    let Some(infos) = req.service_info.as_ref().filter(|i| !i.is_empty()) else {
        return reply(
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER",
            &name,
            "ServiceInfo is required (a list of {ExecutionType, ExecCmd})",
        );
    };
    if let Some(uri) = &req.status_callback_uri
        && let Err(e) = gustavo_model::job::CallbackUrl::parse(uri)
    {
        return reply(
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER",
            &name,
            &format!("StatusCallbackURI: {e}"),
        );
    }
    // The first execution type this device can serve, in the caller's order.
    let mut refusals = Vec::new();
    for info in infos {
        match info.execution_type.as_str() {
            "container" => return container(&api, &req, &name, info.exec_cmd.as_deref()).await,
            "native" if !api.cfg.native.is_empty() => {
                return native(&api, &req, &name, info.exec_cmd.as_deref());
            }
            "native" => refusals.push(
                "native: no program is allowed on this device (agent --samsung-native)".to_string(),
            ),
            "android" => refusals.push("android: Gustavo does not run Android apps".to_string()),
            other => refusals.push(format!(
                "unknown ExecutionType `{other}` (container, native or android)"
            )),
        }
    }
    reply(
        StatusCode::BAD_REQUEST,
        "INVALID_PARAMETER",
        &name,
        &refusals.join("; "),
    )
}

async fn container(
    api: &Api,
    req: &ServiceRequest,
    name: &str,
    argv: Option<&[String]>,
) -> Response {
    let Some(argv) = argv else {
        return reply(
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER",
            name,
            "ExecCmd is required for a container service (pre-installed services are not supported)",
        );
    };
    let job = match parse_exec_cmd(argv).and_then(service_job) {
        Ok(j) => j,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                "INVALID_PARAMETER",
                name,
                &e.to_string(),
            );
        }
    };
    if !image_allowed(&api.cfg.images, &job.docker_image) {
        return reply(
            StatusCode::FORBIDDEN,
            "NOT_ALLOWED_COMMAND",
            name,
            &format!(
                "image `{}` is not in this device's allowlist (agent --samsung-image)",
                job.docker_image
            ),
        );
    }
    if let Some(peer) = &api.peer {
        let self_selection = req.self_selection.unwrap_or(true);
        let callback = req.status_callback_uri.clone();
        return match peer.request(name, job, self_selection, callback).await {
            Ok((node, address)) => ok(name, if address.is_empty() { node } else { address }),
            Err(crate::peer::RequestError::NoTarget(why)) => {
                reply(StatusCode::NOT_FOUND, "SERVICE_NOT_FOUND", name, &why)
            }
        };
    }
    let Some((node, client)) = api.control.borrow().clone() else {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "INTERNAL_SERVER_ERROR",
            name,
            "the agent has not joined its server yet; try again shortly",
        );
    };
    let run = ServiceRun {
        service: name.to_string(),
        spec: job,
        self_selection: req.self_selection.unwrap_or(true),
        requester: req.service_requester.clone(),
    };
    let started = match client.request_service(&node, &run).await {
        Ok(s) => s,
        Err(ClientError::Api {
            status, message, ..
        }) => {
            let (code, msg) = match status {
                404 => (StatusCode::NOT_FOUND, "SERVICE_NOT_FOUND"),
                403 => (StatusCode::FORBIDDEN, "NOT_ALLOWED_COMMAND"),
                400 => (StatusCode::BAD_REQUEST, "INVALID_PARAMETER"),
                _ => (StatusCode::BAD_GATEWAY, "INTERNAL_SERVER_ERROR"),
            };
            return reply(code, msg, name, &message);
        }
        Err(e) => {
            return reply(
                StatusCode::BAD_GATEWAY,
                "INTERNAL_SERVER_ERROR",
                name,
                &format!("cannot reach the server: {e}"),
            );
        }
    };
    tracing::info!(service = name, job = %started.job, target = %started.node, "service requested");
    if let Some(uri) = req.status_callback_uri.clone() {
        tokio::spawn(follow(
            api.http.clone(),
            client,
            node,
            started.job.clone(),
            name.to_string(),
            uri,
        ));
    }
    let target = if started.address.is_empty() {
        started.node.clone()
    } else {
        started.address.clone()
    };
    ok(name, target)
}

/// The seed's success body: where the service runs.
fn ok(name: &str, target: String) -> Response {
    (
        [(header::CONNECTION, "close")],
        axum::Json(ServiceResponse {
            message: "ERROR_NONE".into(),
            service_name: name.to_string(),
            remote_target_info: Some(RemoteTargetInfo {
                execution_type: "container".into(),
                target,
            }),
        }),
    )
        .into_response()
}

/// Follows a service's job and tells `uri` each state the caller knows (`Started`,
/// `Finished`, `Failed`), once each, retrying a refused delivery a few times.
async fn follow(
    http: reqwest::Client,
    client: Client,
    node: String,
    job: String,
    service: String,
    uri: String,
) {
    let mut told: Vec<&'static str> = Vec::new();
    // A day at most: a service that never ends is not followed forever.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(24 * 3600);
    while tokio::time::Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let j = match client.service_status(&node, &job).await {
            Ok(j) => j,
            Err(ClientError::Api { status: 404, .. }) => return,
            Err(_) => continue,
        };
        let run = j.runs.last();
        let target = j
            .node
            .clone()
            .or_else(|| run.map(|r| r.node.clone()))
            .unwrap_or_default();
        for &status in seed_statuses(j.state, run) {
            if told.contains(&status) {
                continue;
            }
            let end = status != "Started";
            let note = StatusNotification {
                service_name: service.clone(),
                status: status.to_string(),
                exit_code: end.then(|| run.and_then(|r| r.exit_code)).flatten(),
                target: target.clone(),
                job: job.clone(),
                error: end.then(|| run.and_then(|r| r.error.clone())).flatten(),
            };
            deliver(&http, &uri, &note).await;
            told.push(status);
        }
        if told.contains(&"Finished") || told.contains(&"Failed") {
            return;
        }
    }
}

pub(crate) async fn deliver(http: &reqwest::Client, uri: &str, note: &StatusNotification) {
    for attempt in 0..5u32 {
        match http.post(uri).json(note).send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => tracing::warn!(uri, status = %r.status(), "status callback refused"),
            Err(e) => tracing::warn!(uri, error = %e, "status callback failed"),
        }
        tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
    }
}

/// `ExecutionType: native`: an allowlisted program, run on this device.
fn native(api: &Api, req: &ServiceRequest, name: &str, argv: Option<&[String]>) -> Response {
    let Some(argv) = argv.filter(|a| !a.is_empty()) else {
        return reply(
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER",
            name,
            "ExecCmd is required for a native service",
        );
    };
    let program = &argv[0];
    let base = program.rsplit('/').next().unwrap_or(program);
    if !api
        .cfg
        .native
        .iter()
        .any(|a| a == program || (!a.contains('/') && a == base && !program.contains('/')))
    {
        return reply(
            StatusCode::FORBIDDEN,
            "NOT_ALLOWED_COMMAND",
            name,
            &format!("program `{program}` is not allowed on this device (agent --samsung-native)"),
        );
    }
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(false);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                "INVALID_PARAMETER",
                name,
                &format!("cannot start `{program}`: {e}"),
            );
        }
    };
    let http = api.http.clone();
    let uri = req.status_callback_uri.clone();
    let service = name.to_string();
    let target = api
        .control
        .borrow()
        .as_ref()
        .map(|(n, _)| n.clone())
        .unwrap_or_else(|| "localhost".into());
    let target_c = target.clone();
    tokio::spawn(async move {
        let note = |status: &str, exit_code: Option<i64>| StatusNotification {
            service_name: service.clone(),
            status: status.into(),
            exit_code,
            target: target_c.clone(),
            job: String::new(),
            error: None,
        };
        if let Some(uri) = &uri {
            deliver(&http, uri, &note("Started", None)).await;
        }
        let status = child.wait().await;
        if let Some(uri) = &uri {
            let code = status.as_ref().ok().and_then(|s| s.code()).map(i64::from);
            let word = if code == Some(0) {
                "Finished"
            } else {
                "Failed"
            };
            deliver(&http, uri, &note(word, code)).await;
        }
    });
    (
        [(header::CONNECTION, "close")],
        axum::Json(ServiceResponse {
            message: "ERROR_NONE".into(),
            service_name: name.to_string(),
            remote_target_info: Some(RemoteTargetInfo {
                execution_type: "native".into(),
                target,
            }),
        }),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_matches_repositories_tags_and_digests() {
        let allow = vec!["hello-world".to_string(), "reg:5000/app:v1".to_string()];
        assert!(image_allowed(&allow, "hello-world"));
        assert!(image_allowed(&allow, "hello-world:latest"));
        assert!(image_allowed(&allow, "reg:5000/app:v1"));
        assert!(!image_allowed(&allow, "reg:5000/app:v2"));
        assert!(!image_allowed(&allow, "evil"));
        assert!(image_allowed(&[], "anything"));
    }

    #[test]
    fn loopback_callers_are_local() {
        assert!(is_local("127.0.0.1".parse().unwrap()));
        assert!(is_local("::1".parse().unwrap()));
        assert!(is_local("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_local("203.0.113.7".parse().unwrap()));
    }
}
