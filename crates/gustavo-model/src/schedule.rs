//! Scheduling replicated apps: which node runs each of an app's `replicas`.
//!
//! Pure: the server gives the nodes as it sees them (groups, labels, capacity, last vitals,
//! liveness, cordon) and the placements it has; this returns the placements it should
//! have. The rules, in order:
//!
//! 1. **Eligible for new work**: in one of the app's groups, carrying every
//!    `node_selector` label, `ready`, and not cordoned.
//! 2. **Kept where it is**: a replica stays on its node while the node is still in the
//!    app's groups and matches the selector and is not *lost* (silent past the grace) —
//!    even if it is offline for a moment, cordoned, or scores worse than another node now.
//!    Scores drift all the time; moving running work for that is churn, not scheduling.
//! 3. **Placed where the score is best**: each missing replica goes to the eligible node
//!    with the fewest replicas of this app (spreading first), then the highest score, then
//!    the name (so the result is deterministic), never more than `max_per_node` on a node.
//!    A replica no node can take stays pending (absent from the map) until one can.
//! 4. Replicas above `replicas` are dropped, highest index first.
//!
//! **The score** (higher is better), with weights from the server's config:
//!
//! ```text
//! score = w_cpu · free_cores + w_memory · free_memory_GB + w_disk · free_disk_GB
//! free_cores = cores × idle fraction (1 − cpu% / 100)
//! ```
//!
//! from the node's last vitals; a node that has sent none yet counts its declared cores as
//! idle, its declared memory as free and no disk. Unlike Samsung's score, a busy CPU lowers
//! it and memory counts.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};

use serde::{Deserialize, Serialize};

/// Whether a node is heard from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Ready,
    /// Silent past the offline limit: no new work, but its replicas stay for now.
    Offline,
    /// Silent past the grace: its replicas are placed elsewhere.
    Lost,
}

/// What a node's last vitals say is free.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    pub cpu_percent: f64,
    pub memory_free_mb: u64,
    pub disk_free_mb: u64,
}

/// A node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub groups: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub cpus: u32,
    pub memory_mb: u64,
    pub usage: Option<Usage>,
    pub liveness: Liveness,
    pub cordoned: bool,
    /// Being drained (`gustavo nodes drain`): its replicas move off, one at a time.
    pub draining: bool,
    /// The pressure level the node reported: `tainted` takes no new work, `pressured` is
    /// ranked after every node that is not.
    pub pressure: crate::pressure::Level,
    /// A host watched through its Glances API with no agent on it: it reports vitals and
    /// pressure, and runs nothing Gustavo places.
    pub agentless: bool,
}

/// Taken off a pressured node's score, so it ranks after every node that is not.
pub const PRESSURED_PENALTY: f64 = 1e6;

/// The score's weights (server config `score-cpu`, `score-memory`, `score-disk`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Weights {
    /// Per free core.
    pub cpu: f64,
    /// Per free GB of memory.
    pub memory: f64,
    /// Per free GB of disk.
    pub disk: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            cpu: 1.0,
            memory: 1.0,
            disk: 0.01,
        }
    }
}

/// A node's score and its parts, as `gustavo nodes score` shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub node: String,
    pub free_cores: f64,
    pub free_memory_gb: f64,
    pub free_disk_gb: f64,
    pub total: f64,
    /// Why the node takes no new work (for this app, with `--for`), if it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ineligible: Option<String>,
}

pub fn score(n: &NodeView, w: &Weights) -> Score {
    let (idle, mem_mb, disk_mb) = match n.usage {
        Some(u) => (
            (1.0 - u.cpu_percent / 100.0).clamp(0.0, 1.0),
            u.memory_free_mb,
            u.disk_free_mb,
        ),
        None => (1.0, n.memory_mb, 0),
    };
    let free_cores = f64::from(n.cpus) * idle;
    let free_memory_gb = mem_mb as f64 / 1024.0;
    let free_disk_gb = disk_mb as f64 / 1024.0;
    Score {
        node: n.name.clone(),
        free_cores,
        free_memory_gb,
        free_disk_gb,
        total: w.cpu * free_cores + w.memory * free_memory_gb + w.disk * free_disk_gb
            - if n.pressure == crate::pressure::Level::Pressured {
                PRESSURED_PENALTY
            } else {
                0.0
            },
        ineligible: None,
    }
}

/// What the scheduler needs of a replicated app.
#[derive(Debug, Clone, PartialEq)]
pub struct Want<'a> {
    pub groups: &'a [String],
    pub replicas: u32,
    pub max_per_node: u32,
    pub selector: &'a BTreeMap<String, String>,
}

impl Want<'_> {
    fn fits(&self, n: &NodeView) -> bool {
        !n.agentless
            && n.groups.iter().any(|g| self.groups.contains(g))
            && self
                .selector
                .iter()
                .all(|(k, v)| n.labels.get(k) == Some(v))
    }

    /// Why `n` takes no new replica of this app, if it does not.
    pub fn refusal(&self, n: &NodeView) -> Option<String> {
        if n.agentless {
            return not_schedulable(n);
        }
        if !n.groups.iter().any(|g| self.groups.contains(g)) {
            return Some("not in the app's groups".into());
        }
        if let Some((k, v)) = self
            .selector
            .iter()
            .find(|(k, v)| n.labels.get(*k) != Some(*v))
        {
            return Some(format!("no label {k}={v}"));
        }
        not_schedulable(n)
    }
}

/// Why a watched host (no agent) takes no work.
pub const AGENTLESS: &str = "no agent (watched through Glances)";

/// Why `n` takes no new work at all, if it does not.
pub fn not_schedulable(n: &NodeView) -> Option<String> {
    if n.agentless {
        return Some(AGENTLESS.into());
    }
    match n.liveness {
        Liveness::Ready if n.cordoned => Some("cordoned".into()),
        Liveness::Ready if n.pressure == crate::pressure::Level::Tainted => {
            Some("tainted (node pressure)".into())
        }
        Liveness::Ready => None,
        Liveness::Offline => Some("offline".into()),
        Liveness::Lost => Some("lost".into()),
    }
}

/// The placements an app should have (replica index → node), given the ones it has.
pub fn place(
    want: &Want,
    current: &BTreeMap<u32, String>,
    nodes: &[NodeView],
    w: &Weights,
) -> BTreeMap<u32, String> {
    let by_name: BTreeMap<&str, &NodeView> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let max = want.max_per_node.max(1);
    let mut out: BTreeMap<u32, String> = BTreeMap::new();
    let mut count: BTreeMap<&str, u32> = BTreeMap::new();
    // Replicas on a tainted node move when another node has room, and stay otherwise.
    let mut tainted: BTreeMap<u32, String> = BTreeMap::new();
    // Kept first, so a kept replica is never displaced by a new one.
    for (&i, node) in current
        .iter()
        .filter(|(i, _)| **i >= 1 && **i <= want.replicas)
    {
        let Some(n) = by_name.get(node.as_str()) else {
            continue;
        };
        let c = count.entry(n.name.as_str()).or_default();
        if want.fits(n) && n.liveness != Liveness::Lost && *c < max {
            if n.pressure == crate::pressure::Level::Tainted {
                tainted.insert(i, node.clone());
                continue;
            }
            *c += 1;
            out.insert(i, node.clone());
        }
    }
    // Missing replicas, best node first: fewest of this app's replicas, then the highest
    // score, then the name. A heap keeps this O((nodes + replicas) · log nodes), so a
    // large app over a large fleet is placed in one pass.
    let mut heap: BinaryHeap<Slot> = nodes
        .iter()
        .filter(|n| want.refusal(n).is_none())
        .map(|n| Slot {
            count: count.get(n.name.as_str()).copied().unwrap_or(0),
            score: score(n, w).total,
            name: n.name.as_str(),
        })
        .filter(|s| s.count < max)
        .collect();
    // Missing replicas first, then those on tainted nodes.
    let missing: Vec<u32> = (1..=want.replicas)
        .filter(|i| !out.contains_key(i) && !tainted.contains_key(i))
        .chain(tainted.keys().copied())
        .collect();
    for i in missing {
        let Some(mut best) = heap.pop() else {
            break;
        };
        out.insert(i, best.name.to_string());
        best.count += 1;
        if best.count < max {
            heap.push(best);
        }
    }
    // No room elsewhere: they stay where they are.
    for (i, node) in tainted {
        out.entry(i).or_insert(node);
    }
    out
}

/// A node in the placement heap; the greatest is the best.
struct Slot<'a> {
    count: u32,
    score: f64,
    name: &'a str,
}

impl Ord for Slot<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .count
            .cmp(&self.count)
            .then(self.score.total_cmp(&other.score))
            .then(other.name.cmp(self.name))
    }
}

impl PartialOrd for Slot<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Slot<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Slot<'_> {}

/// One step of draining: moves at most one replica off a draining node at a time, and
/// only once the previous move has finished. A move places the replica elsewhere and
/// records the old node in `handoff`, where the old copy keeps running until `ready` says
/// the new one runs (make before break); then the handoff ends and the next replica moves.
/// A handoff whose old node is no longer draining, or whose replica is gone, just ends.
pub fn drain_step(
    want: &Want,
    placements: &BTreeMap<u32, String>,
    handoff: &BTreeMap<u32, String>,
    nodes: &[NodeView],
    w: &Weights,
    ready: impl Fn(u32, &str) -> bool,
) -> (BTreeMap<u32, String>, BTreeMap<u32, String>) {
    let draining = |name: &str| nodes.iter().any(|n| n.name == name && n.draining);
    let mut handoff: BTreeMap<u32, String> = handoff
        .iter()
        .filter(|(i, old)| {
            draining(old)
                && placements
                    .get(i)
                    .is_some_and(|new| new != *old && !ready(**i, new))
        })
        .map(|(i, o)| (*i, o.clone()))
        .collect();
    let mut placements = placements.clone();
    if let Some((&i, old)) = placements
        .iter()
        .find(|(_, n)| draining(n))
        .filter(|_| handoff.is_empty())
    {
        let old = old.clone();
        let mut without = placements.clone();
        without.remove(&i);
        let moved = place(want, &without, nodes, w);
        if let Some(new) = moved.get(&i).filter(|n| **n != old) {
            placements.insert(i, new.clone());
            handoff.insert(i, old);
        }
    }
    (placements, handoff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cpus: u32, cpu_percent: f64, mem_free_mb: u64) -> NodeView {
        NodeView {
            name: name.into(),
            groups: vec!["g".into()],
            labels: BTreeMap::new(),
            cpus,
            memory_mb: 4096,
            usage: Some(Usage {
                cpu_percent,
                memory_free_mb: mem_free_mb,
                disk_free_mb: 10_240,
            }),
            liveness: Liveness::Ready,
            cordoned: false,
            draining: false,
            pressure: Default::default(),
            agentless: false,
        }
    }

    #[test]
    fn a_watched_host_takes_nothing_and_says_why() {
        let mut n = node("glances-host", 4, 0.0, 4096);
        n.groups.clear();
        n.agentless = true;
        let selector = BTreeMap::new();
        let groups = vec!["g".to_string()];
        let want = Want {
            groups: &groups,
            replicas: 1,
            max_per_node: 1,
            selector: &selector,
        };
        assert_eq!(not_schedulable(&n).as_deref(), Some(AGENTLESS));
        assert_eq!(want.refusal(&n).as_deref(), Some(AGENTLESS));
        n.groups = groups.clone();
        let placed = place(&want, &BTreeMap::new(), &[n], &Weights::default());
        assert!(placed.is_empty(), "{placed:?}");
    }

    #[test]
    fn tainted_nodes_take_nothing_new_and_lose_replicas_only_to_a_node_with_room() {
        let g = vec!["g".to_string()];
        let sel = BTreeMap::new();
        let want = Want {
            groups: &g,
            replicas: 1,
            max_per_node: 1,
            selector: &sel,
        };
        let w = Weights::default();
        let mut a = node("a", 8, 0.0, 8192);
        a.pressure = crate::pressure::Level::Tainted;
        let mut b = node("b", 1, 90.0, 100);
        b.pressure = crate::pressure::Level::Pressured;
        let on_a = BTreeMap::from([(1, "a".to_string())]);
        // Only a tainted node: the replica stays; nothing new goes there.
        assert_eq!(place(&want, &on_a, std::slice::from_ref(&a), &w), on_a);
        assert!(place(&want, &BTreeMap::new(), std::slice::from_ref(&a), &w).is_empty());
        // A pressured node has room: the replica moves there, ranked last but taken.
        let got = place(&want, &on_a, &[a.clone(), b.clone()], &w);
        assert_eq!(got[&1], "b");
        // A ready node beats a pressured one whatever the score.
        let c = node("c", 1, 99.0, 10);
        let got = place(&want, &BTreeMap::new(), &[b, c], &w);
        assert_eq!(got[&1], "c");
    }

    #[test]
    fn drain_moves_one_replica_at_a_time_and_keeps_the_old_copy_until_the_new_runs() {
        let g = vec!["g".to_string()];
        let sel = BTreeMap::new();
        let w = Weights::default();
        let two = Want {
            max_per_node: 2,
            ..want(&g, 2, &sel)
        };
        let mut nodes = vec![node("a", 8, 0.0, 8192), node("b", 4, 0.0, 4096)];
        let p: BTreeMap<u32, String> = [(1, "a".to_string()), (2, "a".to_string())].into();
        nodes[0].cordoned = true;
        nodes[0].draining = true;
        let none = BTreeMap::new();
        // Step 1: replica 1 goes to b; a keeps its copy.
        let (p1, h1) = drain_step(&two, &p, &none, &nodes, &w, |_, _| false);
        assert_eq!(p1[&1], "b");
        assert_eq!(p1[&2], "a");
        assert_eq!(h1, [(1, "a".to_string())].into());
        // Not ready yet: nothing else moves.
        assert_eq!(
            drain_step(&two, &p1, &h1, &nodes, &w, |_, _| false),
            (p1.clone(), h1.clone())
        );
        // Ready: the handoff ends and replica 2 moves.
        let (p2, h2) = drain_step(&two, &p1, &h1, &nodes, &w, |_, _| true);
        assert_eq!(p2[&2], "b");
        assert_eq!(h2, [(2, "a".to_string())].into());
        let (p3, h3) = drain_step(&two, &p2, &h2, &nodes, &w, |_, _| true);
        assert!(p3.values().all(|n| n == "b") && h3.is_empty());
    }

    fn want<'a>(groups: &'a [String], n: u32, sel: &'a BTreeMap<String, String>) -> Want<'a> {
        Want {
            groups,
            replicas: n,
            max_per_node: 1,
            selector: sel,
        }
    }

    #[test]
    fn free_cpu_and_memory_win_and_busy_cpus_lose() {
        let w = Weights::default();
        let idle = score(&node("idle", 4, 10.0, 2048), &w);
        let busy = score(&node("busy", 4, 90.0, 2048), &w);
        assert!(idle.total > busy.total, "{idle:?} {busy:?}");
        assert!((idle.free_cores - 3.6).abs() < 1e-9);
        let roomy = score(&node("roomy", 4, 50.0, 8192), &w);
        let tight = score(&node("tight", 4, 50.0, 512), &w);
        assert!(roomy.total > tight.total);
    }

    #[test]
    fn replicas_go_to_distinct_best_nodes_and_stay_when_scores_drift() {
        let g = vec!["g".to_string()];
        let sel = BTreeMap::new();
        let w = Weights::default();
        let mut nodes = vec![
            node("a", 2, 90.0, 512),
            node("b", 4, 10.0, 4096),
            node("c", 4, 20.0, 4096),
        ];
        let p = place(&want(&g, 2, &sel), &BTreeMap::new(), &nodes, &w);
        assert_eq!(p.values().collect::<Vec<_>>(), ["b", "c"]);
        // Node a becomes the best: nothing moves.
        nodes[0] = node("a", 16, 0.0, 65536);
        assert_eq!(place(&want(&g, 2, &sel), &p, &nodes, &w), p);
        // Scaling up takes it.
        let p3 = place(&want(&g, 3, &sel), &p, &nodes, &w);
        assert_eq!(p3[&3], "a");
        // Scaling down drops the highest index.
        assert_eq!(place(&want(&g, 1, &sel), &p3, &nodes, &w).len(), 1);
    }

    #[test]
    fn lost_nodes_lose_their_replicas_offline_ones_keep_them() {
        let g = vec!["g".to_string()];
        let sel = BTreeMap::new();
        let w = Weights::default();
        let mut nodes = vec![node("a", 4, 0.0, 4096), node("b", 4, 50.0, 4096)];
        let p = place(&want(&g, 1, &sel), &BTreeMap::new(), &nodes, &w);
        assert_eq!(p[&1], "a");
        nodes[0].liveness = Liveness::Offline;
        assert_eq!(place(&want(&g, 1, &sel), &p, &nodes, &w)[&1], "a");
        nodes[0].liveness = Liveness::Lost;
        let moved = place(&want(&g, 1, &sel), &p, &nodes, &w);
        assert_eq!(moved[&1], "b");
        // Back again: the replica stays where it went (no flapping back).
        nodes[0].liveness = Liveness::Ready;
        assert_eq!(place(&want(&g, 1, &sel), &moved, &nodes, &w)[&1], "b");
    }

    #[test]
    fn selectors_groups_cordons_and_the_per_node_cap_filter() {
        let g = vec!["g".to_string()];
        let w = Weights::default();
        let mut nodes = vec![
            node("a", 4, 0.0, 4096),
            node("b", 4, 0.0, 4096),
            node("c", 4, 0.0, 4096),
        ];
        nodes[0].labels.insert("gpu".into(), "yes".into());
        nodes[1].cordoned = true;
        nodes[2].groups = vec!["other".into()];
        let sel: BTreeMap<String, String> = [("gpu".to_string(), "yes".to_string())].into();
        let p = place(&want(&g, 3, &sel), &BTreeMap::new(), &nodes, &w);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[&1], "a");
        let none = BTreeMap::new();
        let two = Want {
            max_per_node: 2,
            ..want(&g, 3, &none)
        };
        let p = place(&two, &BTreeMap::new(), &nodes, &w);
        assert_eq!(p.values().filter(|n| *n == "a").count(), 2);
        assert_eq!(p.len(), 2, "b is cordoned and c is not in the group: {p:?}");
        assert_eq!(
            want(&g, 1, &sel).refusal(&nodes[1]).as_deref(),
            Some("no label gpu=yes")
        );
        assert_eq!(not_schedulable(&nodes[1]).as_deref(), Some("cordoned"));
    }
}
