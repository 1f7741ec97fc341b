//! A Glances-compatible REST API on the device (`gustavo agent --glances-listen ADDR`,
//! Glances' port 61208): `/api/4/…` as Glances 4.5.8 answers and `/api/3/…` as Glances 3.3
//! does, so FRACTAL's resource manager, Home Assistant's `glances-api` and other Glances
//! collectors read a Gustavo device unchanged.
//!
//! Each call reads the host (`/proc`, `/sys`, `statvfs`; containers from the engine when the
//! plugin shows them) into a [`Snapshot`]; the JSON comes from
//! [`gustavo_model::compat::glances`], against the snapshot of the previous call of the same
//! plugin, as Glances computes its deltas.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bollard::Docker;
use bollard::query_parameters::ListContainersOptions;
use gustavo_model::compat::glances::{
    self as model, Api, Container, CpuTimes, Disk, FileSystem, Interface, Memory, Process, Route,
    Since, Snapshot,
};
use serde_json::{Value, json};

/// The default port, Glances' own.
pub const DEFAULT_PORT: u16 = 61208;

struct Inner {
    base: Snapshot,
    /// The snapshot each (API, plugin) was last answered from.
    prev: HashMap<(u8, String), Snapshot>,
}

#[derive(Clone)]
struct Glances {
    inner: Arc<Mutex<Inner>>,
    docker: Option<Docker>,
}

/// The router of the Glances API. `docker`: the engine whose containers are shown.
pub fn router(docker: Option<Docker>) -> Router {
    let base = read_host(false);
    let g = Glances {
        inner: Arc::new(Mutex::new(Inner {
            base,
            prev: HashMap::new(),
        })),
        docker,
    };
    Router::new()
        .route("/", get(root))
        .route("/api/{version}/{*path}", get(api).head(api))
        .with_state(g)
}

async fn root() -> &'static str {
    "Glances-compatible API (Gustavo agent): /api/4/ and /api/3/\n"
}

fn error(status: StatusCode, detail: String) -> Response {
    (status, axum::Json(json!({ "detail": detail }))).into_response()
}

async fn api(State(g): State<Glances>, Path((version, path)): Path<(String, String)>) -> Response {
    let Some(api) = Api::parse(&version) else {
        return error(StatusCode::NOT_FOUND, "Not Found".into());
    };
    let Some(route) = model::route(api, &path) else {
        return error(StatusCode::NOT_FOUND, "Not Found".into());
    };
    let names = model::plugins(api);
    let plugin = match &route {
        Route::Status => {
            return match api {
                // Glances 3.3 answers 200 with an empty body.
                Api::V3 => StatusCode::OK.into_response(),
                Api::V4 => axum::Json(json!({"version": model::V4_VERSION})).into_response(),
            };
        }
        Route::PluginsList => return axum::Json(json!(names)).into_response(),
        Route::All => None,
        Route::Plugin(p) | Route::Item(p, _) | Route::Value(p, _, _) => Some(p.clone()),
    };
    if let Some(p) = &plugin
        && !names.contains(&p.as_str())
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!("Unknown plugin {p} (available plugins: {names:?})"),
        );
    }
    let wants = |p: &str| plugin.as_deref().is_none_or(|x| x == p);
    let procs = wants("processlist") || wants("processcount");
    let with_containers = wants("containers") || wants("docker");
    let mut cur = match tokio::task::spawn_blocking(move || read_host(procs)).await {
        Ok(s) => s,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if with_containers && let Some(d) = &g.docker {
        match read_containers(d).await {
            Ok(c) => {
                cur.containers = c;
                cur.has_runtime = true;
            }
            Err(e) => tracing::debug!(error = %e, "glances: cannot read containers"),
        }
    }
    let key = (
        if api == Api::V3 { 3 } else { 4 },
        plugin.clone().unwrap_or_else(|| "all".into()),
    );
    let mut inner = g.inner.lock().unwrap_or_else(|p| p.into_inner());
    let since = Since {
        prev: inner.prev.get(&key),
        base: &inner.base,
    };
    let body = match &route {
        Route::All => {
            let all: serde_json::Map<String, Value> = names
                .iter()
                .filter_map(|p| model::plugin(api, p, &since, &cur).map(|v| (p.to_string(), v)))
                .collect();
            Value::Object(all)
        }
        Route::Plugin(p) => model::plugin(api, p, &since, &cur).unwrap_or(Value::Null),
        Route::Item(p, item) => {
            let v = model::plugin(api, p, &since, &cur).unwrap_or(Value::Null);
            match model::item(&v, item) {
                Some(v) => v,
                None => {
                    return error(
                        StatusCode::NOT_FOUND,
                        format!("Cannot get item {item} in plugin {p}"),
                    );
                }
            }
        }
        Route::Value(p, item, wanted) => {
            let v = model::plugin(api, p, &since, &cur).unwrap_or(Value::Null);
            match model::matching(&v, item, wanted) {
                Some(v) => v,
                None => {
                    return error(
                        StatusCode::NOT_FOUND,
                        format!("Cannot get item {item} = {wanted} in plugin {p}"),
                    );
                }
            }
        }
        Route::Status | Route::PluginsList => unreachable!("answered above"),
    };
    inner.prev.insert(key, cur);
    axum::Json(body).into_response()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn num(s: Option<&str>) -> u64 {
    s.and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn cpu_line(fields: &[&str]) -> CpuTimes {
    let f = |i: usize| num(fields.get(i).copied());
    CpuTimes {
        user: f(1),
        nice: f(2),
        system: f(3),
        idle: f(4),
        iowait: f(5),
        irq: f(6),
        softirq: f(7),
        steal: f(8),
        guest: f(9),
        guest_nice: f(10),
    }
}

/// Size, used and free bytes of a mounted file system, as `df` and psutil count them.
fn statvfs(path: &str) -> Option<(u64, u64, u64)> {
    let s = rustix::fs::statvfs(path).ok()?;
    let size = s.f_blocks * s.f_frsize;
    let used = s.f_blocks.saturating_sub(s.f_bfree) * s.f_frsize;
    let free = s.f_bavail * s.f_frsize;
    Some((size, used, free))
}

/// Reads the host. `procs`: also walk the processes (for the process plugins).
fn read_host(procs: bool) -> Snapshot {
    let mut s = Snapshot {
        at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        clock_ticks: rustix::param::clock_ticks_per_second(),
        ..Snapshot::default()
    };
    for line in read("/proc/stat").lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.first().copied() {
            Some("cpu") => s.cpu = cpu_line(&f),
            Some(c) if c.starts_with("cpu") => s.percpu.push(cpu_line(&f)),
            Some("intr") => s.interrupts = num(f.get(1).copied()),
            Some("ctxt") => s.ctx_switches = num(f.get(1).copied()),
            Some("softirq") => s.soft_interrupts = num(f.get(1).copied()),
            _ => {}
        }
    }
    s.log_cores = s.percpu.len().max(1) as u32;
    let meminfo: BTreeMap<String, u64> = read("/proc/meminfo")
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_string(), num(v.split_whitespace().next()) * 1024))
        })
        .collect();
    let m = |k: &str| meminfo.get(k).copied().unwrap_or(0);
    let page = rustix::param::page_size() as u64;
    let vmstat: BTreeMap<String, u64> = read("/proc/vmstat")
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), num(Some(v.trim()))))
        })
        .collect();
    s.mem = Memory {
        total: m("MemTotal"),
        available: m("MemAvailable"),
        free: m("MemFree"),
        buffers: m("Buffers"),
        cached: m("Cached") + m("SReclaimable"),
        shared: m("Shmem"),
        active: m("Active"),
        inactive: m("Inactive"),
        swap_total: m("SwapTotal"),
        swap_free: m("SwapFree"),
        swap_in: vmstat.get("pswpin").copied().unwrap_or(0) * page,
        swap_out: vmstat.get("pswpout").copied().unwrap_or(0) * page,
    };
    let load: Vec<f64> = read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect();
    if load.len() == 3 {
        s.load = [load[0], load[1], load[2]];
    }
    s.fs = file_systems();
    s.net = interfaces();
    s.disks = read("/proc/diskstats")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let name = f.get(2)?.to_string();
            if name.starts_with("loop") || name.starts_with("ram") {
                return None;
            }
            let n = |i: usize| num(f.get(i).copied());
            Some(Disk {
                name,
                read_count: n(3),
                read_bytes: n(5) * 512,
                read_time: n(6),
                write_count: n(7),
                write_bytes: n(9) * 512,
                write_time: n(10),
            })
        })
        .collect();
    s.hostname = read("/proc/sys/kernel/hostname").trim().to_string();
    s.os_version = read("/proc/sys/kernel/osrelease").trim().to_string();
    let os: BTreeMap<String, String> = read("/etc/os-release")
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.to_string(), v.trim_matches('"').to_string()))
        })
        .collect();
    s.linux_distro = match (os.get("NAME"), os.get("VERSION_ID")) {
        (Some(n), Some(v)) => format!("{n} {v}"),
        (Some(n), None) => n.clone(),
        _ => "Linux".into(),
    };
    s.uptime_s = read("/proc/uptime")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0) as u64;
    let cpuinfo = read("/proc/cpuinfo");
    let mut cores = std::collections::BTreeSet::new();
    let (mut phys_id, mut mhz_sum, mut mhz_n) = (String::new(), 0.0, 0);
    for l in cpuinfo.lines() {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "model name" if s.cpu_name.is_empty() => s.cpu_name = v.to_string(),
            "physical id" => phys_id = v.to_string(),
            "core id" => {
                cores.insert((phys_id.clone(), v.to_string()));
            }
            "cpu MHz" => {
                if let Ok(x) = v.parse::<f64>() {
                    mhz_sum += x;
                    mhz_n += 1;
                }
            }
            _ => {}
        }
    }
    s.phys_cores = if cores.is_empty() {
        s.log_cores
    } else {
        cores.len() as u32
    };
    if mhz_n > 0 {
        s.cpu_hz_current = (mhz_sum / f64::from(mhz_n) * 1e6).round();
    }
    s.cpu_hz = read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
        .trim()
        .parse::<f64>()
        .ok()
        .map(|khz| khz * 1000.0);
    s.pid_max = num(Some(read("/proc/sys/kernel/pid_max").trim()));
    if procs {
        s.procs = processes(page);
    }
    s
}

/// Mounted file systems backed by a device (the types `/proc/filesystems` does not mark
/// `nodev`), as psutil's `disk_partitions(all=False)` lists them; `/boot*` and `/snap*`
/// hidden as Glances' default configuration does.
fn file_systems() -> Vec<FileSystem> {
    let nodev: std::collections::BTreeSet<String> = read("/proc/filesystems")
        .lines()
        .filter_map(|l| l.strip_prefix("nodev").map(|t| t.trim().to_string()))
        .collect();
    read("/proc/mounts")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dev, mnt, ty, opts) = (f.first()?, f.get(1)?, f.get(2)?, f.get(3)?);
            let mnt = mnt.replace("\\040", " ");
            if nodev.contains(*ty) || mnt.starts_with("/boot") || mnt.starts_with("/snap") {
                return None;
            }
            let (size, used, free) = statvfs(&mnt)?;
            Some(FileSystem {
                device_name: dev.to_string(),
                fs_type: ty.to_string(),
                mnt_point: mnt,
                options: opts.to_string(),
                size,
                used,
                free,
            })
        })
        .collect()
}

fn interfaces() -> Vec<Interface> {
    read("/proc/net/dev")
        .lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim().to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            let flags = u64::from_str_radix(
                read(&format!("/sys/class/net/{name}/flags"))
                    .trim()
                    .trim_start_matches("0x"),
                16,
            )
            .unwrap_or(0);
            // Mbit/s (-1 or unreadable when unknown); Glances multiplies by 2^20.
            let speed = read(&format!("/sys/class/net/{name}/speed"))
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|v| *v > 0)
                .map_or(0, |v| v as u64 * 1_048_576);
            Some(Interface {
                rx: num(f.first().copied()),
                tx: num(f.get(8).copied()),
                is_up: flags & 1 == 1,
                speed,
                name,
            })
        })
        .collect()
}

fn processes(page: u64) -> Vec<Process> {
    let users: HashMap<String, String> = read("/etc/passwd")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.get(2)?.to_string(), f.first()?.to_string()))
        })
        .collect();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = read(&format!("/proc/{pid}/stat"));
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let name = stat.get(open + 1..close)?.to_string();
        // Fields after the name, numbered from 3 (state) as in proc(5).
        let f: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
        let at = |n: usize| f.get(n - 3).copied();
        let status = read(&format!("/proc/{pid}/status"));
        let ids = |key: &str| -> Vec<String> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.split_whitespace().map(String::from).collect())
                .unwrap_or_default()
        };
        let uid = ids("Uid:").into_iter().next().unwrap_or_default();
        let gid = ids("Gid:");
        let g = |i: usize| num(gid.get(i).map(String::as_str));
        let statm: Vec<u64> = read(&format!("/proc/{pid}/statm"))
            .split_whitespace()
            .map(|v| num(Some(v)) * page)
            .collect();
        let sm = |i: usize| statm.get(i).copied().unwrap_or(0);
        let io = read(&format!("/proc/{pid}/io"));
        let io_field = |key: &str| num(io.lines().find_map(|l| l.strip_prefix(key)).map(str::trim));
        Some(Process {
            pid,
            username: users.get(&uid).cloned().unwrap_or(uid),
            state: at(3).and_then(|s| s.chars().next()).unwrap_or('?'),
            cpu_ticks: num(at(14)) + num(at(15)),
            times: [
                num(at(14)),
                num(at(15)),
                num(at(16)),
                num(at(17)),
                num(at(42)),
            ],
            gids: [g(0), g(1), g(2)],
            cpu_num: num(at(39)),
            // rss, vms, shared, text, lib, data, dirty, as psutil orders them.
            memory: [sm(1), sm(0), sm(2), sm(3), sm(4), sm(5), sm(6)],
            io: [io_field("read_bytes:"), io_field("write_bytes:")],
            nice: at(19).and_then(|v| v.parse().ok()).unwrap_or(0),
            threads: num(at(20)),
            vms: num(at(23)),
            rss: num(at(24)) * page,
            name,
        })
    })
    .collect()
}

/// Every container of the engine, with one-shot stats for the running ones.
async fn read_containers(d: &Docker) -> Result<Vec<Container>, bollard::errors::Error> {
    let list = d
        .list_containers(Some(ListContainersOptions {
            all: true,
            ..Default::default()
        }))
        .await?;
    let read_one = |c: bollard::models::ContainerSummary| async move {
        let id = c.id.clone().unwrap_or_default();
        let status = c
            .state
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".into());
        let created = c
            .created
            .map(|t| gustavo_model::compat::sinfonia::rfc3339(t.max(0) as u64))
            .unwrap_or_default();
        let mut out = Container {
            name: c
                .names
                .and_then(|n| n.first().cloned())
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            image: c.image.unwrap_or_default(),
            command: c.command.unwrap_or_default(),
            created,
            status: status.clone(),
            id: id.clone(),
            ..Container::default()
        };
        if status != "running" {
            return out;
        }
        if let Ok(i) = d.inspect_container(&id, None).await {
            out.started_at = i
                .state
                .and_then(|s| s.started_at)
                .as_deref()
                .and_then(crate::networks::parse_rfc3339)
                .map_or(0, |(s, _)| s.max(0) as u64);
        }
        if let Some(st) = crate::docker::one_shot_stats(d, &id).await {
            out.cpu_ns = st
                .cpu_stats
                .and_then(|c| c.cpu_usage)
                .and_then(|u| u.total_usage)
                .unwrap_or(0);
            if let Some(m) = st.memory_stats {
                out.memory_usage = m.usage.unwrap_or(0);
                out.memory_limit = m.limit.unwrap_or(0);
                out.memory_inactive_file = gustavo_model::pressure::inactive_file(m.stats.as_ref());
            }
            for e in st
                .blkio_stats
                .and_then(|b| b.io_service_bytes_recursive)
                .unwrap_or_default()
            {
                match e.op.as_deref().map(str::to_ascii_lowercase).as_deref() {
                    Some("read") => out.io_read += e.value.unwrap_or(0),
                    Some("write") => out.io_write += e.value.unwrap_or(0),
                    _ => {}
                }
            }
            for n in st.networks.unwrap_or_default().values() {
                out.net_rx += n.rx_bytes.unwrap_or(0);
                out.net_tx += n.tx_bytes.unwrap_or(0);
            }
        }
        out
    };
    Ok(futures::future::join_all(list.into_iter().map(read_one)).await)
}
