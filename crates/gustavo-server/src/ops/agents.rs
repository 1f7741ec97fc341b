//! The agent protocol: register, wait for the desired state, heartbeat, status report.
//! Who the caller is was settled by the surface; what that caller may do is decided here.

use std::net::IpAddr;
use std::time::Duration;

use gustavo_model::api::{
    DesiredState, Heartbeat, HeartbeatReply, RegisterRequest, RegisterResponse, StatusReport,
};
use gustavo_store::{Change, NodeRecord};

use super::apps::check_groups;
use super::{OpError, Ops, check_name};
use crate::auth::{Principal, hash_token, new_token};
use crate::now;

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
        let token = rotate.then(|| new_token("node"));
        let token_hash = token.as_deref().map(hash_token);
        let name = req.name.clone();
        let revision = self
            .shared
            .mutate(move |c, rev| {
                let old = c.nodes.get(&req.name);
                // Checked here, inside the writer, so two racing joins cannot both create it.
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
                let mut changes = c.touch_groups(
                    old.map(|o| o.groups.iter())
                        .into_iter()
                        .flatten()
                        .chain(&record.groups),
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
        let mut live = c.live.entry(node.to_string()).or_default();
        live.last_seen = now();
        live.address = Some(from);
        f(&mut live);
    }

    /// The node's desired state as soon as its revision is above `after`, or `None` after
    /// `wait` (at most 60 s). Agents wait here instead of polling, so a change reaches
    /// them at once and an idle link carries one small request per wait period. Secrets
    /// go to the node itself only; an admin looking sees them hidden.
    pub async fn desired(
        &self,
        p: &Principal,
        from: IpAddr,
        name: &str,
        after: u64,
        wait: Duration,
    ) -> Result<Option<DesiredState>, OpError> {
        p.require_node(name)?;
        let mut rx = self.shared.revision_tx.subscribe();
        let mut closing = self.shared.closing.subscribe();
        let deadline = tokio::time::Instant::now() + wait.min(Duration::from_secs(60));
        let _waiting = crate::metrics::Waiting::new(&self.shared.metrics.long_polls);
        // Commands (`gustavo exec`) go to the node itself only, never to an admin looking.
        let is_node = matches!(p, Principal::Node(_));
        let exec_wake = is_node.then(|| self.shared.exec.wake(name));
        loop {
            self.seen(name, from, |_| {});
            {
                let c = self.shared.read();
                let node = c
                    .nodes
                    .get(name)
                    .ok_or_else(|| OpError::NotFound(format!("node `{name}` does not exist")))?;
                let exec = if is_node {
                    self.shared.exec.take(name)
                } else {
                    Vec::new()
                };
                if c.node_revision(node) > after || !exec.is_empty() {
                    let mut d = c.desired_for(node);
                    d.exec = exec;
                    self.shared.metrics.desired_computed.inc();
                    if !matches!(p, Principal::Node(_)) {
                        hide_secrets(&c, &mut d);
                    }
                    return Ok(Some(d));
                }
            }
            rx.borrow_and_update();
            if *closing.borrow_and_update() {
                return Err(OpError::Unavailable("the server is shutting down"));
            }
            tokio::select! {
                r = tokio::time::timeout_at(deadline, rx.changed()) => match r {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) | Err(_) => return Ok(None),
                },
                _ = closing.changed() => return Err(OpError::Unavailable("the server is shutting down")),
                _ = async { match &exec_wake { Some(w) => w.notified().await, None => std::future::pending().await } } => continue,
            }
        }
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
            l.vitals = Some(hb.vitals);
            l.traffic = hb.traffic;
            l.tunnel = hb.tunnel;
            need_status = !l.has_report;
            // None: pressure is off on the node (or the agent predates it).
            let before = l.pressure.as_ref().map(|o| o.level).unwrap_or_default();
            let after = hb.pressure.as_ref().map(|o| o.level).unwrap_or_default();
            if before != after {
                changed = Some((before, hb.pressure.clone().unwrap_or_default()));
            }
            l.pressure = hb.pressure;
        });
        if let Some((before, p)) = changed {
            self.shared
                .events
                .push("pressure", format!("node:{name}"), p.event(before));
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
        self.seen(name, from, |l| {
            l.report = report;
            l.has_report = true;
        });
        self.shared.reports.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }
}
