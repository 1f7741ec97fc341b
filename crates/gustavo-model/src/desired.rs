//! From an app spec to the concrete containers one node must run.
//!
//! The server computes a node's desired state here; the agent only executes it. Each
//! container spec carries a content hash of everything that shapes the container, so the
//! agent recreates a container exactly when something that matters changed — never because
//! a counter moved (Nebula's mistake), and never misses a change.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::spec::{
    AppSpec, EnvValue, HealthCheck, ImageRef, NetworkMode, PortMapping, RestartPolicy,
};

/// What the server knows about a node that shapes its containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFacts {
    pub name: String,
    pub cpus: u32,
    pub memory_mb: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Everything needed to create one container, and nothing that does not change it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub app: String,
    /// 1-based, like Nebula's `<app>-<n>` names.
    pub replica: u32,
    pub image: String,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<PortMapping>,
    pub volumes: Vec<String>,
    pub network: NetworkMode,
    pub privileged: bool,
    pub devices: Vec<String>,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub nano_cpus: Option<i64>,
    pub memory_bytes: Option<i64>,
    pub restart: RestartPolicy,
    pub labels: BTreeMap<String, String>,
    pub healthcheck: Option<HealthCheck>,
    /// Bumped by `apps restart`: a new value forces every replica to be recreated.
    pub restart_nonce: u64,
    // Newer fields: left out of the canonical JSON when unset, so the hashes of
    // containers that do not use them do not change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl ContainerSpec {
    /// A short content hash: the first 16 hex digits of SHA-256 over the canonical JSON
    /// (maps are ordered, so equal specs always hash equal).
    pub fn hash(&self) -> String {
        let bytes = serde_json::to_vec(self).expect("container specs always serialize");
        hex::encode(&Sha256::digest(&bytes)[..8])
    }
}

/// The Docker name of a replica. `.` never appears in node or app names (see `names`), so
/// names of different agents sharing one engine cannot collide.
pub fn container_name(node: &str, app: &str, replica: u32) -> String {
    format!("{node}.{app}.{replica}")
}

/// Pins every container's image to `digest` (`repo:tag@sha256:…`): Docker pulls and runs
/// exactly those bits, whatever the tag points at now; the tag stays for people to read.
pub fn pin_digest(specs: &mut [ContainerSpec], digest: &str) {
    for s in specs {
        let mut r = ImageRef::parse(&s.image);
        r.digest = Some(digest.to_string());
        s.image = r.canonical();
    }
}

/// Expands the placeholders users may write in env values: `{{node.name}}`,
/// `{{node.label.KEY}}`, `{{replica}}` and `{{app}}`. Unknown labels expand to nothing.
fn expand_env(
    value: &str,
    node: &str,
    labels: &BTreeMap<String, String>,
    app: &str,
    replica: u32,
) -> String {
    if !value.contains("{{") {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let key = after[..end].trim();
        match key {
            "node.name" => out.push_str(node),
            "replica" => out.push_str(&replica.to_string()),
            "app" => out.push_str(app),
            k if k.starts_with("node.label.") => {
                if let Some(v) = labels.get(&k["node.label.".len()..]) {
                    out.push_str(v);
                }
            }
            _ => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// The containers `node` must run for one app run on every member (`containers_per`).
/// Empty when the app is stopped.
pub fn expand(
    app: &str,
    spec: &AppSpec,
    restart_nonce: u64,
    node: &NodeFacts,
) -> Vec<ContainerSpec> {
    let count = spec.per_node().replicas(node.cpus, node.memory_mb);
    let replicas: Vec<u32> = (1..=count).collect();
    expand_replicas(app, spec, restart_nonce, node, &replicas)
}

/// The containers of the given replicas (1-based) on `node`: the scheduler's placements
/// for a replicated app, every index up to the count for the others. The `k`-th
/// container on the node (from 0) binds every host port plus `k`. Empty when the app is
/// stopped.
pub fn expand_replicas(
    app: &str,
    spec: &AppSpec,
    restart_nonce: u64,
    node: &NodeFacts,
    replicas: &[u32],
) -> Vec<ContainerSpec> {
    match ContainerTemplate::new(app, spec, restart_nonce) {
        Some(t) => t.instances(&node.name, &node.labels, replicas),
        None => Vec::new(),
    }
}

/// What an app's containers share on every node, computed once per app version: a node's
/// containers are this completed with the node's name, labels and replica numbers
/// ([`ContainerTemplate::instances`]). The server sends it to agents that complete it
/// themselves, so a change costs the server one template per app, not one expansion and
/// hash per container of every node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerTemplate {
    /// The container before the node's part: replica 0, plain env values with their
    /// placeholders, the ports as written (before the per-node offset), no `GUSTAVO_*`.
    pub base: ContainerSpec,
    /// Secret env values: delivered as given, never expanded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
}

impl ContainerTemplate {
    /// The template of one app version; none when the app is stopped.
    pub fn new(app: &str, spec: &AppSpec, restart_nonce: u64) -> Option<ContainerTemplate> {
        if !spec.running {
            return None;
        }
        let (mut env, mut secrets) = (BTreeMap::new(), BTreeMap::new());
        for (k, v) in &spec.env_vars {
            match v {
                EnvValue::Plain(v) => {
                    env.insert(k.clone(), v.clone());
                }
                // A secret is delivered exactly as given: no placeholders inside it.
                EnvValue::Secret(v) => {
                    secrets.insert(k.clone(), v.clone());
                }
                // The server unseals before expanding; these never reach a node.
                EnvValue::Sealed(_) | EnvValue::Hidden => {}
            }
        }
        let base = ContainerSpec {
            app: app.to_string(),
            replica: 0,
            image: ImageRef::parse(&spec.docker_image).canonical(),
            env,
            ports: spec.starting_ports.0.clone(),
            volumes: spec.volumes.iter().map(|v| v.0.clone()).collect(),
            network: NetworkMode::from_list(&spec.networks),
            privileged: spec.privileged,
            devices: spec
                .devices
                .iter()
                .map(|d| format!("{}:{}:{}", d.host, d.container, d.permissions))
                .collect(),
            command: spec.command.as_ref().map(|c| c.0.clone()),
            entrypoint: spec.entrypoint.as_ref().map(|c| c.0.clone()),
            workdir: spec.workdir.clone(),
            user: spec.user.clone(),
            nano_cpus: spec.cpus.map(|c| c.nano()),
            memory_bytes: spec.memory.map(|m| m.0 as i64),
            restart: spec.restart,
            labels: spec.labels.clone(),
            healthcheck: spec.healthcheck.clone(),
            restart_nonce,
        };
        Some(ContainerTemplate { base, secrets })
    }

    /// Pins the image to `digest` (see [`pin_digest`]).
    pub fn pin(&mut self, digest: &str) {
        pin_digest(std::slice::from_mut(&mut self.base), digest);
    }

    /// The containers of the given replicas (1-based) on the node named `node`, in order:
    /// the `k`-th (from 0) binds every host port plus `k`.
    pub fn instances(
        &self,
        node: &str,
        labels: &BTreeMap<String, String>,
        replicas: &[u32],
    ) -> Vec<ContainerSpec> {
        replicas
            .iter()
            .enumerate()
            .map(|(i, &replica)| self.instance(node, labels, replica, i as u32))
            .collect()
    }

    fn instance(
        &self,
        node: &str,
        labels: &BTreeMap<String, String>,
        replica: u32,
        offset: u32,
    ) -> ContainerSpec {
        let base = &self.base;
        let app = base.app.as_str();
        let mut env: BTreeMap<String, String> = base
            .env
            .iter()
            .map(|(k, v)| (k.clone(), expand_env(v, node, labels, app, replica)))
            .chain(self.secrets.iter().map(|(k, v)| (k.clone(), v.clone())))
            .collect();
        env.entry("GUSTAVO_NODE".into())
            .or_insert_with(|| node.to_string());
        env.entry("GUSTAVO_APP".into())
            .or_insert_with(|| app.to_string());
        env.entry("GUSTAVO_REPLICA".into())
            .or_insert_with(|| replica.to_string());
        // The port offset is the container's place on this node, so replicas of a
        // scheduled app on different nodes bind the same ports. A port pushed past 65535
        // is dropped rather than wrapped onto someone else's port.
        let ports = base
            .ports
            .iter()
            .filter_map(|p| {
                let host = u16::try_from(u32::from(p.host) + offset).ok()?;
                Some(PortMapping { host, ..*p })
            })
            .collect();
        ContainerSpec {
            app: base.app.clone(),
            replica,
            image: base.image.clone(),
            env,
            ports,
            volumes: base.volumes.clone(),
            network: base.network.clone(),
            privileged: base.privileged,
            devices: base.devices.clone(),
            command: base.command.clone(),
            entrypoint: base.entrypoint.clone(),
            nano_cpus: base.nano_cpus,
            memory_bytes: base.memory_bytes,
            restart: base.restart,
            labels: base.labels.clone(),
            healthcheck: base.healthcheck.clone(),
            restart_nonce: base.restart_nonce,
            workdir: base.workdir.clone(),
            user: base.user.clone(),
        }
    }
}

/// A [`ContainerTemplate`] shared by every node's answer: cloned by reference and
/// serialized to JSON once, however many answers carry it. Only JSON carries it (the
/// serialized form is embedded as is); [`crate::api::DesiredState::complete`] takes it
/// out before anything else sees the state.
#[derive(Clone)]
pub struct SharedTemplate(Arc<(ContainerTemplate, OnceLock<Box<RawValue>>)>);

impl SharedTemplate {
    pub fn new(t: ContainerTemplate) -> SharedTemplate {
        SharedTemplate(Arc::new((t, OnceLock::new())))
    }

    pub fn get(&self) -> &ContainerTemplate {
        &self.0.0
    }
}

impl std::fmt::Debug for SharedTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

impl PartialEq for SharedTemplate {
    fn eq(&self, other: &SharedTemplate) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.get() == other.get()
    }
}

impl Serialize for SharedTemplate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw = self.0.1.get_or_init(|| {
            serde_json::value::to_raw_value(self.get()).expect("templates always serialize")
        });
        raw.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SharedTemplate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SharedTemplate, D::Error> {
        ContainerTemplate::deserialize(d).map(SharedTemplate::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_keeps_the_tag_and_changes_the_hash() {
        let spec = crate::spec::parse_one("a:\n  docker_image: reg:5000/web:v1\n", "a").unwrap();
        let node = NodeFacts {
            name: "n".into(),
            cpus: 1,
            memory_mb: 512,
            labels: Default::default(),
        };
        let mut specs = expand("a", &spec, 0, &node);
        let before = specs[0].hash();
        pin_digest(&mut specs, "sha256:abc");
        assert_eq!(specs[0].image, "reg:5000/web:v1@sha256:abc");
        assert_ne!(specs[0].hash(), before);
    }
    use crate::spec::parse_one;

    fn node() -> NodeFacts {
        NodeFacts {
            name: "pi1".into(),
            cpus: 4,
            memory_mb: 1024,
            labels: BTreeMap::from([("site".into(), "north".into())]),
        }
    }

    #[test]
    fn replicas_get_offset_ports_and_node_values() {
        let spec = parse_one(
            "a:\n  docker_image: r:5000/x\n  starting_ports: [{9000: 80}]\n  containers_per: {cpu: 0.5}\n  env_vars: {WHERE: \"{{node.name}}@{{node.label.site}}#{{replica}}\"}\n",
            "a",
        )
        .unwrap();
        let c = expand("a", &spec, 0, &node());
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].ports, vec![PortMapping::tcp(9001, 80)]);
        assert_eq!(c[1].env["WHERE"], "pi1@north#2");
        assert_eq!(c[0].env["GUSTAVO_NODE"], "pi1");
        assert_eq!(c[0].image, "r:5000/x:latest");
    }

    #[test]
    fn hash_changes_with_content_only() {
        let spec = parse_one("a:\n  docker_image: x\n  env_vars: {A: \"1\"}\n", "a").unwrap();
        let h1 = expand("a", &spec, 0, &node())[0].hash();
        assert_eq!(h1, expand("a", &spec, 0, &node())[0].hash());
        let mut changed = spec.clone();
        changed.env_vars.insert("A".into(), "2".into());
        assert_ne!(h1, expand("a", &changed, 0, &node())[0].hash());
        assert_ne!(h1, expand("a", &spec, 1, &node())[0].hash());
        // Switching rolling_restart changes how to roll, not what runs.
        let mut rolling = spec.clone();
        rolling.rolling_restart = true;
        assert_eq!(h1, expand("a", &rolling, 0, &node())[0].hash());
    }

    /// Issue 7 item 5: a binding's address or protocol is part of what runs, so changing
    /// either recreates the container; a plain TCP binding hashes as before they existed.
    #[test]
    fn hash_changes_with_the_binding() {
        let spec = |ports: &str| {
            parse_one(
                &format!("a:\n  docker_image: x\n  starting_ports: {ports}\n"),
                "a",
            )
            .unwrap()
        };
        let hash = |ports: &str| expand("a", &spec(ports), 0, &node())[0].hash();
        let plain = hash("[{9000: 80}]");
        for other in [
            "[{\"127.0.0.1:9000\": 80}]",
            "[{\"9000\": \"80/udp\"}]",
            "[{\"[::1]:9000\": 80}]",
            "[{9000: 81}]",
        ] {
            assert_ne!(plain, hash(other), "{other}");
        }
        assert_eq!(plain, hash("[\"9000:80/tcp\"]"));
        let c = &expand("a", &spec("[{9000: 80}]"), 0, &node())[0];
        let json = serde_json::to_string(&c.ports).unwrap();
        assert_eq!(json, r#"[{"host":9000,"container":80}]"#);
        // Replicas keep the address and protocol, and offset the port.
        let mut two = spec("[{\"127.0.0.1:9000/udp\": 80}]");
        two.containers_per = Some(crate::spec::ContainersPer::Server(2));
        let c = expand("a", &two, 0, &node());
        assert_eq!(c[1].ports[0].to_string(), "127.0.0.1:9001:80/udp");
    }

    #[test]
    fn stopped_apps_have_no_containers() {
        let spec = parse_one("a:\n  docker_image: x\n  running: false\n", "a").unwrap();
        assert!(expand("a", &spec, 0, &node()).is_empty());
    }

    #[test]
    fn unknown_placeholders_stay() {
        assert_eq!(
            expand_env(
                "{{nope}} {{node.label.x}}|{{",
                "pi1",
                &node().labels,
                "a",
                1
            ),
            "{{nope}} |{{"
        );
    }
}
