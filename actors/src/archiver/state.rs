//! What the archiver keeps in memory for the API: each host's plain counts for its newest
//! `listing_windows` closed windows (what `/v1/hosts` adds up by default), nothing older and no
//! sketches. The retained history itself is on disk (`wtm_storage::History`), so memory grows
//! with the sites, never with `api.retention_windows`.

use std::collections::HashMap;
use wtm_core::agg::ShareCounts;
use wtm_messages::{HostCounts, HostsPage};

pub struct RecentWindows {
    listing_ms: i64,
    window_ms: i64,
    /// Per host, sorted by (start, partition), one per share; a re-published share replaces
    /// itself.
    hosts: HashMap<String, Vec<ShareCounts>>,
    newest_start_ms: i64,
    /// Every host ever archived by this process, with its newest window start (one entry per
    /// site: bounded by the sites).
    seen: HashMap<String, i64>,
}

impl RecentWindows {
    pub fn new(listing_windows: usize, window_ms: i64) -> RecentWindows {
        RecentWindows {
            listing_ms: (listing_windows as i64).saturating_mul(window_ms),
            window_ms,
            hosts: HashMap::new(),
            newest_start_ms: i64::MIN,
            seen: HashMap::new(),
        }
    }

    /// Insert (or replace) a closed share's counts; drops what fell out of the listing span.
    pub fn insert_counts(&mut self, host: &str, c: ShareCounts) {
        let start = c.start_ms;
        self.seen_host(host, start);
        if start < self.first_listed() {
            // Older than what memory lists (a late re-publication): the store has it.
            return;
        }
        let counts = match self.hosts.get_mut(host) {
            Some(v) => v,
            None => self.hosts.entry(host.to_owned()).or_default(),
        };
        let key = (c.start_ms, c.partition);
        match counts.binary_search_by_key(&key, |c| (c.start_ms, c.partition)) {
            Ok(i) => counts[i] = c,
            Err(i) => counts.insert(i, c),
        }
        if start > self.newest_start_ms {
            self.newest_start_ms = start;
            let keep_from = self.first_listed();
            self.hosts.retain(|_, v| {
                let cut = v.partition_point(|c| c.start_ms < keep_from);
                v.drain(..cut);
                !v.is_empty()
            });
        }
    }

    /// `host` has a closed window at `start_ms` (in the history store, or in the lake at a
    /// refill).
    pub fn seen_host(&mut self, host: &str, start_ms: i64) {
        match self.seen.get_mut(host) {
            Some(newest) => *newest = (*newest).max(start_ms),
            None => {
                self.seen.insert(host.to_owned(), start_ms);
            }
        }
    }

    /// Hosts with a closed window starting at `from_ms` or later.
    pub fn hosts_since(&self, from_ms: i64) -> Vec<String> {
        let newer = self.seen.iter().filter(|(_, newest)| **newest >= from_ms);
        newer.map(|(h, _)| h.clone()).collect()
    }

    /// The oldest window start memory lists.
    pub fn first_listed(&self) -> i64 {
        self.newest_start_ms
            .saturating_sub(self.listing_ms)
            .saturating_add(self.window_ms)
    }

    /// The newest window start archived (None before the first).
    pub fn newest_start(&self) -> Option<i64> {
        (self.newest_start_ms != i64::MIN).then_some(self.newest_start_ms)
    }

    /// Hosts archived since this process started, retained or not.
    pub fn hosts_seen(&self) -> usize {
        self.seen.len()
    }

    /// The first window start of the newest `n` windows (relative to the newest window seen).
    pub fn first_of(&self, n: usize) -> i64 {
        let span = (n as i64)
            .saturating_sub(1)
            .max(0)
            .saturating_mul(self.window_ms);
        self.newest_start_ms.saturating_sub(span)
    }

    /// Per-host counts of the newest `n` windows, as far back as memory lists them (all `n`
    /// when `n` ≤ `listing_windows`; [`with_older`] adds what the store holds before).
    pub fn counts(&self, n: usize, page: HostsPage) -> Vec<HostCounts> {
        let from = self.first_of(n);
        let mut out: Vec<HostCounts> = self
            .hosts
            .iter()
            .filter(|(host, _)| page.holds(host))
            .map(|(host, v)| HostCounts {
                host: host.clone(),
                shares: v[v.partition_point(|c| c.start_ms < from)..].to_vec(),
            })
            .filter(|t| !t.shares.is_empty())
            .collect();
        out.sort_by(|a, b| a.host.cmp(&b.host));
        out
    }
}

/// `listed` (from [`RecentWindows::counts`]) with the store's counts of older windows added,
/// those of the sites on `page`; sorted by host.
pub fn with_older(
    listed: Vec<HostCounts>,
    older: Vec<(String, ShareCounts)>,
    page: HostsPage,
) -> Vec<HostCounts> {
    let mut by_host: std::collections::BTreeMap<String, Vec<ShareCounts>> =
        listed.into_iter().map(|h| (h.host, h.shares)).collect();
    for (host, c) in older.into_iter().filter(|(h, _)| page.holds(h)) {
        by_host.entry(host).or_default().push(c);
    }
    by_host
        .into_iter()
        .map(|(host, mut shares)| {
            shares.sort_by_key(|c| (c.start_ms, c.partition));
            HostCounts { host, shares }
        })
        .collect()
}

/// Two lists sorted by host (one entry per host each) as one: a host in both gets both's shares.
pub fn merge_by_host(a: Vec<HostCounts>, b: Vec<HostCounts>) -> Vec<HostCounts> {
    if b.is_empty() {
        return a;
    }
    let mut out = Vec::with_capacity(a.len() + b.len());
    let mut b = b.into_iter().peekable();
    for mut x in a {
        while let Some(y) = b.next_if(|y| y.host < x.host) {
            out.push(y);
        }
        if let Some(y) = b.next_if(|y| y.host == x.host) {
            x.shares.extend(y.shares);
        }
        out.push(x);
    }
    out.extend(b);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use wtm_core::agg::{ClosedWindow, WindowAgg, WindowKey};

    #[test]
    fn lists_by_host_merge_in_order() {
        let hc = |host: &str, starts: &[i64]| HostCounts {
            host: host.to_owned(),
            shares: starts
                .iter()
                .map(|s| ShareCounts {
                    start_ms: *s,
                    ..Default::default()
                })
                .collect(),
        };
        let merged = merge_by_host(
            vec![hc("b", &[0]), hc("d", &[0, 60])],
            vec![hc("a", &[60]), hc("d", &[120]), hc("e", &[60])],
        );
        let got: Vec<(String, Vec<i64>)> = merged
            .into_iter()
            .map(|h| (h.host, h.shares.iter().map(|s| s.start_ms).collect()))
            .collect();
        let want = [
            ("a", vec![60]),
            ("b", vec![0]),
            ("d", vec![0, 60, 120]),
            ("e", vec![60]),
        ];
        assert_eq!(got, want.map(|(h, s)| (h.to_owned(), s)).to_vec());
    }

    fn cw(host: &str, start: i64, requests: u64) -> ClosedWindow {
        let agg = WindowAgg {
            requests,
            ..Default::default()
        };
        ClosedWindow {
            key: WindowKey {
                host: host.into(),
                start_ms: start,
                partition: 0,
            },
            end_ms: start + 60_000,
            agg,
        }
    }

    /// What the archiver inserts for a written share.
    fn insert(r: &mut RecentWindows, w: &ClosedWindow) {
        r.insert_counts(
            &w.key.host,
            ShareCounts::closed(&w.key, &w.agg.series_stats()),
        );
    }

    fn totals(t: &[HostCounts]) -> Vec<(&str, u64)> {
        t.iter()
            .map(|t| (t.host.as_str(), t.shares.iter().map(|s| s.requests).sum()))
            .collect()
    }

    #[test]
    fn replaces_lists_the_newest_and_adds_older_from_the_store() {
        let mut r = RecentWindows::new(3, 60_000);
        insert(&mut r, &cw("a", 0, 1));
        insert(&mut r, &cw("a", 0, 5)); // re-published: replaces
        insert(&mut r, &cw("b", 60_000, 2));
        assert_eq!(
            totals(&r.counts(10, HostsPage::ALL)),
            vec![("a", 5), ("b", 2)]
        );
        insert(&mut r, &cw("a", 240_000, 7)); // the listing keeps 120 s..240 s: a@0 and b@60 s go
        assert_eq!(r.first_listed(), 120_000);
        assert_eq!(totals(&r.counts(10, HostsPage::ALL)), vec![("a", 7)]);
        insert(&mut r, &cw("a", 60_000, 9)); // late, older than the listing: the store has it
        assert_eq!(totals(&r.counts(10, HostsPage::ALL)), vec![("a", 7)]);
        let stored = |h: &str, s: i64, n: u64| {
            let w = cw(h, s, n);
            (
                h.to_owned(),
                ShareCounts::closed(&w.key, &w.agg.series_stats()),
            )
        };
        let older = vec![stored("a", 0, 5), stored("b", 60_000, 2)];
        let all = with_older(r.counts(10, HostsPage::ALL), older, HostsPage::ALL);
        assert_eq!(totals(&all), vec![("a", 12), ("b", 2)]);
        assert_eq!(
            all[0].shares.iter().map(|c| c.start_ms).collect::<Vec<_>>(),
            vec![0, 240_000]
        );
        assert_eq!(r.first_of(4), 60_000);
        assert_eq!(r.hosts_seen(), 2);
        // Sites by their newest closed window (a's late window 60 s does not make it older).
        let since = |r: &RecentWindows, from: i64| {
            let mut h = r.hosts_since(from);
            h.sort();
            h
        };
        assert_eq!(since(&r, 120_000), vec!["a"]);
        assert_eq!(since(&r, 0), vec!["a", "b"]);
        r.seen_host("c", 0); // refilled from the lake, older than the listing
        assert_eq!((r.hosts_seen(), since(&r, 0).len()), (3, 3));
    }
}
