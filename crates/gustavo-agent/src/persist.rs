//! What the agent keeps on disk: its credential (`node.json`, mode 0600) and the last
//! desired state it received (`desired.json`), so it keeps running its apps through a
//! server outage and its own restart. Both are written atomically (temp file + rename).

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

    pub fn identity(&self) -> Option<Identity> {
        let bytes = std::fs::read(self.0.join("node.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn save_identity(&self, id: &Identity) -> std::io::Result<()> {
        write_atomic(
            &self.0.join("node.json"),
            &serde_json::to_vec_pretty(id)?,
            0o600,
        )
    }

    /// The cached desired state; an unreadable cache counts as none (and is logged).
    pub fn desired(&self) -> Option<DesiredState> {
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

    pub fn save_desired(&self, d: &DesiredState) -> std::io::Result<()> {
        write_atomic(&self.0.join("desired.json"), &serde_json::to_vec(d)?, 0o600)
    }
}
