//! Wire types of the REST API (`/api/v1`), shared by the server, the agent and the CLI so
//! the three can never disagree about a field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::desired::ContainerSpec;
use crate::spec::AppSpec;

/// The body of every error response: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable machine-readable code, e.g. `not_found`, `invalid_spec`.
    pub code: String,
    pub message: String,
}

/// An app as stored: its spec, the groups it is attached to, and the revision of its last
/// change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct App {
    pub name: String,
    pub spec: AppSpec,
    pub groups: Vec<String>,
    pub revision: u64,
    pub restart_nonce: u64,
    pub created_at: u64,
    pub updated_at: u64,
    /// Replicated apps: which node runs each replica (index → node), as the scheduler
    /// placed them. Stored with the app, so placements survive a restart and a node's
    /// desired state follows them. A replica no node can take is absent (pending).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub placements: BTreeMap<u32, String>,
    /// Replicas being moved off a draining node: the old node, which keeps its copy
    /// running until the new one runs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub handoff: BTreeMap<u32, String>,
    /// The image's digest, resolved from its registry when the revision was accepted:
    /// what every device runs, so a tag that moves mid-rollout cannot split the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Why the image could not be pinned to a digest (devices then pull the tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_error: Option<String>,
    /// The staged rollout of this revision (apps with a `rollout:` block), kept once it
    /// ends so `rollouts get` can say how it went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutRecord>,
}

/// One revision of an app, as kept in its history (`gustavo apps history`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppRevision {
    pub app: String,
    pub revision: u64,
    pub spec: AppSpec,
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Who made it (a user, or `rollback` for one the server made).
    pub who: String,
    /// Unix seconds.
    pub at: u64,
    /// `applied`, `rolling out`, `completed`, `rolled back`, `halted`, `aborted`,
    /// `superseded`.
    pub outcome: String,
}

/// `POST /api/v1/apps/{name}/rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The revision to go back to; the one before the current by default.
    #[serde(default)]
    pub to: Option<u64>,
}

/// A staged rollout as people follow it (part of `GET /api/v1/rollouts/{app}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagedRollout {
    pub record: crate::rollout::RolloutRecord,
    /// The rollout's devices, by name, with their wave and where each is.
    pub devices: Vec<RolloutDevice>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutDevice {
    pub node: String,
    pub wave: u32,
    /// `pending`, `waiting` (not yet in a wave), `updating`, `done`, `failed`, `offline`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /api/v1/apps`: create an app and attach it to groups (created on demand).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateApp {
    pub name: String,
    pub spec: AppSpec,
    #[serde(default)]
    pub groups: Vec<String>,
    /// The image's digest as the client resolved it from the registry (`sha256:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// `PUT /api/v1/apps/{name}`: replace the spec; `groups`, when given, replaces the groups.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateApp {
    pub spec: AppSpec,
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    /// The image's digest as the client resolved it from the registry (`sha256:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// A device group: the apps attached to it and the nodes in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub apps: Vec<String>,
    pub nodes: Vec<String>,
    pub revision: u64,
    /// The group's node pressure thresholds (`groups set-pressure`); none: the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pressure: Option<crate::pressure::Thresholds>,
}

/// A node's health as the server sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Ready,
    Pressured,
    Tainted,
    Offline,
}

impl NodeStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeStatus::Ready => "ready",
            NodeStatus::Pressured => "pressured",
            NodeStatus::Tainted => "tainted",
            NodeStatus::Offline => "offline",
        }
    }
}

/// A registered node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub groups: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub address: String,
    pub agent_version: String,
    pub cpus: u32,
    pub memory_mb: u64,
    pub status: NodeStatus,
    /// Unix seconds of the last request from the node; 0 when never seen.
    pub last_seen: u64,
    pub registered_at: u64,
    /// The desired-state revision the node last reported as applied.
    pub applied_revision: u64,
    /// Takes no new replicas (`gustavo nodes cordon`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cordoned: bool,
    /// Being drained (`gustavo nodes drain`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// The pressure level the node reported, why, and what it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pressure: Option<crate::pressure::Status>,
    /// The node is to watch its pressure: its groups or the server set thresholds. With no
    /// `pressure` reported yet (just joined, or the server just restarted) this is what
    /// tells "on" from "off".
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pressure_watched: bool,
}

/// Something the control plane did or saw (`GET /api/v1/events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing; `?after=ID` reads what came later.
    pub id: u64,
    /// Unix seconds.
    pub at: u64,
    /// `node`, `placement`, `app`.
    pub kind: String,
    /// `node:NAME` or `app:NAME`.
    pub object: String,
    pub message: String,
}

/// `POST /api/v1/nodes/register`, authenticated with the join token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub cpus: u32,
    pub memory_mb: u64,
    pub agent_version: String,
    /// How often the agent sends vitals, in seconds: the server counts the node offline
    /// after three missed heartbeats (and never sooner than 15 s).
    #[serde(default = "default_heartbeat_s")]
    pub heartbeat_s: u32,
    /// Take over an existing node of this name (a replaced device): only an admin may, and
    /// the old credential dies. A join token alone can only create a node that does not exist.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replace: bool,
    /// The credential the agent proposes for itself (`gus_node_` and 48 hex digits), so a
    /// join whose answer was lost can be sent again: the server finds the node registered
    /// with that very credential and answers as the first time. Without it the server makes
    /// one, and a lost answer leaves the name taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// A credential of `kind` (`node`, `join`, `user`…) from 24 random bytes:
/// `gus_<kind>_` and 48 hex digits. The server makes every kind; an agent makes its own.
pub fn make_token(kind: &str, random: [u8; 24]) -> String {
    format!("gus_{kind}_{}", hex::encode(random))
}

/// Whether `t` has the shape of a node credential ([`make_token`] of kind `node`).
pub fn is_node_token(t: &str) -> bool {
    t.strip_prefix("gus_node_")
        .is_some_and(|h| h.len() == 48 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn default_heartbeat_s() -> u32 {
    5
}

/// The node's own credential, returned once and kept by the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub node: String,
    pub token: String,
    /// The device groups the node is in now: those it asked for, or the one its join
    /// token binds it to. (Empty from servers older than this field.)
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A node's desired state at one revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredState {
    pub node: String,
    pub revision: u64,
    pub apps: Vec<DesiredApp>,
    /// Jobs this node runs: one-shot attempts given to it, and scheduled jobs of its
    /// groups (run from the agent's clock). Absent from older servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<crate::job::DesiredJob>,
    /// Commands for the agent to run now (`gustavo exec`); a long-poll answers at once when
    /// one is waiting, at the node's current revision. Never stored by the agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec: Vec<crate::exec::ExecCommand>,
    /// The node's pressure thresholds (its groups' or the server's); none: pressure is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pressure: Option<crate::pressure::Thresholds>,
    /// The WireGuard interface this node runs for a site's clients (Sinfonia deployments
    /// placed here); none: the node runs none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<crate::wireguard::DesiredTunnel>,
    /// The node's labels, when an app comes as a template (`{{node.label.KEY}}` is
    /// expanded on the device).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl DesiredState {
    /// `apps` for `node` at `revision`, with nothing else.
    pub fn new(node: impl Into<String>, revision: u64, apps: Vec<DesiredApp>) -> DesiredState {
        DesiredState {
            node: node.into(),
            revision,
            apps,
            jobs: Vec::new(),
            exec: Vec::new(),
            pressure: None,
            tunnel: None,
            labels: BTreeMap::new(),
        }
    }

    /// Completes the apps that came as templates ([`FORM_HEADER`]): their containers
    /// from the template, the node's name and labels and its replica numbers — exactly
    /// the containers (and hashes) the server would have sent. Afterwards the state is
    /// in the full form; a state in the full form is left as it is.
    pub fn complete(&mut self) {
        for app in &mut self.apps {
            let Some(t) = app.template.take() else {
                continue;
            };
            let replicas = std::mem::take(&mut app.replicas);
            app.containers = t
                .get()
                .instances(&self.node, &self.labels, &replicas)
                .into_iter()
                .map(|spec| DesiredContainer {
                    name: crate::desired::container_name(&self.node, &app.name, spec.replica),
                    hash: spec.hash(),
                    spec,
                })
                .collect();
        }
        self.labels.clear();
    }

    /// Takes out the apps that are exactly as in `sent` (what went down before on the same
    /// stream, none at first), and with `pressure_too` the pressure thresholds if they are
    /// as sent: the state becomes a delta ([`StreamFrame::kept`],
    /// [`StreamFrame::kept_pressure`]) carrying only what changed. New labels change every
    /// app (templates are completed with them on the device), so then no app is kept.
    /// `sent` becomes this state.
    pub fn keep_unchanged(&mut self, sent: &mut Option<Sent>, pressure_too: bool) -> Kept {
        let now = Sent {
            apps: self.apps.clone(),
            labels: std::hash::BuildHasher::hash_one(
                &std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default(),
                &self.labels,
            ),
            pressure: self.pressure.clone(),
        };
        let mut kept = Kept::default();
        if let Some(before) = sent.as_ref() {
            if before.labels == now.labels {
                self.apps.retain(|a| {
                    let same = before.apps.contains(a);
                    if same {
                        kept.apps.push(a.name.clone());
                    }
                    !same
                });
            }
            if pressure_too && self.pressure.is_some() && before.pressure == self.pressure {
                self.pressure = None;
                kept.pressure = true;
            }
        }
        *sent = Some(now);
        kept
    }

    /// Puts back into a delta the apps it `kept` (and the pressure thresholds, with
    /// `kept_pressure`), from `had` (the last state that came down the same stream, in the
    /// form it came). Apps come out ordered by name. Fails, naming it, when `had` lacks an
    /// app kept.
    pub fn restore(
        &mut self,
        kept: &[String],
        kept_pressure: bool,
        had: &DesiredState,
    ) -> Result<(), String> {
        if kept_pressure {
            self.pressure = had.pressure.clone();
        }
        for name in kept {
            let app = had.apps.iter().find(|a| a.name == *name).ok_or_else(|| {
                format!("the app `{name}` kept from before is not in the last state")
            })?;
            self.apps.push(app.clone());
        }
        self.apps.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(())
    }
}

/// What went down last on a stream that takes desired deltas
/// ([`DesiredState::keep_unchanged`]): its apps as sent, and a hash of the labels they were
/// completed with on the device.
#[derive(Debug)]
pub struct Sent {
    apps: Vec<DesiredApp>,
    labels: u64,
    pressure: Option<crate::pressure::Thresholds>,
}

/// What [`DesiredState::keep_unchanged`] left out of a state.
#[derive(Debug, Default, PartialEq)]
pub struct Kept {
    /// The apps, by name.
    pub apps: Vec<String>,
    /// The pressure thresholds.
    pub pressure: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredApp {
    pub name: String,
    /// The revision of the app's last change.
    pub revision: u64,
    pub rolling_restart: bool,
    pub containers: Vec<DesiredContainer>,
    /// The app's `priority` and `critical`, for node pressure on the device.
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub priority: i32,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub critical: bool,
    /// A per-client backend on a lease (Sinfonia): the agent reports how many bytes its
    /// containers have sent, which renews the lease.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leased: bool,
    /// The template form (agents that ask for it): what the app's containers share on
    /// every node, and this node's replica numbers; `containers` is then empty and the
    /// agent completes it ([`DesiredState::complete`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<crate::desired::SharedTemplate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<u32>,
}

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredContainer {
    /// The Docker container name, unique per node.
    pub name: String,
    pub hash: String,
    pub spec: ContainerSpec,
}

/// Host vitals, sampled by the agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Vitals {
    pub cpu_percent: f32,
    pub cpus: u32,
    pub memory_used_mb: u64,
    pub memory_total_mb: u64,
    pub disk_used_mb: u64,
    pub disk_total_mb: u64,
    pub load1: f32,
    pub load5: f32,
    pub load15: f32,
    pub net_rx_bps: u64,
    pub net_tx_bps: u64,
    pub uptime_s: u64,
    /// Unix seconds when sampled.
    pub at: u64,
}

/// How far one app is on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppState {
    /// Every replica runs the desired spec (and is healthy where it has a healthcheck).
    Running,
    /// The app is stopped and no container is left.
    Stopped,
    /// Work is under way.
    Progressing,
    /// The last attempt failed; `error` says why, a retry is scheduled.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppStatus {
    pub app: String,
    /// The app revision this status is about.
    pub revision: u64,
    pub state: AppState,
    pub ready: u32,
    pub desired: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One container as the agent observed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub app: String,
    pub name: String,
    pub id: String,
    pub image: String,
    /// Docker's state (running, exited, created, restarting…), or `crashlooping` while the
    /// engine keeps restarting it.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// Unix seconds the container was created.
    pub since: u64,
    /// Its last exit code, when it has exited or is between engine restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// Engine restarts since it was created.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: u32,
    /// What is wrong with it (crash loop, exit code, failing healthcheck), with its last
    /// log lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// `PUT /api/v1/nodes/{name}/status`: what the node runs, at which revision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub applied_revision: u64,
    pub apps: Vec<AppStatus>,
    pub containers: Vec<ContainerStatus>,
    /// The node's recent job runs (the newest per job, bounded), until the server has
    /// them. Absent from older agents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<crate::job::JobRun>,
}

/// What changed in a node's status report since an earlier one of the same agent
/// ([`crate::report`]): the apps it names are replaced whole — their status and every
/// container of theirs — by what it carries (nothing: the app is gone from the node). A
/// device running many apps reports a change to one of them in the size of that one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportDelta {
    /// The `seq` of the request (same `session`) whose report this changes.
    pub base: u64,
    pub applied_revision: u64,
    /// The apps replaced.
    pub changed: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<AppStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ContainerStatus>,
    /// As in [`StatusReport::jobs`]: whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<crate::job::JobRun>,
}

/// `POST /api/v1/nodes/{name}/heartbeat`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub vitals: Vitals,
    /// The node's pressure level and what it did (absent from agents before pressure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pressure: Option<crate::pressure::Status>,
    /// Bytes sent so far by the containers of each leased app (per-client backends), by
    /// app name: growth is activity that renews the app's lease.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub traffic: std::collections::BTreeMap<String, u64>,
    /// The node's WireGuard interface for a site's clients, when it was asked to run one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<crate::wireguard::TunnelStatus>,
}

/// `POST /api/v1/nodes/{name}/sync`: the agent's one request. It carries what the node has
/// to say (its status report when it changed, its vitals when they changed meaningfully or
/// are due) and then waits, like `GET …/desired`, for a revision above `after`. The answer
/// is `200` with the desired state or `304` when nothing newer came within `wait`; a
/// `gustavo-need-report: 1` header asks for the status report again (the server restarted).
/// What the request carried is recorded before the wait, so a poll that times out or a
/// connection that drops after the server read it loses nothing; one the server never read
/// fails on the agent, which sends it again with the next sync.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    /// The revision the agent has.
    #[serde(default)]
    pub after: u64,
    /// How long to wait for a newer one, in seconds (at most 60; 0: answer at once).
    #[serde(default)]
    pub wait: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<StatusReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<Heartbeat>,
    /// Instead of `report`, on a stream whose server said it takes them: what changed in
    /// the report since the one this agent sent with request `base` of its session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<ReportDelta>,
    /// A random number fixed for the agent process, and the request's place in its order:
    /// a long-poll and a short sync beside it may reach the server in either order, and
    /// what an older request carried must not overwrite what a newer one did.
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub session: u64,
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub seq: u64,
}

fn is_zero64(n: &u64) -> bool {
    *n == 0
}

/// The header of a sync request asking for the template form (`template`): apps come as
/// shared templates the agent completes ([`DesiredState::complete`]). Servers that do not
/// know it, or a value they do not know, send the full form.
pub const FORM_HEADER: &str = "gustavo-form";

/// The header of a stream (`1`) whose agent takes desired states as deltas
/// ([`StreamFrame::kept`]). Servers that do not know it send every state whole.
pub const DELTAS_HEADER: &str = "gustavo-deltas";

/// The header of a stream (`1`, beside [`DELTAS_HEADER`]) whose agent takes deltas that
/// leave out unchanged pressure thresholds ([`StreamFrame::kept_pressure`]). An agent that
/// does not send it gets them in every state: it would read them absent as pressure off.
pub const KEPT_PRESSURE_HEADER: &str = "gustavo-kept-pressure";

/// One line the server sends down an agent's stream (`POST …/stream`, newline-delimited
/// JSON): a newer desired state, a request for the status report, or neither (`{}`: the
/// stream is alive — the answer to the first line, and to a line when nothing went down
/// for [`STREAM_KEEPALIVE_S`] seconds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamFrame {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<DesiredState>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub need_report: bool,
    /// With `desired`: the apps of the state that are exactly as they came last on this
    /// stream, by name, left out of `desired.apps` (agents that ask for it with
    /// [`DELTAS_HEADER`]); absent apps that are neither in it nor kept are gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<String>,
    /// With `desired`: its pressure thresholds are as they came last on this stream and are
    /// left out of it (agents that ask for it with [`KEPT_PRESSURE_HEADER`]; ~230 bytes a
    /// change on a metered link).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kept_pressure: bool,
    /// The server takes report deltas (`SyncRequest::delta`) on this stream: said in the
    /// answer to the first line.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deltas: bool,
    /// Why the server ends the stream (the last frame): a refused line, the node removed,
    /// the server shutting down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// After this long with nothing sent down, the server answers the agent's next line with
/// `{}`. The agent sends a line at least every vitals period, so it hears something at
/// least every period plus this; it takes a stream silent for twice that for dead.
pub const STREAM_KEEPALIVE_S: u64 = 45;

/// The header of a sync answer asking for the status report again.
pub const NEED_REPORT_HEADER: &str = "gustavo-need-report";

/// The answer to a heartbeat: `need_status` asks the agent to send its status report again
/// (the server restarted and lost what it had in memory).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub need_status: bool,
}

/// One node's view of one app's rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRollout {
    pub node: String,
    pub node_status: NodeStatus,
    /// True once the node runs the app's current revision (or, after a delete, nothing).
    pub converged: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<AppState>,
    pub ready: u32,
    pub desired: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /api/v1/rollouts/{name}`: the app's current revision, or its deletion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub app: String,
    pub revision: u64,
    /// False once the app was deleted: converged then means "no containers left".
    pub exists: bool,
    pub nodes: Vec<NodeRollout>,
    /// The app's staged rollout (apps with a `rollout:` block), running or last finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged: Option<StagedRollout>,
}

impl Rollout {
    pub fn converged_count(&self) -> usize {
        self.nodes.iter().filter(|n| n.converged).count()
    }
    pub fn failed(&self) -> impl Iterator<Item = &NodeRollout> {
        self.nodes
            .iter()
            .filter(|n| n.state == Some(AppState::Failed))
    }
}

/// `GET /api/v1/rollouts/{name}?summary=true`: the counts only, for very large fleets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutSummary {
    pub app: String,
    pub revision: u64,
    pub exists: bool,
    pub total: usize,
    pub converged: usize,
    pub failed: usize,
}

impl From<&Rollout> for RolloutSummary {
    fn from(r: &Rollout) -> Self {
        RolloutSummary {
            app: r.app.clone(),
            revision: r.revision,
            exists: r.exists,
            total: r.nodes.len(),
            converged: r.converged_count(),
            failed: r.failed().count(),
        }
    }
}

/// `GET /api/v1/stats`: the size of the cluster at a glance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub revision: u64,
    pub nodes: usize,
    pub ready: usize,
    pub apps: usize,
    pub groups: usize,
}

/// A row of `gustavo cache containers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeContainer {
    pub node: String,
    /// Its `error` is the container's own trouble or, failing that, its app's error.
    #[serde(flatten)]
    pub container: ContainerStatus,
}

/// A row of `gustavo cache vitals`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeVitals {
    pub node: String,
    pub status: NodeStatus,
    pub vitals: Option<Vitals>,
}

#[cfg(test)]
mod tests {
    fn app(name: &str, revision: u64) -> DesiredApp {
        DesiredApp {
            name: name.into(),
            revision,
            rolling_restart: false,
            containers: Vec::new(),
            priority: 0,
            critical: false,
            leased: false,
            template: None,
            replicas: vec![1],
        }
    }

    fn state(revision: u64, apps: Vec<DesiredApp>) -> DesiredState {
        DesiredState::new("n", revision, apps)
    }

    /// A state with what went before left out, put back together from what the agent
    /// had, is the state: an app changed, one unchanged, one added, one gone.
    #[test]
    fn a_desired_delta_restores_to_the_whole_state() {
        let before = state(4, vec![app("a", 1), app("b", 2), app("gone", 3)]);
        let now = state(5, vec![app("a", 1), app("b", 5), app("new", 5)]);
        let mut sent = None;
        before.clone().keep_unchanged(&mut sent, true);
        let mut delta = now.clone();
        let kept = delta.keep_unchanged(&mut sent, true).apps;
        assert_eq!(kept, ["a"]);
        assert_eq!(
            delta
                .apps
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>(),
            ["b", "new"]
        );
        let mut got = delta.clone();
        got.restore(&kept, false, &before).unwrap();
        assert_eq!(got, now);
        // Without the app kept, restoring fails and says which.
        let e = delta
            .restore(&kept, false, &state(4, vec![app("b", 2)]))
            .unwrap_err();
        assert!(e.contains("`a`"), "{e}");
        // Nothing is kept at first, nor when the labels changed.
        let mut first = now.clone();
        assert_eq!(first.keep_unchanged(&mut None, true), Kept::default());
        let mut relabelled = now.clone();
        relabelled.labels.insert("site".into(), "b".into());
        assert!(relabelled.keep_unchanged(&mut sent, true).apps.is_empty());
        assert_eq!(relabelled.apps.len(), 3);
    }

    /// Pressure thresholds as they went before are left out when the agent takes it, and
    /// put back from what it had; changed, or for an agent that does not take it, they
    /// come whole.
    #[test]
    fn unchanged_pressure_thresholds_are_kept() {
        let with = |revision, cpu_high| {
            let mut s = state(revision, vec![app("a", 1)]);
            let mut t = crate::pressure::Thresholds::default();
            t.cpu.high = cpu_high;
            s.pressure = Some(t);
            s
        };
        let mut sent = None;
        let first = with(4, 90.0);
        assert!(!first.clone().keep_unchanged(&mut sent, true).pressure);
        let now = with(5, 90.0);
        let mut delta = now.clone();
        let kept = delta.keep_unchanged(&mut sent, true);
        assert_eq!(
            kept,
            Kept {
                apps: vec!["a".into()],
                pressure: true
            }
        );
        assert_eq!(delta.pressure, None);
        let mut got = delta.clone();
        got.restore(&kept.apps, kept.pressure, &first).unwrap();
        assert_eq!(got, now);
        // An agent that does not take it gets them in every state.
        let mut old = with(6, 90.0);
        assert!(!old.keep_unchanged(&mut sent, false).pressure);
        assert!(old.pressure.is_some());
        // Changed: sent whole.
        let mut changed = with(7, 95.0);
        assert!(!changed.keep_unchanged(&mut sent, true).pressure);
        assert_eq!(changed.pressure.unwrap().cpu.high, 95.0);
        // Pressure turned off: absent, and not "kept".
        let mut off = state(8, vec![app("a", 1)]);
        assert!(!off.keep_unchanged(&mut sent, true).pressure);
        assert_eq!(off.pressure, None);
    }

    /// Issue 15: an app sent as a template (once per version, nothing of the node in it)
    /// and completed on the device is exactly the full form — names, specs and hashes —
    /// with placeholders, labels, a secret, sparse replicas, port offsets (one pushed past
    /// 65535 dropped), a pinned digest and every container field set.
    #[test]
    fn a_template_completed_on_the_device_is_the_full_form() {
        use crate::desired::{
            ContainerTemplate, NodeFacts, SharedTemplate, container_name, expand_replicas,
            pin_digest,
        };
        use crate::spec::EnvValue;
        let mut spec = crate::spec::parse_one(
            "a:\n  docker_image: reg:5000/web:v1\n  starting_ports: [{65534: 80}, {\"127.0.0.1:9000/udp\": 53}]\n  env_vars: {WHERE: \"{{node.name}}@{{node.label.site}}#{{replica}}/{{app}}\", PLAIN: x}\n  command: \"sh -c 'echo hi'\"\n  cpus: 0.5\n  memory: 64m\n  restart: on-failure\n  labels: {tier: web}\n  healthcheck: {test: \"true\", interval: 2s}\n  devices: [\"/dev/null:/dev/xnull:rw\"]\n  volumes: [\"/tmp:/data\"]\n",
            "a",
        )
        .unwrap();
        spec.env_vars
            .insert("TOKEN".into(), EnvValue::Secret("s3cr{{node.name}}".into()));
        let node = NodeFacts {
            name: "pi1".into(),
            cpus: 4,
            memory_mb: 1024,
            labels: BTreeMap::from([("site".into(), "north".into())]),
        };
        let replicas = vec![2, 5, 7];
        let mut specs = expand_replicas("a", &spec, 3, &node, &replicas);
        pin_digest(&mut specs, "sha256:abc");
        let full: Vec<DesiredContainer> = specs
            .into_iter()
            .map(|spec| DesiredContainer {
                name: container_name("pi1", "a", spec.replica),
                hash: spec.hash(),
                spec,
            })
            .collect();
        assert_eq!(full[2].spec.ports.len(), 1, "65536 is dropped, 9002 kept");
        assert_eq!(full[0].spec.env["WHERE"], "pi1@north#2/a");
        assert_eq!(full[0].spec.env["TOKEN"], "s3cr{{node.name}}");

        let mut t = ContainerTemplate::new("a", &spec, 3).unwrap();
        t.pin("sha256:abc");
        let app = DesiredApp {
            name: "a".into(),
            revision: 9,
            rolling_restart: false,
            containers: Vec::new(),
            priority: 0,
            critical: false,
            leased: false,
            template: Some(SharedTemplate::new(t)),
            replicas,
        };
        let sent = DesiredState {
            node: "pi1".into(),
            revision: 9,
            apps: vec![app],
            jobs: Vec::new(),
            exec: Vec::new(),
            pressure: None,
            tunnel: None,
            labels: node.labels.clone(),
        };
        let json = serde_json::to_string(&sent).unwrap();
        assert!(json.contains("\"template\""), "{json}");
        let template =
            &json[json.find("\"template\"").unwrap()..json.find("\"replicas\"").unwrap()];
        assert!(
            !template.contains("pi1"),
            "the template holds nothing of the node: {template}"
        );
        // Serialized once: a second answer carries the same bytes.
        assert_eq!(serde_json::to_string(&sent).unwrap(), json);

        let mut got: DesiredState = serde_json::from_str(&json).unwrap();
        got.complete();
        assert_eq!(got.apps[0].containers, full);
        assert!(got.apps[0].template.is_none() && got.apps[0].replicas.is_empty());
        assert!(
            got.labels.is_empty(),
            "the completed state is the full form"
        );
        // Completing a full-form state changes nothing.
        let again = got.clone();
        got.complete();
        assert_eq!(got, again);
    }
    use super::*;

    #[test]
    fn a_made_node_token_has_the_node_token_shape() {
        let t = make_token("node", [0xab; 24]);
        assert_eq!(t, format!("gus_node_{}", "ab".repeat(24)));
        assert!(is_node_token(&t));
        assert!(!is_node_token(&make_token("join", [0xab; 24])));
        assert!(!is_node_token("gus_node_xyz"));
    }
}
