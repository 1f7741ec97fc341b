//! Rollout counts kept between looks.
//!
//! [`crate::state::Cluster::rollout_summary`] is asked by every `apps … --wait` (up to every
//! 50 ms), by the rollout-events controller each second and by dashboards. Counting from
//! scratch visits every member node and its status report — ~25 ms at 100,000 nodes, most
//! of it a cache miss per node. Here an app's counts are kept from one look to the next: a
//! look recounts only the nodes whose status report changed since the last one, and counts
//! from scratch only when what decides who is a member may have changed (the caller's
//! `key`: the app's revision, groups and placements, and every node's groups).
//!
//! A changed report marks its node ([`RolloutCounts::mark`]) in the counts of the apps it
//! names before or after the change — and in those of every app followed after its
//! deletion, whose count also reads the node's applied revision.
//!
//! No count depends on a mark being exact. A node is marked after its new report is in
//! place, a look takes the marks before it reads any report, and a marked node is recounted
//! from what its report says then, not from what changed. So a mark racing a look is
//! recounted by the next look (whose waiter the same report wakes), and a needless mark
//! costs only a lookup.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// What one member node adds to its app's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Part {
    pub converged: bool,
    pub failed: bool,
}

/// Counts an app's rollout as `(total, converged, failed)` members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub total: usize,
    pub converged: usize,
    pub failed: usize,
}

/// How long an app's counts are kept without anyone looking (dropped by
/// [`RolloutCounts::forget_unlooked`], or when another app is first looked at).
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// The kept counts of the apps someone looks at.
#[derive(Default)]
pub struct RolloutCounts {
    watches: RwLock<Watches>,
}

/// Sets and maps by node or app name (hashed with foldhash: marking is on every report's
/// path).
type Fast = foldhash::fast::RandomState;

#[derive(Default)]
struct Watches {
    by_app: HashMap<String, Arc<Watch>, Fast>,
    /// Those marked by every report (apps followed after their deletion).
    every_report: HashMap<String, Arc<Watch>, Fast>,
}

#[derive(Default)]
struct Watch {
    /// Nodes whose report changed since the last look.
    marked: Mutex<HashSet<String, Fast>>,
    counted: Mutex<Counted>,
}

#[derive(Default)]
struct Counted {
    /// What the members were counted under; none: never counted.
    key: Option<u64>,
    /// The parts that add something, by node.
    parts: HashMap<String, Part, Fast>,
    counts: Counts,
    looked: Option<Instant>,
}

impl Watch {
    fn mark(&self, node: &str) {
        let mut marked = lock(&self.marked);
        if !marked.contains(node) {
            marked.insert(node.to_owned());
        }
    }

    fn unlooked(&self, now: Instant) -> bool {
        lock(&self.counted)
            .looked
            .is_none_or(|t| now.saturating_duration_since(t) >= FORGET_AFTER)
    }
}

impl Counted {
    fn set(&mut self, node: &str, part: Part) {
        let old = if part == Part::default() {
            self.parts.remove(node).unwrap_or_default()
        } else {
            match self.parts.get_mut(node) {
                Some(p) => std::mem::replace(p, part),
                None => {
                    self.parts.insert(node.to_owned(), part);
                    Part::default()
                }
            }
        };
        let c = &mut self.counts;
        c.converged = c.converged + usize::from(part.converged) - usize::from(old.converged);
        c.failed = c.failed + usize::from(part.failed) - usize::from(old.failed);
    }
}

/// Adds to `into` the apps `report` names and `into` lacks: its apps' statuses and its
/// containers' apps (what [`RolloutCounts::mark`] is told of a whole report, before and
/// after it). Each name once: a report names an app once for its status and once per
/// container, and mostly the same apps before and after, and every copy is made on every
/// report's path.
pub fn named_apps(report: &gustavo_model::api::StatusReport, into: &mut Vec<String>) {
    let apps = report.apps.iter().map(|a| &a.app);
    add_new(apps.chain(report.containers.iter().map(|c| &c.app)), into);
}

/// The apps a report delta changes: those it replaces and those it brings (the rest of the
/// report stays as it was), each once.
pub fn delta_apps(delta: &gustavo_model::api::ReportDelta, into: &mut Vec<String>) {
    let brought = delta.apps.iter().map(|a| &a.app);
    let brought = brought.chain(delta.containers.iter().map(|c| &c.app));
    add_new(delta.changed.iter().chain(brought), into);
}

/// A node runs a few apps: a look along the list is cheaper than a set.
fn add_new<'a>(names: impl Iterator<Item = &'a String>, into: &mut Vec<String>) {
    for name in names {
        if !into.contains(name) {
            into.push(name.clone());
        }
    }
}

impl Watches {
    fn forget_unlooked(&mut self, now: Instant) {
        self.by_app.retain(|_, w| !w.unlooked(now));
        self.every_report.retain(|_, w| !w.unlooked(now));
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RolloutCounts {
    /// `node`'s status report has changed, and `apps` are the apps it names before or after
    /// the change (its apps' statuses and its containers' apps). Call after the new report
    /// is in place, before waking whoever waits on reports.
    pub fn mark<'a>(&self, node: &str, apps: impl IntoIterator<Item = &'a str>) {
        let watches = self.read();
        if watches.by_app.is_empty() {
            return;
        }
        for app in apps {
            if let Some(w) = watches.by_app.get(app) {
                w.mark(node);
            }
        }
        for w in watches.every_report.values() {
            w.mark(node);
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Watches> {
        self.watches.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Watches> {
        self.watches.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The counts of `app`. `key` must change whenever the set of members may have;
    /// `members` lists them (walked only to count from scratch), `is_member` says whether
    /// one node is one, and `part` is what one member node's report adds now. With
    /// `every_report`, `part` reads more of a report than its mentions of the app (a
    /// deleted app's count reads the applied revision): every report marks it.
    pub fn count<'a>(
        &self,
        app: &str,
        key: u64,
        every_report: bool,
        members: impl Iterator<Item = &'a str>,
        is_member: impl Fn(&str) -> bool,
        part: impl Fn(&str) -> Part,
    ) -> Counts {
        let now = Instant::now();
        let watch = self.watch(app, now);
        if self.read().every_report.contains_key(app) != every_report {
            // Before the count: a report from here on marks it. (Switching changes `key`,
            // so this look counts from scratch.)
            let mut all = self.write();
            if every_report {
                all.every_report.insert(app.to_owned(), watch.clone());
            } else {
                all.every_report.remove(app);
            }
        }
        let mut c = lock(&watch.counted);
        c.looked = Some(now);
        if c.key != Some(key) {
            // Marks made from here on are taken by the next look.
            lock(&watch.marked).clear();
            *c = Counted {
                key: Some(key),
                looked: Some(now),
                ..Counted::default()
            };
            for node in members {
                c.counts.total += 1;
                c.set(node, part(node));
            }
        } else {
            let marked = std::mem::take(&mut *lock(&watch.marked));
            for node in marked {
                if is_member(&node) {
                    c.set(&node, part(&node));
                }
            }
        }
        c.counts
    }

    fn watch(&self, app: &str, now: Instant) -> Arc<Watch> {
        if let Some(w) = self.read().by_app.get(app) {
            return w.clone();
        }
        let mut all = self.write();
        all.forget_unlooked(now);
        all.by_app.entry(app.to_owned()).or_default().clone()
    }

    /// Drops the counts no one looked at for a minute (so reports stop marking them and
    /// their memory, up to a name per member node, goes).
    pub fn forget_unlooked(&self) {
        self.forget_unlooked_at(Instant::now());
    }

    fn forget_unlooked_at(&self, now: Instant) {
        if self.read().by_app.values().any(|w| w.unlooked(now)) {
            self.write().forget_unlooked(now);
        }
    }

    /// The member nodes counted as failed at the last look at `app`, in name order.
    pub fn failed(&self, app: &str) -> Vec<String> {
        let Some(w) = self.read().by_app.get(app).cloned() else {
            return Vec::new();
        };
        let mut failed: Vec<String> = (lock(&w.counted).parts.iter())
            .filter(|(_, p)| p.failed)
            .map(|(n, _)| n.clone())
            .collect();
        failed.sort();
        failed
    }

    /// How many apps' counts are kept.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.read().by_app.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names already there, and names twice, are copied once.
    #[test]
    fn names_are_taken_once() {
        let delta = gustavo_model::api::ReportDelta {
            changed: vec!["a".into(), "b".into(), "a".into(), "c".into()],
            ..Default::default()
        };
        let mut named = vec!["b".to_string()];
        delta_apps(&delta, &mut named);
        assert_eq!(named, ["b", "a", "c"]);
    }

    #[test]
    fn a_look_recounts_marked_members_only() {
        let counts = RolloutCounts::default();
        let reports: Mutex<HashMap<&str, Part>> = Mutex::new(HashMap::new());
        let part = |n: &str| lock(&reports).get(n).copied().unwrap_or_default();
        let members = ["a", "b", "c"];
        let look = |key| {
            let is_member = |n: &str| members.contains(&n);
            counts.count("app", key, false, members.iter().copied(), is_member, part)
        };
        assert_eq!(
            look(1),
            Counts {
                total: 3,
                converged: 0,
                failed: 0
            }
        );
        let done = Part {
            converged: true,
            failed: false,
        };
        lock(&reports).insert("a", done);
        // Not marked: not seen yet.
        assert_eq!(look(1).converged, 0);
        counts.mark("a", ["other-app"]);
        assert_eq!(look(1).converged, 0, "marked for another app's counts only");
        counts.mark("a", ["app"]);
        counts.mark("zz", ["app"]); // not a member: ignored
        assert_eq!(look(1).converged, 1);
        lock(&reports).insert(
            "a",
            Part {
                converged: false,
                failed: true,
            },
        );
        counts.mark("a", ["app"]);
        let c = look(1);
        assert_eq!((c.converged, c.failed), (0, 1));
        assert_eq!(counts.failed("app"), ["a"]);
        assert!(counts.failed("other").is_empty());
        // A new key counts from scratch, marks or not.
        lock(&reports).insert("b", done);
        let c = look(2);
        assert_eq!((c.total, c.converged, c.failed), (3, 1, 1));
        assert_eq!(counts.kept(), 1);
        // Kept while looked at, forgotten a minute after the last look.
        counts.forget_unlooked();
        assert_eq!(counts.kept(), 1);
        counts.forget_unlooked_at(Instant::now() + FORGET_AFTER);
        assert_eq!(counts.kept(), 0);
    }
}
