//! Staged updates: an app's new revision handed to its devices one wave at a time, each wave
//! gated on the health of the last, halted (and rolled back) when too many devices fail.
//!
//! The rules, all decided here from observations the server passes in (no I/O, no clock):
//! - The devices of a rollout are ordered by name; a wave takes the next ones that are
//!   **online** and not yet admitted. The first wave is `canary` devices when set, every
//!   other wave `batch` devices. An offline device is never admitted: it does not block a
//!   wave, and it gets whatever revision the app settles on when it returns.
//! - An admitted device is **done** once it reports the new revision running (healthy where
//!   there is a healthcheck) continuously for `health_wait`; it has **failed** when it
//!   reports the app failed (pull error, crash loop, failing healthcheck, exit) or is still
//!   not done `deadline` after it was admitted while online.
//! - A wave is over when every admitted device is done or failed, or has gone offline. Then,
//!   after `pause` (or, with `pause: manual`, once resumed), the next wave starts.
//! - More failed devices than `max_failed` halt the rollout; with `auto_rollback` (the
//!   default) the app goes back to the revision it came from, on every device.
//! - Devices outside the admitted set keep running the previous revision throughout.
//! - A device whose state is **unknown** (the server has just started and not heard from
//!   it yet) is neither admitted nor left behind: it holds a wave it is in, and the rollout
//!   does not complete while one is unknown. The server says when that ends.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::spec::{AppSpec, Duration};

/// A number of devices, or a percentage of the rollout's devices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    Count(u32),
    Percent(f64),
}

impl Amount {
    pub fn parse(s: &str) -> Result<Amount, String> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("`{s}` is not a percentage (write e.g. 25%)"))?;
            if !(0.0..=100.0).contains(&v) || !v.is_finite() {
                return Err(format!("`{s}`: a percentage is between 0% and 100%"));
            }
            return Ok(Amount::Percent(v));
        }
        t.parse::<u32>()
            .map(Amount::Count)
            .map_err(|_| format!("`{s}` is neither a device count nor a percentage"))
    }

    /// How many of `total` devices this is: a percentage rounds up (10% of 4 is 1), and is
    /// at least 1 when `at_least_one` (a wave always moves).
    pub fn of(&self, total: usize, at_least_one: bool) -> usize {
        let n = match *self {
            Amount::Count(n) => n as usize,
            Amount::Percent(p) => ((p / 100.0) * total as f64).ceil() as usize,
        };
        if at_least_one { n.max(1) } else { n }
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Amount::Count(n) => s.serialize_u32(n),
            Amount::Percent(p) => s.serialize_str(&format!("{p}%")),
        }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)
            .map_err(|_| de::Error::custom("expected a device count or a percentage like 25%"))?
        {
            Raw::N(n) => u32::try_from(n)
                .map(Amount::Count)
                .map_err(|_| de::Error::custom(format!("{n} devices is too many"))),
            Raw::S(s) => Amount::parse(&s).map_err(de::Error::custom),
        }
    }
}

/// When the next wave starts once one is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// After this many milliseconds.
    After(u64),
    /// When someone runs `gustavo rollouts resume`.
    Manual,
}

impl Default for Pause {
    fn default() -> Self {
        Pause::After(0)
    }
}

impl Serialize for Pause {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Pause::After(ms) => s.serialize_str(&format!("{ms}ms")),
            Pause::Manual => s.serialize_str("manual"),
        }
    }
}

impl<'de> Deserialize<'de> for Pause {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            de::Error::custom("expected `manual` or a duration like 30s, 5m (whole seconds)")
        })? {
            Raw::N(s) => Ok(Pause::After(s.saturating_mul(1000))),
            Raw::S(s) if s.trim() == "manual" => Ok(Pause::Manual),
            Raw::S(s) => Duration::parse(&s)
                .map(Pause::After)
                .map_err(|e| de::Error::custom(format!("{e}, or `manual`"))),
        }
    }
}

fn default_health_wait() -> Duration {
    Duration(10_000)
}

fn default_deadline() -> Duration {
    Duration(300_000)
}

fn no_failures() -> Amount {
    Amount::Count(0)
}

fn yes() -> bool {
    true
}

/// An app's `rollout:` block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutPolicy {
    /// The first wave's size; without it the first wave is a `batch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Amount>,
    /// Devices per wave (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Amount>,
    /// How many devices may fail before the rollout halts (default 0).
    #[serde(default = "no_failures")]
    pub max_failed: Amount,
    /// How long a device must run the new revision, ready, before it counts as done.
    #[serde(default = "default_health_wait")]
    pub health_wait: Duration,
    /// Between waves: a duration, or `manual`.
    #[serde(default)]
    pub pause: Pause,
    /// Whether a halted rollout puts the devices that took the new revision back.
    #[serde(default = "yes")]
    pub auto_rollback: bool,
    /// How long an admitted, online device may take to be done before it counts as failed.
    #[serde(default = "default_deadline")]
    pub deadline: Duration,
}

impl RolloutPolicy {
    pub fn validate(&self) -> Result<(), String> {
        if matches!(
            self.batch,
            Some(Amount::Count(0)) | Some(Amount::Percent(0.0))
        ) {
            return Err("rollout.batch must be at least 1 device".into());
        }
        if matches!(
            self.canary,
            Some(Amount::Count(0)) | Some(Amount::Percent(0.0))
        ) {
            return Err("rollout.canary must be at least 1 device (or leave it out)".into());
        }
        if self.deadline.0 < self.health_wait.0 {
            return Err(format!(
                "rollout.deadline ({}s) must be at least rollout.health_wait ({}s)",
                self.deadline.0 / 1000,
                self.health_wait.0 / 1000
            ));
        }
        Ok(())
    }

    fn batch(&self) -> Amount {
        self.batch.unwrap_or(Amount::Count(1))
    }
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// A wave is running, or the pause after one is counting down.
    Progressing,
    /// Waiting for `rollouts resume` (a manual pause, or `rollouts pause`).
    Paused,
    /// Too many devices failed, and no automatic rollback: devices stay where they are
    /// until someone resumes, rolls back or updates.
    Halted,
    /// Too many devices failed and the app went back to the revision it came from.
    RolledBack,
    /// Every device that was online took the new revision.
    Completed,
    /// Stopped by `rollouts abort`: the app went back to the revision it came from.
    Aborted,
}

impl RolloutState {
    /// Whether devices outside the admitted set still run the previous revision.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RolloutState::Progressing | RolloutState::Paused | RolloutState::Halted
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Progressing => "progressing",
            RolloutState::Paused => "paused",
            RolloutState::Halted => "halted",
            RolloutState::RolledBack => "rolled back",
            RolloutState::Completed => "completed",
            RolloutState::Aborted => "aborted",
        }
    }
}

/// What devices that are not (yet) in a wave run: the revision the app came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Previous {
    pub revision: u64,
    pub spec: AppSpec,
    pub restart_nonce: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// One rollout of an app, stored with the app so a restart resumes it where it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// The app revision being rolled out.
    pub to_revision: u64,
    /// The revision devices outside the waves keep.
    pub from: Previous,
    pub policy: RolloutPolicy,
    pub state: RolloutState,
    /// The current wave, from 1 (0 before the first starts).
    pub wave: u32,
    /// Devices given the new revision, with the Unix time (ms) each was admitted.
    #[serde(default)]
    pub admitted: BTreeMap<String, u64>,
    /// The wave each admitted device belongs to.
    #[serde(default)]
    pub wave_of: BTreeMap<String, u32>,
    #[serde(default)]
    pub done: BTreeSet<String>,
    /// Failed devices and why.
    #[serde(default)]
    pub failed: BTreeMap<String, String>,
    /// When (ms) the next wave may start: set by a timed pause, and by `resume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_wave_at: Option<u64>,
    /// Unix ms the rollout started and last changed state.
    pub started_at: u64,
    pub updated_at: u64,
    /// Why it halted, rolled back or was aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What the server observed of one device for the rollout's revision.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// No report of the new revision yet, or still progressing.
    Pending,
    /// Running the new revision, ready, continuously since this Unix ms.
    ReadySince(u64),
    /// Reported the app failed at the new revision.
    Failed(String),
}

/// One device of the rollout as the server sees it now.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub name: String,
    pub online: bool,
    /// Not known to be online or offline yet (then `online` is false).
    pub unknown: bool,
    pub seen: Seen,
}

/// What happened in one step, for the event log.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    WaveStarted { wave: u32, devices: Vec<String> },
    DeviceDone(String),
    DeviceFailed { device: String, error: String },
    Paused { after_wave: u32 },
    Halted { failed: usize, allowed: usize },
    RolledBack,
    Completed,
}

impl Note {
    pub fn describe(&self, app: &str, revision: u64) -> String {
        match self {
            Note::WaveStarted { wave, devices } => format!(
                "{app} revision {revision}: wave {wave} started on {}",
                devices.join(", ")
            ),
            Note::DeviceDone(d) => format!("{app} revision {revision}: {d} done"),
            Note::DeviceFailed { device, error } => {
                format!("{app} revision {revision}: {device} failed: {error}")
            }
            Note::Paused { after_wave } => format!(
                "{app} revision {revision}: paused after wave {after_wave}; resume with `gustavo rollouts resume {app}`"
            ),
            Note::Halted { failed, allowed } => format!(
                "{app} revision {revision}: halted, {failed} device(s) failed (at most {allowed} allowed)"
            ),
            Note::RolledBack => {
                format!("{app} revision {revision}: rolled back to the previous revision")
            }
            Note::Completed => format!("{app} revision {revision}: rollout completed"),
        }
    }
}

impl RolloutRecord {
    pub fn new(to_revision: u64, from: Previous, policy: RolloutPolicy, now_ms: u64) -> Self {
        RolloutRecord {
            to_revision,
            from,
            policy,
            state: RolloutState::Progressing,
            wave: 0,
            admitted: BTreeMap::new(),
            wave_of: BTreeMap::new(),
            done: BTreeSet::new(),
            failed: BTreeMap::new(),
            next_wave_at: None,
            started_at: now_ms,
            updated_at: now_ms,
            reason: None,
        }
    }

    /// Whether `device` runs the new revision.
    pub fn runs_new(&self, device: &str) -> bool {
        !self.state.is_active() || self.admitted.contains_key(device)
    }

    /// How many failures the rollout tolerates over `total` devices.
    pub fn allowed_failures(&self, total: usize) -> usize {
        self.policy.max_failed.of(total, false)
    }

    /// Advances the rollout given what is seen of its devices (in any order) at `now_ms`.
    /// Returns what happened; the record is changed in place. A halted rollout that should
    /// roll back comes back as [`RolloutState::RolledBack`]: the caller puts the previous
    /// revision back.
    pub fn step(&mut self, devices: &[Device], now_ms: u64) -> Vec<Note> {
        let mut notes = Vec::new();
        if self.state != RolloutState::Progressing {
            return notes;
        }
        let mut devices: Vec<&Device> = devices.iter().collect();
        devices.sort_by(|a, b| a.name.cmp(&b.name));
        let total = devices.len();

        // Judge the admitted devices still out.
        for d in &devices {
            let Some(&admitted_at) = self.admitted.get(&d.name) else {
                continue;
            };
            if self.done.contains(&d.name) || self.failed.contains_key(&d.name) {
                continue;
            }
            match &d.seen {
                Seen::ReadySince(t) if now_ms.saturating_sub(*t) >= self.policy.health_wait.0 => {
                    self.done.insert(d.name.clone());
                    notes.push(Note::DeviceDone(d.name.clone()));
                }
                Seen::Failed(e) => {
                    self.failed.insert(d.name.clone(), e.clone());
                    notes.push(Note::DeviceFailed {
                        device: d.name.clone(),
                        error: e.clone(),
                    });
                }
                Seen::Pending | Seen::ReadySince(_)
                    if d.online && now_ms.saturating_sub(admitted_at) >= self.policy.deadline.0 =>
                {
                    let e = format!(
                        "not running and ready within the rollout deadline ({}s)",
                        self.policy.deadline.0 / 1000
                    );
                    self.failed.insert(d.name.clone(), e.clone());
                    notes.push(Note::DeviceFailed {
                        device: d.name.clone(),
                        error: e,
                    });
                }
                _ => {}
            }
        }

        let allowed = self.allowed_failures(total);
        if self.failed.len() > allowed {
            notes.push(Note::Halted {
                failed: self.failed.len(),
                allowed,
            });
            self.reason = Some(format!(
                "{} device(s) failed, at most {allowed} allowed: {}",
                self.failed.len(),
                self.failed
                    .iter()
                    .map(|(d, e)| format!("{d}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
            if self.policy.auto_rollback {
                self.state = RolloutState::RolledBack;
                notes.push(Note::RolledBack);
            } else {
                self.state = RolloutState::Halted;
            }
            self.updated_at = now_ms;
            return notes;
        }

        // Is the current wave over? Offline devices do not hold it; unknown ones do.
        let online: BTreeMap<&str, bool> = devices
            .iter()
            .map(|d| (d.name.as_str(), d.online || d.unknown))
            .collect();
        let wave_busy = self.admitted.keys().any(|d| {
            !self.done.contains(d)
                && !self.failed.contains_key(d)
                && online.get(d.as_str()).copied().unwrap_or(false)
        });
        if wave_busy {
            return notes;
        }
        let waiting: Vec<&str> = devices
            .iter()
            .filter(|d| d.online && !self.admitted.contains_key(&d.name))
            .map(|d| d.name.as_str())
            .collect();
        if waiting.is_empty() {
            let unknown = devices
                .iter()
                .any(|d| d.unknown && !self.admitted.contains_key(&d.name));
            if unknown {
                return notes;
            }
            // Offline devices take the settled revision when they return.
            self.state = RolloutState::Completed;
            self.updated_at = now_ms;
            notes.push(Note::Completed);
            return notes;
        }
        if self.wave > 0 {
            match (self.policy.pause, self.next_wave_at) {
                (Pause::Manual, None) => {
                    self.state = RolloutState::Paused;
                    self.updated_at = now_ms;
                    notes.push(Note::Paused {
                        after_wave: self.wave,
                    });
                    return notes;
                }
                (Pause::After(ms), None) if ms > 0 => {
                    self.next_wave_at = Some(now_ms + ms);
                    return notes;
                }
                (Pause::After(_), Some(t)) if now_ms < t => return notes,
                _ => {}
            }
        }
        let size = match (self.wave, self.policy.canary) {
            (0, Some(c)) => c.of(total, true),
            _ => self.policy.batch().of(total, true),
        };
        self.wave += 1;
        self.next_wave_at = None;
        let wave: Vec<String> = waiting.iter().take(size).map(|s| s.to_string()).collect();
        for d in &wave {
            self.admitted.insert(d.clone(), now_ms);
            self.wave_of.insert(d.clone(), self.wave);
        }
        self.updated_at = now_ms;
        notes.push(Note::WaveStarted {
            wave: self.wave,
            devices: wave,
        });
        notes
    }

    /// `rollouts resume`: a paused rollout goes on with its next wave; a halted one goes
    /// on with its failures forgiven (the operator has looked at them).
    pub fn resume(&mut self, now_ms: u64) -> Result<(), String> {
        match self.state {
            RolloutState::Paused => {}
            RolloutState::Halted => self.failed.clear(),
            s => return Err(format!("the rollout is {}; nothing to resume", s.as_str())),
        }
        self.state = RolloutState::Progressing;
        // The operator said go: the next wave starts as soon as the current one is over.
        self.next_wave_at = Some(now_ms);
        self.reason = None;
        self.updated_at = now_ms;
        Ok(())
    }

    /// `rollouts pause`: no new wave starts until resumed (devices already in a wave go on).
    pub fn pause(&mut self, now_ms: u64) -> Result<(), String> {
        if self.state != RolloutState::Progressing {
            return Err(format!(
                "the rollout is {}; only a progressing rollout can be paused",
                self.state.as_str()
            ));
        }
        self.state = RolloutState::Paused;
        self.updated_at = now_ms;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_one;

    /// A `rollout:` block parsed the way users write it: inside an app file.
    fn parse_policy(yaml: &str) -> Result<RolloutPolicy, String> {
        let block: String = yaml.lines().map(|l| format!("    {l}\n")).collect();
        let file = format!("a:\n  docker_image: x\n  rollout:\n{block}");
        parse_one(&file, "a")
            .map(|s| s.rollout.expect("the block is there"))
            .map_err(|e| e.to_string())
    }

    fn policy(yaml: &str) -> RolloutPolicy {
        parse_policy(yaml).unwrap()
    }

    fn rec(p: RolloutPolicy) -> RolloutRecord {
        let spec = parse_one("a:\n  docker_image: x\n", "a").unwrap();
        RolloutRecord::new(
            2,
            Previous {
                revision: 1,
                spec,
                restart_nonce: 0,
                digest: None,
            },
            p,
            0,
        )
    }

    fn dev(name: &str, online: bool, seen: Seen) -> Device {
        Device {
            name: name.into(),
            online,
            unknown: false,
            seen,
        }
    }

    fn four(seen: impl Fn(&str) -> Seen) -> Vec<Device> {
        ["d1", "d2", "d3", "d4"]
            .iter()
            .map(|n| dev(n, true, seen(n)))
            .collect()
    }

    #[test]
    fn amounts_parse_and_round_up() {
        assert_eq!(Amount::parse("25%").unwrap(), Amount::Percent(25.0));
        assert_eq!(Amount::parse("3").unwrap(), Amount::Count(3));
        assert!(Amount::parse("x").unwrap_err().contains("`x`"));
        assert!(Amount::parse("150%").is_err());
        assert_eq!(Amount::Percent(10.0).of(4, true), 1);
        assert_eq!(Amount::Percent(50.0).of(5, true), 3);
        assert_eq!(Amount::Percent(0.0).of(5, false), 0);
        assert_eq!(Amount::Count(0).of(5, true), 1);
    }

    #[test]
    fn policy_parses_with_defaults_and_refuses_unknown_fields() {
        let p = policy("batch: 25%\npause: manual\n");
        assert_eq!(p.batch, Some(Amount::Percent(25.0)));
        assert_eq!(p.pause, Pause::Manual);
        assert_eq!(p.max_failed, Amount::Count(0));
        assert!(p.auto_rollback);
        assert_eq!(p.health_wait, Duration(10_000));
        let p = policy("canary: 1\nbatch: 2\npause: 30s\nhealth_wait: 5s\n");
        assert_eq!(p.pause, Pause::After(30_000));
        let e = parse_policy("batchs: 1\n").unwrap_err();
        assert!(e.contains("batchs"), "{e}");
        let e = parse_policy("pause: soon\n").unwrap_err();
        assert!(e.contains("manual"), "{e}");
        let e = parse_policy("batch: 0\n").unwrap_err();
        assert!(e.contains("batch"), "{e}");
        let e = parse_policy("deadline: 1s\nhealth_wait: 5s\n").unwrap_err();
        assert!(e.contains("deadline"), "{e}");
    }

    #[test]
    fn the_block_round_trips_through_the_app_file() {
        let spec = parse_one(
            "a:\n  docker_image: x\n  rollout:\n    canary: 10%\n    batch: 2\n    max_failed: 1\n    pause: manual\n    health_wait: 3s\n",
            "a",
        )
        .unwrap();
        let text = crate::appfile::app_file("a", &spec).unwrap();
        assert_eq!(parse_one(&text, "a").unwrap(), spec, "{text}");
        let mut timed = spec.clone();
        timed.rollout.as_mut().unwrap().pause = Pause::After(30_000);
        let text = crate::appfile::app_file("a", &timed).unwrap();
        assert_eq!(parse_one(&text, "a").unwrap(), timed, "{text}");
    }

    #[test]
    fn waves_of_one_move_one_device_at_a_time() {
        let mut r = rec(policy("batch: 1\nhealth_wait: 1s\n"));
        let notes = r.step(&four(|_| Seen::Pending), 0);
        assert_eq!(
            notes,
            vec![Note::WaveStarted {
                wave: 1,
                devices: vec!["d1".into()]
            }]
        );
        assert!(r.runs_new("d1") && !r.runs_new("d2"));
        // Ready, but not yet for health_wait: the wave holds.
        assert!(
            r.step(
                &four(|n| if n == "d1" {
                    Seen::ReadySince(100)
                } else {
                    Seen::Pending
                }),
                500
            )
            .is_empty()
        );
        let notes = r.step(
            &four(|n| {
                if n == "d1" {
                    Seen::ReadySince(100)
                } else {
                    Seen::Pending
                }
            }),
            1_200,
        );
        assert_eq!(notes[0], Note::DeviceDone("d1".into()));
        assert!(matches!(&notes[1], Note::WaveStarted { wave: 2, devices } if devices == &["d2"]));
        let ready = |n: &str| {
            if n == "d1" || n == "d2" {
                Seen::ReadySince(1_300)
            } else {
                Seen::Pending
            }
        };
        r.step(&four(ready), 2_400);
        assert_eq!(r.admitted.len(), 3);
        let all = |_: &str| Seen::ReadySince(2_500);
        r.step(&four(all), 3_600);
        let notes = r.step(&four(all), 4_700);
        assert_eq!(notes.last(), Some(&Note::Completed));
        assert_eq!(r.state, RolloutState::Completed);
        assert!(r.runs_new("d4"));
    }

    #[test]
    fn a_failure_over_the_budget_rolls_back_and_the_rest_never_moved() {
        let mut r = rec(policy("batch: 1\n"));
        r.step(&four(|_| Seen::Pending), 0);
        let notes = r.step(
            &four(|n| {
                if n == "d1" {
                    Seen::Failed("exited with code 1".into())
                } else {
                    Seen::Pending
                }
            }),
            1_000,
        );
        assert!(notes.contains(&Note::RolledBack), "{notes:?}");
        assert_eq!(r.state, RolloutState::RolledBack);
        assert_eq!(r.admitted.len(), 1);
        assert!(
            r.reason
                .as_deref()
                .unwrap()
                .contains("d1: exited with code 1")
        );
        // Nothing more happens once it is over.
        assert!(r.step(&four(|_| Seen::Pending), 2_000).is_empty());
    }

    #[test]
    fn failures_within_the_budget_go_on_and_halt_without_rollback_holds() {
        let mut r = rec(policy("batch: 2\nmax_failed: 1\nhealth_wait: 0s\n"));
        r.step(&four(|_| Seen::Pending), 0);
        let seen = |n: &str| match n {
            "d1" => Seen::Failed("pull error".into()),
            "d2" => Seen::ReadySince(0),
            _ => Seen::Pending,
        };
        let notes = r.step(&four(seen), 10);
        assert!(
            notes
                .iter()
                .any(|n| matches!(n, Note::WaveStarted { wave: 2, .. }))
        );
        let mut r = rec(policy("batch: 2\nauto_rollback: false\n"));
        r.step(&four(|_| Seen::Pending), 0);
        r.step(
            &four(|n| {
                if n == "d2" {
                    Seen::Failed("x".into())
                } else {
                    Seen::Pending
                }
            }),
            10,
        );
        assert_eq!(r.state, RolloutState::Halted);
        assert!(r.runs_new("d2") && !r.runs_new("d3"));
        r.resume(20).unwrap();
        assert!(r.failed.is_empty() && r.state == RolloutState::Progressing);
    }

    #[test]
    fn manual_pause_waits_for_resume_and_timed_pause_counts_down() {
        let mut r = rec(policy("batch: 2\npause: manual\nhealth_wait: 0s\n"));
        r.step(&four(|_| Seen::Pending), 0);
        r.step(&four(|_| Seen::ReadySince(0)), 10);
        assert_eq!(r.state, RolloutState::Paused);
        assert!(r.step(&four(|_| Seen::ReadySince(0)), 20).is_empty());
        r.resume(30).unwrap();
        let notes = r.step(&four(|_| Seen::ReadySince(0)), 40);
        assert!(matches!(&notes[0], Note::WaveStarted { wave: 2, .. }));

        let mut r = rec(policy("batch: 2\npause: 60s\nhealth_wait: 0s\n"));
        r.step(&four(|_| Seen::Pending), 0);
        r.step(&four(|_| Seen::ReadySince(0)), 10);
        assert_eq!(r.wave, 1);
        r.step(&four(|_| Seen::ReadySince(0)), 30_000);
        assert_eq!(r.wave, 1);
        r.step(&four(|_| Seen::ReadySince(0)), 60_010);
        assert_eq!(r.wave, 2);
    }

    #[test]
    fn unknown_devices_are_not_admitted_and_hold_the_rollout_until_known() {
        let mut r = rec(policy("batch: 1\nhealth_wait: 0s\n"));
        // Just after a server start: nobody has reconnected yet.
        let mut devs = four(|_| Seen::Pending);
        for d in &mut devs {
            d.online = false;
            d.unknown = true;
        }
        assert!(r.step(&devs, 0).is_empty(), "neither a wave nor completed");
        assert_eq!(r.state, RolloutState::Progressing);
        // d1 is back: it alone is admitted; the rest still hold the rollout.
        devs[0] = dev("d1", true, Seen::Pending);
        let notes = r.step(&devs, 10);
        assert!(matches!(&notes[0], Note::WaveStarted { devices, .. } if devices == &["d1"]));
        devs[0].seen = Seen::ReadySince(10);
        let notes = r.step(&devs, 20);
        assert_eq!(notes, vec![Note::DeviceDone("d1".into())]);
        assert_eq!(r.state, RolloutState::Progressing);
        // The others turn out offline: the rollout completes without them.
        for d in &mut devs[1..] {
            d.unknown = false;
        }
        assert_eq!(r.step(&devs, 30).last(), Some(&Note::Completed));
    }

    #[test]
    fn offline_devices_are_skipped_and_do_not_hold_a_wave() {
        let mut r = rec(policy("canary: 1\nbatch: 50%\nhealth_wait: 0s\n"));
        let mut devs = four(|_| Seen::Pending);
        devs[0].online = false;
        let notes = r.step(&devs, 0);
        assert!(matches!(&notes[0], Note::WaveStarted { devices, .. } if devices == &["d2"]));
        // d2 goes offline mid-wave: the wave is over, the next starts.
        devs[1].online = false;
        let notes = r.step(&devs, 10);
        assert!(matches!(&notes[0], Note::WaveStarted { devices, .. } if devices == &["d3", "d4"]));
        let notes = r.step(
            &devs
                .iter()
                .map(|d| Device {
                    seen: Seen::ReadySince(0),
                    ..d.clone()
                })
                .collect::<Vec<_>>(),
            20,
        );
        assert_eq!(notes.last(), Some(&Note::Completed));
        // Once completed every device, d1 included, runs the new revision.
        assert!(r.runs_new("d1"));
    }

    #[test]
    fn a_device_that_never_gets_ready_fails_at_the_deadline() {
        let mut r = rec(policy("batch: 1\ndeadline: 30s\n"));
        r.step(&four(|_| Seen::Pending), 0);
        assert!(r.step(&four(|_| Seen::Pending), 29_000).is_empty());
        let notes = r.step(&four(|_| Seen::Pending), 30_000);
        assert!(
            matches!(&notes[0], Note::DeviceFailed { device, error } if device == "d1" && error.contains("deadline"))
        );
    }
}
