//! The container runtime behind one small trait, so the reconciler can drive Docker on a
//! device and an in-memory double in unit tests (and, later, thousands of simulated devices
//! in one process).

use std::collections::BTreeSet;
use std::future::Future;

use gustavo_model::api::DesiredContainer;
use gustavo_model::plan::Observed;
use thiserror::Error;

/// Labels that mark a container as one of ours and say what it is.
pub mod labels {
    pub const NODE: &str = "gustavo.node";
    pub const APP: &str = "gustavo.app";
    pub const REPLICA: &str = "gustavo.replica";
    pub const HASH: &str = "gustavo.hash";
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum RuntimeError {
    #[error("image `{image}` could not be pulled: {reason}")]
    Pull { image: String, reason: String },
    #[error("container `{name}`: {reason}")]
    Container { name: String, reason: String },
    #[error("network `{name}`: {reason}")]
    Network { name: String, reason: String },
    #[error("container runtime unavailable: {0}")]
    Unavailable(String),
}

impl RuntimeError {
    /// The error with the container called `name`: a runtime given only a container's ID
    /// (start, stop, remove) names it by that ID, which tells a person nothing.
    pub fn naming(self, name: &str) -> RuntimeError {
        match self {
            RuntimeError::Container { reason, .. } => RuntimeError::Container {
                name: name.to_string(),
                reason,
            },
            other => other,
        }
    }
}

pub trait Runtime: Send + Sync + 'static {
    /// Every container labelled as this node's, running or not.
    fn list(&self, node: &str) -> impl Future<Output = Result<Vec<Observed>, RuntimeError>> + Send;

    /// Makes the image available locally. Pulls when it is missing, and also when `refresh`
    /// is set (a moving tag such as `latest`) — then a failed pull falls back to the local
    /// copy, so a device with no registry in reach keeps working.
    fn ensure_image(
        &self,
        image: &str,
        refresh: bool,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Creates and starts a container (its networks created on demand); returns its id.
    fn create(
        &self,
        node: &str,
        c: &DesiredContainer,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;

    fn start(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Stops a container (gracefully, then by force) and leaves it in place: node pressure
    /// stops containers it will start again.
    fn stop(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Sets a container's memory and memory+swap limits in bytes; 0 lifts them (swap -1:
    /// unlimited).
    fn set_memory(
        &self,
        id: &str,
        memory: i64,
        swap: i64,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// The memory a running container uses now, in bytes (without reclaimable page
    /// cache); 0 when the runtime cannot say.
    fn memory_usage(&self, id: &str) -> impl Future<Output = u64> + Send {
        let _ = id;
        async { 0 }
    }

    /// Bytes a running container has sent on its networks since it started; 0 when the
    /// runtime cannot say.
    fn net_sent(&self, id: &str) -> impl Future<Output = u64> + Send {
        let _ = id;
        async { 0 }
    }

    /// Sets a running container's CPU limit in nano-CPUs; 0 lifts it.
    fn set_cpus(
        &self,
        id: &str,
        nano_cpus: i64,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Stops (gracefully, then by force) and removes a container; a missing one is fine.
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Removes the networks named in `unused` (the node's desired state named them before
    /// and no longer does) if the runtime created them and no container uses them. Best
    /// effort: failures are logged, never returned. Runtimes without networks do nothing.
    fn prune_networks(&self, unused: &BTreeSet<String>) -> impl Future<Output = ()> + Send {
        let _ = unused;
        async {}
    }

    /// The end of a container's output (stdout and stderr), at most `max_bytes`; empty
    /// when the runtime keeps none. Job runs report it.
    fn logs(&self, id: &str, max_bytes: usize) -> impl Future<Output = String> + Send {
        let _ = (id, max_bytes);
        async { String::new() }
    }

    /// A channel that receives a message whenever something may have changed for this
    /// node's containers (an exit, a removal by hand…). Only a trigger: messages may be
    /// spurious or coalesced, and the reconciler relists either way.
    fn watch(&self, node: &str) -> tokio::sync::mpsc::Receiver<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_error_names_the_container_not_its_id() {
        let by_id = RuntimeError::Container {
            name: "3f2a9c01d4e5".into(),
            reason: "is restarting, wait until the container is running".into(),
        };
        assert_eq!(
            by_id.naming("n1.web.0").to_string(),
            "container `n1.web.0`: is restarting, wait until the container is running"
        );
        // Other errors say what they said.
        let gone = RuntimeError::Unavailable("no socket".into());
        assert_eq!(gone.clone().naming("n1.web.0"), gone);
    }
}
