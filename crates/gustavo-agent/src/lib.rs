//! Gustavo's device agent.
//!
//! Tasks that share watch channels:
//! - **sync** ([`sync`]) is the agent's one conversation with the server: a long-poll for
//!   this node's desired state (kept on disk and published on the `desired` channel) that
//!   carries the node's status report when it changed and its vitals when they changed
//!   meaningfully or are due ([`gustavo_model::uplink`], every `--heartbeat`, 60 s by
//!   default). The open poll is the node's liveness; something to say while it waits goes
//!   on a short sync beside it;
//! - **reconcile** ([`reconcile::Reconciler`]) makes the runtime match the desired state
//!   and publishes a status report on the `report` channel;
//! - **pressure** ([`pressure::PressureLoop`]) samples [`vitals`] every few seconds, decides
//!   the node's pressure level and acts on it;
//! - **tunnel** ([`wireguard::TunnelLoop`]) keeps the site's WireGuard interface as the
//!   desired state says (when Sinfonia clients' backends run here);
//! - **jobs** ([`jobs::JobRunner`]) runs the node's one-shot and scheduled jobs.
//!
//! The server is never needed to keep running: with the server away, the reconciler keeps
//! working from the last desired state (from disk after a restart); reports and heartbeats
//! are retried with backoff and catch up when it returns.

pub mod docker;
pub mod exec;
pub mod fleet;
pub mod glances;
pub mod http;
pub mod jobs;
pub mod metrics;
mod networks;
pub mod peer;
pub mod persist;
pub mod pressure;
pub mod reconcile;
pub mod runtime;
pub mod samsung;
pub mod sim;
pub mod trust;
pub mod vitals;
pub mod wireguard;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gustavo_client::{Client, ClientError};
use gustavo_model::api::{
    AppState, DesiredState, Heartbeat, RegisterRequest, StatusReport, SyncRequest,
};
use gustavo_model::{report, uplink};
use thiserror::Error;
use tokio::sync::watch;

use crate::persist::{DataDir, Identity, Persist};
use crate::reconcile::{ReconcileConfig, Reconciler};
use crate::runtime::Runtime;
use crate::vitals::HostProbe;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("cannot use data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Host(String),
    #[error("the agent has no credential yet and no join token was given (--token)")]
    NoToken,
    /// The server's answer is the message (not a `source`, which would print it twice).
    #[error("registration refused by {server}: {answer}")]
    Refused { server: String, answer: ClientError },
    #[error("the join token is invalid: {0}")]
    BadToken(String),
    #[error(
        "the server uses TLS but no CA is known: pass a join token that carries the CA fingerprint (G10…::…) or --ca-file"
    )]
    NoCa,
    #[error("refusing the server: {0}")]
    Untrusted(ClientError),
}

/// Validated agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub server: String,
    pub join_token: Option<String>,
    pub name: String,
    pub groups: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub data_dir: PathBuf,
    pub heartbeat: Duration,
    /// The CA to trust over TLS (`--ca-file`); otherwise pinned at join from the token.
    pub ca_pem: Option<String>,
    /// Replace the node's credential with a fresh one at start.
    pub rotate: bool,
    /// How long one long-poll waits for a change.
    pub wait: Duration,
    pub reconcile: ReconcileConfig,
    /// Run commands sent by `gustavo exec` / `gustavo docker` (off: they are refused).
    pub allow_exec: bool,
    /// The site's WireGuard interface for Sinfonia clients.
    pub wireguard: wireguard::WireguardConfig,
    /// Hold one stream open (HTTP/2) instead of long-polling, while the server takes it.
    pub stream: bool,
}

/// A random fraction in [0, 1): spreads agents that start together (a fleet after a server
/// restart, a simulated fleet) so their heartbeats and long-polls do not fire in step.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// A vitals period drawn between four fifths of `every` and `every`.
fn spread(every: Duration) -> Duration {
    every.mul_f64(0.8 + 0.2 * jitter())
}

/// How often the host is sampled for node pressure while it is on.
const PRESSURE_EVERY: Duration = Duration::from_secs(2);

/// How often the host is sampled while pressure is off, at the most.
const IDLE_SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// The least time between two status reports, so a burst of changes (a container created,
/// then running) goes out as one report while a lone change is sent at once.
const REPORT_COALESCE: Duration = Duration::from_millis(100);

/// How long, after a new desired state, the next long-poll waits for the reconciler to
/// settle on it, so the report that says so rides on that poll (one round trip per change)
/// instead of a request of its own. Longer work (a pull) reports on a short sync later.
const SETTLE: Duration = Duration::from_secs(1);

/// Streams in a row that open (or time out opening) but bring no frame before the agent
/// gives up on streams for the run and long-polls.
const BARREN_STREAMS: u32 = 3;

/// How long one long-poll waits, at most (the server's cap).
const MAX_WAIT: Duration = Duration::from_secs(60);

/// How long past the vitals period a short sync waits for the long-poll to carry them.
const PERIOD_GRACE: Duration = Duration::from_secs(3);

/// Exponential backoff between failed calls to the server.
struct Backoff {
    cur: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            cur: Duration::from_millis(500),
            min: Duration::from_millis(500),
            max: Duration::from_secs(15),
        }
    }
    /// Waits the current delay, give or take half of it, so a fleet that lost its server
    /// at once does not come back at once, then doubles it.
    async fn wait(&mut self) {
        tokio::time::sleep(self.cur.mul_f64(0.5 + jitter())).await;
        self.cur = (self.cur * 2).min(self.max);
    }
    fn reset(&mut self) {
        self.cur = self.min;
    }
}

/// The node's labels: the configured ones, plus `arch` and `os` of this build unless
/// configured, so an app can ask for an architecture (`node_selector: {arch: aarch64}`).
fn host_labels(configured: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut labels = configured.clone();
    labels
        .entry("arch".into())
        .or_insert_with(|| std::env::consts::ARCH.into());
    labels
        .entry("os".into())
        .or_insert_with(|| std::env::consts::OS.into());
    labels
}

fn registration(cfg: &AgentConfig, sampler: &dyn HostProbe) -> RegisterRequest {
    let (cpus, memory_mb) = sampler.capacity();
    RegisterRequest {
        name: cfg.name.clone(),
        groups: cfg.groups.clone(),
        labels: host_labels(&cfg.labels),
        cpus,
        memory_mb,
        agent_version: VERSION.to_string(),
        heartbeat_s: cfg.heartbeat.as_secs().clamp(1, 3600) as u32,
        replace: false,
        token: None,
    }
}

/// Logs the groups the server put this node in, which a group-bound join token may have
/// chosen instead of `--group`.
fn joined(cfg: &AgentConfig, groups: &[String]) {
    if groups.is_empty() {
        // A server from before the answer carried them.
        return;
    }
    let set = |g: &[String]| g.iter().cloned().collect::<std::collections::BTreeSet<_>>();
    if set(groups) != set(&cfg.groups) {
        tracing::warn!(
            node = %cfg.name,
            groups = ?groups,
            requested = ?cfg.groups,
            "joined other device groups than requested (the join token binds this node)"
        );
    } else {
        tracing::info!(node = %cfg.name, groups = ?groups, "joined device groups");
    }
}

/// Finds this node's credential on disk, or registers with the join token (retrying while
/// the server is unreachable; a refusal is final).
async fn identity(
    cfg: &AgentConfig,
    dir: &dyn Persist,
    http: &HttpParts,
    req: &RegisterRequest,
) -> Result<(Identity, bool), AgentError> {
    if let Some(id) = dir
        .identity()
        .filter(|id| id.server == cfg.server && id.node == cfg.name)
    {
        return Ok((id, false));
    }
    let token = cfg.join_token.clone().ok_or(AgentError::NoToken)?;
    // The agent picks its credential, so a retry after a lost answer finds its node
    // registered with it instead of the name taken.
    let req = &RegisterRequest {
        token: Some(gustavo_model::api::make_token("node", rand::random())),
        ..req.clone()
    };
    let (client, ca) = match &http.pool {
        // A simulated agent on a shared pool: plain HTTP/2 to a benchmark server.
        Some(_) => {
            let jt =
                gustavo_model::access::JoinToken::parse(&token).map_err(AgentError::BadToken)?;
            (http.pooled(&cfg.server, &jt.secret), None)
        }
        None => {
            let (client, ca) = trust::join_client(cfg, &token).await?;
            (http.observe(client), ca)
        }
    };
    let mut backoff = Backoff::new();
    loop {
        match client.register(req).await {
            Ok(resp) => {
                joined(cfg, &resp.groups);
                let id = Identity {
                    server: cfg.server.clone(),
                    node: resp.node,
                    token: resp.token,
                    ca,
                };
                dir.save_identity(&id)
                    .map_err(|source| AgentError::DataDir {
                        path: dir.describe(),
                        source,
                    })?;
                tracing::info!(node = %id.node, server = %cfg.server, "registered");
                return Ok((id, true));
            }
            Err(e @ ClientError::Api { .. }) => {
                return Err(AgentError::Refused {
                    server: cfg.server.clone(),
                    answer: e,
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot register yet; retrying");
                backoff.wait().await;
            }
        }
    }
}

/// How the agent reaches the server: by default a client of its own; simulated fleets
/// share HTTP/2 connections between many agents and observe every request.
#[derive(Clone, Default)]
pub struct HttpParts {
    pub pool: Option<reqwest::Client>,
    pub observer: Option<gustavo_client::Observer>,
    /// Told the node's name and its client once registered, for the local APIs that call
    /// the server as this node (the Samsung API).
    pub on_client: Option<ClientTx>,
}

/// Where the agent publishes its node name and server client once it has them.
pub type ClientTx = Arc<watch::Sender<Option<(String, Client)>>>;

impl HttpParts {
    /// A client on the shared pool (callers check that there is one).
    fn pooled(&self, server: &str, token: &str) -> Client {
        let pool = self.pool.clone().unwrap_or_default();
        self.observe(Client::with_http(server, token, pool))
    }

    fn observe(&self, c: Client) -> Client {
        match &self.observer {
            Some(o) => c.with_observer(o.clone()),
            None => c,
        }
    }
}

/// Runs the agent on this device until `shutdown` resolves: the host read through sysinfo,
/// state kept in the data dir. Containers keep running after it returns.
pub async fn run<R: Runtime>(
    cfg: AgentConfig,
    runtime: Arc<R>,
    on_client: Option<ClientTx>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let dir = DataDir::create(&cfg.data_dir).map_err(|source| AgentError::DataDir {
        path: cfg.data_dir.display().to_string(),
        source,
    })?;
    let sampler = vitals::Sampler::new().map_err(AgentError::Host)?;
    run_with(
        cfg,
        runtime,
        sampler,
        Arc::new(dir),
        HttpParts {
            on_client,
            ..HttpParts::default()
        },
        shutdown,
    )
    .await
}

/// Runs the agent with every side effect supplied: the container runtime, the host probe,
/// where state is kept, and how HTTP is done. The protocol and the logic are the same for
/// a device and for a simulated agent.
pub async fn run_with<R: Runtime, H: HostProbe>(
    cfg: AgentConfig,
    runtime: Arc<R>,
    host: H,
    persist: Arc<dyn Persist>,
    http: HttpParts,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let req = registration(&cfg, &host);
    let cached = persist.desired();
    if let Some(d) = &cached {
        tracing::info!(
            revision = d.revision,
            apps = d.apps.len(),
            "restored desired state from disk"
        );
    }
    let (desired_tx, desired_rx) = watch::channel(cached);
    let (report_tx, report_rx) = watch::channel(StatusReport::default());
    let (runs_tx, runs_rx) = watch::channel(Vec::new());
    let job_runner = jobs::JobRunner::new(
        runtime.clone(),
        cfg.name.clone(),
        persist.clone(),
        desired_rx.clone(),
        runs_tx,
    );
    let job_runner = tokio::spawn(job_runner.run());
    let record = persist.pressure().unwrap_or_default();
    if !record.done.is_empty() || record.machine.level != gustavo_model::pressure::Level::Ready {
        tracing::info!(level = %record.machine.level, held = record.done.len(), "restored node pressure record from disk");
    }
    let outputs = pressure::Outputs::new(&record);
    let reconciler = Reconciler::new(
        runtime.clone(),
        cfg.name.clone(),
        cfg.reconcile.clone(),
        desired_rx.clone(),
        report_tx,
    )
    .with_held(outputs.held.subscribe());
    let reconcile = tokio::spawn(reconciler.run());
    let pressure_loop = pressure::PressureLoop {
        runtime,
        node: cfg.name.clone(),
        host,
        persist: persist.clone(),
        desired: desired_rx,
        out: outputs.clone(),
        record,
        every: PRESSURE_EVERY,
        // Often enough that a meaningful change of the vitals goes out within seconds.
        idle: cfg.heartbeat.min(IDLE_SAMPLE_EVERY),
    };
    let pressure_task = tokio::spawn(pressure_loop.run());
    let wg = &cfg.wireguard;
    let tunnel_task = match wg.mode {
        wireguard::TunnelMode::Host => Some(tokio::spawn(
            wireguard::TunnelLoop {
                host: wireguard::WgTools {
                    interface: wg.interface.clone(),
                    port: wg.port,
                },
                desired: desired_tx.subscribe(),
                out: outputs.clone(),
                every: wireguard::CHECK_EVERY,
            }
            .run(),
        )),
        wireguard::TunnelMode::Off => Some(tokio::spawn(
            wireguard::TunnelLoop {
                host: wireguard::Disabled {
                    interface: wg.interface.clone(),
                },
                desired: desired_tx.subscribe(),
                out: outputs.clone(),
                // Nothing to read back: it answers changes of the desired state only.
                every: Duration::from_secs(24 * 3600),
            }
            .run(),
        )),
        wireguard::TunnelMode::Absent => None,
    };

    let work = async {
        // Registration may wait for the server; the cached desired state is already being
        // reconciled meanwhile.
        // A fresh registration already carried this node's facts.
        let (mut id, fresh) = identity(&cfg, persist.as_ref(), &http, &req).await?;
        let client = match &http.pool {
            Some(_) => http.pooled(&cfg.server, &id.token),
            None => {
                if cfg.rotate {
                    let old = trust::node_client(&cfg, &id)?;
                    id = trust::rotate(persist.as_ref(), &old, id).await?;
                }
                http.observe(trust::node_client(&cfg, &id)?)
            }
        };
        if let Some(tx) = &http.on_client {
            tx.send_replace(Some((id.node.clone(), client.clone())));
        }
        let uplink = Uplink::new(report_rx, runs_rx, &outputs, cfg.heartbeat);
        sync(
            &cfg,
            &client,
            &req,
            fresh,
            persist.as_ref(),
            &desired_tx,
            uplink,
        )
        .await;
        Ok::<(), AgentError>(())
    };
    let result = tokio::select! {
        r = work => r,
        _ = shutdown => Ok(()),
    };
    reconcile.abort();
    job_runner.abort();
    pressure_task.abort();
    if let Some(t) = tunnel_task {
        t.abort();
    }
    result
}

/// What the node has to tell the server, and what it last told it.
struct Uplink<'a> {
    report: watch::Receiver<StatusReport>,
    runs: watch::Receiver<Vec<gustavo_model::job::JobRun>>,
    /// The report must go (again): it changed, a request carrying it failed, or the server
    /// asked.
    report_again: bool,
    out: &'a pressure::Outputs,
    vitals: watch::Receiver<Option<gustavo_model::api::Vitals>>,
    sent: Option<uplink::Sent>,
    every: Duration,
    /// The period until the next vitals: `every` shortened by up to a fifth, drawn anew at
    /// each send, so a fleet that joined at once (a site's power back) does not send its
    /// vitals in one wave every period for ever.
    period: Duration,
    epoch: tokio::time::Instant,
    /// This process's sync session and the last request's number in it.
    session: u64,
    seq: u64,
    /// The last report sent and the number of the request that carried it: what the next
    /// report's delta is computed from. None when the next must go whole.
    base: Option<(u64, StatusReport)>,
    /// The server takes report deltas (said on the current stream).
    deltas: bool,
}

/// What one request carried, to put back if it failed.
struct Taken {
    report: bool,
    vitals: Option<Option<uplink::Sent>>,
}

impl<'a> Uplink<'a> {
    fn new(
        report: watch::Receiver<StatusReport>,
        runs: watch::Receiver<Vec<gustavo_model::job::JobRun>>,
        out: &'a pressure::Outputs,
        every: Duration,
    ) -> Uplink<'a> {
        Uplink {
            report,
            runs,
            report_again: true,
            out,
            vitals: out.vitals.subscribe(),
            sent: None,
            every,
            period: spread(every),
            epoch: tokio::time::Instant::now(),
            session: (jitter() * (1u64 << 53) as f64) as u64 | 1,
            seq: 0,
            base: None,
            deltas: false,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The heartbeat as it stands (none before the first host sample).
    fn heartbeat(&self) -> Option<Heartbeat> {
        let mut vitals = self.vitals.borrow().clone()?;
        uplink::compact(&mut vitals);
        Some(Heartbeat {
            vitals,
            pressure: self.out.status.borrow().clone(),
            traffic: self.out.traffic.borrow().clone(),
            tunnel: self.out.tunnel.borrow().clone(),
        })
    }

    fn report_pending(&self) -> bool {
        self.report_again
            || self.report.has_changed().unwrap_or(false)
            || self.runs.has_changed().unwrap_or(false)
    }

    /// The heartbeat, when it is due ([`uplink::due`]).
    fn heartbeat_due(&self) -> Option<Heartbeat> {
        self.heartbeat().filter(|hb| {
            uplink::due(
                self.sent.as_ref(),
                hb,
                self.now_ms(),
                self.period.as_millis() as u64,
            )
        })
    }

    /// A request with whatever is pending, counted as sent (put back by [`Uplink::failed`]).
    fn take(&mut self, after: u64, wait: Duration) -> (SyncRequest, Taken) {
        let report = self.report_pending().then(|| {
            self.report_again = false;
            let mut r = self.report.borrow_and_update().clone();
            r.jobs = self.runs.borrow_and_update().clone();
            report::canonical(&mut r);
            r
        });
        let heartbeat = self.heartbeat_due();
        let vitals = heartbeat.as_ref().map(|hb| {
            let sent = uplink::Sent {
                at_ms: self.now_ms(),
                heartbeat: hb.clone(),
            };
            self.period = spread(self.every);
            self.sent.replace(sent)
        });
        let taken = Taken {
            report: report.is_some(),
            vitals,
        };
        self.seq += 1;
        // Where the server takes them, what changed since the last report sent — unless
        // that is all of it (one app: the delta would only add its own fields).
        let (report, delta) = match report {
            // One app: nothing kept to compute a delta from (it would be no smaller).
            Some(r) if r.apps.len() <= 1 => {
                self.base = None;
                (Some(r), None)
            }
            Some(r) => {
                let delta = match &self.base {
                    Some((seq, before)) if self.deltas => Some(report::delta(before, &r, *seq))
                        .filter(|d| {
                            d.apps.len() < r.apps.len() || d.containers.len() < r.containers.len()
                        }),
                    _ => None,
                };
                let report = delta.is_none().then(|| r.clone());
                self.base = Some((self.seq, r));
                (report, delta)
            }
            None => (None, None),
        };
        let req = SyncRequest {
            after,
            // Whole seconds, rounded up: a poll that came back a little before the vitals
            // are due would cost one more request.
            wait: (wait.as_millis() as u64).div_ceil(1000),
            report,
            delta,
            heartbeat,
            session: self.session,
            seq: self.seq,
        };
        (req, taken)
    }

    fn failed(&mut self, taken: Taken) {
        if taken.report {
            self.whole_report();
        }
        if let Some(before) = taken.vitals {
            self.sent = before;
        }
    }

    /// The next report goes whole: the server asked for it, or may not have the last one.
    fn whole_report(&mut self) {
        self.report_again = true;
        self.base = None;
    }

    /// Resolves when something should go out: a new report (folded with what follows
    /// within [`REPORT_COALESCE`]), a pressure level or tunnel change, vitals that moved, or
    /// the vitals period running out `grace` ago (a stream sends them then; a long-poll
    /// comes back with them at the period's end, so this is for a poll held longer).
    async fn next(&mut self, grace: Duration) {
        loop {
            if self.report_pending() {
                tokio::time::sleep(REPORT_COALESCE).await;
                return;
            }
            let urgent = self
                .heartbeat()
                .is_some_and(|hb| uplink::urgent(self.sent.as_ref(), &hb, self.now_ms()));
            if urgent {
                return;
            }
            // Vitals sent once are due again at the period's end; before the first sample
            // there is nothing to send, and its arrival is a change below.
            let period_end = self.sent.as_ref().map(|_| self.period_end() + grace);
            let due = async {
                match period_end {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // `changed` marks the value seen: remember that it is news.
                r = self.report.changed() => match r {
                    Ok(()) => self.report_again = true,
                    Err(_) => std::future::pending::<()>().await,
                },
                r = self.runs.changed() => match r {
                    Ok(()) => self.report_again = true,
                    Err(_) => std::future::pending::<()>().await,
                },
                // A level change or a change of the tunnel's peers.
                _ = self.out.changed.notified() => {
                    // Wait for the level to show in what is read.
                    tokio::task::yield_now().await;
                    if self.heartbeat().is_some() {
                        self.sent = None;
                        return;
                    }
                }
                r = self.vitals.changed() => if r.is_err() { std::future::pending::<()>().await },
                _ = due => return,
            }
        }
    }

    /// When the vitals are due by the period alone.
    fn period_end(&self) -> tokio::time::Instant {
        self.sent.as_ref().map_or(self.epoch, |s| {
            self.epoch + Duration::from_millis(s.at_ms) + self.period
        })
    }

    /// How long a long-poll may wait so it comes back when the vitals are due.
    fn until_due(&self) -> Duration {
        self.period_end()
            .saturating_duration_since(tokio::time::Instant::now())
    }

    /// Waits (up to [`SETTLE`]) until the report says the reconciler is done with
    /// `revision`: no app still progressing and no container left of an app it no longer
    /// runs (a delete).
    async fn settle(&mut self, revision: u64) {
        let settled = |r: &StatusReport| {
            r.applied_revision >= revision
                && r.apps.iter().all(|a| a.state != AppState::Progressing)
                && r.containers
                    .iter()
                    .all(|c| r.apps.iter().any(|a| a.app == c.app))
        };
        let mut rx = self.report.clone();
        let _ = tokio::time::timeout(SETTLE, rx.wait_for(settled)).await;
    }
}

/// The sync loop: updates the node's declared facts first, then long-polls for the desired
/// state with everything the node has to say folded into the polls.
async fn sync(
    cfg: &AgentConfig,
    client: &Client,
    req: &RegisterRequest,
    mut facts_sent: bool,
    dir: &dyn Persist,
    desired: &watch::Sender<Option<DesiredState>>,
    mut up: Uplink<'_>,
) {
    let node = &cfg.name;
    let mut backoff = Backoff::new();
    let running = Arc::new(tokio::sync::Semaphore::new(exec::MAX_RUNNING));
    // Takes a desired state in: runs its commands, keeps and publishes it when it is newer.
    // Returns the revision to settle on.
    let accept = |mut d: DesiredState| -> Option<u64> {
        for cmd in std::mem::take(&mut d.exec) {
            spawn_exec(client.clone(), node.clone(), cmd, cfg.allow_exec, &running);
        }
        let have = desired.borrow().as_ref().map(|d| d.revision);
        // A long-poll answered for commands alone carries the same revision.
        if have.is_some_and(|r| d.revision <= r) {
            return None;
        }
        tracing::info!(
            revision = d.revision,
            apps = d.apps.len(),
            "new desired state"
        );
        if let Err(e) = dir.save_desired(&d) {
            tracing::error!(error = %e, "cannot cache desired state on disk");
        }
        let revision = d.revision;
        desired.send_replace(Some(d));
        Some(revision)
    };
    let after = || desired.borrow().as_ref().map(|d| d.revision).unwrap_or(0);
    // Streams until the server says it takes none (older, or HTTP/1.1), or until streams
    // keep failing without a single frame (something between holds them): then long-polls.
    let mut streams = cfg.stream;
    let mut barren = 0u32;
    loop {
        if !facts_sent {
            match client.register(req).await {
                Ok(resp) => {
                    joined(cfg, &resp.groups);
                    facts_sent = true;
                }
                Err(e) => {
                    metrics::METRICS.error("server");
                    if desired.borrow().is_some() {
                        tracing::warn!(error = %e, "server unreachable; running from the last desired state");
                    } else {
                        tracing::warn!(error = %e, "server unreachable, and no desired state kept from before; retrying");
                    }
                    backoff.wait().await;
                    continue;
                }
            }
        }
        if streams {
            let end = stream_once(cfg, client, &mut up, &mut backoff, &accept, &after).await;
            let broke = &end.broke;
            let refused = matches!(broke, ClientError::Api { status: 400, .. })
                || matches!(broke, ClientError::Api { status: 404, message, .. } if message == "no such route");
            if refused {
                tracing::info!(reason = %broke, "the server takes no stream from this agent; long-polling instead");
                streams = false;
                continue;
            }
            if end.got_nothing_through() {
                barren += 1;
            } else if end.heard_any {
                barren = 0;
            }
            if barren >= BARREN_STREAMS {
                tracing::warn!(
                    reason = %broke,
                    "{BARREN_STREAMS} streams in a row got nothing through (a proxy holding requests until their body ends?); long-polling instead"
                );
                streams = false;
                continue;
            }
            metrics::METRICS.error("server");
            if broke.is_unauthorized() {
                tracing::error!(
                    "the server refused this node's credential (was the node removed?); retrying"
                );
            } else {
                tracing::warn!(error = %broke, "the stream to the server broke; opening another");
            }
            backoff.wait().await;
            continue;
        }
        // Up to 20% shorter, so agents that started together do not all come back at once.
        // It comes back when the vitals are due, so they ride on the next one: with the
        // default period of 60 s that is one request a minute. Otherwise up to 20% shorter
        // than the configured wait, so agents that started together do not come back at once.
        let until_due = up.until_due();
        let wait = if until_due <= MAX_WAIT {
            until_due
        } else {
            cfg.wait.min(MAX_WAIT).mul_f64(1.0 - 0.2 * jitter())
        }
        .max(Duration::from_secs(1));
        let (poll_req, taken) = up.take(after(), wait);
        let poll = client.sync(node, &poll_req);
        tokio::pin!(poll);
        let answer = loop {
            tokio::select! {
                r = &mut poll => break r,
                _ = up.next(PERIOD_GRACE) => {
                    // Said on a short sync beside the waiting poll.
                    let (side, t) = up.take(after(), Duration::ZERO);
                    match client.sync(node, &side).await {
                        Ok((d, need)) => {
                            if need {
                                up.whole_report();
                            }
                            if let Some(d) = d {
                                accept(d);
                            }
                        }
                        Err(e) => {
                            up.failed(t);
                            tracing::debug!(error = %e, "cannot send to the server; retrying");
                            backoff.wait().await;
                        }
                    }
                }
            }
        };
        match answer {
            Ok((d, need)) => {
                backoff.reset();
                if need {
                    up.whole_report();
                }
                if let Some(revision) = d.and_then(accept) {
                    up.settle(revision).await;
                }
            }
            Err(e) => {
                up.failed(taken);
                metrics::METRICS.error("server");
                if e.is_unauthorized() {
                    tracing::error!(
                        "the server refused this node's credential (was the node removed?); retrying"
                    );
                } else if matches!(&e, ClientError::Api { status: 404, message, .. } if message == "no such route")
                {
                    tracing::error!(
                        server = %cfg.server,
                        "the server does not know POST /api/v1/nodes/{{name}}/sync: it is older than this agent ({VERSION}); upgrade the server"
                    );
                } else {
                    tracing::warn!(error = %e, "cannot fetch desired state; retrying");
                }
                backoff.wait().await;
            }
        }
    }
}

/// How one stream ended.
struct StreamEnd {
    broke: ClientError,
    opened: bool,
    heard_any: bool,
}

impl StreamEnd {
    /// Opened and not a frame back (the server answers the first line at once), or no
    /// answer to the opening at all. A server that cannot be reached, or that refused, is
    /// not that.
    fn got_nothing_through(&self) -> bool {
        let unanswered = matches!(&self.broke, ClientError::Unreachable { reason, .. } if reason == gustavo_client::STREAM_UNANSWERED);
        !self.heard_any && (self.opened || unanswered)
    }
}

/// One stream, from its opening until it breaks. The first line says which revision this
/// device has and carries what is pending; then a line goes each time something is to be
/// said, and the server's frames are taken as they come.
async fn stream_once(
    cfg: &AgentConfig,
    client: &Client,
    up: &mut Uplink<'_>,
    backoff: &mut Backoff,
    accept: &impl Fn(DesiredState) -> Option<u64>,
    after: &impl Fn() -> u64,
) -> StreamEnd {
    let gone = |reason: &str| ClientError::Unreachable {
        url: cfg.server.clone(),
        reason: reason.into(),
    };
    let mut stream = match client.stream(&cfg.name).await {
        Ok(s) => s,
        Err(broke) => {
            return StreamEnd {
                broke,
                opened: false,
                heard_any: false,
            };
        }
    };
    let mut heard_any = false;
    let (first, taken) = up.take(after(), Duration::ZERO);
    let mut broke = stream.send(&first).await.err();
    if broke.is_some() {
        up.failed(taken);
    }
    let silence = gustavo_client::SyncStream::silence_limit(cfg.heartbeat);
    let mut heard = tokio::time::Instant::now();
    while broke.is_none() {
        tokio::select! {
            frame = stream.next() => match frame {
                Ok(Some(frame)) => {
                    heard = tokio::time::Instant::now();
                    heard_any = true;
                    backoff.reset();
                    if frame.need_report {
                        up.whole_report();
                    }
                    up.deltas |= frame.deltas;
                    // Whole: the client put back the apps a delta kept.
                    if let Some(d) = frame.desired {
                        accept(d);
                    }
                    if let Some(e) = frame.error {
                        broke = Some(ClientError::Api { status: 0, code: e.code, message: e.message });
                    }
                }
                Ok(None) => broke = Some(gone("the server ended the stream")),
                Err(e) => broke = Some(e),
            },
            _ = up.next(Duration::ZERO) => {
                let (line, t) = up.take(after(), Duration::ZERO);
                if let Err(e) = stream.send(&line).await {
                    up.failed(t);
                    broke = Some(e);
                }
            }
            _ = tokio::time::sleep_until(heard + silence) => broke = Some(gone("the stream went silent")),
        }
    }
    // What went up on the broken stream may not have arrived: all of it goes again on the
    // next.
    up.whole_report();
    up.deltas = false;
    up.sent = None;
    StreamEnd {
        broke: broke.expect("the loop ends when the stream broke"),
        opened: true,
        heard_any,
    }
}

/// Runs one command from `gustavo exec` beside everything else and posts its outcome
/// (retried a few times: the server waits for it).
fn spawn_exec(
    client: Client,
    node: String,
    cmd: gustavo_model::exec::ExecCommand,
    allowed: bool,
    running: &Arc<tokio::sync::Semaphore>,
) {
    let running = running.clone();
    tokio::spawn(async move {
        let reply = {
            let _slot = running.acquire().await;
            tracing::info!(id = %cmd.id, kind = ?cmd.kind, allowed, "command from the server");
            exec::run(&cmd, allowed).await
        };
        let mut backoff = Backoff::new();
        for _ in 0..4 {
            match client.exec_reply(&node, &cmd.id, &reply).await {
                Ok(()) => return,
                Err(e @ ClientError::Api { .. }) => {
                    tracing::warn!(id = %cmd.id, error = %e, "the server took no answer");
                    return;
                }
                Err(e) => {
                    tracing::debug!(id = %cmd.id, error = %e, "cannot send the answer; retrying");
                    backoff.wait().await;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_that_got_nothing_through_are_told_from_an_unreachable_server() {
        let end = |opened: bool, heard_any: bool, broke: ClientError| StreamEnd {
            broke,
            opened,
            heard_any,
        };
        let unreachable = |reason: &str| ClientError::Unreachable {
            url: "https://s".into(),
            reason: reason.into(),
        };
        let refused = ClientError::Api {
            status: 401,
            code: "unauthenticated".into(),
            message: "no".into(),
        };
        // The opening got no answer within its time: something holds the request.
        assert!(
            end(false, false, unreachable(gustavo_client::STREAM_UNANSWERED)).got_nothing_through()
        );
        // Opened, then silence or a break before any frame.
        assert!(end(true, false, unreachable("the stream went silent")).got_nothing_through());
        // The server is down or refuses: not the stream's fault.
        assert!(!end(false, false, unreachable("connection refused")).got_nothing_through());
        assert!(!end(false, false, refused).got_nothing_through());
        // Anything heard: streams work.
        assert!(!end(true, true, unreachable("the stream went silent")).got_nothing_through());
    }

    /// Reports go whole until the stream's server says it takes deltas; then as deltas on
    /// the last report sent; whole again after a failed send, a request for the report,
    /// or on a new stream.
    #[test]
    fn reports_go_as_deltas_only_on_a_report_the_server_has() {
        use gustavo_model::api::{AppState, AppStatus};
        let app = |name: &str, revision: u64| AppStatus {
            app: name.into(),
            revision,
            state: AppState::Running,
            ready: 1,
            desired: 1,
            error: None,
        };
        let report = |revision: u64| StatusReport {
            applied_revision: revision,
            apps: vec![app("db", 1), app("web", revision)],
            ..StatusReport::default()
        };
        let (tx, rx) = watch::channel(report(1));
        let (_runs, runs) = watch::channel(Vec::new());
        let out = pressure::Outputs::new(&Default::default());
        let mut up = Uplink::new(rx, runs, &out, Duration::from_secs(60));
        let (first, _) = up.take(1, Duration::ZERO);
        assert!(
            first.report.is_some() && first.delta.is_none(),
            "whole at first"
        );
        up.deltas = true;
        tx.send(report(2)).unwrap();
        let (second, _) = up.take(2, Duration::ZERO);
        let d = second.delta.expect("a delta once the server takes them");
        assert!(second.report.is_none());
        assert_eq!(
            (d.base, d.changed.as_slice()),
            (first.seq, &["web".to_string()][..])
        );
        tx.send(report(3)).unwrap();
        let (third, taken) = up.take(3, Duration::ZERO);
        assert_eq!(
            third.delta.unwrap().base,
            second.seq,
            "on the last one sent"
        );
        up.failed(taken);
        let (again, _) = up.take(3, Duration::ZERO);
        assert!(again.report.is_some(), "whole after a failed send");
        // A change to every app goes whole: the delta would be no smaller.
        let mut all = report(4);
        all.apps[0].revision = 4;
        tx.send(all).unwrap();
        let (every, _) = up.take(4, Duration::ZERO);
        assert!(every.report.is_some() && every.delta.is_none());
        tx.send(report(4)).unwrap();
        up.whole_report();
        let (asked, _) = up.take(4, Duration::ZERO);
        assert!(asked.report.is_some(), "whole when the server asks");
    }

    #[test]
    fn arch_and_os_are_labels_unless_configured() {
        let l = host_labels(&BTreeMap::new());
        assert_eq!(l["arch"], std::env::consts::ARCH);
        assert_eq!(l["os"], std::env::consts::OS);
        let mine = BTreeMap::from([("arch".to_string(), "armv7".to_string())]);
        assert_eq!(host_labels(&mine)["arch"], "armv7");
    }
}
