//! Gustavo's control plane. Holds the desired state (durable in a [`Store`]), computes each
//! node's desired state from the apps of its groups, and serves the REST API under `/api/v1`
//! to people, scripts and agents. Agents pull: every connection is opened by the agent.

pub mod api;
pub mod auth;
pub mod error;
pub mod openapi;
pub mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use gustavo_store::{SqliteStore, Store};
use thiserror::Error;

pub use state::Shared;

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
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    #[error("cannot start the writer thread: {0}")]
    Thread(std::io::Error),
}

/// Validated server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub body_limit: usize,
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub shared: Arc<Shared>,
    pub admin_hash: String,
    pub join_hash: String,
    pub body_limit: usize,
}

/// Tokens read or created in the data dir at start.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub admin: String,
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

/// A server ready to serve: store opened, tokens in place, port bound.
pub struct Server {
    pub tokens: Tokens,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    router: Router,
}

impl Server {
    /// Opens the data dir and the store, creates tokens on first start, binds the port.
    pub async fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        let dir_err = |source| ServerError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&config.data_dir).map_err(dir_err)?;
        let admin_path = config.data_dir.join("admin-token");
        let join_path = config.data_dir.join("join-token");
        let (admin, created) = auth::load_or_create(&admin_path, "admin").map_err(dir_err)?;
        let (join, _) = auth::load_or_create(&join_path, "join").map_err(dir_err)?;
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&config.data_dir.join("gustavo.db"))?);
        let shared = Shared::new(store)?;
        let state = AppState {
            shared: shared.clone(),
            admin_hash: auth::hash_token(&admin),
            join_hash: auth::hash_token(&join),
            body_limit: config.body_limit,
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
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
            shared,
            listener,
            router: router(state),
        })
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let closing = self.shared.closing.clone();
        let shutdown = async move {
            shutdown.await;
            closing.send_replace(true);
        };
        axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServerError::Serve)
    }
}

pub fn router(state: AppState) -> Router {
    use api::*;
    let limit = state.body_limit;
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/apps", get(list_apps).post(create_app))
        .route(
            "/api/v1/apps/{name}",
            get(get_app).put(update_app).delete(delete_app),
        )
        .route("/api/v1/apps/{name}/{action}", post(app_action))
        .route("/api/v1/rollouts/{name}", get(rollout))
        .route("/api/v1/groups", get(list_groups))
        .route("/api/v1/groups/{name}", get(get_group))
        .route("/api/v1/nodes", get(list_nodes))
        .route("/api/v1/nodes/register", post(register))
        .route("/api/v1/nodes/{name}", get(get_node).delete(delete_node))
        .route("/api/v1/nodes/{name}/desired", get(desired))
        .route("/api/v1/nodes/{name}/heartbeat", post(heartbeat))
        .route("/api/v1/nodes/{name}/status", axum::routing::put(status))
        .route("/api/v1/containers", get(containers))
        .route("/api/v1/vitals", get(vitals))
        .route("/api/v1/stats", get(stats))
        .fallback(|| async { error::ApiError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}
