//! The archiver: writes committed publications to the Parquet lake, keeps recent closed windows
//! for the API, and hands closed windows to the detector.
//!
//! Uploads run in tasks of their own, so partitions write in parallel and API reads are never
//! queued behind a slow store; each owner sends its next publication only after the previous
//! one's reply, so a partition's writes stay in order. A finished upload comes back as
//! `Written` (queued before the reply goes out), which updates the recent windows in order.

mod state;
mod whole;

pub use state::RecentWindows;
pub use whole::{WholeWindow, WholeWindows};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wtm_core::checkpoint::Publication;
use wtm_core::window::WindowSpec;
use wtm_messages::{
    lookup, mailbox, owned_partitions, tell, ArchiverMsg, DetectorMsg, Failure, WindowPoint,
    DETECTOR_NAME,
};
use wtm_storage::Lake;
use wtm_telemetry::{ActorKind, KeyValue, Metrics, STATUS_CLASSES};

pub struct ArchiverArgs {
    pub lake: Lake,
    pub retention_windows: usize,
    pub spec: WindowSpec,
    /// Hand closed windows to the detector (`detector.enabled`), whole.
    pub detect: bool,
    /// How long a window waits for its last partition before it is judged anyway.
    pub merge_wait: Duration,
}

pub struct ArchiverActor;

pub struct ArchiverRun {
    lake: Lake,
    recent: RecentWindows,
    /// Windows waiting to go to the detector whole (None: detection off).
    whole: Option<WholeWindows>,
}

impl Actor for ArchiverActor {
    type Msg = ArchiverMsg;
    type State = ArchiverRun;
    type Arguments = ArchiverArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<ArchiverMsg>,
        args: ArchiverArgs,
    ) -> Result<ArchiverRun, ActorProcessingErr> {
        // Reload recent history so the API answers the same after a restart.
        let lake = args.lake.clone();
        let keep_ms = args.retention_windows as i64 * args.spec.size_ms;
        let mut recent = RecentWindows::new(args.retention_windows, args.spec.size_ms);
        // An unreachable lake (S3 down) must not keep the node from starting: the API then
        // starts without history.
        let reloaded = tokio::task::spawn_blocking(move || match lake.newest_window_hour()? {
            Some(h) => lake.read_windows(h + 3_600_000 - keep_ms),
            None => Ok(Vec::new()),
        })
        .await?;
        match reloaded {
            Ok(windows) => {
                tracing::info!(
                    windows = windows.len(),
                    "recent windows reloaded from the lake"
                );
                for w in windows {
                    recent.insert(w);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot reload recent windows from the lake"),
        }
        Ok(ArchiverRun {
            lake: args.lake,
            recent,
            whole: args
                .detect
                .then(|| WholeWindows::new(args.spec, args.merge_wait)),
        })
    }

    async fn handle(
        &self,
        me: ActorRef<ArchiverMsg>,
        msg: ArchiverMsg,
        run: &mut ArchiverRun,
    ) -> Result<(), ActorProcessingErr> {
        let started = Instant::now();
        match msg {
            ArchiverMsg::Publish(p, reply) => upload(run.lake.clone(), me.clone(), p, reply),
            ArchiverMsg::Written(p) => run.written(&p)?,
            ArchiverMsg::Progress {
                partition,
                watermark_ms,
            } => {
                if let Some(whole) = run.whole.as_mut() {
                    whole.progress(partition, watermark_ms);
                }
                run.judge_whole();
            }
            ArchiverMsg::Windows(q, reply) => {
                reply.send(run.recent.query(&q)).ok();
            }
            ArchiverMsg::Totals(n, reply) => {
                reply.send(run.recent.totals(n)).ok();
            }
            ArchiverMsg::HostsSeen(reply) => {
                reply.send(run.recent.hosts_seen()).ok();
            }
        }
        mailbox::handled(me.get_id(), ActorKind::Archiver, started);
        Ok(())
    }
}

/// Write a publication on the blocking pool, off the archiver's mailbox; reply when durable.
fn upload(
    lake: Lake,
    me: ActorRef<ArchiverMsg>,
    p: Arc<Publication>,
    reply: RpcReplyPort<Result<(), Failure>>,
) {
    tokio::spawn(async move {
        let m = Metrics::global();
        let publication = Arc::clone(&p);
        let result = match tokio::task::spawn_blocking(move || lake.write(&publication)).await {
            Ok(Ok(stats)) => {
                m.lake_files.add(stats.files, &[]);
                m.lake_bytes.add(stats.bytes, &[]);
                // Queued before the reply, so the owner's next publication lands after it.
                if tell(&me, ActorKind::Archiver, ArchiverMsg::Written(p)).is_err() {
                    tracing::warn!("archiver restarting: recent windows reload from the lake");
                }
                Ok(())
            }
            Ok(Err(e)) => {
                m.lake_errors.add(1, &[KeyValue::new("table", "any")]);
                Err(Failure {
                    kind: e.kind(),
                    message: e.to_string(),
                })
            }
            Err(e) => Err(Failure::transient(format!("lake write task failed: {e}"))),
        };
        // The owner may have timed out; it retries from its checkpoint either way.
        reply.send(result).ok();
    });
}

impl ArchiverRun {
    /// A publication is in the lake: its windows join the recent history, and wait to go to the
    /// detector whole.
    fn written(&mut self, p: &Publication) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        let mut by_class = [0u64; 5];
        for w in &p.closed {
            for (sum, n) in by_class.iter_mut().zip(w.agg.status_class) {
                *sum += n;
            }
            if let Some(whole) = self.whole.as_mut() {
                whole.add(w, now)?;
            }
            self.recent.insert(w.clone());
        }
        let m = Metrics::global();
        for (class, n) in STATUS_CLASSES.iter().zip(by_class) {
            if n > 0 {
                m.window_requests
                    .add(n, &[KeyValue::new("status_class", *class)]);
            }
        }
        self.judge_whole();
        Ok(())
    }

    /// Hand the windows every owned partition has closed (or that waited too long) to the
    /// detector, one point per host and window.
    fn judge_whole(&mut self) {
        let Some(whole) = self.whole.as_mut() else {
            return;
        };
        if whole.waiting() == 0 {
            return;
        }
        let ready = whole.ready(&owned_partitions(), Instant::now());
        let Some(detector) = lookup::<DetectorMsg>(DETECTOR_NAME) else {
            return;
        };
        let m = Metrics::global();
        for w in ready {
            if !w.complete {
                m.incomplete_windows.add(1, &[]);
                tracing::debug!(host = %w.host, start_ms = w.start_ms, "window judged before every partition closed it");
            }
            let s = w.agg.finalize();
            let point = WindowPoint {
                start_ms: w.start_ms,
                requests: s.requests as f64,
                error_rate: s.error_rate,
                latency_p99_ms: s.latency_p99,
            };
            if tell(
                &detector,
                ActorKind::Detector,
                DetectorMsg::Observe(w.host, point),
            )
            .is_err()
            {
                tracing::debug!("detector restarting: a window goes unjudged");
            }
        }
    }
}
