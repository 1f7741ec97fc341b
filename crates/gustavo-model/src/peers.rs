//! Peer mode's table of peers (Samsung's Edge Orchestration without a server): who is a
//! candidate, who is a verified peer, who is dropped and forgotten, and how devices rank for
//! a service. Pure: the clock is an argument (seconds, any origin), so it is tested on a fake
//! one; the agent (`gustavo-agent/src/peer`) does discovery, TLS and the calls.
//!
//! - Discovery proposes a **candidate** (name, address, cluster fingerprint); one of another
//!   cluster, or with no name, is ignored.
//! - A candidate that answers the health check with its own name becomes a **peer**.
//! - A peer stops being one after [`MAX_FAILURES`] failed checks in a row or [`TTL_S`]
//!   seconds without an answer (the seed kept crashed devices until a goodbye packet); it is
//!   probed as a candidate again, and **forgotten** after [`CANDIDATE_TTL_S`] seconds of
//!   silence. A goodbye (the mDNS record withdrawn) forgets it at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Failed health checks in a row that drop a peer.
pub const MAX_FAILURES: u32 = 3;
/// A peer not heard from for this long is dropped, whatever discovery says.
pub const TTL_S: f64 = 10.0;
/// A candidate (new, or a dropped peer) silent this long is forgotten.
pub const CANDIDATE_TTL_S: f64 = 60.0;

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub addr: SocketAddr,
    pub verified: bool,
    /// When it last answered a health check (none: never).
    pub last_ok: Option<f64>,
    /// When discovery last proposed it.
    pub found: f64,
    pub failures: u32,
    pub score: Option<f64>,
}

impl Entry {
    fn heard(&self) -> f64 {
        self.last_ok.unwrap_or(self.found)
    }
}

/// What a health check of one entry gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// It answered with this name (and maybe its score).
    Answered {
        node: String,
        score: Option<f64>,
    },
    Failed,
}

/// A change worth logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Found(String),
    Verified(String),
    Dropped(String),
    Forgotten(String),
    /// It answered with another name.
    WrongName {
        node: String,
        answered: String,
    },
}

/// One row of `gustavo peer list`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerView {
    pub node: String,
    pub address: String,
    /// Its last score (higher is better).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Seconds since it last answered (0 for this device; `u64::MAX`: never).
    pub last_seen_s: u64,
    /// `self`, `peer` (answered over TLS) or `candidate` (not verified, or dropped).
    pub state: String,
}

/// This device's peers, by name.
#[derive(Debug, Clone, Default)]
pub struct Table {
    me: String,
    cluster: String,
    entries: BTreeMap<String, Entry>,
}

impl Table {
    pub fn new(me: &str, cluster: &str) -> Table {
        Table {
            me: me.to_string(),
            cluster: cluster.to_string(),
            entries: BTreeMap::new(),
        }
    }

    /// Discovery proposes `node` at `addr`; `None` when it is ignored.
    pub fn found(
        &mut self,
        node: &str,
        addr: SocketAddr,
        cluster: &str,
        now: f64,
    ) -> Option<Change> {
        if node.is_empty() || node == self.me || cluster != self.cluster {
            return None;
        }
        let new = !self.entries.contains_key(node);
        let e = self.entries.entry(node.to_string()).or_insert(Entry {
            addr,
            verified: false,
            last_ok: None,
            found: now,
            failures: 0,
            score: None,
        });
        e.addr = addr;
        e.found = now;
        new.then(|| Change::Found(node.to_string()))
    }

    /// Its record was withdrawn: forgotten at once.
    pub fn gone(&mut self, node: &str) -> Option<Change> {
        self.entries
            .remove(node)
            .map(|_| Change::Forgotten(node.to_string()))
    }

    /// Every entry to health-check: name and address.
    pub fn to_check(&self) -> Vec<(String, SocketAddr)> {
        self.entries
            .iter()
            .map(|(n, e)| (n.clone(), e.addr))
            .collect()
    }

    /// Takes the results of one round of checks, then drops and forgets by the rules.
    pub fn checked(&mut self, results: Vec<(String, Check)>, now: f64) -> Vec<Change> {
        let mut changes = Vec::new();
        for (node, check) in results {
            let Some(e) = self.entries.get_mut(&node) else {
                continue;
            };
            match check {
                Check::Answered {
                    node: answered,
                    score,
                } if answered == node => {
                    if !e.verified {
                        changes.push(Change::Verified(node.clone()));
                    }
                    e.verified = true;
                    e.last_ok = Some(now);
                    e.failures = 0;
                    e.score = score.or(e.score);
                }
                Check::Answered { node: answered, .. } => {
                    e.failures += 1;
                    changes.push(Change::WrongName {
                        node: node.clone(),
                        answered,
                    });
                }
                Check::Failed => e.failures += 1,
            }
        }
        for (node, e) in self.entries.iter_mut() {
            if e.verified && (e.failures >= MAX_FAILURES || now - e.heard() >= TTL_S) {
                e.verified = false;
                changes.push(Change::Dropped(node.clone()));
            }
        }
        self.entries.retain(|node, e| {
            let keep = e.verified || now - e.heard() < CANDIDATE_TTL_S;
            if !keep {
                changes.push(Change::Forgotten(node.clone()));
            }
            keep
        });
        changes
    }

    /// The verified peers: name and address.
    pub fn verified(&self) -> Vec<(String, SocketAddr)> {
        self.entries
            .iter()
            .filter(|(_, e)| e.verified)
            .map(|(n, e)| (n.clone(), e.addr))
            .collect()
    }

    pub fn is_verified(&self, node: &str) -> bool {
        self.entries.get(node).is_some_and(|e| e.verified)
    }

    /// The rows of `peer list`, after this device's own.
    pub fn views(&self, now: f64) -> Vec<PeerView> {
        self.entries
            .iter()
            .map(|(node, e)| PeerView {
                node: node.clone(),
                address: e.addr.to_string(),
                score: e.score,
                last_seen_s: e
                    .last_ok
                    .map(|at| (now - at).max(0.0) as u64)
                    .unwrap_or(u64::MAX),
                state: if e.verified { "peer" } else { "candidate" }.into(),
            })
            .collect()
    }
}

/// Devices by score, best first; ties go to the first name (so every device ranks alike).
pub fn rank<T>(mut scored: Vec<(String, T, f64)>) -> Vec<(String, T, f64)> {
    scored.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    scored
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 7422))
    }

    fn ok(node: &str) -> Check {
        Check::Answered {
            node: node.into(),
            score: Some(1.0),
        }
    }

    #[test]
    fn strangers_and_itself_are_ignored() {
        let mut t = Table::new("me", "c1");
        assert_eq!(t.found("me", addr(1), "c1", 0.0), None);
        assert_eq!(t.found("x", addr(2), "c2", 0.0), None);
        assert_eq!(t.found("", addr(3), "c1", 0.0), None);
        assert_eq!(
            t.found("a", addr(4), "c1", 0.0),
            Some(Change::Found("a".into()))
        );
        assert_eq!(
            t.found("a", addr(5), "c1", 1.0),
            None,
            "seen again, new address"
        );
        assert_eq!(t.to_check(), vec![("a".into(), addr(5))]);
    }

    #[test]
    fn a_candidate_is_a_peer_once_it_answers_with_its_name() {
        let mut t = Table::new("me", "c");
        t.found("a", addr(1), "c", 0.0);
        t.found("b", addr(2), "c", 0.0);
        let ch = t.checked(
            vec![
                ("a".into(), ok("a")),
                (
                    "b".into(),
                    Check::Answered {
                        node: "z".into(),
                        score: None,
                    },
                ),
            ],
            1.0,
        );
        assert_eq!(
            ch,
            vec![
                Change::Verified("a".into()),
                Change::WrongName {
                    node: "b".into(),
                    answered: "z".into()
                }
            ]
        );
        assert_eq!(t.verified(), vec![("a".into(), addr(1))]);
    }

    #[test]
    fn dropped_after_failures_or_silence_then_forgotten() {
        let mut t = Table::new("me", "c");
        t.found("a", addr(1), "c", 0.0);
        t.checked(vec![("a".into(), ok("a"))], 0.0);
        // Two failures: still a peer; the third drops it.
        assert!(t.checked(vec![("a".into(), Check::Failed)], 2.0).is_empty());
        assert!(t.checked(vec![("a".into(), Check::Failed)], 4.0).is_empty());
        assert_eq!(
            t.checked(vec![("a".into(), Check::Failed)], 6.0),
            vec![Change::Dropped("a".into())]
        );
        assert!(!t.is_verified("a"));
        // Back within the candidate TTL: a peer again.
        t.checked(vec![("a".into(), ok("a"))], 20.0);
        assert!(t.is_verified("a"));
        // Silence alone (no checks ran) drops it after the TTL…
        assert_eq!(t.checked(vec![], 30.0), vec![Change::Dropped("a".into())]);
        // …and forgets it after the candidate TTL.
        assert_eq!(t.checked(vec![], 79.0), vec![]);
        assert_eq!(t.checked(vec![], 80.0), vec![Change::Forgotten("a".into())]);
        assert!(t.to_check().is_empty());
    }

    #[test]
    fn a_goodbye_forgets_at_once() {
        let mut t = Table::new("me", "c");
        t.found("a", addr(1), "c", 0.0);
        assert_eq!(t.gone("a"), Some(Change::Forgotten("a".into())));
        assert_eq!(t.gone("a"), None);
    }

    #[test]
    fn ranking_is_by_score_then_name() {
        let r = rank(vec![
            ("c".to_string(), (), 2.0),
            ("b".to_string(), (), 3.0),
            ("a".to_string(), (), 2.0),
        ]);
        let names: Vec<&str> = r.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(names, vec!["b", "a", "c"]);
    }

    #[test]
    fn views_say_state_and_last_seen() {
        let mut t = Table::new("me", "c");
        t.found("a", addr(1), "c", 0.0);
        t.found("b", addr(2), "c", 0.0);
        t.checked(vec![("a".into(), ok("a"))], 5.0);
        let v = t.views(7.0);
        assert_eq!(v[0].state, "peer");
        assert_eq!(v[0].last_seen_s, 2);
        assert_eq!(v[1].state, "candidate");
        assert_eq!(v[1].last_seen_s, u64::MAX);
    }
}
