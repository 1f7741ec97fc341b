//! Gustavo's domain model: everything the server and the agent decide, with no I/O.
//!
//! - [`spec`]: the app format (the seed's YAML plus extensions), parsed and validated;
//!   [`image`] and [`ports`] hold the grammars of its image references and port bindings.
//! - [`desired`]: how an app becomes concrete container specs on one node, with content hashes.
//! - [`plan`]: the reconcile diff — what to create, start and remove to make observed match desired.
//! - [`api`]: the wire types shared by server, agent and CLI.
//! - [`appfile`]: an app written back as the YAML app file (`apps get -o yaml`).
//! - [`job`]: jobs — the job file, the run state machine, retries, due times.
//! - [`names`]: the rules for app, group and node names.
//! - [`node_settings`]: the server settings every node's desired state carries, fingerprinted.
//! - [`rollout`]: staged updates — waves, health gates, halts and rollbacks.
//! - [`sites`], [`matcher`], [`lease`], [`wireguard`], [`compat`]: edge sites, the matcher
//!   chain that picks one for a client, per-client deployments on leases, WireGuard keys,
//!   and Sinfonia's wire shapes.
//! - [`exposition`]: metrics text formats (OpenMetrics, and Prometheus text for older scrapers).
//! - [`exec`]: wire types and rules of `gustavo exec` / `gustavo docker`.
//! - [`hostinstall`]: the pure parts of `gustavo hosts install|check` (facts, service files).
//! - [`hostlist`]: pdsh / Cloudmesh host lists (`red[01-05]`), expanded.

pub mod access;
pub mod api;
pub mod appfile;
pub mod auth_api;
pub mod compat;
pub mod cron;
pub mod desired;
pub mod exec;
pub mod exposition;
pub mod hostinstall;
pub mod hostlist;
pub mod image;
pub mod job;
pub mod lease;
pub mod matcher;
pub mod names;
pub mod node_settings;
pub mod peers;
pub mod plan;
pub mod ports;
pub mod pressure;
pub mod report;
pub mod rollout;
pub mod schedule;
pub mod sites;
pub mod spec;
pub mod uplink;
pub mod watched;
pub mod wireguard;
mod written;

pub use desired::{ContainerSpec, NodeFacts};
pub use spec::{AppSpec, EnvValue, SpecError};
