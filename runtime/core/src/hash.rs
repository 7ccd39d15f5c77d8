//! FNV-1a: a small, stable hash (the same on every run, node and build), for decisions that must
//! agree everywhere: window shards, generator streams, sketch keys.

use std::hash::Hasher;

const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = Fnv1a::default();
    h.write(bytes);
    h.finish()
}

/// FNV-1a as a streaming [`std::hash::Hasher`].
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(OFFSET_BASIS)
    }
}

impl Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(PRIME);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// The window shard of a host, of `shards` (at least one).
pub fn shard_of(host: &str, shards: usize) -> usize {
    (fnv1a(host.as_bytes()) % shards.max(1) as u64) as usize
}

/// The member a key belongs to by rendezvous (highest random weight) hashing: every node that
/// knows the same members picks the same one, and a member joining or leaving moves only the
/// keys it wins or held (about 1/n of them), never keys between the others. None without members.
pub fn rendezvous<'a>(key: &str, members: &'a [String]) -> Option<&'a str> {
    members
        .iter()
        .max_by_key(|m| {
            let mut h = Fnv1a::default();
            h.write(m.as_bytes());
            h.write(&[0xff]);
            h.write(key.as_bytes());
            (mix(h.finish()), m.as_str())
        })
        .map(String::as_str)
}

/// splitmix64's finalizer: FNV's low bits vary little between keys that share a prefix, and
/// rendezvous needs weights that are independent across members.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_spreads_keys_and_moves_only_the_joiners_share() {
        let three: Vec<String> = ["n1", "n2", "n3"].map(String::from).to_vec();
        let mut four = three.clone();
        four.push("n4".into());
        let hosts: Vec<String> = (0..3000).map(|i| format!("site-{i}.example")).collect();
        let mut per = std::collections::HashMap::new();
        let mut moved = 0;
        for h in &hosts {
            let before = rendezvous(h, &three).unwrap();
            let after = rendezvous(h, &four).unwrap();
            *per.entry(before).or_insert(0) += 1;
            if before != after {
                assert_eq!(after, "n4", "a join moves keys only to the joiner");
                moved += 1;
            }
            // Order of the member list does not matter.
            let mut rev = four.clone();
            rev.reverse();
            assert_eq!(rendezvous(h, &rev), Some(after));
        }
        for (m, n) in per {
            assert!((800..1200).contains(&n), "{m} got {n} of 3000");
        }
        assert!((550..950).contains(&moved), "{moved} of 3000 moved to n4");
        assert_eq!(rendezvous("x", &[]), None);
    }

    #[test]
    fn matches_the_published_fnv1a_vectors() {
        // From the FNV reference test suite (draft-eastlake-fnv).
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn shards_are_stable_and_in_range() {
        for s in 1..8 {
            assert!(shard_of("www.example.com", s) < s);
        }
        assert_eq!(shard_of("x", 0), 0);
    }
}
