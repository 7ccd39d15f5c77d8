//! Supervision end to end inside one process: a node's actors run on a bounded generator while
//! a window shard, a partition owner and the archiver are killed mid-run, and later the lake is
//! unwritable while another owner dies. The supervisor restarts them (the owners rewinding to
//! their checkpoints), and the lake still holds every event exactly once, per (host, window),
//! against ground truth counted straight from the generator.

use ractor::Actor;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use wtm_actors::supervisor::{SupervisorActor, SupervisorArgs};
use wtm_config::Config;
use wtm_core::generator::Generator;
use wtm_core::time::parse_rfc3339;
use wtm_messages::{
    ask, lookup, owner_name, shard_name, OwnerMsg, PartitionStatus, SupervisorMsg, ARCHIVER_NAME,
};
use wtm_sources::GeneratorSources;
use wtm_storage::lake::Lake;
use wtm_storage::CheckpointStore;
use wtm_telemetry::ActorKind;

async fn statuses(partitions: u32) -> Option<Vec<PartitionStatus>> {
    let mut out = Vec::new();
    for p in 0..partitions {
        let owner = lookup::<OwnerMsg>(&owner_name(p))?;
        out.push(
            ask(&owner, ActorKind::PartitionOwner, OwnerMsg::Status)
                .await
                .ok()?,
        );
    }
    Some(out)
}

async fn events_so_far(partitions: u32) -> u64 {
    statuses(partitions)
        .await
        .map_or(0, |s| s.iter().map(|p| p.totals.events).sum())
}

fn kill(name: &str) {
    let cell = ractor::registry::where_is(name).unwrap_or_else(|| panic!("{name} is not running"));
    cell.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_actors_restart_and_nothing_is_lost_or_doubled() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.node.data_dir = dir.path().to_owned();
    cfg.source.realtime = false;
    cfg.source.hosts = 12;
    cfg.source.rate = 200.0;
    cfg.source.duration_s = Some(1800);
    cfg.source.start = Some("2026-01-01T00:00:00Z".into());
    cfg.source.batch_size = 256;
    // No event can be late here, so the closed windows alone must equal the truth.
    cfg.window.out_of_orderness_s = 200;
    cfg.checkpoint.interval_ms = 100;
    cfg.supervisor.max_restarts = 20;
    cfg.lake.flush_interval_ms = 300;
    let cfg = Arc::new(cfg);
    let start_ms = parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
    let generator = Arc::new(Generator::new(cfg.generator_spec(start_ms)));

    let mut truth: BTreeMap<(String, i64), u64> = BTreeMap::new();
    let mut total = 0u64;
    for p in 0..cfg.source.partitions {
        let mut c = generator.cursor(p, 0);
        while let Some(e) = c.next_event() {
            *truth
                .entry((e.host.clone(), e.ts_ms - e.ts_ms.rem_euclid(60_000)))
                .or_default() += 1;
            total += 1;
        }
    }

    let lake = Lake::new(cfg.lake_path());
    let args = SupervisorArgs {
        config: Arc::clone(&cfg),
        sources: Arc::new(GeneratorSources {
            generator,
            format: cfg.source.format,
            realtime: false,
        }),
        store: CheckpointStore::open(&dir.path().join("checkpoints")).unwrap(),
        lake: lake.clone(),
        durable: true,
        partitions: (0..cfg.source.partitions).collect(),
        snapshots: None,
        history: Some(dir.path().join("history.redb")),
        explain: None,
    };
    let (sup, done) = Actor::spawn(None, SupervisorActor, args).await.unwrap();
    let parts = cfg.source.partitions;
    for (share, victim) in [
        (0.2, shard_name(0)),
        (0.45, owner_name(1)),
        (0.7, ARCHIVER_NAME.to_owned()),
    ] {
        while events_so_far(parts).await < (share * total as f64) as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        kill(&victim);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The lake becomes unwritable (its root replaced by a file): publications pile up committed
    // but unwritten; an owner dies meanwhile and must derive their records again on restore.
    while events_so_far(parts).await < (0.85 * total as f64) as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let root = cfg.lake_path();
    let aside = dir.path().join("lake-aside");
    std::fs::rename(&root, &aside).unwrap();
    std::fs::write(&root, b"not a directory").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    kill(&owner_name(0));
    tokio::time::sleep(Duration::from_millis(400)).await;
    std::fs::remove_file(&root).unwrap();
    std::fs::rename(&aside, &root).unwrap();
    let metrics = wtm_telemetry::Metrics::global().render();
    let failed_writes: f64 = metrics
        .lines()
        .find(|l| l.starts_with("wtm_lake_write_errors_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(
        failed_writes > 0.0,
        "the outage should have failed some writes"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(s) = statuses(parts).await {
            if s.iter().all(|p| p.finished) {
                assert_eq!(s.iter().map(|p| p.totals.events).sum::<u64>(), total);
                assert_eq!(s.iter().map(|p| p.totals.late).sum::<u64>(), 0);
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each victim really died and came back.
    let children = ask(&sup, ActorKind::Supervisor, SupervisorMsg::Status)
        .await
        .unwrap();
    for name in ["Shard(0)", "Owner(1)", "Archiver", "Owner(0)"] {
        let c = children.iter().find(|c| c.child == name).unwrap();
        assert!(c.running && c.restarts >= 1, "{c:?}");
    }
    sup.stop(None);
    let _ = done.await;

    let mut got: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for w in lake.read_windows(i64::MIN).unwrap() {
        let n = got.entry((w.key.host.clone(), w.key.start_ms)).or_default();
        assert_eq!(*n, 0, "{:?} written twice", w.key);
        *n += w.agg.requests;
    }
    assert_eq!(got, truth);

    // The raw archive too: every event exactly once, by (partition, offset). Data files only:
    // the table's log (`_delta_log/`) also writes Parquet, its checkpoints (one per 100 commits,
    // which a slow run reaches), and those rows are log actions, not events.
    let mut raw = 0;
    let mut files = vec![root.join("events")];
    while let Some(d) = files.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().is_some_and(|n| n == "_delta_log") {
                continue;
            }
            if p.is_dir() {
                files.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                let f = std::fs::File::open(&p).unwrap();
                raw += parquet::file::reader::SerializedFileReader::new(f)
                    .map(|r| {
                        parquet::file::reader::FileReader::metadata(&r)
                            .file_metadata()
                            .num_rows()
                    })
                    .unwrap();
            }
        }
    }
    assert_eq!(raw as u64, total);
}
