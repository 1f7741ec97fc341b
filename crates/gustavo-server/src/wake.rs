//! Who to wake after a commit. A long-poll waits on the keys that can change its node's
//! desired state — each of the node's groups, the node itself, and "everyone" — and a commit
//! wakes only the keys its changes touch. A change to one group so costs a wake-up per member
//! of that group, not one per waiting agent in the fleet (100,000 polls re-checking their
//! revision for every heartbeat-sized change was most of the server's work at scale).
//!
//! Changes that are hard to map to nodes and rare (sites, jobs) wake everyone: a wake-up too
//! many costs a revision check, a wake-up missed would cost a change its latency until the
//! poll's timeout.

use std::collections::BTreeSet;

use dashmap::DashMap;
use gustavo_store::Change;
use tokio::sync::watch;

use crate::state::Cluster;

/// A key waiters wait on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    All,
    Group(String),
    Node(String),
}

/// Every key some long-poll waits on now, with its channel.
#[derive(Default)]
pub struct Wakers {
    keys: DashMap<Key, watch::Sender<u64>>,
}

impl Wakers {
    /// A receiver that sees the next wake of `key` (not the ones before).
    pub fn subscribe(&self, key: Key) -> watch::Receiver<u64> {
        self.keys
            .entry(key)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes whoever waits on `key` now.
    pub fn wake(&self, key: &Key, revision: u64) {
        if let Some(tx) = self.keys.get(key) {
            tx.send_replace(revision);
        }
    }

    /// Forgets keys nobody waits on (a node that left, a group emptied).
    pub fn prune(&self, key: &Key) {
        self.keys.remove_if(key, |_, tx| tx.receiver_count() == 0);
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

/// What one long-poll waits on: its node's groups, the node, and everyone.
pub struct Waiting<'a> {
    wakers: &'a Wakers,
    keys: Vec<Key>,
    rx: Vec<watch::Receiver<u64>>,
}

impl<'a> Waiting<'a> {
    pub fn new(wakers: &'a Wakers, node: &str, groups: &[String]) -> Waiting<'a> {
        let mut keys = vec![Key::All, Key::Node(node.to_string())];
        keys.extend(groups.iter().cloned().map(Key::Group));
        let rx = keys.iter().map(|k| wakers.subscribe(k.clone())).collect();
        Waiting { wakers, keys, rx }
    }

    /// Resolves at the next wake of any of the keys (pending forever once every sender
    /// is gone, which happens only as the server stops).
    pub async fn changed(&mut self) {
        let all = self.rx.iter_mut().map(|rx| {
            Box::pin(async move {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            })
        });
        futures::future::select_all(all).await;
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.rx.clear();
        for k in &self.keys {
            if *k != Key::All {
                self.wakers.prune(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_reaches_the_waiters_of_its_key_only() {
        let w = Wakers::default();
        let mut a = Waiting::new(&w, "a", &["g1".into()]);
        let mut b = Waiting::new(&w, "b", &["g2".into()]);
        w.wake(&Key::Group("g1".into()), 7);
        async fn woke(f: &mut Waiting<'_>) -> bool {
            tokio::time::timeout(std::time::Duration::from_millis(50), f.changed())
                .await
                .is_ok()
        }
        assert!(woke(&mut a).await);
        assert!(!woke(&mut b).await);
        w.wake(&Key::All, 8);
        assert!(woke(&mut b).await);
        w.wake(&Key::Node("b".into()), 9);
        assert!(woke(&mut b).await);
        drop(a);
        drop(b);
        // Only "everyone" is kept once nobody waits.
        assert_eq!(w.len(), 1);
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
