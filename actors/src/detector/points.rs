//! One host's judged windows, kept compact: the detector holds up to two days of them per host
//! (what a daily-seasonal model needs), for every host it judges. A `BTreeMap<i64, _>` of f64
//! points cost ~100 bytes a window (nodes half full); this is a sorted vector of 32-byte slots,
//! values and scores in f32, grown to its bound and no further.

use wtm_messages::WindowPoint;

#[derive(Debug, Clone, Copy)]
struct Slot {
    start_ms: i64,
    /// requests, error rate, p99 latency (ms).
    values: [f32; 3],
    /// Each metric's score (NaN: not judged here).
    scores: [f32; 3],
}

/// Windows by start, oldest first, at most `max` (the oldest leave first).
#[derive(Debug, Default)]
pub struct Points {
    slots: Vec<Slot>,
}

/// Slots dropped at once when the bound is passed (so dropping costs O(1) per window).
const SLACK: usize = 64;

impl Points {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn newest_start(&self) -> Option<i64> {
        self.slots.last().map(|s| s.start_ms)
    }

    fn find(&self, start_ms: i64) -> Result<usize, usize> {
        // Windows mostly arrive newest last: look there first.
        match self.slots.last() {
            Some(last) if last.start_ms < start_ms => Err(self.slots.len()),
            _ => self.slots.binary_search_by_key(&start_ms, |s| s.start_ms),
        }
    }

    /// Keep window `p` with its scores (replacing what was kept for its start); at most `max`.
    pub fn put(&mut self, p: &WindowPoint, scores: [f32; 3], max: usize) {
        self.put_slot(p, scores, true, max);
    }

    /// Keep window `p` unjudged, unless its start is kept already (then false).
    pub fn put_if_absent(&mut self, p: &WindowPoint, max: usize) -> bool {
        self.put_slot(p, [f32::NAN; 3], false, max)
    }

    fn put_slot(&mut self, p: &WindowPoint, scores: [f32; 3], replace: bool, max: usize) -> bool {
        let slot = Slot {
            start_ms: p.start_ms,
            values: [
                p.requests as f32,
                p.error_rate as f32,
                p.latency_p99_ms as f32,
            ],
            scores,
        };
        let put = match self.find(p.start_ms) {
            Ok(i) if replace => {
                self.slots[i] = slot;
                true
            }
            Ok(_) => false,
            Err(i) => {
                if self.slots.len() == self.slots.capacity() {
                    // Double up to the bound, never past it.
                    let cap = self.slots.capacity();
                    let room = (max + SLACK).saturating_sub(cap);
                    self.slots.reserve_exact(cap.max(8).min(room.max(1)));
                }
                self.slots.insert(i, slot);
                true
            }
        };
        if self.slots.len() >= max + SLACK {
            self.slots.drain(..self.slots.len() - max);
        }
        put
    }

    /// Up to `n` windows before `start_ms`, newest first.
    pub fn before(&self, start_ms: i64, n: usize) -> impl Iterator<Item = WindowPoint> + '_ {
        let end = self.find(start_ms).unwrap_or_else(|i| i);
        self.slots[..end].iter().rev().take(n).map(point)
    }

    /// The newest `max` windows, oldest first (what a model is fitted on).
    pub fn tail(&self, max: usize) -> impl Iterator<Item = WindowPoint> + '_ {
        let from = self.slots.len().saturating_sub(max);
        self.slots[from..].iter().map(point)
    }

    /// Judged windows starting in `[from, to)`: (start, scores).
    pub fn scores(&self, from_ms: i64, to_ms: i64) -> impl Iterator<Item = (i64, [f32; 3])> + '_ {
        let lo = self.find(from_ms).unwrap_or_else(|i| i);
        let hi = self.find(to_ms).unwrap_or_else(|i| i);
        self.slots[lo..hi.max(lo)]
            .iter()
            .filter(|s| s.scores.iter().any(|x| !x.is_nan()))
            .map(|s| (s.start_ms, s.scores))
    }
}

fn point(s: &Slot) -> WindowPoint {
    WindowPoint {
        start_ms: s.start_ms,
        requests: s.values[0] as f64,
        error_rate: s.values[1] as f64,
        latency_p99_ms: s.values[2] as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(i: i64, requests: f64) -> WindowPoint {
        WindowPoint {
            start_ms: i * 60_000,
            requests,
            error_rate: 0.01,
            latency_p99_ms: 200.0,
        }
    }

    #[test]
    fn kept_in_order_bounded_and_replaced_by_start() {
        let mut pts = Points::default();
        for i in (0..25).rev().map(|i| 2 * i) {
            pts.put(&p(i, i as f64), [0.1; 3], 100);
        }
        pts.put_if_absent(&p(7, 7.0), 100);
        pts.put_if_absent(&p(8, -1.0), 100); // kept already: unchanged
        pts.put(&p(10, 99.0), [0.9; 3], 100);
        let before: Vec<f64> = pts.before(12 * 60_000, 4).map(|w| w.requests).collect();
        assert_eq!(before, [99.0, 8.0, 7.0, 6.0]);
        let tail: Vec<f64> = pts.tail(3).map(|w| w.requests).collect();
        assert_eq!(tail, [44.0, 46.0, 48.0]);
        let scored: Vec<i64> = pts
            .scores(6 * 60_000, 9 * 60_000)
            .map(|(s, _)| s / 60_000)
            .collect();
        assert_eq!(scored, [6, 8], "window 7 was never judged");
        // The bound: the oldest leave, and memory stops growing at it.
        for i in 50..1_000 {
            pts.put(&p(i, i as f64), [0.1; 3], 100);
        }
        assert!(pts.len() >= 100 && pts.len() < 100 + SLACK);
        assert_eq!(pts.newest_start(), Some(999 * 60_000));
        assert!(
            pts.slots.capacity() <= 100 + SLACK,
            "{}",
            pts.slots.capacity()
        );
        assert_eq!(pts.tail(1).map(|w| w.requests).collect::<Vec<_>>(), [999.0]);
    }
}
