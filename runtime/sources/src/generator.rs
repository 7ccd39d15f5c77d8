//! The built-in generator as a source: records rendered from the deterministic generator.

use crate::{PartitionSource, Polled, RawRecords, SourceError, SourceFactory};
use std::sync::Arc;
use wtm_core::event::Format;
use wtm_core::generator::{Cursor, Generator};
use wtm_core::time::now_ms;

/// The built-in generator, one partition per generator partition.
pub struct GeneratorSources {
    pub generator: Arc<Generator>,
    pub format: Format,
    pub realtime: bool,
}

impl SourceFactory for GeneratorSources {
    fn open(&self, partition: u32, offset: u64) -> Result<Box<dyn PartitionSource>, SourceError> {
        Ok(Box::new(GeneratorSource::new(
            &self.generator,
            partition,
            offset,
            self.format,
            self.realtime,
        )))
    }
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

    fn poll(&mut self, max: usize, out: &mut RawRecords) -> Polled {
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
