//! Durable storage of the desired state: apps, groups and nodes, and the one revision counter.
//!
//! The trait is deliberately small — load everything once at start, then commit each change
//! as one atomic batch together with the revision it takes — so a backend is a few hundred
//! lines and PostgreSQL can join beside SQLite. The server keeps the live copy in memory;
//! the store is what survives a crash: [`Store::commit`] returns only once the batch is on
//! disk, and the API answers only after that.

mod sqlite;

use std::collections::BTreeMap;

use gustavo_model::api::App;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use sqlite::SqliteStore;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("corrupt {what} record `{name}` in the database: {source}")]
    Corrupt {
        what: &'static str,
        name: String,
        source: serde_json::Error,
    },
    #[error("cannot open the database at {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
}

/// A group as stored: its name and the revision of its last change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub name: String,
    pub revision: u64,
}

/// A node as stored: identity, declared facts and the hash of its credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    /// SHA-256 (hex) of the node's token; the token itself is never stored.
    pub token_hash: String,
    pub groups: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub cpus: u32,
    pub memory_mb: u64,
    pub agent_version: String,
    pub registered_at: u64,
    /// The revision of the node's last change (registration, groups, labels).
    pub revision: u64,
    /// The agent's heartbeat period in seconds, as it declared it.
    #[serde(default = "default_heartbeat_s")]
    pub heartbeat_s: u32,
}

fn default_heartbeat_s() -> u32 {
    5
}

/// Everything the store holds, as loaded at start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub revision: u64,
    pub apps: Vec<App>,
    pub groups: Vec<GroupRecord>,
    pub nodes: Vec<NodeRecord>,
}

/// One change inside a commit.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    PutApp(Box<App>),
    DeleteApp(String),
    PutGroup(GroupRecord),
    PutNode(NodeRecord),
    DeleteNode(String),
}

/// Durable storage. Implementations must make `commit` atomic and durable: after it returns
/// `Ok`, a crash (even `kill -9`) loses nothing of it; after `Err`, nothing of it was applied.
pub trait Store: Send + Sync + 'static {
    fn load(&self) -> Result<Snapshot, StoreError>;
    fn commit(&self, revision: u64, changes: &[Change]) -> Result<(), StoreError>;
}

#[cfg(test)]
pub(crate) mod suite {
    //! The behaviour every backend must show; each backend's tests call these.
    use super::*;
    use gustavo_model::spec::parse_one;

    pub fn app(name: &str, revision: u64) -> App {
        App {
            name: name.into(),
            spec: parse_one("a:\n  docker_image: x\n  env_vars: {K: v}\n", "a").unwrap(),
            groups: vec!["g".into()],
            revision,
            restart_nonce: 0,
            created_at: 1,
            updated_at: 2,
        }
    }

    pub fn node(name: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            token_hash: "ab".into(),
            groups: vec!["g".into()],
            labels: BTreeMap::from([("k".into(), "v".into())]),
            cpus: 2,
            memory_mb: 512,
            agent_version: "0.1.0".into(),
            registered_at: 5,
            revision: 1,
            heartbeat_s: 5,
        }
    }

    pub fn round_trip(s: &dyn Store) {
        assert_eq!(s.load().unwrap(), Snapshot::default());
        s.commit(
            1,
            &[
                Change::PutApp(Box::new(app("a", 1))),
                Change::PutGroup(GroupRecord {
                    name: "g".into(),
                    revision: 1,
                }),
                Change::PutNode(node("n1")),
            ],
        )
        .unwrap();
        s.commit(
            2,
            &[
                Change::PutApp(Box::new(app("b", 2))),
                Change::PutNode(node("n2")),
            ],
        )
        .unwrap();
        s.commit(
            3,
            &[
                Change::DeleteApp("a".into()),
                Change::DeleteNode("n2".into()),
            ],
        )
        .unwrap();
        let snap = s.load().unwrap();
        assert_eq!(snap.revision, 3);
        assert_eq!(snap.apps, vec![app("b", 2)]);
        assert_eq!(snap.groups.len(), 1);
        assert_eq!(snap.nodes, vec![node("n1")]);
    }

    pub fn upsert_replaces(s: &dyn Store) {
        s.commit(1, &[Change::PutApp(Box::new(app("a", 1)))])
            .unwrap();
        let mut changed = app("a", 2);
        changed.spec.env_vars.insert("K".into(), "w".into());
        s.commit(2, &[Change::PutApp(Box::new(changed.clone()))])
            .unwrap();
        assert_eq!(s.load().unwrap().apps, vec![changed]);
    }
}
