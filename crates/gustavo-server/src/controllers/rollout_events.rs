//! Rollout events: once a second, for each app revision still rolling out, says when its
//! rollout started (the revision first seen), converged (every node that should run it
//! reports it), and failed on a node (with the node's error) — once each per revision
//! and node. Apps whose current revision has converged cost nothing until they change.
//! Revisions already there when the server starts are not announced ([`first_look`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::state::Shared;

/// How far the rollout of one app revision has been told.
#[derive(Debug, Default)]
pub struct Told {
    revision: u64,
    converged: bool,
    failed: BTreeSet<String>,
    /// Counted failed at a look whose report then showed no error: a report that changed
    /// between the count and the read (reports change under the read lock). Told at the
    /// next look, with the error it shows then.
    unexplained: BTreeSet<String>,
}

/// What is there when the server starts: not news. Taken before the server accepts its
/// first request, so an app created at once is still announced.
pub fn first_look(shared: &Shared) -> BTreeMap<String, Told> {
    shared
        .read()
        .apps
        .values()
        .map(|a| {
            (
                a.name.clone(),
                Told {
                    revision: a.revision,
                    converged: true,
                    ..Told::default()
                },
            )
        })
        .collect()
}

/// Runs until the server closes.
pub async fn run(shared: Arc<Shared>, mut told: BTreeMap<String, Told>) {
    let mut closing = shared.closing.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = closing.changed() => return,
        }
        tick(&shared, &mut told);
        shared.read().rollout_counts.forget_unlooked();
    }
}

fn tick(shared: &Shared, told: &mut BTreeMap<String, Told>) {
    let mut events = Vec::new();
    {
        let c = shared.read();
        told.retain(|name, _| c.apps.contains_key(name));
        for app in c.apps.values() {
            let t = told.entry(app.name.clone()).or_default();
            if t.revision != app.revision {
                *t = Told {
                    revision: app.revision,
                    ..Told::default()
                };
                let total = c.rollout_summary(&app.name).map(|s| s.total).unwrap_or(0);
                events.push((
                    app.name.clone(),
                    format!(
                        "rollout of {} revision {} started ({total} node{})",
                        app.name,
                        app.revision,
                        if total == 1 { "" } else { "s" }
                    ),
                ));
            }
            if t.converged {
                continue;
            }
            let Some(s) = c.rollout_summary(&app.name) else {
                continue;
            };
            // On no device (its groups have none yet): nothing to follow. A device joining
            // later gets the app without an event, as it does once a rollout converged.
            if s.total == 0 {
                t.converged = true;
                continue;
            }
            if s.failed > t.failed.len() {
                for (node, error) in c.rollout_failed(&app.name) {
                    if error.is_none() && t.unexplained.insert(node.clone()) {
                        continue;
                    }
                    if !t.failed.contains(&node) {
                        events.push((
                            app.name.clone(),
                            format!(
                                "rollout of {} revision {} failed on {node}: {}",
                                app.name,
                                app.revision,
                                error.as_deref().unwrap_or("no error given")
                            ),
                        ));
                        t.failed.insert(node);
                    }
                }
            }
            if s.total > 0 && s.converged == s.total {
                t.converged = true;
                events.push((
                    app.name.clone(),
                    format!(
                        "rollout of {} revision {} converged on {}/{} nodes",
                        app.name, app.revision, s.converged, s.total
                    ),
                ));
            }
        }
    }
    for (app, message) in events {
        shared.events.push("rollout", format!("app:{app}"), message);
    }
}
