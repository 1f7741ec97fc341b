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

impl Observed {
    /// Running, and healthy when a healthcheck exists.
    pub fn is_ready(&self) -> bool {
        self.state == RunState::Running && matches!(self.health, None | Some(Health::Healthy))
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
            Some(o) if o.hash != w.hash => outdated.push((*w, *o)),
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
            containers: expand("a", &spec, 0, &node)
                .into_iter()
                .map(|c| DesiredContainer {
                    name: container_name("n", "a", c.replica),
                    hash: c.hash(),
                    spec: c,
                })
                .collect(),
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
        }
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
