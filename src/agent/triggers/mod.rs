//! What invokes functions besides a client: schedules ([`schedule`], with EventBridge
//! Scheduler's expressions in [`expr`]). Each trigger hands its events to the durable
//! asynchronous queue, so that a function's retry rules and destinations apply to them.

pub mod expr;
pub mod schedule;
