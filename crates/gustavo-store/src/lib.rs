//! Durable storage of the desired state: apps, groups and nodes, and the one revision counter.
//!
//! The trait is deliberately small — load everything once at start, then commit each change
//! as one atomic batch together with the revision it takes — so a backend is a few hundred
//! lines and PostgreSQL can join beside SQLite. The server keeps the live copy in memory;
//! the store is what survives a crash: [`Store::commit`] returns only once the batch is on
//! disk, and the API answers only after that.

pub mod auth;
pub mod outbox;
mod sqlite;

use std::collections::BTreeMap;

use gustavo_model::api::App;
use gustavo_model::job::Job;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use auth::{
    AuditQuery, AuditRecord, AuthChange, AuthSnapshot, AuthStore, TokenKind, TokenRecord,
    UserGroupRecord, UserRecord,
};
pub use outbox::{CallbackRecord, OutboxStore};
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
    #[error("cannot seal or open the secret of {what}: {reason}")]
    Sealed { what: String, reason: String },
    #[error("cannot open the database at {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error(
        "the database at {path} is read-only (its permissions, an immutable file or a \
         read-only file system); the server must be able to write it"
    )]
    ReadOnly { path: String },
}

/// A group as stored: its name, the revision of its last change, and its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub name: String,
    pub revision: u64,
    /// Node pressure thresholds for the group's nodes (`gustavo groups set-pressure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pressure: Option<gustavo_model::pressure::Thresholds>,
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
    /// Set when the node joined with a token bound to a device group: the node stays in
    /// exactly that group, whatever it declares later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_group: Option<String>,
    /// Cordoned: takes no new replicas; what it runs stays (`gustavo nodes cordon`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cordoned: bool,
    /// Being drained: cordoned, and its replicas move off one at a time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

fn default_heartbeat_s() -> u32 {
    5
}

/// The server settings every node's desired state carries
/// ([`gustavo_model::node_settings::NodeSettings`]), as last put in force: their fingerprint
/// and the revision they took effect at, which every node's revision takes into account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettingsRecord {
    pub fingerprint: u64,
    pub revision: u64,
}

/// Everything the store holds, as loaded at start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub revision: u64,
    pub apps: Vec<App>,
    pub groups: Vec<GroupRecord>,
    pub nodes: Vec<NodeRecord>,
    pub jobs: Vec<Job>,
    /// Edge sites (Sinfonia's cloudlets).
    pub sites: Vec<gustavo_model::sites::Site>,
    /// Per-client deployments and their leases.
    pub deployments: Vec<gustavo_model::lease::Deployment>,
    /// Agentless hosts watched through Glances, with their pressure records.
    pub watched: Vec<gustavo_model::watched::WatchedHost>,
    /// The node settings last put in force; none before the first start that recorded them.
    pub settings: Option<SettingsRecord>,
}

/// One change inside a commit.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    PutApp(Box<App>),
    DeleteApp(String),
    PutGroup(GroupRecord),
    /// Only for a group that no app or node names any more.
    DeleteGroup(String),
    PutNode(NodeRecord),
    DeleteNode(String),
    /// A new revision in an app's history (deleting the app deletes its history).
    PutRevision(Box<gustavo_model::api::AppRevision>),
    /// How a revision in the history ended.
    RevisionOutcome {
        app: String,
        revision: u64,
        outcome: String,
    },
    PutJob(Box<Job>),
    DeleteJob(String),
    /// A callback to deliver, committed with the state change it reports (the outbox;
    /// delivery bookkeeping then goes through [`OutboxStore`], outside the revisions).
    PutCallback(Box<CallbackRecord>),
    PutSite(Box<gustavo_model::sites::Site>),
    DeleteSite(String),
    PutDeployment(Box<gustavo_model::lease::Deployment>),
    DeleteDeployment(String),
    PutWatched(Box<gustavo_model::watched::WatchedHost>),
    DeleteWatched(String),
    /// New node settings in force (at a server start whose settings differ).
    PutSettings(SettingsRecord),
}

/// Durable storage. Implementations must make `commit` atomic and durable: after it returns
/// `Ok`, a crash (even `kill -9`) loses nothing of it; after `Err`, nothing of it was applied.
pub trait Store: Send + Sync + 'static {
    fn load(&self) -> Result<Snapshot, StoreError>;
    fn commit(&self, revision: u64, changes: &[Change]) -> Result<(), StoreError>;
    /// An app's revisions, oldest first (not kept in memory: only `apps history` and
    /// `apps rollback` read them).
    fn history(&self, app: &str) -> Result<Vec<gustavo_model::api::AppRevision>, StoreError>;
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
            placements: BTreeMap::new(),
            handoff: BTreeMap::new(),
            digest: None,
            digest_error: None,
            rollout: None,
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
            bound_group: None,
            cordoned: false,
            draining: false,
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
                    pressure: None,
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
                Change::PutGroup(GroupRecord {
                    name: "empty".into(),
                    revision: 3,
                    pressure: Some(gustavo_model::pressure::Thresholds::default()),
                }),
            ],
        )
        .unwrap();
        let snap = s.load().unwrap();
        assert_eq!(snap.revision, 3);
        assert_eq!(snap.apps, vec![app("b", 2)]);
        assert_eq!(snap.groups.len(), 2);
        assert_eq!(snap.nodes, vec![node("n1")]);
        s.commit(4, &[Change::DeleteGroup("empty".into())]).unwrap();
        let snap = s.load().unwrap();
        assert_eq!(snap.revision, 4);
        let names: Vec<_> = snap.groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, vec!["g"]);
    }

    /// The node settings' record is one value, replaced whole, kept beside the revision.
    pub fn settings_record(s: &dyn Store) {
        assert_eq!(s.load().unwrap().settings, None);
        let first = SettingsRecord {
            fingerprint: u64::MAX - 1,
            revision: 1,
        };
        s.commit(1, &[Change::PutSettings(first)]).unwrap();
        assert_eq!(s.load().unwrap().settings, Some(first));
        s.commit(2, &[Change::PutApp(Box::new(app("a", 2)))])
            .unwrap();
        assert_eq!(
            s.load().unwrap().settings,
            Some(first),
            "other commits keep it"
        );
        let second = SettingsRecord {
            fingerprint: 7,
            revision: 3,
        };
        s.commit(3, &[Change::PutSettings(second)]).unwrap();
        let snap = s.load().unwrap();
        assert_eq!((snap.settings, snap.revision), (Some(second), 3));
    }

    pub fn auth_round_trip(s: &dyn AuthStore) {
        use gustavo_model::access::{GroupPolicy, Privilege, Role};
        assert_eq!(s.load_auth().unwrap(), AuthSnapshot::default());
        let token = TokenRecord {
            id: "abc".into(),
            hash: "abcdef".into(),
            kind: TokenKind::Join,
            user: None,
            group: Some("g".into()),
            created_at: 1,
            expires_at: Some(10),
            revoked: false,
            description: String::new(),
        };
        let user = UserRecord {
            name: "ann".into(),
            role: Role::Operator,
            password_hash: "$argon2id$x".into(),
            groups: vec!["team".into()],
            created_at: 1,
        };
        let policy = GroupPolicy {
            group: "g".into(),
            allow: vec![Privilege::Devices],
            images: vec![],
        };
        s.commit_auth(&[
            AuthChange::PutToken(token.clone()),
            AuthChange::PutUser(user.clone()),
            AuthChange::PutUserGroup(UserGroupRecord {
                name: "team".into(),
                grants: Default::default(),
            }),
            AuthChange::PutPolicy(policy.clone()),
        ])
        .unwrap();
        let mut revoked = token.clone();
        revoked.revoked = true;
        s.commit_auth(&[
            AuthChange::PutToken(revoked.clone()),
            AuthChange::DeleteUserGroup("team".into()),
        ])
        .unwrap();
        let snap = s.load_auth().unwrap();
        assert_eq!(snap.tokens, vec![revoked]);
        assert_eq!(snap.users, vec![user]);
        assert!(snap.user_groups.is_empty());
        assert_eq!(snap.policies, vec![policy]);
        assert!(token.usable_at(9) && !token.usable_at(10));
    }

    pub fn audit_filters(s: &dyn AuthStore) {
        let e = |at: u64, actor: &str, object: &str| AuditRecord {
            id: 0,
            at,
            actor: actor.into(),
            address: "127.0.0.1".into(),
            action: "POST /x".into(),
            object: object.into(),
            allowed: true,
            status: 200,
            detail: String::new(),
            revision: Some(at),
        };
        s.append_audit(&[
            e(1, "user:ann", "app:web"),
            e(2, "admin", "app:web_1"),
            e(3, "user:bob", "node:n1"),
        ])
        .unwrap();
        let q = |since, actor: Option<&str>, object: Option<&str>| {
            s.read_audit(&AuditQuery {
                since,
                actor: actor.map(String::from),
                object: object.map(String::from),
                limit: 100,
            })
            .unwrap()
            .into_iter()
            .map(|r| r.at)
            .collect::<Vec<_>>()
        };
        assert_eq!(q(None, None, None), vec![1, 2, 3]);
        assert_eq!(q(Some(2), None, None), vec![2, 3]);
        assert_eq!(q(None, Some("ann"), None), vec![1]);
        assert_eq!(q(None, Some("admin"), None), vec![2]);
        // `_` is literal in the object prefix, not a wildcard.
        assert_eq!(q(None, None, Some("app:web_")), vec![2]);
        assert_eq!(q(None, None, Some("app:")), vec![1, 2]);
        let all = s
            .read_audit(&AuditQuery {
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert!(all.iter().all(|r| r.revision == Some(r.at)), "{all:?}");
    }

    /// Sites and deployments (issue 13) are stored, replaced and deleted like apps.
    pub fn sites_and_deployments(s: &dyn Store) {
        let site: gustavo_model::sites::Site = serde_json::from_value(serde_json::json!({
            "name": "edge1", "node": "n1", "locations": [[40.4, -79.9]],
            "local_networks": ["192.168.0.0/16"], "wg_public_key": "pk", "wg_private_key": "sk",
        }))
        .unwrap();
        let dep: gustavo_model::lease::Deployment = serde_json::from_value(serde_json::json!({
            "name": "hello-0a1b2c3d", "app": "hello",
            "uuid": "00000000-0000-0000-0000-000000000000", "key": "k", "site": "edge1",
            "node": "n1", "client_ip": "127.0.0.1", "address": "10.5.0.1",
            "state": "Deployed", "created_at": 1, "renewed_at": 2, "since": 2,
            "tunnel": {"set_up": false, "reason": "none"},
        }))
        .unwrap();
        s.commit(
            1,
            &[
                Change::PutSite(Box::new(site.clone())),
                Change::PutDeployment(Box::new(dep.clone())),
            ],
        )
        .unwrap();
        let snap = s.load().unwrap();
        assert_eq!(snap.sites, vec![site]);
        assert_eq!(snap.deployments, vec![dep.clone()]);
        let mut renewed = dep;
        renewed.renewed_at = 9;
        s.commit(2, &[Change::PutDeployment(Box::new(renewed.clone()))])
            .unwrap();
        assert_eq!(s.load().unwrap().deployments, vec![renewed]);
        s.commit(
            3,
            &[
                Change::DeleteDeployment("hello-0a1b2c3d".into()),
                Change::DeleteSite("edge1".into()),
            ],
        )
        .unwrap();
        let snap = s.load().unwrap();
        assert!(snap.sites.is_empty() && snap.deployments.is_empty());
        assert_eq!(snap.revision, 3);
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

    pub fn history_keeps_revisions_and_outcomes(s: &dyn Store) {
        let rev = |n: u64, outcome: &str| gustavo_model::api::AppRevision {
            app: "a".into(),
            revision: n,
            spec: app("a", n).spec,
            groups: vec!["g".into()],
            digest: None,
            who: "admin".into(),
            at: n,
            outcome: outcome.into(),
        };
        s.commit(1, &[Change::PutRevision(Box::new(rev(1, "applied")))])
            .unwrap();
        s.commit(
            2,
            &[
                Change::PutRevision(Box::new(rev(2, "rolling out"))),
                Change::RevisionOutcome {
                    app: "a".into(),
                    revision: 1,
                    outcome: "superseded".into(),
                },
            ],
        )
        .unwrap();
        let h = s.history("a").unwrap();
        assert_eq!(h, vec![rev(1, "superseded"), rev(2, "rolling out")]);
        assert!(s.history("b").unwrap().is_empty());
        s.commit(3, &[Change::DeleteApp("a".into())]).unwrap();
        assert!(s.history("a").unwrap().is_empty());
    }
}
