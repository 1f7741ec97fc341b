//! Watching agentless hosts through Glances (`ops/watched.rs`): every [`POLL`], each host's
//! Glances API is asked for `cpu`, `mem`, `load`, `fs` and `uptime` (API v4 if it answers
//! `/api/4/status`, else v3), which become its vitals and feed the same pressure level
//! machine the agents run. Where the host is orchestrated by Docker, the same actions apply
//! through its Docker API over TLS (`--docker-cert-path`: `ca.pem`, `cert.pem`, `key.pem`):
//! throttle, stop one per interval lowest priority first (container labels
//! `gustavo.priority` and `gustavo.critical`; Glances' own container is never touched), and
//! undo exactly what was done. The record is stored with the host, so a server restart in
//! the middle loses nothing. A host that does not answer goes offline like a silent node.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::models::ContainerUpdateBody;
use bollard::query_parameters::{ListContainersOptions, StopContainerOptions};
use gustavo_model::pressure::{self, Action, Candidate, Level, Record, Sample};
use gustavo_model::watched::{WatchedHost, vitals_of};
use gustavo_store::Change;
use serde_json::Value;

use crate::state::Shared;

/// How often each host is polled.
pub const POLL: Duration = Duration::from_secs(5);

/// How the server reaches watched hosts' Docker APIs.
#[derive(Debug, Clone, Default)]
pub struct WatchConfig {
    /// A directory with `ca.pem`, `cert.pem` and `key.pem` (Docker's `DOCKER_CERT_PATH`).
    pub docker_cert_path: Option<PathBuf>,
}

/// Runs until the server closes.
pub async fn run(shared: Arc<Shared>, cfg: WatchConfig) {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client for watched hosts");
            return;
        }
    };
    let mut closing = shared.closing.subscribe();
    let mut dockers: HashMap<String, Option<Docker>> = HashMap::new();
    loop {
        let hosts: Vec<WatchedHost> = shared.read().watched.values().cloned().collect();
        let polls = hosts.into_iter().map(|h| {
            let docker = docker_for(&cfg, &h, &mut dockers);
            poll(&shared, &http, h, docker)
        });
        futures::future::join_all(polls.collect::<Vec<_>>()).await;
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = closing.changed() => return,
        }
    }
}

/// The Docker client of a host orchestrated by Docker, made once per host and URL (a
/// failure too: it is a matter of configuration, said once).
fn docker_for(
    cfg: &WatchConfig,
    h: &WatchedHost,
    cache: &mut HashMap<String, Option<Docker>>,
) -> Option<Docker> {
    let url = h.docker_url()?;
    cache
        .entry(format!("{}|{url}", h.name))
        .or_insert_with(|| {
            let Some(dir) = &cfg.docker_cert_path else {
                tracing::warn!(host = %h.name, "orchestrator docker, but the server has no --docker-cert-path: watching only");
                return None;
            };
            Docker::connect_with_ssl(
                &url,
                &dir.join("key.pem"),
                &dir.join("cert.pem"),
                &dir.join("ca.pem"),
                30,
                bollard::API_DEFAULT_VERSION,
            )
            .inspect_err(|e| {
                tracing::warn!(host = %h.name, url, error = %e, "cannot set up the Docker API client: watching only");
            })
            .ok()
        })
        .clone()
}

async fn get_json(http: &reqwest::Client, url: String) -> Option<Value> {
    let r = http.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// Which Glances API the host answers: 4 when `/api/4/status` does, else 3.
async fn detect(http: &reqwest::Client, base: &str) -> Option<u8> {
    for v in [4u8, 3] {
        if let Ok(r) = http.get(format!("{base}/api/{v}/status")).send().await
            && r.status().is_success()
        {
            return Some(v);
        }
    }
    None
}

async fn poll(
    shared: &Arc<Shared>,
    http: &reqwest::Client,
    h: WatchedHost,
    docker: Option<Docker>,
) {
    let host = if h.address.contains(':') {
        format!("[{}]", h.address)
    } else {
        h.address.clone()
    };
    let base = format!("http://{host}:{}", h.port);
    let Some(api) = detect(http, &base).await else {
        tracing::debug!(host = %h.name, "Glances does not answer");
        return;
    };
    let get = |p: &str| get_json(http, format!("{base}/api/{api}/{p}"));
    let (cpu, mem, load, fs, uptime) = tokio::join!(
        get("cpu"),
        get("mem"),
        get("load"),
        get("fs"),
        get("uptime")
    );
    let (Some(cpu), Some(mem), Some(load)) = (cpu, mem, load) else {
        tracing::debug!(host = %h.name, "Glances answered without cpu, mem or load");
        return;
    };
    let now = crate::now();
    let vitals = vitals_of(
        &cpu,
        &mem,
        &load,
        &fs.unwrap_or(Value::Null),
        &uptime.unwrap_or(Value::Null),
        now,
    );
    let (vitals_cpus, vitals_memory) = (vitals.cpus, vitals.memory_total_mb);
    let thresholds = h
        .pressure
        .clone()
        .or_else(|| shared.read().settings.pressure.clone());
    let mut record = h.record.clone();
    match &thresholds {
        Some(t) => {
            record.machine.observe(t, &Sample::of(&vitals));
        }
        None if record.machine.level != Level::Ready => record.machine.reset(now),
        None => {}
    }
    if let Some(d) = &docker
        && (record.machine.level != Level::Ready || !record.done.is_empty())
    {
        let t = thresholds.clone().unwrap_or_default();
        act(d, &h, &t, &mut record, now).await;
    }
    let status = (thresholds.is_some() || !record.done.is_empty()).then(|| record.status());
    let ip = h
        .address
        .parse()
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    let mut before = Level::Ready;
    {
        let c = shared.read();
        if !c.watched.contains_key(&h.name) {
            return;
        }
        let mut live = c.live.entry(h.name.clone()).or_default();
        before = live.pressure.as_ref().map(|p| p.level).unwrap_or(before);
        live.last_seen = now;
        live.address = Some(ip);
        live.vitals = Some(vitals);
        live.pressure = status.clone().map(Box::new);
        // No agent sends reports: count the (empty) report as had.
        live.has_report = true;
    }
    let after = status.as_ref().map(|s| s.level).unwrap_or_default();
    if before != after {
        shared.events.push(
            "pressure",
            format!("node:{}", h.name),
            status.unwrap_or_default().event(before),
        );
    }
    if record != h.record || h.api != Some(api) {
        let name = h.name.clone();
        let api_changed = h.api != Some(api);
        let (cpus, memory_mb) = (vitals_cpus, vitals_memory);
        let r = shared
            .mutate(move |c, rev| {
                let Some(cur) = c.watched.get(&name) else {
                    return Ok((Vec::new(), ()));
                };
                let mut next = cur.clone();
                next.record = record;
                next.api = Some(api);
                let mut changes = vec![Change::PutWatched(Box::new(next.clone()))];
                if api_changed && let Some(n) = c.nodes.get(&name) {
                    let mut n = n.clone();
                    n.agent_version = crate::ops::watched::agentless_node(&next, rev).agent_version;
                    n.cpus = cpus;
                    n.memory_mb = memory_mb;
                    changes.push(Change::PutNode(n));
                }
                Ok((changes, ()))
            })
            .await;
        if let Err(e) = r {
            tracing::error!(host = %h.name, error = %e, "cannot store the watched host's pressure record");
        }
    }
}

/// Carries out the plan on the host's containers through its Docker API.
async fn act(d: &Docker, h: &WatchedHost, t: &pressure::Thresholds, record: &mut Record, now: u64) {
    let mut filters = HashMap::new();
    if let Some((k, v)) = h.scope_label() {
        filters.insert("label".to_string(), vec![format!("{k}={v}")]);
    }
    let list = match d
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
    {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(host = %h.name, error = %e, "node pressure: cannot list the host's containers");
            return;
        }
    };
    let mut candidates = Vec::new();
    for c in list {
        let (Some(id), Some(name)) = (c.id, c.names.and_then(|n| n.first().cloned())) else {
            continue;
        };
        let name = name.trim_start_matches('/').to_string();
        let image = c.image.unwrap_or_default();
        // FRACTAL's rule, kept: Glances itself is never throttled or stopped.
        if image.contains("glances") || name.contains("glances") {
            continue;
        }
        let labels = c.labels.unwrap_or_default();
        let hc = d
            .inspect_container(&id, None)
            .await
            .ok()
            .and_then(|i| i.host_config)
            .unwrap_or_default();
        let running = c.state.map(|s| s.to_string()).as_deref() == Some("running");
        let critical = labels.get("gustavo.critical").map(String::as_str) == Some("true");
        let memory_usage = if running && record.needs_memory_usage(t, &name, &id, critical) {
            memory_usage(d, &id).await
        } else {
            0
        };
        candidates.push(Candidate {
            name,
            id,
            priority: labels
                .get("gustavo.priority")
                .and_then(|p| p.parse().ok())
                .unwrap_or(0),
            critical,
            running,
            nano_cpus: hc.nano_cpus.unwrap_or(0),
            memory: hc.memory.unwrap_or(0),
            memory_swap: hc.memory_swap.unwrap_or(0),
            memory_usage,
        });
    }
    for action in pressure::plan(t, record, &candidates, now) {
        let before = candidates.iter().find(|c| match &action {
            Action::Limit { name, .. }
            | Action::LimitMemory { name, .. }
            | Action::Stop { name, .. } => &c.name == name,
            _ => false,
        });
        let done = match &action {
            Action::Forget { .. } => Ok(()),
            Action::Limit { id, nano_cpus, .. } => {
                let n = if *nano_cpus > 0 {
                    *nano_cpus
                } else {
                    // Docker reads 0 as "unchanged": lift a limit to every core of the host.
                    match d.info().await {
                        Ok(i) => i.ncpu.unwrap_or(1).max(1) * 1_000_000_000,
                        Err(e) => {
                            tracing::warn!(host = %h.name, error = %e, "node pressure: cannot read the host's cores");
                            continue;
                        }
                    }
                };
                d.update_container(
                    id,
                    ContainerUpdateBody {
                        nano_cpus: Some(n),
                        ..Default::default()
                    },
                )
                .await
            }
            Action::LimitMemory {
                id, memory, swap, ..
            } => {
                let (memory, swap) = if *memory > 0 {
                    (*memory, if *swap == 0 { -1 } else { *swap })
                } else {
                    // As for CPUs: lifting a limit sets the host's whole memory.
                    match d.info().await {
                        Ok(i) => (i.mem_total.unwrap_or(0), -1),
                        Err(e) => {
                            tracing::warn!(host = %h.name, error = %e, "node pressure: cannot read the host's memory");
                            continue;
                        }
                    }
                };
                d.update_container(
                    id,
                    ContainerUpdateBody {
                        memory: Some(memory),
                        memory_swap: Some(swap),
                        ..Default::default()
                    },
                )
                .await
            }
            Action::Stop { id, .. } => not_modified_is_done(
                d.stop_container(
                    id,
                    Some(StopContainerOptions {
                        t: Some(10),
                        signal: None,
                    }),
                )
                .await,
            ),
            Action::Start { id, .. } => not_modified_is_done(d.start_container(id, None).await),
        };
        match done {
            Ok(()) => {
                tracing::info!(host = %h.name, action = ?action, "node pressure on a watched host");
                pressure::apply(record, &action, before, now);
            }
            Err(e) => {
                tracing::warn!(host = %h.name, action = ?action, error = %e, "node pressure: action failed; retrying next poll")
            }
        }
    }
}

/// What a running container uses, without reclaimable page cache (0 when unknown).
async fn memory_usage(d: &Docker, id: &str) -> u64 {
    use futures::StreamExt;
    let opts = bollard::query_parameters::StatsOptions {
        stream: false,
        one_shot: true,
    };
    match d.stats(id, Some(opts)).next().await {
        Some(Ok(s)) => s.memory_stats.map_or(0, |m| {
            let cache = gustavo_model::pressure::inactive_file(m.stats.as_ref());
            m.usage.unwrap_or(0).saturating_sub(cache)
        }),
        _ => 0,
    }
}

/// Docker answers 304 to stopping a stopped container or starting a running one: done.
fn not_modified_is_done(
    r: Result<(), bollard::errors::Error>,
) -> Result<(), bollard::errors::Error> {
    match r {
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 304, ..
        }) => Ok(()),
        other => other,
    }
}
