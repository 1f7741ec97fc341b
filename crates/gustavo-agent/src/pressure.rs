//! Node pressure on the device.
//!
//! One task owns the host probe. Every few seconds it samples the host, publishes the
//! vitals for heartbeats, feeds the sample to the level machine
//! ([`gustavo_model::pressure::Machine`]) with the thresholds from the last desired state
//! (so it works offline), and carries out what the level wants
//! ([`gustavo_model::pressure::plan`]): throttle, stop one container per interval, and on
//! the way back undo exactly what it did. The record of what it did is written to disk
//! before the reconciler can see it, so an agent restart loses nothing; containers it
//! stopped are published on the `held` channel so the reconciler leaves them stopped.
//!
//! With no thresholds (pressure off) it only samples, at the heartbeat period, after
//! undoing anything still in its record.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use gustavo_model::api::{DesiredState, Vitals};
use gustavo_model::pressure::{self, Action, Candidate, Level, Record, Sample, Status, Thresholds};
use tokio::sync::{Notify, watch};

use crate::persist::Persist;
use crate::runtime::Runtime;
use crate::vitals::HostProbe;

/// What the pressure task shares with the rest of the agent.
#[derive(Clone)]
pub struct Outputs {
    /// The latest host sample, for heartbeats.
    pub vitals: watch::Sender<Option<Vitals>>,
    /// The node's level and what pressure did; none while pressure is off and idle.
    pub status: watch::Sender<Option<Status>>,
    /// Containers pressure stopped, by name: the reconciler does not start them.
    pub held: watch::Sender<BTreeSet<String>>,
    /// Told on every level change, so a heartbeat goes out at once.
    pub changed: Arc<Notify>,
    /// Bytes sent by each leased app's containers (per-client backends), for heartbeats:
    /// their growth renews the lease.
    pub traffic: watch::Sender<BTreeMap<String, u64>>,
    /// The site's WireGuard interface, when the node runs one (`wireguard`).
    pub tunnel: watch::Sender<Option<gustavo_model::wireguard::TunnelStatus>>,
}

impl Outputs {
    /// Channels seeded from the record kept on disk, so the reconciler holds the right
    /// containers from its first pass.
    pub fn new(record: &Record) -> Outputs {
        Outputs {
            vitals: watch::channel(None).0,
            status: watch::channel(None).0,
            held: watch::channel(record.held().map(str::to_string).collect()).0,
            changed: Arc::new(Notify::new()),
            traffic: watch::channel(BTreeMap::new()).0,
            tunnel: watch::channel(None).0,
        }
    }
}

pub struct PressureLoop<R: Runtime, H: HostProbe> {
    pub runtime: Arc<R>,
    pub node: String,
    pub host: H,
    pub persist: Arc<dyn Persist>,
    pub desired: watch::Receiver<Option<DesiredState>>,
    pub out: Outputs,
    pub record: Record,
    /// How often the host is sampled while pressure is on.
    pub every: Duration,
    /// How often while it is off (the heartbeat period).
    pub idle: Duration,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl<R: Runtime, H: HostProbe> PressureLoop<R, H> {
    pub async fn run(mut self) {
        loop {
            let (thresholds, apps) = {
                let d = self.desired.borrow();
                let t = d.as_ref().and_then(|d| d.pressure.clone());
                // The apps' priorities matter only to a node that may act on them.
                let acts = t.is_some()
                    || self.record.machine.level != Level::Ready
                    || !self.record.done.is_empty();
                let apps: BTreeMap<String, (i32, bool)> = d
                    .as_ref()
                    .filter(|_| acts)
                    .map(|d| {
                        d.apps
                            .iter()
                            .map(|a| (a.name.clone(), (a.priority, a.critical)))
                            .collect()
                    })
                    .unwrap_or_default();
                (t, apps)
            };
            let mut v = self.host.sample();
            if v.at == 0 {
                v.at = unix_now();
            }
            self.out.vitals.send_replace(Some(v.clone()));
            let traffic = measure_traffic(
                self.runtime.clone(),
                self.node.clone(),
                leased_apps(&self.desired),
            )
            .await;
            self.out.traffic.send_if_modified(|t| {
                let changed = *t != traffic;
                *t = traffic;
                changed
            });
            self.tick(thresholds.as_ref(), &apps, &Sample::of(&v)).await;
            let wait = if thresholds.is_some() {
                self.every
            } else {
                self.idle
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // New thresholds (or pressure turned off) act at once.
                r = self.desired.changed() => if r.is_err() { return },
            }
        }
    }

    /// One sample: the level, then the actions it wants.
    async fn tick(
        &mut self,
        thresholds: Option<&Thresholds>,
        apps: &BTreeMap<String, (i32, bool)>,
        sample: &Sample,
    ) {
        let before = self.record.clone();
        let m = &mut self.record.machine;
        match thresholds {
            Some(t) => {
                if let Some(tr) = m.observe(t, sample) {
                    match &tr.reason {
                        Some(r) => {
                            tracing::warn!(from = %tr.from, to = %tr.to, reason = %r, "node pressure level changed")
                        }
                        None => {
                            tracing::info!(from = %tr.from, to = %tr.to, "node pressure level changed")
                        }
                    }
                }
            }
            None if m.level != Level::Ready => {
                tracing::info!(from = %m.level, "node pressure turned off; releasing");
                m.reset(sample.at);
            }
            None => {}
        }
        if self.record.machine.level != Level::Ready || !self.record.done.is_empty() {
            let t = thresholds.cloned().unwrap_or_default();
            self.act(&t, apps, sample.at).await;
        }
        if self.record != before
            && let Err(e) = self.persist.save_pressure(&self.record)
        {
            tracing::error!(error = %e, "cannot keep the node pressure record on disk");
        }
        let status =
            (thresholds.is_some() || !self.record.done.is_empty()).then(|| self.record.status());
        let level_changed = before.machine.level != self.record.machine.level;
        self.out.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
        self.publish_held();
        if level_changed {
            self.out.changed.notify_one();
        }
    }

    fn publish_held(&self) {
        let held: BTreeSet<String> = self.record.held().map(str::to_string).collect();
        self.out.held.send_if_modified(|h| {
            let changed = *h != held;
            *h = held;
            changed
        });
    }

    /// Lists the node's containers and carries out the plan, noting each action done.
    async fn act(&mut self, t: &Thresholds, apps: &BTreeMap<String, (i32, bool)>, now: u64) {
        let observed = match self.runtime.list(&self.node).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "node pressure: cannot list containers");
                return;
            }
        };
        let mut candidates = Vec::new();
        for o in &observed {
            let (priority, critical) = apps.get(&o.app).copied().unwrap_or((0, false));
            let running = o.state == gustavo_model::plan::RunState::Running;
            let memory_usage =
                if running && self.record.needs_memory_usage(t, &o.name, &o.id, critical) {
                    self.runtime.memory_usage(&o.id).await
                } else {
                    0
                };
            candidates.push(Candidate {
                name: o.name.clone(),
                id: o.id.clone(),
                priority,
                critical,
                running,
                nano_cpus: o.nano_cpus,
                memory: o.memory,
                memory_swap: o.memory_swap,
                memory_usage,
            });
        }
        for action in pressure::plan(t, &self.record, &candidates, now) {
            let before = candidates.iter().find(|c| match &action {
                Action::Limit { name, .. }
                | Action::LimitMemory { name, .. }
                | Action::Stop { name, .. } => &c.name == name,
                _ => false,
            });
            let done = match &action {
                Action::Forget { name } => {
                    tracing::info!(container = %name, "node pressure: container gone or recreated; forgetting what was done to it");
                    Ok(())
                }
                Action::Limit {
                    name,
                    id,
                    nano_cpus,
                } => {
                    if *nano_cpus == 0 {
                        // Docker's 0: no limit (the container's own or none).
                        tracing::info!(container = %name, "node pressure: lifting the CPU limit");
                    } else {
                        tracing::info!(container = %name, cpus = *nano_cpus as f64 / 1e9, "node pressure: setting CPU limit");
                    }
                    self.runtime.set_cpus(id, *nano_cpus).await
                }
                Action::LimitMemory {
                    name,
                    id,
                    memory,
                    swap,
                } => {
                    tracing::info!(container = %name, memory, swap, "node pressure: setting memory limit");
                    self.runtime.set_memory(id, *memory, *swap).await
                }
                Action::Stop { name, id } => {
                    // Held (on disk and for the reconciler) before it stops, so nothing
                    // starts it again in between.
                    pressure::apply(&mut self.record, &action, before, now);
                    if let Err(e) = self.persist.save_pressure(&self.record) {
                        tracing::error!(error = %e, "cannot keep the node pressure record on disk");
                    }
                    self.publish_held();
                    tracing::warn!(container = %name, "node pressure: stopping container");
                    match self.runtime.stop(id).await {
                        Ok(()) => continue,
                        Err(e) => {
                            tracing::warn!(container = %name, error = %e, "node pressure: cannot stop container");
                            continue;
                        }
                    }
                }
                Action::Start { name, id } => {
                    tracing::info!(container = %name, "node pressure: starting container it stopped");
                    self.runtime.start(id).await.map_err(|e| e.naming(name))
                }
            };
            match done {
                Ok(()) => pressure::apply(&mut self.record, &action, before, now),
                Err(e) => {
                    tracing::warn!(action = ?action, error = %e, "node pressure: action failed; retrying next sample")
                }
            }
        }
    }
}

/// The leased apps (per-client backends) of the desired state.
fn leased_apps(desired: &watch::Receiver<Option<DesiredState>>) -> Vec<String> {
    desired
        .borrow()
        .as_ref()
        .map(|d| {
            d.apps
                .iter()
                .filter(|a| a.leased)
                .map(|a| a.name.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Sums what the running containers of leased apps have sent (one engine call per
/// container of a per-client backend; nothing when the node runs none).
async fn measure_traffic<R: Runtime>(
    runtime: Arc<R>,
    node: String,
    leased: Vec<String>,
) -> BTreeMap<String, u64> {
    let mut traffic = BTreeMap::new();
    if leased.is_empty() {
        return traffic;
    }
    let Ok(observed) = runtime.list(&node).await else {
        return traffic;
    };
    for o in observed
        .iter()
        .filter(|o| leased.contains(&o.app) && o.state == gustavo_model::plan::RunState::Running)
    {
        *traffic.entry(o.app.clone()).or_insert(0) += runtime.net_sent(&o.id).await;
    }
    traffic
}
