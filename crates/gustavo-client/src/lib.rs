//! A typed client for `/api/v1`. Every error says which server and what went wrong, so the
//! CLI can show it as is.
//!
//! Over `https` the client trusts exactly one CA — the cluster's, from `client.toml`, a CA
//! file, or an agent's pinned copy — and never the system's public roots: a Gustavo server
//! is vouched for by its own CA only. [`fetch_ca`] is the one call made without checking
//! the server, and its answer must be checked against a fingerprint before use.

pub mod config;
mod exec;
pub mod security;
pub mod sinfonia;
mod stream;
pub use stream::{STREAM_UNANSWERED, SyncStream};

use std::sync::Arc;
use std::time::Duration;

use gustavo_model::api::{
    App, AppRevision, CreateApp, DesiredState, ErrorBody, Group, Heartbeat, HeartbeatReply, Node,
    NodeContainer, NodeVitals, RegisterRequest, RegisterResponse, RollbackRequest, Rollout,
    RolloutSummary, Stats, StatusReport, UpdateApp,
};
use gustavo_model::spec::AppSpec;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot reach the server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{message} (HTTP {status}, {code})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from {url}: {reason}")]
    Decode { url: String, reason: String },
    #[error("the CA certificate is unusable: {0}")]
    BadCa(String),
    #[error(
        "the server at {url} presented a CA with fingerprint {got}, but the join token expects {want}: refusing to trust it (wrong server, or someone in between)"
    )]
    CaMismatch {
        url: String,
        want: String,
        got: String,
    },
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
    pub fn is_unauthorized(&self) -> bool {
        self.status() == Some(401)
    }
}

/// Describes a transport error without the noise of reqwest's nested sources.
fn reason(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s = format!("{s}: {inner}");
        src = inner.source();
    }
    s
}

/// Called after every request with the endpoint's label, the time it took and the HTTP
/// status ([`NO_ANSWER`] or [`TIMED_OUT`] when no answer came) — how the fleet benchmark
/// measures latency as agents see it.
pub type Observer = Arc<dyn Fn(&'static str, Duration, u16) + Send + Sync>;

/// The status an [`Observer`] sees when the request failed without an answer: connection
/// refused or dropped, TLS, a body cut short.
pub const NO_ANSWER: u16 = 0;
/// The status an [`Observer`] sees when the request's own timeout ran out.
pub const TIMED_OUT: u16 = 1;

#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
    observer: Option<Observer>,
}

/// The endpoint a path belongs to, as a fixed label (no node or app names in it).
pub fn endpoint_label(path: &str) -> &'static str {
    if path.ends_with("/sync?wait=0") {
        return "sync-now";
    }
    let path = path.split('?').next().unwrap_or(path);
    if path.ends_with("/heartbeat") {
        "heartbeat"
    } else if path.ends_with("/desired") {
        "desired"
    } else if path.ends_with("/status") {
        "status"
    } else if path.ends_with("/sync") {
        "sync"
    } else if path.ends_with("/nodes/register") {
        "register"
    } else if path.starts_with("/api/v1/rollouts") {
        "rollout"
    } else if path.starts_with("/api/v1/apps") {
        "apps"
    } else if path.starts_with("/api/v1/nodes/") {
        "nodes"
    } else {
        "other"
    }
}

/// The error an answer with a failure status stands for: the server's
/// `{"error": {code, message}}`, or its text when it is not that.
fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => ClientError::Api {
            status: status.as_u16(),
            code: b.error.code,
            message: b.error.message,
        },
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            code: "http".into(),
            message: String::from_utf8_lossy(body).trim().to_string(),
        },
    }
}

/// Parses the certificates of a PEM bundle.
pub fn parse_pem_certs(
    pem: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ClientError> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| ClientError::BadCa(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(ClientError::BadCa("no certificate in the PEM text".into()));
    }
    Ok(certs)
}

/// Hex SHA-256 of the DER encoding of the first (the CA) certificate in `pem`.
pub fn ca_fingerprint(pem: &str) -> Result<String, ClientError> {
    use sha2::{Digest, Sha256};
    let certs = parse_pem_certs(pem)?;
    Ok(hex::encode(Sha256::digest(&certs[0])))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client config that trusts only the certificates in `ca_pem`.
fn tls_config(ca_pem: Option<&str>) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = ca_pem {
        for cert in parse_pem_certs(pem)? {
            roots
                .add(cert)
                .map_err(|e| ClientError::BadCa(e.to_string()))?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::BadCa(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn http_client(tls: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(90))
        .tls_backend_preconfigured(tls)
        .build()
        .expect("a client with a preconfigured rustls config always builds")
}

/// Accepts any server certificate. Used only to fetch the CA, whose hash is then checked
/// against the join token before anything else is sent.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Fetches the server's CA (`GET /api/v1/ca`) without checking the server, and accepts it
/// only if its SHA-256 fingerprint is `want` (from a join token). This is how an agent
/// joins over an untrusted network with no setup beyond the token.
pub async fn fetch_pinned_ca(base: &str, want: &str) -> Result<String, ClientError> {
    let base = base.trim_end_matches('/');
    let provider = provider();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::BadCa(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let http = http_client(config);
    let url = format!("{base}/api/v1/ca");
    let unreachable = |e: reqwest::Error| ClientError::Unreachable {
        url: base.to_string(),
        reason: reason(&e),
    };
    let resp = http
        .get(&url)
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .map_err(unreachable)?;
    let status = resp.status();
    // The CA is a few KB: refuse to read a large answer from a server not yet trusted.
    if resp.content_length().is_some_and(|n| n > 64 * 1024) {
        return Err(ClientError::BadCa("the answer is too large".into()));
    }
    let bytes = resp.bytes().await.map_err(unreachable)?;
    if !status.is_success() || bytes.len() > 64 * 1024 {
        return Err(ClientError::Api {
            status: status.as_u16(),
            code: "http".into(),
            message: format!("cannot fetch the CA from {url}"),
        });
    }
    let pem = String::from_utf8(bytes.to_vec())
        .map_err(|_| ClientError::BadCa("the CA is not text".into()))?;
    let got = ca_fingerprint(&pem)?;
    if !got.eq_ignore_ascii_case(want) {
        return Err(ClientError::CaMismatch {
            url: base.to_string(),
            want: want.to_ascii_lowercase(),
            got,
        });
    }
    Ok(pem)
}

impl Client {
    /// `base` is the server's address, e.g. `http://127.0.0.1:7420`. Over `https` this
    /// client trusts no CA at all, so every call fails: use [`Client::with_ca`].
    pub fn new(base: &str, token: &str) -> Client {
        let http = http_client(tls_config(None).expect("a config without roots always builds"));
        Client::with_http(base, token, http)
    }

    /// A client over a shared connection pool, e.g. one HTTP/2 connection multiplexing many
    /// simulated agents.
    pub fn with_http(base: &str, token: &str, http: reqwest::Client) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http,
            observer: None,
        }
    }

    /// An HTTP/2 (prior knowledge) pool: every request to one server shares one connection.
    pub fn http2_pool() -> reqwest::Client {
        reqwest::Client::builder()
            .http2_prior_knowledge()
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .tls_backend_preconfigured(
                tls_config(None).expect("a config without roots always builds"),
            )
            .build()
            .expect("a client with a preconfigured rustls config always builds")
    }

    pub fn with_observer(mut self, observer: Observer) -> Client {
        self.observer = Some(observer);
        self
    }

    /// A client that trusts exactly the CA certificates in `ca_pem` (when given).
    pub fn with_ca(base: &str, token: &str, ca_pem: Option<&str>) -> Result<Client, ClientError> {
        Ok(Client::with_http(
            base,
            token,
            http_client(tls_config(ca_pem)?),
        ))
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        timeout: Duration,
    ) -> Result<(StatusCode, Vec<u8>), ClientError> {
        self.send_full(method, path, body, timeout)
            .await
            .map(|(s, _, b)| (s, b))
    }

    /// [`Client::send`] with the answer's headers.
    async fn send_full(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        timeout: Duration,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, Vec<u8>), ClientError> {
        self.send_with(method, path, body, timeout, None).await
    }

    /// [`Client::send_full`] with one more request header.
    async fn send_with(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        timeout: Duration,
        header: Option<(&'static str, &'static str)>,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, Vec<u8>), ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self
            .http
            .request(method, &url)
            .bearer_auth(&self.token)
            .timeout(timeout);
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let started = std::time::Instant::now();
        let observe = |status: u16| {
            if let Some(o) = &self.observer {
                o(endpoint_label(path), started.elapsed(), status);
            }
        };
        let failed = |e: &reqwest::Error| if e.is_timeout() { TIMED_OUT } else { NO_ANSWER };
        let resp = req.send().await.map_err(|e| {
            observe(failed(&e));
            ClientError::Unreachable {
                url: self.base.clone(),
                reason: reason(&e),
            }
        })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(|e| {
            observe(failed(&e));
            ClientError::Unreachable {
                url: self.base.clone(),
                reason: reason(&e),
            }
        })?;
        observe(status.as_u16());
        if status.is_client_error() || status.is_server_error() {
            return Err(api_error(status, &bytes));
        }
        Ok((status, headers, bytes.to_vec()))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, ClientError> {
        self.call_timeout(method, path, body, Duration::from_secs(30))
            .await
    }

    async fn call_timeout<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let (_, bytes) = self.send(method, path, body, timeout).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url: format!("{}{}", self.base, path),
            reason: e.to_string(),
        })
    }

    async fn call_empty(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<(), ClientError> {
        self.send(method, path, body, Duration::from_secs(30))
            .await
            .map(|_| ())
    }

    const NONE: Option<&'static ()> = None;

    pub async fn health(&self) -> Result<serde_json::Value, ClientError> {
        self.call(Method::GET, "/api/v1/health", Self::NONE).await
    }

    pub async fn list_apps(&self) -> Result<Vec<App>, ClientError> {
        self.call(Method::GET, "/api/v1/apps", Self::NONE).await
    }

    pub async fn get_app(&self, name: &str) -> Result<App, ClientError> {
        self.call(Method::GET, &format!("/api/v1/apps/{name}"), Self::NONE)
            .await
    }

    pub async fn create_app(
        &self,
        name: &str,
        spec: &AppSpec,
        groups: &[String],
    ) -> Result<App, ClientError> {
        self.create_app_pinned(name, spec, groups, None).await
    }

    /// Creates an app whose image the caller resolved to `digest`.
    pub async fn create_app_pinned(
        &self,
        name: &str,
        spec: &AppSpec,
        groups: &[String],
        digest: Option<String>,
    ) -> Result<App, ClientError> {
        let body = CreateApp {
            name: name.to_string(),
            spec: spec.clone(),
            groups: groups.to_vec(),
            digest,
        };
        self.call(Method::POST, "/api/v1/apps", Some(&body)).await
    }

    pub async fn update_app(
        &self,
        name: &str,
        spec: &AppSpec,
        groups: Option<Vec<String>>,
    ) -> Result<App, ClientError> {
        self.update_app_pinned(name, spec, groups, None).await
    }

    /// Updates an app whose image the caller resolved to `digest`.
    pub async fn update_app_pinned(
        &self,
        name: &str,
        spec: &AppSpec,
        groups: Option<Vec<String>>,
        digest: Option<String>,
    ) -> Result<App, ClientError> {
        let body = UpdateApp {
            spec: spec.clone(),
            groups,
            digest,
        };
        self.call(Method::PUT, &format!("/api/v1/apps/{name}"), Some(&body))
            .await
    }

    /// An app's revisions, oldest first.
    pub async fn app_history(&self, name: &str) -> Result<Vec<AppRevision>, ClientError> {
        self.call(
            Method::GET,
            &format!("/api/v1/apps/{name}/history"),
            Self::NONE,
        )
        .await
    }

    /// Puts an older revision back (the one before the current, or `to`).
    pub async fn rollback_app(&self, name: &str, to: Option<u64>) -> Result<App, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/v1/apps/{name}/rollback"),
            Some(&RollbackRequest { to }),
        )
        .await
    }

    /// `pause`, `resume` or `abort` an app's staged rollout.
    pub async fn rollout_action(&self, name: &str, action: &str) -> Result<Rollout, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/v1/rollouts/{name}/{action}"),
            Self::NONE,
        )
        .await
    }

    /// Deletes an app; returns the revision of the deletion.
    pub async fn delete_app(&self, name: &str) -> Result<u64, ClientError> {
        let v: serde_json::Value = self
            .call(Method::DELETE, &format!("/api/v1/apps/{name}"), Self::NONE)
            .await?;
        Ok(v["revision"].as_u64().unwrap_or(0))
    }

    /// `action` is `start`, `stop` or `restart`.
    pub async fn app_action(&self, name: &str, action: &str) -> Result<App, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/v1/apps/{name}/{action}"),
            Self::NONE,
        )
        .await
    }

    pub async fn rollout(&self, name: &str) -> Result<Rollout, ClientError> {
        self.call(Method::GET, &format!("/api/v1/rollouts/{name}"), Self::NONE)
            .await
    }

    /// Waits up to `wait` for the rollout to move past `seen` converged devices (or fail,
    /// or finish), then returns it: a long-poll for `--wait`.
    pub async fn rollout_wait(
        &self,
        name: &str,
        seen: Option<usize>,
        wait: Duration,
    ) -> Result<Rollout, ClientError> {
        let mut path = format!("/api/v1/rollouts/{name}?wait={}", wait.as_secs().max(1));
        if let Some(n) = seen {
            path.push_str(&format!("&seen={n}"));
        }
        self.call_timeout(
            Method::GET,
            &path,
            Self::NONE,
            wait + Duration::from_secs(10),
        )
        .await
    }

    pub async fn rollout_summary(&self, name: &str) -> Result<RolloutSummary, ClientError> {
        self.call(
            Method::GET,
            &format!("/api/v1/rollouts/{name}?summary=true"),
            Self::NONE,
        )
        .await
    }

    pub async fn stats(&self) -> Result<Stats, ClientError> {
        self.call(Method::GET, "/api/v1/stats", Self::NONE).await
    }

    pub async fn list_groups(&self) -> Result<Vec<Group>, ClientError> {
        self.call(Method::GET, "/api/v1/groups", Self::NONE).await
    }

    pub async fn get_group(&self, name: &str) -> Result<Group, ClientError> {
        self.call(Method::GET, &format!("/api/v1/groups/{name}"), Self::NONE)
            .await
    }

    /// Sets (or, with `None`, clears) a group's node pressure thresholds; returns the
    /// revision.
    pub async fn set_group_pressure(
        &self,
        name: &str,
        t: Option<&gustavo_model::pressure::Thresholds>,
    ) -> Result<u64, ClientError> {
        let path = format!("/api/v1/groups/{name}/pressure");
        let v: serde_json::Value = match t {
            Some(t) => self.call(Method::PUT, &path, Some(t)).await?,
            None => self.call(Method::DELETE, &path, Self::NONE).await?,
        };
        Ok(v["revision"].as_u64().unwrap_or(0))
    }

    /// Deletes a device group that no app or node uses; returns the revision.
    pub async fn delete_group(&self, name: &str) -> Result<u64, ClientError> {
        let v: serde_json::Value = self
            .call(
                Method::DELETE,
                &format!("/api/v1/groups/{name}"),
                Self::NONE,
            )
            .await?;
        Ok(v["revision"].as_u64().unwrap_or(0))
    }

    fn filter(group: Option<&str>, host: Option<&str>) -> String {
        let mut q = Vec::new();
        if let Some(g) = group {
            q.push(format!("group={g}"));
        }
        if let Some(h) = host {
            q.push(format!("host={h}"));
        }
        if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        }
    }

    pub async fn list_nodes(
        &self,
        group: Option<&str>,
        host: Option<&str>,
    ) -> Result<Vec<Node>, ClientError> {
        self.call(
            Method::GET,
            &format!("/api/v1/nodes{}", Self::filter(group, host)),
            Self::NONE,
        )
        .await
    }

    pub async fn get_node(&self, name: &str) -> Result<Node, ClientError> {
        self.call(Method::GET, &format!("/api/v1/nodes/{name}"), Self::NONE)
            .await
    }

    /// Removes a node; returns the revision of the removal (`None` from a server that
    /// answers 204 without it).
    /// Events after `after`, waiting up to `wait` for one.
    /// `POST /api/v1/jobs`.
    pub async fn run_job(
        &self,
        name: &str,
        spec: &gustavo_model::job::JobSpec,
        groups: &[String],
    ) -> Result<gustavo_model::job::Job, ClientError> {
        let body = gustavo_model::job::RunJob {
            name: name.to_string(),
            spec: spec.clone(),
            groups: groups.to_vec(),
        };
        self.call(Method::POST, "/api/v1/jobs", Some(&body)).await
    }

    pub async fn list_jobs(&self) -> Result<Vec<gustavo_model::job::Job>, ClientError> {
        self.call(Method::GET, "/api/v1/jobs", Self::NONE).await
    }

    /// Asks the server, as node `node`, to run a service its Samsung API received.
    pub async fn request_service(
        &self,
        node: &str,
        req: &gustavo_model::compat::samsung::ServiceRun,
    ) -> Result<gustavo_model::compat::samsung::ServiceStarted, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/v1/nodes/{node}/services"),
            Some(req),
        )
        .await
    }

    /// The job of a service node `node` asked for.
    pub async fn service_status(
        &self,
        node: &str,
        job: &str,
    ) -> Result<gustavo_model::job::Job, ClientError> {
        self.call(
            Method::GET,
            &format!("/api/v1/nodes/{node}/services/{job}"),
            Self::NONE,
        )
        .await
    }

    pub async fn get_job(&self, name: &str) -> Result<gustavo_model::job::Job, ClientError> {
        self.call(Method::GET, &format!("/api/v1/jobs/{name}"), Self::NONE)
            .await
    }

    pub async fn delete_job(&self, name: &str) -> Result<u64, ClientError> {
        let v: serde_json::Value = self
            .call(Method::DELETE, &format!("/api/v1/jobs/{name}"), Self::NONE)
            .await?;
        Ok(v["revision"].as_u64().unwrap_or(0))
    }

    /// `GET /api/v1/callbacks`: job callbacks not delivered yet (admin).
    pub async fn callbacks(&self) -> Result<Vec<serde_json::Value>, ClientError> {
        self.call(Method::GET, "/api/v1/callbacks", Self::NONE)
            .await
    }

    pub async fn events(
        &self,
        after: u64,
        wait: Duration,
    ) -> Result<Vec<gustavo_model::api::Event>, ClientError> {
        let (_, bytes) = self
            .send(
                Method::GET,
                &format!("/api/v1/events?after={after}&wait={}", wait.as_secs()),
                Self::NONE,
                wait + Duration::from_secs(30),
            )
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url: self.base.clone(),
            reason: format!("not a list of events: {e}"),
        })
    }

    /// Each visible node's placement score; with `app`, why a node would not take it.
    pub async fn scores(
        &self,
        app: Option<&str>,
    ) -> Result<Vec<gustavo_model::schedule::Score>, ClientError> {
        let q = app.map(|a| format!("?app={a}")).unwrap_or_default();
        self.call(Method::GET, &format!("/api/v1/scores{q}"), Self::NONE)
            .await
    }

    /// `action` is `cordon`, `drain` or `uncordon`; returns the revision.
    pub async fn cordon(&self, name: &str, action: &str) -> Result<u64, ClientError> {
        let v: serde_json::Value = self
            .call(
                Method::POST,
                &format!("/api/v1/nodes/{name}/{action}"),
                Self::NONE,
            )
            .await?;
        Ok(v["revision"].as_u64().unwrap_or(0))
    }

    pub async fn delete_node(&self, name: &str) -> Result<Option<u64>, ClientError> {
        let (_, bytes) = self
            .send(
                Method::DELETE,
                &format!("/api/v1/nodes/{name}"),
                Self::NONE,
                Duration::from_secs(30),
            )
            .await?;
        Ok(serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["revision"].as_u64()))
    }

    pub async fn containers(
        &self,
        group: Option<&str>,
        host: Option<&str>,
    ) -> Result<Vec<NodeContainer>, ClientError> {
        self.call(
            Method::GET,
            &format!("/api/v1/containers{}", Self::filter(group, host)),
            Self::NONE,
        )
        .await
    }

    pub async fn vitals(
        &self,
        group: Option<&str>,
        host: Option<&str>,
    ) -> Result<Vec<NodeVitals>, ClientError> {
        self.call(
            Method::GET,
            &format!("/api/v1/vitals{}", Self::filter(group, host)),
            Self::NONE,
        )
        .await
    }

    // ---- the agent protocol ----

    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ClientError> {
        self.call(Method::POST, "/api/v1/nodes/register", Some(req))
            .await
    }

    /// Waits up to `wait` for a desired state newer than `after`; `None` when nothing changed.
    pub async fn desired(
        &self,
        node: &str,
        after: u64,
        wait: Duration,
    ) -> Result<Option<DesiredState>, ClientError> {
        let path = format!(
            "/api/v1/nodes/{node}/desired?after={after}&wait={}",
            wait.as_secs()
        );
        let (status, bytes) = self
            .send(
                Method::GET,
                &path,
                Self::NONE,
                wait + Duration::from_secs(10),
            )
            .await?;
        if status == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ClientError::Decode {
                url: format!("{}{}", self.base, path),
                reason: e.to_string(),
            })
    }

    /// The sync protocol's request: delivers what `req` carries, then waits up to
    /// `req.wait` seconds for a desired state above `req.after`. Returns it (or `None`)
    /// and whether the server asks for the status report again.
    pub async fn sync(
        &self,
        node: &str,
        req: &gustavo_model::api::SyncRequest,
    ) -> Result<(Option<DesiredState>, bool), ClientError> {
        // Apps may come as templates this side completes (older servers ignore the
        // header and send the full form). A sync that answers at once is told apart (in logs
        // and latency figures) from a long-poll by its query.
        let path = if req.wait == 0 {
            format!("/api/v1/nodes/{node}/sync?wait=0")
        } else {
            format!("/api/v1/nodes/{node}/sync")
        };
        let timeout = Duration::from_secs(req.wait) + Duration::from_secs(10);
        // A header, not a query: HTTP/2 sends a repeated header as one byte.
        let form = Some((gustavo_model::api::FORM_HEADER, "template"));
        let (status, headers, bytes) = self
            .send_with(Method::POST, &path, Some(req), timeout, form)
            .await?;
        let need_report = headers.contains_key(gustavo_model::api::NEED_REPORT_HEADER);
        if status == StatusCode::NOT_MODIFIED {
            return Ok((None, need_report));
        }
        serde_json::from_slice::<DesiredState>(&bytes)
            .map(|mut d| {
                d.complete();
                (Some(d), need_report)
            })
            .map_err(|e| ClientError::Decode {
                url: format!("{}{}", self.base, path),
                reason: e.to_string(),
            })
    }

    /// Sends vitals; returns true when the server asks for the status report again.
    pub async fn heartbeat(&self, node: &str, hb: &Heartbeat) -> Result<bool, ClientError> {
        let reply: HeartbeatReply = self
            .call(
                Method::POST,
                &format!("/api/v1/nodes/{node}/heartbeat"),
                Some(hb),
            )
            .await?;
        Ok(reply.need_status)
    }

    pub async fn report_status(
        &self,
        node: &str,
        report: &StatusReport,
    ) -> Result<(), ClientError> {
        self.call_empty(
            Method::PUT,
            &format!("/api/v1/nodes/{node}/status"),
            Some(report),
        )
        .await
    }

    /// Raw request, for tests that probe error handling.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: reason(&e),
        })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: reason(&e),
        })?;
        Ok((status, bytes.to_vec()))
    }
}
