//! The operations layer: one function per operation, holding its rules — validation, who
//! may do it, the revision it makes, what it wakes. Every API surface (the v1 API today;
//! Sinfonia's, Samsung's, Nebula's v2 and a dashboard to come) authenticates its caller,
//! maps its wire format onto these functions, and maps [`OpError`] onto its own error shape.
//! Nothing here knows about HTTP.
//!
//! Reads take the cluster's read lock and return views; changes go through
//! `Shared::mutate` (the group-commit writer), so each operation commits at most once and a
//! refused one changes nothing.

pub mod agents;
pub mod apps;
pub mod deployments;
mod error;
pub mod exec;
pub mod groups;
pub mod jobs;
pub mod nodes;
pub mod rollouts;
pub mod security;
pub mod services;
pub mod sites;
pub mod stream;
pub mod watched;

use std::sync::Arc;

pub use error::OpError;

use crate::security::Security;
use crate::state::Shared;

/// What the operations work on: the cluster and the security state.
#[derive(Clone)]
pub struct Ops {
    pub shared: Arc<Shared>,
    pub sec: Arc<Security>,
    /// The deploy API's settings and rate limits (`deployments`).
    pub sinfonia: Arc<deployments::SinfoniaState>,
}

/// Not found, to someone who may not see the object (so names cannot be probed).
pub(crate) fn hidden(kind: &str, name: &str) -> OpError {
    OpError::NotFound(format!("{kind} `{name}` does not exist"))
}

pub(crate) fn check_name(kind: &'static str, name: &str) -> Result<(), OpError> {
    gustavo_model::names::validate(kind, name).map_err(|e| OpError::BadRequest(e.to_string()))
}
