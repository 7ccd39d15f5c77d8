//! Sources: where a partition's records come from. A source hands out raw records with their
//! offsets; parsing happens in the partition owner, the same for every source.

use crate::event::Format;
use crate::generator::{Cursor, Generator};
use crate::time::now_ms;
use std::ops::Range;
use std::sync::Arc;

/// Raw records read in one poll, packed into one buffer.
#[derive(Default)]
pub struct RecordBatch {
    pub buf: Vec<u8>,
    pub records: Vec<(u64, Range<usize>)>,
}

impl RecordBatch {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.records.clear();
    }
    pub fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.records.iter().map(|(o, r)| (*o, &self.buf[r.clone()]))
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
    fn poll(&mut self, max: usize, out: &mut RecordBatch) -> Polled;
    /// Records available but not yet read (consumer lag), when the source knows.
    fn lag(&mut self) -> Option<u64>;
}

/// The built-in generator as a partition source, rendering records in `format`.
pub struct GeneratorSource {
    generator: Arc<Generator>,
    partition: u32,
    cursor: Cursor,
    format: Format,
    realtime: bool,
}

impl GeneratorSource {
    pub fn new(
        g: &Arc<Generator>,
        partition: u32,
        offset: u64,
        format: Format,
        realtime: bool,
    ) -> Self {
        GeneratorSource {
            generator: Arc::clone(g),
            partition,
            cursor: g.cursor(partition, offset),
            format,
            realtime,
        }
    }
}

impl PartitionSource for GeneratorSource {
    fn offset(&self) -> u64 {
        self.cursor.offset()
    }

    fn lag(&mut self) -> Option<u64> {
        // A paced stream counts what the wall clock has released; an unpaced one needs an end.
        let until = self.realtime.then(now_ms);
        if until.is_none() && self.cursor.end_offset().is_none() {
            return None;
        }
        Some(self.cursor.backlog(until, 86_400))
    }

    fn poll(&mut self, max: usize, out: &mut RecordBatch) -> Polled {
        let now = if self.realtime { now_ms() } else { i64::MAX };
        for _ in 0..max {
            if self.cursor.finished() {
                return if out.records.is_empty() {
                    Polled::Finished
                } else {
                    Polled::Ready
                };
            }
            let ready_at = self.cursor.ready_at_ms();
            if ready_at > now {
                return if out.records.is_empty() {
                    Polled::NotBefore(ready_at)
                } else {
                    Polled::Ready
                };
            }
            let offset = self.cursor.offset();
            let Some(e) = self.cursor.next_event() else {
                return if out.records.is_empty() {
                    Polled::Finished
                } else {
                    Polled::Ready
                };
            };
            let start = out.buf.len();
            self.generator
                .render(self.partition, offset, &e, self.format, &mut out.buf);
            // The record is the line without its newline, as a Kafka value would be.
            out.records.push((offset, start..out.buf.len() - 1));
        }
        Polled::Ready
    }
}
