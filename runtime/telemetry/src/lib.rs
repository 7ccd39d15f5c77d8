//! # Layout
//!
//! `wtm-telemetry`: the one place each metric is defined ([`Metrics`]). OpenTelemetry
//! instruments, exported in the Prometheus text format at `/metrics`. Labels are bounded: actor
//! kind, partition, reason, table, metric; never a monitored host or path. [`ActorKind`] keeps
//! the per-kind mailbox depths (ractor does not expose queue lengths; `wtm-messages` counts
//! them as messages are sent, handled, or dropped with a stopped actor).

use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, MeterProvider as _};
pub use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;

/// Actor kinds, the label of the per-actor metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    PartitionOwner,
    Window,
    Archiver,
    Detector,
    Supervisor,
    Cluster,
}

static DEPTHS: [AtomicI64; 6] = [const { AtomicI64::new(0) }; 6];

impl ActorKind {
    pub const ALL: [ActorKind; 6] = [
        ActorKind::PartitionOwner,
        ActorKind::Window,
        ActorKind::Archiver,
        ActorKind::Detector,
        ActorKind::Supervisor,
        ActorKind::Cluster,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::PartitionOwner => "partition_owner",
            ActorKind::Window => "window",
            ActorKind::Archiver => "archiver",
            ActorKind::Detector => "detector",
            ActorKind::Supervisor => "supervisor",
            ActorKind::Cluster => "cluster",
        }
    }
    pub fn enqueued(self) {
        DEPTHS[self as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn dequeued(self) {
        self.forget(1);
    }
    /// `n` queued messages will never be handled (their actor stopped).
    pub fn forget(self, n: i64) {
        DEPTHS[self as usize].fetch_sub(n, Ordering::Relaxed);
    }
    pub fn depth(self) -> i64 {
        DEPTHS[self as usize].load(Ordering::Relaxed).max(0)
    }
}

pub struct Metrics {
    registry: prometheus::Registry,
    _provider: SdkMeterProvider,
    pub events: Counter<u64>,
    pub invalid: Counter<u64>,
    pub fields_cut: Counter<u64>,
    pub hosts_folded: Counter<u64>,
    pub late: Counter<u64>,
    pub watermark_lag: Gauge<f64>,
    pub source_offset: Gauge<u64>,
    pub consumer_lag: Gauge<u64>,
    pub handle_seconds: Histogram<f64>,
    pub restarts: Counter<u64>,
    /// Supervised restarts of any actor since the process started (for `/v1/cluster`).
    pub restarts_total: std::sync::atomic::AtomicU64,
    /// Closed windows the archiver has put into the API's history since the process started
    /// (moves when `/v1/stream` should tell clients that new windows are readable).
    pub windows_archived: std::sync::atomic::AtomicU64,
    pub checkpoint_seconds: Histogram<f64>,
    pub checkpoint_bytes: Histogram<u64>,
    pub lake_files: Counter<u64>,
    pub lake_bytes: Counter<u64>,
    pub lake_errors: Counter<u64>,
    pub windows_closed: Counter<u64>,
    pub anomalies: Counter<u64>,
    pub episodes: Counter<u64>,
    pub alerts_sent: Counter<u64>,
    pub alerts_failed: Counter<u64>,
    pub alerts_dropped: Counter<u64>,
    pub api_requests: Counter<u64>,
    pub rebalances: Counter<u64>,
    pub commit_seconds: Histogram<f64>,
    pub commit_errors: Counter<u64>,
    pub snapshots: Counter<u64>,
    pub owner_fenced: Counter<u64>,
    pub paused: Counter<u64>,
    pub dead_letters: Counter<u64>,
    pub window_requests: Counter<u64>,
    pub lake_backlog: Gauge<u64>,
    pub cluster_members: Gauge<u64>,
    pub incomplete_windows: Counter<u64>,
    pub judged_windows: Counter<u64>,
    pub cluster_peer_failures: Counter<u64>,
    pub cluster_refused: Counter<u64>,
    pub cluster_home_hosts: Gauge<u64>,
    pub detector_fits_waiting: Gauge<u64>,
    pub late_shares: Counter<u64>,
    pub cluster_handover_timeouts: Counter<u64>,
    pub cluster_shares_sent: Counter<u64>,
    pub cluster_call_seconds: Histogram<f64>,
    pub cluster_call_failures: Counter<u64>,
}

impl Metrics {
    pub fn global() -> &'static Metrics {
        static M: OnceLock<Metrics> = OnceLock::new();
        M.get_or_init(|| {
            let m = Metrics::new();
            // Series that dashboards query exist from the start, not only after the first event.
            for k in ActorKind::ALL {
                m.restarts.add(0, &[KeyValue::new("actor", k.as_str())]);
            }
            m.windows_closed.add(0, &[]);
            m.lake_files.add(0, &[]);
            m.lake_bytes.add(0, &[]);
            m.snapshots.add(0, &[]);
            m.incomplete_windows.add(0, &[]);
            m.judged_windows.add(0, &[]);
            m.detector_fits_waiting.record(0, &[]);
            for table in ["any", "checkpoints"] {
                m.lake_errors.add(0, &[KeyValue::new("table", table)]);
            }
            for class in STATUS_CLASSES {
                m.window_requests
                    .add(0, &[KeyValue::new("status_class", class)]);
            }
            for kind in ["assign", "revoke", "lost"] {
                m.rebalances.add(0, &[KeyValue::new("kind", kind)]);
            }
            m
        })
    }

    fn new() -> Metrics {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .scope_info_enabled(false)
            .without_units()
            .build()
            .expect("a fresh registry accepts the exporter");
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        let m: Meter = provider.meter("wtm");
        let secs = vec![
            0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
        ];
        m.i64_observable_gauge("wtm_actor_mailbox_depth")
            .with_description("Messages waiting in actor mailboxes, by actor kind")
            .with_callback(|g| {
                for k in ActorKind::ALL {
                    g.observe(k.depth(), &[KeyValue::new("actor", k.as_str())]);
                }
            })
            .build();
        Metrics {
            events: m
                .u64_counter("wtm_events")
                .with_description("Records read, by partition")
                .build(),
            invalid: m
                .u64_counter("wtm_invalid")
                .with_description("Malformed records (dead-lettered), by partition and reason")
                .build(),
            hosts_folded: m
                .u64_counter("wtm_hosts_folded")
                .with_description("Events counted under the site \"(other)\", by partition: their window of their partition already held limits.max_hosts named sites")
                .build(),
            fields_cut: m
                .u64_counter("wtm_fields_cut")
                .with_description("Events whose field (path, referrer, user_agent, client_ip) was cut to limits.max_field_bytes")
                .build(),
            late: m
                .u64_counter("wtm_late_events")
                .with_description(
                    "Events after their window closed (kept in the late output), by partition",
                )
                .build(),
            watermark_lag: m
                .f64_gauge("wtm_watermark_lag_seconds")
                .with_description("Wall clock minus the partition's watermark")
                .build(),
            source_offset: m
                .u64_gauge("wtm_source_offset")
                .with_description("Next source offset of each partition")
                .build(),
            consumer_lag: m
                .u64_gauge("wtm_consumer_lag")
                .with_description("Records available at the source but not yet read, by partition")
                .build(),
            handle_seconds: m
                .f64_histogram("wtm_actor_handle_seconds")
                .with_description("Time an actor spends handling one message, by actor kind")
                .with_boundaries(secs.clone())
                .build(),
            restarts: m
                .u64_counter("wtm_actor_restarts")
                .with_description("Supervised restarts, by actor kind")
                .build(),
            restarts_total: std::sync::atomic::AtomicU64::new(0),
            windows_archived: std::sync::atomic::AtomicU64::new(0),
            checkpoint_seconds: m
                .f64_histogram("wtm_checkpoint_duration_seconds")
                .with_description("Cut, commit and publish of one partition checkpoint")
                .with_boundaries(secs)
                .build(),
            checkpoint_bytes: m
                .u64_histogram("wtm_checkpoint_size_bytes")
                .with_description("Encoded size of one partition checkpoint")
                .with_boundaries(vec![1e3, 1e4, 1e5, 1e6, 1e7, 1e8])
                .build(),
            lake_files: m
                .u64_counter("wtm_lake_files")
                .with_description("Lake files written")
                .build(),
            lake_bytes: m
                .u64_counter("wtm_lake_bytes")
                .with_description("Lake bytes written")
                .build(),
            lake_errors: m
                .u64_counter("wtm_lake_write_errors")
                .with_description("Failed lake writes (retried)")
                .build(),
            windows_closed: m
                .u64_counter("wtm_windows_closed")
                .with_description("(host, window, partition) aggregates closed")
                .build(),
            anomalies: m
                .u64_counter("wtm_anomalies")
                .with_description("Anomalies raised, by metric")
                .build(),
            episodes: m
                .u64_counter("wtm_episodes")
                .with_description("Anomaly episodes opened, by metric")
                .build(),
            alerts_sent: m
                .u64_counter("wtm_alerts_sent")
                .with_description("Alert deliveries taken by a receiver, by target (alertmanager, webhook)")
                .build(),
            alerts_failed: m
                .u64_counter("wtm_alerts_failed")
                .with_description("Alert delivery attempts that failed (retried), by target")
                .build(),
            alerts_dropped: m
                .u64_counter("wtm_alerts_dropped")
                .with_description("Episode announcements dropped because the alert queue was full")
                .build(),
            api_requests: m
                .u64_counter("wtm_api_requests")
                .with_description("API requests, by route and status")
                .build(),
            rebalances: m
                .u64_counter("wtm_kafka_rebalances")
                .with_description("Kafka group rebalances seen, by kind (assign, revoke, lost)")
                .build(),
            commit_seconds: m
                .f64_histogram("wtm_kafka_commit_seconds")
                .with_description("Kafka offset commit latency, from request to broker reply")
                .with_boundaries(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0])
                .build(),
            commit_errors: m
                .u64_counter("wtm_kafka_commit_errors")
                .with_description("Failed Kafka offset commits (the next snapshot commits again)")
                .build(),
            snapshots: m
                .u64_counter("wtm_checkpoint_snapshots")
                .with_description("Checkpoint snapshots published to the lake's checkpoints/")
                .build(),
            owner_fenced: m
                .u64_counter("wtm_owner_fenced")
                .with_description(
                    "Times a partition owner found its snapshot replaced by a newer owner and stopped writing (a zombie fenced)",
                )
                .build(),
            paused: m
                .u64_counter("wtm_kafka_partition_pauses")
                .with_description(
                    "Times a Kafka partition was paused because its owner fell behind",
                )
                .build(),
            dead_letters: m
                .u64_counter("wtm_kafka_dead_letters")
                .with_description("Malformed records produced to the dead-letter topic")
                .build(),
            window_requests: m
                .u64_counter("wtm_window_requests")
                .with_description(
                    "Requests of the monitored sites in windows written to the lake, by status class \
                     (1xx..5xx): the node-wide traffic and error rate",
                )
                .build(),
            lake_backlog: m
                .u64_gauge("wtm_lake_backlog_publications")
                .with_description(
                    "Committed outputs of a partition not yet written to the lake (grows while the lake is unreachable)",
                )
                .build(),
            judged_windows: m
                .u64_counter("wtm_detector_windows")
                .with_description("(host, window) points the detector judged: one per whole window")
                .build(),
            incomplete_windows: m
                .u64_counter("wtm_detector_incomplete_windows")
                .with_description(
                    "Windows judged before every partition had closed them (detector.merge_wait_s passed)",
                )
                .build(),
            cluster_members: m
                .u64_gauge("wtm_cluster_members")
                .with_description("Cluster members this node knows, by state (alive, down), itself included")
                .build(),
            cluster_peer_failures: m
                .u64_counter("wtm_cluster_peer_failures")
                .with_description("Peers declared down after cluster.failure_after_ms without a heartbeat")
                .build(),
            cluster_refused: m
                .u64_counter("wtm_cluster_refused_peers")
                .with_description("Peer sessions refused, by reason (auth: wrong cookie; version: unreadable wire format; tls: TLS handshake failed)")
                .build(),
            late_shares: m
                .u64_counter("wtm_detector_late_shares")
                .with_description("Window shares that reached the detector's merge after their window was judged (replayed by a partition's next owner, or delayed past detector.merge_wait_s): not judged again")
                .build(),
            cluster_handover_timeouts: m
                .u64_counter("wtm_cluster_handover_timeouts")
                .with_description("Handover rounds after a membership change in which some member did not hand over its hosts within detector.merge_wait_s: judging resumed without it")
                .build(),
            cluster_home_hosts: m
                .u64_gauge("wtm_cluster_home_hosts")
                .with_description("Hosts whose detector runs on this node (it is their home)")
                .build(),
            detector_fits_waiting: m
                .u64_gauge("wtm_detector_fits_waiting")
                .with_description("Sites whose model refit is due but waits for a free fit slot (half the cores run fits); they are judged with their previous forecast meanwhile")
                .build(),
            cluster_shares_sent: m
                .u64_counter("wtm_cluster_shares_sent")
                .with_description("Closed window shares sent to their host's home on another node")
                .build(),
            cluster_call_seconds: m
                .f64_histogram("wtm_cluster_call_seconds")
                .with_description("Time for a peer to answer a fan-out query, by query")
                .with_boundaries(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0])
                .build(),
            cluster_call_failures: m
                .u64_counter("wtm_cluster_call_failures")
                .with_description("Fan-out queries a live peer did not answer in time (or could not), by query")
                .build(),
            registry,
            _provider: provider,
        }
    }

    /// Record that an actor of `kind` took `secs` to handle one message.
    pub fn handle_time(&self, kind: ActorKind, secs: f64) {
        self.handle_seconds
            .record(secs, &[KeyValue::new("actor", kind.as_str())]);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = prometheus::TextEncoder::new();
        if let Err(e) = prometheus::Encoder::encode(&enc, &self.registry.gather(), &mut buf) {
            return format!("# encoding failed: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Label values of `wtm_window_requests_total`, by index of `WindowAgg::status_class`.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub fn partition_label(p: u32) -> KeyValue {
    KeyValue::new("partition", p.to_string())
}
