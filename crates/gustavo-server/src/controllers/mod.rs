//! Loops that own one concern each and run beside the API: the scheduler (node
//! liveness and replica placement) and the rollout gate (staged updates).

pub mod callbacks;
pub mod jobs;
pub mod rollout_events;
pub mod rollouts;
pub mod scheduler;
