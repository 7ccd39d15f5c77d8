//! The archiver: writes committed publications to the Parquet lake, keeps recent closed windows
//! for the API, and hands closed windows to the detector.

mod state;

pub use state::RecentWindows;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::time::Instant;
use wtm_runtime::lake::Lake;
use wtm_runtime::msg::{lookup, tell, ArchiverMsg, DetectorMsg, WindowPoint, DETECTOR_NAME};
use wtm_runtime::telemetry::{ActorKind, KeyValue, Metrics, STATUS_CLASSES};

pub struct ArchiverArgs {
    pub lake: Lake,
    pub retention_windows: usize,
    pub window_ms: i64,
    /// Hand closed windows to the detector (`detector.enabled`).
    pub detect: bool,
}

pub struct ArchiverActor;

pub struct ArchiverRun {
    lake: Lake,
    recent: RecentWindows,
    detect: bool,
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
        let keep_ms = args.retention_windows as i64 * args.window_ms;
        let mut recent = RecentWindows::new(args.retention_windows, args.window_ms);
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
            detect: args.detect,
        })
    }

    async fn handle(
        &self,
        _me: ActorRef<ArchiverMsg>,
        msg: ArchiverMsg,
        run: &mut ArchiverRun,
    ) -> Result<(), ActorProcessingErr> {
        let started = Instant::now();
        match msg {
            ArchiverMsg::Publish(p, reply) => {
                let lake = run.lake.clone();
                let pubn = p.clone();
                let m = Metrics::global();
                match tokio::task::spawn_blocking(move || lake.write(&pubn)).await? {
                    Ok(stats) => {
                        m.lake_files.add(stats.files, &[]);
                        m.lake_bytes.add(stats.bytes, &[]);
                        let detector = lookup::<DetectorMsg>(DETECTOR_NAME).filter(|_| run.detect);
                        let mut by_class = [0u64; 5];
                        for w in &p.closed {
                            for (sum, n) in by_class.iter_mut().zip(w.agg.status_class) {
                                *sum += n;
                            }
                            if let Some(d) = &detector {
                                let s = w.agg.finalize();
                                let point = WindowPoint {
                                    start_ms: w.key.start_ms,
                                    requests: s.requests as f64,
                                    error_rate: s.error_rate,
                                    latency_p99_ms: s.latency_p99,
                                };
                                let _ = tell(
                                    d,
                                    ActorKind::Detector,
                                    DetectorMsg::Observe(w.key.host.clone(), point),
                                );
                            }
                            run.recent.insert(w.clone());
                        }
                        for (class, n) in STATUS_CLASSES.iter().zip(by_class) {
                            if n > 0 {
                                m.window_requests
                                    .add(n, &[KeyValue::new("status_class", *class)]);
                            }
                        }
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => {
                        m.lake_errors.add(1, &[KeyValue::new("table", "any")]);
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
            ArchiverMsg::Windows(q, reply) => {
                let _ = reply.send(run.recent.query(&q));
            }
            ArchiverMsg::Totals(n, reply) => {
                let _ = reply.send(run.recent.totals(n));
            }
            ArchiverMsg::HostsSeen(reply) => {
                let _ = reply.send(run.recent.hosts_seen());
            }
        }
        Metrics::global().handled(ActorKind::Archiver, started.elapsed().as_secs_f64());
        Ok(())
    }
}
