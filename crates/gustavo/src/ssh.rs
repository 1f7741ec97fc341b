//! Commands on a host over SSH, behind the small [`Remote`] trait so the install steps can be
//! unit-tested with a double. The real one runs the system's OpenSSH client with strict
//! options — never Cloudmesh's `StrictHostKeyChecking=no`:
//!
//! - host keys are checked against known_hosts (`StrictHostKeyChecking=yes`); a host seen
//!   for the first time is accepted and remembered only with `--accept-new-host-keys`
//!   (`accept-new`), and a changed key is refused either way;
//! - `BatchMode=yes`: no password prompt ever blocks a run (keys or an agent only);
//! - `ConnectTimeout`, keep-alives, and a deadline per step, after which ssh is killed;
//! - one master connection per host (`ControlMaster`), so the steps of a host cost one
//!   handshake.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RemoteError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error(
        "host key not trusted: {0} (check the key and add it to known_hosts, or pass --accept-new-host-keys to accept a host seen for the first time)"
    )]
    HostKey(String),
    #[error("login refused: {0}")]
    Auth(String),
    #[error("`{0}` took longer than {1} s")]
    Timeout(String, u64),
    #[error("cannot run ssh: {0}")]
    Local(String),
}

/// What a command printed and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

/// One host's shell.
pub trait Remote: Send + Sync {
    /// Runs `script` with `sh -c` on the host, feeding it `stdin`. `what` names the step.
    fn run(
        &self,
        what: &str,
        script: &str,
        stdin: &[u8],
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Output, RemoteError>> + Send;
}

/// Settings shared by every host of a run.
#[derive(Debug, Clone)]
pub struct SshOptions {
    pub user: Option<String>,
    pub port: u16,
    pub key: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub accept_new: bool,
    pub connect_timeout: Duration,
    /// Where the master connections' sockets live (a private temp dir of the run).
    pub control_dir: PathBuf,
}

/// The system's `ssh` to one host.
pub struct SystemSsh {
    target: String,
    args: Vec<String>,
}

impl SystemSsh {
    pub fn new(opts: &SshOptions, host: &gustavo_model::hostinstall::Host) -> SystemSsh {
        let mut args: Vec<String> = Vec::new();
        let mut o = |k: &str, v: String| {
            args.push("-o".into());
            args.push(format!("{k}={v}"));
        };
        o("BatchMode", "yes".into());
        o(
            "StrictHostKeyChecking",
            if opts.accept_new { "accept-new" } else { "yes" }.into(),
        );
        if let Some(k) = &opts.known_hosts {
            o("UserKnownHostsFile", k.display().to_string());
        }
        o(
            "ConnectTimeout",
            opts.connect_timeout.as_secs().max(1).to_string(),
        );
        o("ServerAliveInterval", "10".into());
        o("ServerAliveCountMax", "3".into());
        o("LogLevel", "ERROR".into());
        o("ControlMaster", "auto".into());
        o(
            "ControlPath",
            opts.control_dir.join("%C").display().to_string(),
        );
        o("ControlPersist", "60".into());
        if let Some(k) = &opts.key {
            o("IdentitiesOnly", "yes".into());
            args.push("-i".into());
            args.push(k.display().to_string());
        }
        args.push("-p".into());
        args.push(host.port.unwrap_or(opts.port).to_string());
        let user = host.user.as_ref().or(opts.user.as_ref());
        let target = match user {
            Some(u) => format!("{u}@{}", host.host),
            None => host.host.clone(),
        };
        SystemSsh { target, args }
    }

    /// Closes the master connection (at the end of a run).
    pub async fn close(&self) {
        let _ = Command::new("ssh")
            .args(&self.args)
            .args(["-O", "exit", &self.target])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
}

/// Tells ssh's own failures (exit 255) apart by what it said.
fn classify(stderr: &str) -> RemoteError {
    let line = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("ssh failed without a message")
        .to_string();
    let s = stderr.to_ascii_lowercase();
    if s.contains("host key verification failed")
        || s.contains("remote host identification has changed")
        || s.contains("no ed25519 host key is known")
        || s.contains("host key for")
    {
        RemoteError::HostKey(line)
    } else if s.contains("permission denied") || s.contains("too many authentication failures") {
        RemoteError::Auth(line)
    } else {
        RemoteError::Unreachable(line)
    }
}

impl Remote for SystemSsh {
    async fn run(
        &self,
        what: &str,
        script: &str,
        stdin: &[u8],
        timeout: Duration,
    ) -> Result<Output, RemoteError> {
        let mut child = Command::new("ssh")
            .args(&self.args)
            .arg(&self.target)
            .arg("--")
            // The remote side hands the command line to the login shell; quote it as one
            // argument of `sh -c`.
            .arg(format!(
                "sh -c {}",
                gustavo_model::hostinstall::sh_quote(script)
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| RemoteError::Local(e.to_string()))?;
        let mut input = child.stdin.take();
        let data = stdin.to_vec();
        let feed = async move {
            if let Some(i) = input.as_mut() {
                let _ = i.write_all(&data).await;
                let _ = i.shutdown().await;
            }
            drop(input);
        };
        let run = async {
            let (_, out) = tokio::join!(feed, child.wait_with_output());
            out
        };
        let out = match tokio::time::timeout(timeout, run).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return Err(RemoteError::Local(e.to_string())),
            Err(_) => return Err(RemoteError::Timeout(what.to_string(), timeout.as_secs())),
        };
        let code = out.status.code().unwrap_or(-1);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        if code == 255 {
            return Err(classify(&stderr));
        }
        Ok(Output {
            code,
            stdout: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr,
        })
    }
}

/// Whether a private key file exists, for an early clear error.
pub fn check_key(key: &Path) -> Result<(), String> {
    std::fs::metadata(key)
        .map(|_| ())
        .map_err(|e| format!("--ssh-key {}: {e}", key.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_failures_are_told_apart() {
        assert!(matches!(
            classify("No ED25519 host key is known for [10.0.0.2]:22 and you have requested strict checking.\r\nHost key verification failed.\r\n"),
            RemoteError::HostKey(l) if l == "Host key verification failed."
        ));
        assert!(matches!(
            classify("gus@10.0.0.2: Permission denied (publickey,password)."),
            RemoteError::Auth(_)
        ));
        assert!(matches!(
            classify("ssh: connect to host 127.0.0.1 port 1: Connection refused"),
            RemoteError::Unreachable(l) if l.contains("Connection refused")
        ));
    }

    #[test]
    fn options_are_strict() {
        let opts = SshOptions {
            user: Some("pi".into()),
            port: 22,
            key: Some("/k".into()),
            known_hosts: Some("/kh".into()),
            accept_new: false,
            connect_timeout: Duration::from_secs(7),
            control_dir: "/tmp/c".into(),
        };
        let host = gustavo_model::hostinstall::Host::parse("root@h:2222").unwrap();
        let s = SystemSsh::new(&opts, &host);
        let a = s.args.join(" ");
        for want in [
            "BatchMode=yes",
            "StrictHostKeyChecking=yes",
            "UserKnownHostsFile=/kh",
            "ConnectTimeout=7",
            "-i /k",
            "-p 2222",
        ] {
            assert!(a.contains(want), "{want} in {a}");
        }
        assert_eq!(s.target, "root@h");
        let s = SystemSsh::new(
            &SshOptions {
                accept_new: true,
                ..opts
            },
            &gustavo_model::hostinstall::Host::parse("h").unwrap(),
        );
        assert!(
            s.args
                .join(" ")
                .contains("StrictHostKeyChecking=accept-new")
        );
        assert_eq!(s.target, "pi@h");
    }
}
