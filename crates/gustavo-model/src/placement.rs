//! Placement: choose nodes for `N` replicas by filtering eligible nodes and ranking them by
//! an explicit score (design.md §2).
//!
//! The score is documented and configurable, unlike Samsung's (which rewarded busy CPUs and
//! ignored memory):
//!
//! ```text
//! score = w_cpu · free_cpu / cpu  +  w_mem · free_mem / mem  −  w_dist · distance
//! ```
//!
//! with `distance` in [0, 1] (0 = next to the requester). Each replica goes to the node with
//! the highest score that still fits it; the node's free resources then shrink by the
//! replica's request, so replicas spread by themselves. Ties go to the lower node index, so
//! the result is deterministic.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};

/// A node as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Capacity and what is free, in millicores and MB.
    pub cpu_milli: u64,
    pub free_cpu_milli: u64,
    pub memory_mb: u64,
    pub free_memory_mb: u64,
    /// 0 (close to the requester) … 1 (far).
    pub distance: f64,
    /// Only ready nodes take new work (pressured and tainted ones do not).
    pub schedulable: bool,
}

/// What one replica needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Request {
    pub cpu_milli: u64,
    pub memory_mb: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    pub cpu: f64,
    pub memory: f64,
    pub distance: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            cpu: 1.0,
            memory: 1.0,
            distance: 1.0,
        }
    }
}

/// A node's score with its current free resources.
pub fn score(c: &Candidate, w: &Weights) -> f64 {
    let frac = |free: u64, total: u64| {
        if total == 0 {
            0.0
        } else {
            free as f64 / total as f64
        }
    };
    w.cpu * frac(c.free_cpu_milli, c.cpu_milli) + w.memory * frac(c.free_memory_mb, c.memory_mb)
        - w.distance * c.distance.clamp(0.0, 1.0)
}

fn fits(c: &Candidate, r: &Request) -> bool {
    c.free_cpu_milli >= r.cpu_milli && c.free_memory_mb >= r.memory_mb
}

/// Is the node eligible at all: schedulable and carrying every selector label?
pub fn eligible(c: &Candidate, selector: &BTreeMap<String, String>) -> bool {
    c.schedulable && selector.iter().all(|(k, v)| c.labels.get(k) == Some(v))
}

#[derive(PartialEq)]
struct Ranked {
    score: f64,
    index: usize,
}

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        // Highest score first; on a tie, the lowest index.
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.index.cmp(&self.index))
    }
}

/// The outcome: replicas per node index, and how many found no room.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placement {
    pub assigned: BTreeMap<usize, u32>,
    pub unplaced: u32,
}

/// Places `replicas` copies of `request` on `nodes`. `nodes` is updated: free resources
/// shrink by what was placed, so several apps can be placed one after another.
pub fn place(
    replicas: u32,
    request: Request,
    selector: &BTreeMap<String, String>,
    weights: &Weights,
    nodes: &mut [Candidate],
) -> Placement {
    let mut heap: BinaryHeap<Ranked> = nodes
        .iter()
        .enumerate()
        .filter(|(_, c)| eligible(c, selector) && fits(c, &request))
        .map(|(index, c)| Ranked {
            score: score(c, weights),
            index,
        })
        .collect();
    let mut out = Placement::default();
    for _ in 0..replicas {
        let Some(best) = heap.pop() else {
            out.unplaced += 1;
            continue;
        };
        let c = &mut nodes[best.index];
        c.free_cpu_milli -= request.cpu_milli;
        c.free_memory_mb -= request.memory_mb;
        *out.assigned.entry(best.index).or_default() += 1;
        if fits(c, &request) {
            heap.push(Ranked {
                score: score(c, weights),
                index: best.index,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, free_cpu: u64, free_mem: u64, distance: f64) -> Candidate {
        Candidate {
            name: name.into(),
            labels: BTreeMap::new(),
            cpu_milli: 4000,
            free_cpu_milli: free_cpu,
            memory_mb: 4096,
            free_memory_mb: free_mem,
            distance,
            schedulable: true,
        }
    }

    #[test]
    fn prefers_free_and_near_nodes() {
        let mut nodes = vec![
            node("busy", 500, 4096, 0.0),
            node("idle", 4000, 4096, 0.0),
            node("far", 4000, 4096, 1.0),
        ];
        let p = place(
            1,
            Request {
                cpu_milli: 100,
                memory_mb: 64,
            },
            &BTreeMap::new(),
            &Weights::default(),
            &mut nodes,
        );
        assert_eq!(p.assigned, BTreeMap::from([(1, 1)]));
    }

    #[test]
    fn memory_counts_too() {
        // Samsung's formula ignored memory; ours does not.
        let mut nodes = vec![node("low-mem", 4000, 100, 0.0), node("ok", 3000, 4000, 0.0)];
        let p = place(
            1,
            Request::default(),
            &BTreeMap::new(),
            &Weights::default(),
            &mut nodes,
        );
        assert_eq!(p.assigned, BTreeMap::from([(1, 1)]));
    }

    #[test]
    fn spreads_and_respects_capacity() {
        let mut nodes = vec![node("a", 1000, 4096, 0.0), node("b", 1000, 4096, 0.0)];
        let p = place(
            5,
            Request {
                cpu_milli: 400,
                memory_mb: 0,
            },
            &BTreeMap::new(),
            &Weights::default(),
            &mut nodes,
        );
        assert_eq!(p.assigned, BTreeMap::from([(0, 2), (1, 2)]));
        assert_eq!(p.unplaced, 1);
        assert_eq!(nodes[0].free_cpu_milli, 200);
    }

    #[test]
    fn filters_unschedulable_and_unlabelled_nodes() {
        let mut tainted = node("tainted", 4000, 4096, 0.0);
        tainted.schedulable = false;
        let mut labelled = node("gpu", 1000, 1000, 0.5);
        labelled.labels.insert("gpu".into(), "yes".into());
        let mut nodes = vec![tainted, node("plain", 4000, 4096, 0.0), labelled];
        let selector = BTreeMap::from([("gpu".to_string(), "yes".to_string())]);
        let p = place(
            2,
            Request::default(),
            &selector,
            &Weights::default(),
            &mut nodes,
        );
        assert_eq!(p.assigned, BTreeMap::from([(2, 2)]));
    }
}
