//! The fault schedule: a pure function of the seed and the profile, so a failing run is replayed
//! exactly by running it again with the same seed.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// SIGKILL a node; start it again after the hold.
    Kill,
    /// SIGSTOP a node past the Kafka session timeout (another node takes its partitions over),
    /// then SIGCONT: it must not write anything that changes the result.
    Zombie,
    /// Stop the broker; start it again (same data, same ports) after the hold.
    BrokerRestart,
    /// Stop the S3 API; start it again (same data, same port) after the hold.
    S3Outage,
    /// Drop every packet the node sends (nftables, by the node's group id) for the hold: the
    /// broker, the S3 API and its peers stop hearing from it.
    Partition,
    /// A second producer at the overload rate for the hold.
    Overload,
    /// Fill the file system under one node's data directory (a small tmpfs) for the hold.
    DiskFull,
}

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [
        FaultKind::Kill,
        FaultKind::Zombie,
        FaultKind::BrokerRestart,
        FaultKind::S3Outage,
        FaultKind::Partition,
        FaultKind::Overload,
        FaultKind::DiskFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Zombie => "zombie",
            FaultKind::BrokerRestart => "broker_restart",
            FaultKind::S3Outage => "s3_outage",
            FaultKind::Partition => "partition",
            FaultKind::Overload => "overload",
            FaultKind::DiskFull => "disk_full",
        }
    }

    /// Whether the fault is aimed at one node.
    pub fn has_victim(self) -> bool {
        matches!(
            self,
            FaultKind::Kill | FaultKind::Zombie | FaultKind::Partition | FaultKind::DiskFull
        )
    }

    /// How long the fault lasts, drawn within the kind's range (seconds).
    fn hold(self, rng: &mut ChaCha8Rng) -> u64 {
        match self {
            FaultKind::Kill => rng.random_range(3..=10),
            // Past the nodes' 6 s session timeout, so the group moves the partitions.
            FaultKind::Zombie => rng.random_range(14..=22),
            FaultKind::BrokerRestart => rng.random_range(5..=12),
            FaultKind::S3Outage => rng.random_range(15..=30),
            FaultKind::Partition => rng.random_range(12..=20),
            FaultKind::Overload => rng.random_range(20..=30),
            FaultKind::DiskFull => rng.random_range(8..=15),
        }
    }
}

/// One fault: what, to whom, when (seconds after the producer started) and for how long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    pub kind: FaultKind,
    /// Index of the node it hits, for kinds aimed at one node.
    pub victim: Option<usize>,
    pub at_s: u64,
    pub hold_s: u64,
}

/// Every kind once, in an order drawn from the seed, one after another with a recovery gap
/// between them: the quick profile.
pub fn every_kind_once(seed: u64, nodes: usize, first_at_s: u64, gap_s: u64) -> Vec<Fault> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut kinds = FaultKind::ALL.to_vec();
    kinds.shuffle(&mut rng);
    sequence(&mut rng, kinds, nodes, first_at_s, |_| gap_s)
}

/// Faults of random kinds at random gaps until `until_s`: the soak.
pub fn random(seed: u64, nodes: usize, first_at_s: u64, until_s: u64) -> Vec<Fault> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut at = first_at_s;
    loop {
        let kind = FaultKind::ALL[rng.random_range(0..FaultKind::ALL.len())];
        let f = draw(&mut rng, kind, nodes, at);
        if f.at_s + f.hold_s > until_s {
            return out;
        }
        at = f.at_s + f.hold_s + rng.random_range(15..=60);
        out.push(f);
    }
}

/// The faults of the named kinds only (all when `kinds` is empty), keeping their moments.
pub fn only(faults: Vec<Fault>, kinds: &[String]) -> Vec<Fault> {
    if kinds.is_empty() {
        return faults;
    }
    faults
        .into_iter()
        .filter(|f| kinds.iter().any(|k| k == f.kind.as_str()))
        .collect()
}

fn sequence(
    rng: &mut ChaCha8Rng,
    kinds: Vec<FaultKind>,
    nodes: usize,
    first_at_s: u64,
    gap: impl Fn(FaultKind) -> u64,
) -> Vec<Fault> {
    let mut at = first_at_s;
    kinds
        .into_iter()
        .map(|kind| {
            let f = draw(rng, kind, nodes, at);
            at = f.at_s + f.hold_s + gap(kind);
            f
        })
        .collect()
}

fn draw(rng: &mut ChaCha8Rng, kind: FaultKind, nodes: usize, at_s: u64) -> Fault {
    Fault {
        kind,
        victim: kind.has_victim().then(|| rng.random_range(0..nodes)),
        at_s,
        hold_s: kind.hold(rng),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        assert_eq!(every_kind_once(7, 3, 20, 15), every_kind_once(7, 3, 20, 15));
        assert_eq!(random(7, 3, 20, 1800), random(7, 3, 20, 1800));
        assert_ne!(every_kind_once(7, 3, 20, 15), every_kind_once(8, 3, 20, 15));
    }

    #[test]
    fn the_quick_profile_has_every_kind_once_without_overlap() {
        for seed in 0..50 {
            let s = every_kind_once(seed, 3, 20, 15);
            let mut kinds: Vec<_> = s.iter().map(|f| f.kind).collect();
            kinds.sort();
            assert_eq!(kinds, FaultKind::ALL.to_vec());
            for w in s.windows(2) {
                assert!(w[0].at_s + w[0].hold_s < w[1].at_s);
            }
            assert!(s
                .iter()
                .all(|f| f.victim.is_some_and(|v| v < 3) == f.kind.has_victim()));
        }
    }

    #[test]
    fn the_soak_ends_before_its_end() {
        let s = random(3, 3, 20, 1800);
        assert!(s.len() > 10);
        assert!(s.iter().all(|f| f.at_s + f.hold_s <= 1800));
    }
}
