//! A node's status report and what changed in it between two sends ([`ReportDelta`]).
//!
//! On a stream the agent's lines arrive in order, so after the first report it may send
//! only the apps whose status or containers changed. The server applies a delta only on
//! top of the very report it was computed from (the agent names that report's request);
//! otherwise it drops the delta and asks for the whole report again, so a lost or
//! reordered line can leave the server's copy stale for a round trip but never wrong.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::{AppStatus, ContainerStatus, ReportDelta, StatusReport};

/// Puts `r` in the order deltas keep: apps by name, containers by app then name.
pub fn canonical(r: &mut StatusReport) {
    r.apps.sort_by(|a, b| a.app.cmp(&b.app));
    r.containers
        .sort_by(|a, b| (&a.app, &a.name).cmp(&(&b.app, &b.name)));
}

/// One app's part of a report: its status and its containers.
type Part<'a> = (Option<&'a AppStatus>, Vec<&'a ContainerStatus>);

fn parts(r: &StatusReport) -> BTreeMap<&str, Part<'_>> {
    let mut by_app: BTreeMap<&str, Part<'_>> = BTreeMap::new();
    for a in &r.apps {
        by_app.entry(&a.app).or_default().0 = Some(a);
    }
    for c in &r.containers {
        by_app.entry(&c.app).or_default().1.push(c);
    }
    by_app
}

/// What changed from `before` to `after`, as a delta on the report sent with request
/// `base`: every app whose status or containers differ (or that appeared or went).
pub fn delta(before: &StatusReport, after: &StatusReport, base: u64) -> ReportDelta {
    let (was, is) = (parts(before), parts(after));
    let names: BTreeSet<&str> = was.keys().chain(is.keys()).copied().collect();
    let mut d = ReportDelta {
        base,
        applied_revision: after.applied_revision,
        jobs: after.jobs.clone(),
        ..ReportDelta::default()
    };
    for name in names {
        let now = is.get(name);
        if was.get(name) == now {
            continue;
        }
        d.changed.push(name.to_string());
        if let Some((status, containers)) = now {
            d.apps.extend(status.map(|s| (*s).clone()));
            d.containers.extend(containers.iter().map(|c| (*c).clone()));
        }
    }
    d
}

/// Applies `d` to `r`: the apps it names are replaced by what it carries.
pub fn apply(r: &mut StatusReport, d: ReportDelta) {
    let changed: BTreeSet<&str> = d.changed.iter().map(String::as_str).collect();
    r.apps.retain(|a| !changed.contains(a.app.as_str()));
    r.containers.retain(|c| !changed.contains(c.app.as_str()));
    r.apps.extend(d.apps);
    r.containers.extend(d.containers);
    r.applied_revision = d.applied_revision;
    r.jobs = d.jobs;
    canonical(r);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AppState;

    fn app(name: &str, revision: u64, ready: u32) -> AppStatus {
        AppStatus {
            app: name.into(),
            revision,
            state: AppState::Running,
            ready,
            desired: ready,
            error: None,
        }
    }

    fn container(app: &str, name: &str, id: &str) -> ContainerStatus {
        ContainerStatus {
            app: app.into(),
            name: name.into(),
            id: id.into(),
            image: "reg/x:1".into(),
            state: "running".into(),
            health: None,
            since: 1,
            exit_code: None,
            restarts: 0,
            error: None,
        }
    }

    fn report(
        revision: u64,
        apps: Vec<AppStatus>,
        containers: Vec<ContainerStatus>,
    ) -> StatusReport {
        let mut r = StatusReport {
            applied_revision: revision,
            apps,
            containers,
            jobs: Vec::new(),
        };
        canonical(&mut r);
        r
    }

    /// Applying the delta between two reports to the first gives the second, whatever
    /// changed: an app updated, one added, one removed, a container without app status.
    #[test]
    fn applying_the_delta_gives_the_later_report() {
        let before = report(
            4,
            vec![app("web", 4, 2), app("db", 2, 1), app("old", 1, 1)],
            vec![
                container("web", "web-0", "a"),
                container("web", "web-1", "b"),
                container("db", "db-0", "c"),
                container("old", "old-0", "d"),
                container("stray", "stray-0", "e"),
            ],
        );
        let after = report(
            5,
            vec![app("web", 5, 2), app("db", 2, 1), app("new", 5, 1)],
            vec![
                container("new", "new-0", "f"),
                container("web", "web-1", "g"),
                container("web", "web-0", "h"),
                container("db", "db-0", "c"),
            ],
        );
        let d = delta(&before, &after, 7);
        assert_eq!(d.base, 7);
        assert_eq!(d.changed, ["new", "old", "stray", "web"]);
        assert!(d.apps.iter().all(|a| a.app != "db"), "db did not change");
        let mut got = before.clone();
        apply(&mut got, d);
        assert_eq!(got, after);
    }

    /// Nothing changed but the revision: the delta names no app and moves the revision.
    #[test]
    fn an_unchanged_report_is_an_empty_delta() {
        let r = report(
            3,
            vec![app("web", 3, 1)],
            vec![container("web", "web-0", "a")],
        );
        let mut later = r.clone();
        later.applied_revision = 4;
        let d = delta(&r, &later, 1);
        assert!(d.changed.is_empty() && d.apps.is_empty() && d.containers.is_empty());
        let mut got = r.clone();
        apply(&mut got, d);
        assert_eq!(got, later);
    }

    /// A delta of one app among many carries that app only: its size does not grow with
    /// what else the node runs.
    #[test]
    fn a_delta_carries_only_what_changed() {
        let many = |rev_of_a0: u64| {
            report(
                9,
                (0..20)
                    .map(|i| app(&format!("a{i}"), if i == 0 { rev_of_a0 } else { 1 }, 1))
                    .collect(),
                (0..20)
                    .map(|i| container(&format!("a{i}"), &format!("a{i}-0"), "x"))
                    .collect(),
            )
        };
        let d = delta(&many(1), &many(2), 1);
        assert_eq!(d.changed, ["a0"]);
        assert_eq!((d.apps.len(), d.containers.len()), (1, 1));
        let full = serde_json::to_vec(&many(2)).unwrap().len();
        let small = serde_json::to_vec(&d).unwrap().len();
        assert!(small * 10 < full, "{small} vs {full}");
    }
}
