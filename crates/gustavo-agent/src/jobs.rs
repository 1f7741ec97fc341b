//! The agent's job runner: runs the jobs of this node's desired state to completion and
//! reports their runs.
//!
//! - A **one-shot** entry (`run: Some(n)`) is started once: attempt `n` of that job, on
//!   this node. Whether it ran is kept on disk, so an agent restart never runs it twice.
//! - A **scheduled** entry runs at every due time of its schedule, from this machine's own
//!   clock (`job::due`): the server is not needed, so it keeps running while the server is
//!   away — the desired state and the last due time handled are both on disk. A run still
//!   going at the next due time makes that time skipped (no overlap); missed times during
//!   downtime give one catch-up run, not a burst.
//!
//! A run's container is a plain container of the runtime, labelled as belonging to the
//! node `<node>/jobs` (so the reconciler, which lists `<node>`, never touches it), created
//! without a restart policy. When it exits, its exit code and the end of its output are
//! kept; a run past its `deadline` is killed and fails. Finished containers are removed
//! after [`KEEP_FINISHED_S`]; their last lines stay in the run record. The newest
//! [`RUNS_KEPT`] runs of each job are reported to the server in every status report.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gustavo_model::api::{DesiredContainer, DesiredState};
use gustavo_model::image::ImageRef;
use gustavo_model::job::{DesiredJob, JobRun, LOG_BYTES, RunState, due, tail};
use gustavo_model::plan::{Observed, RunState as Docker};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::persist::Persist;
use crate::runtime::Runtime;

/// How often runs are checked and schedules looked at.
pub const TICK: Duration = Duration::from_secs(1);
/// How long a finished run's container is kept (for `docker logs` by hand).
pub const KEEP_FINISHED_S: u64 = 600;
/// Runs kept (and reported) per job.
pub const RUNS_KEPT: usize = 5;
/// How long the runs of a job this node no longer has are kept, for the server to hear.
const FORGET_AFTER_S: u64 = 3600;

/// The runtime "node" job containers belong to.
pub fn job_node(node: &str) -> String {
    format!("{node}/jobs")
}

/// One run as this agent keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalRun {
    pub run: JobRun,
    /// The container's id, until it is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_s: Option<u64>,
}

/// What the agent keeps on disk about jobs (`jobs.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LocalJobs {
    pub runs: Vec<LocalRun>,
    /// For each scheduled job, the last due time handled (Unix seconds).
    #[serde(default)]
    pub last_due: BTreeMap<String, u64>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub struct JobRunner<R: Runtime> {
    rt: Arc<R>,
    node: String,
    persist: Arc<dyn Persist>,
    desired: watch::Receiver<Option<DesiredState>>,
    runs: watch::Sender<Vec<JobRun>>,
    state: LocalJobs,
}

impl<R: Runtime> JobRunner<R> {
    pub fn new(
        rt: Arc<R>,
        node: String,
        persist: Arc<dyn Persist>,
        desired: watch::Receiver<Option<DesiredState>>,
        runs: watch::Sender<Vec<JobRun>>,
    ) -> Self {
        let state = persist.jobs().unwrap_or_default();
        JobRunner {
            rt,
            node,
            persist,
            desired,
            runs,
            state,
        }
    }

    /// Runs until the task is aborted: a pass every [`TICK`], on a new desired state, and
    /// when the engine says something happened to a job container (an exit is seen at once).
    pub async fn run(mut self) {
        self.publish();
        let mut events = self.rt.watch(&job_node(&self.node));
        loop {
            self.pass(unix_now()).await;
            // With no job and no run there is nothing to time: wait for a change only
            // (an idle agent then sets no timer a second; simulated fleets run 100,000).
            let idle = self.idle();
            tokio::select! {
                _ = tokio::time::sleep(TICK), if !idle => {}
                r = self.desired.changed() => if r.is_err() { return },
                Some(()) = events.recv() => {}
            }
        }
    }

    /// No job to run or schedule, and no run or schedule to finish or forget.
    fn idle(&self) -> bool {
        self.state.runs.is_empty()
            && self.state.last_due.is_empty()
            && self
                .desired
                .borrow()
                .as_ref()
                .is_none_or(|d| d.jobs.is_empty())
    }

    fn publish(&self) {
        let runs: Vec<JobRun> = self.state.runs.iter().map(|r| r.run.clone()).collect();
        self.runs.send_if_modified(|old| {
            let changed = *old != runs;
            if changed {
                *old = runs;
            }
            changed
        });
    }

    /// One pass at `now`: finish, cancel, start, clean up; save and publish what changed.
    pub async fn pass(&mut self, now: u64) {
        // Only the jobs are needed: the rest of the desired state is not copied.
        let Some(jobs) = self.desired.borrow().as_ref().map(|d| d.jobs.clone()) else {
            // Never had a desired state: nothing is known to run.
            return;
        };
        // Nothing to run and nothing to watch: no engine call (simulated fleets run this
        // too, thousands at a time).
        if jobs.is_empty() && self.state.runs.iter().all(|r| r.container.is_none()) {
            if self.state.runs.is_empty() && self.state.last_due.is_empty() {
                return;
            }
            let before = self.state.clone();
            self.clean(&[], &jobs, now).await;
            if self.state != before {
                if let Err(e) = self.persist.save_jobs(&self.state) {
                    tracing::error!(error = %e, "cannot save job runs on disk");
                }
                self.publish();
            }
            return;
        }
        let before = self.state.clone();
        let jnode = job_node(&self.node);
        let observed = match self.rt.list(&jnode).await {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list job containers");
                None
            }
        };
        if let Some(observed) = &observed {
            self.finish(observed, &jobs, now).await;
        }
        for dj in &jobs {
            if let Some(n) = dj.run {
                if !self.has_run(&dj.name, n, dj.revision) {
                    self.start(dj, n, observed.as_deref(), now).await;
                }
            } else if let Some(text) = &dj.schedule {
                let Ok(schedule) = gustavo_model::cron::Schedule::parse(text) else {
                    continue;
                };
                let last = *self.state.last_due.entry(dj.name.clone()).or_insert(now);
                if let Some(t) = due(&schedule, last, now) {
                    self.state.last_due.insert(dj.name.clone(), t);
                    let busy = self
                        .state
                        .runs
                        .iter()
                        .any(|r| r.run.job == dj.name && !r.run.state.is_final());
                    if busy {
                        tracing::warn!(job = %dj.name, at = t, "previous run still going; skipping this one");
                    } else {
                        self.start(dj, t, observed.as_deref(), now).await;
                    }
                }
            }
        }
        if let Some(observed) = &observed {
            self.clean(observed, &jobs, now).await;
        }
        if self.state != before {
            if let Err(e) = self.persist.save_jobs(&self.state) {
                tracing::error!(error = %e, "cannot save job runs on disk");
            }
            self.publish();
        }
    }

    /// Whether attempt `run` of this job (given at `revision`: not an earlier job of the
    /// same name) was started here.
    fn has_run(&self, job: &str, run: u64, revision: u64) -> bool {
        self.state
            .runs
            .iter()
            .any(|r| r.run.job == job && r.run.run == run && r.run.job_revision == revision)
    }

    async fn start(&mut self, dj: &DesiredJob, run: u64, observed: Option<&[Observed]>, now: u64) {
        let name = format!("{}.{}.{}.{run}", self.node, dj.name, dj.revision);
        let mut spec = dj.container.clone();
        spec.labels.insert("gustavo.job".into(), dj.name.clone());
        spec.labels
            .insert("gustavo.job.run".into(), run.to_string());
        spec.env.insert("GUSTAVO_RUN".into(), run.to_string());
        let c = DesiredContainer {
            name: name.clone(),
            hash: run.to_string(),
            spec,
        };
        let mut record = JobRun {
            job: dj.name.clone(),
            run,
            node: self.node.clone(),
            state: RunState::Running,
            exit_code: None,
            started_at: now,
            finished_at: 0,
            error: None,
            logs: String::new(),
            job_revision: dj.revision,
        };
        // A container of this run from before a crash is adopted, not made twice.
        let existing = observed.and_then(|o| o.iter().find(|o| o.name == name));
        let started = match existing {
            Some(o) => Ok(o.id.clone()),
            None => {
                let r = ImageRef::parse(&c.spec.image);
                let refresh = r.digest.is_none() && r.tag == "latest";
                match self.rt.ensure_image(&c.spec.image, refresh).await {
                    Ok(()) => self.rt.create(&job_node(&self.node), &c).await,
                    Err(e) => Err(e),
                }
            }
        };
        let container = match started {
            Ok(id) => {
                tracing::info!(job = %dj.name, run, container = %name, "job run started");
                Some(id)
            }
            Err(e) => {
                tracing::warn!(job = %dj.name, run, error = %e, "job run could not start");
                record.state = RunState::Failed;
                // It never started (`started_at` is 0 until it does): its image could not be
                // had, or its container not made.
                record.started_at = 0;
                record.finished_at = now;
                record.error = Some(e.to_string());
                None
            }
        };
        self.state.runs.push(LocalRun {
            run: record,
            container,
            deadline_s: dj.deadline_s,
        });
    }

    /// Runs whose container exited, vanished, passed its deadline, or is no longer wanted.
    async fn finish(&mut self, observed: &[Observed], jobs: &[DesiredJob], now: u64) {
        for i in 0..self.state.runs.len() {
            let r = &self.state.runs[i];
            if r.run.state.is_final() {
                continue;
            }
            let Some(id) = r.container.clone() else {
                continue;
            };
            let o = observed.iter().find(|o| o.id == id);
            let wanted = jobs.iter().any(|j| {
                j.name == r.run.job
                    && (j.schedule.is_some()
                        || j.run == Some(r.run.run) && j.revision == r.run.job_revision)
            });
            let overdue = r
                .deadline_s
                .is_some_and(|d| now >= r.run.started_at.saturating_add(d));
            let (state, code, error) = match o.map(|o| (o.state, o.exit_code)) {
                Some((Docker::Exited | Docker::Dead, code)) => {
                    let st = if code == 0 {
                        RunState::Succeeded
                    } else {
                        RunState::Failed
                    };
                    (st, Some(code), None)
                }
                None => (
                    RunState::Failed,
                    None,
                    Some("the run's container disappeared".to_string()),
                ),
                Some(_) if overdue => (
                    RunState::Failed,
                    None,
                    Some(format!(
                        "deadline of {}s exceeded; the run was killed",
                        r.deadline_s.unwrap_or(0)
                    )),
                ),
                Some(_) if !wanted => (
                    RunState::Failed,
                    None,
                    Some("cancelled: the job was deleted or moved off this node".into()),
                ),
                Some(_) => continue,
            };
            let logs = if o.is_some() {
                self.rt.logs(&id, LOG_BYTES).await
            } else {
                String::new()
            };
            if error.is_some() && o.is_some() {
                if let Err(e) = self.rt.remove(&id).await {
                    tracing::warn!(container = %id, error = %e, "cannot remove a job container");
                }
                self.state.runs[i].container = None;
            }
            let r = &mut self.state.runs[i];
            r.run.state = state;
            r.run.exit_code = code;
            r.run.error = error;
            r.run.finished_at = now;
            r.run.logs = tail(&logs, LOG_BYTES);
            tracing::info!(job = %r.run.job, run = r.run.run, state = r.run.state.as_str(), exit_code = ?code, "job run finished");
        }
    }

    /// Removes finished containers after a while and containers no record knows; keeps
    /// the newest runs of each job and forgets jobs long gone.
    async fn clean(&mut self, observed: &[Observed], jobs: &[DesiredJob], now: u64) {
        for r in &mut self.state.runs {
            if r.run.state.is_final()
                && now >= r.run.finished_at + KEEP_FINISHED_S
                && let Some(id) = r.container.take()
                && let Err(e) = self.rt.remove(&id).await
            {
                tracing::warn!(container = %id, error = %e, "cannot remove a job container");
                r.container = Some(id);
            }
        }
        for o in observed {
            let known = self
                .state
                .runs
                .iter()
                .any(|r| r.container.as_deref() == Some(&o.id));
            let exited = matches!(o.state, Docker::Exited | Docker::Dead | Docker::Created);
            if !known && exited {
                let _ = self.rt.remove(&o.id).await;
            }
        }
        // The newest RUNS_KEPT per job; a job no longer desired only until FORGET_AFTER_S.
        let mut kept: BTreeMap<String, usize> = BTreeMap::new();
        let mut keep = vec![false; self.state.runs.len()];
        for (i, r) in self.state.runs.iter().enumerate().rev() {
            let n = kept.entry(r.run.job.clone()).or_default();
            let desired = jobs.iter().any(|j| j.name == r.run.job);
            let recent = !r.run.state.is_final() || now < r.run.finished_at + FORGET_AFTER_S;
            if *n < RUNS_KEPT && (desired || recent) {
                *n += 1;
                keep[i] = true;
            }
        }
        let mut i = 0;
        self.state.runs.retain(|r| {
            let k = keep[i] || r.container.is_some() && !r.run.state.is_final();
            i += 1;
            k
        });
        self.state
            .last_due
            .retain(|job, _| jobs.iter().any(|j| j.name == *job && j.schedule.is_some()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persist::MemoryPersist;
    use crate::sim::SimRuntime;
    use gustavo_model::desired::NodeFacts;
    use gustavo_model::job::{Job, parse_one};

    const T: u64 = 1_796_276_520;
    const IMAGE: &str = "r:5000/x:1";

    fn desired_job(yaml: &str, attempt: bool) -> DesiredJob {
        let spec = parse_one(yaml, "j").unwrap();
        let mut job = Job::new("j", spec, vec!["g".into()], 7, T);
        if attempt {
            job.assign("n", 8, T);
        }
        let facts = NodeFacts {
            name: "n".into(),
            cpus: 1,
            memory_mb: 512,
            labels: Default::default(),
        };
        DesiredJob::for_node(&job, &facts).unwrap()
    }

    struct Harness {
        rt: Arc<SimRuntime>,
        persist: Arc<MemoryPersist>,
        tx: watch::Sender<Option<DesiredState>>,
        runner: JobRunner<SimRuntime>,
        runs: watch::Receiver<Vec<JobRun>>,
    }

    fn harness(jobs: Vec<DesiredJob>) -> Harness {
        let rt = Arc::new(SimRuntime::new());
        rt.publish(IMAGE);
        let persist = Arc::new(MemoryPersist::default());
        let (tx, rx) = watch::channel(Some(DesiredState {
            node: "n".into(),
            revision: 9,
            apps: vec![],
            jobs,
            exec: Vec::new(),
            pressure: None,
            tunnel: None,
            labels: Default::default(),
        }));
        let (runs_tx, runs) = watch::channel(Vec::new());
        let runner = JobRunner::new(rt.clone(), "n".into(), persist.clone(), rx, runs_tx);
        Harness {
            rt,
            persist,
            tx,
            runner,
            runs,
        }
    }

    fn creates(rt: &SimRuntime) -> usize {
        rt.log().iter().filter(|l| l.starts_with("create")).count()
    }

    #[tokio::test]
    async fn a_one_shot_attempt_runs_once_even_across_a_restart() {
        let dj = desired_job(&format!("j:\n  docker_image: {IMAGE}\n"), true);
        let mut h = harness(vec![dj]);
        h.runner.pass(T).await;
        assert_eq!(creates(&h.rt), 1);
        let name = h.rt.containers()[0].name.clone();
        assert_eq!(name, "n.j.8.1");
        // The reconciler's node does not see it.
        assert!(h.rt.list("n").await.unwrap().is_empty());
        assert_eq!(h.runs.borrow().clone()[0].state, RunState::Running);
        h.rt.kill(&name, 0);
        h.runner.pass(T + 1).await;
        let r = h.runs.borrow().clone();
        assert_eq!((r[0].state, r[0].exit_code), (RunState::Succeeded, Some(0)));
        assert_eq!(r[0].job_revision, 8);
        // A new agent process from the same data: it knows the run happened.
        let (runs_tx, _runs) = watch::channel(Vec::new());
        let mut again = JobRunner::new(
            h.rt.clone(),
            "n".into(),
            h.persist.clone(),
            h.tx.subscribe(),
            runs_tx,
        );
        again.pass(T + 2).await;
        assert_eq!(creates(&h.rt), 1, "{:?}", h.rt.log());
        // The finished container goes after a while; its record stays.
        again.pass(T + 2 + KEEP_FINISHED_S).await;
        assert!(h.rt.containers().is_empty());
        assert_eq!(again.state.runs.len(), 1);
    }

    #[tokio::test]
    async fn a_scheduled_job_runs_at_its_times_without_overlap() {
        let dj = desired_job(
            &format!("j:\n  docker_image: {IMAGE}\n  schedule: '@every 5s'\n"),
            false,
        );
        let mut h = harness(vec![dj]);
        let t0 = T / 5 * 5;
        h.runner.pass(t0 + 1).await;
        assert_eq!(creates(&h.rt), 0, "nothing due yet");
        h.runner.pass(t0 + 4).await;
        assert_eq!(creates(&h.rt), 0);
        h.runner.pass(t0 + 5).await;
        assert_eq!(creates(&h.rt), 1);
        // Still running at the next time: skipped, not doubled.
        h.runner.pass(t0 + 10).await;
        assert_eq!(creates(&h.rt), 1);
        let name = h.rt.containers()[0].name.clone();
        h.rt.kill(&name, 2);
        h.runner.pass(t0 + 11).await;
        let r = h.runs.borrow().clone();
        assert_eq!(
            (r[0].run, r[0].state, r[0].exit_code),
            (t0 + 5, RunState::Failed, Some(2))
        );
        h.runner.pass(t0 + 15).await;
        assert_eq!(creates(&h.rt), 2);
        // Deleted: its running run is cancelled, nothing new starts.
        h.tx.send_modify(|d| d.as_mut().unwrap().jobs.clear());
        h.runner.pass(t0 + 16).await;
        h.runner.pass(t0 + 25).await;
        assert_eq!(creates(&h.rt), 2);
        let r = h.runs.borrow().clone();
        assert!(r.iter().all(|r| r.state.is_final()), "{r:?}");
        assert!(h.runner.state.last_due.is_empty());
    }

    #[tokio::test]
    async fn a_run_past_its_deadline_is_killed() {
        let dj = desired_job(
            &format!("j:\n  docker_image: {IMAGE}\n  deadline: 2s\n"),
            true,
        );
        let mut h = harness(vec![dj]);
        h.runner.pass(T).await;
        h.runner.pass(T + 1).await;
        assert_eq!(h.runs.borrow()[0].state, RunState::Running);
        h.runner.pass(T + 2).await;
        let r = h.runs.borrow().clone();
        assert_eq!(r[0].state, RunState::Failed);
        assert!(
            r[0].error.as_deref().unwrap().contains("deadline of 2s"),
            "{r:?}"
        );
        assert!(h.rt.containers().is_empty(), "killed and removed");
    }

    #[tokio::test]
    async fn an_image_that_cannot_be_pulled_fails_the_run() {
        let dj = desired_job("j:\n  docker_image: r:5000/missing:1\n", true);
        let mut h = harness(vec![dj]);
        h.runner.pass(T).await;
        let r = h.runs.borrow().clone();
        assert_eq!(r[0].state, RunState::Failed);
        assert!(
            r[0].error
                .as_deref()
                .unwrap()
                .contains("could not be pulled"),
            "{r:?}"
        );
        assert_eq!(r[0].started_at, 0, "it never started");
        assert_eq!(r[0].finished_at, T);
    }
}
