//! Node pressure, decided on the device (FRACTAL's job, seed 002, done with hysteresis).
//!
//! The agent samples its host every few seconds and feeds [`Machine::observe`]. A node is
//! `ready`, `pressured` or `tainted`; it steps up one level after `samples` consecutive
//! samples over a *high* threshold, and down one level after every metric has stayed under
//! its *low* threshold for `hold_down`. A sample between the two thresholds changes nothing,
//! so a node hovering at a threshold does not flap. Load is compared per core, not as a
//! percent (FRACTAL's bug).
//!
//! What a level does is planned by [`plan`]: `pressured` throttles the node's containers
//! (lowest `priority` first, never `critical` apps), `tainted` also stops them, one per
//! `stop_interval`; stepping down undoes exactly what the [`Record`] says was done.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A node's pressure level.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    #[default]
    Ready,
    Pressured,
    Tainted,
}

impl Level {
    pub fn as_str(&self) -> &'static str {
        match self {
            Level::Ready => "ready",
            Level::Pressured => "pressured",
            Level::Tainted => "tainted",
        }
    }
    fn up(self) -> Level {
        match self {
            Level::Ready => Level::Pressured,
            _ => Level::Tainted,
        }
    }
    fn down(self) -> Level {
        match self {
            Level::Tainted => Level::Pressured,
            _ => Level::Ready,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A high and a low threshold: over `high` counts towards stepping up, under `low` towards
/// stepping down.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Band {
    pub high: f64,
    pub low: f64,
}

/// A node's pressure settings: per group (`gustavo groups set-pressure`) or the server's
/// default (`gustavo server --pressure`), sent to the agent inside its desired state so it
/// acts on them offline too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// CPU busy, percent of all cores.
    pub cpu: Band,
    /// Memory used, percent.
    pub memory: Band,
    /// 1-minute load average divided by the number of cores.
    pub load: Band,
    /// Root disk used, percent.
    pub disk: Band,
    /// Consecutive samples over a high threshold before each step up.
    pub samples: u32,
    /// Seconds every metric must stay under its low threshold before each step down.
    pub hold_down_s: u64,
    /// Seconds between two containers stopped while tainted.
    pub stop_interval_s: u64,
    /// CPU limit (cores) a throttled container gets, unless its spec asks for less.
    pub throttle_cpus: f64,
    /// A throttled container's memory limit, as a multiple of what it uses at that moment
    /// (it keeps what it has and cannot grow much); 0: memory is not limited.
    #[serde(default = "default_throttle_memory")]
    pub throttle_memory: f64,
}

fn default_throttle_memory() -> f64 {
    1.25
}

/// The page cache the kernel may reclaim, from Docker's memory stats map (`inactive_file`
/// on cgroup v2, `total_inactive_file` on v1): what `docker stats` leaves out of "usage".
pub fn inactive_file(stats: Option<&std::collections::HashMap<String, u64>>) -> u64 {
    stats
        .and_then(|s| {
            s.get("inactive_file")
                .or_else(|| s.get("total_inactive_file"))
        })
        .copied()
        .unwrap_or(0)
}

/// The smallest memory limit Docker accepts (6 MiB).
pub const MIN_MEMORY_LIMIT: i64 = 6 * 1024 * 1024;

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            cpu: Band {
                high: 80.0,
                low: 65.0,
            },
            memory: Band {
                high: 80.0,
                low: 70.0,
            },
            load: Band {
                high: 1.5,
                low: 1.0,
            },
            disk: Band {
                high: 90.0,
                low: 85.0,
            },
            samples: 3,
            hold_down_s: 30,
            stop_interval_s: 10,
            throttle_cpus: 0.5,
            throttle_memory: default_throttle_memory(),
        }
    }
}

/// Why a pressure setting cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ThresholdError {
    #[error("pressure setting `{0}`: expected KEY=VALUE")]
    NotKeyValue(String),
    #[error(
        "unknown pressure setting `{0}` (cpu, memory, load, disk, samples, hold-down, stop-interval, throttle-cpus, throttle-memory)"
    )]
    Unknown(String),
    #[error("pressure setting `{key}`: {why}")]
    Bad { key: String, why: String },
}

impl Thresholds {
    /// Parses `cpu=80/65,memory=80/70,load=1.5/1.0,disk=90/85,samples=3,hold-down=30s,
    /// stop-interval=10s,throttle-cpus=0.5,throttle-memory=1.25`; every key is optional and starts from the
    /// defaults.
    pub fn parse(text: &str) -> Result<Thresholds, ThresholdError> {
        let mut t = Thresholds::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| ThresholdError::NotKeyValue(part.to_string()))?;
            let bad = |why: String| ThresholdError::Bad {
                key: key.to_string(),
                why,
            };
            let band = |max: f64| -> Result<Band, ThresholdError> {
                let (h, l) = value
                    .split_once('/')
                    .ok_or_else(|| bad(format!("`{value}`: give HIGH/LOW, e.g. 80/65")))?;
                let num = |s: &str| {
                    s.trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite() && *v >= 0.0 && *v <= max)
                        .ok_or_else(|| bad(format!("`{s}` is not a number from 0 to {max}")))
                };
                let (high, low) = (num(h)?, num(l)?);
                if low > high {
                    return Err(bad(format!("low {low} is above high {high}")));
                }
                Ok(Band { high, low })
            };
            let secs = || {
                crate::spec::Duration::parse(value)
                    .map(|ms| (ms / 1000).max(1))
                    .map_err(|e| bad(e.to_string()))
            };
            match key {
                "cpu" => t.cpu = band(100.0)?,
                "memory" => t.memory = band(100.0)?,
                "disk" => t.disk = band(100.0)?,
                "load" => t.load = band(1000.0)?,
                "samples" => {
                    t.samples = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| bad(format!("`{value}` is not a count from 1 to 1000")))?
                }
                "hold-down" => t.hold_down_s = secs()?,
                "stop-interval" => t.stop_interval_s = secs()?,
                "throttle-memory" => {
                    t.throttle_memory = value
                        .parse()
                        .ok()
                        .filter(|v: &f64| *v == 0.0 || (v.is_finite() && *v >= 1.0 && *v <= 100.0))
                        .ok_or_else(|| {
                            bad(format!(
                                "`{value}` is not 0 (off) or a factor from 1 to 100"
                            ))
                        })?
                }
                "throttle-cpus" => {
                    t.throttle_cpus = value
                        .parse()
                        .ok()
                        .filter(|v: &f64| v.is_finite() && *v >= 0.01)
                        .ok_or_else(|| bad(format!("`{value}` is not a core count ≥ 0.01")))?
                }
                other => return Err(ThresholdError::Unknown(other.to_string())),
            }
        }
        Ok(t)
    }

    /// The settings written back in the form [`Thresholds::parse`] reads.
    pub fn describe(&self) -> String {
        format!(
            "cpu={}/{},memory={}/{},load={}/{},disk={}/{},samples={},hold-down={}s,stop-interval={}s,throttle-cpus={},throttle-memory={}",
            self.cpu.high,
            self.cpu.low,
            self.memory.high,
            self.memory.low,
            self.load.high,
            self.load.low,
            self.disk.high,
            self.disk.low,
            self.samples,
            self.hold_down_s,
            self.stop_interval_s,
            self.throttle_cpus,
            self.throttle_memory
        )
    }
}

/// One sample of the host, as the level machine reads it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sample {
    /// Unix seconds.
    pub at: u64,
    pub cpu_percent: f64,
    pub memory_percent: f64,
    pub load_per_core: f64,
    pub disk_percent: f64,
}

impl Sample {
    /// The sample a set of host vitals makes.
    pub fn of(v: &crate::api::Vitals) -> Sample {
        let pct = |used: u64, total: u64| {
            if total == 0 {
                0.0
            } else {
                used as f64 * 100.0 / total as f64
            }
        };
        Sample {
            at: v.at,
            cpu_percent: f64::from(v.cpu_percent),
            memory_percent: pct(v.memory_used_mb, v.memory_total_mb),
            load_per_core: f64::from(v.load1) / f64::from(v.cpus.max(1)),
            disk_percent: pct(v.disk_used_mb, v.disk_total_mb),
        }
    }

    /// The metrics with their bands, in the order they are reported.
    fn metrics<'a>(&self, t: &'a Thresholds) -> [(&'static str, f64, &'a Band); 4] {
        [
            ("cpu", self.cpu_percent, &t.cpu),
            ("memory", self.memory_percent, &t.memory),
            ("load", self.load_per_core, &t.load),
            ("disk", self.disk_percent, &t.disk),
        ]
    }
}

/// Why the node is at its level: the metric that crossed, its value, the threshold, since
/// when (unix seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    pub metric: String,
    pub value: f64,
    pub threshold: f64,
    pub since: u64,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:.1} over {}",
            self.metric, self.value, self.threshold
        )
    }
}

/// A change of level.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: Level,
    pub to: Level,
    pub reason: Option<Reason>,
}

/// The level machine. Serializable, so the agent keeps it across restarts.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Machine {
    pub level: Level,
    /// When the current level began (unix seconds).
    pub since: u64,
    /// Why the node stepped up to its level (none at `ready`).
    pub reason: Option<Reason>,
    /// Consecutive samples over a high threshold.
    #[serde(default)]
    over: u32,
    /// Since when every metric has been under its low threshold.
    #[serde(default)]
    calm_since: Option<u64>,
}

impl Machine {
    /// Takes one sample; returns the transition it causes, if any.
    pub fn observe(&mut self, t: &Thresholds, s: &Sample) -> Option<Transition> {
        let metrics = s.metrics(t);
        let over = metrics.iter().find(|(_, v, b)| *v > b.high);
        if let Some((metric, value, band)) = over {
            self.calm_since = None;
            self.over += 1;
            if self.over >= t.samples.max(1) && self.level != Level::Tainted {
                self.over = 0;
                let from = self.level;
                let reason = Reason {
                    metric: metric.to_string(),
                    value: *value,
                    threshold: band.high,
                    since: s.at,
                };
                self.step(from.up(), s.at, Some(reason.clone()));
                return Some(Transition {
                    from,
                    to: self.level,
                    reason: Some(reason),
                });
            }
            return None;
        }
        self.over = 0;
        let calm = metrics.iter().all(|(_, v, b)| *v < b.low);
        if !calm {
            // Between the thresholds: hold the level, restart the hold-down.
            self.calm_since = None;
            return None;
        }
        let calm_since = *self.calm_since.get_or_insert(s.at);
        if self.level != Level::Ready && s.at.saturating_sub(calm_since) >= t.hold_down_s {
            let from = self.level;
            let to = from.down();
            let reason = if to == Level::Ready {
                None
            } else {
                self.reason.clone()
            };
            self.step(to, s.at, reason);
            // The next step down needs a hold-down of its own.
            self.calm_since = Some(s.at);
            return Some(Transition {
                from,
                to,
                reason: None,
            });
        }
        None
    }

    /// Back to `ready` at once (pressure turned off): everything done is to be undone.
    pub fn reset(&mut self, at: u64) {
        *self = Machine {
            since: at,
            ..Machine::default()
        };
    }

    fn step(&mut self, to: Level, at: u64, reason: Option<Reason>) {
        self.level = to;
        self.since = at;
        self.reason = reason;
    }
}

/// What pressure did to one container, so it can be undone exactly.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Done {
    /// The container's id when the action was taken (a recreated container starts clean).
    pub id: String,
    /// The CPU limit (nano-CPUs, 0 = none) it had before it was throttled, if throttled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled_from: Option<i64>,
    /// The memory limit and memory+swap limit (bytes, 0 = none) it had before its memory
    /// was limited, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_from: Option<(i64, i64)>,
    /// Stopped by pressure (and so to be started again on release).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
}

impl Done {
    /// Nothing left to undo.
    fn is_empty(&self) -> bool {
        self.throttled_from.is_none() && self.memory_from.is_none() && !self.stopped
    }
}

/// What pressure has done on a node, by container name. Kept on disk by the agent and
/// reported to the server.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Record {
    pub machine: Machine,
    #[serde(default)]
    pub done: BTreeMap<String, Done>,
    /// When the last container was stopped (unix seconds).
    #[serde(default)]
    pub last_stop: u64,
}

impl Record {
    /// Whether the planner may cap this running container's memory now, and so needs what
    /// it uses (an engine call the caller skips otherwise): under pressure, memory capping
    /// on, not critical, not capped already.
    pub fn needs_memory_usage(&self, t: &Thresholds, name: &str, id: &str, critical: bool) -> bool {
        self.machine.level != Level::Ready
            && t.throttle_memory > 0.0
            && !critical
            && !self
                .done
                .get(name)
                .is_some_and(|d| d.id == id && d.memory_from.is_some())
    }

    /// Names of the containers pressure stopped: the reconciler leaves them stopped.
    pub fn held(&self) -> impl Iterator<Item = &str> {
        self.done
            .iter()
            .filter(|(_, d)| d.stopped)
            .map(|(n, _)| n.as_str())
    }
}

/// One of the node's containers, as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub name: String,
    pub id: String,
    pub priority: i32,
    pub critical: bool,
    pub running: bool,
    /// Its current CPU limit in nano-CPUs (0 = none).
    pub nano_cpus: i64,
    /// Its current memory and memory+swap limits in bytes (0 = none).
    pub memory: i64,
    pub memory_swap: i64,
    /// The memory it uses now, in bytes (0 when unknown: then it is not memory-limited).
    pub memory_usage: u64,
}

/// One thing to do to a container.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Set the CPU limit (nano-CPUs, 0 = none).
    Limit {
        name: String,
        id: String,
        nano_cpus: i64,
    },
    /// Set the memory and memory+swap limits (bytes; 0 = none, -1 swap = unlimited).
    LimitMemory {
        name: String,
        id: String,
        memory: i64,
        swap: i64,
    },
    Stop {
        name: String,
        id: String,
    },
    Start {
        name: String,
        id: String,
    },
    /// Forget what was done to a container that is gone or was recreated.
    Forget {
        name: String,
    },
}

/// The actions that bring the node's containers to what its level wants, given what was
/// done already. Throttling and stopping go lowest priority first and never touch a
/// critical app; releasing undoes only what the record holds.
pub fn plan(t: &Thresholds, record: &Record, containers: &[Candidate], now: u64) -> Vec<Action> {
    let level = record.machine.level;
    let mut actions = Vec::new();
    let by_name: BTreeMap<&str, &Candidate> =
        containers.iter().map(|c| (c.name.as_str(), c)).collect();
    // A container that is gone or was recreated starts clean.
    for (name, d) in &record.done {
        match by_name.get(name.as_str()) {
            Some(c) if c.id == d.id => {}
            _ => actions.push(Action::Forget { name: name.clone() }),
        }
    }
    let kept = |c: &Candidate| record.done.get(&c.name).filter(|d| d.id == c.id);
    let mut order: Vec<&Candidate> = containers.iter().filter(|c| !c.critical).collect();
    order.sort_by(|a, b| a.priority.cmp(&b.priority).then(a.name.cmp(&b.name)));
    let throttle = (t.throttle_cpus * 1e9) as i64;
    match level {
        Level::Ready => {
            for c in containers {
                if let Some(d) = kept(c) {
                    if d.stopped {
                        actions.push(Action::Start {
                            name: c.name.clone(),
                            id: c.id.clone(),
                        });
                    }
                    if let Some(from) = d.throttled_from {
                        actions.push(Action::Limit {
                            name: c.name.clone(),
                            id: c.id.clone(),
                            nano_cpus: from,
                        });
                    }
                    if let Some((memory, swap)) = d.memory_from {
                        actions.push(Action::LimitMemory {
                            name: c.name.clone(),
                            id: c.id.clone(),
                            memory,
                            swap,
                        });
                    }
                }
            }
        }
        Level::Pressured | Level::Tainted => {
            // Back from tainted: start what pressure stopped.
            if level == Level::Pressured {
                for c in containers {
                    if kept(c).is_some_and(|d| d.stopped) {
                        actions.push(Action::Start {
                            name: c.name.clone(),
                            id: c.id.clone(),
                        });
                    }
                }
            }
            for c in &order {
                let already = kept(c).is_some_and(|d| d.throttled_from.is_some());
                let looser = c.nano_cpus == 0 || c.nano_cpus > throttle;
                if c.running && !already && looser {
                    actions.push(Action::Limit {
                        name: c.name.clone(),
                        id: c.id.clone(),
                        nano_cpus: throttle,
                    });
                }
                let limited = kept(c).is_some_and(|d| d.memory_from.is_some());
                if c.running && !limited && t.throttle_memory > 0.0 && c.memory_usage > 0 {
                    let cap =
                        ((c.memory_usage as f64 * t.throttle_memory) as i64).max(MIN_MEMORY_LIMIT);
                    if c.memory == 0 || c.memory > cap {
                        actions.push(Action::LimitMemory {
                            name: c.name.clone(),
                            id: c.id.clone(),
                            memory: cap,
                            swap: -1,
                        });
                    }
                }
            }
            if level == Level::Tainted
                && now.saturating_sub(record.last_stop) >= t.stop_interval_s
                && let Some(c) = order.iter().find(|c| c.running)
            {
                actions.push(Action::Stop {
                    name: c.name.clone(),
                    id: c.id.clone(),
                });
            }
        }
    }
    actions
}

/// Notes an action that was carried out in the record.
pub fn apply(record: &mut Record, action: &Action, before: Option<&Candidate>, now: u64) {
    match action {
        Action::Forget { name } => {
            record.done.remove(name);
        }
        Action::Limit { name, id, .. } => {
            let d = record.done.entry(name.clone()).or_default();
            d.id = id.clone();
            if d.throttled_from.is_some() {
                // Released: the limit is back to what it was.
                d.throttled_from = None;
            } else {
                d.throttled_from = Some(before.map(|c| c.nano_cpus).unwrap_or(0));
            }
            if d.is_empty() {
                record.done.remove(name);
            }
        }
        Action::LimitMemory { name, id, .. } => {
            let d = record.done.entry(name.clone()).or_default();
            d.id = id.clone();
            if d.memory_from.is_some() {
                d.memory_from = None;
            } else {
                d.memory_from = Some(before.map(|c| (c.memory, c.memory_swap)).unwrap_or((0, 0)));
            }
            if d.is_empty() {
                record.done.remove(name);
            }
        }
        Action::Stop { name, id } => {
            let d = record.done.entry(name.clone()).or_default();
            d.id = id.clone();
            d.stopped = true;
            record.last_stop = now;
        }
        Action::Start { name, .. } => {
            if let Some(d) = record.done.get_mut(name) {
                d.stopped = false;
                if d.is_empty() {
                    record.done.remove(name);
                }
            }
        }
    }
}

/// What the agent reports of its pressure (in heartbeats, at once on a change).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Status {
    pub level: Level,
    /// Unix seconds the level began.
    pub since: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// Containers throttled by pressure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub throttled: Vec<String>,
    /// Containers stopped by pressure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stopped: Vec<String>,
}

impl Status {
    /// The event of a level change to this status: `pressured → tainted: memory 83.0
    /// over 80 (2 containers throttled, 1 stopped)`.
    pub fn event(&self, before: Level) -> String {
        let why = self
            .reason
            .as_ref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        let done = match (self.throttled.len(), self.stopped.len()) {
            (0, 0) => String::new(),
            (t, s) => format!(" ({t} containers throttled, {s} stopped)"),
        };
        format!("{before} → {}{why}{done}", self.level)
    }

    /// One line for tables: why the node is at its level and what was done, e.g.
    /// `memory 83.0 over 80; throttled 2, stopped 1`; `-` at `ready` with nothing done.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = &self.reason {
            parts.push(r.to_string());
        }
        let mut done = Vec::new();
        if !self.throttled.is_empty() {
            done.push(format!("throttled {}", self.throttled.len()));
        }
        if !self.stopped.is_empty() {
            done.push(format!("stopped {}", self.stopped.len()));
        }
        if !done.is_empty() {
            parts.push(done.join(", "));
        }
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join("; ")
        }
    }
}

impl Record {
    pub fn status(&self) -> Status {
        Status {
            level: self.machine.level,
            since: self.machine.since,
            reason: self.machine.reason.clone(),
            throttled: self
                .done
                .iter()
                .filter(|(_, d)| d.throttled_from.is_some() || d.memory_from.is_some())
                .map(|(n, _)| n.clone())
                .collect(),
            stopped: self.held().map(str::to_string).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Thresholds {
        Thresholds {
            samples: 2,
            hold_down_s: 10,
            stop_interval_s: 5,
            ..Thresholds::default()
        }
    }

    fn s(at: u64, cpu: f64) -> Sample {
        Sample {
            at,
            cpu_percent: cpu,
            memory_percent: 10.0,
            load_per_core: 0.1,
            disk_percent: 10.0,
        }
    }

    fn run(m: &mut Machine, t: &Thresholds, samples: &[(u64, f64)]) -> Vec<(Level, Level)> {
        samples
            .iter()
            .filter_map(|(at, cpu)| m.observe(t, &s(*at, *cpu)))
            .map(|tr| (tr.from, tr.to))
            .collect()
    }

    #[test]
    fn steps_up_after_consecutive_samples_and_down_after_the_hold_down() {
        let t = t();
        let mut m = Machine::default();
        // One sample over high is not enough; two in a row are; two more taint.
        let got = run(&mut m, &t, &[(0, 90.0), (5, 50.0), (10, 90.0), (15, 95.0)]);
        assert_eq!(got, vec![(Level::Ready, Level::Pressured)]);
        assert_eq!(m.reason.as_ref().unwrap().metric, "cpu");
        assert_eq!(m.reason.as_ref().unwrap().threshold, 80.0);
        assert_eq!(m.since, 15);
        let got = run(&mut m, &t, &[(20, 90.0), (25, 91.0)]);
        assert_eq!(got, vec![(Level::Pressured, Level::Tainted)]);
        // Calm: one level down per hold-down, never straight to ready.
        let got = run(&mut m, &t, &[(30, 10.0), (35, 10.0), (40, 10.0)]);
        assert_eq!(got, vec![(Level::Tainted, Level::Pressured)]);
        let got = run(&mut m, &t, &[(45, 10.0), (50, 10.0)]);
        assert_eq!(got, vec![(Level::Pressured, Level::Ready)]);
        assert_eq!(m.reason, None);
    }

    #[test]
    fn hovering_at_a_threshold_does_not_flap() {
        let t = t();
        let mut m = Machine::default();
        run(&mut m, &t, &[(0, 90.0), (5, 90.0)]);
        assert_eq!(m.level, Level::Pressured);
        // Between low (65) and high (80), for a long time, with a brief dip under low and
        // single spikes over high: no transition at all.
        let mut samples = Vec::new();
        for i in 0..200u64 {
            let cpu = match i % 7 {
                0 => 81.0,
                3 => 60.0,
                _ => 75.0,
            };
            samples.push((10 + i * 5, cpu));
        }
        assert_eq!(run(&mut m, &t, &samples), vec![]);
        assert_eq!(m.level, Level::Pressured);
    }

    #[test]
    fn load_is_per_core_and_any_metric_counts() {
        let t = t();
        let mut m = Machine::default();
        let hot = Sample {
            at: 0,
            load_per_core: 2.0,
            ..s(0, 10.0)
        };
        m.observe(&t, &hot);
        let tr = m.observe(&t, &Sample { at: 5, ..hot }).unwrap();
        assert_eq!(tr.reason.unwrap().metric, "load");
    }

    fn c(name: &str, priority: i32, critical: bool) -> Candidate {
        Candidate {
            name: name.into(),
            id: format!("id-{name}"),
            priority,
            critical,
            running: true,
            nano_cpus: if name == "a" { 2_000_000_000 } else { 0 },
            memory: 0,
            memory_swap: 0,
            memory_usage: 0,
        }
    }

    #[test]
    fn memory_is_capped_near_what_it_uses_and_restored_exactly() {
        let t = t();
        let mut cs = vec![
            Candidate {
                memory: 256 << 20,
                memory_swap: 512 << 20,
                memory_usage: 100 << 20,
                ..c("m", 0, false)
            },
            Candidate {
                memory: 100 << 20,
                memory_swap: 200 << 20,
                memory_usage: 90 << 20,
                ..c("tight", 1, false)
            },
        ];
        let mut r = Record::default();
        r.machine.level = Level::Pressured;
        let acts: Vec<Action> = plan(&t, &r, &cs, 1)
            .into_iter()
            .filter(|a| matches!(a, Action::LimitMemory { .. }))
            .collect();
        // 1.25 × 100 MiB for `m`; `tight` is already under 1.25 × 90 MiB.
        assert_eq!(
            acts,
            vec![Action::LimitMemory {
                name: "m".into(),
                id: "id-m".into(),
                memory: 125 << 20,
                swap: -1
            }]
        );
        apply(&mut r, &acts[0], Some(&cs[0]), 1);
        cs[0].memory = 125 << 20;
        cs[0].memory_swap = -1;
        r.machine.level = Level::Ready;
        let back = plan(&t, &r, &cs, 2);
        assert_eq!(
            back,
            vec![Action::LimitMemory {
                name: "m".into(),
                id: "id-m".into(),
                memory: 256 << 20,
                swap: 512 << 20
            }]
        );
        apply(&mut r, &back[0], None, 2);
        assert!(r.done.is_empty(), "{r:?}");
        // Off with throttle-memory=0.
        let off = Thresholds::parse("throttle-memory=0").unwrap();
        r.machine.level = Level::Pressured;
        assert!(
            plan(&off, &r, &cs, 3)
                .iter()
                .all(|a| !matches!(a, Action::LimitMemory { .. }))
        );
    }

    #[test]
    fn throttles_and_stops_lowest_priority_first_and_restores_exactly() {
        let t = t();
        let mut cs = vec![c("a", 5, false), c("b", 0, false), c("crit", -10, true)];
        let mut r = Record::default();
        r.machine.level = Level::Pressured;
        let acts = plan(&t, &r, &cs, 100);
        assert_eq!(
            acts,
            vec![
                Action::Limit {
                    name: "b".into(),
                    id: "id-b".into(),
                    nano_cpus: 500_000_000
                },
                Action::Limit {
                    name: "a".into(),
                    id: "id-a".into(),
                    nano_cpus: 500_000_000
                },
            ],
            "lowest priority first, never the critical app"
        );
        for a in &acts {
            let name = match a {
                Action::Limit { name, .. } => name.clone(),
                _ => unreachable!(),
            };
            let before = cs.iter().find(|c| c.name == name).cloned();
            apply(&mut r, a, before.as_ref(), 100);
            cs.iter_mut().find(|c| c.name == name).unwrap().nano_cpus = 500_000_000;
        }
        assert!(plan(&t, &r, &cs, 101).is_empty(), "nothing twice");
        // Tainted: one stop per interval, lowest priority first, never critical.
        r.machine.level = Level::Tainted;
        let acts = plan(&t, &r, &cs, 200);
        assert_eq!(
            acts,
            vec![Action::Stop {
                name: "b".into(),
                id: "id-b".into()
            }]
        );
        apply(&mut r, &acts[0], None, 200);
        cs[1].running = false;
        assert!(plan(&t, &r, &cs, 202).is_empty(), "within the interval");
        let acts = plan(&t, &r, &cs, 205);
        assert_eq!(
            acts,
            vec![Action::Stop {
                name: "a".into(),
                id: "id-a".into()
            }]
        );
        apply(&mut r, &acts[0], None, 205);
        cs[0].running = false;
        assert!(plan(&t, &r, &cs, 300).is_empty(), "the critical app stays");
        assert_eq!(r.held().collect::<Vec<_>>(), vec!["a", "b"]);
        // Back to pressured: both started, limits kept.
        r.machine.level = Level::Pressured;
        let acts = plan(&t, &r, &cs, 310);
        assert_eq!(acts.len(), 2);
        assert!(acts.iter().all(|a| matches!(a, Action::Start { .. })));
        for a in &acts {
            apply(&mut r, a, None, 310);
        }
        cs[0].running = true;
        cs[1].running = true;
        // Ready: the limits go back to exactly what they were.
        r.machine.level = Level::Ready;
        let acts = plan(&t, &r, &cs, 400);
        assert_eq!(
            acts,
            vec![
                Action::Limit {
                    name: "a".into(),
                    id: "id-a".into(),
                    nano_cpus: 2_000_000_000
                },
                Action::Limit {
                    name: "b".into(),
                    id: "id-b".into(),
                    nano_cpus: 0
                },
            ]
        );
        for a in &acts {
            apply(&mut r, a, None, 400);
        }
        assert!(r.done.is_empty(), "{r:?}");
    }

    #[test]
    fn a_recreated_container_is_forgotten_not_restored() {
        let t = t();
        let mut r = Record::default();
        r.done.insert(
            "a".into(),
            Done {
                id: "old".into(),
                throttled_from: Some(0),
                memory_from: None,
                stopped: true,
            },
        );
        let acts = plan(&t, &r, &[c("a", 0, false)], 0);
        assert_eq!(acts[0], Action::Forget { name: "a".into() });
    }

    #[test]
    fn settings_parse_with_named_errors() {
        let t = Thresholds::parse("cpu=50/40, samples=1,hold-down=2s").unwrap();
        assert_eq!(
            t.cpu,
            Band {
                high: 50.0,
                low: 40.0
            }
        );
        assert_eq!((t.samples, t.hold_down_s), (1, 2));
        assert_eq!(t.memory, Thresholds::default().memory);
        assert_eq!(Thresholds::parse(&t.describe()).unwrap(), t);
        for (bad, says) in [
            ("cpu=50", "HIGH/LOW"),
            ("cpu=40/50", "above high"),
            ("cpu=150/10", "0 to 100"),
            ("gpu=1/1", "unknown pressure setting `gpu`"),
            ("samples=0", "1 to 1000"),
            ("cpu", "KEY=VALUE"),
        ] {
            let e = Thresholds::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
