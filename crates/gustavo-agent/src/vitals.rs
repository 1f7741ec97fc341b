//! Host vitals: CPU, memory, root disk, load, network rates and uptime. One long-lived
//! sampler, refreshed only in the parts it reports (never a full process walk), because CPU
//! usage and network rates are differences between two samples.

use std::time::Instant;

use gustavo_model::api::Vitals;
use sysinfo::{Disks, Networks, System};

/// The host the agent runs on: its size, and its vitals now.
pub trait HostProbe: Send + 'static {
    /// Cores and memory (MB), for registration.
    fn capacity(&self) -> (u32, u64);
    fn sample(&mut self) -> Vitals;
}

/// The real host, read through sysinfo.
pub struct Sampler {
    sys: System,
    disks: Disks,
    nets: Networks,
    last: Instant,
}

impl Sampler {
    pub fn new() -> Result<Sampler, String> {
        let err = |e: sysinfo::Error| format!("cannot read host metrics: {e}");
        let mut sys = System::new().map_err(err)?;
        sys.refresh_cpu_usage();
        sys.refresh_memory();
        Ok(Sampler {
            sys,
            disks: Disks::new_with_refreshed_list().map_err(err)?,
            nets: Networks::new_with_refreshed_list().map_err(err)?,
            last: Instant::now(),
        })
    }
}

impl HostProbe for Sampler {
    fn capacity(&self) -> (u32, u64) {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        (cpus, self.sys.total_memory() / (1024 * 1024))
    }

    fn sample(&mut self) -> Vitals {
        let elapsed = self.last.elapsed().as_secs_f64().max(0.001);
        self.last = Instant::now();
        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory();
        self.disks.refresh(true);
        self.nets.refresh(true);
        let root = self
            .disks
            .iter()
            .filter(|d| std::path::Path::new("/").starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len());
        let (disk_total, disk_free) = root
            .map(|d| (d.total_space(), d.available_space()))
            .unwrap_or((0, 0));
        let (rx, tx) = self
            .nets
            .iter()
            .filter(|(name, _)| name.to_str() != Some("lo"))
            .fold((0u64, 0u64), |(r, t), (_, n)| {
                (r + n.received(), t + n.transmitted())
            });
        let (load1, load5, load15) = System::load_average()
            .map(|l| (l.one as f32, l.five as f32, l.fifteen as f32))
            .unwrap_or_default();
        let mb = 1024 * 1024;
        let (cpus, _) = self.capacity();
        Vitals {
            cpu_percent: self.sys.global_cpu_usage(),
            cpus,
            memory_used_mb: self.sys.used_memory() / mb,
            memory_total_mb: self.sys.total_memory() / mb,
            disk_used_mb: disk_total.saturating_sub(disk_free) / mb,
            disk_total_mb: disk_total / mb,
            load1,
            load5,
            load15,
            net_rx_bps: (rx as f64 / elapsed) as u64,
            net_tx_bps: (tx as f64 / elapsed) as u64,
            uptime_s: System::uptime().unwrap_or(0),
            at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HostProbe;

    #[test]
    fn samples_this_host() {
        let mut s = super::Sampler::new().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(250));
        let v = s.sample();
        assert!(
            v.cpus >= 1 && v.memory_total_mb > 0 && v.disk_total_mb > 0 && v.uptime_s > 0,
            "{v:?}"
        );
        assert!(v.memory_used_mb <= v.memory_total_mb);
    }
}
