//! The event log: what the control plane did and saw, newest last — nodes going offline,
//! lost and back, cordons and drains, replicas placed and handed off, apps created,
//! updated, started, stopped and deleted. `GET /api/v1/events?after=ID&wait=S` long-polls
//! it (the dashboard to come, and `gustavo events --follow`).
//!
//! Kept in memory, the last [`CAPACITY`] events: a restart starts a new log (ids start
//! again from 1, and a follower that saw a larger id reads from the start). Durable
//! history is the audit log's job (who changed what); this is what happened.

use std::collections::VecDeque;
use std::sync::Mutex;

use gustavo_model::api::Event;

/// Events kept.
pub const CAPACITY: usize = 10_000;

pub struct EventLog {
    /// The events kept, and the next id.
    inner: Mutex<(VecDeque<Event>, u64)>,
    tx: tokio::sync::watch::Sender<u64>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            inner: Mutex::new((VecDeque::with_capacity(256), 1)),
            tx: tokio::sync::watch::channel(0).0,
        }
    }
}

impl EventLog {
    /// Records an event about `object` (`node:NAME`, `app:NAME`).
    pub fn push(&self, kind: &str, object: String, message: String) {
        let id = {
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let (q, next) = &mut *g;
            let id = *next;
            *next += 1;
            tracing::info!(event = id, kind, %object, "{message}");
            if q.len() == CAPACITY {
                q.pop_front();
            }
            q.push_back(Event {
                id,
                at: crate::now(),
                kind: kind.to_string(),
                object,
                message,
            });
            id
        };
        self.tx.send_replace(id);
    }

    /// Events after `after` (all when `after` is beyond the last id: a new log since).
    pub fn after(&self, after: u64, limit: usize) -> Vec<Event> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let q = &g.0;
        let last = q.back().map(|e| e.id).unwrap_or(0);
        let after = if after > last { 0 } else { after };
        q.iter()
            .filter(|e| e.id > after)
            .take(limit)
            .cloned()
            .collect()
    }

    /// Wakes on every new event.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_reads_after_an_id() {
        let log = EventLog::default();
        log.push("node", "node:a".into(), "a is offline".into());
        log.push("placement", "app:x".into(), "replica 1 on b".into());
        let all = log.after(0, 100);
        assert_eq!(all.len(), 2);
        assert_eq!(log.after(1, 100)[0].message, "replica 1 on b");
        assert!(log.after(2, 100).is_empty());
        // A follower from before a restart reads from the start.
        assert_eq!(log.after(99, 100).len(), 2);
    }
}
