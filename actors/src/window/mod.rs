//! The window actor: one shard of the open event-time windows, hosts sharded by name.

mod state;

pub use state::WindowState;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::time::Instant;
use wtm_core::window::WindowSpec;
use wtm_messages::{mailbox, WindowMsg};
use wtm_telemetry::ActorKind;

pub struct WindowActor;

impl Actor for WindowActor {
    type Msg = WindowMsg;
    type State = WindowState;
    type Arguments = WindowSpec;

    async fn pre_start(
        &self,
        _me: ActorRef<WindowMsg>,
        spec: WindowSpec,
    ) -> Result<WindowState, ActorProcessingErr> {
        // A restarted shard starts empty; the supervisor then has every owner rewind, which
        // refills it from the checkpoints.
        Ok(WindowState::new(spec))
    }

    async fn handle(
        &self,
        me: ActorRef<WindowMsg>,
        msg: WindowMsg,
        state: &mut WindowState,
    ) -> Result<(), ActorProcessingErr> {
        let started = Instant::now();
        match msg {
            WindowMsg::Apply(batch) => state.apply(batch.partition, &batch.events),
            WindowMsg::Cut(req, reply) => {
                let result = state.cut(req.partition, req.watermark_ms, req.open)?;
                reply.send(result).ok();
            }
            WindowMsg::Reset(partition, open) => state.reset(partition, open),
            WindowMsg::Query(q, reply) => {
                reply.send(state.query(&q)).ok();
            }
            WindowMsg::Counts(page, reply) => {
                reply.send(state.counts(page)).ok();
            }
            WindowMsg::Names(reply) => {
                reply.send(state.names()).ok();
            }
        }
        mailbox::handled(me.get_id(), ActorKind::Window, started);
        Ok(())
    }
}
