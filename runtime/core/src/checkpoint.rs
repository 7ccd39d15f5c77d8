//! What a checkpoint holds and its versioned wire format: the open-window state, the watermark,
//! the next source offset and the outputs not yet confirmed in the lake. (The redb store that
//! keeps them is `wtm_storage::checkpoints`.)
//!
//! Committing outputs with the state is what makes the lake exact: a publication is durable
//! before its files are written, is re-published after a crash (overwriting the same names), and
//! its offset range never changes, so no file can ever overlap another.

use crate::agg::{ClosedWindow, WindowAgg, WindowKey, WindowKeyRef};
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
/// later delta replaces the one before, a closed one goes), decoded.
pub fn open_windows(open: &[Vec<u8>], deltas: &[OpenDelta]) -> Result<OpenWindows, WireError> {
    restored_windows(open.to_vec(), deltas.to_vec())?
        .into_iter()
        .map(|(key, agg)| Ok((key, agg.into_decoded()?)))
        .collect()
}

/// Open windows as a restore hands them to the shards: each aggregate still encoded.
pub type RestoredWindows = Vec<(WindowKey, OpenAgg)>;

/// The windows [`open_windows`] picks, each aggregate left in the checkpoint's bytes: only the
/// keys are decoded, the aggregates are stepped over. A restore of 30,000–40,000 windows per
/// partition spent most of its time decoding them, and most stay untouched until they close;
/// a shard decodes one when an event, a cut or a query needs it ([`OpenAgg::get_mut`]).
///
/// Read newest first: a window that a later delta replaced or closed is stepped over, not kept.
pub fn restored_windows(
    open: Vec<Vec<u8>>,
    deltas: Vec<OpenDelta>,
) -> Result<RestoredWindows, WireError> {
    let mut windows = RestoredWindows::new();
    let mut seen = ahash::AHashSet::new();
    for delta in deltas.into_iter().rev() {
        let from = windows.len();
        for blob in delta.changed {
            scan_windows(&Arc::new(blob), &seen, &mut windows)?;
        }
        seen.extend(windows[from..].iter().map(|(k, _)| k.clone()));
        seen.extend(delta.closed);
    }
    for blob in open {
        scan_windows(&Arc::new(blob), &seen, &mut windows)?;
    }
    Ok(windows)
}

/// The windows of an encoded [`OpenWindows`] into `out`, without the windows keyed in `skip`:
/// keys decoded, aggregates kept as ranges of `blob`.
fn scan_windows(
    blob: &Arc<Vec<u8>>,
    skip: &ahash::AHashSet<WindowKey>,
    out: &mut RestoredWindows,
) -> Result<(), WireError> {
    let error = |reason: String| WireError::Decode {
        key: "open windows".into(),
        reason,
    };
    let mut rd: &[u8] = match blob.split_first() {
        Some((&WIRE_VERSION, rest)) => rest,
        Some((&found, _)) => {
            return Err(WireError::Version {
                key: "open windows".into(),
                found,
            })
        }
        None => return Err(error("empty value".into())),
    };
    let count = rmp::decode::read_array_len(&mut rd).map_err(|e| error(e.to_string()))?;
    for _ in 0..count {
        let pair = rmp::decode::read_array_len(&mut rd).map_err(|e| error(e.to_string()))?;
        if pair != 2 {
            return Err(error(format!(
                "a window of {pair} parts, not its key and aggregate"
            )));
        }
        // A fresh deserializer for each value: it reads from `rd` exactly the value's bytes, so
        // where `rd` stands afterwards is where the value ended.
        let key = WindowKey::deserialize(&mut rmp_serde::Deserializer::new(&mut rd))
            .map_err(|e| error(e.to_string()))?;
        let start = blob.len() - rd.len();
        let end = value_end(blob, start)
            .ok_or_else(|| error("an aggregate cut short or malformed".into()))?;
        rd = &blob[end..];
        if !skip.contains(&key) {
            let agg = EncodedAgg {
                blob: blob.clone(),
                range: start..end,
            };
            out.push((key, OpenAgg::Encoded(agg)));
        }
    }
    Ok(())
}

/// Where the MessagePack value that starts at `at` ends, stepped over without building anything
/// (`None` if `b` ends first or holds the unused marker).
///
/// Written here because neither rmp nor rmp-serde can skip a value in the bytes: serde's
/// `IgnoredAny` visits every element, and a window's distinct-count sketch is a sequence of
/// single bytes (2.2–3.3 µs per window by `examples/window_codec.rs`, a third of decoding it).
/// At most one step per byte of `b`, so hostile counts cannot make it loop longer.
fn value_end(b: &[u8], mut at: usize) -> Option<usize> {
    let be = |at: usize, n: usize| -> Option<usize> {
        let bytes = b.get(at..at.checked_add(n)?)?;
        Some(bytes.iter().fold(0usize, |v, &x| v << 8 | x as usize))
    };
    // Values still to step over: an array or a map adds its elements.
    let mut left: usize = 1;
    while left > 0 {
        left -= 1;
        let marker = *b.get(at)?;
        at += 1;
        // (bytes of payload after the marker, values it contains)
        let (skip, inner) = match marker {
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => (0, 0),
            0x80..=0x8f => (0, 2 * (marker & 0x0f) as usize),
            0x90..=0x9f => (0, (marker & 0x0f) as usize),
            0xa0..=0xbf => ((marker & 0x1f) as usize, 0),
            0xc1 => return None,
            // bin 8/16/32, str 8/16/32: a length, then that many bytes
            0xc4 | 0xd9 => (1 + be(at, 1)?, 0),
            0xc5 | 0xda => (2 + be(at, 2)?, 0),
            0xc6 | 0xdb => (4 + be(at, 4)?, 0),
            // ext 8/16/32: a length, a type byte, the data
            0xc7 => (2 + be(at, 1)?, 0),
            0xc8 => (3 + be(at, 2)?, 0),
            0xc9 => (5 + be(at, 4)?, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xca | 0xce | 0xd2 => (4, 0),
            0xcb | 0xcf | 0xd3 => (8, 0),
            // fixext 1/2/4/8/16: a type byte and the data
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (2, be(at, 2)?),
            0xdd => (4, be(at, 4)?),
            0xde => (2, 2 * be(at, 2)?),
            0xdf => (4, be(at, 4)?.checked_mul(2)?),
        };
        at = at.checked_add(skip)?;
        if at > b.len() {
            return None;
        }
        left = left.checked_add(inner)?;
    }
    Some(at)
}

/// One window's aggregate as a checkpoint holds it: a range of an encoded [`OpenWindows`] blob,
/// shared with the blob's other windows (so a restore copies nothing per window).
#[derive(Clone)]
pub struct EncodedAgg {
    blob: Arc<Vec<u8>>,
    range: std::ops::Range<usize>,
}

impl EncodedAgg {
    pub fn bytes(&self) -> &[u8] {
        &self.blob[self.range.clone()]
    }

    pub fn decode(&self) -> Result<WindowAgg, WireError> {
        rmp_serde::from_slice(self.bytes()).map_err(|e| WireError::Decode {
            key: "open window".into(),
            reason: e.to_string(),
        })
    }
}

impl std::fmt::Debug for EncodedAgg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncodedAgg({} bytes)", self.range.len())
    }
}

/// An open window's aggregate: built, or (restored and not needed yet) still the checkpoint's
/// bytes of it.
#[derive(Debug, Clone)]
// Not boxed: nearly every window is built, and a box would be one more pointer to follow for
// every event added (an encoded window takes a built one's room, as it did decoded).
#[allow(clippy::large_enum_variant)]
pub enum OpenAgg {
    Built(WindowAgg),
    Encoded(EncodedAgg),
}

impl Default for OpenAgg {
    fn default() -> Self {
        OpenAgg::Built(WindowAgg::default())
    }
}

impl OpenAgg {
    /// The aggregate, decoded first if it is still encoded (once: it stays built).
    pub fn get_mut(&mut self) -> Result<&mut WindowAgg, WireError> {
        if let OpenAgg::Encoded(e) = self {
            *self = OpenAgg::Built(e.decode()?);
        }
        match self {
            OpenAgg::Built(agg) => Ok(agg),
            OpenAgg::Encoded(_) => unreachable!("decoded just above"),
        }
    }

    pub fn into_decoded(self) -> Result<WindowAgg, WireError> {
        match self {
            OpenAgg::Built(agg) => Ok(agg),
            OpenAgg::Encoded(e) => e.decode(),
        }
    }
}

/// Encode open windows as an [`OpenWindows`] blob into `out` (cleared first): the same bytes as
/// [`encode_into`] of the built windows, but a window still encoded is copied as it is, not
/// decoded and encoded again (the first checkpoint after a restore holds every open window).
pub fn encode_open<'a>(
    out: &mut Vec<u8>,
    windows: &[(WindowKeyRef<'a>, &'a OpenAgg)],
) -> Result<(), WireError> {
    let error = |e: &dyn std::fmt::Display| WireError::Encode(e.to_string());
    out.clear();
    out.push(WIRE_VERSION);
    let len = u32::try_from(windows.len()).map_err(|e| error(&e))?;
    rmp::encode::write_array_len(out, len).map_err(|e| error(&e))?;
    for (key, agg) in windows {
        rmp::encode::write_array_len(out, 2).map_err(|e| error(&e))?;
        rmp_serde::encode::write(out, key).map_err(|e| error(&e))?;
        match agg {
            OpenAgg::Built(agg) => rmp_serde::encode::write(out, agg).map_err(|e| error(&e))?,
            OpenAgg::Encoded(e) => out.extend_from_slice(e.bytes()),
        }
    }
    Ok(())
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
    fn restored_windows_step_over_aggregates_and_encode_back_byte_for_byte() {
        let windows: OpenWindows = (0..20)
            .map(|i| {
                let mut agg = WindowAgg::default();
                for j in 0..i * 3 {
                    agg.add(&crate::event::Event {
                        ts_ms: 60_000 + j,
                        host: "h".into(),
                        method: "GET".into(),
                        path: format!("/p{}", j % 5),
                        status: 200 + (j % 3) as u16 * 100,
                        bytes: 10 * j as u64,
                        latency_ms: Some(j as f64),
                        client_ip: Some(format!("192.0.2.{j}")),
                        user_agent: Some(format!("agent/{}", j % 4)),
                        referrer: (j % 2 == 0).then(|| "https://example.org/".into()),
                    });
                }
                let key = WindowKey {
                    host: format!("site-{i}.example"),
                    start_ms: 60_000,
                    partition: 2,
                };
                (key, agg)
            })
            .collect();
        let blob = encode(&windows).unwrap();
        let restored = restored_windows(vec![blob.clone()], Vec::new()).unwrap();
        let keys: Vec<&WindowKey> = restored.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, windows.iter().map(|(k, _)| k).collect::<Vec<_>>());
        assert!(restored
            .iter()
            .all(|(_, a)| matches!(a, OpenAgg::Encoded(_))));
        let encoded = |w: &[(WindowKey, OpenAgg)]| {
            let refs: Vec<_> = w.iter().map(|(k, a)| (k.borrowed(), a)).collect();
            let mut out = vec![9; 3];
            encode_open(&mut out, &refs).unwrap();
            out
        };
        // Copied as they are, and built again: the bytes `encode` gave.
        assert_eq!(encoded(&restored), blob);
        let built: Vec<(WindowKey, OpenAgg)> = windows
            .iter()
            .map(|(k, a)| (k.clone(), OpenAgg::Built(a.clone())))
            .collect();
        assert_eq!(encoded(&built), blob);
        // Decoded when needed, each window is the one encoded (the distinct-count sketch's
        // buffer folded in on both sides: it is a hash set, in a per-process order).
        let settled = |mut a: WindowAgg| {
            a.clients.settle();
            encode(&a).unwrap()
        };
        for ((_, mut agg), (_, want)) in restored.into_iter().zip(&windows) {
            agg.get_mut().unwrap();
            assert!(matches!(agg, OpenAgg::Built(_)));
            let agg = agg.into_decoded().unwrap();
            assert_eq!(settled(agg), settled(want.clone()));
        }
        // Bad framing is an error, never a panic.
        let two = encode(&vec![(windows[0].0.clone(), 1u8, 2u8)]).unwrap();
        assert!(restored_windows(vec![two], Vec::new()).is_err());
        let cut_short = blob[..blob.len() - 1].to_vec();
        assert!(restored_windows(vec![cut_short], Vec::new()).is_err());
    }

    #[test]
    fn value_end_steps_over_every_kind_of_messagepack_value() {
        use rmp::encode as w;
        let mut values: Vec<Vec<u8>> = Vec::new();
        let mut one = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut v = Vec::new();
            f(&mut v);
            values.push(v);
        };
        for n in [0, 127, 128, 255, 256, 65_535, 65_536, 1 << 32, u64::MAX] {
            one(&|v| w::write_uint(v, n).map(drop).unwrap());
        }
        for n in [
            -1,
            -32,
            -33,
            -128,
            -129,
            -32_768,
            -32_769,
            i64::from(i32::MIN) - 1,
        ] {
            one(&|v| w::write_sint(v, n).map(drop).unwrap());
        }
        one(&|v| w::write_nil(v).unwrap());
        one(&|v| w::write_bool(v, true).unwrap());
        one(&|v| w::write_f32(v, 1.5).unwrap());
        one(&|v| w::write_f64(v, -2.5).unwrap());
        for len in [0, 31, 32, 255, 256, 65_535, 65_536] {
            let text = "x".repeat(len);
            one(&|v| w::write_str(v, &text).unwrap());
            one(&|v| w::write_bin(v, text.as_bytes()).unwrap());
        }
        for len in [1, 2, 4, 8, 16, 3, 300, 70_000] {
            one(&|v| {
                w::write_ext_meta(v, len, 7).unwrap();
                v.extend(std::iter::repeat_n(0xc1, len as usize));
            });
        }
        for len in [0, 15, 16, 65_536] {
            one(&|v| {
                w::write_array_len(v, len).unwrap();
                (0..len).for_each(|i| drop(w::write_uint(v, u64::from(i))));
            });
            one(&|v| {
                w::write_map_len(v, len).unwrap();
                for i in 0..len {
                    w::write_str(v, "k").unwrap();
                    w::write_array_len(v, 2).unwrap();
                    w::write_sint(v, -i64::from(i)).unwrap();
                    w::write_bin(v, &[1, 2]).unwrap();
                }
            });
        }
        for v in &values {
            assert_eq!(
                value_end(v, 0),
                Some(v.len()),
                "{:x?}",
                &v[..v.len().min(8)]
            );
            // Cut short anywhere, it is an error; after other bytes, it ends where it ends.
            for cut in [0, 1, v.len() / 2, v.len() - 1] {
                assert_eq!(value_end(&v[..cut.min(v.len() - 1)], 0), None);
            }
            let mut after = vec![0x93; 3];
            after.extend_from_slice(v);
            after.push(0xc0);
            assert_eq!(value_end(&after, 3), Some(3 + v.len()));
        }
        assert_eq!(value_end(&[0xc1], 0), None);
        // A count far beyond the bytes ends at the bytes' end.
        assert_eq!(value_end(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x90], 0), None);
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
