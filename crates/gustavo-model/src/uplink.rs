//! When an agent sends its vitals (the sync protocol, `api::SyncRequest`).
//!
//! A device's uplink may cost money per megabyte, and an idle device has little to say: its
//! liveness is the long-poll it holds open, not a request every few seconds. So vitals go
//! out when they change in a way someone acts on, or when `every` has passed (60 s by
//! default):
//!
//! - at once: the first time; a pressure level change; a change of the machine itself
//!   (CPUs, memory or disk size);
//! - at once: CPU moved by [`CPU_POINTS`] points, memory or disk use by [`USE_POINTS`]
//!   points of their size since what was sent (the scheduler's scores move that much);
//! - at most every [`ACTIVITY_EVERY_MS`]: growth of leased backends' traffic or of the site
//!   tunnel's counters, and pressure actions (what renews a lease must reach the server
//!   well within the shortest lease, without a message per packet);
//! - otherwise when `every` has passed since the last one sent.
//!
//! Numbers are rounded to what people and the scheduler read ([`compact`]), which keeps
//! the body short.

use crate::api::{Heartbeat, Vitals};

/// CPU use, in points of percent, that counts as a change.
pub const CPU_POINTS: f32 = 20.0;
/// Memory or disk use, in points of percent of their size, that counts as a change.
pub const USE_POINTS: u64 = 10;
/// The least time between two sends for activity alone (traffic, tunnel counters).
pub const ACTIVITY_EVERY_MS: u64 = 5_000;

/// What was last sent, and when (milliseconds on the agent's monotonic clock).
#[derive(Debug, Clone)]
pub struct Sent {
    pub at_ms: u64,
    pub heartbeat: Heartbeat,
}

/// Whether `now` should go out at `now_ms`, given what was last sent and the period.
pub fn due(last: Option<&Sent>, now: &Heartbeat, now_ms: u64, every_ms: u64) -> bool {
    let Some(last) = last else {
        return true;
    };
    let age = now_ms.saturating_sub(last.at_ms);
    if age >= every_ms {
        return true;
    }
    let level = |h: &Heartbeat| h.pressure.as_ref().map(|p| p.level).unwrap_or_default();
    if level(&last.heartbeat) != level(now) || changed(&last.heartbeat.vitals, &now.vitals) {
        return true;
    }
    let active = last.heartbeat.traffic != now.traffic
        || last.heartbeat.tunnel != now.tunnel
        || last.heartbeat.pressure != now.pressure;
    active && age >= ACTIVITY_EVERY_MS
}

/// Whether `now` should go out before the period is up: [`due`] without the period.
pub fn urgent(last: Option<&Sent>, now: &Heartbeat, now_ms: u64) -> bool {
    due(last, now, now_ms, u64::MAX)
}

/// Whether the vitals moved enough to matter (see the module header).
pub fn changed(a: &Vitals, b: &Vitals) -> bool {
    let points = |x: u64, y: u64, total: u64| {
        if total == 0 {
            return 0;
        }
        x.abs_diff(y).saturating_mul(100) / total
    };
    a.cpus != b.cpus
        || a.memory_total_mb != b.memory_total_mb
        || a.disk_total_mb != b.disk_total_mb
        || (a.cpu_percent - b.cpu_percent).abs() >= CPU_POINTS
        || points(a.memory_used_mb, b.memory_used_mb, b.memory_total_mb) >= USE_POINTS
        || points(a.disk_used_mb, b.disk_used_mb, b.disk_total_mb) >= USE_POINTS
}

/// Rounds the fractional figures to one decimal (`12.3`, not `12.345678`).
pub fn compact(v: &mut Vitals) {
    for x in [
        &mut v.cpu_percent,
        &mut v.load1,
        &mut v.load5,
        &mut v.load15,
    ] {
        *x = (*x * 10.0).round() / 10.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pressure::{Level, Status};

    fn hb(cpu: f32, mem: u64) -> Heartbeat {
        Heartbeat {
            vitals: Vitals {
                cpu_percent: cpu,
                cpus: 4,
                memory_used_mb: mem,
                memory_total_mb: 1000,
                disk_used_mb: 100,
                disk_total_mb: 1000,
                load1: 0.0,
                load5: 0.0,
                load15: 0.0,
                net_rx_bps: 0,
                net_tx_bps: 0,
                uptime_s: 1,
                at: 1,
            },
            ..Heartbeat::default()
        }
    }

    const MIN: u64 = 60_000;

    #[test]
    fn the_first_goes_and_then_only_what_matters_or_the_period() {
        assert!(due(None, &hb(5.0, 100), 0, MIN));
        let sent = Sent {
            at_ms: 0,
            heartbeat: hb(5.0, 100),
        };
        // Small moves wait for the period.
        assert!(!due(Some(&sent), &hb(15.0, 180), 30_000, MIN));
        assert!(due(Some(&sent), &hb(15.0, 180), MIN, MIN));
        // A CPU jump or a memory move of 10 % of its size go at once.
        assert!(due(Some(&sent), &hb(25.0, 100), 1_000, MIN));
        assert!(due(Some(&sent), &hb(5.0, 200), 1_000, MIN));
    }

    #[test]
    fn a_level_change_goes_at_once_and_activity_at_most_every_five_seconds() {
        let sent = Sent {
            at_ms: 0,
            heartbeat: hb(5.0, 100),
        };
        let mut tainted = hb(5.0, 100);
        tainted.pressure = Some(Status {
            level: Level::Tainted,
            ..Status::default()
        });
        assert!(due(Some(&sent), &tainted, 100, MIN));
        let mut busy = hb(5.0, 100);
        busy.traffic.insert("app-1".into(), 4096);
        assert!(!due(Some(&sent), &busy, 1_000, MIN));
        assert!(due(Some(&sent), &busy, ACTIVITY_EVERY_MS, MIN));
    }

    #[test]
    fn compact_rounds_to_one_decimal() {
        let mut v = hb(12.345_678, 1).vitals;
        v.load1 = 0.061_234;
        compact(&mut v);
        assert_eq!(
            serde_json::to_value(&v).unwrap_or_default()["cpu_percent"].as_f64(),
            Some(f64::from(12.3_f32))
        );
        assert_eq!(v.load1, 0.1);
    }
}
