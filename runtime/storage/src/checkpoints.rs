//! The checkpoint store: one sled tree, one key per partition, each checkpoint written as one
//! atomic insert (state, watermark, next offset and unconfirmed outputs together) and flushed.
//! Actors with small state of their own (the detector's episodes) keep it in [`Records`]: a named
//! tree of the same database. The only file that touches sled.

use std::path::{Path, PathBuf};
use wtm_core::checkpoint::{decode, encode, PartitionCheckpoint, WireError};
use wtm_core::error::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointStoreError {
    #[error("checkpoint store: {0}")]
    Sled(#[from] sled::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("checkpoint store: {dir}: {free} bytes free, a checkpoint of {len} bytes needs {needed}: the disk is full")]
    DiskFull {
        dir: PathBuf,
        free: u64,
        len: usize,
        needed: u64,
    },
}

impl CheckpointStoreError {
    /// A checkpoint this build cannot read stays unreadable; sled's I/O errors may pass.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CheckpointStoreError::Sled(sled::Error::Io(_)) => ErrorKind::Transient,
            CheckpointStoreError::Sled(_) => ErrorKind::Permanent,
            CheckpointStoreError::Wire(_) => ErrorKind::Permanent,
            // Space may come back (an operator cleans up); until then each try fails fast.
            CheckpointStoreError::DiskFull { .. } => ErrorKind::Transient,
        }
    }
}

/// The sled-backed store.
#[derive(Clone)]
pub struct CheckpointStore {
    db: sled::Db,
    dir: PathBuf,
}

/// Room a checkpoint write leaves free beyond twice its size: sled appends to its log and may
/// start a segment. sled 0.34 does not survive running out of space mid-write (its flush then
/// waits for ever), so a write that might is refused before sled sees it.
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

impl CheckpointStore {
    pub fn open(dir: &Path) -> Result<CheckpointStore, CheckpointStoreError> {
        Ok(CheckpointStore {
            // sled's page cache defaults to 1 GiB; checkpoints are written far more than read.
            db: sled::Config::new()
                .path(dir)
                .cache_capacity(64 << 20)
                .open()?,
            dir: dir.to_owned(),
        })
    }

    /// Durably replace the partition's checkpoint (one atomic insert, then a flush).
    /// Blocking: call from `spawn_blocking`.
    pub fn save(&self, cp: &PartitionCheckpoint) -> Result<usize, CheckpointStoreError> {
        let bytes = encode(cp)?;
        let len = bytes.len();
        self.save_encoded(cp.partition, bytes)?;
        Ok(len)
    }

    /// [`CheckpointStore::save`] of a checkpoint already encoded with [`encode`].
    pub fn save_encoded(&self, partition: u32, bytes: Vec<u8>) -> Result<(), CheckpointStoreError> {
        ensure_space(&self.dir, bytes.len())?;
        self.db.insert(partition_key(partition), bytes)?;
        self.db.flush()?;
        Ok(())
    }

    pub fn load(
        &self,
        partition: u32,
    ) -> Result<Option<PartitionCheckpoint>, CheckpointStoreError> {
        let key = partition_key(partition);
        match self.db.get(&key)? {
            Some(v) => Ok(Some(decode(&key, &v)?)),
            None => Ok(None),
        }
    }

    /// A small named value (e.g. the generator's event-time origin), set once.
    pub fn meta_i64(
        &self,
        name: &str,
        init: impl FnOnce() -> i64,
    ) -> Result<i64, CheckpointStoreError> {
        let key = format!("meta/{name}");
        if let Some(v) = self.db.get(&key)? {
            return Ok(decode(&key, &v)?);
        }
        let v = init();
        self.db.insert(key, encode(&v)?)?;
        self.db.flush()?;
        Ok(v)
    }

    /// The records named `name` (created empty the first time).
    pub fn records(&self, name: &str) -> Result<Records, CheckpointStoreError> {
        Ok(Records {
            tree: self.db.open_tree(name)?,
            dir: self.dir.clone(),
        })
    }
}

/// A named set of keyed records in the checkpoint store. Changes apply atomically and become
/// durable at the next [`Records::flush`] (or sled's own flush, every 500 ms).
#[derive(Clone)]
pub struct Records {
    tree: sled::Tree,
    dir: PathBuf,
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
    /// Apply every change at once (none if the disk is nearly full). Fast: no flush.
    pub fn apply(&self, batch: RecordBatch) -> Result<(), CheckpointStoreError> {
        let len = batch.puts.iter().map(|(k, v)| k.len() + v.len()).sum();
        ensure_space(&self.dir, len)?;
        let mut b = sled::Batch::default();
        for (k, v) in batch.puts {
            b.insert(k, v);
        }
        for k in batch.removes {
            b.remove(k);
        }
        self.tree.apply_batch(b)?;
        Ok(())
    }

    /// Make every change applied so far durable (the trees share one log). Blocking (an fsync).
    pub fn flush(&self) -> Result<(), CheckpointStoreError> {
        self.tree.flush()?;
        Ok(())
    }

    pub fn contains(&self, key: &[u8]) -> Result<bool, CheckpointStoreError> {
        Ok(self.tree.contains_key(key)?)
    }

    /// Every record whose key starts with `prefix`, in key order.
    pub fn scan(&self, prefix: &[u8]) -> Result<Vec<Record>, CheckpointStoreError> {
        self.tree
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wtm_core::checkpoint::{PartitionTotals, WIRE_VERSION};
    use wtm_core::window::WatermarkState;

    #[test]
    fn round_trip_meta_and_unreadable_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        assert!(store.load(3).unwrap().is_none());
        let cp = PartitionCheckpoint {
            partition: 3,
            owner_epoch: 1,
            next_offset: 42,
            watermark: WatermarkState::default(),
            open: vec![],
            unpublished: vec![],
            range_start: 42,
            range_start_watermark: WatermarkState::default(),
            finished: false,
            totals: PartitionTotals::default(),
        };
        store.save(&cp).unwrap();
        assert_eq!(store.load(3).unwrap().unwrap().next_offset, 42);
        assert_eq!(store.meta_i64("start", || 5).unwrap(), 5);
        assert_eq!(store.meta_i64("start", || 6).unwrap(), 5);
        // A checkpoint written by a future build: a permanent error, not a retry.
        store.save_encoded(4, vec![WIRE_VERSION + 1, 0]).unwrap();
        let err = store.load(4).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    }

    #[test]
    fn records_apply_atomically_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = CheckpointStore::open(dir.path()).unwrap();
            let r = store.records("detector").unwrap();
            let kv = |k: &str, v: &str| (k.as_bytes().to_vec(), v.as_bytes().to_vec());
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
            // Records are not partitions' checkpoints.
            assert!(store.load(0).unwrap().is_none());
        }
        let store = CheckpointStore::open(dir.path()).unwrap();
        let r = store.records("detector").unwrap();
        let keys: Vec<String> = r
            .scan(b"a/")
            .unwrap()
            .into_iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    String::from_utf8(k).unwrap(),
                    String::from_utf8(v).unwrap()
                )
            })
            .collect();
        assert_eq!(keys, ["a/2=y", "a/3=w"]);
    }
}
