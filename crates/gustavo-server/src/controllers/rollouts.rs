//! The rollout gate: once a second, every staged rollout in progress looks at its devices'
//! reports and moves — devices done or failed, the next wave handed out, a halt or an
//! automatic rollback (see `Ops::advance_rollouts` and `gustavo_model::rollout`).
//!
//! When each device was first seen ready is kept in memory only: after a server restart a
//! device's `health_wait` starts again, which delays a wave by at most that wait and never
//! lets an unhealthy device through.

use std::collections::HashMap;
use std::time::Duration;

use crate::ops::Ops;

pub const TICK: Duration = Duration::from_secs(1);

/// Runs until the server closes.
pub async fn run(ops: Ops) {
    let mut closing = ops.shared.closing.subscribe();
    let mut ready_since = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = closing.changed() => return,
        }
        ops.advance_rollouts(&mut ready_since).await;
    }
}
