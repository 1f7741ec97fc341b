//! The reconcile diff: given what one app should run on this node and what the runtime shows,
//! decide the steps that make them equal. Pure, so every case is a microsecond unit test; the
//! agent's executor only carries the steps out.
//!
//! Rules, each a lesson from Nebula's worker:
//! - containers are compared by content hash, so only what changed is recreated;
//! - containers the node owns but nothing wants (deleted apps, scaled-down replicas,
//!   duplicates) are removed;
//! - an exited container with the right hash is started again, unless its restart policy
//!   says it may stay down;
//! - a rolling app replaces one replica at a time, waiting for each new one to be ready
//!   before touching the next, so at most one replica is ever missing.

use serde::{Deserialize, Serialize};

use crate::api::{DesiredApp, DesiredContainer};
use crate::spec::RestartPolicy;

/// A container of this node as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    pub id: String,
    pub name: String,
    pub app: String,
    pub replica: u32,
    pub hash: String,
    pub image: String,
    pub state: RunState,
    /// Docker health, when the container has a healthcheck.
    pub health: Option<Health>,
    pub exit_code: i64,
    /// Unix seconds the container was created.
    pub created: u64,
    /// How often the engine restarted it (its restart policy) since it was created.
    #[serde(default)]
    pub restarts: u32,
    /// Unix milliseconds it last started; 0 when the runtime does not say.
    #[serde(default)]
    pub started_ms: u64,
    /// For a container in trouble: its last log lines, or the healthcheck's last output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Its CPU limit now, in nano-CPUs (0 = none); node pressure changes it.
    #[serde(default)]
    pub nano_cpus: i64,
    /// Its memory and memory+swap limits now, in bytes (0 = none).
    #[serde(default)]
    pub memory: i64,
    #[serde(default)]
    pub memory_swap: i64,
    /// The networks it is attached to, by name, when the runtime says (`None`: it does
    /// not; nothing is judged by them then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Restarting,
    Paused,
    Created,
    Exited,
    Dead,
    Removing,
}

impl RunState {
    pub fn from_docker(s: &str) -> RunState {
        match s {
            "running" => RunState::Running,
            "restarting" => RunState::Restarting,
            "paused" => RunState::Paused,
            "created" => RunState::Created,
            "removing" => RunState::Removing,
            "dead" => RunState::Dead,
            _ => RunState::Exited,
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Restarting => "restarting",
            RunState::Paused => "paused",
            RunState::Created => "created",
            RunState::Exited => "exited",
            RunState::Dead => "dead",
            RunState::Removing => "removing",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

/// How long a container without a healthcheck must have run before it counts as ready: a
/// process that dies at once (a bad command, a missing config) is caught before anyone is
/// told it runs.
pub const MIN_READY_MS: u64 = 1_000;
/// Engine restarts that make a crash loop.
pub const CRASH_LOOP_RESTARTS: u32 = 3;
/// Up this long after its last restart, a container has left its crash loop: `restarts`
/// never goes down, so time running is what clears it.
pub const STABLE_MS: u64 = 30_000;

impl Observed {
    /// Running, and healthy when a healthcheck exists.
    pub fn is_ready(&self) -> bool {
        self.state == RunState::Running && matches!(self.health, None | Some(Health::Healthy))
    }

    fn up_ms(&self, now_ms: u64) -> Option<u64> {
        (self.state == RunState::Running && self.started_ms > 0)
            .then(|| now_ms.saturating_sub(self.started_ms))
    }

    /// Ready as a person means it: running (healthy, if it has a healthcheck), not in
    /// trouble, and — without a healthcheck — up for [`MIN_READY_MS`].
    pub fn is_ready_at(&self, now_ms: u64) -> bool {
        self.is_ready()
            && self.trouble(now_ms).is_none()
            && (self.health.is_some() || self.up_ms(now_ms).is_none_or(|up| up >= MIN_READY_MS))
    }

    /// In a crash loop: [`CRASH_LOOP_RESTARTS`] engine restarts and not yet up for
    /// [`STABLE_MS`] since the last one.
    pub fn crash_looping(&self, now_ms: u64) -> bool {
        self.restarts >= CRASH_LOOP_RESTARTS
            && (self.state == RunState::Restarting
                || self.up_ms(now_ms).is_some_and(|up| up < STABLE_MS))
    }

    /// What is wrong with the container, if anything, in words for a person:
    /// - a failing healthcheck (`unhealthy`), with its last output;
    /// - a crash loop: [`CRASH_LOOP_RESTARTS`] engine restarts and not yet up for
    ///   [`STABLE_MS`], with the last exit code when the engine shows one;
    /// - an exit with a non-zero code (a restart policy that keeps it down, or between
    ///   the exit and the agent's restart).
    ///
    /// The last log lines follow when the runtime gave them.
    pub fn trouble(&self, now_ms: u64) -> Option<String> {
        let what = if self.health == Some(Health::Unhealthy) {
            "unhealthy: the healthcheck fails".to_string()
        } else if self.crash_looping(now_ms) {
            if self.state == RunState::Restarting || self.exit_code != 0 {
                format!(
                    "crash loop: exited with code {}, restarted {} times",
                    self.exit_code, self.restarts
                )
            } else {
                format!("crash loop: restarted {} times", self.restarts)
            }
        } else if matches!(self.state, RunState::Exited | RunState::Dead) && self.exit_code != 0 {
            format!("exited with code {}", self.exit_code)
        } else {
            return None;
        };
        Some(match self.detail.as_deref().filter(|d| !d.is_empty()) {
            Some(d) if self.health == Some(Health::Unhealthy) => format!("{what}: {d}"),
            Some(d) => format!("{what}; last log: {d}"),
            None => what,
        })
    }

    /// When a pass should look at this container again to see it settle: when it will have
    /// run for [`MIN_READY_MS`], or for [`STABLE_MS`] after a crash loop.
    pub fn recheck_at_ms(&self, now_ms: u64) -> Option<u64> {
        let up = self.up_ms(now_ms)?;
        if self.health.is_none() && up < MIN_READY_MS {
            Some(self.started_ms + MIN_READY_MS)
        } else if self.restarts >= CRASH_LOOP_RESTARTS && up < STABLE_MS {
            Some(self.started_ms + STABLE_MS)
        } else {
            None
        }
    }
}

/// One thing to do. Steps run in order; `WaitReady` blocks until the named container is
/// ready (or gives up, which fails the app's pass and leaves the rest for the next one).
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Remove { id: String, name: String },
    Create(Box<DesiredContainer>),
    Start { id: String, name: String },
    WaitReady { name: String },
}

/// The plan for one app on this node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppPlan {
    /// Images every `Create` needs, pulled before anything is removed so a bad image never
    /// takes down the running version.
    pub images: Vec<String>,
    pub steps: Vec<Step>,
}

impl AppPlan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// Should an exited container with the right spec be started again?
fn wants_restart(policy: RestartPolicy, o: &Observed) -> bool {
    match policy {
        RestartPolicy::No => false,
        RestartPolicy::OnFailure => o.exit_code != 0,
        RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
    }
}

/// Whether `o` lost a network its spec attaches it to (disconnected, or the network
/// removed by hand): only a new container gets it back, with the network made again.
fn lacks_network(w: &DesiredContainer, o: &Observed) -> bool {
    match (&w.spec.network, &o.networks) {
        (crate::spec::NetworkMode::Bridges(want), Some(have)) => {
            want.iter().any(|n| !have.contains(n))
        }
        _ => false,
    }
}

/// Plans one app. `desired` is `None` when the node must not run the app at all.
/// `observed` holds this node's containers of this app (any order).
pub fn plan_app(desired: Option<&DesiredApp>, observed: &[Observed]) -> AppPlan {
    let mut plan = AppPlan::default();
    let wanted: &[DesiredContainer] = desired.map(|d| d.containers.as_slice()).unwrap_or(&[]);
    let rolling = desired.is_some_and(|d| d.rolling_restart);

    let mut observed: Vec<&Observed> = observed.iter().collect();
    observed.sort_by(|a, b| (a.replica, &a.name, &a.id).cmp(&(b.replica, &b.name, &b.id)));

    // Keep at most one container per wanted name: prefer one with the right hash, then a
    // running one. Everything else of this app is surplus.
    let mut keep: Vec<(&DesiredContainer, Option<&Observed>)> = Vec::new();
    let mut used: Vec<&str> = Vec::new();
    for w in wanted {
        let mut candidates: Vec<&&Observed> =
            observed.iter().filter(|o| o.name == w.name).collect();
        candidates.sort_by_key(|o| (o.hash != w.hash, o.state != RunState::Running));
        let pick = candidates.first().map(|o| **o);
        if let Some(o) = pick {
            used.push(&o.id);
        }
        keep.push((w, pick));
    }
    let surplus: Vec<&Observed> = observed
        .iter()
        .copied()
        .filter(|o| !used.contains(&o.id.as_str()))
        .collect();

    let mut missing = Vec::new();
    let mut outdated = Vec::new();
    for (w, o) in &keep {
        match o {
            None => missing.push(*w),
            Some(o) if o.hash != w.hash || lacks_network(w, o) => outdated.push((*w, *o)),
            Some(o) => match o.state {
                RunState::Exited | RunState::Created | RunState::Dead
                    if wants_restart(w.spec.restart, o) =>
                {
                    if o.state == RunState::Dead {
                        outdated.push((*w, *o));
                    } else {
                        plan.steps.push(Step::Start {
                            id: o.id.clone(),
                            name: o.name.clone(),
                        });
                    }
                }
                _ => {}
            },
        }
    }

    for w in missing
        .iter()
        .copied()
        .chain(outdated.iter().map(|(w, _)| *w))
    {
        if !plan.images.contains(&w.spec.image) {
            plan.images.push(w.spec.image.clone());
        }
    }

    for o in &surplus {
        plan.steps.push(Step::Remove {
            id: o.id.clone(),
            name: o.name.clone(),
        });
    }
    for w in &missing {
        plan.steps.push(Step::Create(Box::new((*w).clone())));
        if rolling {
            plan.steps.push(Step::WaitReady {
                name: w.name.clone(),
            });
        }
    }
    if rolling {
        for (w, o) in &outdated {
            plan.steps.push(Step::Remove {
                id: o.id.clone(),
                name: o.name.clone(),
            });
            plan.steps.push(Step::Create(Box::new((*w).clone())));
            plan.steps.push(Step::WaitReady {
                name: w.name.clone(),
            });
        }
    } else {
        for (_, o) in &outdated {
            plan.steps.push(Step::Remove {
                id: o.id.clone(),
                name: o.name.clone(),
            });
        }
        for (w, _) in &outdated {
            plan.steps.push(Step::Create(Box::new((*w).clone())));
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{NodeFacts, container_name, expand};
    use crate::spec::parse_one;

    fn desired(yaml: &str) -> DesiredApp {
        let spec = parse_one(yaml, "a").unwrap();
        let node = NodeFacts {
            name: "n".into(),
            cpus: 2,
            memory_mb: 512,
            labels: Default::default(),
        };
        DesiredApp {
            name: "a".into(),
            revision: 1,
            rolling_restart: spec.rolling_restart,
            priority: 0,
            critical: false,
            leased: false,
            containers: expand("a", &spec, 0, &node)
                .into_iter()
                .map(|c| DesiredContainer {
                    name: container_name("n", "a", c.replica),
                    hash: c.hash(),
                    spec: c,
                })
                .collect(),
            template: None,
            replicas: Vec::new(),
        }
    }

    fn running(d: &DesiredContainer, id: &str) -> Observed {
        Observed {
            id: id.into(),
            name: d.name.clone(),
            app: "a".into(),
            replica: d.spec.replica,
            hash: d.hash.clone(),
            image: d.spec.image.clone(),
            state: RunState::Running,
            health: None,
            exit_code: 0,
            created: 0,
            restarts: 0,
            nano_cpus: 0,
            memory: 0,
            memory_swap: 0,
            started_ms: 0,
            detail: None,
            networks: None,
        }
    }

    #[test]
    fn a_container_that_dies_at_once_is_never_ready() {
        let d = desired(THREE);
        let mut o = running(&d.containers[0], "1");
        o.started_ms = 10_000;
        // Just started: running, but not ready until it has stayed up a moment.
        assert!(o.is_ready() && !o.is_ready_at(10_200));
        assert_eq!(o.recheck_at_ms(10_200), Some(10_000 + MIN_READY_MS));
        assert!(o.is_ready_at(10_000 + MIN_READY_MS));
        // Unknown start time (a runtime that does not say): ready when running.
        o.started_ms = 0;
        assert!(o.is_ready_at(1));
    }

    #[test]
    fn crash_loops_are_named_with_exit_code_and_log_and_clear_when_stable() {
        let d = desired(THREE);
        let mut o = running(&d.containers[0], "1");
        o.state = RunState::Restarting;
        o.exit_code = 3;
        o.restarts = 1;
        assert_eq!(o.trouble(0), None, "one restart is not a loop yet");
        o.restarts = 5;
        o.detail = Some("config missing".into());
        assert_eq!(
            o.trouble(0).unwrap(),
            "crash loop: exited with code 3, restarted 5 times; last log: config missing"
        );
        // Briefly up between two crashes: still a loop, and not ready.
        o.state = RunState::Running;
        o.exit_code = 0;
        o.started_ms = 100_000;
        assert!(
            o.trouble(101_500)
                .unwrap()
                .starts_with("crash loop: restarted 5 times")
        );
        assert!(!o.is_ready_at(101_500));
        assert_eq!(o.recheck_at_ms(101_500), Some(100_000 + STABLE_MS));
        // Up for STABLE_MS: the loop is over, whatever the restart count says.
        assert_eq!(o.trouble(100_000 + STABLE_MS), None);
        assert!(o.is_ready_at(100_000 + STABLE_MS));
    }

    #[test]
    fn exits_and_failing_healthchecks_are_trouble() {
        let d = desired(THREE);
        let mut o = running(&d.containers[0], "1");
        o.state = RunState::Exited;
        o.exit_code = 0;
        assert_eq!(o.trouble(0), None, "a clean exit is not an error");
        o.exit_code = 137;
        assert_eq!(o.trouble(0).unwrap(), "exited with code 137");
        let mut h = running(&d.containers[0], "2");
        h.health = Some(Health::Unhealthy);
        h.detail = Some("curl: connection refused".into());
        assert_eq!(
            h.trouble(0).unwrap(),
            "unhealthy: the healthcheck fails: curl: connection refused"
        );
        assert!(!h.is_ready_at(0));
    }

    const THREE: &str = "a:\n  docker_image: x\n  containers_per: {server: 3}\n";

    #[test]
    fn nothing_to_do_when_everything_matches() {
        let d = desired(THREE);
        let obs: Vec<_> = d
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| running(c, &i.to_string()))
            .collect();
        assert!(plan_app(Some(&d), &obs).is_empty());
    }

    #[test]
    fn a_container_that_lost_its_network_is_replaced() {
        let d = desired("a:\n  docker_image: x\n  networks: [front, back]\n");
        let mut o = running(&d.containers[0], "1");
        // A runtime that does not say: nothing judged.
        assert!(plan_app(Some(&d), std::slice::from_ref(&o)).is_empty());
        o.networks = Some(vec!["back".into(), "front".into()]);
        assert!(plan_app(Some(&d), std::slice::from_ref(&o)).is_empty());
        o.networks = Some(vec!["back".into()]);
        let p = plan_app(Some(&d), std::slice::from_ref(&o));
        assert!(
            p.steps.iter().any(|s| matches!(s, Step::Create(_)))
                && p.steps.iter().any(|s| matches!(s, Step::Remove { .. })),
            "{p:?}"
        );
    }

    #[test]
    fn creates_missing_and_pulls_first() {
        let d = desired(THREE);
        let p = plan_app(Some(&d), &[]);
        assert_eq!(p.images, vec!["x:latest"]);
        assert_eq!(
            p.steps
                .iter()
                .filter(|s| matches!(s, Step::Create(_)))
                .count(),
            3
        );
    }

    #[test]
    fn removes_everything_of_a_deleted_app() {
        let d = desired(THREE);
        let obs: Vec<_> = d
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| running(c, &i.to_string()))
            .collect();
        let p = plan_app(None, &obs);
        assert!(p.images.is_empty());
        assert_eq!(p.steps.len(), 3);
        assert!(p.steps.iter().all(|s| matches!(s, Step::Remove { .. })));
    }

    #[test]
    fn rolling_update_replaces_one_at_a_time() {
        let old = desired(THREE);
        let obs: Vec<_> = old
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| running(c, &i.to_string()))
            .collect();
        let new = desired(
            "a:\n  docker_image: x\n  containers_per: {server: 3}\n  rolling_restart: true\n  env_vars: {V: \"2\"}\n",
        );
        let p = plan_app(Some(&new), &obs);
        let kinds: Vec<&str> = p
            .steps
            .iter()
            .map(|s| match s {
                Step::Remove { .. } => "rm",
                Step::Create(_) => "create",
                Step::WaitReady { .. } => "wait",
                Step::Start { .. } => "start",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "rm", "create", "wait", "rm", "create", "wait", "rm", "create", "wait"
            ]
        );
    }

    #[test]
    fn plain_update_replaces_all_together() {
        let old = desired(THREE);
        let obs: Vec<_> = old
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| running(c, &i.to_string()))
            .collect();
        let new = desired("a:\n  docker_image: y\n  containers_per: {server: 3}\n");
        let p = plan_app(Some(&new), &obs);
        assert_eq!(p.images, vec!["y:latest"]);
        assert!(matches!(p.steps[0], Step::Remove { .. }));
        assert!(matches!(p.steps[5], Step::Create(_)));
    }

    #[test]
    fn exited_containers_follow_restart_policy() {
        let d = desired(THREE);
        let mut o = running(&d.containers[0], "x");
        o.state = RunState::Exited;
        o.exit_code = 137;
        let p = plan_app(Some(&desired("a:\n  docker_image: x\n")), &[o.clone()]);
        assert_eq!(
            p.steps,
            vec![Step::Start {
                id: "x".into(),
                name: o.name.clone()
            }]
        );

        let no = desired("a:\n  docker_image: x\n  restart: \"no\"\n");
        let mut o2 = running(&no.containers[0], "y");
        o2.state = RunState::Exited;
        assert!(plan_app(Some(&no), &[o2.clone()]).is_empty());

        let onf = desired("a:\n  docker_image: x\n  restart: on-failure\n");
        let mut o3 = running(&onf.containers[0], "z");
        o3.state = RunState::Exited;
        o3.exit_code = 0;
        assert!(plan_app(Some(&onf), &[o3]).is_empty());
    }

    #[test]
    fn duplicates_and_scaled_down_replicas_go() {
        let d = desired(THREE);
        let mut obs: Vec<_> = d
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| running(c, &i.to_string()))
            .collect();
        let mut dup = running(&d.containers[0], "dup");
        dup.hash = "stale".into();
        obs.push(dup);
        let one = desired("a:\n  docker_image: x\n");
        let p = plan_app(Some(&one), &obs);
        let removed: Vec<_> = p
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Remove { id, .. } => Some(id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(removed.len(), 3, "{removed:?}");
        assert!(removed.contains(&"dup"));
        assert!(!removed.contains(&"0"));
    }
}
