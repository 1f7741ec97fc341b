//! Agentless hosts watched through Glances (`gustavo nodes import nodes.yaml`, or
//! `gustavo server --watch nodes.yaml`): each is a node with no agent and no groups — so
//! nothing is ever placed on it — whose vitals and pressure level come from its Glances API
//! (`controllers/watched.rs`). Importing again updates the hosts and keeps what pressure
//! did on them.

use std::collections::BTreeMap;

use gustavo_model::access::Subject;
use gustavo_model::watched::WatchedHost;
pub use gustavo_model::watched::{ImportRequest, ImportResult};
use gustavo_store::{Change, NodeRecord};

use super::{OpError, Ops};
use crate::now;

/// The label that marks a node as watched through Glances, with no agent.
pub const AGENTLESS_LABEL: &str = "agentless";

/// The token hash of an agentless node: never the SHA-256 of any token.
fn no_token(name: &str) -> String {
    format!("agentless:{name}")
}

impl Ops {
    /// Adds or updates watched hosts (admin). A name already used by a node with an agent
    /// is refused.
    pub async fn import_watched(
        &self,
        who: &Subject,
        req: ImportRequest,
    ) -> Result<ImportResult, OpError> {
        if !who.is_admin() {
            return Err(OpError::Forbidden("watch hosts"));
        }
        for h in &req.hosts {
            super::check_name("node", &h.name)?;
            if h.address.trim().is_empty() || h.port == 0 {
                return Err(OpError::BadRequest(format!(
                    "host `{}`: an address and a port are needed",
                    h.name
                )));
            }
        }
        let (added, updated, revision) = self
            .shared
            .mutate(move |c, rev| {
                let (mut changes, mut added, mut updated) = (Vec::new(), Vec::new(), Vec::new());
                for mut h in req.hosts {
                    if let Some(n) = c.nodes.get(&h.name)
                        && !c.watched.contains_key(&h.name)
                    {
                        return Err(OpError::Conflict(format!(
                            "node `{}` already exists with an agent; a watched host needs its own name",
                            n.name
                        )));
                    }
                    h.pressure = req.pressure.clone();
                    match c.watched.get(&h.name) {
                        Some(old) => {
                            // What pressure did and what the host answered are kept.
                            h.record = old.record.clone();
                            h.api = old.api;
                            if *old != h {
                                updated.push(h.name.clone());
                                changes.push(Change::PutWatched(Box::new(h)));
                            }
                        }
                        None => {
                            added.push(h.name.clone());
                            changes.push(Change::PutNode(agentless_node(&h, rev)));
                            changes.push(Change::PutWatched(Box::new(h)));
                        }
                    }
                }
                Ok((changes, (added, updated, rev)))
            })
            .await?;
        for n in &added {
            self.shared.events.push(
                "node",
                format!("node:{n}"),
                format!("{n} watched through Glances (no agent)"),
            );
        }
        Ok(ImportResult {
            added,
            updated,
            revision,
        })
    }

    /// The watched hosts (admin).
    pub fn list_watched(&self, who: &Subject) -> Result<Vec<WatchedHost>, OpError> {
        if !who.is_admin() {
            return Err(OpError::Forbidden("list watched hosts"));
        }
        Ok(self.shared.read().watched.values().cloned().collect())
    }
}

/// The node record of a watched host: no token, no groups, labelled agentless.
pub(crate) fn agentless_node(h: &WatchedHost, revision: u64) -> NodeRecord {
    NodeRecord {
        name: h.name.clone(),
        token_hash: no_token(&h.name),
        groups: Vec::new(),
        labels: BTreeMap::from([(AGENTLESS_LABEL.to_string(), "glances".to_string())]),
        cpus: 0,
        memory_mb: 0,
        agent_version: match h.api {
            Some(v) => format!("glances api {v} (agentless)"),
            None => "glances (agentless)".into(),
        },
        registered_at: now(),
        revision,
        heartbeat_s: crate::controllers::watched::POLL.as_secs() as u32,
        bound_group: None,
        cordoned: false,
        draining: false,
    }
}
