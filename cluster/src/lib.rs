//! # Layout
//!
//! `wtm-cluster`: nodes that talk. The only crate that uses `ractor_cluster`.
//!
//! - [`members`]: membership as plain data — heartbeats heard, silence judged against
//!   `cluster.failure_after_ms`, whom to dial and when (seeds and gossiped peers, with backoff,
//!   forever: ractor_cluster neither redials nor times out a silent peer).
//! - [`wire`]: what crosses nodes, versioned (rmp-serde after a version byte); bad bytes are a
//!   value, never a panic.
//! - [`node`]: the membership actor (`wtm.cluster`, asked through `wtm_messages::ClusterMsg`), the
//!   peer actor other nodes send to, and the node server's session events.
//!
//! [`start`] brings it up from `[cluster]`: the node server on `cluster.listen` (authenticated by
//! `cluster.cookie`), then membership. Without `cluster.listen` a node runs alone, as before.

pub mod members;
pub mod node;
pub mod wire;

use ractor::{Actor, ActorRef};
use ractor_cluster::{NodeServer, NodeServerMessage};
use std::time::Duration;
use wtm_config::Config;
use wtm_messages::{ClusterMsg, CLUSTER_NAME};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster: {0}")]
    Start(String),
}

/// A running cluster member.
pub struct ClusterNode {
    pub server: ActorRef<NodeServerMessage>,
    pub membership: ActorRef<ClusterMsg>,
}

/// Join the cluster `[cluster]` describes (None without `cluster.listen`). `node_id` names this
/// node to its peers; `api_addr` is where its HTTP API listens.
pub async fn start(
    cfg: &Config,
    node_id: &str,
    api_addr: &str,
) -> Result<Option<ClusterNode>, ClusterError> {
    let c = &cfg.cluster;
    let Some(listen) = &c.listen else {
        return Ok(None);
    };
    let listen: std::net::SocketAddr = listen
        .parse()
        .map_err(|e| ClusterError::Start(format!("cluster.listen {listen:?}: {e}")))?;
    let cookie = c
        .cookie
        .as_ref()
        .map(|s| s.expose().to_owned())
        .ok_or_else(|| ClusterError::Start("cluster.cookie is required".into()))?;
    let advertised = c.advertised().unwrap_or_default().to_owned();
    let host = advertised
        .rsplit_once(':')
        .map_or(advertised.clone(), |(h, _)| h.to_owned());
    let server = NodeServer::new(
        listen.port(),
        cookie,
        node_id.to_owned(),
        host,
        None,
        Some(ractor_cluster::node::NodeConnectionMode::Isolated),
    )
    .with_listen_addr(listen.ip())
    // A host's series carries its windows' sketches from every partition: room for the
    // largest default answer (60 windows × many partitions) without a frame killing the session.
    .with_max_inbound_frame_size(64 << 20);
    let (server, _) = Actor::spawn(None, server, ())
        .await
        .map_err(|e| ClusterError::Start(format!("node server on {listen}: {e}")))?;
    let args = node::MembershipArgs {
        me: members::Me {
            id: node_id.to_owned(),
            cluster_addr: advertised,
            api_addr: api_addr.to_owned(),
        },
        seeds: c.seeds.clone(),
        heartbeat: Duration::from_millis(c.heartbeat_ms),
        failure_after: Duration::from_millis(c.failure_after_ms),
        server: server.clone(),
    };
    let (membership, _) = Actor::spawn(Some(CLUSTER_NAME.into()), node::MembershipActor, args)
        .await
        .map_err(|e| ClusterError::Start(format!("membership: {e}")))?;
    let peer = node::PeerArgs {
        membership: membership.clone(),
        id: node_id.to_owned(),
        scope: node::LocalScope {
            partitions: match cfg.source.kind {
                wtm_config::SourceKind::Kafka => wtm_messages::local::Partitions::Assigned,
                _ => wtm_messages::local::Partitions::Fixed(cfg.source.partitions),
            },
            shards: cfg.window.shards,
        },
    };
    Actor::spawn(None, node::PeerActor, peer)
        .await
        .map_err(|e| ClusterError::Start(format!("peer actor: {e}")))?;
    server
        .cast(NodeServerMessage::SubscribeToEvents {
            id: "wtm.membership".into(),
            subscription: Box::new(node::SessionEvents(membership.clone())),
        })
        .map_err(|e| ClusterError::Start(format!("node server events: {e}")))?;
    tracing::info!(%listen, "cluster member listening");
    Ok(Some(ClusterNode { server, membership }))
}
