//! Peer mode (`gustavo agent --peer`): devices on a LAN run services for each other with
//! no server, as Samsung's Edge Orchestration did.
//!
//! Devices find each other through a [`discovery::Discovery`] (mDNS/DNS-SD, or a static
//! list) and trust each other through a shared cluster CA ([`trust`]): every call between
//! peers is TLS 1.3 with both certificates checked, so a device without the cluster's CA is
//! ignored by discovery (its record names another cluster) and refused by TLS. A candidate
//! is a peer once it answers `ping`; the rules for dropping and forgetting it are
//! `gustavo_model::peers` (pure, tested on a fake clock).
//!
//! A service request on any device (the Samsung API) gathers the peers' scores (the
//! scheduler's explicit score, over the authenticated channel, within [`SCORE_TIME`]),
//! gives the service to the best (not itself with `SelfSelection: false`), and the device
//! that runs it tells the requesting device `Started`, `Finished` or `Failed`, which calls
//! the caller's `StatusCallbackURI` (a URI only meaningful on the caller's device). When
//! the device running a service stops being a peer before the service ends, the requester
//! gives it to the next best device (at most [`MAX_PLACEMENTS`] devices in all).
//!
//! The seed's internal routes, in authenticated form on the peer port:
//! `GET /peer/v1/ping` (the seed's `/api/v1/ping`), `GET /peer/v1/score`
//! (`/api/v1/scoringmgr/score`), `POST /peer/v1/services` (`/api/v1/servicemgr/services`:
//! run this service here) and `POST /peer/v1/notification`
//! (`/api/v1/servicemgr/services/notification/{id}`: a service's state).

pub mod discovery;
pub mod trust;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use gustavo_model::api::{DesiredState, Vitals};
use gustavo_model::compat::samsung::{StatusNotification, run_seed_statuses};
use gustavo_model::desired::{NodeFacts, expand_replicas};
use gustavo_model::job::{DesiredJob, JobRun, JobSpec};
pub use gustavo_model::peers::PeerView;
use gustavo_model::peers::{Change, Check, Table};
use gustavo_model::schedule::{Liveness, NodeView, Usage, Weights, score};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use self::discovery::{Candidate, Event};

/// How often peers are health-checked (and their scores refreshed for `peer list`).
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long a request waits for the peers' scores.
pub const SCORE_TIME: Duration = Duration::from_secs(3);
/// How long giving a service to a peer (or telling a state) may take: longer than a
/// score, since a busy device that misses it loses the service to a worse one.
pub const GIVE_TIME: Duration = Duration::from_secs(10);

/// Why a call to a peer failed.
#[derive(Debug)]
enum CallError {
    /// No answer: connection, TLS, timeout or an unreadable body.
    Unreachable(String),
    /// The peer answered with an error status (its decision, e.g. an allowlist).
    Answered(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(e) | CallError::Answered(e) => f.write_str(e),
        }
    }
}

/// `POST /peer/v1/services`: run this service here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    /// The job's name, unique across the cluster (`svc-<service>-<hex>`).
    pub id: String,
    pub service: String,
    pub spec: JobSpec,
    /// The requesting device, and the peer port to tell it on.
    pub origin: String,
    pub origin_port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ping {
    node: String,
    cluster: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ScoreReply {
    node: String,
    score: f64,
}

/// A service this device asked for, until it ends.
struct Pending {
    assignment: Assignment,
    /// The caller's `StatusCallbackURI`.
    uri: Option<String>,
    self_selection: bool,
    /// The device running it now, and every device it was given to.
    target: String,
    tried: Vec<String>,
    /// The states the caller was told (a service placed again starts again).
    told: Vec<String>,
}

/// Devices one service is given to at most (the first and two more after losses).
pub const MAX_PLACEMENTS: usize = 3;

/// Who a running assignment reports to.
#[derive(Clone)]
struct Origin {
    node: String,
    addr: SocketAddr,
    service: String,
    told: Vec<&'static str>,
}

/// A request's outcome for the Samsung API.
#[derive(Debug)]
pub enum RequestError {
    /// No device could take it (the seed's `SERVICE_NOT_FOUND`).
    NoTarget(String),
}

/// This device in its peer cluster.
pub struct PeerNode {
    me: String,
    port: u16,
    cluster: String,
    table: Mutex<Table>,
    /// The table's clock: seconds since this started.
    clock: std::time::Instant,
    tls: rustls::ClientConfig,
    clients: Mutex<HashMap<(String, SocketAddr), reqwest::Client>>,
    vitals: watch::Receiver<Option<Vitals>>,
    weights: Weights,
    callbacks: reqwest::Client,
    pending: Mutex<HashMap<String, Pending>>,
    /// The services this device runs for peers: the job runner's desired state.
    desired: watch::Sender<Option<DesiredState>>,
    running: Mutex<BTreeMap<String, (DesiredJob, Origin)>>,
    facts: NodeFacts,
    /// Images this device runs (`--samsung-image`); empty: any.
    images: Vec<String>,
}

/// What a peer runs services with.
pub struct Host {
    /// This host's samples (for its score).
    pub vitals: watch::Receiver<Option<Vitals>>,
    /// The job runner's desired state: the services given to this device.
    pub desired: watch::Sender<Option<DesiredState>>,
    pub facts: NodeFacts,
    /// Images it runs (`--samsung-image`); empty: any.
    pub images: Vec<String>,
}

impl PeerNode {
    /// This device as a peer: `host` is what it runs services with (its samples, the job
    /// runner's desired state, its facts and image allowlist).
    pub fn new(
        me: String,
        port: u16,
        ca: &trust::ClusterCa,
        identity: &trust::Identity,
        host: Host,
    ) -> Result<Arc<PeerNode>, String> {
        let cluster = ca.fingerprint()[..16].to_string();
        Ok(Arc::new(PeerNode {
            table: Mutex::new(Table::new(&me, &cluster)),
            me,
            port,
            cluster,
            clock: std::time::Instant::now(),
            tls: identity.client_config()?,
            clients: Mutex::default(),
            vitals: host.vitals,
            weights: Weights::default(),
            callbacks: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| e.to_string())?,
            pending: Mutex::default(),
            desired: host.desired,
            running: Mutex::default(),
            facts: host.facts,
            images: host.images,
        }))
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// This device's score now (the scheduler's explicit score from its latest sample).
    pub fn own_score(&self) -> f64 {
        let v = self.vitals.borrow().clone().unwrap_or_default();
        let view = NodeView {
            name: self.me.clone(),
            groups: Vec::new(),
            labels: BTreeMap::new(),
            cpus: v.cpus.max(1),
            memory_mb: v.memory_total_mb,
            usage: Some(Usage {
                cpu_percent: f64::from(v.cpu_percent),
                memory_free_mb: v.memory_total_mb.saturating_sub(v.memory_used_mb),
                disk_free_mb: v.disk_total_mb.saturating_sub(v.disk_used_mb),
            }),
            liveness: Liveness::Ready,
            cordoned: false,
            draining: false,
            pressure: gustavo_model::pressure::Level::Ready,
            agentless: false,
        };
        score(&view, &self.weights).total
    }

    fn client(&self, node: &str, addr: SocketAddr) -> Option<reqwest::Client> {
        let mut clients = self.clients.lock().ok()?;
        if let Some(c) = clients.get(&(node.to_string(), addr)) {
            return Some(c.clone());
        }
        let c = reqwest::Client::builder()
            .use_preconfigured_tls(self.tls.clone())
            .resolve(&format!("{node}.{}", trust::NAME_SUFFIX), addr)
            .timeout(SCORE_TIME)
            .build()
            .ok()?;
        clients.insert((node.to_string(), addr), c.clone());
        Some(c)
    }

    fn url(node: &str, addr: SocketAddr, path: &str) -> String {
        format!(
            "https://{node}.{}:{}{path}",
            trust::NAME_SUFFIX,
            addr.port()
        )
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        node: &str,
        addr: SocketAddr,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, CallError> {
        let c = self.client(node, addr).ok_or_else(|| {
            CallError::Unreachable("cannot make a TLS client for the peer".into())
        })?;
        let url = Self::url(node, addr, path);
        let req = match body {
            Some(b) => c.post(&url).json(b).timeout(GIVE_TIME),
            None => c.get(&url),
        };
        let r = req
            .send()
            .await
            .map_err(|e| CallError::Unreachable(format!("{url}: {e}")))?;
        if !r.status().is_success() {
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            return Err(CallError::Answered(format!("{url}: {status} {text}")));
        }
        r.json()
            .await
            .map_err(|e| CallError::Unreachable(format!("{url}: {e}")))
    }

    fn now(&self) -> f64 {
        self.clock.elapsed().as_secs_f64()
    }

    /// Takes what discovery found or lost.
    pub fn discovered(&self, ev: Event) {
        let now = self.now();
        let Ok(mut t) = self.table.lock() else {
            return;
        };
        let change = match ev {
            Event::Found(Candidate {
                node,
                addrs,
                cluster,
            }) => {
                let Some(addr) = addrs.first() else {
                    return;
                };
                if cluster != self.cluster {
                    tracing::debug!(%node, %cluster, "ignoring a device of another peer cluster");
                }
                t.found(&node, *addr, &cluster, now)
            }
            Event::Gone(node) => t.gone(&node),
        };
        log(change.into_iter());
    }

    /// One round of health checks: ping and score every peer and candidate; drop the dead.
    pub async fn check(&self) {
        let entries = match self.table.lock() {
            Ok(t) => t.to_check(),
            Err(_) => return,
        };
        let checks = entries.into_iter().map(|(node, addr)| async move {
            let ping: Result<Ping, CallError> =
                self.call(&node, addr, "/peer/v1/ping", None::<&()>).await;
            let check = match ping {
                Ok(ping) if ping.cluster == self.cluster => Check::Answered {
                    node: ping.node,
                    score: self
                        .call::<ScoreReply>(&node, addr, "/peer/v1/score", None::<&()>)
                        .await
                        .ok()
                        .map(|s| s.score),
                },
                Ok(_) => Check::Failed,
                Err(e) => {
                    tracing::debug!(%node, error = %e, "peer health check failed");
                    Check::Failed
                }
            };
            (node, check)
        });
        let results = futures::future::join_all(checks).await;
        let now = self.now();
        if let Ok(mut t) = self.table.lock() {
            log(t.checked(results, now).into_iter());
        }
    }

    /// This device and its peers, for `gustavo peer list`.
    pub fn list(&self) -> Vec<PeerView> {
        let mut out = vec![PeerView {
            node: self.me.clone(),
            address: format!("port {}", self.port),
            score: Some(self.own_score()),
            last_seen_s: 0,
            state: "self".into(),
        }];
        if let Ok(t) = self.table.lock() {
            out.extend(t.views(self.now()));
        }
        out
    }

    /// The devices that may run a service, best first (scores gathered within
    /// [`SCORE_TIME`]; ties go to the first name). `except`: devices not to use.
    async fn rank(
        &self,
        service: &str,
        self_selection: bool,
        except: &[String],
    ) -> Vec<(String, Option<SocketAddr>, f64)> {
        let peers: Vec<(String, SocketAddr)> = self
            .table
            .lock()
            .map(|t| t.verified())
            .unwrap_or_default()
            .into_iter()
            .filter(|(n, _)| !except.contains(n))
            .collect();
        let asks = peers.iter().map(|(node, addr)| async move {
            let s: Result<ScoreReply, CallError> =
                self.call(node, *addr, "/peer/v1/score", None::<&()>).await;
            (node.clone(), Some(*addr), s.map(|s| s.score))
        });
        let mut ranked: Vec<(String, Option<SocketAddr>, f64)> =
            match tokio::time::timeout(SCORE_TIME, futures::future::join_all(asks)).await {
                Ok(all) => all
                    .into_iter()
                    .filter_map(|(n, a, s)| s.ok().map(|s| (n, a, s)))
                    .collect(),
                Err(_) => Vec::new(),
            };
        if self_selection && !except.contains(&self.me) {
            ranked.push((self.me.clone(), None, self.own_score()));
        }
        let ranked = gustavo_model::peers::rank(ranked);
        // Full precision: two devices on one host score alike to three decimals, and the
        // log must show which one won.
        let shown: Vec<String> = ranked.iter().map(|(n, _, s)| format!("{n}={s}")).collect();
        tracing::info!(service, scores = %shown.join(" "), "peer scores gathered");
        ranked
    }

    /// Gives `a` to one peer. A lost answer or a dropped connection is tried once more:
    /// a peer keeps assignments by id, so a second copy of one it took changes nothing.
    async fn give(&self, node: &str, at: SocketAddr, a: &Assignment) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..2 {
            match self
                .call::<serde_json::Value>(node, at, "/peer/v1/services", Some(a))
                .await
            {
                Ok(_) => return Ok(()),
                // An answer with a status is the peer's decision: not asked again.
                Err(CallError::Answered(e)) => return Err(e),
                Err(CallError::Unreachable(e)) => last = e,
            }
        }
        Err(last)
    }

    /// Gives `a` to the first device of `ranked` that takes it.
    async fn assign(
        &self,
        ranked: &[(String, Option<SocketAddr>, f64)],
        a: &Assignment,
    ) -> Result<(String, String), Vec<String>> {
        let mut refusals = Vec::new();
        for (node, addr, _) in ranked {
            let outcome = match addr {
                None => self.accept(a.clone(), SocketAddr::from(([127, 0, 0, 1], self.port))),
                Some(at) => self.give(node, *at, a).await,
            };
            match outcome {
                Ok(()) => {
                    tracing::info!(service = %a.service, job = %a.id, target = %node, "service given to the best device");
                    let address = addr.map(|x| x.ip().to_string()).unwrap_or_default();
                    return Ok((node.clone(), address));
                }
                Err(e) => {
                    tracing::warn!(service = %a.service, job = %a.id, target = %node, error = %e, "device did not take the service; trying the next");
                    refusals.push(format!("{node}: {e}"));
                }
            }
        }
        Err(refusals)
    }

    /// Runs `spec` on the best device; returns the device's name and address.
    pub async fn request(
        self: &Arc<Self>,
        service: &str,
        spec: JobSpec,
        self_selection: bool,
        callback: Option<String>,
    ) -> Result<(String, String), RequestError> {
        let ranked = self.rank(service, self_selection, &[]).await;
        let tag = hex::encode(rand::random::<[u8; 4]>());
        let base: String = service
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(40)
            .collect();
        let id = format!("svc-{}-{tag}", base.trim_matches('-'));
        let assignment = Assignment {
            id: id.clone(),
            service: service.to_string(),
            spec,
            origin: self.me.clone(),
            origin_port: self.port,
        };
        // Kept before it is given away: a fast service can finish before `assign` returns.
        if let Ok(mut p) = self.pending.lock() {
            p.insert(
                id.clone(),
                Pending {
                    assignment: assignment.clone(),
                    uri: callback,
                    self_selection,
                    target: String::new(),
                    tried: Vec::new(),
                    told: Vec::new(),
                },
            );
        }
        match self.assign(&ranked, &assignment).await {
            Ok((node, address)) => {
                if let Ok(mut p) = self.pending.lock()
                    && let Some(x) = p.get_mut(&id)
                {
                    x.target = node.clone();
                    x.tried.push(node.clone());
                }
                Ok((node, address))
            }
            Err(refusals) => {
                if let Ok(mut p) = self.pending.lock() {
                    p.remove(&id);
                }
                Err(RequestError::NoTarget(if ranked.is_empty() {
                    if self_selection {
                        "no device could score the service".into()
                    } else {
                        "no peer could take it (SelfSelection is false and no peer answered)".into()
                    }
                } else {
                    format!("every device refused it: {}", refusals.join("; "))
                }))
            }
        }
    }

    /// Services this device asked for whose device stopped being a peer before they
    /// ended: given to the next best device that has not had them, up to
    /// [`MAX_PLACEMENTS`] devices; after that the caller hears `Failed`.
    pub async fn replace_lost(self: &Arc<Self>) {
        let verified: Vec<String> = self
            .table
            .lock()
            .map(|t| t.verified().into_iter().map(|(n, _)| n).collect())
            .unwrap_or_default();
        let lost: Vec<(Assignment, bool, Vec<String>, String)> = match self.pending.lock() {
            Ok(p) => p
                .values()
                .filter(|x| {
                    !x.target.is_empty() && x.target != self.me && !verified.contains(&x.target)
                })
                .map(|x| {
                    (
                        x.assignment.clone(),
                        x.self_selection,
                        x.tried.clone(),
                        x.target.clone(),
                    )
                })
                .collect(),
            Err(_) => return,
        };
        for (a, self_selection, tried, gone) in lost {
            tracing::warn!(service = %a.service, job = %a.id, device = %gone, "the device running a service is gone; placing it again");
            let placed = if tried.len() < MAX_PLACEMENTS {
                let ranked = self.rank(&a.service, self_selection, &tried).await;
                self.assign(&ranked, &a).await.ok()
            } else {
                None
            };
            match placed {
                Some((node, _)) => {
                    if let Ok(mut p) = self.pending.lock()
                        && let Some(x) = p.get_mut(&a.id)
                    {
                        x.target = node.clone();
                        x.tried.push(node);
                    }
                }
                None => {
                    // Nothing left to run it: the caller is told it failed.
                    self.notified(StatusNotification {
                        service_name: a.service.clone(),
                        status: "Failed".into(),
                        exit_code: None,
                        error: Some(format!(
                            "device {gone} stopped being a peer and no other device could run it"
                        )),
                        target: gone,
                        job: a.id.clone(),
                    })
                    .await;
                }
            }
        }
    }

    /// Takes a service to run here; `from` is where its origin's peer port is. This
    /// device's own image allowlist (`--samsung-image`) holds for what peers give it too.
    fn accept(&self, a: Assignment, from: SocketAddr) -> Result<(), String> {
        if !crate::samsung::image_allowed(&self.images, &a.spec.docker_image) {
            return Err(format!(
                "image `{}` is not in {}'s allowlist (agent --samsung-image)",
                a.spec.docker_image, self.me
            ));
        }
        let app = a.spec.as_app();
        let mut container = expand_replicas(&a.id, &app, 0, &self.facts, &[1])
            .pop()
            .ok_or("the service expands to no container")?;
        container.env.remove("GUSTAVO_APP");
        container.env.remove("GUSTAVO_REPLICA");
        container.env.insert("GUSTAVO_JOB".into(), a.id.clone());
        let job = DesiredJob {
            name: a.id.clone(),
            revision: 1,
            run: Some(1),
            schedule: None,
            deadline_s: a.spec.deadline_s(),
            container,
        };
        let origin = Origin {
            node: a.origin.clone(),
            addr: SocketAddr::new(from.ip(), a.origin_port),
            service: a.service.clone(),
            told: Vec::new(),
        };
        {
            let mut r = self.running.lock().map_err(|_| "poisoned")?;
            r.insert(a.id.clone(), (job, origin));
        }
        self.publish();
        Ok(())
    }

    fn publish(&self) {
        let jobs: Vec<DesiredJob> = self
            .running
            .lock()
            .map(|r| r.values().map(|(j, _)| j.clone()).collect())
            .unwrap_or_default();
        self.desired.send_modify(|d| {
            let revision = d.as_ref().map(|d| d.revision).unwrap_or(0) + 1;
            *d = Some(DesiredState {
                node: self.me.clone(),
                revision,
                apps: Vec::new(),
                jobs,
                exec: Vec::new(),
                pressure: None,
                tunnel: None,
                labels: Default::default(),
            });
        });
    }

    /// Follows the job runner's runs and tells each service's origin its states.
    pub async fn follow_runs(self: Arc<Self>, mut runs: watch::Receiver<Vec<JobRun>>) {
        loop {
            let current = runs.borrow_and_update().clone();
            let mut notes = Vec::new();
            let mut finished = Vec::new();
            if let Ok(mut r) = self.running.lock() {
                for run in &current {
                    let Some((_, origin)) = r.get_mut(&run.job) else {
                        continue;
                    };
                    for s in run_seed_statuses(run) {
                        if origin.told.contains(s) {
                            continue;
                        }
                        origin.told.push(s);
                        notes.push((
                            origin.clone(),
                            StatusNotification {
                                service_name: origin.service.clone(),
                                status: s.to_string(),
                                exit_code: (*s != "Started").then_some(run.exit_code).flatten(),
                                target: self.me.clone(),
                                job: run.job.clone(),
                                error: (*s != "Started").then(|| run.error.clone()).flatten(),
                            },
                        ));
                    }
                    if run.state.is_final() {
                        finished.push(run.job.clone());
                    }
                }
                for j in &finished {
                    r.remove(j);
                }
            }
            if !finished.is_empty() {
                self.publish();
            }
            for (origin, note) in notes {
                let me = self.clone();
                tokio::spawn(async move { me.tell(origin, note).await });
            }
            if runs.changed().await.is_err() {
                return;
            }
        }
    }

    /// Sends a state to the service's origin (itself: straight to the callback).
    async fn tell(self: Arc<Self>, origin: Origin, note: StatusNotification) {
        if origin.node == self.me {
            self.notified(note).await;
            return;
        }
        for attempt in 0..5u32 {
            match self
                .call::<serde_json::Value>(
                    &origin.node,
                    origin.addr,
                    "/peer/v1/notification",
                    Some(&note),
                )
                .await
            {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(origin = %origin.node, error = %e, "cannot tell the requesting device")
                }
            }
            tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        }
    }

    /// A state of a service this device asked for: to the caller's callback URI.
    async fn notified(&self, note: StatusNotification) {
        let uri = {
            let Ok(mut p) = self.pending.lock() else {
                return;
            };
            let Some(x) = p.get_mut(&note.job) else {
                return;
            };
            // Only from the device running it now (a lost device may come back late; the
            // target is unknown for the instant before `assign` returns), each state once.
            let stale = !x.target.is_empty() && note.target != x.target;
            if stale || x.told.contains(&note.status) {
                return;
            }
            x.told.push(note.status.clone());
            let uri = x.uri.clone();
            if note.status != "Started" {
                p.remove(&note.job);
            }
            uri
        };
        if let Some(uri) = uri {
            crate::samsung::deliver(&self.callbacks, &uri, &note).await;
        }
    }
}

/// Says what changed in the table.
fn log(changes: impl Iterator<Item = Change>) {
    for c in changes {
        match c {
            Change::Found(node) => tracing::info!(%node, "peer candidate found"),
            Change::Verified(node) => tracing::info!(%node, "peer verified over TLS"),
            Change::Dropped(node) => tracing::info!(%node, "peer dropped"),
            Change::Forgotten(node) => tracing::info!(%node, "peer forgotten"),
            Change::WrongName { node, answered } => {
                tracing::warn!(%node, %answered, "a peer answered with another name")
            }
        }
    }
}

/// Keeps the table: discovery events and health checks, until the task is aborted.
pub async fn maintain(node: Arc<PeerNode>, mut events: tokio::sync::mpsc::Receiver<Event>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => node.discovered(ev),
                // Discovery ended: health checks go on alone.
                None => loop {
                    tick.tick().await;
                    node.check().await;
                    node.replace_lost().await;
                },
            },
            _ = tick.tick() => {
                node.check().await;
                node.replace_lost().await;
            }
        }
    }
}

/// The peer port's routes (behind mutual TLS).
pub fn router(node: Arc<PeerNode>) -> Router {
    Router::new()
        .route("/peer/v1/ping", get(ping))
        .route("/peer/v1/score", get(score_route))
        .route("/peer/v1/services", post(services))
        .route("/peer/v1/notification", post(notification))
        .with_state(node)
}

async fn ping(State(n): State<Arc<PeerNode>>) -> axum::Json<Ping> {
    axum::Json(Ping {
        node: n.me.clone(),
        cluster: n.cluster.clone(),
    })
}

async fn score_route(State(n): State<Arc<PeerNode>>) -> axum::Json<ScoreReply> {
    axum::Json(ScoreReply {
        node: n.me.clone(),
        score: n.own_score(),
    })
}

async fn services(
    State(n): State<Arc<PeerNode>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    axum::Json(a): axum::Json<Assignment>,
) -> (StatusCode, axum::Json<serde_json::Value>) {
    let id = a.id.clone();
    match n.accept(a, from) {
        Ok(()) => (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({"node": n.me, "job": id})),
        ),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"error": {"code": "bad_request", "message": e}})),
        ),
    }
}

async fn notification(
    State(n): State<Arc<PeerNode>>,
    axum::Json(note): axum::Json<StatusNotification>,
) -> axum::Json<serde_json::Value> {
    n.notified(note).await;
    axum::Json(serde_json::json!({}))
}

/// Where a peer's cluster file lives in the agent's data dir (`gustavo peer join`).
pub fn cluster_file(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("peer").join("cluster.pem")
}

/// How a device takes part in its peer cluster.
pub struct PeerSettings {
    pub node: String,
    /// The cluster CA (`trust::ClusterCa::load(&cluster_file(data dir))`).
    pub ca: trust::ClusterCa,
    /// The agent's data dir: services given to this device keep their record in `peer/`.
    pub data_dir: std::path::PathBuf,
    /// The peer port (TLS); peers call it.
    pub port: u16,
    /// Announce and browse over mDNS.
    pub mdns: bool,
    /// Peers named by hand: `NAME@ADDR:PORT`.
    pub static_peers: Vec<(String, SocketAddr)>,
    /// Images this device runs for peers (`--samsung-image`); empty: any.
    pub images: Vec<String>,
}

/// A running peer: its state and the peer port's TLS configuration.
pub struct Started {
    pub node: Arc<PeerNode>,
    pub tls: Arc<rustls::ServerConfig>,
}

/// Starts this device's peer side: the host sampler, the job runner for services given to
/// this device (its own data dir `peer/`, its own container label, so it never touches what
/// a server's agent runs), discovery and health checks.
pub fn start<R: crate::runtime::Runtime>(
    s: PeerSettings,
    runtime: Arc<R>,
) -> Result<Started, String> {
    use crate::vitals::HostProbe;
    let ca = &s.ca;
    let identity = ca.identity(&s.node)?;
    let tls = identity.server_config()?;
    let mut sampler = crate::vitals::Sampler::new()?;
    let (cpus, memory_mb) = sampler.capacity();
    let (vitals_tx, vitals_rx) = watch::channel(Some(sampler.sample()));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if vitals_tx.send(Some(sampler.sample())).is_err() {
                return;
            }
        }
    });
    let dir = s.data_dir.join("peer");
    let persist: Arc<dyn crate::persist::Persist> = Arc::new(
        crate::persist::DataDir::create(&dir).map_err(|e| format!("{}: {e}", dir.display()))?,
    );
    let (desired_tx, desired_rx) = watch::channel(None);
    let (runs_tx, runs_rx) = watch::channel(Vec::new());
    let runner_node = format!("{}-peer", s.node);
    tokio::spawn(
        crate::jobs::JobRunner::new(runtime, runner_node, persist, desired_rx, runs_tx).run(),
    );
    let node = PeerNode::new(
        s.node.clone(),
        s.port,
        ca,
        &identity,
        Host {
            vitals: vitals_rx,
            desired: desired_tx,
            facts: NodeFacts {
                name: s.node.clone(),
                cpus,
                memory_mb,
                labels: BTreeMap::new(),
            },
            images: s.images.clone(),
        },
    )?;
    tokio::spawn(node.clone().follow_runs(runs_rx));
    let me = discovery::Announce {
        node: s.node.clone(),
        port: s.port,
        cluster: node.cluster().to_string(),
    };
    let events = if s.mdns {
        discovery::Discovery::start(discovery::Mdns, me.clone())?
    } else {
        discovery::Discovery::start(discovery::Nothing, me.clone())?
    };
    for (name, addr) in s.static_peers {
        node.discovered(Event::Found(Candidate {
            node: name,
            addrs: vec![addr],
            cluster: node.cluster().to_string(),
        }));
    }
    tokio::spawn(maintain(node.clone(), events));
    tracing::info!(node = %s.node, port = s.port, cluster = %node.cluster(), mdns = s.mdns, "peer mode on");
    Ok(Started { node, tls })
}
