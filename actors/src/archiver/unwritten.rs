//! Closed windows their owners cut but the lake does not hold yet. A window leaves its shard at
//! the owner's checkpoint and reaches the history store only once its lake write is done, which
//! takes a group commit at best and a whole outage at worst; without this set the API's series
//! and `/v1/hosts` would lose the newest closed window at every close (a site with one window
//! would be "unknown"). The owner tells the archiver each publication it cuts and, at a restore,
//! a fence or a stop, its whole set; a `Written` takes the windows out (the history has them
//! then). A share seen both here and in the history is the same share (its content is fixed
//! when it is cut, and a replay cuts it again identically): the API's merges keep one per
//! (window, partition).
//!
//! The publications are the owners' own `Arc`s, and the archiver's handler only moves `Arc`s:
//! a query copies windows and computes counts from [`Unwritten`] off the mailbox.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use wtm_core::agg::{ClosedWindow, Detail, Share, ShareCounts, WindowKey};
use wtm_core::checkpoint::Publication;
use wtm_messages::{HostCounts, HostsPage};

/// One unwritten window: its publication and its place in `closed`.
#[derive(Clone)]
pub struct Unwritten {
    publication: Arc<Publication>,
    index: usize,
}

impl Unwritten {
    fn window(&self) -> &ClosedWindow {
        &self.publication.closed[self.index]
    }

    /// The window's share, with its top-K sketches or (as a series needs it) without.
    pub fn to_share(&self, detail: Detail) -> (WindowKey, Share) {
        let w = self.window();
        let agg = match detail {
            Detail::Top => w.agg.clone(),
            Detail::Stats | Detail::Sketches => w.agg.without_top(),
        };
        (w.key.clone(), Share::Agg(Box::new(agg)))
    }
}

/// Hosts' unwritten windows, sorted by host, as counts (a sketch walk each: off the mailbox).
pub fn unwritten_counts(hosts: Vec<(String, Vec<Unwritten>)>) -> Vec<HostCounts> {
    let mut out: Vec<HostCounts> = hosts
        .into_iter()
        .map(|(host, windows)| HostCounts {
            host,
            shares: windows
                .iter()
                .map(|u| {
                    let w = u.window();
                    ShareCounts::closed(&w.key, &w.agg.series_stats())
                })
                .collect(),
        })
        .collect();
    out.sort_unstable_by(|a, b| a.host.cmp(&b.host));
    out
}

#[derive(Default)]
pub struct UnwrittenWindows {
    /// Per host, by (start, partition).
    hosts: HashMap<String, BTreeMap<(i64, u32), Unwritten>>,
}

impl UnwrittenWindows {
    /// A publication an owner cut (its windows replace any of the same key).
    pub fn cut(&mut self, p: &Arc<Publication>) {
        for (index, w) in p.closed.iter().enumerate() {
            let entry = Unwritten {
                publication: Arc::clone(p),
                index,
            };
            let windows = match self.hosts.get_mut(&w.key.host) {
                Some(h) => h,
                None => self.hosts.entry(w.key.host.clone()).or_default(),
            };
            windows.insert((w.key.start_ms, w.key.partition), entry);
        }
    }

    /// `partition`'s whole set now (a restored owner's unpublished, or none).
    pub fn reset(&mut self, partition: u32, unpublished: &[Arc<Publication>]) {
        self.hosts.retain(|_, windows| {
            windows.retain(|(_, p), _| *p != partition);
            !windows.is_empty()
        });
        for p in unpublished {
            self.cut(p);
        }
    }

    /// Sites with an unwritten window.
    pub fn hosts(&self) -> impl Iterator<Item = &String> {
        self.hosts.keys()
    }

    /// A publication is in the lake and the history store.
    pub fn written(&mut self, p: &Publication) {
        for w in &p.closed {
            let Some(windows) = self.hosts.get_mut(&w.key.host) else {
                continue;
            };
            windows.remove(&(w.key.start_ms, w.key.partition));
            if windows.is_empty() {
                self.hosts.remove(&w.key.host);
            }
        }
    }

    /// `host`'s unwritten windows starting in `[from_ms, to_ms)`; with `last_windows`, only
    /// those of its newest that many window starts there (`window_ms` apart), as the history
    /// store reads a default range.
    pub fn windows(
        &self,
        host: &str,
        from_ms: i64,
        to_ms: i64,
        last_windows: Option<i64>,
        window_ms: i64,
    ) -> Vec<Unwritten> {
        let Some(windows) = self.hosts.get(host) else {
            return Vec::new();
        };
        if from_ms >= to_ms {
            return Vec::new();
        }
        let mut from = from_ms;
        if let Some(n) = last_windows {
            let Some(((newest, _), _)) = windows.range((from_ms, 0)..(to_ms, 0)).next_back() else {
                return Vec::new();
            };
            let span = n.saturating_sub(1).max(0).saturating_mul(window_ms);
            from = from.max(newest.saturating_sub(span));
        }
        windows
            .range((from, 0)..(to_ms, 0))
            .map(|(_, u)| u.clone())
            .collect()
    }

    /// Every unwritten window of the sites on `page`, by host (for [`unwritten_counts`]).
    pub fn by_host(&self, page: HostsPage) -> Vec<(String, Vec<Unwritten>)> {
        self.hosts
            .iter()
            .filter(|(host, _)| page.holds(host))
            .map(|(host, windows)| (host.clone(), windows.values().cloned().collect()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wtm_core::agg::{WindowAgg, WindowKey};
    use wtm_core::checkpoint::Publication;
    use wtm_core::window::WatermarkState;

    fn publication(partition: u32, windows: &[(&str, i64, u64)]) -> Arc<Publication> {
        Arc::new(Publication {
            partition,
            closed: windows
                .iter()
                .map(|(host, start_ms, requests)| ClosedWindow {
                    key: WindowKey {
                        host: host.to_string(),
                        start_ms: *start_ms,
                        partition,
                    },
                    end_ms: start_ms + 60,
                    agg: WindowAgg {
                        requests: *requests,
                        ..Default::default()
                    },
                })
                .collect(),
            from_offset: 0,
            to_offset: 0,
            records_watermark: WatermarkState::default(),
            created_ms: 0,
            late: vec![],
            invalid: vec![],
            raw: Default::default(),
            seq: 0,
        })
    }

    fn len(u: &UnwrittenWindows) -> usize {
        u.hosts.values().map(|w| w.len()).sum()
    }

    fn requests(u: &UnwrittenWindows, host: &str) -> Vec<(i64, u32, u64)> {
        u.windows(host, i64::MIN, i64::MAX, None, 60)
            .iter()
            .map(|u| u.to_share(Detail::Stats))
            .map(|(k, share)| (k.start_ms, k.partition, share.stats().requests))
            .collect()
    }

    #[test]
    fn windows_stay_until_written_or_reset() {
        let mut u = UnwrittenWindows::default();
        let a = publication(0, &[("a.com", 0, 5), ("b.com", 0, 7)]);
        let b = publication(1, &[("a.com", 0, 2)]);
        let c = publication(0, &[("a.com", 60, 9)]);
        u.cut(&a);
        u.cut(&b);
        u.cut(&c);
        assert_eq!(len(&u), 4);
        assert_eq!(requests(&u, "a.com"), [(0, 0, 5), (0, 1, 2), (60, 0, 9)]);
        assert_eq!(u.windows("a.com", 60, 120, None, 60).len(), 1);
        assert_eq!(u.windows("a.com", 0, 60, None, 60).len(), 2);
        assert!(u.windows("a.com", 60, 60, None, 60).is_empty());
        // The newest window start only, then the newest two (a default series range).
        assert_eq!(u.windows("a.com", i64::MIN, i64::MAX, Some(1), 60).len(), 1);
        assert_eq!(u.windows("a.com", i64::MIN, i64::MAX, Some(2), 60).len(), 3);
        assert_eq!(u.windows("a.com", i64::MIN, 60, Some(1), 60).len(), 2);
        let counts = unwritten_counts(u.by_host(HostsPage::ALL));
        assert_eq!(counts.len(), 2);
        assert_eq!(counts[0].shares.len(), 3);
        assert!(counts[0].shares.iter().all(|s| s.is_final));

        u.written(&a);
        assert_eq!(requests(&u, "a.com"), [(0, 1, 2), (60, 0, 9)]);
        assert!(requests(&u, "b.com").is_empty());
        // A restored owner of partition 0 has one publication left; partition 1 is untouched.
        let c2 = publication(0, &[("a.com", 60, 9), ("c.com", 60, 1)]);
        u.reset(0, &[c2]);
        assert_eq!(requests(&u, "a.com"), [(0, 1, 2), (60, 0, 9)]);
        assert_eq!(len(&u), 3);
        // Written twice (an owner that timed out and wrote again): no harm.
        u.written(&c);
        u.written(&c);
        assert_eq!(requests(&u, "c.com"), [(60, 0, 1)]);
        u.reset(0, &[]);
        u.reset(1, &[]);
        assert!(u.hosts.is_empty());
    }
}
