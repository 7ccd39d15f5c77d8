//! What a checkpoint holds and its versioned wire format: the open-window state, the watermark,
//! the next source offset and the outputs not yet confirmed in the lake. (The redb store that
//! keeps them is `wtm_storage::checkpoints`.)
//!
//! Committing outputs with the state is what makes the lake exact: a publication is durable
//! before its files are written, is re-published after a crash (overwriting the same names), and
//! its offset range never changes, so no file can ever overlap another.

use crate::agg::{ClosedWindow, WindowAgg, WindowKey};
use crate::event::Event;
use crate::parse::InvalidReason;
use crate::records::EventColumns;
use crate::window::WatermarkState;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// First byte of every encoded checkpoint; bump on an incompatible change.
/// (2: checkpoints carry `owner_epoch`.)
pub const WIRE_VERSION: u8 = 2;

/// Bytes that are not a checkpoint this build can read (or a value that cannot be encoded).
/// Never retryable: the same bytes fail the same way.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("checkpoint {key}: unsupported wire version {found} (expected {WIRE_VERSION})")]
    Version { key: String, found: u8 },
    #[error("checkpoint {key}: cannot decode: {reason}")]
    Decode { key: String, reason: String },
    #[error("checkpoint: cannot encode: {0}")]
    Encode(String),
}

/// Encode with the leading version byte.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    encode_into(&mut out, v)?;
    Ok(out)
}

/// [`encode`] into `out` (cleared first): a writer of many values reuses one buffer, instead of
/// growing a new one from nothing for each (a closed window's ~2.5 KB moved about ten times).
pub fn encode_into<T: Serialize>(out: &mut Vec<u8>, v: &T) -> Result<(), WireError> {
    out.clear();
    out.push(WIRE_VERSION);
    rmp_serde::encode::write(out, v).map_err(|e| WireError::Encode(e.to_string()))
}

/// Decode bytes written by [`encode`]; bad bytes are an error, never a panic.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, WireError> {
    match bytes.split_first() {
        Some((&WIRE_VERSION, rest)) => rmp_serde::from_slice(rest).map_err(|e| WireError::Decode {
            key: key.to_owned(),
            reason: e.to_string(),
        }),
        Some((&found, _)) => Err(WireError::Version {
            key: key.to_owned(),
            found,
        }),
        None => Err(WireError::Decode {
            key: key.to_owned(),
            reason: "empty value".into(),
        }),
    }
}

/// A record that failed to parse, kept with its raw bytes for the dead-letter output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvalidRecord {
    pub offset: u64,
    pub reason: InvalidReason,
    pub detail: String,
    pub raw: Vec<u8>,
}

/// An event that arrived after its window closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LateEvent {
    pub offset: u64,
    pub watermark_ms: i64,
    pub event: Event,
}

/// Everything one partition emitted over the offsets `[from_offset, to_offset)`: the windows
/// that closed, and the late, invalid and raw records of that range.
///
/// In a checkpoint only the closed windows are stored; the records are not (they would make
/// every checkpoint as large as the traffic). A restore re-reads the range from the source,
/// starting under `records_watermark`, and derives the same records again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publication {
    pub partition: u32,
    pub from_offset: u64,
    pub to_offset: u64,
    /// The partition's watermark at `from_offset`.
    pub records_watermark: WatermarkState,
    /// Wall-clock time the publication was cut; names the hour of the dead-letter output.
    pub created_ms: i64,
    pub closed: Vec<ClosedWindow>,
    #[serde(skip)]
    pub late: Vec<LateEvent>,
    #[serde(skip)]
    pub invalid: Vec<InvalidRecord>,
    #[serde(skip)]
    pub raw: EventColumns,
    /// Numbers the owner's publications, from 1, rising; 0 in checkpoints of earlier builds.
    /// A local checkpoint stores a numbered publication's windows once, under this number,
    /// instead of in every checkpoint until the lake has them (see `wtm_storage::checkpoints`).
    #[serde(default)]
    pub seq: u64,
}

impl Publication {
    /// The same publication without its windows or records (what a local checkpoint's value
    /// holds of one whose windows are stored apart).
    pub fn without_windows(&self) -> Publication {
        Publication {
            partition: self.partition,
            from_offset: self.from_offset,
            to_offset: self.to_offset,
            records_watermark: self.records_watermark,
            created_ms: self.created_ms,
            closed: Vec::new(),
            late: Vec::new(),
            invalid: Vec::new(),
            raw: EventColumns::default(),
            seq: self.seq,
        }
    }

    /// Whether the publication covers records (which a restore must derive again).
    pub fn has_record_range(&self) -> bool {
        self.from_offset < self.to_offset
    }

    pub fn is_empty(&self) -> bool {
        self.closed.is_empty()
            && self.late.is_empty()
            && self.invalid.is_empty()
            && self.raw.is_empty()
    }
}

/// Open windows of one partition, as one shard holds them.
pub type OpenWindows = Vec<(WindowKey, WindowAgg)>;

/// What changed in a partition's open windows since its previous local checkpoint: the windows
/// that closed, and the ones added to (or opened) since, encoded. A local checkpoint between two
/// whole ones stores only this (see `wtm_storage::checkpoints`): at 100,000 sites, encoding and
/// writing every open window every second was about half of a live node's CPU, and in a second
/// only a fraction of the windows change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpenDelta {
    /// Windows closed since the previous checkpoint (their rows are in a publication now).
    pub closed: Vec<WindowKey>,
    /// Encoded [`OpenWindows`] blobs (one per shard) of the windows changed since.
    pub changed: Vec<Vec<u8>>,
}

/// The open windows of a checkpoint: its whole blobs, then each delta in order (a window in a
/// later delta replaces the one before, a closed one goes).
///
/// Read newest first, so that each window is decoded once: a window that a later delta replaced
/// or closed is skipped over in the bytes, not built (a restore spends most of its time decoding
/// windows).
pub fn open_windows(open: &[Vec<u8>], deltas: &[OpenDelta]) -> Result<OpenWindows, WireError> {
    let mut windows = OpenWindows::new();
    let mut seen = ahash::AHashSet::new();
    for delta in deltas.iter().rev() {
        let from = windows.len();
        for blob in &delta.changed {
            decode_skipping(blob, &seen, &mut windows)?;
        }
        seen.extend(windows[from..].iter().map(|(k, _)| k.clone()));
        seen.extend(delta.closed.iter().cloned());
    }
    for blob in open {
        decode_skipping(blob, &seen, &mut windows)?;
    }
    Ok(windows)
}

/// Decode an encoded [`OpenWindows`] into `out`, without the windows keyed in `skip`.
fn decode_skipping(
    bytes: &[u8],
    skip: &ahash::AHashSet<WindowKey>,
    out: &mut OpenWindows,
) -> Result<(), WireError> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, SeqAccess, Visitor};
    struct Windows<'a> {
        skip: &'a ahash::AHashSet<WindowKey>,
        out: &'a mut OpenWindows,
    }
    struct Entry<'a>(&'a ahash::AHashSet<WindowKey>);
    impl<'de> DeserializeSeed<'de> for Windows<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de> Visitor<'de> for Windows<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a sequence of open windows")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(entry) = seq.next_element_seed(Entry(self.skip))? {
                self.out.extend(entry);
            }
            Ok(())
        }
    }
    impl<'de> DeserializeSeed<'de> for Entry<'_> {
        type Value = Option<(WindowKey, WindowAgg)>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_tuple(2, self)
        }
    }
    impl<'de> Visitor<'de> for Entry<'_> {
        type Value = Option<(WindowKey, WindowAgg)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a window's key and aggregate")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let missing = || serde::de::Error::custom("a window without its key or aggregate");
            let key: WindowKey = seq.next_element()?.ok_or_else(missing)?;
            if self.0.contains(&key) {
                seq.next_element::<IgnoredAny>()?.ok_or_else(missing)?;
                return Ok(None);
            }
            let agg: WindowAgg = seq.next_element()?.ok_or_else(missing)?;
            Ok(Some((key, agg)))
        }
    }
    let error = |reason: String| WireError::Decode {
        key: "open windows".into(),
        reason,
    };
    match bytes.split_first() {
        Some((&WIRE_VERSION, rest)) => {
            let mut d = rmp_serde::Deserializer::from_read_ref(rest);
            Windows { skip, out }
                .deserialize(&mut d)
                .map_err(|e| error(e.to_string()))
        }
        Some((&found, _)) => Err(WireError::Version {
            key: "open windows".into(),
            found,
        }),
        None => Err(error("empty value".into())),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionCheckpoint {
    pub partition: u32,
    /// Raised each time an owner restores the partition. Between a node's local checkpoint and
    /// the shared snapshot, the higher epoch is the later owner's state (see
    /// [`PartitionCheckpoint::newest`]).
    pub owner_epoch: u64,
    pub next_offset: u64,
    pub watermark: WatermarkState,
    /// Open windows, one encoded [`OpenWindows`] blob per window shard that held any.
    pub open: Vec<Vec<u8>>,
    /// Publications committed here but not yet confirmed written to the lake.
    pub unpublished: Vec<Arc<Publication>>,
    /// First offset whose late, invalid and raw records are not yet in a publication. Those
    /// records are not stored here: a restore re-reads `[range_start, next_offset)` from the
    /// source and derives them again (parsing and lateness are pure functions of the records and
    /// the watermark), so a checkpoint stays small however long the flush interval.
    pub range_start: u64,
    /// The watermark at `range_start`, where that replay begins.
    pub range_start_watermark: WatermarkState,
    /// The source reported its end and every window has been closed.
    pub finished: bool,
    /// Running totals, so the overview survives restarts.
    pub totals: PartitionTotals,
    /// Changes to `open` since it was stored whole, oldest first: only a local store's
    /// checkpoint has them ([`open_windows`] applies them); never in a shared snapshot.
    #[serde(skip)]
    pub open_deltas: Vec<OpenDelta>,
}

impl PartitionCheckpoint {
    /// Where a restore from this checkpoint starts reading, with the watermark there: the first
    /// publication whose records must be derived again, else the start of the unflushed range.
    /// Everything before it is in the lake or in this checkpoint, so it is also the source
    /// offset that may be committed upstream.
    pub fn resume_at(&self) -> (u64, WatermarkState) {
        self.unpublished
            .iter()
            .find(|p| p.has_record_range())
            .map_or((self.range_start, self.range_start_watermark), |p| {
                (p.from_offset, p.records_watermark)
            })
    }

    /// Of a node's local checkpoint and the shared snapshot, the one to restore.
    ///
    /// The later owner wins (higher epoch), whatever the offsets: an owner publishes a snapshot
    /// before it writes anything to the lake, so a node coming back with an older local
    /// checkpoint must not restore it over what another node did since (their record files
    /// would have different ranges). In one epoch the local checkpoint is at least as new as the
    /// snapshot, so the larger offset wins.
    pub fn newest(
        local: Option<PartitionCheckpoint>,
        shared: Option<PartitionCheckpoint>,
    ) -> Option<PartitionCheckpoint> {
        match (local, shared) {
            (Some(l), Some(s)) => {
                if (s.owner_epoch, s.next_offset) > (l.owner_epoch, l.next_offset) {
                    Some(s)
                } else {
                    Some(l)
                }
            }
            (l, s) => l.or(s),
        }
    }
}

/// Counters of one partition since its first event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionTotals {
    pub events: u64,
    pub late: u64,
    pub invalid: std::collections::BTreeMap<InvalidReason, u64>,
    pub windows_closed: u64,
    /// What of it is in the lake: the sums of the publications written so far.
    #[serde(default)]
    pub published: PublishedTotals,
}

/// The sums of a partition's publications written to the lake: what a data-quality check expects
/// the lake's tables to hold for the partition (never more than the events counted in).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedTotals {
    /// Requests of the closed windows written (the `windows` table's `requests`).
    pub window_requests: u64,
    /// Rows of the `late` table.
    pub late: u64,
    /// Rows of the `invalid` table.
    pub invalid: u64,
    /// Rows of the `events` table (the raw archive, when on).
    pub raw: u64,
}

impl PublishedTotals {
    pub fn add(&mut self, p: &Publication) {
        self.window_requests += p.closed.iter().map(|w| w.agg.requests).sum::<u64>();
        self.late += p.late.len() as u64;
        self.invalid += p.invalid.len() as u64;
        self.raw += p.raw.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(epoch: u64, offset: u64) -> PartitionCheckpoint {
        PartitionCheckpoint {
            partition: 0,
            owner_epoch: epoch,
            next_offset: offset,
            watermark: WatermarkState::default(),
            open: vec![],
            unpublished: vec![],
            range_start: offset,
            range_start_watermark: WatermarkState::default(),
            finished: false,
            totals: PartitionTotals::default(),
            open_deltas: vec![],
        }
    }

    #[test]
    fn open_windows_encode_the_same_from_borrowed_keys_and_aggregates() {
        let mut agg = WindowAgg::default();
        for (i, path) in ["/", "/a", "/b"].into_iter().enumerate() {
            agg.add(&crate::event::Event {
                ts_ms: 61_000 + i as i64,
                host: "shop.example".into(),
                method: "GET".into(),
                path: path.into(),
                status: 200 + i as u16 * 100,
                bytes: 10,
                latency_ms: Some(5.0 * i as f64),
                client_ip: Some(format!("192.0.2.{i}")),
                user_agent: Some("curl/8".into()),
                referrer: None,
            });
        }
        let owned: OpenWindows = vec![(
            WindowKey {
                host: "shop.example".into(),
                start_ms: 60_000,
                partition: 4,
            },
            agg.clone(),
        )];
        let borrowed = vec![(
            crate::agg::WindowKeyRef {
                host: "shop.example",
                start_ms: 60_000,
                partition: 4,
            },
            &agg,
        )];
        let bytes = encode(&borrowed).unwrap();
        assert_eq!(bytes, encode(&owned).unwrap());
        let back: OpenWindows = decode("t", &bytes).unwrap();
        assert_eq!((back[0].0.partition, back[0].1.requests), (4, 3));
    }

    #[test]
    fn deltas_replace_add_and_close_windows_in_order() {
        let key = |host: &str, start_ms| WindowKey {
            host: host.into(),
            start_ms,
            partition: 1,
        };
        let agg = |requests| WindowAgg {
            requests,
            ..WindowAgg::default()
        };
        let blob = |windows: &[(WindowKey, u64)]| {
            let w: OpenWindows = windows.iter().map(|(k, r)| (k.clone(), agg(*r))).collect();
            encode(&w).unwrap()
        };
        let (a, b, c) = (key("a", 0), key("b", 0), key("c", 60_000));
        let base = vec![blob(&[(a.clone(), 1)]), blob(&[(b.clone(), 2)])];
        let deltas = [
            OpenDelta {
                closed: vec![a.clone()],
                changed: vec![blob(&[(b.clone(), 3)]), blob(&[(c.clone(), 1)])],
            },
            // A window closed and opened again under the same key is impossible (windows close
            // by the watermark); one changed twice takes the later state.
            OpenDelta {
                closed: vec![],
                changed: vec![blob(&[(c.clone(), 5)])],
            },
        ];
        let mut got: Vec<(WindowKey, u64)> = open_windows(&base, &deltas)
            .unwrap()
            .into_iter()
            .map(|(k, w)| (k, w.requests))
            .collect();
        got.sort();
        assert_eq!(got, [(b, 3), (c, 5)]);
        // Without deltas: the whole blobs as they are.
        assert_eq!(open_windows(&base, &[]).unwrap().len(), 2);
        assert!(open_windows(&[vec![WIRE_VERSION, 0xc1]], &[]).is_err());
    }

    #[test]
    fn a_publication_of_an_earlier_build_reads_unnumbered() {
        // The fields a publication had before `seq`, in their order.
        #[derive(Serialize)]
        struct Earlier {
            partition: u32,
            from_offset: u64,
            to_offset: u64,
            records_watermark: WatermarkState,
            created_ms: i64,
            closed: Vec<ClosedWindow>,
        }
        let bytes = encode(&Earlier {
            partition: 3,
            from_offset: 10,
            to_offset: 20,
            records_watermark: WatermarkState::default(),
            created_ms: 7,
            closed: vec![],
        })
        .unwrap();
        let p: Publication = decode("t", &bytes).unwrap();
        assert_eq!(
            (p.partition, p.to_offset, p.created_ms, p.seq),
            (3, 20, 7, 0)
        );
        let numbered = Publication { seq: 5, ..p };
        let again: Publication = decode("t", &encode(&numbered).unwrap()).unwrap();
        assert_eq!(again.seq, 5);
    }

    #[test]
    fn wire_round_trip_and_bad_bytes() {
        let agg = WindowAgg {
            requests: 9,
            ..Default::default()
        };
        let open = encode(&vec![(
            WindowKey {
                host: "h".into(),
                start_ms: 60_000,
                partition: 3,
            },
            agg,
        )])
        .unwrap();
        let mut c = cp(1, 42);
        c.open = vec![open];
        let back: PartitionCheckpoint = decode("k", &encode(&c).unwrap()).unwrap();
        assert_eq!(back.next_offset, 42);
        let windows: OpenWindows = decode("x", &back.open[0]).unwrap();
        assert_eq!(windows[0].1.requests, 9);
        assert!(matches!(
            decode::<PartitionCheckpoint>("k", &[9, 1, 2]),
            Err(WireError::Version { found: 9, .. })
        ));
        assert!(matches!(
            decode::<PartitionCheckpoint>("k", &[WIRE_VERSION, 0xc1]),
            Err(WireError::Decode { .. })
        ));
        assert!(decode::<PartitionCheckpoint>("k", &[]).is_err());
    }

    #[test]
    fn newest_prefers_the_later_owner() {
        let pick = |l: Option<(u64, u64)>, s: Option<(u64, u64)>| {
            PartitionCheckpoint::newest(l.map(|(e, o)| cp(e, o)), s.map(|(e, o)| cp(e, o)))
                .map(|c| (c.owner_epoch, c.next_offset))
        };
        // Another node owned it since: its snapshot wins even at a lower offset.
        assert_eq!(pick(Some((1, 1500)), Some((2, 1450))), Some((2, 1450)));
        // Same owner: the local checkpoint is newer than its last snapshot.
        assert_eq!(pick(Some((3, 900)), Some((3, 800))), Some((3, 900)));
        assert_eq!(pick(None, Some((1, 5))), Some((1, 5)));
        assert_eq!(pick(Some((1, 5)), None), Some((1, 5)));
        assert_eq!(pick(None, None), None);
    }
}
