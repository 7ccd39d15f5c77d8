//! Recent closed windows kept for the API, keyed so a re-published window replaces itself.

use std::collections::{BTreeMap, HashMap, HashSet};
use wtm_core::agg::ClosedWindow;
use wtm_messages::{HostCounts, HostsPage, ShareCounts, WindowQuery};

pub struct RecentWindows {
    retention_ms: i64,
    window_ms: i64,
    hosts: HashMap<String, HostRecent>,
    newest_start_ms: i64,
    /// Every host ever archived by this process (one name each: bounded by the sites).
    seen: HashSet<String>,
}

/// One host's retained windows, and their plain counts in a sorted vector beside them:
/// `/v1/hosts` reads only the counts, a contiguous copy, instead of walking every window's
/// aggregate (a cache miss each).
#[derive(Default)]
struct HostRecent {
    windows: BTreeMap<(i64, u32), ClosedWindow>,
    /// Sorted by (start, partition), one per window above.
    counts: Vec<ShareCounts>,
}

impl HostRecent {
    fn insert(&mut self, w: ClosedWindow) {
        let key = (w.key.start_ms, w.key.partition);
        let c = ShareCounts::closed(&w.key, &w.agg);
        match self
            .counts
            .binary_search_by_key(&key, |c| (c.start_ms, c.partition))
        {
            Ok(i) => self.counts[i] = c,
            Err(i) => self.counts.insert(i, c),
        }
        self.windows.insert(key, w);
    }

    fn drop_before(&mut self, keep_from: i64) {
        while self
            .windows
            .first_key_value()
            .is_some_and(|((s, _), _)| *s < keep_from)
        {
            self.windows.pop_first();
        }
        let cut = self.counts.partition_point(|c| c.start_ms < keep_from);
        self.counts.drain(..cut);
    }
}

impl RecentWindows {
    pub fn new(retention_windows: usize, window_ms: i64) -> RecentWindows {
        RecentWindows {
            retention_ms: retention_windows as i64 * window_ms,
            window_ms,
            hosts: HashMap::new(),
            newest_start_ms: i64::MIN,
            seen: HashSet::new(),
        }
    }

    /// Insert (or replace) a closed window; drops what fell out of retention.
    pub fn insert(&mut self, w: ClosedWindow) {
        let start = w.key.start_ms;
        if !self.seen.contains(&w.key.host) {
            self.seen.insert(w.key.host.clone());
        }
        let recent = self.hosts.entry(w.key.host.clone()).or_default();
        recent.insert(w);
        if start > self.newest_start_ms {
            self.newest_start_ms = start;
            let keep_from = start - self.retention_ms;
            for recent in self.hosts.values_mut() {
                recent.drop_before(keep_from);
            }
            self.hosts.retain(|_, r| !r.windows.is_empty());
        }
    }

    /// Hosts archived since this process started, retained or not.
    pub fn hosts_seen(&self) -> usize {
        self.seen.len()
    }

    pub fn query(&self, q: &WindowQuery) -> Vec<ClosedWindow> {
        let from = q
            .from_ms
            .saturating_sub(q.from_ms.rem_euclid(self.window_ms));
        if from >= q.to_ms {
            return Vec::new();
        }
        let window_ms = self.window_ms;
        let pick = |w: &BTreeMap<(i64, u32), ClosedWindow>| -> Vec<ClosedWindow> {
            let from = match q.last_windows {
                Some(n) => match w.range(..(q.to_ms, 0)).next_back() {
                    Some(((newest, _), _)) => {
                        from.max(newest.saturating_sub((n - 1).max(0).saturating_mul(window_ms)))
                    }
                    None => return Vec::new(),
                },
                None => from,
            };
            w.range((from, 0)..(q.to_ms, 0))
                .map(|(_, v)| match q.top {
                    true => v.clone(),
                    false => ClosedWindow {
                        key: v.key.clone(),
                        end_ms: v.end_ms,
                        agg: v.agg.without_top(),
                    },
                })
                .collect()
        };
        match &q.host {
            Some(h) => self
                .hosts
                .get(h)
                .map(|r| pick(&r.windows))
                .unwrap_or_default(),
            None => self.hosts.values().flat_map(|r| pick(&r.windows)).collect(),
        }
    }

    /// Per-host counts of the newest `n` windows (relative to the newest window seen).
    pub fn counts(&self, n: usize, page: HostsPage) -> Vec<HostCounts> {
        let span = (n as i64)
            .saturating_sub(1)
            .max(0)
            .saturating_mul(self.window_ms);
        let from = self.newest_start_ms.saturating_sub(span);
        let mut out: Vec<HostCounts> = self
            .hosts
            .iter()
            .filter(|(host, _)| page.holds(host))
            .map(|(host, r)| HostCounts {
                host: host.clone(),
                shares: r.counts[r.counts.partition_point(|c| c.start_ms < from)..].to_vec(),
            })
            .filter(|t| !t.shares.is_empty())
            .collect();
        out.sort_by(|a, b| a.host.cmp(&b.host));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wtm_core::agg::{WindowAgg, WindowKey};

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

    #[test]
    fn replaces_retains_and_totals() {
        let mut r = RecentWindows::new(3, 60_000);
        r.insert(cw("a", 0, 1));
        r.insert(cw("a", 0, 5)); // re-published: replaces
        r.insert(cw("b", 60_000, 2));
        r.insert(cw("a", 240_000, 7)); // pushes window 0 out of a 3-window retention
        let all = r.query(&WindowQuery {
            host: Some("a".into()),
            from_ms: 0,
            to_ms: i64::MAX,
            last_windows: None,
            top: true,
        });
        assert_eq!(
            all.iter().map(|w| w.agg.requests).collect::<Vec<_>>(),
            vec![7]
        );
        // The newest 2 windows' span of "b" before 200 s: only its window at 60 s.
        let last = r.query(&WindowQuery {
            host: Some("b".into()),
            from_ms: i64::MIN,
            to_ms: 200_000,
            last_windows: Some(2),
            top: true,
        });
        assert_eq!(last.len(), 1);
        r.insert(cw("a", 180_000, 3));
        let last: Vec<i64> = r
            .query(&WindowQuery {
                host: Some("a".into()),
                from_ms: i64::MIN,
                to_ms: i64::MAX,
                last_windows: Some(2),
                top: false,
            })
            .iter()
            .map(|w| w.key.start_ms)
            .collect();
        assert_eq!(last, vec![180_000, 240_000]);
        let t = r.counts(10, HostsPage::ALL);
        assert_eq!(
            t.iter()
                .map(|t| (t.host.as_str(), t.shares.iter().map(|s| s.requests).sum()))
                .collect::<Vec<(&str, u64)>>(),
            vec![("a", 10), ("b", 2)]
        );
    }
}
