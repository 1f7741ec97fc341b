//! Who to wake after a commit. A long-poll waits on the keys that can change its node's
//! desired state — each of the node's groups, the node itself, and "everyone" — and a commit
//! wakes only the keys its changes touch. A change to one group so costs a wake-up per member
//! of that group, not one per waiting agent in the fleet (100,000 polls re-checking their
//! revision for every heartbeat-sized change was most of the server's work at scale).
//!
//! Changes that are hard to map to nodes and rare (sites, jobs) wake everyone: a wake-up too
//! many costs a revision check, a wake-up missed would cost a change its latency until the
//! poll's timeout.
//!
//! Once the server runs ([`Wakers::pace`]), the waiters of a commit are woken by a thread of
//! their own, a chunk at a time, keeping the runtime's global queue short. Woken from outside
//! the runtime, every waiter's task goes to that queue; 100,000 at once made it seconds long,
//! and whatever the runtime moved there behind them — a person's API call, when a worker's
//! own queue overflowed — waited seconds too (BENCHMARKS.md, "Eighth session").

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

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

/// Waiters woken at a time by the pacing thread, and how many tasks may wait in the
/// runtime's global queue before it wakes more: at ~35 µs a task on one core, what the queue
/// holds is run within ~40 ms.
const CHUNK: usize = 512;
const QUEUED_AT_MOST: usize = 512;

/// Every key some long-poll or stream waits on now, with its waiters.
#[derive(Default)]
pub struct Wakers {
    keys: DashMap<Key, HashMap<u64, Arc<Notify>>>,
    next: AtomicU64,
    /// The pacing thread, once the server runs.
    paced: OnceLock<mpsc::Sender<Vec<Arc<Notify>>>>,
}

impl Wakers {
    /// Wakes whoever waits on any of `keys` now (or has the pacing thread do it soon); one
    /// who is busy finds the wake when it next waits.
    pub fn wake<'k>(&self, keys: impl IntoIterator<Item = &'k Key>) {
        let mut all = Vec::new();
        for key in keys {
            if let Some(waiters) = self.keys.get(key) {
                all.extend(waiters.values().cloned());
            }
        }
        if all.is_empty() {
            return;
        }
        // Without the pacing thread (not started, or gone), at once.
        let all = match self.paced.get() {
            Some(paced) => match paced.send(all) {
                Ok(()) => return,
                Err(mpsc::SendError(all)) => all,
            },
            None => all,
        };
        all.iter().for_each(|n| n.notify_one());
    }

    /// From now on, wakes are made by a thread of their own, [`CHUNK`] waiters at a time,
    /// each chunk once `runtime`'s global queue holds at most [`QUEUED_AT_MOST`] tasks, the
    /// commit with the fewest waiters left first. The thread ends with these wakers.
    pub fn pace(&self, runtime: tokio::runtime::Handle) -> std::io::Result<()> {
        let (tx, rx) = mpsc::channel::<Vec<Arc<Notify>>>();
        std::thread::Builder::new()
            .name("gustavo-wakes".into())
            .spawn(move || {
                let queued = || runtime.metrics().global_queue_depth();
                let mut commits = Commits::default();
                loop {
                    if commits.is_empty() {
                        match rx.recv() {
                            Ok(waiters) => commits.add(waiters),
                            Err(_) => return,
                        }
                    }
                    while let Ok(waiters) = rx.try_recv() {
                        commits.add(waiters);
                    }
                    while queued() > QUEUED_AT_MOST {
                        std::thread::sleep(Duration::from_micros(500));
                    }
                    commits.next_chunk().iter().for_each(|n| n.notify_one());
                }
            })?;
        // A second call keeps the first thread; this one's ends at once with its channel.
        let _ = self.paced.set(tx);
        Ok(())
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
        Change::PutJob(_)
        | Change::DeleteJob(_)
        | Change::PutSite(_)
        | Change::DeleteSite(_)
        | Change::PutSettings(_) => {
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

/// The waiters of the commits the pacing thread has yet to wake, each commit's in order.
#[derive(Default)]
struct Commits(Vec<std::vec::IntoIter<Arc<Notify>>>);

impl Commits {
    fn add(&mut self, waiters: Vec<Arc<Notify>>) {
        self.0.push(waiters.into_iter());
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Up to [`CHUNK`] waiters of the commit with the fewest left: a change to one node (a
    /// client's deployment) does not wait behind a change to the whole fleet.
    fn next_chunk(&mut self) -> Vec<Arc<Notify>> {
        let Some(i) = (0..self.0.len()).min_by_key(|&i| self.0[i].len()) else {
            return Vec::new();
        };
        let chunk: Vec<_> = self.0[i].by_ref().take(CHUNK).collect();
        if self.0[i].len() == 0 {
            self.0.swap_remove(i);
        }
        chunk
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

    /// [`Waiting::changed`] as a future of its own, to be kept across many waits: once
    /// polled it stays on the wake-up's list until it resolves or is dropped, where one
    /// made anew for every wait joins and leaves that list each time.
    pub fn next_change(&self) -> tokio::sync::futures::OwnedNotified {
        self.woken.clone().notified_owned()
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

    /// Whether `wait` resolves within 50 ms.
    async fn resolves(wait: impl std::future::Future<Output = ()>) -> bool {
        tokio::time::timeout(std::time::Duration::from_millis(50), wait)
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_wake_reaches_the_waiters_of_its_key_only() {
        let w = Wakers::default();
        let a = Waiting::new(&w, "a", &["g1".into()]);
        let b = Waiting::new(&w, "b", &["g2".into()]);
        w.wake([&Key::Group("g1".into())]);
        assert!(resolves(a.changed()).await);
        assert!(!resolves(a.changed()).await, "one wake wakes once");
        assert!(!resolves(b.changed()).await);
        w.wake([&Key::All]);
        assert!(resolves(b.changed()).await);
        // A wake while nobody is waiting is kept for the next wait.
        w.wake([&Key::Node("b".into())]);
        assert!(resolves(b.changed()).await);
        assert_eq!(w.len(), 5);
        drop(a);
        drop(b);
        // Nothing is kept once nobody waits.
        assert!(w.is_empty());
    }

    /// A wait kept across turns (a stream's) sees a wake that came while it was not being
    /// polled, and a wake before the next wait is made is kept for that one.
    #[tokio::test]
    async fn a_kept_wait_misses_no_wake() {
        let w = Wakers::default();
        let a = Waiting::new(&w, "a", &["g".into()]);
        let mut next = std::pin::pin!(a.next_change());
        assert!(futures::poll!(next.as_mut()).is_pending());
        // Woken while nobody polls it (the stream busy with a line).
        w.wake([&Key::Group("g".into())]);
        assert!(resolves(next).await);
        // Woken between one wait and the next.
        w.wake([&Key::Node("a".into())]);
        assert!(resolves(a.next_change()).await);
        assert!(!resolves(a.next_change()).await, "one wake wakes once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn paced_wakes_reach_every_waiter() {
        let w = Wakers::default();
        w.pace(tokio::runtime::Handle::current()).unwrap();
        // More waiters than a chunk, so the wake takes several.
        let names: Vec<String> = (0..CHUNK * 3 + 7).map(|i| format!("n{i}")).collect();
        let waiting: Vec<Waiting<'_>> = names
            .iter()
            .map(|n| Waiting::new(&w, n, &["g".into()]))
            .collect();
        w.wake([&Key::Group("g".into()), &Key::Node("n0".into())]);
        for wt in &waiting {
            tokio::time::timeout(std::time::Duration::from_secs(5), wt.changed())
                .await
                .expect("every waiter is woken");
        }
    }

    #[test]
    fn a_small_commit_is_woken_before_the_rest_of_a_large_one() {
        let notifies = |n: usize| (0..n).map(|_| Arc::new(Notify::new())).collect::<Vec<_>>();
        let (large, small) = (notifies(CHUNK * 2 + 1), notifies(1));
        let mut c = Commits::default();
        c.add(large.clone());
        // The large commit's first chunk goes, then the small one comes in.
        assert!(Arc::ptr_eq(&c.next_chunk()[0], &large[0]));
        c.add(small.clone());
        let next = c.next_chunk();
        assert_eq!(next.len(), 1);
        assert!(Arc::ptr_eq(&next[0], &small[0]));
        // Then the rest of the large one, in order, and nothing is left.
        assert!(Arc::ptr_eq(&c.next_chunk()[0], &large[CHUNK]));
        assert_eq!(c.next_chunk().len(), 1);
        assert!(c.is_empty());
        assert!(c.next_chunk().is_empty());
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
