//! `--wait`: follow an app's rollout until every device of its groups runs it, showing
//! progress; fail with the failing devices and their errors.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Result;
use gustavo_client::Client;
use gustavo_model::api::{NodeStatus, Rollout};
use indicatif::{ProgressBar, ProgressStyle};

use crate::Exit;

fn describe_failures(r: &Rollout) -> String {
    let mut lines = Vec::new();
    for n in r.nodes.iter().filter(|n| !n.converged) {
        let why = match (&n.error, n.node_status, n.state) {
            (Some(e), _, _) => e.clone(),
            (None, NodeStatus::Offline, _) => "device offline".into(),
            (None, _, Some(s)) => format!("{s:?} ({}/{} ready)", n.ready, n.desired).to_lowercase(),
            (None, _, None) => "no report for this revision yet".into(),
        };
        lines.push(format!("  {}: {why}", n.node));
    }
    lines.join("\n")
}

/// Whether following can go on after this error: the server is unreachable (restarting)
/// or says it is briefly unavailable.
fn reconnectable(e: &gustavo_client::ClientError) -> bool {
    match e {
        gustavo_client::ClientError::Unreachable { .. } => true,
        gustavo_client::ClientError::Api { status, .. } => matches!(status, 502..=504),
        _ => false,
    }
}

fn say(bar: &Option<ProgressBar>, line: &str) {
    match bar {
        Some(b) => b.println(line),
        None => eprintln!("{line}"),
    }
}

/// Waits for `app` to converge. `verb` says what is awaited ("running", "deleted").
pub async fn wait(client: &Client, app: &str, verb: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let bar = if tty {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {pos}/{len} devices ({elapsed})",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        );
        b.enable_steady_tick(Duration::from_millis(120));
        b.set_message(format!("{app}: waiting for devices"));
        Some(b)
    } else {
        None
    };
    let mut last_printed = None;
    // The offline devices the wait was last said to hang on.
    let mut said_offline: Vec<String> = Vec::new();
    // The server answers as soon as the rollout moves (a long-poll), so a change is seen the
    // moment the last device reports it, with no polling delay.
    let mut seen = None;
    // Set while the server cannot be reached: the next retry's delay.
    let mut lost: Option<Duration> = None;
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        let r = match client
            .rollout_wait(app, seen, left.min(Duration::from_secs(30)))
            .await
        {
            Ok(r) => {
                if lost.take().is_some() {
                    say(&bar, &format!("{app}: reconnected to the server"));
                }
                r
            }
            // The server restarting mid-rollout does not stop the rollout: the devices
            // carry on, so keep following until the timeout.
            Err(e) if reconnectable(&e) && start.elapsed() < timeout => {
                let delay = *lost.get_or_insert(Duration::from_millis(250));
                if delay == Duration::from_millis(250) {
                    say(&bar, &format!("{app}: {e}; retrying until the timeout"));
                }
                tokio::time::sleep(delay.min(left)).await;
                lost = Some((delay * 2).min(Duration::from_secs(5)));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        seen = Some(r.converged_count());
        let (done, total) = (r.converged_count(), r.nodes.len());
        if let Some(b) = &bar {
            b.set_length(total as u64);
            b.set_position(done as u64);
        } else if last_printed != Some(done) && done != total {
            // Progress only: the final count is printed once, below, with the revision.
            eprintln!("{app}: {done}/{total} devices {verb}");
            last_printed = Some(done);
        }
        if done == total {
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            if total == 0 {
                eprintln!("warning: no device is in the app's groups yet; nothing to wait for");
            } else {
                eprintln!(
                    "{app}: {done}/{total} devices {verb} (revision {}, {:.1}s)",
                    r.revision,
                    start.elapsed().as_secs_f64()
                );
            }
            return Ok(());
        }
        // Devices that are offline get the change when they return, which may be long
        // after the timeout: said once, so the wait is not a mystery.
        let offline: Vec<String> = r
            .nodes
            .iter()
            .filter(|n| !n.converged && n.node_status == gustavo_model::api::NodeStatus::Offline)
            .map(|n| n.node.clone())
            .collect();
        if !offline.is_empty() && offline != said_offline {
            say(
                &bar,
                &format!(
                    "{app}: waiting for offline device(s) {} (they take it when they return; \
                     --timeout ends the wait, the change stays)",
                    offline.join(", ")
                ),
            );
            said_offline = offline;
        }
        let failed: Vec<_> = r.failed().collect();
        if !failed.is_empty() || start.elapsed() >= timeout {
            if let Some(b) = bar {
                b.abandon();
            }
            let why = if failed.is_empty() {
                format!("timed out after {}s", timeout.as_secs())
            } else {
                format!("{} device(s) failed; they keep retrying", failed.len())
            };
            return Err(Exit(
                1,
                format!(
                    "{app}: {why}: {done}/{total} devices {verb}\n{}",
                    describe_failures(&r)
                ),
            )
            .into());
        }
    }
}

/// Follows a staged rollout wave by wave until it completes (then waits for every device
/// to run the settled revision), and fails naming devices and errors when it halts, rolls
/// back or is aborted. A manual pause is reported once and waited through.
pub async fn wait_staged(client: &Client, app: &str, timeout: Duration) -> Result<()> {
    use gustavo_model::rollout::RolloutState;
    let start = Instant::now();
    let mut last_line = String::new();
    let mut lost = false;
    loop {
        let r = match client.rollout(app).await {
            Ok(r) => {
                lost = false;
                r
            }
            Err(e) if reconnectable(&e) && start.elapsed() < timeout => {
                if !lost {
                    eprintln!("{app}: {e}; retrying until the timeout");
                    lost = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let Some(st) = &r.staged else {
            // Not staged (any more): an ordinary convergence.
            return wait(
                client,
                app,
                "running",
                timeout.saturating_sub(start.elapsed()),
            )
            .await;
        };
        let rec = &st.record;
        let count = |s: &str| st.devices.iter().filter(|d| d.state == s).count();
        let line = format!(
            "{app}: revision {} {}, wave {}: {}/{} devices done, {} updating, {} failed",
            rec.to_revision,
            rec.state.as_str(),
            rec.wave,
            count("done"),
            st.devices.len(),
            count("updating"),
            count("failed")
        );
        if line != last_line {
            eprintln!("{line}");
            if rec.state == RolloutState::Paused {
                eprintln!("{app}: paused; `gustavo rollouts resume {app}` starts the next wave");
            }
            last_line = line;
        }
        match rec.state {
            RolloutState::Completed => {
                return wait(
                    client,
                    app,
                    "running",
                    timeout.saturating_sub(start.elapsed()),
                )
                .await;
            }
            RolloutState::RolledBack | RolloutState::Halted | RolloutState::Aborted => {
                let failed: Vec<String> = rec
                    .failed
                    .iter()
                    .map(|(d, e)| format!("  {d}: {e}"))
                    .collect();
                let what = match rec.state {
                    RolloutState::RolledBack => format!(
                        "rollout of revision {} halted and rolled back to revision {}",
                        rec.to_revision, rec.from.revision
                    ),
                    RolloutState::Halted => format!(
                        "rollout of revision {} halted (no automatic rollback): devices stay \
                         where they are until `gustavo rollouts resume|abort {app}`",
                        rec.to_revision
                    ),
                    _ => format!("rollout of revision {} was aborted", rec.to_revision),
                };
                return Err(Exit(1, format!("{app}: {what}\n{}", failed.join("\n"))).into());
            }
            _ => {}
        }
        if start.elapsed() >= timeout {
            return Err(Exit(
                1,
                format!(
                    "{app}: timed out after {}s; the rollout goes on ({})",
                    timeout.as_secs(),
                    rec.state.as_str()
                ),
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
