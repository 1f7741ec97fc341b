//! Apps: list, get, create, update, start/stop/restart, delete.

use std::collections::BTreeMap;

use gustavo_model::access::{GroupPolicy, Role, Subject, check_spec};
use gustavo_model::api::{App, AppRevision, CreateApp, UpdateApp};
use gustavo_model::rollout::{Previous, RolloutRecord};
use gustavo_model::spec::{self, AppSpec, EnvValue};
use gustavo_store::Change;

use super::{OpError, Ops, check_name, hidden};
use crate::now;

/// What an app action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
}

impl std::str::FromStr for Action {
    type Err = OpError;
    fn from_str(s: &str) -> Result<Action, OpError> {
        match s {
            "start" => Ok(Action::Start),
            "stop" => Ok(Action::Stop),
            "restart" => Ok(Action::Restart),
            other => Err(OpError::NotFound(format!("no app action `{other}`"))),
        }
    }
}

/// An app as people see it: secret env values replaced by `{hidden: true}`.
pub fn shown(app: &App) -> App {
    let mut out = app.clone();
    for v in out.spec.env_vars.values_mut() {
        *v = v.redacted();
    }
    out
}

/// Secrets come in as `{secret: VALUE}`; the sealed and hidden forms are the server's own
/// and are refused as input (a hidden value sent back would replace the secret with nothing,
/// a sealed one copied from elsewhere must not be accepted).
fn check_env_input(spec: &AppSpec) -> Result<(), OpError> {
    for (k, v) in &spec.env_vars {
        if matches!(v, EnvValue::Sealed(_) | EnvValue::Hidden) {
            return Err(OpError::BadRequest(format!(
                "env var `{k}`: give the secret's value as {{secret: VALUE}}"
            )));
        }
    }
    Ok(())
}

/// The device groups of a request, by the format's rules (names, at most
/// [`spec::MAX_GROUPS`]), without duplicates, order kept.
pub(crate) fn check_groups(groups: &[String]) -> Result<Vec<String>, OpError> {
    spec::validate_groups(groups).map_err(OpError::BadRequest)
}

/// The format's rules, again, on the spec about to be stored: parsing applied them, and
/// this keeps them applied whatever built the spec (a raw JSON request included).
fn check_spec_rules(spec: &AppSpec) -> Result<(), OpError> {
    spec.validate()
        .map_err(|e| OpError::BadRequest(format!("invalid app spec: {e}")))
}

/// Whether `who` may change an app attached to `old` groups so it ends up on `new`: `rw`
/// on the app, and `rw` on every device group it joins or leaves (moving work onto or off
/// a group is a change to that group). Then the dangerous fields and image allowlists of
/// the groups it ends up on.
fn may_change_app(
    who: &Subject,
    name: &str,
    old: &[String],
    new: &[String],
    spec: &AppSpec,
    policies: &BTreeMap<String, GroupPolicy>,
) -> Result<(), OpError> {
    if who.role == Role::Viewer {
        return Err(OpError::Forbidden(
            "change apps (the viewer role only reads)",
        ));
    }
    if !old.is_empty() && !who.can_write_app(name, old) {
        return Err(OpError::Denied(format!(
            "user `{}` has no rw grant on app `{name}`",
            who.name
        )));
    }
    for g in old
        .iter()
        .filter(|g| !new.contains(g))
        .chain(new.iter().filter(|g| !old.contains(g)))
    {
        if !who.can_write_group(g) {
            return Err(OpError::Denied(format!(
                "user `{}` has no rw grant on device group `{g}`",
                who.name
            )));
        }
    }
    check_spec(spec, new, policies, who.is_admin()).map_err(OpError::Denied)
}

impl Ops {
    /// The apps `who` may see, secrets hidden.
    pub fn list_apps(&self, who: &Subject) -> Vec<App> {
        self.shared
            .read()
            .apps
            .values()
            .filter(|a| who.can_read_app(&a.name, &a.groups))
            .map(shown)
            .collect()
    }

    pub fn get_app(&self, who: &Subject, name: &str) -> Result<App, OpError> {
        self.shared
            .read()
            .apps
            .get(name)
            .filter(|a| who.can_read_app(&a.name, &a.groups))
            .map(shown)
            .ok_or_else(|| hidden("app", name))
    }

    /// Creates an app on its groups (the default group when none is given), at a new
    /// revision that also bumps those groups so their members pick it up.
    pub async fn create_app(&self, who: &Subject, req: CreateApp) -> Result<App, OpError> {
        check_name("app", &req.name)?;
        let mut groups = check_groups(&req.groups)?;
        if groups.is_empty() {
            groups.push(crate::DEFAULT_GROUP.to_string());
        }
        check_spec_rules(&req.spec)?;
        check_env_input(&req.spec)?;
        let digest = check_digest(req.digest)?;
        let policies = self.sec.policies();
        may_change_app(who, &req.name, &[], &groups, &req.spec, &policies)?;
        let self_sched = self.shared.sched.clone();
        let author = who.name.clone();
        let app = self
            .shared
            .mutate(move |c, rev| {
                if c.apps.contains_key(&req.name) {
                    return Err(OpError::Conflict(format!(
                        "app `{}` already exists; use update to change it",
                        req.name
                    )));
                }
                let t = now();
                if let Some(r) = &req.spec.recipe
                    && let Some(other) = c
                        .apps
                        .values()
                        .find(|a| a.spec.recipe.as_ref().is_some_and(|o| o.uuid == r.uuid))
                {
                    return Err(OpError::Conflict(format!(
                        "recipe UUID {} is already app `{}`'s",
                        r.uuid, other.name
                    )));
                }
                let mut app = App {
                    name: req.name,
                    spec: req.spec,
                    groups,
                    revision: rev,
                    restart_nonce: 0,
                    created_at: t,
                    updated_at: t,
                    placements: Default::default(),
                    handoff: Default::default(),
                    digest_error: digest.is_none().then(unpinned),
                    digest,
                    rollout: None,
                };
                // Only a replicated app needs the nodes' views (O(nodes)): a plain one
                // must not make every change cost a walk over the fleet.
                if app.spec.is_replicated() {
                    (app.placements, app.handoff) =
                        c.placements_for(&app, &self_sched.views(c), &self_sched.weights);
                }
                let mut changes = c.touch_groups(&app.groups, rev);
                changes.push(Change::PutApp(Box::new(app.clone())));
                changes.push(history_entry(&app, &author, "applied"));
                Ok((changes, app))
            })
            .await?;
        self.shared.events.push(
            "app",
            format!("app:{}", app.name),
            format!(
                "{} created on {} (revision {})",
                app.name,
                app.groups.join(", "),
                app.revision
            ),
        );
        Ok(shown(&app))
    }

    /// Replaces an app's spec (and groups, when given). An identical update commits
    /// nothing and keeps the revision.
    pub async fn update_app(
        &self,
        who: &Subject,
        name: String,
        req: UpdateApp,
    ) -> Result<App, OpError> {
        let groups = req.groups.as_deref().map(check_groups).transpose()?;
        check_spec_rules(&req.spec)?;
        check_env_input(&req.spec)?;
        let digest = check_digest(req.digest)?;
        let policies = self.sec.policies();
        let author = Author {
            who: who.name.clone(),
            staged: true,
            outcome: None,
        };
        let who = who.clone();
        let app = self
            .change_app(name, author, move |app| {
                if !who.can_read_app(&app.name, &app.groups) {
                    return Err(hidden("app", &app.name));
                }
                let new_groups = groups
                    .filter(|g| !g.is_empty())
                    .unwrap_or_else(|| app.groups.clone());
                may_change_app(
                    &who,
                    &app.name,
                    &app.groups,
                    &new_groups,
                    &req.spec,
                    &policies,
                )?;
                // The same tag resolved again keeps its digest when the client could
                // not resolve it this time: the devices keep the same bits.
                let same_image = app.spec.docker_image == req.spec.docker_image;
                match digest {
                    Some(d) => {
                        app.digest = Some(d);
                        app.digest_error = None;
                    }
                    None if same_image => {}
                    None => {
                        app.digest = None;
                        app.digest_error = Some(unpinned());
                    }
                }
                app.spec = req.spec;
                app.groups = new_groups;
                Ok(())
            })
            .await?;
        let staged = app
            .rollout
            .as_ref()
            .filter(|r| r.to_revision == app.revision && r.state.is_active())
            .map(|_| "; rolling out in waves")
            .unwrap_or("");
        self.shared.events.push(
            "app",
            format!("app:{}", app.name),
            format!("{} updated (revision {}{staged})", app.name, app.revision),
        );
        Ok(shown(&app))
    }

    /// Start, stop or restart (a new nonce, so every container is replaced).
    pub async fn app_action(
        &self,
        who: &Subject,
        name: String,
        action: Action,
    ) -> Result<App, OpError> {
        let author = Author {
            who: who.name.clone(),
            staged: false,
            outcome: None,
        };
        let who = who.clone();
        let app = self
            .change_app(name, author, move |app| {
                if !who.can_read_app(&app.name, &app.groups) {
                    return Err(hidden("app", &app.name));
                }
                if who.role == Role::Viewer || !who.can_write_app(&app.name, &app.groups) {
                    return Err(OpError::Denied(format!(
                        "user `{}` may not change app `{}`",
                        who.name, app.name
                    )));
                }
                if let Some(r) = app.rollout.as_ref().filter(|r| r.state.is_active()) {
                    return Err(OpError::Conflict(format!(
                        "app `{}` has a rollout of revision {} in progress ({}); resume it, \
                         abort it (`gustavo rollouts abort {}`) or update the app",
                        app.name,
                        r.to_revision,
                        r.state.as_str(),
                        app.name
                    )));
                }
                match action {
                    Action::Start => app.spec.running = true,
                    Action::Stop => app.spec.running = false,
                    Action::Restart => {
                        if !app.spec.running {
                            return Err(OpError::Conflict(format!(
                                "app `{}` is stopped; start it instead",
                                app.name
                            )));
                        }
                        app.restart_nonce += 1;
                    }
                }
                Ok(())
            })
            .await?;
        let done = match action {
            Action::Start => "started",
            Action::Stop => "stopped",
            Action::Restart => "restarted",
        };
        self.shared.events.push(
            "app",
            format!("app:{}", app.name),
            format!("{} {done} (revision {})", app.name, app.revision),
        );
        Ok(shown(&app))
    }

    /// Deletes an app; returns the revision that removes its containers everywhere.
    pub async fn delete_app(&self, who: &Subject, name: String) -> Result<u64, OpError> {
        let who = who.clone();
        let object = format!("app:{name}");
        let message = format!("{name} deleted");
        let rev = self
            .shared
            .mutate(move |c, rev| {
                let app = c
                    .apps
                    .get(&name)
                    .filter(|a| who.can_read_app(&a.name, &a.groups))
                    .ok_or_else(|| hidden("app", &name))?;
                if who.role == Role::Viewer || !who.can_write_app(&app.name, &app.groups) {
                    return Err(OpError::Denied(format!(
                        "user `{}` may not delete app `{name}`",
                        who.name
                    )));
                }
                // Bumping the app's groups is what makes every member drop its containers;
                // Nebula deleted the document only and left the containers running.
                let mut changes = c.touch_groups(&app.groups, rev);
                changes.push(Change::DeleteApp(name));
                Ok((changes, rev))
            })
            .await?;
        self.shared
            .events
            .push("app", object, format!("{message} (revision {rev})"));
        Ok(rev)
    }

    /// Whether `who` may follow the rollout of `name` (a deleted app's groups are gone:
    /// then only a grant on its name, or an admin, sees it).
    pub fn may_read_rollout(&self, who: &Subject, name: &str) -> Result<(), OpError> {
        let c = self.shared.read();
        let groups = c
            .apps
            .get(name)
            .map(|a| a.groups.clone())
            .unwrap_or_default();
        if who.can_read_app(name, &groups) {
            Ok(())
        } else {
            Err(hidden("app", name))
        }
    }

    /// Commits a changed copy of an app at the next revision, bumping the groups it leaves
    /// and joins; an unchanged app commits nothing. A new version of what the devices run
    /// goes into the history and, for an update of an app with a `rollout:` block, starts
    /// a staged rollout from the version the devices settled on.
    pub(crate) async fn change_app(
        &self,
        name: String,
        author: Author,
        edit: impl FnOnce(&mut App) -> Result<(), OpError> + Send + 'static,
    ) -> Result<App, OpError> {
        let sched = self.shared.sched.clone();
        self.shared
            .mutate(move |c, rev| {
                let old = c
                    .apps
                    .get(&name)
                    .ok_or_else(|| OpError::NotFound(format!("app `{name}` does not exist")))?;
                let mut app = old.clone();
                edit(&mut app)?;
                recipe_uuid_free(c, &app)?;
                // A new replica count, groups or selector can move replicas.
                (app.placements, app.handoff) = if app.spec.is_replicated() {
                    c.placements_for(&app, &sched.views(c), &sched.weights)
                } else {
                    Default::default()
                };
                if app == *old {
                    return Ok((Vec::new(), app));
                }
                app.revision = rev;
                app.updated_at = now();
                let mut changes = c.touch_groups(old.groups.iter().chain(&app.groups), rev);
                let new_version = app.spec != old.spec
                    || app.digest != old.digest
                    || app.restart_nonce != old.restart_nonce;
                if new_version {
                    changes.extend(start_version(old, &mut app, &author));
                }
                changes.push(Change::PutApp(Box::new(app.clone())));
                Ok((changes, app))
            })
            .await
    }
}

/// Who makes a change to an app, and how it reaches the devices.
pub(crate) struct Author {
    /// The user (or `rollout` for what the server does by itself).
    pub who: String,
    /// Whether an app with a `rollout:` block takes this change in waves (an update does;
    /// start, stop, restart and rollbacks reach every device at once).
    pub staged: bool,
    /// The outcome the history records for it, when not `applied` / `rolling out`.
    pub outcome: Option<String>,
}

/// The history entry of an app's current revision.
pub(crate) fn history_entry(app: &App, who: &str, outcome: &str) -> Change {
    Change::PutRevision(Box::new(AppRevision {
        app: app.name.clone(),
        revision: app.revision,
        spec: app.spec.clone(),
        groups: app.groups.clone(),
        digest: app.digest.clone(),
        who: who.to_string(),
        at: now(),
        outcome: outcome.to_string(),
    }))
}

/// A new version of `old` becomes `app`: the staged rollout it starts (if any) and the
/// history changes it makes.
fn start_version(old: &App, app: &mut App, author: &Author) -> Vec<Change> {
    let mut changes = Vec::new();
    // What the devices outside the waves run: the version the fleet settled on, not a
    // half-rolled-out one (an update in the middle of a rollout supersedes it).
    let settled = match &old.rollout {
        Some(r) if r.state.is_active() => {
            changes.push(Change::RevisionOutcome {
                app: old.name.clone(),
                revision: r.to_revision,
                outcome: "superseded".into(),
            });
            r.from.clone()
        }
        _ => Previous {
            revision: old.revision,
            spec: old.spec.clone(),
            restart_nonce: old.restart_nonce,
            digest: old.digest.clone(),
        },
    };
    app.rollout = match (&app.spec.rollout, author.staged) {
        (Some(policy), true) => Some(RolloutRecord::new(
            app.revision,
            settled,
            policy.clone(),
            crate::now_ms(),
        )),
        _ => None,
    };
    let outcome = author.outcome.clone().unwrap_or_else(|| {
        if app.rollout.is_some() {
            "rolling out".into()
        } else {
            "applied".into()
        }
    });
    changes.push(history_entry(app, &author.who, &outcome));
    changes
}

/// What `digest_error` says of a revision no digest was resolved for.
fn unpinned() -> String {
    "no digest was resolved when this revision was accepted (the client could not: its \
     registry was unreachable or had no such tag; or an API client sent none); devices pull \
     the tag"
        .into()
}

/// A digest as Docker writes it: `sha256:` and 64 lowercase hex digits.
fn check_digest(d: Option<String>) -> Result<Option<String>, OpError> {
    let Some(d) = d else { return Ok(None) };
    let ok = d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    if ok {
        Ok(Some(d))
    } else {
        Err(OpError::BadRequest(format!(
            "digest `{d}` is not of the form sha256:<64 hex digits>"
        )))
    }
}

/// A recipe UUID names one app: refused when another app has it.
fn recipe_uuid_free(c: &crate::state::Cluster, app: &App) -> Result<(), OpError> {
    let Some(r) = &app.spec.recipe else {
        return Ok(());
    };
    match c
        .apps
        .values()
        .find(|a| a.name != app.name && a.spec.recipe.as_ref().is_some_and(|o| o.uuid == r.uuid))
    {
        Some(other) => Err(OpError::Conflict(format!(
            "recipe UUID {} is already app `{}`'s",
            r.uuid, other.name
        ))),
        None => Ok(()),
    }
}
