//! `gustavo exec` / `gustavo docker`: one command on many nodes, through their agents.
//!
//! No connection to a node is ever opened (devices sit behind NAT): the command waits in the
//! [`ExecHub`] until the node's desired-state long-poll takes it — a waiting long-poll is
//! woken at once — and the agent posts the outcome to `POST /nodes/{n}/exec/{id}`.
//!
//! Rules:
//! - admin only; every run leaves one audit entry per node with the command line and the
//!   outcome (beside the request's own entry);
//! - a node the server counts offline is answered `offline` at once; a node that does not
//!   take the command within [`PICKUP`] (its agent stopped a moment ago, or an agent too old
//!   to know `exec`) is answered `offline` then, not after the whole timeout;
//! - at most `parallel` nodes have a command at once;
//! - the agent enforces the timeout (and kills the command); the server gives up
//!   [`GRACE`] later, so a lost answer ends as `timeout` too;
//! - whether a node runs commands at all is the node's own choice (`gustavo agent
//!   --allow-exec`): the server cannot turn it on, and an agent without it answers
//!   `refused`.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gustavo_model::api::NodeStatus;
use gustavo_model::exec::{
    ExecAnswer, ExecCommand, ExecNodeResult, ExecReply, ExecRun, ExecStatus,
};
use gustavo_store::AuditRecord;
use tokio::sync::{Notify, Semaphore, oneshot};

use super::{OpError, Ops, check_name};
use crate::auth::Principal;
use crate::now;

/// How long a node online by its last request has to take a command before it counts as
/// offline.
pub const PICKUP: Duration = Duration::from_secs(gustavo_model::exec::PICKUP_S);
/// How long past the command's timeout the server waits for the agent's answer.
pub const GRACE: Duration = Duration::from_secs(gustavo_model::exec::GRACE_S);

/// Commands waiting for their node's long-poll, and runs waiting for their answers.
#[derive(Default)]
pub struct ExecHub {
    inner: Mutex<Inner>,
    /// Commands waiting in every queue: a node's stream or long-poll looks at its queue
    /// at every turn, and almost always there is nothing anywhere.
    queued: AtomicUsize,
}

#[derive(Default)]
struct Inner {
    /// Per node: what waits to be taken, and the long-poll's wake-up.
    queues: HashMap<String, Queue>,
    /// Run id → (node, where its answer goes).
    waiting: HashMap<String, (String, oneshot::Sender<ExecReply>)>,
}

#[derive(Default)]
struct Queue {
    pending: Vec<(ExecCommand, oneshot::Sender<()>)>,
    wake: Arc<Notify>,
}

impl ExecHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves only plain maps behind; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The wake-up a node's long-poll waits on.
    pub fn wake(&self, node: &str) -> Arc<Notify> {
        self.lock()
            .queues
            .entry(node.to_string())
            .or_default()
            .wake
            .clone()
    }

    /// Takes the commands waiting for `node`, telling each run it was picked up.
    pub fn take(&self, node: &str) -> Vec<ExecCommand> {
        // Counted under the lock after the command is queued and before its node is woken:
        // a take that reads zero here is followed by a wake that finds the command.
        if self.queued.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let mut inner = self.lock();
        let Some(q) = inner.queues.get_mut(node) else {
            return Vec::new();
        };
        self.queued.fetch_sub(q.pending.len(), Ordering::AcqRel);
        q.pending
            .drain(..)
            .map(|(cmd, picked)| {
                let _ = picked.send(());
                cmd
            })
            .collect()
    }

    fn enqueue(&self, node: &str, cmd: ExecCommand) -> (oneshot::Receiver<()>, Pending<'_>) {
        let (picked_tx, picked_rx) = oneshot::channel();
        let (reply_tx, reply_rx) = oneshot::channel();
        let id = cmd.id.clone();
        let mut inner = self.lock();
        inner
            .waiting
            .insert(id.clone(), (node.to_string(), reply_tx));
        let q = inner.queues.entry(node.to_string()).or_default();
        q.pending.push((cmd, picked_tx));
        self.queued.fetch_add(1, Ordering::AcqRel);
        q.wake.notify_one();
        (
            picked_rx,
            Pending {
                hub: self,
                node: node.to_string(),
                id,
                reply: Some(reply_rx),
            },
        )
    }

    /// Delivers an agent's answer; false when nobody waits for it (late, or unknown).
    fn deliver(&self, node: &str, id: &str, reply: ExecReply) -> bool {
        let mut inner = self.lock();
        match inner.waiting.get(id) {
            Some((n, _)) if n == node => {}
            _ => return false,
        }
        inner
            .waiting
            .remove(id)
            .is_some_and(|(_, tx)| tx.send(reply).is_ok())
    }
}

/// A run's command on one node; dropping it (answered, timed out, or the caller gone)
/// takes the command out of the queue and forgets the run.
struct Pending<'a> {
    hub: &'a ExecHub,
    node: String,
    id: String,
    reply: Option<oneshot::Receiver<ExecReply>>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let mut inner = self.hub.lock();
        inner.waiting.remove(&self.id);
        if let Some(q) = inner.queues.get_mut(&self.node) {
            let before = q.pending.len();
            q.pending.retain(|(c, _)| c.id != self.id);
            self.hub
                .queued
                .fetch_sub(before - q.pending.len(), Ordering::AcqRel);
        }
    }
}

fn new_id() -> String {
    let bytes: [u8; 12] = rand::random();
    hex::encode(bytes)
}

impl Ops {
    /// Runs `run` on its nodes and answers one row per node, in the order the nodes were
    /// named (then the group's members by name).
    pub async fn exec(
        &self,
        p: &Principal,
        from: String,
        run: ExecRun,
    ) -> Result<ExecAnswer, OpError> {
        p.require_admin()?;
        run.validate().map_err(OpError::BadRequest)?;
        let command = run.command_line();
        let nodes = {
            let c = self.shared.read();
            let mut names = Vec::new();
            let mut seen = BTreeSet::new();
            let mut missing = Vec::new();
            for n in &run.nodes {
                check_name("node", n)?;
                if !c.nodes.contains_key(n) {
                    missing.push(format!("`{n}`"));
                } else if seen.insert(n.clone()) {
                    names.push(n.clone());
                }
            }
            if !missing.is_empty() {
                return Err(OpError::NotFound(format!(
                    "no such node: {} (nothing was run)",
                    missing.join(", ")
                )));
            }
            if let Some(g) = &run.group {
                check_name("group", g)?;
                let mut members = c.members_of(std::slice::from_ref(g));
                if members.is_empty() && !c.groups.contains_key(g) {
                    return Err(OpError::NotFound(format!(
                        "device group `{g}` does not exist (nothing was run)"
                    )));
                }
                members.sort();
                names.extend(members.into_iter().filter(|m| seen.insert(m.clone())));
            }
            let t = now();
            names
                .into_iter()
                .map(|n| {
                    let online = c.node_status(&n, t) != NodeStatus::Offline;
                    (n, online)
                })
                .collect::<Vec<_>>()
        };
        let limit = Arc::new(Semaphore::new(run.parallel as usize));
        let timeout = Duration::from_secs(run.timeout_s);
        let run = Arc::new(run);
        // Tasks, so a run over hundreds of nodes is not polled by one future; aborted (and
        // their commands unqueued) if the caller goes away.
        let mut tasks = tokio::task::JoinSet::new();
        let count = nodes.len();
        for (i, (node, online)) in nodes.into_iter().enumerate() {
            let (ops, limit, run) = (self.clone(), limit.clone(), run.clone());
            tasks.spawn(async move {
                let reply = if !online {
                    ExecReply::bare(ExecStatus::Offline, "node is offline")
                } else {
                    // The semaphore is never closed.
                    let _slot = limit.acquire().await;
                    ops.exec_one(&node, &run, timeout).await
                };
                (i, ExecNodeResult { node, reply })
            });
        }
        let mut slots: Vec<Option<ExecNodeResult>> = vec![None; count];
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok((i, r)) => slots[i] = Some(r),
                Err(e) => return Err(OpError::Internal(format!("exec task failed: {e}"))),
            }
        }
        let results: Vec<ExecNodeResult> = slots.into_iter().flatten().collect();
        for r in &results {
            self.audit_exec(p, &from, &command, r).await;
        }
        Ok(ExecAnswer { command, results })
    }

    async fn exec_one(&self, node: &str, run: &ExecRun, timeout: Duration) -> ExecReply {
        let hub = &self.shared.exec;
        let cmd = ExecCommand {
            id: new_id(),
            kind: run.kind,
            args: run.args.clone(),
            timeout_s: run.timeout_s,
        };
        let (picked, mut pending) = hub.enqueue(node, cmd);
        if tokio::time::timeout(PICKUP, picked).await.is_err() {
            return ExecReply::bare(
                ExecStatus::Offline,
                &format!(
                    "the agent did not take the command within {} s (not connected)",
                    PICKUP.as_secs()
                ),
            );
        }
        let started = Instant::now();
        let Some(reply) = pending.reply.take() else {
            return ExecReply::bare(ExecStatus::Error, "internal: no answer channel");
        };
        match tokio::time::timeout(timeout + GRACE, reply).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => ExecReply::bare(ExecStatus::Error, "the answer was lost"),
            Err(_) => ExecReply {
                duration_ms: started.elapsed().as_millis() as u64,
                ..ExecReply::bare(
                    ExecStatus::Timeout,
                    &format!(
                        "no answer from the agent within {} s",
                        (timeout + GRACE).as_secs()
                    ),
                )
            },
        }
    }

    async fn audit_exec(&self, p: &Principal, from: &str, command: &str, r: &ExecNodeResult) {
        let outcome = match (r.reply.status, r.reply.exit_code) {
            (ExecStatus::Exited, Some(code)) => format!("exit {code}"),
            (s, _) => s.as_str().to_string(),
        };
        self.sec
            .audit
            .record(AuditRecord {
                id: 0,
                at: now(),
                actor: p.actor(),
                address: from.to_string(),
                action: "exec".into(),
                object: format!("node:{}", r.node),
                allowed: r.reply.status != ExecStatus::Refused,
                status: 200,
                detail: format!("{outcome}: {command}"),
                revision: None,
            })
            .await;
    }

    /// A node's answer to one of its commands.
    pub fn exec_reply(
        &self,
        p: &Principal,
        node: &str,
        id: &str,
        mut reply: ExecReply,
    ) -> Result<(), OpError> {
        // Only the node itself: an admin must not be able to make up a node's answer.
        match p {
            Principal::Node(n) if n == node => {}
            _ => return Err(OpError::Forbidden("answer for this node")),
        }
        let cap = gustavo_model::exec::MAX_OUTPUT;
        for s in [&mut reply.stdout, &mut reply.stderr] {
            if s.len() > cap {
                let mut cut = cap;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                s.truncate(cut);
                reply.truncated = true;
            }
        }
        if self.shared.exec.deliver(node, id, reply) {
            Ok(())
        } else {
            Err(OpError::NotFound(format!(
                "no command `{id}` waits for an answer from `{node}` (timed out?)"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gustavo_model::exec::ExecKind;

    fn cmd(id: &str) -> ExecCommand {
        ExecCommand {
            id: id.into(),
            kind: ExecKind::Shell,
            args: vec!["true".into()],
            timeout_s: 1,
        }
    }

    #[tokio::test]
    async fn a_command_waits_for_its_node_and_the_answer_for_its_run() {
        let hub = ExecHub::default();
        let wake = hub.wake("a");
        let (picked, mut pending) = hub.enqueue("a", cmd("1"));
        // The long-poll is woken even though it was not waiting yet (Notify keeps a permit).
        tokio::time::timeout(Duration::from_secs(1), wake.notified())
            .await
            .unwrap();
        assert!(hub.take("b").is_empty());
        let taken = hub.take("a");
        assert_eq!(taken, vec![cmd("1")]);
        picked.await.unwrap();
        // Another node cannot answer for it.
        assert!(!hub.deliver("b", "1", ExecReply::bare(ExecStatus::Exited, "")));
        assert!(hub.deliver("a", "1", ExecReply::bare(ExecStatus::Exited, "x")));
        let r = pending.reply.take().unwrap().await.unwrap();
        assert_eq!(r.stderr, "x");
        // Answered once only.
        assert!(!hub.deliver("a", "1", ExecReply::bare(ExecStatus::Exited, "")));
    }

    #[test]
    fn a_dropped_run_leaves_nothing_queued() {
        let hub = ExecHub::default();
        let (_picked, pending) = hub.enqueue("a", cmd("1"));
        drop(pending);
        assert!(hub.take("a").is_empty());
        assert!(!hub.deliver("a", "1", ExecReply::bare(ExecStatus::Exited, "")));
    }
}
