//! Whole windows for the detector. A host whose records are spread over partitions (producers
//! that do not key by host) closes one partial window per partition, at different moments; the
//! detector must judge the host's whole window once, not each share as it arrives. Partials wait
//! here until every partition this node owns has written everything up to a watermark that
//! closes the window — or `max_wait` passes, and then the window goes out marked incomplete.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use wtm_core::agg::{ClosedWindow, WindowAgg};
use wtm_core::sketch::SketchError;
use wtm_core::window::WindowSpec;

/// A host's window merged over the partitions that held a share of it.
#[derive(Debug, Clone)]
pub struct WholeWindow {
    pub host: String,
    pub start_ms: i64,
    pub agg: WindowAgg,
    /// Every owned partition had closed the window; false when it went out on `max_wait`.
    pub complete: bool,
}

struct Pending {
    agg: WindowAgg,
    since: Instant,
    partitions: BTreeSet<u32>,
}

pub struct WholeWindows {
    spec: WindowSpec,
    max_wait: Duration,
    /// Per partition: every window its watermark closes is written.
    progress: BTreeMap<u32, i64>,
    pending: BTreeMap<(i64, String), Pending>,
}

impl WholeWindows {
    pub fn new(spec: WindowSpec, max_wait: Duration) -> WholeWindows {
        WholeWindows {
            spec,
            max_wait,
            progress: BTreeMap::new(),
            pending: BTreeMap::new(),
        }
    }

    /// A partition's share of a window, now in the lake. A share seen before (a re-publication
    /// after a crash) is not added twice.
    pub fn add(&mut self, w: &ClosedWindow, now: Instant) -> Result<(), SketchError> {
        let key = (w.key.start_ms, w.key.host.clone());
        let p = self.pending.entry(key).or_insert_with(|| Pending {
            agg: WindowAgg::default(),
            since: now,
            partitions: BTreeSet::new(),
        });
        if p.partitions.insert(w.key.partition) {
            p.agg.merge(&w.agg)?;
        }
        Ok(())
    }

    /// Everything `partition` closes at `watermark_ms` is written.
    pub fn progress(&mut self, partition: u32, watermark_ms: i64) {
        let e = self.progress.entry(partition).or_insert(watermark_ms);
        *e = (*e).max(watermark_ms);
    }

    /// Windows to judge now: those every partition in `owned` has closed, and those waiting
    /// longer than `max_wait` (incomplete), oldest first.
    pub fn ready(&mut self, owned: &[u32], now: Instant) -> Vec<WholeWindow> {
        let spec = self.spec;
        let closed_everywhere = |start: i64, progress: &BTreeMap<u32, i64>| {
            owned
                .iter()
                .all(|p| progress.get(p).is_some_and(|wm| spec.is_closed(start, *wm)))
        };
        let due: Vec<(i64, String)> = self
            .pending
            .iter()
            .filter(|((start, _), p)| {
                closed_everywhere(*start, &self.progress)
                    || now.saturating_duration_since(p.since) >= self.max_wait
            })
            .map(|(k, _)| k.clone())
            .collect();
        due.into_iter()
            .filter_map(|k| {
                let p = self.pending.remove(&k)?;
                Some(WholeWindow {
                    complete: closed_everywhere(k.0, &self.progress),
                    host: k.1,
                    start_ms: k.0,
                    agg: p.agg,
                })
            })
            .collect()
    }

    pub fn waiting(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wtm_core::agg::WindowKey;

    fn share(host: &str, start: i64, partition: u32, requests: u64) -> ClosedWindow {
        ClosedWindow {
            key: WindowKey {
                host: host.into(),
                start_ms: start,
                partition,
            },
            end_ms: start + 60_000,
            agg: WindowAgg {
                requests,
                ..Default::default()
            },
        }
    }

    fn spec() -> WindowSpec {
        WindowSpec {
            size_ms: 60_000,
            out_of_orderness_ms: 5_000,
            allowed_lateness_ms: 5_000,
        }
    }

    #[test]
    fn a_window_goes_out_once_whole_after_every_owned_partition_closed_it() {
        let t0 = Instant::now();
        let mut w = WholeWindows::new(spec(), Duration::from_secs(120));
        let owned = [0, 1, 2];
        w.add(&share("a", 0, 0, 10), t0).unwrap();
        w.add(&share("a", 0, 0, 10), t0).unwrap(); // re-published: counted once
        w.progress(0, 65_000);
        w.progress(1, 65_000);
        assert!(
            w.ready(&owned, t0).is_empty(),
            "partition 2 has not closed it yet"
        );
        w.add(&share("a", 0, 1, 7), t0).unwrap();
        w.progress(2, 64_999);
        assert!(
            w.ready(&owned, t0).is_empty(),
            "64.999 s does not close [0, 60 s) + 5 s"
        );
        // Partition 2 held no share of the host; its progress alone completes the window.
        w.progress(2, 65_000);
        let out = w.ready(&owned, t0);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].agg.requests, out[0].complete), (17, true));
        assert!(w.ready(&owned, t0).is_empty() && w.waiting() == 0);
    }

    #[test]
    fn a_silent_partition_holds_a_window_only_until_max_wait() {
        let t0 = Instant::now();
        let mut w = WholeWindows::new(spec(), Duration::from_secs(120));
        w.add(&share("a", 0, 0, 10), t0).unwrap();
        w.progress(0, 65_000);
        assert!(w.ready(&[0, 1], t0 + Duration::from_secs(119)).is_empty());
        let out = w.ready(&[0, 1], t0 + Duration::from_secs(120));
        assert_eq!((out.len(), out[0].complete), (1, false));
        // A partition no longer owned here (revoked) is not waited for.
        w.add(&share("b", 60_000, 0, 1), t0).unwrap();
        w.progress(0, 125_000);
        assert_eq!(w.ready(&[0], t0).len(), 1);
    }
}
