//! User-defined Docker networks: one per engine and name, referred to by ID once known.
//!
//! Docker (API ≤ 1.43) does not make network names unique: two clients that create `nebula`
//! at the same moment get two networks named `nebula`, and from then on every create that
//! names it fails with "network nebula is ambiguous" — for good. Several agents share one
//! engine (and one agent runs a worker per app), so that race is ordinary here. The rules:
//!
//! - **One creation per process and name.** Resolving a network holds a per-runtime lock,
//!   so an agent's app workers never race each other.
//! - **Across processes, everyone picks the same one.** After creating, the agent lists the
//!   name again. Among networks with that exact name, the *oldest* wins (creation time, then
//!   ID): an agent that saw only one network saw the oldest, and one that saw several picks
//!   it too, so all agents converge without talking to each other.
//! - **Refer by ID.** Containers are created with the winner's ID, which stays unambiguous
//!   even while duplicates exist.
//! - **Heal.** Empty duplicates that Gustavo made (label `gustavo.managed=true`) are removed
//!   whenever a name is resolved; duplicates that someone else made, or that still have
//!   containers, are left alone (the winner is used meanwhile).
//! - **Clean up.** When this agent's desired state stops naming a network, the networks of
//!   that name that Gustavo made are removed once no container uses them
//!   ([`DockerRuntime::prune_networks`]). An agent only cleans up what its own apps used, so
//!   it never races another agent for a network that agent is just setting up; if it does
//!   (two agents, one network), the other one sees "not found" on create, resolves again and
//!   recreates it — see `create` in `docker.rs`.

use std::collections::{BTreeSet, HashMap};

use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::{
    InspectNetworkOptions, ListContainersOptions, ListNetworksOptions,
};

use crate::docker::{DockerRuntime, message, status_code};
use crate::runtime::RuntimeError;

/// The label on every network Gustavo creates; only those are ever removed.
pub const MANAGED: &str = "gustavo.managed";

/// A network as listed: enough to pick a winner among same-named ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: String,
    /// Creation time as `(unix seconds, nanoseconds)`; `None` when unreadable (sorts last).
    pub created: Option<(i64, u32)>,
    pub managed: bool,
}

/// The network every agent uses among same-named ones: the oldest, ties broken by ID.
pub fn pick(candidates: &[Candidate]) -> Option<&Candidate> {
    candidates.iter().min_by(|a, b| {
        let key = |c: &Candidate| (c.created.is_none(), c.created, c.id.clone());
        key(a).cmp(&key(b))
    })
}

/// Parses Docker's RFC 3339 timestamps (`2026-12-02T19:10:00.123456789Z`, or with an offset
/// such as `+01:00`) into UTC `(seconds, nanoseconds)`.
pub fn parse_rfc3339(s: &str) -> Option<(i64, u32)> {
    let (date, rest) = s.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    // Split the time from the zone: `Z`, `+hh:mm` or `-hh:mm`.
    let (time, offset_s) = if let Some(t) = rest.strip_suffix('Z') {
        (t, 0)
    } else {
        let at = rest.rfind(['+', '-'])?;
        let (t, z) = rest.split_at(at);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let (zh, zm) = z[1..].split_once(':')?;
        let off = zh.parse::<i64>().ok()? * 3600 + zm.parse::<i64>().ok()? * 60;
        (t, sign * off)
    };
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':');
    let (h, mi, sec): (i64, i64, i64) = (
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || frac.len() > 9 {
        return None;
    }
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60 + sec - offset_s, nanos))
}

fn net_err(name: &str, e: &bollard::errors::Error) -> RuntimeError {
    RuntimeError::Network {
        name: name.into(),
        reason: message(e),
    }
}

impl DockerRuntime {
    /// Every network named exactly `name` (Docker's `name` filter also matches substrings).
    async fn networks_named(&self, name: &str) -> Result<Vec<Candidate>, RuntimeError> {
        let filters = HashMap::from([("name".to_string(), vec![name.to_string()])]);
        let list = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(|e| net_err(name, &e))?;
        Ok(list
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .filter_map(|n| {
                Some(Candidate {
                    id: n.id?,
                    created: n.created.as_deref().and_then(parse_rfc3339),
                    managed: n
                        .labels
                        .as_ref()
                        .is_some_and(|l| l.get(MANAGED).is_some_and(|v| v == "true")),
                })
            })
            .collect())
    }

    /// Removes `id` if no container uses it. Errors are expected (a container joined
    /// meanwhile, someone else removed it) and only logged. `unique_name`: no other network
    /// has this name, so a container that names it (a created one has no network ID yet)
    /// counts as a user too; among duplicates only containers that hold its ID count.
    async fn remove_if_empty(&self, name: &str, id: &str, unique_name: bool) {
        let Ok(net) = self
            .docker
            .inspect_network(id, None::<InspectNetworkOptions>)
            .await
        else {
            return;
        };
        if net.containers.as_ref().is_some_and(|c| !c.is_empty()) {
            return;
        }
        // `Containers` lists running endpoints only; a stopped container still needs its
        // network to start again.
        let mut refs = vec![id.to_string()];
        if unique_name {
            refs.push(name.to_string());
        }
        let filters = HashMap::from([("network".to_string(), refs)]);
        let users = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await;
        if !matches!(users, Ok(ref u) if u.is_empty()) {
            return;
        }
        match self.docker.remove_network(id).await {
            Ok(()) => tracing::info!(network = name, id, "removed unused network"),
            Err(e) => tracing::debug!(network = name, id, error = %message(&e), "network kept"),
        }
    }

    /// Removes the empty duplicates Gustavo made, keeping `winner`.
    async fn heal(&self, name: &str, all: &[Candidate], winner: &str) {
        for c in all.iter().filter(|c| c.id != winner && c.managed) {
            tracing::warn!(network = name, duplicate = %c.id, kept = winner, "duplicate network");
            self.remove_if_empty(name, &c.id, false).await;
        }
    }

    /// The ID of the network named `name`, created (bridge, labelled as ours) if missing.
    pub(crate) async fn resolve_network(&self, name: &str) -> Result<String, RuntimeError> {
        let _one_at_a_time = self.net_lock.lock().await;
        let mut created = false;
        // Two rounds: list (create if none), then list again to see a racing duplicate.
        for _ in 0..3 {
            let all = self.networks_named(name).await?;
            if let Some(w) = pick(&all) {
                let winner = w.id.clone();
                if all.len() > 1 {
                    self.heal(name, &all, &winner).await;
                }
                if !created || all.len() > 1 {
                    return Ok(winner);
                }
                // We just made one: look once more, in case another agent made one too.
                created = false;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
            let req = NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("bridge".into()),
                labels: Some(HashMap::from([(MANAGED.to_string(), "true".to_string())])),
                ..Default::default()
            };
            match self.docker.create_network(req).await {
                Ok(_) => {
                    tracing::info!(network = name, "created network");
                    created = true;
                }
                // Newer engines refuse a duplicate name: someone else just made it.
                Err(e) if status_code(&e) == Some(409) => {}
                Err(e) => return Err(net_err(name, &e)),
            }
        }
        let all = self.networks_named(name).await?;
        pick(&all)
            .map(|w| w.id.clone())
            .ok_or_else(|| RuntimeError::Network {
                name: name.into(),
                reason: "created, but the engine does not list it".into(),
            })
    }

    /// Removes the networks named in `unused` that Gustavo made and no container uses.
    pub(crate) async fn prune_networks(&self, unused: &BTreeSet<String>) {
        let _one_at_a_time = self.net_lock.lock().await;
        for name in unused {
            let Ok(all) = self.networks_named(name).await else {
                continue;
            };
            let unique_name = all.len() == 1;
            for c in all.iter().filter(|c| c.managed) {
                self.remove_if_empty(name, &c.id, unique_name).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, created: Option<&str>) -> Candidate {
        Candidate {
            id: id.into(),
            created: created.and_then(parse_rfc3339),
            managed: true,
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(
            parse_rfc3339("2026-12-02T19:10:00.5Z"),
            Some((1_796_238_600, 500_000_000))
        );
        assert_eq!(
            parse_rfc3339("2026-12-02T20:10:00.000000001+01:00"),
            Some((1_796_238_600, 1))
        );
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00-00:30"),
            Some((951_784_200, 0))
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2026-13-02T19:10:00Z"), None);
    }

    #[test]
    fn the_oldest_wins_whoever_looks() {
        let a = c("bbb", Some("2026-12-02T19:10:00.100Z"));
        let b = c("aaa", Some("2026-12-02T19:10:00.2Z"));
        let unreadable = c("000", None);
        assert_eq!(pick(&[a.clone(), b.clone()]).unwrap().id, "bbb");
        assert_eq!(pick(&[b.clone(), a.clone()]).unwrap().id, "bbb");
        assert_eq!(pick(&[unreadable.clone(), b.clone()]).unwrap().id, "aaa");
        // Same instant: the smaller ID, so every agent still agrees.
        let a2 = c("ccc", Some("2026-12-02T19:10:00.1Z"));
        assert_eq!(pick(&[a2, a]).unwrap().id, "bbb");
        assert_eq!(pick(&[]), None);
    }
}
