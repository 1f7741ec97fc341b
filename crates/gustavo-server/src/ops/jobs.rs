//! Jobs: run, list, get, delete, and what agents report of their runs.
//!
//! A one-shot job's attempt is given to the best-scoring eligible node of its groups
//! (`schedule::score`, preferring a node it has not failed on yet) — at once when one is
//! there, else by the jobs controller when one appears or the retry backoff ends. A
//! scheduled job goes to every member of its groups, which run it from their own clocks.
//!
//! Every state change of a run is an event (`job:NAME`) and, when the job has a
//! `callback_url`, a record in the callback outbox committed in the same transaction as
//! the change (`controllers/callbacks.rs` delivers it). Access follows the app grants:
//! jobs share the apps' names for grants and the device groups' policies for what they
//! may run.

use gustavo_model::access::{Role, Subject, check_spec};
use gustavo_model::job::{Job, JobRun, RunJob, Transition};
use gustavo_model::schedule::{NodeView, Weights, not_schedulable, score};
use gustavo_store::{CallbackRecord, Change, NodeRecord};

use super::apps::check_groups;
use super::{OpError, Ops, check_name, hidden};
use crate::now;
use crate::state::Cluster;

/// The best node for the next attempt of `job`: eligible (in its groups, ready, not
/// cordoned), then one it has not failed on, then the best score, then the name.
pub fn best_node(job: &Job, views: &[NodeView], weights: &Weights) -> Option<String> {
    views
        .iter()
        .filter(|n| n.groups.iter().any(|g| job.groups.contains(g)))
        .filter(|n| !job.exclude.contains(&n.name))
        .filter(|n| not_schedulable(n).is_none())
        .map(|n| {
            let tried = job.runs.iter().any(|r| r.node == n.name);
            (tried, -score(n, weights).total, n.name.clone())
        })
        .min_by(|a, b| {
            a.0.cmp(&b.0)
                .then(a.1.total_cmp(&b.1))
                .then_with(|| a.2.cmp(&b.2))
        })
        .map(|(_, _, name)| name)
}

/// Moves a one-shot job along at `now`: a lost or departed node fails its attempt, and a
/// job waiting for a node gets the best one. Returns the state changes.
pub fn settle(
    job: &mut Job,
    views: &[NodeView],
    weights: &Weights,
    rev: u64,
    now: u64,
) -> Vec<Transition> {
    let mut out = Vec::new();
    if let Some(node) = job.running_on().map(String::from) {
        let view = views.iter().find(|v| v.name == node);
        let why = match view {
            None => Some(format!("node {node} was removed")),
            Some(v) if !v.groups.iter().any(|g| job.groups.contains(g)) => {
                Some(format!("node {node} left the job's groups"))
            }
            Some(v) if v.liveness == gustavo_model::schedule::Liveness::Lost => {
                Some(format!("node {node} was lost (silent past the grace)"))
            }
            _ => None,
        };
        if let Some(why) = why {
            out.extend(job.lose_node(&why, rev, now));
        }
    }
    if job.wants_node(now) {
        match best_node(job, views, weights) {
            Some(node) => out.push(job.assign(&node, rev, now)),
            None => {
                let why = "waiting for an eligible node (ready, not cordoned, in the job's groups)";
                if job.reason.is_none() || job.attempt == 0 {
                    job.reason = Some(why.into());
                }
            }
        }
    }
    out
}

/// The changes that store `job` (changed from `old`) at `rev`: the job, a touch of the
/// node it left (so that node's desired-state revision moves forward, never back), and
/// one outbox record per transition when the job has a callback.
pub fn job_changes(
    c: &Cluster,
    old: Option<&Job>,
    job: &Job,
    transitions: &[Transition],
    rev: u64,
    expiry_s: u64,
) -> Vec<Change> {
    let mut changes = Vec::new();
    if let Some(left) = old
        .and_then(|o| o.running_on())
        .filter(|n| job.running_on() != Some(*n))
        && let Some(n) = c.nodes.get(left)
    {
        changes.push(Change::PutNode(NodeRecord {
            revision: rev,
            ..n.clone()
        }));
    }
    changes.push(Change::PutJob(Box::new(job.clone())));
    if let Some(url) = &job.spec.callback_url {
        for t in transitions {
            changes.push(Change::PutCallback(Box::new(callback(&url.0, t, expiry_s))));
        }
    }
    changes
}

fn callback(url: &str, t: &Transition, expiry_s: u64) -> CallbackRecord {
    CallbackRecord {
        id: format!("{}/{}/{}/{}", t.job, t.run, t.node, t.state),
        job: t.job.clone(),
        url: url.to_string(),
        body: serde_json::to_string(t).expect("transitions always serialize"),
        created_at: t.time,
        expires_at: t.time + expiry_s,
        attempts: 0,
        next_at: t.time,
        last_error: None,
    }
}

impl Ops {
    /// Tells the event log and the callback controller what changed.
    pub(crate) fn job_transitions(&self, transitions: &[Transition], callbacks: bool) {
        for t in transitions {
            self.shared
                .events
                .push("job", format!("job:{}", t.job), t.message.clone());
        }
        if callbacks && !transitions.is_empty() {
            self.shared.callbacks.notify_one();
        }
    }

    /// The jobs `who` may see.
    pub fn list_jobs(&self, who: &Subject) -> Vec<Job> {
        self.shared
            .read()
            .jobs
            .values()
            .filter(|j| who.can_read_app(&j.name, &j.groups))
            .cloned()
            .collect()
    }

    pub fn get_job(&self, who: &Subject, name: &str) -> Result<Job, OpError> {
        self.shared
            .read()
            .jobs
            .get(name)
            .filter(|j| who.can_read_app(&j.name, &j.groups))
            .cloned()
            .ok_or_else(|| hidden("job", name))
    }

    /// Runs a job: a one-shot job goes to the best node now (or waits for one), a
    /// scheduled job to every member of its groups.
    pub async fn run_job(&self, who: &Subject, req: RunJob) -> Result<Job, OpError> {
        check_name("job", &req.name)?;
        let mut groups = check_groups(&req.groups)?;
        if groups.is_empty() {
            groups.push(crate::DEFAULT_GROUP.to_string());
        }
        req.spec
            .check(&req.name)
            .map_err(|e| OpError::BadRequest(format!("invalid job spec: {e}")))?;
        if who.role == Role::Viewer {
            return Err(OpError::Forbidden("run jobs (the viewer role only reads)"));
        }
        for g in &groups {
            if !who.can_write_group(g) {
                return Err(OpError::Denied(format!(
                    "user `{}` has no rw grant on device group `{g}`",
                    who.name
                )));
            }
        }
        if !who.can_write_app(&req.name, &groups) {
            return Err(OpError::Denied(format!(
                "user `{}` has no rw grant on `{}`",
                who.name, req.name
            )));
        }
        check_spec(
            &req.spec.as_app(),
            &groups,
            &self.sec.policies(),
            who.is_admin(),
        )
        .map_err(OpError::Denied)?;
        let sched = self.shared.sched.clone();
        let expiry = self.shared.callback_expiry_s();
        let (job, transitions) = self
            .shared
            .mutate(move |c, rev| {
                if c.jobs.contains_key(&req.name) {
                    return Err(OpError::Conflict(format!(
                        "job `{n}` already exists; `gustavo jobs delete {n}` first to run it again",
                        n = req.name
                    )));
                }
                let t = now();
                let mut job = Job::new(&req.name, req.spec, groups, rev, t);
                let mut changes = Vec::new();
                let transitions = if job.spec.is_scheduled() {
                    changes.extend(c.touch_groups(&job.groups, rev));
                    Vec::new()
                } else {
                    let views = sched.views(c);
                    settle(&mut job, &views, &sched.weights, rev, t)
                };
                changes.extend(job_changes(c, None, &job, &transitions, rev, expiry));
                Ok((changes, (job, transitions)))
            })
            .await?;
        let how = match &job.spec.schedule {
            Some(s) => format!("scheduled `{}` on {}", s.0, job.groups.join(", ")),
            None => format!("run once on {}", job.groups.join(", ")),
        };
        self.shared.events.push(
            "job",
            format!("job:{}", job.name),
            format!("{} created: {how} (revision {})", job.name, job.revision),
        );
        self.job_transitions(&transitions, job.spec.callback_url.is_some());
        Ok(job)
    }

    /// Deletes a job: its runs stop on every node (their desired state no longer holds
    /// it). Undelivered callbacks are still delivered.
    pub async fn delete_job(&self, who: &Subject, name: String) -> Result<u64, OpError> {
        let who = who.clone();
        let object = format!("job:{name}");
        let rev = self
            .shared
            .mutate(move |c, rev| {
                let job = c
                    .jobs
                    .get(&name)
                    .filter(|j| who.can_read_app(&j.name, &j.groups))
                    .ok_or_else(|| hidden("job", &name))?;
                if who.role == Role::Viewer || !who.can_write_app(&job.name, &job.groups) {
                    return Err(OpError::Denied(format!(
                        "user `{}` may not delete job `{name}`",
                        who.name
                    )));
                }
                let mut changes = Vec::new();
                if job.spec.is_scheduled() {
                    changes.extend(c.touch_groups(&job.groups, rev));
                } else if let Some(n) = job.running_on().and_then(|n| c.nodes.get(n)) {
                    changes.push(Change::PutNode(NodeRecord {
                        revision: rev,
                        ..n.clone()
                    }));
                }
                changes.push(Change::DeleteJob(name));
                Ok((changes, rev))
            })
            .await?;
        self.shared.events.push(
            "job",
            object.clone(),
            format!("{} deleted (revision {rev})", &object[4..]),
        );
        Ok(rev)
    }

    /// What a node reports of its job runs: each change is stored (with its callback)
    /// in one commit; a report that says nothing new commits nothing.
    pub async fn job_runs(&self, node: &str, runs: Vec<JobRun>) -> Result<(), OpError> {
        if runs.is_empty() {
            return Ok(());
        }
        // Most reports repeat what is known: check under the read lock first.
        let news = {
            let c = self.shared.read();
            runs.iter().any(|r| {
                c.jobs.get(&r.job).is_some_and(|j| {
                    let mut probe = j.clone();
                    !probe.observe(node, r, 0, 0).is_empty()
                })
            })
        };
        if !news {
            return Ok(());
        }
        let node = node.to_string();
        let expiry = self.shared.callback_expiry_s();
        let (transitions, callbacks) = self
            .shared
            .mutate(move |c, rev| {
                let t = now();
                let mut changes = Vec::new();
                let mut all = Vec::new();
                let mut callbacks = false;
                let mut jobs: std::collections::BTreeMap<String, Job> = Default::default();
                for r in &runs {
                    let Some(old) = c.jobs.get(&r.job) else {
                        continue;
                    };
                    let job = jobs.entry(r.job.clone()).or_insert_with(|| old.clone());
                    let tr = job.observe(&node, r, rev, t);
                    callbacks |= job.spec.callback_url.is_some() && !tr.is_empty();
                    all.extend(tr);
                }
                for (name, job) in jobs {
                    let old = c.jobs.get(&name);
                    if old == Some(&job) {
                        continue;
                    }
                    let mine: Vec<Transition> =
                        all.iter().filter(|t| t.job == name).cloned().collect();
                    changes.extend(job_changes(c, old, &job, &mine, rev, expiry));
                }
                Ok((changes, (all, callbacks)))
            })
            .await?;
        self.job_transitions(&transitions, callbacks);
        Ok(())
    }

    /// The callbacks still waiting for delivery (admin).
    pub fn pending_callbacks(&self, who: &Subject) -> Result<Vec<CallbackRecord>, OpError> {
        if !who.is_admin() {
            return Err(OpError::Forbidden("read the callback outbox (admin)"));
        }
        let outbox = self
            .shared
            .outbox()
            .ok_or(OpError::Unavailable("this server has no callback outbox"))?;
        outbox
            .pending_callbacks(1000)
            .map_err(|e| OpError::Internal(e.to_string()))
    }
}
