//! Who to wake after a commit. A long-poll waits on the keys that can change its node's
//! desired state — each of the node's groups, the node itself, and "everyone" — and a commit
//! wakes only the keys its changes touch. A change to one group so costs a wake-up per member
//! of that group, not one per waiting agent in the fleet (100,000 polls re-checking their
//! revision for every heartbeat-sized change was most of the server's work at scale).
//!
//! Changes that are hard to map to nodes and rare (sites, jobs) wake everyone: a wake-up too
//! many costs a revision check, a wake-up missed would cost a change its latency until the
//! poll's timeout.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use gustavo_store::Change;
use tokio::sync::Notify;

use crate::state::Cluster;

/// A key waiters wait on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    All,
    Group(String),
    Node(String),
}

/// Every key some long-poll or stream waits on now, with its waiters.
#[derive(Default)]
pub struct Wakers {
    keys: DashMap<Key, HashMap<u64, Arc<Notify>>>,
    next: AtomicU64,
}

impl Wakers {
    /// Wakes whoever waits on `key` now; one who is busy finds the wake when it next waits.
    pub fn wake(&self, key: &Key) {
        if let Some(waiters) = self.keys.get(key) {
            for n in waiters.values() {
                n.notify_one();
            }
        }
    }

    /// How many keys are held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The keys whose waiters `change` may concern, read from the cluster *before* it is applied
/// (a deleted app's groups or a deleted deployment's node are gone after).
pub fn keys_of(c: &Cluster, change: &Change, out: &mut BTreeSet<Key>) {
    let groups = |out: &mut BTreeSet<Key>, gs: &[String]| {
        out.extend(gs.iter().cloned().map(Key::Group));
    };
    match change {
        Change::PutApp(a) => {
            groups(out, &a.groups);
            if let Some(old) = c.apps.get(&a.name) {
                groups(out, &old.groups);
            }
        }
        Change::DeleteApp(name) => {
            if let Some(old) = c.apps.get(name) {
                groups(out, &old.groups);
            }
        }
        Change::PutGroup(g) => {
            out.insert(Key::Group(g.name.clone()));
        }
        Change::DeleteGroup(name) => {
            out.insert(Key::Group(name.clone()));
        }
        // The node's own poll re-reads its groups when woken.
        Change::PutNode(n) => {
            out.insert(Key::Node(n.name.clone()));
        }
        Change::DeleteNode(name) => {
            out.insert(Key::Node(name.clone()));
        }
        Change::PutDeployment(d) => {
            out.insert(Key::Node(d.node.clone()));
            if let Some(old) = c.deployments.get(&d.name) {
                out.insert(Key::Node(old.node.clone()));
            }
        }
        Change::DeleteDeployment(name) => {
            if let Some(old) = c.deployments.get(name) {
                out.insert(Key::Node(old.node.clone()));
            }
        }
        Change::PutJob(_) | Change::DeleteJob(_) | Change::PutSite(_) | Change::DeleteSite(_) => {
            out.insert(Key::All);
        }
        // History, the outbox and watched hosts are in no node's desired state.
        Change::PutRevision(_)
        | Change::RevisionOutcome { .. }
        | Change::PutCallback(_)
        | Change::PutWatched(_)
        | Change::DeleteWatched(_) => {}
    }
}

/// What one long-poll or stream waits on: its node's groups, the node, and everyone. It
/// is registered under each key once, for as long as it lives, and has a wake-up of its
/// own: waiting again costs no shared list, and a wake that came while it was busy is kept
/// for its next wait.
pub struct Waiting<'a> {
    wakers: &'a Wakers,
    id: u64,
    keys: Vec<Key>,
    woken: Arc<Notify>,
}

impl<'a> Waiting<'a> {
    pub fn new(wakers: &'a Wakers, node: &str, groups: &[String]) -> Waiting<'a> {
        let mut keys = vec![Key::All, Key::Node(node.to_string())];
        keys.extend(groups.iter().cloned().map(Key::Group));
        let id = wakers.next.fetch_add(1, Ordering::Relaxed);
        let woken = Arc::new(Notify::new());
        for k in &keys {
            wakers
                .keys
                .entry(k.clone())
                .or_default()
                .insert(id, woken.clone());
        }
        Waiting {
            wakers,
            id,
            keys,
            woken,
        }
    }

    /// Resolves at the next wake of any of the keys since this waiting was made (at once
    /// when one came since the last call).
    pub async fn changed(&self) {
        self.woken.notified().await
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        for k in &self.keys {
            // Forgotten with its last waiter (a node that left, a group emptied).
            self.wakers.keys.remove_if_mut(k, |_, waiters| {
                waiters.remove(&self.id);
                waiters.is_empty()
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_reaches_the_waiters_of_its_key_only() {
        let w = Wakers::default();
        let a = Waiting::new(&w, "a", &["g1".into()]);
        let b = Waiting::new(&w, "b", &["g2".into()]);
        w.wake(&Key::Group("g1".into()));
        async fn woke(f: &Waiting<'_>) -> bool {
            tokio::time::timeout(std::time::Duration::from_millis(50), f.changed())
                .await
                .is_ok()
        }
        assert!(woke(&a).await);
        assert!(!woke(&a).await, "one wake wakes once");
        assert!(!woke(&b).await);
        w.wake(&Key::All);
        assert!(woke(&b).await);
        // A wake while nobody is waiting is kept for the next wait.
        w.wake(&Key::Node("b".into()));
        assert!(woke(&b).await);
        assert_eq!(w.len(), 5);
        drop(a);
        drop(b);
        // Nothing is kept once nobody waits.
        assert!(w.is_empty());
    }

    #[test]
    fn a_deleted_app_wakes_the_groups_it_had() {
        // App `a` in group `g`.
        let c = crate::state::tests::cluster();
        let mut keys = BTreeSet::new();
        keys_of(&c, &Change::DeleteApp("a".into()), &mut keys);
        assert_eq!(keys, BTreeSet::from([Key::Group("g".into())]));
    }
}
