//! A host's window shares as one byte string of fixed-width records, for [`crate::HostCounts`]
//! on the wire.
//!
//! Why not serde's derive: a cluster-wide `/v1/hosts` gathers every (site, window, partition)
//! share from each member — 60,000 for 1,000 sites over an hour — and decoding them field by
//! field through rmp-serde was a quarter of the asking node's CPU per request (perf, bench/run
//! cluster). Fixed records make encoding a copy and decoding a loop over slices. Written here
//! because it is 40 lines over `to_le_bytes`, and a crate for it (bytemuck) would need a
//! padding-free copy of the struct anyway.

use serde::de::{Error, Visitor};
use serde::{Deserializer, Serializer};
use wtm_core::agg::ShareCounts;

/// Bytes per share: start, partition, requests, bytes, 5xx, bots, p99, distinct clients, final.
const RECORD: usize = 8 + 4 + 8 * 4 + 4 + 4 + 1;

pub fn serialize<S: Serializer>(shares: &[ShareCounts], s: S) -> Result<S::Ok, S::Error> {
    let mut out = Vec::with_capacity(shares.len() * RECORD);
    for c in shares {
        out.extend_from_slice(&c.start_ms.to_le_bytes());
        out.extend_from_slice(&c.partition.to_le_bytes());
        for n in [c.requests, c.bytes, c.status_5xx, c.bots] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&c.latency_p99_ms.to_le_bytes());
        out.extend_from_slice(&c.unique_clients.to_le_bytes());
        out.push(u8::from(c.is_final));
    }
    s.serialize_bytes(&out)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ShareCounts>, D::Error> {
    d.deserialize_bytes(Records)
}

struct Records;

impl Visitor<'_> for Records {
    type Value = Vec<ShareCounts>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "window shares as {RECORD}-byte records")
    }

    fn visit_bytes<E: Error>(self, b: &[u8]) -> Result<Vec<ShareCounts>, E> {
        if !b.len().is_multiple_of(RECORD) {
            return Err(E::custom(format!(
                "{} bytes of window shares is not a whole number of {RECORD}-byte records",
                b.len()
            )));
        }
        b.chunks_exact(RECORD).map(decode).collect()
    }

    fn visit_byte_buf<E: Error>(self, b: Vec<u8>) -> Result<Vec<ShareCounts>, E> {
        self.visit_bytes(&b)
    }
}

fn decode<E: Error>(r: &[u8]) -> Result<ShareCounts, E> {
    // Every slice below is in bounds: `r` is exactly RECORD bytes.
    let u64_at = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().unwrap_or_default());
    let u32_at = |i: usize| u32::from_le_bytes(r[i..i + 4].try_into().unwrap_or_default());
    let is_final = match r[RECORD - 1] {
        0 => false,
        1 => true,
        other => {
            return Err(E::custom(format!(
                "window share flag {other} is not 0 or 1"
            )))
        }
    };
    Ok(ShareCounts {
        start_ms: u64_at(0) as i64,
        partition: u32_at(8),
        requests: u64_at(12),
        bytes: u64_at(20),
        status_5xx: u64_at(28),
        bots: u64_at(36),
        latency_p99_ms: f32::from_bits(u32_at(44)),
        unique_clients: u32_at(48),
        is_final,
    })
}

#[cfg(test)]
mod tests {
    use crate::HostCounts;
    use proptest::prelude::*;
    use wtm_core::agg::ShareCounts;

    fn share() -> impl Strategy<Value = ShareCounts> {
        (
            any::<i64>(),
            any::<u32>(),
            any::<[u64; 4]>(),
            any::<f32>().prop_filter("NaN never equals itself", |f| !f.is_nan()),
            any::<u32>(),
            any::<bool>(),
        )
            .prop_map(
                |(start_ms, partition, n, p99, uniques, is_final)| ShareCounts {
                    start_ms,
                    partition,
                    requests: n[0],
                    bytes: n[1],
                    status_5xx: n[2],
                    bots: n[3],
                    latency_p99_ms: p99,
                    unique_clients: uniques,
                    is_final,
                },
            )
    }

    proptest! {
        #[test]
        fn shares_cross_the_wire_unchanged(host in ".{0,20}", shares in proptest::collection::vec(share(), 0..50)) {
            let h = HostCounts { host, shares };
            let bytes = rmp_serde::to_vec(&h).unwrap();
            prop_assert_eq!(rmp_serde::from_slice::<HostCounts>(&bytes).unwrap(), h);
        }
    }

    #[test]
    fn torn_or_foreign_records_are_an_error_not_a_panic() {
        let h = HostCounts {
            host: "a.example".into(),
            shares: vec![ShareCounts::default(); 2],
        };
        let bytes = rmp_serde::to_vec(&h).unwrap();
        // [array of 2, "a.example", bin8 of 2 records]: one byte short, its length said so.
        assert_eq!(&bytes[11..13], &[0xc4, 106]);
        let mut torn = bytes.clone();
        torn[12] = 105;
        torn.pop();
        let err = rmp_serde::from_slice::<HostCounts>(&torn).unwrap_err();
        assert!(err.to_string().contains("105 bytes"), "{err}");
        torn.pop();
        assert!(rmp_serde::from_slice::<HostCounts>(&torn).is_err());
        // A flag that is neither 0 nor 1.
        let mut flag = bytes.clone();
        *flag.last_mut().unwrap() = 7;
        let err = rmp_serde::from_slice::<HostCounts>(&flag).unwrap_err();
        assert!(err.to_string().contains("flag 7"), "{err}");
    }
}
