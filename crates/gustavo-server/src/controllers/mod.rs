//! Loops that own one concern each and run beside the API: today the scheduler (node
//! liveness and replica placement).

pub mod scheduler;
