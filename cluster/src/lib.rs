//! # Layout
//!
//! `wtm-cluster`: nodes that talk. The only crate that uses `ractor_cluster`.
//!
//! - [`members`]: membership as plain data — heartbeats heard, silence judged against
//!   `cluster.failure_after_ms`, whom to dial and when (seeds and gossiped peers, with backoff,
//!   forever: ractor_cluster neither redials nor times out a silent peer).
//! - [`wire`]: what crosses nodes, versioned (rmp-serde after a version byte); bad bytes are a
//!   value, never a panic.
//! - [`tls`]: mutual TLS between nodes (`[cluster.tls]`), both sides of the connection.
//! - [`node`]: the membership actor (`wtm.cluster`, asked through `wtm_messages::ClusterMsg`), the
//!   peer actor other nodes send to, and the node server's session events.
//!
//! [`start`] brings it up from `[cluster]`: the node server on `cluster.listen` (authenticated by
//! `cluster.cookie`), then membership. Without `cluster.listen` a node runs alone, as before.
//! Peers are found from `cluster.seeds`, from each other's heartbeats, and (with
//! `cluster.discover_from_kafka`) from the `client.id`s of the Kafka consumer group's members.

pub mod members;
pub mod node;
pub mod tls;
pub mod wire;

use ractor::{Actor, ActorRef};
use ractor_cluster::{NodeServer, NodeServerMessage};
use std::sync::Arc;
use std::time::Duration;
use wtm_config::Config;
use wtm_messages::{ClusterMsg, CLUSTER_NAME};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster: {0}")]
    Start(String),
}

/// The local address this host routes from towards the first resolvable seed (else towards the
/// default route), for a node that listens on a wildcard address without `cluster.advertise`
/// (a container whose address is known only once it runs). A UDP socket's `connect` only picks
/// a route: no packet is sent.
async fn local_ip_towards(seeds: &[String]) -> Option<std::net::IpAddr> {
    let mut targets = Vec::new();
    for seed in seeds {
        if let Ok(mut addrs) = tokio::net::lookup_host(seed.as_str()).await {
            targets.extend(addrs.next());
        }
    }
    // TEST-NET-1 (RFC 5737): never answered; only its route matters.
    targets.push(std::net::SocketAddr::from(([192, 0, 2, 1], 9)));
    for t in targets {
        let bind: std::net::SocketAddr = if t.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(sock) = std::net::UdpSocket::bind(bind) else {
            continue;
        };
        if sock.connect(t).is_ok() {
            if let Ok(local) = sock.local_addr() {
                if !local.ip().is_unspecified() {
                    return Some(local.ip());
                }
            }
        }
    }
    None
}

/// Finds peers' cluster addresses outside the cluster (blocking: it runs off the actor).
pub type Discover = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// The Kafka `client.id` of a node that can be found through its consumer group: it carries the
/// node's cluster address.
pub fn discoverable_client_id(node_id: &str, advertised: &str) -> String {
    format!("wtm-{node_id}@{advertised}")
}

/// The cluster address a group member's `client.id` carries ([`discoverable_client_id`]).
pub fn address_in_client_id(client_id: &str) -> Option<&str> {
    let (head, addr) = client_id.rsplit_once('@')?;
    (head.starts_with("wtm-") && !addr.is_empty()).then_some(addr)
}

/// The address peers dial to reach this node: `cluster.advertise`, else `cluster.listen`, or,
/// for a wildcard listen address, this host's address towards the seeds (None without
/// `cluster.listen`).
pub async fn advertised(cfg: &Config) -> Result<Option<String>, ClusterError> {
    let c = &cfg.cluster;
    let Some(listen) = &c.listen else {
        return Ok(None);
    };
    let listen: std::net::SocketAddr = listen
        .parse()
        .map_err(|e| ClusterError::Start(format!("cluster.listen {listen:?}: {e}")))?;
    Ok(Some(match &c.advertise {
        Some(a) => a.clone(),
        None if listen.ip().is_unspecified() => {
            let ip = local_ip_towards(&c.seeds).await.ok_or_else(|| {
                ClusterError::Start(format!(
                    "cluster.listen {listen} is a wildcard and no local address could be found: set cluster.advertise"
                ))
            })?;
            tracing::info!(%ip, "cluster.advertise not set: advertising this node's address");
            std::net::SocketAddr::new(ip, listen.port()).to_string()
        }
        None => listen.to_string(),
    }))
}

/// A running cluster member.
pub struct ClusterNode {
    pub server: ActorRef<NodeServerMessage>,
    pub membership: ActorRef<ClusterMsg>,
}

/// Join the cluster `[cluster]` describes, as `advertised` ([`advertised`]; only with
/// `cluster.listen`). `node_id` names this node to its peers; `api_addr` is where its HTTP API
/// listens; `discover` finds peers outside the cluster (the Kafka group), besides the seeds.
pub async fn start(
    cfg: &Config,
    node_id: &str,
    api_addr: &str,
    advertised: &str,
    discover: Option<Discover>,
) -> Result<ClusterNode, ClusterError> {
    let c = &cfg.cluster;
    let listen = c.listen.as_deref().unwrap_or_default();
    let listen: std::net::SocketAddr = listen
        .parse()
        .map_err(|e| ClusterError::Start(format!("cluster.listen {listen:?}: {e}")))?;
    let cookie = c
        .cookie
        .as_ref()
        .map(|s| s.expose().to_owned())
        .ok_or_else(|| ClusterError::Start("cluster.cookie is required".into()))?;
    let advertised = advertised.to_owned();
    let host = advertised
        .rsplit_once(':')
        .map_or(advertised.clone(), |(h, _)| h.to_owned());
    let tls = match &c.tls {
        Some(t) => Some(tls::Tls::load(t).map_err(ClusterError::Start)?),
        None => None,
    };
    let server = NodeServer::new(
        listen.port(),
        cookie,
        node_id.to_owned(),
        host,
        tls.as_ref()
            .map(|t| ractor_cluster::IncomingEncryptionMode::Tls(t.acceptor.clone())),
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
        tls,
        discover,
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
            page_shares: c.page_shares,
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
    tracing::info!(%listen, tls = c.tls.is_some(), "cluster member listening");
    Ok(ClusterNode { server, membership })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_id_carries_the_cluster_address() {
        let id = discoverable_client_id("node-a@rack1", "10.0.0.7:7400");
        assert_eq!(address_in_client_id(&id), Some("10.0.0.7:7400"));
        assert_eq!(address_in_client_id("wtm-node-a"), None);
        assert_eq!(address_in_client_id("other-app@10.0.0.9:1"), None);
        assert_eq!(address_in_client_id("wtm-x@"), None);
    }
}
