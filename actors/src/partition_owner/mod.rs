//! The partition owner: reads one source partition, parses, decides lateness, routes event
//! batches to the window shards, and drives the checkpoint cycle (cut → commit → publish).
//!
//! A thin shell: what to do and when is decided by [`OwnerState`] and [`CheckpointPolicy`];
//! this file performs it (asks the shards, runs blocking saves on the blocking pool, writes
//! through the archiver, commits through the source). The owner restores itself in its first
//! message, not in `pre_start`, so a slow restore (S3, a lake backlog) never holds up the
//! supervisor that spawned it: assignments and revocations keep flowing meanwhile.
//!
//! A checkpoint's save (encode, shared snapshot, local store) and its lake writes run beside
//! the owner, one of each at a time, and report back by message (`OwnerMsg::Saved`,
//! `OwnerMsg::LakeWritten`): a big checkpoint or a slow or hung store never holds up reading or
//! a status question. Only a drain waits for them, and a restore for those under way.

mod guard;
mod state;

pub use state::{
    open_cut, CheckpointPlan, CheckpointPolicy, CheckpointTiming, Ingested, LakeBackoff, OpenBase,
    OwnerSettings, OwnerState,
};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wtm_config::Config;
use wtm_core::agg::{ClosedWindow, WindowKey};
use wtm_core::checkpoint::{
    decode, encode, encode_open, restored_windows, PartitionCheckpoint, RestoredWindows,
};
use wtm_core::error::ErrorKind;
use wtm_core::limits::{Field, KEPT_OF_TOO_LONG};
use wtm_core::parse::InvalidReason;
use wtm_core::records::{EventColumns, RawRecords};
use wtm_core::time::now_ms;
use wtm_core::window::NO_WATERMARK;
use wtm_messages::{
    ask, lookup, mailbox, shard_name, shard_of, tell, ArchiverMsg, CutRequest, EventBatch, Failure,
    OpenCut, OwnerMsg, PartitionStatus, SendError, Unwritten, WindowMsg, ARCHIVER_NAME,
};
use wtm_sources::{PartitionSource, Polled, SourceFactory};
use wtm_storage::{CheckpointStore, Expect, Lake, LakeError, Saved, SplitCheckpoint, Version};
use wtm_telemetry::{partition_label, ActorKind, KeyValue, Metrics};

/// Window-shard mailbox depth above which owners hold back (backpressure).
const MAX_SHARD_BACKLOG: i64 = 64;

/// A fenced owner (another owner published the partition's snapshot since this one did) waits
/// this long before it restores from that snapshot and claims the partition again. Long enough
/// for a zombie's consumer group to tell it that it lost the partition (librdkafka does within a
/// heartbeat of waking, or after its session timeout when the broker is unreachable), so a
/// zombie does not take the partition back from its rightful owner; short enough that a
/// rightful owner fenced by such a zombie is soon back.
const FENCED_RETRY: Duration = Duration::from_secs(10);

/// A local checkpoint write (an insert and a flush, normally milliseconds) that takes longer
/// than this means a broken disk.
const STORE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct OwnerArgs {
    pub partition: u32,
    pub config: Arc<Config>,
    pub sources: Arc<dyn SourceFactory>,
    pub store: CheckpointStore,
    /// Write checkpoints to the local store. Off for `wtm batch`, whose recovery is a rerun:
    /// windows are still cut and published at every checkpoint tick, without encoding the open
    /// ones.
    pub durable: bool,
    /// Publish checkpoints to this lake's `checkpoints/` for other nodes, and restore from
    /// there when that snapshot is newer (a consumer group moves partitions between nodes).
    pub snapshots: Option<Lake>,
}

pub struct OwnerActor;

/// The cardinality guard's first fold is logged once per process (the metric counts each).
static GUARD_LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A restored partition: what the owner reads from and routes to.
struct Restored {
    source: Box<dyn PartitionSource>,
    shards: Vec<ActorRef<WindowMsg>>,
    /// With shared snapshots: the version of the partition's snapshot this owner wrote last
    /// (its claim, then each publication). Every snapshot is replaced only if it is still this
    /// version, and nothing reaches the lake before such a replace succeeded: the fence.
    fence: Option<Expect>,
}

/// A restore that only time fixes: the lake unreachable (an S3 outage while partitions move),
/// or another owner's snapshot landing during the claim. The owner retries it itself, without
/// spending the supervisor's restart budget, which is sized for crash loops, not outages.
#[derive(Debug)]
struct RestoreLater(String);

impl std::fmt::Display for RestoreLater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RestoreLater {}

/// A lake error met while restoring: retried by the owner when it is transient.
fn restore_failure(e: LakeError) -> ActorProcessingErr {
    match e.kind() {
        ErrorKind::Transient => RestoreLater(e.to_string()).into(),
        ErrorKind::Permanent => e.into(),
    }
}

/// Why a snapshot was not published.
#[derive(Debug)]
enum SnapshotRefused {
    /// Another owner replaced the snapshot: this one lost the partition. Its epoch, if readable.
    Fenced(Option<u64>),
    Failed(LakeError),
}

/// Replace the partition's snapshot if it is still `expect`. A conflict may also be this
/// owner's own earlier write, one that failed on the way back (a timeout after the store took
/// it): epochs are unique to one owner, so a snapshot of this owner's epoch is its own, and the
/// replace is tried again over it. Blocking.
fn replace_snapshot(
    lake: &Lake,
    partition: u32,
    bytes: Vec<u8>,
    expect: &Expect,
    epoch: u64,
) -> Result<Version, SnapshotRefused> {
    match lake.replace_snapshot(partition, bytes.clone(), expect) {
        Ok(v) => Ok(v),
        Err(e) if e.is_conflict() => {
            let (current, version) = match lake.read_snapshot_versioned(partition) {
                Ok(Some(found)) => found,
                Ok(None) => return Err(SnapshotRefused::Fenced(None)),
                Err(e) => return Err(SnapshotRefused::Failed(e)),
            };
            let theirs = decode::<PartitionCheckpoint>("shared snapshot", &current)
                .ok()
                .map(|c| c.owner_epoch);
            if theirs != Some(epoch) {
                return Err(SnapshotRefused::Fenced(theirs));
            }
            lake.replace_snapshot(partition, bytes, &Expect::Version(version))
                .map_err(|e| {
                    if e.is_conflict() {
                        SnapshotRefused::Fenced(None)
                    } else {
                        SnapshotRefused::Failed(e)
                    }
                })
        }
        Err(e) => Err(SnapshotRefused::Failed(e)),
    }
}

/// A lake write under way: the oldest `count` ready publications, handed to the archiver by a
/// task that tells the owner `LakeWritten(id)` when the archiver answers.
struct LakeWrite {
    id: u64,
    count: usize,
    task: tokio::task::JoinHandle<Result<Result<(), Failure>, SendError>>,
}

/// What a checkpoint makes durable, off the owner: encode, publish the shared snapshot (when
/// due), save locally.
struct SaveJob {
    partition: u32,
    store: CheckpointStore,
    durable: bool,
    epoch: u64,
    /// The lake to publish the snapshot to and the version it must replace.
    snapshot: Option<(Lake, Expect)>,
    /// Publications numbered below this have their windows in the local store already.
    stored_below: u64,
    /// Set when the checkpoint's open windows are only those changed since the checkpoint
    /// before: the stored generation of whole windows they go over, and the windows closed since.
    delta: Option<(u64, Vec<WindowKey>)>,
}

/// What a save did: the bytes it wrote and what the store holds then (when it saved locally),
/// and the snapshot's outcome (when one was due).
#[derive(Default)]
struct SaveOutcome {
    /// What the local store holds now, when saved there.
    saved: Option<Saved>,
    stored_below: Option<u64>,
    shared: Option<Result<Version, SnapshotRefused>>,
}

impl SaveJob {
    async fn run(self, cp: PartitionCheckpoint) -> Result<SaveOutcome, ActorProcessingErr> {
        let SaveJob {
            partition,
            store,
            durable,
            epoch,
            snapshot,
            stored_below,
            delta,
        } = self;
        let (split, shared) = tokio::task::spawn_blocking(move || {
            // Another node restores from the shared snapshot alone: it holds everything.
            let shared = snapshot
                .map(|(lake, expect)| {
                    let whole = encode(&cp)?;
                    Ok::<_, ActorProcessingErr>(replace_snapshot(
                        &lake, partition, whole, &expect, epoch,
                    ))
                })
                .transpose()?;
            // The local store keeps the shards' blobs as they are, and each publication's
            // windows once.
            let delta = delta
                .as_ref()
                .map(|(base, closed)| (*base, closed.as_slice()));
            let split = durable
                .then(|| SplitCheckpoint::of(cp, stored_below, delta))
                .transpose()?;
            Ok::<_, ActorProcessingErr>((split, shared))
        })
        .await??;
        let mut outcome = SaveOutcome {
            saved: None,
            stored_below: None,
            shared,
        };
        // A fenced owner's state is another timeline's past: not worth keeping.
        let fenced = matches!(outcome.shared, Some(Err(SnapshotRefused::Fenced(_))));
        if let Some(split) = split.filter(|_| !fenced) {
            let save = tokio::task::spawn_blocking(move || {
                store
                    .save_split(&split)
                    .map(|saved| (saved, split.stored_below))
            });
            match tokio::time::timeout(STORE_TIMEOUT, save).await {
                Ok(saved) => {
                    let (saved, below) = saved??;
                    (outcome.saved, outcome.stored_below) = (Some(saved), Some(below));
                }
                // A local store that does not answer is broken (a failing disk): the node stops
                // and says so rather than hang holding its partitions.
                Err(_) => {
                    return Err(Failure::permanent(format!(
                        "partition {partition}: the checkpoint store did not finish a write within {} s",
                        STORE_TIMEOUT.as_secs()
                    ))
                    .into())
                }
            }
        }
        Ok(outcome)
    }
}

/// A checkpoint cut and being made durable.
struct Saving {
    id: u64,
    /// Bytes of its open windows (all of them, or a delta's).
    open_bytes: usize,
    started: Instant,
    /// The offset the source may commit once the snapshot is durable.
    resume_at: u64,
    /// The plan's lake writes (unless the snapshot fails).
    write_lake: bool,
    /// Publications ready at the cut: what its snapshot covers.
    ready: usize,
    /// None when there is nothing to save (batch mode between snapshots).
    task: Option<tokio::task::JoinHandle<Result<SaveOutcome, ActorProcessingErr>>>,
}

/// What a checkpoint does about its lake writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writes {
    /// Start them and carry on; their results come back by message.
    Background,
    /// Save and write everything before returning (a drain: what stops leaves nothing behind).
    Wait,
}

pub struct OwnerRun {
    args: OwnerArgs,
    state: OwnerState,
    policy: CheckpointPolicy,
    /// None until the first `Restore` has run.
    io: Option<Restored>,
    batch: RawRecords,
    routed: Vec<EventColumns>,
    poll_pending: bool,
    checkpoint_pending: bool,
    /// Drained for shutdown: no more reads or checkpoints.
    draining: bool,
    /// Another owner replaced this one's snapshot: no more reads or writes until a restore
    /// (scheduled [`FENCED_RETRY`] later) claims the partition again.
    fenced: bool,
    /// Just fenced: the restore that claims the partition again is yet to be scheduled.
    reclaim_due: bool,
    /// Restores failed in a row (each retried after a longer wait, up to 32 s).
    restore_failures: u32,
    last_input: Instant,
    /// The checkpoint being made durable, if any (one at a time).
    saving: Option<Saving>,
    /// Ids of saves, like `write_seq`.
    save_seq: u64,
    /// At most one lake write at a time, so publications land in the order they were cut.
    writing: Option<LakeWrite>,
    /// Ids of lake writes: a `LakeWritten` that is not the one under way is stale (a drain or a
    /// restore has awaited it already).
    write_seq: u64,
    /// How many ready publications (from the oldest) the lake may take now: those a successful
    /// shared snapshot covers (every ready one when the node publishes no snapshots). A write
    /// never runs ahead of the fence.
    writable: usize,
    /// The newest cut's watermark and whether it ended the partition.
    last_cut: (i64, bool),
    /// Publications numbered below this have their windows in the local store: stored by a save
    /// of this owner since its last restore (the store may hold another timeline's before it).
    stored_below: u64,
    /// The open windows as this owner last stored them whole, since its last restore: what
    /// the local store's deltas go over (none yet: the next save stores them whole).
    open_base: Option<OpenBase>,
}

fn settings(args: &OwnerArgs) -> OwnerSettings {
    OwnerSettings {
        partition: args.partition,
        spec: args.config.window_spec(),
        format: args.config.source.format,
        default_host: args.config.source.host.clone(),
        shards: args.config.window.shards,
        raw_events: args.config.lake.raw_events,
        limits: args.config.limits.limits(),
        // A batch run (the one kind that is not durable) is recovered by a rerun.
        record_block: (!args.durable).then_some(args.config.lake.flush_records as u64),
    }
}

fn timing(args: &OwnerArgs) -> CheckpointTiming {
    CheckpointTiming {
        flush_interval: Duration::from_millis(args.config.lake.flush_interval_ms),
        flush_records: args.config.lake.flush_records,
        snapshot_interval: Duration::from_millis(args.config.checkpoint.snapshot_interval_ms),
        snapshots: args.snapshots.is_some(),
    }
}

fn shards(n: usize) -> Result<Vec<ActorRef<WindowMsg>>, ActorProcessingErr> {
    (0..n)
        .map(|i| {
            lookup::<WindowMsg>(&shard_name(i)).ok_or_else(|| {
                Failure::transient(format!("window shard {i} is not running")).into()
            })
        })
        .collect()
}

/// Load the checkpoint, finish its pending publications, refill the shards, open the source.
async fn restore(args: &OwnerArgs) -> Result<(OwnerState, Restored), ActorProcessingErr> {
    let store = args.store.clone();
    let p = args.partition;
    let (durable, snapshots) = (args.durable, args.snapshots.clone());
    let (settings, shard_count) = (settings(args), args.config.window.shards);
    let started = Instant::now();
    // All of it blocks or is CPU-bound (at many sites, decoding the open windows is most of a
    // restore): off the runtime's workers.
    let (mut state, per_shard, fence, fresh, load_ms) = tokio::task::spawn_blocking(move || {
        let (mut cp, shared) = load_newest(&store, durable, snapshots.as_ref(), p)?;
        let load_ms = started.elapsed().as_millis() as u64;
        // The open windows, whole: the local store's copy with its deltas applied, each
        // aggregate left encoded (the shards decode one when they need it).
        let windows = match cp.as_mut() {
            Some(cp) => {
                let (open, deltas) = (
                    std::mem::take(&mut cp.open),
                    std::mem::take(&mut cp.open_deltas),
                );
                let windows = restored_windows(open, deltas)?;
                if snapshots.is_some() {
                    // The claim below is a snapshot: it holds every window, in one blob (the
                    // windows' bytes copied as they are).
                    let refs: Vec<_> = windows.iter().map(|(k, a)| (k.borrowed(), a)).collect();
                    let mut blob = Vec::new();
                    encode_open(&mut blob, &refs)?;
                    cp.open = vec![blob];
                }
                windows
            }
            None => Vec::new(),
        };
        let fence = match (&snapshots, &cp) {
            (None, _) => None,
            // Nothing to continue from: the first snapshot must find none in place.
            (Some(_), None) => Some(Expect::Absent),
            // The claim: the restored checkpoint under the next epoch, published over exactly
            // the snapshot that was read. If another owner published in between, this restore
            // starts again from theirs; once it lands, an owner still writing under an older
            // epoch is refused at its next snapshot, before it writes anything more.
            (Some(lake), Some(cp)) => {
                let claim = PartitionCheckpoint {
                    owner_epoch: cp.owner_epoch + 1,
                    ..cp.clone()
                };
                let expect = shared.map_or(Expect::Absent, Expect::Version);
                match replace_snapshot(lake, p, encode(&claim)?, &expect, claim.owner_epoch) {
                    Ok(v) => Some(Expect::Version(v)),
                    Err(SnapshotRefused::Fenced(_)) => {
                        return Err(RestoreLater(format!(
                            "partition {p}: another owner published a snapshot during the restore"
                        ))
                        .into())
                    }
                    Err(SnapshotRefused::Failed(e)) => return Err(restore_failure(e)),
                }
            }
        };
        let fresh = cp.is_none();
        let mut state = match cp {
            Some(cp) => OwnerState::restore(settings, cp),
            None => OwnerState::new(settings),
        };
        let mut per_shard: Vec<RestoredWindows> = vec![Vec::new(); shard_count];
        for (key, agg) in windows {
            state.restore_guard(&key.host, key.start_ms);
            per_shard[shard_of(&key.host, shard_count)].push((key, agg));
        }
        Ok::<_, ActorProcessingErr>((state, per_shard, fence, fresh, load_ms))
    })
    .await??;
    let decoded_ms = started.elapsed().as_millis() as u64;
    // A lake that is down now is retried by the checkpoints; the partition still starts.
    publish_pending(&mut state).await?;
    let published_ms = started.elapsed().as_millis() as u64;
    tell_unwritten(Unwritten::Reset {
        partition: p,
        unpublished: state.unpublished.clone(),
    });
    let shard_refs = shards(shard_count)?;
    // Every shard gets a Reset, empty or not, so no stale state of this partition survives.
    for (shard, open) in shard_refs.iter().zip(per_shard) {
        tell(shard, ActorKind::Window, WindowMsg::Reset(p, open))?;
    }
    let source = if fresh {
        args.sources.open_new(p)?
    } else {
        args.sources.open(p, state.next_offset)?
    };
    // The phases' ends, in milliseconds since the restore began.
    tracing::info!(
        partition = p,
        offset = state.next_offset,
        epoch = state.owner_epoch,
        finished = state.finished,
        load_ms,
        decoded_ms,
        published_ms,
        took_ms = started.elapsed().as_millis() as u64,
        "partition restored"
    );
    Ok((
        state,
        Restored {
            source,
            shards: shard_refs,
            fence,
        },
    ))
}

/// Cut the partition's closed windows from every shard, with the open ones `open` asks for
/// (one blob per shard that has any).
async fn cut_shards(
    shards: &[ActorRef<WindowMsg>],
    partition: u32,
    watermark_ms: i64,
    open: OpenCut,
) -> Result<(Vec<ClosedWindow>, Vec<Vec<u8>>), ActorProcessingErr> {
    let (mut closed, mut blobs) = (Vec::new(), Vec::new());
    for shard in shards {
        let cut = ask(shard, ActorKind::Window, |r| {
            WindowMsg::Cut(
                CutRequest {
                    partition,
                    watermark_ms,
                    open,
                },
                r,
            )
        })
        .await?;
        closed.extend(cut.closed);
        if !cut.open.is_empty() {
            blobs.push(cut.open);
        }
    }
    Ok((closed, blobs))
}

/// The checkpoint to restore: the local one, or the shared snapshot when another node owned the
/// partition since; and the shared snapshot's version, if there is one. Blocking.
fn load_newest(
    store: &CheckpointStore,
    durable: bool,
    snapshots: Option<&Lake>,
    p: u32,
) -> Result<(Option<PartitionCheckpoint>, Option<Version>), ActorProcessingErr> {
    let local = if durable { store.load(p)? } else { None };
    let (shared, version) = match snapshots {
        Some(lake) => match lake.read_snapshot_versioned(p).map_err(restore_failure)? {
            Some((bytes, version)) => (
                Some(decode::<PartitionCheckpoint>(
                    &format!("{}/{}", lake.describe(), Lake::snapshot_key(p)),
                    &bytes,
                )?),
                Some(version),
            ),
            None => (None, None),
        },
        None => (None, None),
    };
    let (l, s) = (
        local.as_ref().map(|c| (c.owner_epoch, c.next_offset)),
        shared.as_ref().map(|c| (c.owner_epoch, c.next_offset)),
    );
    let newest = PartitionCheckpoint::newest(local, shared);
    if s.is_some() {
        tracing::info!(partition = p, local = ?l, shared = ?s, "checkpoint candidates (epoch, offset)");
    }
    Ok((newest, version))
}

/// At most this many publications go to the archiver in one write.
const PUBLICATIONS_PER_WRITE: usize = 64;

/// Tell the archiver about closed windows not yet in the lake, so the API shows them meanwhile.
/// (A restarted archiver refills from the lake: windows cut before its restart show again once
/// written, those cut after as they are cut.)
fn tell_unwritten(u: Unwritten) {
    if let Some(archiver) = lookup::<ArchiverMsg>(ARCHIVER_NAME) {
        tell(&archiver, ActorKind::Archiver, ArchiverMsg::Unwritten(u)).ok();
    }
}

/// Write committed publications to the lake, oldest first; stop at the first failure (kept for
/// the next checkpoint, so nothing is lost while the lake is unavailable). False on a failure
/// worth retrying; a permanent one (denied credentials) fails the owner, and the supervisor
/// stops the node with its message.
async fn publish_pending(state: &mut OwnerState) -> Result<bool, ActorProcessingErr> {
    if state.ready_publications().is_empty() {
        return Ok(true);
    }
    let archiver = lookup::<ArchiverMsg>(ARCHIVER_NAME)
        .ok_or_else(|| Failure::transient("archiver is not running"))?;
    while !state.ready_publications().is_empty() {
        // Ready ones together (they share the tables' commits), a bounded number at a time so a
        // backlog after an outage is not one write longer than the call's timeout.
        let ready = state.ready_publications();
        let ready = ready[..ready.len().min(PUBLICATIONS_PER_WRITE)].to_vec();
        let n = ready.len();
        match ask(&archiver, ActorKind::Archiver, |r| {
            ArchiverMsg::Publish(ready, r)
        })
        .await?
        {
            Ok(()) => (0..n).for_each(|_| state.published_one()),
            Err(e) if e.kind == ErrorKind::Permanent => return Err(e.into()),
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
        if self.poll_pending || self.state.finished || self.fenced || self.io.is_none() {
            return;
        }
        self.poll_pending = true;
        if after.is_zero() {
            if tell(me, ActorKind::PartitionOwner, OwnerMsg::Poll).is_err() {
                self.poll_pending = false; // stopping
            }
        } else {
            mailbox::tell_after(me.clone(), ActorKind::PartitionOwner, after, || {
                OwnerMsg::Poll
            });
        }
    }

    /// The next checkpoint tick, one at a time: a slow checkpoint delays the next instead of
    /// letting ticks pile up behind it.
    fn schedule_checkpoint(&mut self, me: &ActorRef<OwnerMsg>) {
        if self.checkpoint_pending
            || self.saving.is_some()
            || self.draining
            || self.fenced
            || self.state.finished
        {
            return;
        }
        self.checkpoint_pending = true;
        let every = Duration::from_millis(self.args.config.checkpoint.interval_ms);
        mailbox::tell_after(me.clone(), ActorKind::PartitionOwner, every, || {
            OwnerMsg::Checkpoint
        });
    }

    async fn restore(&mut self, me: &ActorRef<OwnerMsg>) -> Result<(), ActorProcessingErr> {
        // Nothing reads or writes on the old state while (and if) the restore fails.
        self.io = None;
        // A save and a write of the old state still under way land first, so the restore
        // reads the newest checkpoint and (writing its publications again) never races a write.
        // Their results are the old state's.
        if let Some(s) = self.saving.take() {
            if let Some(task) = s.task {
                task.await.ok();
            }
        }
        if let Some(w) = self.writing.take() {
            w.task.await.ok();
        }
        self.writable = 0;
        self.last_cut = (NO_WATERMARK, false);
        self.stored_below = 0;
        self.open_base = None;
        let (state, io) = restore(&self.args).await?;
        self.state = state;
        self.io = Some(io);
        self.fenced = false;
        self.policy = CheckpointPolicy::new(timing(&self.args), Instant::now());
        // A poll already on its way (a rewind) carries on reading the restored source; a second
        // one would double the poll chain for good.
        self.last_input = Instant::now();
        self.schedule_poll(me, Duration::ZERO);
        self.schedule_checkpoint(me);
        Ok(())
    }

    async fn poll(&mut self, me: &ActorRef<OwnerMsg>) -> Result<(), ActorProcessingErr> {
        self.poll_pending = false;
        if self.state.finished || self.state.source_done || self.draining || self.fenced {
            return Ok(());
        }
        // The lake takes writes more slowly than this partition is read (an unpaced backfill, a
        // slow store): read no further ahead of the write under way than a few cuts, so the
        // closed windows waiting for it (in memory, and encoded into the checkpoints) stay
        // bounded. A store that fails answers at once and backs off; then reading goes on, up
        // to the bound below.
        if !self.room_to_cut_ahead() {
            self.schedule_poll(me, Duration::from_millis(5));
            return Ok(());
        }
        let Some(io) = self.io.as_mut() else {
            return Ok(());
        };
        if ActorKind::Window.depth() > MAX_SHARD_BACKLOG * io.shards.len() as i64 {
            self.schedule_poll(me, Duration::from_millis(2));
            return Ok(());
        }
        // A batch run's record block has been read to its end: it is cut before reading goes on
        // (see `OwnerSettings::record_block`).
        if self.state.block_end() == Some(true) {
            if self.saving.is_none() {
                self.checkpoint(me, false, Writes::Background).await?;
            }
            let cut = self.state.block_end() == Some(false);
            self.schedule_poll(me, Duration::from_millis(if cut { 0 } else { 5 }));
            return Ok(());
        }
        if self.state.read_ahead_of_cut(self.last_cut.0) {
            if self.saving.is_none() {
                self.checkpoint(me, false, Writes::Background).await?;
            }
            self.schedule_poll(me, Duration::from_millis(5));
            return Ok(());
        }
        // The lake has been away long enough that the records waiting for it reach the bound:
        // stop reading (the source keeps them) until it is back, instead of growing without end.
        if self.state.lake_backlog() >= self.args.config.lake.max_unwritten_records {
            self.schedule_poll(me, Duration::from_millis(200));
            return Ok(());
        }
        self.batch.clear();
        // File and pipe reads block (a stalled stdin for as long as it stalls): tell tokio, so
        // the worker's other tasks move elsewhere meanwhile.
        let (source, batch, max) = (
            &mut io.source,
            &mut self.batch,
            self.state.read_limit(self.args.config.source.batch_size),
        );
        let polled = tokio::task::block_in_place(|| source.poll(max, batch));
        if !self.batch.is_empty() {
            self.last_input = Instant::now();
            let got = self.state.ingest(&self.batch, &mut self.routed);
            let m = Metrics::global();
            let pl = [partition_label(self.args.partition)];
            m.events.add(self.batch.len() as u64, &pl);
            if got.late > 0 {
                m.late.add(got.late, &pl);
            }
            for (offset, reason) in got.invalid {
                m.invalid.add(
                    1,
                    &[pl[0].clone(), KeyValue::new("reason", reason.as_str())],
                );
                if let Some(raw) = self.batch.get(offset) {
                    let raw = match reason {
                        InvalidReason::TooLong => &raw[..raw.len().min(KEPT_OF_TOO_LONG)],
                        _ => raw,
                    };
                    io.source.dead_letter(offset, reason.as_str(), raw);
                }
            }
            if got.folded > 0 {
                if !GUARD_LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(partition = self.args.partition, "limits.max_hosts reached in a window: events of further sites are counted under \"(other)\"");
                }
                m.hosts_folded.add(got.folded, &pl);
            }
            for (field, n) in Field::ALL.iter().zip(got.cut_fields) {
                if n > 0 {
                    m.fields_cut
                        .add(n, &[KeyValue::new("field", field.as_str())]);
                }
            }
            for (shard, events) in io.shards.iter().zip(self.routed.iter_mut()) {
                if !events.is_empty() {
                    let next = events.empty_like();
                    let batch = EventBatch {
                        partition: self.args.partition,
                        events: Box::new(std::mem::replace(events, next)),
                    };
                    tell(shard, ActorKind::Window, WindowMsg::Apply(batch))?;
                }
            }
        }
        // Not while a save is under way (the interval's checkpoint waits for that one anyway).
        // While a lake write is, only with room for the cut ahead of it (reading stops at the
        // bound): what the write's time lets accumulate meanwhile goes out in later cuts, and
        // the next write takes them all.
        if self.saving.is_none() && self.room_to_cut_ahead() && self.state.cut_due(self.last_cut.0)
        {
            self.checkpoint(me, false, Writes::Background).await?;
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
                        self.checkpoint(me, true, Writes::Background).await?;
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
                self.checkpoint(me, false, Writes::Background).await?;
            }
        }
        Ok(())
    }

    /// Cut closed windows from the shards and commit state + outputs: one durable local save
    /// and, when planned, the shared snapshot, encoded and written by a task beside the owner
    /// (it reports `Saved`, and [`OwnerRun::saved`] goes on: offsets, lake writes). One
    /// checkpoint is made durable at a time; a checkpoint asked for while one is saving waits
    /// for it first. `force` also cuts the buffered records and publishes the snapshot whatever
    /// the intervals (an idle advance, a drain). With [`Writes::Wait`], everything (the save
    /// and the lake writes) is done when this returns.
    async fn checkpoint(
        &mut self,
        me: &ActorRef<OwnerMsg>,
        force: bool,
        writes: Writes,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(saving) = self.saving.take() {
            self.saved_now(me, saving, Writes::Background).await?;
        }
        if self.state.finished || self.draining || self.fenced || self.state.replaying() {
            return Ok(());
        }
        let Some(io) = self.io.as_mut() else {
            return Ok(());
        };
        let started = Instant::now();
        let partition = self.args.partition;
        let watermark_ms = self.state.watermark_ms();
        let mut open_cut = match self.args.durable {
            false => OpenCut::None,
            true => {
                let ready = self.state.ready_publications().len();
                let likely = self.policy.snapshot_likely(Instant::now(), force, ready);
                open_cut(self.open_base.as_ref(), likely)
            }
        };
        let (closed, mut open) = cut_shards(&io.shards, partition, watermark_ms, open_cut).await?;
        // What a delta removes: the windows this cut closed.
        let closed_keys: Vec<WindowKey> = match open_cut {
            OpenCut::Changed => closed.iter().map(|w| w.key.clone()).collect(),
            OpenCut::None | OpenCut::All => Vec::new(),
        };
        let closed_n = closed.len() as u64;
        let flush = self.policy.flush(
            Instant::now(),
            force,
            self.state.source_done,
            self.state.buffered_len(),
            self.state.block_end(),
        );
        let stamp = self.state.publication_stamp(now_ms());
        self.state.cut_publication(closed, stamp, flush);
        if closed_n > 0 {
            if let Some(p) = self.state.unpublished.last() {
                tell_unwritten(Unwritten::Cut(Arc::clone(p)));
            }
        }
        Metrics::global().windows_closed.add(closed_n, &[]);
        let cp = self.state.checkpoint(Vec::new());
        self.last_cut = (watermark_ms, cp.finished);
        let ready = self.state.ready_publications().len();
        let plan = self.policy.plan(Instant::now(), force, ready);
        if plan.snapshot && open_cut == OpenCut::Changed {
            // A snapshot holds every open window: ask again for all of them (the watermark has
            // not moved, so nothing more closes).
            open_cut = OpenCut::All;
            let (more, all) = cut_shards(&io.shards, partition, watermark_ms, open_cut).await?;
            if !more.is_empty() {
                // Not possible at one watermark; were it, the restart restores the last
                // checkpoint (this one is not saved) and reads the windows again.
                return Err(Failure::transient(format!(
                    "partition {partition}: a second cut at watermark {watermark_ms} closed {} windows",
                    more.len()
                ))
                .into());
            }
            open = all;
        }
        let open_bytes = open.iter().map(Vec::len).sum();
        let cp = PartitionCheckpoint { open, ..cp };
        let delta = match (open_cut, self.open_base) {
            (OpenCut::Changed, Some(base)) => Some((base.generation, closed_keys)),
            _ => None,
        };
        let save = SaveJob {
            partition,
            store: self.args.store.clone(),
            durable: self.args.durable,
            epoch: self.state.owner_epoch,
            snapshot: self
                .args
                .snapshots
                .clone()
                .zip(io.fence.clone())
                .filter(|_| plan.snapshot),
            stored_below: self.stored_below,
            delta,
        };
        self.save_seq += 1;
        let saving = Saving {
            id: self.save_seq,
            open_bytes,
            started,
            resume_at: cp.resume_at().0,
            write_lake: plan.write_lake,
            ready,
            task: (self.args.durable || plan.snapshot).then(|| {
                let (me, id) = (me.clone(), self.save_seq);
                tokio::spawn(async move {
                    let saved = save.run(cp).await;
                    tell(&me, ActorKind::PartitionOwner, OwnerMsg::Saved(id)).ok();
                    saved
                })
            }),
        };
        match (writes, &saving.task) {
            // Nothing to save (batch mode between snapshots): go straight on.
            (_, None) | (Writes::Wait, _) => self.saved_now(me, saving, writes).await,
            (Writes::Background, Some(_)) => {
                self.saving = Some(saving);
                Ok(())
            }
        }
    }

    /// A save came back: go on with it, and schedule the next checkpoint.
    async fn saved(&mut self, me: &ActorRef<OwnerMsg>, id: u64) -> Result<(), ActorProcessingErr> {
        if self.saving.as_ref().is_none_or(|s| s.id != id) {
            return Ok(());
        }
        let saving = self.saving.take().expect("checked above");
        self.saved_now(me, saving, Writes::Background).await?;
        self.schedule_checkpoint(me);
        Ok(())
    }

    /// The checkpoint is durable (or its snapshot was refused): commit the source offset once the
    /// snapshot is where the next owner reads it, then write the ready publications to the lake.
    async fn saved_now(
        &mut self,
        me: &ActorRef<OwnerMsg>,
        saving: Saving,
        writes: Writes,
    ) -> Result<(), ActorProcessingErr> {
        let outcome = match saving.task {
            Some(task) => task
                .await
                .map_err(|e| Failure::transient(format!("checkpoint save task failed: {e}")))??,
            None => SaveOutcome::default(),
        };
        let partition = self.args.partition;
        let m = Metrics::global();
        let Some(io) = self.io.as_mut() else {
            return Ok(());
        };
        let mut write_lake = saving.write_lake;
        if let Some(saved) = outcome.saved {
            m.checkpoint_bytes.record(saved.bytes as u64, &[]);
            self.open_base = Some(match self.open_base {
                Some(base) if base.generation == saved.open_generation => OpenBase {
                    delta_bytes: base.delta_bytes + saving.open_bytes,
                    ..base
                },
                // Stored whole (a new generation).
                _ => OpenBase {
                    generation: saved.open_generation,
                    bytes: saving.open_bytes,
                    delta_bytes: 0,
                },
            });
        }
        if let Some(below) = outcome.stored_below {
            self.stored_below = below;
        }
        match outcome.shared {
            None => {}
            Some(Ok(version)) => {
                m.snapshots.add(1, &[]);
                io.fence = Some(Expect::Version(version));
                if self.policy.snapshot_done(Instant::now(), true) {
                    // The snapshot is durable where the next owner reads it: now the offset may
                    // be committed.
                    io.source.commit(saving.resume_at);
                }
            }
            Some(Err(SnapshotRefused::Fenced(theirs))) => {
                m.owner_fenced.add(1, &[partition_label(partition)]);
                tracing::warn!(
                    partition,
                    epoch = self.state.owner_epoch,
                    newer_epoch = ?theirs,
                    retry_s = FENCED_RETRY.as_secs(),
                    "another owner took this partition over (its snapshot replaced ours): this owner stops writing, and restores from that snapshot later if it still owns the partition"
                );
                self.fenced = true;
                self.reclaim_due = true;
                // Its open windows are another timeline's now: out of the shards (and its
                // unwritten closed ones out of the archiver's view), so the API does not count
                // them beside the new owner's.
                tell_unwritten(Unwritten::Reset {
                    partition,
                    unpublished: Vec::new(),
                });
                for shard in &io.shards {
                    tell(
                        shard,
                        ActorKind::Window,
                        WindowMsg::Reset(partition, Vec::new()),
                    )
                    .ok();
                }
                return Ok(());
            }
            Some(Err(SnapshotRefused::Failed(e))) => {
                m.lake_errors
                    .add(1, &[KeyValue::new("table", "checkpoints")]);
                if e.kind() == ErrorKind::Permanent {
                    return Err(Failure::permanent(e.to_string()).into());
                }
                tracing::warn!(partition, error = %e, "snapshot publish failed; lake writes wait for the next one");
                write_lake = false;
                self.policy.snapshot_done(Instant::now(), false);
            }
        }
        // Cut to durable: the lake writes are not part of it.
        m.checkpoint_seconds
            .record(saving.started.elapsed().as_secs_f64(), &[]);
        if write_lake {
            // The publications ready at the cut are covered now: by the snapshot just
            // published, or there is no fence to run ahead of.
            self.writable = saving.ready.min(self.state.ready_publications().len());
            match writes {
                Writes::Background => self.write_next(me)?,
                Writes::Wait => self.write_all(me).await?,
            }
        }
        let pl = [partition_label(partition)];
        m.source_offset.record(self.state.next_offset, &pl);
        m.lake_backlog
            .record(self.state.unpublished.len() as u64, &pl);
        if let Some(io) = self.io.as_mut() {
            if let Some(lag) = io.source.lag() {
                m.consumer_lag.record(lag, &pl);
            }
        }
        if let Some(lag) = self.state.watermark_lag_s(now_ms()) {
            m.watermark_lag.record(lag, &pl);
        }
        self.finish_if_written();
        Ok(())
    }

    /// Whether another cut may be made now (see [`OwnerState::room_to_cut_ahead`]).
    fn room_to_cut_ahead(&self) -> bool {
        self.state
            .room_to_cut_ahead(self.writing.as_ref().map(|w| w.count))
    }

    /// Start writing the oldest writable publications, unless a write is under way (its answer
    /// starts the next). With nothing left to write, the lake has caught up.
    fn write_next(&mut self, me: &ActorRef<OwnerMsg>) -> Result<(), ActorProcessingErr> {
        if self.writing.is_some() || self.fenced {
            return Ok(());
        }
        if self.writable == 0 {
            self.policy.lake_done(Instant::now(), true);
            self.report_lake_progress();
            return Ok(());
        }
        let Some(archiver) = lookup::<ArchiverMsg>(ARCHIVER_NAME) else {
            // Restarting: its supervisor brings it back; the writes wait like for a store away.
            tracing::warn!(
                partition = self.args.partition,
                "archiver is not running; lake writes will retry"
            );
            self.policy.lake_done(Instant::now(), false);
            return Ok(());
        };
        // Ready ones together (they share the tables' commits), a bounded number at a time so a
        // backlog after an outage is not one write longer than the call's timeout.
        let ready = self.state.ready_publications();
        let count = self.writable.min(ready.len()).min(PUBLICATIONS_PER_WRITE);
        let batch = ready[..count].to_vec();
        self.write_seq += 1;
        let id = self.write_seq;
        let me = me.clone();
        let task = tokio::spawn(async move {
            let answer = ask(&archiver, ActorKind::Archiver, |r| {
                ArchiverMsg::Publish(batch, r)
            })
            .await;
            tell(&me, ActorKind::PartitionOwner, OwnerMsg::LakeWritten(id)).ok();
            answer
        });
        self.writing = Some(LakeWrite { id, count, task });
        Ok(())
    }

    /// Take the answer of the write under way. True when it succeeded. A permanent failure
    /// (denied credentials) fails the owner, and the supervisor stops the node with its message;
    /// a transient one (the store away or hanging, the archiver restarting) backs off, and a
    /// later checkpoint tries again from the oldest.
    async fn take_written(&mut self) -> Result<bool, ActorProcessingErr> {
        let Some(w) = self.writing.take() else {
            return Ok(true);
        };
        let answer = match w.task.await {
            Ok(Ok(answer)) => answer,
            // No answer in time: a store that hangs (the archiver's write goes on, and may still
            // land). Retried like any transient failure; the files it writes are the same.
            Ok(Err(e)) => Err(Failure::transient(format!("lake write: {e}"))),
            Err(e) => Err(Failure::transient(format!("lake write task failed: {e}"))),
        };
        let ok = match answer {
            Ok(()) => {
                (0..w.count).for_each(|_| self.state.published_one());
                self.writable = self.writable.saturating_sub(w.count);
                true
            }
            Err(e) if e.kind == ErrorKind::Permanent => return Err(e.into()),
            Err(e) => {
                tracing::warn!(partition = self.args.partition, error = %e, "lake write failed; will retry");
                false
            }
        };
        self.policy.lake_done(Instant::now(), ok);
        if ok {
            self.report_lake_progress();
        }
        Ok(ok)
    }

    /// A write came back: take it, and go on with the next one.
    async fn written(
        &mut self,
        me: &ActorRef<OwnerMsg>,
        id: u64,
    ) -> Result<(), ActorProcessingErr> {
        if self.writing.as_ref().is_none_or(|w| w.id != id) {
            return Ok(());
        }
        if self.take_written().await? && !self.draining {
            self.write_next(me)?;
        }
        self.finish_if_written();
        let pl = [partition_label(self.args.partition)];
        Metrics::global()
            .lake_backlog
            .record(self.state.unpublished.len() as u64, &pl);
        Ok(())
    }

    /// Write every writable publication before returning, oldest first; stop at a failure (kept
    /// for the next checkpoint).
    async fn write_all(&mut self, me: &ActorRef<OwnerMsg>) -> Result<(), ActorProcessingErr> {
        loop {
            if !self.take_written().await? {
                return Ok(());
            }
            // With nothing left, `write_next` notes that the lake has caught up.
            let last = self.writable == 0;
            self.write_next(me)?;
            if last || self.writing.is_none() {
                return Ok(());
            }
        }
    }

    /// Tell the archiver how far everything this partition closed is in the lake (queued at the
    /// archiver before this), so the detector's whole windows may count this partition as done
    /// up to there. Said again at every write and idle check, for an archiver that restarted.
    fn report_lake_progress(&mut self) {
        let Some(watermark_ms) = self.state.lake_watermark() else {
            return;
        };
        let progress = ArchiverMsg::Progress {
            partition: self.args.partition,
            watermark_ms,
        };
        if let Some(archiver) = lookup::<ArchiverMsg>(ARCHIVER_NAME) {
            tell(&archiver, ActorKind::Archiver, progress).ok();
        }
    }

    /// The source has ended, every window is cut, the last cut is durable and everything cut
    /// is written.
    fn finish_if_written(&mut self) {
        if self.last_cut.1
            && self.saving.is_none()
            && self.state.unpublished.is_empty()
            && !self.state.finished
        {
            self.state.finished = true;
            tracing::info!(
                partition = self.args.partition,
                "partition complete: every window closed and written"
            );
        }
    }

    fn status(&mut self) -> PartitionStatus {
        let wm = self.state.watermark_ms();
        let max = self.state.watermark.max_event_ms;
        let (committed_offset, lag) = match self.io.as_mut() {
            Some(io) => (io.source.committed(), io.source.lag()),
            None => (None, None),
        };
        PartitionStatus {
            partition: self.args.partition,
            next_offset: self.state.next_offset,
            committed_offset,
            lag,
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
        let m = Metrics::global();
        let pl = [partition_label(args.partition)];
        m.events.add(0, &pl);
        m.late.add(0, &pl);
        m.hosts_folded.add(0, &pl);
        for field in Field::ALL {
            m.fields_cut
                .add(0, &[KeyValue::new("field", field.as_str())]);
        }
        // The restore is the first message: nothing else is handled before it.
        tell(&me, ActorKind::PartitionOwner, OwnerMsg::Restore)?;
        let n = args.config.window.shards;
        Ok(OwnerRun {
            state: OwnerState::new(settings(&args)),
            policy: CheckpointPolicy::new(timing(&args), Instant::now()),
            args,
            io: None,
            batch: RawRecords::default(),
            routed: vec![EventColumns::default(); n],
            poll_pending: false,
            checkpoint_pending: false,
            draining: false,
            fenced: false,
            reclaim_due: false,
            restore_failures: 0,
            last_input: Instant::now(),
            saving: None,
            save_seq: 0,
            writing: None,
            write_seq: 0,
            writable: 0,
            last_cut: (NO_WATERMARK, false),
            stored_below: 0,
            open_base: None,
        })
    }

    async fn post_stop(
        &self,
        _me: ActorRef<OwnerMsg>,
        run: &mut OwnerRun,
    ) -> Result<(), ActorProcessingErr> {
        // Drained, revoked or failed: what it had not written is no longer shown from here (a
        // restarted owner tells its restored set).
        tell_unwritten(Unwritten::Reset {
            partition: run.args.partition,
            unpublished: Vec::new(),
        });
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
            OwnerMsg::Restore | OwnerMsg::Rewind => match run.restore(&me).await {
                Ok(()) => run.restore_failures = 0,
                Err(e) if e.is::<RestoreLater>() => {
                    run.restore_failures += 1;
                    let after = Duration::from_secs(1 << (run.restore_failures - 1).min(5));
                    tracing::warn!(partition = run.args.partition, error = %e, retry_s = after.as_secs(), "restore failed; will retry");
                    mailbox::tell_after(me.clone(), ActorKind::PartitionOwner, after, || {
                        OwnerMsg::Restore
                    });
                }
                Err(e) => return Err(e),
            },
            OwnerMsg::Poll => run.poll(&me).await?,
            OwnerMsg::Checkpoint => {
                run.checkpoint_pending = false;
                run.checkpoint(&me, false, Writes::Background).await?;
                run.schedule_checkpoint(&me);
            }
            OwnerMsg::Saved(id) => run.saved(&me, id).await?,
            OwnerMsg::LakeWritten(id) => run.written(&me, id).await?,
            OwnerMsg::Drain(reply) => {
                let force = run.args.snapshots.is_some();
                run.checkpoint(&me, force, Writes::Wait).await?;
                run.draining = true;
                // The caller may have given up waiting; the checkpoint stands either way.
                reply.send(()).ok();
            }
            OwnerMsg::Status(reply) => {
                reply.send(run.status()).ok();
            }
        }
        if std::mem::take(&mut run.reclaim_due) {
            mailbox::tell_after(me.clone(), ActorKind::PartitionOwner, FENCED_RETRY, || {
                OwnerMsg::Rewind
            });
        }
        mailbox::handled(me.get_id(), ActorKind::PartitionOwner, started);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wtm_core::checkpoint::PartitionTotals;
    use wtm_core::window::WatermarkState;

    fn snapshot(epoch: u64, offset: u64) -> Vec<u8> {
        encode(&PartitionCheckpoint {
            partition: 3,
            owner_epoch: epoch,
            next_offset: offset,
            watermark: WatermarkState::default(),
            open: vec![],
            unpublished: vec![],
            range_start: offset,
            range_start_watermark: WatermarkState::default(),
            finished: false,
            totals: PartitionTotals::default(),
            open_deltas: vec![],
        })
        .unwrap()
    }

    #[test]
    fn a_newer_owner_fences_an_older_one_and_an_owner_retries_over_its_own_lost_answer() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(dir.path());
        let fenced = |r: Result<Version, SnapshotRefused>| match r {
            Err(SnapshotRefused::Fenced(theirs)) => theirs,
            Ok(_) => panic!("the swap went through"),
            Err(SnapshotRefused::Failed(e)) => panic!("{e}"),
        };
        // Owner A (epoch 4) claims a partition nobody published yet.
        let a1 = replace_snapshot(&lake, 3, snapshot(4, 100), &Expect::Absent, 4).unwrap();
        // A's next publish lands, but A never hears back and still holds the old version: the
        // snapshot in place is of A's own epoch, so it goes through over it.
        let a2 =
            replace_snapshot(&lake, 3, snapshot(4, 150), &Expect::Version(a1.clone()), 4).unwrap();
        let a3 = replace_snapshot(&lake, 3, snapshot(4, 180), &Expect::Version(a1), 4).unwrap();
        assert_ne!(a2, a3);
        // B claims over what it read (epoch 5); A, a zombie now, is refused from then on.
        let read = lake.read_snapshot_versioned(3).unwrap().unwrap().1;
        let b1 = replace_snapshot(&lake, 3, snapshot(5, 180), &Expect::Version(read), 5).unwrap();
        assert_eq!(
            fenced(replace_snapshot(
                &lake,
                3,
                snapshot(4, 260),
                &Expect::Version(a3),
                4
            )),
            Some(5)
        );
        // A claim made on a stale read loses too (another owner published in between).
        assert_eq!(
            fenced(replace_snapshot(
                &lake,
                3,
                snapshot(5, 999),
                &Expect::Absent,
                6
            )),
            Some(5)
        );
        let (bytes, now) = lake.read_snapshot_versioned(3).unwrap().unwrap();
        assert_eq!(now, b1);
        let cp: PartitionCheckpoint = decode("snapshot", &bytes).unwrap();
        assert_eq!((cp.owner_epoch, cp.next_offset), (5, 180));
    }
}
