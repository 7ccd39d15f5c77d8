//! # Layout
//!
//! `wtm-config`: the node's configuration. Built-in defaults, then a TOML file, then
//! `WTM__SECTION__KEY` environment variables; unknown keys are rejected with their name and
//! [`Config::validate`] names the key of a bad value; `wtm config` prints the result.
//!
//! Plain data and plain checks: it calls into no source or store. The few rules an edge crate
//! shares with validation live here as functions ([`librdkafka_key`], [`RESERVED_KAFKA_KEYS`],
//! [`parse_s3_url`]), and the edges use them from here.

use figment::providers::{Env, Format as _, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use wtm_core::error::ErrorKind;
use wtm_core::event::Format;
use wtm_core::generator::GeneratorSpec;
use wtm_core::window::WindowSpec;

/// librdkafka settings wtm sets itself; `[source.kafka]` may not override them.
pub const RESERVED_KAFKA_KEYS: [&str; 5] = [
    "group.id",
    "bootstrap.servers",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
];

/// A `[source.kafka]` key as librdkafka spells it. librdkafka's property names are dotted and
/// never contain `_`, while an environment variable's key cannot carry a dot through the config
/// layers (a dot nests), so `WTM__SOURCE__KAFKA__SASL_PASSWORD` sets `sasl.password`.
pub fn librdkafka_key(key: &str) -> String {
    key.replace('_', ".")
}

/// `s3://bucket/some/prefix` → (`bucket`, `some/prefix`).
pub fn parse_s3_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| format!("{url:?} does not start with s3://"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(format!("{url:?} names no bucket"));
    }
    Ok((bucket.to_owned(), prefix.trim_matches('/').to_owned()))
}

/// librdkafka settings are strings to librdkafka, but a TOML file or the environment hands
/// numbers and booleans as such (`WTM__SOURCE__KAFKA__SESSION_TIMEOUT_MS=6000` arrives as the
/// integer 6000): any scalar is accepted and kept as its text.
fn scalar_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Int(i64),
        UInt(u64),
        Float(f64),
        Bool(bool),
    }
    let raw = BTreeMap::<String, Scalar>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                Scalar::Text(s) => s,
                Scalar::Int(i) => i.to_string(),
                Scalar::UInt(u) => u.to_string(),
                Scalar::Float(f) => f.to_string(),
                Scalar::Bool(b) => b.to_string(),
            };
            (k, text)
        })
        .collect())
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Figment's message already names the key and the file.
    #[error("config: {0}")]
    Load(String),
    #[error("config: `{key}` {problem}")]
    Invalid { key: &'static str, problem: String },
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
}

impl ConfigError {
    /// A bad configuration stays bad until someone edits it.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Permanent
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub source: SourceConfig,
    pub window: WindowConfig,
    pub checkpoint: CheckpointConfig,
    pub lake: LakeConfig,
    pub detector: DetectorConfig,
    pub api: ApiConfig,
    pub supervisor: SupervisorConfig,
    pub cluster: ClusterConfig,
    pub limits: LimitsConfig,
    pub alerts: AlertsConfig,
}

/// Where anomaly episodes are announced: each fires once when it opens and resolves when it ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Alertmanager base URLs (`http://host:9093`): alerts go to `/api/v2/alerts`, re-sent
    /// every `resend_s` while the episode lasts, then once with its end.
    pub alertmanager: Vec<String>,
    /// URLs that get a JSON POST when an episode opens and when it ends.
    pub webhooks: Vec<String>,
    /// Announcements waiting for a receiver that is down; beyond, new ones are dropped (counted).
    pub queue: usize,
    /// How often a firing alert is re-sent to Alertmanager (it resolves alerts not re-sent
    /// within its `resolve_timeout`, 5 minutes by default).
    pub resend_s: u64,
    /// Longest wait between two tries of a delivery that failed (the wait doubles from 1 s).
    pub retry_max_s: u64,
    /// PEM file of the CA certificate(s) that https:// receivers' certificates are verified
    /// against (unset: the system's trust store).
    pub ca: Option<PathBuf>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            alertmanager: Vec::new(),
            webhooks: Vec::new(),
            queue: 10_000,
            resend_s: 60,
            retry_max_s: 30,
            ca: None,
        }
    }
}

/// Bounds on what the monitored traffic controls (see README "Limits and security").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// A longer record (a line, a Kafka record's value) is dead-lettered as `too_long`, its first
    /// 1 KiB kept; a file's line is never read whole.
    pub max_record_bytes: usize,
    /// Path, referrer, user agent and client address are cut to this many bytes (then `…`).
    pub max_field_bytes: usize,
    /// Named sites one window of one partition admits; events of further sites in that window
    /// are counted under the site `(other)`.
    pub max_hosts: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let d = wtm_core::limits::Limits::default();
        LimitsConfig {
            max_record_bytes: d.max_record_bytes,
            max_field_bytes: d.max_field_bytes,
            max_hosts: d.max_hosts,
        }
    }
}

impl LimitsConfig {
    pub fn limits(&self) -> wtm_core::limits::Limits {
        wtm_core::limits::Limits {
            max_record_bytes: self.max_record_bytes,
            max_field_bytes: self.max_field_bytes,
            max_hosts: self.max_hosts,
        }
    }
}

/// A secret setting: never printed (`wtm config` shows `<redacted>`) and never logged.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// `a:1,b:2` from the environment, or a list in a file.
fn host_port_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        Text(String),
        Items(Vec<String>),
    }
    Ok(match List::deserialize(d)? {
        List::Text(s) => s
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect(),
        List::Items(v) => v,
    })
}

/// Nodes that talk to each other (queries, closed windows, heartbeats). Unset `listen`: a single
/// node, as without a `[cluster]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Where this node accepts peers, `host:port` (bind 127.0.0.1 or a private address).
    pub listen: Option<String>,
    /// The address peers dial to reach this node (default: `listen`).
    pub advertise: Option<String>,
    /// Peers to dial at start (`host:port`, a list, or comma-separated from the environment).
    #[serde(deserialize_with = "host_port_list")]
    pub seeds: Vec<String>,
    /// Shared secret every member must present (required with `listen`); from the environment
    /// as `WTM__CLUSTER__COOKIE`. Printed as `<redacted>`.
    pub cookie: Option<Secret>,
    /// How often each node tells every peer it is alive.
    pub heartbeat_ms: u64,
    /// A peer not heard from for this long is taken as down (a crash, a freeze, a partition).
    pub failure_after_ms: u64,
    /// Mutual TLS between nodes (unset: plain TCP, authenticated by the cookie only).
    pub tls: Option<ClusterTlsConfig>,
    /// Window shares per page of a member's `/v1/hosts` answer (a page must fit the transport's
    /// 64 MiB frame: a share is about 40 bytes on the wire).
    pub page_shares: usize,
    /// Also find peers in the Kafka consumer group: each node's consumer `client.id` carries its
    /// cluster address, and every node dials the addresses its group's members carry (an
    /// autoscaled service needs no seed list). Needs a Kafka source.
    pub discover_from_kafka: bool,
}

/// Mutual TLS between nodes: each presents `cert` (signed by `ca`) and accepts only peers whose
/// certificate `ca` signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTlsConfig {
    /// This node's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificate(s) (PEM) that sign every member's certificate.
    pub ca: PathBuf,
    /// The name a peer's certificate must carry (a DNS SAN); default: the host part of the
    /// address dialled (then an IP SAN for an IP address).
    pub server_name: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            listen: None,
            advertise: None,
            seeds: Vec::new(),
            cookie: None,
            heartbeat_ms: 1000,
            failure_after_ms: 5000,
            tls: None,
            page_shares: 100_000,
            discover_from_kafka: false,
        }
    }
}

impl ClusterConfig {
    /// The address peers dial: `advertise`, else `listen`.
    pub fn advertised(&self) -> Option<&str> {
        self.advertise.as_deref().or(self.listen.as_deref())
    }
}

/// `host:port` with a port (host names allowed: they resolve when dialled).
fn is_host_port(s: &str) -> bool {
    matches!(s.rsplit_once(':'), Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// This node's name in `/v1/cluster` and its Kafka client id; unset: `<hostname>:<port>`.
    pub id: Option<String>,
    /// Where the checkpoint store (and, by default, the lake) live.
    pub data_dir: PathBuf,
    /// API listen address.
    pub listen: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: None,
            data_dir: PathBuf::from("./data"),
            listen: "127.0.0.1:8080".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// The built-in generator.
    #[default]
    Generator,
    /// A Kafka topic, consumed in a consumer group (`[source.kafka]` settings).
    Kafka,
}

/// Where a new consumer group starts on a partition no node has a checkpoint for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StartPosition {
    #[default]
    Earliest,
    Latest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// Partitions the source presents (one PartitionOwner each).
    pub partitions: u32,
    /// Format of the records the source carries.
    pub format: Format,
    /// Site name for `combined` records, which do not carry one.
    pub host: String,
    /// Generator: seed, number of sites, mean events/s, pacing.
    pub seed: u64,
    pub hosts: usize,
    pub rate: f64,
    /// Pace events to the wall clock (false: as fast as possible).
    pub realtime: bool,
    /// Event-time origin, RFC 3339; unset: the node's first start, remembered in the checkpoint store.
    pub start: Option<String>,
    /// Stop after this many seconds of event time (unset: endless).
    pub duration_s: Option<u64>,
    /// Stop after this many events over all partitions (unset: no limit).
    pub count: Option<u64>,
    /// Injected anomalies (labelled by `wtm generate --labels`).
    pub anomalies: usize,
    /// Their kinds, in turn (`traffic_spike`, `traffic_drop`, `error_burst`,
    /// `latency_degradation`, `bot_surge`, `path_hotspot`, `slow_endpoint`, `not_found_storm`,
    /// `latency_creep`; empty: the first four).
    pub anomaly_kinds: Vec<wtm_core::generator::AnomalyKind>,
    /// Their magnitudes (`weak`, `medium`, `strong`), each after a round of every kind (empty:
    /// strong).
    pub anomaly_magnitudes: Vec<wtm_core::generator::Magnitude>,
    /// Share of generated records that are malformed (exercises the dead-letter path).
    pub malformed_share: f64,
    /// Generator: traffic on Saturdays and Sundays (UTC) as a share of weekdays' (1: no weekly
    /// cycle; each site's own share is drawn around it).
    pub weekend: f64,
    /// Records read per batch.
    pub batch_size: usize,
    /// Kafka: bootstrap servers, `host:port[,host:port…]` (required with `kind = "kafka"`).
    pub brokers: String,
    /// Kafka: the topic to consume (required with `kind = "kafka"`).
    pub topic: String,
    /// Kafka: the consumer group every node of a cluster shares.
    pub group: String,
    /// Kafka: where a partition starts when neither this node nor the shared lake has a
    /// checkpoint for it.
    pub start_from: StartPosition,
    /// Kafka: also produce malformed records to this topic (at least once; the lake's
    /// `invalid/` output stays the exact one).
    pub dead_letter_topic: Option<String>,
    /// librdkafka settings passed through to the consumer and producers as they are (TLS, SASL,
    /// timeouts), e.g. `"security.protocol" = "SSL"`. Numbers and booleans are taken as text.
    #[serde(deserialize_with = "scalar_map")]
    pub kafka: BTreeMap<String, String>,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            kind: SourceKind::Generator,
            partitions: 4,
            format: Format::Json,
            host: "localhost".into(),
            seed: 1,
            hosts: 50,
            rate: 500.0,
            realtime: true,
            start: None,
            duration_s: None,
            count: None,
            anomalies: 4,
            anomaly_kinds: Vec::new(),
            anomaly_magnitudes: Vec::new(),
            malformed_share: 0.0,
            weekend: wtm_core::generator::GeneratorSpec::DEFAULT_WEEKEND,
            batch_size: 2048,
            brokers: String::new(),
            topic: String::new(),
            group: "wtm".into(),
            start_from: StartPosition::Earliest,
            dead_letter_topic: None,
            kafka: Default::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowConfig {
    pub size_s: u64,
    pub out_of_orderness_s: u64,
    pub allowed_lateness_s: u64,
    /// A partition without input for this long advances its watermark to the wall clock.
    pub idle_timeout_s: u64,
    /// Window actors; hosts are sharded over them.
    pub shards: usize,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            size_s: 60,
            out_of_orderness_s: 5,
            allowed_lateness_s: 5,
            idle_timeout_s: 30,
            shards: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    pub interval_ms: u64,
    /// Kafka: how often a partition's checkpoint is also published to the lake's
    /// `checkpoints/` prefix for another node to take over from (also before any lake write,
    /// and when the partition is revoked). Kafka offsets are committed after each publish.
    pub snapshot_interval_ms: u64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            interval_ms: 1000,
            snapshot_interval_ms: 5000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LakeConfig {
    /// Lake root; unset: `<data_dir>/lake` (unless `url` is set).
    pub path: Option<PathBuf>,
    /// An S3 lake instead: `s3://bucket/prefix`. Credentials come from the standard AWS chain.
    pub url: Option<String>,
    /// S3 region (default: from the AWS environment/profile; `us-east-1` if none).
    pub region: Option<String>,
    /// S3-compatible stores (SeaweedFS, MinIO): their endpoint URL.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible stores need.
    pub path_style: bool,
    /// Also archive every raw event under `events/`.
    pub raw_events: bool,
    /// How often late, invalid and raw records are written out (window files are written as
    /// windows close). Longer means fewer, larger files and larger checkpoints meanwhile.
    pub flush_interval_ms: u64,
    /// ... or as soon as a partition has buffered this many records, which bounds memory.
    pub flush_records: usize,
    /// A partition keeps reading until this many of its late, invalid and raw records wait in
    /// memory (and in every checkpoint) for the lake; then it pauses until the lake has taken
    /// them: while the lake is unreachable, and in a backfill that reads faster than the lake
    /// takes the records (there what this bound lets wait is the largest part of a node's peak
    /// memory). At least `flush_records`.
    pub max_unwritten_records: usize,
    /// Each lake table is a Delta table; a node adds its files to a table in at most one
    /// commit per this interval (the partitions' writes meanwhile go into the same commit), so
    /// the log grows by a bounded number of commits however many partitions write. A
    /// publication counts as written once its commit is in, and its owner waits for that:
    /// longer means fewer log files but a partition that reads less while catching up.
    pub commit_interval_ms: u64,
}

impl Default for LakeConfig {
    fn default() -> Self {
        LakeConfig {
            path: None,
            url: None,
            region: None,
            endpoint: None,
            path_style: false,
            raw_events: true,
            flush_interval_ms: 10_000,
            flush_records: 100_000,
            max_unwritten_records: 300_000,
            commit_interval_ms: 250,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    pub enabled: bool,
    /// Closed windows of a host before it is judged at all.
    pub min_history: usize,
    /// Windows of history the robust baseline looks at.
    pub baseline_windows: usize,
    /// History before an augurs model (ETS, MSTL with a daily season when long enough) is fitted.
    pub model_history: usize,
    /// Refit the model every this many windows per host.
    pub refit_every: usize,
    /// The scale of the anomaly score: a window whose robust z-score (and, with a model, its
    /// distance outside the 99% interval, in the same units) reaches this scores 0.5.
    pub threshold: f64,
    /// The anomaly score (0–1) from which a window is anomalous (when it also moves by a
    /// practical margin).
    pub score_threshold: f64,
    /// Judged windows without an anomaly that end an episode (fewer: a flapping anomaly stays
    /// one episode).
    pub episode_quiet_windows: usize,
    /// A host's window is judged whole, once every partition has closed it; a partition that
    /// holds it up longer than this (a stalled consumer) is not waited for.
    pub merge_wait_s: u64,
    /// Learn each site's weekly shape (hour-of-week levels, after a week of history) and judge
    /// its requests with it divided out, so a weekday's ramp after a quiet weekend is not a
    /// spike. Windows up to an hour long.
    pub weekly_season: bool,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            enabled: true,
            min_history: 15,
            baseline_windows: 30,
            model_history: 60,
            refit_every: 10,
            threshold: 4.0,
            score_threshold: 0.5,
            episode_quiet_windows: 2,
            merge_wait_s: 120,
            weekly_season: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Closed windows per host the API serves, kept on local disk (`<data_dir>/history.redb`;
    /// older ones: query the lake).
    pub retention_windows: usize,
    /// Closed windows per host whose plain counts stay in memory for `/v1/hosts` (its default
    /// span); a listing over more windows reads the older ones from disk.
    pub listing_windows: usize,
    /// The history store's page cache, MiB. The store's file is in the operating system's page
    /// cache too; this one spares the reads a copy and a decode. It fills with what is written
    /// (every closed window), so it is memory the node keeps once it has run for a while.
    pub history_cache_mb: usize,
    /// A bearer token every request but `/healthz` must carry (`WTM__API__TOKEN`); never
    /// printed or logged. With `tokens_file`, any of them is accepted.
    pub token: Option<Secret>,
    /// More tokens, one per line: the token itself, or `sha256:<64 hex digits>` of it; `#`
    /// starts a comment.
    pub tokens_file: Option<PathBuf>,
    /// `/metrics` needs a token too (Prometheus sends one with `authorization` in its scrape
    /// config); by default it is open, like `/healthz`.
    pub protect_metrics: bool,
    /// A request not answered by then gets 503.
    pub request_timeout_s: u64,
    /// Requests served at once; beyond, 503 at once (a flood cannot pin the node).
    pub max_concurrent_requests: usize,
    /// Serve the API over TLS (unset: plain HTTP).
    pub tls: Option<ApiTlsConfig>,
}

/// The API's certificate: reloaded when either file changes or on SIGHUP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTlsConfig {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            retention_windows: 360,
            listing_windows: 60,
            history_cache_mb: 32,
            token: None,
            tokens_file: None,
            protect_metrics: false,
            request_timeout_s: 30,
            max_concurrent_requests: 256,
            tls: None,
        }
    }
}

/// An accepted API token, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiToken {
    Plain(Secret),
    /// SHA-256 of the token.
    Sha256([u8; 32]),
}

/// Shorter plain tokens are refused at start-up: a bearer token is a password.
pub const MIN_TOKEN_LEN: usize = 16;

impl ApiConfig {
    /// Every accepted token (`token` and `tokens_file`'s); empty: the API is open.
    pub fn tokens(&self) -> Result<Vec<ApiToken>, ConfigError> {
        let bad = |key: &'static str, problem: String| ConfigError::Invalid { key, problem };
        let mut out = Vec::new();
        if let Some(t) = &self.token {
            if t.expose().len() < MIN_TOKEN_LEN {
                return Err(bad(
                    "api.token",
                    format!("must be at least {MIN_TOKEN_LEN} characters"),
                ));
            }
            out.push(ApiToken::Plain(t.clone()));
        }
        if let Some(path) = &self.tokens_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                bad(
                    "api.tokens_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let before = out.len();
            for (i, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let token = match line.strip_prefix("sha256:") {
                    Some(hex) => ApiToken::Sha256(parse_sha256(hex).ok_or_else(|| {
                        bad(
                            "api.tokens_file",
                            format!("line {}: sha256: needs 64 hex digits", i + 1),
                        )
                    })?),
                    None if line.len() < MIN_TOKEN_LEN => {
                        return Err(bad(
                            "api.tokens_file",
                            format!(
                                "line {}: a token must be at least {MIN_TOKEN_LEN} characters",
                                i + 1
                            ),
                        ))
                    }
                    None => ApiToken::Plain(Secret::new(line)),
                };
                out.push(token);
            }
            if out.len() == before {
                return Err(bad(
                    "api.tokens_file",
                    format!("{} holds no token", path.display()),
                ));
            }
        }
        Ok(out)
    }
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16);
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(hex.chunks(2)) {
        *o = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// Restarts allowed within `healthy_after_s` before the node gives up.
    pub max_restarts: u32,
    /// A child running this long without failing has its restart budget reset.
    pub healthy_after_s: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            max_restarts: 5,
            healthy_after_s: 60,
            backoff_initial_ms: 100,
            backoff_max_ms: 10_000,
        }
    }
}

impl Config {
    /// Defaults, then `file` (if given), then `WTM__SECTION__KEY` variables from the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError::MissingFile(f.to_owned()));
            }
            fig = fig.merge(Toml::file(f));
        }
        fig = fig.merge(Env::prefixed("WTM__").split("__"));
        let cfg: Config = fig
            .extract()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Defaults, then the TOML `text` (no environment): what a config file alone says. Bad
    /// input is an error value, never a panic (a fuzz target, `fuzz/src/bin/config.rs`).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        fn check(ok: bool, key: &'static str, problem: &str) -> Result<(), ConfigError> {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    key,
                    problem: problem.into(),
                })
            }
        }
        check(
            self.source.partitions >= 1,
            "source.partitions",
            "must be at least 1",
        )?;
        check(self.source.hosts >= 1, "source.hosts", "must be at least 1")?;
        let tokens = self.api.tokens()?;
        check(
            !self.api.protect_metrics || !tokens.is_empty(),
            "api.protect_metrics",
            "needs api.token or api.tokens_file",
        )?;
        if let Some(tls) = &self.api.tls {
            for (key, path) in [("api.tls.cert", &tls.cert), ("api.tls.key", &tls.key)] {
                check(
                    path.is_file(),
                    key,
                    &format!("{} is not a readable file", path.display()),
                )?;
            }
        }
        check(
            self.api.request_timeout_s >= 1,
            "api.request_timeout_s",
            "must be at least 1",
        )?;
        check(
            self.api.max_concurrent_requests >= 1,
            "api.max_concurrent_requests",
            "must be at least 1",
        )?;
        check(
            wtm_core::limits::plausible_host(&self.source.host),
            "source.host",
            "must be a plausible host[:port] (letters, digits, '-', '_', '.')",
        )?;
        check(
            (1024..=64 << 20).contains(&self.limits.max_record_bytes),
            "limits.max_record_bytes",
            "must be between 1024 and 67108864",
        )?;
        check(
            (64..=self.limits.max_record_bytes).contains(&self.limits.max_field_bytes),
            "limits.max_field_bytes",
            "must be between 64 and limits.max_record_bytes",
        )?;
        check(
            self.limits.max_hosts >= 1,
            "limits.max_hosts",
            "must be at least 1",
        )?;
        check(
            self.source.rate >= 0.001 && self.source.rate.is_finite(),
            "source.rate",
            "must be at least 0.001 (events per second)",
        )?;
        check(
            (0.0..=1.0).contains(&self.source.malformed_share),
            "source.malformed_share",
            "must be between 0 and 1",
        )?;
        check(
            (0.0..=5.0).contains(&self.source.weekend),
            "source.weekend",
            "must be between 0 and 5 (a share of weekday traffic)",
        )?;
        check(
            self.source.batch_size >= 1,
            "source.batch_size",
            "must be at least 1",
        )?;
        check(
            self.window.size_s >= 1,
            "window.size_s",
            "must be at least 1",
        )?;
        check(
            self.window.shards >= 1,
            "window.shards",
            "must be at least 1",
        )?;
        check(
            self.window.idle_timeout_s >= 1,
            "window.idle_timeout_s",
            "must be at least 1",
        )?;
        check(
            self.checkpoint.interval_ms >= 10,
            "checkpoint.interval_ms",
            "must be at least 10",
        )?;
        check(
            self.lake.max_unwritten_records >= self.lake.flush_records,
            "lake.max_unwritten_records",
            &format!(
                "must be at least lake.flush_records ({}): a partition that pauses before its \
                 records are due waits for lake.flush_interval_ms every time",
                self.lake.flush_records
            ),
        )?;
        check(
            self.lake.commit_interval_ms <= 60_000,
            "lake.commit_interval_ms",
            "must be at most 60000 (a publication waits for its commit)",
        )?;
        check(
            self.supervisor.backoff_initial_ms >= 1,
            "supervisor.backoff_initial_ms",
            "must be at least 1",
        )?;
        check(
            self.supervisor.backoff_max_ms >= self.supervisor.backoff_initial_ms,
            "supervisor.backoff_max_ms",
            "must be at least supervisor.backoff_initial_ms",
        )?;
        check(
            self.detector.min_history >= 3,
            "detector.min_history",
            "must be at least 3",
        )?;
        check(
            self.detector.threshold > 0.0,
            "detector.threshold",
            "must be positive",
        )?;
        check(
            self.detector.score_threshold > 0.0 && self.detector.score_threshold < 1.0,
            "detector.score_threshold",
            "must be between 0 and 1 (exclusive)",
        )?;
        check(
            self.detector.episode_quiet_windows >= 1,
            "detector.episode_quiet_windows",
            "must be at least 1",
        )?;
        check(
            self.api.retention_windows >= 1,
            "api.retention_windows",
            "must be at least 1",
        )?;
        check(
            self.api.listing_windows >= 1,
            "api.listing_windows",
            "must be at least 1",
        )?;
        check(
            self.api.history_cache_mb <= 1 << 20,
            "api.history_cache_mb",
            "must be at most 1048576 (1 TiB)",
        )?;
        if self.source.kind == SourceKind::Kafka {
            check(
                !self.source.brokers.trim().is_empty(),
                "source.brokers",
                "must name the Kafka bootstrap servers (host:port) when source.kind is kafka",
            )?;
            check(
                !self.source.topic.trim().is_empty(),
                "source.topic",
                "must name the topic to consume when source.kind is kafka",
            )?;
            check(
                !self.source.group.trim().is_empty(),
                "source.group",
                "must not be empty",
            )?;
            for key in self.source.kafka.keys() {
                check(
                    !RESERVED_KAFKA_KEYS.contains(&librdkafka_key(key).as_str()),
                    "source.kafka",
                    "must not set group.id, bootstrap.servers or the offset-commit settings: wtm owns those",
                )?;
            }
        }
        if let Some(url) = &self.lake.url {
            parse_s3_url(url).map_err(|problem| ConfigError::Invalid {
                key: "lake.url",
                problem,
            })?;
            check(
                self.lake.path.is_none(),
                "lake.url",
                "and lake.path are both set: the lake is one or the other",
            )?;
        }
        if let Some(s) = &self.source.start {
            check(
                wtm_core::time::parse_rfc3339(s).is_some(),
                "source.start",
                "must be an RFC 3339 time",
            )?;
        }
        if let Some(listen) = &self.cluster.listen {
            listen
                .parse::<std::net::SocketAddr>()
                .map_err(|e| ConfigError::Invalid {
                    key: "cluster.listen",
                    problem: format!("{listen:?} is not an address (ip:port): {e}"),
                })?;
            check(
                self.cluster
                    .cookie
                    .as_ref()
                    .is_some_and(|c| !c.expose().is_empty()),
                "cluster.cookie",
                "must be set (a shared secret) when cluster.listen is: peers authenticate with it",
            )?;
            // The generator numbers its partitions from 0 on every node: members' answers would
            // merge different events as one partition.
            check(
                self.source.kind == SourceKind::Kafka,
                "cluster.listen",
                "needs source.kind = \"kafka\": a cluster's members split one topic's partitions \
                 (the generator is per node, and numbers its partitions from 0 on each)",
            )?;
        }
        if let Some(a) = &self.cluster.advertise {
            check(is_host_port(a), "cluster.advertise", "must be host:port")?;
        }
        check(
            (1..=1_000_000).contains(&self.cluster.page_shares),
            "cluster.page_shares",
            "must be between 1 and 1000000 (a page must fit the 64 MiB frame)",
        )?;
        if let Some(tls) = &self.cluster.tls {
            for (key, path) in [
                ("cluster.tls.cert", &tls.cert),
                ("cluster.tls.key", &tls.key),
                ("cluster.tls.ca", &tls.ca),
            ] {
                check(
                    path.is_file(),
                    key,
                    &format!("{} is not a readable file", path.display()),
                )?;
            }
        }
        for (key, urls) in [
            ("alerts.alertmanager", &self.alerts.alertmanager),
            ("alerts.webhooks", &self.alerts.webhooks),
        ] {
            for url in urls {
                let rest = url
                    .strip_prefix("http://")
                    .or_else(|| url.strip_prefix("https://"));
                check(
                    rest.is_some_and(|rest| !rest.is_empty()),
                    key,
                    &format!("{url:?} must be an http:// or https:// URL"),
                )?;
            }
        }
        if let Some(ca) = &self.alerts.ca {
            check(
                ca.is_file(),
                "alerts.ca",
                &format!("{} is not a readable file", ca.display()),
            )?;
        }
        check(self.alerts.queue >= 1, "alerts.queue", "must be at least 1")?;
        check(
            self.alerts.resend_s >= 1,
            "alerts.resend_s",
            "must be at least 1",
        )?;
        check(
            self.alerts.retry_max_s >= 1,
            "alerts.retry_max_s",
            "must be at least 1",
        )?;
        check(
            !self.cluster.discover_from_kafka
                || (self.cluster.listen.is_some() && self.source.kind == SourceKind::Kafka),
            "cluster.discover_from_kafka",
            "needs cluster.listen and a Kafka source (source.kind = \"kafka\")",
        )?;
        for seed in &self.cluster.seeds {
            check(
                is_host_port(seed),
                "cluster.seeds",
                "must be host:port entries",
            )?;
        }
        check(
            self.cluster.seeds.is_empty() || self.cluster.listen.is_some(),
            "cluster.seeds",
            "needs cluster.listen: a node without it does not join a cluster",
        )?;
        check(
            self.cluster.heartbeat_ms >= 10,
            "cluster.heartbeat_ms",
            "must be at least 10",
        )?;
        check(
            self.cluster.failure_after_ms >= 2 * self.cluster.heartbeat_ms,
            "cluster.failure_after_ms",
            "must be at least twice cluster.heartbeat_ms",
        )?;
        self.node
            .listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| ConfigError::Invalid {
                key: "node.listen",
                problem: format!("{:?} is not an address: {e}", self.node.listen),
            })?;
        Ok(())
    }

    pub fn window_spec(&self) -> WindowSpec {
        WindowSpec {
            size_ms: self.window.size_s as i64 * 1000,
            out_of_orderness_ms: self.window.out_of_orderness_s as i64 * 1000,
            allowed_lateness_ms: self.window.allowed_lateness_s as i64 * 1000,
        }
    }

    /// `node.id`, or `<hostname>:<API port>`.
    pub fn node_id(&self) -> String {
        if let Some(id) = &self.node.id {
            return id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into());
        let port = self.node.listen.rsplit(':').next().unwrap_or("0");
        format!("{host}:{port}")
    }

    pub fn lake_path(&self) -> PathBuf {
        self.lake
            .path
            .clone()
            .unwrap_or_else(|| self.node.data_dir.join("lake"))
    }

    /// The generator behind the built-in source, given the resolved event-time origin.
    pub fn generator_spec(&self, start_ms: i64) -> GeneratorSpec {
        GeneratorSpec {
            seed: self.source.seed,
            hosts: self.source.hosts,
            rate: self.source.rate,
            start_ms,
            partitions: self.source.partitions,
            anomalies: self.source.anomalies,
            kinds: self.source.anomaly_kinds.clone(),
            magnitudes: self.source.anomaly_magnitudes.clone(),
            malformed_share: self.source.malformed_share,
            weekend: self.source.weekend,
            duration_ms: self.source.duration_s.map(|d| d as i64 * 1000),
            count: self.source.count,
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_keys_become_librdkafka_keys() {
        assert_eq!(librdkafka_key("sasl_password"), "sasl.password");
        assert_eq!(librdkafka_key("security.protocol"), "security.protocol");
        assert_eq!(librdkafka_key("session_timeout_ms"), "session.timeout.ms");
    }

    #[test]
    fn s3_urls() {
        assert_eq!(
            parse_s3_url("s3://lake/wtm/prod/").unwrap(),
            ("lake".into(), "wtm/prod".into())
        );
        assert_eq!(
            parse_s3_url("s3://lake").unwrap(),
            ("lake".into(), "".into())
        );
        assert!(parse_s3_url("s3:///x").is_err());
        assert!(parse_s3_url("https://lake").is_err());
    }

    #[test]
    fn a_partition_may_not_pause_before_its_records_are_due() {
        let mut c = Config::default();
        c.lake.max_unwritten_records = c.lake.flush_records - 1;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("lake.max_unwritten_records"), "{err}");
        c.lake.max_unwritten_records = c.lake.flush_records;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn the_printed_defaults_load_back_and_bad_text_is_an_error() {
        let printed = Config::default().to_toml();
        let back = Config::from_toml_str(&printed).map_err(|e| e.to_string());
        assert_eq!(back, Ok(Config::default()), "{printed}");
        for bad in ["[window", "[window]\nsize_s = -1", "[nope]\nx = 1", "\u{0}"] {
            assert!(Config::from_toml_str(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the closure's error type
    fn cluster_settings_cookie_is_required_and_never_printed() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("WTM__CLUSTER__LISTEN", "127.0.0.1:7400");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("cluster.cookie"), "{err}");
            jail.set_env("WTM__CLUSTER__COOKIE", "s3cret-cookie");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(
                err.contains("cluster.listen") && err.contains("kafka"),
                "{err}"
            );
            jail.set_env("WTM__SOURCE__KIND", "kafka");
            jail.set_env("WTM__SOURCE__BROKERS", "127.0.0.1:9092");
            jail.set_env("WTM__SOURCE__TOPIC", "logs");
            jail.set_env("WTM__CLUSTER__SEEDS", "127.0.0.1:7401, 127.0.0.1:7402");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.cluster.seeds, ["127.0.0.1:7401", "127.0.0.1:7402"]);
            assert_eq!(
                c.cluster.cookie.as_ref().map(Secret::expose),
                Some("s3cret-cookie")
            );
            assert_eq!(c.cluster.advertised(), Some("127.0.0.1:7400"));
            let printed = c.to_toml();
            assert!(
                !printed.contains("s3cret") && printed.contains("<redacted>"),
                "{printed}"
            );
            assert!(!format!("{c:?}").contains("s3cret"));
            jail.set_env("WTM__CLUSTER__SEEDS", "nohostport");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("cluster.seeds"), "{err}");
            jail.set_env("WTM__CLUSTER__SEEDS", "127.0.0.1:7401");
            // TLS files that are not there fail at start-up, naming the key.
            jail.create_file("node.pem", "not checked here")?;
            jail.set_env("WTM__CLUSTER__TLS__CERT", "node.pem");
            jail.set_env("WTM__CLUSTER__TLS__KEY", "missing-key.pem");
            jail.set_env("WTM__CLUSTER__TLS__CA", "node.pem");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("cluster.tls.key"), "{err}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the closure's error type
    fn alert_and_detector_settings_are_checked_naming_the_key() {
        // In a jail: other tests set WTM__ variables, which a plain load would read.
        figment::Jail::expect_with(|jail| {
            for (toml, key) in [
                (
                    "[alerts]\nwebhooks = [\"ftp://hooks.example/x\"]\n",
                    "alerts.webhooks",
                ),
                ("[alerts]\nca = \"/nonexistent/ca.pem\"\n", "alerts.ca"),
                (
                    "[cluster]\ndiscover_from_kafka = true\n",
                    "cluster.discover_from_kafka",
                ),
                (
                    "[alerts]\nalertmanager = [\"am:9093\"]\n",
                    "alerts.alertmanager",
                ),
                ("[alerts]\nqueue = 0\n", "alerts.queue"),
                (
                    "[detector]\nscore_threshold = 1.0\n",
                    "detector.score_threshold",
                ),
                (
                    "[detector]\nepisode_quiet_windows = 0\n",
                    "detector.episode_quiet_windows",
                ),
            ] {
                jail.create_file("c.toml", toml)?;
                let err = Config::load(Some(Path::new("c.toml")))
                    .unwrap_err()
                    .to_string();
                assert!(err.contains(key), "{toml}: {err}");
            }
            jail.create_file(
                "c.toml",
                "[alerts]\nalertmanager = [\"http://127.0.0.1:9093\"]\n",
            )?;
            let c = Config::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.alerts.alertmanager, ["http://127.0.0.1:9093"]);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[window]\nsize_s = 30\nsise = 4\n").unwrap();
        let err = Config::load(Some(&f)).unwrap_err().to_string();
        assert!(err.contains("sise"), "{err}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the closure's error type
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[window]\nsize_s = 30\n[source]\nrate = 10.0\n").unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("WTM__SOURCE__RATE", "25.5");
            let c = Config::load(Some(&f)).map_err(|e| e.to_string())?;
            assert_eq!(c.window.size_s, 30);
            assert_eq!(c.source.rate, 25.5);
            // librdkafka settings from the environment: `_` for `.` (a dot would nest).
            jail.set_env("WTM__SOURCE__KAFKA__SASL_USERNAME", "wtm");
            let c = Config::load(Some(&f)).map_err(|e| e.to_string())?;
            assert_eq!(
                c.source.kafka.get("sasl_username").map(String::as_str),
                Some("wtm")
            );
            // Numbers and booleans are librdkafka settings too: taken as their text.
            jail.set_env("WTM__SOURCE__KAFKA__SESSION_TIMEOUT_MS", "6000");
            jail.set_env(
                "WTM__SOURCE__KAFKA__ENABLE_SSL_CERTIFICATE_VERIFICATION",
                "false",
            );
            let c = Config::load(Some(&f)).map_err(|e| e.to_string())?;
            assert_eq!(
                c.source.kafka.get("session_timeout_ms").map(String::as_str),
                Some("6000")
            );
            assert_eq!(
                c.source
                    .kafka
                    .get("enable_ssl_certificate_verification")
                    .map(String::as_str),
                Some("false")
            );
            jail.set_env("WTM__WINDOW__SIZE_S", "0");
            let err = Config::load(Some(&f)).unwrap_err().to_string();
            assert!(err.contains("window.size_s"), "{err}");
            Ok(())
        });
    }
}
