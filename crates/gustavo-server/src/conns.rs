//! The connection table: every open client connection, what it has proven, whether a
//! request is in progress on it, and the policy that decides which ones to close when the
//! server runs out of room.
//!
//! Why: a client that connects and then sends nothing (no TLS handshake, no request, no
//! HTTP/2 preface, a body that never ends) costs the server a file descriptor for as long
//! as it is allowed to stay. With a thousand of them the server could not accept the
//! admin's CLI any more ("Too many open files"). Deadlines (in `serve`) bound how long each
//! stays; this table bounds how many there are, and makes sure the ones that go first under
//! pressure are the ones that proved nothing.
//!
//! The budget:
//! - At start the server raises its soft `RLIMIT_NOFILE` to the hard limit
//!   ([`raise_fd_limit`]).
//! - [`fd_reserve`] descriptors stay for the server's own use (database, Docker, its own
//!   agent, logs) and for the one connection accepted over the cap while another is shed;
//!   the rest is the connection cap ([`default_max_connections`], or `--max-connections`).
//! - At the cap, a new connection is still accepted, and one open connection is shed
//!   instead, chosen by [`pick_victim`]: first one that has presented no credential and
//!   has no request in progress (oldest first), then one with no credential whose request is
//!   in progress (a body trickling in), then a connection with a credential but nothing in
//!   progress (longest idle first). A request in progress with a valid credential — an
//!   agent's long-poll, an admin's command — is never cut.
//! - When nothing can be shed (every connection is a credentialed request in progress),
//!   up to [`ADMIN_SLOTS`] more connections are let in as *admin-only*: a request on them
//!   with any credential but an admin's is answered `503`. Past that, new connections are
//!   closed at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Connections let in past the cap, for admins only, when nothing else can be shed.
pub const ADMIN_SLOTS: usize = 8;

/// The default cap on connections when the descriptor budget allows more: each costs
/// memory (TLS and HTTP/2 buffers, tens of KB), and edge servers are small.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

/// What a connection has proven, by the best credential seen on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Credential {
    None = 0,
    /// A valid token that is not the admin's: a person, a node, a join token.
    Valid = 1,
    Admin = 2,
}

/// One open connection, shared by its task, its requests (as a request extension) and the
/// table.
#[derive(Debug)]
pub struct Conn {
    id: u64,
    /// Milliseconds since the table's epoch.
    accepted_ms: u64,
    credential: AtomicU8,
    active: AtomicUsize,
    requests: AtomicU64,
    /// When the last request in progress ended (ms since the epoch).
    idle_since_ms: AtomicU64,
    /// Let in past the cap: only an admin may use it.
    admin_only: bool,
    /// Told to close to make room; it still holds its descriptor until its task ends.
    shedding: AtomicBool,
    shed: Notify,
    /// Told when the last request in progress ended: its task then has an idle deadline
    /// to keep, and needs no timer while a request is in progress.
    went_idle: Notify,
    epoch: Instant,
}

impl Conn {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn admin_only(&self) -> bool {
        self.admin_only
    }

    /// Records a credential presented on this connection (the best one is kept).
    pub fn credential(&self, c: Credential) {
        self.credential.fetch_max(c as u8, Ordering::Relaxed);
    }

    fn credential_level(&self) -> u8 {
        self.credential.load(Ordering::Relaxed)
    }

    /// A request has started (its headers are in); the guard ends it when dropped, which
    /// is when its response has been sent or it was abandoned.
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// When this connection should be closed for having nothing in progress: `first`
    /// after the accept if no request has started yet, else `idle` after the last request
    /// ended. `None` while a request is in progress.
    pub fn idle_deadline(&self, first: Duration, idle: Duration) -> Option<Instant> {
        if self.active() > 0 {
            return None;
        }
        let (from_ms, limit) = if self.requests() == 0 {
            (self.accepted_ms, first)
        } else {
            (self.idle_since_ms.load(Ordering::Relaxed), idle)
        };
        Some(self.epoch + Duration::from_millis(from_ms) + limit)
    }

    /// Resolves when the table decided to close this connection.
    pub async fn shed(&self) {
        self.shed.notified().await
    }

    /// Resolves when the last request in progress has ended since the last time it
    /// resolved (or does at once if one ended meanwhile): one waiter, the connection's task.
    pub async fn went_idle(&self) {
        self.went_idle.notified().await
    }

    fn snapshot(&self) -> Snapshot {
        let active = self.active() > 0;
        Snapshot {
            id: self.id,
            credential: self.credential_level(),
            active,
            accepted_ms: self.accepted_ms,
            idle_since_ms: if self.requests() == 0 {
                self.accepted_ms
            } else {
                self.idle_since_ms.load(Ordering::Relaxed)
            },
        }
    }
}

/// Ends a request on drop.
#[derive(Debug)]
pub struct RequestGuard(Arc<Conn>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let now = self.0.now_ms();
        self.0.idle_since_ms.store(now, Ordering::Relaxed);
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            // A permit is kept when the task is not waiting: it is not missed.
            self.0.went_idle.notify_one();
        }
    }
}

/// What [`pick_victim`] knows about a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub id: u64,
    pub credential: u8,
    pub active: bool,
    pub accepted_ms: u64,
    pub idle_since_ms: u64,
}

/// The connection to close to make room, or `None` when every connection is a request in
/// progress with a credential. Order: no credential and idle (oldest first), no credential
/// with a request in progress (oldest first), credential and idle (longest idle first).
pub fn pick_victim(conns: impl IntoIterator<Item = Snapshot>) -> Option<u64> {
    conns
        .into_iter()
        .filter_map(|s| {
            let class = match (s.credential > 0, s.active) {
                (false, false) => 0,
                (false, true) => 1,
                (true, false) => 2,
                (true, true) => return None,
            };
            let since = if class == 2 {
                s.idle_since_ms
            } else {
                s.accepted_ms
            };
            Some(((class, since, s.id), s.id))
        })
        .min_by_key(|(k, _)| *k)
        .map(|(_, id)| id)
}

/// What to do with a connection just accepted.
#[derive(Debug)]
pub enum Admission {
    /// Serve it (it is in the table; dropping the ticket takes it out).
    Admit(Ticket),
    /// Close it at once: the table is full of requests in progress.
    Refuse,
}

/// A connection's place in the table; leaving it (drop) frees the place.
#[derive(Debug)]
pub struct Ticket {
    pub conn: Arc<Conn>,
    table: Arc<ConnTable>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.table.remove(&self.conn);
    }
}

/// Every open connection.
#[derive(Debug)]
pub struct ConnTable {
    epoch: Instant,
    max: usize,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    /// Connections told to close whose task has not ended yet: they still hold a
    /// descriptor, so the accept loop waits for them when there are many.
    shedding: AtomicUsize,
    /// Signalled whenever a connection leaves the table.
    freed: Notify,
    /// Rate-limits the warning about refused connections.
    warned_ms: AtomicU64,
    warned_once: AtomicBool,
}

/// How many shed connections may still be closing before the accept loop waits for them.
pub const SHEDDING_MAX: usize = 16;

impl ConnTable {
    pub fn new(max: usize) -> Arc<ConnTable> {
        Arc::new(ConnTable {
            epoch: Instant::now(),
            max: max.max(1),
            next_id: AtomicU64::new(1),
            conns: Mutex::new(HashMap::new()),
            shedding: AtomicUsize::new(0),
            freed: Notify::new(),
            warned_ms: AtomicU64::new(0),
            warned_once: AtomicBool::new(false),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections holding a descriptor, those being shed included.
    pub fn open(&self) -> usize {
        self.lock().len()
    }

    /// Connections that count against the cap: open ones not being shed.
    pub fn live(&self) -> usize {
        self.lock().len() - self.shedding.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.open() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remove(&self, conn: &Conn) {
        let mut conns = self.lock();
        conns.remove(&conn.id);
        if conn.shedding.load(Ordering::Acquire) {
            self.shedding.fetch_sub(1, Ordering::AcqRel);
        }
        drop(conns);
        self.freed.notify_waiters();
    }

    /// Waits (at most `max_wait`) while many shed connections are still closing, so
    /// accepting new ones cannot run the process out of descriptors.
    pub async fn wait_for_room(&self, max_wait: Duration) {
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            // Registered before the check, so a removal in between is not missed.
            let freed = self.freed.notified();
            if self.shedding.load(Ordering::Acquire) < SHEDDING_MAX
                || tokio::time::timeout_at(deadline, freed).await.is_err()
            {
                return;
            }
        }
    }

    /// Picks a victim among `conns`, tells it to go; false if none may be shed.
    fn shed_locked(&self, conns: &HashMap<u64, Arc<Conn>>, why: &'static str) -> bool {
        let victim = pick_victim(
            conns
                .values()
                .filter(|c| !c.shedding.load(Ordering::Acquire))
                .map(|c| c.snapshot()),
        );
        let Some(c) = victim.and_then(|id| conns.get(&id)) else {
            return false;
        };
        c.shedding.store(true, Ordering::Release);
        self.shedding.fetch_add(1, Ordering::AcqRel);
        tracing::debug!(
            conn = c.id,
            credential = c.credential_level(),
            active = c.active(),
            "{why}; shedding a connection"
        );
        c.shed.notify_one();
        true
    }

    /// Tells one connection to close to make room; true if one could be.
    pub fn shed_one(&self) -> bool {
        let conns = self.lock();
        self.shed_locked(&conns, "out of descriptors")
    }

    /// Admits a connection just accepted, shedding another one if the table is full.
    pub fn admit(self: &Arc<Self>) -> Admission {
        let mut conns = self.lock();
        let live = conns.len() - self.shedding.load(Ordering::Acquire);
        let mut admin_only = false;
        if live >= self.max && !self.shed_locked(&conns, "connection cap reached") {
            if live < self.max + ADMIN_SLOTS {
                admin_only = true;
            } else {
                drop(conns);
                self.warn_refused();
                return Admission::Refuse;
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let conn = Arc::new(Conn {
            id,
            accepted_ms: now_ms,
            credential: AtomicU8::new(Credential::None as u8),
            active: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(now_ms),
            admin_only,
            shedding: AtomicBool::new(false),
            shed: Notify::new(),
            went_idle: Notify::new(),
            epoch: self.epoch,
        });
        conns.insert(id, conn.clone());
        drop(conns);
        if admin_only {
            tracing::warn!(
                max = self.max,
                "every connection is a request in progress; letting one in for admins only"
            );
        }
        Admission::Admit(Ticket {
            conn,
            table: self.clone(),
        })
    }

    fn warn_refused(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.warned_ms.load(Ordering::Relaxed);
        if !self.warned_once.swap(true, Ordering::Relaxed) || now.saturating_sub(last) > 10_000 {
            self.warned_ms.store(now, Ordering::Relaxed);
            tracing::warn!(
                max = self.max,
                "refusing new connections: all {} are requests in progress (raise --max-connections)",
                self.max + ADMIN_SLOTS
            );
        }
    }
}

/// The open-file limit before and after [`raise_fd_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub before: u64,
    pub now: u64,
    pub hard: u64,
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (a connection is a
/// descriptor, and 1,024 — a common default — is a few hundred idle clients away).
pub fn raise_fd_limit() -> std::io::Result<FdLimit> {
    let (before, hard) = rlimit::Resource::NOFILE.get()?;
    let now = rlimit::increase_nofile_limit(hard)?;
    Ok(FdLimit { before, now, hard })
}

/// Descriptors kept out of the connection budget: the server's own files and sockets, and
/// the one connection accepted over the cap while another is shed.
pub fn fd_reserve(limit: u64) -> u64 {
    (limit / 8).clamp(32, 1024)
}

/// The connection cap for an open-file limit: what is left after the reserve, at most
/// [`DEFAULT_MAX_CONNECTIONS`], at least 1.
pub fn default_max_connections(limit: u64) -> usize {
    let budget = limit.saturating_sub(fd_reserve(limit) + ADMIN_SLOTS as u64);
    (budget.min(DEFAULT_MAX_CONNECTIONS as u64) as usize).max(1)
}

/// The largest cap an open-file limit allows (what `--max-connections` is lowered to).
pub fn max_connections_allowed(limit: u64) -> usize {
    (limit.saturating_sub(fd_reserve(limit) + ADMIN_SLOTS as u64) as usize).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: u64, credential: u8, active: bool, accepted_ms: u64, idle: u64) -> Snapshot {
        Snapshot {
            id,
            credential,
            active,
            accepted_ms,
            idle_since_ms: idle,
        }
    }

    #[test]
    fn connections_without_credentials_go_first_oldest_first() {
        let v = pick_victim([
            snap(1, 2, false, 0, 0),
            snap(2, 0, true, 10, 10),
            snap(3, 0, false, 30, 30),
            snap(4, 0, false, 20, 20),
        ]);
        assert_eq!(v, Some(4));
        // Then a credential-less request in progress, before any credentialed connection.
        let v = pick_victim([snap(1, 2, false, 0, 0), snap(2, 0, true, 10, 10)]);
        assert_eq!(v, Some(2));
    }

    #[test]
    fn credentialed_requests_in_progress_are_never_shed() {
        assert_eq!(
            pick_victim([snap(1, 1, true, 0, 0), snap(2, 2, true, 1, 1)]),
            None
        );
        // Idle credentialed connections go, the longest idle first.
        let v = pick_victim([
            snap(1, 1, true, 0, 0),
            snap(2, 2, false, 5, 50),
            snap(3, 1, false, 9, 40),
        ]);
        assert_eq!(v, Some(3));
    }

    #[tokio::test]
    async fn the_table_sheds_at_the_cap_then_admits_admins_only() {
        let t = ConnTable::new(2);
        let a = match t.admit() {
            Admission::Admit(x) => x,
            Admission::Refuse => panic!("room left"),
        };
        let b = match t.admit() {
            Admission::Admit(x) => x,
            Admission::Refuse => panic!("room left"),
        };
        b.conn.credential(Credential::Valid);
        let _rb = b.conn.begin();
        // Full: the idle connection without a credential (a) is shed.
        let c = match t.admit() {
            Admission::Admit(x) => x,
            Admission::Refuse => panic!("a can be shed"),
        };
        tokio::time::timeout(Duration::from_secs(1), a.conn.shed())
            .await
            .expect("a was told to go");
        assert_eq!((t.open(), t.live()), (3, 2));
        drop(a);
        assert_eq!((t.open(), t.live()), (2, 2));
        c.conn.credential(Credential::Admin);
        let _rc = c.conn.begin();
        // Nothing to shed: admin-only slots, then refusal.
        let mut extra = Vec::new();
        for _ in 0..ADMIN_SLOTS {
            match t.admit() {
                Admission::Admit(x) => {
                    assert!(x.conn.admin_only());
                    x.conn.credential(Credential::Valid);
                    extra.push((x.conn.begin(), x));
                }
                Admission::Refuse => panic!("admin slots left"),
            }
        }
        assert!(matches!(t.admit(), Admission::Refuse));
        drop(extra);
        assert_eq!(t.open(), 2);
    }

    #[test]
    fn deadlines_count_from_the_accept_then_from_the_last_request() {
        let t = ConnTable::new(4);
        let Admission::Admit(x) = t.admit() else {
            panic!()
        };
        let first = x
            .conn
            .idle_deadline(Duration::from_secs(5), Duration::from_secs(60))
            .unwrap();
        assert!(first <= Instant::now() + Duration::from_secs(5));
        let g = x.conn.begin();
        assert_eq!(
            x.conn
                .idle_deadline(Duration::from_secs(5), Duration::from_secs(60)),
            None
        );
        drop(g);
        let idle = x
            .conn
            .idle_deadline(Duration::from_secs(5), Duration::from_secs(60))
            .unwrap();
        assert!(idle > Instant::now() + Duration::from_secs(50));
    }

    #[test]
    fn the_budget_keeps_a_reserve() {
        assert_eq!(fd_reserve(1024), 128);
        assert_eq!(default_max_connections(1024), 1024 - 128 - ADMIN_SLOTS);
        assert_eq!(default_max_connections(1 << 20), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(default_max_connections(16), 1);
        assert_eq!(max_connections_allowed(256), 256 - 32 - ADMIN_SLOTS);
    }
}
