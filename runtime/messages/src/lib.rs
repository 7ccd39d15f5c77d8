//! # Layout
//!
//! `wtm-messages`: every message the actors exchange and the names they register under, below
//! the actors so that actors hold `ActorRef<FooMsg>` without importing one another, and the API
//! asks them without pulling in Kafka, S3 or sled.
//!
//! - [`mailbox`]: sends go through [`tell`] and [`ask`], which count every message in the
//!   receiver's mailbox (ractor does not expose queue lengths) and put a timeout on every call;
//!   a stopped actor's unhandled messages are taken off the count.
//! - [`HostCounts`]' shares cross nodes as fixed-width records (`packed`): a cluster-wide
//!   `/v1/hosts` gathers every (site, window, partition) share from each member.
//! - The message enums, one section per actor: window shards, partition owners, archiver,
//!   detector, supervisor; [`Failure`] is a classified error carried in replies and failures.

pub mod local;
pub mod mailbox;
mod packed;

pub use mailbox::{ask, tell, SendError, CALL_TIMEOUT};
pub use wtm_core::agg::ShareCounts;
pub use wtm_core::hash::shard_of;

use ractor::RpcReplyPort;
use ractor_cluster_derive::RactorMessage;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use wtm_core::agg::{ClosedWindow, Detail, Share, WindowAgg, WindowKey};
use wtm_core::checkpoint::{PartitionTotals, Publication, RestoredWindows};
use wtm_core::error::ErrorKind;
use wtm_core::records::EventColumns;
use wtm_telemetry::ActorKind;

pub fn owner_name(partition: u32) -> String {
    format!("wtm.owner.{partition}")
}
pub fn shard_name(shard: usize) -> String {
    format!("wtm.window.{shard}")
}
pub const ARCHIVER_NAME: &str = "wtm.archiver";
pub const CLUSTER_NAME: &str = "wtm.cluster";
pub const DETECTOR_NAME: &str = "wtm.detector";
pub const SUPERVISOR_NAME: &str = "wtm.supervisor";

/// Status of each partition's owner. With `strict`, every one must answer (a fixed set of
/// partitions: generator, files); otherwise an owner that stops between the listing and the
/// asking is simply not ours any more (a consumer group moved it). The owners are asked all at
/// once: an owner answers between two of its messages (a checkpoint may take a while), and the
/// answer waits for the slowest, not for the sum.
pub async fn partition_statuses(
    partitions: impl IntoIterator<Item = u32>,
    strict: bool,
) -> Result<Vec<PartitionStatus>, SendError> {
    let asks = partitions.into_iter().map(|p| async move {
        match lookup::<OwnerMsg>(&owner_name(p)) {
            Some(owner) => ask(&owner, ActorKind::PartitionOwner, OwnerMsg::Status).await,
            None => Err(SendError::Gone(format!("partition owner {p}"))),
        }
    });
    let mut out = Vec::new();
    for status in futures_util::future::join_all(asks).await {
        match status {
            Ok(s) => out.push(s),
            Err(e) if strict => return Err(e),
            Err(_) => {}
        }
    }
    Ok(out)
}

/// Partitions whose owner is running on this node, ascending.
pub fn owned_partitions() -> Vec<u32> {
    let mut out: Vec<u32> = ractor::registry::registered()
        .iter()
        .filter_map(|n| n.strip_prefix("wtm.owner.")?.parse().ok())
        .collect();
    out.sort_unstable();
    out
}

/// Look up a registered actor by name.
pub fn lookup<M: ractor::Message>(name: &str) -> Option<ractor::ActorRef<M>> {
    ractor::registry::where_is(name).map(ractor::ActorRef::from)
}

/// A failure with its kind: whether trying again can help. Replies that can fail carry it, and
/// an actor that fails with one tells its supervisor whether a restart is worth it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub kind: ErrorKind,
    pub message: String,
}

impl Failure {
    pub fn transient(message: impl Into<String>) -> Failure {
        Failure {
            kind: ErrorKind::Transient,
            message: message.into(),
        }
    }
    pub fn permanent(message: impl Into<String>) -> Failure {
        Failure {
            kind: ErrorKind::Permanent,
            message: message.into(),
        }
    }
}

// ---- window shards ----------------------------------------------------------------------------

/// Events of one partition for one shard; every event is on time (lateness decided upstream).
#[derive(Debug)]
pub struct EventBatch {
    pub partition: u32,
    /// Boxed: a batch's columns are a dozen vectors, and every `WindowMsg` would be that large.
    pub events: Box<EventColumns>,
}

/// Close the partition's windows the watermark has passed and snapshot the rest.
#[derive(Debug, Clone, Copy)]
pub struct CutRequest {
    pub partition: u32,
    pub watermark_ms: i64,
    /// Which of the windows still open to encode (for a durable checkpoint).
    pub open: OpenCut,
}

/// The open windows a cut encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenCut {
    /// None (no checkpoint is saved, e.g. batch mode).
    None,
    /// Those added to (or opened) since the previous cut that encoded any: a delta.
    Changed,
    /// All of them: a whole checkpoint (a shared snapshot, or a new base for deltas).
    All,
}

#[derive(Debug, Default)]
pub struct CutResult {
    pub closed: Vec<ClosedWindow>,
    /// Encoded [`OpenWindows`](wtm_core::checkpoint::OpenWindows), as the request asked (empty
    /// when there are none).
    pub open: Vec<u8>,
}

/// Windows overlapping `[from_ms, to_ms)`, for one host or all.
#[derive(Debug, Clone)]
pub struct WindowQuery {
    pub host: Option<String>,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Only the span of this many windows up to each host's newest window before `to_ms` (a
    /// default series range: the archiver keeps six hours, a series shows one).
    pub last_windows: Option<i64>,
    /// How much of each share: a series shows no top-K (most of a window's size), and closed
    /// shares' statistics are enough for a window with one share.
    pub detail: Detail,
}

#[derive(RactorMessage)]
pub enum WindowMsg {
    Apply(EventBatch),
    Cut(CutRequest, RpcReplyPort<CutResult>),
    /// Replace the partition's open windows (restore from a checkpoint).
    Reset(u32, RestoredWindows),
    /// Open windows for the API.
    Query(WindowQuery, RpcReplyPort<Vec<(WindowKey, WindowAgg)>>),
    /// Per-host counts of the open windows, of the sites on one page.
    Counts(HostsPage, RpcReplyPort<Vec<HostCounts>>),
    /// The sites with an open window, names only (nothing of a window is read).
    Names(RpcReplyPort<Vec<String>>),
}

/// A host's totals over a set of windows (the `/v1/hosts` listing).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostTotals {
    pub host: String,
    pub windows: u64,
    pub requests: u64,
    pub bytes: u64,
    pub status_5xx: u64,
    pub bots: u64,
    pub first_start_ms: i64,
    pub last_start_ms: i64,
    /// The host's newest closed window, from its closed shares.
    pub latest: Option<LatestCounts>,
    /// Requests per window start, oldest first, for the newest `n` starts up to
    /// `last_start_ms` (a sparkline; zero where the host had no window), when asked for.
    pub requests_per_window: Option<Vec<u64>>,
}

/// A host's newest closed window as its shares tell it: counts add up exactly; `latency_p99_ms`
/// and `unique_clients` are exact (within the sketches' error) when one partition holds the
/// window, and over several the largest share's (p99: an upper bound; clients: a lower bound).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatestCounts {
    pub start_ms: i64,
    pub requests: u64,
    pub status_5xx: u64,
    pub bots: u64,
    pub latency_p99_ms: f64,
    pub unique_clients: u64,
    /// Partitions holding a share of the window.
    pub partitions: u32,
}

/// One page of the sites, by hash: those with `fnv1a(host) % of == index` (`of` = 1: all). Pages
/// keep a cross-node `/v1/hosts` answer under the transport's frame limit at any number of sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostsPage {
    pub index: u32,
    pub of: u32,
}

impl HostsPage {
    pub const ALL: HostsPage = HostsPage { index: 0, of: 1 };

    pub fn holds(&self, host: &str) -> bool {
        self.of <= 1 || wtm_core::hash::fnv1a(host.as_bytes()) % self.of as u64 == self.index as u64
    }
}

/// Counts of the newest `windows` closed windows, of the sites on `page`.
#[derive(Debug, Clone, Copy)]
pub struct CountsQuery {
    pub windows: usize,
    pub page: HostsPage,
}

/// One host's plain counts per (window, partition) share: what `/v1/hosts` adds up, small
/// enough to gather from every member (no sketches).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostCounts {
    pub host: String,
    #[serde(with = "packed")]
    pub shares: Vec<ShareCounts>,
}

// ---- partition owners -------------------------------------------------------------------------

/// One partition as its owner sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionStatus {
    pub partition: u32,
    pub next_offset: u64,
    /// The offset last confirmed committed upstream (Kafka), if the source commits.
    pub committed_offset: Option<u64>,
    /// Records available at the source but not yet read, if the source knows.
    pub lag: Option<u64>,
    /// How many times the partition has been restored (see `PartitionCheckpoint::owner_epoch`).
    pub owner_epoch: u64,
    pub watermark_ms: Option<i64>,
    pub max_event_ms: Option<i64>,
    pub finished: bool,
    pub totals: PartitionTotals,
}

#[derive(RactorMessage)]
pub enum OwnerMsg {
    /// Load the checkpoint, refill the shards and open the source (sent to itself at start, so
    /// that a slow restore never holds up the supervisor that spawned the owner).
    Restore,
    /// Read and route the next batch from the source.
    Poll,
    /// Cut windows, commit the checkpoint, start writing the ready publications to the lake.
    Checkpoint,
    /// The owner's checkpoint save with this id has finished: go on with it (commit, write).
    Saved(u64),
    /// The owner's lake write with this id has finished: take its result (and start the next).
    /// The write runs beside the owner, so status and checkpoints never wait on the lake.
    LakeWritten(u64),
    /// Drop in-flight state and restore from the checkpoint (a window shard restarted).
    Rewind,
    /// Checkpoint now and stop reading (shutdown; later, a partition being revoked). Replies
    /// once the checkpoint is durable and its publications are written (or the lake failed).
    Drain(RpcReplyPort<()>),
    Status(RpcReplyPort<PartitionStatus>),
}

/// Partitions a consumer group takes away from this node.
#[derive(Debug, Clone)]
pub struct Revocation {
    pub partitions: Vec<u32>,
    /// Checkpoint before stopping (an orderly revoke); false when the assignment was lost and
    /// another node may already own the partitions: then nothing more is written.
    pub drain: bool,
}

// ---- archiver ---------------------------------------------------------------------------------

/// What an owner tells the archiver about its closed windows not yet in the lake.
#[derive(Debug)]
pub enum Unwritten {
    /// A publication just cut (before its checkpoint is durable: a replay would cut the same).
    Cut(Arc<Publication>),
    /// The partition's whole set now: a restored owner's unpublished publications, or none (a
    /// fenced or stopped owner).
    Reset {
        partition: u32,
        unpublished: Vec<Arc<Publication>>,
    },
}

#[derive(RactorMessage)]
pub enum ArchiverMsg {
    /// Write a partition's committed publications (oldest first) to the lake; replies once
    /// their files are durable and in the tables (one commit per table for all of them, so a
    /// partition's write rate is not bound by the commit interval). Writes of different
    /// partitions run in parallel; an owner sends its next ones after the reply.
    Publish(Vec<Arc<Publication>>, RpcReplyPort<Result<(), Failure>>),
    /// A publication's files are durable (sent by the archiver's own upload task): update the
    /// recent windows and hand them to the detector, in the order the writes finished.
    Written(Arc<Publication>, Vec<ShareCounts>),
    /// Closed windows an owner cut that the lake does not hold yet: the API shows them until
    /// their `Written`.
    Unwritten(Unwritten),
    /// Every window `partition` closes at `watermark_ms` is written (sent by the owner after a
    /// checkpoint that left nothing unwritten): the detector's whole windows wait for this.
    Progress { partition: u32, watermark_ms: i64 },
    /// Closed windows from the recent-history store, for the API.
    Windows(
        WindowQuery,
        RpcReplyPort<Result<Vec<(WindowKey, Share)>, String>>,
    ),
    /// Per-host counts of the most recent closed windows, of the sites on one page.
    Counts(CountsQuery, RpcReplyPort<Result<Vec<HostCounts>, String>>),
    /// How many distinct hosts have been archived since start.
    HostsSeen(RpcReplyPort<usize>),
    /// The sites with a closed window the API serves (retained, or not written yet).
    HostNames(RpcReplyPort<Vec<String>>),
    /// The cluster as membership sees it now (sent every heartbeat; absent on a single node):
    /// whose host is whose, and every partition in the cluster.
    View(ClusterView),
    /// Shares and progress from other nodes, for the hosts this node is home for.
    FromPeer(HomeShares),
    /// A member that just agreed on `members` asks what this node holds of the hosts homed at
    /// it under them (answered only once this node agrees on the same members).
    Handover(HandoverAsk, RpcReplyPort<Handover>),
    /// What a member answered this node's handover ask (sent by the archiver's own ask task;
    /// None when the member did not answer in time).
    HandedOver(HandedOver),
    /// The recent windows of hosts newly judged here, read back from the lake (sent by the
    /// archiver's own rebuild task; empty when the lake could not be read).
    HistoryRebuilt(Vec<HostHistory>),
    /// The start-up refill of the history store from the lake has finished (sent by the
    /// archiver's own refill task, which runs beside the node's start; an error when the lake
    /// could not be read: the API then serves what is archived from now on).
    HistoryRefilled(Result<RefilledHistory, String>),
    /// Whether the start-up refill of the history store is over (the API's history is whole
    /// again): the node's readiness waits for it.
    HistoryReady(RpcReplyPort<bool>),
}

/// What the archiver's start-up refill read back from the lake into the history store.
#[derive(Debug, Default)]
pub struct RefilledHistory {
    pub windows: usize,
    /// The counts of the windows recent enough for the in-memory listing, oldest first.
    pub listed: Vec<(String, ShareCounts)>,
    /// Each site's newest window start.
    pub newest: std::collections::HashMap<String, i64>,
}

/// A handover ask, from the member `from` that agreed on `members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverAsk {
    pub from: String,
    pub members: Vec<String>,
}

/// A member's answer to a handover ask.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Handover {
    /// The member agrees on the asked members: it judges none of the asker's hosts any more,
    /// and what it held of them is in this answer (and the next ones while `more`).
    pub settled: bool,
    /// Per host, the windows it judged: never judged again by the new home.
    pub judged: Vec<(String, Vec<i64>)>,
    /// Shares it kept waiting for a window of those hosts.
    pub shares: Vec<ClosedWindow>,
    /// Bounded answers: ask again for the rest.
    pub more: bool,
}

/// The answer to this node's handover ask to `from`.
#[derive(Debug, Clone)]
pub struct HandedOver {
    pub from: String,
    pub members: Vec<String>,
    pub answer: Option<Handover>,
}

/// What crosses to a host's home for its detector.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum HomeShares {
    /// Closed (host, window, partition) shares, already in the lake. `hops` counts forwards
    /// between nodes whose views disagreed, so a share never circles.
    Windows { shares: Vec<ClosedWindow>, hops: u8 },
    /// Every window `partition` closes at `watermark_ms` is written (to every member).
    Progress { partition: u32, watermark_ms: i64 },
}

/// The cluster's members as one node sees them: the members every live member agrees on
/// (this node's id included when it is one), sorted; the peers this node hears now (agreed or
/// not); and every partition a member owns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterView {
    pub me: String,
    pub members: Vec<String>,
    pub live: Vec<String>,
    pub partitions: Vec<u32>,
}

impl ClusterView {
    /// The member whose detector judges `host` (rendezvous over the live members).
    pub fn home_of(&self, host: &str) -> &str {
        wtm_core::hash::rendezvous(host, &self.members).unwrap_or(&self.me)
    }

    pub fn is_home(&self, host: &str) -> bool {
        self.home_of(host) == self.me
    }
}

// ---- detector ---------------------------------------------------------------------------------

/// The per-window values the detector models.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WindowPoint {
    pub start_ms: i64,
    pub requests: f64,
    pub error_rate: f64,
    pub latency_p99_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub host: String,
    /// `requests`, `error_rate` or `latency_p99_ms`.
    pub metric: String,
    pub window_start_ms: i64,
    pub observed: f64,
    pub expected: f64,
    pub lower: f64,
    pub upper: f64,
    /// Robust z-score of the observation against the host's recent history.
    pub score: f64,
    /// How unusual the window is, 0–1 (see `WindowScores`).
    pub anomaly_score: f64,
    /// `traffic_spike`, `traffic_drop`, `error_burst` or `latency_degradation`.
    pub kind: String,
    /// What produced `expected`: `baseline` (median/MAD) or `ets` / `mstl` (augurs).
    pub model: String,
}

/// The anomaly score of each metric of one judged window (index as `METRICS`: requests,
/// error_rate, latency_p99_ms), 0–1 and monotone in how far the window is from what was
/// expected; None where the metric was not judged (too little history or too few requests).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WindowScores {
    pub start_ms: i64,
    pub scores: [Option<f32>; 3],
}

/// Consecutive anomalous windows of one (host, metric, kind): what an operator is told about
/// once, not once per window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    pub host: String,
    pub metric: String,
    pub kind: String,
    /// Start of its first anomalous window.
    pub start_ms: i64,
    /// End of its last anomalous window once it has ended (`episode_quiet_windows` judged windows
    /// without it); None while ongoing.
    pub end_ms: Option<i64>,
    /// Start of its newest anomalous window.
    pub last_ms: i64,
    /// Anomalous windows in it.
    pub windows: u32,
    pub peak_score: f64,
    pub peak_window_ms: i64,
    /// Observed and expected at the peak.
    pub peak_observed: f64,
    pub peak_expected: f64,
    /// `minor`, `major` or `critical`, from the peak score.
    pub severity: String,
}

/// What drove an episode: its peak window against the baseline windows before it (the API's
/// explanation, which alert texts carry too).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpisodeExplanation {
    /// One line, e.g. "78% of the extra requests: path /wp-login.php (2% → 80% of requests)".
    pub summary: String,
    pub baseline_windows: u32,
    pub drivers: Vec<EpisodeDriver>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpisodeDriver {
    /// `path`, `user_agent`, `referrer` or `status`.
    pub dimension: String,
    pub key: String,
    pub baseline_share: f64,
    pub observed_share: f64,
    pub contribution: f64,
}

/// Works an episode's explanation out (None: its windows cannot be read now). Given by the API
/// to the alerts, which sit below it.
pub type ExplainEpisode = Arc<
    dyn Fn(
            Episode,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Option<EpisodeExplanation>> + Send>,
        > + Send
        + Sync,
>;

/// A detector's findings: raised anomalies (one per host, window and metric) and episodes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Detections {
    pub anomalies: Vec<Anomaly>,
    pub episodes: Vec<Episode>,
}

/// A fitted forecast for one (host, metric): intervals for the windows after `from_ms`.
#[derive(Debug, Clone)]
pub struct Forecast {
    pub host: String,
    pub metric: usize,
    pub model: &'static str,
    pub first_start_ms: i64,
    pub point: Vec<f64>,
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnomalyQuery {
    pub host: Option<String>,
    pub since_ms: i64,
}

#[derive(RactorMessage)]
pub enum DetectorMsg {
    Observe(String, WindowPoint),
    /// A host's past windows read back from the lake.
    Seed(HostHistory),
    /// Forget the hosts this node is no longer home for (their raised anomalies stay).
    Homes(ClusterView),
    /// A model fit finished off the actor (spawn_blocking).
    Fitted(Vec<Forecast>),
    Anomalies(AnomalyQuery, RpcReplyPort<Detections>),
    /// The scores of `host`'s windows starting in `[from, to)` that were judged here.
    Scores(ScoresQuery, RpcReplyPort<Vec<WindowScores>>),
}

/// A host's recent windows read back from the lake, for its detector.
#[derive(Debug, Clone, PartialEq)]
pub struct HostHistory {
    pub host: String,
    /// Oldest first.
    pub points: Vec<WindowPoint>,
    /// Judge the windows after the host's checkpoint mark (a restarted node catching up on
    /// windows written but not yet judged when it stopped); false: history only (a new home,
    /// whose windows the old home judged).
    pub catch_up: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoresQuery {
    pub host: String,
    pub from_ms: i64,
    pub to_ms: i64,
}

// ---- supervisor -------------------------------------------------------------------------------

/// A supervised child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ChildId {
    Archiver,
    Detector,
    Shard(usize),
    Owner(u32),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildStatus {
    pub child: String,
    pub running: bool,
    pub restarts: u32,
}

#[derive(RactorMessage)]
pub enum SupervisorMsg {
    /// Start a child again (sent to self once its backoff has elapsed).
    Restart(ChildId),
    /// The consumer group assigned these partitions to this node: start their owners.
    Assign(Vec<u32>),
    /// The group takes these partitions away: stop their owners (after a final checkpoint
    /// when `drain`), and clear their windows from the shards. Replies when done.
    Revoke(Revocation, RpcReplyPort<()>),
    /// Shutdown: every owner takes a final checkpoint and stops reading. Replies when done.
    DrainAll(RpcReplyPort<()>),
    Status(RpcReplyPort<Vec<ChildStatus>>),
}

// ---- cluster membership -----------------------------------------------------------------------

/// What a node tells its peers every heartbeat (carried across nodes by `wtm-cluster`, with a
/// wire version).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerBeat {
    /// `node.id`.
    pub id: String,
    /// The address peers dial (`cluster.advertise`).
    pub cluster_addr: String,
    /// Where its HTTP API listens.
    pub api_addr: String,
    /// Its wall clock when it sent this (UTC ms).
    pub sent_ms: i64,
    /// Partitions it owns now.
    pub partitions: Vec<u32>,
    /// Cluster addresses of the peers it hears from: how members find each other beyond seeds.
    pub peers: Vec<String>,
    /// Hosts whose detector runs on it (it is their home).
    #[serde(default)]
    pub home_hosts: u64,
    /// Supervised actor restarts since it started.
    #[serde(default)]
    pub actor_restarts: u64,
}

/// One member of the cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: String,
    pub cluster_addr: String,
    pub api_addr: String,
    /// Heard from within `cluster.failure_after_ms` (always true for this node).
    pub alive: bool,
    pub this_node: bool,
    /// When its last heartbeat arrived here (UTC ms); None for this node.
    pub last_heartbeat_ms: Option<i64>,
    pub partitions: Vec<u32>,
    /// Hosts whose detector runs on it.
    pub home_hosts: u64,
    /// Supervised actor restarts since it started (as of its last heartbeat).
    pub actor_restarts: u64,
}

/// A cluster session changed (plain data from the transport's events).
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    Opened { session: u64, peer_addr: String },
    Authenticated { session: u64 },
    Closed { session: u64 },
}

#[derive(RactorMessage)]
pub enum ClusterMsg {
    /// Every member, this node first.
    Members(RpcReplyPort<Vec<MemberStatus>>),
    /// Send heartbeats, judge silence, dial whom to dial.
    Tick,
    /// A peer's heartbeat arrived.
    Heard(PeerBeat),
    /// A peer spoke a wire version or format this node cannot read.
    Unreadable(String),
    Session(SessionEvent),
    /// A dial finished: the TCP connection (not yet authentication) succeeded or not.
    Dialed {
        addr: String,
        ok: bool,
    },
    /// Ask every live peer (not this node) the same question, each within the cluster's call
    /// timeout; the reply says who answered and who did not.
    Gather(ClusterQuery, RpcReplyPort<Gathered>),
    /// How many hosts this node's detector judges now (sent by the detector when it changes).
    HomeHosts(u64),
    /// Ask one member (not this node) a question, within the call timeout; None when it did not
    /// answer.
    Ask(Targeted, RpcReplyPort<Option<ClusterAnswer>>),
    /// Send to one member's archiver (`to`), or to every other live member (None).
    Send {
        to: Option<String>,
        shares: HomeShares,
    },
    /// Cluster addresses found outside the cluster (the Kafka group's members): dialled like
    /// seeds.
    Discovered(Vec<String>),
}

/// A question one node asks the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClusterQuery {
    Overview,
    /// Counts of every host's newest `windows` closed windows (by the member's newest) and its
    /// open ones; of one page of the sites, or (None) as the member pages them, first page.
    Hosts {
        windows: usize,
        page: Option<HostsPage>,
    },
    HostWindows {
        host: String,
        range: local::SeriesRange,
        detail: Detail,
    },
    Anomalies {
        host: Option<String>,
        since_ms: i64,
    },
    /// What the member holds of the asker's hosts, once both agree on the members.
    Handover(HandoverAsk),
}

impl ClusterQuery {
    /// Every [`ClusterQuery::name`].
    pub const NAMES: [&'static str; 5] =
        ["overview", "hosts", "host_windows", "anomalies", "handover"];

    /// A bounded metric label.
    pub fn name(&self) -> &'static str {
        match self {
            ClusterQuery::Overview => "overview",
            ClusterQuery::Hosts { .. } => "hosts",
            ClusterQuery::HostWindows { .. } => "host_windows",
            ClusterQuery::Anomalies { .. } => "anomalies",
            ClusterQuery::Handover(_) => "handover",
        }
    }
}

/// A question for one member.
#[derive(Debug, Clone)]
pub struct Targeted {
    pub to: String,
    pub query: ClusterQuery,
}

/// A peer's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClusterAnswer {
    Overview(local::OverviewPart),
    /// Counts of the sites on `page` (whose `of` says how many pages the member has).
    Hosts {
        counts: Vec<HostCounts>,
        page: HostsPage,
    },
    HostWindows(local::HostParts),
    Anomalies(Detections),
    Handover(Handover),
    /// The peer could not answer (an actor of its restarting).
    Failed(String),
}

/// What a fan-out brought back.
#[derive(Debug, Clone, Default)]
pub struct Gathered {
    /// (member id, its answer), for the members that answered in time.
    pub answers: Vec<(String, ClusterAnswer)>,
    /// Live members that did not answer in time (or could not): the merged reply is partial.
    pub missing: Vec<String>,
}
