//! The site's WireGuard interface for Sinfonia clients.
//!
//! When per-client deployments run on this node, its desired state names a tunnel: the
//! site's key pair, the site's address in the client pool, and one peer per client. The
//! [`TunnelLoop`] makes the host's interface match it (at every change of the desired
//! state and every [`CHECK_EVERY`]) and publishes what the interface reports — peers,
//! their last handshakes and bytes received — for heartbeats, which the server shows in
//! each deployment and uses to renew leases. With no tunnel asked for, the interface is
//! removed.
//!
//! [`WgTools`] does it with the host's own tools: `ip link add … type wireguard` where the
//! kernel has WireGuard, else `wireguard-go` (userspace, through /dev/net/tun); `wg
//! syncconf` for the key, port and peers (live sessions of unchanged peers are kept); `ip`
//! for the address; `wg show … dump` to read it back. Where none of that is possible the
//! status carries the reason, and the deployment says its tunnel is not set up and why.

use std::future::Future;
use std::process::Stdio;
use std::time::Duration;

use gustavo_model::api::DesiredState;
use gustavo_model::wireguard::{DesiredTunnel, TunnelStatus, parse_dump, sync_config};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::watch;

use crate::pressure::Outputs;

/// How often the interface is checked and read back without a change of desired state.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);
/// The longest one `ip` or `wg` command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent's WireGuard settings (`--wireguard`, `--wireguard-interface`,
/// `--wireguard-port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireguardConfig {
    pub mode: TunnelMode,
    pub interface: String,
    pub port: u16,
}

/// Whether this agent runs a site's tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelMode {
    /// With the host's WireGuard (`--wireguard auto`).
    Host,
    /// Turned off (`--wireguard off`): a tunnel asked for is reported as not set up, and no
    /// interface is touched.
    Off,
    /// No tunnel task at all (simulated agents: nothing to report, nothing to run).
    Absent,
}

impl Default for WireguardConfig {
    fn default() -> Self {
        WireguardConfig {
            mode: TunnelMode::Host,
            interface: "gustavo-wg".into(),
            port: 51820,
        }
    }
}

/// Where the tunnel is made: the host (`WgTools`), or nowhere (`Disabled`).
pub trait TunnelHost: Send + Sync + 'static {
    /// Makes the interface match `t` and reads it back.
    fn apply(&self, t: &DesiredTunnel) -> impl Future<Output = TunnelStatus> + Send;
    /// Removes the interface, if there is one.
    fn remove(&self) -> impl Future<Output = ()> + Send;
}

/// A failed step, said the way the deployment will show it.
type Step<T> = Result<T, String>;

/// The host's `ip`, `wg` and `wireguard-go`.
#[derive(Debug, Clone)]
pub struct WgTools {
    pub interface: String,
    pub port: u16,
}

async fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Step<String> {
    let shown = format!("{program} {}", args.join(" "));
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("`{program}` is not installed"),
        _ => format!("`{shown}`: {e}"),
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .await
            .map_err(|e| format!("`{shown}`: {e}"))?;
    }
    let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| format!("`{shown}` took over {COMMAND_TIMEOUT:?}"))?
        .map_err(|e| format!("`{shown}`: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message");
        return Err(format!("`{shown}` failed: {}", first.trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl WgTools {
    async fn exists(&self) -> bool {
        run("ip", &["link", "show", "dev", &self.interface], None)
            .await
            .is_ok()
    }

    /// Creates the interface if missing: the kernel's WireGuard first, else wireguard-go.
    /// Returns which one runs it.
    async fn ensure(&self) -> Step<String> {
        let i = self.interface.as_str();
        if self.exists().await {
            // Made earlier (by this agent before a restart, or by hand): a userspace
            // interface has a control socket.
            let userspace = std::path::Path::new("/var/run/wireguard")
                .join(format!("{i}.sock"))
                .exists();
            return Ok(if userspace { "wireguard-go" } else { "kernel" }.into());
        }
        let kernel = match run("ip", &["link", "add", "dev", i, "type", "wireguard"], None).await {
            Ok(_) => return Ok("kernel".into()),
            Err(e) => e,
        };
        // wireguard-go puts itself in the background once the interface is up; it exits
        // when the interface is deleted.
        match run("wireguard-go", &[i], None).await {
            Ok(_) if self.exists().await => Ok("wireguard-go".into()),
            Ok(_) => Err(format!("wireguard-go {i} ran but made no interface")),
            Err(user) => Err(format!(
                "no WireGuard on this host: the kernel has none ({kernel}) and the userspace \
                 one did not start ({user}); install wireguard-go, or load the wireguard module"
            )),
        }
    }

    async fn address(&self, address: &str) -> Step<()> {
        let i = self.interface.as_str();
        let shown = run("ip", &["-o", "address", "show", "dev", i], None).await?;
        let has = shown
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| (w[0] == "inet" || w[0] == "inet6") && w[1] == address);
        if !has {
            run("ip", &["address", "flush", "dev", i], None).await?;
            run("ip", &["address", "add", address, "dev", i], None).await?;
        }
        run("ip", &["link", "set", "dev", i, "up"], None).await?;
        Ok(())
    }

    async fn apply_steps(&self, t: &DesiredTunnel, status: &mut TunnelStatus) -> Step<()> {
        status.implementation = self.ensure().await?;
        let i = self.interface.as_str();
        run(
            "wg",
            &["syncconf", i, "/dev/stdin"],
            Some(&sync_config(t, self.port)),
        )
        .await?;
        self.address(&t.address).await?;
        let (port, peers) = parse_dump(&run("wg", &["show", i, "dump"], None).await?)?;
        status.listen_port = port;
        status.peers = peers;
        Ok(())
    }
}

impl TunnelHost for WgTools {
    async fn apply(&self, t: &DesiredTunnel) -> TunnelStatus {
        let mut status = TunnelStatus {
            site: t.site.clone(),
            interface: self.interface.clone(),
            listen_port: self.port,
            ..TunnelStatus::default()
        };
        if let Err(e) = self.apply_steps(t, &mut status).await {
            status.error = Some(e);
        }
        status
    }

    async fn remove(&self) {
        if self.exists().await {
            match run("ip", &["link", "del", "dev", &self.interface], None).await {
                Ok(_) => tracing::info!(interface = %self.interface, "WireGuard interface removed"),
                Err(e) => tracing::warn!(error = %e, "cannot remove the WireGuard interface"),
            }
        }
    }
}

/// WireGuard turned off on this agent: a tunnel asked for is reported, with why, and
/// nothing on the host is touched.
#[derive(Debug, Clone)]
pub struct Disabled {
    pub interface: String,
}

impl TunnelHost for Disabled {
    async fn apply(&self, t: &DesiredTunnel) -> TunnelStatus {
        TunnelStatus {
            site: t.site.clone(),
            interface: self.interface.clone(),
            error: Some("WireGuard is turned off on this agent (--wireguard off)".into()),
            ..TunnelStatus::default()
        }
    }

    async fn remove(&self) {}
}

/// Keeps the interface as the desired state says, and its status on `out.tunnel`.
pub struct TunnelLoop<T: TunnelHost> {
    pub host: T,
    pub desired: watch::Receiver<Option<DesiredState>>,
    pub out: Outputs,
    pub every: Duration,
}

/// What makes a heartbeat go at once: the peers, the site or the error changed (not the
/// counters, which ride on the next regular heartbeat).
fn shape(s: &Option<TunnelStatus>) -> Option<(String, Option<String>, Vec<String>)> {
    s.as_ref().map(|s| {
        (
            s.site.clone(),
            s.error.clone(),
            s.peers.iter().map(|p| p.public_key.clone()).collect(),
        )
    })
}

impl<T: TunnelHost> TunnelLoop<T> {
    pub async fn run(mut self) {
        // Whether an interface may be there: at start (left by a deployment that expired
        // while the agent was down), and after running one.
        let mut may_exist = true;
        loop {
            let want = self
                .desired
                .borrow_and_update()
                .as_ref()
                .and_then(|d| d.tunnel.clone());
            let status = match &want {
                Some(t) => {
                    may_exist = true;
                    Some(self.host.apply(t).await)
                }
                None => {
                    if std::mem::take(&mut may_exist) {
                        self.host.remove().await;
                    }
                    None
                }
            };
            if let Some(e) = status.as_ref().and_then(|s| s.error.as_ref()) {
                tracing::warn!(error = %e, "the site's WireGuard interface is not set up");
            }
            let before = shape(&self.out.tunnel.borrow());
            let now = shape(&status);
            self.out.tunnel.send_replace(status);
            if before != now {
                self.out.changed.notify_one();
            }
            tokio::select! {
                c = self.desired.changed() => {
                    if c.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep(self.every) => {}
            }
        }
    }
}
