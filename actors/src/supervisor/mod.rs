//! The supervisor: starts every child linked to itself, and on a child's failure restarts it
//! with backoff. A restarted window shard makes every owner rewind to its checkpoint (the shard
//! lost their open windows); a restarted owner restores itself in its first message. A failure
//! that no restart can fix (an unreadable checkpoint format, denied credentials) stops the node
//! at once with its message instead of spending the restart budget.
//!
//! [`follow_group`] turns a Kafka consumer group's events into `Assign` / `Revoke` messages.

mod state;

pub use state::{Decision, RestartBudget};

use crate::archiver::{ArchiverActor, ArchiverArgs};
use crate::detector::{DetectorActor, DetectorArgs};
use crate::failure_kind;
use crate::partition_owner::{OwnerActor, OwnerArgs};
use crate::window::WindowActor;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use wtm_config::Config;
use wtm_core::error::ErrorKind;
use wtm_core::time::now_ms;
use wtm_messages::{
    ask, lookup, mailbox, owner_name, shard_name, tell, ChildId, ChildStatus, OwnerMsg, Revocation,
    SupervisorMsg, WindowMsg, ARCHIVER_NAME, CALL_TIMEOUT, DETECTOR_NAME,
};
use wtm_sources::kafka::GroupEvent;
use wtm_sources::SourceFactory;
use wtm_storage::{CheckpointStore, Lake};
use wtm_telemetry::{ActorKind, KeyValue, Metrics};

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
    /// The API's window history file (see `ArchiverArgs::history`).
    pub history: Option<std::path::PathBuf>,
    /// Explains episodes for the alerts' texts (None: alerts go without).
    pub explain: Option<wtm_messages::ExplainEpisode>,
}

pub struct SupervisorActor;

/// Why the supervisor gave up, once it has (one node per process, like ractor's registry).
static GAVE_UP: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Why the node's supervisor stopped itself: a permanent failure or a spent restart budget.
pub fn gave_up_because() -> Option<&'static str> {
    GAVE_UP.get().map(String::as_str)
}

fn give_up(me: &ActorRef<SupervisorMsg>, reason: String) {
    // The first reason is the one that stopped the node.
    GAVE_UP.get_or_init(|| reason.clone());
    me.stop(Some(reason));
}

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
        self.spawn_child(me, child).await.map_err(|e| match e {
            // Keep the child's own error, so its kind survives.
            SpawnErr::StartupFailed(inner) => inner,
            other => other.into(),
        })
    }

    async fn spawn_child(
        &mut self,
        me: &ActorRef<SupervisorMsg>,
        child: ChildId,
    ) -> Result<(), SpawnErr> {
        let cfg = &self.args.config;
        let sup = me.get_cell();
        let cell = match child {
            ChildId::Archiver => {
                let args = ArchiverArgs {
                    lake: self.args.lake.clone(),
                    retention_windows: cfg.api.retention_windows,
                    listing_windows: cfg.api.listing_windows,
                    history: self.args.history.clone(),
                    history_cache_bytes: cfg.api.history_cache_mb.saturating_mul(1 << 20),
                    spec: cfg.window_spec(),
                    detect: cfg.detector.enabled,
                    merge_wait: std::time::Duration::from_secs(cfg.detector.merge_wait_s),
                    clustered: cfg.cluster.listen.is_some(),
                    seed_windows: cfg
                        .detector
                        .baseline_windows
                        .max(cfg.detector.model_history),
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
                    alerts: cfg.alerts.clone(),
                    explain: self.args.explain.clone(),
                    records: Some(
                        (self.args.store.records("detector"))
                            .map_err(|e| SpawnErr::StartupFailed(e.into()))?,
                    ),
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
                self.failed(me, ChildId::Owner(p), &e);
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
            let id = cell.get_id();
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
            mailbox::closed(id);
        }
        for i in 0..self.args.config.window.shards {
            if let Some(shard) = lookup::<WindowMsg>(&shard_name(i)) {
                for &p in &r.partitions {
                    if tell(&shard, ActorKind::Window, WindowMsg::Reset(p, Vec::new())).is_err() {
                        // A restarting shard starts empty: nothing of `p` to clear.
                        continue;
                    }
                }
            }
        }
    }

    /// Final checkpoints of every owned partition (shutdown), in order.
    async fn drain_all(&mut self) {
        for &p in &self.owned {
            if let Some(owner) = lookup::<OwnerMsg>(&owner_name(p)) {
                if let Err(e) = ask(&owner, ActorKind::PartitionOwner, OwnerMsg::Drain).await {
                    tracing::warn!(partition = p, error = %e, "final checkpoint failed; the next start replays from the previous one");
                }
            }
        }
    }

    /// A child died (or failed to start): restart it after its backoff, or give up — at once
    /// when the failure is permanent.
    fn failed(&mut self, me: &ActorRef<SupervisorMsg>, child: ChildId, err: &ActorProcessingErr) {
        let why = err.to_string();
        let cfg = self.args.config.supervisor.clone();
        let entry = self.children.entry(child).or_default();
        entry.0 = None;
        if failure_kind(err) == ErrorKind::Permanent {
            tracing::error!(
                ?child,
                reason = %why,
                "permanent failure (no restart can fix it); stopping the node"
            );
            give_up(me, format!("{child:?} failed permanently: {why}"));
            return;
        }
        match entry.1.on_failure(&cfg, now_ms()) {
            Decision::Restart { after, generation } => {
                tracing::warn!(
                    ?child,
                    generation,
                    backoff_ms = after.as_millis() as u64,
                    reason = %why,
                    "child failed; restarting"
                );
                let m = Metrics::global();
                m.restarts
                    .add(1, &[KeyValue::new("actor", kind_of(child).as_str())]);
                m.restarts_total
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                mailbox::tell_after(me.clone(), ActorKind::Supervisor, after, move || {
                    SupervisorMsg::Restart(child)
                });
            }
            Decision::GiveUp { failures } => {
                tracing::error!(
                    ?child,
                    failures,
                    reason = %why,
                    "restart budget exhausted; stopping the node"
                );
                give_up(me, format!("{child:?} failed {failures} times: {why}"));
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
        // Order matters: owners restore into shards and publish through the archiver, which
        // seeds the detector with history as it starts.
        run.spawn(&me, ChildId::Detector).await?;
        run.spawn(&me, ChildId::Archiver).await?;
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
        let started = std::time::Instant::now();
        match msg {
            SupervisorMsg::Restart(ChildId::Owner(p)) if !run.owned.contains(&p) => {
                // Revoked while it waited for its backoff.
            }
            SupervisorMsg::Assign(partitions) => run.assign(&me, partitions).await,
            SupervisorMsg::Revoke(r, reply) => {
                run.revoke(r).await;
                // The group may have stopped waiting; the owners are stopped either way.
                reply.send(()).ok();
            }
            SupervisorMsg::DrainAll(reply) => {
                run.drain_all().await;
                reply.send(()).ok();
            }
            SupervisorMsg::Restart(child) => match run.spawn(&me, child).await {
                Ok(()) => {
                    tracing::info!(?child, "child restarted");
                    if let ChildId::Shard(_) = child {
                        // The new shard is empty: every owner refills it from its checkpoint.
                        for &p in &run.owned {
                            if let Some(owner) = lookup::<OwnerMsg>(&owner_name(p)) {
                                if tell(&owner, ActorKind::PartitionOwner, OwnerMsg::Rewind)
                                    .is_err()
                                {
                                    // Stopped meanwhile: its own restart restores it anyway.
                                    continue;
                                }
                            }
                        }
                    }
                }
                Err(e) => run.failed(&me, child, &e),
            },
            SupervisorMsg::Status(reply) => {
                let status = run
                    .children
                    .iter()
                    .map(|(id, (cell, budget))| ChildStatus {
                        child: format!("{id:?}"),
                        running: cell.is_some(),
                        restarts: budget.generation,
                    })
                    .collect();
                reply.send(status).ok();
            }
        }
        mailbox::handled(me.get_id(), ActorKind::Supervisor, started);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<SupervisorMsg>,
        evt: SupervisionEvent,
        run: &mut SupervisorRun,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, err): (ActorCell, ActorProcessingErr) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()).into())
            }
            _ => return Ok(()),
        };
        // Whatever was queued for it died with it.
        mailbox::closed(cell.get_id());
        if let Some(child) = run.by_actor.remove(&cell.get_id()) {
            run.failed(&me, child, &err);
        }
        Ok(())
    }
}

/// Carry a consumer group's events to the supervisor: assignments start owners, revocations
/// stop them (after final checkpoints unless the assignment was lost) and are answered when
/// done, which is what lets the group hand the partitions over.
pub fn follow_group(
    mut events: tokio::sync::mpsc::UnboundedReceiver<GroupEvent>,
    sup: ActorRef<SupervisorMsg>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                GroupEvent::Assigned(partitions) => {
                    if let Err(e) = tell(
                        &sup,
                        ActorKind::Supervisor,
                        SupervisorMsg::Assign(partitions),
                    ) {
                        tracing::error!(error = %e, "cannot start partition owners");
                    }
                }
                GroupEvent::Revoked {
                    partitions,
                    lost,
                    done,
                } => {
                    let revocation = Revocation {
                        partitions,
                        drain: !lost,
                    };
                    if let Err(e) = ask(&sup, ActorKind::Supervisor, |r| {
                        SupervisorMsg::Revoke(revocation, r)
                    })
                    .await
                    {
                        tracing::warn!(error = %e, "revocation not confirmed by the supervisor");
                    }
                    done.done();
                }
            }
        }
    })
}
