//! The embedded SQLite backend: one file in the data dir, WAL journal, `synchronous=FULL` so
//! a commit that returned survives a crash or power loss.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use crate::auth::{AuditQuery, AuditRecord, AuthChange, AuthSnapshot, AuthStore};
use crate::{Change, GroupRecord, NodeRecord, SettingsRecord, Snapshot, Store, StoreError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS apps (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS groups (name TEXT PRIMARY KEY, revision INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS auth (kind TEXT NOT NULL, name TEXT NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (kind, name));
CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL,
    actor TEXT NOT NULL, address TEXT NOT NULL, action TEXT NOT NULL, object TEXT NOT NULL,
    allowed INTEGER NOT NULL, status INTEGER NOT NULL, detail TEXT NOT NULL, revision INTEGER);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE TABLE IF NOT EXISTS app_revisions (app TEXT NOT NULL, revision INTEGER NOT NULL,
    doc TEXT NOT NULL, outcome TEXT NOT NULL, PRIMARY KEY (app, revision));
";

/// Migration 2: jobs, and the callback outbox (created on data dirs made before them).
const JOBS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (id TEXT PRIMARY KEY, next_at INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_next ON outbox (next_at);
";

/// Tables added for edge sites and deployments; like the first schema, safe to run on
/// every open.
const SCHEMA_SITES: &str = "
CREATE TABLE IF NOT EXISTS sites (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deployments (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS watched (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
";

/// SQLite storage. One connection behind a mutex: the server serialises writes anyway, and
/// a single writer is what SQLite wants.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let at = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(at)?;
        // SQLite opens a file it may not write read-only without a word; the server would
        // then answer every change with an error. Said at the start instead.
        if conn.is_readonly(rusqlite::MAIN_DB).map_err(at)? {
            return Err(StoreError::ReadOnly {
                path: path.display().to_string(),
            });
        }
        Self::prepare(&conn).map_err(at)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    /// Settings, the schema and the migrations of an opened database.
    fn prepare(conn: &Connection) -> Result<(), rusqlite::Error> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(JOBS_SCHEMA)?;
        // Data dirs made before audit entries carried a revision.
        let has_revision: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('audit') WHERE name = 'revision'")?
            .exists([])?;
        if !has_revision {
            conn.execute_batch("ALTER TABLE audit ADD COLUMN revision INTEGER")?;
        }
        // Data dirs made before groups carried settings (node pressure).
        let has_group_doc: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('groups') WHERE name = 'doc'")?
            .exists([])?;
        if !has_group_doc {
            conn.execute_batch("ALTER TABLE groups ADD COLUMN doc TEXT")?;
        }
        // Migration: edge sites and per-client deployments (issue 13).
        conn.execute_batch(SCHEMA_SITES)?;
        Ok(())
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-applied transaction (SQLite
        // rolls it back), so a poisoned lock is safe to keep using.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    name: String,
    doc: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(doc).map_err(|source| StoreError::Corrupt { what, name, source })
}

impl Store for SqliteStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let conn = self.conn();
        let meta = |key: &str| {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
        };
        // The fingerprint is a u64 kept in SQLite's i64, bit for bit.
        let settings = match (meta("settings_fingerprint")?, meta("settings_revision")?) {
            (Some(f), Some(r)) => Some(SettingsRecord {
                fingerprint: f as u64,
                revision: r as u64,
            }),
            _ => None,
        };
        let mut snap = Snapshot {
            revision: meta("revision")?.unwrap_or(0) as u64,
            settings,
            ..Snapshot::default()
        };
        let mut stmt = conn.prepare("SELECT name, doc FROM apps ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (name, doc) = row?;
            snap.apps.push(decode("app", name, &doc)?);
        }
        let mut stmt = conn.prepare("SELECT name, revision, doc FROM groups ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, Option<String>>(2)?,
            ))
        })?;
        for row in rows {
            let (name, revision, doc) = row?;
            let pressure = match doc {
                Some(doc) => decode("group", name.clone(), &doc)?,
                None => None,
            };
            snap.groups.push(GroupRecord {
                name,
                revision,
                pressure,
            });
        }
        let mut stmt = conn.prepare("SELECT name, doc FROM nodes ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (name, doc) = row?;
            snap.nodes.push(decode::<NodeRecord>("node", name, &doc)?);
        }
        let mut stmt = conn.prepare("SELECT name, doc FROM jobs ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (name, doc) = row?;
            snap.jobs.push(decode("job", name, &doc)?);
        }
        let mut stmt = conn.prepare("SELECT name, doc FROM sites ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (name, doc) = row?;
            snap.sites.push(decode("site", name, &doc)?);
        }
        let mut stmt = conn.prepare("SELECT name, doc FROM deployments ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (name, doc) = row?;
            snap.deployments.push(decode("deployment", name, &doc)?);
        }
        let mut stmt = conn.prepare("SELECT name, doc FROM watched ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (name, doc) = row?;
            snap.watched.push(decode("watched host", name, &doc)?);
        }
        Ok(snap)
    }

    fn commit(&self, revision: u64, changes: &[Change]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('revision', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![revision as i64],
        )?;
        for change in changes {
            match change {
                Change::PutApp(app) => {
                    let doc = serde_json::to_string(app).expect("apps always serialize");
                    tx.execute(
                        "INSERT INTO apps (name, doc) VALUES (?1, ?2)
                         ON CONFLICT (name) DO UPDATE SET doc = excluded.doc",
                        params![app.name, doc],
                    )?;
                }
                Change::DeleteApp(name) => {
                    tx.execute("DELETE FROM apps WHERE name = ?1", params![name])?;
                    tx.execute("DELETE FROM app_revisions WHERE app = ?1", params![name])?;
                }
                Change::PutRevision(r) => {
                    let doc = serde_json::to_string(r).expect("revisions always serialize");
                    tx.execute(
                        "INSERT INTO app_revisions (app, revision, doc, outcome)
                         VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (app, revision) DO UPDATE
                         SET doc = excluded.doc, outcome = excluded.outcome",
                        params![r.app, r.revision as i64, doc, r.outcome],
                    )?;
                }
                Change::RevisionOutcome {
                    app,
                    revision,
                    outcome,
                } => {
                    tx.execute(
                        "UPDATE app_revisions SET outcome = ?3 WHERE app = ?1 AND revision = ?2",
                        params![app, *revision as i64, outcome],
                    )?;
                }
                Change::PutGroup(g) => {
                    let doc = g
                        .pressure
                        .as_ref()
                        .map(|p| serde_json::to_string(p).expect("settings always serialize"));
                    tx.execute(
                        "INSERT INTO groups (name, revision, doc) VALUES (?1, ?2, ?3)
                         ON CONFLICT (name) DO UPDATE SET revision = excluded.revision,
                         doc = excluded.doc",
                        params![g.name, g.revision as i64, doc],
                    )?;
                }
                Change::DeleteGroup(name) => {
                    tx.execute("DELETE FROM groups WHERE name = ?1", params![name])?;
                }
                Change::PutNode(node) => {
                    let doc = serde_json::to_string(node).expect("nodes always serialize");
                    tx.execute(
                        "INSERT INTO nodes (name, doc) VALUES (?1, ?2)
                         ON CONFLICT (name) DO UPDATE SET doc = excluded.doc",
                        params![node.name, doc],
                    )?;
                }
                Change::DeleteNode(name) => {
                    tx.execute("DELETE FROM nodes WHERE name = ?1", params![name])?;
                }
                Change::PutJob(job) => {
                    let doc = serde_json::to_string(job).expect("jobs always serialize");
                    tx.execute(
                        "INSERT INTO jobs (name, doc) VALUES (?1, ?2)
                         ON CONFLICT (name) DO UPDATE SET doc = excluded.doc",
                        params![job.name, doc],
                    )?;
                }
                Change::DeleteJob(name) => {
                    tx.execute("DELETE FROM jobs WHERE name = ?1", params![name])?;
                }
                Change::PutCallback(cb) => crate::outbox::put(&tx, cb)?,
                Change::PutSite(site) => {
                    let doc = serde_json::to_string(site).expect("sites always serialize");
                    tx.execute(
                        "INSERT INTO sites (name, doc) VALUES (?1, ?2)
                         ON CONFLICT (name) DO UPDATE SET doc = excluded.doc",
                        params![site.name, doc],
                    )?;
                }
                Change::DeleteSite(name) => {
                    tx.execute("DELETE FROM sites WHERE name = ?1", params![name])?;
                }
                Change::PutDeployment(d) => {
                    let doc = serde_json::to_string(d).expect("deployments always serialize");
                    tx.execute(
                        "INSERT INTO deployments (name, doc) VALUES (?1, ?2)
                         ON CONFLICT (name) DO UPDATE SET doc = excluded.doc",
                        params![d.name, doc],
                    )?;
                }
                Change::DeleteDeployment(name) => {
                    tx.execute("DELETE FROM deployments WHERE name = ?1", params![name])?;
                }
                Change::PutWatched(h) => {
                    let doc = serde_json::to_string(h).expect("watched hosts always serialize");
                    tx.execute(
                        "INSERT INTO watched (name, doc) VALUES (?1, ?2)
                         ON CONFLICT(name) DO UPDATE SET doc = excluded.doc",
                        params![h.name, doc],
                    )?;
                }
                Change::DeleteWatched(name) => {
                    tx.execute("DELETE FROM watched WHERE name = ?1", params![name])?;
                }
                Change::PutSettings(s) => {
                    for (key, value) in [
                        ("settings_fingerprint", s.fingerprint as i64),
                        ("settings_revision", s.revision as i64),
                    ] {
                        tx.execute(
                            "INSERT INTO meta (key, value) VALUES (?1, ?2)
                             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                            params![key, value],
                        )?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn history(&self, app: &str) -> Result<Vec<gustavo_model::api::AppRevision>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT revision, doc, outcome FROM app_revisions WHERE app = ?1 ORDER BY revision",
        )?;
        let rows = stmt.query_map(params![app], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (rev, doc, outcome) = row?;
            let mut r: gustavo_model::api::AppRevision =
                decode("app revision", format!("{app}@{rev}"), &doc)?;
            r.outcome = outcome;
            out.push(r);
        }
        Ok(out)
    }
}

impl crate::OutboxStore for SqliteStore {
    fn due_callbacks(
        &self,
        now: u64,
        limit: usize,
    ) -> Result<Vec<crate::CallbackRecord>, StoreError> {
        crate::outbox::query(&self.conn(), Some(now), limit)
    }

    fn update_callback(&self, rec: &crate::CallbackRecord) -> Result<(), StoreError> {
        crate::outbox::put(&self.conn(), rec)
    }

    fn delete_callback(&self, id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM outbox WHERE id = ?1", params![id])?;
        Ok(())
    }

    fn pending_callbacks(&self, limit: usize) -> Result<Vec<crate::CallbackRecord>, StoreError> {
        crate::outbox::query(&self.conn(), None, limit)
    }
}

impl AuthStore for SqliteStore {
    fn load_auth(&self) -> Result<AuthSnapshot, StoreError> {
        let conn = self.conn();
        let mut snap = AuthSnapshot::default();
        let mut stmt = conn.prepare("SELECT kind, name, doc FROM auth ORDER BY kind, name")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        for row in rows {
            let (kind, name, doc) = row?;
            match kind.as_str() {
                "token" => snap.tokens.push(decode("token", name, &doc)?),
                "user" => snap.users.push(decode("user", name, &doc)?),
                "user_group" => snap.user_groups.push(decode("user group", name, &doc)?),
                "policy" => snap.policies.push(decode("policy", name, &doc)?),
                _ => {}
            }
        }
        Ok(snap)
    }

    fn commit_auth(&self, changes: &[AuthChange]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let put = |kind: &str, name: &str, doc: String| {
            tx.execute(
                "INSERT INTO auth (kind, name, doc) VALUES (?1, ?2, ?3)
                 ON CONFLICT (kind, name) DO UPDATE SET doc = excluded.doc",
                params![kind, name, doc],
            )
        };
        let delete = |kind: &str, name: &str| {
            tx.execute(
                "DELETE FROM auth WHERE kind = ?1 AND name = ?2",
                params![kind, name],
            )
        };
        fn json<T: serde::Serialize>(v: &T) -> String {
            serde_json::to_string(v).expect("auth records always serialize")
        }
        for change in changes {
            match change {
                AuthChange::PutToken(t) => put("token", &t.hash, json(t))?,
                AuthChange::DeleteToken(h) => delete("token", h)?,
                AuthChange::PutUser(u) => put("user", &u.name, json(u))?,
                AuthChange::DeleteUser(n) => delete("user", n)?,
                AuthChange::PutUserGroup(g) => put("user_group", &g.name, json(g))?,
                AuthChange::DeleteUserGroup(n) => delete("user_group", n)?,
                AuthChange::PutPolicy(p) => put("policy", &p.group, json(p))?,
                AuthChange::DeletePolicy(n) => delete("policy", n)?,
            };
        }
        tx.commit()?;
        Ok(())
    }

    fn append_audit(&self, entries: &[AuditRecord]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO audit (at, actor, address, action, object, allowed, status, detail,
                     revision)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for e in entries {
                insert.execute(params![
                    e.at as i64,
                    e.actor,
                    e.address,
                    e.action,
                    e.object,
                    e.allowed,
                    e.status,
                    e.detail,
                    e.revision.map(|r| r as i64)
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn read_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let conn = self.conn();
        let actor = q.actor.as_ref().map(|a| {
            if a.contains(':') || a == "admin" || a == "anonymous" {
                a.clone()
            } else {
                format!("user:{a}")
            }
        });
        // LIKE with the object as a literal prefix: escape its wildcards.
        let object = q.object.as_ref().map(|o| {
            let esc = o
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("{esc}%")
        });
        let mut stmt = conn.prepare(
            "SELECT id, at, actor, address, action, object, allowed, status, detail, revision
             FROM audit
             WHERE at >= ?1 AND (?2 IS NULL OR actor = ?2)
               AND (?3 IS NULL OR object LIKE ?3 ESCAPE '\\')
             ORDER BY id DESC LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![
                q.since.unwrap_or(0) as i64,
                actor,
                object,
                q.limit.clamp(1, 10_000) as i64
            ],
            |r| {
                Ok(AuditRecord {
                    id: r.get::<_, i64>(0)? as u64,
                    at: r.get::<_, i64>(1)? as u64,
                    actor: r.get(2)?,
                    address: r.get(3)?,
                    action: r.get(4)?,
                    object: r.get(5)?,
                    allowed: r.get(6)?,
                    status: r.get(7)?,
                    detail: r.get(8)?,
                    revision: r.get::<_, Option<i64>>(9)?.map(|v| v as u64),
                })
            },
        )?;
        let mut out = rows.collect::<Result<Vec<_>, _>>()?;
        out.reverse();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite;

    fn fresh() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("gustavo.db")).unwrap();
        (dir, s)
    }

    #[test]
    fn round_trip() {
        let (_d, s) = fresh();
        suite::round_trip(&s);
    }

    #[test]
    fn settings_record() {
        let (_d, s) = fresh();
        suite::settings_record(&s);
    }

    #[test]
    fn outbox() {
        let (_d, s) = fresh();
        crate::outbox::suite::outbox(&s);
    }

    #[test]
    fn jobs_round_trip() {
        let (d, s) = fresh();
        let spec = gustavo_model::job::parse_one("j:\n  docker_image: x\n", "j").unwrap();
        let job = gustavo_model::job::Job::new("j", spec, vec!["g".into()], 1, 5);
        s.commit(1, &[Change::PutJob(Box::new(job.clone()))])
            .unwrap();
        drop(s);
        let s = SqliteStore::open(&d.path().join("gustavo.db")).unwrap();
        assert_eq!(s.load().unwrap().jobs, vec![job]);
        s.commit(2, &[Change::DeleteJob("j".into())]).unwrap();
        assert!(s.load().unwrap().jobs.is_empty());
    }

    #[test]
    fn sites_and_deployments() {
        let (_d, s) = fresh();
        suite::sites_and_deployments(&s);
    }

    #[test]
    fn upsert_replaces() {
        let (_d, s) = fresh();
        suite::upsert_replaces(&s);
    }

    #[test]
    fn history() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("db")).unwrap();
        suite::history_keeps_revisions_and_outcomes(&s);
    }

    #[test]
    fn auth_round_trip() {
        let (_d, s) = fresh();
        suite::auth_round_trip(&s);
    }

    #[test]
    fn audit_filters() {
        let (_d, s) = fresh();
        suite::audit_filters(&s);
    }

    #[test]
    fn survives_reopen() {
        let (d, s) = fresh();
        s.commit(7, &[Change::PutApp(Box::new(suite::app("a", 7)))])
            .unwrap();
        drop(s);
        let s = SqliteStore::open(&d.path().join("gustavo.db")).unwrap();
        let snap = s.load().unwrap();
        assert_eq!(snap.revision, 7);
        assert_eq!(snap.apps.len(), 1);
    }

    #[test]
    fn failed_commit_applies_nothing() {
        let (_d, s) = fresh();
        s.commit(1, &[Change::PutApp(Box::new(suite::app("a", 1)))])
            .unwrap();
        s.conn().execute_batch("DROP TABLE nodes").unwrap();
        assert!(
            s.commit(
                2,
                &[
                    Change::DeleteApp("a".into()),
                    Change::PutNode(suite::node("n"))
                ]
            )
            .is_err()
        );
        s.conn().execute_batch(SCHEMA).unwrap();
        let snap = s.load().unwrap();
        assert_eq!((snap.revision, snap.apps.len()), (1, 1));
    }
}
