//! Samsung Edge Orchestration's external API (`POST /api/v1/orchestration/services` on port
//! 56001), as its clients send it, and its `ExecCmd` — a `docker run` argv — turned into
//! Gustavo's app format.
//!
//! Where the seed was lax this is strict, with errors that name the problem: the seed took
//! the last argv element as the image (so `docker run IMAGE CMD` ran `CMD` as an image) and
//! stopped parsing silently at the first flag it did not know. Here the image is the first
//! word after the flags, what follows is the command, and every flag is either understood or
//! refused by name. The seed's `SelfSelection` was a string (`"true"`/`"false"`) and a JSON
//! boolean was silently ignored; both forms are read here.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value, json};
use thiserror::Error;

use crate::spec::AppSpec;

/// The request body, field names as the seed's clients write them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRequest {
    #[serde(rename = "ServiceName", default)]
    pub service_name: Option<String>,
    #[serde(rename = "ServiceInfo", default)]
    pub service_info: Option<Vec<ServiceInfo>>,
    /// `"true"` (the default) lets the requesting device run the service itself.
    #[serde(rename = "SelfSelection", default, deserialize_with = "self_selection")]
    pub self_selection: Option<bool>,
    #[serde(rename = "ServiceRequester", default)]
    pub service_requester: Option<String>,
    /// Called (JSON POST) on every state change: `Started`, `Finished`, `Failed`.
    #[serde(rename = "StatusCallbackURI", default)]
    pub status_callback_uri: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceInfo {
    #[serde(rename = "ExecutionType")]
    pub execution_type: String,
    #[serde(rename = "ExecCmd", default)]
    pub exec_cmd: Option<Vec<String>>,
    /// The seed read only `scoringType`; kept for compatibility, not acted on.
    #[serde(rename = "ExecOption", default)]
    pub exec_option: Option<Value>,
}

fn self_selection<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(other) => Err(serde::de::Error::custom(format!(
            "SelfSelection must be \"true\" or \"false\" (or a JSON boolean), got {other}"
        ))),
    }
}

/// The response body, as the seed's clients read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceResponse {
    #[serde(rename = "Message")]
    pub message: String,
    #[serde(rename = "ServiceName")]
    pub service_name: String,
    #[serde(rename = "RemoteTargetInfo")]
    pub remote_target_info: Option<RemoteTargetInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteTargetInfo {
    #[serde(rename = "ExecutionType")]
    pub execution_type: String,
    /// The chosen device's address.
    #[serde(rename = "Target")]
    pub target: String,
}

/// Why an `ExecCmd` cannot run.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExecCmdError {
    #[error("ExecCmd must start with \"docker\", \"run\" (got {0:?})")]
    NotDockerRun(Vec<String>),
    #[error("ExecCmd names no image after its flags")]
    NoImage,
    #[error(
        "docker run flag `{0}` is not supported by Edge Orchestration (the seed refused it too)"
    )]
    Unsupported(String),
    #[error("unknown docker run flag `{0}`")]
    Unknown(String),
    #[error("docker run flag `{0}` needs a value")]
    MissingValue(String),
    #[error("docker run flag `{flag}`: {reason}")]
    BadValue { flag: String, reason: String },
    #[error("invalid service: {0}")]
    Spec(String),
}

/// Flags the seed documented as unsupported; refused by name.
const SEED_UNSUPPORTED: &[&str] = &[
    "--detach-keys",
    "--disable-content-trust",
    "--sig-proxy",
    "--name",
    "--platform",
    "--help",
    "--cpu-percent",
    "--cpu-count",
    "--io-maxbandwidth",
    "--io-maxiops",
];

/// What a flag does, by its canonical long name.
fn canonical(flag: &str) -> Option<(&'static str, bool)> {
    // (name, takes a value)
    Some(match flag {
        "-v" | "--volume" => ("volume", true),
        "-e" | "--env" => ("env", true),
        "-p" | "--publish" => ("publish", true),
        "--network" | "--net" => ("network", true),
        "--rm" => ("rm", false),
        "-d" | "--detach" => ("detach", false),
        "--restart" => ("restart", true),
        "--cpus" => ("cpus", true),
        "-m" | "--memory" => ("memory", true),
        "--privileged" => ("privileged", false),
        "--entrypoint" => ("entrypoint", true),
        "-w" | "--workdir" => ("workdir", true),
        "-u" | "--user" => ("user", true),
        "--device" => ("device", true),
        "-l" | "--label" => ("label", true),
        _ => return None,
    })
}

/// Splits `--flag=value` (long flags) and `-fvalue` (short flags with a value).
fn split_flag(arg: &str) -> (String, Option<String>) {
    if let Some(rest) = arg.strip_prefix("--") {
        if let Some((f, v)) = rest.split_once('=') {
            return (format!("--{f}"), Some(v.to_string()));
        }
        return (arg.to_string(), None);
    }
    if arg.len() > 2 && !arg.starts_with("--") {
        let (f, v) = arg.split_at(2);
        if canonical(f).is_some_and(|(_, takes)| takes) {
            let v = v.strip_prefix('=').unwrap_or(v);
            return (f.to_string(), Some(v.to_string()));
        }
    }
    (arg.to_string(), None)
}

/// The app spec an `ExecCmd` (`["docker", "run", FLAGS…, IMAGE, CMD…]`) describes. The spec
/// is a one-shot service: it runs once and is not restarted unless `--restart` says so.
pub fn parse_exec_cmd(argv: &[String]) -> Result<AppSpec, ExecCmdError> {
    if argv.len() < 2 || argv[0] != "docker" || argv[1] != "run" {
        return Err(ExecCmdError::NotDockerRun(
            argv.iter().take(2).cloned().collect(),
        ));
    }
    let mut env = Map::new();
    let mut volumes = Vec::new();
    let mut ports = Vec::new();
    let mut networks: Vec<String> = Vec::new();
    let mut devices = Vec::new();
    let mut labels = BTreeMap::new();
    let mut spec = Map::new();
    let mut i = 2;
    let image = loop {
        let Some(arg) = argv.get(i) else {
            return Err(ExecCmdError::NoImage);
        };
        i += 1;
        if arg == "--" {
            break argv
                .get(i)
                .cloned()
                .ok_or(ExecCmdError::NoImage)
                .inspect(|_| i += 1)?;
        }
        if !arg.starts_with('-') || arg == "-" {
            break arg.clone();
        }
        let (flag, inline) = split_flag(arg);
        if SEED_UNSUPPORTED.contains(&flag.as_str()) {
            return Err(ExecCmdError::Unsupported(flag));
        }
        let Some((name, takes)) = canonical(&flag) else {
            return Err(ExecCmdError::Unknown(flag));
        };
        let value = if takes {
            match inline {
                Some(v) => v,
                None => {
                    let v = argv
                        .get(i)
                        .cloned()
                        .ok_or_else(|| ExecCmdError::MissingValue(flag.clone()))?;
                    i += 1;
                    v
                }
            }
        } else {
            if let Some(v) = inline {
                // `--rm=false`, `--privileged=true`: a boolean flag with a value.
                let on = match v.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(ExecCmdError::BadValue {
                            flag,
                            reason: format!("expected true or false, got `{v}`"),
                        });
                    }
                };
                if name == "privileged" {
                    spec.insert("privileged".into(), json!(on));
                }
                continue;
            }
            String::new()
        };
        let bad = |reason: String| ExecCmdError::BadValue {
            flag: flag.clone(),
            reason,
        };
        match name {
            "volume" => volumes.push(json!(value)),
            "env" => {
                let (k, v) = value.split_once('=').ok_or_else(|| {
                    bad(format!(
                        "`{value}`: give KEY=VALUE (taking a value from the caller's environment is not supported)"
                    ))
                })?;
                env.insert(k.to_string(), json!(v));
            }
            "publish" => ports.push(json!(value)),
            "network" => match value.as_str() {
                "bridge" | "default" => networks.push("bridge".into()),
                other => networks.push(other.to_string()),
            },
            "rm" | "detach" => {}
            "restart" => {
                let policy = value.split(':').next().unwrap_or_default();
                spec.insert("restart".into(), json!(policy));
            }
            "cpus" => {
                let v: f64 = value
                    .parse()
                    .map_err(|_| bad(format!("`{value}` is not a number of CPUs")))?;
                spec.insert("cpus".into(), json!(v));
            }
            "memory" => {
                spec.insert("memory".into(), json!(value));
            }
            "privileged" => {
                spec.insert("privileged".into(), json!(true));
            }
            "entrypoint" => {
                spec.insert("entrypoint".into(), json!([value]));
            }
            "workdir" => {
                spec.insert("workdir".into(), json!(value));
            }
            "user" => {
                spec.insert("user".into(), json!(value));
            }
            "device" => devices.push(json!(value)),
            "label" => {
                let (k, v) = value.split_once('=').unwrap_or((value.as_str(), ""));
                labels.insert(k.to_string(), v.to_string());
            }
            _ => unreachable!("every canonical name is handled"),
        }
    };
    spec.insert("docker_image".into(), json!(image));
    let command: Vec<String> = argv[i..].to_vec();
    if !command.is_empty() {
        spec.insert("command".into(), json!(command));
    }
    spec.insert("env_vars".into(), Value::Object(env));
    spec.insert("volumes".into(), json!(volumes));
    spec.insert("starting_ports".into(), json!(ports));
    // Docker's default network when none is given (the app format's default is `nebula`).
    if networks.is_empty() {
        networks.push("bridge".into());
    }
    spec.insert("networks".into(), json!(networks));
    spec.insert("devices".into(), json!(devices));
    spec.insert("labels".into(), json!(labels));
    spec.entry("restart").or_insert(json!("no"));
    let spec: AppSpec = serde_json::from_value(Value::Object(spec))
        .map_err(|e| ExecCmdError::Spec(e.to_string()))?;
    spec.validate()
        .map_err(|e| ExecCmdError::Spec(e.to_string()))?;
    Ok(spec)
}

/// A service as a one-shot job: run once, not restarted, no published ports.
pub fn service_job(spec: AppSpec) -> Result<crate::job::JobSpec, ExecCmdError> {
    if !spec.starting_ports.0.is_empty() {
        return Err(ExecCmdError::BadValue {
            flag: "-p".into(),
            reason: "a service runs once to completion; publishing ports is not supported".into(),
        });
    }
    Ok(crate::job::JobSpec {
        docker_image: spec.docker_image,
        env_vars: spec.env_vars,
        volumes: spec.volumes,
        networks: spec.networks,
        privileged: spec.privileged,
        devices: spec.devices,
        command: spec.command,
        entrypoint: spec.entrypoint,
        cpus: spec.cpus,
        memory: spec.memory,
        labels: spec.labels,
        workdir: spec.workdir,
        user: spec.user,
        retries: 0,
        retry_backoff: None,
        deadline: None,
        callback_url: None,
        schedule: None,
        replicas: None,
    })
}

/// Agent → server: run a service (`POST /api/v1/nodes/{name}/services`, node token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRun {
    pub service: String,
    pub spec: crate::job::JobSpec,
    /// False: not on the requesting node.
    pub self_selection: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,
}

/// Server → agent: where the service went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStarted {
    /// The job that runs it (`GET /api/v1/nodes/{name}/services/{job}` follows it).
    pub job: String,
    pub node: String,
    /// The node's address as the server last saw it.
    pub address: String,
}

/// What `StatusCallbackURI` receives on each state change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusNotification {
    #[serde(rename = "ServiceName")]
    pub service_name: String,
    /// `Started`, `Finished` or `Failed` (the seed's states).
    #[serde(rename = "Status")]
    pub status: String,
    #[serde(rename = "ExitCode", skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// The device that ran it.
    #[serde(rename = "Target")]
    pub target: String,
    /// Gustavo's job, for `gustavo jobs get`.
    #[serde(rename = "Job")]
    pub job: String,
    /// Why it failed, when the exit code does not say (an image that cannot be pulled, a
    /// deadline, the device lost); only with `Failed`.
    #[serde(rename = "Error", default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The seed's status words a service has reached, in order, from its job's state and its
/// last run: `Started` once the run started (a fast run may end between two looks, so it
/// still comes first), then `Finished` or `Failed`. A run that failed without starting (its
/// image could not be pulled, its device was lost first) is `Failed` alone.
pub fn seed_statuses(
    state: crate::job::JobState,
    run: Option<&crate::job::JobRun>,
) -> &'static [&'static str] {
    use crate::job::JobState;
    let started = run.is_some_and(|r| r.started_at > 0 || r.exit_code.is_some());
    match state {
        JobState::Running => &["Started"],
        JobState::Succeeded => &["Started", "Finished"],
        JobState::Failed if started => &["Started", "Failed"],
        JobState::Failed => &["Failed"],
        JobState::Pending | JobState::Scheduled => &[],
    }
}

/// [`seed_statuses`] for one run, as a device that ran it sees it (peer mode).
pub fn run_seed_statuses(run: &crate::job::JobRun) -> &'static [&'static str] {
    use crate::job::{JobState, RunState};
    let state = match run.state {
        RunState::Pending => JobState::Pending,
        RunState::Running => JobState::Running,
        RunState::Succeeded => JobState::Succeeded,
        RunState::Failed => JobState::Failed,
    };
    seed_statuses(state, Some(run))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::RestartPolicy;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn the_seed_readme_request_parses_verbatim() {
        let body = r#"{ "ServiceName": "hello-world", "ServiceInfo": [{ "ExecutionType": "container", "ExecCmd": [ "docker", "run", "-v", "/var/run:/var/run:rw", "hello-world"]}], "StatusCallbackURI": "http://localhost:8888/api/v1/services/notification"}"#;
        let r: ServiceRequest = serde_json::from_str(body).unwrap();
        assert_eq!(r.service_name.as_deref(), Some("hello-world"));
        assert_eq!(r.self_selection, None);
        let info = &r.service_info.as_ref().unwrap()[0];
        let spec = parse_exec_cmd(info.exec_cmd.as_ref().unwrap()).unwrap();
        assert_eq!(spec.docker_image, "hello-world");
        assert_eq!(spec.volumes[0].0, "/var/run:/var/run:rw");
        assert_eq!(spec.restart, RestartPolicy::No);
        assert_eq!(spec.command, None);
    }

    #[test]
    fn self_selection_takes_both_forms() {
        let r: ServiceRequest =
            serde_json::from_str(r#"{"ServiceName":"a","SelfSelection":"false"}"#).unwrap();
        assert_eq!(r.self_selection, Some(false));
        let r: ServiceRequest =
            serde_json::from_str(r#"{"ServiceName":"a","SelfSelection":false}"#).unwrap();
        assert_eq!(r.self_selection, Some(false));
        let e = serde_json::from_str::<ServiceRequest>(r#"{"SelfSelection":"maybe"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("SelfSelection"), "{e}");
        let e = serde_json::from_str::<ServiceRequest>(r#"{"ServiceNme":"a"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ServiceNme"), "{e}");
    }

    #[test]
    fn common_flags_map_onto_the_app_format() {
        let spec = parse_exec_cmd(&argv(
            "docker run --rm -d -e A=1 --env=B=x=y -p 8080:80 -p127.0.0.1:53:53/udp --network host \
             --restart on-failure:3 --cpus 0.5 -m 64m --entrypoint /bin/sh -w /tmp -u 1000:1000 \
             --device /dev/null:/dev/xnull -l tier=web reg:5000/app:v1 -c echo hi",
        ))
        .unwrap();
        assert_eq!(spec.docker_image, "reg:5000/app:v1");
        assert_eq!(spec.env_vars["A"], "1");
        assert_eq!(spec.env_vars["B"], "x=y");
        assert_eq!(spec.starting_ports.0.len(), 2);
        assert_eq!(spec.networks, vec!["host".to_string()]);
        assert_eq!(spec.restart, RestartPolicy::OnFailure);
        assert_eq!(spec.cpus.unwrap().0, 0.5);
        assert_eq!(spec.entrypoint.unwrap().0, vec!["/bin/sh".to_string()]);
        assert_eq!(
            spec.command.unwrap().0,
            vec!["-c".to_string(), "echo".into(), "hi".into()]
        );
        assert_eq!(spec.devices.len(), 1);
        assert_eq!(spec.labels["tier"], "web");
        assert_eq!(spec.workdir.as_deref(), Some("/tmp"));
        assert_eq!(spec.user.as_deref(), Some("1000:1000"));
    }

    #[test]
    fn a_service_becomes_a_one_shot_job() {
        let spec = parse_exec_cmd(&argv("docker run -e A=1 -w /tmp img echo hi")).unwrap();
        let job = service_job(spec).unwrap();
        assert_eq!(job.as_app().workdir.as_deref(), Some("/tmp"));
        assert!(job.check("svc").is_ok());
        let spec = parse_exec_cmd(&argv("docker run -p 80:80 img")).unwrap();
        assert!(service_job(spec).unwrap_err().to_string().contains("`-p`"));
    }

    #[test]
    fn bad_argv_gets_named_errors() {
        let e = |s: &str| parse_exec_cmd(&argv(s)).unwrap_err().to_string();
        assert!(e("podman run x").contains("\"docker\", \"run\""));
        assert!(e("docker run --name x img").contains("`--name`"));
        assert!(e("docker run --platform=linux/arm64 img").contains("`--platform`"));
        assert!(
            e("docker run --frobnicate img").contains("unknown docker run flag `--frobnicate`")
        );
        assert!(e("docker run -it img").contains("`-it`"));
        assert!(e("docker run -e").contains("`-e` needs a value"));
        assert!(e("docker run -e NOVALUE img").contains("KEY=VALUE"));
        assert!(e("docker run --cpus lots img").contains("`--cpus`"));
        assert!(e("docker run --rm").contains("no image"));
        assert!(e("docker run -p 99999:80 img").contains("99999"));
    }

    #[test]
    fn a_service_is_started_only_if_its_run_started() {
        use crate::job::{JobRun, JobState, RunState};
        let run = |state, started_at, exit_code| JobRun {
            job: "j".into(),
            run: 1,
            node: "n".into(),
            state,
            exit_code,
            started_at,
            finished_at: 0,
            error: None,
            logs: String::new(),
            job_revision: 1,
        };
        let pull_failed = run(RunState::Failed, 0, None);
        assert_eq!(run_seed_statuses(&pull_failed), ["Failed"]);
        assert_eq!(
            seed_statuses(JobState::Failed, Some(&pull_failed)),
            ["Failed"]
        );
        assert_eq!(seed_statuses(JobState::Failed, None), ["Failed"]);
        let exited = run(RunState::Failed, 0, Some(3));
        assert_eq!(run_seed_statuses(&exited), ["Started", "Failed"]);
        let fast = run(RunState::Succeeded, 0, Some(0));
        assert_eq!(run_seed_statuses(&fast), ["Started", "Finished"]);
        let running = run(RunState::Running, 17, None);
        assert_eq!(
            seed_statuses(JobState::Running, Some(&running)),
            ["Started"]
        );
        assert!(seed_statuses(JobState::Pending, None).is_empty());
    }
}
