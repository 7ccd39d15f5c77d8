//! Event-time window arithmetic: the one place that decides window bounds, watermarks, lateness
//! and closing. Everything else calls these; nothing re-derives them.

use serde::{Deserialize, Serialize};

/// Tumbling event-time windows with a bounded out-of-orderness and an allowed lateness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSpec {
    pub size_ms: i64,
    pub out_of_orderness_ms: i64,
    pub allowed_lateness_ms: i64,
}

/// Watermark before any event has been seen: every window is open.
pub const NO_WATERMARK: i64 = i64::MIN;

impl WindowSpec {
    /// Start of the window holding `ts` (windows are aligned to the epoch).
    pub fn start_of(&self, ts_ms: i64) -> i64 {
        ts_ms.saturating_sub(ts_ms.rem_euclid(self.size_ms))
    }

    pub fn end_of(&self, start_ms: i64) -> i64 {
        start_ms.saturating_add(self.size_ms)
    }

    /// The window starting at `start` is closed (final) once the watermark reaches its end plus
    /// the allowed lateness.
    pub fn is_closed(&self, start_ms: i64, watermark: i64) -> bool {
        watermark != NO_WATERMARK
            && self
                .end_of(start_ms)
                .saturating_add(self.allowed_lateness_ms)
                <= watermark
    }

    /// An event is late when its window is already closed at the watermark it arrives under.
    pub fn is_late(&self, ts_ms: i64, watermark: i64) -> bool {
        self.is_closed(self.start_of(ts_ms), watermark)
    }

    /// The watermark implied by the largest event time seen so far.
    pub fn watermark_for(&self, max_event_ms: i64) -> i64 {
        max_event_ms.saturating_sub(self.out_of_orderness_ms)
    }
}

/// Per-partition watermark state: the largest event time seen, plus a floor raised by idleness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkState {
    pub max_event_ms: i64,
    /// Raised when the partition idles; recorded in the checkpoint so replays decide the same.
    pub idle_floor_ms: i64,
}

impl Default for WatermarkState {
    fn default() -> Self {
        WatermarkState {
            max_event_ms: NO_WATERMARK,
            idle_floor_ms: NO_WATERMARK,
        }
    }
}

impl WatermarkState {
    pub fn observe(&mut self, ts_ms: i64) {
        self.max_event_ms = self.max_event_ms.max(ts_ms);
    }

    pub fn current(&self, spec: &WindowSpec) -> i64 {
        let from_events = if self.max_event_ms == NO_WATERMARK {
            NO_WATERMARK
        } else {
            spec.watermark_for(self.max_event_ms)
        };
        from_events.max(self.idle_floor_ms)
    }

    /// Advance after an idle period: as if an event at `now_ms` had been seen. Returns whether the
    /// watermark moved.
    pub fn advance_idle(&mut self, spec: &WindowSpec, now_ms: i64) -> bool {
        let target = spec.watermark_for(now_ms);
        if target > self.current(spec) {
            self.idle_floor_ms = target;
            true
        } else {
            false
        }
    }

    /// End of input: close every window.
    pub fn finish(&mut self) {
        self.idle_floor_ms = i64::MAX;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec() -> WindowSpec {
        WindowSpec {
            size_ms: 60_000,
            out_of_orderness_ms: 5_000,
            allowed_lateness_ms: 10_000,
        }
    }

    #[test]
    fn closing_boundaries() {
        let s = spec();
        assert_eq!(s.start_of(59_999), 0);
        assert_eq!(s.start_of(60_000), 60_000);
        assert_eq!(s.start_of(-1), -60_000);
        assert!(!s.is_closed(0, 69_999));
        assert!(s.is_closed(0, 70_000));
        assert!(!s.is_closed(0, NO_WATERMARK));
        let mut wm = WatermarkState::default();
        wm.observe(75_000);
        assert_eq!(wm.current(&s), 70_000);
        assert!(s.is_late(1_000, wm.current(&s)));
        assert!(!s.is_late(60_000, wm.current(&s)));
    }

    proptest! {
        #[test]
        fn window_contains_its_events(ts in -10_000_000_000i64..10_000_000_000, size in 1i64..10_000_000) {
            let s = WindowSpec { size_ms: size, out_of_orderness_ms: 0, allowed_lateness_ms: 0 };
            let start = s.start_of(ts);
            prop_assert!(start <= ts && ts < s.end_of(start));
            prop_assert_eq!(start.rem_euclid(size), 0);
        }

        #[test]
        fn watermark_is_monotonic_and_lateness_is_consistent(
            events in proptest::collection::vec(0i64..1_000_000, 1..200),
            idle in proptest::option::of(0i64..2_000_000),
        ) {
            let s = spec();
            let mut wm = WatermarkState::default();
            let mut last = NO_WATERMARK;
            for (i, ts) in events.iter().enumerate() {
                let before = wm.current(&s);
                // Late, computed independently of `start_of`/`is_closed`: the event's window
                // ends at the next multiple of the size above it; it is late once the
                // watermark has passed that end by the allowed lateness.
                let window_end = (ts.div_euclid(s.size_ms) + 1) * s.size_ms;
                let expected = before != NO_WATERMARK
                    && before - s.allowed_lateness_ms >= window_end;
                prop_assert_eq!(s.is_late(*ts, before), expected, "ts {} wm {}", ts, before);
                // Once late, always late: a watermark never un-closes a window.
                if expected {
                    prop_assert!(s.is_late(*ts, before.saturating_add(1 + ts.rem_euclid(7))));
                }
                wm.observe(*ts);
                if i == events.len() / 2 {
                    if let Some(now) = idle { wm.advance_idle(&s, now); }
                }
                let cur = wm.current(&s);
                prop_assert!(cur >= last);
                last = cur;
            }
        }
    }
}
