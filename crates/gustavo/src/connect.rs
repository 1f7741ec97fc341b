//! Where the server is and which token to use: flags, then `GUSTAVO_SERVER` /
//! `GUSTAVO_TOKEN`, then — on the server's own machine — the admin token the server wrote
//! into its data dir.

use std::path::PathBuf;

use anyhow::{Context, Result};
use gustavo_client::Client;

use crate::cli::Cli;

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7420";

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

/// Adds `http://` to a bare `host:port`.
pub fn normalize_server(s: &str) -> String {
    if s.starts_with("http://") || s.starts_with("https://") {
        s.trim_end_matches('/').to_string()
    } else {
        format!("http://{}", s.trim_end_matches('/'))
    }
}

/// The server: `--server`/`GUSTAVO_SERVER`, else the one whose data dir is on this machine,
/// else the default local address.
pub fn server_url(cli: &Cli) -> String {
    if let Some(s) = &cli.server {
        return normalize_server(s);
    }
    std::fs::read_to_string(default_data_dir().join("server-url"))
        .map(|s| normalize_server(s.trim()))
        .unwrap_or_else(|_| DEFAULT_SERVER.to_string())
}

/// A client for people's commands, authenticated as admin.
pub fn client(cli: &Cli) -> Result<Client> {
    let server = server_url(cli);
    let token = match &cli.token {
        Some(t) => t.clone(),
        None => {
            let path = default_data_dir().join("admin-token");
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .with_context(|| {
                    format!(
                        "no token given and none found at {} — pass --token or set GUSTAVO_TOKEN \
                         (the server writes its admin token to <data-dir>/admin-token)",
                        path.display()
                    )
                })?
        }
    };
    Ok(Client::new(&server, &token))
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
