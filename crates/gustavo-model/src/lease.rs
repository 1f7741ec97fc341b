//! Per-client deployments and their leases.
//!
//! A deployment is one client's instance of a recipe app on one site's node. It lives on a
//! lease: `Initializing` (stored; the node is creating the backend) → `Deployed` (the node
//! reports it running) → `Expiring` (the lease ran out; a grace period in which the backend
//! still runs and any request brings it back to `Deployed`) → `Expired` (the record is
//! deleted, and with it the backend from the node's desired state).
//!
//! Sinfonia's README promises "deployment requests bump expiration time" and an Expiring
//! state; its code does neither (it expires 5 minutes after creation unless the tunnel is
//! busy, with no grace). Here every request for the same (uuid, key) renews the lease, and
//! the grace is real.
//!
//! The clock is an argument everywhere (Unix seconds), so the machine is tested on a fake
//! one. After a server restart nobody can have renewed while it was down, so lease time is
//! counted from the server's start at the earliest (`started`), as node liveness is.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::sites::{Cidr, GeoPoint};
use crate::wireguard::TunnelStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseState {
    Initializing,
    Deployed,
    Expiring,
    Expired,
}

impl LeaseState {
    pub fn as_str(&self) -> &'static str {
        match self {
            LeaseState::Initializing => "Initializing",
            LeaseState::Deployed => "Deployed",
            LeaseState::Expiring => "Expiring",
            LeaseState::Expired => "Expired",
        }
    }
}

/// How long leases last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Seconds a lease lasts after its last renewal.
    pub duration_s: u64,
    /// Seconds in `Expiring` before the backend is removed.
    pub grace_s: u64,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        // Sinfonia's LEASE_DURATION, plus a minute of grace.
        LeaseConfig {
            duration_s: 300,
            grace_s: 60,
        }
    }
}

/// Whether the client's tunnel is set up on the site, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunnel {
    pub set_up: bool,
    pub reason: String,
    /// Unix seconds of the client's last WireGuard handshake with the site (0: none yet).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub latest_handshake: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Tunnel {
    /// The state of `d`'s tunnel from what its node last reported (`None`: no report of a
    /// tunnel since the server started).
    pub fn from_status(d: &Deployment, status: Option<&TunnelStatus>) -> Tunnel {
        let down = |why: String| Tunnel {
            set_up: false,
            reason: format!("the tunnel is not set up: {why}"),
            latest_handshake: 0,
        };
        let Some(t) = status else {
            return down(format!(
                "node {} has not reported a WireGuard interface yet",
                d.node
            ));
        };
        if let Some(e) = &t.error {
            return down(format!("on node {}: {e}", d.node));
        }
        if t.site != d.site {
            return down(format!(
                "node {} runs the tunnel of site {} (one site's tunnel per node)",
                d.node, t.site
            ));
        }
        match t.peer(&d.key) {
            None => down(format!(
                "node {} has not added this client to {} yet",
                d.node, t.interface
            )),
            Some(p) => Tunnel {
                set_up: true,
                reason: if p.latest_handshake == 0 {
                    format!(
                        "peer added on {} of node {}; no handshake from the client yet",
                        t.interface, d.node
                    )
                } else {
                    format!(
                        "client connected through {} of node {}",
                        t.interface, d.node
                    )
                },
                latest_handshake: p.latest_handshake,
            },
        }
    }
}

/// One client's deployment, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    /// `<app>-<8 hex>`: the backend's app name on the node, and Sinfonia's DeploymentName.
    pub name: String,
    pub app: String,
    pub uuid: String,
    /// The client's WireGuard public key (standard base64).
    pub key: String,
    pub site: String,
    pub node: String,
    pub client_ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_location: Option<GeoPoint>,
    /// The tunnel address given to the client.
    pub address: IpAddr,
    pub state: LeaseState,
    pub created_at: u64,
    /// Last renewal (creation counts as one).
    pub renewed_at: u64,
    /// When the state last changed.
    pub since: u64,
    /// Requests that renewed it.
    #[serde(default)]
    pub renewals: u64,
    /// The revision of its last change.
    #[serde(default)]
    pub revision: u64,
    /// Its place among the live deployments of the same app on the same node, from 0: the
    /// backend binds the recipe's host ports plus this, so several clients' backends fit
    /// on one node. Kept for the deployment's life, so its ports never move.
    #[serde(default)]
    pub slot: u32,
}

impl Deployment {
    /// When the lease runs out (→ Expiring), counted from `started` at the earliest.
    pub fn lease_end(&self, cfg: &LeaseConfig, started: u64) -> u64 {
        self.renewed_at.max(started).saturating_add(cfg.duration_s)
    }

    /// The state the lease should move to at `now`, if any. `running` says whether the
    /// node reports the backend running at its current spec.
    pub fn next_state(
        &self,
        now: u64,
        started: u64,
        cfg: &LeaseConfig,
        running: bool,
    ) -> Option<LeaseState> {
        let end = self.lease_end(cfg, started);
        match self.state {
            LeaseState::Expired => None,
            _ if now >= end.saturating_add(cfg.grace_s) => Some(LeaseState::Expired),
            LeaseState::Initializing | LeaseState::Deployed if now >= end => {
                Some(LeaseState::Expiring)
            }
            LeaseState::Initializing if running => Some(LeaseState::Deployed),
            // Renewed during the grace: back to serving.
            LeaseState::Expiring if now < end => Some(if running {
                LeaseState::Deployed
            } else {
                LeaseState::Initializing
            }),
            _ => None,
        }
    }

    /// A request for this deployment at `now`: the lease starts again, and an `Expiring`
    /// deployment comes back (to `Deployed` if its backend still runs).
    pub fn renew(&mut self, now: u64) {
        self.renewed_at = now;
        self.renewals += 1;
        if self.state == LeaseState::Expiring {
            self.state = LeaseState::Deployed;
            self.since = now;
        }
    }

    pub fn is_live(&self) -> bool {
        self.state != LeaseState::Expired
    }
}

/// The site's own side of every tunnel: the pool's first host address. Never given to a
/// client; a client reaches its backend's ports at this address through the tunnel.
pub fn site_address(pool: &Cidr) -> Option<Ipv4Addr> {
    pool.v4_hosts().map(|(first, _)| Ipv4Addr::from(first))
}

/// The lowest free host address of `pool` not in `used` (IPv4 pools only), after the
/// site's own ([`site_address`]). The lowest, not a random one (Sinfonia samples 32 at
/// random and can give up on a busy pool): a free address is always found while one
/// exists, and allocation is reproducible.
pub fn allocate(pool: &Cidr, used: &BTreeSet<IpAddr>) -> Option<IpAddr> {
    let (first, last) = pool.v4_hosts()?;
    (first.checked_add(1)?..=last)
        .map(|a| IpAddr::V4(Ipv4Addr::from(a)))
        .find(|a| !used.contains(a))
}

/// The lowest slot not taken by a live deployment of `app` on `node`.
pub fn free_slot<'a>(
    deployments: impl IntoIterator<Item = &'a Deployment>,
    app: &str,
    node: &str,
) -> u32 {
    let taken: BTreeSet<u32> = deployments
        .into_iter()
        .filter(|d| d.app == app && d.node == node && d.is_live())
        .map(|d| d.slot)
        .collect();
    (0..).find(|s| !taken.contains(s)).unwrap_or(0)
}

/// A fixed-window limit per key (anonymous deploys: client key and address).
#[derive(Debug, Default)]
pub struct RateLimit {
    windows: HashMap<String, (u64, u32)>,
}

impl RateLimit {
    /// Counts one request by `key` at `now`; `Err(seconds to wait)` once `max` requests
    /// were made in the current `window_s`-second window.
    pub fn check(&mut self, key: &str, now: u64, max: u32, window_s: u64) -> Result<(), u64> {
        let window_s = window_s.max(1);
        let start = now - now % window_s;
        if self.windows.len() > 100_000 {
            self.windows.retain(|_, (s, _)| *s >= start);
        }
        let w = self.windows.entry(key.to_string()).or_insert((start, 0));
        if w.0 != start {
            *w = (start, 0);
        }
        if w.1 >= max {
            return Err(start + window_s - now);
        }
        w.1 += 1;
        Ok(())
    }
}

/// A deployment as the native API shows it, with the client's tunnel config.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentView {
    #[serde(flatten)]
    pub deployment: Deployment,
    /// The client's tunnel as the site's node last reported it (never stored: derived).
    pub tunnel: Tunnel,
    /// When the lease runs out unless renewed (Unix seconds).
    pub lease_ends_at: u64,
    pub sinfonia: crate::compat::sinfonia::CloudletDeployment,
}

/// `gustavo deploy --explain`: the recipe and how the sites rank for this client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Explain {
    pub app: String,
    pub uuid: String,
    pub client_ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_location: Option<GeoPoint>,
    pub ranking: crate::matcher::Ranking,
}

/// Deployments by name, the way the leases controller walks them.
pub type Deployments = BTreeMap<String, Deployment>;

#[cfg(test)]
mod tests {
    use super::*;

    struct Clock(u64);
    impl Clock {
        fn advance(&mut self, s: u64) -> u64 {
            self.0 += s;
            self.0
        }
    }

    fn dep(now: u64) -> Deployment {
        Deployment {
            name: "hello-0a1b2c3d".into(),
            app: "hello".into(),
            uuid: "00000000-0000-0000-0000-000000000000".into(),
            key: "k".into(),
            site: "s".into(),
            node: "n".into(),
            client_ip: "127.0.0.1".into(),
            client_location: None,
            address: "10.5.0.1".parse().unwrap(),
            state: LeaseState::Initializing,
            created_at: now,
            renewed_at: now,
            since: now,
            renewals: 0,
            revision: 1,
            slot: 0,
        }
    }

    const CFG: LeaseConfig = LeaseConfig {
        duration_s: 10,
        grace_s: 5,
    };

    /// Steps the machine like the controller does.
    fn step(d: &mut Deployment, now: u64, running: bool) -> Option<LeaseState> {
        let next = d.next_state(now, 0, &CFG, running)?;
        d.state = next;
        d.since = now;
        Some(next)
    }

    #[test]
    fn full_life_without_renewal() {
        let mut clock = Clock(1000);
        let mut d = dep(clock.0);
        assert_eq!(step(&mut d, clock.advance(1), false), None);
        assert_eq!(
            step(&mut d, clock.advance(1), true),
            Some(LeaseState::Deployed)
        );
        assert_eq!(step(&mut d, clock.advance(7), true), None);
        assert_eq!(
            step(&mut d, clock.advance(1), true),
            Some(LeaseState::Expiring)
        );
        assert_eq!(step(&mut d, clock.advance(4), true), None);
        assert_eq!(
            step(&mut d, clock.advance(1), true),
            Some(LeaseState::Expired)
        );
        assert_eq!(step(&mut d, clock.advance(100), true), None);
    }

    #[test]
    fn renewals_keep_it_and_bring_it_back_from_expiring() {
        let mut clock = Clock(0);
        let mut d = dep(clock.0);
        step(&mut d, clock.advance(1), true);
        for _ in 0..10 {
            clock.advance(8);
            d.renew(clock.0);
            assert_eq!(step(&mut d, clock.0, true), None);
        }
        assert_eq!(d.state, LeaseState::Deployed);
        assert_eq!(
            step(&mut d, clock.advance(10), true),
            Some(LeaseState::Expiring)
        );
        d.renew(clock.advance(2));
        assert_eq!(d.state, LeaseState::Deployed);
        assert_eq!(d.renewals, 11);
        assert_eq!(step(&mut d, clock.advance(9), true), None);
    }

    #[test]
    fn a_long_grace_skips_straight_to_expired_and_restarts_count_from_start() {
        let mut d = dep(0);
        // Nothing heard for far longer than lease and grace: straight to Expired.
        assert_eq!(d.next_state(100, 0, &CFG, false), Some(LeaseState::Expired));
        // But a server that started at 95 gives it a fresh lease from then.
        assert_eq!(d.next_state(100, 95, &CFG, false), None);
        assert_eq!(
            d.next_state(100, 95, &CFG, true),
            Some(LeaseState::Deployed)
        );
        d.state = LeaseState::Deployed;
        assert_eq!(
            d.next_state(105, 95, &CFG, true),
            Some(LeaseState::Expiring)
        );
    }

    #[test]
    fn tunnel_state_follows_the_node_report() {
        use crate::wireguard::PeerStatus;
        let d = dep(100);
        let t = Tunnel::from_status(&d, None);
        assert!(!t.set_up && t.reason.contains("has not reported"), "{t:?}");
        let mut st = TunnelStatus {
            site: "s".into(),
            interface: "gw0".into(),
            listen_port: 51820,
            ..TunnelStatus::default()
        };
        assert!(
            Tunnel::from_status(&d, Some(&st))
                .reason
                .contains("not added")
        );
        st.peers.push(PeerStatus {
            public_key: "k".into(),
            ..PeerStatus::default()
        });
        let t = Tunnel::from_status(&d, Some(&st));
        assert!(t.set_up && t.reason.contains("no handshake"), "{t:?}");
        st.peers[0].latest_handshake = 150;
        let t = Tunnel::from_status(&d, Some(&st));
        assert!(t.set_up && t.latest_handshake == 150, "{t:?}");
        st.error = Some("no WireGuard here".into());
        let t = Tunnel::from_status(&d, Some(&st));
        assert!(!t.set_up && t.reason.contains("no WireGuard here"), "{t:?}");
        st.error = None;
        st.site = "other".into();
        assert!(
            Tunnel::from_status(&d, Some(&st))
                .reason
                .contains("site other")
        );
    }

    #[test]
    fn allocation_never_collides() {
        let pool = Cidr::parse("10.5.0.0/29").unwrap();
        assert_eq!(site_address(&pool).unwrap().to_string(), "10.5.0.1");
        let mut used: BTreeSet<IpAddr> = ["10.5.0.4", "10.5.0.5", "10.5.0.6"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let a = allocate(&pool, &used).unwrap();
        used.insert(a);
        let b = allocate(&pool, &used).unwrap();
        used.insert(b);
        assert_eq!(
            (a.to_string(), b.to_string()),
            ("10.5.0.2".into(), "10.5.0.3".into())
        );
        assert_eq!(allocate(&pool, &used), None);
        used.remove(&a);
        assert_eq!(allocate(&pool, &used), Some(a));
        assert_eq!(allocate(&Cidr::parse("fd00::/64").unwrap(), &used), None);
    }

    #[test]
    fn slots_are_per_app_and_node_and_reused() {
        let mut a = dep(0);
        a.slot = 0;
        let mut b = dep(0);
        b.name = "b".into();
        b.slot = 1;
        let mut other = dep(0);
        other.node = "m".into();
        assert_eq!(free_slot([&a, &b, &other], "hello", "n"), 2);
        assert_eq!(free_slot([&b], "hello", "n"), 0);
        assert_eq!(free_slot([&a, &b], "hello", "m"), 0);
        assert_eq!(free_slot([&a, &b], "other", "n"), 0);
    }

    #[test]
    fn rate_limit_windows() {
        let mut r = RateLimit::default();
        assert!(r.check("k", 100, 2, 60).is_ok());
        assert!(r.check("k", 101, 2, 60).is_ok());
        assert_eq!(r.check("k", 110, 2, 60), Err(10));
        assert!(r.check("other", 110, 2, 60).is_ok());
        assert!(r.check("k", 120, 2, 60).is_ok());
    }
}
