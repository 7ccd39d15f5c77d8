//! Recent closed windows kept for the API, keyed so a re-published window replaces itself.

use std::collections::{BTreeMap, HashMap, HashSet};
use wtm_core::agg::ClosedWindow;
use wtm_messages::{HostCounts, ShareCounts, WindowQuery};

pub struct RecentWindows {
    retention_ms: i64,
    window_ms: i64,
    hosts: HashMap<String, BTreeMap<(i64, u32), ClosedWindow>>,
    newest_start_ms: i64,
    /// Every host ever archived by this process (one name each: bounded by the sites).
    seen: HashSet<String>,
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
        let windows = self.hosts.entry(w.key.host.clone()).or_default();
        windows.insert((start, w.key.partition), w);
        if start > self.newest_start_ms {
            self.newest_start_ms = start;
            let keep_from = start - self.retention_ms;
            for windows in self.hosts.values_mut() {
                while windows
                    .first_key_value()
                    .is_some_and(|((s, _), _)| *s < keep_from)
                {
                    windows.pop_first();
                }
            }
            self.hosts.retain(|_, w| !w.is_empty());
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
        let pick = |w: &BTreeMap<(i64, u32), ClosedWindow>| -> Vec<ClosedWindow> {
            w.range((from, 0)..(q.to_ms, 0))
                .map(|(_, v)| v.clone())
                .collect()
        };
        match &q.host {
            Some(h) => self.hosts.get(h).map(pick).unwrap_or_default(),
            None => self.hosts.values().flat_map(pick).collect(),
        }
    }

    /// Per-host counts of the newest `n` windows (relative to the newest window seen).
    pub fn counts(&self, n: usize) -> Vec<HostCounts> {
        let span = (n as i64)
            .saturating_sub(1)
            .max(0)
            .saturating_mul(self.window_ms);
        let from = self.newest_start_ms.saturating_sub(span);
        let mut out: Vec<HostCounts> = self
            .hosts
            .iter()
            .map(|(host, windows)| HostCounts {
                host: host.clone(),
                shares: windows
                    .range((from, 0)..)
                    .map(|(_, w)| ShareCounts::of(&w.key, &w.agg, true))
                    .collect(),
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
        });
        assert_eq!(
            all.iter().map(|w| w.agg.requests).collect::<Vec<_>>(),
            vec![7]
        );
        let t = r.counts(10);
        assert_eq!(
            t.iter()
                .map(|t| (t.host.as_str(), t.shares.iter().map(|s| s.requests).sum()))
                .collect::<Vec<(&str, u64)>>(),
            vec![("a", 7), ("b", 2)]
        );
    }
}
