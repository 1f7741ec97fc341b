//! The level-triggered reconcile loop.
//!
//! Triggers — a new desired state, a runtime event, the resync timer, an app's retry coming
//! due, a worker finishing — only wake the loop. Each pass lists what runs, plans every app
//! with [`plan_app`], and hands apps with work to a worker task, at most one per app, so an
//! app is never reconciled twice at once and a slow pull of one app never holds up another.
//! A worker's failure is that app's alone: it is reported with its error and retried with
//! exponential backoff, while every other app (and that app's old containers) keeps running.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use gustavo_model::api::{
    AppState, AppStatus, ContainerStatus, DesiredApp, DesiredState, StatusReport,
};
use gustavo_model::plan::{AppPlan, Observed, RunState, Step, plan_app};
use gustavo_model::spec::{ImageRef, NetworkMode};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::Instrument;

use crate::metrics::METRICS;
use crate::runtime::{Runtime, RuntimeError};

/// Tunables of the loop.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    /// A full relist at least this often, whatever else happens.
    pub resync: Duration,
    /// How long a rolling update waits for a new replica to be ready.
    pub ready_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            resync: Duration::from_secs(10),
            ready_timeout: Duration::from_secs(120),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// An app whose last attempt failed.
struct Failure {
    error: String,
    attempts: u32,
    retry_at: Instant,
    /// The desired container hashes the failure was about: a new spec retries at once.
    fingerprint: Vec<String>,
}

fn fingerprint(app: Option<&DesiredApp>) -> Vec<String> {
    app.map(|a| a.containers.iter().map(|c| c.hash.clone()).collect())
        .unwrap_or_default()
}

/// Carries out one app's plan, step by step. Images are made available before anything is
/// removed, so a missing image leaves the running version untouched.
async fn execute<R: Runtime>(
    rt: &R,
    node: &str,
    plan: AppPlan,
    ready_timeout: Duration,
) -> Result<(), RuntimeError> {
    for image in &plan.images {
        // `latest` moves: refresh it whenever a container is created from it (the rule
        // Kubernetes applies); a pinned tag or digest is pulled only when missing.
        let r = ImageRef::parse(image);
        let refresh = r.digest.is_none() && r.tag == "latest";
        let pulled = rt.ensure_image(image, refresh).await;
        METRICS.pull(pulled.is_ok());
        pulled?;
    }
    for step in plan.steps {
        match step {
            Step::Remove { id, name } => {
                tracing::info!(container = %name, "removing");
                rt.remove(&id).await.map_err(|e| e.naming(&name))?;
            }
            Step::Create(c) => {
                tracing::info!(container = %c.name, hash = %c.hash, "creating");
                rt.create(node, &c).await?;
            }
            Step::Start { id, name } => {
                tracing::info!(container = %name, "starting exited container");
                rt.start(&id).await.map_err(|e| e.naming(&name))?;
            }
            Step::WaitReady { name } => wait_ready(rt, node, &name, ready_timeout).await?,
        }
    }
    Ok(())
}

/// Waits until the named container runs (and is healthy, if it has a healthcheck).
async fn wait_ready<R: Runtime>(
    rt: &R,
    node: &str,
    name: &str,
    timeout: Duration,
) -> Result<(), RuntimeError> {
    let deadline = Instant::now() + timeout;
    loop {
        let list = rt.list(node).await?;
        let now = now_ms();
        match list.iter().find(|o| o.name == name) {
            Some(o) if o.is_ready_at(now) => return Ok(()),
            Some(o) if o.trouble(now).is_some() && o.state != RunState::Exited => {
                return Err(RuntimeError::Container {
                    name: name.into(),
                    reason: o.trouble(now).unwrap_or_default(),
                });
            }
            Some(o) if matches!(o.state, RunState::Exited | RunState::Dead) => {
                return Err(RuntimeError::Container {
                    name: name.into(),
                    reason: format!("exited with code {} before becoming ready", o.exit_code),
                });
            }
            None => {
                return Err(RuntimeError::Container {
                    name: name.into(),
                    reason: "disappeared during the rollout".into(),
                });
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(RuntimeError::Container {
                name: name.into(),
                reason: format!("not ready after {}s", timeout.as_secs()),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Unix milliseconds now (container start times are wall-clock).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// After an engine event, look once more this much later: a `docker kill` sends `kill`
/// and `die` a moment apart, both fold into one trigger, and the pass they cause can list
/// the container before the engine shows it exited.
const SETTLE: Duration = Duration::from_millis(500);

/// The reconcile loop of one node.
pub struct Reconciler<R: Runtime> {
    runtime: Arc<R>,
    node: String,
    config: ReconcileConfig,
    desired: watch::Receiver<Option<DesiredState>>,
    report: watch::Sender<StatusReport>,
    failures: HashMap<String, Failure>,
    busy: BTreeSet<String>,
    done_tx: mpsc::Sender<(String, Vec<String>, Result<(), RuntimeError>)>,
    done_rx: mpsc::Receiver<(String, Vec<String>, Result<(), RuntimeError>)>,
    /// The network names the desired state named when every app last converged.
    networks_named: Option<BTreeSet<String>>,
    /// When a pass must look again without any trigger: a container about to count as
    /// ready or stable, or the settle look after an engine event.
    recheck: Option<Instant>,
    /// Containers node pressure stopped, by name: left stopped until it starts them.
    held: watch::Receiver<BTreeSet<String>>,
    /// Passes in a row that could not list the engine's containers.
    unlisted: u32,
}

impl<R: Runtime> Reconciler<R> {
    pub fn new(
        runtime: Arc<R>,
        node: String,
        config: ReconcileConfig,
        desired: watch::Receiver<Option<DesiredState>>,
        report: watch::Sender<StatusReport>,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::channel(64);
        Reconciler {
            runtime,
            node,
            config,
            desired,
            report,
            failures: HashMap::new(),
            busy: BTreeSet::new(),
            done_tx,
            done_rx,
            networks_named: None,
            recheck: None,
            held: watch::channel(BTreeSet::new()).1,
            unlisted: 0,
        }
    }

    /// Leaves the containers named on `held` stopped (node pressure stopped them).
    pub fn with_held(mut self, held: watch::Receiver<BTreeSet<String>>) -> Self {
        self.held = held;
        self
    }

    /// Runs until the desired-state channel closes.
    pub async fn run(mut self) {
        let mut events = self.runtime.watch(&self.node);
        loop {
            let next_retry = self.failures.values().map(|f| f.retry_at).min();
            self.pass().await;
            let recheck = self.recheck.take();
            let resync = tokio::time::sleep(self.config.resync);
            let retry = async {
                match next_retry {
                    Some(t) => {
                        tokio::time::sleep_until(t.max(Instant::now() + Duration::from_millis(50)))
                            .await
                    }
                    None => std::future::pending().await,
                }
            };
            // Finished workers first: an engine event for a container a worker just started
            // usually arrives before the worker's own answer, and must not make the next
            // pass report the app as still busy.
            tokio::select! {
                biased;
                Some((app, fp, result)) = self.done_rx.recv() => self.finished(app, fp, result),
                r = self.desired.changed() => if r.is_err() { return },
                Ok(()) = self.held.changed() => {}
                Some(()) = events.recv() => {
                    // Events come in bursts (create, start…); the one-slot channel already
                    // folds them, so a pass runs at once, and at most once more per burst.
                    while events.try_recv().is_ok() {}
                    self.recheck_no_later(Instant::now() + SETTLE);
                }
                _ = resync => {}
                _ = retry => {}
                _ = async {
                    match recheck {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
    }

    fn recheck_no_later(&mut self, at: Instant) {
        self.recheck = Some(self.recheck.map_or(at, |r| r.min(at)));
    }

    fn finished(&mut self, app: String, fp: Vec<String>, result: Result<(), RuntimeError>) {
        self.busy.remove(&app);
        match result {
            Ok(()) => {
                self.failures.remove(&app);
            }
            Err(e) => {
                METRICS.runtime_error(&e);
                let attempts = self.failures.get(&app).map(|f| f.attempts + 1).unwrap_or(1);
                let delay = self
                    .config
                    .backoff_min
                    .saturating_mul(1 << attempts.min(16).saturating_sub(1))
                    .min(self.config.backoff_max);
                tracing::warn!(app = %app, error = %e, attempts, retry_in = ?delay, "reconcile failed");
                self.failures.insert(
                    app,
                    Failure {
                        error: e.to_string(),
                        attempts,
                        retry_at: Instant::now() + delay,
                        fingerprint: fp,
                    },
                );
            }
        }
    }

    /// One pass: list, plan, dispatch, report.
    async fn pass(&mut self) {
        let Some(desired) = self.desired.borrow_and_update().clone() else {
            // Never had a desired state (first start, server unreachable): touch nothing.
            return;
        };
        METRICS.passes.inc();
        let observed = match self.runtime.list(&self.node).await {
            Ok(o) => {
                self.unlisted = 0;
                o
            }
            Err(e) => {
                METRICS.error("list");
                tracing::warn!(error = %e, "cannot list containers");
                // Twice in a row (a resync apart): one engine call that fails under load
                // must not fail every app, and so halt a staged rollout.
                self.unlisted += 1;
                if self.unlisted >= 2 {
                    self.publish_unlisted(&desired, &e);
                }
                return;
            }
        };
        let held = self.held.borrow_and_update().clone();
        let mut by_app: BTreeMap<&str, Vec<Observed>> = BTreeMap::new();
        for orig in &observed {
            let mut o = orig.clone();
            if held.contains(&o.name) && o.state != RunState::Running {
                // Stopped by node pressure: to the planner it is as good as running, so
                // nothing starts it; a new spec still replaces it.
                o.state = RunState::Running;
                o.exit_code = 0;
                o.started_ms = 0;
            }
            by_app.entry(orig.app.as_str()).or_default().push(o);
        }
        let wanted: BTreeMap<&str, &DesiredApp> =
            desired.apps.iter().map(|a| (a.name.as_str(), a)).collect();
        let names: BTreeSet<&str> = wanted.keys().chain(by_app.keys()).copied().collect();
        let now = Instant::now();
        let mut idle = self.busy.is_empty();
        for name in names {
            if self.busy.contains(name) {
                continue;
            }
            let want = wanted.get(name).copied();
            let plan = plan_app(want, by_app.get(name).map(Vec::as_slice).unwrap_or(&[]));
            let fp = fingerprint(want);
            if plan.is_empty() {
                // Converged, whatever happened before.
                self.failures.remove(name);
                continue;
            }
            idle = false;
            if let Some(f) = self.failures.get(name)
                && f.fingerprint == fp
                && f.retry_at > now
            {
                continue;
            }
            self.busy.insert(name.to_string());
            let (rt, node, tx, timeout, app) = (
                self.runtime.clone(),
                self.node.clone(),
                self.done_tx.clone(),
                self.config.ready_timeout,
                name.to_string(),
            );
            let span = tracing::info_span!("reconcile", app = %app, node = %node);
            tokio::spawn(
                async move {
                    let result = execute(rt.as_ref(), &node, plan, timeout).await;
                    let _ = tx.send((app, fp, result)).await;
                }
                .instrument(span),
            );
        }
        let now = now_ms();
        if let Some(ms) = observed.iter().filter_map(|o| o.recheck_at_ms(now)).min() {
            self.recheck_no_later(Instant::now() + Duration::from_millis(ms.saturating_sub(now)));
        }
        self.publish(&desired, &observed, &held);
        if idle {
            self.prune_networks(&desired).await;
        }
    }

    /// Once every app has converged, removes the networks the desired state stopped naming
    /// since the last time (a steady node makes no extra engine calls). The first converged
    /// state after a start is usually the one cached on disk, so an app deleted while the
    /// agent was down still has its network cleaned up.
    async fn prune_networks(&mut self, desired: &DesiredState) {
        let keep: BTreeSet<String> = desired
            .apps
            .iter()
            .flat_map(|a| &a.containers)
            .filter_map(|c| match &c.spec.network {
                NetworkMode::Bridges(list) => Some(list.iter().cloned()),
                _ => None,
            })
            .flatten()
            .collect();
        if let Some(before) = &self.networks_named {
            let unused: BTreeSet<String> = before.difference(&keep).cloned().collect();
            if !unused.is_empty() {
                self.runtime.prune_networks(&unused).await;
            }
        }
        self.networks_named = Some(keep);
    }

    /// The engine cannot be listed (down, its socket gone) pass after pass: every app of the desired state
    /// is failed with that reason, so the server and a person see why nothing moves
    /// instead of a device that looks fine. What was last seen of the containers is kept;
    /// the next pass that lists reports as usual.
    fn publish_unlisted(&self, desired: &DesiredState, e: &crate::runtime::RuntimeError) {
        let error = format!("cannot list this device's containers: {e}");
        let apps: Vec<AppStatus> = desired
            .apps
            .iter()
            .map(|a| AppStatus {
                app: a.name.clone(),
                revision: a.revision,
                state: AppState::Failed,
                ready: 0,
                desired: a.containers.len() as u32,
                error: Some(error.clone()),
            })
            .collect();
        self.report.send_if_modified(|r| {
            let changed = r.apps != apps;
            if changed {
                r.apps = apps;
            }
            changed
        });
    }

    /// Builds the status report from what was observed and sends it if it changed.
    fn publish(&self, desired: &DesiredState, observed: &[Observed], held: &BTreeSet<String>) {
        let now = now_ms();
        let apps = desired
            .apps
            .iter()
            .map(|a| {
                let mine: Vec<&Observed> = observed.iter().filter(|o| o.app == a.name).collect();
                let ready = a
                    .containers
                    .iter()
                    .filter(|c| {
                        mine.iter()
                            .any(|o| o.name == c.name && o.hash == c.hash && o.is_ready_at(now))
                    })
                    .count() as u32;
                let desired_n = a.containers.len() as u32;
                let failure = self
                    .failures
                    .get(&a.name)
                    .filter(|f| f.fingerprint == fingerprint(Some(a)))
                    .map(|f| f.error.clone());
                // A container of the current spec in trouble (crash loop, failing
                // healthcheck, an exit that stays down) fails the app — unless a worker is
                // at it right now (starting an exited container, replacing it).
                let trouble = (!self.busy.contains(&a.name))
                    .then(|| {
                        a.containers
                            .iter()
                            .filter(|c| !held.contains(&c.name))
                            .find_map(|c| {
                                mine.iter()
                                    .find(|o| o.name == c.name && o.hash == c.hash)
                                    .and_then(|o| o.trouble(now))
                                    .map(|t| format!("container `{}`: {t}", c.name))
                            })
                    })
                    .flatten();
                let stopped = a
                    .containers
                    .iter()
                    .find(|c| held.contains(&c.name))
                    .map(|c| format!("container `{}` stopped by node pressure", c.name));
                let failure = failure.or(trouble);
                let state = if failure.is_some() {
                    AppState::Failed
                } else if ready == desired_n
                    && mine.len() as u32 == desired_n
                    && !self.busy.contains(&a.name)
                {
                    if desired_n == 0 {
                        AppState::Stopped
                    } else {
                        AppState::Running
                    }
                } else {
                    AppState::Progressing
                };
                AppStatus {
                    app: a.name.clone(),
                    revision: a.revision,
                    state,
                    ready,
                    desired: desired_n,
                    error: failure.or(stopped),
                }
            })
            .collect();
        let containers: Vec<ContainerStatus> = observed
            .iter()
            .map(|o| {
                let looping = o.crash_looping(now);
                let pressed = held.contains(&o.name) && o.state != RunState::Running;
                ContainerStatus {
                    app: o.app.clone(),
                    name: o.name.clone(),
                    id: o.id.chars().take(12).collect(),
                    image: o.image.clone(),
                    state: if pressed {
                        "stopped-by-pressure".to_string()
                    } else if looping {
                        "crashlooping".to_string()
                    } else {
                        o.state.as_str().to_string()
                    },
                    health: o.health.map(|h| format!("{h:?}").to_lowercase()),
                    since: o.created,
                    exit_code: (looping
                        || matches!(
                            o.state,
                            RunState::Exited | RunState::Dead | RunState::Restarting
                        ))
                    .then_some(o.exit_code),
                    restarts: o.restarts,
                    error: o.trouble(now).filter(|_| !pressed),
                }
            })
            .collect();
        METRICS.containers(containers.iter().map(|c| c.state.as_str()));
        METRICS.applied_revision.set(desired.revision);
        let report = StatusReport {
            applied_revision: desired.revision,
            apps,
            containers,
            jobs: Vec::new(),
        };
        self.report.send_if_modified(|r| {
            let changed = *r != report;
            if changed {
                *r = report;
            }
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimRuntime;
    use gustavo_model::api::DesiredContainer;
    use gustavo_model::desired::{NodeFacts, container_name, expand};
    use gustavo_model::spec::parse_one;

    const NODE: &str = "n1";

    fn app(name: &str, yaml_body: &str, revision: u64) -> DesiredApp {
        let spec = parse_one(&format!("{name}:\n{yaml_body}"), name).unwrap();
        let node = NodeFacts {
            name: NODE.into(),
            cpus: 2,
            memory_mb: 1024,
            labels: Default::default(),
        };
        DesiredApp {
            name: name.into(),
            revision,
            rolling_restart: spec.rolling_restart,
            priority: 0,
            critical: false,
            leased: false,
            containers: expand(name, &spec, 0, &node)
                .into_iter()
                .map(|c| DesiredContainer {
                    name: container_name(NODE, name, c.replica),
                    hash: c.hash(),
                    spec: c,
                })
                .collect(),
            template: None,
            replicas: Vec::new(),
        }
    }

    fn state(revision: u64, apps: Vec<DesiredApp>) -> Option<DesiredState> {
        Some(DesiredState::new(NODE, revision, apps))
    }

    struct Harness {
        rt: SimRuntime,
        desired: watch::Sender<Option<DesiredState>>,
        report: watch::Receiver<StatusReport>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn start(rt: SimRuntime, initial: Option<DesiredState>) -> Harness {
        let (desired, desired_rx) = watch::channel(initial);
        let (report_tx, report) = watch::channel(StatusReport::default());
        let config = ReconcileConfig {
            resync: Duration::from_millis(50),
            ready_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(100),
        };
        let r = Reconciler::new(
            Arc::new(rt.clone()),
            NODE.into(),
            config,
            desired_rx,
            report_tx,
        );
        Harness {
            rt,
            desired,
            report,
            task: tokio::spawn(r.run()),
        }
    }

    /// Waits until the latest report satisfies `f`.
    async fn until(h: &mut Harness, what: &str, f: impl Fn(&StatusReport) -> bool) -> StatusReport {
        let wait = async {
            loop {
                if f(&h.report.borrow_and_update()) {
                    return h.report.borrow().clone();
                }
                h.report.changed().await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out waiting for {what}; last report {:?}",
                    h.report.borrow()
                )
            })
    }

    fn app_state(r: &StatusReport, app: &str) -> Option<AppState> {
        r.apps.iter().find(|a| a.app == app).map(|a| a.state)
    }

    #[tokio::test]
    async fn converges_and_reports_running() {
        let rt = SimRuntime::new();
        rt.publish("x:latest");
        let mut h = start(
            rt,
            state(
                1,
                vec![app(
                    "a",
                    "  docker_image: x\n  containers_per: {server: 2}\n",
                    1,
                )],
            ),
        );
        let r = until(&mut h, "a running", |r| {
            app_state(r, "a") == Some(AppState::Running)
        })
        .await;
        assert_eq!(r.applied_revision, 1);
        assert_eq!(r.containers.len(), 2);
        assert_eq!(
            h.rt.log().iter().filter(|l| l.starts_with("pull")).count(),
            1
        );
    }

    #[tokio::test]
    async fn an_engine_that_cannot_be_listed_fails_every_app_until_it_is_back() {
        let rt = SimRuntime::new();
        rt.publish("x:latest");
        let mut h = start(rt, state(1, vec![app("a", "  docker_image: x\n", 1)]));
        until(&mut h, "a running", |r| {
            app_state(r, "a") == Some(AppState::Running)
        })
        .await;
        h.rt.set_down(true);
        let r = until(&mut h, "a failed", |r| {
            app_state(r, "a") == Some(AppState::Failed)
        })
        .await;
        let error = r.apps[0].error.clone().unwrap_or_default();
        assert!(error.contains("container runtime unavailable"), "{error}");
        assert_eq!(r.containers.len(), 1, "what was last seen is kept");
        h.rt.set_down(false);
        until(&mut h, "a running again", |r| {
            app_state(r, "a") == Some(AppState::Running)
        })
        .await;
    }

    #[tokio::test]
    async fn touches_nothing_without_a_desired_state() {
        let rt = SimRuntime::new();
        rt.publish("x:latest");
        // A container from an earlier life, and no desired state yet (server unreachable).
        let leftover = app("old", "  docker_image: x\n", 1);
        rt.ensure_image("x:latest", false).await.unwrap();
        rt.create(NODE, &leftover.containers[0]).await.unwrap();
        let h = start(rt, None);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            h.rt.containers().len(),
            1,
            "nothing may be removed before a desired state exists"
        );
    }

    #[tokio::test]
    async fn a_missing_image_fails_only_its_app_and_keeps_the_old_version() {
        let rt = SimRuntime::new();
        rt.publish("x:v1");
        let mut h = start(
            rt,
            state(
                1,
                vec![
                    app("a", "  docker_image: x:v1\n", 1),
                    app("b", "  docker_image: x:v1\n", 1),
                ],
            ),
        );
        until(&mut h, "both running", |r| {
            app_state(r, "a") == Some(AppState::Running)
                && app_state(r, "b") == Some(AppState::Running)
        })
        .await;
        let old = h.rt.containers();

        h.desired.send_replace(state(
            2,
            vec![
                app("a", "  docker_image: x:v2\n", 2),
                app("b", "  docker_image: x:v1\n", 1),
            ],
        ));
        let r = until(&mut h, "a failed", |r| {
            app_state(r, "a") == Some(AppState::Failed)
        })
        .await;
        let a = r.apps.iter().find(|s| s.app == "a").unwrap();
        assert!(a.error.as_deref().unwrap().contains("x:v2"), "{a:?}");
        assert_eq!(app_state(&r, "b"), Some(AppState::Running));
        assert_eq!(h.rt.containers(), old, "the running version is untouched");

        // Retries back off, and succeed once the image exists.
        h.rt.publish("x:v2");
        until(&mut h, "a running v2", |r| {
            app_state(r, "a") == Some(AppState::Running)
        })
        .await;
        assert!(h.rt.containers().iter().any(|c| c.image == "x:v2"));
    }

    #[tokio::test]
    async fn crashed_containers_are_started_and_deleted_apps_removed() {
        let rt = SimRuntime::new();
        rt.publish("x:latest");
        let mut h = start(rt, state(1, vec![app("a", "  docker_image: x\n", 1)]));
        until(&mut h, "running", |r| {
            app_state(r, "a") == Some(AppState::Running)
        })
        .await;
        let id = h.rt.containers()[0].id.clone();
        h.rt.kill("n1.a.1", 137);
        let restarted = async {
            while !h.rt.log().contains(&"start n1.a.1".to_string()) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), restarted)
            .await
            .expect("the crashed container is started");
        assert_eq!(h.rt.containers()[0].id, id, "started in place");
        assert_eq!(h.rt.containers()[0].state, RunState::Running);

        h.desired.send_replace(state(2, vec![]));
        until(&mut h, "removed", |r| {
            r.containers.is_empty() && r.applied_revision == 2
        })
        .await;
        assert!(h.rt.containers().is_empty());
    }

    #[tokio::test]
    async fn only_changed_apps_are_recreated() {
        let rt = SimRuntime::new();
        rt.publish("x:v1");
        let mut h = start(
            rt,
            state(
                1,
                vec![
                    app("a", "  docker_image: x:v1\n", 1),
                    app("b", "  docker_image: x:v1\n", 1),
                ],
            ),
        );
        until(&mut h, "both running", |r| {
            r.apps.iter().all(|a| a.state == AppState::Running) && r.apps.len() == 2
        })
        .await;
        let b_id =
            h.rt.containers()
                .iter()
                .find(|c| c.app == "b")
                .unwrap()
                .id
                .clone();
        h.desired.send_replace(state(
            2,
            vec![
                app("a", "  docker_image: x:v1\n  env_vars: {K: v}\n", 2),
                app("b", "  docker_image: x:v1\n", 1),
            ],
        ));
        until(&mut h, "a updated", |r| {
            r.apps
                .iter()
                .any(|a| a.app == "a" && a.revision == 2 && a.state == AppState::Running)
        })
        .await;
        assert_eq!(
            h.rt.containers().iter().find(|c| c.app == "b").unwrap().id,
            b_id
        );
    }
}
