//! A simulated container runtime: containers are in-memory records with the transitions a
//! real engine shows (create → running, exit, removal), optional delays, and images that
//! exist or not. It lets the real reconciler run in unit tests, and many agents run in one
//! process for fleet benchmarks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gustavo_model::api::DesiredContainer;
use gustavo_model::plan::{Observed, RunState};

use crate::runtime::{Runtime, RuntimeError};

#[derive(Default)]
struct Inner {
    next_id: u64,
    containers: BTreeMap<String, Observed>,
    images: BTreeSet<String>,
    /// Images a pull can fetch; anything else fails like a missing tag.
    registry: BTreeSet<String>,
    watchers: Vec<tokio::sync::mpsc::Sender<()>>,
    /// Everything done, in order, for tests to inspect.
    log: Vec<String>,
    /// The node each container was created for (the runtime's `gustavo.node` label).
    node_of: BTreeMap<String, String>,
    /// The engine cannot be reached: listing fails.
    down: bool,
}

#[derive(Clone, Default)]
pub struct SimRuntime {
    inner: Arc<Mutex<Inner>>,
    /// Simulated time a create or pull takes.
    pub delay: Duration,
}

impl SimRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    /// A runtime whose pulls and creates take `delay`.
    pub fn with_delay(delay: Duration) -> Self {
        SimRuntime {
            delay,
            ..Self::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the engine unreachable (listing fails), or reachable again.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Makes `image` pullable.
    pub fn publish(&self, image: &str) {
        self.lock().registry.insert(image.to_string());
    }

    /// Simulates a crash: the container exits with `code`.
    pub fn kill(&self, name: &str, code: i64) {
        let mut g = self.lock();
        if let Some(c) = g.containers.values_mut().find(|c| c.name == name) {
            c.state = RunState::Exited;
            c.exit_code = code;
        }
        g.watchers
            .retain(|w| w.try_send(()).is_ok() || !w.is_closed());
    }

    /// Changes one container in place, logs `what` with its name and tells the watchers.
    fn change(
        &self,
        id: &str,
        what: &str,
        f: impl FnOnce(&mut Observed),
    ) -> Result<(), RuntimeError> {
        let mut g = self.lock();
        let c = g
            .containers
            .get_mut(id)
            .ok_or_else(|| RuntimeError::Container {
                name: id.into(),
                reason: "no such container".into(),
            })?;
        f(c);
        let name = c.name.clone();
        g.log.push(format!("{what} {name}"));
        g.watchers
            .retain(|w| w.try_send(()).is_ok() || !w.is_closed());
        Ok(())
    }

    pub fn containers(&self) -> Vec<Observed> {
        self.lock().containers.values().cloned().collect()
    }

    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }
}

impl Runtime for SimRuntime {
    async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        self.change(id, "stop", |c| {
            c.state = RunState::Exited;
            c.exit_code = 0;
        })
    }

    async fn set_memory(&self, id: &str, memory: i64, swap: i64) -> Result<(), RuntimeError> {
        self.change(id, &format!("memory {memory} {swap}"), |c| {
            c.memory = memory;
            c.memory_swap = swap;
        })
    }

    async fn set_cpus(&self, id: &str, nano_cpus: i64) -> Result<(), RuntimeError> {
        self.change(id, &format!("cpus {nano_cpus}"), |c| {
            c.nano_cpus = nano_cpus
        })
    }

    async fn list(&self, node: &str) -> Result<Vec<Observed>, RuntimeError> {
        let prefix = format!("{node}.");
        let g = self.lock();
        if g.down {
            return Err(RuntimeError::Unavailable("the engine is down".into()));
        }
        Ok(g.containers
            .values()
            .filter(|c| match g.node_of.get(&c.id) {
                Some(n) => n == node,
                None => c.name.starts_with(&prefix),
            })
            .cloned()
            .collect())
    }

    async fn ensure_image(&self, image: &str, refresh: bool) -> Result<(), RuntimeError> {
        let present = self.lock().images.contains(image);
        if present && !refresh {
            return Ok(());
        }
        tokio::time::sleep(self.delay).await;
        let mut g = self.lock();
        if !g.registry.contains(image) {
            if present {
                return Ok(());
            }
            return Err(RuntimeError::Pull {
                image: image.into(),
                reason: "manifest unknown".into(),
            });
        }
        g.images.insert(image.to_string());
        g.log.push(format!("pull {image}"));
        Ok(())
    }

    async fn create(&self, node: &str, c: &DesiredContainer) -> Result<String, RuntimeError> {
        tokio::time::sleep(self.delay).await;
        let mut g = self.lock();
        if g.containers.values().any(|o| o.name == c.name) {
            return Err(RuntimeError::Container {
                name: c.name.clone(),
                reason: "name already in use".into(),
            });
        }
        g.next_id += 1;
        let seq = g.next_id;
        let id = format!("sim{seq:08}");
        g.containers.insert(
            id.clone(),
            Observed {
                nano_cpus: 0,
                memory: 0,
                memory_swap: 0,
                id: id.clone(),
                name: c.name.clone(),
                app: c.spec.app.clone(),
                replica: c.spec.replica,
                hash: c.hash.clone(),
                image: c.spec.image.clone(),
                state: RunState::Running,
                health: None,
                exit_code: 0,
                created: seq,
                restarts: 0,
                started_ms: 0,
                detail: None,
                networks: None,
            },
        );
        g.node_of.insert(id.clone(), node.to_string());
        g.log.push(format!("create {}", c.name));
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let mut g = self.lock();
        let c = g
            .containers
            .get_mut(id)
            .ok_or_else(|| RuntimeError::Container {
                name: id.into(),
                reason: "no such container".into(),
            })?;
        c.state = RunState::Running;
        let name = c.name.clone();
        g.log.push(format!("start {name}"));
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let mut g = self.lock();
        if let Some(c) = g.containers.remove(id) {
            g.log.push(format!("remove {}", c.name));
        }
        Ok(())
    }

    fn watch(&self, _node: &str) -> tokio::sync::mpsc::Receiver<()> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        self.lock().watchers.push(tx);
        rx
    }
}

/// A simulated host: fixed capacity and plausible, slowly varying vitals, without reading
/// anything from the machine (a hundred thousand of them share one process).
pub struct SimHost {
    pub cpus: u32,
    pub memory_mb: u64,
    seed: u64,
    started: std::time::Instant,
}

impl SimHost {
    pub fn new(cpus: u32, memory_mb: u64, seed: u64) -> SimHost {
        SimHost {
            cpus,
            memory_mb,
            seed,
            started: std::time::Instant::now(),
        }
    }
}

impl crate::vitals::HostProbe for SimHost {
    fn capacity(&self) -> (u32, u64) {
        (self.cpus, self.memory_mb)
    }

    fn sample(&mut self) -> gustavo_model::api::Vitals {
        // A cheap deterministic wobble (xorshift), different per host.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let jitter = (self.seed % 1000) as f32 / 1000.0;
        gustavo_model::api::Vitals {
            cpu_percent: 5.0 + 20.0 * jitter,
            cpus: self.cpus,
            memory_used_mb: self.memory_mb / 4 + (self.seed % 64),
            memory_total_mb: self.memory_mb,
            disk_used_mb: 4_000,
            disk_total_mb: 16_000,
            load1: jitter,
            load5: 0.5,
            load15: 0.4,
            net_rx_bps: 1_000,
            net_tx_bps: 500,
            uptime_s: self.started.elapsed().as_secs() + 3600,
            at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }
}
