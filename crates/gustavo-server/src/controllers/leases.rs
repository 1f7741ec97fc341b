//! The leases controller: every tick it walks the deployments and moves each lease along
//! (`gustavo_model::lease`): Initializing → Deployed once the node reports the backend
//! running, → Expiring when the lease runs out, → Expired after the grace, when the record
//! is deleted and the backend leaves its node's desired state. A deployment whose recipe
//! app or node is gone expires at once. Every transition is committed (so it survives a
//! restart) and is an event.
//!
//! What renews a lease: requests for the same (uuid, key) (`POST /api/v1/deploy/…`), and
//! activity — the backend's containers sending bytes, as its node's heartbeats report
//! (received bytes are not counted: a container on a shared bridge receives other
//! containers' broadcasts). A lease is renewed by activity at most once a quarter of its
//! duration, so a busy backend costs a commit every few minutes, not every heartbeat.
//! Where the site's node runs the client's WireGuard peer, what the peer received (the
//! client's traffic and its 30 s keepalives) and its handshakes count as activity too: a
//! client with its tunnel up keeps its deployment.

use std::collections::HashMap;

use gustavo_model::lease::LeaseState;
use gustavo_store::Change;

use crate::ops::Ops;
use crate::ops::deployments::backend_running;

/// Runs until the server closes.
pub async fn run(ops: Ops) {
    let mut closing = ops.shared.closing.subscribe();
    let tick = ops.sinfonia.config.tick;
    let mut sent: HashMap<String, Counters> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = closing.changed() => return,
        }
        if let Err(e) = renew_by_activity(&ops, &mut sent).await {
            tracing::warn!(error = %e, "lease renewal by activity failed; retrying next tick");
        }
        if let Err(e) = step(&ops).await {
            tracing::warn!(error = %e, "lease step failed; retrying next tick");
        }
    }
}

/// A deployment's activity counters at the last look: bytes its backend sent, and what
/// came from its client through the site's tunnel (bytes received plus the handshake
/// time, so keepalives and a new handshake both count). Activity is growth of either.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    backend: Option<u64>,
    tunnel: Option<u64>,
}

impl Counters {
    /// Whether anything grew since `before`.
    fn grew(&self, before: &Counters) -> bool {
        let up =
            |now: Option<u64>, was: Option<u64>| matches!((now, was), (Some(n), Some(w)) if n > w);
        up(self.backend, before.backend) || up(self.tunnel, before.tunnel)
    }
}

/// Renews the leases whose backends sent bytes, or whose clients' tunnels carried
/// anything, since the last look (`sent`: each deployment's counters then).
pub async fn renew_by_activity(
    ops: &Ops,
    sent: &mut HashMap<String, Counters>,
) -> Result<(), crate::ops::OpError> {
    let cfg = ops.sinfonia.config.lease;
    let now = crate::now();
    let active: Vec<String> = {
        let c = ops.shared.read();
        sent.retain(|name, _| c.deployments.contains_key(name));
        let mut active = Vec::new();
        for d in c.deployments.values().filter(|d| d.is_live()) {
            let Some(live) = c.live.get(&d.node) else {
                continue;
            };
            let now_counters = Counters {
                backend: live.traffic.get(&d.name).copied(),
                tunnel: live
                    .tunnel
                    .as_ref()
                    .filter(|t| t.site == d.site)
                    .and_then(|t| t.peer(&d.key))
                    .map(|p| p.rx_bytes.saturating_add(p.latest_handshake)),
            };
            let before = sent.insert(d.name.clone(), now_counters);
            let grew = before.is_some_and(|b| now_counters.grew(&b));
            let due = now.saturating_sub(d.renewed_at) >= (cfg.duration_s / 4).max(1);
            if grew && due {
                active.push(d.name.clone());
            }
        }
        active
    };
    if active.is_empty() {
        return Ok(());
    }
    let back = ops
        .shared
        .mutate(move |c, revision| {
            let mut back = Vec::new();
            let changes = active
                .iter()
                .filter_map(|n| c.deployments.get(n))
                .filter(|d| d.is_live())
                .map(|d| {
                    let mut d = d.clone();
                    let was = d.state;
                    d.renew(now);
                    if d.state != was {
                        back.push(format!(
                            "{} {} → {} (backend or tunnel activity)",
                            d.name,
                            was.as_str(),
                            d.state.as_str()
                        ));
                    }
                    d.revision = revision;
                    Change::PutDeployment(Box::new(d))
                })
                .collect();
            Ok((changes, back))
        })
        .await?;
    for line in back {
        let name = line.split(' ').next().unwrap_or_default().to_string();
        ops.shared
            .events
            .push("deployment", format!("deployment:{name}"), line);
    }
    Ok(())
}

/// One pass: commits every due transition in one mutation.
pub async fn step(ops: &Ops) -> Result<(), crate::ops::OpError> {
    let cfg = ops.sinfonia.config.lease;
    let started = ops.shared.sched.started;
    let now = crate::now();
    // A cheap look first, under the read lock: most ticks have nothing to do.
    let due = {
        let c = ops.shared.read();
        c.deployments.values().any(|d| {
            !c.apps.contains_key(&d.app)
                || !c.nodes.contains_key(&d.node)
                || d.next_state(now, started, &cfg, backend_running(&c, d))
                    .is_some()
        })
    };
    if !due {
        return Ok(());
    }
    let moved = ops
        .shared
        .mutate(move |c, revision| {
            let mut changes = Vec::new();
            let mut log = Vec::new();
            for d in c.deployments.values() {
                let orphan = if !c.apps.contains_key(&d.app) {
                    Some("its recipe app was deleted")
                } else if !c.nodes.contains_key(&d.node) {
                    Some("its node was removed")
                } else {
                    None
                };
                let next = match orphan {
                    Some(_) => LeaseState::Expired,
                    None => match d.next_state(now, started, &cfg, backend_running(c, d)) {
                        Some(n) => n,
                        None => continue,
                    },
                };
                if next == LeaseState::Expired {
                    if let Some(n) = c.nodes.get(&d.node) {
                        let mut n = n.clone();
                        n.revision = revision;
                        changes.push(Change::PutNode(n));
                    }
                    changes.push(Change::DeleteDeployment(d.name.clone()));
                } else {
                    let mut d2 = d.clone();
                    d2.state = next;
                    d2.since = now;
                    d2.revision = revision;
                    changes.push(Change::PutDeployment(Box::new(d2)));
                }
                let why = orphan.unwrap_or(match next {
                    LeaseState::Deployed => "the backend runs",
                    LeaseState::Expiring => "the lease ran out; grace before removal",
                    LeaseState::Expired => "not renewed within the grace; backend removed",
                    LeaseState::Initializing => "renewed; waiting for the backend",
                });
                log.push((d.name.clone(), d.state, next, why));
            }
            Ok((changes, log))
        })
        .await?;
    for (name, from, to, why) in moved {
        ops.shared.events.push(
            "deployment",
            format!("deployment:{name}"),
            format!("{name} {} → {} ({why})", from.as_str(), to.as_str()),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Counters;

    #[test]
    fn activity_is_growth_of_either_counter() {
        let c = |backend, tunnel| Counters { backend, tunnel };
        assert!(c(Some(5), None).grew(&c(Some(4), None)));
        assert!(c(Some(4), Some(9)).grew(&c(Some(4), Some(8))));
        assert!(!c(Some(4), Some(8)).grew(&c(Some(4), Some(8))));
        // A counter seen for the first time is a baseline, not activity.
        assert!(!c(Some(4), Some(100)).grew(&c(Some(4), None)));
        // A restarted agent's counter falling back is not activity either.
        assert!(!c(Some(1), None).grew(&c(Some(4), None)));
    }
}
