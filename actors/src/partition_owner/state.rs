//! A partition owner's synchronous core: parse, decide lateness, route, cut publications, and
//! decide (as plain data) when to flush, snapshot, write the lake and commit.

use super::guard::HostGuard;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wtm_core::agg::ClosedWindow;
use wtm_core::checkpoint::{
    InvalidRecord, LateEvent, PartitionCheckpoint, PartitionTotals, Publication,
};
use wtm_core::event::{Format, ParsedEvent};
use wtm_core::hash::shard_of;
use wtm_core::limits::{bound_fields, plausible_host, Limits, KEPT_OF_TOO_LONG, OVERFLOW_HOST};
use wtm_core::parse::{parse_record, InvalidReason, ParseError};
use wtm_core::records::{EventColumns, RawRecords};
use wtm_core::window::{WatermarkState, WindowSpec, NO_WATERMARK};
use wtm_messages::OpenCut;

/// Fixed settings of one owner.
#[derive(Debug, Clone)]
pub struct OwnerSettings {
    pub partition: u32,
    pub spec: WindowSpec,
    pub format: Format,
    pub default_host: String,
    pub shards: usize,
    pub raw_events: bool,
    pub limits: Limits,
    /// A batch run's record blocks: late, invalid and raw records are cut into publications only
    /// where an offset is a multiple of this (and at the end of the input), never on the clock.
    /// Their files are named by where their range starts, and a batch run's recovery is a rerun
    /// into the same lake: the input alone must decide the ranges, or a rerun adds rows again
    /// under other names. None: on the clock and the buffer's size (a node's live stream, whose
    /// replays after a crash rewrite the ranges their checkpoint fixed).
    pub record_block: Option<u64>,
}

/// Counts of one ingested batch, for metrics.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Ingested {
    pub events: u64,
    pub late: u64,
    /// Offset and reason of each malformed record.
    pub invalid: Vec<(u64, InvalidReason)>,
    /// Events with a field cut to `limits.max_field_bytes`, per field (as in `Field::ALL`).
    pub cut_fields: [u64; 4],
    /// Events counted under the overflow site (`limits.max_hosts`).
    pub folded: u64,
}

/// Record-level outputs accumulated since `range_start`, not yet cut into a publication.
#[derive(Debug, Clone, PartialEq)]
struct Buffered {
    range_start: u64,
    late: Vec<LateEvent>,
    invalid: Vec<InvalidRecord>,
    /// Coded: these rows wait in memory until the lake has them.
    raw: EventColumns,
}

impl Default for Buffered {
    fn default() -> Self {
        Buffered {
            range_start: 0,
            late: Vec::new(),
            invalid: Vec::new(),
            raw: EventColumns::coded(),
        }
    }
}

/// When to try the lake again after a failed write: 1 s, doubling to 30 s, reset by a success.
/// While it waits, the owner keeps reading and checkpointing instead of stalling on every tick.
#[derive(Debug, Default, Clone, Copy)]
pub struct LakeBackoff {
    failures: u32,
    retry_at: Option<Instant>,
}

impl LakeBackoff {
    pub fn ready(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|t| now >= t)
    }
    pub fn failed(&mut self, now: Instant) {
        self.failures += 1;
        let secs = 1u64 << (self.failures - 1).min(5);
        self.retry_at = Some(now + Duration::from_secs(secs.min(30)));
    }
    pub fn succeeded(&mut self) {
        *self = LakeBackoff::default();
    }
}

/// The intervals and bounds the checkpoint policy follows (from the config).
#[derive(Debug, Clone, Copy)]
pub struct CheckpointTiming {
    /// Record files (late, invalid, raw) go out at least this often ...
    pub flush_interval: Duration,
    /// ... or once this many records are buffered.
    pub flush_records: usize,
    /// The shared snapshot is published at least this often (when the node publishes any).
    pub snapshot_interval: Duration,
    /// This node publishes snapshots for others to take over from (a consumer group).
    pub snapshots: bool,
}

/// What one checkpoint does beyond cutting windows and saving locally, decided up front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPlan {
    /// Publish the checkpoint to the shared snapshot (and commit the offset once it is durable).
    pub snapshot: bool,
    /// Write the ready publications to the lake (unless the snapshot fails first).
    pub write_lake: bool,
}

/// When a partition owner flushes record files, publishes its snapshot, writes the lake and
/// commits its source offset: decisions as data, from the clock and what the last attempts did.
#[derive(Debug, Clone)]
pub struct CheckpointPolicy {
    timing: CheckpointTiming,
    last_flush: Instant,
    /// When the checkpoint was last published to the shared snapshot (None: not yet).
    last_snapshot: Option<Instant>,
    /// After a failed lake write (tables or snapshot), when to try again.
    backoff: LakeBackoff,
}

impl CheckpointPolicy {
    pub fn new(timing: CheckpointTiming, now: Instant) -> CheckpointPolicy {
        CheckpointPolicy {
            timing,
            last_flush: now,
            last_snapshot: None,
            backoff: LakeBackoff::default(),
        }
    }

    /// Whether this checkpoint also cuts the buffered records into a publication: when forced
    /// (an idle advance, a drain), at the end of input, every flush interval, or once the
    /// buffer reaches its bound. A flush restarts the interval.
    /// With record blocks (`block_end` is some: see [`OwnerSettings::record_block`]), only at a
    /// block's end instead of on the interval and the bound.
    pub fn flush(
        &mut self,
        now: Instant,
        force: bool,
        source_done: bool,
        buffered: usize,
        block_end: Option<bool>,
    ) -> bool {
        let due = force
            || source_done
            || match block_end {
                Some(end) => end,
                None => {
                    now.saturating_duration_since(self.last_flush) >= self.timing.flush_interval
                        || buffered >= self.timing.flush_records
                }
            };
        if due {
            self.last_flush = now;
        }
        due
    }

    /// What to do with the checkpoint just cut. The snapshot goes out before any lake write (so
    /// whoever takes the partition over knows every file's offset range), every snapshot
    /// interval, and when forced; while the lake backs off, neither is tried (a forced
    /// checkpoint tries regardless).
    pub fn plan(&self, now: Instant, force: bool, ready_publications: usize) -> CheckpointPlan {
        let lake_ready = force || self.backoff.ready(now);
        CheckpointPlan {
            snapshot: lake_ready && self.snapshot_likely(now, force, ready_publications),
            write_lake: lake_ready,
        }
    }

    /// Whether the checkpoint about to be cut will likely publish the shared snapshot (which
    /// holds every open window): what [`CheckpointPolicy::plan`] says after the cut, from what
    /// is known before it (the cut may close windows and make a publication ready).
    pub fn snapshot_likely(&self, now: Instant, force: bool, ready_publications: usize) -> bool {
        self.timing.snapshots
            && (force
                || ready_publications > 0
                || self.last_snapshot.is_none_or(|t| {
                    now.saturating_duration_since(t) >= self.timing.snapshot_interval
                }))
    }

    /// The snapshot was published (or not). True when the source offset may now be committed:
    /// only a durable snapshot makes a committed offset safe.
    pub fn snapshot_done(&mut self, now: Instant, ok: bool) -> bool {
        if ok {
            self.last_snapshot = Some(now);
        } else {
            self.backoff.failed(now);
        }
        ok
    }

    /// The lake writes of this checkpoint succeeded (or one failed).
    pub fn lake_done(&mut self, now: Instant, ok: bool) {
        if ok {
            self.backoff.succeeded();
        } else {
            self.backoff.failed(now);
        }
    }
}

/// The partition's open windows as this owner last stored them whole in the local store, and
/// what it has written over them since as deltas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenBase {
    /// The store's generation of those whole windows (what a delta names as its base).
    pub generation: u64,
    pub bytes: usize,
    pub delta_bytes: usize,
}

/// Which open windows a durable checkpoint encodes: all of them when this owner has not stored
/// them whole since its restore (the store may hold another timeline's), when the shared
/// snapshot (which holds everything) is likely, or once the deltas over the whole copy have
/// grown to half its size (a restore decodes the whole copy and every delta); otherwise only
/// those changed since the checkpoint before.
pub fn open_cut(base: Option<&OpenBase>, snapshot_likely: bool) -> OpenCut {
    match base {
        Some(b) if !snapshot_likely && b.delta_bytes.saturating_mul(2) < b.bytes => {
            OpenCut::Changed
        }
        _ => OpenCut::All,
    }
}

/// A partition whose watermark has moved this many windows since its last cut is cut again at
/// once, ahead of the checkpoint interval. Live traffic never gets there (event time moves a
/// second a second); a backfill or a replay moves minutes of event time a second, and what one
/// wall-clock interval closed (the windows in the shards, in the publications waiting for the
/// lake and in every checkpoint that carries them) grew with the reading speed: 20,000 sites
/// read unpaced peaked near 3 GB. (Two windows left 16-23% more at the peak of 100,000 sites
/// than one.)
pub const CUT_AFTER_WINDOWS: i64 = 1;

/// A cut that is due waits while a save or a lake write is under way; reading stops once event
/// time is this many windows past the last cut, until the cut is made. Reading on meanwhile
/// left minutes of event time of open windows in the shards (20,000 sites read unpaced: a
/// quarter of the node's peak), and encoded in the checkpoint that followed.
pub const READ_AHEAD_OF_CUT_WINDOWS: i64 = 3;

/// Cuts (publications) an owner may make beyond its lake write under way before it stops
/// reading until that write returns. A write waits out `lake.commit_interval_ms` since the
/// table's last commit, so one cut ahead capped a partition read unpaced at about four cuts a
/// second (2M lines of 1,000 sites: 422 polls, ~2 s of 6, waiting for the write); with more,
/// the next write takes every cut made meanwhile in one commit.
const MAX_CUTS_AHEAD_OF_WRITES: usize = 8;

/// ... and the closed windows those cuts may hold beyond the write (one cut ahead is always
/// allowed, however many it closed): what waits for the lake stays bounded in memory with many
/// sites, where a single cut is large and the write's time is its files', not the interval.
/// 8,192 let 20,000 sites on four partitions (~5,000 windows a cut) cut twice ahead: +74 MB at
/// the memory benchmark's peak. 2,048 keeps them at one, and 1,000 sites at two or three.
const MAX_WINDOWS_AHEAD_OF_WRITES: usize = 2_048;

pub struct OwnerState {
    pub settings: OwnerSettings,
    /// Raised at every restore (see `PartitionCheckpoint::owner_epoch`).
    pub owner_epoch: u64,
    pub watermark: WatermarkState,
    pub next_offset: u64,
    /// Late, invalid and raw records not yet cut into a publication.
    buffered: Buffered,
    /// The watermark at `buffered.range_start`.
    range_start_watermark: WatermarkState,
    /// After a restore, records below this offset are read again only to rebuild `buffered`:
    /// the checkpoint's open windows and totals already hold them.
    replay_until: u64,
    pub totals: PartitionTotals,
    /// The source has ended; the next checkpoint closes every window.
    pub source_done: bool,
    /// Every window is closed and committed: nothing more to do.
    pub finished: bool,
    /// Committed in a checkpoint, not yet confirmed in the lake.
    pub unpublished: Vec<Arc<Publication>>,
    /// How many of `unpublished` (from the front) hold their records and may be written; after
    /// a restore the others wait until the replay has derived their records again.
    ready: usize,
    /// `limits.max_hosts` per window.
    guard: HostGuard,
    /// The next publication's `seq`: above every one in `unpublished`.
    next_seq: u64,
    /// Cuts whose windows are not all known to be in the lake, oldest first: the `seq` the
    /// next publication after the cut would get, and the cut's watermark. Once every
    /// publication numbered below it is written, everything that watermark closed is in the
    /// lake (see [`OwnerState::lake_watermark`]).
    cuts_unwritten: VecDeque<(u64, i64)>,
    /// What [`OwnerState::lake_watermark`] last found.
    lake_watermark: i64,
}

impl OwnerState {
    pub fn new(settings: OwnerSettings) -> OwnerState {
        let settings_max_hosts = settings.limits.max_hosts;
        OwnerState {
            settings,
            owner_epoch: 1,
            watermark: WatermarkState::default(),
            next_offset: 0,
            buffered: Buffered::default(),
            range_start_watermark: WatermarkState::default(),
            replay_until: 0,
            totals: PartitionTotals::default(),
            source_done: false,
            finished: false,
            unpublished: Vec::new(),
            ready: 0,
            guard: HostGuard::new(settings_max_hosts),
            next_seq: 1,
            cuts_unwritten: VecDeque::new(),
            lake_watermark: NO_WATERMARK,
        }
    }

    /// Rebuild from a checkpoint; returns the open-window blobs for the shards. The source must
    /// resume at `next_offset`, which is the checkpoint's `range_start`: records up to its
    /// `next_offset` are replayed (see [`OwnerState::replaying`]).
    /// The owner's state from `cp` (its open windows go to the shards: see `open_windows`).
    pub fn restore(settings: OwnerSettings, cp: PartitionCheckpoint) -> OwnerState {
        let mut s = OwnerState::new(settings);
        let (start, watermark) = cp.resume_at();
        s.owner_epoch = cp.owner_epoch + 1;
        s.watermark = watermark;
        s.range_start_watermark = watermark;
        s.next_offset = start;
        s.buffered.range_start = start;
        s.replay_until = cp.next_offset;
        s.totals = cp.totals;
        // A checkpoint taken when the source ended may still hold publications that are not in
        // the lake. Those whose records must be derived again need the source read once more
        // (the replay), and none may count as finished until all are written: otherwise the
        // owner would never read or write again and their records would be lost.
        let replay = start < cp.next_offset;
        s.source_done = cp.finished && !replay;
        if s.source_done {
            s.watermark.finish();
        }
        s.next_seq = cp.unpublished.iter().map(|p| p.seq + 1).max().unwrap_or(1);
        s.unpublished = cp.unpublished;
        s.finished = cp.finished && s.unpublished.is_empty();
        s.advance_ready();
        s
    }

    pub fn watermark_ms(&self) -> i64 {
        self.watermark.current(&self.settings.spec)
    }

    /// Whether event time has moved [`CUT_AFTER_WINDOWS`] windows since the last cut (made at
    /// watermark `last_cut_ms`), so the next cut should not wait for the checkpoint interval.
    pub fn cut_due(&self, last_cut_ms: i64) -> bool {
        self.windows_since(last_cut_ms) >= CUT_AFTER_WINDOWS
    }

    /// Whether reading must wait for the due cut (see [`READ_AHEAD_OF_CUT_WINDOWS`]).
    pub fn read_ahead_of_cut(&self, last_cut_ms: i64) -> bool {
        self.windows_since(last_cut_ms) >= READ_AHEAD_OF_CUT_WINDOWS
    }

    /// Whole windows event time moved since the cut at `last_cut_ms` (0 before any cut).
    fn windows_since(&self, last_cut_ms: i64) -> i64 {
        if last_cut_ms == NO_WATERMARK {
            return 0;
        }
        self.watermark_ms().saturating_sub(last_cut_ms) / self.settings.spec.size_ms.max(1)
    }

    /// Whether another cut may be made, with a lake write of the oldest `writing` publications
    /// under way (None: none is): always without one, else while the cuts made since it started
    /// stay within [`MAX_CUTS_AHEAD_OF_WRITES`] and [`MAX_WINDOWS_AHEAD_OF_WRITES`].
    pub fn room_to_cut_ahead(&self, writing: Option<usize>) -> bool {
        let Some(count) = writing else {
            return true;
        };
        let ahead = self.unpublished.get(count..).unwrap_or_default();
        ahead.is_empty()
            || (ahead.len() < MAX_CUTS_AHEAD_OF_WRITES
                && ahead.iter().map(|p| p.closed.len()).sum::<usize>()
                    < MAX_WINDOWS_AHEAD_OF_WRITES)
    }

    /// Publications ready to be written, oldest first.
    pub fn ready_publications(&self) -> &[Arc<Publication>] {
        &self.unpublished[..self.ready]
    }

    /// The oldest publication has been written.
    pub fn published_one(&mut self) {
        let p = self.unpublished.remove(0);
        self.totals.published.add(&p);
        self.ready -= 1;
    }

    /// Count the publications that need no more records (none to derive, or derived).
    fn advance_ready(&mut self) {
        while self.ready < self.unpublished.len()
            && !(self.unpublished[self.ready].has_record_range()
                && self.unpublished[self.ready].to_offset > self.buffered.range_start)
        {
            self.ready += 1;
        }
    }

    /// During a replay: the records of the next waiting publication are complete when the
    /// replay reaches its end; move them in.
    fn fill_replayed(&mut self) {
        let Some(p) = self.unpublished.get(self.ready) else {
            return;
        };
        if !(p.has_record_range() && p.to_offset == self.next_offset) {
            return;
        }
        let records = std::mem::replace(
            &mut self.buffered,
            Buffered {
                range_start: self.next_offset,
                ..Default::default()
            },
        );
        let mut filled = Publication::clone(p);
        (filled.late, filled.invalid, filled.raw) = (records.late, records.invalid, records.raw);
        self.unpublished[self.ready] = Arc::new(filled);
        self.range_start_watermark = self.watermark;
        self.ready += 1;
        self.advance_ready();
    }

    /// Late, invalid and raw records held in memory: buffered, or in publications not yet
    /// written to the lake (these grow while the lake is unreachable).
    pub fn unwritten_records(&self) -> usize {
        self.cut_records()
            + self.buffered.raw.len()
            + self.buffered.late.len()
            + self.buffered.invalid.len()
    }

    /// Late, invalid and raw records in publications not yet written.
    fn cut_records(&self) -> usize {
        self.unpublished
            .iter()
            .map(|p| p.late.len() + p.invalid.len() + p.raw.len())
            .sum()
    }

    /// Late, invalid and raw records reading waits for the lake to take (see
    /// `lake.max_unwritten_records`): all of [`OwnerState::unwritten_records`], but with record
    /// blocks only those already cut (the buffered ones go out only once the block is read to
    /// its end: waiting for the lake would never get them there).
    pub fn lake_backlog(&self) -> usize {
        match self.settings.record_block {
            None => self.unwritten_records(),
            Some(_) => self.cut_records(),
        }
    }

    /// How many records the next read may take, of `max`: with record blocks, no more than the
    /// current block has left, so that reading stops at its end for the cut.
    pub fn read_limit(&self, max: usize) -> usize {
        match self.settings.record_block {
            Some(block) if block > 0 => {
                let left = block - self.next_offset % block;
                max.min(usize::try_from(left).unwrap_or(usize::MAX)).max(1)
            }
            _ => max,
        }
    }

    /// With record blocks: whether reading has reached the end of a block whose records are not
    /// cut yet (the next checkpoint must flush, and reading may not go on before it has).
    /// None without record blocks.
    pub fn block_end(&self) -> Option<bool> {
        let block = self.settings.record_block?;
        Some(
            block > 0
                && self.next_offset > self.buffered.range_start
                && self.next_offset.is_multiple_of(block),
        )
    }

    /// What a publication cut now is stamped with (the hour of its invalid records): the wall
    /// clock, or with record blocks (a batch run) the newest event time read, so that a rerun
    /// files them in the same hour (1970-01-01 before any valid event).
    pub fn publication_stamp(&self, now_ms: i64) -> i64 {
        match self.settings.record_block {
            None => now_ms,
            Some(_) => self.watermark.max_event_ms.max(0),
        }
    }

    /// Records buffered since the last flush.
    pub fn buffered_len(&self) -> usize {
        self.buffered
            .raw
            .len()
            .max(self.buffered.late.len() + self.buffered.invalid.len())
    }

    /// Still re-reading records the last checkpoint already covers: no checkpoint may be taken
    /// until this is over.
    pub fn replaying(&self) -> bool {
        self.next_offset < self.replay_until
    }

    /// One record as an event, within the limits: too long (cut by the source, or longer than
    /// the limit), unparsable and implausibly named sites are errors.
    /// Not a method: the event borrows the settings (the default host) while the owner's
    /// other fields change.
    fn parse<'a>(
        settings: &'a OwnerSettings,
        batch: &RawRecords,
        offset: u64,
        bytes: &'a [u8],
    ) -> Result<ParsedEvent<'a>, ParseError> {
        let max = settings.limits.max_record_bytes;
        let whole = batch
            .cut_len(offset)
            .or_else(|| (bytes.len() > max).then_some(bytes.len() as u64));
        if let Some(len) = whole {
            return Err(ParseError {
                reason: InvalidReason::TooLong,
                detail: format!(
                    "record of {len} bytes is longer than limits.max_record_bytes ({max}); its first {} bytes are kept",
                    KEPT_OF_TOO_LONG.min(bytes.len())
                ),
            });
        }
        let event = parse_record(settings.format, bytes, &settings.default_host)?;
        if !plausible_host(&event.host) {
            let shown: String = event.host.chars().take(64).collect();
            return Err(ParseError {
                reason: InvalidReason::BadHost,
                detail: format!("site {shown:?} is not a plausible host[:port]"),
            });
        }
        Ok(event)
    }

    /// Parse a batch of records, routing on-time events into `routed[shard]`. Records being
    /// replayed only rebuild the buffered outputs: no routing, no counting.
    pub fn ingest(&mut self, batch: &RawRecords, routed: &mut [EventColumns]) -> Ingested {
        let mut out = Ingested::default();
        let spec = self.settings.spec;
        let limits = self.settings.limits;
        for (offset, bytes) in batch.iter() {
            let replay = offset < self.replay_until;
            self.next_offset = offset + 1;
            match Self::parse(&self.settings, batch, offset, bytes) {
                Err(err) => {
                    if !replay {
                        *self.totals.invalid.entry(err.reason).or_default() += 1;
                        out.invalid.push((offset, err.reason));
                    }
                    let kept = match err.reason {
                        InvalidReason::TooLong => &bytes[..bytes.len().min(KEPT_OF_TOO_LONG)],
                        _ => bytes,
                    };
                    self.buffered.invalid.push(InvalidRecord {
                        offset,
                        reason: err.reason,
                        detail: err.detail,
                        raw: kept.to_vec(),
                    });
                }
                Ok(mut event) => {
                    let cut = bound_fields(&mut event, limits.max_field_bytes);
                    if !replay {
                        for (n, was_cut) in out.cut_fields.iter_mut().zip(cut) {
                            *n += u64::from(was_cut);
                        }
                    }
                    if !replay {
                        out.events += 1;
                        self.totals.events += 1;
                    }
                    let wm = self.watermark.current(&spec);
                    if self.settings.raw_events {
                        self.buffered.raw.push(offset, event.view());
                    }
                    if spec.is_late(event.ts_ms, wm) {
                        if !replay {
                            out.late += 1;
                            self.totals.late += 1;
                        }
                        self.buffered.late.push(LateEvent {
                            offset,
                            watermark_ms: wm,
                            event: event.into_owned(),
                        });
                    } else {
                        self.watermark.observe(event.ts_ms);
                        if !replay {
                            let mut event = event;
                            // Replayed records' sites are in the restored guard already.
                            if !self.guard.admit(&event.host, spec.start_of(event.ts_ms)) {
                                event.host = Cow::Borrowed(OVERFLOW_HOST);
                                out.folded += 1;
                            }
                            routed[shard_of(&event.host, self.settings.shards)]
                                .push(offset, event.view());
                        }
                    }
                }
            }
            if replay {
                self.fill_replayed();
            }
        }
        self.guard.prune(&spec, self.watermark.current(&spec));
        out
    }

    /// A site with an open window in the checkpoint this owner was restored from.
    pub fn restore_guard(&mut self, host: &str, start_ms: i64) {
        self.guard.restore(host, start_ms);
    }

    /// The windows just closed and, when `flush`, the buffered records since the last flush, as
    /// one publication queued as unpublished (the caller commits it in the checkpoint before
    /// writing it, so its offset range is fixed forever).
    pub fn cut_publication(&mut self, closed: Vec<ClosedWindow>, now_ms: i64, flush: bool) {
        self.totals.windows_closed += closed.len() as u64;
        let records = if flush {
            std::mem::replace(
                &mut self.buffered,
                Buffered {
                    range_start: self.next_offset,
                    ..Default::default()
                },
            )
        } else {
            Buffered {
                range_start: self.buffered.range_start,
                ..Default::default()
            }
        };
        let records_watermark = self.range_start_watermark;
        if flush {
            self.range_start_watermark = self.watermark;
        }
        let p = Publication {
            partition: self.settings.partition,
            records_watermark,
            from_offset: records.range_start,
            to_offset: if flush {
                self.next_offset
            } else {
                records.range_start
            },
            created_ms: now_ms,
            closed,
            late: records.late,
            invalid: records.invalid,
            raw: records.raw,
            seq: self.next_seq,
        };
        if !p.is_empty() {
            self.next_seq += 1;
            self.unpublished.push(Arc::new(p));
            if self.ready + 1 == self.unpublished.len() {
                self.ready += 1;
            }
        }
        // Cuts that added no publication since the last one fold into it: at most one entry
        // per unpublished publication, however long the lake is away.
        let mark = (self.next_seq, self.watermark_ms());
        match self.cuts_unwritten.back_mut() {
            Some(last) if last.0 == mark.0 => last.1 = last.1.max(mark.1),
            _ => self.cuts_unwritten.push_back(mark),
        }
    }

    /// The newest cut watermark up to which every window this partition closed is in the lake
    /// (none before the first such cut): a cut's windows are in publications numbered below
    /// the `seq` noted with it, and those are all written (in order) once the oldest
    /// unpublished one is numbered at least that. The detector's whole windows wait for this
    /// from every partition, so it must not wait for the lake to be idle: a backfill keeps
    /// the lake busy from start to end, and 20,000 sites' windows piled up for the whole run.
    pub fn lake_watermark(&mut self) -> Option<i64> {
        let written_below = self.unpublished.first().map_or(self.next_seq, |p| p.seq);
        while let Some(&(seq, watermark)) = self.cuts_unwritten.front() {
            if seq > written_below {
                break;
            }
            self.lake_watermark = watermark;
            self.cuts_unwritten.pop_front();
        }
        (self.lake_watermark != NO_WATERMARK).then_some(self.lake_watermark)
    }

    pub fn checkpoint(&self, open: Vec<Vec<u8>>) -> PartitionCheckpoint {
        PartitionCheckpoint {
            partition: self.settings.partition,
            owner_epoch: self.owner_epoch,
            next_offset: self.next_offset,
            watermark: self.watermark,
            open,
            unpublished: self.unpublished.clone(),
            range_start: self.buffered.range_start,
            range_start_watermark: self.range_start_watermark,
            finished: self.source_done && self.watermark.idle_floor_ms == i64::MAX,
            totals: self.totals.clone(),
            open_deltas: Vec::new(),
        }
    }

    /// Seconds the watermark trails `now_ms`, when there is one.
    pub fn watermark_lag_s(&self, now_ms: i64) -> Option<f64> {
        let wm = self.watermark_ms();
        (wm != NO_WATERMARK && wm != i64::MAX).then(|| (now_ms - wm) as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wtm_core::checkpoint::{decode, encode};

    fn settings() -> OwnerSettings {
        OwnerSettings {
            partition: 0,
            spec: WindowSpec {
                size_ms: 60_000,
                out_of_orderness_ms: 5_000,
                allowed_lateness_ms: 0,
            },
            format: Format::Json,
            default_host: "h".into(),
            shards: 2,
            limits: Limits::default(),
            raw_events: true,
            record_block: None,
        }
    }

    fn batch(lines: &[&str]) -> RawRecords {
        batch_at(100, lines)
    }

    /// Records at offsets from `first` on.
    fn batch_at(first: u64, lines: &[&str]) -> RawRecords {
        let mut b = RawRecords::default();
        for (i, l) in lines.iter().enumerate() {
            let start = b.buf.len();
            b.buf.extend_from_slice(l.as_bytes());
            b.records.push((first + i as u64, start..b.buf.len()));
        }
        b
    }

    fn timing(snapshots: bool) -> CheckpointTiming {
        CheckpointTiming {
            flush_interval: Duration::from_secs(10),
            flush_records: 1000,
            snapshot_interval: Duration::from_secs(5),
            snapshots,
        }
    }

    #[test]
    fn flushes_on_interval_bound_end_or_force_and_restarts_the_interval() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut p = CheckpointPolicy::new(timing(false), t0);
        assert!(!p.flush(s(9), false, false, 999, None));
        assert!(p.flush(s(9), false, false, 1000, None), "buffer bound");
        assert!(
            !p.flush(s(18), false, false, 0, None),
            "the bound flush restarted the interval"
        );
        assert!(p.flush(s(19), false, false, 0, None), "interval");
        assert!(p.flush(s(19), true, false, 0, None), "forced");
        assert!(p.flush(s(19), false, true, 0, None), "end of input");
    }

    #[test]
    fn record_blocks_end_where_the_offsets_say_never_on_the_clock() {
        let t0 = Instant::now();
        let mut p = CheckpointPolicy::new(timing(false), t0);
        let late = t0 + Duration::from_secs(60);
        assert!(
            !p.flush(late, false, false, 5000, Some(false)),
            "neither the interval nor the bound ends a block"
        );
        assert!(p.flush(t0, false, false, 0, Some(true)), "a block's end");
        assert!(p.flush(t0, false, true, 0, Some(false)), "end of input");

        let mut s = OwnerState::new(OwnerSettings {
            record_block: Some(4),
            ..settings()
        });
        let mut routed = vec![EventColumns::default(), EventColumns::default()];
        let line =
            |ts: i64| format!(r#"{{"ts":{ts},"host":"a","method":"GET","path":"/","status":200}}"#);
        assert_eq!((s.read_limit(10), s.block_end()), (4, Some(false)));
        s.ingest(
            &batch_at(0, &[&line(10_000), "nope", &line(70_000)]),
            &mut routed,
        );
        assert_eq!(s.read_limit(10), 1, "reading stops at the block's end");
        assert_eq!(s.block_end(), Some(false));
        s.ingest(&batch_at(3, &[&line(1_000)]), &mut routed);
        assert_eq!((s.block_end(), s.read_limit(10)), (Some(true), 4));
        assert_eq!(
            s.publication_stamp(123),
            70_000,
            "stamped with the input's clock, not the wall's"
        );
        s.cut_publication(vec![], s.publication_stamp(123), true);
        assert_eq!(s.block_end(), Some(false), "cut");
        let p = &s.unpublished[0];
        assert_eq!(
            (p.from_offset, p.to_offset, p.created_ms, p.late.len()),
            (0, 4, 70_000, 1)
        );
        // The next block's records, buffered: reading waits for the lake only over those cut.
        s.ingest(&batch_at(4, &["junk", "junk"]), &mut routed);
        assert_eq!((s.unwritten_records(), s.lake_backlog()), (7, 5));

        let s = OwnerState::new(settings());
        assert_eq!(
            (s.read_limit(10), s.block_end(), s.publication_stamp(123)),
            (10, None, 123)
        );
    }

    #[test]
    fn open_windows_go_whole_first_for_snapshots_and_when_deltas_reach_half() {
        let base = |bytes, delta_bytes| OpenBase {
            generation: 3,
            bytes,
            delta_bytes,
        };
        assert_eq!(
            open_cut(None, false),
            OpenCut::All,
            "nothing stored whole yet"
        );
        assert_eq!(open_cut(Some(&base(1000, 0)), false), OpenCut::Changed);
        assert_eq!(open_cut(Some(&base(1000, 499)), false), OpenCut::Changed);
        assert_eq!(open_cut(Some(&base(1000, 500)), false), OpenCut::All);
        assert_eq!(open_cut(Some(&base(1000, 0)), true), OpenCut::All);
        let t0 = Instant::now();
        let mut p = CheckpointPolicy::new(timing(true), t0);
        assert!(p.snapshot_likely(t0, false, 0), "no snapshot yet");
        p.snapshot_done(t0, true);
        assert!(!p.snapshot_likely(t0, false, 0));
        assert!(p.snapshot_likely(t0, true, 0));
        assert!(p.snapshot_likely(t0, false, 1));
        assert!(p.snapshot_likely(t0 + Duration::from_secs(60), false, 0));
        assert!(!CheckpointPolicy::new(timing(false), t0).snapshot_likely(t0, true, 1));
    }

    #[test]
    fn snapshots_go_before_lake_writes_and_on_their_interval_and_commit_only_when_durable() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        // A node without shared snapshots never publishes one, and writes the lake.
        let p = CheckpointPolicy::new(timing(false), t0);
        assert_eq!(
            p.plan(s(1), true, 3),
            CheckpointPlan {
                snapshot: false,
                write_lake: true
            }
        );
        let mut p = CheckpointPolicy::new(timing(true), t0);
        // The first checkpoint publishes (no snapshot yet).
        assert!(p.plan(s(0), false, 0).snapshot);
        assert!(p.snapshot_done(s(0), true), "durable: commit");
        // Nothing to write and the interval not up: no snapshot.
        assert_eq!(
            p.plan(s(1), false, 0),
            CheckpointPlan {
                snapshot: false,
                write_lake: true
            }
        );
        // Something to write: the snapshot goes first.
        assert!(p.plan(s(1), false, 1).snapshot);
        assert!(p.plan(s(5), false, 0).snapshot, "interval");
        // A failed snapshot: no commit, and lake writes back off (a forced one still tries).
        assert!(!p.snapshot_done(s(5), false));
        assert_eq!(
            p.plan(s(5), false, 1),
            CheckpointPlan {
                snapshot: false,
                write_lake: false
            }
        );
        assert_eq!(
            p.plan(s(5), true, 1),
            CheckpointPlan {
                snapshot: true,
                write_lake: true
            }
        );
        assert!(p.plan(s(6), false, 1).snapshot, "after the 1 s backoff");
        p.lake_done(s(6), false);
        p.lake_done(s(6), false);
        assert!(!p.plan(s(7), false, 1).write_lake, "third failure: 4 s");
        assert!(p.plan(s(10), false, 1).write_lake);
        p.lake_done(s(10), true);
        assert!(
            p.plan(s(10), false, 1).write_lake,
            "a success resets the backoff"
        );
    }

    #[test]
    fn a_cut_is_due_early_once_event_time_has_moved_a_window_and_reading_waits_for_it_at_three() {
        let line =
            |ts: i64| format!(r#"{{"ts":{ts},"host":"a","method":"GET","path":"/","status":200}}"#);
        let mut s = OwnerState::new(settings());
        let mut routed = vec![EventColumns::default(), EventColumns::default()];
        assert!(!s.cut_due(NO_WATERMARK), "nothing read, no cut yet");
        s.ingest(&batch(&[&line(65_000)]), &mut routed);
        let first_cut = s.watermark_ms(); // 60 s: 65 s less 5 s of out-of-orderness
        assert!(
            !s.cut_due(NO_WATERMARK),
            "the first cut comes on the interval"
        );
        assert!(!s.cut_due(first_cut));
        // A live second later: wait for the interval.
        s.ingest(&batch(&[&line(66_000)]), &mut routed);
        assert!(!s.cut_due(first_cut));
        // A backfill's jump: a millisecond short of a window is not enough, a window is.
        s.ingest(&batch(&[&line(65_000 + 59_999)]), &mut routed);
        assert!(!s.cut_due(first_cut));
        s.ingest(&batch(&[&line(65_000 + 60_000)]), &mut routed);
        assert!(s.cut_due(first_cut));
        // Reading waits for that cut only once event time is three windows past the last.
        assert!(!s.read_ahead_of_cut(NO_WATERMARK) && !s.read_ahead_of_cut(first_cut));
        s.ingest(&batch(&[&line(65_000 + 179_999)]), &mut routed);
        assert!(!s.read_ahead_of_cut(first_cut));
        s.ingest(&batch(&[&line(65_000 + 180_000)]), &mut routed);
        assert!(s.read_ahead_of_cut(first_cut));
        assert!(
            !s.read_ahead_of_cut(s.watermark_ms()),
            "until the cut is made"
        );
    }

    #[test]
    fn a_finished_partition_killed_before_its_last_write_replays_and_writes_it() {
        let line =
            |ts: i64| format!(r#"{{"ts":{ts},"host":"a","method":"GET","path":"/","status":200}}"#);
        let (a, b) = (line(10_000), line(70_000));
        let all = batch(&[&a, "nope", &b]); // offsets 100..103
        let mut s = OwnerState::new(settings());
        let mut routed = vec![EventColumns::default(), EventColumns::default()];
        s.ingest(&all, &mut routed);
        // The source ended: the final checkpoint commits the last publication, then the node
        // dies before writing it.
        s.source_done = true;
        s.watermark.finish();
        s.cut_publication(vec![], 0, true);
        let cp = s.checkpoint(vec![]);
        assert!(cp.finished && cp.unpublished[0].has_record_range());
        let cp: PartitionCheckpoint = decode("t", &encode(&cp).unwrap()).unwrap();
        let mut r = OwnerState::restore(settings(), cp);
        assert!(
            !r.finished && !r.source_done,
            "must read again to derive the records"
        );
        assert!(r.replaying() && r.ready_publications().is_empty());
        r.ingest(&all, &mut routed);
        let p = &r.ready_publications()[0];
        assert_eq!(
            (p.invalid.len(), p.raw.len()),
            (1, 2),
            "the dead letter is back"
        );
        // Written: what the lake holds for the partition grows by the publication, once.
        let before = r.totals.published;
        r.published_one();
        let after = r.totals.published;
        assert_eq!(
            (after.invalid - before.invalid, after.raw - before.raw),
            (1, 2)
        );
        assert!(r.ready_publications().is_empty());
        // Nothing to derive again, only to write: reading is over, but not finished until written.
        let mut s = OwnerState::new(settings());
        s.source_done = true;
        s.watermark.finish();
        s.cut_publication(vec![], 0, true);
        let mut cp = s.checkpoint(vec![]);
        cp.unpublished.push(Arc::new(Publication {
            partition: 0,
            from_offset: 0,
            to_offset: 0,
            records_watermark: WatermarkState::default(),
            created_ms: 0,
            closed: vec![],
            late: vec![],
            invalid: vec![],
            raw: Default::default(),
            seq: 0,
        }));
        let r = OwnerState::restore(settings(), cp);
        assert!(r.source_done && !r.finished && r.ready_publications().len() == 1);
    }

    #[test]
    fn records_beyond_the_limits_are_dead_lettered_and_long_fields_cut() {
        let ok = r#"{"ts":10000,"host":"a.example:8080","method":"GET","path":"/","status":200}"#;
        let long_path = format!(
            r#"{{"ts":10000,"host":"a.example","method":"GET","path":"/{}","status":200}}"#,
            "p".repeat(3000)
        );
        let bad_host = r#"{"ts":10000,"host":"<b>a b</b>","method":"GET","path":"/","status":200}"#;
        let huge = format!(
            r#"{{"ts":10000,"host":"a","method":"GET","path":"/{}","status":200}}"#,
            "x".repeat(70_000)
        );
        let mut all = batch(&[ok, &long_path, bad_host, &huge, ok]); // offsets 100..105
                                                                     // A file source cut offset 104 (its first bytes are in the buffer, whole length here).
        all.cut.push((104, 5_000_000));
        let mut s = OwnerState::new(settings());
        let mut routed = vec![EventColumns::default(), EventColumns::default()];
        let got = s.ingest(&all, &mut routed);
        assert_eq!(got.events, 2);
        assert_eq!(
            got.invalid,
            vec![
                (102, InvalidReason::BadHost),
                (103, InvalidReason::TooLong),
                (104, InvalidReason::TooLong)
            ]
        );
        assert_eq!(got.cut_fields, [1, 0, 0, 0]);
        let paths: Vec<usize> = routed
            .iter()
            .flat_map(EventColumns::views)
            .map(|e| e.path.len())
            .collect();
        assert!(paths.iter().all(|n| *n <= 2048), "{paths:?}");
        let invalid = &s.buffered.invalid;
        assert_eq!(invalid[1].raw.len(), KEPT_OF_TOO_LONG);
        assert!(
            invalid[1].detail.contains(&format!("{} bytes", huge.len())),
            "{}",
            invalid[1].detail
        );
        assert!(invalid[2].detail.contains("5000000 bytes"));
    }

    #[test]
    fn lake_backoff_doubles_to_thirty_seconds_and_resets() {
        let t0 = Instant::now();
        let mut b = LakeBackoff::default();
        assert!(b.ready(t0));
        let mut waits = Vec::new();
        for _ in 0..8 {
            b.failed(t0);
            waits.push((1..=60).find(|&s| b.ready(t0 + Duration::from_secs(s))));
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30].map(Some));
        b.succeeded();
        assert!(b.ready(t0));
    }

    #[test]
    fn late_invalid_and_routed_are_disjoint_and_complete() {
        let mut s = OwnerState::new(settings());
        let mut routed = vec![EventColumns::default(), EventColumns::default()];
        let line =
            |ts: i64| format!(r#"{{"ts":{ts},"host":"a","method":"GET","path":"/","status":200}}"#);
        let (a, b, c) = (line(10_000), line(70_000), line(1_000));
        let got = s.ingest(&batch(&[&a, "nope", &b, &c]), &mut routed);
        // 70 s pushes the watermark to 65 s: the window [0, 60 s) is closed, so 1 s is late.
        assert_eq!(
            got,
            Ingested {
                events: 3,
                late: 1,
                invalid: vec![(101, InvalidReason::BadJson)],
                cut_fields: [0; 4],
                folded: 0,
            }
        );
        assert_eq!(routed.iter().map(EventColumns::len).sum::<usize>(), 2);
        assert_eq!(s.next_offset, 104);
        s.cut_publication(vec![], 0, false);
        assert!(s.unpublished.is_empty(), "records wait for a flush");
        s.cut_publication(vec![], 0, true);
        let p = &s.unpublished[0];
        assert_eq!(
            (
                p.from_offset,
                p.to_offset,
                p.late.len(),
                p.invalid.len(),
                p.raw.len()
            ),
            (0, 104, 1, 1, 3)
        );
        assert_eq!(p.invalid[0].raw, b"nope");
        s.cut_publication(vec![], 0, true);
        assert_eq!(s.unpublished.len(), 1, "empty publications are not queued");
    }

    #[test]
    fn the_lake_watermark_follows_each_written_publication_not_an_idle_lake() {
        let mut s = OwnerState::new(settings());
        let mut routed = vec![EventColumns::default(), EventColumns::default()];
        let mut read = |s: &mut OwnerState, offset: u64, ts: i64| {
            let line =
                format!(r#"{{"ts":{ts},"host":"a","method":"GET","path":"/","status":200}}"#);
            let mut b = batch(&[&line]);
            b.records[0].0 = offset;
            s.ingest(&b, &mut routed);
            s.watermark_ms()
        };
        assert_eq!(s.lake_watermark(), None, "nothing cut yet");
        let w1 = read(&mut s, 0, 70_000);
        s.cut_publication(vec![], 0, true);
        let w2 = read(&mut s, 1, 130_000);
        s.cut_publication(vec![], 0, true);
        // Cuts that add no publication (records not flushed, nothing closed) fold into the last.
        let w3 = read(&mut s, 2, 190_000);
        s.cut_publication(vec![], 0, false);
        assert!(w1 < w2 && w2 < w3);
        assert_eq!(s.unpublished.len(), 2);
        assert_eq!(s.lake_watermark(), None, "nothing written yet");
        s.published_one();
        assert_eq!(
            s.lake_watermark(),
            Some(w1),
            "the first cut is in the lake while the second is not"
        );
        s.published_one();
        assert_eq!(s.lake_watermark(), Some(w3));
        assert_eq!(
            s.lake_watermark(),
            Some(w3),
            "said again while nothing moves"
        );
        // A restored owner knows nothing of its predecessor's cuts until it cuts.
        let mut r = OwnerState::restore(settings(), s.checkpoint(vec![]));
        assert_eq!(r.lake_watermark(), None);
        r.cut_publication(vec![], 0, false);
        assert_eq!(r.lake_watermark(), Some(r.watermark_ms()));
    }

    #[test]
    fn a_restore_replays_unwritten_and_unflushed_records_without_counting_them_twice() {
        let line =
            |ts: i64| format!(r#"{{"ts":{ts},"host":"a","method":"GET","path":"/","status":200}}"#);
        let (a, b, c, d) = (line(10_000), line(70_000), line(1_000), line(71_000));
        let all = batch(&[&a, "nope", &b, &c, &d]); // offsets 100..105
        let part = |from: usize, to: usize| {
            let mut out = RawRecords::default();
            for (o, bytes) in all.iter().skip(from).take(to - from) {
                let start = out.buf.len();
                out.buf.extend_from_slice(bytes);
                out.records.push((o, start..out.buf.len()));
            }
            out
        };
        let mut s = OwnerState::new(settings());
        let mut routed = vec![EventColumns::default(), EventColumns::default()];
        s.ingest(&part(0, 3), &mut routed);
        s.cut_publication(vec![], 0, true); // [0, 103): committed, not yet written
        s.ingest(&part(3, 5), &mut routed); // 103..105: buffered, not flushed
        let cp = s.checkpoint(vec![]);
        assert_eq!((cp.range_start, cp.next_offset), (103, 105));
        // Through the wire format: records are not stored.
        let cp: PartitionCheckpoint = decode("t", &encode(&cp).unwrap()).unwrap();
        assert!(cp.unpublished[0].raw.is_empty());
        let mut r = OwnerState::restore(settings(), cp);
        assert!(r.replaying() && r.ready_publications().is_empty());
        assert_eq!(
            r.next_offset, 0,
            "replay starts where the unwritten publication does"
        );
        let mut routed2 = vec![EventColumns::default(), EventColumns::default()];
        let got = r.ingest(&all, &mut routed2);
        assert!(!r.replaying());
        assert_eq!(
            got,
            Ingested::default(),
            "replayed records are not counted again"
        );
        assert!(
            routed2.iter().all(EventColumns::is_empty),
            "nor routed again"
        );
        let (p, q) = (&s.unpublished[0], &r.ready_publications()[0]);
        assert_eq!((&p.late, &p.invalid, &p.raw), (&q.late, &q.invalid, &q.raw));
        assert_eq!(q.raw.len(), 2);
        assert_eq!(
            (r.buffered.clone(), r.watermark, r.totals.clone()),
            (s.buffered.clone(), s.watermark, s.totals.clone())
        );
    }

    #[test]
    fn cuts_go_ahead_of_a_lake_write_up_to_the_cut_and_window_bounds() {
        use wtm_core::agg::{WindowAgg, WindowKey};
        let closed = |n: usize, start_ms: i64| {
            (0..n)
                .map(|i| ClosedWindow {
                    key: WindowKey {
                        host: format!("h{i}"),
                        start_ms,
                        partition: 0,
                    },
                    end_ms: start_ms + 60_000,
                    agg: WindowAgg::default(),
                })
                .collect::<Vec<_>>()
        };
        let mut s = OwnerState::new(settings());
        assert!(s.room_to_cut_ahead(None) && s.room_to_cut_ahead(Some(0)));
        s.cut_publication(closed(3, 0), 0, false);
        // The write takes that one; cuts go on up to the bound on cuts.
        for k in 1..MAX_CUTS_AHEAD_OF_WRITES {
            s.cut_publication(closed(3, k as i64 * 60_000), 0, false);
            assert!(s.room_to_cut_ahead(Some(1)), "{k} cuts ahead");
        }
        s.cut_publication(closed(3, 99 * 60_000), 0, false);
        assert!(!s.room_to_cut_ahead(Some(1)), "the bound on cuts");
        assert!(s.room_to_cut_ahead(None), "no write under way: no bound");
        assert!(
            s.room_to_cut_ahead(Some(2)),
            "a write that took one more leaves room"
        );

        // One large cut ahead is allowed, but none after it.
        let mut s = OwnerState::new(settings());
        s.cut_publication(closed(1, 0), 0, false);
        assert!(s.room_to_cut_ahead(Some(1)));
        s.cut_publication(closed(MAX_WINDOWS_AHEAD_OF_WRITES, 60_000), 0, false);
        assert!(!s.room_to_cut_ahead(Some(1)), "the bound on windows");
        let mut s = OwnerState::new(settings());
        s.cut_publication(closed(1, 0), 0, false);
        s.cut_publication(closed(MAX_WINDOWS_AHEAD_OF_WRITES - 1, 60_000), 0, false);
        assert!(s.room_to_cut_ahead(Some(1)), "just under the bound");
    }
}
