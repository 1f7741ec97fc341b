//! The callback outbox: job state changes waiting to be POSTed to their `callback_url`.
//!
//! A record is written by [`crate::Change::PutCallback`] in the same transaction as the
//! job state change it reports, so a change is never stored without its callback, nor a
//! callback without its change. Delivery bookkeeping (attempts, next try, removal once
//! delivered or expired) goes through [`OutboxStore`]: it takes no revision, so retrying
//! a dead endpoint wakes no agent. Everything is on disk, so deliveries survive a restart.

use rusqlite::params;
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// One delivery to make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackRecord {
    /// `job/run/node/state`: one delivery per state change, whatever retries it takes.
    pub id: String,
    pub job: String,
    pub url: String,
    /// The JSON body.
    pub body: String,
    pub created_at: u64,
    /// Given up after this (Unix seconds).
    pub expires_at: u64,
    pub attempts: u32,
    /// The next try (Unix seconds).
    pub next_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

pub trait OutboxStore: Send + Sync + 'static {
    /// Deliveries whose next try is at or before `now`, soonest first.
    fn due_callbacks(&self, now: u64, limit: usize) -> Result<Vec<CallbackRecord>, StoreError>;
    /// Records an attempt (attempts, next try, last error); durable when it returns.
    fn update_callback(&self, rec: &CallbackRecord) -> Result<(), StoreError>;
    /// Forgets a delivery: made, or expired.
    fn delete_callback(&self, id: &str) -> Result<(), StoreError>;
    /// Every delivery still waiting, soonest first (for `jobs get`).
    fn pending_callbacks(&self, limit: usize) -> Result<Vec<CallbackRecord>, StoreError>;
}

pub(crate) fn put(tx: &rusqlite::Connection, cb: &CallbackRecord) -> Result<(), StoreError> {
    let doc = serde_json::to_string(cb).expect("callbacks always serialize");
    tx.execute(
        "INSERT INTO outbox (id, next_at, doc) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET next_at = excluded.next_at, doc = excluded.doc",
        params![cb.id, cb.next_at as i64, doc],
    )?;
    Ok(())
}

pub(crate) fn query(
    conn: &rusqlite::Connection,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<CallbackRecord>, StoreError> {
    let mut stmt = conn
        .prepare("SELECT id, doc FROM outbox WHERE next_at <= ?1 ORDER BY next_at, id LIMIT ?2")?;
    let rows = stmt.query_map(
        params![before.map(|b| b as i64).unwrap_or(i64::MAX), limit as i64],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (id, doc) = row?;
        out.push(
            serde_json::from_str(&doc).map_err(|source| StoreError::Corrupt {
                what: "callback",
                name: id,
                source,
            })?,
        );
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod suite {
    use super::*;
    use crate::{Change, Store};

    pub fn record(id: &str, next_at: u64) -> CallbackRecord {
        CallbackRecord {
            id: id.into(),
            job: "j".into(),
            url: "http://127.0.0.1:9/cb".into(),
            body: "{}".into(),
            created_at: 1,
            expires_at: 100,
            attempts: 0,
            next_at,
            last_error: None,
        }
    }

    pub fn outbox<S: Store + OutboxStore>(s: &S) {
        s.commit(
            1,
            &[
                Change::PutCallback(Box::new(record("b", 5))),
                Change::PutCallback(Box::new(record("a", 3))),
            ],
        )
        .unwrap();
        let due: Vec<_> = s.due_callbacks(4, 10).unwrap();
        assert_eq!(due, vec![record("a", 3)]);
        let mut a = record("a", 9);
        a.attempts = 1;
        a.last_error = Some("connection refused".into());
        s.update_callback(&a).unwrap();
        assert_eq!(s.due_callbacks(6, 10).unwrap(), vec![record("b", 5)]);
        assert_eq!(s.pending_callbacks(10).unwrap(), vec![record("b", 5), a]);
        s.delete_callback("b").unwrap();
        assert_eq!(s.due_callbacks(100, 10).unwrap().len(), 1);
    }
}
