//! JSON shapes of the API (documented in the OpenAPI document).

use poem_openapi::{Enum, Object, Union};
use std::collections::BTreeMap;

#[derive(Object)]
pub struct HostOut {
    pub host: String,
    /// Windows the totals cover.
    pub windows: u64,
    pub requests: u64,
    pub bytes: u64,
    /// Requests answered 5xx.
    pub status_5xx: u64,
    /// Share of requests answered 5xx.
    pub error_rate: f64,
    /// Requests from user agents classified as bots.
    pub bots: u64,
    pub first_window_start: String,
    pub last_window_start: String,
    /// The site's newest closed window (null until one has closed).
    #[oai(nullable)]
    pub latest: Option<LatestOut>,
    /// With `sparkline=true`: requests per window, oldest first, for the newest `windows`
    /// window starts up to `last_window_start` (0 where the site had no traffic).
    #[oai(skip_serializing_if_is_none)]
    pub requests_per_window: Option<Vec<u64>>,
}

/// A site's newest closed window, from the shares `/v1/hosts` adds up. Counts are exact;
/// `latency_p99_ms` and `unique_clients` are exact within the sketches' error when one
/// partition holds the window, and over several the largest share's (p99: an upper bound;
/// clients: a lower bound) — `/v1/hosts/{host}/windows` merges the sketches exactly.
#[derive(Object)]
pub struct LatestOut {
    /// RFC 3339.
    pub start: String,
    pub requests: u64,
    pub error_rate: f64,
    pub bots: u64,
    pub latency_p99_ms: f64,
    pub unique_clients: u64,
    /// Partitions holding a share of the window.
    pub partitions: u32,
}

#[derive(Object)]
pub struct HostsOut {
    pub hosts: Vec<HostOut>,
    /// Some live cluster member did not answer in time: its sites' windows are missing.
    pub partial: bool,
    /// The members that did not answer.
    pub missing: Vec<String>,
}

#[derive(Object)]
pub struct StatusClasses {
    #[oai(rename = "1xx")]
    pub s1xx: u64,
    #[oai(rename = "2xx")]
    pub s2xx: u64,
    #[oai(rename = "3xx")]
    pub s3xx: u64,
    #[oai(rename = "4xx")]
    pub s4xx: u64,
    #[oai(rename = "5xx")]
    pub s5xx: u64,
}

/// Latency quantiles in milliseconds (relative error ≤ 1%).
#[derive(Object)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Object)]
pub struct WindowOut {
    /// RFC 3339.
    pub start: String,
    pub end: String,
    pub requests: u64,
    pub bytes: u64,
    pub status: StatusClasses,
    pub error_rate: f64,
    pub latency_ms: Latency,
    /// HyperLogLog estimate (standard error 0.8%).
    pub unique_clients: u64,
    pub bots: u64,
    /// The watermark has closed the window: its numbers will not change.
    #[oai(rename = "final")]
    pub is_final: bool,
    /// The detector's anomaly scores (0–1) of the closed window, once judged; null before (an
    /// open window, too little history, detection off).
    pub scores: Option<MetricScores>,
}

/// Anomaly scores, 0–1, monotone in how far a metric is from what was expected (0.5 at
/// `detector.threshold` robust z-scores); null where the metric was not judged (5xx share below
/// 50 requests, p99 below 200).
#[derive(Object)]
pub struct MetricScores {
    pub requests: Option<f64>,
    pub error_rate: Option<f64>,
    pub latency_p99_ms: Option<f64>,
}

#[derive(Object)]
pub struct WindowSeries {
    pub host: String,
    pub windows: Vec<WindowOut>,
    /// Some live cluster member did not answer in time: its share is missing.
    pub partial: bool,
    /// The members that did not answer (empty when complete).
    pub missing: Vec<String>,
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum Dimension {
    Path,
    Referrer,
    UserAgent,
    Status,
    /// Client networks (IPv4 /24, IPv6 /48).
    Network,
    /// Paths by the milliseconds spent answering them (counts are milliseconds).
    PathTime,
}

#[derive(Object)]
pub struct TopEntry {
    pub key: String,
    /// Upper bound of the true count (Space-Saving; milliseconds for `path_time`); exact for
    /// `status`.
    pub count: u64,
}

#[derive(Object)]
pub struct TopOut {
    pub host: String,
    pub dimension: Dimension,
    pub windows: u64,
    pub requests: u64,
    /// What the counts are shares of: the requests, or for `path_time` the milliseconds spent
    /// answering all of them.
    pub total: u64,
    pub entries: Vec<TopEntry>,
    /// Some live cluster member did not answer in time: its share is missing.
    pub partial: bool,
    /// The members that did not answer (empty when complete).
    pub missing: Vec<String>,
}

#[derive(Object)]
pub struct PartitionOut {
    pub partition: u32,
    pub next_offset: u64,
    #[oai(nullable)]
    pub watermark: Option<String>,
    #[oai(nullable)]
    pub max_event_time: Option<String>,
    pub events: u64,
    pub late: u64,
    /// Records at the source not yet read (Kafka), when known.
    #[oai(nullable)]
    pub lag: Option<u64>,
    pub finished: bool,
    /// What of the partition is in the lake.
    pub published: PublishedOut,
}

/// Sums of the publications written to the lake: the rows its tables hold for these partitions
/// (windows' `requests`, and rows of `late`, `invalid` and `events`). A data-quality check reads
/// this, then the lake, then this again: the lake lies between the two.
#[derive(Object, Default, Clone, Copy)]
pub struct PublishedOut {
    pub window_requests: u64,
    pub late: u64,
    pub invalid: u64,
    pub raw: u64,
}

impl PublishedOut {
    pub fn add(&mut self, p: &wtm_core::checkpoint::PublishedTotals) {
        self.window_requests += p.window_requests;
        self.late += p.late;
        self.invalid += p.invalid;
        self.raw += p.raw;
    }
}

#[derive(Object)]
pub struct OverviewOut {
    /// Records parsed into events (late ones included).
    pub events: u64,
    /// What of it all is in the lake (see [`PublishedOut`]).
    pub published: PublishedOut,
    pub invalid_total: u64,
    /// Invalid records by reason.
    pub invalid: BTreeMap<String, u64>,
    pub late: u64,
    /// Sites with a window held here (the overflow series `(other)` counted as one).
    pub hosts: u64,
    /// The cardinality guard is active: some window of some partition reached
    /// `limits.max_hosts` named sites, and further sites' events are counted under `(other)`.
    pub hosts_overflow: bool,
    pub windows_closed: u64,
    /// Largest (wall clock − watermark) over partitions.
    #[oai(nullable)]
    pub watermark_lag_seconds: Option<f64>,
    /// Every partition's source has ended and all its windows are in the lake.
    pub finished: bool,
    /// In a cluster: the sum over every member's partitions (each partition once, from its
    /// newest owner).
    pub partitions: Vec<PartitionOut>,
    /// Some live cluster member did not answer in time: the totals lack its partitions.
    pub partial: bool,
    /// The members that did not answer (empty when complete).
    pub missing: Vec<String>,
}

#[derive(Object)]
pub struct AnomalyOut {
    pub host: String,
    pub metric: String,
    pub window_start: String,
    pub observed: f64,
    pub expected: f64,
    pub lower: f64,
    pub upper: f64,
    /// Robust z-score against the site's recent windows.
    pub score: f64,
    /// 0–1 (see `MetricScores`); an anomaly has at least `detector.score_threshold`.
    pub anomaly_score: f64,
    pub kind: String,
    pub model: String,
}

/// Consecutive anomalous windows of one (site, metric, kind).
#[derive(Object)]
pub struct EpisodeOut {
    pub host: String,
    pub metric: String,
    pub kind: String,
    /// Start of its first anomalous window.
    pub start: String,
    /// End of its last anomalous window; null while ongoing.
    pub end: Option<String>,
    pub ongoing: bool,
    pub last_window_start: String,
    /// Anomalous windows in it.
    pub windows: u32,
    pub peak_score: f64,
    pub peak_window_start: String,
    pub peak_observed: f64,
    pub peak_expected: f64,
    /// `minor` (peak score below 0.75), `major` (below 0.9) or `critical`.
    pub severity: String,
    /// What drove it (the newest 20 episodes of a reply; null for older ones, or while their
    /// windows cannot be read).
    pub explanation: Option<ExplanationOut>,
}

/// The peak window against the baseline windows before the episode: the keys whose share of
/// requests moved most.
#[derive(Object, Clone)]
pub struct ExplanationOut {
    /// One line, e.g. "78% of the extra requests: path /wp-login.php (2% → 80% of requests); …".
    pub summary: String,
    /// Closed windows the baseline merged.
    pub baseline_windows: u32,
    /// Largest contribution first; at most 3 per dimension, each at least 5%.
    pub drivers: Vec<DriverOut>,
}

#[derive(Object, Clone)]
pub struct DriverOut {
    /// `path`, `user_agent`, `referrer` or `status`.
    pub dimension: String,
    pub key: String,
    /// Its share of the requests in the baseline and in the peak window.
    pub baseline_share: f64,
    pub observed_share: f64,
    /// Its part of the extra (or missing) requests (a traffic episode whose requests moved by
    /// 5% or more), else its change of share. A driver's part exceeds its usual share by at
    /// least 5 points: a spike of the same traffic, only more, has no driver.
    pub contribution: f64,
}

#[derive(Object)]
pub struct AnomaliesOut {
    /// One per anomalous (site, window, metric), oldest first.
    pub anomalies: Vec<AnomalyOut>,
    /// Episodes with an anomalous window in the range, oldest first.
    pub episodes: Vec<EpisodeOut>,
    /// Some live cluster member did not answer in time: its share is missing.
    pub partial: bool,
    /// The members that did not answer (empty when complete).
    pub missing: Vec<String>,
}

#[derive(Object)]
pub struct ReadyOut {
    pub ready: bool,
    pub partitions: u32,
}

/// One partition as this node's owner of it sees it.
#[derive(Object)]
pub struct ClusterPartitionOut {
    pub partition: u32,
    /// Offset of the next record the owner reads.
    pub next_offset: u64,
    /// Offset last confirmed committed to the source (Kafka); null for sources that do not commit.
    #[oai(nullable)]
    pub committed_offset: Option<u64>,
    /// Records at the source not yet read (Kafka: high watermark − next offset), when known.
    #[oai(nullable)]
    pub lag: Option<u64>,
    #[oai(nullable)]
    pub watermark: Option<String>,
    #[oai(nullable)]
    pub max_event_time: Option<String>,
    /// How many times the partition's state has been restored, on any node.
    pub owner_epoch: u64,
}

/// This node's view of the cluster.
#[derive(Object)]
pub struct ClusterOut {
    /// This node (`node.id`).
    pub node: String,
    /// Source kind: `generator`, `kafka`, `files`.
    pub source: String,
    /// Kafka topic and consumer group (null for other sources).
    #[oai(nullable)]
    pub topic: Option<String>,
    #[oai(nullable)]
    pub group: Option<String>,
    /// Partitions this node owns now.
    pub partitions: Vec<ClusterPartitionOut>,
    /// Every member of the cluster as this node sees it, this node first (only this node when
    /// `[cluster]` is not configured).
    pub members: Vec<MemberOut>,
}

/// One cluster member.
#[derive(Object)]
pub struct MemberOut {
    /// `node.id`.
    pub id: String,
    /// Where its API listens.
    pub api: String,
    /// The address peers dial (`cluster.advertise`); null without `[cluster]`.
    #[oai(nullable)]
    pub cluster: Option<String>,
    /// Heard from within `cluster.failure_after_ms` (this node: always).
    pub alive: bool,
    pub this_node: bool,
    /// When its last heartbeat arrived (RFC 3339); null for this node.
    #[oai(nullable)]
    pub last_heartbeat: Option<String>,
    /// Partitions it owns (as of its last heartbeat; none while down).
    pub partitions: Vec<u32>,
    /// Hosts it is home for: their detector runs there (as of its last heartbeat).
    pub home_hosts: u64,
    /// Supervised actor restarts since it started (as of its last heartbeat).
    pub actor_restarts: u64,
}

/// New closed windows are readable through the API (the event a live view refetches on).
#[derive(Object)]
pub struct WindowsEvent {
    /// Closed windows the members' archivers have made readable since they started: it only
    /// grows while they run; compare successive values.
    pub windows_archived: u64,
}

/// One event of `/v1/stream`; the SSE event name is `overview` or `windows`.
#[derive(Union)]
#[oai(discriminator_name = "type")]
pub enum StreamEvent {
    Overview(OverviewOut),
    Windows(WindowsEvent),
}
