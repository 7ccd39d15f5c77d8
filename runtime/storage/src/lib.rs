//! # Layout
//!
//! `wtm-storage`: everything that keeps bytes. Every call blocks; callers run it on
//! `spawn_blocking`.
//!
//! - [`store`]: where objects live, a local directory or an S3 bucket (the only module that
//!   touches aws-sdk-s3). Atomic puts, conditional puts (the fence), listing, and errors that
//!   say whether to retry.
//! - [`lake`]: the Parquet lake on a store: Hive-style partitions, deterministic file names,
//!   the shared checkpoint snapshots under `checkpoints/`.
//! - [`delta`]: the Delta Lake transaction log that makes each lake table's set of files
//!   change atomically (nodes' group commits, checkpoints, the upkeep's fence).
//! - [`upkeep`]: compaction, retention and vacuum of the lake's tables, as Delta commits.
//! - [`checkpoints`]: the node's checkpoint store (partition checkpoints and actors' records,
//!   two redb files; the only module that reads sled, to copy a store an earlier build wrote).
//! - [`history`]: the API's retained closed windows on local disk (its own redb file).

/// `From` each of redb's specific error types for an error enum with a `Db(redb::Error)`
/// variant, so `?` works on every redb call (the redb stores' shared plumbing).
macro_rules! from_redb_errors {
    ($t:ident) => {
        from_redb_errors!(
            $t: redb::DatabaseError,
            redb::TransactionError,
            redb::TableError,
            redb::StorageError,
            redb::CommitError,
            redb::SetDurabilityError
        );
    };
    ($t:ident: $($e:ty),*) => {$(
        impl From<$e> for $t {
            fn from(e: $e) -> Self {
                $t::Db(e.into())
            }
        }
    )*};
}

pub mod checkpoints;
pub mod delta;
pub mod history;
pub mod lake;
pub mod store;
pub mod upkeep;

pub use checkpoints::{
    CheckpointStore, CheckpointStoreError, RecordBatch, Records, Saved, SplitCheckpoint,
};
pub use history::{History, HistoryError, SeriesRead};
pub use lake::{Lake, LakeError};
pub use store::{Expect, Store, StoreError, Version};
