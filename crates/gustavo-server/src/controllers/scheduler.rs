//! The scheduler loop: once a second, it looks at every node's liveness and every
//! replicated app's placements, and commits new placements where they should change —
//! a replica on a node silent past the grace goes elsewhere, a pending replica goes to a
//! node that can now take it. Placements are stored with the app, so the nodes' desired
//! states follow them: the new node starts the replica, and the old one, when it comes
//! back, stops its stale copy because its desired state no longer holds it.
//!
//! Node transitions (ready → offline → lost → ready) of nodes heard from since this server
//! started, and placements, are events (`crate::events`).

use std::sync::Arc;
use std::time::Duration;

use gustavo_model::schedule::Liveness;
use gustavo_store::Change;

use crate::state::Shared;

/// How often placements are checked.
pub const TICK: Duration = Duration::from_secs(1);

/// Runs until the server closes.
pub async fn run(shared: Arc<Shared>) {
    let mut closing = shared.closing.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = closing.changed() => return,
        }
        tick(&shared).await;
    }
}

async fn tick(shared: &Arc<Shared>) {
    let stale: Vec<String> = {
        let c = shared.read();
        let sched = &shared.sched;
        let now = crate::now();
        // Walked in the order the live entries are kept: no lookup by name per node (a
        // node's record is read only when its liveness needs it).
        for mut entry in c.live.iter_mut() {
            let (name, l) = entry.pair_mut();
            let node = || c.nodes.get(name);
            let liveness =
                crate::state::liveness_of(node, Some(l), now, sched.started, sched.grace_s);
            // A node is followed from its first answer to this server: after a restart,
            // the whole fleet coming back is not a storm of "is back" events.
            let before = match l.followed {
                Some(b) if b == liveness => continue,
                None if liveness != Liveness::Ready => continue,
                before => before,
            };
            l.followed = Some(liveness);
            // Why it counts as offline: a streaming or long-polling agent re-polls at once,
            // so its gone connection says it; an old agent, its missing heartbeats.
            let offline = if l.syncs {
                "is offline (its connection to the server is gone)"
            } else {
                "is offline (no request for three heartbeats)"
            };
            if before == Some(Liveness::Ready) && liveness == Liveness::Lost {
                // Silent past the grace at the moment it went offline (a grace shorter
                // than the offline limit): both steps happened.
                shared
                    .events
                    .push("node", format!("node:{name}"), format!("{name} {offline}"));
            }
            if let Some(b) = before.filter(|b| *b != liveness) {
                let what = match liveness {
                    Liveness::Ready => "is back",
                    Liveness::Offline => offline,
                    Liveness::Lost => "is lost: its replicas go elsewhere",
                };
                shared.events.push(
                    "node",
                    format!("node:{name}"),
                    format!("{name} {what} (was {})", format!("{b:?}").to_lowercase()),
                );
            }
        }
        // The full views (labels, groups, vitals) only when something is placed by them.
        let replicated: Vec<_> = c.apps.values().filter(|a| a.spec.is_replicated()).collect();
        if replicated.is_empty() {
            return;
        }
        let views = sched.views(&c);
        replicated
            .into_iter()
            .filter(|a| {
                c.placements_for(a, &views, &shared.sched.weights)
                    != (a.placements.clone(), a.handoff.clone())
            })
            .map(|a| a.name.clone())
            .collect()
    };
    if stale.is_empty() {
        return;
    }
    let sched = shared.sched.clone();
    let r = shared
        .mutate(move |c, rev| {
            let views = sched.views(c);
            let mut changes = Vec::new();
            // Told once the placements are durable.
            let mut events: Vec<(String, String)> = Vec::new();
            for name in &stale {
                let Some(old) = c.apps.get(name) else {
                    continue;
                };
                let (placements, handoff) = c.placements_for(old, &views, &sched.weights);
                if placements == old.placements && handoff == old.handoff {
                    continue;
                }
                for (i, node) in &placements {
                    if old.placements.get(i) != Some(node) {
                        let from = old
                            .placements
                            .get(i)
                            .map(|f| format!(" (was on {f})"))
                            .unwrap_or_default();
                        events.push((
                            format!("app:{name}"),
                            format!("replica {i} of {name} placed on {node}{from}"),
                        ));
                    }
                }
                for i in old.placements.keys().filter(|i| !placements.contains_key(i)) {
                    events.push((
                        format!("app:{name}"),
                        format!("replica {i} of {name} is pending: no eligible node"),
                    ));
                }
                for (i, node) in handoff.iter().filter(|(i, _)| !old.handoff.contains_key(i)) {
                    events.push((
                        format!("app:{name}"),
                        format!(
                            "draining {node}: replica {i} of {name} runs there until its new copy does"
                        ),
                    ));
                }
                let mut app = old.clone();
                app.placements = placements;
                app.handoff = handoff;
                app.revision = rev;
                changes.extend(c.touch_groups(&app.groups, rev));
                changes.push(Change::PutApp(Box::new(app)));
            }
            Ok((changes, events))
        })
        .await;
    match r {
        Ok(events) => {
            for (object, message) in events {
                shared.events.push("placement", object, message);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot commit new placements; retrying"),
    }
}
