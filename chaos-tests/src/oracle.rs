//! The oracle: what the lake and the nodes' APIs hold, against the ground truth. Nothing lost,
//! nothing doubled, by (host, window) and by (partition, offset).

use crate::truth::Truth;
use anyhow::{Context, Result};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type, TimestampMillisecondType};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use wtm_storage::delta::DeltaLog;
use wtm_storage::Store;

/// Rows of the lake the oracle needs.
#[derive(Debug, Default)]
pub struct LakeRows {
    /// (host, window start, partition) → requests, and how many rows had that key.
    pub windows: BTreeMap<(String, i64, u32), (u64, u32)>,
    /// (partition, offset, host, event time) of late events.
    pub late: Vec<(u32, u64, String, i64)>,
    /// (partition, offset, host, event time) of the raw archive.
    pub events: Vec<(u32, u64, String, i64)>,
    /// (partition, offset) of dead letters.
    pub invalid: Vec<(u32, u64)>,
}

/// The files a table holds now, as its Delta log says: what every reader of the lake sees (a
/// file written but never committed is not in the result, so the oracle counts it lost).
fn files(store: &Store, table: &str) -> Result<Vec<String>> {
    let log = DeltaLog::new(store.clone(), table);
    let snap = log.snapshot()?;
    Ok(snap.files.keys().map(|p| log.file_key(p)).collect())
}

fn batches(store: &Store, key: &str) -> Result<Vec<RecordBatch>> {
    let bytes = store.get(key)?.with_context(|| format!("{key} vanished"))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))?.build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

fn col<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a dyn Array> {
    Ok(b.column_by_name(name)
        .with_context(|| format!("no column {name}"))?
        .as_ref())
}

/// (partition, offset, host, ts) of every row of an event table.
fn event_rows(store: &Store, table: &str) -> Result<Vec<(u32, u64, String, i64)>> {
    let mut out = Vec::new();
    for key in files(store, table)? {
        for b in batches(store, &key)? {
            let p = col(&b, "partition")?.as_primitive::<Int32Type>();
            let o = col(&b, "offset")?.as_primitive::<Int64Type>();
            let h = col(&b, "host")?.as_string::<i32>();
            let ts = col(&b, "ts")?.as_primitive::<TimestampMillisecondType>();
            for i in 0..b.num_rows() {
                out.push((
                    p.value(i) as u32,
                    o.value(i) as u64,
                    h.value(i).to_owned(),
                    ts.value(i),
                ));
            }
        }
    }
    Ok(out)
}

impl LakeRows {
    pub fn read(store: &Store) -> Result<LakeRows> {
        let mut rows = LakeRows::default();
        for key in files(store, "windows")? {
            for b in batches(store, &key)? {
                let h = col(&b, "host")?.as_string::<i32>();
                let w = col(&b, "window_start")?.as_primitive::<TimestampMillisecondType>();
                let p = col(&b, "partition")?.as_primitive::<Int32Type>();
                let r = col(&b, "requests")?.as_primitive::<Int64Type>();
                for i in 0..b.num_rows() {
                    let e = rows
                        .windows
                        .entry((h.value(i).to_owned(), w.value(i), p.value(i) as u32))
                        .or_default();
                    e.0 += r.value(i) as u64;
                    e.1 += 1;
                }
            }
        }
        rows.late = event_rows(store, "late")?;
        rows.events = event_rows(store, "events")?;
        for key in files(store, "invalid")? {
            for b in batches(store, &key)? {
                let p = col(&b, "partition")?.as_primitive::<Int32Type>();
                let o = col(&b, "offset")?.as_primitive::<Int64Type>();
                for i in 0..b.num_rows() {
                    rows.invalid.push((p.value(i) as u32, o.value(i) as u64));
                }
            }
        }
        Ok(rows)
    }

    /// Final windows per (host, window), summed over partitions.
    pub fn window_totals(&self) -> BTreeMap<(String, i64), u64> {
        let mut out: BTreeMap<(String, i64), u64> = BTreeMap::new();
        for ((h, w, _), (n, _)) in &self.windows {
            *out.entry((h.clone(), *w)).or_default() += n;
        }
        out
    }
}

/// Differences between two per-key counts: (missing, extra).
fn diff<K: Ord>(want: &BTreeMap<K, u64>, got: &BTreeMap<K, u64>) -> (u64, u64) {
    let keys: BTreeSet<&K> = want.keys().chain(got.keys()).collect();
    keys.into_iter().fold((0, 0), |(lost, dup), k| {
        let (w, g) = (
            want.get(k).copied().unwrap_or(0),
            got.get(k).copied().unwrap_or(0),
        );
        (lost + w.saturating_sub(g), dup + g.saturating_sub(w))
    })
}

fn per_window(rows: &[(u32, u64, String, i64)], window_ms: i64) -> BTreeMap<(String, i64), u64> {
    let mut out: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for (_, _, h, ts) in rows {
        *out.entry((h.clone(), ts.div_euclid(window_ms) * window_ms))
            .or_default() += 1;
    }
    out
}

/// The verdict on the lake.
#[derive(Debug, Default, Clone, Serialize)]
pub struct LakeVerdict {
    /// Events missing from windows + late, per (host, window), against the truth.
    pub lost: u64,
    /// Events counted more than once in windows + late.
    pub duplicated: u64,
    /// (host, window, partition) keys with more than one row.
    pub duplicate_window_rows: u64,
    /// Records (by partition and offset) missing from events + invalid.
    pub records_lost: u64,
    /// Records present more than once in events + invalid.
    pub records_duplicated: u64,
    /// Raw-archive events per (host, window) against the truth: (missing, extra).
    pub archive_lost: u64,
    pub archive_extra: u64,
    /// Dead letters against the malformed records produced.
    pub invalid_found: u64,
    pub invalid_expected: u64,
    pub late: u64,
    pub windows: u64,
}

impl LakeVerdict {
    pub fn exact(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.duplicate_window_rows == 0
            && self.records_lost == 0
            && self.records_duplicated == 0
            && self.archive_lost == 0
            && self.archive_extra == 0
            && self.invalid_found == self.invalid_expected
    }
}

/// Judge the lake against the truth and the topic's end offsets.
pub fn judge(
    rows: &LakeRows,
    truth: &Truth,
    end_offsets: &BTreeMap<u32, u64>,
    window_ms: i64,
) -> LakeVerdict {
    let mut got = rows.window_totals();
    for (k, n) in per_window(&rows.late, window_ms) {
        *got.entry(k).or_default() += n;
    }
    let (lost, duplicated) = diff(&truth.windows, &got);
    let (archive_lost, archive_extra) = diff(&truth.windows, &per_window(&rows.events, window_ms));
    // Every offset below the end of each partition, once, as an event or a dead letter.
    let mut seen: BTreeMap<(u32, u64), u64> = BTreeMap::new();
    for &(p, o, _, _) in &rows.events {
        *seen.entry((p, o)).or_default() += 1;
    }
    for &(p, o) in &rows.invalid {
        *seen.entry((p, o)).or_default() += 1;
    }
    let want: BTreeMap<(u32, u64), u64> = end_offsets
        .iter()
        .flat_map(|(&p, &end)| (0..end).map(move |o| ((p, o), 1)))
        .collect();
    let (records_lost, records_duplicated) = diff(&want, &seen);
    LakeVerdict {
        lost,
        duplicated,
        duplicate_window_rows: rows.windows.values().filter(|(_, n)| *n > 1).count() as u64,
        records_lost,
        records_duplicated,
        archive_lost,
        archive_extra,
        invalid_found: rows.invalid.len() as u64,
        invalid_expected: truth.malformed,
        late: rows.late.len() as u64,
        windows: rows.windows.len() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_counts_missing_and_extra() {
        let want = BTreeMap::from([("a", 3), ("b", 1)]);
        let got = BTreeMap::from([("a", 2), ("c", 4)]);
        assert_eq!(diff(&want, &got), (2, 4));
        assert_eq!(diff(&want, &want), (0, 0));
    }

    #[test]
    fn a_doubled_record_and_a_missing_one_are_both_caught() {
        let truth = Truth {
            records: 3,
            events: 2,
            malformed: 1,
            windows: BTreeMap::from([(("h".into(), 0), 2)]),
        };
        let mut rows = LakeRows::default();
        rows.windows.insert(("h".into(), 0, 0), (2, 1));
        rows.events = vec![(0, 0, "h".into(), 5), (0, 1, "h".into(), 7)];
        rows.invalid = vec![(0, 2)];
        let ends = BTreeMap::from([(0, 3)]);
        assert!(judge(&rows, &truth, &ends, 60_000).exact());
        rows.events.push((0, 1, "h".into(), 7));
        rows.invalid.clear();
        let v = judge(&rows, &truth, &ends, 60_000);
        assert_eq!(
            (v.records_lost, v.records_duplicated, v.archive_extra),
            (1, 1, 1)
        );
        assert!(!v.exact());
    }
}
