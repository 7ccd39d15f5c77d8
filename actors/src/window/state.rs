//! Open windows of every partition routed to this shard.

use std::collections::{BTreeMap, HashMap};
use wtm_core::agg::{ClosedWindow, Detail, WindowAgg, WindowKey, WindowKeyRef};
use wtm_core::checkpoint::{encode, OpenWindows};
use wtm_core::event::BotCache;
use wtm_core::records::EventColumns;
use wtm_core::window::WindowSpec;
use wtm_messages::{CutResult, HostCounts, HostsPage, OpenCut, ShareCounts, WindowQuery};

/// partition → host → window start → aggregate. Keyed by host first so that adding an event
/// needs no allocation for the lookup.
pub struct WindowState {
    spec: WindowSpec,
    partitions: HashMap<u32, ahash::AHashMap<String, BTreeMap<i64, OpenWindow>>>,
    bots: BotCache,
}

/// An open window, and whether it changed since the last cut that encoded open windows (so a
/// checkpoint between two whole ones encodes only what changed: [`OpenCut::Changed`]).
#[derive(Default)]
struct OpenWindow {
    agg: WindowAgg,
    changed: bool,
}

impl WindowState {
    pub fn new(spec: WindowSpec) -> WindowState {
        WindowState {
            spec,
            partitions: HashMap::new(),
            bots: BotCache::default(),
        }
    }

    pub fn apply(&mut self, partition: u32, events: &EventColumns) {
        let hosts = self.partitions.entry(partition).or_default();
        for e in events.views() {
            let windows = match hosts.get_mut(e.host) {
                Some(w) => w,
                None => hosts.entry(e.host.to_owned()).or_default(),
            };
            let w = windows.entry(self.spec.start_of(e.ts_ms)).or_default();
            w.agg.add_judged(&e, self.bots.is_bot(e.user_agent));
            w.changed = true;
        }
    }

    /// Remove and return the windows the watermark has closed; encode the ones still open that
    /// `open` asks for.
    pub fn cut(
        &mut self,
        partition: u32,
        watermark_ms: i64,
        open: OpenCut,
    ) -> Result<CutResult, String> {
        let mut closed = Vec::new();
        let Some(hosts) = self.partitions.get_mut(&partition) else {
            return Ok(CutResult {
                closed,
                open: Vec::new(),
            });
        };
        for (host, windows) in hosts.iter_mut() {
            let still_open = windows.split_off(&first_open(&self.spec, windows, watermark_ms));
            for (start, OpenWindow { mut agg, .. }) in std::mem::replace(windows, still_open) {
                agg.close();
                closed.push(ClosedWindow {
                    key: WindowKey {
                        host: host.clone(),
                        start_ms: start,
                        partition,
                    },
                    end_ms: self.spec.end_of(start),
                    agg,
                });
            }
        }
        hosts.retain(|_, w| !w.is_empty());
        closed.sort_by(|a, b| a.key.cmp(&b.key));
        // Encoded where they are: the bytes of an `OpenWindows`, without a copy of each window.
        // A window encoded now is unchanged as of this cut (the checkpoint being cut holds it).
        let all = open == OpenCut::All;
        let open: Vec<(WindowKeyRef, &WindowAgg)> = hosts
            .iter_mut()
            .filter(|_| open != OpenCut::None)
            .flat_map(|(host, windows)| {
                windows
                    .iter_mut()
                    .filter(move |(_, w)| all || w.changed)
                    .map(move |(start, w)| {
                        w.changed = false;
                        let key = WindowKeyRef {
                            host,
                            start_ms: *start,
                            partition,
                        };
                        (key, &w.agg)
                    })
            })
            .collect();
        let open = if open.is_empty() {
            Vec::new()
        } else {
            encode(&open).map_err(|e| e.to_string())?
        };
        Ok(CutResult { closed, open })
    }

    /// Replace the partition's open windows with restored ones.
    pub fn reset(&mut self, partition: u32, open: OpenWindows) {
        let hosts = self.partitions.entry(partition).or_default();
        hosts.clear();
        for (key, agg) in open {
            let w = OpenWindow {
                agg,
                changed: false,
            };
            hosts.entry(key.host).or_default().insert(key.start_ms, w);
        }
    }

    /// Open windows overlapping the query range.
    pub fn query(&self, q: &WindowQuery) -> Vec<(WindowKey, WindowAgg)> {
        let mut out = Vec::new();
        for (partition, hosts) in &self.partitions {
            for (host, windows) in hosts {
                if q.host.as_ref().is_some_and(|h| h != host) {
                    continue;
                }
                let from = self.spec.start_of(q.from_ms);
                if from >= q.to_ms {
                    continue;
                }
                for (start, OpenWindow { agg, .. }) in windows.range(from..q.to_ms) {
                    out.push((
                        WindowKey {
                            host: host.clone(),
                            start_ms: *start,
                            partition: *partition,
                        },
                        match q.detail {
                            Detail::Top => agg.clone(),
                            Detail::Stats | Detail::Sketches => agg.without_top(),
                        },
                    ));
                }
            }
        }
        out
    }
}

impl WindowState {
    /// Per-host counts of every open window.
    pub fn counts(&self, page: HostsPage) -> Vec<HostCounts> {
        let mut by_host: BTreeMap<&str, HostCounts> = BTreeMap::new();
        for (partition, hosts) in &self.partitions {
            for (host, windows) in hosts.iter().filter(|(h, _)| page.holds(h)) {
                let t = by_host.entry(host).or_insert_with(|| HostCounts {
                    host: host.clone(),
                    shares: Vec::new(),
                });
                for (start, OpenWindow { agg, .. }) in windows {
                    let key = WindowKey {
                        host: String::new(),
                        start_ms: *start,
                        partition: *partition,
                    };
                    t.shares.push(ShareCounts::open(&key, agg));
                }
            }
        }
        by_host.into_values().collect()
    }
}

/// The first window start that is still open at `watermark_ms`.
fn first_open(spec: &WindowSpec, windows: &BTreeMap<i64, OpenWindow>, watermark_ms: i64) -> i64 {
    windows
        .keys()
        .find(|s| !spec.is_closed(**s, watermark_ms))
        .copied()
        .unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wtm_core::checkpoint::decode;

    use wtm_core::event::Event;

    fn ev(host: &str, ts: i64) -> Event {
        Event {
            ts_ms: ts,
            host: host.into(),
            method: "GET".into(),
            path: "/".into(),
            status: 200,
            bytes: 1,
            latency_ms: None,
            client_ip: None,
            user_agent: None,
            referrer: None,
        }
    }

    #[test]
    fn cut_closes_exactly_the_passed_windows_and_reset_restores() {
        let spec = WindowSpec {
            size_ms: 60_000,
            out_of_orderness_ms: 0,
            allowed_lateness_ms: 5_000,
        };
        let mut s = WindowState::new(spec);
        let columns = |events: &[Event]| events.iter().map(|e| (0, e)).collect();
        s.apply(
            0,
            &columns(&[
                ev("a", 1_000),
                ev("a", 61_000),
                ev("b", 2_000),
                ev("a", 121_000),
            ]),
        );
        s.apply(1, &columns(&[ev("c", 1_000)]));
        let cut = s.cut(0, 65_000, OpenCut::All).unwrap();
        let closed: Vec<_> = cut
            .closed
            .iter()
            .map(|c| (c.key.host.as_str(), c.key.start_ms, c.agg.requests))
            .collect();
        assert_eq!(closed, vec![("a", 0, 1), ("b", 0, 1)]);
        let open: OpenWindows = decode("t", &cut.open).unwrap();
        assert_eq!(open.len(), 2);
        // Partition 1 is untouched by partition 0's cut.
        assert_eq!(
            s.query(&WindowQuery {
                host: Some("c".into()),
                from_ms: 0,
                to_ms: 60_000,
                last_windows: None,
                detail: Detail::Top,
            })
            .len(),
            1
        );
        // Only what changed since the last cut that encoded open windows.
        let keys = |s: &mut WindowState, open| -> Vec<(String, i64)> {
            let cut = s.cut(0, 65_000, open).unwrap();
            if cut.open.is_empty() {
                return Vec::new();
            }
            let mut keys: Vec<_> = decode::<OpenWindows>("t", &cut.open)
                .unwrap()
                .into_iter()
                .map(|(k, _)| (k.host, k.start_ms))
                .collect();
            keys.sort();
            keys
        };
        assert!(keys(&mut s, OpenCut::Changed).is_empty());
        s.apply(0, &columns(&[ev("a", 125_000)]));
        assert!(keys(&mut s, OpenCut::None).is_empty());
        assert_eq!(keys(&mut s, OpenCut::Changed), [("a".into(), 120_000)]);
        assert!(keys(&mut s, OpenCut::Changed).is_empty());
        assert_eq!(
            keys(&mut s, OpenCut::All),
            [("a".into(), 60_000), ("a".into(), 120_000)]
        );
        let mut restored = WindowState::new(spec);
        restored.reset(0, open);
        assert_eq!(
            restored
                .cut(0, i64::MAX, OpenCut::All)
                .unwrap()
                .closed
                .len(),
            2
        );
        assert!(s.cut(0, 65_000, OpenCut::All).unwrap().closed.is_empty());
    }
}
