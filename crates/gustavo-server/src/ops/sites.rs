//! Edge sites: put (create or replace, keeping the site's WireGuard key), delete, list —
//! each shown with live resource ratios from its nodes' latest vitals.

use gustavo_model::access::Subject;
use gustavo_model::compat::sinfonia::{CloudletInfo, rfc3339};
use gustavo_model::sites::{Site, SiteNode, SiteView};
use gustavo_model::wireguard::KeyPair;
use gustavo_store::Change;

use super::{OpError, Ops, check_name};
use crate::now;
use crate::state::Cluster;

/// The nodes a site is made of (those that exist).
pub(crate) fn site_nodes<'a>(c: &'a Cluster, site: &'a Site) -> Vec<&'a str> {
    match (&site.node, &site.group) {
        (Some(n), _) => c
            .nodes
            .get(n)
            .map(|n| n.name.as_str())
            .into_iter()
            .collect(),
        (None, Some(g)) => c
            .nodes
            .values()
            .filter(|n| n.groups.contains(g))
            .map(|n| n.name.as_str())
            .collect(),
        (None, None) => Vec::new(),
    }
}

/// Live `cpu_ratio` / `mem_ratio` of a site over its static resources.
pub(crate) fn live_resources(
    c: &Cluster,
    site: &Site,
    now: u64,
) -> std::collections::BTreeMap<String, f64> {
    let mut out = site.resources.clone();
    let (mut cpu, mut mem, mut n) = (0.0, 0.0, 0.0);
    for node in site_nodes(c, site) {
        if c.node_status(node, now) != gustavo_model::api::NodeStatus::Ready {
            continue;
        }
        let Some(live) = c.live.get(node) else {
            continue;
        };
        let Some(v) = &live.vitals else { continue };
        cpu += f64::from(v.cpu_percent) / 100.0;
        if v.memory_total_mb > 0 {
            mem += v.memory_used_mb as f64 / v.memory_total_mb as f64;
        }
        n += 1.0;
    }
    if n > 0.0 {
        out.insert("cpu_ratio".into(), cpu / n);
        out.insert("mem_ratio".into(), mem / n);
    }
    out
}

fn view(c: &Cluster, site: &Site, now: u64) -> SiteView {
    let mut shown = site.clone();
    shown.wg_private_key = String::new();
    SiteView {
        nodes: site_nodes(c, site)
            .into_iter()
            .map(|n| SiteNode {
                name: n.to_string(),
                ready: c.node_status(n, now) == gustavo_model::api::NodeStatus::Ready,
            })
            .collect(),
        live: live_resources(c, site, now),
        deployments: c
            .deployments
            .values()
            .filter(|d| d.site == site.name && d.is_live())
            .count(),
        site: shown,
    }
}

/// A fresh site key pair from the OS generator.
pub(crate) fn new_keypair() -> KeyPair {
    KeyPair::from_secret(rand::random())
}

impl Ops {
    pub fn list_sites(&self, who: &Subject) -> Result<Vec<SiteView>, OpError> {
        if !who.is_admin() {
            return Err(OpError::Forbidden("manage sites"));
        }
        let c = self.shared.read();
        let now = now();
        Ok(c.sites.values().map(|s| view(&c, s, now)).collect())
    }

    pub fn get_site(&self, who: &Subject, name: &str) -> Result<SiteView, OpError> {
        if !who.is_admin() {
            return Err(OpError::Forbidden("manage sites"));
        }
        let c = self.shared.read();
        c.sites
            .get(name)
            .map(|s| view(&c, s, now()))
            .ok_or_else(|| OpError::NotFound(format!("site `{name}` does not exist")))
    }

    /// Creates or replaces a site (admin). Its key pair is made once and kept across
    /// replacements, so clients' tunnel configs stay valid.
    pub async fn put_site(&self, who: &Subject, mut site: Site) -> Result<SiteView, OpError> {
        if !who.is_admin() {
            return Err(OpError::Forbidden("manage sites"));
        }
        check_name("site", &site.name)?;
        site.validate().map_err(OpError::BadRequest)?;
        let fresh = new_keypair();
        let name = site.name.clone();
        self.shared
            .mutate(move |c, revision| {
                match c.sites.get(&site.name) {
                    Some(old) if !old.wg_private_key.is_empty() => {
                        site.wg_public_key = old.wg_public_key.clone();
                        site.wg_private_key = old.wg_private_key.clone();
                    }
                    _ => {
                        site.wg_public_key = fresh.public.to_base64();
                        site.wg_private_key = fresh.private_base64();
                    }
                }
                site.revision = revision;
                site.updated_at = now();
                let mut same = c.sites.get(&site.name).cloned();
                if let Some(s) = same.as_mut() {
                    s.revision = site.revision;
                    s.updated_at = site.updated_at;
                }
                if same.as_ref() == Some(&site) {
                    return Ok((Vec::new(), ()));
                }
                Ok((vec![Change::PutSite(Box::new(site))], ()))
            })
            .await?;
        self.shared
            .events
            .push("site", format!("site:{name}"), format!("site {name} set"));
        self.get_site(who, &name)
    }

    /// Deletes a site (admin); refused while deployments live on it.
    pub async fn delete_site(&self, who: &Subject, name: &str) -> Result<u64, OpError> {
        if !who.is_admin() {
            return Err(OpError::Forbidden("manage sites"));
        }
        let name = name.to_string();
        let n = name.clone();
        let revision = self
            .shared
            .mutate(move |c, revision| {
                if !c.sites.contains_key(&n) {
                    return Err(OpError::NotFound(format!("site `{n}` does not exist")));
                }
                let live: Vec<&str> = c
                    .deployments
                    .values()
                    .filter(|d| d.site == n)
                    .map(|d| d.name.as_str())
                    .collect();
                if !live.is_empty() {
                    return Err(OpError::Conflict(format!(
                        "site `{n}` still has deployments: {} (delete them first)",
                        live.join(", ")
                    )));
                }
                Ok((vec![Change::DeleteSite(n)], revision))
            })
            .await?;
        self.shared.events.push(
            "site",
            format!("site:{name}"),
            format!("site {name} deleted"),
        );
        Ok(revision)
    }

    /// Sinfonia tier 1's `POST /cloudlets/` (a tier 2 reporting itself, admin): updates
    /// the site whose `endpoint` is the one posted — its locations, client networks and
    /// static resources. A site must exist first (imported with its node or group): a
    /// posted cloudlet names no node of ours.
    pub async fn post_cloudlet(&self, who: &Subject, info: CloudletInfo) -> Result<(), OpError> {
        if !who.is_admin() {
            return Err(OpError::Forbidden("manage sites"));
        }
        if info.uuid.as_deref().is_none_or(str::is_empty) {
            return Err(OpError::BadRequest(
                "a cloudlet update needs its uuid".into(),
            ));
        }
        if info.endpoint.is_empty() {
            return Err(OpError::BadRequest(
                "a cloudlet update needs its endpoint".into(),
            ));
        }
        let name = {
            let c = self.shared.read();
            c.sites
                .values()
                .find(|s| s.endpoint.as_deref() == Some(info.endpoint.as_str()))
                .map(|s| s.name.clone())
                .ok_or_else(|| {
                    OpError::NotFound(format!(
                        "no site has endpoint `{}`: import it first with its node or group \
                         (gustavo sites import)",
                        info.endpoint
                    ))
                })?
        };
        let mut site = self
            .shared
            .read()
            .sites
            .get(&name)
            .cloned()
            .ok_or_else(|| OpError::NotFound(format!("site `{name}` does not exist")))?;
        if !info.locations.is_empty() {
            site.locations = info.locations;
        }
        if !info.local_networks.is_empty() {
            site.local_networks = info.local_networks;
        }
        site.accepted_clients = info.accepted_clients;
        site.rejected_clients = info.rejected_clients;
        site.resources = info
            .resources
            .into_iter()
            .filter(|(_, v)| v.is_finite())
            .collect();
        self.put_site(who, site).await.map(|_| ())
    }

    /// Sinfonia tier 1's `GET /cloudlets/`: every site as a `CloudletInfo`.
    pub fn cloudlets(&self) -> Vec<CloudletInfo> {
        let c = self.shared.read();
        let now = now();
        c.sites
            .values()
            .map(|s| CloudletInfo {
                uuid: None,
                endpoint: s.endpoint.clone().unwrap_or_default(),
                locations: s.locations.clone(),
                local_networks: s.local_networks.clone(),
                accepted_clients: s.accepted_clients.clone(),
                rejected_clients: s.rejected_clients.clone(),
                resources: live_resources(&c, s, now),
                last_update: Some(rfc3339(s.updated_at)),
            })
            .collect()
    }
}
