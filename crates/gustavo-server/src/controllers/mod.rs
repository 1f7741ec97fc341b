//! Loops that own one concern each and run beside the API: today the scheduler (node
//! liveness and replica placement).

pub mod callbacks;
pub mod jobs;
pub mod rollouts;
pub mod scheduler;
