//! The Sinfonia surface, at the root of the server's port like Sinfonia's own tiers (the
//! real `sinfonia-tier3` client checks answers against an OpenAPI file whose server path
//! is `/api/v1`, so no prefix is possible). Its names — `deploy`, `cloudlets`, `recipe` —
//! are not v1 names, so the two surfaces share the port without clashing.
//!
//! - `POST /api/v1/deploy/{uuid}/{key}?results=N` — deploy (or renew) the client's
//!   backends; `X-ClientIP` (honoured from token holders only: a tier-1 proxy or an
//!   operator; anonymous clients are who their socket says) and `X-Location: lat,lon`.
//! - `GET` the same path — the live deployments, without deploying or renewing.
//! - `DELETE` the same path — tear them down (204).
//! - `GET /api/v1/cloudlets/` — the sites as `CloudletInfo`; `POST` (admin) — a tier 2
//!   updating its existing site's metadata and resources; `GET /api/v1/recipe/{uuid}/`.
//!
//! Errors are `{"error": {"code", "message"}}` with real 4xx codes, never Sinfonia's
//! untyped 500s. Also here: the native v1 handlers for sites and deployments.

use std::net::{IpAddr, SocketAddr};

use axum::Json;
use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{Extensions, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use gustavo_model::compat::sinfonia::CloudletDeployment;
use gustavo_model::sites::{GeoPoint, Site};
use serde::Deserialize;

use crate::AppState;
use crate::api::{JsonBody, QueryParams};
use crate::auth::{Identity, Principal};
use crate::error::ApiError;
use crate::ops::deployments::{Caller, DeployRequest};
use gustavo_model::lease::{DeploymentView, Explain};
use gustavo_model::sites::SiteView;

/// Adds the Sinfonia routes (with and without Sinfonia's trailing slashes).
pub fn add(router: Router<AppState>) -> Router<AppState> {
    router
        .route(
            "/api/v1/deploy/{uuid}/{*key}",
            on(MethodFilter::POST, deploy)
                .on(MethodFilter::GET, deployed)
                .on(MethodFilter::DELETE, undeploy),
        )
        .route(
            "/api/v1/cloudlets/",
            on(MethodFilter::GET, cloudlets).on(MethodFilter::POST, post_cloudlet),
        )
        .route(
            "/api/v1/cloudlets",
            on(MethodFilter::GET, cloudlets).on(MethodFilter::POST, post_cloudlet),
        )
        .route("/api/v1/recipe/{uuid}/", on(MethodFilter::GET, recipe))
        .route("/api/v1/recipe/{uuid}", on(MethodFilter::GET, recipe))
}

/// Who is calling, from the identity the `identify` middleware attached: no token is an
/// anonymous client; a bad token is refused (not silently anonymous).
fn caller(ext: &axum::http::Extensions) -> Result<Caller, ApiError> {
    match ext.get::<Identity>().and_then(|i| i.0.clone()) {
        None => Ok(Caller::Anonymous),
        Some(Err(e)) => Err(e),
        Some(Ok(p)) => Ok(match p.person() {
            Ok(s) => Caller::Person(s),
            Err(_) => Caller::Other,
        }),
    }
}

/// The client's address: `X-ClientIP` from a token holder, else the socket's peer.
fn client_ip(caller: &Caller, headers: &HeaderMap, peer: SocketAddr) -> Result<IpAddr, ApiError> {
    match (caller, headers.get("x-clientip")) {
        (Caller::Person(_), Some(v)) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| ApiError::BadRequest("X-ClientIP must be an IP address".into())),
        _ => Ok(peer.ip()),
    }
}

fn location(headers: &HeaderMap) -> Result<Option<GeoPoint>, ApiError> {
    headers
        .get("x-location")
        .map(|v| {
            let text = v
                .to_str()
                .map_err(|_| ApiError::BadRequest("X-Location must be `lat,lon`".into()))?;
            GeoPoint::parse(text).map_err(|e| ApiError::BadRequest(format!("X-Location: {e}")))
        })
        .transpose()
}

fn path2(p: Result<Path<(String, String)>, PathRejection>) -> Result<(String, String), ApiError> {
    p.map(|Path(v)| v)
        .map_err(|e| ApiError::BadRequest(format!("bad path: {}", e.body_text())))
}

#[derive(Debug, Deserialize)]
pub struct DeployQuery {
    #[serde(default)]
    results: Option<usize>,
}

fn sinfonia(views: Vec<DeploymentView>) -> Json<Vec<CloudletDeployment>> {
    Json(views.into_iter().map(|v| v.sinfonia).collect())
}

struct Ctx {
    caller: Caller,
    ip: IpAddr,
}

fn ctx(headers: &HeaderMap, ext: &Extensions, peer: SocketAddr) -> Result<Ctx, ApiError> {
    let caller = caller(ext)?;
    let ip = client_ip(&caller, headers, peer)?;
    Ok(Ctx { caller, ip })
}

async fn deploy(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    path: Result<Path<(String, String)>, PathRejection>,
    QueryParams(q): QueryParams<DeployQuery>,
    headers: HeaderMap,
    ext: Extensions,
) -> Result<Json<Vec<CloudletDeployment>>, ApiError> {
    let (uuid, key) = path2(path)?;
    let c = ctx(&headers, &ext, peer)?;
    let location = location(&headers)?;
    let views = s
        .ops
        .deploy(
            &c.caller,
            DeployRequest {
                uuid,
                key,
                client_ip: c.ip,
                location,
                results: q.results.unwrap_or(1),
            },
        )
        .await?;
    Ok(sinfonia(views))
}

async fn deployed(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    ext: Extensions,
) -> Result<Json<Vec<CloudletDeployment>>, ApiError> {
    let (uuid, key) = path2(path)?;
    let c = ctx(&headers, &ext, peer)?;
    s.ops
        .deployments_of(&c.caller, &uuid, &key, c.ip)
        .map(sinfonia)
}

async fn undeploy(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    ext: Extensions,
) -> Result<StatusCode, ApiError> {
    let (uuid, key) = path2(path)?;
    let c = ctx(&headers, &ext, peer)?;
    s.ops.undeploy(&c.caller, &uuid, &key, c.ip).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn cloudlets(State(s): State<AppState>) -> Response {
    Json(s.ops.cloudlets()).into_response()
}

async fn post_cloudlet(
    p: Principal,
    State(s): State<AppState>,
    JsonBody(info): JsonBody<gustavo_model::compat::sinfonia::CloudletInfo>,
) -> Result<StatusCode, ApiError> {
    s.ops.post_cloudlet(&p.person()?, info).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn recipe(
    State(s): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(uuid) =
        path.map_err(|e| ApiError::BadRequest(format!("bad path: {}", e.body_text())))?;
    Ok(Json(s.ops.recipe(&uuid)?).into_response())
}

// ---- native v1: sites and deployments ----------------------------------------------------

/// `GET /api/v1/sites` (admin).
pub async fn list_sites(
    p: Principal,
    State(s): State<AppState>,
) -> Result<Json<Vec<SiteView>>, ApiError> {
    s.ops.list_sites(&p.person()?).map(Json)
}

/// `GET /api/v1/sites/{name}` (admin).
pub async fn get_site(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<SiteView>, ApiError> {
    s.ops.get_site(&p.person()?, &name).map(Json)
}

/// `PUT /api/v1/sites/{name}` (admin): the body is a site; its name must match the path.
pub async fn put_site(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
    JsonBody(mut site): JsonBody<Site>,
) -> Result<Json<SiteView>, ApiError> {
    if site.name.is_empty() {
        site.name = name.clone();
    }
    if site.name != name {
        return Err(ApiError::BadRequest(format!(
            "the body names site `{}`, the path `{name}`",
            site.name
        )));
    }
    s.ops.put_site(&p.person()?, site).await.map(Json)
}

/// `DELETE /api/v1/sites/{name}` (admin).
pub async fn delete_site(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let revision = s.ops.delete_site(&p.person()?, &name).await?;
    Ok(Json(serde_json::json!({ "revision": revision })))
}

/// `GET /api/v1/deployments`.
pub async fn list_deployments(
    p: Principal,
    State(s): State<AppState>,
) -> Result<Json<Vec<DeploymentView>>, ApiError> {
    Ok(Json(s.ops.list_deployments(&p.person()?)))
}

/// `GET /api/v1/deployments/{name}`.
pub async fn get_deployment(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<DeploymentView>, ApiError> {
    s.ops.get_deployment(&p.person()?, &name).map(Json)
}

/// `DELETE /api/v1/deployments/{name}`.
pub async fn delete_deployment(
    p: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.ops.delete_deployment(&p.person()?, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainQuery {
    #[serde(default)]
    client_ip: Option<String>,
    #[serde(default)]
    location: Option<String>,
}

/// `GET /api/v1/explain/{uuid}?client_ip=&location=`: how the sites rank for a client.
pub async fn explain(
    p: Principal,
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(uuid): Path<String>,
    QueryParams(q): QueryParams<ExplainQuery>,
) -> Result<Json<Explain>, ApiError> {
    let ip = match q.client_ip.as_deref() {
        Some(t) => t
            .trim()
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("client_ip `{t}` is not an IP address")))?,
        None => peer.ip(),
    };
    let location = q
        .location
        .as_deref()
        .map(GeoPoint::parse)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    s.ops.explain(&p.person()?, &uuid, ip, location).map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x_clientip_is_believed_from_token_holders_only() {
        let peer: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-clientip", "10.9.8.7".parse().unwrap());
        // An anonymous client cannot pretend to be in an accepted network.
        assert_eq!(client_ip(&Caller::Anonymous, &h, peer).unwrap(), peer.ip());
        let admin = Caller::Person(crate::security::bootstrap_admin());
        assert_eq!(client_ip(&admin, &h, peer).unwrap().to_string(), "10.9.8.7");
        h.insert("x-clientip", "not-an-ip".parse().unwrap());
        assert!(client_ip(&admin, &h, peer).is_err());
        assert_eq!(
            client_ip(&admin, &HeaderMap::new(), peer).unwrap(),
            peer.ip()
        );
    }

    #[test]
    fn x_location_is_lat_lon() {
        let mut h = HeaderMap::new();
        assert_eq!(location(&h).unwrap(), None);
        h.insert("x-location", "40.44,-79.94".parse().unwrap());
        assert_eq!(location(&h).unwrap().unwrap().lat, 40.44);
        h.insert("x-location", "north".parse().unwrap());
        assert!(matches!(location(&h), Err(ApiError::BadRequest(_))));
    }
}
