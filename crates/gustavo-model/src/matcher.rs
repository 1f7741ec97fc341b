//! Which site serves a client: Sinfonia's ordered matcher chain, with its two bugs fixed
//! (a client in ANY accepted network is accepted, not only one in all of them; resources
//! and requirements take part) and a reason for every decision, so `gustavo deploy
//! --explain` can show why a site was kept, dropped, or ranked where it is.
//!
//! Every matcher may drop sites (with a reason) and contributes one sort key; the chain's
//! order is the keys' order, so the first matcher decides and later ones break its ties —
//! the same ranking Sinfonia's yield-and-remove generators produce, written as a sort:
//!
//! - `network`: rejected clients out, then clients in none of a non-empty
//!   `accepted_clients` out; key: a site whose `local_networks` hold the client first.
//! - `location`: sites beyond the recipe's `max_rtt_ms` (light in fibre, 2·d/200 km/ms)
//!   out; key: geodesic distance to the site's closest location, unknown last. Without a
//!   client location nothing is dropped or ordered.
//! - `resources`: nodes that do not meet the requirements (free cores, free memory, GPUs,
//!   arch) out, and with them sites left with none; key: most headroom first (the free
//!   fraction of the scarcer of CPU and memory on the site's best node).
//! - `random`: a caller-given random key per site, the last tie-break.
//!
//! A matcher left out of the chain neither drops nor orders; the site's node must always
//! be ready and a member of the recipe app's groups (checked before any matcher).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::sites::{GeoPoint, Requirements, Site, min_rtt_ms};

/// One stage of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Matcher {
    Network,
    Location,
    Resources,
    Random,
}

impl Matcher {
    pub const DEFAULT: [Matcher; 4] = [
        Matcher::Network,
        Matcher::Location,
        Matcher::Resources,
        Matcher::Random,
    ];

    pub fn parse_chain(text: &str) -> Result<Vec<Matcher>, String> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let m = match part {
                "network" => Matcher::Network,
                "location" => Matcher::Location,
                "resources" => Matcher::Resources,
                "random" => Matcher::Random,
                other => {
                    return Err(format!(
                        "unknown matcher `{other}` (known: network, location, resources, random)"
                    ));
                }
            };
            if out.contains(&m) {
                return Err(format!("matcher `{part}` is named twice"));
            }
            out.push(m);
        }
        if out.is_empty() {
            return Err("the matcher chain is empty".into());
        }
        Ok(out)
    }
}

/// A node of a site as the matcher sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSample {
    pub name: String,
    /// Ready, and in one of the recipe app's groups.
    pub eligible: bool,
    pub cpus: u32,
    /// 0..1 busy fraction, from the latest vitals (`None`: no vitals yet).
    pub cpu_ratio: Option<f64>,
    pub memory_total_mb: u64,
    pub memory_used_mb: Option<u64>,
    pub arch: Option<String>,
    pub gpus: u32,
}

impl NodeSample {
    fn free_cores(&self) -> f64 {
        f64::from(self.cpus) * (1.0 - self.cpu_ratio.unwrap_or(0.0).clamp(0.0, 1.0))
    }

    fn free_memory_mb(&self) -> u64 {
        self.memory_total_mb
            .saturating_sub(self.memory_used_mb.unwrap_or(0))
    }

    /// The free fraction of the scarcer resource.
    fn headroom(&self) -> f64 {
        let cpu = 1.0 - self.cpu_ratio.unwrap_or(0.0).clamp(0.0, 1.0);
        let mem = if self.memory_total_mb == 0 {
            0.0
        } else {
            self.free_memory_mb() as f64 / self.memory_total_mb as f64
        };
        cpu.min(mem)
    }

    /// Why this node cannot take the recipe, if it cannot.
    fn unmet(&self, req: &Requirements) -> Option<String> {
        if let Some(c) = req.cpu
            && self.free_cores() + 1e-9 < c
        {
            return Some(format!(
                "{}: {:.2} free cores, needs {c}",
                self.name,
                self.free_cores()
            ));
        }
        if let Some(m) = &req.memory {
            let need = m.0.div_ceil(1024 * 1024);
            if self.free_memory_mb() < need {
                return Some(format!(
                    "{}: {} MB free memory, needs {need} MB",
                    self.name,
                    self.free_memory_mb()
                ));
            }
        }
        if let Some(g) = req.gpu
            && self.gpus < g
        {
            return Some(format!("{}: {} GPUs, needs {g}", self.name, self.gpus));
        }
        if let Some(a) = &req.arch
            && self.arch.as_deref() != Some(a.as_str())
        {
            return Some(format!(
                "{}: arch {}, needs {a}",
                self.name,
                self.arch.as_deref().unwrap_or("unknown")
            ));
        }
        None
    }
}

/// A site and its nodes, as the matcher sees them.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub site: &'a Site,
    pub nodes: Vec<NodeSample>,
    /// The `random` matcher's key for this site (the caller draws it).
    pub random: u64,
}

/// Who asks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Client {
    pub ip: IpAddr,
    pub location: Option<GeoPoint>,
}

/// A site kept, in rank order, with the node it would run on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranked {
    pub site: String,
    pub node: String,
    pub local: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance_km: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_rtt_ms: Option<f64>,
    pub headroom: f64,
    /// Why it ranks where it does, matcher by matcher.
    pub reasons: Vec<String>,
}

/// A site left out, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dropped {
    pub site: String,
    pub matcher: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ranking {
    pub chain: Vec<Matcher>,
    pub kept: Vec<Ranked>,
    pub dropped: Vec<Dropped>,
}

struct Working<'a> {
    c: &'a Candidate<'a>,
    node: &'a NodeSample,
    local: bool,
    distance: Option<f64>,
    headroom: f64,
    reasons: Vec<String>,
}

/// Runs the chain over `candidates` for `client` and the recipe's requirements.
pub fn rank(
    chain: &[Matcher],
    client: &Client,
    req: &Requirements,
    candidates: &[Candidate<'_>],
) -> Ranking {
    let uses = |m: Matcher| chain.contains(&m);
    let mut dropped = Vec::new();
    let mut drop = |site: &str, matcher: &str, reason: String| {
        dropped.push(Dropped {
            site: site.to_string(),
            matcher: matcher.to_string(),
            reason,
        })
    };
    let mut work: Vec<Working<'_>> = Vec::new();
    for c in candidates {
        let site = c.site;
        let eligible: Vec<&NodeSample> = c.nodes.iter().filter(|n| n.eligible).collect();
        if eligible.is_empty() {
            drop(
                &site.name,
                "site",
                "no ready node of the site is in the recipe app's groups".into(),
            );
            continue;
        }
        let mut reasons = Vec::new();
        if uses(Matcher::Network) {
            if let Some(n) = site.rejected_clients.iter().find(|n| n.contains(client.ip)) {
                drop(
                    &site.name,
                    "network",
                    format!("client {} is in rejected network {n}", client.ip),
                );
                continue;
            }
            if !site.accepted_clients.is_empty()
                && !site.accepted_clients.iter().any(|n| n.contains(client.ip))
            {
                drop(
                    &site.name,
                    "network",
                    format!(
                        "client {} is in none of the accepted networks ({})",
                        client.ip,
                        join(&site.accepted_clients)
                    ),
                );
                continue;
            }
        }
        let local_net = site.local_networks.iter().find(|n| n.contains(client.ip));
        let local = uses(Matcher::Network) && local_net.is_some();
        if let Some(n) = local_net.filter(|_| local) {
            reasons.push(format!("network: local (client in {n})"));
        } else if uses(Matcher::Network) {
            reasons.push("network: accepted, not local".into());
        }
        let distance = match (client.location, uses(Matcher::Location)) {
            (Some(at), true) => site
                .locations
                .iter()
                .map(|l| at.distance_km(l))
                .min_by(f64::total_cmp),
            _ => None,
        };
        if uses(Matcher::Location) {
            match (distance, req.max_rtt_ms) {
                (Some(d), Some(max)) if min_rtt_ms(d) > max => {
                    drop(
                        &site.name,
                        "location",
                        format!(
                            "{d:.0} km away: at least {:.1} ms round trip, the recipe allows {max} ms",
                            min_rtt_ms(d)
                        ),
                    );
                    continue;
                }
                (Some(d), _) => reasons.push(format!(
                    "location: {d:.1} km (≥ {:.2} ms round trip)",
                    min_rtt_ms(d)
                )),
                (None, _) if client.location.is_none() => {
                    reasons.push("location: client location unknown".into())
                }
                (None, _) => reasons.push("location: site has no location (ranked last)".into()),
            }
        }
        // The node: one meeting the requirements (when resources match), most headroom.
        let mut fits: Vec<&NodeSample> = if uses(Matcher::Resources) {
            let mut unmet = Vec::new();
            let ok: Vec<&NodeSample> = eligible
                .iter()
                .copied()
                .filter(|n| match n.unmet(req) {
                    Some(why) => {
                        unmet.push(why);
                        false
                    }
                    None => true,
                })
                .collect();
            if ok.is_empty() {
                drop(
                    &site.name,
                    "resources",
                    format!("requirements not met: {}", unmet.join("; ")),
                );
                continue;
            }
            ok
        } else {
            eligible
        };
        fits.sort_by(|a, b| {
            b.headroom()
                .total_cmp(&a.headroom())
                .then_with(|| a.name.cmp(&b.name))
        });
        let node = fits[0];
        let headroom = node.headroom();
        if uses(Matcher::Resources) {
            reasons.push(format!(
                "resources: node {} has {:.0}% headroom ({:.2} free cores, {} MB free)",
                node.name,
                headroom * 100.0,
                node.free_cores(),
                node.free_memory_mb()
            ));
        }
        work.push(Working {
            c,
            node,
            local,
            distance,
            headroom,
            reasons,
        });
    }
    work.sort_by(|a, b| {
        let mut o = std::cmp::Ordering::Equal;
        for m in chain {
            o = o.then_with(|| match m {
                Matcher::Network => b.local.cmp(&a.local),
                Matcher::Location => match (a.distance, b.distance) {
                    (Some(x), Some(y)) => x.total_cmp(&y),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => std::cmp::Ordering::Equal,
                },
                Matcher::Resources => b.headroom.total_cmp(&a.headroom),
                Matcher::Random => a.c.random.cmp(&b.c.random),
            });
        }
        o.then_with(|| a.c.site.name.cmp(&b.c.site.name))
    });
    Ranking {
        chain: chain.to_vec(),
        kept: work
            .into_iter()
            .map(|w| Ranked {
                site: w.c.site.name.clone(),
                node: w.node.name.clone(),
                local: w.local,
                distance_km: w.distance,
                min_rtt_ms: w.distance.map(min_rtt_ms),
                headroom: w.headroom,
                reasons: w.reasons,
            })
            .collect(),
        dropped,
    }
}

fn join(nets: &[crate::sites::Cidr]) -> String {
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sites::Cidr;
    use crate::spec::ByteSize;

    fn site(name: &str) -> Site {
        Site {
            name: name.into(),
            node: Some(format!("{name}-node")),
            group: None,
            endpoint: None,
            locations: vec![],
            local_networks: vec![],
            accepted_clients: vec![],
            rejected_clients: vec![],
            resources: Default::default(),
            tunnel_endpoint: None,
            wg_public_key: String::new(),
            wg_private_key: String::new(),
            revision: 1,
            updated_at: 0,
        }
    }

    fn node(name: &str, cpu_ratio: f64, mem_used: u64) -> NodeSample {
        NodeSample {
            name: name.into(),
            eligible: true,
            cpus: 4,
            cpu_ratio: Some(cpu_ratio),
            memory_total_mb: 4096,
            memory_used_mb: Some(mem_used),
            arch: Some("x86_64".into()),
            gpus: 0,
        }
    }

    fn cand<'a>(s: &'a Site, n: NodeSample, random: u64) -> Candidate<'a> {
        Candidate {
            site: s,
            nodes: vec![n],
            random,
        }
    }

    fn client(ip: &str) -> Client {
        Client {
            ip: ip.parse().unwrap(),
            location: None,
        }
    }

    fn names(r: &Ranking) -> Vec<&str> {
        r.kept.iter().map(|k| k.site.as_str()).collect()
    }

    #[test]
    fn accepted_clients_is_any_of_and_rejected_wins() {
        let mut a = site("a");
        a.accepted_clients = vec![
            Cidr::parse("10.0.0.0/8").unwrap(),
            Cidr::parse("192.168.0.0/16").unwrap(),
        ];
        let mut b = site("b");
        b.rejected_clients = vec![Cidr::parse("192.168.1.0/24").unwrap()];
        let c = [
            cand(&a, node("a1", 0.1, 100), 0),
            cand(&b, node("b1", 0.1, 100), 1),
        ];
        // Sinfonia dropped a 192.168 client from `a`, for not also being in 10/8.
        let r = rank(
            &Matcher::DEFAULT,
            &client("192.168.1.5"),
            &Default::default(),
            &c,
        );
        assert_eq!(names(&r), ["a"]);
        assert_eq!(r.dropped[0].site, "b");
        assert!(r.dropped[0].reason.contains("rejected"), "{:?}", r.dropped);
        let r = rank(
            &Matcher::DEFAULT,
            &client("8.8.8.8"),
            &Default::default(),
            &c,
        );
        assert_eq!(names(&r), ["b"]);
        assert!(r.dropped[0].reason.contains("none of the accepted"));
    }

    #[test]
    fn local_first_then_nearest_then_headroom_then_random() {
        let mut far = site("far");
        far.locations = vec![GeoPoint::new(51.5, -0.12).unwrap()];
        let mut near = site("near");
        // Several locations: the closest one counts.
        near.locations = vec![
            GeoPoint::new(-33.9, 151.2).unwrap(),
            GeoPoint::new(40.45, -79.90).unwrap(),
        ];
        let mut local = site("local");
        local.local_networks = vec![Cidr::parse("192.168.0.0/16").unwrap()];
        local.locations = vec![GeoPoint::new(35.0, 139.0).unwrap()];
        let unknown = site("unknown");
        let c = [
            cand(&far, node("f", 0.0, 0), 0),
            cand(&near, node("n", 0.9, 0), 1),
            cand(&local, node("l", 0.9, 0), 2),
            cand(&unknown, node("u", 0.0, 0), 3),
        ];
        let cl = Client {
            ip: "192.168.7.7".parse().unwrap(),
            location: Some(GeoPoint::new(40.44, -79.94).unwrap()),
        };
        let r = rank(&Matcher::DEFAULT, &cl, &Default::default(), &c);
        assert_eq!(names(&r), ["local", "near", "far", "unknown"]);
        assert!(r.kept[1].distance_km.unwrap() < 10.0);
        // Without the network matcher, location decides alone.
        let r = rank(
            &[Matcher::Location, Matcher::Random],
            &cl,
            &Default::default(),
            &c,
        );
        assert_eq!(names(&r), ["near", "far", "local", "unknown"]);
        // Resources first: the idle sites lead, the random key breaks their tie.
        let r = rank(
            &[Matcher::Resources, Matcher::Random],
            &cl,
            &Default::default(),
            &c,
        );
        assert_eq!(names(&r), ["far", "unknown", "near", "local"]);
    }

    #[test]
    fn requirements_drop_sites_and_pick_the_node() {
        let mut s = site("s");
        s.group = Some("g".into());
        s.node = None;
        let busy = node("busy", 0.9, 100);
        let mut small = node("small", 0.0, 4000);
        small.memory_total_mb = 4096;
        let mut arm = node("arm", 0.0, 0);
        arm.arch = Some("aarch64".into());
        let fine = node("fine", 0.5, 1000);
        let c = [Candidate {
            site: &s,
            nodes: vec![busy, small, arm, fine],
            random: 0,
        }];
        let req = Requirements {
            cpu: Some(1.0),
            memory: Some(ByteSize(512 * 1024 * 1024)),
            arch: Some("x86_64".into()),
            ..Default::default()
        };
        let r = rank(&Matcher::DEFAULT, &client("1.2.3.4"), &req, &c);
        assert_eq!(r.kept[0].node, "fine");
        let req = Requirements {
            gpu: Some(1),
            ..Default::default()
        };
        let r = rank(&Matcher::DEFAULT, &client("1.2.3.4"), &req, &c);
        assert!(r.kept.is_empty());
        assert!(r.dropped[0].reason.contains("GPUs"), "{:?}", r.dropped);
    }

    #[test]
    fn max_rtt_and_ineligible_nodes() {
        let mut far = site("far");
        far.locations = vec![GeoPoint::new(51.5, -0.12).unwrap()];
        let off = site("off");
        let mut offline = node("o", 0.0, 0);
        offline.eligible = false;
        let c = [cand(&far, node("f", 0.0, 0), 0), cand(&off, offline, 0)];
        let cl = Client {
            ip: "1.1.1.1".parse().unwrap(),
            location: Some(GeoPoint::new(40.44, -79.94).unwrap()),
        };
        let req = Requirements {
            max_rtt_ms: Some(20.0),
            ..Default::default()
        };
        let r = rank(&Matcher::DEFAULT, &cl, &req, &c);
        assert!(r.kept.is_empty());
        assert_eq!(r.dropped.len(), 2);
        assert!(r.dropped.iter().any(|d| d.matcher == "location"));
        assert!(r.dropped.iter().any(|d| d.matcher == "site"));
    }

    #[test]
    fn chains_parse() {
        assert_eq!(
            Matcher::parse_chain("network, random").unwrap(),
            vec![Matcher::Network, Matcher::Random]
        );
        assert!(Matcher::parse_chain("network,network").is_err());
        assert!(Matcher::parse_chain("gpu").is_err());
        assert!(Matcher::parse_chain("").is_err());
    }
}
