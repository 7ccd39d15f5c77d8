//! Raw records as a source hands them out (bytes and offsets, before any parsing), and parsed
//! events column by column, as they go to the window shards and wait for the raw archive.

use crate::event::{Event, EventView};
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

/// Parsed events column by column: a handful of growing buffers instead of an [`Event`] (six
/// heap strings) per record. How events go from an owner to its window shards (the owner copies
/// each record's fields in from the record's bytes, a shard reads them out: no string allocated
/// or freed per event, none freed across threads), and how the raw archive keeps them until the
/// lake has them (cloning an event in and freeing a written publication's events string by
/// string were an eighth of a node's time with the archive on).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EventColumns {
    pub offsets: Vec<u64>,
    pub ts_ms: Vec<i64>,
    pub status: Vec<u16>,
    pub bytes: Vec<u64>,
    pub latency_ms: Vec<Option<f64>>,
    pub host: TextColumn,
    pub method: TextColumn,
    pub path: TextColumn,
    pub client_ip: TextColumn,
    pub user_agent: TextColumn,
    pub referrer: TextColumn,
}

impl EventColumns {
    /// Append the event read at `offset`.
    pub fn push(&mut self, offset: u64, e: EventView<'_>) {
        self.offsets.push(offset);
        self.ts_ms.push(e.ts_ms);
        self.status.push(e.status);
        self.bytes.push(e.bytes);
        self.latency_ms.push(e.latency_ms);
        self.host.push(Some(e.host));
        self.method.push(Some(e.method));
        self.path.push(Some(e.path));
        self.client_ip.push(e.client_ip);
        self.user_agent.push(e.user_agent);
        self.referrer.push(e.referrer);
    }

    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Row `i`'s fields, borrowed.
    pub fn view(&self, i: usize) -> EventView<'_> {
        EventView {
            ts_ms: self.ts_ms[i],
            host: self.host.get(i).unwrap_or_default(),
            method: self.method.get(i).unwrap_or_default(),
            path: self.path.get(i).unwrap_or_default(),
            status: self.status[i],
            bytes: self.bytes[i],
            latency_ms: self.latency_ms[i],
            client_ip: self.client_ip.get(i),
            user_agent: self.user_agent.get(i),
            referrer: self.referrer.get(i),
        }
    }

    /// Rows in order, borrowed.
    pub fn views(&self) -> impl Iterator<Item = EventView<'_>> {
        (0..self.len()).map(|i| self.view(i))
    }

    /// Row `i` as an owned event (for tests and the rare reader that needs one).
    pub fn event(&self, i: usize) -> Event {
        self.view(i).into()
    }

    /// Empty, with room for a few more rows and bytes than `self` holds: the next batch of a
    /// stream of similar ones grows without reallocating.
    pub fn empty_like(&self) -> EventColumns {
        // An eighth more: a batch a little larger than the last must not double a buffer.
        let room = |n: usize| n + n / 8;
        let text = |c: &TextColumn| TextColumn {
            text: String::with_capacity(room(c.text.len())),
            ends: Vec::with_capacity(room(c.ends.len())),
            present: Vec::with_capacity(room(c.present.len())),
        };
        let n = room(self.len());
        EventColumns {
            offsets: Vec::with_capacity(n),
            ts_ms: Vec::with_capacity(n),
            status: Vec::with_capacity(n),
            bytes: Vec::with_capacity(n),
            latency_ms: Vec::with_capacity(n),
            host: text(&self.host),
            method: text(&self.method),
            path: text(&self.path),
            client_ip: text(&self.client_ip),
            user_agent: text(&self.user_agent),
            referrer: text(&self.referrer),
        }
    }
}

impl<'a> FromIterator<(u64, &'a Event)> for EventColumns {
    fn from_iter<I: IntoIterator<Item = (u64, &'a Event)>>(rows: I) -> EventColumns {
        let mut c = EventColumns::default();
        for (offset, e) in rows {
            c.push(offset, e.view());
        }
        c
    }
}

/// One string column: the values end to end in one buffer, each absent or present.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TextColumn {
    text: String,
    /// Where each value ends in `text` (it starts where the previous one ends).
    ends: Vec<usize>,
    present: Vec<bool>,
}

impl TextColumn {
    pub fn push(&mut self, value: Option<&str>) {
        self.text.push_str(value.unwrap_or_default());
        self.ends.push(self.text.len());
        self.present.push(value.is_some());
    }

    pub fn get(&self, i: usize) -> Option<&str> {
        if !*self.present.get(i)? {
            return None;
        }
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.text.get(start..self.ends[i])
    }

    /// Bytes of all values together (a builder's capacity).
    pub fn text_len(&self) -> usize {
        self.text.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_give_back_the_events_pushed() {
        let a = Event {
            ts_ms: 5,
            host: "a.example".into(),
            method: "GET".into(),
            path: "/x".into(),
            status: 200,
            bytes: 10,
            latency_ms: Some(1.5),
            client_ip: Some("10.0.0.1".into()),
            user_agent: None,
            referrer: Some(String::new()),
        };
        let b = Event {
            host: "b.example".into(),
            path: "/é".into(),
            latency_ms: None,
            client_ip: None,
            user_agent: Some("curl/8".into()),
            referrer: None,
            ..a.clone()
        };
        let mut c = EventColumns::default();
        c.push(7, a.view());
        c.push(9, b.view());
        assert_eq!((c.len(), c.offsets.clone()), (2, vec![7, 9]));
        assert_eq!((c.event(0), c.event(1)), (a, b));
        assert_eq!(c.referrer.get(0), Some(""), "empty, not absent");
        assert_eq!(c.user_agent.get(0), None);
        assert_eq!(c.path.get(2), None, "past the end");
    }
}
