//! Cron schedules for jobs (`schedule: "*/5 * * * *"`), as Nebula's cron jobs take them:
//! five fields — minute, hour, day of month, month, day of week (0 or 7 = Sunday) — each
//! `*`, a number, a range `a-b`, a step `*/n` or `a-b/n`, or a comma-separated list of those.
//! Names (`mon`, `jan`) and the `@hourly` shorthands are accepted too. Times are UTC.
//!
//! A job's `schedule` is a [`Schedule`]: a cron expression, or `@every N[s|m|h]` for a
//! fixed period (at least one second) counted from the Unix epoch, so every member of a
//! group runs at the same instants without talking to each other. Cron's granularity is
//! the minute; `@every 5s` is for what must run more often (and for tests).
//!
//! Pure: the agent asks for the next run after a time from its own clock, so a schedule
//! keeps running while the device is offline.

use std::fmt;

/// A parsed schedule: for each field, the set of values it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64, // bits 0..60
    hours: u32,   // bits 0..24
    days: u32,    // bits 1..=31
    months: u16,  // bits 1..=12
    weekdays: u8, // bits 0..7 (0 = Sunday)
    /// Both day fields restricted: a day matches either (cron's rule).
    day_or: bool,
    text: String,
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.text)
    }
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn field(text: &str, name: &str, lo: u32, hi: u32, names: &[&str]) -> Result<u64, String> {
    let value = |s: &str| -> Result<u32, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            // Month names count from 1, day names from 0.
            return Ok(i as u32 + lo.min(1));
        }
        let v: u32 = s
            .parse()
            .map_err(|_| format!("{name}: `{s}` is not a number"))?;
        Ok(v)
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{name}: step `{s}` must be a number above 0"))?;
                (r, step)
            }
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            // `5/15` means from 5 to the end, every 15.
            (v, if step > 1 { hi } else { v })
        };
        if a < lo || b > hi || a > b {
            return Err(format!(
                "{name}: `{part}` is outside {lo}-{hi} or runs backwards"
            ));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, String> {
        let t = text.trim();
        let expanded = match t {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let f: Vec<&str> = expanded.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!(
                "schedule `{t}`: expected 5 fields (minute hour day-of-month month day-of-week), got {}",
                f.len()
            ));
        }
        let err = |e: String| format!("schedule `{t}`: {e}");
        let mut weekdays = field(f[4], "day of week", 0, 7, &DAYS).map_err(err)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1; // 7 is Sunday too
        }
        Ok(Cron {
            minutes: field(f[0], "minute", 0, 59, &[]).map_err(err)?,
            hours: field(f[1], "hour", 0, 23, &[]).map_err(err)? as u32,
            days: field(f[2], "day of month", 1, 31, &[]).map_err(err)? as u32,
            months: field(f[3], "month", 1, 12, &MONTHS).map_err(err)? as u16,
            weekdays: (weekdays & 0x7f) as u8,
            day_or: f[2] != "*" && f[4] != "*",
            text: t.to_string(),
        })
    }

    /// The first minute strictly after `after` (Unix seconds) that the schedule matches,
    /// as Unix seconds; `None` if nothing matches within five years (`0 0 31 2 *`).
    pub fn next_after(&self, after: u64) -> Option<u64> {
        let mut t = (after / 60 + 1) * 60;
        let limit = after + 5 * 366 * 86_400;
        while t <= limit {
            let (_, mo, d, h, mi, wd) = civil(t);
            if self.months & (1 << mo) == 0 {
                // Jump to the first day of the next month.
                t = start_of_next_month(t);
                continue;
            }
            let dom = self.days & (1 << d) != 0;
            let dow = self.weekdays & (1 << wd) != 0;
            let day_ok = if self.day_or { dom || dow } else { dom && dow };
            if !day_ok {
                t = (t / 86_400 + 1) * 86_400;
                continue;
            }
            if self.hours & (1 << h) == 0 {
                t = (t / 3600 + 1) * 3600;
                continue;
            }
            if self.minutes & (1 << mi) == 0 {
                t += 60;
                continue;
            }
            return Some(t);
        }
        None
    }
}

/// A job's schedule: a cron expression or a fixed period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Cron(Cron),
    /// `@every N`: every N seconds, at the multiples of N since the Unix epoch.
    Every {
        seconds: u64,
        text: String,
    },
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Schedule::Cron(c) => c.fmt(f),
            Schedule::Every { text, .. } => f.write_str(text),
        }
    }
}

/// The longest `@every` period: a year (longer ones belong in a cron expression).
const MAX_EVERY_S: u64 = 366 * 86_400;

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let t = text.trim();
        let Some(period) = t.strip_prefix("@every") else {
            return Cron::parse(t).map(Schedule::Cron);
        };
        let p = period.trim();
        let split = p.find(|c: char| !c.is_ascii_digit()).unwrap_or(p.len());
        let (num, unit) = p.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("schedule `{t}`: `@every` takes a whole number and a unit, e.g. `@every 5s`")
        })?;
        let mult = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            u => {
                return Err(format!(
                    "schedule `{t}`: unknown unit `{u}` (use s, m or h)"
                ));
            }
        };
        let seconds = n.saturating_mul(mult);
        if seconds == 0 || seconds > MAX_EVERY_S {
            return Err(format!(
                "schedule `{t}`: the period must be between 1s and 366 days"
            ));
        }
        Ok(Schedule::Every {
            seconds,
            text: t.to_string(),
        })
    }

    /// The first run strictly after `after` (Unix seconds).
    pub fn next_after(&self, after: u64) -> Option<u64> {
        match self {
            Schedule::Cron(c) => c.next_after(after),
            Schedule::Every { seconds, .. } => Some((after / seconds + 1) * seconds),
        }
    }
}

/// (year, month 1-12, day 1-31, hour, minute, weekday 0 = Sunday) of Unix seconds, UTC.
fn civil(t: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (t / 86_400) as i64;
    let secs = t % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    let wd = ((days + 4).rem_euclid(7)) as u32; // 1970-01-01 was a Thursday
    (
        y,
        m,
        d,
        (secs / 3600) as u32,
        ((secs % 3600) / 60) as u32,
        wd,
    )
}

fn start_of_next_month(t: u64) -> u64 {
    let (_, _, d, h, mi, _) = civil(t);
    // Go to the first of this month, then forward 32 days, then back to that month's first.
    let first = t - u64::from(d - 1) * 86_400 - u64::from(h) * 3600 - u64::from(mi) * 60 - t % 60;
    let later = first + 32 * 86_400;
    let (_, _, d2, _, _, _) = civil(later);
    later - u64::from(d2 - 1) * 86_400
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-12-03 05:42:00 UTC, a Thursday.
    const T: u64 = 1_796_276_520;

    #[test]
    fn civil_time_is_right() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 4));
        assert_eq!(civil(T), (2026, 12, 3, 5, 42, 4));
    }

    #[test]
    fn next_runs() {
        let every5 = Cron::parse("*/5 * * * *").unwrap();
        assert_eq!(every5.next_after(T), Some(T + 3 * 60));
        let hourly = Cron::parse("@hourly").unwrap();
        assert_eq!(hourly.next_after(T), Some(T + 18 * 60));
        // Mondays at 02:30: Monday 2026-12-07.
        let monday = Cron::parse("30 2 * * mon").unwrap();
        let next = monday.next_after(T).unwrap();
        assert_eq!(civil(next), (2026, 12, 7, 2, 30, 1));
        // New year, across the year boundary.
        let ny = Cron::parse("0 0 1 jan *").unwrap();
        assert_eq!(civil(ny.next_after(T).unwrap()), (2027, 1, 1, 0, 0, 5));
        // Day of month or day of week when both are set.
        let either = Cron::parse("0 12 15 * fri").unwrap();
        assert_eq!(civil(either.next_after(T).unwrap()).2, 4);
        // Sunday as 7.
        let sun = Cron::parse("0 0 * * 7").unwrap();
        assert_eq!(civil(sun.next_after(T).unwrap()).5, 0);
        // Never: 31 February.
        assert_eq!(Cron::parse("0 0 31 2 *").unwrap().next_after(T), None);
    }

    #[test]
    fn every_runs_at_multiples_of_its_period() {
        let s = Schedule::parse("@every 5s").unwrap();
        assert_eq!(s.next_after(T), Some(T + 5));
        assert_eq!(s.next_after(T + 4), Some(T + 5));
        assert_eq!(s.next_after(T + 5), Some(T + 10));
        assert_eq!(s.to_string(), "@every 5s");
        let m = Schedule::parse("@every 2m").unwrap();
        assert_eq!(m.next_after(T), Some(T + 120));
        assert!(matches!(
            Schedule::parse("*/5 * * * *").unwrap(),
            Schedule::Cron(_)
        ));
        for (bad, want) in [
            ("@every", "whole number"),
            ("@every 0s", "between"),
            ("@every 5d", "unknown unit"),
            ("@every x", "whole number"),
        ] {
            let e = Schedule::parse(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_schedules_are_named() {
        for (s, want) in [
            ("* * * *", "expected 5 fields"),
            ("61 * * * *", "minute"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day of month"),
            ("* * * 13 *", "month"),
            ("*/0 * * * *", "step"),
            ("x * * * *", "not a number"),
            ("5-1 * * * *", "backwards"),
        ] {
            let e = Cron::parse(s).unwrap_err();
            assert!(e.contains(want), "{s}: {e}");
        }
    }
}
