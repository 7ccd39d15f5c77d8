//! The supervisor: starts every child linked to itself, and on a child's failure restarts it
//! with backoff. A restarted window shard makes every owner rewind to its checkpoint (the shard
//! lost their open windows); a restarted owner restores itself in `pre_start`.

mod state;

pub use state::{Decision, RestartBudget};

use crate::archiver::{ArchiverActor, ArchiverArgs};
use crate::detector::{DetectorActor, DetectorArgs};
use crate::partition_owner::{OwnerActor, OwnerArgs};
use crate::spawn_tell_after;
use crate::window::WindowActor;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use wtm_runtime::checkpoint::CheckpointStore;
use wtm_runtime::config::Config;
use wtm_runtime::lake::Lake;
use wtm_runtime::msg::{
    lookup, owner_name, shard_name, tell, ChildId, ChildStatus, OwnerMsg, SupervisorMsg,
    ARCHIVER_NAME, DETECTOR_NAME,
};
use wtm_runtime::source::SourceFactory;
use wtm_runtime::telemetry::{ActorKind, KeyValue, Metrics};
use wtm_runtime::time::now_ms;

pub struct SupervisorArgs {
    pub config: Arc<Config>,
    pub sources: Arc<dyn SourceFactory>,
    pub store: CheckpointStore,
    pub lake: Lake,
    /// Durable checkpoints (see `OwnerArgs::durable`).
    pub durable: bool,
}

pub struct SupervisorActor;

pub struct SupervisorRun {
    args: SupervisorArgs,
    children: BTreeMap<ChildId, (Option<ActorCell>, RestartBudget)>,
    by_actor: HashMap<ActorId, ChildId>,
}

fn kind_of(c: ChildId) -> ActorKind {
    match c {
        ChildId::Archiver => ActorKind::Archiver,
        ChildId::Detector => ActorKind::Detector,
        ChildId::Shard(_) => ActorKind::Window,
        ChildId::Owner(_) => ActorKind::PartitionOwner,
    }
}

impl SupervisorRun {
    async fn spawn(
        &mut self,
        me: &ActorRef<SupervisorMsg>,
        child: ChildId,
    ) -> Result<(), ActorProcessingErr> {
        let cfg = &self.args.config;
        let sup = me.get_cell();
        let cell = match child {
            ChildId::Archiver => {
                let args = ArchiverArgs {
                    lake: self.args.lake.clone(),
                    retention_windows: cfg.api.retention_windows,
                    window_ms: cfg.window_spec().size_ms,
                    detect: cfg.detector.enabled,
                };
                Actor::spawn_linked(Some(ARCHIVER_NAME.into()), ArchiverActor, args, sup)
                    .await?
                    .0
                    .get_cell()
            }
            ChildId::Detector => {
                let args = DetectorArgs {
                    config: cfg.detector.clone(),
                    window_ms: cfg.window_spec().size_ms,
                };
                Actor::spawn_linked(Some(DETECTOR_NAME.into()), DetectorActor, args, sup)
                    .await?
                    .0
                    .get_cell()
            }
            ChildId::Shard(i) => {
                Actor::spawn_linked(Some(shard_name(i)), WindowActor, cfg.window_spec(), sup)
                    .await?
                    .0
                    .get_cell()
            }
            ChildId::Owner(p) => {
                let args = OwnerArgs {
                    partition: p,
                    config: Arc::clone(cfg),
                    sources: Arc::clone(&self.args.sources),
                    store: self.args.store.clone(),
                    durable: self.args.durable,
                };
                Actor::spawn_linked(Some(owner_name(p)), OwnerActor, args, sup)
                    .await?
                    .0
                    .get_cell()
            }
        };
        self.by_actor.insert(cell.get_id(), child);
        let entry = self.children.entry(child).or_default();
        entry.0 = Some(cell);
        entry.1.started(now_ms());
        Ok(())
    }

    /// A child died (or failed to start): restart it after its backoff, or give up.
    fn failed(&mut self, me: &ActorRef<SupervisorMsg>, child: ChildId, why: &str) {
        let cfg = self.args.config.supervisor.clone();
        let entry = self.children.entry(child).or_default();
        entry.0 = None;
        match entry.1.on_failure(&cfg, now_ms()) {
            Decision::Restart { after, generation } => {
                tracing::warn!(
                    ?child,
                    generation,
                    backoff_ms = after.as_millis() as u64,
                    reason = why,
                    "child failed; restarting"
                );
                Metrics::global()
                    .restarts
                    .add(1, &[KeyValue::new("actor", kind_of(child).as_str())]);
                spawn_tell_after(me.clone(), ActorKind::Supervisor, after, move || {
                    SupervisorMsg::Restart(child)
                });
            }
            Decision::GiveUp { failures } => {
                tracing::error!(
                    ?child,
                    failures,
                    reason = why,
                    "restart budget exhausted; stopping the node"
                );
                me.stop(Some(format!("{child:?} failed {failures} times: {why}")));
            }
        }
    }
}

impl Actor for SupervisorActor {
    type Msg = SupervisorMsg;
    type State = SupervisorRun;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        me: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorRun, ActorProcessingErr> {
        let mut run = SupervisorRun {
            args,
            children: BTreeMap::new(),
            by_actor: HashMap::new(),
        };
        // Order matters: owners restore into shards and publish through the archiver.
        run.spawn(&me, ChildId::Archiver).await?;
        run.spawn(&me, ChildId::Detector).await?;
        for i in 0..run.args.config.window.shards {
            run.spawn(&me, ChildId::Shard(i)).await?;
        }
        for p in 0..run.args.config.source.partitions {
            run.spawn(&me, ChildId::Owner(p)).await?;
        }
        Ok(run)
    }

    async fn post_stop(
        &self,
        me: ActorRef<SupervisorMsg>,
        _run: &mut SupervisorRun,
    ) -> Result<(), ActorProcessingErr> {
        me.stop_children(None);
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        run: &mut SupervisorRun,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Restart(child) => {
                ActorKind::Supervisor.dequeued();
                match run.spawn(&me, child).await {
                    Ok(()) => {
                        tracing::info!(?child, "child restarted");
                        if let ChildId::Shard(_) = child {
                            // The new shard is empty: every owner refills it from its checkpoint.
                            for p in 0..run.args.config.source.partitions {
                                if let Some(owner) = lookup::<OwnerMsg>(&owner_name(p)) {
                                    let _ =
                                        tell(&owner, ActorKind::PartitionOwner, OwnerMsg::Rewind);
                                }
                            }
                        }
                    }
                    Err(e) => run.failed(&me, child, &e.to_string()),
                }
            }
            SupervisorMsg::Status(reply) => {
                ActorKind::Supervisor.dequeued();
                let status = run
                    .children
                    .iter()
                    .map(|(id, (cell, budget))| ChildStatus {
                        child: format!("{id:?}"),
                        running: cell.is_some(),
                        restarts: budget.generation,
                    })
                    .collect();
                let _ = reply.send(status);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<SupervisorMsg>,
        evt: SupervisionEvent,
        run: &mut SupervisorRun,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        if let Some(child) = run.by_actor.remove(&cell.get_id()) {
            run.failed(&me, child, &why);
        }
        Ok(())
    }
}
