//! The Docker Engine runtime, over the engine's API on its unix socket (bollard).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, DeviceMapping, EndpointSettings, HealthConfig,
    HostConfig, NetworkConnectRequest, NetworkingConfig, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, StopContainerOptions,
};
use futures::StreamExt;
use gustavo_model::api::DesiredContainer;
use gustavo_model::plan::{Health, Observed, RunState};
use gustavo_model::spec::{NetworkMode, PortMapping, RestartPolicy as Policy};

use crate::runtime::{Runtime, RuntimeError, labels};

/// How long a container gets to stop before it is killed.
const STOP_TIMEOUT_S: i32 = 10;

#[derive(Clone)]
pub struct DockerRuntime {
    pub(crate) docker: Docker,
    /// Serialises network creation in this process (see `networks.rs`).
    pub(crate) net_lock: Arc<tokio::sync::Mutex<()>>,
}

pub(crate) fn status_code(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

pub(crate) fn message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

impl DockerRuntime {
    /// Changes a container's limits in place (no restart).
    async fn update_limits(
        &self,
        id: &str,
        body: bollard::models::ContainerUpdateBody,
    ) -> Result<(), RuntimeError> {
        self.docker
            .update_container(id, body)
            .await
            .map_err(|e| RuntimeError::Container {
                name: id.into(),
                reason: message(&e),
            })
    }

    /// Connects to `$DOCKER_HOST` or the default socket and checks the engine answers.
    pub async fn connect() -> Result<DockerRuntime, RuntimeError> {
        let docker = Docker::connect_with_unix_defaults()
            .map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
        let v = docker.version().await.map_err(|e| {
            RuntimeError::Unavailable(format!("the Docker engine does not answer: {e}"))
        })?;
        tracing::info!(
            version = v.version.as_deref().unwrap_or("?"),
            api = v.api_version.as_deref().unwrap_or("?"),
            "connected to the Docker engine"
        );
        Ok(DockerRuntime {
            docker,
            net_lock: Arc::default(),
        })
    }

    /// The engine client, for the agent's other readers (the Glances API's containers).
    pub fn docker(&self) -> Docker {
        self.docker.clone()
    }

    async fn pull(&self, image: &str) -> Result<(), RuntimeError> {
        tracing::info!(image, "pulling image");
        let mut stream = self.docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(image.to_string()),
                ..Default::default()
            }),
            None,
            None,
        );
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                return Err(RuntimeError::Pull {
                    image: image.into(),
                    reason: message(&e),
                });
            }
        }
        // Some registries end the stream without an error yet deliver nothing.
        self.docker
            .inspect_image(image)
            .await
            .map(|_| ())
            .map_err(|e| RuntimeError::Pull {
                image: image.into(),
                reason: message(&e),
            })
    }

    /// The engine's create body. `networks` holds the IDs of the spec's bridge networks, in
    /// the spec's order (names can be ambiguous on an engine; IDs never are).
    fn body(node: &str, c: &DesiredContainer, networks: &[String]) -> ContainerCreateBody {
        let s = &c.spec;
        let mut labels: HashMap<String, String> = s.labels.clone().into_iter().collect();
        labels.insert(labels::NODE.into(), node.into());
        labels.insert(labels::APP.into(), s.app.clone());
        labels.insert(labels::REPLICA.into(), s.replica.to_string());
        labels.insert(labels::HASH.into(), c.hash.clone());
        let (exposed, port_bindings) = port_config(&s.ports);
        let (network_mode, endpoints) = match &s.network {
            NetworkMode::Host => ("host".to_string(), None),
            NetworkMode::None => ("none".to_string(), None),
            NetworkMode::Bridges(_) => {
                let first = networks.first().cloned().unwrap_or_else(|| "bridge".into());
                // The engine resolves an endpoint by its NetworkID when set, and by name
                // otherwise — which is ambiguous while duplicates exist.
                let ep = HashMap::from([(
                    first.clone(),
                    EndpointSettings {
                        network_id: networks.first().cloned(),
                        ..Default::default()
                    },
                )]);
                (first, Some(ep))
            }
        };
        let restart = match s.restart {
            Policy::No => RestartPolicyNameEnum::NO,
            Policy::Always => RestartPolicyNameEnum::ALWAYS,
            Policy::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
            Policy::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
        };
        let ms_to_ns = |ms: u64| (ms as i64).saturating_mul(1_000_000);
        ContainerCreateBody {
            image: Some(s.image.clone()),
            env: Some(s.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            cmd: s.command.clone(),
            entrypoint: s.entrypoint.clone(),
            working_dir: s.workdir.clone(),
            user: s.user.clone(),
            labels: Some(labels),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            healthcheck: s.healthcheck.as_ref().map(|h| HealthConfig {
                test: Some(h.test.as_docker()),
                interval: Some(ms_to_ns(h.interval.0)),
                timeout: Some(ms_to_ns(h.timeout.0)),
                retries: Some(i64::from(h.retries)),
                start_period: Some(ms_to_ns(h.start_period.0)),
                start_interval: None,
            }),
            host_config: Some(HostConfig {
                binds: (!s.volumes.is_empty()).then(|| s.volumes.clone()),
                port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
                network_mode: Some(network_mode),
                privileged: Some(s.privileged),
                devices: (!s.devices.is_empty()).then(|| {
                    s.devices
                        .iter()
                        .map(|d| {
                            let mut p = d.splitn(3, ':');
                            DeviceMapping {
                                path_on_host: p.next().map(String::from),
                                path_in_container: p.next().map(String::from),
                                cgroup_permissions: p.next().map(String::from),
                            }
                        })
                        .collect()
                }),
                nano_cpus: s.nano_cpus,
                memory: s.memory_bytes,
                restart_policy: Some(RestartPolicy {
                    name: Some(restart),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            networking_config: endpoints.map(|e| NetworkingConfig {
                endpoints_config: Some(e),
            }),
            ..Default::default()
        }
    }
}

/// The engine's `ExposedPorts` and `HostConfig.PortBindings`: each container port keyed
/// `PORT/PROTO`, with every host binding of it (address and port).
type PortBindings = HashMap<String, Option<Vec<PortBinding>>>;

fn port_config(ports: &[PortMapping]) -> (Vec<String>, PortBindings) {
    let mut bindings: PortBindings = HashMap::new();
    let mut exposed: Vec<String> = Vec::new();
    for p in ports {
        let key = p.container_key();
        if !bindings.contains_key(&key) {
            exposed.push(key.clone());
        }
        bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                // None binds every address; the engine wants IPv6 without brackets.
                host_ip: p.host_ip.map(|ip| ip.to_string()),
                host_port: Some(p.host.to_string()),
            });
    }
    (exposed, bindings)
}

/// Why one attempt at creating a container failed.
enum CreateError {
    /// A network we resolved to an ID no longer exists.
    NetworkGone(String),
    Runtime(RuntimeError),
}

impl CreateError {
    fn into_runtime(self, container: &str) -> RuntimeError {
        match self {
            CreateError::NetworkGone(n) => RuntimeError::Container {
                name: container.into(),
                reason: format!("network `{n}` was removed while the container was created"),
            },
            CreateError::Runtime(e) => e,
        }
    }
}

impl From<RuntimeError> for CreateError {
    fn from(e: RuntimeError) -> Self {
        CreateError::Runtime(e)
    }
}

/// Whether the engine refused because a network (given by ID) does not exist.
fn network_missing(e: &bollard::errors::Error) -> bool {
    status_code(e) == Some(404) && message(e).contains("network")
}

impl DockerRuntime {
    async fn create_once(&self, node: &str, c: &DesiredContainer) -> Result<String, CreateError> {
        let err = |reason: String| {
            CreateError::Runtime(RuntimeError::Container {
                name: c.name.clone(),
                reason,
            })
        };
        let mut networks = Vec::new();
        if let NetworkMode::Bridges(list) = &c.spec.network {
            for n in list {
                networks.push((n.clone(), self.resolve_network(n).await?));
            }
        }
        let ids: Vec<String> = networks.iter().map(|(_, id)| id.clone()).collect();
        let created = match self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(c.name.clone()),
                    ..Default::default()
                }),
                Self::body(node, c, &ids),
            )
            .await
        {
            Ok(created) => created,
            Err(e) if network_missing(&e) && !networks.is_empty() => {
                return Err(CreateError::NetworkGone(networks[0].0.clone()));
            }
            Err(e) => return Err(err(message(&e))),
        };
        let id = created.id;
        for (name, net) in networks.iter().skip(1) {
            let req = NetworkConnectRequest {
                container: id.clone(),
                endpoint_config: Some(EndpointSettings {
                    network_id: Some(net.clone()),
                    ..Default::default()
                }),
            };
            if let Err(e) = self.docker.connect_network(net, req).await {
                let _ = self.remove(&id).await;
                if network_missing(&e) {
                    return Err(CreateError::NetworkGone(name.clone()));
                }
                return Err(err(format!(
                    "cannot join network `{name}`: {}",
                    message(&e)
                )));
            }
        }
        if let Err(e) = self.docker.start_container(&id, None).await {
            // Leave nothing half-made behind: the next pass would only trip over it.
            let _ = self.remove(&id).await;
            if network_missing(&e) && !networks.is_empty() {
                return Err(CreateError::NetworkGone(networks[0].0.clone()));
            }
            return Err(err(message(&e)));
        }
        Ok(id)
    }
}

/// Docker's status line carries health and exit code: `Up 3 minutes (healthy)`,
/// `Exited (137) 2 seconds ago` — reading it saves one inspect per container per pass.
fn parse_status(status: &str) -> (Option<Health>, i64) {
    let health = if status.contains("(healthy)") {
        Some(Health::Healthy)
    } else if status.contains("(unhealthy)") {
        Some(Health::Unhealthy)
    } else if status.contains("(health: starting)") {
        Some(Health::Starting)
    } else {
        None
    };
    let exit = status
        .strip_prefix("Exited (")
        .and_then(|r| r.split(')').next())
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (health, exit)
}

/// What `inspect` adds to a listed container.
struct Details {
    restarts: u32,
    started_ms: u64,
    exit_code: Option<i64>,
    detail: Option<String>,
    nano_cpus: i64,
    memory: i64,
    memory_swap: i64,
}

/// The most of a container's log or health output kept in a status report.
const DETAIL_MAX: usize = 400;
/// Log lines kept for a container in trouble.
const LOG_LINES: &str = "5";

/// Keeps the end of `s`, on a character boundary, trimmed.
fn tail_of(s: &str) -> String {
    let s = s.trim();
    let mut cut = s.len().saturating_sub(DETAIL_MAX);
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    s[cut..].trim().to_string()
}

impl DockerRuntime {
    /// Restart count, start time and exit code from `inspect`; for a container in trouble
    /// also its healthcheck's last output or its last log lines. `None` if it vanished.
    async fn details(&self, o: &Observed) -> Option<Details> {
        let c = self.docker.inspect_container(&o.id, None).await.ok()?;
        let st = c.state.unwrap_or_default();
        let started_ms = st
            .started_at
            .as_deref()
            .and_then(crate::networks::parse_rfc3339)
            .filter(|(s, _)| *s > 0)
            .map(|(s, n)| s as u64 * 1000 + u64::from(n / 1_000_000))
            .unwrap_or(0);
        let mut d = Details {
            restarts: c.restart_count.unwrap_or(0).max(0) as u32,
            started_ms,
            exit_code: st.exit_code,
            detail: None,
            nano_cpus: c
                .host_config
                .as_ref()
                .and_then(|h| h.nano_cpus)
                .unwrap_or(0),
            memory: c.host_config.as_ref().and_then(|h| h.memory).unwrap_or(0),
            memory_swap: c
                .host_config
                .as_ref()
                .and_then(|h| h.memory_swap)
                .unwrap_or(0),
        };
        let mut probe = o.clone();
        probe.restarts = d.restarts;
        probe.started_ms = d.started_ms;
        probe.exit_code = d.exit_code.unwrap_or(o.exit_code);
        if probe.trouble(now_ms()).is_none() {
            return Some(d);
        }
        d.detail = if o.health == Some(Health::Unhealthy) {
            st.health
                .and_then(|h| h.log)
                .and_then(|l| l.into_iter().last())
                .and_then(|r| r.output)
                .map(|out| tail_of(&out))
        } else {
            self.last_log_lines(&o.id).await
        };
        Some(d)
    }

    async fn last_log_lines(&self, id: &str) -> Option<String> {
        let mut stream = self.docker.logs(
            id,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                tail: LOG_LINES.into(),
                ..Default::default()
            }),
        );
        let mut out = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            out.push_str(&chunk.to_string());
            if out.len() > 16 * DETAIL_MAX {
                break;
            }
        }
        let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
        (!lines.is_empty()).then(|| tail_of(&lines.join(" | ")))
    }
}

/// One reading of a container's stats (no second sample, so no CPU percentage); `None`
/// when the engine gives none.
pub(crate) async fn one_shot_stats(
    docker: &Docker,
    id: &str,
) -> Option<bollard::models::ContainerStatsResponse> {
    let mut stats = docker.stats(
        id,
        Some(bollard::query_parameters::StatsOptions {
            stream: false,
            one_shot: true,
        }),
    );
    stats.next().await?.ok()
}

/// Unix milliseconds now.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Runtime for DockerRuntime {
    async fn list(&self, node: &str) -> Result<Vec<Observed>, RuntimeError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{}={node}", labels::NODE)],
        )]);
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| RuntimeError::Unavailable(message(&e)))?;
        let list = list
            .into_iter()
            .filter_map(|c| {
                let l = c.labels.unwrap_or_default();
                let state = match c.state? {
                    ContainerSummaryStateEnum::RUNNING => RunState::Running,
                    ContainerSummaryStateEnum::RESTARTING => RunState::Restarting,
                    ContainerSummaryStateEnum::PAUSED => RunState::Paused,
                    ContainerSummaryStateEnum::CREATED => RunState::Created,
                    ContainerSummaryStateEnum::REMOVING => RunState::Removing,
                    ContainerSummaryStateEnum::DEAD => RunState::Dead,
                    _ => RunState::Exited,
                };
                let (health, exit_code) = parse_status(c.status.as_deref().unwrap_or(""));
                let networks = c
                    .network_settings
                    .and_then(|s| s.networks)
                    .map(|n| n.into_keys().collect());
                Some(Observed {
                    networks,
                    nano_cpus: 0,
                    memory: 0,
                    memory_swap: 0,
                    restarts: 0,
                    started_ms: 0,
                    detail: None,
                    id: c.id?,
                    name: c.names?.first()?.trim_start_matches('/').to_string(),
                    app: l.get(labels::APP)?.clone(),
                    replica: l.get(labels::REPLICA)?.parse().ok()?,
                    hash: l.get(labels::HASH).cloned().unwrap_or_default(),
                    image: c.image.unwrap_or_default(),
                    state,
                    health,
                    exit_code,
                    created: c.created.unwrap_or(0).max(0) as u64,
                })
            })
            .collect::<Vec<_>>();
        // The list has no restart count, start time or health output: ask each container.
        // A device runs a handful, so this is a few local calls per pass.
        let details = futures::future::join_all(list.iter().map(|o| self.details(o))).await;
        Ok(list
            .into_iter()
            .zip(details)
            .map(|(mut o, d)| {
                if let Some(d) = d {
                    o.restarts = d.restarts;
                    o.started_ms = d.started_ms;
                    if let Some(code) = d.exit_code {
                        o.exit_code = code;
                    }
                    o.detail = d.detail;
                    o.nano_cpus = d.nano_cpus;
                    o.memory = d.memory;
                    o.memory_swap = d.memory_swap;
                }
                o
            })
            .collect())
    }

    async fn ensure_image(&self, image: &str, refresh: bool) -> Result<(), RuntimeError> {
        let present = self.docker.inspect_image(image).await.is_ok();
        if present && !refresh {
            return Ok(());
        }
        match self.pull(image).await {
            Err(e) if present => {
                tracing::warn!(image, error = %e, "cannot refresh image; using the local copy");
                Ok(())
            }
            other => other,
        }
    }

    async fn create(&self, node: &str, c: &DesiredContainer) -> Result<String, RuntimeError> {
        // A network resolved a moment ago can vanish (another agent on this engine pruned
        // it as unused): resolve again once and retry.
        match self.create_once(node, c).await {
            Err(CreateError::NetworkGone(n)) => {
                tracing::info!(network = %n, container = %c.name, "network vanished; resolving again");
                self.create_once(node, c)
                    .await
                    .map_err(|e| e.into_runtime(&c.name))
            }
            other => other.map_err(|e| e.into_runtime(&c.name)),
        }
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        match self.docker.start_container(id, None).await {
            Ok(()) => Ok(()),
            Err(e) if status_code(&e) == Some(304) => Ok(()),
            Err(e) => Err(RuntimeError::Container {
                name: id.into(),
                reason: message(&e),
            }),
        }
    }

    async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        let opts = StopContainerOptions {
            t: Some(STOP_TIMEOUT_S),
            signal: None,
        };
        match self.docker.stop_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if status_code(&e) == Some(304) => Ok(()),
            Err(e) => Err(RuntimeError::Container {
                name: id.into(),
                reason: message(&e),
            }),
        }
    }

    async fn set_memory(&self, id: &str, memory: i64, swap: i64) -> Result<(), RuntimeError> {
        // As for CPUs, 0 reads "unchanged": lifting sets the host's whole memory, with
        // unlimited swap.
        let (memory, swap) = if memory > 0 {
            (memory, swap)
        } else {
            match self.docker.info().await {
                Ok(i) => (i.mem_total.unwrap_or(0), -1),
                Err(e) => return Err(RuntimeError::Unavailable(message(&e))),
            }
        };
        let body = bollard::models::ContainerUpdateBody {
            memory: Some(memory),
            memory_swap: Some(if swap == 0 { -1 } else { swap }),
            ..Default::default()
        };
        self.update_limits(id, body).await
    }

    async fn net_sent(&self, id: &str) -> u64 {
        one_shot_stats(&self.docker, id)
            .await
            .and_then(|s| s.networks)
            .map_or(0, |n| n.values().map(|n| n.tx_bytes.unwrap_or(0)).sum())
    }

    async fn memory_usage(&self, id: &str) -> u64 {
        one_shot_stats(&self.docker, id)
            .await
            .and_then(|s| s.memory_stats)
            .map_or(0, |m| {
                let cache = gustavo_model::pressure::inactive_file(m.stats.as_ref());
                m.usage.unwrap_or(0).saturating_sub(cache)
            })
    }

    async fn set_cpus(&self, id: &str, nano_cpus: i64) -> Result<(), RuntimeError> {
        // The engine reads 0 as "unchanged" and cannot clear a limit on a running
        // container: lifting one sets it to every core of the host, which limits nothing.
        let nano_cpus = if nano_cpus > 0 {
            nano_cpus
        } else {
            let cores = match self.docker.info().await {
                Ok(i) => i.ncpu.unwrap_or(1),
                Err(e) => return Err(RuntimeError::Unavailable(message(&e))),
            };
            cores.max(1) * 1_000_000_000
        };
        let body = bollard::models::ContainerUpdateBody {
            nano_cpus: Some(nano_cpus),
            ..Default::default()
        };
        self.update_limits(id, body).await
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        // Stopping first gives the app its grace period; errors (already stopped, gone)
        // are settled by the forced remove below.
        let _ = self
            .docker
            .stop_container(
                id,
                Some(StopContainerOptions {
                    t: Some(STOP_TIMEOUT_S),
                    signal: None,
                }),
            )
            .await;
        match self
            .docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: false,
                    link: false,
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if status_code(&e) == Some(404) => Ok(()),
            Err(e) => Err(RuntimeError::Container {
                name: id.into(),
                reason: message(&e),
            }),
        }
    }

    async fn prune_networks(&self, unused: &std::collections::BTreeSet<String>) {
        DockerRuntime::prune_networks(self, unused).await
    }

    async fn logs(&self, id: &str, max_bytes: usize) -> String {
        let mut stream = self.docker.logs(
            id,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                tail: "200".into(),
                ..Default::default()
            }),
        );
        let mut out = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            out.push_str(&chunk.to_string());
        }
        gustavo_model::job::tail(&out, max_bytes)
    }

    fn watch(&self, node: &str) -> tokio::sync::mpsc::Receiver<()> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let docker = self.docker.clone();
        let filter = format!("{}={node}", labels::NODE);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(500);
            loop {
                let filters = HashMap::from([
                    ("type".to_string(), vec!["container".to_string()]),
                    ("label".to_string(), vec![filter.clone()]),
                ]);
                let mut events = docker.events(Some(EventsOptions {
                    filters: Some(filters),
                    ..Default::default()
                }));
                while let Some(ev) = events.next().await {
                    match ev {
                        Ok(_) => {
                            backoff = Duration::from_millis(500);
                            if tx.try_send(()).is_err() && tx.is_closed() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "docker event stream broke");
                            break;
                        }
                    }
                }
                if tx.is_closed() {
                    return;
                }
                // The stream ends when the engine restarts: wait, reconnect, and trigger
                // a full relist so nothing that happened meanwhile is missed.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                let _ = tx.try_send(());
            }
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status("Up 3 minutes (healthy)"),
            (Some(Health::Healthy), 0)
        );
        assert_eq!(
            parse_status("Up 1 second (health: starting)"),
            (Some(Health::Starting), 0)
        );
        assert_eq!(parse_status("Exited (137) 2 seconds ago"), (None, 137));
        assert_eq!(parse_status("Created"), (None, 0));
    }

    /// Issue 7 item 5: the address and protocol of a binding reach the engine.
    #[test]
    fn port_bindings_carry_address_and_protocol() {
        use gustavo_model::spec::Ports;
        let ports: Ports = serde_json::from_str(
            r#"[{"127.0.0.1:9000": 80}, {"[::1]:9001": 80}, "5353/udp", 8080]"#,
        )
        .unwrap();
        let (exposed, bindings) = port_config(&ports.0);
        assert_eq!(exposed, vec!["80/tcp", "5353/udp", "8080/tcp"]);
        let hosts = |key: &str| -> Vec<(Option<String>, Option<String>)> {
            bindings[key]
                .as_ref()
                .unwrap()
                .iter()
                .map(|b| (b.host_ip.clone(), b.host_port.clone()))
                .collect()
        };
        assert_eq!(
            hosts("80/tcp"),
            vec![
                (Some("127.0.0.1".into()), Some("9000".into())),
                (Some("::1".into()), Some("9001".into()))
            ]
        );
        assert_eq!(hosts("5353/udp"), vec![(None, Some("5353".into()))]);
        assert_eq!(hosts("8080/tcp"), vec![(None, Some("8080".into()))]);
    }
}
