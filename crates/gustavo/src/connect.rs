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

/// Where a command's token comes from, so `whoami` and errors can say whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--token` or `GUSTAVO_TOKEN`.
    Flag,
    /// A client config; `user` is set in the ones `gustavo login` writes.
    File { path: PathBuf, user: Option<String> },
    /// No token anywhere.
    Nothing,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag => f.write_str("the token given by --token or GUSTAVO_TOKEN"),
            Source::File {
                path,
                user: Some(u),
            } => write!(f, "user {u}'s session in {}", path.display()),
            Source::File { path, user: None } => write!(f, "the token in {}", path.display()),
            Source::Nothing => f.write_str("no token"),
        }
    }
}

/// The client configs looked at when `--config` is not given, in order: the person's own
/// (from `gustavo login`), then the one the server on this machine wrote for its admin.
pub fn candidates() -> Vec<PathBuf> {
    [
        user_config_path(),
        Some(default_data_dir().join("client.toml")),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The client config in use: `--config`/`GUSTAVO_CONFIG`, else the first candidate that
/// holds a token — a config left without one (after `gustavo logout`) never shadows the
/// next — else, for the server's address and CA alone, the first that exists. `looked`
/// says what was skipped and why, for the "no token" error.
pub fn config_file(cli: &Cli, need_token: bool) -> Result<Resolved> {
    if let Some(p) = &cli.config {
        return Ok(Resolved {
            file: Some((p.clone(), ClientFile::load(p)?)),
            looked: Vec::new(),
        });
    }
    let mut looked = Vec::new();
    let mut fallback = None;
    for p in candidates() {
        match ClientFile::load(&p) {
            Ok(f) if f.token.is_some() || !need_token => {
                return Ok(Resolved {
                    file: Some((p, f)),
                    looked,
                });
            }
            Ok(f) => {
                looked.push(format!("{} (no token)", p.display()));
                fallback.get_or_insert((p, f));
            }
            // Missing, or not ours to read (another user's server): try the next one.
            Err(ConfigError::Read { source, .. }) => {
                let why = if source.kind() == std::io::ErrorKind::NotFound {
                    "not found".to_string()
                } else {
                    source.to_string()
                };
                looked.push(format!("{} ({why})", p.display()));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Resolved {
        file: fallback,
        looked,
    })
}

/// The config chosen, and the candidates passed over on the way.
pub struct Resolved {
    pub file: Option<(PathBuf, ClientFile)>,
    pub looked: Vec<String>,
}

/// Server, token and CA, from flags and environment first, then the config file.
pub struct Target {
    pub server: String,
    pub token: Option<String>,
    pub ca: Option<String>,
    pub source: Source,
    /// Configs passed over, for the "no token" error.
    pub looked: Vec<String>,
}

/// Where to connect. With `need_token`, a config without a token is passed over.
pub fn target_for(cli: &Cli, need_token: bool) -> Result<Target> {
    let resolved = config_file(cli, need_token && cli.token.is_none())?;
    let (path, file) = match resolved.file {
        Some((p, f)) => (Some(p), f),
        None => (None, ClientFile::default()),
    };
    let server = cli
        .server
        .as_deref()
        .map(normalize_server)
        .or_else(|| file.server.as_deref().map(normalize_server))
        .unwrap_or_else(|| DEFAULT_SERVER.to_string());
    let (token, source) = match (&cli.token, &file.token, path) {
        (Some(t), _, _) => (Some(t.clone()), Source::Flag),
        (None, Some(t), Some(path)) => (
            Some(t.clone()),
            Source::File {
                path,
                user: file.user.clone(),
            },
        ),
        _ => (None, Source::Nothing),
    };
    let ca = match &cli.ca_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the CA file {}", p.display()))?,
        ),
        None => file.ca_pem()?,
    };
    Ok(Target {
        server,
        token,
        ca,
        source,
        looked: resolved.looked,
    })
}

/// Where to connect for a command that presents a token.
pub fn target(cli: &Cli) -> Result<Target> {
    target_for(cli, true)
}

/// A client for people's commands.
pub fn client(cli: &Cli) -> Result<Client> {
    let t = target(cli)?;
    let Some(token) = t.token else {
        let looked = if t.looked.is_empty() {
            String::new()
        } else {
            format!(" (looked in {})", t.looked.join(", "))
        };
        return Err(crate::Exit(
            1,
            format!(
                "no token{looked}: run `gustavo login`, pass --config FILE (the server writes \
                 <data-dir>/client.toml), or pass --token"
            ),
        )
        .into());
    };
    Ok(Client::with_ca(&t.server, &token, t.ca.as_deref())?)
}

/// Adds to a refusal (401, 403) whose credentials were used and what else is on this
/// machine, so nobody acts as someone else without knowing it. A 404 to a logged-in user
/// gets the same note: objects outside their grants answer 404, not 403.
pub fn explain(cli: &Cli, e: anyhow::Error) -> anyhow::Error {
    let Some(status) = e
        .downcast_ref::<gustavo_client::ClientError>()
        .and_then(|c| c.status())
        .filter(|s| matches!(s, 401 | 403 | 404))
    else {
        return e;
    };
    let Ok(t) = target(cli) else {
        return e;
    };
    let session = matches!(&t.source, Source::File { user: Some(_), .. });
    if status == 404 && !session {
        return e;
    }
    let mut msg = format!("{e}\n  credentials: {}", t.source);
    if status == 404 {
        msg.push_str(" (what a user has no grant on looks absent)");
    }
    // Another config on this machine that would be used without this one.
    if let Source::File {
        path,
        user: Some(user),
    } = &t.source
        && cli.config.is_none()
    {
        let next = candidates()
            .into_iter()
            .filter(|p| p != path)
            .find(|p| ClientFile::load(p).is_ok_and(|f| f.token.is_some()));
        match (status, next) {
            (401, _) => msg.push_str(&format!(
                "\n  log in again with `gustavo login -u {user}`, or forget the session with \
                 `gustavo logout`"
            )),
            (_, Some(next)) => msg.push_str(&format!(
                "\n  {} is also on this machine: pass `--config {}` to use it, or \
                 `gustavo logout` to stop acting as {user}",
                next.display(),
                next.display()
            )),
            _ => {}
        }
    }
    crate::Exit(1, msg).into()
}

/// This machine's host name, made into a valid node name.
pub fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_else(|_| "node".into());
    let first = raw.trim().split('.').next().unwrap_or("node");
    let name = gustavo_model::names::sanitize(first);
    if name.is_empty() { "node".into() } else { name }
}
