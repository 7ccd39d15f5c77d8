//! Open windows of every partition routed to this shard.

use std::collections::{BTreeMap, HashMap};
use wtm_core::agg::{ClosedWindow, Detail, WindowAgg, WindowKey, WindowKeyRef};
use wtm_core::checkpoint::{encode_open, OpenAgg, RestoredWindows};
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
    /// Per partition, the first restored window whose bytes did not decode when an event or a
    /// query needed it: the partition's next cut fails with it, so the owner restores again
    /// (as a restore that decoded every window at once failed), instead of going on without it.
    broken: HashMap<u32, String>,
}

/// An open window, and whether it changed since the last cut that encoded open windows (so a
/// checkpoint between two whole ones encodes only what changed: [`OpenCut::Changed`]).
#[derive(Default)]
struct OpenWindow {
    agg: OpenAgg,
    changed: bool,
}

impl WindowState {
    pub fn new(spec: WindowSpec) -> WindowState {
        WindowState {
            spec,
            partitions: HashMap::new(),
            bots: BotCache::default(),
            broken: HashMap::new(),
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
            if let Some(agg) = built(&mut w.agg, &mut self.broken, partition) {
                agg.add_judged(&e, self.bots.is_bot(e.user_agent));
            }
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
        if let Some(err) = self.broken.get(&partition) {
            return Err(err.clone());
        }
        let mut closed = Vec::new();
        let Some(hosts) = self.partitions.get_mut(&partition) else {
            return Ok(CutResult {
                closed,
                open: Vec::new(),
            });
        };
        for (host, windows) in hosts.iter_mut() {
            let still_open = windows.split_off(&first_open(&self.spec, windows, watermark_ms));
            for (start, OpenWindow { agg, .. }) in std::mem::replace(windows, still_open) {
                let mut agg = agg.into_decoded().map_err(|e| e.to_string())?;
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
        let open: Vec<(WindowKeyRef, &OpenAgg)> = hosts
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
            let mut out = Vec::new();
            encode_open(&mut out, &open).map_err(|e| e.to_string())?;
            out
        };
        Ok(CutResult { closed, open })
    }

    /// Replace the partition's open windows with restored ones.
    pub fn reset(&mut self, partition: u32, open: RestoredWindows) {
        self.broken.remove(&partition);
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
    pub fn query(&mut self, q: &WindowQuery) -> Vec<(WindowKey, WindowAgg)> {
        let mut out = Vec::new();
        for (partition, hosts) in &mut self.partitions {
            for (host, windows) in hosts.iter_mut() {
                if q.host.as_ref().is_some_and(|h| h != host) {
                    continue;
                }
                let from = self.spec.start_of(q.from_ms);
                if from >= q.to_ms {
                    continue;
                }
                for (start, w) in windows.range_mut(from..q.to_ms) {
                    let Some(agg) = built(&mut w.agg, &mut self.broken, *partition) else {
                        continue;
                    };
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
    /// The sites with an open window, each once.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = (self.partitions.values())
            .flat_map(|hosts| hosts.keys().cloned())
            .collect();
        if self.partitions.len() > 1 {
            names.sort_unstable();
            names.dedup();
        }
        names
    }

    /// Per-host counts of every open window.
    pub fn counts(&mut self, page: HostsPage) -> Vec<HostCounts> {
        let mut by_host: BTreeMap<&str, HostCounts> = BTreeMap::new();
        for (partition, hosts) in &mut self.partitions {
            for (host, windows) in hosts.iter_mut().filter(|(h, _)| page.holds(h)) {
                let t = by_host.entry(host).or_insert_with(|| HostCounts {
                    host: host.clone(),
                    shares: Vec::new(),
                });
                for (start, w) in windows.iter_mut() {
                    let Some(agg) = built(&mut w.agg, &mut self.broken, *partition) else {
                        continue;
                    };
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

/// The window's aggregate, decoded if it is still the checkpoint's bytes; bytes that do not
/// decode are noted against the partition (its next cut fails with them) and give `None`.
fn built<'a>(
    agg: &'a mut OpenAgg,
    broken: &mut HashMap<u32, String>,
    partition: u32,
) -> Option<&'a mut WindowAgg> {
    match agg.get_mut() {
        Ok(agg) => Some(agg),
        Err(e) => {
            broken.entry(partition).or_insert_with(|| e.to_string());
            None
        }
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
    use wtm_core::checkpoint::{decode, restored_windows, OpenWindows};
    use wtm_core::event::Event;

    /// What a restore hands a shard: the blob's windows, their aggregates still encoded.
    fn restored(blob: &[u8]) -> RestoredWindows {
        restored_windows(vec![blob.to_vec()], Vec::new()).unwrap()
    }

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
        s.apply(1, &columns(&[ev("c", 1_000), ev("a", 2_000)]));
        assert_eq!(s.names(), ["a", "b", "c"]);
        let cut = s.cut(0, 65_000, OpenCut::All).unwrap();
        let closed: Vec<_> = cut
            .closed
            .iter()
            .map(|c| (c.key.host.as_str(), c.key.start_ms, c.agg.requests))
            .collect();
        assert_eq!(closed, vec![("a", 0, 1), ("b", 0, 1)]);
        let open: OpenWindows = decode("t", &cut.open).unwrap();
        assert_eq!(open.len(), 2);
        drop(open);
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
        let mut state = WindowState::new(spec);
        state.reset(0, restored(&cut.open));
        assert_eq!(
            state.cut(0, i64::MAX, OpenCut::All).unwrap().closed.len(),
            2
        );
        assert!(s.cut(0, 65_000, OpenCut::All).unwrap().closed.is_empty());
    }

    #[test]
    fn restored_windows_decode_when_needed_and_encode_back_to_the_same_windows() {
        let spec = WindowSpec {
            size_ms: 60_000,
            out_of_orderness_ms: 0,
            allowed_lateness_ms: 0,
        };
        let columns = |events: &[Event]| events.iter().map(|e| (0, e)).collect();
        let mut live = WindowState::new(spec);
        let first: Vec<Event> = (0..50)
            .map(|i| ev(&format!("h{}", i % 7), 1_000 + i * 900))
            .collect();
        live.apply(0, &columns(&first));
        // Each window's key and encoded aggregate, in key order (a shard's map has its own).
        let windows = |blob: &[u8]| {
            let mut w: Vec<(WindowKey, Vec<u8>)> = decode::<OpenWindows>("t", blob)
                .unwrap()
                .into_iter()
                .map(|(k, agg)| (k, wtm_core::checkpoint::encode(&agg).unwrap()))
                .collect();
            w.sort();
            w
        };
        let blob = live.cut(0, 0, OpenCut::All).unwrap().open;
        assert_eq!(windows(&blob).len(), 7);
        // Untouched, the restored windows encode back to what they were.
        let mut back = WindowState::new(spec);
        back.reset(0, restored(&blob));
        assert_eq!(
            windows(&back.cut(0, 0, OpenCut::All).unwrap().open),
            windows(&blob)
        );
        assert!(back.cut(0, 0, OpenCut::Changed).unwrap().open.is_empty());
        // More events for some of them, live and restored alike: the same cuts.
        let more = [ev("h1", 59_000), ev("h3", 30_000), ev("new", 10_000)];
        live.apply(0, &columns(&more));
        back.apply(0, &columns(&more));
        for open in [OpenCut::Changed, OpenCut::All] {
            let (a, b) = (live.cut(0, 0, open).unwrap(), back.cut(0, 0, open).unwrap());
            assert_eq!(windows(&b.open), windows(&a.open));
        }
        let q = WindowQuery {
            host: Some("h5".into()),
            from_ms: 0,
            to_ms: 60_000,
            last_windows: None,
            detail: Detail::Top,
        };
        let requests = |w: Vec<(WindowKey, WindowAgg)>| w[0].1.requests;
        assert_eq!(requests(back.query(&q)), requests(live.query(&q)));
        let (a, b) = (
            live.cut(0, 60_000, OpenCut::None).unwrap(),
            back.cut(0, 60_000, OpenCut::None).unwrap(),
        );
        let closed = |c: &CutResult| -> Vec<(String, u64, u64)> {
            c.closed
                .iter()
                .map(|w| (w.key.host.clone(), w.agg.requests, w.agg.bytes))
                .collect()
        };
        assert_eq!(closed(&a).len(), 8);
        assert_eq!(closed(&b), closed(&a));
    }

    #[test]
    fn a_restored_window_that_does_not_decode_fails_the_partitions_next_cut() {
        let spec = WindowSpec {
            size_ms: 60_000,
            out_of_orderness_ms: 0,
            allowed_lateness_ms: 0,
        };
        // Well-formed MessagePack, but a number where an aggregate belongs: a restore steps
        // over it, and only decoding it finds it wrong.
        let key = WindowKey {
            host: "h".into(),
            start_ms: 0,
            partition: 0,
        };
        let blob = wtm_core::checkpoint::encode(&vec![(key, 7u64)]).unwrap();
        let mut s = WindowState::new(spec);
        s.reset(0, restored(&blob));
        s.reset(1, Vec::new());
        s.apply(0, &[(0, &ev("h", 5_000))].into_iter().collect());
        assert!(s.cut(0, 0, OpenCut::All).is_err());
        assert!(s.cut(1, 0, OpenCut::All).is_ok(), "other partitions go on");
        // A new restore of the partition starts clean.
        s.reset(0, Vec::new());
        assert!(s.cut(0, 0, OpenCut::All).is_ok());
    }
}
