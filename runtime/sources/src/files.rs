//! Log files as a source, one partition per file: plain or gzip (by content), `-` for
//! standard input. A record is a line, its offset the line number.

use crate::{PartitionSource, Polled, RawRecords, SourceError, SourceFactory};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Log files, one partition each: plain or gzip (by content), `-` for standard input.
pub struct FileSources {
    pub paths: Vec<PathBuf>,
    /// Bytes read so far over all files (compressed bytes for gzip), for progress reports.
    pub bytes_read: Arc<AtomicU64>,
    /// A longer line is cut (`limits.max_record_bytes`): never read whole into memory.
    pub max_record_bytes: usize,
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
    fn open(&self, partition: u32, offset: u64) -> Result<Box<dyn PartitionSource>, SourceError> {
        let path = self
            .paths
            .get(partition as usize)
            .ok_or_else(|| SourceError::permanent(format!("no input for partition {partition}")))?;
        let raw: Box<dyn Read + Send> = if path.as_os_str() == "-" {
            if offset > 0 {
                return Err(SourceError::permanent(
                    "standard input cannot be read again from an offset",
                ));
            }
            Box::new(std::io::stdin())
        } else {
            Box::new(File::open(path).map_err(|e| {
                let message = format!("cannot open {}: {e}", path.display());
                match e.kind() {
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                        SourceError::permanent(message)
                    }
                    _ => SourceError::transient(message),
                }
            })?)
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
            .map_err(|e| SourceError::transient(format!("cannot read {}: {e}", path.display())))?
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
            max_record_bytes: self.max_record_bytes,
            offset: 0,
            name: path.display().to_string(),
            done: false,
        };
        // Offsets are line numbers: to resume, skip what was read before.
        let mut skip = RawRecords::default();
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
    max_record_bytes: usize,
    offset: u64,
    name: String,
    done: bool,
}

/// Read one line (through its newline) into `buf`, keeping at most `max + 1` of its bytes and
/// skipping the rest: a line with no end in sight streams through in bounded memory. Returns
/// the line's whole length without its newline (None at the end of the input).
fn read_line(r: &mut dyn BufRead, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Option<u64>> {
    let mut whole: u64 = 0;
    let mut kept = 0usize;
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            // The last line, without a newline (or nothing more).
            return Ok((kept > 0).then_some(whole));
        }
        let (take, done) = match memchr::memchr(b'\n', chunk) {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let keep = take.min((max + 1).saturating_sub(kept));
        buf.extend_from_slice(&chunk[..keep]);
        kept += keep;
        whole += (take - usize::from(done)) as u64;
        r.consume(take);
        if done {
            return Ok(Some(whole));
        }
    }
}

impl PartitionSource for FileSource {
    fn offset(&self) -> u64 {
        self.offset
    }

    fn poll(&mut self, max: usize, out: &mut RawRecords) -> Polled {
        for _ in 0..max {
            if self.done {
                break;
            }
            let start = out.buf.len();
            match read_line(&mut self.reader, &mut out.buf, self.max_record_bytes) {
                Ok(None) => self.done = true,
                Ok(Some(whole)) => {
                    let mut end = out.buf.len();
                    if whole > self.max_record_bytes as u64 {
                        // Only the first bytes stay, for the dead-letter output.
                        end = (start + wtm_core::limits::KEPT_OF_TOO_LONG).min(end);
                        out.buf.truncate(end);
                        out.cut.push((self.offset, whole));
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_longer_than_the_limit_is_cut_as_it_streams() {
        let mut input = b"first\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 300_000));
        input.extend_from_slice(b"\n\nlast");
        let mut src = FileSource {
            reader: Box::new(BufReader::with_capacity(4096, std::io::Cursor::new(input))),
            max_record_bytes: 1024,
            offset: 0,
            name: "t".into(),
            done: false,
        };
        let mut out = RawRecords::default();
        while src.poll(10, &mut out) == Polled::Ready && !src.done {}
        let lines: Vec<(u64, usize)> = out.iter().map(|(o, b)| (o, b.len())).collect();
        assert_eq!(
            lines,
            vec![
                (0, 5),
                (1, wtm_core::limits::KEPT_OF_TOO_LONG),
                (2, 0),
                (3, 4)
            ]
        );
        assert_eq!(out.cut, vec![(1, 300_000)]);
        assert!(out.buf.len() < 2048, "never held whole: {}", out.buf.len());
        // Exactly the limit is not too long.
        let mut src = FileSource {
            reader: Box::new(std::io::Cursor::new(vec![b'y'; 1024])),
            max_record_bytes: 1024,
            offset: 0,
            name: "t".into(),
            done: false,
        };
        let mut out = RawRecords::default();
        src.poll(10, &mut out);
        assert!(out.cut.is_empty() && out.iter().next().unwrap().1.len() == 1024);
    }
}
