//! Gustavo's control plane. Holds the desired state (durable in a [`Store`]), computes each
//! node's desired state from the apps of its groups, and serves the REST API under `/api/v1`
//! to people, scripts and agents. Agents pull: every connection is opened by the agent.

pub mod admin;
pub mod api;
pub mod api_exec;
pub mod audit;
pub mod auth;
pub mod body;
pub mod by_key;
pub mod conns;
pub mod controllers;
pub mod error;
pub mod events;
pub mod http_sinfonia;
pub mod jobs_api;
pub mod limits;
pub mod metrics;
pub mod node_map;
pub mod openapi;
pub mod ops;
pub mod rollout_counts;
pub mod routes;
pub mod secrets;
pub mod security;
pub mod serve;
pub mod state;
pub mod tls;
pub mod wake;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use gustavo_model::access::JoinToken;
use gustavo_store::{AuthChange, AuthStore, SqliteStore, Store, TokenKind};
use thiserror::Error;

pub use security::{CaInfo, Security};
pub use serve::Timeouts;
pub use state::Shared;
pub use tls::TlsMode;

/// The group apps attach to when none is named, and that the server's own agent joins.
pub const DEFAULT_GROUP: &str = "default";

/// The largest request body accepted (an app spec is a few KB).
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot use data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] gustavo_store::StoreError),
    #[error(
        "data dir {path} is in use by another gustavo server (it holds {path}/lock); stop \
         that one, or give this one another --data-dir"
    )]
    Locked { path: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    #[error("cannot start the {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    Config(String),
}

/// Validated server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub body_limit: usize,
    pub tls: TlsMode,
    /// This machine's host name, for the serving certificate.
    pub host: String,
    pub timeouts: Timeouts,
    /// The placement score's weights.
    pub weights: gustavo_model::schedule::Weights,
    /// How long a node may be silent before its replicas are placed elsewhere.
    pub replica_grace: std::time::Duration,
    /// The most client connections open at once (see `conns`).
    pub max_connections: usize,
    /// How long a job callback is retried before it is given up.
    pub callback_expiry: std::time::Duration,
    /// The Sinfonia deploy API and leases.
    pub sinfonia: ops::deployments::SinfoniaConfig,
    /// Node pressure thresholds for nodes whose groups set none; none: off.
    pub pressure: Option<gustavo_model::pressure::Thresholds>,
    /// How agentless hosts' Docker APIs are reached.
    pub watch: controllers::watched::WatchConfig,
    /// Hosts to watch through Glances from the start (`--watch nodes.yaml`), added or
    /// updated at start like `gustavo nodes import`.
    pub watch_hosts: Vec<gustavo_model::watched::WatchedHost>,
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub shared: Arc<Shared>,
    pub sec: Arc<Security>,
    /// The operations every surface calls.
    pub ops: ops::Ops,
    pub body_limit: usize,
    /// The size and time limits of request bodies, applied before any handler.
    pub body: body::BodyLimits,
}

/// Tokens read or created in the data dir at start.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub admin: String,
    /// The initial join token, in full (`G10<CA fingerprint>::<secret>` over TLS).
    pub join: String,
    pub admin_path: PathBuf,
    pub join_path: PathBuf,
    /// True when this start created them.
    pub created: bool,
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix time in milliseconds (rollout gates count in ms).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A server ready to serve: store opened, tokens in place, port bound.
pub struct Server {
    pub tokens: Tokens,
    pub addr: SocketAddr,
    /// The CA clients must trust; `None` with `--insecure-http`.
    pub ca: Option<CaInfo>,
    /// The names the generated serving certificate covers.
    pub sans: Vec<String>,
    shared: Arc<Shared>,
    sec: Arc<Security>,
    ops: ops::Ops,
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    timeouts: Timeouts,
    conns: Arc<conns::ConnTable>,
    watch: controllers::watched::WatchConfig,
    watch_hosts: Vec<gustavo_model::watched::WatchedHost>,
    /// Held while the server lives: one server per data dir.
    _data_lock: std::fs::File,
}

/// Reads the initial join token, or creates it on first start (and records its hash, so it
/// can be listed and revoked like any other). The file is rewritten when the CA it pins
/// changed, keeping the secret.
fn initial_join_token(
    path: &std::path::Path,
    sec: &Security,
    fingerprint: Option<&str>,
) -> std::io::Result<(String, bool)> {
    let existing = match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => JoinToken::parse(&s).ok(),
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let created = existing.is_none();
    let secret = existing
        .as_ref()
        .map(|t| t.secret.clone())
        .unwrap_or_else(|| auth::new_token("join"));
    // First start, or a data dir from before join tokens were stored: record this one.
    if created || !sec.has_any_token() {
        let rec = security::token_record(
            &secret,
            TokenKind::Join,
            None,
            None,
            now(),
            None,
            "initial join token".into(),
        );
        sec.commit_blocking(vec![AuthChange::PutToken(rec)])
            .map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    let token = JoinToken {
        ca_fingerprint: fingerprint.map(String::from),
        secret,
    };
    if existing.as_ref() != Some(&token) {
        auth::write_private(path, &format!("{token}\n"))?;
    }
    Ok((token.to_string(), created))
}

impl Server {
    /// Opens the data dir and the store, creates tokens on first start, binds the port.
    pub async fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        let dir_err = |source| ServerError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&config.data_dir).map_err(dir_err)?;
        // The data dir holds keys and tokens: only its owner may look inside.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(dir_err)?;
        }
        // One server per data dir: two would each hand out the same revisions for different
        // changes. The lock goes with the process, however it ends.
        let data_lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(config.data_dir.join("lock"))
            .map_err(dir_err)?;
        match data_lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(ServerError::Locked {
                    path: config.data_dir.display().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(dir_err(e)),
        }
        // The port before anything is written: a server that cannot listen changes nothing.
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let material = tls::load(&config.tls, &config.data_dir, &config.host, config.listen)?;
        let ca = material.as_ref().map(|m| CaInfo {
            pem: m.ca_pem.clone(),
            fingerprint: m.ca_fingerprint.clone(),
        });
        let admin_path = config.data_dir.join("admin-token");
        let join_path = config.data_dir.join("join-token");
        let (admin, created) = auth::load_or_create(&admin_path, "admin").map_err(dir_err)?;
        let sqlite = Arc::new(SqliteStore::open(&config.data_dir.join("gustavo.db"))?);
        let secrets = Arc::new(
            secrets::SecretBox::load_or_create(&config.data_dir.join("secret.key"))
                .map_err(dir_err)?,
        );
        let store: Arc<dyn Store> = Arc::new(secrets::SealingStore {
            inner: sqlite.clone(),
            secrets,
        });
        let outbox: Arc<dyn gustavo_store::OutboxStore> = sqlite.clone();
        let auth_store: Arc<dyn AuthStore> = sqlite;
        let shared = Shared::new(
            store,
            state::SchedConfig {
                weights: config.weights,
                grace_s: config.replica_grace.as_secs().max(1),
                started: now(),
            },
            gustavo_model::node_settings::NodeSettings {
                pressure: config.pressure.clone(),
                client_network: Some(config.sinfonia.client_network),
            },
        )?;
        let _ = shared.outbox.set(outbox);
        shared.callback_expiry.store(
            config.callback_expiry.as_secs().max(1),
            std::sync::atomic::Ordering::Relaxed,
        );
        let sec = Arc::new(Security::load(
            auth_store,
            auth::hash_token(&admin),
            ca.clone(),
        )?);
        let (join, _) = initial_join_token(
            &join_path,
            &sec,
            ca.as_ref().map(|c| c.fingerprint.as_str()),
        )
        .map_err(dir_err)?;
        let state = AppState {
            shared: shared.clone(),
            sec: sec.clone(),
            ops: ops::Ops {
                shared: shared.clone(),
                sec: sec.clone(),
                sinfonia: Arc::new(ops::deployments::SinfoniaState::new(
                    config.sinfonia.clone(),
                )),
            },
            body_limit: config.body_limit,
            body: body::BodyLimits {
                max: config.body_limit,
                timeout: config.timeouts.body,
            },
        };
        let addr = listener.local_addr().map_err(ServerError::Serve)?;
        Ok(Server {
            tokens: Tokens {
                admin,
                join,
                admin_path,
                join_path,
                created,
            },
            addr,
            sans: material
                .as_ref()
                .map(|m| m.sans.clone())
                .unwrap_or_default(),
            tls: material.map(|m| m.config),
            ca,
            shared,
            sec,
            listener,
            ops: state.ops.clone(),
            router: router(state),
            timeouts: config.timeouts,
            conns: conns::ConnTable::new(config.max_connections),
            watch: config.watch,
            watch_hosts: config.watch_hosts,
            _data_lock: data_lock,
        })
    }

    /// The cap on open client connections.
    pub fn max_connections(&self) -> usize {
        self.conns.max()
    }

    /// `https` unless the server runs with `--insecure-http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        self.shared
            .wakers
            .pace(tokio::runtime::Handle::current())
            .map_err(|e| ServerError::Thread("wake-up", e))?;
        tokio::spawn(controllers::scheduler::run(self.shared.clone()));
        tokio::spawn(controllers::rollouts::run(self.ops.clone()));
        tokio::spawn(controllers::jobs::run(self.ops.clone()));
        let seen = controllers::rollout_events::first_look(&self.shared);
        tokio::spawn(controllers::rollout_events::run(self.shared.clone(), seen));
        tokio::spawn(controllers::callbacks::run(
            self.shared.clone(),
            controllers::callbacks::HttpSender::new(),
        ));
        tokio::spawn(controllers::leases::run(self.ops.clone()));
        if !self.watch_hosts.is_empty() {
            let req = ops::watched::ImportRequest {
                hosts: self.watch_hosts.clone(),
                pressure: None,
            };
            match self
                .ops
                .import_watched(&security::bootstrap_admin(), req)
                .await
            {
                Ok(r) => {
                    tracing::info!(added = ?r.added, updated = ?r.updated, "watching hosts through Glances")
                }
                Err(e) => return Err(ServerError::Config(format!("--watch: {e}"))),
            }
        }
        tokio::spawn(controllers::watched::run(
            self.shared.clone(),
            self.watch.clone(),
        ));
        let closing = self.shared.closing.clone();
        let shutdown = async move {
            shutdown.await;
            closing.send_replace(true);
        };
        serve::serve(
            self.listener,
            self.router,
            self.tls,
            self.timeouts,
            self.conns,
            shutdown,
        )
        .await;
        // What the last requests did belongs in the audit log before the process ends.
        self.sec.audit.flush().await;
        Ok(())
    }
}

pub fn router(state: AppState) -> Router {
    let limit = state.body_limit;
    http_sinfonia::add(routes::add(Router::new()))
        .fallback(|| async { error::ApiError::NotFound("no such route".into()) })
        // Bodies are read whole, within their size and time limits, before any handler;
        // inside the audit layer, so a refused body is recorded like any refusal.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            body::limit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::record,
        ))
        // The caller is authenticated once, here, for the audit log and the handlers.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::identify,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}
