//! Answers this node can give from its own actors, the same whether the API asks or a peer does
//! (the cluster fan-out runs these on every member and merges).

use crate::{
    ask, lookup, owned_partitions, partition_statuses, shard_name, ArchiverMsg, HostTotals,
    PartitionStatus, WindowMsg, ARCHIVER_NAME,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use wtm_telemetry::ActorKind;

/// Which partitions this node answers for: a fixed set (generator, files: all must answer) or
/// whatever its consumer group assigned it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitions {
    Fixed(u32),
    Assigned,
}

/// Status of every partition this node answers for.
pub async fn partitions(which: Partitions) -> Result<Vec<PartitionStatus>, String> {
    let result = match which {
        Partitions::Fixed(n) => partition_statuses(0..n, true).await,
        Partitions::Assigned => partition_statuses(owned_partitions(), false).await,
    };
    result.map_err(|e| e.to_string())
}

/// Totals per host on this node: its newest `n` closed windows plus its open ones.
pub async fn host_totals(n: usize, shards: usize) -> Result<BTreeMap<String, HostTotals>, String> {
    let archiver = lookup::<ArchiverMsg>(ARCHIVER_NAME).ok_or("archiver is restarting")?;
    let mut all = ask(&archiver, ActorKind::Archiver, |r| {
        ArchiverMsg::Totals(n, r)
    })
    .await
    .map_err(|e| e.to_string())?;
    for i in 0..shards {
        let shard = lookup::<WindowMsg>(&shard_name(i)).ok_or("window shard is restarting")?;
        all.extend(
            ask(&shard, ActorKind::Window, WindowMsg::Totals)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let mut by_host: BTreeMap<String, HostTotals> = BTreeMap::new();
    for t in all {
        match by_host.get_mut(&t.host) {
            Some(e) => e.merge(&t),
            None => {
                by_host.insert(t.host.clone(), t);
            }
        }
    }
    Ok(by_host)
}

/// One node's share of `/v1/overview`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OverviewPart {
    pub partitions: Vec<PartitionStatus>,
    /// Every site this node holds a window of.
    pub hosts: Vec<String>,
}

pub async fn overview(which: Partitions, shards: usize) -> Result<OverviewPart, String> {
    Ok(OverviewPart {
        partitions: partitions(which).await?,
        hosts: host_totals(usize::MAX / 2, shards)
            .await?
            .into_keys()
            .collect(),
    })
}

/// Merge members' overview parts: a partition counts once, from its newest owner (the highest
/// epoch; a node that just lost it may still answer for a moment), and a site once.
pub fn merge_overviews(parts: impl IntoIterator<Item = OverviewPart>) -> OverviewPart {
    let mut partitions: BTreeMap<u32, PartitionStatus> = BTreeMap::new();
    let mut hosts = std::collections::BTreeSet::new();
    for part in parts {
        for p in part.partitions {
            match partitions.get(&p.partition) {
                Some(have) if have.owner_epoch >= p.owner_epoch => {}
                _ => {
                    partitions.insert(p.partition, p);
                }
            }
        }
        hosts.extend(part.hosts);
    }
    OverviewPart {
        partitions: partitions.into_values().collect(),
        hosts: hosts.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wtm_core::checkpoint::PartitionTotals;

    fn status(partition: u32, epoch: u64, events: u64) -> PartitionStatus {
        PartitionStatus {
            partition,
            next_offset: events,
            committed_offset: None,
            lag: None,
            owner_epoch: epoch,
            watermark_ms: None,
            max_event_ms: None,
            finished: false,
            totals: PartitionTotals {
                events,
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_partition_counts_once_from_its_newest_owner_and_a_host_once() {
        let a = OverviewPart {
            partitions: vec![status(0, 1, 10), status(1, 2, 20)],
            hosts: vec!["x".into(), "y".into()],
        };
        // b took partition 1 over (epoch 3) and still lists it; a has not let go yet.
        let b = OverviewPart {
            partitions: vec![status(1, 3, 25), status(2, 1, 5)],
            hosts: vec!["y".into(), "z".into()],
        };
        let m = merge_overviews([a, b]);
        let got: Vec<(u32, u64)> = m
            .partitions
            .iter()
            .map(|p| (p.partition, p.totals.events))
            .collect();
        assert_eq!(got, vec![(0, 10), (1, 25), (2, 5)]);
        assert_eq!(m.hosts, ["x", "y", "z"]);
    }
}
