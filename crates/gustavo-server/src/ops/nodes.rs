//! Nodes as people see them: list, get, remove, their containers and vitals, and the
//! cluster's counts.

use gustavo_model::access::Subject;
use gustavo_model::api::{Event, Node, NodeContainer, NodeStatus, NodeVitals, Stats};
use gustavo_model::schedule::{Score, Want, not_schedulable, score};
use gustavo_store::Change;

use super::{OpError, Ops, hidden};
use crate::now;

/// What `cordon` does to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cordon {
    Cordon,
    Drain,
    Uncordon,
}

/// Which nodes a listing covers: members of a group, one host, or all.
#[derive(Debug, Clone, Default)]
pub struct NodeFilter {
    pub group: Option<String>,
    pub host: Option<String>,
}

impl Ops {
    pub fn list_nodes(&self, who: &Subject, f: &NodeFilter) -> Vec<Node> {
        let c = self.shared.read();
        let t = now();
        c.filtered_nodes(f.group.as_deref(), f.host.as_deref())
            .filter(|n| who.can_read_node(&n.groups))
            .map(|n| c.node_view(n, t))
            .collect()
    }

    /// A node, to a person who may see one of its groups (`who` set) or to the node
    /// itself (`who` unset).
    pub fn get_node(&self, who: Option<&Subject>, name: &str) -> Result<Node, OpError> {
        let c = self.shared.read();
        let n = c
            .nodes
            .get(name)
            .filter(|n| who.is_none_or(|who| who.can_read_node(&n.groups)))
            .ok_or_else(|| hidden("node", name))?;
        Ok(c.node_view(n, now()))
    }

    /// Removes a node (admins only: the caller checks the role); its token dies with it.
    /// Returns the revision.
    pub async fn delete_node(&self, name: String) -> Result<u64, OpError> {
        let object = format!("node:{name}");
        let message = format!("{name} removed");
        let rev =
            self.shared
                .mutate(move |c, rev| {
                    let node = c.nodes.get(&name).ok_or_else(|| {
                        OpError::NotFound(format!("node `{name}` does not exist"))
                    })?;
                    let mut changes = c.touch_groups(&node.groups, rev);
                    if c.watched.contains_key(&name) {
                        changes.push(Change::DeleteWatched(name.clone()));
                    }
                    changes.push(Change::DeleteNode(name));
                    Ok((changes, rev))
                })
                .await?;
        self.shared.events.push("node", object, message);
        Ok(rev)
    }

    /// Every container the visible nodes reported, with the app's error when the container
    /// has none of its own.
    pub fn containers(&self, who: &Subject, f: &NodeFilter) -> Vec<NodeContainer> {
        let c = self.shared.read();
        let visible = |node: &str| {
            c.nodes
                .get(node)
                .is_some_and(|n| who.can_read_node(&n.groups))
        };
        c.containers(f.group.as_deref(), f.host.as_deref())
            .into_iter()
            .filter(|(node, _, _)| visible(node))
            .map(|(node, mut container, app_error)| {
                container.error = container.error.or(app_error);
                NodeContainer { node, container }
            })
            .collect()
    }

    pub fn vitals(&self, who: &Subject, f: &NodeFilter) -> Vec<NodeVitals> {
        let c = self.shared.read();
        let t = now();
        c.filtered_nodes(f.group.as_deref(), f.host.as_deref())
            .filter(|n| who.can_read_node(&n.groups))
            .map(|n| NodeVitals {
                node: n.name.clone(),
                status: c.shown_status(&n.name, t),
                vitals: c.live.get(&n.name).and_then(|l| l.vitals.clone()),
            })
            .collect()
    }

    /// Every visible node's placement score and its parts; with `app`, also why a node
    /// would not take one of that app's replicas. Best first.
    pub fn scores(&self, who: &Subject, app: Option<&str>) -> Result<Vec<Score>, OpError> {
        let c = self.shared.read();
        let app = match app {
            Some(name) => Some(
                c.apps
                    .get(name)
                    .filter(|a| who.can_read_app(&a.name, &a.groups))
                    .ok_or_else(|| hidden("app", name))?,
            ),
            None => None,
        };
        let views = self.shared.sched.views(&c);
        let mut out: Vec<Score> = views
            .iter()
            .filter(|v| {
                c.nodes
                    .get(&v.name)
                    .is_some_and(|n| who.can_read_node(&n.groups))
            })
            .map(|v| {
                let mut s = score(v, &self.shared.sched.weights);
                s.ineligible = match app {
                    Some(a) => Want {
                        groups: &a.groups,
                        replicas: a.spec.replicas.unwrap_or(0),
                        max_per_node: a.spec.max_per_node.unwrap_or(1),
                        selector: &a.spec.node_selector,
                    }
                    .refusal(v),
                    None => not_schedulable(v),
                };
                s
            })
            .collect();
        out.sort_by(|a, b| {
            a.ineligible
                .is_some()
                .cmp(&b.ineligible.is_some())
                .then(b.total.total_cmp(&a.total))
                .then(a.node.cmp(&b.node))
        });
        Ok(out)
    }

    /// Cordons a node (no new replicas; what it runs stays), drains it (cordoned, and the
    /// scheduler moves its replicas off one at a time, each running elsewhere before the
    /// old copy stops), or lifts both (admins only: the caller checks the role). Returns
    /// the revision, unchanged when the node already was so.
    pub async fn cordon(&self, name: String, mode: Cordon) -> Result<u64, OpError> {
        let name2 = name.clone();
        self.shared
            .mutate(move |c, rev| {
                let node = c
                    .nodes
                    .get(&name)
                    .ok_or_else(|| OpError::NotFound(format!("node `{name}` does not exist")))?;
                let (cordoned, draining) = match mode {
                    Cordon::Cordon => (true, node.draining),
                    Cordon::Drain => (true, true),
                    Cordon::Uncordon => (false, false),
                };
                if node.cordoned == cordoned && node.draining == draining {
                    return Ok((Vec::new(), c.revision));
                }
                let mut node = node.clone();
                node.cordoned = cordoned;
                node.draining = draining;
                node.revision = rev;
                Ok((vec![Change::PutNode(node)], rev))
            })
            .await
            .inspect(|_| {
                let what = match mode {
                    Cordon::Cordon => "cordoned: no new replicas",
                    Cordon::Drain => "draining: its replicas move off one at a time",
                    Cordon::Uncordon => "uncordoned: takes new replicas again",
                };
                self.shared
                    .events
                    .push("node", format!("node:{name2}"), format!("{name2} {what}"));
            })
    }

    /// Events after `after` that `who` may see, waiting up to `wait` (at most 60 s) for
    /// one when there is none yet.
    pub async fn events(
        &self,
        who: &Subject,
        after: u64,
        wait: std::time::Duration,
        limit: usize,
    ) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + wait.min(std::time::Duration::from_secs(60));
        let mut rx = self.shared.events.subscribe();
        let mut closing = self.shared.closing.subscribe();
        loop {
            rx.borrow_and_update();
            let visible = {
                let c = self.shared.read();
                self.shared
                    .events
                    .after(after, limit)
                    .into_iter()
                    .filter(|e| may_see(who, &c, &e.object))
                    .collect::<Vec<_>>()
            };
            if !visible.is_empty() || *closing.borrow_and_update() {
                return visible;
            }
            tokio::select! {
                r = tokio::time::timeout_at(deadline, rx.changed()) => match r {
                    Ok(Ok(())) => continue,
                    _ => return Vec::new(),
                },
                _ = closing.changed() => return Vec::new(),
            }
        }
    }

    /// The cluster's counts (admins only: the caller checks the role).
    pub fn stats(&self) -> Stats {
        let c = self.shared.read();
        let t = now();
        Stats {
            revision: c.revision,
            nodes: c.nodes.len(),
            ready: c
                .nodes
                .keys()
                .filter(|n| c.node_status(n, t) == NodeStatus::Ready)
                .count(),
            apps: c.apps.len(),
            groups: c.group_views().len(),
        }
    }
}

/// Whether `who` may see an event about `object`: a node of a group they may read, an app
/// they may read (a deleted app: by a grant on its name, or an admin).
fn may_see(who: &Subject, c: &crate::state::Cluster, object: &str) -> bool {
    match object.split_once(':') {
        Some(("node", n)) => c
            .nodes
            .get(n)
            .map_or(who.is_admin(), |n| who.can_read_node(&n.groups)),
        Some(("app", a)) => {
            let groups = c.apps.get(a).map(|a| a.groups.clone()).unwrap_or_default();
            who.can_read_app(a, &groups)
        }
        Some(("job", j)) => {
            let groups = c.jobs.get(j).map(|j| j.groups.clone()).unwrap_or_default();
            who.can_read_app(j, &groups)
        }
        _ => who.is_admin(),
    }
}
