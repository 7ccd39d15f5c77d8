//! The restart policy end to end, on paused time: a partition whose source keeps failing is
//! restarted after exactly the configured backoffs (100, 200, 400 ms, ... capped), the node
//! gives up once the budget is spent, and a permanent failure stops it at once, without a
//! single retry. Time is tokio's paused clock, so the delays are exact and the test takes no
//! real time waiting.

use ractor::Actor;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wtm_actors::supervisor::{SupervisorActor, SupervisorArgs};
use wtm_config::Config;
use wtm_core::error::ErrorKind;
use wtm_sources::{PartitionSource, SourceError, SourceFactory};
use wtm_storage::{CheckpointStore, Lake};

/// A source whose every open fails with `kind`, remembering when it was asked.
struct Failing {
    kind: ErrorKind,
    opens: Mutex<Vec<tokio::time::Instant>>,
}

impl SourceFactory for Failing {
    fn open(&self, _: u32, _: u64) -> Result<Box<dyn PartitionSource>, SourceError> {
        self.opens.lock().unwrap().push(tokio::time::Instant::now());
        Err(SourceError {
            kind: self.kind,
            message: "test source refuses".into(),
        })
    }
}

async fn run_until_given_up(kind: ErrorKind, cfg: &Arc<Config>) -> Vec<Duration> {
    let dir = tempfile::tempdir().unwrap();
    let sources = Arc::new(Failing {
        kind,
        opens: Mutex::new(Vec::new()),
    });
    let args = SupervisorArgs {
        config: Arc::clone(cfg),
        sources: Arc::clone(&sources) as _,
        store: CheckpointStore::open(&dir.path().join("checkpoints")).unwrap(),
        lake: Lake::new(dir.path().join("lake")),
        durable: true,
        partitions: vec![0],
        snapshots: None,
        history: None,
        explain: None,
    };
    let (_sup, done) = Actor::spawn(None, SupervisorActor, args).await.unwrap();
    // The supervisor stops itself when it gives up; bound the wait in (paused) time.
    tokio::time::timeout(Duration::from_secs(3600), done)
        .await
        .expect("the supervisor gives up")
        .unwrap();
    let opens = sources.opens.lock().unwrap().clone();
    opens.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn transient_failures_back_off_then_give_up_and_permanent_ones_stop_at_once() {
    let mut cfg = Config::default();
    cfg.supervisor.max_restarts = 5;
    cfg.supervisor.backoff_initial_ms = 100;
    cfg.supervisor.backoff_max_ms = 500;
    let cfg = Arc::new(cfg);

    let gaps = run_until_given_up(ErrorKind::Transient, &cfg).await;
    let ms: Vec<u128> = gaps.iter().map(Duration::as_millis).collect();
    assert_eq!(
        ms,
        vec![100, 200, 400, 500, 500],
        "one open, then five restarts"
    );

    let gaps = run_until_given_up(ErrorKind::Permanent, &cfg).await;
    assert!(
        gaps.is_empty(),
        "a permanent failure is not retried: {gaps:?}"
    );
}
