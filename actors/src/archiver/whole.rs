//! Whole windows for the detector. A host whose records are spread over partitions (producers
//! that do not key by host) closes one partial window per partition, at different moments; the
//! detector must judge the host's whole window once, not each share as it arrives. Partials wait
//! here until every partition this node owns has written everything up to a watermark that
//! closes the window — or `max_wait` passes, and then the window goes out marked incomplete.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use wtm_core::agg::{ClosedWindow, WindowAgg, WindowKey};
use wtm_core::sketch::{Quantiles, SketchError};
use wtm_core::window::WindowSpec;
use wtm_messages::WindowPoint;

/// A host's window merged over the partitions that held a share of it.
#[derive(Debug, Clone)]
pub struct WholeWindow {
    pub host: String,
    pub start_ms: i64,
    pub agg: JudgeInput,
    /// Every owned partition had closed the window; false when it went out on `max_wait`.
    pub complete: bool,
}

/// What judging needs of a window: its requests by status class and its latency sketch. The
/// rest of a share (distinct clients, top-K: most of its size) is in the lake and the history
/// store already, and a window can wait here a while (for the slowest partition), thousands of
/// sites at a time.
#[derive(Debug, Clone, Default)]
pub struct JudgeInput {
    pub requests: u64,
    pub status_class: [u64; 5],
    pub latency: Quantiles,
}

impl JudgeInput {
    fn of(agg: &WindowAgg) -> JudgeInput {
        JudgeInput {
            requests: agg.requests,
            status_class: agg.status_class,
            latency: agg.latency.clone(),
        }
    }

    fn merge(&mut self, o: &JudgeInput) -> Result<(), SketchError> {
        self.requests += o.requests;
        for (a, b) in self.status_class.iter_mut().zip(o.status_class) {
            *a += b;
        }
        self.latency.merge(&o.latency)
    }

    /// As a share to hand over: only what judging reads is set.
    fn to_agg(&self) -> WindowAgg {
        WindowAgg {
            requests: self.requests,
            status_class: self.status_class,
            latency: self.latency.clone(),
            ..WindowAgg::default()
        }
    }

    /// Share of requests answered 5xx.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.status_class[4] as f64 / self.requests as f64
        }
    }

    /// The detector's point of the window starting at `start_ms`.
    pub fn point(&self, start_ms: i64) -> WindowPoint {
        WindowPoint {
            start_ms,
            requests: self.requests as f64,
            error_rate: self.error_rate(),
            latency_p99_ms: self.latency.quantile(0.99).unwrap_or(0.0),
        }
    }
}

/// A window's shares so far, kept apart per partition until it goes out: a share seen twice
/// (a re-publication, or forwarded by a node whose view lagged) counts once, and the shares of a
/// host whose home moved can be handed over as they are. Usually one partition holds a host:
/// a vector, not a map.
struct Pending {
    since: Instant,
    shares: Vec<(u32, JudgeInput)>,
}

pub struct WholeWindows {
    spec: WindowSpec,
    max_wait: Duration,
    /// Per partition: every window its watermark closes is written.
    progress: BTreeMap<u32, i64>,
    pending: BTreeMap<(i64, String), Pending>,
    /// Per host, the windows judged: a share of a window judged already (re-published by a
    /// partition's next owner as it replays, or delayed past the wait) is not judged again —
    /// here, or at the host's next home, which receives this log with the host.
    judged: std::collections::HashMap<String, JudgedLog>,
}

/// Which of a host's recent windows were judged, in 16 bytes: the newest judged start and one
/// bit for each of the 63 windows before it. A window older than that counts as judged (no
/// replay reaches back an hour).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JudgedLog {
    newest: i64,
    bits: u64,
}

impl JudgedLog {
    fn new(start: i64) -> JudgedLog {
        JudgedLog {
            newest: start,
            bits: 1,
        }
    }

    fn back(&self, start: i64, size_ms: i64) -> i64 {
        (self.newest - start) / size_ms.max(1)
    }

    pub fn contains(&self, start: i64, size_ms: i64) -> bool {
        if start > self.newest {
            return false;
        }
        let k = self.back(start, size_ms);
        k >= 64 || self.bits & (1 << k) != 0
    }

    pub fn mark(&mut self, start: i64, size_ms: i64) {
        if start > self.newest {
            let shift = (start - self.newest) / size_ms.max(1);
            self.bits = if shift >= 64 { 0 } else { self.bits << shift };
            self.newest = start;
            self.bits |= 1;
        } else {
            let k = self.back(start, size_ms);
            if k < 64 {
                self.bits |= 1 << k;
            }
        }
    }

    /// The judged starts this log knows exactly, oldest first.
    pub fn starts(&self, size_ms: i64) -> Vec<i64> {
        (0..64)
            .rev()
            .filter(|k| self.bits & (1 << k) != 0)
            .map(|k| self.newest - k * size_ms)
            .collect()
    }
}

impl WholeWindows {
    pub fn new(spec: WindowSpec, max_wait: Duration) -> WholeWindows {
        WholeWindows {
            spec,
            max_wait,
            progress: BTreeMap::new(),
            pending: BTreeMap::new(),
            judged: Default::default(),
        }
    }

    /// A partition's share of a window, now in the lake. A share seen before (a re-publication
    /// after a crash) is not added twice; false when its window was judged already.
    pub fn add(&mut self, w: &ClosedWindow, now: Instant) -> bool {
        let key = (w.key.start_ms, w.key.host.clone());
        let size = self.spec.size_ms;
        let judged = self
            .judged
            .get(&w.key.host)
            .is_some_and(|log| log.contains(w.key.start_ms, size));
        if judged && !self.pending.contains_key(&key) {
            return false;
        }
        let p = self.pending.entry(key).or_insert_with(|| Pending {
            since: now,
            shares: Vec::new(),
        });
        if !p.shares.iter().any(|(q, _)| *q == w.key.partition) {
            p.shares.push((w.key.partition, JudgeInput::of(&w.agg)));
        }
        true
    }

    /// Take out the waiting shares of hosts `moved` accepts (their home is now another node),
    /// to hand them over: the shares of at most `limit` windows (None: all). The bool says
    /// whether some were left.
    pub fn take_hosts(
        &mut self,
        moved: impl Fn(&str) -> bool,
        limit: Option<usize>,
    ) -> (Vec<ClosedWindow>, bool) {
        let keys: Vec<(i64, String)> = self
            .pending
            .keys()
            .filter(|(_, host)| moved(host))
            .cloned()
            .collect();
        let left = limit.is_some_and(|n| keys.len() > n);
        let mut out = Vec::new();
        for (start, host) in keys.into_iter().take(limit.unwrap_or(usize::MAX)) {
            let Some(p) = self.pending.remove(&(start, host.clone())) else {
                continue;
            };
            out.extend(p.shares.into_iter().map(|(partition, j)| ClosedWindow {
                key: WindowKey {
                    host: host.clone(),
                    start_ms: start,
                    partition,
                },
                end_ms: start + self.spec.size_ms,
                agg: j.to_agg(),
            }));
        }
        (out, left)
    }

    /// Take out the judged logs of at most `limit` hosts `moved` accepts, for their new home.
    /// The bool says whether some were left.
    pub fn take_judged(
        &mut self,
        moved: impl Fn(&str) -> bool,
        limit: usize,
    ) -> (Vec<(String, Vec<i64>)>, bool) {
        let hosts: Vec<String> = self.judged.keys().filter(|h| moved(h)).cloned().collect();
        let left = hosts.len() > limit;
        let size = self.spec.size_ms;
        let out = hosts
            .into_iter()
            .take(limit)
            .filter_map(|h| {
                let log = self.judged.remove(&h)?;
                Some((h, log.starts(size)))
            })
            .collect();
        (out, left)
    }

    /// Windows of `host` its previous home judged: never judged here. Returns how many waiting
    /// shares that drops (replays that reached this home first).
    pub fn judged_elsewhere(&mut self, host: &str, starts: &[i64]) -> usize {
        let size = self.spec.size_ms;
        let mut dropped = 0;
        for &start in starts {
            match self.judged.get_mut(host) {
                Some(log) => log.mark(start, size),
                None => {
                    self.judged.insert(host.to_owned(), JudgedLog::new(start));
                }
            }
            if let Some(p) = self.pending.remove(&(start, host.to_owned())) {
                dropped += p.shares.len();
            }
        }
        dropped
    }

    /// Everything `partition` closes at `watermark_ms` is written.
    pub fn progress(&mut self, partition: u32, watermark_ms: i64) {
        let e = self.progress.entry(partition).or_insert(watermark_ms);
        *e = (*e).max(watermark_ms);
    }

    /// Windows to judge now: those every partition in `owned` has closed, and those waiting
    /// longer than `max_wait` (incomplete), oldest first.
    pub fn ready(
        &mut self,
        owned: &[u32],
        now: Instant,
        judge_here: impl Fn(&str) -> bool,
    ) -> Result<Vec<WholeWindow>, SketchError> {
        let spec = self.spec;
        let closed_everywhere = |start: i64, progress: &BTreeMap<u32, i64>| {
            owned
                .iter()
                .all(|p| progress.get(p).is_some_and(|wm| spec.is_closed(start, *wm)))
        };
        let due: Vec<(i64, String)> = self
            .pending
            .iter()
            .filter(|((start, host), p)| {
                judge_here(host)
                    && (closed_everywhere(*start, &self.progress)
                        || now.saturating_duration_since(p.since) >= self.max_wait)
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::with_capacity(due.len());
        for k in due {
            let Some(p) = self.pending.remove(&k) else {
                continue;
            };
            // Usually one partition held the host: its share is the whole window as it is (a
            // merge would build a full latency sketch from a few values, ~1 KiB for each of
            // thousands of windows that come out together when a slow partition catches up).
            let mut shares = p.shares.into_iter().map(|(_, share)| share);
            let mut agg = shares.next().unwrap_or_default();
            for share in shares {
                agg.merge(&share)?;
            }
            self.judged
                .entry(k.1.clone())
                .or_insert_with(|| JudgedLog::new(k.0))
                .mark(k.0, spec.size_ms);
            out.push(WholeWindow {
                complete: closed_everywhere(k.0, &self.progress),
                host: k.1,
                start_ms: k.0,
                agg,
            });
        }
        Ok(out)
    }

    pub fn waiting(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        w.add(&share("a", 0, 0, 10), t0);
        w.add(&share("a", 0, 0, 10), t0); // re-published: counted once
        w.progress(0, 65_000);
        w.progress(1, 65_000);
        assert!(
            w.ready(&owned, t0, |_| true).unwrap().is_empty(),
            "partition 2 has not closed it yet"
        );
        w.add(&share("a", 0, 1, 7), t0);
        w.progress(2, 64_999);
        assert!(
            w.ready(&owned, t0, |_| true).unwrap().is_empty(),
            "64.999 s does not close [0, 60 s) + 5 s"
        );
        // Partition 2 held no share of the host; its progress alone completes the window.
        w.progress(2, 65_000);
        let out = w.ready(&owned, t0, |_| true).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].agg.requests, out[0].complete), (17, true));
        assert!(w.ready(&owned, t0, |_| true).unwrap().is_empty() && w.waiting() == 0);
        // Partition 1's next owner replays and re-publishes its share: not judged again.
        assert!(!w.add(&share("a", 0, 1, 7), t0));
        assert!(w.ready(&owned, t0, |_| true).unwrap().is_empty() && w.waiting() == 0);
    }

    #[test]
    fn the_judged_log_remembers_64_windows_and_travels_with_the_host() {
        let mut log = JudgedLog::new(600);
        log.mark(0, 60);
        log.mark(1200, 60); // newest moves on; 0 and 600 stay
        assert!(log.contains(0, 60) && log.contains(600, 60) && log.contains(1200, 60));
        assert!(!log.contains(60, 60) && !log.contains(1260, 60));
        assert_eq!(log.starts(60), vec![0, 600, 1200]);
        log.mark(1200 + 64 * 60, 60);
        assert!(log.contains(60, 60), "older than 64 windows: judged");
        assert_eq!(log.starts(60), vec![1200 + 64 * 60]);

        // The old home judged window 0 of "a"; a replayed share reached the new home first.
        let t0 = Instant::now();
        let mut old = WholeWindows::new(spec(), Duration::from_secs(120));
        old.add(&share("a", 0, 0, 10), t0);
        old.progress(0, 65_000);
        assert_eq!(old.ready(&[0], t0, |_| true).unwrap().len(), 1);
        let mut new = WholeWindows::new(spec(), Duration::from_secs(120));
        assert!(new.add(&share("a", 0, 0, 10), t0));
        for (host, starts) in old.take_judged(|h| h == "a", 10).0 {
            assert_eq!(new.judged_elsewhere(&host, &starts), 1);
        }
        new.progress(0, 65_000);
        assert!(
            new.ready(&[0], t0, |_| true).unwrap().is_empty(),
            "judged once, at the old home"
        );
        assert!(!new.add(&share("a", 0, 1, 3), t0));
    }

    #[test]
    fn a_silent_partition_holds_a_window_only_until_max_wait() {
        let t0 = Instant::now();
        let mut w = WholeWindows::new(spec(), Duration::from_secs(120));
        w.add(&share("a", 0, 0, 10), t0);
        w.progress(0, 65_000);
        assert!(w
            .ready(&[0, 1], t0 + Duration::from_secs(119), |_| true)
            .unwrap()
            .is_empty());
        // A host not homed here is never judged here, however long it waits.
        assert!(w
            .ready(&[0, 1], t0 + Duration::from_secs(500), |h| h != "a")
            .unwrap()
            .is_empty());
        let out = w
            .ready(&[0, 1], t0 + Duration::from_secs(120), |_| true)
            .unwrap();
        assert_eq!((out.len(), out[0].complete), (1, false));
        // A host whose home moved hands its waiting shares over as they came.
        w.add(&share("m", 0, 3, 4), t0);
        w.add(&share("m", 0, 4, 5), t0);
        w.add(&share("m", 60_000, 3, 6), t0);
        let (first, left) = w.take_hosts(|h| h == "m", Some(1));
        assert_eq!(
            (first.len(), left),
            (2, true),
            "one window: both its shares"
        );
        let (rest, left) = w.take_hosts(|h| h == "m", None);
        assert_eq!((rest.len(), left), (1, false));
        let moved = first;
        let got: Vec<(u32, u64)> = moved
            .iter()
            .map(|s| (s.key.partition, s.agg.requests))
            .collect();
        assert_eq!(got, vec![(3, 4), (4, 5)]);
        assert_eq!(w.waiting(), 0);
        // A partition no longer owned here (revoked) is not waited for.
        w.add(&share("b", 60_000, 0, 1), t0);
        w.progress(0, 125_000);
        assert_eq!(w.ready(&[0], t0, |_| true).unwrap().len(), 1);
    }
}
