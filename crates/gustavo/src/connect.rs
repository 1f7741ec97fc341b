//! Where the server is, which CA vouches for it and which token to use: flags and
//! environment (`--server`, `--token`, `--ca-file`) first, then a client config file —
//! `--config`/`GUSTAVO_CONFIG`, the user's own from `gustavo login`, or, on the server's
//! own machine, the `client.toml` the server wrote into its data dir.

use std::path::PathBuf;

use anyhow::{Context, Result};
use gustavo_client::Client;
use gustavo_client::config::{ClientFile, ConfigError};

use crate::cli::Cli;

pub const DEFAULT_SERVER: &str = "https://127.0.0.1:7420";

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// `/var/lib/gustavo` for root, `~/.local/share/gustavo` for anyone else.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("GUSTAVO_DATA_DIR") {
        return PathBuf::from(d);
    }
    if is_root() {
        return PathBuf::from("/var/lib/gustavo");
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("gustavo")
}

/// Adds `https://` to a bare `host:port`.
pub fn normalize_server(s: &str) -> String {
    if s.starts_with("http://") || s.starts_with("https://") {
        s.trim_end_matches('/').to_string()
    } else {
        format!("https://{}", s.trim_end_matches('/'))
    }
}

/// `$XDG_CONFIG_HOME/gustavo/client.toml`, else `~/.config/gustavo/client.toml`: where
/// `gustavo login` keeps a person's session.
pub fn user_config_path() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|d| d.join("gustavo").join("client.toml"))
}

/// The client config in use: `--config`/`GUSTAVO_CONFIG`, else the user's (from `login`),
/// else the one the server on this machine wrote into its data dir.
pub fn config_file(cli: &Cli) -> Result<Option<(PathBuf, ClientFile)>> {
    if let Some(p) = &cli.config {
        return Ok(Some((p.clone(), ClientFile::load(p)?)));
    }
    let candidates = [
        user_config_path(),
        Some(default_data_dir().join("client.toml")),
    ];
    for p in candidates.into_iter().flatten() {
        match ClientFile::load(&p) {
            Ok(f) => return Ok(Some((p, f))),
            // Missing, or not ours to read (another user's server): try the next one.
            Err(ConfigError::Read { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// Server, token and CA, from flags and environment first, then the config file.
pub struct Target {
    pub server: String,
    pub token: Option<String>,
    pub ca: Option<String>,
}

pub fn target(cli: &Cli) -> Result<Target> {
    let file = config_file(cli)?.map(|(_, f)| f).unwrap_or_default();
    let server = cli
        .server
        .as_deref()
        .map(normalize_server)
        .or_else(|| file.server.as_deref().map(normalize_server))
        .unwrap_or_else(|| DEFAULT_SERVER.to_string());
    let token = cli.token.clone().or(file.token.clone());
    let ca = match &cli.ca_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the CA file {}", p.display()))?,
        ),
        None => file.ca_pem()?,
    };
    Ok(Target { server, token, ca })
}

/// A client for people's commands.
pub fn client(cli: &Cli) -> Result<Client> {
    let t = target(cli)?;
    let token = t.token.with_context(|| {
        "no token: run `gustavo login`, pass --config FILE (the server writes \
         <data-dir>/client.toml), or pass --token"
            .to_string()
    })?;
    Ok(Client::with_ca(&t.server, &token, t.ca.as_deref())?)
}

/// This machine's host name, made into a valid node name.
pub fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_else(|_| "node".into());
    let first = raw.trim().split('.').next().unwrap_or("node");
    let name: String = first
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    if name.is_empty() { "node".into() } else { name }
}
