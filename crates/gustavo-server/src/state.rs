//! The cluster as the server holds it: the durable desired state (a copy of the store, kept
//! in memory for reads) plus what agents report (vitals, observed containers, last seen),
//! which lives only in memory — it is re-reported within seconds after a restart.
//!
//! Every mutation goes through [`Cluster::mutate`]: it computes the changes at the next
//! revision, commits them to the store, and only then applies them in memory. A failed
//! commit leaves memory untouched, so what the API shows is always what is on disk.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use dashmap::DashMap;
use std::sync::Arc;

use gustavo_model::api::{
    App, AppState, AppStatus, ContainerStatus, DesiredApp, DesiredState, Group, Node, NodeRollout,
    NodeStatus, Rollout, RolloutDevice, RolloutSummary, StagedRollout, StatusReport, Vitals,
};
use gustavo_model::desired::{ContainerTemplate, NodeFacts, SharedTemplate};
use gustavo_model::node_settings::NodeSettings;
use gustavo_model::rollout::{Device as RolloutSeen, RolloutRecord, Seen};
use gustavo_model::schedule::{Liveness, NodeView, Usage, Want, Weights, drain_step, place};
use gustavo_store::{Change, GroupRecord, NodeRecord, SettingsRecord, Snapshot, Store};

use crate::by_key::ByKey;
use crate::error::ApiError;
use crate::rollout_counts::Part;

/// How long without a request before a node counts as offline, at the least; a node with a
/// slower heartbeat gets three of its periods.
pub const OFFLINE_AFTER_S: u64 = 15;
/// How long a node on the stream or sync protocol may be without an open stream or
/// long-poll before it shows offline: it re-polls within milliseconds (a second more while
/// it lets a change settle), and opens a broken stream again within 0.75 s of backoff (2.25 s
/// after two failures). With TCP keepalive and `TCP_USER_TIMEOUT` closing a dead device's
/// connection within 8–10 s (`serve.rs`), a device that loses power shows offline within
/// about 13 s (with 4 s here, 9.8–14.7 s were measured: too close to the 15 s target).
pub const SYNC_GAP_S: u64 = 3;

/// The scheduler's settings (server config).
#[derive(Debug, Clone)]
pub struct SchedConfig {
    pub weights: Weights,
    /// Seconds of silence after which a node's replicas are placed elsewhere.
    pub grace_s: u64,
    /// When this server started (Unix seconds): nobody counts as silent from before.
    pub started: u64,
}

impl Default for SchedConfig {
    fn default() -> Self {
        SchedConfig {
            weights: Weights::default(),
            grace_s: 20,
            started: crate::now(),
        }
    }
}

impl SchedConfig {
    /// The nodes as the scheduler sees them now.
    pub fn views(&self, c: &Cluster) -> Vec<NodeView> {
        c.node_views(crate::now(), self.started, self.grace_s)
    }
}

/// Whether `node` (a member of the app's groups) runs the app: every member does, unless
/// the app is replicated, when only the nodes its replicas are placed on do.
fn runs_on(app: &App, node: &str) -> bool {
    // A recipe app runs only as per-client deployments (see `desired_for`).
    !app.spec.is_recipe() && !app.spec.is_replicated()
        || app.placements.values().any(|n| n == node)
        || app.handoff.values().any(|n| n == node)
}

/// The version of an app one node runs: the current revision, or — during a staged
/// rollout, on a device not yet in a wave — the one the app came from.
pub struct Version<'a> {
    pub revision: u64,
    pub spec: &'a gustavo_model::AppSpec,
    pub restart_nonce: u64,
    pub digest: Option<&'a str>,
}

impl<'a> Version<'a> {
    pub fn for_node(app: &'a App, node: &str) -> Version<'a> {
        match &app.rollout {
            Some(r) if !r.runs_new(node) => Version {
                revision: r.from.revision,
                spec: &r.from.spec,
                restart_nonce: r.from.restart_nonce,
                digest: r.from.digest.as_deref(),
            },
            _ => Version {
                revision: app.revision,
                spec: &app.spec,
                restart_nonce: app.restart_nonce,
                digest: app.digest.as_deref(),
            },
        }
    }
}

/// What the server knows of a node only from its reports.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub last_seen: u64,
    /// Where the node's last request came from (it may move).
    pub address: Option<std::net::IpAddr>,
    pub vitals: Option<Vitals>,
    /// Whoever replaces or changes it marks the node in [`Cluster::rollout_counts`].
    pub report: StatusReport,
    /// False until the node's first status report since this server started.
    pub has_report: bool,
    /// The node's pressure level and actions, from its heartbeats. Boxed, like `tunnel`:
    /// none unless thresholds apply to the node (a tunnel: unless it serves a site's
    /// clients), and inline they would make every node's entry ~220 bytes larger.
    pub pressure: Option<Box<gustavo_model::pressure::Status>>,
    /// Bytes sent by its leased backends, by app (deployment) name, from its heartbeats.
    pub traffic: BTreeMap<String, u64>,
    /// Its WireGuard interface for a site's clients, from its heartbeats.
    pub tunnel: Option<Box<gustavo_model::wireguard::TunnelStatus>>,
    /// Long-polls it holds open now: while one is, the node is heard from (a dead device's
    /// connection is found by TCP keepalive, `serve.rs`).
    pub polls: u32,
    /// The sync session and sequence of what set `report` and `vitals` (see
    /// `api::SyncRequest`): older requests of the same session are not news.
    pub report_seq: (u64, u64),
    pub vitals_seq: (u64, u64),
    /// It speaks the sync protocol (`POST …/sync`): it re-polls at once, so a few seconds
    /// without an open poll mean it is gone, whatever its vitals period.
    pub syncs: bool,
    /// Its liveness when the scheduler last looked, from its first answer to this server
    /// on (node transitions are told as events).
    pub followed: Option<Liveness>,
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
    pub nodes: crate::node_map::Nodes,
    pub jobs: BTreeMap<String, gustavo_model::job::Job>,
    /// Reported state, updated on every agent request: a concurrent map, so heartbeats
    /// need only the cluster's read lock and never queue behind each other.
    /// Hashed with foldhash (seeded per map): every request of every node looks its entry
    /// up, and SipHash was a visible part of that.
    pub live: DashMap<String, Live, foldhash::fast::RandomState>,
    token_index: HashMap<String, String>,
    deleted: HashMap<String, Deleted>,
    /// Edge sites (`ops/sites.rs`).
    pub sites: BTreeMap<String, gustavo_model::sites::Site>,
    /// Per-client deployments on leases (`ops/deployments.rs`). Changed only through
    /// [`Cluster::apply`], which keeps `deployments_by_node`.
    pub deployments: BTreeMap<String, gustavo_model::lease::Deployment>,
    /// Agentless hosts watched through Glances (`ops/watched.rs`), by node name.
    pub watched: BTreeMap<String, gustavo_model::watched::WatchedHost>,
    /// The server's settings that every node's desired state carries (server config: the
    /// pressure default, the client tunnel pool). Read them only from here, so the
    /// fingerprint that tells a start with other settings covers them.
    pub settings: NodeSettings,
    /// The fingerprint of the settings last put in force and the revision they took
    /// effect at, as stored; every node's revision is at least that ([`Cluster::node_revision`]).
    settings_record: Option<SettingsRecord>,
    /// Container templates of the app versions in use, by app name (`template`); an
    /// app's are forgotten whenever it is put or deleted.
    templates: DashMap<String, Vec<TemplateEntry>>,
    /// Rollout counts kept between looks; a node's report changing must be marked here.
    pub rollout_counts: crate::rollout_counts::RolloutCounts,
    /// The apps of each group, the scheduled jobs of each group and the one-shot jobs of
    /// the node running them (`by_key.rs`): kept by [`Cluster::apply`], so `apps` and
    /// `jobs` change only through it.
    apps_by_group: ByKey,
    jobs_by_group: ByKey,
    jobs_by_node: ByKey,
    /// The deployments placed on each node: a node's desired state lists its own, and
    /// there may be one per client of a site.
    deployments_by_node: ByKey,
}

/// Files `a` under its groups, or takes it out.
fn file_app(index: &mut ByKey, a: &App, file: bool) {
    let groups = a.groups.iter().map(String::as_str);
    if file {
        index.add(&a.name, groups);
    } else {
        index.remove(&a.name, groups);
    }
}

/// Files `j` under its groups (scheduled) or the node running it (one-shot), or takes it
/// out — as [`Cluster::jobs_of`] finds it.
fn file_job(by_group: &mut ByKey, by_node: &mut ByKey, j: &gustavo_model::job::Job, file: bool) {
    let scheduled = j.spec.is_scheduled();
    let groups = (j.groups.iter().filter(|_| scheduled)).map(String::as_str);
    let node = j.running_on().filter(|_| !scheduled);
    if file {
        by_group.add(&j.name, groups);
        by_node.add(&j.name, node);
    } else {
        by_group.remove(&j.name, groups);
        by_node.remove(&j.name, node);
    }
}

/// A kept template: the version's (revision, restart nonce), its pinned digest, and the
/// template (none: the version is stopped).
type TemplateEntry = ((u64, u64), Option<String>, Option<SharedTemplate>);

impl Cluster {
    pub fn from_snapshot(s: Snapshot) -> Cluster {
        let mut c = Cluster {
            revision: s.revision,
            settings_record: s.settings,
            ..Cluster::default()
        };
        for a in s.apps {
            file_app(&mut c.apps_by_group, &a, true);
            c.apps.insert(a.name.clone(), a);
        }
        for g in s.groups {
            c.groups.insert(g.name.clone(), g);
        }
        for n in s.nodes {
            c.token_index.insert(n.token_hash.clone(), n.name.clone());
            c.nodes.insert(n);
        }
        for j in s.jobs {
            file_job(&mut c.jobs_by_group, &mut c.jobs_by_node, &j, true);
            c.jobs.insert(j.name.clone(), j);
        }
        for site in s.sites {
            c.sites.insert(site.name.clone(), site);
        }
        for d in s.deployments {
            c.deployments_by_node.add(&d.name, [d.node.as_str()]);
            c.deployments.insert(d.name.clone(), d);
        }
        for h in s.watched {
            c.watched.insert(h.name.clone(), h);
        }
        c
    }

    pub(crate) fn apply(&mut self, change: Change, revision: u64) {
        match change {
            Change::PutApp(a) => {
                self.deleted.remove(&a.name);
                self.templates.remove(&a.name);
                if let Some(old) = self.apps.get(&a.name) {
                    file_app(&mut self.apps_by_group, old, false);
                }
                file_app(&mut self.apps_by_group, &a, true);
                self.apps.insert(a.name.clone(), *a);
            }
            Change::DeleteApp(name) => {
                self.templates.remove(&name);
                if let Some(app) = self.apps.remove(&name) {
                    file_app(&mut self.apps_by_group, &app, false);
                    let nodes = self.members_of(&app.groups);
                    self.deleted.insert(name, Deleted { revision, nodes });
                }
            }
            Change::PutGroup(g) => {
                self.groups.insert(g.name.clone(), g);
            }
            Change::DeleteGroup(name) => {
                self.groups.remove(&name);
            }
            Change::PutNode(n) => {
                if let Some(old) = self.nodes.get(&n.name) {
                    self.token_index.remove(&old.token_hash);
                }
                self.token_index
                    .insert(n.token_hash.clone(), n.name.clone());
                self.nodes.insert(n);
            }
            Change::DeleteNode(name) => {
                if let Some(old) = self.nodes.remove(&name) {
                    self.token_index.remove(&old.token_hash);
                }
                self.live.remove(&name);
            }
            // History lives in the store only.
            Change::PutRevision(_) | Change::RevisionOutcome { .. } => {}
            Change::PutJob(j) => {
                let (by_group, by_node) = (&mut self.jobs_by_group, &mut self.jobs_by_node);
                if let Some(old) = self.jobs.get(&j.name) {
                    file_job(by_group, by_node, old, false);
                }
                file_job(by_group, by_node, &j, true);
                self.jobs.insert(j.name.clone(), *j);
            }
            Change::DeleteJob(name) => {
                if let Some(old) = self.jobs.remove(&name) {
                    file_job(&mut self.jobs_by_group, &mut self.jobs_by_node, &old, false);
                }
            }
            // The outbox is read from the store by its controller, not kept in memory.
            Change::PutCallback(_) => {}
            Change::PutSite(site) => {
                self.sites.insert(site.name.clone(), *site);
            }
            Change::DeleteSite(name) => {
                self.sites.remove(&name);
            }
            Change::PutDeployment(d) => {
                if let Some(old) = self.deployments.get(&d.name) {
                    self.deployments_by_node
                        .remove(&old.name, [old.node.as_str()]);
                }
                self.deployments_by_node.add(&d.name, [d.node.as_str()]);
                self.deployments.insert(d.name.clone(), *d);
            }
            Change::DeleteDeployment(name) => {
                if let Some(old) = self.deployments.remove(&name) {
                    self.deployments_by_node
                        .remove(&old.name, [old.node.as_str()]);
                }
            }
            Change::PutWatched(h) => {
                self.watched.insert(h.name.clone(), *h);
            }
            Change::DeleteWatched(name) => {
                self.watched.remove(&name);
            }
            Change::PutSettings(r) => self.settings_record = Some(r),
        }
    }

    /// What a start must commit so the node settings now in [`Cluster::settings`] reach
    /// every node: nothing when the store says these very settings are in force (a restart
    /// with the same settings sends no node anything), else their fingerprint at
    /// `revision`, a new revision that every node's revision then takes — each node is
    /// sent its state again, at once if it is connected, when it comes back if not. A data
    /// dir from before settings were recorded counts as changed: whether its nodes have
    /// these settings is not known.
    pub fn settings_change(&self, revision: u64) -> Option<Change> {
        let fingerprint = self.settings.fingerprint();
        if self.settings_record.map(|r| r.fingerprint) == Some(fingerprint) {
            return None;
        }
        Some(Change::PutSettings(SettingsRecord {
            fingerprint,
            revision,
        }))
    }

    /// The deployments placed on `node`, in name order.
    pub fn deployments_on<'a>(
        &'a self,
        node: &'a str,
    ) -> impl Iterator<Item = &'a gustavo_model::lease::Deployment> + 'a {
        (self.deployments_by_node.under([node]).into_iter())
            .filter_map(|n| self.deployments.get(n))
            .filter(move |d| d.node == node)
    }

    /// The jobs a node runs now: scheduled jobs of its groups, and the one-shot attempts
    /// given to it (see `ops/jobs.rs`).
    pub fn jobs_of<'a>(
        &'a self,
        node: &'a NodeRecord,
    ) -> impl Iterator<Item = &'a gustavo_model::job::Job> + 'a {
        let mut names = (self.jobs_by_group).under(node.groups.iter().map(String::as_str));
        names.extend(self.jobs_by_node.under([node.name.as_str()]));
        names
            .into_iter()
            .filter_map(|n| self.jobs.get(n))
            .filter(move |j| {
                if j.spec.is_scheduled() {
                    j.groups.iter().any(|g| node.groups.contains(g))
                } else {
                    j.running_on() == Some(node.name.as_str())
                }
            })
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
                    pressure: self.groups.get(name).and_then(|g| g.pressure.clone()),
                })
            })
            .collect()
    }

    /// The apps a node runs: every app attached to one of its groups, once — a replicated
    /// app only where one of its replicas is placed.
    fn apps_of<'a>(&'a self, node: &'a NodeRecord) -> impl Iterator<Item = &'a App> + 'a {
        let names = (self.apps_by_group).under(node.groups.iter().map(String::as_str));
        names
            .into_iter()
            .filter_map(|n| self.apps.get(n))
            .filter(move |a| {
                a.groups.iter().any(|g| node.groups.contains(g))
                    && !a.spec.is_recipe()
                    && (!a.spec.is_replicated() || runs_on(a, &node.name))
            })
    }

    /// Whether a node is heard from: lost once silent for `grace` — counted from this
    /// server's start at the earliest, so a restarted server (which has heard from nobody
    /// yet) does not move the whole fleet's work.
    pub fn liveness(&self, name: &str, now: u64, started: u64, grace: u64) -> Liveness {
        let live = self.live.get(name);
        liveness_of(
            || self.nodes.get(name),
            live.as_deref(),
            now,
            started,
            grace,
        )
    }

    /// Every node as the scheduler sees it at `now` (liveness: see [`Cluster::liveness`]).
    pub fn node_views(&self, now: u64, started: u64, grace: u64) -> Vec<NodeView> {
        self.nodes
            .values()
            .map(|n| {
                let live = self.live.get(&n.name);
                let liveness = self.liveness(&n.name, now, started, grace);
                let usage = live
                    .as_ref()
                    .and_then(|l| l.vitals.as_ref())
                    .map(|v| Usage {
                        cpu_percent: f64::from(v.cpu_percent),
                        memory_free_mb: v.memory_total_mb.saturating_sub(v.memory_used_mb),
                        disk_free_mb: v.disk_total_mb.saturating_sub(v.disk_used_mb),
                    });
                NodeView {
                    name: n.name.clone(),
                    groups: n.groups.clone(),
                    labels: n.labels.clone(),
                    cpus: n.cpus,
                    memory_mb: n.memory_mb,
                    usage,
                    liveness,
                    cordoned: n.cordoned,
                    draining: n.draining,
                    pressure: self.pressure_level(&n.name),
                    agentless: self.watched.contains_key(&n.name),
                }
            })
            .collect()
    }

    /// The placements a replicated app should have now, and the replicas being handed off
    /// a draining node (both empty for the others).
    pub fn placements_for(
        &self,
        app: &App,
        nodes: &[NodeView],
        weights: &Weights,
    ) -> (BTreeMap<u32, String>, BTreeMap<u32, String>) {
        let Some(replicas) = app.spec.replicas.filter(|_| app.spec.running) else {
            return (BTreeMap::new(), BTreeMap::new());
        };
        let want = Want {
            groups: &app.groups,
            replicas,
            max_per_node: app.spec.max_per_node.unwrap_or(1),
            selector: &app.spec.node_selector,
        };
        let placed = place(&want, &app.placements, nodes, weights);
        // The new copy of a moved replica runs once its node reports the app running at
        // this revision.
        let ready = |_: u32, node: &str| {
            self.live.get(node).is_some_and(|l| {
                l.report.apps.iter().any(|s| {
                    s.app == app.name && s.revision >= app.revision && s.state == AppState::Running
                })
            })
        };
        drain_step(&want, &placed, &app.handoff, nodes, weights, ready)
    }

    /// The revision of the last change that touched this node's desired state.
    pub fn node_revision(&self, node: &NodeRecord) -> u64 {
        let groups = node
            .groups
            .iter()
            .filter_map(|g| self.groups.get(g))
            .map(|g| g.revision);
        let apps = self.apps_of(node).map(|a| a.revision);
        let jobs = self.jobs_of(node).map(|j| j.revision);
        // The server's settings are part of every node's state (`settings_change`).
        let settings = self.settings_record.map_or(0, |r| r.revision);
        groups
            .chain(apps)
            .chain(jobs)
            .fold(node.revision.max(settings), u64::max)
    }

    /// The node's desired state, computed from the apps of its groups, in the template
    /// form: each app's containers as the version's shared template and the node's replica
    /// numbers ([`DesiredState::complete`] makes the full form). Per-client deployments
    /// come in the full form.
    pub fn desired_for(&self, node: &NodeRecord) -> DesiredState {
        // Made only if a job or a deployment needs it: most nodes have neither, and this is
        // on every node's path at every change.
        let facts = std::cell::LazyCell::new(|| NodeFacts {
            name: node.name.clone(),
            cpus: node.cpus,
            memory_mb: node.memory_mb,
            labels: node.labels.clone(),
        });
        let mut apps: Vec<DesiredApp> = self
            .apps_of(node)
            .map(|app| {
                // During a staged rollout, devices outside its waves keep the revision the
                // app came from.
                let v = Version::for_node(app, &node.name);
                let template = self.template(app, &v);
                let replicas = if template.is_none() {
                    Vec::new()
                } else if v.spec.is_replicated() {
                    // Its placed replicas, and those it hands off until the new copy runs.
                    let mut mine: Vec<u32> = app
                        .placements
                        .iter()
                        .chain(&app.handoff)
                        .filter(|(_, n)| **n == node.name)
                        .map(|(i, _)| *i)
                        .collect();
                    mine.sort_unstable();
                    mine.dedup();
                    mine
                } else {
                    (1..=v.spec.per_node().replicas(node.cpus, node.memory_mb)).collect()
                };
                DesiredApp {
                    name: app.name.clone(),
                    revision: v.revision,
                    rolling_restart: v.spec.rolling_restart,
                    priority: v.spec.priority,
                    critical: v.spec.critical,
                    leased: false,
                    containers: Vec::new(),
                    template,
                    replicas,
                }
            })
            .collect();
        let jobs = self
            .jobs_of(node)
            .filter_map(|j| gustavo_model::job::DesiredJob::for_node(j, &facts))
            .collect();
        // Per-client deployments placed on this node (additive: a node without any gets
        // exactly what it got before).
        apps.extend(crate::ops::deployments::desired_instances(
            self, node, &facts,
        ));
        let templated = apps.iter().any(|a| a.template.is_some());
        DesiredState {
            node: node.name.clone(),
            revision: self.node_revision(node),
            apps,
            jobs,
            exec: Vec::new(),
            pressure: self.pressure_for(node),
            tunnel: crate::ops::deployments::desired_tunnel(self, &node.name),
            labels: if templated {
                node.labels.clone()
            } else {
                BTreeMap::new()
            },
        }
    }

    /// The shared container template of one app version (none when it is stopped): built
    /// once and kept until the app changes (`apply` forgets an app's templates), so every
    /// node's answer carries the same one, serialized once. Two versions are in use during
    /// a rollout.
    fn template(&self, app: &App, v: &Version) -> Option<SharedTemplate> {
        let key = (v.revision, v.restart_nonce);
        if let Some(kept) = self.templates.get(app.name.as_str())
            && let Some((_, _, t)) = kept
                .iter()
                .find(|(k, d, _)| *k == key && d.as_deref() == v.digest)
        {
            return t.clone();
        }
        let t = ContainerTemplate::new(&app.name, v.spec, v.restart_nonce).map(|mut t| {
            if let Some(d) = v.digest {
                t.pin(d);
            }
            SharedTemplate::new(t)
        });
        let mut kept = self.templates.entry(app.name.clone()).or_default();
        kept.push((key, v.digest.map(str::to_string), t.clone()));
        if kept.len() > 2 {
            kept.remove(0);
        }
        t
    }

    /// The pressure thresholds a node acts on: those of the first of its groups (by name)
    /// that sets some, else the server's default.
    pub fn pressure_for(&self, node: &NodeRecord) -> Option<gustavo_model::pressure::Thresholds> {
        let mut groups: Vec<&String> = node.groups.iter().collect();
        groups.sort();
        groups
            .into_iter()
            .find_map(|g| self.groups.get(g).and_then(|g| g.pressure.clone()))
            .or_else(|| self.settings.pressure.clone())
    }

    /// The pressure level a node last reported (ready when it reported none).
    pub fn pressure_level(&self, name: &str) -> gustavo_model::pressure::Level {
        self.live
            .get(name)
            .and_then(|l| l.pressure.as_ref().map(|p| p.level))
            .unwrap_or_default()
    }

    /// The status people see: offline, or else the node's pressure level.
    pub fn shown_status(&self, name: &str, now: u64) -> NodeStatus {
        use gustavo_model::pressure::Level;
        match self.node_status(name, now) {
            NodeStatus::Ready => match self.pressure_level(name) {
                Level::Ready => NodeStatus::Ready,
                Level::Pressured => NodeStatus::Pressured,
                Level::Tainted => NodeStatus::Tainted,
            },
            other => other,
        }
    }

    pub fn node_status(&self, name: &str, now: u64) -> NodeStatus {
        node_status_of(|| self.nodes.get(name), self.live.get(name).as_deref(), now)
    }

    pub fn node_view(&self, n: &NodeRecord, now: u64) -> Node {
        let live = self.live.get(&n.name);
        let live = live.as_deref();
        Node {
            name: n.name.clone(),
            groups: n.groups.clone(),
            labels: n.labels.clone(),
            address: live
                .and_then(|l| l.address)
                .map(|a| a.to_string())
                .unwrap_or_default(),
            agent_version: n.agent_version.clone(),
            cpus: n.cpus,
            memory_mb: n.memory_mb,
            status: self.shown_status(&n.name, now),
            last_seen: live.map(|l| l.last_seen).unwrap_or(0),
            registered_at: n.registered_at,
            applied_revision: live.map(|l| l.report.applied_revision).unwrap_or(0),
            cordoned: n.cordoned,
            draining: n.draining,
            pressure: live.and_then(|l| l.pressure.as_deref().cloned()),
            pressure_watched: self.pressure_for(n).is_some(),
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
            pressure: self.groups.get(name).and_then(|g| g.pressure.clone()),
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
        let status_of = |node: &str| -> Option<AppStatus> {
            self.live
                .get(node)?
                .report
                .apps
                .iter()
                .find(|s| s.app == app_name)
                .cloned()
        };
        if let Some(app) = self.apps.get(app_name) {
            let nodes = self
                .members_of(&app.groups)
                .into_iter()
                .filter(|node| runs_on(app, node))
                .map(|node| {
                    let st = status_of(&node).filter(|s| s.revision >= app.revision);
                    let st = st.as_ref();
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
                staged: self.staged(app, now),
            });
        }
        let deleted = self.deleted.get(app_name)?;
        let nodes = deleted
            .nodes
            .iter()
            .filter(|n| self.nodes.contains_key(n))
            .map(|node| {
                let live = self.live.get(node);
                let live = live.as_deref();
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
            staged: None,
        })
    }

    /// The devices a rollout of `app` covers: the members of its groups that run it.
    pub fn rollout_targets(&self, app: &App) -> Vec<String> {
        self.members_of(&app.groups)
            .into_iter()
            .filter(|n| runs_on(app, n))
            .collect()
    }

    /// What the rollout gate sees of each device of `app`'s staged rollout at `now_ms`:
    /// online or not, and how its report of the new revision stands. `ready_since` keeps,
    /// across calls, when each device was first seen ready.
    ///
    /// Offline devices do not hold a wave, but right after this server started nobody has
    /// reconnected yet: a device not heard from since the start is unknown (it holds the
    /// rollout, and is not admitted) until the scheduler's grace has passed, as for
    /// replicas — otherwise a restart mid-rollout completed it at once and sent the new
    /// version to every device without a wave or a health check.
    pub fn rollout_devices(
        &self,
        app: &App,
        record: &RolloutRecord,
        now_ms: u64,
        ready_since: &mut HashMap<String, u64>,
        sched: &SchedConfig,
    ) -> Vec<RolloutSeen> {
        let now = now_ms / 1000;
        let starting = now < sched.started.saturating_add(sched.grace_s);
        self.rollout_targets(app)
            .into_iter()
            .map(|node| {
                let live = self.live.get(&node);
                let unknown = starting && live.as_ref().is_none_or(|l| l.last_seen < sched.started);
                let online = !unknown
                    && node_status_of(|| self.nodes.get(&node), live.as_deref(), now)
                        == NodeStatus::Ready;
                let status = live.and_then(|l| {
                    l.report
                        .apps
                        .iter()
                        .find(|s| s.app == app.name && s.revision >= record.to_revision)
                        .cloned()
                });
                let seen = match status {
                    Some(s) if s.state == AppState::Failed => {
                        ready_since.remove(&node);
                        Seen::Failed(s.error.unwrap_or_else(|| "failed".into()))
                    }
                    Some(s) if s.state == AppState::Running || s.state == AppState::Stopped => {
                        Seen::ReadySince(*ready_since.entry(node.clone()).or_insert(now_ms))
                    }
                    _ => {
                        ready_since.remove(&node);
                        Seen::Pending
                    }
                };
                RolloutSeen {
                    name: node,
                    online,
                    unknown,
                    seen,
                }
            })
            .collect()
    }

    /// The staged rollout of `app` as people follow it.
    pub fn staged(&self, app: &App, now: u64) -> Option<StagedRollout> {
        let r = app.rollout.as_ref()?;
        let devices = self
            .rollout_targets(app)
            .into_iter()
            .map(|node| {
                let online = self.node_status(&node, now) == NodeStatus::Ready;
                let wave = r.wave_of.get(&node).copied().unwrap_or(0);
                let (state, error) = if let Some(e) = r.failed.get(&node) {
                    ("failed", Some(e.clone()))
                } else if r.done.contains(&node) {
                    ("done", None)
                } else if !online {
                    ("offline", None)
                } else if r.admitted.contains_key(&node) {
                    ("updating", None)
                } else if r.state.is_active() {
                    ("waiting", None)
                } else {
                    ("settled", None)
                };
                RolloutDevice {
                    node,
                    wave,
                    state: state.into(),
                    error,
                }
            })
            .collect();
        Some(StagedRollout {
            record: r.clone(),
            devices,
        })
    }

    /// The counts of [`Cluster::rollout`] without building a row per node: fleet-sized
    /// progress polls must not cost a string copy per device. Kept between looks
    /// ([`crate::rollout_counts`]): a look recounts the nodes whose report changed since the
    /// last one, and counts from scratch only when the app or any node's groups changed.
    pub fn rollout_summary(&self, app_name: &str) -> Option<RolloutSummary> {
        use std::hash::{Hash, Hasher};
        let mut key = std::hash::DefaultHasher::new();
        self.nodes.generation().hash(&mut key);
        let (revision, exists, counts) = if let Some(app) = self.apps.get(app_name) {
            let done = if app.spec.running {
                AppState::Running
            } else {
                AppState::Stopped
            };
            // Everything `members` and `part` read of the app.
            (
                app.revision,
                app.spec.running,
                &app.groups,
                app.spec.is_recipe(),
                app.spec.is_replicated(),
                &app.placements,
                &app.handoff,
            )
                .hash(&mut key);
            let member = |n: &NodeRecord| {
                n.groups.iter().any(|g| app.groups.contains(g)) && runs_on(app, &n.name)
            };
            let members = (self.nodes.values())
                .filter(|n| member(n))
                .map(|n| n.name.as_str());
            let is_member = |node: &str| self.nodes.get(node).is_some_and(member);
            let part = |node: &str| {
                let status = self.live.get(node).and_then(|live| {
                    live.report
                        .apps
                        .iter()
                        .find(|s| s.app == app_name && s.revision >= app.revision)
                        .map(|s| s.state)
                });
                Part {
                    converged: status == Some(done),
                    failed: status == Some(AppState::Failed),
                }
            };
            let counts =
                self.rollout_counts
                    .count(app_name, key.finish(), false, members, is_member, part);
            (app.revision, true, counts)
        } else {
            let deleted = self.deleted.get(app_name)?;
            ("deleted", deleted.revision).hash(&mut key);
            let members = (deleted.nodes.iter())
                .filter(|n| self.nodes.contains_key(n))
                .map(String::as_str);
            // In name order (`members_of`).
            let is_member = |node: &str| {
                self.nodes.contains_key(node)
                    && (deleted.nodes)
                        .binary_search_by(|n| n.as_str().cmp(node))
                        .is_ok()
            };
            let part = |node: &str| Part {
                converged: self.live.get(node).is_some_and(|live| {
                    live.report.applied_revision >= deleted.revision
                        && !live.report.containers.iter().any(|c| c.app == app_name)
                }),
                failed: false,
            };
            let counts =
                self.rollout_counts
                    .count(app_name, key.finish(), true, members, is_member, part);
            (deleted.revision, false, counts)
        };
        Some(RolloutSummary {
            app: app_name.to_string(),
            revision,
            exists,
            total: counts.total,
            converged: counts.converged,
            failed: counts.failed,
        })
    }

    /// The member nodes where the current revision of `app_name` failed, with the error
    /// each reported, in name order: what [`Rollout::failed`] lists, at the cost of the
    /// nodes whose report changed since the last look rather than a row per member.
    pub fn rollout_failed(&self, app_name: &str) -> Vec<(String, Option<String>)> {
        if !self.apps.contains_key(app_name) || self.rollout_summary(app_name).is_none() {
            return Vec::new();
        }
        (self.rollout_counts.failed(app_name).into_iter())
            .map(|node| {
                let error = self.live.get(&node).and_then(|l| {
                    let s = l.report.apps.iter().find(|s| s.app == app_name);
                    s.and_then(|s| s.error.clone())
                });
                (node, error)
            })
            .collect()
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
                            exit_code: None,
                            restarts: 0,
                            error: None,
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
    /// Bumped on every status report, for rollout waiters (`--wait`) to wake on.
    pub reports: tokio::sync::watch::Sender<u64>,
    /// What `/metrics` shows.
    pub metrics: crate::metrics::Metrics,
    /// How replicated apps are placed and when a silent node's replicas move.
    pub sched: SchedConfig,
    /// What happened, for `gustavo events`.
    pub events: crate::events::EventLog,
    /// Woken when a callback joins the outbox (`controllers/callbacks.rs`).
    pub callbacks: tokio::sync::Notify,
    /// Where undelivered callbacks wait (set by the server at start).
    pub outbox: std::sync::OnceLock<Arc<dyn gustavo_store::OutboxStore>>,
    /// How long a callback is retried before it is given up, in seconds.
    pub callback_expiry: std::sync::atomic::AtomicU64,
    jobs: std::sync::mpsc::Sender<Box<dyn Job>>,
    /// Commands waiting for their node's long-poll (`gustavo exec`).
    pub exec: crate::ops::exec::ExecHub,
    /// Long-polls by what they wait on; a commit wakes only those its changes concern.
    pub wakers: crate::wake::Wakers,
}

/// How long a job callback is retried, by default: a day.
pub const DEFAULT_CALLBACK_EXPIRY_S: u64 = 86_400;

/// The most mutations committed in one transaction.
const MAX_BATCH: usize = 512;

/// A mutation queued for the writer.
trait Job: Send {
    /// The job is committed at a revision above this one (and above the current one).
    fn past(&self) -> u64 {
        0
    }
    /// Computes the changes at `revision` against the current state, which already holds
    /// the changes of earlier jobs in the batch. Keeps its own answer for `finish`.
    fn prepare(&mut self, c: &Cluster, revision: u64) -> Vec<Change>;
    /// Answers the caller once the batch is durable (or failed).
    fn finish(self: Box<Self>, outcome: Result<(), String>);
}

type Answer<T> = tokio::sync::oneshot::Sender<Result<T, ApiError>>;

struct FnJob<F, T> {
    f: Option<F>,
    answer: Option<Result<T, ApiError>>,
    tx: Answer<T>,
    past: u64,
}

impl<F, T> Job for FnJob<F, T>
where
    F: FnOnce(&Cluster, u64) -> Result<(Vec<Change>, T), ApiError> + Send,
    T: Send,
{
    fn past(&self) -> u64 {
        self.past
    }

    fn prepare(&mut self, c: &Cluster, revision: u64) -> Vec<Change> {
        let Some(f) = self.f.take() else {
            return Vec::new();
        };
        match f(c, revision) {
            Ok((changes, out)) => {
                self.answer = Some(Ok(out));
                changes
            }
            Err(e) => {
                self.answer = Some(Err(e));
                Vec::new()
            }
        }
    }

    fn finish(self: Box<Self>, outcome: Result<(), String>) {
        let answer = match (self.answer, outcome) {
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(out)), Ok(())) => Ok(out),
            (Some(Ok(_)), Err(e)) => Err(ApiError::Internal(format!(
                "storage failed, nothing was changed: {e}"
            ))),
            (None, _) => Err(ApiError::Internal("the mutation never ran".into())),
        };
        let _ = self.tx.send(answer);
    }
}

impl Shared {
    /// Loads the cluster from the store, puts the node settings in force (a new revision
    /// for every node when they differ from the last start's, see
    /// [`Cluster::settings_change`]) and starts the writer thread.
    pub fn new(
        store: Arc<dyn Store>,
        sched: SchedConfig,
        settings: NodeSettings,
    ) -> Result<Arc<Shared>, crate::ServerError> {
        let mut cluster = Cluster::from_snapshot(store.load()?);
        cluster.settings = settings;
        // Before the writer starts and any port is bound: nothing else commits, and no
        // node is waiting to be woken — each finds the new revision when it connects.
        let next = cluster.revision + 1;
        if let Some(change) = cluster.settings_change(next) {
            store.commit(next, std::slice::from_ref(&change))?;
            cluster.revision = next;
            cluster.apply(change, next);
            tracing::info!(
                revision = next,
                nodes = cluster.nodes.len(),
                "node settings changed since the last start (or never recorded): every node gets its state again"
            );
        }
        let (revision_tx, _) = tokio::sync::watch::channel(cluster.revision);
        let (closing, _) = tokio::sync::watch::channel(false);
        let (reports, _) = tokio::sync::watch::channel(0);
        let (jobs, rx) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared {
            cluster: std::sync::RwLock::new(cluster),
            store,
            revision_tx,
            closing,
            reports,
            metrics: crate::metrics::Metrics::new(),
            sched,
            events: Default::default(),
            callbacks: Default::default(),
            outbox: Default::default(),
            callback_expiry: std::sync::atomic::AtomicU64::new(DEFAULT_CALLBACK_EXPIRY_S),
            jobs,
            exec: Default::default(),
            wakers: Default::default(),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("gustavo-writer".into())
            .spawn(move || writer(weak, rx))
            .map_err(|e| crate::ServerError::Thread("writer", e))?;
        Ok(shared)
    }

    pub fn outbox(&self) -> Option<&Arc<dyn gustavo_store::OutboxStore>> {
        self.outbox.get()
    }

    pub fn callback_expiry_s(&self) -> u64 {
        self.callback_expiry
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Cluster> {
        self.cluster.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write(&self) -> std::sync::RwLockWriteGuard<'_, Cluster> {
        self.cluster.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a mutation: `f` computes the changes at the next revision; the writer commits
    /// them (with whatever else is queued, in one transaction) and only then answers.
    /// Returning no changes commits nothing and keeps the revision.
    pub async fn mutate<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Cluster, u64) -> Result<(Vec<Change>, T), ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.mutate_past(0, f).await
    }

    /// [`Shared::mutate`] at a revision above `past` as well: the revision jumps forward
    /// when `past` is ahead of it (see `Ops::catch_up`).
    pub async fn mutate_past<T: Send + 'static>(
        &self,
        past: u64,
        f: impl FnOnce(&Cluster, u64) -> Result<(Vec<Change>, T), ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(FnJob {
                f: Some(f),
                answer: None,
                tx,
                past,
            }))
            .map_err(|_| ApiError::Internal("the writer has stopped".into()))?;
        rx.await
            .map_err(|_| ApiError::Internal("the writer dropped the mutation".into()))?
    }

    /// Applies a batch in memory, commits it in one transaction, answers every job, and
    /// wakes waiting agents. Readers are locked out until the batch is durable, so nothing
    /// uncommitted is ever visible.
    fn commit_batch(&self, mut batch: Vec<Box<dyn Job>>) {
        let started = std::time::Instant::now();
        self.metrics.commit_jobs.observe(batch.len() as f64);
        let mut c = self.write();
        let start = c.revision;
        let mut all = Vec::new();
        let mut wake = BTreeSet::new();
        for job in batch.iter_mut() {
            let next = c.revision.max(job.past()) + 1;
            let changes = job.prepare(&c, next);
            if changes.is_empty() {
                continue;
            }
            c.revision = next;
            for change in &changes {
                crate::wake::keys_of(&c, change, &mut wake);
                c.apply(change.clone(), next);
            }
            all.extend(changes);
        }
        let outcome = if all.is_empty() {
            Ok(())
        } else {
            self.store
                .commit(c.revision, &all)
                .map_err(|e| e.to_string())
        };
        if let Err(e) = &outcome {
            self.metrics.commits_failed.inc();
            tracing::error!(error = %e, "commit failed; nothing changed");
            // Memory holds what the store refused: go back to what the store has.
            match self.store.load() {
                Ok(snap) => {
                    let live = std::mem::take(&mut c.live);
                    let settings = std::mem::take(&mut c.settings);
                    *c = Cluster::from_snapshot(snap);
                    c.live = live;
                    // Config, not stored: without it every node's next state would say
                    // pressure off and no tunnel.
                    c.settings = settings;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot reload the store after a failed commit")
                }
            }
        }
        let revision = c.revision;
        drop(c);
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        for job in batch {
            job.finish(outcome.clone());
        }
        if revision != start {
            // After a failed commit memory went back to the store: wake everyone to re-read.
            if outcome.is_err() {
                wake.insert(crate::wake::Key::All);
            }
            self.wakers.wake(&wake);
            self.revision_tx.send_replace(revision);
        }
    }
}

/// The writer thread: takes what is queued, up to a batch, and commits it. Ends when the
/// server (and so every sender) is gone.
fn writer(shared: std::sync::Weak<Shared>, rx: std::sync::mpsc::Receiver<Box<dyn Job>>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.commit_batch(batch);
    }
}

/// Whether a node is ready or offline at `now`, from what was heard from it. Its record
/// (`node`, looked up only when needed) matters only for a node on the old protocol,
/// whose limit is three of its heartbeat periods.
pub fn node_status_of<'a>(
    node: impl FnOnce() -> Option<&'a NodeRecord>,
    live: Option<&Live>,
    now: u64,
) -> NodeStatus {
    let Some(l) = live else {
        return NodeStatus::Offline;
    };
    let limit = if l.polls > 0 {
        return NodeStatus::Ready;
    } else if l.syncs {
        SYNC_GAP_S
    } else {
        node()
            .map(|n| u64::from(n.heartbeat_s) * 3)
            .unwrap_or(0)
            .max(OFFLINE_AFTER_S)
    };
    if now.saturating_sub(l.last_seen) <= limit {
        NodeStatus::Ready
    } else {
        NodeStatus::Offline
    }
}

/// [`Cluster::liveness`] of what was heard from a node (its record looked up as
/// [`node_status_of`] needs it).
pub fn liveness_of<'a>(
    node: impl FnOnce() -> Option<&'a NodeRecord>,
    live: Option<&Live>,
    now: u64,
    started: u64,
    grace: u64,
) -> Liveness {
    if node_status_of(node, live, now) == NodeStatus::Ready {
        return Liveness::Ready;
    }
    let last = live.map(|l| l.last_seen).unwrap_or(0);
    if now.saturating_sub(last.max(started)) >= grace {
        Liveness::Lost
    } else {
        Liveness::Offline
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A node's desired state in the full form, as an agent ends up with it.
    fn full(c: &Cluster, node: &str) -> DesiredState {
        let mut d = c.desired_for(&c.nodes[node]);
        d.complete();
        d
    }
    use gustavo_model::spec::parse_one;

    pub(crate) fn cluster() -> Cluster {
        let node = |name: &str, group: &str| NodeRecord {
            name: name.into(),
            token_hash: format!("h-{name}"),
            groups: vec![group.into()],
            labels: Default::default(),
            cpus: 2,
            memory_mb: 512,
            agent_version: "t".into(),
            registered_at: 1,
            revision: 1,
            heartbeat_s: 5,
            bound_group: None,
            cordoned: false,
            draining: false,
        };
        let app = App {
            name: "a".into(),
            spec: parse_one("a:\n  docker_image: x\n", "a").unwrap(),
            groups: vec!["g".into()],
            revision: 5,
            restart_nonce: 0,
            created_at: 1,
            updated_at: 1,
            placements: Default::default(),
            handoff: Default::default(),
            digest: None,
            digest_error: None,
            rollout: None,
        };
        let c = Cluster::from_snapshot(Snapshot {
            revision: 5,
            apps: vec![app],
            groups: vec![GroupRecord {
                name: "g".into(),
                revision: 5,
                pressure: None,
            }],
            nodes: vec![
                node("n1", "g"),
                node("n2", "g"),
                node("n3", "g"),
                node("other", "h"),
            ],
            ..Snapshot::default()
        });
        let status = |state, revision| StatusReport {
            applied_revision: revision,
            apps: vec![AppStatus {
                app: "a".into(),
                revision,
                state,
                ready: 1,
                desired: 1,
                error: None,
            }],
            containers: vec![],
            jobs: vec![],
        };
        c.live.insert(
            "n1".into(),
            Live {
                report: status(AppState::Running, 5),
                ..Live::default()
            },
        );
        c.live.insert(
            "n2".into(),
            Live {
                report: status(AppState::Failed, 5),
                ..Live::default()
            },
        );
        c.live.insert(
            "n3".into(),
            Live {
                report: status(AppState::Running, 4),
                ..Live::default()
            },
        );
        c
    }

    #[test]
    fn rollout_summary_counts_what_the_rollout_shows() {
        let c = cluster();
        let full = c.rollout("a", 0).unwrap();
        let summary = c.rollout_summary("a").unwrap();
        assert_eq!(summary, RolloutSummary::from(&full));
        assert_eq!(
            (summary.total, summary.converged, summary.failed),
            (3, 1, 1)
        );
        assert!(c.rollout_summary("missing").is_none());
    }

    /// Numbers below `n`, the same every run (xorshift from `seed`).
    fn xorshift(mut seed: u64) -> impl FnMut(u64) -> u64 {
        move |n| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        }
    }

    /// What [`Cluster::rollout_summary`] counts, counted from scratch.
    fn summary_from_scratch(c: &Cluster, app_name: &str) -> Option<RolloutSummary> {
        let status_of = |node: &str| {
            let live = c.live.get(node)?;
            let r = live.report.clone();
            Some(r)
        };
        let (revision, exists, total, converged, failed) = if let Some(app) = c.apps.get(app_name) {
            let done = if app.spec.running {
                AppState::Running
            } else {
                AppState::Stopped
            };
            let (mut total, mut converged, mut failed) = (0, 0, 0);
            for n in c.nodes.values() {
                if !n.groups.iter().any(|g| app.groups.contains(g)) || !runs_on(app, &n.name) {
                    continue;
                }
                total += 1;
                let report = status_of(&n.name).unwrap_or_default();
                if let Some(s) =
                    (report.apps.iter()).find(|s| s.app == app_name && s.revision >= app.revision)
                {
                    converged += usize::from(s.state == done);
                    failed += usize::from(s.state == AppState::Failed);
                }
            }
            (app.revision, true, total, converged, failed)
        } else {
            let deleted = c.deleted.get(app_name)?;
            let (mut total, mut converged) = (0, 0);
            for node in deleted.nodes.iter().filter(|n| c.nodes.contains_key(n)) {
                total += 1;
                let report = status_of(node).unwrap_or_default();
                let gone = !report.containers.iter().any(|x| x.app == app_name);
                converged += usize::from(gone && report.applied_revision >= deleted.revision);
            }
            (deleted.revision, false, total, converged, 0)
        };
        Some(RolloutSummary {
            app: app_name.into(),
            revision,
            exists,
            total,
            converged,
            failed,
        })
    }

    /// Kept counts agree with a count from scratch through reports, nodes joining, leaving
    /// and changing groups, the app changing, deleted and created again — whenever looked.
    #[test]
    fn kept_rollout_counts_match_a_count_from_scratch() {
        let mut c = cluster();
        let template = c.nodes["n1"].clone();
        let app = c.apps["a"].clone();
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15_u64);
        let names: Vec<String> = (0..8).map(|i| format!("m{i}")).collect();
        let mut revision = 5;
        let mut looks = 0;
        for step in 0..4000 {
            let node = &names[next(8) as usize];
            match next(20) {
                0..=11 => {
                    // A report from a node (registered or not).
                    let app_rev = c.apps.get("a").map(|a| a.revision).unwrap_or(revision);
                    let state =
                        [AppState::Running, AppState::Stopped, AppState::Failed][next(3) as usize];
                    let rev = app_rev + next(3) - 1;
                    let report = match next(4) {
                        // Nothing of the app, at some revision.
                        0 => StatusReport {
                            applied_revision: revision + next(3) - 1,
                            ..StatusReport::default()
                        },
                        _ => StatusReport {
                            applied_revision: revision + next(3) - 1,
                            apps: vec![AppStatus {
                                app: "a".into(),
                                revision: rev,
                                state,
                                ready: 1,
                                desired: 1,
                                error: None,
                            }],
                            containers: match next(2) {
                                0 => vec![],
                                _ => vec![
                                    serde_json::from_value(serde_json::json!({
                                        "app": "a", "name": "x", "id": "1", "image": "x",
                                        "state": "running", "since": 1
                                    }))
                                    .unwrap(),
                                ],
                            },
                            jobs: vec![],
                        },
                    };
                    if c.nodes.contains_key(node) {
                        let mut named = Vec::new();
                        let mut live = c.live.entry(node.clone()).or_default();
                        crate::rollout_counts::named_apps(&live.report, &mut named);
                        live.report = report;
                        crate::rollout_counts::named_apps(&live.report, &mut named);
                        drop(live);
                        c.rollout_counts
                            .mark(node, named.iter().map(String::as_str));
                    }
                }
                12 | 13 => {
                    // A node joins, or its groups change.
                    let mut n = template.clone();
                    n.name = node.clone();
                    n.groups = vec![["g", "h"][next(2) as usize].into()];
                    revision += 1;
                    c.apply(Change::PutNode(n), revision);
                }
                14 => {
                    revision += 1;
                    c.apply(Change::DeleteNode(node.clone()), revision);
                }
                15 | 16 => {
                    // The app changes (or comes back).
                    revision += 1;
                    let mut a = app.clone();
                    a.revision = revision;
                    a.spec.running = next(3) != 0;
                    c.apply(Change::PutApp(Box::new(a)), revision);
                }
                17 if c.apps.contains_key("a") => {
                    revision += 1;
                    c.apply(Change::DeleteApp("a".into()), revision);
                }
                _ => {}
            }
            if next(3) == 0 {
                looks += 1;
                assert_eq!(
                    c.rollout_summary("a"),
                    summary_from_scratch(&c, "a"),
                    "step {step}"
                );
                let failed: Vec<String> = (c.rollout_failed("a").into_iter())
                    .map(|(n, _)| n)
                    .collect();
                let rows: Vec<String> = c
                    .rollout("a", 0)
                    .filter(|r| r.exists)
                    .map(|r| r.failed().map(|n| n.node.clone()).collect())
                    .unwrap_or_default();
                assert_eq!(failed, rows, "step {step}");
            }
        }
        assert!(looks > 1000);
    }

    /// The apps, jobs and deployments of each node found through the index are those a walk
    /// over every app, job and deployment finds, through apps and jobs put, moved between
    /// groups, deleted, one-shot jobs given to nodes and finished, deployments put, moved
    /// and deleted, and nodes changing groups.
    #[test]
    fn a_nodes_apps_jobs_and_deployments_by_index_match_a_walk() {
        use gustavo_model::job::{Job, JobState, parse_one as job_spec};
        let mut c = cluster();
        let app = c.apps["a"].clone();
        let template = c.nodes["n1"].clone();
        let once = job_spec("j:\n  docker_image: x\n", "j").unwrap();
        let every = job_spec("j:\n  docker_image: x\n  schedule: \"@every 30s\"\n", "j").unwrap();
        let groups = ["g", "h", "k"];
        let nodes = ["m0", "m1", "m2", "m3"];
        let mut next = xorshift(0x2545_f491_4f6c_dd1d_u64);
        let mut revision = 5;
        for step in 0..3000 {
            revision += 1;
            let pick = |next: &mut dyn FnMut(u64) -> u64| -> Vec<String> {
                let mut g: Vec<String> = (groups.iter())
                    .filter(|_| next(2) == 0)
                    .map(|g| g.to_string())
                    .collect();
                g.dedup();
                g
            };
            match next(10) {
                8 => {
                    let d = gustavo_model::lease::Deployment {
                        name: format!("d{}", next(6)),
                        app: "a".into(),
                        uuid: "00000000-0000-0000-0000-000000000000".into(),
                        key: "k".into(),
                        site: "s".into(),
                        node: nodes[next(4) as usize].into(),
                        client_ip: "127.0.0.1".into(),
                        client_location: None,
                        address: "10.5.0.1".parse().unwrap(),
                        state: gustavo_model::lease::LeaseState::Initializing,
                        created_at: 0,
                        renewed_at: 0,
                        since: 0,
                        renewals: 0,
                        revision,
                        slot: 0,
                    };
                    c.apply(Change::PutDeployment(Box::new(d)), revision);
                }
                9 => c.apply(Change::DeleteDeployment(format!("d{}", next(6))), revision),
                0 | 1 => {
                    let mut a = app.clone();
                    a.name = format!("a{}", next(6));
                    a.groups = pick(&mut next);
                    a.revision = revision;
                    c.apply(Change::PutApp(Box::new(a)), revision);
                }
                2 => c.apply(Change::DeleteApp(format!("a{}", next(6))), revision),
                3 | 4 => {
                    let name = format!("j{}", next(6));
                    let spec = if next(2) == 0 {
                        once.clone()
                    } else {
                        every.clone()
                    };
                    let mut j = Job::new(&name, spec, pick(&mut next), revision, 1);
                    if !j.spec.is_scheduled() {
                        j.state = [JobState::Pending, JobState::Running, JobState::Succeeded]
                            [next(3) as usize];
                        j.node = (next(4) != 0).then(|| nodes[next(4) as usize].to_string());
                    }
                    c.apply(Change::PutJob(Box::new(j)), revision);
                }
                5 => c.apply(Change::DeleteJob(format!("j{}", next(6))), revision),
                _ => {
                    let mut n = template.clone();
                    n.name = nodes[next(4) as usize].into();
                    n.groups = pick(&mut next);
                    c.apply(Change::PutNode(n), revision);
                }
            }
            for node in c.nodes.values() {
                let apps: Vec<&str> = c.apps_of(node).map(|a| a.name.as_str()).collect();
                let walked: Vec<&str> = (c.apps.values())
                    .filter(|a| {
                        a.groups.iter().any(|g| node.groups.contains(g))
                            && !a.spec.is_recipe()
                            && (!a.spec.is_replicated() || runs_on(a, &node.name))
                    })
                    .map(|a| a.name.as_str())
                    .collect();
                assert_eq!(apps, walked, "apps of {} at step {step}", node.name);
                let jobs: Vec<&str> = c.jobs_of(node).map(|j| j.name.as_str()).collect();
                let walked: Vec<&str> = (c.jobs.values())
                    .filter(|j| {
                        if j.spec.is_scheduled() {
                            j.groups.iter().any(|g| node.groups.contains(g))
                        } else {
                            j.running_on() == Some(node.name.as_str())
                        }
                    })
                    .map(|j| j.name.as_str())
                    .collect();
                assert_eq!(jobs, walked, "jobs of {} at step {step}", node.name);
            }
            // Found as a walk finds them, and filed exactly there (nothing left behind).
            for node in nodes {
                let walked: Vec<&str> = (c.deployments.values())
                    .filter(|d| d.node == node)
                    .map(|d| d.name.as_str())
                    .collect();
                let on: Vec<&str> = c.deployments_on(node).map(|d| d.name.as_str()).collect();
                assert_eq!(on, walked, "deployments on {node} at step {step}");
                let filed: Vec<&str> = c.deployments_by_node.under([node]).into_iter().collect();
                assert_eq!(
                    filed, walked,
                    "deployments filed under {node} at step {step}"
                );
            }
            // Nothing stays filed that is gone or moved.
            let filed = c.apps_by_group.under(groups);
            let all: BTreeSet<&str> = (c.apps.values())
                .filter(|a| !a.groups.is_empty())
                .map(|a| a.name.as_str())
                .collect();
            assert_eq!(filed, all, "apps filed at step {step}");
            let filed = c.jobs_by_node.under(nodes);
            let all: BTreeSet<&str> = (c.jobs.values())
                .filter(|j| !j.spec.is_scheduled() && j.running_on().is_some())
                .map(|j| j.name.as_str())
                .collect();
            assert_eq!(filed, all, "one-shot jobs filed at step {step}");
        }
    }

    #[test]
    fn recipe_apps_run_only_as_deployments_on_their_node() {
        let mut c = cluster();
        let plain_before = full(&c, "n1");
        let n2_before = full(&c, "n2");
        let spec = parse_one(
            "r:\n  docker_image: x\n  starting_ports: [8080]\n  recipe: {uuid: 00000000-0000-0000-0000-000000000001, public: true}\n",
            "r",
        )
        .unwrap();
        let mut app = c.apps["a"].clone();
        app.name = "r".into();
        app.spec = spec;
        c.apply(Change::PutApp(Box::new(app)), 6);
        // A recipe app alone changes no member's containers.
        assert_eq!(full(&c, "n1").apps, plain_before.apps);
        let d: gustavo_model::lease::Deployment = serde_json::from_value(serde_json::json!({
            "name": "r-0a1b2c3d", "app": "r", "uuid": "00000000-0000-0000-0000-000000000001",
            "key": "k", "site": "s", "node": "n2", "client_ip": "1.2.3.4",
            "address": "10.5.0.7", "state": "Initializing", "created_at": 1, "renewed_at": 1,
            "since": 1, "tunnel": {"set_up": false, "reason": ""},
        }))
        .unwrap();
        let mut second = d.clone();
        second.name = "r-99999999".into();
        second.slot = 1;
        c.apply(Change::PutDeployment(Box::new(d)), 7);
        c.apply(Change::PutDeployment(Box::new(second)), 8);
        assert_eq!(full(&c, "n1").apps, plain_before.apps);
        let n2 = full(&c, "n2");
        let inst = n2.apps.iter().find(|a| a.name == "r-0a1b2c3d").unwrap();
        assert_eq!(inst.containers[0].name, "n2.r-0a1b2c3d.1");
        assert_eq!(
            inst.containers[0].spec.env["GUSTAVO_CLIENT_ADDRESS"],
            "10.5.0.7"
        );
        // Two clients' backends on one node bind different host ports (their slots).
        let port = |name: &str| {
            n2.apps.iter().find(|a| a.name == name).unwrap().containers[0]
                .spec
                .ports[0]
                .host
        };
        assert_eq!((port("r-0a1b2c3d"), port("r-99999999")), (8080, 8081));
        // The plain app's container on n2 is untouched: same hash as before.
        let plain = |d: &DesiredState| {
            d.apps.iter().find(|a| a.name == "a").unwrap().containers[0]
                .hash
                .clone()
        };
        assert_eq!(plain(&n2), plain(&n2_before));
    }

    /// The container hash of a plain app is pinned: a field added to the app format (the
    /// recipe, issue 13) must not make every agent recreate its containers.
    #[test]
    fn an_app_put_again_is_not_served_from_its_old_template() {
        let mut c = cluster();
        let before = full(&c, "n1").apps[0].containers[0].clone();
        // The same revision and nonce, another image: only forgetting on put tells them apart.
        let mut app = c.apps["a"].clone();
        app.spec = parse_one("a:\n  docker_image: y\n", "a").unwrap();
        c.apply(Change::PutApp(Box::new(app)), 5);
        let after = full(&c, "n1").apps[0].containers[0].clone();
        assert_eq!(after.spec.image, "y:latest");
        assert_ne!(after.hash, before.hash);
    }

    #[test]
    fn plain_container_hashes_do_not_move() {
        let c = cluster();
        let d = full(&c, "n1");
        assert_eq!(d.apps[0].containers[0].hash, PINNED_HASH);
    }

    /// This spec's hash as it has always been: the recipe field leaves desired.rs and
    /// `ContainerSpec` untouched, and a plain app serializes without it.
    const PINNED_HASH: &str = "66930c03cb9fc1bf";

    /// The defect this guards: a server restarted with another `--pressure` kept every
    /// node's revision, so no node was sent the new thresholds until something else changed.
    #[test]
    fn a_start_with_other_node_settings_moves_every_node_and_the_same_settings_nothing() {
        use gustavo_model::pressure::Thresholds;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gustavo.db");
        let store = gustavo_store::SqliteStore::open(&path).unwrap();
        let n1 = cluster().nodes["n1"].clone();
        store.commit(5, &[Change::PutNode(n1.clone())]).unwrap();
        drop(store);
        let on = NodeSettings {
            pressure: Some(Thresholds::default()),
            client_network: Some(gustavo_model::sites::Cidr::parse("10.5.0.0/16").unwrap()),
        };
        let off = NodeSettings {
            pressure: None,
            ..on.clone()
        };
        // One server start on the data dir: the revision it ends at, n1's revision and the
        // pressure thresholds n1 is sent.
        let start = |settings: &NodeSettings| {
            let store = Arc::new(gustavo_store::SqliteStore::open(&path).unwrap());
            let shared = Shared::new(store, SchedConfig::default(), settings.clone()).unwrap();
            let c = shared.read();
            let n1 = &c.nodes["n1"];
            (c.revision, c.node_revision(n1), c.desired_for(n1).pressure)
        };

        // A data dir from before settings were recorded: nodes may hold other settings.
        assert_eq!(start(&on), (6, 6, Some(Thresholds::default())));
        // The same settings again, twice: nothing moves, no node is sent anything.
        assert_eq!(start(&on), (6, 6, Some(Thresholds::default())));
        assert_eq!(start(&on), (6, 6, Some(Thresholds::default())));
        // Pressure turned off: every node's revision moves past what its agent has.
        assert_eq!(start(&off), (7, 7, None));
        assert_eq!(start(&off), (7, 7, None));
        // Back on, and another client network: each a change.
        assert_eq!(start(&on), (8, 8, Some(Thresholds::default())));
        let other_network = NodeSettings {
            client_network: Some(gustavo_model::sites::Cidr::parse("10.6.0.0/16").unwrap()),
            ..on.clone()
        };
        assert_eq!(start(&other_network).1, 9);
        assert_eq!(start(&other_network).1, 9);
    }

    /// A store whose commits fail while `fail` is set.
    struct Flaky {
        inner: gustavo_store::SqliteStore,
        fail: std::sync::atomic::AtomicBool,
    }

    impl Store for Flaky {
        fn load(&self) -> Result<Snapshot, gustavo_store::StoreError> {
            self.inner.load()
        }
        fn commit(
            &self,
            revision: u64,
            changes: &[Change],
        ) -> Result<(), gustavo_store::StoreError> {
            if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(gustavo_store::StoreError::Sealed {
                    what: "the test".into(),
                    reason: "a disk that fails".into(),
                });
            }
            self.inner.commit(revision, changes)
        }
        fn history(
            &self,
            app: &str,
        ) -> Result<Vec<gustavo_model::api::AppRevision>, gustavo_store::StoreError> {
            self.inner.history(app)
        }
    }

    /// Memory reloaded from the store after a failed commit keeps the settings, which are
    /// config, not stored: losing them sent every node "pressure off" and no tunnel.
    #[tokio::test]
    async fn a_failed_commit_keeps_the_node_settings() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Flaky {
            inner: gustavo_store::SqliteStore::open(&dir.path().join("gustavo.db")).unwrap(),
            fail: false.into(),
        });
        let settings = NodeSettings {
            pressure: Some(gustavo_model::pressure::Thresholds::default()),
            client_network: Some(gustavo_model::sites::Cidr::parse("10.5.0.0/16").unwrap()),
        };
        let shared = Shared::new(store.clone(), SchedConfig::default(), settings.clone()).unwrap();
        store.fail.store(true, std::sync::atomic::Ordering::Relaxed);
        let put = |_: &Cluster, rev| {
            let g = GroupRecord {
                name: "g".into(),
                revision: rev,
                pressure: None,
            };
            Ok((vec![Change::PutGroup(g)], ()))
        };
        assert!(shared.mutate(put).await.is_err());
        assert_eq!(shared.read().settings, settings);
    }

    #[test]
    fn node_revision_takes_the_settings_revision() {
        let mut c = cluster();
        assert_eq!(c.node_revision(&c.nodes["n1"]), 5);
        let change = c.settings_change(9).expect("never recorded: a change");
        c.apply(change, 9);
        assert_eq!(c.node_revision(&c.nodes["n1"]), 9);
        assert_eq!(c.node_revision(&c.nodes["other"]), 9);
        assert!(c.settings_change(10).is_none(), "the same settings again");
        c.settings.pressure = Some(gustavo_model::pressure::Thresholds::default());
        assert!(c.settings_change(10).is_some(), "pressure turned on");
    }

    #[test]
    fn node_revision_follows_its_groups_and_apps() {
        let c = cluster();
        assert_eq!(c.node_revision(&c.nodes["n1"]), 5);
        let d = full(&c, "n1");
        assert_eq!(d.apps.len(), 1);
        assert_eq!(d.apps[0].containers[0].name, "n1.a.1");
        assert!(full(&c, "other").apps.is_empty());
    }
}
