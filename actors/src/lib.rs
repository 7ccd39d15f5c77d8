//! # Layout
//!
//! One folder per actor, each a thin `Actor` impl (`mod.rs`) over a synchronous, unit-tested
//! `state.rs`:
//!
//! - [`partition_owner`]: reads a source partition, parses, routes batches, drives checkpoints.
//! - [`window`]: a shard of open event-time windows (hosts sharded by name).
//! - [`archiver`]: writes committed publications to the lake; recent windows for the API.
//! - [`detector`]: anomaly detection on closed windows (robust baseline, then augurs models).
//! - [`supervisor`]: starts the children and restarts them with backoff and a budget.
//!
//! Actors talk only through the message types in `wtm_runtime::msg`.

pub mod archiver;
pub mod detector;
pub mod partition_owner;
pub mod supervisor;
pub mod window;

use ractor::{ActorRef, Message};
use std::time::Duration;
use wtm_runtime::msg::tell;
use wtm_runtime::telemetry::ActorKind;

/// Send `make()` to `to` after `after`, counted in the mailbox depth (ractor's `send_after`
/// would bypass the count).
pub(crate) fn spawn_tell_after<M: Message>(
    to: ActorRef<M>,
    kind: ActorKind,
    after: Duration,
    make: impl FnOnce() -> M + Send + 'static,
) {
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let _ = tell(&to, kind, make());
    });
}
