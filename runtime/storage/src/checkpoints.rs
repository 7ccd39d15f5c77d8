//! The checkpoint store: two redb files in the node's checkpoint directory (the only module that
//! opens them; [`crate::history`] has its own).
//!
//! - `checkpoints.redb`: one key per partition, each checkpoint written as one durable commit
//!   (state, watermark, next offset and unconfirmed outputs together), plus small named values.
//! - `records.redb`: actors with small state of their own (the detector's episodes) keep it in
//!   [`Records`], one table per name. A file of its own, so a detector's write never waits for a
//!   partition's checkpoint to reach the disk.
//!
//! Earlier builds kept this store in sled 0.34, which deadlocks under heavy concurrent writes
//! (its open issue spacejam/sled#1412: a node stopped answering and ignored SIGTERM in the API
//! load benchmark). A directory that still holds a sled store is copied over once at open
//! ([`migrate_sled`]); sled is only read there.

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use wtm_core::agg::WindowKey;
use wtm_core::checkpoint::{decode, encode, OpenDelta, PartitionCheckpoint, WireError};
use wtm_core::error::ErrorKind;

/// Partition checkpoints (`partition/…`) and named values (`meta/…`).
const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");
/// The open windows of partition checkpoints, keyed (partition, part): one blob per window shard,
/// written in the same commit as the checkpoint's value in [`CHECKPOINTS`] (which then holds
/// none). The blobs the shards encoded go into the store as they are: copying them into one value
/// first took a second copy of every open window at each checkpoint (at the peak of a backfill of
/// 100,000 sites, 170 of the heap's 1,404 MB). A value written with its open windows inside (earlier builds, or
/// [`CheckpointStore::save_encoded`]) has no parts here.
const OPEN_PARTS: TableDefinition<(u32, u32), &[u8]> = TableDefinition::new("open_windows");
/// The closed windows of a checkpoint's numbered publications (`Publication::seq`), keyed
/// (partition, seq): stored once, by the first checkpoint that holds the publication, and kept
/// while a checkpoint's value lists it. A publication waits for the lake over several
/// checkpoints; each of them encoded all its windows again before (at the peak of a backfill of
/// 100,000 sites, 128 of the 163 MB being encoded).
const PUBLISHED_WINDOWS: TableDefinition<(u32, u64), &[u8]> =
    TableDefinition::new("publication_windows");
/// Changes to a partition's open windows since they were last stored whole in [`OPEN_PARTS`],
/// keyed (partition, seq, part): part 0 holds the keys of the windows closed since the checkpoint
/// before, parts 1.. the shards' blobs of the windows changed since (an [`OpenDelta`]). A
/// checkpoint between two whole ones writes only this: encoding and writing every open window at
/// every checkpoint was about half of a live node's CPU at 100,000 sites. A whole checkpoint
/// removes them.
const OPEN_DELTAS: TableDefinition<(u32, u64, u32), &[u8]> =
    TableDefinition::new("open_window_deltas");
/// Each partition's generation of whole open windows, raised by every whole checkpoint: a delta
/// is written only over the generation it was cut against ([`CheckpointStoreError::StaleBase`]).
const OPEN_BASE: TableDefinition<u32, u64> = TableDefinition::new("open_window_base");
const CHECKPOINTS_FILE: &str = "checkpoints.redb";
const RECORDS_FILE: &str = "records.redb";

/// Page caches. Both stores are written all the time and read back only at start-up, but redb
/// moves every page it writes into its read cache until that is full (redb 4.6,
/// `PagedCachedFile::flush_write_buffer`): a bigger cache is memory held for nothing. A commit
/// bigger than half the cache writes its pages out as it goes.
const CHECKPOINTS_CACHE: usize = 2 << 20;
const RECORDS_CACHE: usize = 1 << 20;

/// How stale the newest durable [`Records`] change may be when another is applied (sled, before,
/// flushed every 500 ms on its own).
const RECORDS_DURABLE_EVERY_MS: u64 = 500;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointStoreError {
    #[error("checkpoint store: {0}")]
    Db(#[from] redb::Error),
    #[error("checkpoint store: cannot copy the sled store in {dir} (written by an earlier wtm): {source}")]
    Migrate { dir: PathBuf, source: sled::Error },
    #[error("checkpoint store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A delta of open windows cut against whole open windows the store no longer holds: what
    /// the store would hold after it is not the state that was cut. Nothing was written.
    #[error("checkpoint store: partition {partition}: a delta of open windows over generation {base}, but the store holds generation {stored:?}")]
    StaleBase {
        partition: u32,
        base: u64,
        stored: Option<u64>,
    },
    #[error("checkpoint store: {dir}: {free} bytes free, a checkpoint of {len} bytes needs {needed}: the disk is full")]
    DiskFull {
        dir: PathBuf,
        free: u64,
        len: usize,
        needed: u64,
    },
}

from_redb_errors!(CheckpointStoreError);

impl CheckpointStoreError {
    /// Only a refused write is worth retrying in the same process: after an I/O error redb
    /// refuses every later transaction until the file is opened again (a new process), and a
    /// checkpoint this build cannot read stays unreadable.
    pub fn kind(&self) -> ErrorKind {
        match self {
            // Space may come back (an operator cleans up); until then each try fails fast.
            CheckpointStoreError::DiskFull { .. } => ErrorKind::Transient,
            CheckpointStoreError::Db(_)
            | CheckpointStoreError::Migrate { .. }
            | CheckpointStoreError::Io { .. }
            | CheckpointStoreError::Wire(_)
            // The owner restores (from what the store holds) and saves whole again.
            | CheckpointStoreError::StaleBase { .. } => ErrorKind::Permanent,
        }
    }
}

/// The store. Clones share the open files.
#[derive(Clone)]
pub struct CheckpointStore {
    db: Arc<Database>,
    records: Arc<RecordsDb>,
    dir: PathBuf,
}

/// Room a write leaves free beyond twice its size: a copy-on-write commit writes the new pages
/// before it frees the old ones. A write that might fill the disk is refused before redb sees
/// it, so the store stays usable and the write can be tried again once there is room (after an
/// I/O error redb refuses everything until it is reopened).
const SPACE_MARGIN: u64 = 8 << 20;

/// Refuse a write of `len` bytes that might fill the disk (see [`SPACE_MARGIN`]).
fn ensure_space(dir: &Path, len: usize) -> Result<(), CheckpointStoreError> {
    let needed = 2 * len as u64 + SPACE_MARGIN;
    // A file system that cannot say (unusual) is written to as before.
    match fs2::available_space(dir) {
        Ok(free) if free < needed => Err(CheckpointStoreError::DiskFull {
            dir: dir.to_owned(),
            free,
            len,
            needed,
        }),
        _ => Ok(()),
    }
}

fn partition_key(p: u32) -> String {
    format!("partition/{p:08}")
}

fn open_db(path: &Path, cache: usize) -> Result<Database, CheckpointStoreError> {
    Ok(Database::builder().set_cache_size(cache).create(path)?)
}

impl CheckpointStore {
    /// Open (or create) the store in `dir`, first copying a sled store an earlier build left
    /// there.
    pub fn open(dir: &Path) -> Result<CheckpointStore, CheckpointStoreError> {
        let io = |source| CheckpointStoreError::Io {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        migrate_sled(dir)?;
        let db = open_db(&dir.join(CHECKPOINTS_FILE), CHECKPOINTS_CACHE)?;
        let txn = db.begin_write()?;
        txn.open_table(CHECKPOINTS)?;
        txn.open_table(OPEN_PARTS)?;
        txn.open_table(PUBLISHED_WINDOWS)?;
        txn.open_table(OPEN_DELTAS)?;
        txn.open_table(OPEN_BASE)?;
        txn.commit()?;
        Ok(CheckpointStore {
            db: Arc::new(db),
            records: Arc::new(RecordsDb::new(
                open_db(&dir.join(RECORDS_FILE), RECORDS_CACHE)?,
                dir,
            )),
            dir: dir.to_owned(),
        })
    }

    /// Durably replace the partition's checkpoint (one durable commit), its open windows whole,
    /// storing every numbered publication's windows. Returns the bytes written. Blocking: call
    /// from `spawn_blocking`.
    pub fn save(&self, cp: &PartitionCheckpoint) -> Result<usize, CheckpointStoreError> {
        Ok(self
            .save_split(&SplitCheckpoint::of(cp.clone(), 0, None)?)?
            .bytes)
    }

    /// Durably replace the partition's checkpoint with `split`, in one commit. Blocking: call
    /// from `spawn_blocking`.
    pub fn save_split(&self, split: &SplitCheckpoint) -> Result<Saved, CheckpointStoreError> {
        let bytes = split.len();
        ensure_space(&self.dir, bytes)?;
        let open_generation = self.put_checkpoint(split)?;
        Ok(Saved {
            bytes,
            open_generation,
        })
    }

    /// A checkpoint already encoded whole with [`encode`] (its open windows and publications'
    /// windows inside).
    pub fn save_encoded(&self, partition: u32, bytes: Vec<u8>) -> Result<(), CheckpointStoreError> {
        ensure_space(&self.dir, bytes.len())?;
        self.put_checkpoint(&SplitCheckpoint {
            partition,
            value: bytes,
            ..SplitCheckpoint::default()
        })?;
        Ok(())
    }

    /// One commit: the partition's value, its open windows (whole, or a delta over the whole
    /// ones stored), and nothing of an earlier checkpoint that this one does not list (a part is
    /// never read with another checkpoint's value). Returns the generation of whole open
    /// windows the partition has then.
    fn put_checkpoint(&self, split: &SplitCheckpoint) -> Result<u64, CheckpointStoreError> {
        let partition = split.partition;
        let txn = self.db.begin_write()?;
        let generation;
        {
            txn.open_table(CHECKPOINTS)?
                .insert(partition_key(partition).as_str(), split.value.as_slice())?;
            let mut base = txn.open_table(OPEN_BASE)?;
            let stored = base.get(partition)?.map(|g| g.value());
            let mut deltas = txn.open_table(OPEN_DELTAS)?;
            let all_deltas = (partition, 0, 0)..=(partition, u64::MAX, u32::MAX);
            match &split.delta {
                Some(delta) => {
                    if stored != Some(delta.base) {
                        return Err(CheckpointStoreError::StaleBase {
                            partition,
                            base: delta.base,
                            stored,
                        });
                    }
                    generation = delta.base;
                    let seq = match deltas.range(all_deltas.clone())?.next_back() {
                        Some(last) => last?.0.value().1 + 1,
                        None => 0,
                    };
                    deltas.insert((partition, seq, 0), delta.closed.as_slice())?;
                    for (i, blob) in (1u32..).zip(&split.open) {
                        deltas.insert((partition, seq, i), blob.as_slice())?;
                    }
                }
                None => {
                    generation = stored.map_or(0, |g| g + 1);
                    base.insert(partition, generation)?;
                    deltas.retain_in(all_deltas, |_, _| false)?;
                    let mut parts = txn.open_table(OPEN_PARTS)?;
                    for (i, blob) in (0u32..).zip(&split.open) {
                        parts.insert((partition, i), blob.as_slice())?;
                    }
                    let stale = (partition, split.open.len() as u32)..=(partition, u32::MAX);
                    parts.retain_in(stale, |_, _| false)?;
                }
            }
            let mut windows = txn.open_table(PUBLISHED_WINDOWS)?;
            for (seq, blob) in &split.new_windows {
                windows.insert((partition, *seq), blob.as_slice())?;
            }
            windows.retain_in((partition, 0)..=(partition, u64::MAX), |(_, seq), _| {
                split.listed.binary_search(&seq).is_ok()
            })?;
        }
        txn.commit()?;
        Ok(generation)
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<(), CheckpointStoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(CHECKPOINTS)?.insert(key, value)?;
        txn.commit()?;
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CheckpointStoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CHECKPOINTS)?;
        Ok(table.get(key)?.map(|v| v.value().to_vec()))
    }

    pub fn load(
        &self,
        partition: u32,
    ) -> Result<Option<PartitionCheckpoint>, CheckpointStoreError> {
        let key = partition_key(partition);
        // One read transaction: the value and its parts from the same commit.
        let txn = self.db.begin_read()?;
        let Some(v) = txn.open_table(CHECKPOINTS)?.get(key.as_str())? else {
            return Ok(None);
        };
        let mut cp: PartitionCheckpoint = decode(&key, v.value())?;
        for part in txn
            .open_table(OPEN_PARTS)?
            .range((partition, 0)..=(partition, u32::MAX))?
        {
            cp.open.push(part?.1.value().to_vec());
        }
        let mut last_seq = None;
        for row in txn
            .open_table(OPEN_DELTAS)?
            .range((partition, 0, 0)..=(partition, u64::MAX, u32::MAX))?
        {
            let (k, blob) = row?;
            let (_, seq, part) = k.value();
            let name = || format!("{key} delta {seq}");
            match (part, cp.open_deltas.last_mut()) {
                (0, _) => cp.open_deltas.push(OpenDelta {
                    closed: decode(&name(), blob.value())?,
                    changed: Vec::new(),
                }),
                (_, Some(delta)) if last_seq == Some(seq) => {
                    delta.changed.push(blob.value().to_vec())
                }
                // Written in one commit with its part 0, always.
                _ => {
                    return Err(WireError::Decode {
                        key: name(),
                        reason: format!("part {part} without the delta's closed windows"),
                    }
                    .into())
                }
            }
            last_seq = Some(seq);
        }
        let windows = txn.open_table(PUBLISHED_WINDOWS)?;
        for p in &mut cp.unpublished {
            if p.seq == 0 || !p.closed.is_empty() {
                continue;
            }
            // A numbered publication without windows in the value: stored apart, unless it
            // closed none.
            if let Some(blob) = windows.get((partition, p.seq))? {
                Arc::make_mut(p).closed = decode(&key, blob.value())?;
            }
        }
        Ok(Some(cp))
    }

    /// A small named value (e.g. the generator's event-time origin), set once.
    pub fn meta_i64(
        &self,
        name: &str,
        init: impl FnOnce() -> i64,
    ) -> Result<i64, CheckpointStoreError> {
        let key = format!("meta/{name}");
        if let Some(v) = self.get(&key)? {
            return Ok(decode(&key, &v)?);
        }
        let v = init();
        self.put(&key, &encode(&v)?)?;
        Ok(v)
    }

    /// The records named `name` (created empty the first time).
    pub fn records(&self, name: &str) -> Result<Records, CheckpointStoreError> {
        let table = format!("records/{name}");
        let txn = self.records.db.begin_write()?;
        txn.open_table(TableDefinition::<&[u8], &[u8]>::new(&table))?;
        txn.commit()?;
        Ok(Records {
            db: Arc::clone(&self.records),
            table,
        })
    }
}

/// A partition checkpoint as the local store keeps it: the value (the checkpoint without its
/// open windows, and without the windows of its numbered publications), the shards' open-window
/// blobs as they are, and the windows of the publications not stored yet.
#[derive(Debug, Default)]
pub struct SplitCheckpoint {
    pub partition: u32,
    value: Vec<u8>,
    /// The shards' blobs: every open window, or (with `delta`) those changed since.
    open: Vec<Vec<u8>>,
    /// Set when `open` holds only what changed over the stored generation of whole windows.
    delta: Option<SplitDelta>,
    /// (seq, encoded closed windows) of publications at or above `stored_below`.
    new_windows: Vec<(u64, Vec<u8>)>,
    /// Every numbered publication the value lists, ascending: what the store keeps.
    listed: Vec<u64>,
    /// Publications numbered below this are stored once this checkpoint is.
    pub stored_below: u64,
}

#[derive(Debug)]
struct SplitDelta {
    /// The generation of whole open windows this delta goes over.
    base: u64,
    /// Encoded keys of the windows closed since the checkpoint before.
    closed: Vec<u8>,
}

/// What a save wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    pub bytes: usize,
    /// The generation of whole open windows the partition has now (a delta's base).
    pub open_generation: u64,
}

impl SplitCheckpoint {
    /// Split `cp`, encoding the windows of its publications numbered `stored_below` or above
    /// (those below are in the store already: an owner passes what its earlier saves since its
    /// restore stored, and 0 after a restore, when the store may hold another timeline's).
    ///
    /// With `delta` (the stored generation of whole open windows, and the windows closed since
    /// the checkpoint before), `cp.open` holds only the windows changed since that checkpoint,
    /// and is stored as a delta over that generation; without, it holds them all.
    pub fn of(
        mut cp: PartitionCheckpoint,
        stored_below: u64,
        delta: Option<(u64, &[WindowKey])>,
    ) -> Result<SplitCheckpoint, WireError> {
        let open = std::mem::take(&mut cp.open);
        let (mut new_windows, mut listed) = (Vec::new(), Vec::new());
        let mut below = stored_below;
        for p in &mut cp.unpublished {
            if p.seq == 0 || p.closed.is_empty() {
                continue;
            }
            listed.push(p.seq);
            if p.seq >= stored_below {
                new_windows.push((p.seq, encode(&p.closed)?));
                below = below.max(p.seq + 1);
            }
            *p = Arc::new(p.without_windows());
        }
        listed.sort_unstable();
        let delta = delta
            .map(|(base, closed)| {
                Ok::<_, WireError>(SplitDelta {
                    base,
                    closed: encode(&closed)?,
                })
            })
            .transpose()?;
        Ok(SplitCheckpoint {
            partition: cp.partition,
            value: encode(&cp)?,
            open,
            delta,
            new_windows,
            listed,
            stored_below: below,
        })
    }

    /// Bytes this save writes.
    pub fn len(&self) -> usize {
        self.value.len()
            + self.open.iter().map(Vec::len).sum::<usize>()
            + self.delta.as_ref().map_or(0, |d| d.closed.len())
            + self.new_windows.iter().map(|(_, b)| b.len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The records file and when a change to it was last made durable.
struct RecordsDb {
    db: Database,
    dir: PathBuf,
    opened: Instant,
    /// Milliseconds after `opened` of the last durable commit.
    durable_at_ms: AtomicU64,
}

impl RecordsDb {
    fn new(db: Database, dir: &Path) -> RecordsDb {
        RecordsDb {
            db,
            dir: dir.to_owned(),
            opened: Instant::now(),
            durable_at_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    /// Whether a commit now should be durable (the last durable one is old), claiming it.
    fn durable_due(&self) -> bool {
        let now = self.now_ms();
        let last = self.durable_at_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= RECORDS_DURABLE_EVERY_MS
            && self
                .durable_at_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// A named set of keyed records in the checkpoint store. Changes apply atomically; they are
/// durable after [`Records::flush`], after any change applied 500 ms or more after the last
/// durable one, and when the store closes.
#[derive(Clone)]
pub struct Records {
    db: Arc<RecordsDb>,
    table: String,
}

/// A record: its key and value.
pub type Record = (Vec<u8>, Vec<u8>);

/// Changes to [`Records`], applied together.
#[derive(Debug, Default)]
pub struct RecordBatch {
    pub puts: Vec<Record>,
    pub removes: Vec<Vec<u8>>,
}

impl RecordBatch {
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.removes.is_empty()
    }
}

impl Records {
    fn definition(&self) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
        TableDefinition::new(&self.table)
    }

    /// Apply every change at once (none if the disk is nearly full). Usually fast: no fsync
    /// (see [`Records`] for when one is made).
    pub fn apply(&self, batch: RecordBatch) -> Result<(), CheckpointStoreError> {
        let len = batch.puts.iter().map(|(k, v)| k.len() + v.len()).sum();
        ensure_space(&self.db.dir, len)?;
        let mut txn = self.db.db.begin_write()?;
        if !self.db.durable_due() {
            txn.set_durability(Durability::None)?;
        }
        {
            let mut table = txn.open_table(self.definition())?;
            for (k, v) in &batch.puts {
                table.insert(k.as_slice(), v.as_slice())?;
            }
            for k in &batch.removes {
                table.remove(k.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Make every change applied so far durable (every table of the file). Blocking (an fsync).
    pub fn flush(&self) -> Result<(), CheckpointStoreError> {
        self.db
            .durable_at_ms
            .fetch_max(self.db.now_ms(), Ordering::Relaxed);
        // A durable commit makes the non-durable ones before it durable too.
        self.db.db.begin_write()?.commit()?;
        Ok(())
    }

    pub fn contains(&self, key: &[u8]) -> Result<bool, CheckpointStoreError> {
        let txn = self.db.db.begin_read()?;
        let table = txn.open_table(self.definition())?;
        Ok(table.get(key)?.is_some())
    }

    /// Every record whose key starts with `prefix`, in key order.
    pub fn scan(&self, prefix: &[u8]) -> Result<Vec<Record>, CheckpointStoreError> {
        let txn = self.db.db.begin_read()?;
        let table = txn.open_table(self.definition())?;
        let mut out = Vec::new();
        for kv in table.range(prefix..)? {
            let (k, v) = kv?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }
}

/// Copy a sled store an earlier build left in `dir` into the redb files, once: both are built
/// under temporary names and renamed into place, the checkpoints file last, so its presence says
/// the copy is complete (an interrupted copy is redone). The sled files are left where they
/// were (an operator may delete them; nothing reads them again).
fn migrate_sled(dir: &Path) -> Result<(), CheckpointStoreError> {
    let target = dir.join(CHECKPOINTS_FILE);
    if target.exists() || !dir.join("conf").exists() || !dir.join("db").exists() {
        return Ok(());
    }
    let sled_err = |source| CheckpointStoreError::Migrate {
        dir: dir.to_owned(),
        source,
    };
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| CheckpointStoreError::Io { path, source }
    };
    let old = sled::Config::new()
        .path(dir)
        .cache_capacity(16 << 20)
        .open()
        .map_err(sled_err)?;
    let tmp = |name: &str| dir.join(format!("{name}.migrating"));
    let (cp_tmp, rec_tmp) = (tmp(CHECKPOINTS_FILE), tmp(RECORDS_FILE));
    for p in [&cp_tmp, &rec_tmp] {
        match std::fs::remove_file(p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(p)(e)),
            _ => {}
        }
    }
    let (mut partitions, mut records) = (0usize, 0usize);
    {
        let db = open_db(&cp_tmp, CHECKPOINTS_CACHE)?;
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(CHECKPOINTS)?;
            for kv in old.iter() {
                let (k, v) = kv.map_err(sled_err)?;
                // Every key this store ever wrote is text (`partition/…`, `meta/…`).
                let k = String::from_utf8_lossy(&k);
                partitions += usize::from(k.starts_with("partition/"));
                table.insert(k.as_ref(), v.as_ref())?;
            }
        }
        txn.commit()?;
        let db = open_db(&rec_tmp, RECORDS_CACHE)?;
        let txn = db.begin_write()?;
        for name in old.tree_names() {
            if name.as_ref() == b"__sled__default" {
                continue;
            }
            let table = format!("records/{}", String::from_utf8_lossy(&name));
            let mut t = txn.open_table(TableDefinition::<&[u8], &[u8]>::new(&table))?;
            for kv in old.open_tree(&name).map_err(sled_err)?.iter() {
                let (k, v) = kv.map_err(sled_err)?;
                t.insert(k.as_ref(), v.as_ref())?;
                records += 1;
            }
        }
        txn.commit()?;
    }
    std::fs::rename(&rec_tmp, dir.join(RECORDS_FILE)).map_err(io(&rec_tmp))?;
    std::fs::rename(&cp_tmp, &target).map_err(io(&cp_tmp))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    tracing::info!(
        dir = %dir.display(),
        partitions,
        records,
        "copied the sled checkpoint store an earlier wtm wrote; its files (conf, db, blobs/, snap.*) are no longer read"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wtm_core::agg::{ClosedWindow, WindowAgg, WindowKey};
    use wtm_core::checkpoint::{PartitionTotals, Publication, WIRE_VERSION};
    use wtm_core::window::WatermarkState;

    fn checkpoint(partition: u32, next_offset: u64) -> PartitionCheckpoint {
        PartitionCheckpoint {
            partition,
            owner_epoch: 1,
            next_offset,
            watermark: WatermarkState::default(),
            open: vec![],
            unpublished: vec![],
            range_start: next_offset,
            range_start_watermark: WatermarkState::default(),
            finished: false,
            totals: PartitionTotals::default(),
            open_deltas: vec![],
        }
    }

    #[test]
    fn round_trip_meta_and_unreadable_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        assert!(store.load(3).unwrap().is_none());
        store.save(&checkpoint(3, 42)).unwrap();
        assert_eq!(store.load(3).unwrap().unwrap().next_offset, 42);
        store.save(&checkpoint(3, 43)).unwrap();
        assert_eq!(store.load(3).unwrap().unwrap().next_offset, 43);
        assert_eq!(store.meta_i64("start", || 5).unwrap(), 5);
        assert_eq!(store.meta_i64("start", || 6).unwrap(), 5);
        // A checkpoint written by a future build: a permanent error, not a retry.
        store.save_encoded(4, vec![WIRE_VERSION + 1, 0]).unwrap();
        let err = store.load(4).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
        drop(store);
        let store = CheckpointStore::open(dir.path()).unwrap();
        assert_eq!(store.load(3).unwrap().unwrap().next_offset, 43);
        assert_eq!(store.meta_i64("start", || 7).unwrap(), 5);
    }

    #[test]
    fn deltas_go_over_the_whole_open_windows_they_were_cut_against() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        let with_open = |offset, open: &[&[u8]]| PartitionCheckpoint {
            open: open.iter().map(|b| b.to_vec()).collect(),
            ..checkpoint(1, offset)
        };
        let split = |offset, open: &[&[u8]], delta: Option<(u64, &[WindowKey])>| {
            SplitCheckpoint::of(with_open(offset, open), 0, delta).unwrap()
        };
        let closed = [WindowKey {
            host: "a".into(),
            start_ms: 0,
            partition: 1,
        }];
        let whole = store.save_split(&split(10, &[b"w1", b"w2"], None)).unwrap();
        let g = whole.open_generation;
        assert_eq!(
            store
                .save_split(&split(11, &[b"d1"], Some((g, &closed))))
                .unwrap()
                .open_generation,
            g
        );
        store.save_split(&split(12, &[], Some((g, &[])))).unwrap();
        let cp = store.load(1).unwrap().unwrap();
        assert_eq!((cp.next_offset, cp.open.len()), (12, 2));
        assert_eq!(
            cp.open_deltas,
            [
                OpenDelta {
                    closed: closed.to_vec(),
                    changed: vec![b"d1".to_vec()]
                },
                OpenDelta::default()
            ]
        );
        // A delta over another generation (cut against what the store no longer holds) is
        // refused, and nothing of it is written.
        let stale = store.save_split(&split(13, &[b"x"], Some((g + 7, &[]))));
        assert!(
            matches!(stale, Err(CheckpointStoreError::StaleBase { base, stored: Some(s), .. }) if base == g + 7 && s == g)
        );
        assert_eq!(store.load(1).unwrap().unwrap().next_offset, 12);
        // A whole save starts a new generation and drops the deltas.
        let next = store.save_split(&split(14, &[b"w3"], None)).unwrap();
        assert_eq!(next.open_generation, g + 1);
        let cp = store.load(1).unwrap().unwrap();
        assert_eq!((cp.open, cp.open_deltas), (vec![b"w3".to_vec()], vec![]));
        assert!(store.save_split(&split(15, &[], Some((g, &[])))).is_err());
    }

    #[test]
    fn open_windows_are_kept_beside_the_value_and_only_the_last_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        let with_open = |p, offset, open: &[&[u8]]| PartitionCheckpoint {
            open: open.iter().map(|b| b.to_vec()).collect(),
            ..checkpoint(p, offset)
        };
        let open_of = |p| store.load(p).unwrap().unwrap().open;
        store
            .save(&with_open(1, 10, &[b"a", b"bb", b"ccc"]))
            .unwrap();
        store.save(&with_open(2, 10, &[b"other"])).unwrap();
        assert_eq!(open_of(1), [b"a".to_vec(), b"bb".to_vec(), b"ccc".to_vec()]);
        // Fewer shards held windows this time: the third part is gone with the old value.
        assert!(store.save(&with_open(1, 11, &[b"d"])).unwrap() > 1);
        assert_eq!(open_of(1), [b"d".to_vec()]);
        // A value with its open windows inside (an earlier build, a shared snapshot's bytes)
        // reads as it was written, and leaves no parts behind.
        let whole = with_open(1, 12, &[b"e", b"f"]);
        store.save_encoded(1, encode(&whole).unwrap()).unwrap();
        assert_eq!(open_of(1), [b"e".to_vec(), b"f".to_vec()]);
        store.save(&with_open(1, 13, &[])).unwrap();
        assert!(open_of(1).is_empty());
        assert_eq!(
            open_of(2),
            [b"other".to_vec()],
            "another partition's parts stay"
        );
        drop(store);
        let store = CheckpointStore::open(dir.path()).unwrap();
        assert_eq!(store.load(2).unwrap().unwrap().open, [b"other".to_vec()]);
    }

    fn publication(seq: u64, hosts: &[&str]) -> Arc<Publication> {
        Arc::new(Publication {
            partition: 1,
            from_offset: seq * 10,
            to_offset: seq * 10,
            records_watermark: WatermarkState::default(),
            created_ms: 0,
            closed: hosts
                .iter()
                .map(|h| ClosedWindow {
                    key: WindowKey {
                        host: h.to_string(),
                        start_ms: 60_000,
                        partition: 1,
                    },
                    end_ms: 120_000,
                    agg: WindowAgg {
                        requests: seq,
                        ..WindowAgg::default()
                    },
                })
                .collect(),
            late: vec![],
            invalid: vec![],
            raw: Default::default(),
            seq,
        })
    }

    /// (seq, hosts, requests) of each unpublished publication as loaded.
    fn loaded(store: &CheckpointStore) -> Vec<(u64, Vec<String>, u64)> {
        let cp = store.load(1).unwrap().unwrap();
        cp.unpublished
            .iter()
            .map(|p| {
                let hosts = p.closed.iter().map(|w| w.key.host.clone()).collect();
                let requests = p.closed.iter().map(|w| w.agg.requests).sum();
                (p.seq, hosts, requests)
            })
            .collect()
    }

    fn stored_seqs(store: &CheckpointStore) -> Vec<u64> {
        let txn = store.db.begin_read().unwrap();
        let t = txn.open_table(PUBLISHED_WINDOWS).unwrap();
        t.range((1u32, 0u64)..=(1u32, u64::MAX))
            .unwrap()
            .map(|kv| kv.unwrap().0.value().1)
            .collect()
    }

    #[test]
    fn a_publications_windows_are_stored_once_and_go_with_the_last_checkpoint_listing_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        let (old, p1, p2) = (
            publication(0, &["old"]),
            publication(1, &["a", "b"]),
            publication(2, &["c"]),
        );
        let cp = |unpublished: Vec<Arc<Publication>>| PartitionCheckpoint {
            unpublished,
            ..checkpoint(1, 5)
        };
        let s = |seq: u64, hosts: &[&str]| {
            (
                seq,
                hosts.iter().map(|h| h.to_string()).collect(),
                seq * hosts.len() as u64,
            )
        };
        // The first save after a restore stores every numbered publication's windows; one of
        // an earlier build (0) stays inside the value.
        let first = SplitCheckpoint::of(cp(vec![old.clone(), p1.clone()]), 0, None).unwrap();
        assert_eq!(first.stored_below, 2);
        store.save_split(&first).unwrap();
        assert_eq!(loaded(&store), [s(0, &["old"]), s(1, &["a", "b"])]);
        assert_eq!(stored_seqs(&store), [1]);
        // The next one encodes only the new publication's windows, and reads back whole.
        let next = SplitCheckpoint::of(cp(vec![old, p1.clone(), p2.clone()]), 2, None).unwrap();
        assert_eq!(
            next.new_windows.iter().map(|(q, _)| *q).collect::<Vec<_>>(),
            [2]
        );
        assert_eq!(next.stored_below, 3);
        store.save_split(&next).unwrap();
        assert_eq!(
            loaded(&store),
            [s(0, &["old"]), s(1, &["a", "b"]), s(2, &["c"])]
        );
        // Written to the lake, a publication leaves the checkpoint and its windows the store.
        store
            .save_split(&SplitCheckpoint::of(cp(vec![p2]), 3, None).unwrap())
            .unwrap();
        assert_eq!(loaded(&store), [s(2, &["c"])]);
        assert_eq!(stored_seqs(&store), [2]);
        // A whole value (a shared snapshot's bytes) stands alone: nothing stored beside it.
        store
            .save_encoded(1, encode(&cp(vec![p1])).unwrap())
            .unwrap();
        assert_eq!(loaded(&store), [s(1, &["a", "b"])]);
        assert!(stored_seqs(&store).is_empty());
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _store = CheckpointStore::open(dir.path()).unwrap();
        let err = CheckpointStore::open(dir.path()).err().expect("refused");
        assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    }

    fn kv(k: &str, v: &str) -> Record {
        (k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    fn listed(r: &Records, prefix: &[u8]) -> Vec<String> {
        r.scan(prefix)
            .unwrap()
            .into_iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    String::from_utf8(k).unwrap(),
                    String::from_utf8(v).unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn records_apply_atomically_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = CheckpointStore::open(dir.path()).unwrap();
            let r = store.records("detector").unwrap();
            r.apply(RecordBatch {
                puts: vec![kv("a/1", "x"), kv("a/2", "y"), kv("b/1", "z")],
                removes: vec![],
            })
            .unwrap();
            r.apply(RecordBatch {
                puts: vec![kv("a/3", "w")],
                removes: vec![b"a/1".to_vec()],
            })
            .unwrap();
            r.flush().unwrap();
            assert!(r.contains(b"b/1").unwrap());
            assert!(!r.contains(b"a/1").unwrap());
            // Another name is another set; records are not partitions' checkpoints.
            assert!(listed(&store.records("other").unwrap(), b"").is_empty());
            assert!(store.load(0).unwrap().is_none());
        }
        let store = CheckpointStore::open(dir.path()).unwrap();
        let r = store.records("detector").unwrap();
        assert_eq!(listed(&r, b"a/"), ["a/2=y", "a/3=w"]);
        // A prefix that sorts past every key, and one between keys.
        assert!(listed(&r, b"c").is_empty());
        assert_eq!(listed(&r, b"a/2"), ["a/2=y"]);
    }

    #[test]
    fn a_store_sled_wrote_is_copied_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let old = sled::open(dir.path()).unwrap();
            let cp = encode(&checkpoint(7, 99)).unwrap();
            old.insert(partition_key(7), cp).unwrap();
            old.insert("meta/start", encode(&11i64).unwrap()).unwrap();
            let t = old.open_tree("detector").unwrap();
            t.insert(b"h/x", b"1".to_vec()).unwrap();
            t.insert(b"o/y", b"2".to_vec()).unwrap();
            old.flush().unwrap();
        }
        {
            let store = CheckpointStore::open(dir.path()).unwrap();
            assert_eq!(store.load(7).unwrap().unwrap().next_offset, 99);
            assert_eq!(store.meta_i64("start", || 0).unwrap(), 11);
            let r = store.records("detector").unwrap();
            assert_eq!(listed(&r, b""), ["h/x=1", "o/y=2"]);
            // What the node writes from now on is not overwritten by a second copy.
            store.save(&checkpoint(7, 100)).unwrap();
        }
        let store = CheckpointStore::open(dir.path()).unwrap();
        assert_eq!(store.load(7).unwrap().unwrap().next_offset, 100);
    }
}
