//! `client.toml`: where the server is, which CA vouches for it, and the token to present —
//! everything a CLI needs, in one file (like k3s's kubeconfig). The server writes one for its
//! admin into its data dir; `gustavo login` writes one for a person into
//! `~/.config/gustavo/client.toml`. Both are mode 0600.
//!
//! ```toml
//! server = "https://127.0.0.1:7420"
//! token = "gus_admin_…"
//! ca = """
//! -----BEGIN CERTIFICATE-----
//! …
//! -----END CERTIFICATE-----
//! """
//! # or: ca_file = "/var/lib/gustavo/ca.crt"
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid client config: {reason}")]
    Parse { path: String, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// `https://host:port` (or `http://` for a server run with `--insecure-http`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The CA certificate (PEM) the server's certificate must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Or a path to it; relative paths are relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The user the token belongs to (written by `gustavo login`, informative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl ClientFile {
    pub fn load(path: &Path) -> Result<ClientFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut f: ClientFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        if let Some(rel) = f.ca_file.as_ref().filter(|p| p.is_relative())
            && let Some(dir) = path.parent()
        {
            f.ca_file = Some(dir.join(rel));
        }
        Ok(f)
    }

    /// The CA PEM: inline, or read from `ca_file`.
    pub fn ca_pem(&self) -> Result<Option<String>, ConfigError> {
        if let Some(ca) = &self.ca {
            return Ok(Some(ca.clone()));
        }
        match &self.ca_file {
            Some(p) => std::fs::read_to_string(p)
                .map(Some)
                .map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                }),
            None => Ok(None),
        }
    }

    /// Writes the file atomically, readable only by its owner.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let err = |source| ConfigError::Write {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let text = toml::to_string(self).map_err(|e| err(std::io::Error::other(e.to_string())))?;
        let tmp = path.with_extension("toml.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_resolves_relative_ca_files() {
        let dir = std::env::temp_dir().join(format!("gustavo-cfg-{}", std::process::id()));
        let path = dir.join("client.toml");
        let f = ClientFile {
            server: Some("https://127.0.0.1:7420".into()),
            token: Some("t".into()),
            ca: Some("-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into()),
            ca_file: None,
            user: None,
        };
        f.save(&path).unwrap();
        assert_eq!(ClientFile::load(&path).unwrap(), f);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "ca_file = \"ca.crt\"\n").unwrap();
        std::fs::write(dir.join("ca.crt"), "PEM").unwrap();
        let f = ClientFile::load(&path).unwrap();
        assert_eq!(f.ca_pem().unwrap().as_deref(), Some("PEM"));
        std::fs::write(&path, "bogus = 1\n").unwrap();
        assert!(ClientFile::load(&path).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
