//! The checkpoint store: one sled tree, one key per partition, each checkpoint written as one
//! atomic insert (state, watermark, next offset and unconfirmed outputs together) and flushed.
//! The only file that touches sled.

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
        let needed = 2 * bytes.len() as u64 + SPACE_MARGIN;
        // A file system that cannot say (unusual) is written to as before.
        if let Ok(free) = fs2::available_space(&self.dir) {
            if free < needed {
                return Err(CheckpointStoreError::DiskFull {
                    dir: self.dir.clone(),
                    free,
                    len: bytes.len(),
                    needed,
                });
            }
        }
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
}
