//! The cardinality guard: one window of one partition keeps at most `limits.max_hosts` named
//! sites; events of further sites in that window are counted under [`OVERFLOW_HOST`], so memory
//! is bounded by the guard while every event is still counted once.
//!
//! It decides in the partition owner, before routing, so the overflow series has one key per
//! (window, partition) like any site (a window shard deciding alone would make one per shard).
//! Its decisions are a pure function of the partition's events in order: a window only gains
//! sites while it is open, an event for a closed window is late and never routed, and a restore
//! rebuilds the sets from the checkpoint's open windows — so a replay folds exactly the same
//! events as the first run.

use std::collections::BTreeMap;
use wtm_core::limits::OVERFLOW_HOST;
use wtm_core::window::WindowSpec;

pub struct HostGuard {
    max_hosts: usize,
    /// Window start → named sites it holds.
    windows: BTreeMap<i64, ahash::AHashSet<String>>,
}

impl HostGuard {
    pub fn new(max_hosts: usize) -> HostGuard {
        HostGuard {
            max_hosts: max_hosts.max(1),
            windows: BTreeMap::new(),
        }
    }

    /// Whether `host` keeps its name in the window starting at `start` (false: it folds).
    pub fn admit(&mut self, host: &str, start: i64) -> bool {
        let named = self.windows.entry(start).or_default();
        if named.contains(host) {
            return true;
        }
        if named.len() < self.max_hosts {
            named.insert(host.to_owned());
            return true;
        }
        false
    }

    /// Forget the windows `watermark_ms` has closed (no event of theirs is routed any more).
    pub fn prune(&mut self, spec: &WindowSpec, watermark_ms: i64) {
        while let Some((&start, _)) = self.windows.first_key_value() {
            if !spec.is_closed(start, watermark_ms) {
                break;
            }
            self.windows.pop_first();
        }
    }

    /// A site with an open window in the checkpoint being restored.
    pub fn restore(&mut self, host: &str, start: i64) {
        if host != OVERFLOW_HOST {
            self.windows
                .entry(start)
                .or_default()
                .insert(host.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_admits_max_hosts_and_a_restore_decides_the_same() {
        let spec = WindowSpec {
            size_ms: 60_000,
            out_of_orderness_ms: 0,
            allowed_lateness_ms: 0,
        };
        let mut g = HostGuard::new(2);
        let first: Vec<bool> = [("a", 0), ("b", 0), ("c", 0), ("a", 0), ("d", 60_000)]
            .iter()
            .map(|(h, s)| g.admit(h, *s))
            .collect();
        assert_eq!(first, [true, true, false, true, true]);
        // Restored from a checkpoint whose open windows hold a, b (window 0) and d (60 s).
        let mut r = HostGuard::new(2);
        for (h, s) in [("a", 0), ("b", 0), (OVERFLOW_HOST, 0), ("d", 60_000)] {
            r.restore(h, s);
        }
        for (h, s) in [("e", 0), ("b", 0), ("f", 60_000), ("g", 60_000)] {
            assert_eq!(g.admit(h, s), r.admit(h, s), "{h} in {s}");
        }
        assert!(!r.admit("g", 60_000));
        // A closed window frees its places.
        r.prune(&spec, 60_000);
        assert!(r.windows.len() == 1 && !r.admit("h", 60_000) && r.admit("h", 120_000));
    }
}
