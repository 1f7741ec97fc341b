//! Agentless hosts the server watches through their Glances API (FRACTAL's `nodes.yaml`,
//! `gustavo nodes import`): what is known of each, how its Glances answers become vitals,
//! and the pressure record the server keeps for it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::Vitals;
use crate::pressure::{Record, Thresholds};

/// One watched host, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchedHost {
    /// Its node name (FRACTAL's `hostname`).
    pub name: String,
    /// Where its Glances listens (FRACTAL's `IP`).
    pub address: String,
    pub port: u16,
    /// FRACTAL's `orchestrator`: `docker` lets the server act on its containers through
    /// the Docker API; none: watched and shown only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orchestrator: Option<String>,
    /// The Glances plugins FRACTAL was told to read (kept for reference; levels use cpu,
    /// mem, load and fs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// The Docker API (`tcp://IP:2376` unless given), reached over TLS with the server's
    /// `--docker-cert-path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<String>,
    /// Act only on containers with this label (`KEY=VALUE`); none: every container but
    /// Glances itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Its pressure thresholds; none: the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pressure: Option<Thresholds>,
    /// The Glances API version it answered with (3 or 4), once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<u8>,
    /// What pressure did on it (level, throttled and stopped containers).
    #[serde(default)]
    pub record: Record,
}

impl WatchedHost {
    /// The Docker API URL to act through, for a host orchestrated by Docker.
    pub fn docker_url(&self) -> Option<String> {
        if self.orchestrator.as_deref() != Some("docker") {
            return None;
        }
        Some(
            self.docker
                .clone()
                .unwrap_or_else(|| format!("tcp://{}:2376", self.address)),
        )
    }

    /// The scope label as (key, value).
    pub fn scope_label(&self) -> Option<(String, String)> {
        let s = self.scope.as_deref()?;
        let (k, v) = s.split_once('=')?;
        Some((k.to_string(), v.to_string()))
    }
}

/// `PUT /api/v1/watched`: hosts to watch (added or updated; others untouched).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    pub hosts: Vec<WatchedHost>,
    /// Pressure thresholds for these hosts; none: the server's.
    #[serde(default)]
    pub pressure: Option<Thresholds>,
}

/// What an import did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportResult {
    pub added: Vec<String>,
    pub updated: Vec<String>,
    pub revision: u64,
}

/// Vitals from a Glances host's `cpu`, `mem`, `load`, `fs` and `uptime` answers (API v3 or
/// v4: the fields read are the same in both). Missing parts count as zero.
pub fn vitals_of(
    cpu: &Value,
    mem: &Value,
    load: &Value,
    fs: &Value,
    uptime: &Value,
    at: u64,
) -> Vitals {
    let f = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let u = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let mb = 1024 * 1024;
    let root = fs.as_array().and_then(|l| {
        l.iter()
            .find(|e| e.get("mnt_point").and_then(Value::as_str) == Some("/"))
    });
    let (disk_used, disk_total) = root.map(|r| (u(r, "used"), u(r, "size"))).unwrap_or((0, 0));
    let total = u(mem, "total");
    let available = u(mem, "available");
    Vitals {
        cpu_percent: f(cpu, "total") as f32,
        cpus: u(load, "cpucore").max(u(cpu, "cpucore")).max(1) as u32,
        memory_used_mb: total.saturating_sub(available) / mb,
        memory_total_mb: total / mb,
        disk_used_mb: disk_used / mb,
        disk_total_mb: disk_total / mb,
        load1: f(load, "min1") as f32,
        load5: f(load, "min5") as f32,
        load15: f(load, "min15") as f32,
        net_rx_bps: 0,
        net_tx_bps: 0,
        uptime_s: uptime.as_str().map(parse_uptime).unwrap_or(0),
        at,
    }
}

/// Seconds of a Python `timedelta` string: `0:06:58`, `19 days, 5:41:56`.
pub fn parse_uptime(s: &str) -> u64 {
    let (days, hms) = match s.split_once(',') {
        Some((d, rest)) => (
            d.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0),
            rest.trim(),
        ),
        None => (0, s.trim()),
    };
    let parts: Vec<u64> = hms
        .split(':')
        .map(|p| p.split('.').next().unwrap_or("0").parse().unwrap_or(0))
        .collect();
    let secs = match parts.as_slice() {
        [h, m, s] => h * 3600 + m * 60 + s,
        _ => 0,
    };
    days * 86_400 + secs
}

/// Parses FRACTAL's `nodes.yaml`: a list of one-key mappings, `node:` (hostname, IP, port,
/// optional orchestrator and resources, plus Gustavo's `docker` and `scope`) or
/// `custom-orchestrator:` (which Gustavo replaces, so it is accepted and ignored; at most
/// one, as in FRACTAL).
pub fn parse_nodes_yaml(text: &str) -> Result<Vec<WatchedHost>, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Node {
        hostname: String,
        #[serde(rename = "IP")]
        ip: String,
        port: u16,
        #[serde(default)]
        orchestrator: Option<String>,
        #[serde(default)]
        resources: Vec<String>,
        #[serde(default)]
        docker: Option<String>,
        #[serde(default)]
        scope: Option<String>,
    }
    // Checked for shape, then ignored: Gustavo's server is the orchestrator.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Orchestrator {
        hostname: String,
        #[serde(rename = "IP")]
        ip: String,
        port: u16,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    enum Entry {
        #[serde(rename = "node")]
        Node(Node),
        #[serde(rename = "custom-orchestrator")]
        Orchestrator(#[allow(dead_code)] Orchestrator),
    }
    if text.len() > crate::spec::MAX_SPEC_BYTES {
        return Err("nodes.yaml: the file is larger than 4 MiB".into());
    }
    let entries: Vec<Entry> =
        serde_saphyr::from_str(text).map_err(|e| format!("nodes.yaml: {e}"))?;
    let mut hosts = Vec::new();
    let mut orchestrators = 0;
    for e in entries {
        match e {
            Entry::Orchestrator(_) => {
                orchestrators += 1;
                if orchestrators > 1 {
                    return Err("nodes.yaml: more than one custom-orchestrator entry".into());
                }
            }
            Entry::Node(n) => {
                crate::names::validate("node", &n.hostname)
                    .map_err(|e| format!("nodes.yaml: node `{}`: {e}", n.hostname))?;
                if n.ip.trim().is_empty() {
                    return Err(format!("nodes.yaml: node `{}`: IP is empty", n.hostname));
                }
                match n.orchestrator.as_deref() {
                    None | Some("docker") => {}
                    Some("kubernetes") => {
                        return Err(format!(
                            "nodes.yaml: node `{}`: orchestrator `kubernetes` is not supported (Gustavo acts through Docker; leave it out to watch the host only)",
                            n.hostname
                        ));
                    }
                    Some(o) => {
                        return Err(format!(
                            "nodes.yaml: node `{}`: unknown orchestrator `{o}` (docker, or none)",
                            n.hostname
                        ));
                    }
                }
                if let Some(s) = &n.scope
                    && !s.contains('=')
                {
                    return Err(format!(
                        "nodes.yaml: node `{}`: scope `{s}` is not KEY=VALUE",
                        n.hostname
                    ));
                }
                if hosts.iter().any(|h: &WatchedHost| h.name == n.hostname) {
                    return Err(format!("nodes.yaml: node `{}` is listed twice", n.hostname));
                }
                hosts.push(WatchedHost {
                    name: n.hostname,
                    address: n.ip,
                    port: n.port,
                    orchestrator: n.orchestrator,
                    resources: n.resources,
                    docker: n.docker,
                    scope: n.scope,
                    pressure: None,
                    api: None,
                    record: Record::default(),
                });
            }
        }
    }
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "
- node:
    hostname: gimli
    IP: 192.168.0.83
    port: 61208
    # orchestrator: docker
    # resources: [\"cpu\",\"mem\"]
- node:
    hostname: legolas
    IP: 192.168.0.84
    port: 61208
    orchestrator: docker
    resources: [cpu, mem]
- custom-orchestrator:
    hostname: gandalf
    IP: 192.168.0.53
    port: 9999
";

    #[test]
    fn fractal_sample_parses() {
        let h = parse_nodes_yaml(SAMPLE).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].name, "gimli");
        assert_eq!(h[0].docker_url(), None);
        assert_eq!(
            h[1].docker_url().as_deref(),
            Some("tcp://192.168.0.84:2376")
        );
        assert_eq!(h[1].resources, vec!["cpu", "mem"]);
    }

    #[test]
    fn bad_files_are_named() {
        let e = parse_nodes_yaml("- node: {hostname: a, IP: 1.2.3.4}").unwrap_err();
        assert!(e.contains("port"), "{e}");
        let e =
            parse_nodes_yaml("- node: {hostname: a, IP: 1.2.3.4, port: 1, orchestrator: swarm}")
                .unwrap_err();
        assert!(e.contains("swarm"), "{e}");
        let e = parse_nodes_yaml("- nodes: {}").unwrap_err();
        assert!(e.contains("nodes"), "{e}");
        let two = "- custom-orchestrator: {hostname: a, IP: b, port: 1}\n- custom-orchestrator: {hostname: a, IP: b, port: 1}\n";
        assert!(parse_nodes_yaml(two).unwrap_err().contains("more than one"));
    }

    #[test]
    fn uptime_strings() {
        assert_eq!(parse_uptime("0:06:58"), 418);
        assert_eq!(parse_uptime("19 days, 5:41:56"), 19 * 86_400 + 20_516);
        assert_eq!(parse_uptime("1 day, 0:00:01"), 86_401);
    }

    #[test]
    fn vitals_from_a_real_capture() {
        let cpu = serde_json::json!({"total": 4.6, "cpucore": 2});
        let mem = serde_json::json!({"total": 25276063744u64, "available": 24840081408u64, "percent": 1.7});
        let load = serde_json::json!({"min1": 0.3, "min5": 0.31, "min15": 0.13, "cpucore": 2});
        let fs = serde_json::json!([{"mnt_point": "/", "size": 270553174016u64, "used": 13616414720u64}]);
        let v = vitals_of(&cpu, &mem, &load, &fs, &serde_json::json!("0:06:58"), 7);
        assert_eq!(v.cpus, 2);
        assert_eq!(v.memory_total_mb, 24105);
        assert_eq!(v.memory_used_mb, 415);
        assert_eq!(v.uptime_s, 418);
        assert!((v.cpu_percent - 4.6).abs() < 1e-6);
    }
}
