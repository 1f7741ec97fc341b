//! A simulated fleet: many agents in one process, each running the real agent code —
//! registration, vitals, long-poll, reconcile, status — against a [`SimRuntime`] and a
//! [`SimHost`], with state kept in memory. They speak exactly the protocol devices speak;
//! only the container engine and the host are simulated. Agents share HTTP/2 connections
//! (one per `per_connection` agents), so a hundred thousand fit under the open-files limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::persist::MemoryPersist;
use crate::reconcile::ReconcileConfig;
use crate::sim::{SimHost, SimRuntime};
use crate::{AgentConfig, HttpParts};

#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub server: String,
    pub join_token: String,
    pub agents: usize,
    pub group: String,
    /// Agents are named `<prefix>-<n>`.
    pub prefix: String,
    pub heartbeat: Duration,
    /// How many agents share one HTTP/2 connection.
    pub per_connection: usize,
    /// How long a simulated pull or container start takes.
    pub sim_delay: Duration,
    /// Images the simulated registry holds.
    pub images: Vec<String>,
    /// Agents hold one stream each (else they long-poll).
    pub stream: bool,
}

/// Request latencies as the agents saw them, per endpoint.
#[derive(Default)]
pub struct Latencies {
    by_endpoint: Mutex<HashMap<&'static str, Samples>>,
}

/// What one endpoint saw.
#[derive(Default)]
struct Samples {
    micros: Vec<u32>,
    errors: u64,
    /// Of the errors, those where the client's own timeout ran out.
    timeouts: u64,
}

/// Percentiles of one endpoint, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointLatency {
    pub endpoint: String,
    pub count: usize,
    /// Requests that got no answer or a 5xx.
    pub errors: u64,
    /// Of the errors, those that ran out of time on the client (the rest: refused or
    /// dropped connections, or a 5xx).
    pub timeouts: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latencies {
    /// What a client calls after each request to have it recorded here.
    pub fn observer(self: &Arc<Self>) -> gustavo_client::Observer {
        let l = self.clone();
        Arc::new(move |endpoint, took, status| l.record(endpoint, took, status))
    }

    fn record(&self, endpoint: &'static str, took: Duration, status: u16) {
        use gustavo_client::{NO_ANSWER, TIMED_OUT};
        let mut all = self.by_endpoint.lock().unwrap_or_else(|p| p.into_inner());
        let s = all.entry(endpoint).or_default();
        if matches!(status, NO_ANSWER | TIMED_OUT) || status >= 500 {
            s.errors += 1;
        }
        if status == TIMED_OUT {
            s.timeouts += 1;
        }
        s.micros
            .push(took.as_micros().min(u128::from(u32::MAX)) as u32);
    }

    /// How many requests of `endpoint` were answered since the last reset (errors are not
    /// counted).
    pub fn count(&self, endpoint: &str) -> usize {
        self.by_endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(endpoint)
            .map_or(0, |s| s.micros.len() - s.errors as usize)
    }

    /// Forgets everything recorded so far (e.g. after the registration phase).
    pub fn reset(&self) {
        self.by_endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    pub fn summary(&self) -> Vec<EndpointLatency> {
        let all = self.by_endpoint.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<EndpointLatency> = all
            .iter()
            .map(|(endpoint, s)| {
                let mut v = s.micros.clone();
                v.sort_unstable();
                let pct = |p: f64| {
                    if v.is_empty() {
                        return 0.0;
                    }
                    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
                    f64::from(v[i]) / 1000.0
                };
                EndpointLatency {
                    endpoint: endpoint.to_string(),
                    count: v.len(),
                    errors: s.errors,
                    timeouts: s.timeouts,
                    p50_ms: pct(0.50),
                    p99_ms: pct(0.99),
                    max_ms: pct(1.0),
                }
            })
            .collect();
        out.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        out
    }
}

/// A running fleet. Dropping it does not stop the agents: call [`Fleet::stop`].
pub struct Fleet {
    pub latencies: Arc<Latencies>,
    pub connections: usize,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Each agent's simulated device, by name, to look inside one that did not converge.
    devices: HashMap<String, Device>,
}

struct Device {
    runtime: SimRuntime,
    persist: Arc<MemoryPersist>,
}

impl Fleet {
    /// Starts every agent at once; each registers, then settles into its normal cycle.
    pub fn spawn(cfg: &FleetConfig) -> Fleet {
        let latencies = Arc::new(Latencies::default());
        let observer = latencies.observer();
        let per = cfg.per_connection.max(1);
        let connections = cfg.agents.div_ceil(per);
        let pools: Vec<reqwest::Client> = (0..connections)
            .map(|_| gustavo_client::Client::http2_pool())
            .collect();
        let (shutdown, _) = watch::channel(false);
        let width = cfg.agents.to_string().len().max(5);
        let mut devices = HashMap::with_capacity(cfg.agents);
        let tasks = (0..cfg.agents)
            .map(|i| {
                let rt = SimRuntime::with_delay(cfg.sim_delay);
                for image in &cfg.images {
                    rt.publish(image);
                }
                let name = format!("{}-{:0width$}", cfg.prefix, i + 1);
                let persist = Arc::new(MemoryPersist::default());
                devices.insert(
                    name.clone(),
                    Device {
                        runtime: rt.clone(),
                        persist: persist.clone(),
                    },
                );
                let agent = AgentConfig {
                    server: cfg.server.clone(),
                    join_token: Some(cfg.join_token.clone()),
                    name,
                    groups: vec![cfg.group.clone()],
                    labels: Default::default(),
                    data_dir: std::path::PathBuf::new(),
                    heartbeat: cfg.heartbeat,
                    wait: Duration::from_secs(60),
                    ca_pem: None,
                    rotate: false,
                    reconcile: ReconcileConfig {
                        resync: Duration::from_secs(30),
                        ..ReconcileConfig::default()
                    },
                    allow_exec: false,
                    // Simulated devices have no host network to put an interface on.
                    wireguard: crate::wireguard::WireguardConfig {
                        mode: crate::wireguard::TunnelMode::Absent,
                        ..Default::default()
                    },
                    stream: cfg.stream,
                };
                let http = HttpParts {
                    pool: Some(pools[i / per].clone()),
                    observer: Some(observer.clone()),
                    on_client: None,
                };
                let mut stop = shutdown.subscribe();
                tokio::spawn(async move {
                    let result = crate::run_with(
                        agent,
                        Arc::new(rt),
                        SimHost::new(4, 1024, i as u64 + 1),
                        persist,
                        http,
                        async move {
                            let _ = stop.wait_for(|s| *s).await;
                        },
                    )
                    .await;
                    if let Err(e) = result {
                        tracing::error!(error = %e, "simulated agent stopped");
                    }
                })
            })
            .collect();
        Fleet {
            latencies,
            connections,
            shutdown,
            tasks,
            devices,
        }
    }

    /// The first agent's name (the fleet's names sort in the order they were made).
    pub fn first_agent(&self) -> Option<&str> {
        self.devices.keys().min().map(String::as_str)
    }

    /// What one simulated device holds: the desired revision it keeps, its containers
    /// and the last things its engine did — to tell a stalled reconciler from a report
    /// that never reached the server.
    pub fn describe(&self, name: &str) -> Option<String> {
        use crate::persist::Persist;
        let d = self.devices.get(name)?;
        let desired = d.persist.desired();
        let mut out = match &desired {
            Some(s) => format!(
                "device keeps revision {} ({} apps: {})",
                s.revision,
                s.apps.len(),
                s.apps
                    .iter()
                    .map(|a| format!("{}@{}", a.name, a.revision))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => "device keeps no desired state".to_string(),
        };
        for c in d.runtime.containers() {
            out.push_str(&format!(
                "; container {} {:?} image {} hash {}",
                c.name, c.state, c.image, c.hash
            ));
        }
        let log = d.runtime.log();
        let tail = &log[log.len().saturating_sub(6)..];
        out.push_str(&format!("; engine did: {}", tail.join(" | ")));
        Some(out)
    }

    /// Stops every agent and waits for them.
    pub async fn stop(self) {
        self.shutdown.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let l = Latencies::default();
        for ms in 1..=100u64 {
            l.record("heartbeat", Duration::from_millis(ms), 200);
        }
        l.record("heartbeat", Duration::from_millis(5), 503);
        l.record(
            "heartbeat",
            Duration::from_millis(5),
            gustavo_client::TIMED_OUT,
        );
        l.record(
            "heartbeat",
            Duration::from_millis(5),
            gustavo_client::NO_ANSWER,
        );
        let s = l.summary();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].count, 103);
        assert_eq!(s[0].errors, 3);
        assert_eq!(s[0].timeouts, 1);
        assert_eq!(l.count("heartbeat"), 100, "errors are not counted");
        assert_eq!(s[0].max_ms, 100.0);
        assert!((49.0..=51.0).contains(&s[0].p50_ms), "{:?}", s[0]);
        assert!((98.0..=100.0).contains(&s[0].p99_ms), "{:?}", s[0]);
        l.reset();
        assert!(l.summary().is_empty());
    }
}
