//! Per (host, window, partition) aggregates: every field merges, so windows of one host from
//! several partitions combine exactly (counts) or within the sketches' bounds.

use crate::event::{Event, EventView};
use crate::sketch::{Distinct, Quantiles, SketchError, TopK};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Keys a top-K summary keeps; reported top lists are at most this long.
pub const TOP_K_CAPACITY: u32 = 100;
/// Keys kept by the summaries only explanations read (client networks, time by path): a key
/// with a 3% share is always among them, and a driver moves by at least 5 points.
pub const EXPLAIN_TOP_K_CAPACITY: u32 = 32;
/// Top entries written to the lake per dimension.
pub const LAKE_TOP_K: usize = 10;
/// Distinct HTTP methods tracked per window before the rest are folded into `OTHER`.
const MAX_METHODS: usize = 32;

/// Identity of one aggregate: what every output is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WindowKey {
    pub host: String,
    pub start_ms: i64,
    pub partition: u32,
}

impl WindowKey {
    pub fn borrowed(&self) -> WindowKeyRef<'_> {
        WindowKeyRef {
            host: &self.host,
            start_ms: self.start_ms,
            partition: self.partition,
        }
    }
}

/// A [`WindowKey`] borrowed: it encodes to the same bytes (the same fields in the same order),
/// so open windows can be encoded where they are, without a copy of each (a checkpoint of a
/// node with 100,000 sites held a clone of every open window while it encoded).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WindowKeyRef<'a> {
    pub host: &'a str,
    pub start_ms: i64,
    pub partition: u32,
}

/// Running aggregate of one window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WindowAgg {
    pub requests: u64,
    pub bytes: u64,
    /// Requests by status class 1xx..5xx.
    pub status_class: [u64; 5],
    pub status_codes: CountMap<u16>,
    pub methods: CountMap<String>,
    pub bots: u64,
    pub latency: Quantiles,
    pub clients: Distinct,
    pub paths: TopK,
    pub referrers: TopK,
    pub user_agents: TopK,
    /// Requests by client network (IPv4 /24, IPv6 /48, as [`network_of`] ids): who sent
    /// them, for explanations. (Added after the fields above: older checkpoints and lake
    /// sketches read as empty.)
    #[serde(default = "explain_top_k")]
    pub networks: TopK<u64>,
    /// Milliseconds of latency by path ([`path_id`]; the names are in `paths`): where the
    /// serving time went, for explanations.
    #[serde(default = "explain_top_k")]
    pub path_time: TopK<u64>,
    /// Milliseconds of latency over every request that has one (`path_time`'s total).
    #[serde(default)]
    pub latency_ms_total: u64,
}

/// Counts by a small key (status codes, methods): a sorted vector, written and read as a map.
///
/// Why not a `BTreeMap`: its first node is ~200–350 bytes however few keys it holds, and a
/// window holds two of these — 500 of a light window's 3.2 KB (`examples/agg_bytes.rs`). A window
/// sees a handful of codes and methods (methods are capped), so a sorted vector is both smaller
/// and as fast. Serialized as a map, exactly as the `BTreeMap` was: checkpoints, history and
/// lake sketches read either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountMap<K>(Vec<(K, u64)>);

impl<K> Default for CountMap<K> {
    fn default() -> Self {
        CountMap(Vec::new())
    }
}

impl<K: Ord + Clone> CountMap<K> {
    /// Add `n` to `key`'s count.
    pub fn add<Q>(&mut self, key: &Q, n: u64)
    where
        K: std::borrow::Borrow<Q>,
        Q: Ord + ToOwned<Owned = K> + ?Sized,
    {
        match self.0.binary_search_by(|(k, _)| k.borrow().cmp(key)) {
            Ok(i) => self.0[i].1 += n,
            Err(i) => {
                // One slot at a time: new keys are rare, and most windows hold one or two.
                self.0.reserve_exact(1);
                self.0.insert(i, (key.to_owned(), n))
            }
        }
    }

    pub fn get<Q>(&self, key: &Q) -> Option<u64>
    where
        K: std::borrow::Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let i = self.0.binary_search_by(|(k, _)| k.borrow().cmp(key)).ok()?;
        Some(self.0[i].1)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// In key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &u64)> {
        self.0.iter().map(|(k, n)| (k, n))
    }

    pub fn to_map(&self) -> BTreeMap<K, u64> {
        self.0.iter().cloned().collect()
    }
}

impl<K: Serialize> Serialize for CountMap<K> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, n)| (k, n)))
    }
}

impl<'de, K: Deserialize<'de> + Ord> Deserialize<'de> for CountMap<K> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Through a BTreeMap: sorted and one entry per key, whatever the bytes held.
        Ok(CountMap(
            BTreeMap::<K, u64>::deserialize(d)?.into_iter().collect(),
        ))
    }
}

fn explain_top_k() -> TopK<u64> {
    TopK::with_capacity(EXPLAIN_TOP_K_CAPACITY)
}

const IPV4: u64 = 4 << 56;
const IPV6: u64 = 6 << 56;

/// The network of a client address as a number (no allocation per request): its IPv4 /24 or
/// IPv6 /48, tagged with the family; None for what is not an address.
pub fn network_of(ip: &str) -> Option<u64> {
    Some(match ip.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(a) => IPV4 | u64::from(u32::from(a) >> 8),
        std::net::IpAddr::V6(a) => IPV6 | (u128::from(a) >> 80) as u64,
    })
}

/// A network id's name: `203.0.113.0/24`, `2001:db8:1::/48`.
pub fn network_name(id: u64) -> String {
    let bits = id & ((1 << 56) - 1);
    if id >> 56 == IPV6 >> 56 {
        let a = std::net::Ipv6Addr::from(u128::from(bits) << 80);
        format!("{a}/48")
    } else {
        let a = std::net::Ipv4Addr::from((bits as u32) << 8);
        format!("{a}/24")
    }
}

/// A path's id in `path_time` (FNV-1a, stable across runs: the sketch is stored).
pub fn path_id(path: &str) -> u64 {
    crate::hash::fnv1a(path.as_bytes())
}

impl Default for WindowAgg {
    fn default() -> Self {
        WindowAgg {
            requests: 0,
            bytes: 0,
            status_class: [0; 5],
            status_codes: CountMap::default(),
            methods: CountMap::default(),
            bots: 0,
            latency: Quantiles::default(),
            clients: Distinct::default(),
            paths: TopK::with_capacity(TOP_K_CAPACITY),
            referrers: TopK::with_capacity(TOP_K_CAPACITY),
            user_agents: TopK::with_capacity(TOP_K_CAPACITY),
            networks: explain_top_k(),
            path_time: explain_top_k(),
            latency_ms_total: 0,
        }
    }
}

impl WindowAgg {
    /// A copy without the top-K sketches (paths, referrers, user agents): what a window series
    /// needs, at a fraction of the size.
    pub fn without_top(&self) -> WindowAgg {
        WindowAgg {
            requests: self.requests,
            bytes: self.bytes,
            status_class: self.status_class,
            status_codes: self.status_codes.clone(),
            methods: self.methods.clone(),
            bots: self.bots,
            latency: self.latency.clone(),
            clients: self.clients.clone(),
            ..WindowAgg::default()
        }
    }

    pub fn add(&mut self, e: &Event) {
        self.add_view(&e.view());
    }

    pub fn add_view(&mut self, e: &EventView<'_>) {
        self.add_judged(e, e.is_bot());
    }

    /// [`WindowAgg::add_view`] with the bot decision made by the caller (a shard's
    /// [`crate::event::BotCache`]).
    pub fn add_judged(&mut self, e: &EventView<'_>, bot: bool) {
        self.requests += 1;
        self.bytes += e.bytes;
        self.status_class[(e.status / 100).clamp(1, 5) as usize - 1] += 1;
        self.status_codes.add(&e.status, 1);
        if self.methods.len() < MAX_METHODS || self.methods.get(e.method).is_some() {
            self.methods.add(e.method, 1);
        } else {
            self.methods.add("OTHER", 1);
        }
        if bot {
            self.bots += 1;
        }
        if let Some(l) = e.latency_ms {
            self.latency.add(l);
            // At least 1 ms, so a path answered in no time still counts its requests.
            let ms = (l.round() as u64).max(1);
            self.path_time.insert_n(&path_id(e.path), ms);
            self.latency_ms_total += ms;
        }
        if let Some(ip) = e.client_ip {
            self.clients.insert(ip);
            if let Some(net) = network_of(ip) {
                self.networks.insert(&net);
            }
        }
        self.paths.insert(e.path);
        if let Some(r) = e.referrer {
            self.referrers.insert(r);
        }
        if let Some(ua) = e.user_agent {
            self.user_agents.insert(ua);
        }
    }

    /// The window is closed (no more inserts): its summaries forget their eviction candidates,
    /// which copy keys, before it waits for the lake, and the distinct count folds its buffer,
    /// so the window's encoding (the lake's `sketch`) is the same in every run.
    pub fn close(&mut self) {
        self.paths.drop_victims();
        self.referrers.drop_victims();
        self.user_agents.drop_victims();
        self.networks.drop_victims();
        self.path_time.drop_victims();
        self.clients.settle();
    }

    /// Fold in another aggregate of the same host and window (another partition's, or a replay's).
    pub fn merge(&mut self, o: &WindowAgg) -> Result<(), SketchError> {
        self.requests += o.requests;
        self.bytes += o.bytes;
        for (a, b) in self.status_class.iter_mut().zip(o.status_class) {
            *a += b;
        }
        for (k, v) in o.status_codes.iter() {
            self.status_codes.add(k, *v);
        }
        for (k, v) in o.methods.iter() {
            self.methods.add(k.as_str(), *v);
        }
        self.bots += o.bots;
        self.latency.merge(&o.latency)?;
        self.clients.merge(&o.clients)?;
        self.paths.merge(&o.paths);
        self.referrers.merge(&o.referrers);
        self.user_agents.merge(&o.user_agents);
        self.networks.merge(&o.networks);
        self.path_time.merge(&o.path_time);
        self.latency_ms_total += o.latency_ms_total;
        Ok(())
    }

    /// What a window series shows of this aggregate.
    pub fn series_stats(&self) -> SeriesStats {
        let [p50, p90, p95, p99] = self
            .latency
            .quantiles([0.5, 0.9, 0.95, 0.99])
            .map(|q| q.unwrap_or(0.0));
        SeriesStats {
            requests: self.requests,
            bytes: self.bytes,
            status_class: self.status_class,
            bots: self.bots,
            latency_ms: [p50, p90, p95, p99, self.latency.max().unwrap_or(0.0)],
            unique_clients: self.clients.clone().estimate(),
        }
    }

    /// Plain values of this aggregate.
    pub fn finalize(&self) -> WindowStats {
        let s = self.series_stats();
        let [p50, p90, p95, p99, max] = s.latency_ms;
        WindowStats {
            requests: self.requests,
            bytes: self.bytes,
            status_class: self.status_class,
            status_codes: self.status_codes.to_map(),
            methods: self.methods.to_map(),
            error_rate: s.error_rate(),
            latency_p50: p50,
            latency_p90: p90,
            latency_p95: p95,
            latency_p99: p99,
            latency_max: max,
            unique_clients: s.unique_clients,
            bots: self.bots,
            top_paths: self.paths.top(LAKE_TOP_K),
            top_referrers: self.referrers.top(LAKE_TOP_K),
            top_user_agents: self.user_agents.top(LAKE_TOP_K),
        }
    }
}

/// What a window series shows of one window, finalized: computed once per closed share when it
/// is archived, so a series of windows that each have one share (a site on one partition: the
/// usual case) decodes and merges no sketch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SeriesStats {
    pub requests: u64,
    pub bytes: u64,
    /// Requests by status class 1xx..5xx.
    pub status_class: [u64; 5],
    pub bots: u64,
    /// Latency p50, p90, p95, p99 and max in ms (0 without latencies).
    pub latency_ms: [f64; 5],
    pub unique_clients: u64,
}

impl SeriesStats {
    /// Share of requests answered with a 5xx status (0 without requests).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.status_class[4] as f64 / self.requests as f64
        }
    }
}

/// How much of a closed share a read returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Detail {
    /// Its statistics ([`Share::Stats`]): enough for a series whose windows have one share each.
    Stats,
    /// Its aggregate without the top-K: a series with a window of several shares to merge.
    Sketches,
    /// Its whole aggregate: top lists and explanations.
    Top,
}

/// One (window, partition) share as a series or a top list reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Share {
    /// Its aggregate (an open share, one not yet written, or one read with its sketches).
    Agg(Box<WindowAgg>),
    /// Its statistics as archived (its sketches stay in the history store).
    Stats(SeriesStats),
}

impl Share {
    /// Its statistics, finalized.
    pub fn stats(&self) -> SeriesStats {
        match self {
            Share::Agg(a) => a.series_stats(),
            Share::Stats(s) => *s,
        }
    }
}

/// Finalized values of one window: what the lake stores as plain columns and the API shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowStats {
    pub requests: u64,
    pub bytes: u64,
    pub status_class: [u64; 5],
    pub status_codes: BTreeMap<u16, u64>,
    pub methods: BTreeMap<String, u64>,
    /// Share of requests answered with a 5xx status.
    pub error_rate: f64,
    pub latency_p50: f64,
    pub latency_p90: f64,
    pub latency_p95: f64,
    pub latency_p99: f64,
    pub latency_max: f64,
    pub unique_clients: u64,
    pub bots: u64,
    pub top_paths: Vec<(String, u64)>,
    pub top_referrers: Vec<(String, u64)>,
    pub top_user_agents: Vec<(String, u64)>,
}

/// A window that the watermark has closed: final, ready for the lake and the detector.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClosedWindow {
    pub key: WindowKey,
    pub end_ms: i64,
    pub agg: WindowAgg,
}

/// One (window, partition) share's plain counts: what `/v1/hosts` adds up, small enough to keep
/// per retained window and to gather from every member (no sketches).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ShareCounts {
    pub start_ms: i64,
    pub partition: u32,
    pub requests: u64,
    pub bytes: u64,
    pub status_5xx: u64,
    pub bots: u64,
    /// Of a closed share only (0 while open: estimating them on every `/v1/hosts` would cost a
    /// sketch walk per open window); f32/u32 keep a retained share at 56 bytes.
    pub latency_p99_ms: f32,
    pub unique_clients: u32,
    /// Closed (final) or still open.
    pub is_final: bool,
}

impl ShareCounts {
    /// Counts of a window still open.
    pub fn open(key: &WindowKey, agg: &WindowAgg) -> ShareCounts {
        ShareCounts {
            start_ms: key.start_ms,
            partition: key.partition,
            requests: agg.requests,
            bytes: agg.bytes,
            status_5xx: agg.status_class[4],
            bots: agg.bots,
            latency_p99_ms: 0.0,
            unique_clients: 0,
            is_final: false,
        }
    }

    /// Counts of a closed window from its statistics (computed once, when it is archived).
    pub fn closed(key: &WindowKey, s: &SeriesStats) -> ShareCounts {
        ShareCounts {
            start_ms: key.start_ms,
            partition: key.partition,
            requests: s.requests,
            bytes: s.bytes,
            status_5xx: s.status_class[4],
            bots: s.bots,
            latency_p99_ms: s.latency_ms[3] as f32,
            unique_clients: u32::try_from(s.unique_clients).unwrap_or(u32::MAX),
            is_final: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_aggregate_written_before_networks_and_path_time_reads_with_them_empty() {
        // The fields as they were (in order: rmp-serde writes a struct as an array).
        #[derive(Serialize)]
        struct Before<'a> {
            requests: u64,
            bytes: u64,
            status_class: [u64; 5],
            status_codes: &'a BTreeMap<u16, u64>,
            methods: &'a BTreeMap<String, u64>,
            bots: u64,
            latency: &'a Quantiles,
            clients: &'a Distinct,
            paths: &'a TopK,
            referrers: &'a TopK,
            user_agents: &'a TopK,
        }
        let mut a = WindowAgg::default();
        for i in 0..50 {
            a.add(&event(200, 10, i, (i % 5) as u8));
        }
        let (codes, methods) = (a.status_codes.to_map(), a.methods.to_map());
        let old = Before {
            requests: a.requests,
            bytes: a.bytes,
            status_class: a.status_class,
            status_codes: &codes,
            methods: &methods,
            bots: a.bots,
            latency: &a.latency,
            clients: &a.clients,
            paths: &a.paths,
            referrers: &a.referrers,
            user_agents: &a.user_agents,
        };
        let bytes = crate::checkpoint::encode(&old).unwrap();
        let back: WindowAgg = crate::checkpoint::decode("old", &bytes).unwrap();
        assert_eq!(back.requests, 50);
        assert_eq!(back.paths, a.paths);
        assert!(back.networks.top(10).is_empty() && back.path_time.top(10).is_empty());
        assert_eq!(back.latency_ms_total, 0);
        // And the new ones round-trip.
        let now: WindowAgg =
            crate::checkpoint::decode("new", &crate::checkpoint::encode(&a).unwrap()).unwrap();
        assert_eq!(now.networks, a.networks);
        assert_eq!(
            (now.path_time.clone(), now.latency_ms_total),
            (a.path_time.clone(), a.latency_ms_total)
        );
        assert!(a.latency_ms_total > 0 && !a.networks.top(1).is_empty());
    }

    #[test]
    fn a_closed_window_encodes_to_the_same_bytes_whatever_the_maps_order() {
        // Two aggregates of the same events: their hash maps and sets have their own random
        // seeds (as two runs of a rerun would), so they iterate in different orders.
        let build = || {
            let mut a = WindowAgg::default();
            for i in 0..600u32 {
                a.add(&event(
                    200 + (i % 3) as u16,
                    i as u64,
                    i % 250,
                    (i % 150) as u8,
                ));
            }
            a.close();
            a
        };
        let (a, b) = (build(), build());
        let bytes = |w: &WindowAgg| crate::checkpoint::encode(w).unwrap();
        assert_eq!(bytes(&a), bytes(&b));
        let back: WindowAgg = crate::checkpoint::decode("w", &bytes(&a)).unwrap();
        assert_eq!(bytes(&back), bytes(&a), "and again once read back");
    }

    fn event(status: u16, bytes: u64, ip: u32, path: u8) -> Event {
        Event {
            ts_ms: 0,
            host: "h".into(),
            method: if status.is_multiple_of(2) {
                "GET".into()
            } else {
                "POST".into()
            },
            path: format!("/p{path}"),
            status,
            bytes,
            latency_ms: Some(1.0 + bytes as f64),
            client_ip: Some(format!("10.0.0.{ip}")),
            user_agent: Some(if ip.is_multiple_of(7) {
                "Googlebot/2.1".into()
            } else {
                "Mozilla/5.0".into()
            }),
            referrer: None,
        }
    }

    proptest! {
        #[test]
        fn count_maps_count_and_encode_as_the_maps_they_replace(
            adds in proptest::collection::vec((0u16..8, 1u64..5), 0..40),
        ) {
            let (mut small, mut map) = (CountMap::default(), BTreeMap::new());
            for (k, n) in &adds {
                small.add(&(k * 100), *n);
                *map.entry(k * 100).or_default() += n;
            }
            prop_assert_eq!(small.to_map(), map.clone());
            prop_assert_eq!(small.len(), map.len());
            prop_assert_eq!(rmp_serde::to_vec(&small).unwrap(), rmp_serde::to_vec(&map).unwrap());
            prop_assert_eq!(serde_json::to_string(&small).unwrap(), serde_json::to_string(&map).unwrap());
            let back: CountMap<u16> = rmp_serde::from_slice(&rmp_serde::to_vec(&map).unwrap()).unwrap();
            prop_assert_eq!(back, small);
        }
    }

    proptest! {
        #[test]
        fn merging_split_streams_equals_one_stream(
            events in proptest::collection::vec((100u16..600, 0u64..100_000, 0u32..255, 0u8..30), 1..300),
            split in 0usize..300,
        ) {
            let evs: Vec<Event> = events.iter().map(|(s, b, ip, p)| event(*s, *b, *ip, *p)).collect();
            let split = split.min(evs.len());
            let (mut whole, mut left, mut right) = (WindowAgg::default(), WindowAgg::default(), WindowAgg::default());
            evs.iter().for_each(|e| whole.add(e));
            evs[..split].iter().for_each(|e| left.add(e));
            evs[split..].iter().for_each(|e| right.add(e));
            left.merge(&right).unwrap();
            let (a, b) = (whole.finalize(), left.finalize());
            prop_assert_eq!(a.requests, b.requests);
            prop_assert_eq!(a.bytes, b.bytes);
            prop_assert_eq!(a.status_class, b.status_class);
            prop_assert_eq!(&a.status_codes, &b.status_codes);
            prop_assert_eq!(&a.methods, &b.methods);
            prop_assert_eq!(a.bots, b.bots);
            prop_assert_eq!(a.unique_clients, b.unique_clients);
            prop_assert_eq!(a.latency_max, b.latency_max);
            // Under the top-K capacity the summaries are exact, so the merged lists agree.
            prop_assert_eq!(&a.top_paths, &b.top_paths);
            prop_assert_eq!(a.status_class.iter().sum::<u64>(), a.requests);
        }
    }
}
