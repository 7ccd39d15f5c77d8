//! The Parquet lake: Hive-style partitions, deterministic file names, atomic writes.
//!
//! ```text
//! <lake>/windows/dt=YYYY-MM-DD/hour=HH/part-p<partition>-w<window start ms>.parquet
//! <lake>/late/dt=…/hour=…/part-p<partition>-o<first offset>.parquet     (by event hour)
//! <lake>/events/dt=…/hour=…/part-p<partition>-o<first offset>.parquet   (by event hour)
//! <lake>/invalid/dt=…/hour=…/part-p<partition>-o<first offset>.parquet  (by publication hour)
//! ```
//!
//! A name is a function of what the file holds, so writing a publication again overwrites.
//! The objects live in a [`Store`]: a local directory or an S3 bucket.

use crate::delta::{Add, DeltaError, DeltaLog, TableWriter};
use crate::store::{Expect, Store, StoreError, Version};
use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, Float64Builder, Int32Array, Int32Builder,
    Int64Builder, StringArray, StringBuilder, TimestampMillisecondArray,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use wtm_core::agg::{ClosedWindow, WindowAgg, WindowKey};
use wtm_core::checkpoint::{decode, encode_into, Publication};
use wtm_core::error::ErrorKind;
use wtm_core::records::{EventColumns, TextColumn};
use wtm_core::time::dt_hour;

#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("lake: {path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Delta(#[from] DeltaError),
}

impl LakeError {
    /// A conditional write lost to another writer (see [`Lake::replace_snapshot`]).
    pub fn is_conflict(&self) -> bool {
        matches!(self, LakeError::Store(StoreError::Conflict { .. }))
    }

    /// Encoding our own rows cannot succeed on a retry; the store's errors say for themselves.
    pub fn kind(&self) -> ErrorKind {
        match self {
            LakeError::Format { .. } => ErrorKind::Permanent,
            LakeError::Store(e) => e.kind(),
            LakeError::Delta(e) => e.kind(),
        }
    }
}

/// What one publication wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    pub files: u64,
    pub bytes: u64,
}

fn ts_field(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        false,
    )
}

/// Columns of `windows/`; also the contract the Glue tables and DuckDB queries rely on.
pub fn windows_schema() -> SchemaRef {
    let i64f = |n: &str| Field::new(n, DataType::Int64, false);
    let f64f = |n: &str| Field::new(n, DataType::Float64, false);
    let strf = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        strf("host"),
        ts_field("window_start"),
        ts_field("window_end"),
        Field::new("partition", DataType::Int32, false),
        i64f("requests"),
        i64f("bytes"),
        i64f("status_1xx"),
        i64f("status_2xx"),
        i64f("status_3xx"),
        i64f("status_4xx"),
        i64f("status_5xx"),
        f64f("error_rate"),
        f64f("latency_p50_ms"),
        f64f("latency_p90_ms"),
        f64f("latency_p95_ms"),
        f64f("latency_p99_ms"),
        f64f("latency_max_ms"),
        i64f("unique_clients"),
        i64f("bots"),
        strf("status_codes"),
        strf("methods"),
        strf("top_paths"),
        strf("top_referrers"),
        strf("top_user_agents"),
        Field::new("sketch", DataType::Binary, false),
    ]))
}

/// Columns of `events/` and `late/` (late adds `watermark`).
pub fn events_schema(late: bool) -> SchemaRef {
    let mut fields = vec![
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        ts_field("ts"),
        Field::new("host", DataType::Utf8, false),
        Field::new("method", DataType::Utf8, false),
        Field::new("path", DataType::Utf8, false),
        Field::new("status", DataType::Int32, false),
        Field::new("bytes", DataType::Int64, false),
        Field::new("latency_ms", DataType::Float64, true),
        Field::new("client_ip", DataType::Utf8, true),
        Field::new("user_agent", DataType::Utf8, true),
        Field::new("referrer", DataType::Utf8, true),
    ];
    if late {
        fields.push(ts_field("watermark"));
    }
    Arc::new(Schema::new(fields))
}

pub fn invalid_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("detail", DataType::Utf8, false),
        Field::new("raw", DataType::Binary, false),
    ]))
}

/// `[{"count":…,"key":…}]` (the fields in the order the lake has always had them). Written
/// straight from the entries: through `serde_json::Value` (an object map per entry) it was a
/// twentieth of a backfill's CPU.
fn top_json(top: &[(String, u64)]) -> String {
    #[derive(serde::Serialize)]
    struct Entry<'a> {
        count: u64,
        key: &'a str,
    }
    let entries: Vec<Entry> = top
        .iter()
        .map(|(key, count)| Entry { count: *count, key })
        .collect();
    serde_json::to_string(&entries).expect("strings and numbers always serialize")
}

fn windows_batch(rows: &[&ClosedWindow]) -> Result<RecordBatch, String> {
    let n = rows.len();
    let mut host = StringBuilder::new();
    let mut start = TimestampMillisecondBuilder::with_capacity(n);
    let mut end = TimestampMillisecondBuilder::with_capacity(n);
    let mut part = Int32Builder::with_capacity(n);
    let mut ints: Vec<Int64Builder> = (0..9).map(|_| Int64Builder::with_capacity(n)).collect();
    let mut floats: Vec<Float64Builder> =
        (0..6).map(|_| Float64Builder::with_capacity(n)).collect();
    let mut strs: Vec<StringBuilder> = (0..5).map(|_| StringBuilder::new()).collect();
    let mut sketch = BinaryBuilder::new();
    let mut encoded = Vec::new();
    for w in rows {
        let s = w.agg.finalize();
        host.append_value(&w.key.host);
        start.append_value(w.key.start_ms);
        end.append_value(w.end_ms);
        part.append_value(w.key.partition as i32);
        let iv = [
            s.requests,
            s.bytes,
            s.status_class[0],
            s.status_class[1],
            s.status_class[2],
            s.status_class[3],
            s.status_class[4],
            s.unique_clients,
            s.bots,
        ];
        // Column order in the schema: requests, bytes, 1xx..5xx, then unique_clients, bots.
        for (b, v) in ints.iter_mut().zip(iv) {
            b.append_value(v as i64);
        }
        let fv = [
            s.error_rate,
            s.latency_p50,
            s.latency_p90,
            s.latency_p95,
            s.latency_p99,
            s.latency_max,
        ];
        for (b, v) in floats.iter_mut().zip(fv) {
            b.append_value(v);
        }
        let codes: BTreeMap<String, u64> = s
            .status_codes
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        strs[0].append_value(serde_json::to_string(&codes).map_err(|e| e.to_string())?);
        strs[1].append_value(serde_json::to_string(&s.methods).map_err(|e| e.to_string())?);
        strs[2].append_value(top_json(&s.top_paths));
        strs[3].append_value(top_json(&s.top_referrers));
        strs[4].append_value(top_json(&s.top_user_agents));
        encode_into(&mut encoded, &w.agg).map_err(|e| e.to_string())?;
        sketch.append_value(&encoded);
    }
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(host.finish()),
        Arc::new(start.finish().with_timezone("UTC")),
        Arc::new(end.finish().with_timezone("UTC")),
        Arc::new(part.finish()),
    ];
    let mut ints = ints
        .into_iter()
        .map(|mut b| Arc::new(b.finish()) as ArrayRef);
    cols.extend(ints.by_ref().take(7));
    cols.extend(
        floats
            .into_iter()
            .map(|mut b| Arc::new(b.finish()) as ArrayRef),
    );
    cols.extend(ints);
    cols.extend(
        strs.into_iter()
            .map(|mut b| Arc::new(b.finish()) as ArrayRef),
    );
    cols.push(Arc::new(sketch.finish()));
    RecordBatch::try_new(windows_schema(), cols).map_err(|e| e.to_string())
}

/// Window rows encoded per Arrow batch: a row carries its whole aggregate (`sketch`, up to
/// tens of KB for a busy site), and one file holds a partition's share of every site in that
/// window (5,000 rows at 20,000 sites over four partitions), so a file's rows in Arrow's form at
/// once were tens of MB more at the peak of a backfill.
const WINDOW_ROWS_PER_BATCH: usize = 1_024;

/// Rows of raw and late events encoded per Arrow batch (a multiple of the Parquet writer's
/// own batch of 1,024 rows).
const EVENT_ROWS_PER_BATCH: usize = 16_384;

/// The rows `rows` of `cols` as a batch of the events schema; with `watermarks` (one per row of
/// `cols`), of the late schema.
fn events_batch(
    partition: u32,
    cols: &EventColumns,
    rows: &[usize],
    watermarks: Option<&[i64]>,
) -> Result<RecordBatch, String> {
    let n = rows.len();
    // The column's average bytes per row, for `n` rows: a slice of a column need not hold all
    // of its text.
    let text = |c: &TextColumn| {
        let bytes = c.text_len() as u128 * n as u128 / cols.len().max(1) as u128;
        StringBuilder::with_capacity(n, bytes as usize)
    };
    let mut part = Int32Builder::with_capacity(n);
    let mut off = Int64Builder::with_capacity(n);
    let mut ts = TimestampMillisecondBuilder::with_capacity(n);
    let mut host = text(&cols.host);
    let mut method = text(&cols.method);
    let mut path = text(&cols.path);
    let mut status = Int32Builder::with_capacity(n);
    let mut bytes = Int64Builder::with_capacity(n);
    let mut lat = Float64Builder::with_capacity(n);
    let mut ip = text(&cols.client_ip);
    let mut ua = text(&cols.user_agent);
    let mut refr = text(&cols.referrer);
    let mut wm = TimestampMillisecondBuilder::with_capacity(n);
    for &i in rows {
        part.append_value(partition as i32);
        off.append_value(cols.offsets[i] as i64);
        ts.append_value(cols.ts_ms[i]);
        host.append_value(cols.host.get(i).unwrap_or_default());
        method.append_value(cols.method.get(i).unwrap_or_default());
        path.append_value(cols.path.get(i).unwrap_or_default());
        status.append_value(cols.status[i] as i32);
        bytes.append_value(cols.bytes[i] as i64);
        lat.append_option(cols.latency_ms[i]);
        ip.append_option(cols.client_ip.get(i));
        ua.append_option(cols.user_agent.get(i));
        refr.append_option(cols.referrer.get(i));
        if let Some(w) = watermarks {
            wm.append_value(w[i]);
        }
    }
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(part.finish()),
        Arc::new(off.finish()),
        Arc::new(ts.finish().with_timezone("UTC")),
        Arc::new(host.finish()),
        Arc::new(method.finish()),
        Arc::new(path.finish()),
        Arc::new(status.finish()),
        Arc::new(bytes.finish()),
        Arc::new(lat.finish()),
        Arc::new(ip.finish()),
        Arc::new(ua.finish()),
        Arc::new(refr.finish()),
    ];
    if watermarks.is_some() {
        cols.push(Arc::new(wm.finish().with_timezone("UTC")));
    }
    RecordBatch::try_new(events_schema(watermarks.is_some()), cols).map_err(|e| e.to_string())
}

/// Row numbers of `ts_ms` grouped by the hour of their event time, in row order within each.
fn rows_by_hour(ts_ms: &[i64]) -> BTreeMap<i64, Vec<usize>> {
    let mut hours: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (i, ts) in ts_ms.iter().enumerate() {
        hours
            .entry(ts - ts.rem_euclid(3_600_000))
            .or_default()
            .push(i);
    }
    hours
}

/// One Parquet file, encoded: its bytes and its Delta statistics.
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub stats: String,
}

/// Encode `batches`, in order, as one Parquet file (Snappy; row groups of `row_group_rows`
/// when given). Statistics per column chunk are on (the writer's default), so engines skip row
/// groups by host and time. The writer keeps a row group encoded until it is full, so a file
/// written batch by batch needs only one batch in Arrow's plain form at a time.
pub fn encode_parquet(
    key: &str,
    schema: SchemaRef,
    batches: impl IntoIterator<Item = Result<RecordBatch, String>>,
    row_group_rows: Option<usize>,
) -> Result<Encoded, LakeError> {
    let err = |reason: String| LakeError::Format {
        path: PathBuf::from(key),
        reason,
    };
    let mut props = WriterProperties::builder().set_compression(Compression::SNAPPY);
    if let Some(n) = row_group_rows {
        props = props.set_max_row_group_row_count(Some(n));
    }
    let fmt = |e: parquet::errors::ParquetError| err(e.to_string());
    let mut w = ArrowWriter::try_new(Vec::new(), schema, Some(props.build())).map_err(fmt)?;
    let mut stats = FileStats::default();
    for batch in batches {
        let batch = batch.map_err(err)?;
        stats.add(&batch);
        w.write(&batch).map_err(fmt)?;
    }
    Ok(Encoded {
        bytes: w.into_inner().map_err(fmt)?,
        stats: stats.json(),
    })
}

/// A file's Delta statistics: its row count, and the range of its host and time columns, which
/// lets Spark, Athena and DuckDB skip whole files on a host or time predicate.
#[derive(Default)]
struct FileStats {
    rows: usize,
    host: Option<(String, String)>,
    /// Per time column (`window_start`, `ts`), the least and greatest value.
    times: BTreeMap<&'static str, (i64, i64)>,
}

impl FileStats {
    fn add(&mut self, batch: &RecordBatch) {
        self.rows += batch.num_rows();
        if let Some(host) = batch
            .column_by_name("host")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        {
            let values = host.iter().flatten();
            if let (Some(lo), Some(hi)) = (values.clone().min(), values.max()) {
                let range = self.host.get_or_insert_with(|| (lo.into(), hi.into()));
                if lo < range.0.as_str() {
                    range.0 = lo.into();
                }
                if hi > range.1.as_str() {
                    range.1 = hi.into();
                }
            }
        }
        for col in ["window_start", "ts"] {
            if let Some(t) = batch
                .column_by_name(col)
                .and_then(|c| c.as_any().downcast_ref::<TimestampMillisecondArray>())
            {
                let values = t.iter().flatten();
                if let (Some(lo), Some(hi)) = (values.clone().min(), values.max()) {
                    let range = self.times.entry(col).or_insert((lo, hi));
                    *range = (range.0.min(lo), range.1.max(hi));
                }
            }
        }
    }

    fn json(&self) -> String {
        let mut min = serde_json::Map::new();
        let mut max = serde_json::Map::new();
        if let Some((lo, hi)) = &self.host {
            min.insert("host".into(), lo.as_str().into());
            max.insert("host".into(), hi.as_str().into());
        }
        for (col, (lo, hi)) in &self.times {
            min.insert((*col).into(), wtm_core::time::format_rfc3339(*lo).into());
            max.insert((*col).into(), wtm_core::time::format_rfc3339(*hi).into());
        }
        serde_json::json!({"numRecords": self.rows, "minValues": min, "maxValues": max}).to_string()
    }
}

/// What writing publications put where, before their commits.
#[derive(Default)]
struct Files {
    stats: WriteStats,
    adds: BTreeMap<&'static str, Vec<Add>>,
    written: Vec<String>,
}

/// The lake's four tables, each a Delta table (see [`crate::delta`]).
pub const TABLES: [&str; 4] = ["windows", "late", "events", "invalid"];

/// The columns of a table's files.
pub fn table_schema(table: &str) -> Option<SchemaRef> {
    Some(match table {
        "windows" => windows_schema(),
        "late" => events_schema(true),
        "events" => events_schema(false),
        "invalid" => invalid_schema(),
        _ => return None,
    })
}

/// How long the upkeep keeps a removed file (and its tombstone, the fence against replays) by
/// default before the vacuum deletes it.
pub const DEFAULT_VACUUM_GRACE_MS: i64 = 7 * 24 * 3_600_000;

/// Writes publications into a lake in a local directory or an S3 bucket.
#[derive(Clone)]
pub struct Lake {
    store: Store,
    tables: Arc<[TableWriter; 4]>,
}

impl std::fmt::Debug for Lake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lake").field("store", &self.store).finish()
    }
}

/// Default spacing of a table's commits from one process (`lake.commit_interval_ms`).
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(250);

impl Lake {
    /// A lake in a local directory.
    pub fn new(root: impl Into<PathBuf>) -> Lake {
        Lake::with_store(Store::Local(root.into()))
    }

    pub fn with_store(store: Store) -> Lake {
        Lake::with_commit_interval(store, DEFAULT_COMMIT_INTERVAL)
    }

    /// A lake whose tables take at most one commit per `interval` from this process.
    pub fn with_commit_interval(store: Store, interval: Duration) -> Lake {
        let writer = |t: &str| {
            TableWriter::new(
                DeltaLog::new(store.clone(), t),
                table_schema(t).expect("one of TABLES"),
                interval,
                DEFAULT_VACUUM_GRACE_MS,
            )
        };
        let tables = Arc::new(TABLES.map(writer));
        Lake { store, tables }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A table's log (one of [`TABLES`]).
    pub fn log(&self, table: &str) -> Option<&DeltaLog> {
        self.writer(table).map(TableWriter::log)
    }

    fn writer(&self, table: &str) -> Option<&TableWriter> {
        let i = TABLES.iter().position(|t| *t == table)?;
        Some(&self.tables[i])
    }

    /// The lake's location: a directory or `s3://bucket/prefix`.
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// A file's path inside its table: `dt=…/hour=…/<name>`.
    fn file(ts_ms: i64, name: &str) -> String {
        let (dt, hour) = dt_hour(ts_ms);
        format!("dt={dt}/hour={hour}/{name}")
    }

    /// Key of a partition's shared checkpoint snapshot (`checkpoints/` beside the tables).
    pub fn snapshot_key(partition: u32) -> String {
        format!("checkpoints/partition-{partition:05}.ckpt")
    }

    /// Replace a partition's shared snapshot atomically, only if it is still the version this
    /// owner last wrote or read (`expect`): the fence against an owner that lost its partition
    /// (see DESIGN, Fencing). Returns the new version; [`StoreError::Conflict`] (inside
    /// [`LakeError::Store`]) when another owner published since. Blocking.
    pub fn replace_snapshot(
        &self,
        partition: u32,
        bytes: Vec<u8>,
        expect: &Expect,
    ) -> Result<Version, LakeError> {
        Ok(self
            .store
            .put_if(&Self::snapshot_key(partition), bytes, expect)?)
    }

    /// A partition's shared snapshot with its version, for a conditional replace. Blocking.
    pub fn read_snapshot_versioned(
        &self,
        partition: u32,
    ) -> Result<Option<(Vec<u8>, Version)>, LakeError> {
        Ok(self.store.get_versioned(&Self::snapshot_key(partition))?)
    }

    /// Write every file of a publication and add them to their tables. Blocking: call from
    /// `spawn_blocking`. See [`Lake::write_all`].
    pub fn write(&self, p: &Publication) -> Result<WriteStats, LakeError> {
        self.write_all(std::slice::from_ref(p))
    }

    /// Write every file of these publications (in order), then add them to their tables: one
    /// commit per table for all of them (batched with other partitions' in the same interval).
    /// They count as written once every table's commit is in. A file whose path the upkeep
    /// removed is neither written nor added again (see [`crate::delta`]). Blocking.
    pub fn write_all<P: std::borrow::Borrow<Publication>>(
        &self,
        ps: &[P],
    ) -> Result<WriteStats, LakeError> {
        let mut out = Files::default();
        for p in ps {
            self.put_files(p.borrow(), &mut out)?;
        }
        self.store.sync(out.written.iter().map(String::as_str))?;
        for (table, adds) in out.adds {
            self.writer(table).expect("one of TABLES").append(adds)?;
        }
        Ok(out.stats)
    }

    /// Put one publication's files, noting what to add to which table.
    fn put_files(&self, p: &Publication, out: &mut Files) -> Result<(), LakeError> {
        let mut put = |table: &'static str,
                       path: String,
                       batches: &mut dyn Iterator<Item = Result<RecordBatch, String>>|
         -> Result<(), LakeError> {
            let writer = self.writer(table).expect("one of TABLES");
            let key = writer.log().file_key(&path);
            if writer.is_removed(&path)? {
                tracing::info!(%key, "not writing a file the lake's upkeep already compacted or expired");
                return Ok(());
            }
            let schema = table_schema(table).expect("one of TABLES");
            let Encoded { bytes, stats } = encode_parquet(&key, schema, batches, None)?;
            let size = bytes.len() as i64;
            self.store.put(&key, bytes)?;
            out.stats.bytes += size as u64;
            out.stats.files += 1;
            out.adds
                .entry(table)
                .or_default()
                .push(Add::new(path, size, true, stats));
            out.written.push(key);
            Ok(())
        };
        // Windows: one file per (partition, window start).
        let mut by_window: BTreeMap<i64, Vec<&ClosedWindow>> = BTreeMap::new();
        for w in &p.closed {
            by_window.entry(w.key.start_ms).or_default().push(w);
        }
        for (start, mut rows) in by_window {
            rows.sort_by(|a, b| a.key.cmp(&b.key));
            let name = format!("part-p{:05}-w{}.parquet", p.partition, start);
            let mut batches = rows.chunks(WINDOW_ROWS_PER_BATCH).map(windows_batch);
            put("windows", Self::file(start, &name), &mut batches)?;
        }
        let name = format!("part-p{:05}-o{:020}.parquet", p.partition, p.from_offset);
        // Late and raw events: grouped by the hour of their event time.
        let mut late = EventColumns::default();
        for l in &p.late {
            late.push(l.offset, l.event.view());
        }
        let watermarks: Vec<i64> = p.late.iter().map(|l| l.watermark_ms).collect();
        // Raw events in Arrow's plain form are ~3x their coded columns: built a slice of rows
        // at a time (a backfill's write holds up to `lake.max_unwritten_records` of them).
        let mut events = |table, hour, cols: &EventColumns, rows: Vec<usize>, wm| {
            let mut batches = rows
                .chunks(EVENT_ROWS_PER_BATCH)
                .map(|chunk| events_batch(p.partition, cols, chunk, wm));
            put(table, Self::file(hour, &name), &mut batches)
        };
        for (hour, rows) in rows_by_hour(&late.ts_ms) {
            events("late", hour, &late, rows, Some(&watermarks))?;
        }
        for (hour, rows) in rows_by_hour(&p.raw.ts_ms) {
            events("events", hour, &p.raw, rows, None)?;
        }
        if !p.invalid.is_empty() {
            let mut part = Int32Builder::new();
            let mut off = Int64Builder::new();
            let mut reason = StringBuilder::new();
            let mut detail = StringBuilder::new();
            let mut raw = BinaryBuilder::new();
            for r in &p.invalid {
                part.append_value(p.partition as i32);
                off.append_value(r.offset as i64);
                reason.append_value(r.reason.as_str());
                detail.append_value(&r.detail);
                raw.append_value(&r.raw);
            }
            let cols: Vec<ArrayRef> = vec![
                Arc::new(part.finish()),
                Arc::new(off.finish()),
                Arc::new(reason.finish()),
                Arc::new(detail.finish()),
                Arc::new(raw.finish()),
            ];
            let batch = RecordBatch::try_new(invalid_schema(), cols).map_err(|e| e.to_string());
            put(
                "invalid",
                Self::file(p.created_ms, &name),
                &mut std::iter::once(batch),
            )?;
        }
        Ok(())
    }

    /// The files the `windows` table holds now, with the start (UTC ms) of each one's hour.
    fn window_files(&self) -> Result<Vec<(i64, String)>, LakeError> {
        let log = self.log("windows").expect("one of TABLES");
        let snap = log.snapshot()?;
        Ok(snap
            .files
            .into_values()
            .filter_map(|a| {
                let pv = &a.partition_values;
                let (dt, hour) = (pv.get("dt")?.as_deref()?, pv.get("hour")?.as_deref()?);
                let start = wtm_core::time::parse_rfc3339(&format!("{dt}T{hour}:00:00Z"))?;
                Some((start, log.file_key(&a.path)))
            })
            .collect())
    }

    /// Start (UTC ms) of the newest hour the `windows` table holds, if any. Blocking.
    pub fn newest_window_hour(&self) -> Result<Option<i64>, LakeError> {
        Ok(self.window_files()?.into_iter().map(|(h, _)| h).max())
    }

    /// Closed windows whose start is at or after `since_ms`, rebuilt from their sketches (the API
    /// refills its history this way after a restart). Blocking.
    pub fn read_windows(&self, since_ms: i64) -> Result<Vec<ClosedWindow>, LakeError> {
        let mut out = Vec::new();
        self.for_each_window(since_ms, &mut |w| out.push(w))?;
        Ok(out)
    }

    /// [`Self::read_windows`], one window at a time (a file's windows in memory at once, never
    /// the whole span), from the files the table holds now. Blocking.
    pub fn for_each_window(
        &self,
        since_ms: i64,
        out: &mut dyn FnMut(ClosedWindow),
    ) -> Result<(), LakeError> {
        let since_hour = since_ms.saturating_sub(since_ms.rem_euclid(3_600_000));
        let mut files = self.window_files()?;
        files.sort();
        for (hour, key) in files {
            if hour < since_hour {
                continue;
            }
            if let Some(bytes) = self.store.get(&key)? {
                // History for the API is best effort: a bad file is reported and skipped,
                // never a reason not to start.
                if let Err(e) = read_window_file(&key, bytes, since_ms, out) {
                    tracing::warn!(error = %e, "skipping an unreadable window file");
                }
            }
        }
        Ok(())
    }
}

fn read_window_file(
    key: &str,
    bytes: Vec<u8>,
    since_ms: i64,
    out: &mut dyn FnMut(ClosedWindow),
) -> Result<(), LakeError> {
    let fmt = |reason: String| LakeError::Format {
        path: PathBuf::from(key),
        reason,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .and_then(|b| b.build())
        .map_err(|e| fmt(e.to_string()))?;
    for batch in reader {
        let batch = batch.map_err(|e| fmt(e.to_string()))?;
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| fmt(format!("missing column {name}")))
        };
        let host = col("host")?
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| fmt("host type".into()))?;
        let start = col("window_start")?
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .ok_or_else(|| fmt("window_start type".into()))?;
        let end = col("window_end")?
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .ok_or_else(|| fmt("window_end type".into()))?;
        let part = col("partition")?
            .as_any()
            .downcast_ref::<Int32Array>()
            .ok_or_else(|| fmt("partition type".into()))?;
        let sketch = col("sketch")?
            .as_any()
            .downcast_ref::<BinaryArray>()
            .ok_or_else(|| fmt("sketch type".into()))?;
        for i in 0..batch.num_rows() {
            if start.value(i) < since_ms || sketch.is_null(i) {
                continue;
            }
            let agg: WindowAgg = decode(key, sketch.value(i)).map_err(|e| fmt(e.to_string()))?;
            out(ClosedWindow {
                key: WindowKey {
                    host: host.value(i).to_owned(),
                    start_ms: start.value(i),
                    partition: part.value(i) as u32,
                },
                end_ms: end.value(i),
                agg,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wtm_core::checkpoint::{InvalidRecord, LateEvent};
    use wtm_core::event::Event;
    use wtm_core::parse::InvalidReason;

    #[test]
    fn top_lists_keep_their_json_form() {
        assert_eq!(top_json(&[]), "[]");
        assert_eq!(
            top_json(&[("/a\"b\\\u{1}é".into(), 3), ("/".into(), 1)]),
            r#"[{"count":3,"key":"/a\"b\\\u0001é"},{"count":1,"key":"/"}]"#
        );
    }

    fn event(ts: i64) -> Event {
        Event {
            ts_ms: ts,
            host: "a.example".into(),
            method: "GET".into(),
            path: "/".into(),
            status: 200,
            bytes: 10,
            latency_ms: Some(3.0),
            client_ip: Some("1.1.1.1".into()),
            user_agent: None,
            referrer: None,
        }
    }

    #[test]
    fn write_is_idempotent_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(dir.path());
        let mut agg = WindowAgg::default();
        agg.add(&event(1_000));
        agg.add(&event(2_000));
        let p = Publication {
            partition: 2,
            from_offset: 7,
            to_offset: 9,
            records_watermark: wtm_core::window::WatermarkState::default(),
            created_ms: 3_600_000,
            closed: vec![ClosedWindow {
                key: WindowKey {
                    host: "a.example".into(),
                    start_ms: 0,
                    partition: 2,
                },
                end_ms: 60_000,
                agg,
            }],
            late: vec![LateEvent {
                offset: 8,
                watermark_ms: 99,
                event: event(5),
            }],
            invalid: vec![InvalidRecord {
                offset: 7,
                reason: InvalidReason::BadJson,
                detail: "x".into(),
                raw: b"{".to_vec(),
            }],
            raw: {
                let mut raw = EventColumns::default();
                raw.push(9, event(1_000).view());
                raw
            },
            seq: 1,
        };
        let s1 = lake.write(&p).unwrap();
        let s2 = lake.write(&p).unwrap();
        assert_eq!(s1.files, 4);
        assert_eq!(s1, s2);
        assert!(dir
            .path()
            .join("windows/dt=1970-01-01/hour=00/part-p00002-w0.parquet")
            .exists());
        assert!(dir
            .path()
            .join("invalid/dt=1970-01-01/hour=01/part-p00002-o00000000000000000007.parquet")
            .exists());
        let back = lake.read_windows(0).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].agg.requests, 2);
        assert_eq!(lake.read_windows(60_000).unwrap().len(), 0);
    }

    #[test]
    fn window_rows_written_a_slice_at_a_time_read_back_whole_with_whole_file_statistics() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(dir.path());
        // One file: a partition's share of one window for more sites than two slices hold.
        let n = 2 * WINDOW_ROWS_PER_BATCH + 3;
        let closed: Vec<ClosedWindow> = (0..n)
            .map(|i| {
                let mut agg = WindowAgg::default();
                for _ in 0..=i % 5 {
                    agg.add(&event(1_000));
                }
                ClosedWindow {
                    key: WindowKey {
                        host: format!("h{i:05}.example"),
                        start_ms: 0,
                        partition: 3,
                    },
                    end_ms: 60_000,
                    agg,
                }
            })
            .collect();
        let p = Publication {
            partition: 3,
            from_offset: 0,
            to_offset: 1,
            records_watermark: wtm_core::window::WatermarkState::default(),
            created_ms: 0,
            closed,
            late: vec![],
            invalid: vec![],
            raw: EventColumns::default(),
            seq: 1,
        };
        assert_eq!(lake.write(&p).unwrap().files, 1);
        let back: BTreeMap<String, u64> = lake
            .read_windows(0)
            .unwrap()
            .into_iter()
            .map(|w| (w.key.host, w.agg.requests))
            .collect();
        let expected: BTreeMap<String, u64> = (0..n)
            .map(|i| (format!("h{i:05}.example"), (i % 5) as u64 + 1))
            .collect();
        assert_eq!(back, expected);
        let snap = lake.log("windows").unwrap().snapshot().unwrap();
        let add = snap.files.values().next().unwrap();
        let stats: serde_json::Value = serde_json::from_str(add.stats.as_deref().unwrap()).unwrap();
        assert_eq!(stats["numRecords"], n);
        assert_eq!(stats["minValues"]["host"], "h00000.example");
        assert_eq!(stats["maxValues"]["host"], format!("h{:05}.example", n - 1));
    }

    #[test]
    fn raw_events_written_a_slice_at_a_time_read_back_whole_with_whole_file_statistics() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(dir.path());
        // Two hours, each more than two slices of rows, hosts not in order.
        let n = 5 * EVENT_ROWS_PER_BATCH as u64 + 7;
        let mut raw = EventColumns::default();
        let mut expected: BTreeMap<u64, (i64, String)> = BTreeMap::new();
        for i in 0..n {
            let mut e = event((i % 2) as i64 * 3_600_000 + i as i64);
            e.host = format!("h{}.example", (i * 7919) % 1000);
            raw.push(100 + i, e.view());
            expected.insert(100 + i, (e.ts_ms, e.host));
        }
        let p = Publication {
            partition: 1,
            from_offset: 100,
            to_offset: 100 + n,
            records_watermark: wtm_core::window::WatermarkState::default(),
            created_ms: 0,
            closed: vec![],
            late: vec![],
            invalid: vec![],
            raw,
            seq: 1,
        };
        assert_eq!(lake.write(&p).unwrap().files, 2);
        let mut back = BTreeMap::new();
        let snap = lake.log("events").unwrap().snapshot().unwrap();
        assert_eq!(snap.files.len(), 2);
        for add in snap.files.values() {
            let bytes = std::fs::read(dir.path().join("events").join(&add.path)).unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
                .unwrap()
                .build()
                .unwrap();
            let mut hosts = Vec::new();
            for batch in reader {
                let batch = batch.unwrap();
                let col = |name| batch.column_by_name(name).unwrap().clone();
                let (off, ts, host) = (col("offset"), col("ts"), col("host"));
                let off = off
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .unwrap();
                let ts = ts
                    .as_any()
                    .downcast_ref::<TimestampMillisecondArray>()
                    .unwrap();
                let host = host.as_any().downcast_ref::<StringArray>().unwrap();
                for i in 0..batch.num_rows() {
                    let v = (ts.value(i), host.value(i).to_string());
                    hosts.push(v.1.clone());
                    assert!(back.insert(off.value(i) as u64, v).is_none(), "twice");
                }
            }
            let stats: serde_json::Value =
                serde_json::from_str(add.stats.as_deref().unwrap()).unwrap();
            assert_eq!(stats["numRecords"], hosts.len());
            assert_eq!(stats["minValues"]["host"], *hosts.iter().min().unwrap());
            assert_eq!(stats["maxValues"]["host"], *hosts.iter().max().unwrap());
        }
        assert_eq!(back, expected);
    }
}
