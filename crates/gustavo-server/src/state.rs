//! The cluster as the server holds it: the durable desired state (a copy of the store, kept
//! in memory for reads) plus what agents report (vitals, observed containers, last seen),
//! which lives only in memory — it is re-reported within seconds after a restart.
//!
//! Every mutation goes through [`Cluster::mutate`]: it computes the changes at the next
//! revision, commits them to the store, and only then applies them in memory. A failed
//! commit leaves memory untouched, so what the API shows is always what is on disk.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use gustavo_model::api::{
    App, AppState, AppStatus, ContainerStatus, DesiredApp, DesiredContainer, DesiredState, Group,
    Node, NodeRollout, NodeStatus, Rollout, StatusReport, Vitals,
};
use gustavo_model::desired::{NodeFacts, container_name, expand};
use gustavo_store::{Change, GroupRecord, NodeRecord, Snapshot, Store, StoreError};

use crate::error::ApiError;

/// How long without a request before a node counts as offline.
pub const OFFLINE_AFTER_S: u64 = 15;

/// What the server knows of a node only from its reports.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub last_seen: u64,
    pub address: String,
    pub vitals: Option<Vitals>,
    pub report: StatusReport,
    /// False until the node's first status report since this server started.
    pub has_report: bool,
}

/// An app deleted while this server ran: which nodes had it, so `delete --wait` can follow
/// the containers going away.
#[derive(Debug, Clone)]
struct Deleted {
    revision: u64,
    nodes: Vec<String>,
}

#[derive(Default)]
pub struct Cluster {
    pub revision: u64,
    pub apps: BTreeMap<String, App>,
    pub groups: BTreeMap<String, GroupRecord>,
    pub nodes: BTreeMap<String, NodeRecord>,
    pub live: HashMap<String, Live>,
    token_index: HashMap<String, String>,
    deleted: HashMap<String, Deleted>,
}

impl Cluster {
    pub fn from_snapshot(s: Snapshot) -> Cluster {
        let mut c = Cluster {
            revision: s.revision,
            ..Cluster::default()
        };
        for a in s.apps {
            c.apps.insert(a.name.clone(), a);
        }
        for g in s.groups {
            c.groups.insert(g.name.clone(), g);
        }
        for n in s.nodes {
            c.token_index.insert(n.token_hash.clone(), n.name.clone());
            c.nodes.insert(n.name.clone(), n);
        }
        c
    }

    /// Runs `f` to compute the changes at the next revision, commits them, then applies
    /// them. `f` sees the current state and the revision the changes will take; returning
    /// no changes commits nothing and keeps the revision.
    pub fn mutate<T>(
        &mut self,
        store: &dyn Store,
        f: impl FnOnce(&Cluster, u64) -> Result<(Vec<Change>, T), ApiError>,
    ) -> Result<T, ApiError> {
        let next = self.revision + 1;
        let (changes, out) = f(self, next)?;
        if changes.is_empty() {
            return Ok(out);
        }
        store.commit(next, &changes).map_err(|e: StoreError| {
            tracing::error!(error = %e, "commit failed; nothing changed");
            ApiError::Internal(format!("storage failed, nothing was changed: {e}"))
        })?;
        self.revision = next;
        for change in changes {
            self.apply(change, next);
        }
        Ok(out)
    }

    fn apply(&mut self, change: Change, revision: u64) {
        match change {
            Change::PutApp(a) => {
                self.deleted.remove(&a.name);
                self.apps.insert(a.name.clone(), *a);
            }
            Change::DeleteApp(name) => {
                if let Some(app) = self.apps.remove(&name) {
                    let nodes = self.members_of(&app.groups);
                    self.deleted.insert(name, Deleted { revision, nodes });
                }
            }
            Change::PutGroup(g) => {
                self.groups.insert(g.name.clone(), g);
            }
            Change::PutNode(n) => {
                if let Some(old) = self.nodes.get(&n.name) {
                    self.token_index.remove(&old.token_hash);
                }
                self.token_index
                    .insert(n.token_hash.clone(), n.name.clone());
                self.nodes.insert(n.name.clone(), n);
            }
            Change::DeleteNode(name) => {
                if let Some(old) = self.nodes.remove(&name) {
                    self.token_index.remove(&old.token_hash);
                }
                self.live.remove(&name);
            }
        }
    }

    pub fn node_by_token_hash(&self, hash: &str) -> Option<&str> {
        self.token_index.get(hash).map(String::as_str)
    }

    /// Names of the nodes in any of `groups`.
    pub fn members_of(&self, groups: &[String]) -> Vec<String> {
        self.nodes
            .values()
            .filter(|n| n.groups.iter().any(|g| groups.contains(g)))
            .map(|n| n.name.clone())
            .collect()
    }

    /// Changes that bump every group in `names` to `revision`, creating missing ones.
    pub fn touch_groups<'a>(
        &self,
        names: impl IntoIterator<Item = &'a String>,
        revision: u64,
    ) -> Vec<Change> {
        let set: BTreeSet<&String> = names.into_iter().collect();
        set.into_iter()
            .map(|name| {
                Change::PutGroup(GroupRecord {
                    name: name.clone(),
                    revision,
                })
            })
            .collect()
    }

    /// The apps a node runs: every app attached to one of its groups, once.
    fn apps_of<'a>(&'a self, node: &NodeRecord) -> impl Iterator<Item = &'a App> {
        let groups = node.groups.clone();
        self.apps
            .values()
            .filter(move |a| a.groups.iter().any(|g| groups.contains(g)))
    }

    /// The revision of the last change that touched this node's desired state.
    pub fn node_revision(&self, node: &NodeRecord) -> u64 {
        let groups = node
            .groups
            .iter()
            .filter_map(|g| self.groups.get(g))
            .map(|g| g.revision);
        let apps = self.apps_of(node).map(|a| a.revision);
        groups.chain(apps).fold(node.revision, u64::max)
    }

    /// The node's desired state, computed from the apps of its groups.
    pub fn desired_for(&self, node: &NodeRecord) -> DesiredState {
        let facts = NodeFacts {
            name: node.name.clone(),
            cpus: node.cpus,
            memory_mb: node.memory_mb,
            labels: node.labels.clone(),
        };
        let apps = self
            .apps_of(node)
            .map(|app| DesiredApp {
                name: app.name.clone(),
                revision: app.revision,
                rolling_restart: app.spec.rolling_restart,
                containers: expand(&app.name, &app.spec, app.restart_nonce, &facts)
                    .into_iter()
                    .map(|spec| DesiredContainer {
                        name: container_name(&node.name, &app.name, spec.replica),
                        hash: spec.hash(),
                        spec,
                    })
                    .collect(),
            })
            .collect();
        DesiredState {
            node: node.name.clone(),
            revision: self.node_revision(node),
            apps,
        }
    }

    pub fn node_status(&self, name: &str, now: u64) -> NodeStatus {
        match self.live.get(name) {
            Some(l) if now.saturating_sub(l.last_seen) <= OFFLINE_AFTER_S => NodeStatus::Ready,
            _ => NodeStatus::Offline,
        }
    }

    pub fn node_view(&self, n: &NodeRecord, now: u64) -> Node {
        let live = self.live.get(&n.name);
        Node {
            name: n.name.clone(),
            groups: n.groups.clone(),
            labels: n.labels.clone(),
            address: live.map(|l| l.address.clone()).unwrap_or_default(),
            agent_version: n.agent_version.clone(),
            cpus: n.cpus,
            memory_mb: n.memory_mb,
            status: self.node_status(&n.name, now),
            last_seen: live.map(|l| l.last_seen).unwrap_or(0),
            registered_at: n.registered_at,
            applied_revision: live.map(|l| l.report.applied_revision).unwrap_or(0),
        }
    }

    /// Every group: those stored plus any named by a node or app but never stored.
    pub fn group_views(&self) -> Vec<Group> {
        let mut names: BTreeSet<String> = self.groups.keys().cloned().collect();
        names.extend(self.nodes.values().flat_map(|n| n.groups.iter().cloned()));
        names.extend(self.apps.values().flat_map(|a| a.groups.iter().cloned()));
        names.into_iter().map(|n| self.group_view(&n)).collect()
    }

    pub fn group_view(&self, name: &str) -> Group {
        Group {
            name: name.to_string(),
            apps: self
                .apps
                .values()
                .filter(|a| a.groups.iter().any(|g| g == name))
                .map(|a| a.name.clone())
                .collect(),
            nodes: self
                .nodes
                .values()
                .filter(|n| n.groups.iter().any(|g| g == name))
                .map(|n| n.name.clone())
                .collect(),
            revision: self.groups.get(name).map(|g| g.revision).unwrap_or(0),
        }
    }

    pub fn group_exists(&self, name: &str) -> bool {
        self.groups.contains_key(name)
            || self
                .nodes
                .values()
                .any(|n| n.groups.iter().any(|g| g == name))
    }

    /// How far an app's current revision (or its deletion) has reached each node.
    pub fn rollout(&self, app_name: &str, now: u64) -> Option<Rollout> {
        let status_of = |node: &str| -> Option<&AppStatus> {
            self.live
                .get(node)?
                .report
                .apps
                .iter()
                .find(|s| s.app == app_name)
        };
        if let Some(app) = self.apps.get(app_name) {
            let nodes = self
                .members_of(&app.groups)
                .into_iter()
                .map(|node| {
                    let st = status_of(&node).filter(|s| s.revision >= app.revision);
                    let done = if app.spec.running {
                        AppState::Running
                    } else {
                        AppState::Stopped
                    };
                    NodeRollout {
                        node_status: self.node_status(&node, now),
                        converged: st.is_some_and(|s| s.state == done),
                        state: st.map(|s| s.state),
                        ready: st.map(|s| s.ready).unwrap_or(0),
                        desired: st.map(|s| s.desired).unwrap_or(0),
                        error: st.and_then(|s| s.error.clone()),
                        node,
                    }
                })
                .collect();
            return Some(Rollout {
                app: app_name.to_string(),
                revision: app.revision,
                exists: true,
                nodes,
            });
        }
        let deleted = self.deleted.get(app_name)?;
        let nodes = deleted
            .nodes
            .iter()
            .filter(|n| self.nodes.contains_key(*n))
            .map(|node| {
                let live = self.live.get(node);
                let left = live
                    .map(|l| {
                        l.report
                            .containers
                            .iter()
                            .filter(|c| c.app == app_name)
                            .count()
                    })
                    .unwrap_or(0) as u32;
                let applied = live.map(|l| l.report.applied_revision).unwrap_or(0);
                NodeRollout {
                    node: node.clone(),
                    node_status: self.node_status(node, now),
                    converged: applied >= deleted.revision && left == 0,
                    state: None,
                    ready: left,
                    desired: 0,
                    error: None,
                }
            })
            .collect();
        Some(Rollout {
            app: app_name.to_string(),
            revision: deleted.revision,
            exists: false,
            nodes,
        })
    }

    /// Containers reported by nodes, filtered by group and host.
    pub fn containers(
        &self,
        group: Option<&str>,
        host: Option<&str>,
    ) -> Vec<(String, ContainerStatus, Option<String>)> {
        let mut out = Vec::new();
        for n in self.filtered_nodes(group, host) {
            let Some(live) = self.live.get(&n.name) else {
                continue;
            };
            for c in &live.report.containers {
                let err = live
                    .report
                    .apps
                    .iter()
                    .find(|a| a.app == c.app)
                    .and_then(|a| a.error.clone());
                out.push((n.name.clone(), c.clone(), err));
            }
            // Apps that failed before any container existed still deserve a row.
            for a in &live.report.apps {
                if a.error.is_some() && !live.report.containers.iter().any(|c| c.app == a.app) {
                    out.push((
                        n.name.clone(),
                        ContainerStatus {
                            app: a.app.clone(),
                            name: String::new(),
                            id: String::new(),
                            image: String::new(),
                            state: "failed".into(),
                            health: None,
                            since: 0,
                        },
                        a.error.clone(),
                    ));
                }
            }
        }
        out
    }

    pub fn filtered_nodes<'a>(
        &'a self,
        group: Option<&'a str>,
        host: Option<&'a str>,
    ) -> impl Iterator<Item = &'a NodeRecord> {
        self.nodes.values().filter(move |n| {
            group.is_none_or(|g| n.groups.iter().any(|x| x == g))
                && host.is_none_or(|h| n.name == h)
        })
    }
}

/// The cluster with its store, shared by every handler.
pub struct Shared {
    pub cluster: std::sync::RwLock<Cluster>,
    pub store: Arc<dyn Store>,
    /// The global revision, for long-polling agents to wait on.
    pub revision_tx: tokio::sync::watch::Sender<u64>,
    /// Set when the server shuts down, so long-polls answer at once instead of holding the
    /// graceful shutdown for their whole wait.
    pub closing: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    pub fn new(store: Arc<dyn Store>) -> Result<Shared, StoreError> {
        let cluster = Cluster::from_snapshot(store.load()?);
        let (revision_tx, _) = tokio::sync::watch::channel(cluster.revision);
        let (closing, _) = tokio::sync::watch::channel(false);
        Ok(Shared {
            cluster: std::sync::RwLock::new(cluster),
            store,
            revision_tx,
            closing,
        })
    }

    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Cluster> {
        self.cluster.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write(&self) -> std::sync::RwLockWriteGuard<'_, Cluster> {
        self.cluster.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a mutation on a blocking thread (the commit waits for the disk), then wakes
    /// waiting agents.
    pub async fn mutate<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Cluster, u64) -> Result<(Vec<Change>, T), ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let shared = self.clone();
        let (out, revision) = tokio::task::spawn_blocking(move || {
            let mut c = shared.write();
            let out = c.mutate(shared.store.as_ref(), f)?;
            Ok::<_, ApiError>((out, c.revision))
        })
        .await
        .map_err(|e| ApiError::Internal(format!("mutation task failed: {e}")))??;
        self.revision_tx.send_if_modified(|r| {
            let changed = *r != revision;
            *r = revision;
            changed
        });
        Ok(out)
    }
}
