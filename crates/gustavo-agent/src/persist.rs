//! What the agent keeps: its credential and the last desired state it received, so it keeps
//! running its apps through a server outage and its own restart. On a device that is the
//! data dir ([`DataDir`]: `node.json`, `desired.json`, `jobs.json` and `pressure.json`, mode 0600, written atomically by
//! temp file + rename); simulated agents keep it in memory ([`MemoryPersist`]).

use std::path::{Path, PathBuf};

use gustavo_model::api::DesiredState;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub server: String,
    pub node: String,
    pub token: String,
    /// The CA (PEM) the server is checked against over TLS; pinned at join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

/// Where an agent keeps its credential and desired-state cache.
pub trait Persist: Send + Sync + 'static {
    fn identity(&self) -> Option<Identity>;
    fn save_identity(&self, id: &Identity) -> std::io::Result<()>;
    /// The cached desired state; an unreadable cache counts as none.
    fn desired(&self) -> Option<DesiredState>;
    fn save_desired(&self, d: &DesiredState) -> std::io::Result<()>;
    /// Where it lives, for messages.
    fn describe(&self) -> String;
    /// What the job runner keeps (runs, last due times); none when never saved.
    fn jobs(&self) -> Option<crate::jobs::LocalJobs> {
        None
    }
    fn save_jobs(&self, j: &crate::jobs::LocalJobs) -> std::io::Result<()> {
        let _ = j;
        Ok(())
    }
    /// What node pressure did (level, throttled and stopped containers); none when never
    /// saved.
    fn pressure(&self) -> Option<gustavo_model::pressure::Record> {
        None
    }
    fn save_pressure(&self, r: &gustavo_model::pressure::Record) -> std::io::Result<()> {
        let _ = r;
        Ok(())
    }
}

pub struct DataDir(pub PathBuf);

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl DataDir {
    pub fn create(path: &Path) -> std::io::Result<DataDir> {
        std::fs::create_dir_all(path)?;
        Ok(DataDir(path.to_path_buf()))
    }
}

impl Persist for DataDir {
    fn describe(&self) -> String {
        self.0.display().to_string()
    }

    fn identity(&self) -> Option<Identity> {
        let bytes = std::fs::read(self.0.join("node.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn save_identity(&self, id: &Identity) -> std::io::Result<()> {
        write_atomic(
            &self.0.join("node.json"),
            &serde_json::to_vec_pretty(id)?,
            0o600,
        )
    }

    fn desired(&self) -> Option<DesiredState> {
        let path = self.0.join("desired.json");
        let bytes = std::fs::read(&path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable desired-state cache");
                None
            }
        }
    }

    fn save_desired(&self, d: &DesiredState) -> std::io::Result<()> {
        write_atomic(&self.0.join("desired.json"), &serde_json::to_vec(d)?, 0o600)
    }

    fn jobs(&self) -> Option<crate::jobs::LocalJobs> {
        let path = self.0.join("jobs.json");
        let bytes = std::fs::read(&path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(j) => Some(j),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable job runs file");
                None
            }
        }
    }

    fn save_jobs(&self, j: &crate::jobs::LocalJobs) -> std::io::Result<()> {
        write_atomic(&self.0.join("jobs.json"), &serde_json::to_vec(j)?, 0o600)
    }

    fn pressure(&self) -> Option<gustavo_model::pressure::Record> {
        let path = self.0.join("pressure.json");
        let bytes = std::fs::read(&path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(r) => Some(r),
            Err(e) => {
                // Unreadable: what it held cannot be undone exactly. Said loudly; the
                // containers keep their state and the level starts again from `ready`.
                tracing::error!(path = %path.display(), error = %e, "ignoring unreadable node pressure record");
                None
            }
        }
    }

    fn save_pressure(&self, r: &gustavo_model::pressure::Record) -> std::io::Result<()> {
        write_atomic(
            &self.0.join("pressure.json"),
            &serde_json::to_vec_pretty(r)?,
            0o600,
        )
    }
}

/// Keeps everything in memory: for simulated agents, which have no disk of their own.
#[derive(Default)]
pub struct MemoryPersist {
    identity: std::sync::Mutex<Option<Identity>>,
    desired: std::sync::Mutex<Option<DesiredState>>,
    jobs: std::sync::Mutex<Option<crate::jobs::LocalJobs>>,
}

impl Persist for MemoryPersist {
    fn identity(&self) -> Option<Identity> {
        self.identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    fn save_identity(&self, id: &Identity) -> std::io::Result<()> {
        *self.identity.lock().unwrap_or_else(|p| p.into_inner()) = Some(id.clone());
        Ok(())
    }
    fn desired(&self) -> Option<DesiredState> {
        self.desired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    fn save_desired(&self, d: &DesiredState) -> std::io::Result<()> {
        *self.desired.lock().unwrap_or_else(|p| p.into_inner()) = Some(d.clone());
        Ok(())
    }
    fn describe(&self) -> String {
        "memory".into()
    }
    fn jobs(&self) -> Option<crate::jobs::LocalJobs> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn save_jobs(&self, j: &crate::jobs::LocalJobs) -> std::io::Result<()> {
        *self.jobs.lock().unwrap_or_else(|p| p.into_inner()) = Some(j.clone());
        Ok(())
    }
}
