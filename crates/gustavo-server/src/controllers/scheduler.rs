//! The scheduler loop: once a second, it looks at every node's liveness and every
//! replicated app's placements, and commits new placements where they should change —
//! a replica on a node silent past the grace goes elsewhere, a pending replica goes to a
//! node that can now take it. Placements are stored with the app, so the nodes' desired
//! states follow them: the new node starts the replica, and the old one, when it comes
//! back, stops its stale copy because its desired state no longer holds it.
//!
//! Node transitions (ready → offline → lost → ready) are logged as events.

use std::collections::BTreeMap;
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
    let mut last: BTreeMap<String, Liveness> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = closing.changed() => return,
        }
        tick(&shared, &mut last).await;
    }
}

async fn tick(shared: &Arc<Shared>, last: &mut BTreeMap<String, Liveness>) {
    let stale: Vec<String> = {
        let c = shared.read();
        let views = shared.sched.views(&c);
        for v in &views {
            let before = last.insert(v.name.clone(), v.liveness);
            if before.is_some_and(|b| b != v.liveness) {
                tracing::info!(node = %v.name, from = ?before.unwrap_or(Liveness::Ready), to = ?v.liveness, "node transition");
            }
        }
        last.retain(|n, _| c.nodes.contains_key(n));
        c.apps
            .values()
            .filter(|a| a.spec.is_replicated())
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
                        tracing::info!(app = %name, replica = i, %node, from = ?old.placements.get(i), "replica placed");
                    }
                }
                for (i, node) in handoff.iter().filter(|(i, _)| !old.handoff.contains_key(i)) {
                    tracing::info!(app = %name, replica = i, from = %node, "draining: the old copy runs until the new one does");
                }
                let mut app = old.clone();
                app.placements = placements;
                app.handoff = handoff;
                app.revision = rev;
                changes.extend(c.touch_groups(&app.groups, rev));
                changes.push(Change::PutApp(Box::new(app)));
            }
            Ok((changes, ()))
        })
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot commit new placements; retrying");
    }
}
