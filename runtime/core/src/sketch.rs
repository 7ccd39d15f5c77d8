//! Mergeable sketches: latency quantiles (DDSketch), distinct clients (HyperLogLog++) and top-K
//! (Space-Saving).
//!
//! DDSketch and HLL++ come from well-kept crates. Top-K is written here: the crates on offer
//! either cannot merge two summaries or cannot serialize them, and both are needed (per-partition
//! windows merge at read time; open windows are checkpointed).

use crate::hash::Fnv1a;
use hyperloglogplus::{HyperLogLog, HyperLogLogPlus};
use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config, DDSketch};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

/// Relative accuracy of latency quantiles.
pub const QUANTILE_RELATIVE_ERROR: f64 = 0.01;
/// HLL++ precision: standard error 1.04/sqrt(2^14) ≈ 0.81%, so ≤ 2% at 10⁶ distinct is > 2σ.
pub const HLL_PRECISION: u8 = 14;

/// Latency values a window keeps as they came before it builds its DDSketch.
///
/// Why: a DDSketch allocates its bins 128 at a time (1 KiB) at the first value, and most
/// host-windows of a hosting provider's long tail hold a handful of requests — the sketch was a
/// third of a light window's 3.2 KB (`examples/agg_bytes.rs`). Every answer is the sketch's
/// (built from the values, in the order they came, when asked), and a window serializes as the
/// sketch it would have been, so the values buffered change nothing a reader can see: not a
/// quantile, not a checkpoint's or the lake's bytes.
pub const QUANTILE_VALUES_BEFORE_SKETCH: usize = 16;

/// Latency distribution with relative-error quantiles.
#[derive(Clone, Default)]
pub struct Quantiles(Latencies);

#[derive(Clone)]
enum Latencies {
    /// At most [`QUANTILE_VALUES_BEFORE_SKETCH`] values, in the order added.
    Few(Vec<f64>),
    Sketch(Box<DDSketch>),
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies::Few(Vec::new())
    }
}

fn new_sketch() -> DDSketch {
    DDSketch::new(Config::new(QUANTILE_RELATIVE_ERROR, 2048, 1e-3))
}

impl std::fmt::Debug for Quantiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Quantiles(n={})", self.count())
    }
}

impl Serialize for Quantiles {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Latencies::Few(_) => self.sketch().serialize(s),
            Latencies::Sketch(d) => d.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Quantiles {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Quantiles(Latencies::Sketch(Box::new(
            DDSketch::deserialize(d)?,
        ))))
    }
}

impl Quantiles {
    pub fn add(&mut self, v: f64) {
        match &mut self.0 {
            Latencies::Few(values) if values.len() < QUANTILE_VALUES_BEFORE_SKETCH => {
                values.push(v)
            }
            Latencies::Few(_) => {
                let mut d = self.sketch().into_owned();
                d.add(v);
                self.0 = Latencies::Sketch(Box::new(d));
            }
            Latencies::Sketch(d) => d.add(v),
        }
    }

    /// The DDSketch of these values (built, for a window that holds only a few).
    fn sketch(&self) -> std::borrow::Cow<'_, DDSketch> {
        match &self.0 {
            Latencies::Few(values) => {
                let mut d = new_sketch();
                values.iter().for_each(|&v| d.add(v));
                std::borrow::Cow::Owned(d)
            }
            Latencies::Sketch(d) => std::borrow::Cow::Borrowed(d),
        }
    }

    /// Fails only when the two sketches were built with different settings (e.g. a sketch
    /// decoded from bytes another build wrote). Merges as sketches, as before there were
    /// values kept: the merged sketch (its sum too) is the one earlier builds made.
    pub fn merge(&mut self, other: &Quantiles) -> Result<(), SketchError> {
        let mut d = match std::mem::take(&mut self.0) {
            Latencies::Sketch(d) => d,
            few => Box::new(Quantiles(few).sketch().into_owned()),
        };
        let result = d
            .merge(&other.sketch())
            .map_err(|e| SketchError(format!("latency sketches differ: {e}")));
        self.0 = Latencies::Sketch(d);
        result
    }
    pub fn count(&self) -> u64 {
        match &self.0 {
            Latencies::Few(values) => values.len() as u64,
            Latencies::Sketch(d) => d.count() as u64,
        }
    }
    /// The q-quantile, or None when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.sketch().quantile(q).ok().flatten()
    }
    /// Several quantiles at once (a window of few values builds its sketch once).
    pub fn quantiles<const N: usize>(&self, qs: [f64; N]) -> [Option<f64>; N] {
        let d = self.sketch();
        qs.map(|q| d.quantile(q).ok().flatten())
    }
    /// The largest value (as the sketch tracks it: a NaN never replaces one), None when empty.
    pub fn max(&self) -> Option<f64> {
        match &self.0 {
            Latencies::Few(values) if values.is_empty() => None,
            Latencies::Few(values) => {
                Some(
                    values
                        .iter()
                        .fold(f64::NEG_INFINITY, |m, &v| if m < v { v } else { m }),
                )
            }
            Latencies::Sketch(d) => d.max(),
        }
    }
}

/// A fixed, serializable hasher for HLL: the sketch outlives the process (checkpoints, lake), so
/// the hash function must not change between runs. FNV-1a, then a 64-bit finalizer (murmur3's
/// fmix64) so that the high bits HLL reads are well mixed.
#[derive(Clone, Copy, Default, Debug, Serialize, Deserialize)]
pub struct StableHash;

pub struct StableHasher(Fnv1a);

impl Hasher for StableHasher {
    fn finish(&self) -> u64 {
        let mut h = self.0.finish();
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }
}

impl BuildHasher for StableHash {
    type Hasher = StableHasher;
    fn build_hasher(&self) -> StableHasher {
        StableHasher(Fnv1a::default())
    }
}

/// Two sketches that cannot be merged (built with different settings).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cannot merge sketches: {0}")]
pub struct SketchError(String);

/// Approximate count of distinct values.
#[derive(Clone, Serialize, Deserialize)]
pub struct Distinct(HyperLogLogPlus<String, StableHash>);

impl Default for Distinct {
    fn default() -> Self {
        Distinct(HyperLogLogPlus::new(HLL_PRECISION, StableHash).expect("precision 14 is valid"))
    }
}

impl std::fmt::Debug for Distinct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Distinct")
    }
}

impl Distinct {
    pub fn insert(&mut self, v: &str) {
        self.0.insert(v)
    }
    /// Fails only when the two sketches have different precisions.
    pub fn merge(&mut self, other: &Distinct) -> Result<(), SketchError> {
        self.0
            .merge(&other.0)
            .map_err(|e| SketchError(format!("distinct-count sketches differ: {e}")))
    }
    /// The estimate; takes `&mut` because HLL++ folds its sparse buffer in lazily.
    pub fn estimate(&mut self) -> u64 {
        self.0.count().round() as u64
    }

    /// Fold the sparse buffer in now: it is a hash set, encoded in a per-process random order,
    /// so a sketch encoded after this has bytes that depend only on what it counted.
    pub fn settle(&mut self) {
        self.0.count();
    }
}

/// Space-Saving heavy hitters: keeps at most `capacity` keys; a reported count over-estimates
/// the true count by at most `error` (≤ total / capacity). Keys are strings (paths, user agents)
/// or, where names can be had elsewhere, 64-bit ids that cost no allocation (client networks,
/// path hashes).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound(serialize = "", deserialize = "K: Deserialize<'de>"))]
pub struct TopK<K: TopKey = String> {
    capacity: u32,
    counts: Counts<K>,
    #[serde(skip)]
    victims: Victims,
}

impl<K: TopKey> Default for TopK<K> {
    fn default() -> Self {
        TopK {
            capacity: 0,
            counts: Counts::default(),
            victims: Victims::default(),
        }
    }
}

/// A key type of [`TopK`]: a summary finds keys by a 64-bit id, so that a lookup reads no
/// string (a string key's bytes are a cache miss of their own, and comparing them was a tenth
/// of a batch's profile), and keeps beside the id only what the id does not already say.
///
/// - `u64` keys are their own id and keep nothing more.
/// - A `String`'s id is a hash seeded once per process, so strangers cannot aim two paths at
///   one id; two different strings sharing one (odds about 2⁻⁶⁴ per pair) would count as one
///   key. It keeps its text as a `Box<str>` (16 bytes, not a `String`'s 24: with the id, an
///   entry is as large as it was before ids). Ids are never stored: a summary read back
///   computes them again.
pub trait TopKey: Clone + Ord + Serialize {
    /// What a summary keeps of a key beside its id.
    type Name: Clone + std::fmt::Debug;
    /// The key borrowed from its id and name: what summaries order and write.
    type Ref<'a>: Ord + Serialize + Copy
    where
        Self: 'a;
    /// The key's id and what to keep of it.
    fn into_parts(self) -> (u64, Self::Name);
    fn as_ref(id: u64, name: &Self::Name) -> Self::Ref<'_>;
    fn from_ref(key: Self::Ref<'_>) -> Self;
}

/// What a summary can count: a key borrowed (`&str` for `String` summaries).
pub trait KeyOf<K: TopKey> {
    fn id(&self) -> u64;
    fn name(&self) -> K::Name;
}

impl TopKey for String {
    type Name = Box<str>;
    type Ref<'a> = &'a str;
    fn into_parts(self) -> (u64, Box<str>) {
        (self.as_str().id(), self.into_boxed_str())
    }
    fn as_ref(_: u64, name: &Box<str>) -> &str {
        name
    }
    fn from_ref(key: &str) -> String {
        key.to_owned()
    }
}

impl KeyOf<String> for str {
    fn id(&self) -> u64 {
        static SEEDED: std::sync::LazyLock<ahash::RandomState> =
            std::sync::LazyLock::new(ahash::RandomState::new);
        SEEDED.hash_one(self)
    }
    fn name(&self) -> Box<str> {
        self.into()
    }
}

impl KeyOf<String> for String {
    fn id(&self) -> u64 {
        self.as_str().id()
    }
    fn name(&self) -> Box<str> {
        self.as_str().name()
    }
}

impl TopKey for u64 {
    type Name = ();
    type Ref<'a> = u64;
    fn into_parts(self) -> (u64, ()) {
        (self, ())
    }
    fn as_ref(id: u64, _: &()) -> u64 {
        id
    }
    fn from_ref(key: u64) -> u64 {
        key
    }
}

impl KeyOf<u64> for u64 {
    fn id(&self) -> u64 {
        *self
    }
    fn name(&self) {}
}

/// Hashes a key id for the map: one multiply spreads a number's low bits (client networks
/// differ there) into the high ones the map's control bytes read. Not seeded: number keys come
/// from strangers (client addresses, path hashes), but a map holds at most its summary's
/// capacity (≤ 100 keys), so ids aimed at one bucket cost at most a scan of those.
#[derive(Clone, Copy, Default, Debug)]
struct MixId;

#[derive(Default)]
struct MixIdHasher(u64);

impl Hasher for MixIdHasher {
    fn finish(&self) -> u64 {
        let h = self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ (h >> 32)
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only ids (u64, through `write_u64`) are hashed here; bytes fold in for completeness.
        self.0 ^= crate::hash::fnv1a(bytes);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

impl BuildHasher for MixId {
    type Hasher = MixIdHasher;
    fn build_hasher(&self) -> MixIdHasher {
        MixIdHasher::default()
    }
}

/// Keys a summary holds in a vector before it moves them to a hash map.
const FEW_KEYS: usize = 8;

/// What a summary keeps of a key (its name) with its (count, error).
type Cell<K> = (<K as TopKey>::Name, (u64, u64));

/// A summary's keys with their (count, error), by key id: a few in a vector, more in a hash map.
///
/// Why: most windows of a hosting provider's long tail see one or two paths, agents and
/// referrers, and a hash map's first allocation holds four entries and their control bytes
/// (~200 bytes) however few it keeps: five summaries were ~45% of a light window's 1.8 KB
/// (`examples/agg_bytes.rs`). Written and read as the map of keys it was, so checkpoints,
/// history and lake sketches read either way; which form holds the keys changes no answer.
#[derive(Clone, Debug)]
enum Counts<K: TopKey> {
    Few(Vec<(u64, Cell<K>)>),
    /// Boxed so that a summary's inline size stays a vector's: a window holds five, and the
    /// map inline made a window 824 bytes before it held anything (624 boxed).
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<u64, Cell<K>, MixId>>),
}

impl<K: TopKey> Default for Counts<K> {
    fn default() -> Self {
        Counts::Few(Vec::new())
    }
}

impl<K: TopKey> Counts<K> {
    fn len(&self) -> usize {
        match self {
            Counts::Few(v) => v.len(),
            Counts::Many(m) => m.len(),
        }
    }

    fn get(&self, id: u64) -> Option<&(u64, u64)> {
        match self {
            Counts::Few(v) => v.iter().find(|(i, _)| *i == id).map(|(_, (_, c))| c),
            Counts::Many(m) => m.get(&id).map(|(_, c)| c),
        }
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut (u64, u64)> {
        match self {
            Counts::Few(v) => v.iter_mut().find(|(i, _)| *i == id).map(|(_, (_, c))| c),
            Counts::Many(m) => m.get_mut(&id).map(|(_, c)| c),
        }
    }

    /// Add a key it does not hold.
    fn insert_new(&mut self, id: u64, name: K::Name, c: (u64, u64)) {
        match self {
            Counts::Few(v) if v.len() < FEW_KEYS => {
                // Most summaries of a light window hold one key: room for one, then doubling
                // (growing one slot at a time moved the vector on every new key).
                if v.capacity() == 0 {
                    v.reserve_exact(1);
                }
                v.push((id, (name, c)));
            }
            Counts::Few(v) => {
                let mut m: HashMap<_, _, _> = std::mem::take(v).into_iter().collect();
                m.insert(id, (name, c));
                *self = Counts::Many(Box::new(m));
            }
            Counts::Many(m) => {
                m.insert(id, (name, c));
            }
        }
    }

    /// Add (count, error) to the key's, or add the key with them (its name made only then).
    fn add(&mut self, id: u64, name: impl FnOnce() -> K::Name, c: (u64, u64)) {
        match self.get_mut(id) {
            Some(e) => {
                e.0 += c.0;
                e.1 += c.1;
            }
            None => self.insert_new(id, name(), c),
        }
    }

    fn remove(&mut self, id: u64) {
        match self {
            Counts::Few(v) => v.retain(|(i, _)| *i != id),
            Counts::Many(m) => {
                m.remove(&id);
            }
        }
    }

    /// (id, name, (count, error)) in no particular order.
    fn cells(&self) -> impl Iterator<Item = (u64, &K::Name, &(u64, u64))> + '_ {
        let (few, many) = match self {
            Counts::Few(v) => (Some(v.iter().map(|(id, cell)| (id, cell))), None),
            Counts::Many(m) => (None, Some(m.iter())),
        };
        few.into_iter()
            .flatten()
            .chain(many.into_iter().flatten())
            .map(|(id, (name, c))| (*id, name, c))
    }

    /// (key, (count, error)) in no particular order.
    fn iter(&self) -> impl Iterator<Item = (K::Ref<'_>, &(u64, u64))> + '_ {
        self.cells().map(|(id, name, c)| (K::as_ref(id, name), c))
    }

    /// Every entry, taken out.
    fn drain(&mut self) -> Vec<(u64, Cell<K>)> {
        match std::mem::take(self) {
            Counts::Few(v) => v,
            Counts::Many(m) => m.into_iter().collect(),
        }
    }
}

impl<K: TopKey> PartialEq for Counts<K> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.cells().all(|(id, _, c)| other.get(id) == Some(c))
    }
}

/// In key order: the map iterates in a per-process random order, and a summary's bytes must
/// depend only on what it holds, so that a rerun or a replay writes the same lake file (the
/// table's log records each file's size; a file rewritten with other bytes would not match it).
impl<K: TopKey> Serialize for Counts<K> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut entries: Vec<_> = self.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        s.collect_map(entries)
    }
}

impl<'de, K: TopKey + Deserialize<'de>> Deserialize<'de> for Counts<K> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // As pairs, not a map of keys: a map would hash every key once more, for nothing.
        struct Pairs<K>(std::marker::PhantomData<K>);
        impl<'de, K: TopKey + Deserialize<'de>> serde::de::Visitor<'de> for Pairs<K> {
            type Value = Counts<K>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of keys to (count, error)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Counts<K>, A::Error> {
                let mut counts =
                    Counts::Few(Vec::with_capacity(m.size_hint().unwrap_or(0).min(FEW_KEYS)));
                while let Some((k, c)) = m.next_entry::<K, (u64, u64)>()? {
                    let (id, name) = k.into_parts();
                    // A key twice (or two keys with one id, see `TopKey`) counts as one.
                    counts.add(id, || name, c);
                }
                Ok(counts)
            }
        }
        d.deserialize_map(Pairs(std::marker::PhantomData))
    }
}

/// The next eviction victims, so a full summary does not scan all its entries for every new
/// key (heavy windows evict on most inserts: the scan, its key comparisons and the victim's
/// clone were the largest share of a node's profile). The ids of the keys that had the
/// smallest count at the last scan, in ascending key order: the victim is the last one still
/// at that count — the smallest count, the largest key among equals, exactly as a full scan
/// picks it.
///
/// It stays right between scans because counts only grow and a newcomer always counts more
/// than the victim it replaces (`n ≥ 1`): nothing can join the smallest count, only leave it.
/// Anything else (an insert without eviction, a zero-weight newcomer, a merge) drops it. A
/// cache: never serialized, compared or cloned, so a summary's bytes and equality are those of
/// its counts alone, and a restored summary picks the same victims. Boxed, and only once a
/// summary is full: most summaries never are, and a window holds five.
#[derive(Debug, Default)]
struct Victims(Option<Box<VictimList>>);

#[derive(Debug)]
struct VictimList {
    count: u64,
    ascending: Vec<u64>,
}

impl Victims {
    fn clear(&mut self) {
        if let Some(v) = &mut self.0 {
            v.ascending.clear();
        }
    }
}

impl Clone for Victims {
    fn clone(&self) -> Self {
        Victims::default()
    }
}

impl<K: TopKey> PartialEq for TopK<K> {
    fn eq(&self, other: &Self) -> bool {
        self.capacity == other.capacity && self.counts == other.counts
    }
}

impl<K: TopKey> TopK<K> {
    pub fn with_capacity(capacity: u32) -> Self {
        TopK {
            capacity: capacity.max(1),
            counts: Counts::default(),
            victims: Victims::default(),
        }
    }

    pub fn insert<Q: KeyOf<K> + ?Sized>(&mut self, key: &Q) {
        self.insert_n(key, 1);
    }

    /// Count `key` `n` times (a weight: milliseconds for time by path).
    pub fn insert_n<Q: KeyOf<K> + ?Sized>(&mut self, key: &Q, n: u64) {
        let id = key.id();
        if let Some(c) = self.counts.get_mut(id) {
            c.0 += n;
            return;
        }
        if self.counts.len() < self.capacity as usize {
            self.victims.clear();
            self.counts.insert_new(id, key.name(), (n, 0));
            return;
        }
        // Evict the smallest: the newcomer inherits its count as error (Space-Saving).
        let (victim, min) = self.next_victim();
        self.counts.remove(victim);
        if n == 0 {
            self.victims.clear(); // the newcomer joins the smallest count
        }
        self.counts.insert_new(id, key.name(), (min + n, min));
    }

    /// The id of the entry with the smallest count, the largest key among equals (so the choice
    /// depends on the counts alone, not on the map's order, which differs after a restore).
    fn next_victim(&mut self) -> (u64, u64) {
        loop {
            if let Some(v) = &mut self.victims.0 {
                while let Some(id) = v.ascending.pop() {
                    if self.counts.get(id).is_some_and(|c| c.0 == v.count) {
                        return (id, v.count);
                    }
                }
            }
            let min = self
                .counts
                .cells()
                .map(|(_, _, c)| c.0)
                .min()
                .expect("capacity ≥ 1, so a full map is non-empty");
            let mut at_min: Vec<(K::Ref<'_>, u64)> = self
                .counts
                .cells()
                .filter(|(_, _, c)| c.0 == min)
                .map(|(id, name, _)| (K::as_ref(id, name), id))
                .collect();
            at_min.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            let ascending = at_min.into_iter().map(|(_, id)| id).collect();
            self.victims = Victims(Some(Box::new(VictimList {
                count: min,
                ascending,
            })));
        }
    }

    /// Forget the eviction candidates, e.g. once the summary is final.
    pub fn drop_victims(&mut self) {
        self.victims = Victims::default();
    }

    /// Merge another summary (Agarwal et al., "Mergeable summaries"): sum, then keep the largest.
    pub fn merge(&mut self, other: &TopK<K>) {
        self.victims.clear();
        for (id, name, c) in other.counts.cells() {
            self.counts.add(id, || name.clone(), *c);
        }
        let cap = self.capacity.max(other.capacity) as usize;
        self.capacity = cap as u32;
        if self.counts.len() > cap {
            let mut all = self.counts.drain();
            all.sort_by(|(ia, (na, ca)), (ib, (nb, cb))| {
                cb.0.cmp(&ca.0)
                    .then_with(|| K::as_ref(*ia, na).cmp(&K::as_ref(*ib, nb)))
            });
            all.truncate(cap);
            for (id, (name, c)) in all {
                self.counts.insert_new(id, name, c);
            }
        }
    }

    /// The `k` largest, by count then key, with their (upper-bound) counts.
    pub fn top(&self, k: usize) -> Vec<(K, u64)> {
        type Entry<'a, K> = (<K as TopKey>::Ref<'a>, u64);
        let mut all: Vec<Entry<'_, K>> = self.counts.iter().map(|(k, c)| (k, c.0)).collect();
        fn order<'a, K: TopKey>(a: &Entry<'a, K>, b: &Entry<'a, K>) -> std::cmp::Ordering {
            b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0))
        }
        // The k first picked out, then only they sorted: a full summary holds 100 keys, the
        // lake asks for 10, and most keys tie at small counts (comparing their strings).
        if k < all.len() {
            all.select_nth_unstable_by(k, order::<K>);
            all.truncate(k);
        }
        all.sort_unstable_by(order::<K>);
        all.into_iter().map(|(k, c)| (K::from_ref(k), c)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plain_sketch(values: &[f64]) -> DDSketch {
        let mut d = new_sketch();
        values.iter().for_each(|&v| d.add(v));
        d
    }

    fn latency() -> impl Strategy<Value = f64> {
        prop_oneof![
            0.0f64..5_000.0,
            Just(0.0),
            -10.0f64..0.0,
            0.0f64..0.002,
            Just(f64::NAN)
        ]
    }

    proptest! {
        #[test]
        fn kept_values_answer_and_serialize_as_the_sketch_would(
            a in proptest::collection::vec(latency(), 0..40),
            b in proptest::collection::vec(latency(), 0..40),
        ) {
            let (mut q, mut other) = (Quantiles::default(), Quantiles::default());
            a.iter().for_each(|&v| q.add(v));
            b.iter().for_each(|&v| other.add(v));
            let d = plain_sketch(&a);
            let qs = [0.0, 0.25, 0.5, 0.9, 0.99, 1.0];
            prop_assert_eq!(q.count(), d.count() as u64);
            prop_assert_eq!(q.quantiles(qs), qs.map(|p| d.quantile(p).unwrap()));
            prop_assert_eq!(q.max(), d.max());
            prop_assert_eq!(rmp_serde::to_vec(&q).unwrap(), rmp_serde::to_vec(&d).unwrap());
            // Merged, and read back from bytes: the sketches' merge, byte for byte.
            let mut merged = plain_sketch(&a);
            merged.merge(&plain_sketch(&b)).unwrap();
            q.merge(&other).unwrap();
            prop_assert_eq!(rmp_serde::to_vec(&q).unwrap(), rmp_serde::to_vec(&merged).unwrap());
            let back: Quantiles = rmp_serde::from_slice(&rmp_serde::to_vec(&q).unwrap()).unwrap();
            prop_assert_eq!(back.quantiles(qs), qs.map(|p| merged.quantile(p).unwrap()));
        }
    }

    /// A written map's keys in the order they were written.
    struct KeysAsWritten(Vec<String>);

    impl<'de> Deserialize<'de> for KeysAsWritten {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Keys;
            impl<'de> serde::de::Visitor<'de> for Keys {
                type Value = KeysAsWritten;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a map")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> Result<KeysAsWritten, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((k, _)) = m.next_entry::<String, serde::de::IgnoredAny>()? {
                        keys.push(k);
                    }
                    Ok(KeysAsWritten(keys))
                }
            }
            d.deserialize_map(Keys)
        }
    }

    proptest! {
        /// A summary is written in the keys' byte order, whatever order its map holds them in
        /// (a replay must write the same bytes): short keys, keys that are prefixes of others,
        /// NUL bytes and long shared beginnings included.
        #[test]
        fn summaries_are_written_in_key_order(
            keys in proptest::collection::vec("(/api/v1/)?[a\\x00\\x7f\\u{e9}]{0,10}", 1..60),
        ) {
            let mut t: TopK = TopK::with_capacity(1_000);
            keys.iter().for_each(|k| t.insert(k.as_str()));
            let written = rmp_serde::from_slice::<KeysAsWritten>(&rmp_serde::to_vec(&t.counts).unwrap())
                .unwrap()
                .0;
            let mut want: Vec<String> = keys.clone();
            want.sort();
            want.dedup();
            prop_assert_eq!(written, want);
        }
    }

    fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
        sorted[((sorted.len() - 1) as f64 * q).floor() as usize]
    }

    proptest! {
        #[test]
        fn merged_quantiles_stay_within_relative_error(
            a in proptest::collection::vec(0.5f64..60_000.0, 1..400),
            b in proptest::collection::vec(0.5f64..60_000.0, 1..400),
        ) {
            let (mut sa, mut sb) = (Quantiles::default(), Quantiles::default());
            a.iter().for_each(|v| sa.add(*v));
            b.iter().for_each(|v| sb.add(*v));
            sa.merge(&sb).unwrap();
            let mut all: Vec<f64> = a.iter().chain(b.iter()).copied().collect();
            all.sort_by(f64::total_cmp);
            prop_assert_eq!(sa.count(), all.len() as u64);
            for q in [0.5, 0.9, 0.95, 0.99] {
                let est = sa.quantile(q).unwrap();
                let truth = exact_quantile(&all, q);
                prop_assert!((est - truth).abs() <= truth * QUANTILE_RELATIVE_ERROR * 1.0001,
                    "q={} est={} truth={}", q, est, truth);
            }
        }

        #[test]
        fn topk_merge_counts_exact_when_under_capacity(
            a in proptest::collection::vec(0u8..20, 0..300),
            b in proptest::collection::vec(0u8..20, 0..300),
        ) {
            let (mut ta, mut tb) = (TopK::with_capacity(32), TopK::with_capacity(32));
            a.iter().for_each(|v| ta.insert(&v.to_string()));
            b.iter().for_each(|v| tb.insert(&v.to_string()));
            ta.merge(&tb);
            let mut truth: HashMap<String, u64> = HashMap::new();
            for v in a.iter().chain(b.iter()) { *truth.entry(v.to_string()).or_default() += 1; }
            for (k, c) in ta.top(100) { prop_assert_eq!(truth[&k], c); }
        }

        /// The candidate cache changes nothing: every step equals the full scan it replaced
        /// (smallest count, largest key among equals), through zero weights, merges and a
        /// restore from bytes in the middle of the stream.
        #[test]
        fn topk_evicts_exactly_as_a_full_scan(
            steps in proptest::collection::vec((0u32..40, 0u64..4, 0u8..20), 1..600),
            capacity in 1u32..12,
        ) {
            fn scan_insert(m: &mut HashMap<String, (u64, u64)>, cap: usize, key: &str, n: u64) {
                if let Some(c) = m.get_mut(key) {
                    c.0 += n;
                    return;
                }
                if m.len() < cap {
                    m.insert(key.to_owned(), (n, 0));
                    return;
                }
                let (victim, (min, _)) = m
                    .iter()
                    .min_by(|a, b| a.1 .0.cmp(&b.1 .0).then_with(|| b.0.cmp(a.0)))
                    .map(|(k, v)| (k.clone(), *v))
                    .unwrap();
                m.remove(&victim);
                m.insert(key.to_owned(), (min + n, min));
            }
            let mut t = TopK::with_capacity(capacity);
            let mut reference: HashMap<String, (u64, u64)> = HashMap::new();
            for (i, (key, n, action)) in steps.into_iter().enumerate() {
                let key = format!("k{key}");
                match action {
                    // A restore: the summary from its bytes, with no candidates.
                    0 => t = rmp_serde::from_slice(&rmp_serde::to_vec(&t).unwrap()).unwrap(),
                    // A merge with a one-key summary (merges sum, then keep the largest).
                    1 => {
                        let mut o = TopK::with_capacity(capacity);
                        o.insert_n(key.as_str(), n + 1);
                        t.merge(&o);
                        let e = reference.entry(key.clone()).or_insert((0, 0));
                        e.0 += n + 1;
                        if reference.len() > capacity as usize {
                            let mut all: Vec<_> = reference.drain().collect();
                            all.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
                            all.truncate(capacity as usize);
                            reference.extend(all);
                        }
                    }
                    _ => {
                        t.insert_n(key.as_str(), n);
                        scan_insert(&mut reference, capacity as usize, &key, n);
                    }
                }
                let now: HashMap<String, (u64, u64)> =
                    t.counts.iter().map(|(k, v)| (k.to_owned(), *v)).collect();
                prop_assert_eq!(&now, &reference, "after step {}", i);
            }
        }

        #[test]
        fn topk_overestimates_by_at_most_n_over_capacity(
            keys in proptest::collection::vec((0u32..500).prop_map(|v| v * v / 500), 1..2000),
        ) {
            let mut t = TopK::with_capacity(50);
            keys.iter().for_each(|v| t.insert(&v.to_string()));
            let mut truth: HashMap<String, u64> = HashMap::new();
            for v in &keys { *truth.entry(v.to_string()).or_default() += 1; }
            let bound = keys.len() as u64 / 50;
            for (k, c) in t.top(10) {
                let real = truth[&k];
                prop_assert!(c >= real && c - real <= bound, "{} {} {}", k, c, real);
            }
        }
    }

    /// Whether a summary keeps its keys in a vector or a map, it is written as the map earlier
    /// builds wrote, and reads what they wrote.
    #[test]
    fn topk_reads_and_writes_the_map_earlier_builds_did() {
        #[derive(Serialize, Deserialize)]
        struct Earlier {
            capacity: u32,
            counts: HashMap<String, (u64, u64)>,
        }
        for keys in [0, 1, FEW_KEYS, FEW_KEYS + 1, 40] {
            let mut t = TopK::with_capacity(32);
            for i in 0..keys {
                t.insert_n(format!("/p{i}").as_str(), i as u64 + 1);
            }
            let earlier: Earlier = rmp_serde::from_slice(&rmp_serde::to_vec(&t).unwrap()).unwrap();
            assert_eq!(earlier.counts.len(), keys.min(32));
            let mut top: Vec<_> = earlier
                .counts
                .iter()
                .map(|(k, c)| (k.clone(), c.0))
                .collect();
            top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            assert_eq!(top, t.top(100), "{keys} keys");
            let back: TopK = rmp_serde::from_slice(&rmp_serde::to_vec(&earlier).unwrap()).unwrap();
            assert_eq!(back, t, "{keys} keys");
        }
    }

    #[test]
    fn hll_within_two_percent_at_a_million_and_merges() {
        let (mut a, mut b) = (Distinct::default(), Distinct::default());
        for i in 0..1_000_000u32 {
            let ip = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
            if i % 2 == 0 {
                a.insert(&ip)
            } else {
                b.insert(&ip)
            }
            // overlap: every tenth value goes to both sides
            if i % 10 == 0 {
                b.insert(&ip)
            }
        }
        a.merge(&b).unwrap();
        let est = a.estimate() as f64;
        assert!((est - 1e6).abs() / 1e6 <= 0.02, "estimate {est}");
    }
}
