//! # Layout
//!
//! One folder per actor, each a thin `Actor` impl (`mod.rs`) over a synchronous, unit-tested
//! `state.rs`:
//!
//! - [`partition_owner`]: reads a source partition, parses, routes batches, drives checkpoints
//!   (its policy, `plan(now)`, is pure and lives in its state).
//! - [`window`]: a shard of open event-time windows (hosts sharded by name).
//! - [`archiver`]: writes committed publications to the lake (in parallel across partitions,
//!   in order within one); the window history the API reads (on disk) and its counts.
//! - [`detector`]: anomaly detection on closed windows (robust baseline, then augurs models).
//! - [`supervisor`]: starts the children and restarts them with backoff and a budget; gives up
//!   at once on a permanent failure; follows the Kafka group's events.
//!
//! Actors talk only through the message types in `wtm_messages`.

pub mod archiver;
pub mod detector;
pub mod partition_owner;
pub mod supervisor;
pub mod window;

use ractor::ActorProcessingErr;
use wtm_core::error::ErrorKind;
use wtm_messages::Failure;

/// Whether a child's failure is worth a restart. Errors keep their type through `?` into
/// ractor's boxed error, so each crate's error says for itself; anything unknown (a panic, a
/// dropped call) is taken as transient.
pub fn failure_kind(err: &ActorProcessingErr) -> ErrorKind {
    let e: &(dyn std::error::Error + 'static) = err.as_ref();
    if let Some(f) = e.downcast_ref::<Failure>() {
        return f.kind;
    }
    if let Some(e) = e.downcast_ref::<wtm_storage::CheckpointStoreError>() {
        return e.kind();
    }
    if let Some(e) = e.downcast_ref::<wtm_storage::LakeError>() {
        return e.kind();
    }
    if let Some(e) = e.downcast_ref::<wtm_storage::StoreError>() {
        return e.kind();
    }
    if let Some(e) = e.downcast_ref::<wtm_sources::SourceError>() {
        return e.kind;
    }
    if e.is::<wtm_core::checkpoint::WireError>() {
        return ErrorKind::Permanent;
    }
    ErrorKind::Transient
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_keep_their_kind_through_the_boxed_error() {
        let boxed = |e: Box<dyn std::error::Error + Send + Sync>| e;
        let wire = wtm_core::checkpoint::decode::<u8>("k", &[250]).unwrap_err();
        assert_eq!(failure_kind(&boxed(Box::new(wire))), ErrorKind::Permanent);
        let denied = Failure::permanent("access denied");
        assert_eq!(failure_kind(&boxed(Box::new(denied))), ErrorKind::Permanent);
        let down = wtm_sources::SourceError::transient("broker away");
        assert_eq!(failure_kind(&boxed(Box::new(down))), ErrorKind::Transient);
        assert_eq!(failure_kind(&boxed("a panic".into())), ErrorKind::Transient);
    }
}
