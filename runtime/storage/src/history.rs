//! The API's window history on local disk: every closed (host, window, partition) share of the
//! retained span, so that a node's memory grows with the sites and the windows in flight, never
//! with how much history it keeps (`api.retention_windows`).
//!
//! One redb file (the only module that touches redb). Three tables, all keyed by (start, host,
//! partition), so a re-published share replaces itself and the shares of a new window are
//! written at the tree's right edge (a host-first key spread every window's writes over the whole
//! file: each commit rewrote thousands of leaf pages):
//! - `series`: the share without its top-K sketches (what a window series merges when a window
//!   has several shares; a fraction of the size);
//! - `tops`: its top-K sketches (paths, referrers, user agents, client networks, time by path)
//!   and its milliseconds of latency (read only by `/top` and explanations);
//! - `stats`: its [`SeriesStats`], computed once when it is archived: what a series shows of a
//!   window with one share (most: a site on one partition) without a sketch, and the counts of
//!   `/v1/hosts` over more windows than the archiver keeps in memory. A few dozen bytes a share,
//!   so a series' reads stay in the page cache.
//!
//! A host's series is read window start by window start (one short range each).
//!
//! The file is a cache of the lake: it is recreated at start-up and refilled from the lake, so
//! commits need not be durable (one durable commit per retention cut lets redb reuse the pages
//! it freed).

use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use wtm_core::agg::{
    ClosedWindow, CountMap, Detail, SeriesStats, Share, ShareCounts, WindowAgg, WindowKey,
};
use wtm_core::checkpoint::{decode, encode_into, WireError};
use wtm_core::sketch::{Distinct, Quantiles, TopK};

type Key<'a> = (i64, &'a str, u32);
const SERIES: TableDefinition<Key, &[u8]> = TableDefinition::new("series");
const TOPS: TableDefinition<Key, &[u8]> = TableDefinition::new("tops");
const STATS: TableDefinition<Key, &[u8]> = TableDefinition::new("stats");

/// A share's aggregate without its top-K, borrowed for encoding (no copy per share)...
#[derive(Serialize)]
struct SeriesRef<'a> {
    requests: u64,
    bytes: u64,
    status_class: [u64; 5],
    status_codes: &'a CountMap<u16>,
    methods: &'a CountMap<String>,
    bots: u64,
    latency: &'a Quantiles,
    clients: &'a Distinct,
}

/// ...and owned again when read (the same fields in the same order).
#[derive(Deserialize)]
struct SeriesOwned {
    requests: u64,
    bytes: u64,
    status_class: [u64; 5],
    status_codes: CountMap<u16>,
    methods: CountMap<String>,
    bots: u64,
    latency: Quantiles,
    clients: Distinct,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("window history store: {0}")]
    Db(#[from] redb::Error),
    #[error("window history store: {0}")]
    Wire(#[from] WireError),
    #[error("window history store {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

from_redb_errors!(HistoryError);

/// The retained closed shares of every host. Blocking: call it from `spawn_blocking`. Shared by
/// the archiver's upload tasks (writes, one at a time inside redb) and its readers (which never
/// wait for a writer).
pub struct History {
    db: Database,
    window_ms: i64,
    retention_ms: i64,
    /// The newest window start stored; retention counts back from it.
    newest_ms: AtomicI64,
    /// Shares older than this are gone.
    cut_ms: AtomicI64,
    /// The oldest window start ever stored (reads need not look before it, nor before the cut).
    oldest_ms: AtomicI64,
}

/// Which of one host's windows to read.
#[derive(Debug, Clone, Copy)]
pub struct SeriesRead<'a> {
    pub host: &'a str,
    /// `[from, to)`; `from` is rounded down to a window start.
    pub from_ms: i64,
    pub to_ms: i64,
    /// Only the newest `n` window starts before `to` (and not before `from`).
    pub last_windows: Option<i64>,
    pub detail: Detail,
}

impl History {
    /// A new, empty store at `path` (an existing file is replaced: it may be stale or torn),
    /// with a page cache of `cache_bytes` (redb's default, 1 GiB, would undo the point of
    /// keeping history on disk).
    pub fn create(
        path: &Path,
        window_ms: i64,
        retention_windows: usize,
        cache_bytes: usize,
    ) -> Result<History, HistoryError> {
        let io = |source| HistoryError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        discard(path).map_err(io)?;
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(SERIES)?;
        txn.open_table(TOPS)?;
        txn.open_table(STATS)?;
        txn.commit()?;
        Ok(History {
            db,
            window_ms: window_ms.max(1),
            retention_ms: (retention_windows as i64).saturating_mul(window_ms),
            newest_ms: AtomicI64::new(i64::MIN),
            cut_ms: AtomicI64::new(i64::MIN),
            oldest_ms: AtomicI64::new(i64::MAX),
        })
    }

    /// Store (or replace) closed shares with their statistics (one each, in the same order);
    /// drops what fell out of retention.
    pub fn put(&self, closed: &[ClosedWindow], stats: &[SeriesStats]) -> Result<(), HistoryError> {
        if closed.is_empty() {
            return Ok(());
        }
        let newest = closed
            .iter()
            .map(|w| w.key.start_ms)
            .max()
            .unwrap_or(i64::MIN);
        let newest = self
            .newest_ms
            .fetch_max(newest, Ordering::Relaxed)
            .max(newest);
        // The newest `retention_windows` starts stay.
        let cut = newest
            .saturating_sub(self.retention_ms)
            .saturating_add(self.window_ms);
        let cutting = self.cut_ms.fetch_max(cut, Ordering::Relaxed) < cut;
        if let Some(oldest) = closed
            .iter()
            .map(|w| w.key.start_ms)
            .filter(|s| *s >= cut)
            .min()
        {
            self.oldest_ms.fetch_min(oldest, Ordering::Relaxed);
        }
        let mut txn = self.db.begin_write()?;
        // A cut commits durably: redb reuses freed pages only after a durable commit.
        txn.set_durability(if cutting {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        {
            let mut series = txn.open_table(SERIES)?;
            let mut tops = txn.open_table(TOPS)?;
            let mut finalized = txn.open_table(STATS)?;
            // One buffer for every value written: a fresh one per value grew from nothing.
            let mut buf = Vec::new();
            for (w, st) in closed
                .iter()
                .zip(stats)
                .filter(|(w, _)| w.key.start_ms >= cut)
            {
                let (k, a) = (&w.key, &w.agg);
                let key = (k.start_ms, k.host.as_str(), k.partition);
                let view = SeriesRef {
                    requests: a.requests,
                    bytes: a.bytes,
                    status_class: a.status_class,
                    status_codes: &a.status_codes,
                    methods: &a.methods,
                    bots: a.bots,
                    latency: &a.latency,
                    clients: &a.clients,
                };
                encode_into(&mut buf, &view)?;
                series.insert(key, buf.as_slice())?;
                let t = (
                    &a.paths,
                    &a.referrers,
                    &a.user_agents,
                    &a.networks,
                    &a.path_time,
                    a.latency_ms_total,
                );
                encode_into(&mut buf, &t)?;
                tops.insert(key, buf.as_slice())?;
                encode_into(&mut buf, st)?;
                finalized.insert(key, buf.as_slice())?;
            }
            if cutting {
                let old = ..(cut, "", 0u32);
                series.retain_in(old, |_, _| false)?;
                tops.retain_in(old, |_, _| false)?;
                finalized.retain_in(old, |_, _| false)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// One host's shares in a range, oldest first (by start, then partition), in `q.detail`.
    pub fn series(&self, q: SeriesRead<'_>) -> Result<Vec<(WindowKey, Share)>, HistoryError> {
        let w = self.window_ms;
        let floor = |t: i64| t.saturating_sub(t.rem_euclid(w));
        // Nothing before the oldest start or the retention cut, or after the newest, is stored.
        let oldest =
            (self.oldest_ms.load(Ordering::Relaxed)).max(self.cut_ms.load(Ordering::Relaxed));
        let newest = self.newest_ms.load(Ordering::Relaxed);
        let from = floor(q.from_ms).max(oldest);
        let last = floor(q.to_ms.saturating_sub(1)).min(newest);
        if from > last {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read()?;
        // Every table holds the same keys: the one read decides where a share is.
        let main = txn.open_table(match q.detail {
            Detail::Stats => STATS,
            Detail::Sketches | Detail::Top => SERIES,
        })?;
        let at = |start: i64| main.range((start, q.host, 0u32)..=(start, q.host, u32::MAX));
        let from = match q.last_windows {
            Some(n) => {
                // The host's newest start before `to`, then n windows back from it.
                let mut s = last;
                loop {
                    if s < from {
                        return Ok(Vec::new());
                    }
                    if at(s)?.next().is_some() {
                        break;
                    }
                    s -= w;
                }
                from.max(s.saturating_sub((n - 1).max(0).saturating_mul(w)))
            }
            None => from,
        };
        let tops = match q.detail {
            Detail::Top => Some(txn.open_table(TOPS)?),
            Detail::Stats | Detail::Sketches => None,
        };
        let mut out = Vec::new();
        let mut start = from;
        while start <= last {
            for row in at(start)? {
                let (k, v) = row?;
                let (start_ms, host, partition) = k.value();
                let key = WindowKey {
                    host: host.to_owned(),
                    start_ms,
                    partition,
                };
                if q.detail == Detail::Stats {
                    out.push((key, Share::Stats(decode("history stats", v.value())?)));
                    continue;
                }
                let s: SeriesOwned = decode("history series", v.value())?;
                let mut agg = WindowAgg {
                    requests: s.requests,
                    bytes: s.bytes,
                    status_class: s.status_class,
                    status_codes: s.status_codes,
                    methods: s.methods,
                    bots: s.bots,
                    latency: s.latency,
                    clients: s.clients,
                    ..WindowAgg::default()
                };
                if let Some(tops) = &tops {
                    if let Some(t) = tops.get((start_ms, host, partition))? {
                        let tops: (TopK, TopK, TopK, TopK<u64>, TopK<u64>, u64) =
                            decode("history tops", t.value())?;
                        (
                            agg.paths,
                            agg.referrers,
                            agg.user_agents,
                            agg.networks,
                            agg.path_time,
                            agg.latency_ms_total,
                        ) = tops;
                    }
                }
                out.push((key, Share::Agg(Box::new(agg))));
            }
            start += w;
        }
        Ok(out)
    }

    /// Every host's share counts of the windows starting in `[from, to)`.
    pub fn counts(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(String, ShareCounts)>, HistoryError> {
        if from_ms >= to_ms {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read()?;
        let stats = txn.open_table(STATS)?;
        let mut out = Vec::new();
        for row in stats.range((from_ms, "", 0u32)..(to_ms, "", 0u32))? {
            let (k, v) = row?;
            let (start_ms, host, partition) = k.value();
            let key = WindowKey {
                host: host.to_owned(),
                start_ms,
                partition,
            };
            let s: SeriesStats = decode("history stats", v.value())?;
            let c = ShareCounts::closed(&key, &s);
            out.push((key.host, c));
        }
        Ok(out)
    }
}

/// Move the store at `path` (if any) aside and delete it, with any an earlier start moved aside,
/// on a thread of its own. Deleting a large file frees its blocks in the call: 0.31 s for the
/// 4 GB store of a node with 120,000 sites (strace on a restart), on the node's start path,
/// before the partitions could restore. A rename is immediate.
fn discard(path: &Path) -> std::io::Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(());
    };
    let prefix = format!("{}.discarded-", name.to_string_lossy());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    match std::fs::rename(
        path,
        dir.join(format!("{prefix}{}-{nanos}", std::process::id())),
    ) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let dir = dir.to_path_buf();
    let delete = move || {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                // What fails to go now goes at the next start.
                let _ = std::fs::remove_file(entry.path());
            }
        }
    };
    std::thread::Builder::new()
        .name("wtm-history-discard".into())
        .spawn(delete)
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(host: &str, start_ms: i64, partition: u32, paths: &[&str]) -> ClosedWindow {
        let mut agg = WindowAgg::default();
        for (i, p) in paths.iter().enumerate() {
            agg.requests += 1;
            agg.latency.add(10.0 * (i + 1) as f64);
            agg.clients.insert(&format!("10.0.0.{i}"));
            agg.paths.insert(*p);
        }
        ClosedWindow {
            key: WindowKey {
                host: host.into(),
                start_ms,
                partition,
            },
            end_ms: start_ms + 60_000,
            agg,
        }
    }

    fn put(h: &History, ws: &[ClosedWindow]) {
        let stats: Vec<SeriesStats> = ws.iter().map(|w| w.agg.series_stats()).collect();
        h.put(ws, &stats).unwrap();
    }

    fn series(
        h: &History,
        host: &str,
        last: Option<i64>,
        detail: Detail,
    ) -> Vec<(WindowKey, Share)> {
        h.series(SeriesRead {
            host,
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            last_windows: last,
            detail,
        })
        .unwrap()
    }

    /// (start, partition, requests, paths kept); the same shares in every detail.
    fn read(h: &History, host: &str, last: Option<i64>, top: bool) -> Vec<(i64, u32, u64, usize)> {
        let row = |(k, share): (WindowKey, Share)| {
            let paths = match &share {
                Share::Agg(a) => a.paths.top(100).len(),
                Share::Stats(_) => 0,
            };
            (k.start_ms, k.partition, share.stats().requests, paths)
        };
        let rows: Vec<_> = series(h, host, last, Detail::Sketches)
            .into_iter()
            .map(row)
            .collect();
        let stats: Vec<_> = series(h, host, last, Detail::Stats)
            .into_iter()
            .map(row)
            .collect();
        assert_eq!(rows, stats);
        if top {
            return series(h, host, last, Detail::Top)
                .into_iter()
                .map(row)
                .collect();
        }
        rows
    }

    #[test]
    fn stores_replaces_reads_ranges_and_cuts_retention() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.redb");
        let h = History::create(&path, 60_000, 3, 1 << 20).unwrap();
        put(
            &h,
            &[
                share("a", 0, 0, &["/x"]),
                share("a", 0, 1, &["/y", "/z"]),
                share("ab", 0, 0, &["/"]),
            ],
        );
        put(&h, &[share("a", 0, 1, &["/y", "/z", "/w"])]); // re-published: replaces
        put(
            &h,
            &[
                share("a", 60_000, 0, &["/x"]),
                share("a", 120_000, 0, &["/x", "/x"]),
            ],
        );
        // A series carries no top-K unless asked; "ab" never leaks into "a" (key prefix).
        assert_eq!(
            read(&h, "a", None, false),
            vec![
                (0, 0, 1, 0),
                (0, 1, 3, 0),
                (60_000, 0, 1, 0),
                (120_000, 0, 2, 0)
            ]
        );
        assert_eq!(
            read(&h, "a", Some(2), true),
            vec![(60_000, 0, 1, 1), (120_000, 0, 2, 1)]
        );
        assert_eq!(read(&h, "ab", None, true), vec![(0, 0, 1, 1)]);
        // A share's statistics are those it was archived with; its sketches read back whole.
        let want = share("a", 0, 1, &["/y", "/z", "/w"]).agg.series_stats();
        let one = |detail| series(&h, "a", None, detail).swap_remove(1).1;
        let Share::Stats(stats) = one(Detail::Stats) else {
            panic!("a stats read returns statistics")
        };
        assert_eq!(stats, want);
        assert_eq!((stats.unique_clients, stats.latency_ms[4]), (3, 30.0));
        let Share::Agg(agg) = one(Detail::Sketches) else {
            panic!("a sketches read returns the aggregate")
        };
        assert_eq!(agg.latency.count(), 3);
        assert_eq!(agg.series_stats(), want);
        let c = h.counts(0, 120_000).unwrap();
        assert_eq!(
            c.iter()
                .map(|(h, c)| (h.as_str(), c.start_ms, c.requests))
                .collect::<Vec<_>>(),
            vec![("a", 0, 1), ("a", 0, 3), ("ab", 0, 1), ("a", 60_000, 1)]
        );
        // A share 3 windows newer than 0 cuts window 0 from every table, for every host.
        put(&h, &[share("b", 180_000, 0, &["/"])]);
        assert_eq!(read(&h, "a", None, true).first().map(|r| r.0), Some(60_000));
        assert!(read(&h, "ab", None, true).is_empty());
        assert_eq!(h.counts(i64::MIN, i64::MAX).unwrap().len(), 3);
        // A share older than retention is not kept.
        put(&h, &[share("c", 0, 0, &["/"])]);
        assert!(read(&h, "c", None, false).is_empty());
        // A new store starts empty, whatever the file held.
        drop(h);
        let h = History::create(&path, 60_000, 3, 1 << 20).unwrap();
        assert!(read(&h, "a", None, false).is_empty());
        // The old file was moved aside and goes on a thread of its own, with one an earlier
        // start left behind; nothing else in the directory is touched.
        drop(h);
        std::fs::write(dir.path().join("h.redb.discarded-1-2"), b"left").unwrap();
        std::fs::write(dir.path().join("h.redb.keep"), b"mine").unwrap();
        History::create(&path, 60_000, 3, 1 << 20).unwrap();
        let names = || -> Vec<String> {
            let mut n: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            n.sort();
            n
        };
        for _ in 0..500 {
            if names().len() == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(names(), ["h.redb", "h.redb.keep"]);
    }
}
