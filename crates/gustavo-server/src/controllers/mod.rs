//! Loops that own one concern each and run beside the API: the scheduler (node
//! liveness and replica placement), the rollout gate (staged updates), jobs, callback
//! delivery, rollout events, leases (per-client deployments) and agentless hosts watched
//! through Glances.

pub mod callbacks;
pub mod jobs;
pub mod leases;
pub mod rollout_events;
pub mod rollouts;
pub mod scheduler;
pub mod watched;
