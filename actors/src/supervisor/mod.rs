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
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use wtm_runtime::checkpoint::CheckpointStore;
use wtm_runtime::config::Config;
use wtm_runtime::lake::Lake;
use wtm_runtime::msg::{
    ask, lookup, owner_name, shard_name, tell, ChildId, ChildStatus, OwnerMsg, Revocation,
    SupervisorMsg, WindowMsg, ARCHIVER_NAME, CALL_TIMEOUT, DETECTOR_NAME,
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
    /// Partitions owned from the start (generator, files). A Kafka node starts with none and
    /// is told by its consumer group (`SupervisorMsg::Assign` / `Revoke`).
    pub partitions: Vec<u32>,
    /// Shared snapshots for cross-node handoff (see `OwnerArgs::snapshots`).
    pub snapshots: Option<Lake>,
}

pub struct SupervisorActor;

pub struct SupervisorRun {
    args: SupervisorArgs,
    children: BTreeMap<ChildId, (Option<ActorCell>, RestartBudget)>,
    by_actor: HashMap<ActorId, ChildId>,
    /// Partitions this node owns now; a pending restart of any other owner is dropped.
    owned: BTreeSet<u32>,
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
                    snapshots: self.args.snapshots.clone(),
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

    /// Start owners for newly assigned partitions (a failed start is retried like a crash).
    async fn assign(&mut self, me: &ActorRef<SupervisorMsg>, partitions: Vec<u32>) {
        for p in partitions {
            if !self.owned.insert(p) {
                continue;
            }
            if let Err(e) = self.spawn(me, ChildId::Owner(p)).await {
                self.failed(me, ChildId::Owner(p), &e.to_string());
            }
        }
    }

    /// Stop the owners of revoked partitions, after a final checkpoint when asked, and clear
    /// their open windows from the shards (the next owner restores them from its snapshot).
    async fn revoke(&mut self, r: Revocation) {
        for &p in &r.partitions {
            self.owned.remove(&p);
            let Some((cell, _)) = self.children.remove(&ChildId::Owner(p)) else {
                continue;
            };
            let Some(cell) = cell else { continue };
            self.by_actor.remove(&cell.get_id());
            if r.drain {
                let owner: ActorRef<OwnerMsg> = cell.clone().into();
                if let Err(e) = ask(&owner, ActorKind::PartitionOwner, OwnerMsg::Drain).await {
                    tracing::warn!(partition = p, error = %e, "final checkpoint failed; the next owner replays from the last snapshot");
                }
            }
            if let Err(e) = cell
                .stop_and_wait(Some("partition revoked".into()), Some(CALL_TIMEOUT))
                .await
            {
                tracing::warn!(partition = p, error = %e, "owner did not stop in time");
            }
        }
        for i in 0..self.args.config.window.shards {
            if let Some(shard) = lookup::<WindowMsg>(&shard_name(i)) {
                for &p in &r.partitions {
                    let _ = tell(&shard, ActorKind::Window, WindowMsg::Reset(p, Vec::new()));
                }
            }
        }
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
            owned: BTreeSet::new(),
        };
        // Order matters: owners restore into shards and publish through the archiver.
        run.spawn(&me, ChildId::Archiver).await?;
        run.spawn(&me, ChildId::Detector).await?;
        for i in 0..run.args.config.window.shards {
            run.spawn(&me, ChildId::Shard(i)).await?;
        }
        for p in run.args.partitions.clone() {
            run.owned.insert(p);
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
            SupervisorMsg::Restart(ChildId::Owner(p)) if !run.owned.contains(&p) => {
                // Revoked while it waited for its backoff.
                ActorKind::Supervisor.dequeued();
            }
            SupervisorMsg::Assign(partitions) => {
                ActorKind::Supervisor.dequeued();
                run.assign(&me, partitions).await;
            }
            SupervisorMsg::Revoke(r, reply) => {
                ActorKind::Supervisor.dequeued();
                run.revoke(r).await;
                let _ = reply.send(());
            }
            SupervisorMsg::Restart(child) => {
                ActorKind::Supervisor.dequeued();
                match run.spawn(&me, child).await {
                    Ok(()) => {
                        tracing::info!(?child, "child restarted");
                        if let ChildId::Shard(_) = child {
                            // The new shard is empty: every owner refills it from its checkpoint.
                            for &p in &run.owned {
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
