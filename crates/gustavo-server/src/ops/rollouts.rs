//! Staged rollouts and app history: `apps history`, `apps rollback`, `rollouts
//! pause|resume|abort`, and [`Ops::advance_rollouts`], the gate the rollouts controller
//! runs every second (the rules of a rollout are in `gustavo_model::rollout`).

use std::collections::HashMap;

use gustavo_model::access::{Role, Subject};
use gustavo_model::api::{App, AppRevision, Rollout};
use gustavo_model::rollout::{Note, RolloutRecord, RolloutState};
use gustavo_store::Change;

use super::apps::{Author, history_entry, shown};
use super::{OpError, Ops, hidden};
use crate::{now, now_ms};

/// What `rollouts ACTION` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutAction {
    Pause,
    Resume,
    Abort,
}

impl std::str::FromStr for RolloutAction {
    type Err = OpError;
    fn from_str(s: &str) -> Result<Self, OpError> {
        match s {
            "pause" => Ok(RolloutAction::Pause),
            "resume" => Ok(RolloutAction::Resume),
            "abort" => Ok(RolloutAction::Abort),
            other => Err(OpError::NotFound(format!(
                "no rollout action `{other}` (pause, resume, abort)"
            ))),
        }
    }
}

/// Whether `who` may change the app (the rules of `apps update`, without a spec).
fn may_write(who: &Subject, app: &App) -> Result<(), OpError> {
    if !who.can_read_app(&app.name, &app.groups) {
        return Err(hidden("app", &app.name));
    }
    if who.role == Role::Viewer || !who.can_write_app(&app.name, &app.groups) {
        return Err(OpError::Denied(format!(
            "user `{}` may not change app `{}`",
            who.name, app.name
        )));
    }
    Ok(())
}

/// The app going back to the version its rollout came from, at `rev`: what a rollback and
/// an abort both do. Devices that never left that version see no change.
fn restore_previous(app: &mut App, record: &RolloutRecord, rev: u64) {
    app.spec = record.from.spec.clone();
    app.restart_nonce = record.from.restart_nonce;
    app.digest = record.from.digest.clone();
    app.revision = rev;
    app.updated_at = now();
}

impl Ops {
    /// An app's revisions, oldest first, secrets hidden.
    pub async fn app_history(
        &self,
        who: &Subject,
        name: &str,
    ) -> Result<Vec<AppRevision>, OpError> {
        self.get_app(who, name)?;
        let store = self.shared.store.clone();
        let app = name.to_string();
        let mut h = tokio::task::spawn_blocking(move || store.history(&app))
            .await
            .map_err(|e| OpError::Internal(e.to_string()))?
            .map_err(|e| OpError::Internal(e.to_string()))?;
        for r in &mut h {
            for v in r.spec.env_vars.values_mut() {
                *v = v.redacted();
            }
        }
        Ok(h)
    }

    /// Puts an older revision's spec, groups and digest back as a new revision, on every
    /// device at once (a rollback restores a version that ran; it does not wait for waves).
    pub async fn rollback_app(
        &self,
        who: &Subject,
        name: String,
        to: Option<u64>,
    ) -> Result<App, OpError> {
        let current = self.get_app(who, &name)?;
        let store = self.shared.store.clone();
        let app_name = name.clone();
        let history = tokio::task::spawn_blocking(move || store.history(&app_name))
            .await
            .map_err(|e| OpError::Internal(e.to_string()))?
            .map_err(|e| OpError::Internal(e.to_string()))?;
        let target = match to {
            Some(rev) => history.iter().find(|r| r.revision == rev).ok_or_else(|| {
                OpError::NotFound(format!(
                    "app `{name}` has no revision {rev} in its history (see `gustavo apps history {name}`)"
                ))
            })?,
            // The newest older revision that differs from what runs now.
            None => history
                .iter()
                .rev()
                .filter(|r| r.revision < current.revision)
                .find(|r| r.spec != current.spec || r.digest != current.digest)
                .ok_or_else(|| {
                    OpError::Conflict(format!(
                        "app `{name}` has no earlier revision to go back to"
                    ))
                })?,
        }
        .clone();
        if target.revision == current.revision {
            return Err(OpError::Conflict(format!(
                "revision {} is the current revision of app `{name}`",
                target.revision
            )));
        }
        let author = Author {
            who: who.name.clone(),
            staged: false,
            outcome: Some(format!("applied (rollback to {})", target.revision)),
        };
        let who = who.clone();
        let policies = self.sec.policies();
        let app = self
            .change_app(name, author, move |app| {
                may_write(&who, app)?;
                gustavo_model::access::check_spec(
                    &target.spec,
                    &target.groups,
                    &policies,
                    who.is_admin(),
                )
                .map_err(OpError::Denied)?;
                app.spec = target.spec.clone();
                app.groups = target.groups.clone();
                app.digest = target.digest.clone();
                app.digest_error = None;
                Ok(())
            })
            .await?;
        self.shared.events.push(
            "rollout",
            format!("app:{}", app.name),
            format!(
                "{} rolled back to revision {to} (revision {})",
                app.name,
                app.revision,
                to = to.map_or("before".into(), |t| t.to_string())
            ),
        );
        Ok(shown(&app))
    }

    /// Pause, resume or abort an app's staged rollout. Abort puts the version the rollout
    /// came from back on every device.
    pub async fn rollout_action(
        &self,
        who: &Subject,
        name: String,
        action: RolloutAction,
    ) -> Result<Rollout, OpError> {
        let who_c = who.clone();
        let by = who.name.clone();
        let app_name = name.clone();
        let (app, note) = self
            .shared
            .mutate(move |c, rev| {
                let old = c
                    .apps
                    .get(&app_name)
                    .filter(|a| who_c.can_read_app(&a.name, &a.groups))
                    .ok_or_else(|| hidden("app", &app_name))?;
                may_write(&who_c, old)?;
                let mut app = old.clone();
                let Some(record) = app.rollout.as_mut() else {
                    return Err(OpError::Conflict(format!(
                        "app `{app_name}` has no staged rollout (add a rollout: block to its spec)"
                    )));
                };
                let t = now_ms();
                let mut changes = Vec::new();
                let note = match action {
                    RolloutAction::Pause => {
                        record.pause(t).map_err(OpError::Conflict)?;
                        "paused"
                    }
                    RolloutAction::Resume => {
                        record.resume(t).map_err(OpError::Conflict)?;
                        "resumed"
                    }
                    RolloutAction::Abort => {
                        if !record.state.is_active() {
                            return Err(OpError::Conflict(format!(
                                "the rollout of app `{app_name}` is {}; nothing to abort",
                                record.state.as_str()
                            )));
                        }
                        record.state = RolloutState::Aborted;
                        record.reason = Some(format!("aborted by {by}"));
                        record.updated_at = t;
                        let record = record.clone();
                        changes.push(Change::RevisionOutcome {
                            app: app.name.clone(),
                            revision: record.to_revision,
                            outcome: "aborted".into(),
                        });
                        restore_previous(&mut app, &record, rev);
                        changes.push(history_entry(
                            &app,
                            &by,
                            &format!("applied (abort of {})", record.to_revision),
                        ));
                        changes.extend(c.touch_groups(&app.groups, rev));
                        "aborted; the previous revision is back on every device"
                    }
                };
                changes.push(Change::PutApp(Box::new(app.clone())));
                Ok((changes, (app, note)))
            })
            .await?;
        self.shared.events.push(
            "rollout",
            format!("app:{}", app.name),
            format!("{}: rollout {note} (by {})", app.name, who.name),
        );
        self.shared
            .read()
            .rollout(&name, now())
            .ok_or_else(|| hidden("app", &name))
    }

    /// One pass of the rollout gate: every progressing rollout looks at its devices and
    /// moves (a device done or failed, a wave over, the next wave, a halt, a rollback).
    /// `ready_since` is the gate's memory of when each device was first seen ready, per app.
    pub async fn advance_rollouts(&self, ready_since: &mut HashMap<String, HashMap<String, u64>>) {
        let t = now_ms();
        let moves: Vec<(String, u64, RolloutRecord, Vec<Note>)> = {
            let c = self.shared.read();
            let mut out = Vec::new();
            for app in c.apps.values() {
                let Some(r) = app
                    .rollout
                    .as_ref()
                    .filter(|r| r.state == RolloutState::Progressing)
                else {
                    continue;
                };
                let seen = ready_since.entry(app.name.clone()).or_default();
                let devices = c.rollout_devices(app, r, t, seen, &self.shared.sched);
                let mut next = r.clone();
                let notes = next.step(&devices, t);
                if next != *r {
                    out.push((app.name.clone(), app.revision, next, notes));
                }
            }
            out
        };
        ready_since.retain(|name, _| self.shared.read().apps.contains_key(name));
        for (name, seen_revision, next, notes) in moves {
            let app_name = name.clone();
            let record = next.clone();
            let committed = self
                .shared
                .mutate(move |c, rev| {
                    // Someone changed the app meanwhile: its new rollout is judged next tick.
                    let Some(old) = c
                        .apps
                        .get(&app_name)
                        .filter(|a| a.revision == seen_revision)
                    else {
                        return Ok((Vec::new(), false));
                    };
                    let mut app = old.clone();
                    let before = old.rollout.as_ref();
                    let mut changes = Vec::new();
                    // Devices see a new desired state only when the admitted set or the
                    // outcome changes; a device done or a pause starting is bookkeeping.
                    let moved_devices = before.map(|b| &b.admitted) != Some(&record.admitted)
                        || !record.state.is_active();
                    match record.state {
                        RolloutState::RolledBack => {
                            changes.push(Change::RevisionOutcome {
                                app: app.name.clone(),
                                revision: record.to_revision,
                                outcome: "rolled back".into(),
                            });
                            restore_previous(&mut app, &record, rev);
                            changes.push(history_entry(
                                &app,
                                "rollout",
                                &format!("applied (automatic rollback of {})", record.to_revision),
                            ));
                        }
                        RolloutState::Completed => changes.push(Change::RevisionOutcome {
                            app: app.name.clone(),
                            revision: record.to_revision,
                            outcome: "completed".into(),
                        }),
                        RolloutState::Halted => changes.push(Change::RevisionOutcome {
                            app: app.name.clone(),
                            revision: record.to_revision,
                            outcome: "halted".into(),
                        }),
                        _ => {}
                    }
                    app.rollout = Some(record);
                    if moved_devices {
                        app.revision = rev;
                        app.updated_at = now();
                    }
                    changes.push(Change::PutApp(Box::new(app)));
                    Ok((changes, true))
                })
                .await;
            if !matches!(committed, Ok(true)) {
                continue;
            }
            for n in notes {
                self.shared.events.push(
                    "rollout",
                    format!("app:{name}"),
                    n.describe(&name, next.to_revision),
                );
            }
        }
    }
}
