//! Calls of `gustavo exec` / `gustavo docker`: the CLI's run, and the agent's answer.

use std::time::Duration;

use gustavo_model::exec::{ExecAnswer, ExecReply, ExecRun, PICKUP_S};
use reqwest::Method;

use crate::{Client, ClientError};

impl Client {
    /// Runs a command on nodes; waits until every node has answered (or timed out).
    pub async fn exec(&self, run: &ExecRun) -> Result<ExecAnswer, ClientError> {
        // Every node may run in its own wave of `parallel`; each wave lasts at most the
        // pickup wait, the timeout and the server's grace.
        let nodes = (run.nodes.len() as u64).max(1);
        let waves = if run.group.is_some() {
            // The group's size is unknown here; allow for a large one.
            64
        } else {
            nodes.div_ceil(u64::from(run.parallel.max(1)))
        };
        let per_wave = Duration::from_secs(run.timeout_s + PICKUP_S + 20);
        self.call_timeout(
            Method::POST,
            "/api/v1/exec",
            Some(run),
            per_wave * waves as u32,
        )
        .await
    }

    /// The agent's answer to one command.
    pub async fn exec_reply(
        &self,
        node: &str,
        id: &str,
        reply: &ExecReply,
    ) -> Result<(), ClientError> {
        self.call_empty(
            Method::POST,
            &format!("/api/v1/nodes/{node}/exec/{id}"),
            Some(reply),
        )
        .await
    }
}
