//! Lake upkeep: compaction of closed hours, retention and vacuum, each a Delta commit, so a
//! reader of a table (through its log) sees every row exactly once at every instant.
//!
//! - **Compaction** reads an hour's small files, writes them again as few files (up to a target
//!   size each) sorted by host and time, and commits "remove the small ones, add the big ones"
//!   as one commit. A reader before the commit reads the small files, after it the big ones.
//!   Files that arrive for the hour meanwhile (late windows) are not in the commit and stay.
//!   A crash before the commit leaves an unreferenced file that no reader sees; the rerun
//!   writes it again under the same name (named by its inputs) and commits.
//! - **Retention** removes whole `dt` partitions older than a number of days, in one commit.
//! - **Vacuum** deletes the files removed longer than a grace period ago (a query that started
//!   before the removal may still read them until then) and the log files older than the
//!   newest checkpoint and the grace. Until the vacuum, a removal's tombstone also fences
//!   replays (see [`crate::delta`]).

use crate::delta::{commit_info, delta_now_ms, Action, Add, DeltaLog, Remove};
use crate::lake::{encode_parquet, table_schema, Encoded, Lake, LakeError};
use arrow::compute::{concat_batches, lexsort_to_indices, take_record_batch, SortColumn};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What compaction was asked to do.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Only hours that ended at or before this instant (ms) are compacted.
    pub before_ms: i64,
    /// A compacted file holds inputs up to about this many bytes (Parquet, as stored).
    pub target_bytes: u64,
    /// Rows per row group in the files written.
    pub row_group_rows: usize,
}

/// One hour of one table, compacted (or found in conflict with another writer and left).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourReport {
    pub table: String,
    pub dt: String,
    pub hour: String,
    pub files_before: usize,
    pub files_after: usize,
    pub rows: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// False: another writer changed the hour's files meanwhile; nothing was committed, and a
    /// rerun compacts it.
    pub committed: bool,
}

/// The order rows are written in: host and time, so engines skip row groups on either.
fn sort_columns(table: &str) -> &'static [&'static str] {
    match table {
        "windows" => &["host", "window_start", "partition"],
        "late" | "events" => &["host", "ts", "partition", "offset"],
        _ => &["partition", "offset"],
    }
}

fn fmt_err(key: &str, reason: impl std::fmt::Display) -> LakeError {
    LakeError::Format {
        path: PathBuf::from(key),
        reason: reason.to_string(),
    }
}

/// Name of the file compacting these inputs: a function of the inputs, so a rerun after a
/// crash writes the same object again instead of leaving another.
fn compacted_name(inputs: &[&Add]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for a in inputs {
        h.update(a.path.as_bytes());
        h.update(b"\n");
    }
    let d = h.finalize();
    let hex: String = d.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("compact-{hex}.parquet")
}

/// `(dt, hour)` of a file and the start of that hour (ms).
fn hour_of(a: &Add) -> Option<(String, String, i64)> {
    let pv = &a.partition_values;
    let dt = pv.get("dt")?.clone()?;
    let hour = pv.get("hour")?.clone()?;
    let start = wtm_core::time::parse_rfc3339(&format!("{dt}T{hour}:00:00Z"))?;
    Some((dt, hour, start))
}

fn table_log<'a>(lake: &'a Lake, table: &str) -> Result<&'a DeltaLog, LakeError> {
    lake.log(table)
        .ok_or_else(|| fmt_err(table, "not a lake table"))
}

fn read_file(log: &DeltaLog, path: &str) -> Result<Vec<RecordBatch>, LakeError> {
    let key = log.file_key(path);
    let bytes = log
        .store()
        .get(&key)?
        .ok_or_else(|| fmt_err(&key, "listed in the table's log but missing from the store"))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .and_then(|b| b.build())
        .map_err(|e| fmt_err(&key, e))?;
    reader
        .map(|b| b.map_err(|e| fmt_err(&key, e)))
        .collect::<Result<Vec<_>, _>>()
}

/// Compact every closed hour of `table` (one of the lake's tables) that has more than one
/// small file; `each` hears about every hour as it is done. Blocking.
pub fn compact(
    lake: &Lake,
    table: &str,
    opts: &CompactOptions,
    each: &mut dyn FnMut(&HourReport),
) -> Result<Vec<HourReport>, LakeError> {
    let log = table_log(lake, table)?;
    let schema = table_schema(table).expect("a lake table");
    let snap = log.snapshot()?;
    let Some(mut version) = snap.version else {
        return Ok(Vec::new());
    };
    let mut hours: BTreeMap<(String, String), Vec<&Add>> = BTreeMap::new();
    for a in snap.files.values() {
        let Some((dt, hour, start)) = hour_of(a) else {
            continue;
        };
        if start + 3_600_000 > opts.before_ms {
            continue;
        }
        // Already compacted files near the target size stay as they are; small ones (a
        // compaction of a few late files) join the next round.
        let done = a
            .path
            .rsplit('/')
            .next()
            .is_some_and(|n| n.starts_with("compact-"))
            && a.size as u64 >= opts.target_bytes / 2;
        if !done {
            hours.entry((dt, hour)).or_default().push(a);
        }
    }
    let mut reports = Vec::new();
    for ((dt, hour), inputs) in hours {
        if inputs.len() < 2 {
            continue;
        }
        // Inputs in chunks of about the target size, each written as one sorted file.
        let mut chunks: Vec<Vec<&Add>> = vec![Vec::new()];
        let mut size = 0u64;
        for a in inputs.iter().copied() {
            if size + a.size as u64 > opts.target_bytes && !chunks[chunks.len() - 1].is_empty() {
                chunks.push(Vec::new());
                size = 0;
            }
            size += a.size as u64;
            let last = chunks.len() - 1;
            chunks[last].push(a);
        }
        let mut adds = Vec::new();
        let mut rows = 0;
        for chunk in &chunks {
            let mut batches = Vec::new();
            for a in chunk {
                batches.extend(read_file(log, &a.path)?);
            }
            let path = format!("dt={dt}/hour={hour}/{}", compacted_name(chunk));
            let key = log.file_key(&path);
            let all = concat_batches(&schema, &batches).map_err(|e| fmt_err(&key, e))?;
            let sort: Vec<SortColumn> = sort_columns(table)
                .iter()
                .filter_map(|c| {
                    Some(SortColumn {
                        values: all.column_by_name(c)?.clone(),
                        options: None,
                    })
                })
                .collect();
            let order = lexsort_to_indices(&sort, None).map_err(|e| fmt_err(&key, e))?;
            let sorted = take_record_batch(&all, &order).map_err(|e| fmt_err(&key, e))?;
            rows += sorted.num_rows();
            let schema = sorted.schema();
            let batch = std::iter::once(Ok(sorted));
            let Encoded { bytes, stats } =
                encode_parquet(&key, schema, batch, Some(opts.row_group_rows))?;
            let size = bytes.len() as i64;
            log.store().put(&key, bytes)?;
            adds.push(Add::new(path, size, false, stats));
        }
        log.store().sync(
            adds.iter()
                .map(|a| log.file_key(&a.path))
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str),
        )?;
        let now = delta_now_ms();
        let mut actions: Vec<Action> = inputs
            .iter()
            .map(|a| Action::Remove(removal(a, now, false)))
            .collect();
        let bytes_after = adds.iter().map(|a| a.size as u64).sum();
        let files_after = adds.len();
        actions.extend(adds.into_iter().map(Action::Add));
        actions.push(commit_info("OPTIMIZE"));
        let touched: std::collections::HashSet<&str> =
            inputs.iter().map(|a| a.path.as_str()).collect();
        let committed = commit_unless_touched(log, &mut version, &actions, &touched)?;
        let report = HourReport {
            table: table.to_owned(),
            dt,
            hour,
            files_before: inputs.len(),
            files_after,
            rows,
            bytes_before: inputs.iter().map(|a| a.size as u64).sum(),
            bytes_after,
            committed,
        };
        each(&report);
        reports.push(report);
    }
    if reports.iter().any(|r| r.committed) {
        log.write_checkpoint(&log.snapshot()?, crate::lake::DEFAULT_VACUUM_GRACE_MS)?;
    }
    Ok(reports)
}

fn removal(a: &Add, now: i64, data_change: bool) -> Remove {
    Remove {
        path: a.path.clone(),
        deletion_timestamp: Some(now),
        data_change,
        extended_file_metadata: Some(true),
        partition_values: Some(a.partition_values.clone()),
        size: Some(a.size),
    }
}

/// Commit `actions` after `version`, moving past commits of other writers that leave the
/// `touched` paths alone; false (nothing committed) when one of them added or removed one.
fn commit_unless_touched(
    log: &DeltaLog,
    version: &mut u64,
    actions: &[Action],
    touched: &std::collections::HashSet<&str>,
) -> Result<bool, LakeError> {
    loop {
        let next = *version + 1;
        if log.try_commit(next, actions)? {
            *version = next;
            return Ok(true);
        }
        let theirs = log.read_commit(next)?.unwrap_or_default();
        *version = next;
        let conflict = theirs.iter().any(|a| match a {
            Action::Add(a) => touched.contains(a.path.as_str()),
            Action::Remove(r) => touched.contains(r.path.as_str()),
            _ => false,
        });
        if conflict {
            return Ok(false);
        }
    }
}

/// What retention removed from one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpireReport {
    pub files: usize,
    pub bytes: u64,
    /// The oldest `dt` kept.
    pub kept_from: String,
}

/// Remove every file of `table` whose `dt` is before `keep_from_dt` (`YYYY-MM-DD`) in one
/// commit. Blocking.
pub fn expire(lake: &Lake, table: &str, keep_from_dt: &str) -> Result<ExpireReport, LakeError> {
    let log = table_log(lake, table)?;
    loop {
        let snap = log.snapshot()?;
        let Some(mut version) = snap.version else {
            return Ok(ExpireReport {
                kept_from: keep_from_dt.to_owned(),
                ..Default::default()
            });
        };
        let old: Vec<&Add> = snap
            .files
            .values()
            .filter(|a| {
                a.partition_values
                    .get("dt")
                    .and_then(|d| d.as_deref())
                    .is_some_and(|d| d < keep_from_dt)
            })
            .collect();
        let report = ExpireReport {
            files: old.len(),
            bytes: old.iter().map(|a| a.size as u64).sum(),
            kept_from: keep_from_dt.to_owned(),
        };
        if old.is_empty() {
            return Ok(report);
        }
        let now = delta_now_ms();
        let mut actions: Vec<Action> = old
            .iter()
            .map(|a| Action::Remove(removal(a, now, true)))
            .collect();
        actions.push(commit_info("DELETE"));
        let touched = old.iter().map(|a| a.path.as_str()).collect();
        if commit_unless_touched(log, &mut version, &actions, &touched)? {
            log.write_checkpoint(&log.snapshot()?, crate::lake::DEFAULT_VACUUM_GRACE_MS)?;
            return Ok(report);
        }
        // A compaction of an expiring hour landed meanwhile: plan again over its result.
    }
}

/// What the vacuum deleted from one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VacuumReport {
    /// Files removed from the table longer than the grace ago, deleted.
    pub files: usize,
    /// Files under the table that no commit added, older than the grace, deleted.
    pub orphans: usize,
    pub log_files: u64,
}

/// Delete files removed more than `grace_ms` ago (and not added back), then the log files older
/// than the newest checkpoint and `log_keep_ms` (the checkpoint carries the table's state and
/// the tombstones still fencing replays; older commits serve only readers that started before
/// it). Blocking.
pub fn vacuum(
    lake: &Lake,
    table: &str,
    grace_ms: i64,
    log_keep_ms: i64,
) -> Result<VacuumReport, LakeError> {
    let log = table_log(lake, table)?;
    let snap = log.snapshot()?;
    if snap.version.is_none() {
        return Ok(VacuumReport::default());
    }
    let horizon = delta_now_ms() - grace_ms;
    let mut files = 0;
    for r in snap.tombstones.values() {
        if r.deletion_timestamp.unwrap_or(0) < horizon && !snap.files.contains_key(&r.path) {
            log.store().delete(&log.file_key(&r.path))?;
            files += 1;
        }
    }
    // Files no commit ever added (a writer that died between writing a file and committing it,
    // and was never replayed; a compaction killed before its commit whose inputs changed since),
    // once older than the grace: nobody can still be about to commit them.
    let store = log.store();
    let t = log.table();
    let mut orphans = 0;
    for dt in store.list_dirs(t)? {
        if !dt.starts_with("dt=") {
            continue;
        }
        for hour in store.list_dirs(&format!("{t}/{dt}"))? {
            for (name, modified) in store.list_files_modified(&format!("{t}/{dt}/{hour}"))? {
                let path = format!("{dt}/{hour}/{name}");
                if name.ends_with(".parquet")
                    && modified < horizon
                    && !snap.files.contains_key(&path)
                    && !snap.tombstones.contains_key(&path)
                {
                    store.delete(&log.file_key(&path))?;
                    orphans += 1;
                }
            }
        }
    }
    // The new checkpoint leaves the expired tombstones out; then older log files can go.
    log.write_checkpoint(&snap, grace_ms)?;
    let log_files = log.clean_log(log_keep_ms)?;
    Ok(VacuumReport {
        files,
        orphans,
        log_files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wtm_core::agg::{ClosedWindow, WindowAgg, WindowKey};
    use wtm_core::checkpoint::Publication;

    fn publication(partition: u32, start: i64, hosts: &[&str]) -> Publication {
        let closed = hosts
            .iter()
            .map(|h| {
                let mut agg = WindowAgg::default();
                agg.add(&wtm_core::event::Event {
                    ts_ms: start + 1,
                    host: (*h).into(),
                    method: "GET".into(),
                    path: "/".into(),
                    status: 200,
                    bytes: 10,
                    latency_ms: Some(3.0),
                    client_ip: None,
                    user_agent: None,
                    referrer: None,
                });
                ClosedWindow {
                    key: WindowKey {
                        host: (*h).into(),
                        start_ms: start,
                        partition,
                    },
                    end_ms: start + 60_000,
                    agg,
                }
            })
            .collect();
        Publication {
            partition,
            from_offset: 0,
            to_offset: 0,
            records_watermark: Default::default(),
            created_ms: start,
            closed,
            late: vec![],
            invalid: vec![],
            raw: Default::default(),
            seq: 0,
        }
    }

    /// A local lake that commits at once.
    fn lake_in_temp_dir() -> (tempfile::TempDir, Lake) {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::with_commit_interval(
            crate::Store::Local(dir.path().to_owned()),
            std::time::Duration::ZERO,
        );
        (dir, lake)
    }

    fn requests_by_host(lake: &Lake) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for w in lake.read_windows(0).unwrap() {
            *m.entry(w.key.host).or_default() += w.agg.requests;
        }
        m
    }

    #[test]
    fn compaction_keeps_every_row_once_and_replays_do_not_bring_inputs_back() {
        let (_dir, lake) = lake_in_temp_dir();
        for p in 0..3 {
            for w in 0..4 {
                lake.write(&publication(p, w * 60_000, &["b.example", "a.example"]))
                    .unwrap();
            }
        }
        let before = requests_by_host(&lake);
        let log = lake.log("windows").unwrap();
        assert_eq!(log.snapshot().unwrap().files.len(), 12);
        let opts = CompactOptions {
            before_ms: 3_600_000,
            target_bytes: 64 << 20,
            row_group_rows: 1000,
        };
        let reports = compact(&lake, "windows", &opts, &mut |_| {}).unwrap();
        assert_eq!(reports.len(), 1);
        assert!(reports[0].committed);
        assert_eq!((reports[0].files_before, reports[0].files_after), (12, 1));
        assert_eq!(reports[0].rows, 24);
        assert_eq!(requests_by_host(&lake), before);
        // Sorted by host, then time.
        let snap = log.snapshot().unwrap();
        let only = snap.files.values().next().unwrap();
        let batches = read_file(log, &only.path).unwrap();
        let hosts = batches[0]
            .column_by_name("host")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        assert_eq!(hosts.value(0), "a.example");
        assert_eq!(hosts.value(23), "b.example");
        // A replay of a compacted publication adds nothing.
        lake.write(&publication(1, 60_000, &["b.example", "a.example"]))
            .unwrap();
        assert_eq!(requests_by_host(&lake), before);
        // Idempotent: nothing left to do.
        assert!(compact(&lake, "windows", &opts, &mut |_| {})
            .unwrap()
            .is_empty());
        // A late file for the compacted hour stays, and the next round takes it in.
        lake.write(&publication(0, 30 * 60_000, &["c.example"]))
            .unwrap();
        let after_late = requests_by_host(&lake);
        assert_eq!(after_late["c.example"], 1);
        let opts_small = CompactOptions {
            target_bytes: 1,
            ..opts
        };
        // With a tiny target every input is its own chunk: nothing merges, all still there.
        compact(&lake, "windows", &opts_small, &mut |_| {}).unwrap();
        assert_eq!(requests_by_host(&lake), after_late);
    }

    #[test]
    fn retention_removes_old_days_and_vacuum_deletes_their_files() {
        let (dir, lake) = lake_in_temp_dir();
        let day = 86_400_000;
        lake.write(&publication(0, 0, &["a.example"])).unwrap();
        lake.write(&publication(0, day, &["a.example"])).unwrap();
        let r = expire(&lake, "windows", "1970-01-02").unwrap();
        assert_eq!(r.files, 1);
        assert_eq!(requests_by_host(&lake)["a.example"], 1);
        let old = dir
            .path()
            .join("windows/dt=1970-01-01/hour=00/part-p00000-w0.parquet");
        assert!(old.exists(), "kept until the vacuum's grace has passed");
        assert_eq!(
            vacuum(&lake, "windows", 3_600_000, 3_600_000)
                .unwrap()
                .files,
            0
        );
        assert!(old.exists());
        // A file no commit added (a writer that died before its commit): kept within the grace,
        // deleted after it.
        let orphan = dir
            .path()
            .join("windows/dt=1970-01-02/hour=00/part-p00009-w86400000.parquet");
        std::fs::write(&orphan, b"PAR1").unwrap();
        assert_eq!(
            vacuum(&lake, "windows", 3_600_000, 3_600_000)
                .unwrap()
                .orphans,
            0
        );
        assert!(orphan.exists());
        let r = vacuum(&lake, "windows", -1, -1).unwrap();
        assert_eq!((r.files, r.orphans), (1, 1));
        assert!(!old.exists() && !orphan.exists());
        assert_eq!(requests_by_host(&lake)["a.example"], 1);
    }
}
