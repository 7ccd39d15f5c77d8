//! Answers this node can give from its own actors, the same whether the API asks or a peer does
//! (the cluster fan-out runs these on every member and merges).

use crate::{
    ask, lookup, owned_partitions, partition_statuses, shard_name, shard_of, Anomaly, AnomalyQuery,
    ArchiverMsg, CountsQuery, Detections, DetectorMsg, Episode, Handover, HandoverAsk, HostCounts,
    HostTotals, HostsPage, LatestCounts, PartitionStatus, ScoresQuery, ShareCounts, WindowMsg,
    WindowQuery, WindowScores, ARCHIVER_NAME, DETECTOR_NAME,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use wtm_core::agg::{Detail, SeriesStats, Share, WindowAgg, WindowKey};
use wtm_telemetry::ActorKind;

/// Which partitions this node answers for: a fixed set (generator, files: all must answer) or
/// whatever its consumer group assigned it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitions {
    Fixed(u32),
    Assigned,
}

/// Status of every partition this node answers for.
pub async fn partitions(which: Partitions) -> Result<Vec<PartitionStatus>, String> {
    let result = match which {
        Partitions::Fixed(n) => partition_statuses(0..n, true).await,
        Partitions::Assigned => partition_statuses(owned_partitions(), false).await,
    };
    result.map_err(|e| e.to_string())
}

/// Whether the archiver's history store is whole again (its start-up refill from the lake is
/// over).
pub async fn history_ready() -> Result<bool, String> {
    let archiver = lookup::<ArchiverMsg>(ARCHIVER_NAME).ok_or("archiver is restarting")?;
    ask(&archiver, ActorKind::Archiver, ArchiverMsg::HistoryReady)
        .await
        .map_err(|e| e.to_string())
}

/// Counts per host on this node, of the sites on `page`: their newest `n` closed windows plus
/// their open ones.
pub async fn host_counts(
    n: usize,
    shards: usize,
    page: HostsPage,
) -> Result<Vec<HostCounts>, String> {
    // The shards first, as in `host_parts`.
    let mut all = open_counts(shards, page).await?;
    let archiver = lookup::<ArchiverMsg>(ARCHIVER_NAME).ok_or("archiver is restarting")?;
    let q = CountsQuery { windows: n, page };
    all.extend(
        ask(&archiver, ActorKind::Archiver, |r| {
            ArchiverMsg::Counts(q, r)
        })
        .await
        .map_err(|e| e.to_string())??,
    );
    Ok(all)
}

/// Counts of the open windows in every shard, of the sites on `page`.
async fn open_counts(shards: usize, page: HostsPage) -> Result<Vec<HostCounts>, String> {
    // All shards at once: each answers after the batches queued before the question.
    let asks = (0..shards).map(|i| async move {
        let shard = lookup::<WindowMsg>(&shard_name(i)).ok_or("window shard is restarting")?;
        ask(&shard, ActorKind::Window, |r| WindowMsg::Counts(page, r))
            .await
            .map_err(|e| e.to_string())
    });
    let mut all = Vec::new();
    for counts in futures_util::future::join_all(asks).await {
        all.extend(counts?);
    }
    Ok(all)
}

/// The sites this node holds a window of: open in its shards, or closed and still served by its
/// archiver (names only: no counts read from the history store, nor from the open windows, which
/// a restored shard would have to decode first).
async fn host_names(shards: usize) -> Result<Vec<String>, String> {
    // The shards first, as in `host_parts`; all at once.
    let asks = (0..shards).map(|i| async move {
        let shard = lookup::<WindowMsg>(&shard_name(i)).ok_or("window shard is restarting")?;
        ask(&shard, ActorKind::Window, WindowMsg::Names)
            .await
            .map_err(|e| e.to_string())
    });
    let mut names = Vec::new();
    for open in futures_util::future::join_all(asks).await {
        names.extend(open?);
    }
    let archiver = lookup::<ArchiverMsg>(ARCHIVER_NAME).ok_or("archiver is restarting")?;
    names.extend(
        ask(&archiver, ActorKind::Archiver, ArchiverMsg::HostNames)
            .await
            .map_err(|e| e.to_string())?,
    );
    Ok(names)
}

/// How many pages `counts` take at `page_shares` shares a page (one at least; a quarter more
/// than the even split, as hashing spreads sites only about evenly).
pub fn pages_for(counts: &[HostCounts], page_shares: usize) -> u32 {
    let total: usize = counts.iter().map(|h| h.shares.len()).sum();
    let even = total.div_ceil(page_shares.max(1));
    if even <= 1 {
        1
    } else {
        u32::try_from(even + even.div_ceil(4)).unwrap_or(u32::MAX)
    }
}

/// Totals per host from every member's counts: each (window, partition) share once (a closed
/// one wins over an open one; two members may hold the same closed share after a partition
/// moved), the newest `n` closed windows by the cluster's newest, plus open windows. `windows`
/// counts distinct window starts; `sparkline` adds the requests per window.
pub fn merge_host_counts(
    parts: impl IntoIterator<Item = HostCounts>,
    n: usize,
    window_ms: i64,
    sparkline: bool,
) -> BTreeMap<String, HostTotals> {
    // Sorting each host's few shares beats a map per host: this runs on every `/v1/hosts`.
    let mut shares: std::collections::HashMap<String, Vec<ShareCounts>> = Default::default();
    let mut newest_closed = i64::MIN;
    for h in parts {
        for s in h.shares.iter().filter(|s| s.is_final) {
            newest_closed = newest_closed.max(s.start_ms);
        }
        match shares.get_mut(&h.host) {
            Some(v) => v.extend(h.shares),
            None => {
                shares.insert(h.host, h.shares);
            }
        }
    }
    let span = (n as i64).saturating_sub(1).saturating_mul(window_ms);
    let from = newest_closed.saturating_sub(span);
    let mut out = BTreeMap::new();
    for (host, mut v) in shares {
        // Per (window, partition), a closed share first: it wins over an open one.
        v.sort_unstable_by_key(|s| (s.start_ms, s.partition, !s.is_final));
        v.dedup_by_key(|s| (s.start_ms, s.partition));
        let in_range = || v.iter().filter(|s| !s.is_final || s.start_ms >= from);
        let Some(first) = in_range().next() else {
            continue;
        };
        let mut t = HostTotals {
            first_start_ms: first.start_ms,
            ..Default::default()
        };
        let last = in_range()
            .next_back()
            .map_or(first.start_ms, |s| s.start_ms);
        // The sparkline: the newest `n` window starts up to `last`, oldest first.
        let spark_len = if sparkline && window_ms > 0 {
            (((last - first.start_ms) / window_ms) as usize + 1).min(n)
        } else {
            0
        };
        let mut per_window = vec![0u64; spark_len];
        for s in in_range() {
            if t.windows == 0 || t.last_start_ms != s.start_ms {
                t.windows += 1;
                t.last_start_ms = s.start_ms;
            }
            t.requests += s.requests;
            t.bytes += s.bytes;
            t.status_5xx += s.status_5xx;
            t.bots += s.bots;
            if spark_len > 0 {
                let back = ((last - s.start_ms) / window_ms) as usize;
                if let Some(slot) = spark_len
                    .checked_sub(back + 1)
                    .and_then(|i| per_window.get_mut(i))
                {
                    *slot += s.requests;
                }
            }
        }
        t.latest = latest_closed(&v);
        t.requests_per_window = sparkline.then_some(per_window);
        t.host = host.clone();
        out.insert(host, t);
    }
    out
}

/// The newest closed window of one host's sorted, deduplicated shares.
fn latest_closed(sorted: &[ShareCounts]) -> Option<LatestCounts> {
    let start = sorted.iter().rev().find(|s| s.is_final)?.start_ms;
    let mut l = LatestCounts {
        start_ms: start,
        ..Default::default()
    };
    for s in sorted
        .iter()
        .rev()
        .skip_while(|s| s.start_ms != start)
        .take_while(|s| s.start_ms == start)
        .filter(|s| s.is_final)
    {
        l.requests += s.requests;
        l.status_5xx += s.status_5xx;
        l.bots += s.bots;
        l.latency_p99_ms = l.latency_p99_ms.max(f64::from(s.latency_p99_ms));
        l.unique_clients = l.unique_clients.max(u64::from(s.unique_clients));
        l.partitions += 1;
    }
    Some(l)
}

/// One node's share of `/v1/overview`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OverviewPart {
    pub partitions: Vec<PartitionStatus>,
    /// Every site this node holds a window of.
    pub hosts: Vec<String>,
    /// Closed windows this member's archiver has made readable since it started (each member
    /// counts its own; the sum only grows while members run).
    #[serde(default)]
    pub windows_archived: u64,
}

pub async fn overview(which: Partitions, shards: usize) -> Result<OverviewPart, String> {
    // Read before the queries: a window archived meanwhile moves the count on the next ask.
    let windows_archived = wtm_telemetry::Metrics::global()
        .windows_archived
        .load(std::sync::atomic::Ordering::Relaxed);
    Ok(OverviewPart {
        windows_archived,
        partitions: partitions(which).await?,
        hosts: {
            let mut hosts = host_names(shards).await?;
            hosts.sort_unstable();
            hosts.dedup();
            hosts
        },
    })
}

/// Merge members' overview parts: a partition counts once, from its newest owner (the highest
/// epoch; a node that just lost it may still answer for a moment), and a site once.
pub fn merge_overviews(parts: impl IntoIterator<Item = OverviewPart>) -> OverviewPart {
    let mut partitions: BTreeMap<u32, PartitionStatus> = BTreeMap::new();
    let mut hosts = std::collections::BTreeSet::new();
    let mut windows_archived = 0;
    for part in parts {
        windows_archived += part.windows_archived;
        for p in part.partitions {
            match partitions.get(&p.partition) {
                Some(have) if have.owner_epoch >= p.owner_epoch => {}
                _ => {
                    partitions.insert(p.partition, p);
                }
            }
        }
        hosts.extend(part.hosts);
    }
    OverviewPart {
        partitions: partitions.into_values().collect(),
        hosts: hosts.into_iter().collect(),
        windows_archived,
    }
}

/// One partition's share of a host's window, closed (final) or still open.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WindowPart {
    pub key: WindowKey,
    pub share: Share,
    pub is_final: bool,
}

/// Which of a host's windows a series asks for: `[from, to)`, or without `from` the newest
/// `default_windows` before `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesRange {
    pub from_ms: Option<i64>,
    pub to_ms: i64,
    pub default_windows: i64,
    pub window_ms: i64,
}

impl SeriesRange {
    /// The first window start of the range, given the newest start there is before `to`.
    pub fn first_start(&self, newest_ms: Option<i64>) -> i64 {
        let w = self.window_ms;
        let from = self.from_ms.unwrap_or_else(|| {
            newest_ms
                .unwrap_or(i64::MIN)
                .saturating_add(w)
                .saturating_sub(self.default_windows.saturating_mul(w))
        });
        from.saturating_sub(from.rem_euclid(w))
    }
}

/// A node's shares of a host's windows, and the scores its detector gave them (the host's home
/// has them).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostParts {
    pub parts: Vec<WindowPart>,
    pub scores: Vec<WindowScores>,
}

/// This node's shares of `host`'s windows in `range` (its own newest start decides a default
/// range: never later than the cluster's newest, so the union of all nodes' answers covers the
/// cluster's range), with their scores where this node judged them.
pub async fn host_parts(
    host: &str,
    shards: usize,
    range: SeriesRange,
    detail: Detail,
) -> Result<HostParts, String> {
    // Read only what the range can use: the archiver keeps hours of windows with their
    // sketches, a series shows one hour.
    let q = WindowQuery {
        host: Some(host.to_owned()),
        from_ms: range.from_ms.unwrap_or(i64::MIN),
        to_ms: range.to_ms,
        last_windows: range.from_ms.is_none().then_some(range.default_windows),
        detail,
    };
    // The shard first: a window closing in between is then seen open here or closed at the
    // archiver (an owner tells the archiver as soon as it cut its shards), not missed by both.
    let shard = lookup::<WindowMsg>(&shard_name(shard_of(host, shards)))
        .ok_or("window shard is restarting")?;
    let open = ask(&shard, ActorKind::Window, |r| {
        WindowMsg::Query(q.clone(), r)
    })
    .await
    .map_err(|e| e.to_string())?;
    let archiver = lookup::<ArchiverMsg>(ARCHIVER_NAME).ok_or("archiver is restarting")?;
    let closed = ask(&archiver, ActorKind::Archiver, |r| {
        ArchiverMsg::Windows(q.clone(), r)
    })
    .await
    .map_err(|e| e.to_string())??;
    let mut parts: Vec<WindowPart> = closed
        .into_iter()
        .map(|(key, share)| WindowPart {
            key,
            share,
            is_final: true,
        })
        .chain(open.into_iter().map(|(key, agg)| WindowPart {
            key,
            share: Share::Agg(Box::new(agg)),
            is_final: false,
        }))
        .collect();
    let newest = parts
        .iter()
        .map(|p| p.key.start_ms)
        .filter(|s| *s < range.to_ms)
        .max();
    let first = range.first_start(newest);
    parts.retain(|p| (first..range.to_ms).contains(&p.key.start_ms));
    // Scores are an extra: a detector that is off or restarting leaves them out.
    let scores = match lookup::<DetectorMsg>(DETECTOR_NAME) {
        Some(d) if !parts.is_empty() => {
            let q = ScoresQuery {
                host: host.to_owned(),
                from_ms: first,
                to_ms: range.to_ms,
            };
            ask(&d, ActorKind::Detector, |r| DetectorMsg::Scores(q, r))
                .await
                .unwrap_or_default()
        }
        _ => Vec::new(),
    };
    Ok(HostParts { parts, scores })
}

/// Every node's shares by window: one per (window, partition) — a closed share is the same on
/// any node that holds it, and a final one wins over an open one — in `range` as the cluster's
/// newest window decides it. The bool: every share was final.
fn by_window(
    parts: impl IntoIterator<Item = WindowPart>,
    range: SeriesRange,
) -> BTreeMap<i64, (Vec<Share>, bool)> {
    let mut by_key: BTreeMap<(i64, u32), WindowPart> = BTreeMap::new();
    for p in parts {
        let k = (p.key.start_ms, p.key.partition);
        match by_key.get(&k) {
            Some(have) if have.is_final || !p.is_final => {}
            _ => {
                by_key.insert(k, p);
            }
        }
    }
    let newest = by_key
        .keys()
        .map(|(s, _)| *s)
        .filter(|s| *s < range.to_ms)
        .max();
    let first = range.first_start(newest);
    let mut out: BTreeMap<i64, (Vec<Share>, bool)> = BTreeMap::new();
    for ((start, _), p) in by_key {
        if !(first..range.to_ms).contains(&start) {
            continue;
        }
        let e = out.entry(start).or_insert_with(|| (Vec::new(), true));
        e.0.push(p.share);
        e.1 &= p.is_final;
    }
    out
}

/// Shares that could not make one window.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Sketch(#[from] wtm_core::sketch::SketchError),
    /// A window has several shares and some came as statistics only: ask again with
    /// [`Detail::Sketches`].
    #[error("a window's shares came without their sketches")]
    NeedSketches,
}

fn merged(shares: Vec<Share>) -> Result<WindowAgg, MergeError> {
    let mut agg: Option<WindowAgg> = None;
    for s in shares {
        let Share::Agg(a) = s else {
            return Err(MergeError::NeedSketches);
        };
        match &mut agg {
            Some(m) => m.merge(&a)?,
            None => agg = Some(*a),
        }
    }
    Ok(agg.unwrap_or_default())
}

/// Every node's shares merged into one aggregate per window (see [`by_window`]).
pub fn merge_parts(
    parts: impl IntoIterator<Item = WindowPart>,
    range: SeriesRange,
) -> Result<BTreeMap<i64, (WindowAgg, bool)>, MergeError> {
    by_window(parts, range)
        .into_iter()
        .map(|(start, (shares, all_final))| Ok((start, (merged(shares)?, all_final))))
        .collect()
}

/// Every node's shares as one window series (see [`by_window`]): a window with one share shows
/// that share's statistics (a closed share's as archived: no sketch decoded or merged); only a
/// window with several shares merges their sketches.
pub fn merge_series(
    parts: impl IntoIterator<Item = WindowPart>,
    range: SeriesRange,
) -> Result<BTreeMap<i64, (SeriesStats, bool)>, MergeError> {
    by_window(parts, range)
        .into_iter()
        .map(|(start, (mut shares, all_final))| {
            let stats = match shares.len() {
                1 => shares.remove(0).stats(),
                _ => merged(shares)?.series_stats(),
            };
            Ok((start, (stats, all_final)))
        })
        .collect()
}

/// This node's detector's anomalies and episodes.
pub async fn anomalies(q: AnomalyQuery) -> Result<Detections, String> {
    let detector = lookup::<DetectorMsg>(DETECTOR_NAME).ok_or("detector is restarting")?;
    ask(&detector, ActorKind::Detector, |r| {
        DetectorMsg::Anomalies(q, r)
    })
    .await
    .map_err(|e| e.to_string())
}

/// Every node's anomalies, each (host, metric, window) once, and episodes, each (host, metric,
/// kind, start) once — the furthest along where two nodes list one (a home that moved keeps
/// what it had); oldest first.
pub fn merge_detections(lists: impl IntoIterator<Item = Detections>) -> Detections {
    let mut anomalies: BTreeMap<(i64, String, String), Anomaly> = BTreeMap::new();
    let mut episodes: BTreeMap<(i64, String, String, String), Episode> = BTreeMap::new();
    for d in lists {
        for a in d.anomalies {
            anomalies
                .entry((a.window_start_ms, a.host.clone(), a.metric.clone()))
                .or_insert(a);
        }
        for e in d.episodes {
            let key = (e.start_ms, e.host.clone(), e.metric.clone(), e.kind.clone());
            let further = |have: &Episode| {
                (e.last_ms, e.windows, e.end_ms.is_some())
                    > (have.last_ms, have.windows, have.end_ms.is_some())
            };
            match episodes.get(&key) {
                Some(have) if !further(have) => {}
                _ => {
                    episodes.insert(key, e);
                }
            }
        }
    }
    Detections {
        anomalies: anomalies.into_values().collect(),
        episodes: episodes.into_values().collect(),
    }
}

/// What this node's archiver holds of the asking member's hosts (see [`ArchiverMsg::Handover`]).
pub async fn handover(q: HandoverAsk) -> Result<Handover, String> {
    let archiver = lookup::<ArchiverMsg>(ARCHIVER_NAME).ok_or("archiver is restarting")?;
    ask(&archiver, ActorKind::Archiver, |r| {
        ArchiverMsg::Handover(q, r)
    })
    .await
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wtm_core::checkpoint::PartitionTotals;

    fn status(partition: u32, epoch: u64, events: u64) -> PartitionStatus {
        PartitionStatus {
            partition,
            next_offset: events,
            committed_offset: None,
            lag: None,
            owner_epoch: epoch,
            watermark_ms: None,
            max_event_ms: None,
            finished: false,
            totals: PartitionTotals {
                events,
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_partition_counts_once_from_its_newest_owner_and_a_host_once() {
        let a = OverviewPart {
            partitions: vec![status(0, 1, 10), status(1, 2, 20)],
            hosts: vec!["x".into(), "y".into()],
            windows_archived: 7,
        };
        // b took partition 1 over (epoch 3) and still lists it; a has not let go yet.
        let b = OverviewPart {
            partitions: vec![status(1, 3, 25), status(2, 1, 5)],
            hosts: vec!["y".into(), "z".into()],
            windows_archived: 4,
        };
        let m = merge_overviews([a, b]);
        let got: Vec<(u32, u64)> = m
            .partitions
            .iter()
            .map(|p| (p.partition, p.totals.events))
            .collect();
        assert_eq!(got, vec![(0, 10), (1, 25), (2, 5)]);
        assert_eq!(m.hosts, ["x", "y", "z"]);
        // Each member counts the windows its own archiver made readable.
        assert_eq!(m.windows_archived, 11);
    }

    #[test]
    fn host_totals_count_each_share_once_over_the_clusters_newest_windows() {
        let c = |start: i64, partition: u32, requests: u64, is_final: bool| ShareCounts {
            start_ms: start,
            partition,
            requests,
            bytes: requests * 10,
            status_5xx: 1,
            bots: requests / 2,
            latency_p99_ms: if is_final { requests as f32 * 1.5 } else { 0.0 },
            unique_clients: if is_final { requests as u32 + 100 } else { 0 },
            is_final,
        };
        let host = |shares: Vec<ShareCounts>| HostCounts {
            host: "h".into(),
            shares,
        };
        // Node a: windows 0..=2 of partition 0; node b: the same closed share of 120 (it took
        // partition 0 over) and partition 1's shares of 120 (closed) and 180 (open).
        let a = host(vec![
            c(0, 0, 1, true),
            c(60, 0, 2, true),
            c(120, 0, 4, true),
        ]);
        let b = host(vec![
            c(120, 0, 4, true),
            c(120, 1, 8, true),
            c(180, 1, 16, false),
        ]);
        let all = merge_host_counts([a.clone(), b.clone()], 2, 60, true);
        let t = &all["h"];
        assert_eq!(t.bots, 1 + 2 + 4 + 8);
        // Sparkline: the newest 2 starts up to 180 (120 and 180), oldest first.
        assert_eq!(t.requests_per_window, Some(vec![4 + 8, 16]));
        // The newest closed window (120) over its two closed shares: counts add up, p99 is the
        // larger share's, clients the larger share's.
        assert_eq!(
            t.latest,
            Some(LatestCounts {
                start_ms: 120,
                requests: 12,
                status_5xx: 2,
                bots: 2 + 4,
                latency_p99_ms: 12.0,
                unique_clients: 108,
                partitions: 2,
            })
        );
        assert_eq!(
            merge_host_counts([a.clone()], 2, 60, false)["h"].requests_per_window,
            None
        );
        // A gap is a zero; a wider range covers every start.
        let gap = host(vec![c(0, 0, 1, true), c(120, 0, 5, true)]);
        assert_eq!(
            merge_host_counts([gap], 9, 60, true)["h"].requests_per_window,
            Some(vec![1, 0, 5])
        );
        // Newest 2 closed windows (60, 120) plus the open 180; 120's partition-0 share once.
        assert_eq!(
            (
                t.windows,
                t.requests,
                t.status_5xx,
                t.first_start_ms,
                t.last_start_ms
            ),
            (3, 2 + 4 + 8 + 16, 4, 60, 180)
        );
        // An open share is replaced by the same share closed, whatever the order.
        let open = host(vec![c(0, 0, 1, false)]);
        let closed = host(vec![c(0, 0, 3, true)]);
        assert_eq!(
            merge_host_counts([open.clone(), closed.clone()], 9, 60, false)["h"].requests,
            3
        );
        assert_eq!(
            merge_host_counts([closed, open], 9, 60, false)["h"].requests,
            3
        );
    }

    #[test]
    fn pages_split_the_sites_and_cover_each_once() {
        let counts: Vec<HostCounts> = (0..1000)
            .map(|i| HostCounts {
                host: format!("site-{i}.example"),
                shares: vec![ShareCounts::default(); 10],
            })
            .collect();
        assert_eq!(pages_for(&counts, 100_000), 1);
        let of = pages_for(&counts, 1000);
        assert_eq!(of, 13, "10 even pages and a quarter more");
        let mut seen = 0;
        for index in 0..of {
            let page = HostsPage { index, of };
            let on: Vec<&HostCounts> = counts.iter().filter(|h| page.holds(&h.host)).collect();
            let shares: usize = on.iter().map(|h| h.shares.len()).sum();
            assert!(shares <= 1000, "page {index} holds {shares} shares");
            seen += on.len();
        }
        assert_eq!(seen, 1000, "every site on exactly one page");
    }

    fn part(start: i64, partition: u32, requests: u64, is_final: bool) -> WindowPart {
        WindowPart {
            key: WindowKey {
                host: "h".into(),
                start_ms: start,
                partition,
            },
            share: Share::Agg(Box::new(WindowAgg {
                requests,
                ..Default::default()
            })),
            is_final,
        }
    }

    #[test]
    fn a_series_needs_sketches_only_where_a_window_has_several_shares() {
        let range = SeriesRange {
            from_ms: None,
            to_ms: i64::MAX,
            default_windows: 10,
            window_ms: 60,
        };
        let agg = |latencies: &[f64], clients: &[&str]| {
            let mut a = WindowAgg::default();
            for (l, c) in latencies.iter().zip(clients) {
                a.requests += 1;
                a.latency.add(*l);
                a.clients.insert(c);
            }
            a
        };
        let at = |start: i64, partition: u32, share: Share| WindowPart {
            key: WindowKey {
                host: "h".into(),
                start_ms: start,
                partition,
            },
            share,
            is_final: true,
        };
        let (a, b) = (agg(&[10.0, 20.0], &["x", "y"]), agg(&[300.0], &["y"]));
        let stats = |a: &WindowAgg| Share::Stats(a.series_stats());
        let whole = |a: &WindowAgg| Share::Agg(Box::new(a.clone()));
        // Window 0 has one share: its statistics as they came. Window 60 has two: merged from
        // their sketches.
        let parts = vec![
            at(0, 0, stats(&a)),
            at(60, 0, whole(&a)),
            at(60, 1, whole(&b)),
        ];
        let m = merge_series(parts, range).unwrap();
        assert_eq!(m[&0], (a.series_stats(), true));
        let mut ab = a.clone();
        ab.merge(&b).unwrap();
        assert_eq!(m[&60], (ab.series_stats(), true));
        assert_eq!((m[&60].0.requests, m[&60].0.unique_clients), (3, 2));
        assert_eq!(m[&60].0.latency_ms[4], 300.0);
        // Two shares, one as statistics only: asked again with sketches, never added up.
        let parts = vec![at(0, 0, stats(&a)), at(0, 1, whole(&b))];
        assert!(matches!(
            merge_series(parts, range),
            Err(MergeError::NeedSketches)
        ));
    }

    #[test]
    fn shares_merge_once_per_partition_in_the_clusters_range() {
        let range = SeriesRange {
            from_ms: None,
            to_ms: i64::MAX,
            default_windows: 2,
            window_ms: 60,
        };
        // Node a: windows 0 and 60 of partition 0 (closed); node b: the same closed share of
        // 60 (b took partition 0 over) plus its open share of partition 1 at 120, and an old
        // closed window 0 of partition 1 that the default range (newest 2 windows) leaves out.
        let a = vec![part(0, 0, 5, true), part(60, 0, 7, true)];
        let b = vec![
            part(60, 0, 7, true),
            part(60, 1, 3, false),
            part(120, 1, 2, false),
            part(0, 1, 9, true),
        ];
        let m = merge_parts(a.into_iter().chain(b), range).unwrap();
        let got: Vec<(i64, u64, bool)> = m
            .iter()
            .map(|(s, (agg, f))| (*s, agg.requests, *f))
            .collect();
        assert_eq!(got, vec![(60, 10, false), (120, 2, false)]);
        // A final share wins over an open one of the same key, whatever the order.
        let m = merge_parts([part(0, 0, 1, false), part(0, 0, 4, true)], range).unwrap();
        assert_eq!((m[&0].0.requests, m[&0].1), (4, true));
    }
}
