//! The cluster's actors: [`MembershipActor`] (local; keeps the member table, sends heartbeats,
//! judges silence, redials) and [`PeerActor`] (the one actor peers talk to; hands what arrives to
//! the membership actor), plus the bridge from the node server's session events.

use crate::members::{Heard, Me, Membership};
use crate::wire::{Ack, PeerMsg, WireAnswer, WireBeat, WireQuery, WireShares};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{NodeEventSubscription, NodeServerMessage};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use wtm_core::time::now_ms;
use wtm_messages::local::{self, Partitions};
use wtm_messages::{
    lookup, mailbox, owned_partitions, tell, ArchiverMsg, ClusterAnswer, ClusterMsg, ClusterQuery,
    Gathered, HomeShares, HostsPage, PeerBeat, SessionEvent, ARCHIVER_NAME,
};
use wtm_telemetry::{ActorKind, KeyValue, Metrics};

/// The process group every node's peer actor joins.
pub const PEERS_GROUP: &str = "wtm.peers";

/// The process group of one member's peer actor (to send to that member alone).
fn peer_group(id: &str) -> String {
    format!("wtm.peer.{id}")
}

/// How long a fan-out waits for a peer's answer before it counts the peer as missing.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

pub struct MembershipArgs {
    pub me: Me,
    pub seeds: Vec<String>,
    pub heartbeat: Duration,
    pub failure_after: Duration,
    pub server: ActorRef<NodeServerMessage>,
    /// Dial peers over mutual TLS (`[cluster.tls]`).
    pub tls: Option<crate::tls::Tls>,
    /// Finds peers' addresses outside the cluster (`cluster.discover_from_kafka`).
    pub discover: Option<crate::Discover>,
}

/// How often peers are looked for outside the cluster.
const DISCOVER_EVERY: Duration = Duration::from_secs(5);

pub struct MembershipActor;

pub struct MembershipRun {
    members: Membership,
    heartbeat: Duration,
    server: ActorRef<NodeServerMessage>,
    tls: Option<crate::tls::Tls>,
    /// Open sessions by id: peer address and whether it authenticated.
    sessions: HashMap<u64, (String, bool)>,
    /// Hosts this node's detector judges (told by the detector).
    home_hosts: u64,
    discover: Option<crate::Discover>,
    /// A discovery is running (blocking, off the actor); when the last one started.
    discovering: bool,
    last_discovery: Option<Instant>,
}

fn restarts_so_far() -> u64 {
    Metrics::global()
        .restarts_total
        .load(std::sync::atomic::Ordering::Relaxed)
}

impl MembershipRun {
    fn tick(&mut self, me: &ActorRef<ClusterMsg>) {
        let now = Instant::now();
        let m = Metrics::global();
        for id in self.members.judge(now) {
            m.cluster_peer_failures.add(1, &[]);
            tracing::warn!(peer = %id, "peer silent past cluster.failure_after_ms: down");
        }
        let beat = PeerBeat {
            id: self.members.me().id.clone(),
            cluster_addr: self.members.me().cluster_addr.clone(),
            api_addr: self.members.me().api_addr.clone(),
            sent_ms: now_ms(),
            partitions: owned_partitions(),
            peers: self.members.live_addrs(),
            home_hosts: self.home_hosts,
            actor_restarts: restarts_so_far(),
        };
        for cell in ractor::pg::get_members(&PEERS_GROUP.to_owned()) {
            if cell.get_id().is_local() {
                continue;
            }
            let peer: ActorRef<PeerMsg> = cell.into();
            // A session closing under us: the peer's silence is judged by the heartbeats.
            peer.cast(PeerMsg::Beat(WireBeat::Beat(beat.clone()))).ok();
        }
        for addr in self.members.to_dial(now) {
            let (server, me, tls) = (self.server.clone(), me.clone(), self.tls.clone());
            tokio::spawn(async move {
                let ok = match dial(&server, &addr, tls).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "dial failed; retrying with backoff");
                        false
                    }
                };
                tell(&me, ActorKind::Cluster, ClusterMsg::Dialed { addr, ok }).ok();
            });
        }
        if let Some(discover) = self.discover.clone() {
            if !self.discovering
                && self
                    .last_discovery
                    .is_none_or(|t| now >= t + DISCOVER_EVERY)
            {
                self.discovering = true;
                self.last_discovery = Some(now);
                let me = me.clone();
                tokio::task::spawn_blocking(move || {
                    let found = discover();
                    tell(&me, ActorKind::Cluster, ClusterMsg::Discovered(found)).ok();
                });
            }
        }
        // The archiver routes shares by this view (and judges against its partitions).
        let mine = owned_partitions();
        if let Some(archiver) = lookup::<ArchiverMsg>(ARCHIVER_NAME) {
            let view = self.members.view(&mine);
            tell(&archiver, ActorKind::Archiver, ArchiverMsg::View(view)).ok();
        }
        m.cluster_members.record(
            self.members.alive_count() as u64,
            &[KeyValue::new("state", "alive")],
        );
        m.cluster_members.record(
            self.members.down_count() as u64,
            &[KeyValue::new("state", "down")],
        );
        mailbox::tell_after(me.clone(), ActorKind::Cluster, self.heartbeat, || {
            ClusterMsg::Tick
        });
    }

    fn session(&mut self, e: SessionEvent) {
        match e {
            SessionEvent::Opened { session, peer_addr } => {
                self.sessions.insert(session, (peer_addr, false));
            }
            SessionEvent::Authenticated { session } => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.1 = true;
                }
            }
            SessionEvent::Closed { session } => {
                if let Some((addr, false)) = self.sessions.remove(&session) {
                    Metrics::global()
                        .cluster_refused
                        .add(1, &[KeyValue::new("reason", "auth")]);
                    tracing::warn!(peer = %addr, "cluster session refused: authentication failed (a wrong cookie?)");
                }
            }
        }
    }
}

impl Actor for MembershipActor {
    type Msg = ClusterMsg;
    type State = MembershipRun;
    type Arguments = MembershipArgs;

    async fn pre_start(
        &self,
        me: ActorRef<ClusterMsg>,
        args: MembershipArgs,
    ) -> Result<MembershipRun, ActorProcessingErr> {
        let m = Metrics::global();
        for reason in ["auth", "version", "tls"] {
            m.cluster_refused.add(0, &[KeyValue::new("reason", reason)]);
        }
        m.cluster_peer_failures.add(0, &[]);
        m.cluster_shares_sent.add(0, &[]);
        m.late_shares.add(0, &[]);
        m.cluster_handover_timeouts.add(0, &[]);
        for query in ClusterQuery::NAMES {
            m.cluster_call_failures
                .add(0, &[KeyValue::new("query", query)]);
        }
        tell(&me, ActorKind::Cluster, ClusterMsg::Tick)?;
        Ok(MembershipRun {
            members: Membership::new(args.me, &args.seeds, args.failure_after),
            heartbeat: args.heartbeat,
            server: args.server,
            tls: args.tls,
            sessions: HashMap::new(),
            home_hosts: 0,
            discover: args.discover,
            discovering: false,
            last_discovery: None,
        })
    }

    async fn handle(
        &self,
        me: ActorRef<ClusterMsg>,
        msg: ClusterMsg,
        run: &mut MembershipRun,
    ) -> Result<(), ActorProcessingErr> {
        let started = Instant::now();
        match msg {
            ClusterMsg::Tick => run.tick(&me),
            ClusterMsg::Heard(beat) => {
                let (id, addr) = (beat.id.clone(), beat.cluster_addr.clone());
                match run.members.heard(beat, Instant::now(), now_ms()) {
                    Heard::Joined => tracing::info!(peer = %id, %addr, "peer alive"),
                    Heard::Known => {}
                    Heard::Impostor => {
                        tracing::warn!(peer = %id, %addr, "a peer presents this node's own id: ignored (node.id must be unique)")
                    }
                }
            }
            ClusterMsg::Unreadable(reason) => {
                Metrics::global()
                    .cluster_refused
                    .add(1, &[KeyValue::new("reason", "version")]);
                tracing::warn!(%reason, "a peer's message was unreadable: ignored");
            }
            ClusterMsg::Session(e) => run.session(e),
            ClusterMsg::Dialed { addr, ok } => run.members.dialed(&addr, ok, Instant::now()),
            ClusterMsg::Members(reply) => {
                reply
                    .send(run.members.members(
                        owned_partitions(),
                        run.home_hosts,
                        restarts_so_far(),
                    ))
                    .ok();
            }
            ClusterMsg::HomeHosts(n) => run.home_hosts = n,
            ClusterMsg::Discovered(addrs) => {
                run.discovering = false;
                run.members.discovered(&addrs);
            }
            ClusterMsg::Ask(t, reply) => {
                tokio::spawn(async move {
                    reply.send(ask_one(&t.to, t.query).await).ok();
                });
            }
            ClusterMsg::Send { to, shares } => send(to.as_deref(), shares, &run.members.live_ids()),
            ClusterMsg::Gather(q, reply) => {
                let alive = run.members.live_ids();
                let down = run.members.uncovered_down(&owned_partitions());
                tokio::spawn(async move {
                    let mut g = gather(q, alive).await;
                    g.missing.extend(down);
                    reply.send(g).ok();
                });
            }
        }
        mailbox::handled(me.get_id(), ActorKind::Cluster, started);
        Ok(())
    }
}

/// Open a session to `addr`, over TLS when configured. A TLS handshake the peer refuses (or
/// whose certificate this node refuses) counts as a refused peer.
async fn dial(
    server: &ActorRef<NodeServerMessage>,
    addr: &str,
    tls: Option<crate::tls::Tls>,
) -> Result<(), String> {
    let Some(tls) = tls else {
        return ractor_cluster::client_connect(server, addr)
            .await
            .map_err(|e| e.to_string());
    };
    let name = tls.server_name(addr)?;
    match ractor_cluster::client_connect_enc(server, addr, tls.connector, name).await {
        Ok(()) => Ok(()),
        Err(ractor_cluster::ClientConnectErr::Encryption(e)) => {
            Metrics::global()
                .cluster_refused
                .add(1, &[KeyValue::new("reason", "tls")]);
            tracing::warn!(%addr, error = %e, "cluster peer refused: TLS handshake failed");
            Err(e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Cast `shares` to one member's peer actor, or to every other member's (`to` None). A member
/// without a session gets nothing: its windows go out incomplete after the merge wait, and
/// homes move off it once it is judged down.
fn send(to: Option<&str>, shares: HomeShares, members: &[String]) {
    let targets: Vec<&str> = match to {
        Some(id) => vec![id],
        None => members.iter().map(String::as_str).collect(),
    };
    for peer in targets.into_iter().filter_map(peer_ref) {
        peer.cast(PeerMsg::Shares(WireShares(Ok(shares.clone()))))
            .ok();
    }
}

/// Member `id`'s peer actor. Two nodes that dialled each other share two sessions, and the
/// group may list the peer through both: always the same one, so what this node sends a member
/// reaches it in the order it was sent.
fn peer_ref(id: &str) -> Option<ActorRef<PeerMsg>> {
    ractor::pg::get_members(&peer_group(id))
        .into_iter()
        .filter(|c| !c.get_id().is_local())
        .min_by_key(|c| (c.get_id().node(), c.get_id().pid()))
        .map(ActorRef::from)
}

/// Ask member `to` alone, within [`CALL_TIMEOUT`].
async fn ask_one(to: &str, q: ClusterQuery) -> Option<ClusterAnswer> {
    call_peer(peer_ref(to)?, q).await.map(|(_, a)| a)
}

/// One timed call to a peer, counted by query.
async fn call_peer(peer: ActorRef<PeerMsg>, q: ClusterQuery) -> Option<(String, ClusterAnswer)> {
    let name = q.name();
    let started = Instant::now();
    let m = Metrics::global();
    let label = [KeyValue::new("query", name)];
    match peer
        .call(|r| PeerMsg::Query(WireQuery(Ok(q)), r), Some(CALL_TIMEOUT))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(WireAnswer(Ok((id, a)))))
            if !matches!(a, ClusterAnswer::Failed(_)) =>
        {
            m.cluster_call_seconds
                .record(started.elapsed().as_secs_f64(), &label);
            Some((id, a))
        }
        _ => {
            m.cluster_call_failures.add(1, &label);
            None
        }
    }
}

/// Ask every remote peer actor `q` at once; answers that do not come within [`CALL_TIMEOUT`]
/// leave their member in `missing`.
async fn gather(q: ClusterQuery, alive: Vec<String>) -> Gathered {
    let mut calls = tokio::task::JoinSet::new();
    for cell in ractor::pg::get_members(&PEERS_GROUP.to_owned()) {
        if cell.get_id().is_local() {
            continue;
        }
        let peer: ActorRef<PeerMsg> = cell.into();
        calls.spawn(call_peer(peer, q.clone()));
    }
    let mut out = Gathered::default();
    while let Some(done) = calls.join_next().await {
        if let Ok(Some((id, answer))) = done {
            out.answers.push((id, answer));
        }
    }
    out.missing = alive
        .into_iter()
        .filter(|id| !out.answers.iter().any(|(a, _)| a == id))
        .collect();
    out
}

/// What this node answers for when a peer asks.
#[derive(Debug, Clone, Copy)]
pub struct LocalScope {
    pub partitions: Partitions,
    pub shards: usize,
    /// Window shares per page of a `/v1/hosts` answer.
    pub page_shares: usize,
}

pub struct PeerArgs {
    pub membership: ActorRef<ClusterMsg>,
    pub id: String,
    pub scope: LocalScope,
}

/// The actor other nodes send to (found through the `wtm.peers` process group).
pub struct PeerActor;

impl Actor for PeerActor {
    type Msg = PeerMsg;
    type State = PeerArgs;
    type Arguments = PeerArgs;

    async fn pre_start(
        &self,
        me: ActorRef<PeerMsg>,
        args: PeerArgs,
    ) -> Result<PeerArgs, ActorProcessingErr> {
        ractor::pg::join(PEERS_GROUP.to_owned(), vec![me.get_cell()]);
        ractor::pg::join(peer_group(&args.id), vec![me.get_cell()]);
        Ok(args)
    }

    async fn handle(
        &self,
        _me: ActorRef<PeerMsg>,
        msg: PeerMsg,
        run: &mut PeerArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PeerMsg::Beat(WireBeat::Beat(b)) => {
                tell(&run.membership, ActorKind::Cluster, ClusterMsg::Heard(b))?
            }
            PeerMsg::Beat(WireBeat::Unreadable(r)) => tell(
                &run.membership,
                ActorKind::Cluster,
                ClusterMsg::Unreadable(r),
            )?,
            PeerMsg::Query(WireQuery(q), reply) => {
                // Answered off this actor: heartbeats keep flowing while actors are asked.
                let (id, scope) = (run.id.clone(), run.scope);
                tokio::spawn(async move {
                    let answer = match q {
                        Ok(q) => answer(q, scope).await,
                        Err(e) => ClusterAnswer::Failed(e),
                    };
                    reply.send(WireAnswer(Ok((id, answer)))).ok();
                });
            }
            PeerMsg::Ping(reply) => {
                reply.send(Ack(true)).ok();
            }
            PeerMsg::Shares(WireShares(Ok(shares))) => {
                if let Some(archiver) = lookup::<ArchiverMsg>(ARCHIVER_NAME) {
                    tell(
                        &archiver,
                        ActorKind::Archiver,
                        ArchiverMsg::FromPeer(shares),
                    )
                    .ok();
                }
            }
            PeerMsg::Shares(WireShares(Err(reason))) => tell(
                &run.membership,
                ActorKind::Cluster,
                ClusterMsg::Unreadable(reason),
            )?,
        }
        Ok(())
    }
}

async fn answer(q: ClusterQuery, scope: LocalScope) -> ClusterAnswer {
    match q {
        ClusterQuery::Overview => match local::overview(scope.partitions, scope.shards).await {
            Ok(part) => ClusterAnswer::Overview(part),
            Err(e) => ClusterAnswer::Failed(e),
        },
        ClusterQuery::Hosts { windows, page } => {
            match local::host_counts(windows, scope.shards, page.unwrap_or(HostsPage::ALL)).await {
                // A page asked for, or everything when it fits one page.
                Ok(counts) if page.is_some() => ClusterAnswer::Hosts {
                    counts,
                    page: page.unwrap_or(HostsPage::ALL),
                },
                Ok(counts) => {
                    let of = local::pages_for(&counts, scope.page_shares);
                    let first = HostsPage { index: 0, of };
                    ClusterAnswer::Hosts {
                        counts: counts
                            .into_iter()
                            .filter(|h| first.holds(&h.host))
                            .collect(),
                        page: first,
                    }
                }
                Err(e) => ClusterAnswer::Failed(e),
            }
        }
        ClusterQuery::HostWindows {
            host,
            range,
            detail,
        } => match local::host_parts(&host, scope.shards, range, detail).await {
            Ok(parts) => ClusterAnswer::HostWindows(parts),
            Err(e) => ClusterAnswer::Failed(e),
        },
        ClusterQuery::Handover(q) => match local::handover(q).await {
            Ok(h) => ClusterAnswer::Handover(h),
            Err(e) => ClusterAnswer::Failed(e),
        },
        ClusterQuery::Anomalies { host, since_ms } => {
            match local::anomalies(wtm_messages::AnomalyQuery { host, since_ms }).await {
                Ok(list) => ClusterAnswer::Anomalies(list),
                Err(e) => ClusterAnswer::Failed(e),
            }
        }
    }
}

/// The node server's session events, as plain messages to the membership actor.
pub struct SessionEvents(pub ActorRef<ClusterMsg>);

impl SessionEvents {
    fn send(&self, e: SessionEvent) {
        tell(&self.0, ActorKind::Cluster, ClusterMsg::Session(e)).ok();
    }
}

impl NodeEventSubscription for SessionEvents {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        self.send(SessionEvent::Opened {
            session: ses.node_id,
            peer_addr: ses.peer_addr,
        });
    }
    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        self.send(SessionEvent::Closed {
            session: ses.node_id,
        });
    }
    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        self.send(SessionEvent::Authenticated {
            session: ses.node_id,
        });
    }
}
