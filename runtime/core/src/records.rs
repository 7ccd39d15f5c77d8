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

    /// Empty, with every text column [`TextColumn::coded`]: for rows that wait in memory (the
    /// raw archive's), not for batches that are read once.
    pub fn coded() -> EventColumns {
        EventColumns {
            host: TextColumn::coded(),
            method: TextColumn::coded(),
            path: TextColumn::coded(),
            client_ip: TextColumn::coded(),
            user_agent: TextColumn::coded(),
            referrer: TextColumn::coded(),
            ..EventColumns::default()
        }
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
            values: Values {
                text: String::with_capacity(room(c.values.text.len())),
                ends: Vec::with_capacity(room(c.values.ends.len())),
            },
            present: Vec::with_capacity(room(c.present.len())),
            coded: None,
            value_bytes: 0,
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

/// One string column: each value absent or present, the values end to end in one buffer — or,
/// for a column made [`TextColumn::coded`], each distinct value once and a 4-byte code per row.
///
/// Why codes: the raw archive keeps every record in memory until the lake has its file (up to
/// `lake.max_unwritten_records` per partition), and most of a record's bytes are values that
/// repeat from row to row (the site, the method, the user agent, the referrer): plain columns
/// held ~400 bytes per record, a third of a 20,000-site backfill's peak. A coded column whose
/// values turn out mostly distinct (client addresses, hostile input) falls back to plain, so it
/// never costs much more than plain.
#[derive(Debug, Default, Clone)]
pub struct TextColumn {
    /// Plain: every value. Coded: the distinct values, in order of first sight.
    values: Values,
    present: Vec<bool>,
    coded: Option<Codes>,
    /// Bytes of all values together (what a plain copy would hold).
    value_bytes: usize,
}

#[derive(Debug, Default, Clone)]
struct Values {
    text: String,
    /// Where each value ends in `text` (it starts where the previous one ends).
    ends: Vec<usize>,
}

impl Values {
    fn push(&mut self, value: &str) {
        self.text.push_str(value);
        self.ends.push(self.text.len());
    }

    fn get(&self, i: usize) -> Option<&str> {
        let start = if i == 0 { 0 } else { *self.ends.get(i - 1)? };
        self.text.get(start..*self.ends.get(i)?)
    }
}

#[derive(Debug, Clone)]
struct Codes {
    /// Each row's index in `values`.
    rows: Vec<u32>,
    /// The distinct values' indexes, by the values' hashes.
    index: hashbrown::HashTable<u32>,
    hasher: ahash::RandomState,
}

/// A coded column with at least this many rows, more than half of them distinct, turns plain.
const CODED_TRIAL_ROWS: usize = 4096;

impl TextColumn {
    /// An empty column that codes repeated values (see the type's comment).
    pub fn coded() -> TextColumn {
        TextColumn {
            coded: Some(Codes {
                rows: Vec::new(),
                index: hashbrown::HashTable::new(),
                hasher: ahash::RandomState::new(),
            }),
            ..TextColumn::default()
        }
    }

    pub fn push(&mut self, value: Option<&str>) {
        let v = value.unwrap_or_default();
        self.present.push(value.is_some());
        self.value_bytes += v.len();
        let Some(codes) = &mut self.coded else {
            self.values.push(v);
            return;
        };
        let hash = codes.hasher.hash_one(v);
        let values = &mut self.values;
        let code = match codes
            .index
            .find(hash, |&c| values.get(c as usize) == Some(v))
        {
            Some(&c) => c,
            None => {
                let c = values.ends.len() as u32;
                values.push(v);
                let hasher = &codes.hasher;
                codes.index.insert_unique(hash, c, |&c| {
                    hasher.hash_one(values.get(c as usize).unwrap_or_default())
                });
                c
            }
        };
        codes.rows.push(code);
        let (rows, distinct) = (codes.rows.len(), values.ends.len());
        if rows >= CODED_TRIAL_ROWS && distinct * 2 > rows {
            self.make_plain();
        }
    }

    /// Every value written out in row order; no more codes.
    fn make_plain(&mut self) {
        let Some(codes) = self.coded.take() else {
            return;
        };
        let mut plain = Values {
            text: String::with_capacity(self.value_bytes),
            ends: Vec::with_capacity(codes.rows.capacity()),
        };
        for &c in &codes.rows {
            plain.push(self.values.get(c as usize).unwrap_or_default());
        }
        self.values = plain;
    }

    pub fn get(&self, i: usize) -> Option<&str> {
        if !*self.present.get(i)? {
            return None;
        }
        match &self.coded {
            None => self.values.get(i),
            Some(codes) => self.values.get(*codes.rows.get(i)? as usize),
        }
    }

    pub fn len(&self) -> usize {
        self.present.len()
    }

    pub fn is_empty(&self) -> bool {
        self.present.is_empty()
    }

    /// Bytes of all values together (a builder's capacity).
    pub fn text_len(&self) -> usize {
        self.value_bytes
    }

    /// Whether repeated values are stored once (false once a coded column fell back to plain).
    pub fn is_coded(&self) -> bool {
        self.coded.is_some()
    }
}

/// Equal when they hold the same values in the same rows, however each stores them.
impl PartialEq for TextColumn {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && (0..self.len()).all(|i| self.get(i) == other.get(i))
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

    use proptest::prelude::*;

    proptest! {
        /// A coded column gives back exactly what a plain one does, whether its values repeat
        /// (it keeps codes) or not (it falls back to plain part way).
        #[test]
        fn coded_columns_give_back_what_plain_ones_do(
            values in proptest::collection::vec(
                proptest::option::of(prop_oneof![
                    (0u8..6).prop_map(|v| format!("agent-{v}")),
                    any::<String>(),
                    Just(String::new()),
                ]),
                0..300,
            ),
            repeat in 1usize..40,
        ) {
            let (mut plain, mut coded) = (TextColumn::default(), TextColumn::coded());
            for v in values.iter().cycle().take(values.len() * repeat) {
                plain.push(v.as_deref());
                coded.push(v.as_deref());
            }
            prop_assert_eq!(coded.len(), plain.len());
            prop_assert_eq!(coded.text_len(), plain.text_len());
            for i in 0..=plain.len() {
                prop_assert_eq!(coded.get(i), plain.get(i), "row {}", i);
            }
            prop_assert_eq!(&coded, &plain);
        }
    }

    #[test]
    fn coded_columns_keep_repeats_once_and_turn_plain_when_values_are_distinct() {
        let mut agents = TextColumn::coded();
        let (mut addresses, mut plain) = (TextColumn::coded(), TextColumn::default());
        for i in 0..10_000 {
            agents.push(Some(["curl/8", "Mozilla/5.0 (X11)"][i % 2]));
            // Repeats at first (coded), then distinct (it turns plain part way), some absent.
            let a = format!("10.0.{}.{}", i / 256, (i % 256).min(i / 8));
            let a = (i % 7 != 3).then_some(a.as_str());
            addresses.push(a);
            plain.push(a);
        }
        assert_eq!(addresses, plain);
        assert_eq!(addresses.text_len(), plain.text_len());
        assert!(agents.is_coded());
        assert_eq!(agents.values.text.len(), "curl/8Mozilla/5.0 (X11)".len());
        assert_eq!(agents.get(9_999), Some("Mozilla/5.0 (X11)"));
        assert!(!addresses.is_coded(), "mostly distinct: plain");
        assert_eq!(addresses.get(9_998), Some("10.0.39.14"));
        assert_eq!(addresses.get(9_999), None);
        assert_eq!(addresses.len(), 10_000);
    }
}
