//! Per-client deployments of recipe apps (Sinfonia's deploy API, and `gustavo deploy`).
//!
//! `deploy` finds the recipe by UUID, checks who asks (a public recipe takes anonymous
//! clients, rate-limited per client key and address; a private one needs a token that may
//! read the app), renews every live deployment of the same (uuid, key), and — while there
//! are fewer than asked for — ranks the sites with the matcher chain and creates new ones
//! on the best. All of it is one mutation, so two racing requests of one client cannot
//! both create, and two clients cannot get one tunnel address.
//!
//! A new deployment touches its node's record (the node's revision moves), so the node's
//! long-poll wakes and its desired state gains the instance (`desired_instances`); the
//! leases controller moves it through its states and deletes it on expiry, touching the
//! node again so the instance leaves.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Mutex;

use gustavo_model::access::Subject;
use gustavo_model::api::{App, AppState, DesiredApp, DesiredContainer, NodeStatus};
use gustavo_model::compat::sinfonia::{CloudletDeployment, DeploymentRecipe, TunnelSettings};
use gustavo_model::desired::{NodeFacts, container_name, expand_replicas};
use gustavo_model::lease::{
    Deployment, DeploymentView, Explain, LeaseConfig, LeaseState, RateLimit, Tunnel, allocate,
    free_slot, site_address,
};
use gustavo_model::matcher::{Candidate, Client, Matcher, NodeSample, rank};
use gustavo_model::sites::{Cidr, GeoPoint, parse_uuid};
use gustavo_model::spec::EnvValue;
use gustavo_model::wireguard::{DesiredTunnel, PublicKey, TunnelPeer, TunnelStatus};
use gustavo_store::{Change, NodeRecord};

use super::sites::site_nodes;
use super::{OpError, Ops};
use crate::now;
use crate::state::Cluster;

/// The most deployments one request may ask for (Sinfonia's MAX_RESULTS).
pub const MAX_RESULTS: usize = 3;

/// Settings of the deploy API and leases (server config).
#[derive(Debug, Clone)]
pub struct SinfoniaConfig {
    pub lease: LeaseConfig,
    /// Where clients' tunnel addresses come from.
    pub client_network: Cidr,
    pub matchers: Vec<Matcher>,
    /// DNS servers and search domains handed to clients.
    pub dns: Vec<String>,
    /// The site's WireGuard port, when a site names no tunnel endpoint.
    pub wg_port: u16,
    /// Anonymous requests per client key and address per minute.
    pub anonymous_per_minute: u32,
    /// How often the leases controller looks.
    pub tick: std::time::Duration,
}

impl Default for SinfoniaConfig {
    fn default() -> Self {
        SinfoniaConfig {
            lease: LeaseConfig::default(),
            client_network: Cidr::parse("10.5.0.0/16").expect("a valid literal"),
            matchers: Matcher::DEFAULT.to_vec(),
            dns: Vec::new(),
            wg_port: 51820,
            anonymous_per_minute: 30,
            tick: std::time::Duration::from_secs(1),
        }
    }
}

/// The deploy API's own state.
#[derive(Debug, Default)]
pub struct SinfoniaState {
    pub config: SinfoniaConfig,
    limiter: Mutex<RateLimit>,
}

impl SinfoniaState {
    pub fn new(config: SinfoniaConfig) -> SinfoniaState {
        SinfoniaState {
            config,
            limiter: Mutex::default(),
        }
    }
}

/// Who asks for a deployment.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No token: only public recipes, rate-limited.
    Anonymous,
    /// A person's (or the admin's) token.
    Person(Subject),
    /// A token that may not deploy (a node's or a join token).
    Other,
}

/// One deploy request.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    pub uuid: String,
    pub key: String,
    pub client_ip: IpAddr,
    pub location: Option<GeoPoint>,
    pub results: usize,
}

fn parse_key(key: &str) -> Result<PublicKey, OpError> {
    PublicKey::parse(key).map_err(|e| OpError::BadRequest(format!("application key: {e}")))
}

fn recipe_app<'a>(c: &'a Cluster, uuid: &str) -> Option<&'a App> {
    c.apps
        .values()
        .find(|a| a.spec.recipe.as_ref().is_some_and(|r| r.uuid == uuid))
}

/// A name no deployment or app has: `<app>-<8 hex>`, shortened to fit 63 characters.
fn new_name(c: &Cluster, app: &str) -> String {
    loop {
        let tag = hex::encode(rand::random::<[u8; 4]>());
        let base: String = app.chars().take(63 - 9).collect();
        let name = format!("{base}-{tag}");
        if !c.deployments.contains_key(&name) && !c.apps.contains_key(&name) {
            return name;
        }
    }
}

/// The node's record at `revision`: a deployment placed or removed changes what it runs.
fn touch_node(c: &Cluster, node: &str, revision: u64) -> Option<Change> {
    let mut n: NodeRecord = c.nodes.get(node)?.clone();
    n.revision = revision;
    Some(Change::PutNode(n))
}

/// The candidates for an app: every site, with its nodes as the matcher sees them.
fn candidates<'a>(c: &'a Cluster, app: &App, now: u64) -> Vec<Candidate<'a>> {
    c.sites
        .values()
        .map(|site| Candidate {
            site,
            nodes: site_nodes(c, site)
                .into_iter()
                .filter_map(|n| c.nodes.get(n))
                .map(|n| sample(c, n, app, now))
                .collect(),
            random: rand::random(),
        })
        .collect()
}

fn sample(c: &Cluster, n: &NodeRecord, app: &App, now: u64) -> NodeSample {
    let live = c.live.get(&n.name);
    let vitals = live.as_ref().and_then(|l| l.vitals.clone());
    NodeSample {
        name: n.name.clone(),
        // A tainted node takes no new deployments (node pressure).
        eligible: matches!(
            c.shown_status(&n.name, now),
            NodeStatus::Ready | NodeStatus::Pressured
        ) && !n.cordoned
            && n.groups.iter().any(|g| app.groups.contains(g)),
        cpus: vitals
            .as_ref()
            .map(|v| v.cpus)
            .filter(|c| *c > 0)
            .unwrap_or(n.cpus),
        cpu_ratio: vitals.as_ref().map(|v| f64::from(v.cpu_percent) / 100.0),
        memory_total_mb: vitals
            .as_ref()
            .map(|v| v.memory_total_mb)
            .filter(|m| *m > 0)
            .unwrap_or(n.memory_mb),
        memory_used_mb: vitals.as_ref().map(|v| v.memory_used_mb),
        arch: n.labels.get("arch").cloned(),
        gpus: n
            .labels
            .get("gpu")
            .and_then(|g| g.parse().ok())
            .unwrap_or(0),
    }
}

/// What the client's tunnel config says for a deployment's site.
fn tunnel_settings(c: &Cluster, cfg: &SinfoniaConfig, d: &Deployment) -> TunnelSettings {
    let site = c.sites.get(&d.site);
    let endpoint = site
        .and_then(|s| s.tunnel_endpoint.clone())
        .or_else(|| {
            let live = c.live.get(&d.node)?;
            let addr = live.address?;
            // The port the node's interface listens on, once it reported one.
            let port = live
                .tunnel
                .as_ref()
                .map(|t| t.listen_port)
                .filter(|p| *p > 0)
                .unwrap_or(cfg.wg_port);
            Some(match addr {
                IpAddr::V6(a) => format!("[{a}]:{port}"),
                a => format!("{a}:{port}"),
            })
        })
        .unwrap_or_default();
    TunnelSettings {
        site_public_key: site.map(|s| s.wg_public_key.clone()).unwrap_or_default(),
        endpoint,
        allowed_ips: vec![cfg.client_network.to_string()],
        dns: cfg.dns.clone(),
    }
}

fn view(c: &Cluster, cfg: &SinfoniaConfig, started: u64, d: &Deployment) -> DeploymentView {
    DeploymentView {
        tunnel: Tunnel::from_status(d, tunnel_report(c, &d.node).as_ref()),
        lease_ends_at: d.lease_end(&cfg.lease, started),
        sinfonia: CloudletDeployment::from_deployment(d, &tunnel_settings(c, cfg, d)),
        deployment: d.clone(),
    }
}

/// What a node last reported of its tunnel (since this server started).
fn tunnel_report(c: &Cluster, node: &str) -> Option<TunnelStatus> {
    c.live.get(node).and_then(|l| l.tunnel.as_deref().cloned())
}

/// The WireGuard interface a node runs: for the first site (by name) with live
/// deployments on the node, with one peer per such deployment of that site. A node in two
/// sites with clients of both serves the first; the other's deployments say so.
pub(crate) fn desired_tunnel(c: &Cluster, node: &str) -> Option<DesiredTunnel> {
    let pool = c.settings.client_network?;
    let address = site_address(&pool)?;
    let mine = || c.deployments_on(node).filter(|d| d.is_live());
    let site = c.sites.get(mine().map(|d| &d.site).min()?)?;
    if site.wg_private_key.is_empty() {
        return None;
    }
    let peers = mine()
        .filter(|d| d.site == site.name)
        .map(|d| TunnelPeer {
            deployment: d.name.clone(),
            public_key: d.key.clone(),
            allowed_ip: format!(
                "{}/{}",
                d.address,
                if d.address.is_ipv4() { 32 } else { 128 }
            ),
        })
        .collect();
    Some(DesiredTunnel {
        site: site.name.clone(),
        private_key: site.wg_private_key.clone(),
        address: format!("{address}/{}", pool.prefix),
        peers,
    })
}

/// Whether the node reports the deployment's backend running.
pub(crate) fn backend_running(c: &Cluster, d: &Deployment) -> bool {
    c.live.get(&d.node).is_some_and(|l| {
        l.report
            .apps
            .iter()
            .any(|s| s.app == d.name && s.state == AppState::Running)
    })
}

/// The per-client instances a node runs: one app per live deployment placed on it, named
/// after the deployment, from the recipe app's spec plus the client's facts in env.
pub(crate) fn desired_instances(
    c: &Cluster,
    node: &NodeRecord,
    facts: &std::cell::LazyCell<NodeFacts, impl FnOnce() -> NodeFacts>,
) -> Vec<DesiredApp> {
    c.deployments_on(&node.name)
        .filter(|d| d.is_live())
        .filter_map(|d| {
            let app = c.apps.get(&d.app)?;
            let mut spec = app.spec.clone();
            for (k, v) in [
                ("GUSTAVO_DEPLOYMENT", d.name.clone()),
                ("GUSTAVO_CLIENT_KEY", d.key.clone()),
                ("GUSTAVO_CLIENT_ADDRESS", d.address.to_string()),
                ("GUSTAVO_CLIENT_IP", d.client_ip.clone()),
            ] {
                spec.env_vars.insert(k.into(), EnvValue::Plain(v));
            }
            let containers = expand_replicas(&d.name, &spec, app.restart_nonce, facts, &[1])
                .into_iter()
                .map(|mut spec| {
                    // The deployment's slot moves its host ports, as replica i's do.
                    spec.ports
                        .retain_mut(|p| match p.host.checked_add(d.slot as u16) {
                            Some(h) if d.slot <= u32::from(u16::MAX) => {
                                p.host = h;
                                true
                            }
                            _ => false,
                        });
                    spec
                })
                .map(|spec| DesiredContainer {
                    name: container_name(&node.name, &d.name, spec.replica),
                    hash: spec.hash(),
                    spec,
                })
                .collect();
            Some(DesiredApp {
                name: d.name.clone(),
                revision: app.revision,
                rolling_restart: false,
                containers,
                priority: 0,
                critical: false,
                leased: true,
                template: None,
                replicas: Vec::new(),
            })
        })
        .collect()
}

impl Ops {
    fn sinfonia(&self) -> &SinfoniaState {
        &self.sinfonia
    }

    /// Checks the caller against the recipe; returns the app's name and whether the
    /// recipe is public.
    fn admit(&self, caller: &Caller, uuid: &str, key: &str, ip: IpAddr) -> Result<String, OpError> {
        let c = self.shared.read();
        let app = recipe_app(&c, uuid)
            .ok_or_else(|| OpError::NotFound(format!("no recipe has UUID {uuid}")))?;
        let public = app.spec.recipe.as_ref().is_some_and(|r| r.public);
        match caller {
            Caller::Anonymous if !public => Err(OpError::Unauthenticated),
            Caller::Anonymous => {
                let mut l = self
                    .sinfonia()
                    .limiter
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                l.check(
                    &format!("{uuid}|{key}|{ip}"),
                    now(),
                    self.sinfonia().config.anonymous_per_minute,
                    60,
                )
                .map_err(OpError::RateLimited)?;
                Ok(app.name.clone())
            }
            Caller::Person(who) if who.can_read_app(&app.name, &app.groups) => Ok(app.name.clone()),
            // A private recipe is as hidden as its app.
            Caller::Person(_) if !public => {
                Err(OpError::NotFound(format!("no recipe has UUID {uuid}")))
            }
            Caller::Person(_) => Ok(app.name.clone()),
            Caller::Other => Err(OpError::Forbidden("deploy backends")),
        }
    }

    /// `POST /api/v1/deploy/{uuid}/{key}`.
    pub async fn deploy(
        &self,
        caller: &Caller,
        req: DeployRequest,
    ) -> Result<Vec<DeploymentView>, OpError> {
        let uuid = parse_uuid(&req.uuid).map_err(OpError::BadRequest)?;
        let key = parse_key(&req.key)?.to_base64();
        let results = req.results.clamp(1, MAX_RESULTS);
        let app_name = self.admit(caller, &uuid, &key, req.client_ip)?;
        let cfg = self.sinfonia().config.clone();
        let started = self.shared.sched.started;
        let (client_ip, location) = (req.client_ip, req.location);
        let (k, u) = (key.clone(), uuid.clone());
        let (matchers, pool) = (cfg.matchers.clone(), cfg.client_network);
        let (created, names) = self
            .shared
            .mutate(move |c, revision| {
                let now = now();
                let app = c
                    .apps
                    .get(&app_name)
                    .ok_or_else(|| OpError::NotFound(format!("no recipe has UUID {u}")))?;
                let mut changes = Vec::new();
                let mut names = Vec::new();
                let mut used_sites = BTreeSet::new();
                let mut used: BTreeSet<IpAddr> =
                    c.deployments.values().map(|d| d.address).collect();
                let pool_used_up = || {
                    OpError::Unavailable(
                        "the client address pool is used up (the server's --client-network)",
                    )
                };
                for d in c.deployments.values().filter(|d| d.uuid == u && d.key == k && d.is_live()) {
                    let mut d = d.clone();
                    d.renew(now);
                    d.revision = revision;
                    // Made before the server's --client-network changed: the site's
                    // tunnel is in the new range now, so the client gets an address there
                    // (and this answer's tunnel settings with it).
                    if !pool.contains(d.address) {
                        d.address = allocate(&pool, &used).ok_or_else(pool_used_up)?;
                        used.insert(d.address);
                        changes.extend(touch_node(c, &d.node, revision));
                    }
                    used_sites.insert(d.site.clone());
                    names.push(d.name.clone());
                    changes.push(Change::PutDeployment(Box::new(d)));
                }
                let mut created = Vec::new();
                if names.len() < results {
                    let recipe = app.spec.recipe.clone().unwrap_or_else(|| unreachable_recipe(&u));
                    let client = Client {
                        ip: client_ip,
                        location,
                    };
                    let cands: Vec<Candidate<'_>> = candidates(c, app, now)
                        .into_iter()
                        .filter(|cand| !used_sites.contains(&cand.site.name))
                        .collect();
                    let ranking = rank(&matchers, &client, &recipe.requires, &cands);
                    if ranking.kept.is_empty() && names.is_empty() {
                        let why: Vec<String> = ranking
                            .dropped
                            .iter()
                            .map(|d| format!("{}: {}", d.site, d.reason))
                            .collect();
                        return Err(OpError::NotFound(if why.is_empty() {
                            format!("no site can run recipe {u}: there are no sites (gustavo sites import)")
                        } else {
                            format!("no site can run recipe {u}: {}", why.join("; "))
                        }));
                    }
                    for r in ranking.kept.iter().take(results - names.len()) {
                        let address = allocate(&pool, &used).ok_or_else(pool_used_up)?;
                        used.insert(address);
                        let name = loop {
                            let n = new_name(c, &app.name);
                            if !names.contains(&n) {
                                break n;
                            }
                        };
                        // Slots of deployments made earlier in this request count too.
                        let slot = free_slot(
                            c.deployments.values().chain(changes.iter().filter_map(|ch| {
                                match ch {
                                    Change::PutDeployment(d) => Some(&**d),
                                    _ => None,
                                }
                            })),
                            &app.name,
                            &r.node,
                        );
                        let d = Deployment {
                            name: name.clone(),
                            app: app.name.clone(),
                            uuid: u.clone(),
                            key: k.clone(),
                            site: r.site.clone(),
                            node: r.node.clone(),
                            client_ip: client_ip.to_string(),
                            client_location: location,
                            address,
                            state: LeaseState::Initializing,
                            created_at: now,
                            renewed_at: now,
                            since: now,
                            renewals: 0,
                            revision,
                            slot,
                        };
                        changes.extend(touch_node(c, &r.node, revision));
                        changes.push(Change::PutDeployment(Box::new(d)));
                        created.push((name.clone(), r.site.clone(), r.node.clone()));
                        names.push(name);
                    }
                }
                Ok((changes, (created, names)))
            })
            .await?;
        for (name, site, node) in created {
            self.shared.events.push(
                "deployment",
                format!("deployment:{name}"),
                format!("{name} Initializing on site {site} (node {node}) for client {client_ip}"),
            );
        }
        let c = self.shared.read();
        Ok(names
            .iter()
            .filter_map(|n| c.deployments.get(n))
            .map(|d| view(&c, &cfg, started, d))
            .collect())
    }

    /// `GET /api/v1/deploy/{uuid}/{key}`: the live deployments, without deploying or
    /// renewing.
    pub fn deployments_of(
        &self,
        caller: &Caller,
        uuid: &str,
        key: &str,
        client_ip: IpAddr,
    ) -> Result<Vec<DeploymentView>, OpError> {
        let uuid = parse_uuid(uuid).map_err(OpError::BadRequest)?;
        let key = parse_key(key)?.to_base64();
        self.admit(caller, &uuid, &key, client_ip)?;
        let cfg = &self.sinfonia().config;
        let c = self.shared.read();
        let out: Vec<DeploymentView> = c
            .deployments
            .values()
            .filter(|d| d.uuid == uuid && d.key == key && d.is_live())
            .map(|d| view(&c, cfg, self.shared.sched.started, d))
            .collect();
        if out.is_empty() {
            return Err(OpError::NotFound(format!(
                "no deployment of recipe {uuid} for this key"
            )));
        }
        Ok(out)
    }

    /// `DELETE /api/v1/deploy/{uuid}/{key}`: tears down every deployment of the client.
    pub async fn undeploy(
        &self,
        caller: &Caller,
        uuid: &str,
        key: &str,
        client_ip: IpAddr,
    ) -> Result<usize, OpError> {
        let uuid = parse_uuid(uuid).map_err(OpError::BadRequest)?;
        let key = parse_key(key)?.to_base64();
        self.admit(caller, &uuid, &key, client_ip)?;
        let names: Vec<String> = self
            .shared
            .read()
            .deployments
            .values()
            .filter(|d| d.uuid == uuid && d.key == key)
            .map(|d| d.name.clone())
            .collect();
        if names.is_empty() {
            return Err(OpError::NotFound(format!(
                "no deployment of recipe {uuid} for this key"
            )));
        }
        self.remove_deployments(names, "deleted on request").await
    }

    /// Removes deployments (their backends leave their nodes); returns how many went.
    pub(crate) async fn remove_deployments(
        &self,
        names: Vec<String>,
        why: &'static str,
    ) -> Result<usize, OpError> {
        let gone = self
            .shared
            .mutate(move |c, revision| {
                let mut changes = Vec::new();
                let mut gone = Vec::new();
                for n in names {
                    let Some(d) = c.deployments.get(&n) else {
                        continue;
                    };
                    changes.extend(touch_node(c, &d.node, revision));
                    changes.push(Change::DeleteDeployment(n.clone()));
                    gone.push(n);
                }
                Ok((changes, gone))
            })
            .await?;
        for n in &gone {
            self.shared.events.push(
                "deployment",
                format!("deployment:{n}"),
                format!("{n} Expired ({why}); its backend is removed"),
            );
        }
        Ok(gone.len())
    }

    /// Deployments people may see (those of apps they may read).
    pub fn list_deployments(&self, who: &Subject) -> Vec<DeploymentView> {
        let c = self.shared.read();
        let cfg = &self.sinfonia().config;
        c.deployments
            .values()
            .filter(|d| {
                c.apps
                    .get(&d.app)
                    .is_none_or(|a| who.can_read_app(&a.name, &a.groups))
                    || who.is_admin()
            })
            .map(|d| view(&c, cfg, self.shared.sched.started, d))
            .collect()
    }

    pub fn get_deployment(&self, who: &Subject, name: &str) -> Result<DeploymentView, OpError> {
        self.list_deployments(who)
            .into_iter()
            .find(|d| d.deployment.name == name)
            .ok_or_else(|| OpError::NotFound(format!("deployment `{name}` does not exist")))
    }

    pub async fn delete_deployment(&self, who: &Subject, name: &str) -> Result<(), OpError> {
        let d = self.get_deployment(who, name)?;
        let writable = {
            let c = self.shared.read();
            c.apps
                .get(&d.deployment.app)
                .is_none_or(|a| who.can_write_app(&a.name, &a.groups))
        };
        if !writable {
            return Err(OpError::Denied(format!(
                "deleting deployment `{name}` needs rw on app `{}`",
                d.deployment.app
            )));
        }
        self.remove_deployments(vec![name.to_string()], "deleted on request")
            .await?;
        Ok(())
    }

    /// How the sites rank for a client of a recipe, without deploying.
    pub fn explain(
        &self,
        who: &Subject,
        uuid: &str,
        client_ip: IpAddr,
        location: Option<GeoPoint>,
    ) -> Result<Explain, OpError> {
        let uuid = parse_uuid(uuid).map_err(OpError::BadRequest)?;
        let c = self.shared.read();
        let app = recipe_app(&c, &uuid)
            .filter(|a| who.can_read_app(&a.name, &a.groups))
            .ok_or_else(|| OpError::NotFound(format!("no recipe has UUID {uuid}")))?;
        let recipe = app
            .spec
            .recipe
            .clone()
            .unwrap_or_else(|| unreachable_recipe(&uuid));
        let cands = candidates(&c, app, now());
        let client = Client {
            ip: client_ip,
            location,
        };
        Ok(Explain {
            app: app.name.clone(),
            uuid,
            client_ip: client_ip.to_string(),
            client_location: location,
            ranking: rank(
                &self.sinfonia().config.matchers,
                &client,
                &recipe.requires,
                &cands,
            ),
        })
    }

    /// Sinfonia tier 1's `GET /recipe/{uuid}/`: public recipes only (Sinfonia's
    /// `restricted: true` is our `public: false`: 403).
    pub fn recipe(&self, uuid: &str) -> Result<DeploymentRecipe, OpError> {
        let uuid = parse_uuid(uuid).map_err(OpError::BadRequest)?;
        let c = self.shared.read();
        let app = recipe_app(&c, &uuid)
            .ok_or_else(|| OpError::NotFound(format!("no recipe has UUID {uuid}")))?;
        let recipe = app
            .spec
            .recipe
            .as_ref()
            .map(|r| (r.public, r.description.clone()));
        match recipe {
            Some((true, description)) => Ok(DeploymentRecipe {
                chart: app.name.clone(),
                version: app.revision.to_string(),
                description,
                values: [(
                    "docker_image".to_string(),
                    serde_json::Value::String(app.spec.docker_image.clone()),
                )]
                .into(),
            }),
            _ => Err(OpError::Denied(format!("recipe {uuid} is not public"))),
        }
    }
}

/// Only apps with a recipe are found by UUID; this cannot be reached.
fn unreachable_recipe(uuid: &str) -> gustavo_model::sites::Recipe {
    gustavo_model::sites::Recipe {
        uuid: uuid.to_string(),
        public: false,
        requires: Default::default(),
        description: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_are_sinfonias() {
        let c = SinfoniaConfig::default();
        assert_eq!(c.lease.duration_s, 300);
        assert_eq!(c.client_network.to_string(), "10.5.0.0/16");
        assert_eq!(c.matchers.len(), 4);
    }
}
