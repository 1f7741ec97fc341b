//! How peers find each other: mDNS/DNS-SD on the LAN (`_gustavo._tcp`); peers can also be
//! named by hand (`agent --peer-static NAME@ADDR:PORT`).
//!
//! Discovery only proposes candidates; a candidate becomes a peer once it answers over
//! the cluster's mutually authenticated TLS (see `peer::PeerNode`), and stops being one when
//! its record goes (goodbye packet or TTL) or its health checks fail.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use tokio::sync::mpsc;

/// The DNS-SD service type peers announce and browse.
pub const SERVICE_TYPE: &str = "_gustavo._tcp.local.";

/// What this device announces.
#[derive(Debug, Clone)]
pub struct Announce {
    pub node: String,
    pub port: u16,
    /// The first 16 hex characters of the cluster CA's fingerprint.
    pub cluster: String,
}

/// A candidate peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node: String,
    pub addrs: Vec<SocketAddr>,
    pub cluster: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Found(Candidate),
    /// Its record was withdrawn or expired.
    Gone(String),
}

/// A source of candidates.
pub trait Discovery: Send + 'static {
    /// Announces `me` and reports candidates until the receiver is dropped.
    fn start(self, me: Announce) -> Result<mpsc::Receiver<Event>, String>;
}

/// No discovery (`agent --peer-mdns off`): only peers named by hand (`--peer-static`).
pub struct Nothing;

impl Discovery for Nothing {
    fn start(self, _me: Announce) -> Result<mpsc::Receiver<Event>, String> {
        let (tx, rx) = mpsc::channel(1);
        // The sender lives until the receiver goes, so the channel never reads as ended.
        tokio::spawn(async move { tx.closed().await });
        Ok(rx)
    }
}

/// Interfaces that are not the LAN: container bridges and their veths, tunnels.
pub fn skipped_interface(name: &str) -> bool {
    [
        "docker",
        "br-",
        "veth",
        "cni",
        "flannel",
        "gustavo-wg",
        "wg",
        "tun",
        "virbr",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// mDNS/DNS-SD through `mdns-sd`, IPv4 and IPv6, container bridges skipped.
pub struct Mdns;

impl Discovery for Mdns {
    fn start(self, me: Announce) -> Result<mpsc::Receiver<Event>, String> {
        let daemon = mdns_sd::ServiceDaemon::new().map_err(|e| format!("mDNS: {e}"))?;
        let names: BTreeSet<String> = sysinfo::Networks::new_with_refreshed_list()
            .map(|n| n.keys().map(|k| k.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let skipped: Vec<mdns_sd::IfKind> = names
            .iter()
            .filter(|n| skipped_interface(n))
            .map(|n| mdns_sd::IfKind::Name(n.clone()))
            .collect();
        if !skipped.is_empty() {
            daemon
                .disable_interface(skipped)
                .map_err(|e| format!("mDNS: {e}"))?;
        }
        let info = mdns_sd::ServiceInfo::new(
            SERVICE_TYPE,
            &me.node,
            &format!("{}.local.", me.node),
            "",
            me.port,
            [("node", me.node.as_str()), ("cluster", me.cluster.as_str())].as_slice(),
        )
        .map_err(|e| format!("mDNS record: {e}"))?
        .enable_addr_auto();
        let own = info.get_fullname().to_string();
        daemon
            .register(info)
            .map_err(|e| format!("mDNS register: {e}"))?;
        let events = daemon
            .browse(SERVICE_TYPE)
            .map_err(|e| format!("mDNS browse: {e}"))?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    e = events.recv_async() => match e {
                        Ok(e) => e,
                        Err(_) => break,
                    },
                    _ = tx.closed() => break,
                };
                let out = match ev {
                    mdns_sd::ServiceEvent::ServiceResolved(s) if s.fullname != own => {
                        let node = s
                            .get_property_val_str("node")
                            .unwrap_or_default()
                            .to_string();
                        let cluster = s
                            .get_property_val_str("cluster")
                            .unwrap_or_default()
                            .to_string();
                        let mut addrs: Vec<SocketAddr> = s
                            .get_addresses()
                            .iter()
                            .map(|a| a.to_ip_addr())
                            .filter(|ip| !ip.is_loopback() && !is_link_local_v6(ip))
                            .map(|ip| SocketAddr::new(ip, s.get_port()))
                            .collect();
                        // IPv4 first: the likelier to be routable between peers.
                        addrs.sort_by_key(|a| (a.is_ipv6(), *a));
                        Event::Found(Candidate {
                            node,
                            addrs,
                            cluster,
                        })
                    }
                    mdns_sd::ServiceEvent::ServiceRemoved(_, fullname) if fullname != own => {
                        let node = fullname
                            .strip_suffix(&format!(".{SERVICE_TYPE}"))
                            .unwrap_or(&fullname)
                            .to_string();
                        Event::Gone(node)
                    }
                    _ => continue,
                };
                if tx.send(out).await.is_err() {
                    break;
                }
            }
            // Says goodbye, so peers drop this one at once.
            let _ = daemon.unregister(&own);
            let _ = daemon.shutdown();
        });
        Ok(rx)
    }
}

/// IPv6 link-local addresses need a scope to be dialled; the peer's other addresses do.
fn is_link_local_v6(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridges_and_tunnels_are_not_the_lan() {
        for n in [
            "docker0",
            "br-1a2b",
            "veth12ab",
            "gustavo-wg",
            "wg0",
            "tun0",
        ] {
            assert!(skipped_interface(n), "{n}");
        }
        for n in ["eth0", "wlan0", "enp3s0", "lo"] {
            assert!(!skipped_interface(n), "{n}");
        }
    }
}
