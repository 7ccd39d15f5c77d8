//! Sources: where a partition's records come from. A source hands out raw records with their
//! offsets; parsing happens in the partition owner, the same for every source.
//!
//! A [`SourceFactory`] opens partition `p` at an offset: the built-in generator
//! ([`GeneratorSources`]) or log files, plain or gzip, one partition per file ([`FileSources`]).

use crate::event::Format;
use crate::generator::{Cursor, Generator};
use crate::time::now_ms;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Opens the partitions of a source.
pub trait SourceFactory: Send + Sync + 'static {
    /// Partition `p`, positioned so that the next record has offset `offset`.
    fn open(&self, partition: u32, offset: u64) -> Result<Box<dyn PartitionSource>, String>;
    /// Partition `p` with no checkpoint anywhere: from its beginning, or where the source's
    /// configuration says a new consumer starts.
    fn open_new(&self, partition: u32) -> Result<Box<dyn PartitionSource>, String> {
        self.open(partition, 0)
    }
}

/// The built-in generator, one partition per generator partition.
pub struct GeneratorSources {
    pub generator: Arc<Generator>,
    pub format: Format,
    pub realtime: bool,
}

impl SourceFactory for GeneratorSources {
    fn open(&self, partition: u32, offset: u64) -> Result<Box<dyn PartitionSource>, String> {
        Ok(Box::new(GeneratorSource::new(
            &self.generator,
            partition,
            offset,
            self.format,
            self.realtime,
        )))
    }
}

/// Log files, one partition each: plain or gzip (by content), `-` for standard input.
pub struct FileSources {
    pub paths: Vec<PathBuf>,
    /// Bytes read so far over all files (compressed bytes for gzip), for progress reports.
    pub bytes_read: Arc<AtomicU64>,
}

impl FileSources {
    /// Total size of the inputs that have one (files; not standard input).
    pub fn total_bytes(&self) -> Option<u64> {
        self.paths
            .iter()
            .map(|p| {
                if p.as_os_str() == "-" {
                    None
                } else {
                    std::fs::metadata(p).ok().map(|m| m.len())
                }
            })
            .sum()
    }
}

/// Counts bytes as they are read, into a shared counter.
struct Counted<R> {
    inner: R,
    counter: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl SourceFactory for FileSources {
    fn open(&self, partition: u32, offset: u64) -> Result<Box<dyn PartitionSource>, String> {
        let path = self
            .paths
            .get(partition as usize)
            .ok_or_else(|| format!("no input for partition {partition}"))?;
        let raw: Box<dyn Read + Send> = if path.as_os_str() == "-" {
            if offset > 0 {
                return Err("standard input cannot be read again from an offset".into());
            }
            Box::new(std::io::stdin())
        } else {
            Box::new(File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?)
        };
        let mut counted = BufReader::with_capacity(
            1 << 16,
            Counted {
                inner: raw,
                counter: Arc::clone(&self.bytes_read),
            },
        );
        // Gzip by content, not by name: rotated logs are named every which way.
        let gzip = counted
            .fill_buf()
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .starts_with(&[0x1f, 0x8b]);
        let reader: Box<dyn BufRead + Send> = if gzip {
            Box::new(BufReader::with_capacity(
                1 << 20,
                flate2::read::MultiGzDecoder::new(counted),
            ))
        } else {
            Box::new(BufReader::with_capacity(1 << 20, counted))
        };
        let mut src = FileSource {
            reader,
            offset: 0,
            name: path.display().to_string(),
            done: false,
        };
        // Offsets are line numbers: to resume, skip what was read before.
        let mut skip = RecordBatch::default();
        while src.offset < offset {
            skip.clear();
            if src.poll((offset - src.offset).min(65_536) as usize, &mut skip) == Polled::Finished {
                break;
            }
        }
        Ok(Box::new(src))
    }
}

/// One file as a partition; a record is a line, its offset the line number.
pub struct FileSource {
    reader: Box<dyn BufRead + Send>,
    offset: u64,
    name: String,
    done: bool,
}

impl PartitionSource for FileSource {
    fn offset(&self) -> u64 {
        self.offset
    }

    fn poll(&mut self, max: usize, out: &mut RecordBatch) -> Polled {
        for _ in 0..max {
            if self.done {
                break;
            }
            let start = out.buf.len();
            match self.reader.read_until(b'\n', &mut out.buf) {
                Ok(0) => self.done = true,
                Ok(_) => {
                    let mut end = out.buf.len();
                    while end > start && matches!(out.buf[end - 1], b'\n' | b'\r') {
                        end -= 1;
                    }
                    out.records.push((self.offset, start..end));
                    self.offset += 1;
                }
                Err(e) => {
                    // A read error (truncated gzip, I/O) ends the file; what was read stands.
                    tracing::error!(file = %self.name, offset = self.offset, error = %e, "read failed; ending this input");
                    out.buf.truncate(start);
                    self.done = true;
                }
            }
        }
        if out.records.is_empty() && self.done {
            Polled::Finished
        } else {
            Polled::Ready
        }
    }

    fn lag(&mut self) -> Option<u64> {
        None
    }
}

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
