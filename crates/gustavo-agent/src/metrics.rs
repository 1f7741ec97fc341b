//! The agent's Prometheus metrics, served by its local listener at `/metrics`.
//!
//! One registry per process: a device runs one agent, so the figures are that agent's. The
//! fleet simulator runs many agents in one process; there the figures are their sum.
//!
//! - reconcile passes, and errors by kind (`pull`, `container`, `network`, `runtime`,
//!   `list`, `server`);
//! - image pulls by result (`ok`, `error`);
//! - this node's containers by state, as of the last pass;
//! - the desired-state revision applied.

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::runtime::RuntimeError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

pub struct AgentMetrics {
    registry: Registry,
    pub passes: Counter,
    errors: Family<KindLabels, Counter>,
    pulls: Family<ResultLabels, Counter>,
    containers: Family<StateLabels, Gauge>,
    pub applied_revision: Gauge<u64, AtomicU64>,
}

/// The process's agent metrics.
pub static METRICS: LazyLock<AgentMetrics> = LazyLock::new(AgentMetrics::new);

/// Container states always shown, at 0 when none is in them, so a dashboard's series exist.
const STATES: &[&str] = &["running", "created", "restarting", "exited", "crashlooping"];

impl AgentMetrics {
    fn new() -> AgentMetrics {
        let mut registry = Registry::with_prefix("gustavo_agent");
        let passes = Counter::default();
        registry.register(
            "reconcile_passes",
            "Reconcile passes run (list, plan, dispatch, report)",
            passes.clone(),
        );
        let errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "errors",
            "Errors by kind: pull, container, network, runtime, list, server",
            errors.clone(),
        );
        let pulls = Family::<ResultLabels, Counter>::default();
        registry.register(
            "image_pulls",
            "Images made available, by result",
            pulls.clone(),
        );
        let containers = Family::<StateLabels, Gauge>::default();
        registry.register(
            "containers",
            "This node's containers by state, as of the last pass",
            containers.clone(),
        );
        let applied_revision = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "applied_revision",
            "The desired-state revision last applied",
            applied_revision.clone(),
        );
        for s in STATES {
            containers
                .get_or_create(&StateLabels { state: (*s).into() })
                .set(0);
        }
        AgentMetrics {
            registry,
            passes,
            errors,
            pulls,
            containers,
            applied_revision,
        }
    }

    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    /// Counts a runtime error under its kind.
    pub fn runtime_error(&self, e: &RuntimeError) {
        self.error(match e {
            RuntimeError::Pull { .. } => "pull",
            RuntimeError::Container { .. } => "container",
            RuntimeError::Network { .. } => "network",
            RuntimeError::Unavailable(_) => "runtime",
        });
    }

    pub fn pull(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.pulls
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    /// Sets the containers-by-state gauges from the states of the last pass.
    pub fn containers<'a>(&self, states: impl IntoIterator<Item = &'a str>) {
        let mut counts: std::collections::BTreeMap<&str, i64> =
            STATES.iter().map(|s| (*s, 0)).collect();
        for s in states {
            *counts.entry(s).or_default() += 1;
        }
        for (state, n) in counts {
            self.containers
                .get_or_create(&StateLabels {
                    state: state.into(),
                })
                .set(n);
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
