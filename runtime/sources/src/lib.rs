//! # Layout
//!
//! `wtm-sources`: where a partition's records come from. A source hands out raw records with
//! their offsets ([`RawRecords`]); parsing happens in the partition owner, the same for every
//! source. A [`SourceFactory`] opens partition `p` at an offset:
//!
//! - [`generator`]: the built-in generator, one partition per generator partition;
//! - [`files`]: log files, plain or gzip, one partition per file (`wtm batch`);
//! - [`kafka`]: a topic through one consumer-group member per node, and the producers
//!   (`wtm generate --kafka`, dead letters). The only module that touches rdkafka; its group
//!   callbacks become typed [`kafka::GroupEvent`]s for whoever starts and stops the owners.

pub mod files;
pub mod generator;
pub mod kafka;

pub use files::FileSources;
pub use generator::GeneratorSources;
pub use wtm_core::records::RawRecords;

use wtm_core::error::ErrorKind;

/// A partition that cannot be opened or read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("source: {message}")]
pub struct SourceError {
    pub kind: ErrorKind,
    pub message: String,
}

impl SourceError {
    pub fn transient(message: impl Into<String>) -> SourceError {
        SourceError {
            kind: ErrorKind::Transient,
            message: message.into(),
        }
    }
    pub fn permanent(message: impl Into<String>) -> SourceError {
        SourceError {
            kind: ErrorKind::Permanent,
            message: message.into(),
        }
    }
}

/// Opens the partitions of a source.
pub trait SourceFactory: Send + Sync + 'static {
    /// Partition `p`, positioned so that the next record has offset `offset`.
    fn open(&self, partition: u32, offset: u64) -> Result<Box<dyn PartitionSource>, SourceError>;
    /// Partition `p` with no checkpoint anywhere: from its beginning, or where the source's
    /// configuration says a new consumer starts.
    fn open_new(&self, partition: u32) -> Result<Box<dyn PartitionSource>, SourceError> {
        self.open(partition, 0)
    }
}

/// What a poll found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polled {
    /// Records were added (maybe fewer than asked); poll again.
    Ready,
    /// Nothing available before this wall-clock time (UTC ms).
    NotBefore(i64),
    /// The partition has ended.
    Finished,
}

/// One partition of a source, positioned at an offset.
pub trait PartitionSource: Send + 'static {
    /// Offset of the next record.
    fn offset(&self) -> u64;
    /// Append up to `max` records to `out`.
    fn poll(&mut self, max: usize, out: &mut RawRecords) -> Polled;
    /// Records available but not yet read (consumer lag), when the source knows.
    fn lag(&mut self) -> Option<u64>;
    /// The state up to `offset` is durable where another node can restore it: the source may
    /// record that upstream (a Kafka offset commit). Must not block.
    fn commit(&mut self, _offset: u64) {}
    /// The last offset the source confirmed committed upstream, if it commits at all.
    fn committed(&self) -> Option<u64> {
        None
    }
    /// A malformed record, for a dead-letter stream beside the lake's (at least once).
    fn dead_letter(&mut self, _offset: u64, _reason: &str, _record: &[u8]) {}
}
