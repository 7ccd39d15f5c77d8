//! What crosses nodes, with a version byte in front (rmp-serde behind ractor's
//! `BytesConvertable`). ractor gives no way to fail a decode, so bad bytes become a value
//! ([`WireBeat::Unreadable`]) instead of ractor's blanket-serde panic.

use ractor::{BytesConvertable, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use serde::de::DeserializeOwned;
use serde::Serialize;
use wtm_messages::{ClusterAnswer, ClusterQuery, HomeShares, PeerBeat};

/// First byte of every cluster payload; a peer with another one is refused. 2: host homes hand
/// over by asking (`ClusterQuery::Handover`) instead of pushing judged logs; 3: `/v1/hosts`
/// shares carry bots, p99 and distinct clients; 4: anomaly scores and episodes; 6: `/v1/hosts`
/// shares as fixed-width records; 7: a series' closed shares as stored (statistics + encoded
/// sketches, `wtm_core::agg::Share`).
pub const WIRE_VERSION: u8 = 7;

/// A heartbeat as it travels.
#[derive(Debug, Clone, PartialEq)]
pub enum WireBeat {
    Beat(PeerBeat),
    /// Bytes this build cannot read: another wire version, or garbage.
    Unreadable(String),
}

impl BytesConvertable for WireBeat {
    fn into_bytes(self) -> Vec<u8> {
        let mut out = vec![WIRE_VERSION];
        match self {
            // Encoding a plain struct of strings and numbers cannot fail.
            WireBeat::Beat(b) => {
                if let Err(e) = rmp_serde::encode::write(&mut out, &b) {
                    tracing::error!(error = %e, "cannot encode a heartbeat");
                }
            }
            WireBeat::Unreadable(_) => out.clear(),
        }
        out
    }

    fn from_bytes(bytes: Vec<u8>) -> Self {
        match bytes.split_first() {
            Some((&WIRE_VERSION, rest)) => match rmp_serde::from_slice(rest) {
                Ok(b) => WireBeat::Beat(b),
                Err(e) => WireBeat::Unreadable(format!("undecodable heartbeat: {e}")),
            },
            Some((v, _)) => {
                WireBeat::Unreadable(format!("wire version {v}, this node speaks {WIRE_VERSION}"))
            }
            None => WireBeat::Unreadable("empty heartbeat".into()),
        }
    }
}

/// Wrapper so `bool` replies cross nodes (ractor implements `BytesConvertable` for a few
/// primitives only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack(pub bool);

impl BytesConvertable for Ack {
    fn into_bytes(self) -> Vec<u8> {
        vec![WIRE_VERSION, self.0 as u8]
    }
    fn from_bytes(bytes: Vec<u8>) -> Self {
        Ack(bytes == [WIRE_VERSION, 1])
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![WIRE_VERSION];
    if let Err(e) = rmp_serde::encode::write(&mut out, v) {
        tracing::error!(error = %e, "cannot encode a cluster message");
        out.clear();
    }
    out
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&WIRE_VERSION, rest)) => {
            rmp_serde::from_slice(rest).map_err(|e| format!("undecodable cluster message: {e}"))
        }
        Some((v, _)) => Err(format!("wire version {v}, this node speaks {WIRE_VERSION}")),
        None => Err("empty cluster message".into()),
    }
}

/// A payload as it travels: the decoded value, or why these bytes could not be read (ractor's
/// `BytesConvertable` cannot fail a decode, so the failure travels as a value).
macro_rules! wire_payload {
    ($(#[$doc:meta])* $name:ident($ty:ty)) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(pub Result<$ty, String>);

        impl BytesConvertable for $name {
            fn into_bytes(self) -> Vec<u8> {
                match self.0 {
                    Ok(v) => encode(&v),
                    Err(_) => Vec::new(),
                }
            }
            fn from_bytes(bytes: Vec<u8>) -> Self {
                $name(decode(&bytes))
            }
        }
    };
}

wire_payload!(
    /// A question as it travels (an unreadable one is answered with `Failed`).
    WireQuery(ClusterQuery)
);
wire_payload!(
    /// An answer as it travels: who answered, and what.
    WireAnswer((String, ClusterAnswer))
);
wire_payload!(
    /// Shares for a host's home as they travel (unreadable ones are counted and dropped: the
    /// window then goes out incomplete after `detector.merge_wait_s`).
    WireShares(HomeShares)
);

/// The messages one node's peer actor accepts from others.
#[derive(RactorClusterMessage)]
pub enum PeerMsg {
    Beat(WireBeat),
    /// Answer a question from this node's own actors.
    #[rpc]
    Query(WireQuery, RpcReplyPort<WireAnswer>),
    /// Are you there? (answered by the peer actor itself: a liveness probe for tests and tools)
    #[rpc]
    Ping(RpcReplyPort<Ack>),
    /// For this node's archiver: shares of hosts homed here, and partitions' progress.
    Shares(WireShares),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_foreign_or_bad_bytes_never_panic() {
        let b = PeerBeat {
            id: "a".into(),
            cluster_addr: "127.0.0.1:1".into(),
            api_addr: "127.0.0.1:2".into(),
            sent_ms: 5,
            partitions: vec![3],
            peers: vec!["127.0.0.1:9".into()],
            home_hosts: 7,
            actor_restarts: 2,
        };
        let bytes = WireBeat::Beat(b.clone()).into_bytes();
        assert_eq!(WireBeat::from_bytes(bytes.clone()), WireBeat::Beat(b));
        let mut other = bytes.clone();
        other[0] = WIRE_VERSION + 1;
        assert!(
            matches!(WireBeat::from_bytes(other), WireBeat::Unreadable(r) if r.contains("wire version"))
        );
        assert!(matches!(
            WireBeat::from_bytes(vec![WIRE_VERSION, 0xc1]),
            WireBeat::Unreadable(_)
        ));
        assert!(matches!(
            WireBeat::from_bytes(vec![]),
            WireBeat::Unreadable(_)
        ));
        assert_eq!(Ack::from_bytes(Ack(true).into_bytes()), Ack(true));
        let q = WireQuery(Ok(ClusterQuery::Overview));
        assert_eq!(WireQuery::from_bytes(q.clone().into_bytes()).0, q.0);
        let a = WireAnswer(Ok(("n1".into(), ClusterAnswer::Failed("x".into()))));
        assert!(matches!(
            WireAnswer::from_bytes(a.into_bytes()).0,
            Ok((id, ClusterAnswer::Failed(why))) if id == "n1" && why == "x"
        ));
        assert!(WireAnswer::from_bytes(vec![9, 9]).0.is_err());
    }
}
