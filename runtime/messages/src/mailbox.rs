//! Mailbox accounting: ractor does not expose queue lengths, so every send through [`tell`] or
//! [`ask`] counts the message against its receiver, every handler reports [`handled`], and when
//! an actor stops, [`closed`] takes the messages it never handled off the count. Owners hold back
//! on the window shards' depth, so a count that only grew would stall them for good.

use ractor::{ActorId, ActorRef, Message, RpcReplyPort};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, Instant};
use wtm_telemetry::{ActorKind, Metrics};

/// Timeout of every actor call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

struct Queued {
    kind: ActorKind,
    count: Arc<AtomicI64>,
}

static QUEUED: LazyLock<RwLock<HashMap<ActorId, Queued>>> = LazyLock::new(Default::default);

fn counter(to: ActorId, kind: ActorKind) -> Arc<AtomicI64> {
    if let Some(q) = QUEUED.read().unwrap_or_else(|e| e.into_inner()).get(&to) {
        return Arc::clone(&q.count);
    }
    let mut all = QUEUED.write().unwrap_or_else(|e| e.into_inner());
    Arc::clone(
        &all.entry(to)
            .or_insert_with(|| Queued {
                kind,
                count: Arc::default(),
            })
            .count,
    )
}

fn enqueued(to: ActorId, kind: ActorKind) -> Arc<AtomicI64> {
    let c = counter(to, kind);
    c.fetch_add(1, Ordering::Relaxed);
    kind.enqueued();
    c
}

fn undo(c: &AtomicI64, kind: ActorKind) {
    c.fetch_sub(1, Ordering::Relaxed);
    kind.dequeued();
}

/// An actor finished handling one message that it began handling at `started`.
pub fn handled(me: ActorId, kind: ActorKind, started: Instant) {
    if let Some(q) = QUEUED.read().unwrap_or_else(|e| e.into_inner()).get(&me) {
        q.count.fetch_sub(1, Ordering::Relaxed);
        kind.dequeued();
    }
    Metrics::global().handle_time(kind, started.elapsed().as_secs_f64());
}

/// The actor has stopped: the messages still queued for it are dropped with it.
pub fn closed(id: ActorId) {
    let gone = QUEUED
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    if let Some(q) = gone {
        let n = q.count.load(Ordering::Relaxed);
        if n > 0 {
            q.kind.forget(n);
        }
    }
}

/// Messages queued for one actor now (for tests and diagnostics).
pub fn queued(id: ActorId) -> i64 {
    QUEUED
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&id)
        .map_or(0, |q| q.count.load(Ordering::Relaxed))
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0} is not running")]
    Gone(String),
    #[error("call to {0} timed out or was dropped")]
    NoReply(String),
}

/// Cast, counting the message in the receiver's mailbox.
pub fn tell<M: Message>(to: &ActorRef<M>, kind: ActorKind, msg: M) -> Result<(), SendError> {
    let c = enqueued(to.get_id(), kind);
    to.cast(msg).map_err(|_| {
        undo(&c, kind);
        SendError::Gone(kind.as_str().into())
    })
}

/// Send `make()` to `to` after `after`, counted like [`tell`] (ractor's `send_after` would bypass
/// the count). Dropped if `to` stopped meanwhile: it no longer wants it.
pub fn tell_after<M: Message>(
    to: ActorRef<M>,
    kind: ActorKind,
    after: Duration,
    make: impl FnOnce() -> M + Send + 'static,
) {
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        if tell(&to, kind, make()).is_err() {
            tracing::trace!(actor = kind.as_str(), "timer fired after its actor stopped");
        }
    });
}

/// Call with the standard timeout, counting the message in the receiver's mailbox.
pub async fn ask<M: Message, R: Send + 'static>(
    to: &ActorRef<M>,
    kind: ActorKind,
    build: impl FnOnce(RpcReplyPort<R>) -> M,
) -> Result<R, SendError> {
    let c = enqueued(to.get_id(), kind);
    match to.call(build, Some(CALL_TIMEOUT)).await {
        Ok(ractor::rpc::CallResult::Success(r)) => Ok(r),
        // Timed out: the message may still be queued, or handled later; its count goes with
        // the handler or with `closed`.
        Ok(_) => Err(SendError::NoReply(kind.as_str().into())),
        Err(_) => {
            undo(&c, kind);
            Err(SendError::Gone(kind.as_str().into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::{Actor, ActorProcessingErr};

    /// Handles each message slowly, so messages queue behind the first.
    struct Slow;

    impl Actor for Slow {
        type Msg = ();
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
        async fn handle(
            &self,
            me: ActorRef<()>,
            _: (),
            _: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            let started = Instant::now();
            tokio::time::sleep(Duration::from_millis(200)).await;
            handled(me.get_id(), ActorKind::Detector, started);
            Ok(())
        }
    }

    #[tokio::test]
    async fn messages_dropped_with_a_stopped_actor_leave_the_count() {
        let before = ActorKind::Detector.depth();
        let (actor, done) = Actor::spawn(None, Slow, ()).await.unwrap();
        for _ in 0..5 {
            tell(&actor, ActorKind::Detector, ()).unwrap();
        }
        assert_eq!(queued(actor.get_id()), 5);
        assert_eq!(ActorKind::Detector.depth(), before + 5);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(queued(actor.get_id()), 4, "one handled");
        // Killed with four still queued: they are dropped, and so is their count.
        actor.kill();
        done.await.unwrap();
        closed(actor.get_id());
        assert_eq!(queued(actor.get_id()), 0);
        assert_eq!(ActorKind::Detector.depth(), before);
        // A send to the stopped actor fails and counts nothing.
        assert!(tell(&actor, ActorKind::Detector, ()).is_err());
        assert_eq!(ActorKind::Detector.depth(), before);
    }
}
