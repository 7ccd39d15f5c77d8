//! Raw records as a source hands them out: bytes and offsets, before any parsing.

use std::ops::Range;

/// Raw records read in one poll, packed into one buffer (one allocation for the whole batch).
#[derive(Default, Debug, Clone)]
pub struct RawRecords {
    pub buf: Vec<u8>,
    /// Each record's offset in its partition and its bytes' range in `buf`.
    pub records: Vec<(u64, Range<usize>)>,
    /// Records cut by the source because they were too long: offset and whole length (only
    /// their first bytes are in `buf`).
    pub cut: Vec<(u64, u64)>,
}

impl RawRecords {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.records.clear();
        self.cut.clear();
    }

    /// Append one record.
    pub fn push(&mut self, offset: u64, bytes: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(bytes);
        self.records.push((offset, start..self.buf.len()));
    }

    /// The whole length of the record at `offset` if the source cut it.
    pub fn cut_len(&self, offset: u64) -> Option<u64> {
        if self.cut.is_empty() {
            return None;
        }
        self.cut.iter().find(|(o, _)| *o == offset).map(|(_, n)| *n)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.records.iter().map(|(o, r)| (*o, &self.buf[r.clone()]))
    }

    /// The bytes of the record at `offset`, if this batch holds it.
    pub fn get(&self, offset: u64) -> Option<&[u8]> {
        let i = self.records.binary_search_by_key(&offset, |r| r.0).ok()?;
        Some(&self.buf[self.records[i].1.clone()])
    }
}
