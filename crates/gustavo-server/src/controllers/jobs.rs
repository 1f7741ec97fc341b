//! The jobs controller: once a second it moves one-shot jobs along — an attempt whose
//! node was lost (silent past the replica grace), removed or taken out of the job's
//! groups fails and is retried by the usual rules; a job waiting for a node (new, or
//! past its retry backoff) gets the best eligible one (`ops::jobs::settle`). Scheduled
//! jobs need nothing from it: each agent runs them from its own clock.

use std::time::Duration;

use crate::ops::Ops;
use crate::ops::jobs::{job_changes, settle};

/// How often jobs are looked at.
pub const TICK: Duration = Duration::from_secs(1);

/// Runs until the server closes.
pub async fn run(ops: Ops) {
    let mut closing = ops.shared.closing.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = closing.changed() => return,
        }
        tick(&ops).await;
    }
}

async fn tick(ops: &Ops) {
    let shared = &ops.shared;
    let now = crate::now();
    let stale: Vec<String> = {
        let c = shared.read();
        let active: Vec<_> = c
            .jobs
            .values()
            .filter(|j| !j.spec.is_scheduled() && (j.running_on().is_some() || j.wants_node(now)))
            .collect();
        if active.is_empty() {
            return;
        }
        let views = shared.sched.views(&c);
        active
            .into_iter()
            .filter(|j| {
                let mut probe = (*j).clone();
                let t = settle(&mut probe, &views, &shared.sched.weights, j.revision, now);
                !t.is_empty() || probe != **j
            })
            .map(|j| j.name.clone())
            .collect()
    };
    if stale.is_empty() {
        return;
    }
    let sched = shared.sched.clone();
    let expiry = shared.callback_expiry_s();
    let r = shared
        .mutate(move |c, rev| {
            let views = sched.views(c);
            let now = crate::now();
            let mut changes = Vec::new();
            let mut all = Vec::new();
            let mut callbacks = false;
            for name in &stale {
                let Some(old) = c.jobs.get(name) else {
                    continue;
                };
                let mut job = old.clone();
                let t = settle(&mut job, &views, &sched.weights, rev, now);
                if job == *old {
                    continue;
                }
                callbacks |= job.spec.callback_url.is_some() && !t.is_empty();
                changes.extend(job_changes(c, Some(old), &job, &t, rev, expiry));
                all.extend(t);
            }
            Ok((changes, (all, callbacks)))
        })
        .await;
    match r {
        Ok((transitions, callbacks)) => ops.job_transitions(&transitions, callbacks),
        Err(e) => tracing::warn!(error = %e, "cannot commit job changes; retrying"),
    }
}

#[cfg(test)]
mod tests {
    use gustavo_model::job::{Job, JobState, parse_one};
    use gustavo_model::schedule::{Liveness, NodeView, Weights};

    use crate::ops::jobs::{best_node, settle};

    fn view(name: &str, cpus: u32, liveness: Liveness) -> NodeView {
        NodeView {
            name: name.into(),
            groups: vec!["g".into()],
            labels: Default::default(),
            cpus,
            memory_mb: 1024,
            usage: None,
            liveness,
            cordoned: false,
            draining: false,
            pressure: Default::default(),
            agentless: false,
        }
    }

    #[test]
    fn attempts_go_to_the_best_node_then_elsewhere() {
        let spec = parse_one(
            "j:\n  docker_image: x\n  retries: 1\n  retry_backoff: 1s\n",
            "j",
        )
        .unwrap();
        let mut job = Job::new("j", spec, vec!["g".into()], 1, 100);
        let views = vec![
            view("small", 1, Liveness::Ready),
            view("big", 8, Liveness::Ready),
            view("gone", 64, Liveness::Offline),
        ];
        let w = Weights::default();
        assert_eq!(best_node(&job, &views, &w).as_deref(), Some("big"));
        let t = settle(&mut job, &views, &w, 2, 100);
        assert_eq!((t.len(), job.node.as_deref()), (1, Some("big")));
        // Its node is lost: the attempt fails, and after the backoff the retry goes to
        // the node it has not failed on.
        let mut lost = views.clone();
        lost[1].liveness = Liveness::Lost;
        let t = settle(&mut job, &lost, &w, 3, 101);
        assert_eq!(t[0].state, "failed");
        assert_eq!(job.state, JobState::Pending);
        let t = settle(&mut job, &views, &w, 4, 103);
        assert_eq!(t[0].node, "small");
    }
}
