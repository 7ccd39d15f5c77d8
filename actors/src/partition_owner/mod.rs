//! The partition owner: reads one source partition, parses, decides lateness, routes event
//! batches to the window shards, and drives the checkpoint cycle (cut → commit → publish).

mod state;

pub use state::{Ingested, LakeBackoff, OwnerSettings, OwnerState};

use crate::spawn_tell_after;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use wtm_runtime::checkpoint::{decode, encode, CheckpointStore, OpenWindows, PartitionCheckpoint};
use wtm_runtime::config::Config;
use wtm_runtime::event::Event;
use wtm_runtime::lake::Lake;
use wtm_runtime::msg::{
    ask, lookup, shard_name, shard_of, tell, ArchiverMsg, CutRequest, EventBatch, OwnerMsg,
    PartitionStatus, WindowMsg, ARCHIVER_NAME,
};
use wtm_runtime::source::{PartitionSource, Polled, RecordBatch, SourceFactory};
use wtm_runtime::telemetry::{partition_label, ActorKind, KeyValue, Metrics};
use wtm_runtime::time::now_ms;
use wtm_runtime::window::NO_WATERMARK;

/// Window-shard mailbox depth above which owners hold back (backpressure).
const MAX_SHARD_BACKLOG: i64 = 64;

pub struct OwnerArgs {
    pub partition: u32,
    pub config: Arc<Config>,
    pub sources: Arc<dyn SourceFactory>,
    pub store: CheckpointStore,
    /// Write checkpoints to sled. Off for `wtm batch`, whose recovery is a rerun: windows are
    /// still cut and published at every checkpoint tick, without encoding the open ones.
    pub durable: bool,
    /// Publish checkpoints to this lake's `checkpoints/` for other nodes, and restore from
    /// there when that snapshot is newer (a consumer group moves partitions between nodes).
    pub snapshots: Option<Lake>,
}

pub struct OwnerActor;

pub struct OwnerRun {
    args: OwnerArgs,
    state: OwnerState,
    source: Box<dyn PartitionSource>,
    shards: Vec<ActorRef<WindowMsg>>,
    batch: RecordBatch,
    routed: Vec<Vec<Event>>,
    poll_pending: bool,
    /// Drained for shutdown: no more reads or checkpoints.
    draining: bool,
    last_input: Instant,
    last_flush: Instant,
    /// When the checkpoint was last published to the shared snapshot (None: not yet).
    last_snapshot: Option<Instant>,
    /// After a failed lake write (tables or snapshot), when to try again.
    lake_backoff: LakeBackoff,
    timer: Option<JoinHandle<()>>,
}

fn settings(args: &OwnerArgs) -> OwnerSettings {
    OwnerSettings {
        partition: args.partition,
        spec: args.config.window_spec(),
        format: args.config.source.format,
        default_host: args.config.source.host.clone(),
        shards: args.config.window.shards,
        raw_events: args.config.lake.raw_events,
    }
}

fn shards(n: usize) -> Result<Vec<ActorRef<WindowMsg>>, ActorProcessingErr> {
    (0..n)
        .map(|i| {
            lookup::<WindowMsg>(&shard_name(i))
                .ok_or_else(|| format!("window shard {i} is not running").into())
        })
        .collect()
}

/// Load the checkpoint, finish its pending publications, refill the shards, seek the source.
async fn restore(
    args: &OwnerArgs,
) -> Result<
    (
        OwnerState,
        Vec<ActorRef<WindowMsg>>,
        Box<dyn PartitionSource>,
    ),
    ActorProcessingErr,
> {
    let store = args.store.clone();
    let p = args.partition;
    let (durable, snapshots) = (args.durable, args.snapshots.clone());
    let cp =
        tokio::task::spawn_blocking(move || load_newest(&store, durable, snapshots.as_ref(), p))
            .await??;
    let fresh = cp.is_none();
    let (mut state, open) = match cp {
        Some(cp) => OwnerState::restore(settings(args), cp),
        None => (OwnerState::new(settings(args)), Vec::new()),
    };
    // A lake that is down now is retried by the checkpoints; the partition still starts.
    publish_pending(&mut state).await?;
    let shard_refs = shards(args.config.window.shards)?;
    let mut per_shard: Vec<OpenWindows> = vec![Vec::new(); shard_refs.len()];
    for blob in open {
        let windows: OpenWindows = decode("open windows", &blob)?;
        for (key, agg) in windows {
            per_shard[shard_of(&key.host, shard_refs.len())].push((key, agg));
        }
    }
    // Every shard gets a Reset, empty or not, so no stale state of this partition survives.
    for (shard, open) in shard_refs.iter().zip(per_shard) {
        tell(shard, ActorKind::Window, WindowMsg::Reset(p, open))?;
    }
    let source = if fresh {
        args.sources.open_new(p)?
    } else {
        args.sources.open(p, state.next_offset)?
    };
    tracing::info!(
        partition = p,
        offset = state.next_offset,
        epoch = state.owner_epoch,
        finished = state.finished,
        "partition restored"
    );
    Ok((state, shard_refs, source))
}

/// The checkpoint to restore: the local one, or the shared snapshot when another node owned the
/// partition since. Blocking.
fn load_newest(
    store: &CheckpointStore,
    durable: bool,
    snapshots: Option<&Lake>,
    p: u32,
) -> Result<Option<PartitionCheckpoint>, ActorProcessingErr> {
    let local = if durable { store.load(p)? } else { None };
    let shared = match snapshots {
        Some(lake) => match lake.read_snapshot(p)? {
            Some(bytes) => Some(decode::<PartitionCheckpoint>(
                &format!("{}/{}", lake.describe(), Lake::snapshot_key(p)),
                &bytes,
            )?),
            None => None,
        },
        None => None,
    };
    let (l, s) = (
        local.as_ref().map(|c| (c.owner_epoch, c.next_offset)),
        shared.as_ref().map(|c| (c.owner_epoch, c.next_offset)),
    );
    let newest = PartitionCheckpoint::newest(local, shared);
    if s.is_some() {
        tracing::info!(partition = p, local = ?l, shared = ?s, "checkpoint candidates (epoch, offset)");
    }
    Ok(newest)
}

/// Write committed publications to the lake, oldest first; stop at the first failure (kept for
/// the next checkpoint, so nothing is lost while the lake is unavailable). False on a failure.
async fn publish_pending(state: &mut OwnerState) -> Result<bool, ActorProcessingErr> {
    if state.ready_publications().is_empty() {
        return Ok(true);
    }
    let archiver = lookup::<ArchiverMsg>(ARCHIVER_NAME).ok_or("archiver is not running")?;
    while let Some(p) = state.ready_publications().first().cloned() {
        match ask(&archiver, ActorKind::Archiver, |r| {
            ArchiverMsg::Publish(p, r)
        })
        .await?
        {
            Ok(()) => state.published_one(),
            Err(e) => {
                tracing::warn!(partition = state.settings.partition, error = %e, "lake write failed; will retry");
                return Ok(false);
            }
        }
    }
    Ok(true)
}

impl OwnerRun {
    fn schedule_poll(&mut self, me: &ActorRef<OwnerMsg>, after: Duration) {
        if self.poll_pending || self.state.finished {
            return;
        }
        self.poll_pending = true;
        if after.is_zero() {
            let _ = tell(me, ActorKind::PartitionOwner, OwnerMsg::Poll);
        } else {
            spawn_tell_after(me.clone(), ActorKind::PartitionOwner, after, || {
                OwnerMsg::Poll
            });
        }
    }

    async fn poll(&mut self, me: &ActorRef<OwnerMsg>) -> Result<(), ActorProcessingErr> {
        self.poll_pending = false;
        if self.state.finished || self.state.source_done || self.draining {
            return Ok(());
        }
        if ActorKind::Window.depth() > MAX_SHARD_BACKLOG * self.shards.len() as i64 {
            self.schedule_poll(me, Duration::from_millis(2));
            return Ok(());
        }
        // The lake has been away long enough that the records waiting for it reach the bound:
        // stop reading (the source keeps them) until it is back, instead of growing without end.
        if self.state.unwritten_records() >= self.args.config.lake.max_unwritten_records {
            self.schedule_poll(me, Duration::from_millis(200));
            return Ok(());
        }
        self.batch.clear();
        // File and pipe reads block (a stalled stdin for as long as it stalls): tell tokio, so
        // the worker's other tasks move elsewhere meanwhile.
        let (source, batch, max) = (
            &mut self.source,
            &mut self.batch,
            self.args.config.source.batch_size,
        );
        let polled = tokio::task::block_in_place(|| source.poll(max, batch));
        if !self.batch.records.is_empty() {
            self.last_input = Instant::now();
            let got = self.state.ingest(&self.batch, &mut self.routed);
            let m = Metrics::global();
            let pl = [partition_label(self.args.partition)];
            m.events.add(self.batch.records.len() as u64, &pl);
            if got.late > 0 {
                m.late.add(got.late, &pl);
            }
            for (offset, reason) in got.invalid {
                m.invalid.add(
                    1,
                    &[pl[0].clone(), KeyValue::new("reason", reason.as_str())],
                );
                let records = &self.batch.records;
                if let Ok(i) = records.binary_search_by_key(&offset, |r| r.0) {
                    let raw = &self.batch.buf[records[i].1.clone()];
                    self.source.dead_letter(offset, reason.as_str(), raw);
                }
            }
            for (shard, events) in self.shards.iter().zip(self.routed.iter_mut()) {
                if !events.is_empty() {
                    let batch = EventBatch {
                        partition: self.args.partition,
                        events: std::mem::take(events),
                    };
                    tell(shard, ActorKind::Window, WindowMsg::Apply(batch))?;
                }
            }
        }
        match polled {
            Polled::Ready => self.schedule_poll(me, Duration::ZERO),
            Polled::NotBefore(at) => {
                let idle = Duration::from_secs(self.args.config.window.idle_timeout_s);
                if self.last_input.elapsed() >= idle
                    && self.state.watermark.max_event_ms != NO_WATERMARK
                {
                    let spec = self.state.settings.spec;
                    if self.state.watermark.advance_idle(&spec, now_ms()) {
                        // A wall-clock decision: commit it at once, with a flush, so that no
                        // replay ever has to cross it.
                        tracing::info!(
                            partition = self.args.partition,
                            "idle partition: watermark advanced"
                        );
                        self.checkpoint_with(true).await?;
                    }
                    self.last_input = Instant::now();
                }
                let wait = (at - now_ms()).clamp(1, 200) as u64;
                self.schedule_poll(me, Duration::from_millis(wait));
            }
            Polled::Finished => {
                tracing::info!(
                    partition = self.args.partition,
                    offset = self.state.next_offset,
                    "source finished"
                );
                self.state.source_done = true;
                self.state.watermark.finish();
                self.checkpoint().await?;
            }
        }
        Ok(())
    }

    /// Cut closed windows from the shards, commit state + outputs in one sled insert, then
    /// write the outputs to the lake.
    async fn checkpoint(&mut self) -> Result<(), ActorProcessingErr> {
        self.checkpoint_with(false).await
    }

    /// `flush_now` also cuts the buffered records, whatever the flush interval, and publishes
    /// the shared snapshot.
    async fn checkpoint_with(&mut self, flush_now: bool) -> Result<(), ActorProcessingErr> {
        if self.state.finished || self.draining || self.state.replaying() {
            return Ok(());
        }
        let started = Instant::now();
        let partition = self.args.partition;
        let watermark_ms = self.state.watermark_ms();
        let mut closed = Vec::new();
        let mut open = Vec::new();
        for shard in &self.shards {
            let cut = ask(shard, ActorKind::Window, |r| {
                WindowMsg::Cut(
                    CutRequest {
                        partition,
                        watermark_ms,
                        snapshot: self.args.durable,
                    },
                    r,
                )
            })
            .await?;
            closed.extend(cut.closed);
            if !cut.open.is_empty() {
                open.push(cut.open);
            }
        }
        let closed_n = closed.len() as u64;
        let now = now_ms();
        // Record-level outputs go out in larger files: every flush interval, and at the end.
        let flush = flush_now
            || self.state.source_done
            || self.last_flush.elapsed()
                >= Duration::from_millis(self.args.config.lake.flush_interval_ms)
            || self.state.buffered_len() >= self.args.config.lake.flush_records;
        if flush {
            self.last_flush = Instant::now();
        }
        self.state.cut_publication(closed, now, flush);
        let cp = self.state.checkpoint(open);
        let finished = cp.finished;
        let resume_at = cp.resume_at().0;
        let m = Metrics::global();
        // An owner publishes its snapshot before it writes anything to the lake, so a node that
        // takes the partition over knows every file's offset range; and otherwise every
        // `snapshot_interval_ms`, and at a revoke.
        // After a failed lake write, wait out the backoff (a drain tries regardless).
        let lake_ready = flush_now || self.lake_backoff.ready(Instant::now());
        let snapshot = self.args.snapshots.clone().filter(|_| {
            lake_ready
                && (flush_now
                    || !self.state.ready_publications().is_empty()
                    || self.last_snapshot.is_none_or(|t| {
                        t.elapsed()
                            >= Duration::from_millis(
                                self.args.config.checkpoint.snapshot_interval_ms,
                            )
                    }))
        });
        let mut may_publish = lake_ready;
        if self.args.durable || snapshot.is_some() {
            let store = self.args.store.clone();
            let durable = self.args.durable;
            let (size, shared) = tokio::task::spawn_blocking(move || {
                let bytes = encode(&cp)?;
                let size = bytes.len();
                let shared = snapshot.map(|lake| lake.write_snapshot(partition, &bytes));
                if durable {
                    store.save_encoded(partition, bytes)?;
                }
                Ok::<_, ActorProcessingErr>((size, shared))
            })
            .await??;
            m.checkpoint_bytes.record(size as u64, &[]);
            match shared {
                Some(Ok(())) => {
                    m.snapshots.add(1, &[]);
                    self.last_snapshot = Some(Instant::now());
                    // The snapshot is durable where the next owner reads it: now the offset may
                    // be committed.
                    self.source.commit(resume_at);
                }
                Some(Err(e)) => {
                    m.lake_errors
                        .add(1, &[KeyValue::new("table", "checkpoints")]);
                    tracing::warn!(partition, error = %e, "snapshot publish failed; lake writes wait for the next one");
                    self.lake_backoff.failed(Instant::now());
                    may_publish = false;
                }
                None => {}
            }
        }
        m.windows_closed.add(closed_n, &[]);
        if may_publish {
            if publish_pending(&mut self.state).await? {
                self.lake_backoff.succeeded();
            } else {
                self.lake_backoff.failed(Instant::now());
            }
        }
        m.checkpoint_seconds
            .record(started.elapsed().as_secs_f64(), &[]);
        let pl = [partition_label(partition)];
        m.source_offset.record(self.state.next_offset, &pl);
        m.lake_backlog
            .record(self.state.unpublished.len() as u64, &pl);
        if let Some(lag) = self.source.lag() {
            m.consumer_lag.record(lag, &pl);
        }
        if let Some(lag) = self.state.watermark_lag_s(now) {
            m.watermark_lag.record(lag, &pl);
        }
        if finished && self.state.unpublished.is_empty() {
            self.state.finished = true;
            tracing::info!(
                partition,
                "partition complete: every window closed and written"
            );
        }
        Ok(())
    }

    fn status(&mut self) -> PartitionStatus {
        let wm = self.state.watermark_ms();
        let max = self.state.watermark.max_event_ms;
        PartitionStatus {
            partition: self.args.partition,
            next_offset: self.state.next_offset,
            committed_offset: self.source.committed(),
            lag: self.source.lag(),
            owner_epoch: self.state.owner_epoch,
            watermark_ms: (wm != NO_WATERMARK && wm != i64::MAX).then_some(wm),
            max_event_ms: (max != NO_WATERMARK).then_some(max),
            finished: self.state.finished,
            totals: self.state.totals.clone(),
        }
    }
}

impl Actor for OwnerActor {
    type Msg = OwnerMsg;
    type State = OwnerRun;
    type Arguments = OwnerArgs;

    async fn pre_start(
        &self,
        me: ActorRef<OwnerMsg>,
        args: OwnerArgs,
    ) -> Result<OwnerRun, ActorProcessingErr> {
        let (state, shards, source) = restore(&args).await?;
        let m = Metrics::global();
        let pl = [partition_label(args.partition)];
        m.events.add(0, &pl);
        m.late.add(0, &pl);
        let interval = Duration::from_millis(args.config.checkpoint.interval_ms);
        let ticker = me.clone();
        let timer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if tell(&ticker, ActorKind::PartitionOwner, OwnerMsg::Checkpoint).is_err() {
                    break;
                }
            }
        });
        let n = shards.len();
        let mut run = OwnerRun {
            args,
            state,
            source,
            shards,
            batch: RecordBatch::default(),
            routed: vec![Vec::new(); n],
            poll_pending: false,
            draining: false,
            last_input: Instant::now(),
            last_flush: Instant::now(),
            last_snapshot: None,
            lake_backoff: LakeBackoff::default(),
            timer: Some(timer),
        };
        run.schedule_poll(&me, Duration::ZERO);
        Ok(run)
    }

    async fn post_stop(
        &self,
        _me: ActorRef<OwnerMsg>,
        run: &mut OwnerRun,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = run.timer.take() {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<OwnerMsg>,
        msg: OwnerMsg,
        run: &mut OwnerRun,
    ) -> Result<(), ActorProcessingErr> {
        let started = Instant::now();
        match msg {
            OwnerMsg::Poll => run.poll(&me).await?,
            OwnerMsg::Checkpoint => run.checkpoint().await?,
            OwnerMsg::Rewind => {
                let (state, shards, source) = restore(&run.args).await?;
                (run.state, run.shards, run.source) = (state, shards, source);
                run.schedule_poll(&me, Duration::ZERO);
            }
            OwnerMsg::Drain(reply) => {
                run.checkpoint_with(run.args.snapshots.is_some()).await?;
                run.draining = true;
                let _ = reply.send(());
            }
            OwnerMsg::Status(reply) => {
                let _ = reply.send(run.status());
            }
        }
        Metrics::global().handled(ActorKind::PartitionOwner, started.elapsed().as_secs_f64());
        Ok(())
    }
}
