//! The Glances REST API as the agent serves it (`gustavo agent --glances-listen`): API v4
//! (Glances 4.5.8's shapes) and API v3 (Glances 3.3's) from one host snapshot.
//!
//! The agent reads the host into a [`Snapshot`] (cumulative counters and gauges); this
//! module turns the snapshot taken for this call and the one taken for the previous call of
//! the same plugin into that plugin's JSON, with the quirks real clients meet on a real
//! Glances: counters are deltas since the previous call (zero on the first),
//! `time_since_update` is the time since that call, `uptime` is a Python `timedelta`
//! string, v4's `now` is an object and v3's a string, v3's `mem.free` equals `available`,
//! v4 hides `lo` and `docker*` interfaces, lists carry a `key` field. Process command lines
//! are not exposed (Glances' own CVE-2026-32596): `cmdline` holds the program name.
//!
//! Field names and types follow captures of real Glances 3.3.1.1 and 4.5.8
//! (`../shared/reference/samples/`); the integration test compares them key by key.

use serde_json::{Map, Value, json};

/// Which API: `/api/3` or `/api/4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    V3,
    V4,
}

impl Api {
    pub fn parse(s: &str) -> Option<Api> {
        match s {
            "3" => Some(Api::V3),
            "4" => Some(Api::V4),
            _ => None,
        }
    }
}

/// The Glances release whose API v4 is served (`/api/4/status`, `/api/4/version`).
pub const V4_VERSION: &str = "4.5.8";

/// The plugins served, as `pluginslist` names them.
pub fn plugins(api: Api) -> Vec<&'static str> {
    let mut v = vec![
        "alert",
        "containers",
        "core",
        "cpu",
        "diskio",
        "fs",
        "load",
        "mem",
        "memswap",
        "network",
        "now",
        "percpu",
        "processcount",
        "processlist",
        "psutilversion",
        "quicklook",
        "sensors",
        "system",
        "uptime",
    ];
    match api {
        // Glances 3.3 called the container plugin `docker`, 3.4 `containers`; clients
        // look for one or the other, so API v3 serves both.
        Api::V3 => v.push("docker"),
        Api::V4 => v.push("version"),
    }
    v
}

/// Cumulative CPU time in clock ticks, of one CPU or all of them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
    pub guest: u64,
    pub guest_nice: u64,
}

impl CpuTimes {
    fn total(&self) -> u64 {
        // Guest time is already counted in user and nice (as psutil and top read it).
        self.user
            + self.nice
            + self.system
            + self.idle
            + self.iowait
            + self.irq
            + self.softirq
            + self.steal
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Memory {
    pub total: u64,
    pub available: u64,
    pub free: u64,
    pub buffers: u64,
    pub cached: u64,
    pub shared: u64,
    pub active: u64,
    pub inactive: u64,
    pub swap_total: u64,
    pub swap_free: u64,
    /// Bytes swapped in and out since boot.
    pub swap_in: u64,
    pub swap_out: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileSystem {
    pub device_name: String,
    pub fs_type: String,
    pub mnt_point: String,
    pub options: String,
    pub size: u64,
    pub used: u64,
    pub free: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Interface {
    pub name: String,
    /// Bytes since boot.
    pub rx: u64,
    pub tx: u64,
    pub is_up: bool,
    /// Link speed in bit/s, 0 when unknown.
    pub speed: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Disk {
    pub name: String,
    pub read_count: u64,
    pub write_count: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    /// Milliseconds spent, since boot.
    pub read_time: u64,
    pub write_time: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Process {
    pub pid: u32,
    pub name: String,
    pub username: String,
    /// The state letter of `/proc/PID/stat` (`R`, `S`, `D`, `Z`…).
    pub state: char,
    pub threads: u64,
    /// User and system CPU time in clock ticks since it started.
    pub cpu_ticks: u64,
    /// User, system, children's user, children's system and I/O wait, in clock ticks.
    pub times: [u64; 5],
    /// Real, effective and saved group ids.
    pub gids: [u64; 3],
    /// The CPU it last ran on.
    pub cpu_num: u64,
    /// Bytes: rss, vms, shared, text, lib, data, dirty (`/proc/PID/statm`).
    pub memory: [u64; 7],
    /// Bytes read and written (0 when `/proc/PID/io` is not readable).
    pub io: [u64; 2],
    pub rss: u64,
    pub vms: u64,
    pub nice: i64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub image: String,
    /// `running`, `exited`…
    pub status: String,
    /// RFC 3339.
    pub created: String,
    pub command: String,
    /// Unix seconds it started (0 when not running).
    pub started_at: u64,
    /// Nanoseconds of CPU used since it started.
    pub cpu_ns: u64,
    pub memory_usage: u64,
    pub memory_limit: u64,
    pub memory_inactive_file: u64,
    /// Bytes since it started.
    pub io_read: u64,
    pub io_write: u64,
    pub net_rx: u64,
    pub net_tx: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Unix seconds, with fractions.
    pub at: f64,
    pub cpu: CpuTimes,
    pub percpu: Vec<CpuTimes>,
    pub ctx_switches: u64,
    pub interrupts: u64,
    pub soft_interrupts: u64,
    pub mem: Memory,
    pub load: [f64; 3],
    pub fs: Vec<FileSystem>,
    pub net: Vec<Interface>,
    pub disks: Vec<Disk>,
    pub hostname: String,
    /// e.g. `Debian GNU/Linux 12`.
    pub linux_distro: String,
    /// The kernel release.
    pub os_version: String,
    pub uptime_s: u64,
    pub phys_cores: u32,
    pub log_cores: u32,
    pub cpu_name: String,
    pub cpu_hz_current: f64,
    pub cpu_hz: Option<f64>,
    pub procs: Vec<Process>,
    pub pid_max: u64,
    /// Clock ticks per second (`getconf CLK_TCK`).
    pub clock_ticks: u64,
    pub containers: Vec<Container>,
    /// Whether a container runtime answered (v3 shows `{}` when not).
    pub has_runtime: bool,
}

fn r1(v: f64) -> f64 {
    if v.is_finite() {
        (v * 10.0).round() / 10.0
    } else {
        0.0
    }
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        r1(part as f64 * 100.0 / whole as f64)
    }
}

/// The percentages of CPU time between two readings; `None` for the first.
fn cpu_percents(prev: Option<&CpuTimes>, cur: &CpuTimes) -> Map<String, Value> {
    let d = |f: fn(&CpuTimes) -> u64| match prev {
        Some(p) => f(cur).saturating_sub(f(p)),
        None => f(cur),
    };
    let total = d(CpuTimes::total);
    let p = |v: u64| pct(v, total);
    let idle = p(d(|c| c.idle));
    let mut m = Map::new();
    m.insert("total".into(), json!(r1((100.0 - idle).max(0.0))));
    m.insert("user".into(), json!(p(d(|c| c.user))));
    m.insert("system".into(), json!(p(d(|c| c.system))));
    m.insert("idle".into(), json!(idle));
    m.insert("nice".into(), json!(p(d(|c| c.nice))));
    m.insert("iowait".into(), json!(p(d(|c| c.iowait))));
    m.insert("irq".into(), json!(p(d(|c| c.irq))));
    m.insert("softirq".into(), json!(p(d(|c| c.softirq))));
    m.insert("steal".into(), json!(p(d(|c| c.steal))));
    m.insert("guest".into(), json!(p(d(|c| c.guest))));
    m.insert("guest_nice".into(), json!(p(d(|c| c.guest_nice))));
    m
}

/// Python's `str(timedelta(seconds=N))`: `0:06:58`, `1 day, 2:03:04`, `19 days, 5:41:56`.
pub fn uptime_string(secs: u64) -> String {
    let days = secs / 86_400;
    let rest = secs % 86_400;
    let hms = format!("{}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60);
    match days {
        0 => hms,
        1 => format!("1 day, {hms}"),
        n => format!("{n} days, {hms}"),
    }
}

/// A coarse age as Glances shows container uptimes: `5 days`, `3 hours`, `just now`.
fn human_age(secs: u64) -> String {
    let (n, unit) = match secs {
        0..60 => return "just now".into(),
        60..3600 => (secs / 60, "min"),
        3600..86_400 => (secs / 3600, "hour"),
        86_400..604_800 => (secs / 86_400, "day"),
        _ => (secs / 604_800, "week"),
    };
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

/// `YYYY-MM-DD HH:MM:SS` of Unix seconds, UTC.
fn datetime(t: u64) -> String {
    super::sinfonia::rfc3339(t)
        .trim_end_matches('Z')
        .replace('T', " ")
}

/// The previous reading of a plugin and the time since it, for deltas.
pub struct Since<'a> {
    /// The snapshot of the previous call of this plugin; none on the first call.
    pub prev: Option<&'a Snapshot>,
    /// The snapshot taken when the agent started, for CPU percentages on a first call.
    pub base: &'a Snapshot,
}

impl Since<'_> {
    fn seconds(&self, cur: &Snapshot) -> f64 {
        let from = self.prev.unwrap_or(self.base).at;
        (cur.at - from).max(0.001)
    }
}

/// The JSON of one plugin, or `None` for a plugin not served.
pub fn plugin(api: Api, name: &str, since: &Since<'_>, cur: &Snapshot) -> Option<Value> {
    let first = since.prev.is_none();
    let dt = since.seconds(cur);
    // A counter's change since the previous call: zero on the first call.
    let delta = |now: u64, before: Option<u64>| -> u64 {
        match before {
            Some(b) if !first => now.saturating_sub(b),
            _ => 0,
        }
    };
    let prev = since.prev;
    Some(match (name, api) {
        ("cpu", _) => {
            let before = prev.unwrap_or(since.base);
            let mut m = cpu_percents(Some(&before.cpu), &cur.cpu);
            if api == Api::V4 {
                // Not in 4.5.8's output.
                m.remove("softirq");
                m.remove("guest_nice");
            }
            m.insert("cpucore".into(), json!(cur.log_cores));
            m.insert("time_since_update".into(), json!(dt));
            let counters = [
                (
                    "ctx_switches",
                    cur.ctx_switches,
                    prev.map(|p| p.ctx_switches),
                ),
                ("interrupts", cur.interrupts, prev.map(|p| p.interrupts)),
                (
                    "soft_interrupts",
                    cur.soft_interrupts,
                    prev.map(|p| p.soft_interrupts),
                ),
                ("syscalls", 0, Some(0)),
            ];
            for (k, now, before) in counters {
                let d = delta(now, before);
                m.insert(k.into(), json!(d));
                if api == Api::V4 {
                    m.insert(format!("{k}_gauge"), json!(now));
                    m.insert(
                        format!("{k}_rate_per_sec"),
                        if k == "syscalls" {
                            json!(0)
                        } else {
                            json!((d as f64 / dt).round())
                        },
                    );
                }
            }
            Value::Object(m)
        }
        ("percpu", _) => json!(percpu(api, prev.unwrap_or(since.base), cur)),
        ("mem", _) => {
            let m = &cur.mem;
            // As psutil computes it.
            let used = m
                .total
                .checked_sub(m.free + m.buffers + m.cached)
                .unwrap_or(m.total.saturating_sub(m.free));
            let percent = pct(m.total.saturating_sub(m.available), m.total);
            let mut v = json!({
                "total": m.total,
                "available": m.available,
                "percent": percent,
                "used": used,
                // Glances 3 reports `available` as free.
                "free": if api == Api::V3 { m.available } else { m.free },
                "active": m.active,
                "inactive": m.inactive,
                "buffers": m.buffers,
                "cached": m.cached,
                "shared": m.shared,
            });
            if api == Api::V4 {
                v["percent_min"] = json!(percent);
                v["percent_max"] = json!(percent);
                v["percent_mean"] = json!(percent);
            }
            v
        }
        ("memswap", _) => {
            let m = &cur.mem;
            let used = m.swap_total.saturating_sub(m.swap_free);
            json!({
                "total": m.swap_total,
                "used": used,
                "free": m.swap_free,
                "percent": pct(used, m.swap_total),
                "sin": m.swap_in,
                "sout": m.swap_out,
                "time_since_update": dt,
            })
        }
        ("load", _) => json!({
            "min1": cur.load[0],
            "min5": cur.load[1],
            "min15": cur.load[2],
            "cpucore": cur.log_cores,
        }),
        ("fs", _) => Value::Array(
            cur.fs
                .iter()
                .map(|f| {
                    let mut v = json!({
                        "device_name": f.device_name,
                        "fs_type": f.fs_type,
                        "mnt_point": f.mnt_point,
                        "size": f.size,
                        "used": f.used,
                        "free": f.free,
                        "percent": pct(f.used, f.used + f.free),
                        "key": "mnt_point",
                    });
                    if api == Api::V4 {
                        v["options"] = json!(f.options);
                    }
                    v
                })
                .collect(),
        ),
        ("network", _) => Value::Array(
            cur.net
                .iter()
                .filter(|i| api == Api::V3 || !(i.name == "lo" || i.name.starts_with("docker")))
                .map(|i| {
                    let before = prev.and_then(|p| p.net.iter().find(|x| x.name == i.name));
                    let rx = delta(i.rx, before.map(|b| b.rx));
                    let tx = delta(i.tx, before.map(|b| b.tx));
                    match api {
                        Api::V3 => json!({
                            "interface_name": i.name,
                            "alias": null,
                            "time_since_update": dt,
                            "cumulative_rx": i.rx,
                            "rx": rx,
                            "cumulative_tx": i.tx,
                            "tx": tx,
                            "cumulative_cx": i.rx + i.tx,
                            "cx": rx + tx,
                            "is_up": i.is_up,
                            "speed": i.speed,
                            "key": "interface_name",
                        }),
                        Api::V4 => json!({
                            "interface_name": i.name,
                            "alias": null,
                            "bytes_recv": rx,
                            "bytes_sent": tx,
                            "bytes_all": rx + tx,
                            "speed": i.speed,
                            "key": "interface_name",
                            "time_since_update": dt,
                            "bytes_recv_gauge": i.rx,
                            "bytes_recv_rate_per_sec": (rx as f64 / dt).round(),
                            "bytes_sent_gauge": i.tx,
                            "bytes_sent_rate_per_sec": (tx as f64 / dt).round(),
                            "bytes_all_gauge": i.rx + i.tx,
                            "bytes_all_rate_per_sec": ((rx + tx) as f64 / dt).round(),
                        }),
                    }
                })
                .collect(),
        ),
        ("diskio", _) => Value::Array(
            cur.disks
                .iter()
                .map(|d| {
                    let before = prev.and_then(|p| p.disks.iter().find(|x| x.name == d.name));
                    let f = |now: u64, get: fn(&Disk) -> u64| delta(now, before.map(get));
                    let rc = f(d.read_count, |b| b.read_count);
                    let wc = f(d.write_count, |b| b.write_count);
                    let rb = f(d.read_bytes, |b| b.read_bytes);
                    let wb = f(d.write_bytes, |b| b.write_bytes);
                    let mut v = json!({
                        "time_since_update": dt,
                        "disk_name": d.name,
                        "read_count": rc,
                        "write_count": wc,
                        "read_bytes": rb,
                        "write_bytes": wb,
                        "key": "disk_name",
                    });
                    if api == Api::V4 {
                        let rt = f(d.read_time, |b| b.read_time);
                        let wt = f(d.write_time, |b| b.write_time);
                        v["read_time"] = json!(rt);
                        v["write_time"] = json!(wt);
                        for (k, now, dd) in [
                            ("read_count", d.read_count, rc),
                            ("write_count", d.write_count, wc),
                            ("read_bytes", d.read_bytes, rb),
                            ("write_bytes", d.write_bytes, wb),
                            ("read_time", d.read_time, rt),
                            ("write_time", d.write_time, wt),
                        ] {
                            v[format!("{k}_gauge")] = json!(now);
                            v[format!("{k}_rate_per_sec")] = json!((dd as f64 / dt).round());
                        }
                        v["read_latency"] = json!(rt.checked_div(rc).unwrap_or(0));
                        v["write_latency"] = json!(wt.checked_div(wc).unwrap_or(0));
                    }
                    v
                })
                .collect(),
        ),
        ("system", _) => {
            let hr = match api {
                Api::V3 => format!("{} 64bit", cur.linux_distro),
                Api::V4 => format!("{} 64bit / Linux {}", cur.linux_distro, cur.os_version),
            };
            json!({
                "os_name": "Linux",
                "hostname": cur.hostname,
                "platform": "64bit",
                "linux_distro": cur.linux_distro,
                "os_version": cur.os_version,
                "hr_name": hr,
            })
        }
        ("uptime", _) => json!(uptime_string(cur.uptime_s)),
        ("now", Api::V3) => json!(format!("{} UTC", datetime(cur.at as u64))),
        ("now", Api::V4) => {
            let t = datetime(cur.at as u64);
            json!({"iso": format!("{}+00:00", t.replace(' ', "T")), "custom": format!("{t} UTC")})
        }
        ("core", _) => json!({"phys": cur.phys_cores, "log": cur.log_cores}),
        ("quicklook", _) => {
            let before = prev.unwrap_or(since.base);
            let cpu = cpu_percents(Some(&before.cpu), &cur.cpu)["total"].clone();
            let swap_used = cur.mem.swap_total.saturating_sub(cur.mem.swap_free);
            let mut v = json!({
                "cpu": cpu,
                "percpu": percpu(api, before, cur),
                "mem": pct(cur.mem.total.saturating_sub(cur.mem.available), cur.mem.total),
                "swap": pct(swap_used, cur.mem.swap_total),
                "cpu_name": cur.cpu_name,
                "cpu_hz_current": cur.cpu_hz_current,
            });
            match api {
                Api::V3 => v["cpu_hz"] = json!(cur.cpu_hz.unwrap_or(0.0)),
                Api::V4 => {
                    v["cpu_hz"] = json!(cur.cpu_hz);
                    v["cpu_log_core"] = json!(cur.log_cores);
                    v["cpu_phys_core"] = json!(cur.phys_cores);
                    v["load"] = json!(r1(cur.load[2] * 100.0 / f64::from(cur.log_cores.max(1))));
                    v["gpu_mem"] = json!(0);
                    v["gpu_proc"] = json!(0);
                }
            }
            v
        }
        ("processcount", _) => {
            let count = |c: char| cur.procs.iter().filter(|p| p.state == c).count();
            json!({
                "total": cur.procs.len(),
                "running": count('R'),
                "sleeping": count('S') + count('I'),
                "thread": cur.procs.iter().map(|p| p.threads).sum::<u64>(),
                "pid_max": if api == Api::V3 { 0 } else { cur.pid_max },
            })
        }
        ("processlist", _) => processlist(api, prev, cur, dt),
        ("docker", Api::V3) | ("containers", _) => containers(api, prev, cur, dt),
        ("alert", _) | ("sensors", _) => json!([]),
        ("psutilversion", Api::V3) => json!([5, 9, 4]),
        ("psutilversion", Api::V4) => json!("7.2.2"),
        ("version", Api::V4) => json!(V4_VERSION),
        _ => return None,
    })
}

fn percpu(api: Api, before: &Snapshot, cur: &Snapshot) -> Value {
    Value::Array(
        cur.percpu
            .iter()
            .enumerate()
            .map(|(n, c)| {
                let mut m = cpu_percents(before.percpu.get(n), c);
                m.insert("key".into(), json!("cpu_number"));
                m.insert("cpu_number".into(), json!(n));
                if api == Api::V4 {
                    m.insert("dpc".into(), Value::Null);
                    m.insert("interrupt".into(), Value::Null);
                }
                Value::Object(m)
            })
            .collect(),
    )
}

fn processlist(api: Api, prev: Option<&Snapshot>, cur: &Snapshot, dt: f64) -> Value {
    let ticks = cur.clock_ticks.max(1) as f64;
    let mut list: Vec<Value> = cur
        .procs
        .iter()
        .map(|p| {
            let before = prev.and_then(|s| s.procs.iter().find(|x| x.pid == p.pid));
            let cpu = before
                .map(|b| p.cpu_ticks.saturating_sub(b.cpu_ticks) as f64 / ticks / dt * 100.0)
                .unwrap_or(0.0);
            let memory_percent = if cur.mem.total == 0 {
                0.0
            } else {
                p.rss as f64 * 100.0 / cur.mem.total as f64
            };
            let secs: Vec<f64> = p
                .times
                .iter()
                .map(|t| (*t as f64 / ticks * 100.0).round() / 100.0)
                .collect();
            let mem = &p.memory;
            let (memory_info, cpu_times, gids) = match api {
                Api::V3 => (json!(mem), json!(secs), json!(p.gids)),
                Api::V4 => (
                    json!({"rss": mem[0], "vms": mem[1], "shared": mem[2], "text": mem[3], "lib": mem[4], "data": mem[5], "dirty": mem[6]}),
                    json!({"user": secs[0], "system": secs[1], "children_user": secs[2], "children_system": secs[3], "iowait": secs[4]}),
                    json!({"real": p.gids[0], "effective": p.gids[1], "saved": p.gids[2]}),
                ),
            };
            // Glances' own layout: bytes read and written now, then at the previous
            // reading, then whether I/O could be read at all.
            let (io_r, io_w) = before.map_or((p.io[0], p.io[1]), |b| (b.io[0], b.io[1]));
            let mut v = json!({
                "cpu_times": cpu_times,
                "gids": gids,
                "io_counters": [p.io[0], p.io[1], io_r, io_w, 1],
                "pid": p.pid,
                "name": p.name,
                // The command line may hold secrets: only the program name is shown.
                "cmdline": [p.name],
                "username": p.username,
                "status": p.state.to_string(),
                "num_threads": p.threads,
                "nice": p.nice,
                "cpu_percent": r1(cpu),
                "memory_percent": memory_percent,
                "memory_info": memory_info,
                "time_since_update": dt,
                "key": "pid",
            });
            if api == Api::V4 {
                v["cpu_num"] = json!(p.cpu_num);
            }
            v
        })
        .collect();
    list.sort_by(|a, b| {
        let f = |v: &Value| v["cpu_percent"].as_f64().unwrap_or(0.0);
        f(b).total_cmp(&f(a))
    });
    Value::Array(list)
}

fn containers(api: Api, prev: Option<&Snapshot>, cur: &Snapshot, dt: f64) -> Value {
    let now = cur.at as u64;
    let list: Vec<Value> = cur
        .containers
        .iter()
        .map(|c| {
            let before = prev.and_then(|s| s.containers.iter().find(|x| x.id == c.id));
            let running = c.status == "running";
            let cpu = before
                .filter(|_| running)
                .map(|b| r1(c.cpu_ns.saturating_sub(b.cpu_ns) as f64 / (dt * 1e9) * 100.0))
                .unwrap_or(0.0);
            let uptime = if running && c.started_at > 0 {
                human_age(now.saturating_sub(c.started_at))
            } else {
                String::new()
            };
            let d = |now: u64, get: fn(&Container) -> u64| match before {
                Some(b) => now.saturating_sub(get(b)),
                None => 0,
            };
            let (net_rx, net_tx) = (d(c.net_rx, |b| b.net_rx), d(c.net_tx, |b| b.net_tx));
            let (io_r, io_w) = (d(c.io_read, |b| b.io_read), d(c.io_write, |b| b.io_write));
            let memory = if running {
                json!({"usage": c.memory_usage, "limit": c.memory_limit, "inactive_file": c.memory_inactive_file})
            } else {
                json!({})
            };
            let io = if running {
                json!({"cumulative_ior": c.io_read, "cumulative_iow": c.io_write, "ior": io_r, "iow": io_w, "time_since_update": dt})
            } else {
                json!({})
            };
            let network = if running {
                json!({"cumulative_rx": c.net_rx, "cumulative_tx": c.net_tx, "rx": net_rx, "tx": net_tx, "time_since_update": dt})
            } else {
                json!({})
            };
            let rate = |v: u64| running.then(|| (v as f64 / dt) as u64);
            match api {
                Api::V4 => json!({
                    "key": "name",
                    "name": c.name,
                    "id": c.id,
                    "image": [c.image],
                    "status": c.status,
                    "created": c.created,
                    "command": c.command,
                    "uptime": uptime,
                    "engine": "docker",
                    "cpu": {"total": cpu},
                    "cpu_percent": cpu,
                    "memory": memory,
                    "memory_usage": running.then_some(c.memory_usage),
                    "memory_limit": running.then_some(c.memory_limit),
                    "memory_inactive_file": running.then_some(c.memory_inactive_file),
                    "io": io,
                    "io_rx": rate(io_r),
                    "io_wx": rate(io_w),
                    "network": network,
                    "network_rx": rate(net_rx),
                    "network_tx": rate(net_tx),
                    "ports": "",
                }),
                Api::V3 => json!({
                    "key": "name",
                    "name": c.name,
                    "Id": c.id,
                    "Image": [c.image],
                    "Status": c.status,
                    "Created": c.created,
                    "Command": c.command.split_whitespace().collect::<Vec<_>>(),
                    "Uptime": uptime,
                    "engine": "docker",
                    "cpu": {"total": cpu},
                    "cpu_percent": cpu,
                    "memory": memory,
                    "memory_usage": running.then_some(c.memory_usage),
                    "io": io,
                    "io_r": rate(io_r),
                    "io_w": rate(io_w),
                    "network": network,
                    "network_rx": rate(net_rx),
                    "network_tx": rate(net_tx),
                }),
            }
        })
        .collect();
    match api {
        Api::V4 => Value::Array(list),
        // Glances 3 answers `{}` when it cannot reach a container engine.
        Api::V3 if !cur.has_runtime => json!({}),
        Api::V3 => json!({"containers": list, "version": {}}),
    }
}

/// What a route asks for under `/api/N/`.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    Status,
    PluginsList,
    All,
    Plugin(String),
    /// `/<plugin>/<item>`: that field (of each entry, for a list plugin).
    Item(String, String),
    /// `/<plugin>/<item>/<value>` (v3) or `/<plugin>/<item>/value/<value>` (v4): the
    /// entries whose field equals the value.
    Value(String, String, String),
}

/// Parses the path after `/api/N/`; `None` for a route not served (404).
pub fn route(api: Api, path: &str) -> Option<Route> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    Some(match (api, parts.as_slice()) {
        (_, ["status"]) => Route::Status,
        (_, ["pluginslist"]) => Route::PluginsList,
        (_, ["all"]) => Route::All,
        (_, [p]) if !p.is_empty() => Route::Plugin(p.to_string()),
        (_, [p, i]) => Route::Item(p.to_string(), i.to_string()),
        (Api::V4, [p, i, "value", v]) => Route::Value(p.to_string(), i.to_string(), v.to_string()),
        (Api::V3, [p, i, v]) => Route::Value(p.to_string(), i.to_string(), v.to_string()),
        _ => return None,
    })
}

/// `/<plugin>/<item>`: `{"item": value}`, or for a list plugin `{"item": [values…]}`;
/// `None` when no such field.
pub fn item(value: &Value, item: &str) -> Option<Value> {
    let got = match value {
        Value::Object(m) => m.get(item)?.clone(),
        Value::Array(list) => {
            let vals: Vec<Value> = list.iter().filter_map(|e| e.get(item).cloned()).collect();
            if vals.is_empty() && !list.is_empty() {
                return None;
            }
            Value::Array(vals)
        }
        _ => return None,
    };
    Some(json!({ item: got }))
}

/// `/<plugin>/<item>/value/<v>`: `{"v": [entries whose item equals v]}`.
pub fn matching(value: &Value, item: &str, wanted: &str) -> Option<Value> {
    let Value::Array(list) = value else {
        return None;
    };
    let hits: Vec<Value> = list
        .iter()
        .filter(|e| match e.get(item) {
            Some(Value::String(s)) => s == wanted,
            Some(v) => serde_json::to_string(v).is_ok_and(|t| t == wanted),
            None => false,
        })
        .cloned()
        .collect();
    Some(json!({ wanted: hits }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(at: f64, user: u64, idle: u64) -> Snapshot {
        Snapshot {
            at,
            cpu: CpuTimes {
                user,
                idle,
                ..CpuTimes::default()
            },
            percpu: vec![CpuTimes {
                user,
                idle,
                ..CpuTimes::default()
            }],
            log_cores: 1,
            phys_cores: 1,
            clock_ticks: 100,
            net: vec![
                Interface {
                    name: "lo".into(),
                    rx: 1000,
                    tx: 1000,
                    is_up: true,
                    speed: 0,
                },
                Interface {
                    name: "eth0".into(),
                    rx: 5000 + user * 10,
                    tx: 100,
                    is_up: true,
                    speed: 1_048_576_000,
                },
            ],
            mem: Memory {
                total: 1000,
                available: 600,
                free: 300,
                ..Memory::default()
            },
            ..Snapshot::default()
        }
    }

    #[test]
    fn uptime_is_a_python_timedelta() {
        assert_eq!(uptime_string(418), "0:06:58");
        assert_eq!(uptime_string(86_400 + 3723), "1 day, 1:02:03");
        assert_eq!(uptime_string(19 * 86_400 + 20_516), "19 days, 5:41:56");
    }

    #[test]
    fn counters_are_deltas_since_the_previous_call_and_zero_on_the_first() {
        let base = snap(0.0, 0, 0);
        let a = snap(10.0, 100, 100);
        let first = Since {
            prev: None,
            base: &base,
        };
        let net = plugin(Api::V3, "network", &first, &a).unwrap();
        assert_eq!(net[1]["rx"], 0);
        assert_eq!(net[1]["cumulative_rx"], 6000);
        // CPU percentages on a first call come from the agent's start.
        let cpu = plugin(Api::V3, "cpu", &first, &a).unwrap();
        assert_eq!(cpu["total"], 50.0);
        let b = snap(12.0, 250, 150);
        let next = Since {
            prev: Some(&a),
            base: &base,
        };
        let net = plugin(Api::V3, "network", &next, &b).unwrap();
        assert_eq!(net[1]["rx"], 1500);
        assert_eq!(net[1]["time_since_update"], 2.0);
        let cpu = plugin(Api::V3, "cpu", &next, &b).unwrap();
        assert_eq!(cpu["total"], 75.0);
        assert_eq!(cpu["user"], 75.0);
    }

    #[test]
    fn v4_hides_lo_and_renames_counters_v3_keeps_them() {
        let base = snap(0.0, 0, 0);
        let a = snap(1.0, 1, 1);
        let s = Since {
            prev: None,
            base: &base,
        };
        let v3 = plugin(Api::V3, "network", &s, &a).unwrap();
        let v4 = plugin(Api::V4, "network", &s, &a).unwrap();
        assert_eq!(v3.as_array().unwrap().len(), 2);
        assert_eq!(v4.as_array().unwrap().len(), 1);
        assert!(v4[0].get("bytes_recv_gauge").is_some() && v4[0].get("rx").is_none());
        // v3's `free` is `available`.
        assert_eq!(plugin(Api::V3, "mem", &s, &a).unwrap()["free"], 600);
        assert_eq!(plugin(Api::V4, "mem", &s, &a).unwrap()["free"], 300);
        assert_eq!(plugin(Api::V4, "mem", &s, &a).unwrap()["percent"], 40.0);
        assert!(plugin(Api::V4, "now", &s, &a).unwrap().is_object());
        assert!(plugin(Api::V3, "now", &s, &a).unwrap().is_string());
        assert!(plugin(Api::V3, "version", &s, &a).is_none());
    }

    #[test]
    fn routes_and_items() {
        assert_eq!(route(Api::V4, "cpu"), Some(Route::Plugin("cpu".into())));
        assert_eq!(
            route(Api::V4, "network/interface_name/value/lo"),
            Some(Route::Value(
                "network".into(),
                "interface_name".into(),
                "lo".into()
            ))
        );
        assert_eq!(
            route(Api::V3, "network/interface_name/lo"),
            Some(Route::Value(
                "network".into(),
                "interface_name".into(),
                "lo".into()
            ))
        );
        assert_eq!(route(Api::V3, "a/b/c/d"), None);
        let cpu = json!({"total": 4.6, "user": 2.0});
        assert_eq!(item(&cpu, "total"), Some(json!({"total": 4.6})));
        assert_eq!(item(&cpu, "nope"), None);
        let fs = json!([{"mnt_point": "/"}, {"mnt_point": "/data"}]);
        assert_eq!(
            item(&fs, "mnt_point"),
            Some(json!({"mnt_point": ["/", "/data"]}))
        );
        assert_eq!(
            matching(&fs, "mnt_point", "/data"),
            Some(json!({"/data": [{"mnt_point": "/data"}]}))
        );
    }
}
