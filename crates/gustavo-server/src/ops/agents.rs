//! The agent protocol: register, wait for the desired state, heartbeat, status report.
//! Who the caller is was settled by the surface; what that caller may do is decided here.

use std::net::IpAddr;
use std::time::Duration;

use gustavo_model::api::{
    DesiredState, Heartbeat, HeartbeatReply, RegisterRequest, RegisterResponse, StatusReport,
    SyncRequest,
};
use gustavo_store::{Change, NodeRecord};

use super::apps::check_groups;
use super::{OpError, Ops, check_name};
use crate::auth::{Principal, hash_token, new_token};
use crate::now;
use crate::rollout_counts::{delta_apps, named_apps};
use crate::state::{Cluster, Live};
use gustavo_model::pressure::{Level, Status as PressureStatus};

/// How far ahead of this server's revision a node's may be for the server to move past it
/// (`Ops::catch_up`): more is no state any server made.
const AHEAD_MAX: u64 = 1 << 32;

fn validate_registration(req: &RegisterRequest) -> Result<(), OpError> {
    check_name("node", &req.name)?;
    check_groups(&req.groups)?;
    if req.labels.len() > 64
        || req
            .labels
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 128 || v.len() > 1024)
    {
        return Err(OpError::BadRequest(
            "labels: at most 64, keys 1-128 and values up to 1024 characters".into(),
        ));
    }
    Ok(())
}

/// The form of a desired state an agent asks for (the `gustavo-form` header of a sync).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// Every container spelled out with its hash: what older agents and admins get.
    Full,
    /// Each app's shared template and the node's replica numbers: the agent completes it
    /// (`DesiredState::complete`), so a change costs the server one template per app
    /// version instead of one expansion and hash per container of every node.
    Template,
}

/// What [`Ops::owed`] found: the node's desired state, or nothing yet; and the node.
pub(super) enum Owed<'c> {
    State(Box<DesiredState>, &'c NodeRecord),
    Nothing(&'c NodeRecord),
}

/// Replaces the values of secret env vars in a desired state with `<hidden>`.
fn hide_secrets(c: &crate::state::Cluster, d: &mut DesiredState) {
    for app in &mut d.apps {
        let Some(spec) = c.apps.get(&app.name).map(|a| &a.spec) else {
            continue;
        };
        for container in &mut app.containers {
            for (k, _) in spec.env_vars.iter().filter(|(_, v)| v.is_secret()) {
                if let Some(val) = container.spec.env.get_mut(k) {
                    *val = "<hidden>".into();
                }
            }
        }
    }
}

impl Ops {
    /// Registers a node. With a join token: creates a node that does not exist yet and
    /// returns its own token. With the node's own token: updates the node's declared facts
    /// and keeps the token. A join token can never take over an existing node (two devices
    /// with one hostname would evict each other, and any join token would be a key to
    /// every node): that is a conflict naming the node. Replacing a node's credential takes
    /// an admin and `replace: true`, or removing the node first. Returns the answer and the
    /// revision made (none when nothing changed).
    pub async fn register(
        &self,
        p: &Principal,
        from: IpAddr,
        req: RegisterRequest,
    ) -> Result<(RegisterResponse, Option<u64>), OpError> {
        validate_registration(&req)?;
        // A join token bound to a group puts the node in exactly that group, whatever it asks.
        let (rotate, join_group) = match p {
            Principal::Join { group, .. } => (true, group.clone()),
            p if p.is_admin() => (true, None),
            Principal::Node(n) if *n == req.name => (false, None),
            Principal::Node(_) => return Err(OpError::Forbidden("register another node")),
            _ => return Err(OpError::Forbidden("register nodes")),
        };
        if req.replace && !p.is_admin() {
            return Err(OpError::Denied(format!(
                "only an admin may replace node `{}`",
                req.name
            )));
        }
        let replace = req.replace;
        let proposed = match req.token.as_deref() {
            Some(t) if gustavo_model::api::is_node_token(t) => Some(t.to_string()),
            Some(_) => {
                return Err(OpError::BadRequest(
                    "token: a node credential is `gus_node_` and 48 hex digits".into(),
                ));
            }
            None => None,
        };
        let token = rotate.then(|| proposed.clone().unwrap_or_else(|| new_token("node")));
        let token_hash = token.as_deref().map(hash_token);
        let name = req.name.clone();
        let revision = self
            .shared
            .mutate(move |c, rev| {
                let old = c.nodes.get(&req.name);
                // Checked here, inside the writer, so two racing joins cannot both create it.
                let retried = proposed.is_some()
                    && old
                        .zip(token_hash.as_ref())
                        .is_some_and(|(o, h)| o.token_hash == *h);
                if rotate && retried && !replace {
                    // The same device again, its first answer lost: answer as then.
                    let groups = old.map(|o| o.groups.clone()).unwrap_or_default();
                    return Ok((Vec::new(), (None, groups)));
                }
                if let Some(h) = &token_hash
                    && c.node_by_token_hash(h).is_some_and(|n| n != req.name)
                {
                    return Err(OpError::Conflict(
                        "token: that credential is another node's; propose a fresh one".into(),
                    ));
                }
                if rotate && old.is_some() && !replace {
                    return Err(OpError::Conflict(format!(
                        "node `{n}` already exists; if this device replaces it, remove the old one \
                     with `gustavo nodes remove {n}` and join again, or give this device \
                     another name with `gustavo agent --name`",
                        n = req.name
                    )));
                }
                let bound_group = if rotate {
                    join_group
                } else {
                    old.and_then(|o| o.bound_group.clone())
                };
                let mut groups = match &bound_group {
                    Some(g) => vec![g.clone()],
                    None => req.groups.clone(),
                };
                groups.dedup();
                let record = NodeRecord {
                    name: req.name.clone(),
                    token_hash: token_hash
                        .or_else(|| old.map(|o| o.token_hash.clone()))
                        .unwrap_or_default(),
                    groups,
                    labels: req.labels.clone(),
                    cpus: req.cpus.max(1),
                    memory_mb: req.memory_mb,
                    agent_version: req.agent_version.clone(),
                    registered_at: old.map(|o| o.registered_at).unwrap_or_else(now),
                    revision: rev,
                    heartbeat_s: req.heartbeat_s.clamp(1, 3600),
                    bound_group,
                    cordoned: old.is_some_and(|o| o.cordoned),
                    draining: old.is_some_and(|o| o.draining),
                };
                let unchanged = old.is_some_and(|o| {
                    NodeRecord {
                        revision: o.revision,
                        ..record.clone()
                    } == *o
                });
                if unchanged {
                    return Ok((Vec::new(), (None, record.groups)));
                }
                // Only groups that do not exist yet are stored. Bumping existing ones would
                // hand every member a new desired state for each device that joins: at
                // 100,000 devices, registration went quadratic. A node's own desired state
                // follows its record's revision.
                let mut changes = c.touch_groups(
                    record.groups.iter().filter(|g| !c.groups.contains_key(*g)),
                    rev,
                );
                let groups = record.groups.clone();
                changes.push(Change::PutNode(record));
                Ok((changes, (Some(rev), groups)))
            })
            .await?;
        let (revision, groups) = revision;
        self.seen(&name, from, |_| {});
        tracing::info!(node = %name, rotated = rotate, "node registered");
        if revision.is_some() {
            self.shared.events.push(
                "node",
                format!("node:{name}"),
                format!("{name} registered in {}", groups.join(", ")),
            );
        }
        let token = token.unwrap_or_default();
        Ok((
            RegisterResponse {
                node: name,
                token,
                groups,
            },
            revision,
        ))
    }

    /// Records that a node called, from where, and lets `f` update what it reported.
    pub fn seen(&self, node: &str, from: IpAddr, f: impl FnOnce(&mut crate::state::Live)) {
        let c = self.shared.read();
        if !c.nodes.contains_key(node) {
            return;
        }
        // Looked up first: the entry exists for every node heard from since the start, and
        // the name need not be copied for it.
        let mut live = match c.live.get_mut(node) {
            Some(l) => l,
            None => c.live.entry(node.to_string()).or_default(),
        };
        live.last_seen = now();
        live.address = Some(from);
        f(&mut live);
    }

    /// A node that has a revision this server has not reached got its state elsewhere:
    /// from another server, or from this one before its data dir was restored from a
    /// backup. An agent takes only states newer than its own, so it would ignore every
    /// state of this server until the revision passed its own, and keep running what it
    /// had. The server's revision moves past the node's instead (once: the node's
    /// revision is touched above it), and the node gets this server's state at once.
    ///
    /// "Ahead" is against what this server would send the node, not against the server's
    /// revision: once one device has moved the revision past its own, the others of a
    /// restored server are behind the server but still ahead of their own state. On one
    /// server a node's revision never goes down, so an agent is never ahead otherwise.
    pub(crate) async fn catch_up(&self, name: &str, after: u64) -> Result<(), OpError> {
        let (current, owed) = {
            let c = self.shared.read();
            let owed = c.nodes.get(name).map(|n| c.node_revision(n));
            (c.revision, owed)
        };
        if owed.is_none_or(|r| after <= r) {
            return Ok(());
        }
        if after.saturating_sub(current) > AHEAD_MAX {
            tracing::warn!(
                node = name,
                has = after,
                server = current,
                "the node claims a revision far beyond this server's; not moving to it"
            );
            return Ok(());
        }
        tracing::warn!(
            node = name,
            has = after,
            server = current,
            "the node has a revision this server has not reached (its state came from another \
             server, or from before this data dir was restored); moving past it"
        );
        let node = name.to_string();
        self.shared
            .mutate_past(after, move |c, rev| {
                let touch = c
                    .nodes
                    .get(&node)
                    .filter(|n| c.node_revision(n) <= after)
                    .map(|n| {
                        let mut n = n.clone();
                        n.revision = rev;
                        Change::PutNode(n)
                    });
                Ok((touch.into_iter().collect(), ()))
            })
            .await
    }

    /// The node's desired state as soon as its revision is above `after`, or `None` after
    /// `wait` (at most 60 s). Agents wait here instead of polling, so a change reaches
    /// them at once and an idle link carries one small request per wait period. Secrets
    /// go to the node itself only; an admin looking sees them hidden.
    ///
    /// The wait is woken only by commits that touch the node's groups or the node itself
    /// ([`crate::wake`]), and while it lasts the node counts as heard from.
    pub async fn desired(
        &self,
        p: &Principal,
        from: IpAddr,
        name: &str,
        after: u64,
        wait: Duration,
        form: Form,
    ) -> Result<Option<DesiredState>, OpError> {
        p.require_node(name)?;
        // Commands (`gustavo exec`) go to the node itself only, never to an admin looking.
        let is_node = matches!(p, Principal::Node(_));
        if is_node {
            self.catch_up(name, after).await?;
        }
        let mut closing = self.shared.closing.subscribe();
        let deadline = tokio::time::Instant::now() + wait.min(Duration::from_secs(60));
        let _waiting = crate::metrics::Waiting::new(&self.shared.metrics.long_polls);
        let exec_wake = is_node.then(|| self.shared.exec.wake(name));
        let _open = is_node.then(|| PollOpen::new(self, name, from, false));
        loop {
            let woken = {
                let c = self.shared.read();
                match self.owed(&c, name, after, is_node)? {
                    Owed::State(mut d, _) => {
                        // Templates go to the node itself only (an admin sees the full
                        // form, secrets hidden), and only when it asked for them.
                        if !(is_node && form == Form::Template) {
                            d.complete();
                        }
                        if !is_node {
                            hide_secrets(&c, &mut d);
                        }
                        return Ok(Some(*d));
                    }
                    Owed::Nothing(node) => {
                        crate::wake::Waiting::new(&self.shared.wakers, name, &node.groups)
                    }
                }
            };
            if *closing.borrow_and_update() {
                return Err(OpError::Unavailable("the server is shutting down"));
            }
            tokio::select! {
                r = tokio::time::timeout_at(deadline, woken.changed()) => match r {
                    Ok(()) => continue,
                    Err(_) => return Ok(None),
                },
                _ = closing.changed() => return Err(OpError::Unavailable("the server is shutting down")),
                _ = async { match &exec_wake { Some(w) => w.notified().await, None => std::future::pending().await } } => continue,
            }
        }
    }

    /// What a node waiting for its desired state is owed now, read under the cluster's
    /// read lock `c`: its state when its revision is past `after` or commands wait for it
    /// (taken, when `exec`: the caller is the node itself). Otherwise its record, whose
    /// keys the wait subscribes to under this same lock: the writer commits under the
    /// write lock and wakes after it, so a commit this read did not see wakes the wait.
    pub(super) fn owed<'c>(
        &self,
        c: &'c Cluster,
        name: &str,
        after: u64,
        exec: bool,
    ) -> Result<Owed<'c>, OpError> {
        let node = c
            .nodes
            .get(name)
            .ok_or_else(|| OpError::NotFound(format!("node `{name}` does not exist")))?;
        let commands = if exec {
            self.shared.exec.take(name)
        } else {
            Vec::new()
        };
        if c.node_revision(node) <= after && commands.is_empty() {
            return Ok(Owed::Nothing(node));
        }
        let mut d = c.desired_for(node);
        d.exec = commands;
        self.shared.metrics.desired_computed.inc();
        Ok(Owed::State(Box::new(d), node))
    }

    /// The sync protocol's one request (`POST …/sync`): records the status report and the
    /// vitals it carries, then waits like [`Ops::desired`]. Returns the desired state (if
    /// newer) and whether the server lacks the node's status report (asked for again).
    /// A node without a report that sent none gets its answer at once, so the report comes
    /// on the next request rather than after a whole wait.
    pub async fn sync(
        &self,
        p: &Principal,
        from: IpAddr,
        name: &str,
        req: SyncRequest,
        form: Form,
    ) -> Result<(Option<DesiredState>, bool), OpError> {
        // Only the node itself: a report or vitals from anyone else would be a lie.
        match p {
            Principal::Node(n) if n == name => {}
            _ => return Err(OpError::Forbidden("sync as another node")),
        }
        let (after, wait) = (req.after, req.wait);
        let need_report = self.received(name, from, req).await?;
        let wait = if need_report {
            Duration::ZERO
        } else {
            Duration::from_secs(wait)
        };
        let d = self.desired(p, from, name, after, wait, form).await?;
        Ok((d, need_report))
    }

    /// Takes in what a sync request (or a stream's line) of the node carries: its vitals and
    /// status report, unless a later request of this agent delivered newer ones. Returns
    /// whether the server lacks the node's report and none came (to be asked for).
    pub(crate) async fn received(
        &self,
        name: &str,
        from: IpAddr,
        req: SyncRequest,
    ) -> Result<bool, OpError> {
        let carried = req.report.is_some() || req.delta.is_some();
        // What a later request of this agent already delivered is kept.
        let order = (req.session, req.seq);
        let newer = |last: &mut (u64, u64)| {
            let stale = order.0 != 0 && last.0 == order.0 && order.1 <= last.1;
            if !stale {
                *last = order;
            }
            !stale
        };
        // The order check and the write are one step under the node's entry: checked, then
        // written in a second step, a newer report that slipped between them was overwritten
        // by the older one, and the agent (which had sent the newer) never sent it again.
        let (mut pressure, mut report_new, mut need_report) = (None, false, false);
        // The apps the report names before and after, for the rollout counts.
        let mut named = Vec::new();
        let runs = (req.report.as_ref().map(|r| &r.jobs))
            .or(req.delta.as_ref().map(|d| &d.jobs))
            .cloned();
        self.seen(name, from, |l| {
            l.syncs = true;
            if let Some(hb) = req.heartbeat
                && newer(&mut l.vitals_seq)
            {
                pressure = take_vitals(l, hb);
            }
            if let Some(report) = req.report
                && newer(&mut l.report_seq)
            {
                named_apps(&l.report, &mut named);
                take_report(l, report);
                named_apps(&l.report, &mut named);
                report_new = true;
            }
            // A delta counts only on the very report it was made from; otherwise the
            // whole report is asked for.
            let mut delta_dropped = false;
            if let Some(delta) = req.delta {
                let on = (order.0, delta.base);
                if l.has_report && order.0 != 0 && l.report_seq == on && order.1 > delta.base {
                    l.report_seq = order;
                    delta_apps(&delta, &mut named);
                    gustavo_model::report::apply(&mut l.report, delta);
                    report_new = true;
                } else {
                    delta_dropped = true;
                }
            }
            need_report = (!l.has_report && !carried) || delta_dropped;
        });
        if let Some((before, p)) = pressure {
            self.pressure_changed(name, before, p);
        }
        if report_new {
            let named = named.iter().map(String::as_str);
            self.shared.read().rollout_counts.mark(name, named);
            self.shared.reports.send_modify(|n| *n = n.wrapping_add(1));
            self.job_runs(name, runs.unwrap_or_default()).await?;
        }
        Ok(need_report)
    }

    /// Vitals from a node; asks for its status report when the server has none (after a
    /// server restart).
    pub fn heartbeat(
        &self,
        p: &Principal,
        from: IpAddr,
        name: &str,
        hb: Heartbeat,
    ) -> Result<HeartbeatReply, OpError> {
        p.require_node(name)?;
        let mut need_status = false;
        let mut changed = None;
        self.seen(name, from, |l| {
            need_status = !l.has_report;
            changed = take_vitals(l, hb);
        });
        if let Some((before, p)) = changed {
            self.pressure_changed(name, before, p);
        }
        Ok(HeartbeatReply { need_status })
    }

    /// A node's status report; wakes whoever follows a rollout.
    pub fn status(
        &self,
        p: &Principal,
        from: IpAddr,
        name: &str,
        report: StatusReport,
    ) -> Result<(), OpError> {
        p.require_node(name)?;
        let mut named = Vec::new();
        self.seen(name, from, |l| {
            named_apps(&l.report, &mut named);
            take_report(l, report);
            named_apps(&l.report, &mut named);
        });
        let named = named.iter().map(String::as_str);
        self.shared.read().rollout_counts.mark(name, named);
        self.shared.reports.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    fn pressure_changed(&self, name: &str, before: Level, status: PressureStatus) {
        self.shared
            .events
            .push("pressure", format!("node:{name}"), status.event(before));
    }
}

/// Keeps a node's vitals; returns the pressure level it left and its new status when the
/// level changed.
fn take_vitals(l: &mut Live, hb: Heartbeat) -> Option<(Level, PressureStatus)> {
    l.vitals = Some(hb.vitals);
    l.traffic = hb.traffic;
    l.tunnel = hb.tunnel.map(Box::new);
    // None: pressure is off on the node (or the agent predates it).
    let before = l.pressure.as_ref().map(|o| o.level).unwrap_or_default();
    let after = hb.pressure.as_ref().map(|o| o.level).unwrap_or_default();
    let changed = (before != after).then(|| (before, hb.pressure.clone().unwrap_or_default()));
    l.pressure = hb.pressure.map(Box::new);
    changed
}

fn take_report(l: &mut Live, report: StatusReport) {
    l.report = report;
    l.has_report = true;
}

/// A long-poll held open by a node: counted in its live state while it lasts, and the
/// moment it ends (answered, timed out, or its connection gone) is when the node was last
/// heard from.
pub(super) struct PollOpen<'a> {
    ops: &'a Ops,
    node: &'a str,
}

impl<'a> PollOpen<'a> {
    /// `streams`: the poll is an agent's stream, so the node speaks the sync protocol even
    /// before its first line (a device that dies between connecting and its first line is
    /// offline a few seconds after its connection goes, not three heartbeats later).
    pub(super) fn new(ops: &'a Ops, node: &'a str, from: IpAddr, streams: bool) -> PollOpen<'a> {
        ops.seen(node, from, |l| {
            l.polls += 1;
            l.syncs |= streams;
        });
        PollOpen { ops, node }
    }
}

impl Drop for PollOpen<'_> {
    fn drop(&mut self) {
        let c = self.ops.shared.read();
        if let Some(mut l) = c.live.get_mut(self.node) {
            l.polls = l.polls.saturating_sub(1);
            l.last_seen = now();
        }
    }
}
