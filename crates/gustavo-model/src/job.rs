//! Jobs: run-to-completion work. The job file is the app format (top-level key = job name;
//! `docker_image`, `command`, `env_vars`, `volumes`…) plus:
//!
//! ```yaml
//! backup:
//!   docker_image: registry:5000/backup
//!   command: ["sh", "-c", "backup.sh"]
//!   retries: 3               # attempts after the first failure (default 0)
//!   retry_backoff: 5s        # wait before the first retry; doubles each time, at most 5 min
//!   deadline: 10m            # a run longer than this is killed and counts as failed
//!   callback_url: https://hooks.example/jobs   # a JSON POST on every state change
//!   schedule: "*/5 * * * *"  # cron (or `@every 30s`): run on every member of the groups
//! ```
//!
//! Without `schedule` a job is **one-shot**: one run to completion on the best-scoring
//! eligible node, retried on failure (on that node or another) up to `retries` times.
//! With `schedule` it runs on **every member** of its groups at the scheduled times, from
//! each agent's own clock, so it keeps running while the server is away.
//!
//! Pure: parsing with named errors, the run state machine ([`Job::assign`],
//! [`Job::observe`], [`Job::lose_node`]), the retry backoff and the agent's due times
//! ([`due`]) — all tested here with a fake clock.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cron::Schedule;
use crate::spec::{
    AppSpec, ByteSize, Command, Cpus, Device, Duration, EnvValue, RestartPolicy, Volume,
};

/// Why a job file or body was refused.
#[derive(Debug, Error)]
pub enum JobError {
    /// The YAML itself, an unknown field, a bad value (with line and column).
    #[error("{0}")]
    Yaml(String),
    #[error("invalid job spec: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the file defines no jobs")]
    Empty,
    #[error("job `{wanted}` is not in the file (it defines: {found})")]
    NotInFile { wanted: String, found: String },
    #[error(
        "job `{0}`: schedule and replicas cannot both be set: a scheduled job runs on every member of its groups, a one-shot job on the one best node"
    )]
    ScheduleAndReplicas(String),
    #[error(
        "job `{0}`: replicas does not apply to jobs: a one-shot job runs once on the best node; add a schedule to run on every member of its groups"
    )]
    Replicas(String),
    #[error(
        "job `{0}`: secret env values are not supported in jobs yet; pass them in the image or a volume"
    )]
    Secret(String),
    /// A rule of the format broken by a spec that did not come from a file.
    #[error("{0}")]
    Invalid(String),
}

/// The most retries a job may ask for.
pub const MAX_RETRIES: u32 = 100;
/// The retry backoff when the file sets none.
pub const DEFAULT_BACKOFF_S: u64 = 5;
/// The longest wait between two attempts.
pub const MAX_BACKOFF_S: u64 = 300;
/// Runs kept per job (the newest), on the server and on each agent.
pub const MAX_RUNS: usize = 50;
/// Bytes of a run's output kept (its end).
pub const LOG_BYTES: usize = 4096;

/// A `callback_url`: http or https only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallbackUrl(pub String);

impl CallbackUrl {
    pub fn parse(s: &str) -> Result<CallbackUrl, String> {
        let bad = |why: &str| Err(format!("callback_url `{}`: {why}", s.escape_debug()));
        let Some(rest) = s
            .strip_prefix("http://")
            .or_else(|| s.strip_prefix("https://"))
        else {
            return bad("only http:// and https:// URLs are allowed");
        };
        if s.len() > 2048 {
            return bad("longer than 2048 characters");
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return bad("it contains whitespace or a control character");
        }
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = host.rsplit('@').next().unwrap_or_default();
        if host.is_empty() || host.starts_with(':') {
            return bad("the host is missing");
        }
        Ok(CallbackUrl(s.to_string()))
    }
}

impl<'de> Deserialize<'de> for CallbackUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CallbackUrl::parse(&s).map_err(de::Error::custom)
    }
}

/// A `schedule`, kept as written and checked when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleText(pub String);

impl ScheduleText {
    pub fn schedule(&self) -> Schedule {
        // Checked when the spec was read; a stored spec is never unchecked.
        Schedule::parse(&self.0).unwrap_or(Schedule::Every {
            seconds: 3600,
            text: self.0.clone(),
        })
    }
}

impl Serialize for ScheduleText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ScheduleText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Schedule::parse(&s).map_err(de::Error::custom)?;
        Ok(ScheduleText(s.trim().to_string()))
    }
}

/// One job as written in its file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    #[serde(deserialize_with = "crate::spec::image_ref")]
    pub docker_image: String,
    #[serde(default, deserialize_with = "crate::spec::env_map")]
    pub env_vars: BTreeMap<String, EnvValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(
        default = "crate::spec::default_networks",
        deserialize_with = "crate::spec::networks"
    )]
    pub networks: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Command>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Cpus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Attempts after the first failure.
    #[serde(default, deserialize_with = "retries")]
    pub retries: u32,
    /// The wait before the first retry (doubling, at most [`MAX_BACKOFF_S`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_backoff: Option<Duration>,
    /// The longest one run may take; past it the container is killed and the run fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<CallbackUrl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleText>,
    /// Not for jobs: read only to refuse it by name (see [`JobError::Replicas`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
}

fn retries<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = i64::deserialize(d).map_err(|_| {
        de::Error::custom(format!("retries: a whole number from 0 to {MAX_RETRIES}"))
    })?;
    u32::try_from(n)
        .ok()
        .filter(|n| *n <= MAX_RETRIES)
        .ok_or_else(|| {
            de::Error::custom(format!(
                "retries: a whole number from 0 to {MAX_RETRIES}, got {n}"
            ))
        })
}

impl JobSpec {
    /// The rules a value of this type does not enforce by itself.
    pub fn check(&self, name: &str) -> Result<(), JobError> {
        if self.replicas.is_some() {
            return Err(if self.schedule.is_some() {
                JobError::ScheduleAndReplicas(name.into())
            } else {
                JobError::Replicas(name.into())
            });
        }
        if self.env_vars.values().any(EnvValue::is_secret) {
            return Err(JobError::Secret(name.into()));
        }
        if self.retries > MAX_RETRIES {
            return Err(JobError::Invalid(format!(
                "job `{name}`: retries: at most {MAX_RETRIES}"
            )));
        }
        if let Some(u) = &self.callback_url {
            CallbackUrl::parse(&u.0).map_err(JobError::Invalid)?;
        }
        if let Some(s) = &self.schedule {
            Schedule::parse(&s.0).map_err(JobError::Invalid)?;
        }
        if self.deadline.is_some_and(|d| d.0 < 1000) {
            return Err(JobError::Invalid(format!(
                "job `{name}`: deadline must be at least 1s"
            )));
        }
        self.as_app()
            .validate()
            .map_err(|e| JobError::Invalid(format!("job `{name}`: {e}")))
    }

    pub fn is_scheduled(&self) -> bool {
        self.schedule.is_some()
    }

    /// The container part as an app spec (never restarted: a job runs to completion), so
    /// the app format's validation, access rules and expansion apply unchanged.
    pub fn as_app(&self) -> AppSpec {
        AppSpec {
            docker_image: self.docker_image.clone(),
            env_vars: self.env_vars.clone(),
            volumes: self.volumes.clone(),
            starting_ports: Default::default(),
            running: true,
            networks: self.networks.clone(),
            rolling_restart: false,
            containers_per: None,
            replicas: None,
            max_per_node: None,
            node_selector: BTreeMap::new(),
            privileged: self.privileged,
            devices: self.devices.clone(),
            command: self.command.clone(),
            entrypoint: self.entrypoint.clone(),
            priority: 0,
            critical: false,
            cpus: self.cpus,
            memory: self.memory,
            restart: RestartPolicy::No,
            labels: self.labels.clone(),
            healthcheck: None,
            workdir: self.workdir.clone(),
            user: self.user.clone(),
            rollout: None,
            recipe: None,
        }
    }

    /// Seconds before attempt `attempt + 1` after attempt `attempt` (1-based) failed.
    pub fn backoff_s(&self, attempt: u32) -> u64 {
        let base = self
            .retry_backoff
            .map(|d| d.0.div_ceil(1000))
            .unwrap_or(DEFAULT_BACKOFF_S)
            .max(1);
        backoff_s(base, attempt)
    }

    pub fn deadline_s(&self) -> Option<u64> {
        self.deadline.map(|d| d.0.div_ceil(1000))
    }
}

/// `base · 2^(attempt-1)`, at most [`MAX_BACKOFF_S`].
pub fn backoff_s(base: u64, attempt: u32) -> u64 {
    let shift = attempt.saturating_sub(1).min(20);
    base.saturating_mul(1 << shift).min(MAX_BACKOFF_S)
}

/// Parses a job file and returns its jobs in file order.
pub fn parse_file(yaml: &str) -> Result<Vec<(String, JobSpec)>, JobError> {
    if yaml.len() > crate::spec::MAX_SPEC_BYTES {
        return Err(JobError::Yaml(format!(
            "the file is larger than {} KiB",
            crate::spec::MAX_SPEC_BYTES / 1024
        )));
    }
    let jobs =
        serde_saphyr::from_str_with_options::<OrderedJobs>(yaml, crate::spec::yaml_options())
            .map_err(|e| JobError::Yaml(crate::spec::yaml_error(e, yaml)))?
            .0;
    if jobs.is_empty() {
        return Err(JobError::Empty);
    }
    let written =
        crate::written::read(yaml, crate::spec::yaml_options()).map_err(JobError::Yaml)?;
    jobs.into_iter()
        .map(|(n, mut s)| {
            written
                .restore_env(&n, &mut s.env_vars)
                .map_err(JobError::Yaml)?;
            s.check(&n)?;
            Ok((n, s))
        })
        .collect()
}

/// Parses a job file and picks the job called `name` (the CLI's `-n`).
pub fn parse_one(yaml: &str, name: &str) -> Result<JobSpec, JobError> {
    crate::names::pick(parse_file(yaml)?, name)
        .map_err(|(wanted, found)| JobError::NotInFile { wanted, found })
}

struct OrderedJobs(Vec<(String, JobSpec)>);

impl<'de> Deserialize<'de> for OrderedJobs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedJobs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map from job name to job spec")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<OrderedJobs, A::Error> {
                let mut out: Vec<(String, JobSpec)> = Vec::new();
                while let Some(name) = m.next_key::<String>()? {
                    crate::names::validate("job", &name).map_err(de::Error::custom)?;
                    if out.iter().any(|(n, _)| *n == name) {
                        return Err(de::Error::custom(format!("job `{name}` is defined twice")));
                    }
                    let spec = m.next_value::<JobSpec>()?;
                    out.push((name, spec));
                }
                Ok(OrderedJobs(out))
            }
            fn visit_unit<E: de::Error>(self) -> Result<OrderedJobs, E> {
                Ok(OrderedJobs(Vec::new()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Where one run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Given to a node, not started yet.
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl RunState {
    pub fn is_final(self) -> bool {
        matches!(self, RunState::Succeeded | RunState::Failed)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
        }
    }
}

/// Where a job is as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// One-shot: waiting for a node, or for its node to start it, or for its next attempt.
    Pending,
    Running,
    Succeeded,
    Failed,
    /// A scheduled job: it runs on its schedule; its runs carry their own states.
    Scheduled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Scheduled => "scheduled",
        }
    }
}

/// One run of a job on one node, as the agent reports it and the server keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRun {
    pub job: String,
    /// One-shot: the attempt (1, 2…); scheduled: the scheduled time (Unix seconds).
    pub run: u64,
    pub node: String,
    pub state: RunState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// Unix seconds; 0 until it started.
    #[serde(default)]
    pub started_at: u64,
    #[serde(default)]
    pub finished_at: u64,
    /// Why it failed when the exit code does not say (deadline, image, node lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The end of its output (stdout and stderr), at most [`LOG_BYTES`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub logs: String,
    /// The revision of the job the run was given at ([`DesiredJob::revision`]): tells a
    /// run of a deleted job from one of a new job of the same name.
    #[serde(default)]
    pub job_revision: u64,
}

/// A job as stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub name: String,
    pub spec: JobSpec,
    pub groups: Vec<String>,
    /// The revision of the last change to what nodes must run for it.
    pub revision: u64,
    pub created_at: u64,
    pub updated_at: u64,
    pub state: JobState,
    /// One-shot: the node of the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// One-shot: the current attempt (0 before the first).
    #[serde(default)]
    pub attempt: u32,
    /// One-shot: no attempt before this time (Unix seconds): the retry backoff.
    #[serde(default)]
    pub not_before: u64,
    /// Why it waits or failed, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The newest runs, oldest first, at most [`MAX_RUNS`].
    #[serde(default)]
    pub runs: Vec<JobRun>,
    /// Nodes that must not run it (a Samsung request with `SelfSelection: "false"`
    /// excludes the requesting device).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// The node that asked for it through its Samsung API, which follows its state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}

/// A state change, for the event log and the callback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub job: String,
    pub run: u64,
    pub node: String,
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// Unix seconds.
    pub time: u64,
    /// The same in words, for the event log (not sent to callbacks).
    #[serde(skip)]
    pub message: String,
}

impl Job {
    pub fn new(name: &str, spec: JobSpec, groups: Vec<String>, revision: u64, now: u64) -> Job {
        let state = if spec.is_scheduled() {
            JobState::Scheduled
        } else {
            JobState::Pending
        };
        Job {
            name: name.into(),
            spec,
            groups,
            revision,
            created_at: now,
            updated_at: now,
            state,
            node: None,
            attempt: 0,
            not_before: 0,
            reason: None,
            runs: Vec::new(),
            exclude: Vec::new(),
            requested_by: None,
        }
    }

    /// A one-shot job waiting for a node whose backoff has passed.
    pub fn wants_node(&self, now: u64) -> bool {
        self.state == JobState::Pending && self.node.is_none() && now >= self.not_before
    }

    /// The node that must run it now, for one-shot jobs: the current attempt's, while the
    /// attempt is not over.
    pub fn running_on(&self) -> Option<&str> {
        match self.state {
            JobState::Pending | JobState::Running => self.node.as_deref(),
            _ => None,
        }
    }

    fn transition(&self, run: &JobRun, time: u64, message: String) -> Transition {
        Transition {
            job: self.name.clone(),
            run: run.run,
            node: run.node.clone(),
            state: run.state.as_str().into(),
            exit_code: run.exit_code,
            time,
            message,
        }
    }

    fn keep_runs(&mut self) {
        let extra = self.runs.len().saturating_sub(MAX_RUNS);
        self.runs.drain(..extra);
    }

    /// Gives the next attempt of a one-shot job to `node`.
    pub fn assign(&mut self, node: &str, revision: u64, now: u64) -> Transition {
        self.attempt += 1;
        self.node = Some(node.into());
        self.state = JobState::Pending;
        self.reason = None;
        self.revision = revision;
        self.updated_at = now;
        let run = JobRun {
            job: self.name.clone(),
            run: u64::from(self.attempt),
            node: node.into(),
            state: RunState::Pending,
            exit_code: None,
            started_at: 0,
            finished_at: 0,
            error: None,
            logs: String::new(),
            job_revision: revision,
        };
        let t = self.transition(
            &run,
            now,
            format!("{} attempt {} given to {node}", self.name, self.attempt),
        );
        self.runs.push(run);
        self.keep_runs();
        t
    }

    /// What one node reported about one run. Returns the state changes (none for a report
    /// that says nothing new, or about a run this job no longer has on that node). A
    /// failed attempt of a one-shot job with retries left goes back to pending after the
    /// backoff; `revision` is stamped when the job leaves the node.
    pub fn observe(
        &mut self,
        node: &str,
        report: &JobRun,
        revision: u64,
        now: u64,
    ) -> Vec<Transition> {
        if report.job != self.name {
            return Vec::new();
        }
        let mut report = report.clone();
        report.node = node.to_string();
        report.logs = tail(&report.logs, LOG_BYTES);
        if self.spec.is_scheduled() {
            let pos = self
                .runs
                .iter()
                .position(|r| r.run == report.run && r.node == node);
            let changed = match pos {
                Some(i) if self.runs[i].state == report.state => {
                    // Same state: keep the newest details without a transition.
                    self.runs[i] = report;
                    return Vec::new();
                }
                Some(i) => {
                    self.runs[i] = report.clone();
                    report
                }
                // Older than everything kept: already forgotten, not news.
                None if self.runs.len() >= MAX_RUNS
                    && self.runs.first().is_some_and(|f| report.run <= f.run) =>
                {
                    return Vec::new();
                }
                None => {
                    // Runs arrive in any order after an outage: keep them by time.
                    let at = self
                        .runs
                        .iter()
                        .position(|r| r.run > report.run)
                        .unwrap_or(self.runs.len());
                    self.runs.insert(at, report.clone());
                    report
                }
            };
            self.keep_runs();
            self.updated_at = now;
            let msg = run_message(&self.name, &changed);
            return vec![self.transition(&changed, now, msg)];
        }
        // One-shot: only the current attempt on its node counts — and only from this
        // job, not from an earlier job of the same name (`job_revision`; 0 from agents
        // that do not send it).
        if report.run != u64::from(self.attempt) || self.node.as_deref() != Some(node) {
            return Vec::new();
        }
        let Some(i) = self.runs.iter().rposition(|r| {
            r.run == report.run
                && r.node == node
                && (report.job_revision == 0 || r.job_revision == report.job_revision)
        }) else {
            return Vec::new();
        };
        let cur = self.runs[i].state;
        // Nothing new: a final run stays final, and the same state says nothing.
        if cur.is_final() || cur == report.state {
            return Vec::new();
        }
        report.job_revision = self.runs[i].job_revision;
        // A run seen finished without being seen running still ran: say both.
        let mut out = Vec::new();
        if cur == RunState::Pending && report.state.is_final() {
            let mut started = report.clone();
            started.state = RunState::Running;
            let msg = run_message(&self.name, &started);
            out.push(self.transition(&started, now, msg));
        }
        self.runs[i] = report.clone();
        self.updated_at = now;
        let msg = run_message(&self.name, &report);
        out.push(self.transition(&report, now, msg));
        match report.state {
            RunState::Pending => {}
            RunState::Running => self.state = JobState::Running,
            RunState::Succeeded => {
                self.state = JobState::Succeeded;
                self.reason = None;
                self.revision = revision;
            }
            RunState::Failed => self.attempt_failed(&report, revision, now),
        }
        out
    }

    /// The current attempt failed: retry after the backoff, or fail the job.
    fn attempt_failed(&mut self, run: &JobRun, revision: u64, now: u64) {
        let why = failure(run);
        self.revision = revision;
        if self.attempt <= self.spec.retries {
            let wait = self.spec.backoff_s(self.attempt);
            self.state = JobState::Pending;
            self.node = None;
            self.not_before = now + wait;
            self.reason = Some(format!(
                "attempt {} failed ({why}); attempt {} of {} in {wait}s",
                self.attempt,
                self.attempt + 1,
                self.spec.retries + 1
            ));
        } else {
            self.state = JobState::Failed;
            self.reason = Some(format!(
                "attempt {} of {} failed ({why})",
                self.attempt,
                self.spec.retries + 1
            ));
        }
    }

    /// The node of the current attempt is gone (lost, removed, left the groups): the
    /// attempt fails with `why`, and retries follow the usual rules.
    pub fn lose_node(&mut self, why: &str, revision: u64, now: u64) -> Vec<Transition> {
        let Some(node) = self.running_on().map(String::from) else {
            return Vec::new();
        };
        let attempt = u64::from(self.attempt);
        let Some(cur) = self
            .runs
            .iter_mut()
            .rev()
            .find(|r| r.run == attempt && r.node == node)
        else {
            return Vec::new();
        };
        cur.state = RunState::Failed;
        cur.error = Some(why.to_string());
        cur.finished_at = now;
        let run = cur.clone();
        self.attempt_failed(&run, revision, now);
        self.updated_at = now;
        let msg = run_message(&self.name, &run);
        vec![self.transition(&run, now, msg)]
    }
}

fn failure(run: &JobRun) -> String {
    match (&run.error, run.exit_code) {
        (Some(e), _) => e.clone(),
        (None, Some(c)) => format!("exit code {c}"),
        (None, None) => "no exit code".into(),
    }
}

fn run_message(job: &str, r: &JobRun) -> String {
    let what = match r.state {
        RunState::Pending => "is pending".to_string(),
        RunState::Running => "is running".to_string(),
        RunState::Succeeded => "succeeded".to_string(),
        RunState::Failed => format!("failed ({})", failure(r)),
    };
    format!("{job} run {} on {} {what}", r.run, r.node)
}

/// The end of `s`, at most `max` bytes, cut on a line (or character) boundary.
pub fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = s.len() - max;
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    let rest = &s[cut..];
    match rest.find('\n') {
        Some(i) if i + 1 < rest.len() => rest[i + 1..].to_string(),
        _ => rest.to_string(),
    }
}

/// The run a scheduled job is due for, from the agent's clock: the latest scheduled time
/// in `(last, now]`, where `last` is the last time already handled. Missed times during a
/// long sleep (or the agent's downtime) give one run, not a burst.
pub fn due(schedule: &Schedule, last: u64, now: u64) -> Option<u64> {
    let mut t = schedule.next_after(last)?;
    if t > now {
        return None;
    }
    // Skip to the latest one not after now (bounded: a year of `@every 1s` is too many
    // steps, so jump for fixed periods).
    if let Schedule::Every { seconds, .. } = schedule {
        return Some(now / seconds * seconds);
    }
    for _ in 0..100_000 {
        match schedule.next_after(t) {
            Some(n) if n <= now => t = n,
            _ => break,
        }
    }
    Some(t)
}

/// `POST /api/v1/jobs`: run a job on its groups (the default group when none is named).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunJob {
    pub name: String,
    pub spec: JobSpec,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// The body of a callback: one state change of one run.
pub type Callback = Transition;

/// What a node must run of one job (part of its desired state).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredJob {
    pub name: String,
    pub revision: u64,
    /// One-shot: the attempt this node runs. `None` for a scheduled job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<u64>,
    /// Scheduled jobs: the schedule, run from the agent's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_s: Option<u64>,
    pub container: crate::desired::ContainerSpec,
}

impl DesiredJob {
    /// `node`'s view of `job`, or `None` when the node has nothing to run for it.
    pub fn for_node(job: &Job, node: &crate::desired::NodeFacts) -> Option<DesiredJob> {
        let run = if job.spec.is_scheduled() {
            None
        } else if job.running_on() == Some(node.name.as_str()) {
            Some(u64::from(job.attempt))
        } else {
            return None;
        };
        let app = job.spec.as_app();
        let mut container =
            crate::desired::expand_replicas(&job.name, &app, 0, node, &[1]).pop()?;
        container.env.remove("GUSTAVO_APP");
        container.env.remove("GUSTAVO_REPLICA");
        container.env.insert("GUSTAVO_JOB".into(), job.name.clone());
        Some(DesiredJob {
            name: job.name.clone(),
            revision: job.revision,
            run,
            schedule: job.spec.schedule.as_ref().map(|s| s.0.clone()),
            deadline_s: job.spec.deadline_s(),
            container,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_796_276_520;

    fn one(yaml: &str) -> Result<JobSpec, JobError> {
        parse_one(yaml, "j")
    }

    fn report(job: &Job, node: &str, run: u64, state: RunState, code: Option<i64>) -> JobRun {
        JobRun {
            job: job.name.clone(),
            run,
            node: node.into(),
            state,
            exit_code: code,
            started_at: T,
            finished_at: 0,
            error: None,
            logs: String::new(),
            job_revision: 0,
        }
    }

    #[test]
    fn a_job_file_reads_like_an_app_file() {
        let s = one(
            "j:\n  docker_image: r:5000/x\n  command: [sh, -c, 'echo hi']\n  env_vars: {A: NO}\n  retries: 2\n  retry_backoff: 2s\n  deadline: 1m\n  callback_url: http://127.0.0.1:9/cb\n",
        )
        .unwrap();
        assert_eq!(s.retries, 2);
        assert_eq!(s.env_vars["A"], "NO");
        assert_eq!(s.deadline_s(), Some(60));
        assert_eq!(s.backoff_s(1), 2);
        assert_eq!(s.backoff_s(3), 8);
        assert!(!s.is_scheduled());
        // JSON round trip (the CLI sends the spec as JSON).
        let back: JobSpec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert_eq!(s.as_app().restart, RestartPolicy::No);
    }

    #[test]
    fn bad_job_files_get_named_errors() {
        for (yaml, want) in [
            (
                "j:\n  docker_image: x\n  colour: red\n",
                "unknown field `colour`",
            ),
            (
                "j:\n  docker_image: x\n  schedule: '61 * * * *'\n",
                "minute",
            ),
            (
                "j:\n  docker_image: x\n  schedule: 'every day'\n",
                "expected 5 fields",
            ),
            (
                "j:\n  docker_image: x\n  callback_url: ftp://h/x\n",
                "only http:// and https://",
            ),
            (
                "j:\n  docker_image: x\n  callback_url: 'http:///x'\n",
                "host is missing",
            ),
            (
                "j:\n  docker_image: x\n  schedule: '* * * * *'\n  replicas: 2\n",
                "schedule and replicas cannot both be set",
            ),
            (
                "j:\n  docker_image: x\n  replicas: 2\n",
                "replicas does not apply",
            ),
            (
                "j:\n  docker_image: x\n  retries: 1000\n",
                "retries: a whole number from 0 to 100",
            ),
            ("j:\n  docker_image: x\n  deadline: soon\n", "duration"),
            (
                "j:\n  docker_image: x\n  containers_per: {server: 1}\n",
                "unknown field `containers_per`",
            ),
            (
                "j:\n  docker_image: x\n  env_vars: {P: {secret: s}}\n",
                "secret env values",
            ),
            ("j:\n  command: ['true']\n", "missing field `docker_image`"),
        ] {
            let e = one(yaml).unwrap_err().to_string();
            assert!(e.contains(want), "{yaml}: {e}");
        }
        assert!(matches!(
            parse_one("k:\n  docker_image: x\n", "j"),
            Err(JobError::NotInFile { .. })
        ));
    }

    #[test]
    fn a_one_shot_job_succeeds() {
        let spec = one("j:\n  docker_image: x\n").unwrap();
        let mut j = Job::new("j", spec, vec!["g".into()], 1, T);
        assert!(j.wants_node(T));
        let t = j.assign("n1", 2, T);
        assert_eq!((t.run, t.state.as_str()), (1, "pending"));
        assert_eq!(j.running_on(), Some("n1"));
        // Another node's word, or another attempt's, or another job's of the same name,
        // counts for nothing.
        let mut other_job = report(&j, "n1", 1, RunState::Succeeded, Some(0));
        other_job.job_revision = 1;
        assert!(j.observe("n1", &other_job, 3, T).is_empty());
        assert!(
            j.observe("n2", &report(&j, "n2", 1, RunState::Running, None), 3, T)
                .is_empty()
        );
        let t = j.observe(
            "n1",
            &report(&j, "n1", 1, RunState::Running, None),
            3,
            T + 1,
        );
        assert_eq!(t[0].state, "running");
        assert_eq!(j.state, JobState::Running);
        // The same again says nothing.
        assert!(
            j.observe(
                "n1",
                &report(&j, "n1", 1, RunState::Running, None),
                3,
                T + 1
            )
            .is_empty()
        );
        let t = j.observe(
            "n1",
            &report(&j, "n1", 1, RunState::Succeeded, Some(0)),
            4,
            T + 2,
        );
        assert_eq!(
            (t[0].state.as_str(), t[0].exit_code),
            ("succeeded", Some(0))
        );
        assert_eq!(j.state, JobState::Succeeded);
        assert_eq!(j.running_on(), None);
        assert_eq!(
            j.revision, 4,
            "leaving the node is a change to its desired state"
        );
    }

    #[test]
    fn a_failing_job_retries_with_backoff_then_fails() {
        let spec = one("j:\n  docker_image: x\n  retries: 1\n  retry_backoff: 3s\n").unwrap();
        let mut j = Job::new("j", spec, vec![], 1, T);
        j.assign("n1", 2, T);
        // Finished without being seen running: both transitions.
        let t = j.observe(
            "n1",
            &report(&j, "n1", 1, RunState::Failed, Some(3)),
            3,
            T + 1,
        );
        assert_eq!(
            t.iter().map(|t| t.state.as_str()).collect::<Vec<_>>(),
            ["running", "failed"]
        );
        assert_eq!(j.state, JobState::Pending);
        assert!(
            j.reason.as_deref().unwrap().contains("exit code 3"),
            "{:?}",
            j.reason
        );
        assert!(!j.wants_node(T + 3), "backing off");
        assert!(j.wants_node(T + 4));
        j.assign("n2", 5, T + 4);
        assert_eq!(j.attempt, 2);
        let t = j.lose_node("node n2 was lost", 6, T + 9);
        assert_eq!(t[0].state, "failed");
        assert_eq!(j.state, JobState::Failed);
        assert!(j.reason.as_deref().unwrap().contains("attempt 2 of 2"));
        assert_eq!(j.runs.len(), 2);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff_s(5, 1), 5);
        assert_eq!(backoff_s(5, 2), 10);
        assert_eq!(backoff_s(5, 4), 40);
        assert_eq!(backoff_s(5, 30), MAX_BACKOFF_S);
    }

    #[test]
    fn scheduled_runs_are_kept_per_node_and_time() {
        let spec = one("j:\n  docker_image: x\n  schedule: '@every 5s'\n").unwrap();
        let mut j = Job::new("j", spec, vec!["g".into()], 1, T);
        assert_eq!(j.state, JobState::Scheduled);
        assert!(!j.wants_node(T));
        let a = j.observe("n1", &report(&j, "n1", T, RunState::Running, None), 2, T);
        let b = j.observe(
            "n2",
            &report(&j, "n2", T, RunState::Succeeded, Some(0)),
            2,
            T,
        );
        assert_eq!((a.len(), b.len()), (1, 1));
        assert_eq!(j.runs.len(), 2);
        // An older run reported late goes before the newer ones.
        j.observe(
            "n1",
            &report(&j, "n1", T - 5, RunState::Succeeded, Some(0)),
            2,
            T,
        );
        assert_eq!(j.runs[0].run, T - 5);
        for i in 0..100 {
            j.observe(
                "n1",
                &report(&j, "n1", T + 5 * i, RunState::Succeeded, Some(0)),
                2,
                T,
            );
        }
        assert_eq!(j.runs.len(), MAX_RUNS);
        // A run older than all those kept is not news (no churn from agents' old runs).
        assert!(
            j.observe(
                "n3",
                &report(&j, "n3", T - 100, RunState::Succeeded, Some(0)),
                2,
                T
            )
            .is_empty()
        );
    }

    #[test]
    fn due_times_follow_the_agent_clock() {
        let every = Schedule::parse("@every 5s").unwrap();
        assert_eq!(due(&every, T, T + 4), None);
        assert_eq!(due(&every, T, T + 5), Some(T + 5));
        // Asleep for a minute: one run, the latest.
        assert_eq!(due(&every, T, T + 61), Some(T + 60));
        let cron = Schedule::parse("* * * * *").unwrap();
        assert_eq!(due(&cron, T, T + 59), None);
        assert_eq!(due(&cron, T, T + 60), Some(T + 60));
        assert_eq!(due(&cron, T, T + 3600 + 30), Some(T + 3600));
    }

    #[test]
    fn desired_jobs_go_to_the_right_nodes() {
        let node = |n: &str| crate::desired::NodeFacts {
            name: n.into(),
            cpus: 1,
            memory_mb: 512,
            labels: Default::default(),
        };
        let spec = one("j:\n  docker_image: x\n  deadline: 30s\n").unwrap();
        let mut j = Job::new("j", spec, vec![], 1, T);
        assert!(DesiredJob::for_node(&j, &node("n1")).is_none());
        j.assign("n1", 2, T);
        let d = DesiredJob::for_node(&j, &node("n1")).unwrap();
        assert_eq!((d.run, d.deadline_s), (Some(1), Some(30)));
        assert_eq!(d.container.env["GUSTAVO_JOB"], "j");
        assert!(DesiredJob::for_node(&j, &node("n2")).is_none());
        let cron = one("j:\n  docker_image: x\n  schedule: '@hourly'\n").unwrap();
        let c = Job::new("j", cron, vec![], 1, T);
        let d = DesiredJob::for_node(&c, &node("n2")).unwrap();
        assert_eq!((d.run, d.schedule.as_deref()), (None, Some("@hourly")));
    }

    #[test]
    fn logs_keep_their_end() {
        let long = "line\n".repeat(2000);
        let t = tail(&long, 100);
        assert!(t.len() <= 100 && t.starts_with("line"), "{t}");
    }
}
