//! Login throttling: failed password attempts are counted per user name and per client
//! address over a sliding window; past the limit, logins from that user or address are
//! refused with `429` and `Retry-After` before any password is hashed, so a flood costs the
//! server a map lookup, not an argon2 run.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Failures allowed per user name in one window.
pub const PER_USER: usize = 5;
/// Failures allowed per client address in one window.
pub const PER_ADDRESS: usize = 20;
/// The window, in seconds.
pub const WINDOW_S: u64 = 60;
/// Bounds memory under a flood of distinct names: past it, the oldest keys are dropped.
const MAX_KEYS: usize = 100_000;

#[derive(Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, VecDeque<u64>>>,
}

impl LoginLimiter {
    fn key_user(user: &str) -> String {
        format!("u:{user}")
    }
    fn key_addr(addr: &str) -> String {
        format!("a:{addr}")
    }

    /// `Some(seconds to wait)` when this user or address has failed too often lately.
    pub fn check(&self, user: &str, addr: &str, now: u64) -> Option<u64> {
        let mut m = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait = None;
        for (key, limit) in [
            (Self::key_user(user), PER_USER),
            (Self::key_addr(addr), PER_ADDRESS),
        ] {
            if let Some(q) = m.get_mut(&key) {
                while q.front().is_some_and(|t| t + WINDOW_S <= now) {
                    q.pop_front();
                }
                if q.len() >= limit {
                    let until = q.front().map(|t| t + WINDOW_S).unwrap_or(now);
                    wait = Some(wait.unwrap_or(0).max(until.saturating_sub(now).max(1)));
                }
            }
        }
        wait
    }

    pub fn failed(&self, user: &str, addr: &str, now: u64) {
        let mut m = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_KEYS {
            m.retain(|_, q| q.back().is_some_and(|t| t + WINDOW_S > now));
            if m.len() >= MAX_KEYS {
                m.clear();
            }
        }
        for key in [Self::key_user(user), Self::key_addr(addr)] {
            m.entry(key).or_default().push_back(now);
        }
    }

    /// A successful login clears the user's count (not the address's).
    pub fn succeeded(&self, user: &str) {
        let mut m = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(&Self::key_user(user));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttles_per_user_then_recovers() {
        let l = LoginLimiter::default();
        for _ in 0..PER_USER {
            assert_eq!(l.check("ann", "1.1.1.1", 100), None);
            l.failed("ann", "1.1.1.1", 100);
        }
        assert_eq!(l.check("ann", "2.2.2.2", 110), Some(50));
        assert_eq!(l.check("bob", "1.1.1.1", 110), None);
        assert_eq!(l.check("ann", "1.1.1.1", 160), None);
    }

    #[test]
    fn throttles_per_address() {
        let l = LoginLimiter::default();
        for i in 0..PER_ADDRESS {
            l.failed(&format!("u{i}"), "9.9.9.9", 5);
        }
        assert!(l.check("new", "9.9.9.9", 6).is_some());
        assert!(l.check("new", "8.8.8.8", 6).is_none());
    }
}
