//! The lake's tables as Delta Lake tables: a transaction log beside the Hive-style files.
//!
//! A plain directory of Parquet files cannot be rewritten without a moment where a reader sees
//! both the old small files and the new big one, or neither. Delta's log makes the set of files
//! a table holds change atomically: commit `N` is the object `_delta_log/<N as 20 digits>.json`,
//! created only if absent (the store's put-if-absent), listing the files it adds and removes;
//! a reader replays the newest checkpoint and the commits after it. Athena, Spark, DuckDB
//! (`delta_scan`) and delta-rs read it; the files keep their Hive paths, so the layout under the
//! log is the one documented before.
//!
//! The subset written here: protocol reader 1 / writer 2, `add`/`remove`/`metaData`/`protocol`/
//! `commitInfo` actions, and classic single-file Parquet checkpoints (built from the same JSON
//! actions through arrow-json, so one serde model serves both).
//!
//! Who writes: nodes append (group commits, [`TableWriter`]); upkeep (`wtm compact`,
//! `wtm retention`) removes and adds. An append whose path the upkeep removed is dropped: a
//! file's name is a function of its rows (the exactly-once argument), so the path's rows are
//! already in a compacted file, or expired on purpose — re-adding it would count them twice or
//! resurrect them. This is the fence against replays and zombies that come back after an
//! upkeep; it holds while the removal's tombstone is kept (the vacuum grace).

use crate::store::{Store, StoreError};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use wtm_core::error::ErrorKind;

/// How many commits between two checkpoints (Delta's own default is 10; ours commit every few
/// seconds, and a reader replays at most this many JSON files after the newest checkpoint).
pub const CHECKPOINT_EVERY: u64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("delta log {table}: {reason}")]
    Log {
        table: String,
        reason: String,
        kind: ErrorKind,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DeltaError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            DeltaError::Log { kind, .. } => *kind,
            DeltaError::Store(e) => e.kind(),
        }
    }
}

fn log_err(table: &str, reason: impl std::fmt::Display) -> DeltaError {
    DeltaError::Log {
        table: table.to_owned(),
        reason: reason.to_string(),
        kind: ErrorKind::Permanent,
    }
}

pub type PartitionValues = BTreeMap<String, Option<String>>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Add {
    /// Relative to the table's root, e.g. `dt=2026-01-01/hour=00/part-p00000-w0.parquet`.
    pub path: String,
    pub partition_values: PartitionValues,
    pub size: i64,
    pub modification_time: i64,
    pub data_change: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<String>,
}

impl Add {
    /// A file just written at `path` (`dt=…/hour=…/name`); `data_change` false for a rewrite of
    /// rows the table already holds (compaction).
    pub fn new(path: String, size: i64, data_change: bool, stats: String) -> Add {
        Add {
            partition_values: partition_values(&path),
            path,
            size,
            modification_time: now_ms(),
            data_change,
            stats: Some(stats),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Remove {
    pub path: String,
    #[serde(default)]
    pub deletion_timestamp: Option<i64>,
    pub data_change: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended_file_metadata: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_values: Option<PartitionValues>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Protocol {
    pub min_reader_version: i32,
    pub min_writer_version: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Format {
    pub provider: String,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub format: Format,
    pub schema_string: String,
    pub partition_columns: Vec<String>,
    #[serde(default)]
    pub configuration: BTreeMap<String, String>,
    #[serde(default)]
    pub created_time: Option<i64>,
}

/// One line of a commit. Actions this writer does not know (another engine's) are skipped when
/// reading, never an error: they do not change which files the table holds for our tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    Add(Add),
    Remove(Remove),
    MetaData(Metadata),
    Protocol(Protocol),
    CommitInfo(serde_json::Value),
}

/// A table's state at one version: the files it holds and the removals still remembered.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// None: no commit yet.
    pub version: Option<u64>,
    pub files: BTreeMap<String, Add>,
    pub tombstones: BTreeMap<String, Remove>,
    pub metadata: Option<Metadata>,
    pub protocol: Option<Protocol>,
}

impl Snapshot {
    pub fn apply(&mut self, version: u64, actions: &[Action]) {
        for a in actions {
            match a {
                Action::Add(add) => {
                    self.tombstones.remove(&add.path);
                    self.files.insert(add.path.clone(), add.clone());
                }
                Action::Remove(r) => {
                    self.files.remove(&r.path);
                    self.tombstones.insert(r.path.clone(), r.clone());
                }
                Action::MetaData(m) => self.metadata = Some(m.clone()),
                Action::Protocol(p) => self.protocol = Some(p.clone()),
                Action::CommitInfo(_) => {}
            }
        }
        self.version = Some(version);
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The Delta type name of an arrow column type the lake writes.
fn delta_type(t: &DataType) -> Option<&'static str> {
    Some(match t {
        DataType::Utf8 | DataType::LargeUtf8 => "string",
        DataType::Int64 => "long",
        DataType::Int32 => "integer",
        DataType::Float64 => "double",
        DataType::Boolean => "boolean",
        DataType::Binary | DataType::LargeBinary => "binary",
        DataType::Timestamp(_, Some(_)) => "timestamp",
        _ => return None,
    })
}

/// The table schema as Delta's JSON `schemaString`: the file columns plus the partition columns
/// `dt` and `hour` (strings, from the directories, as Hive readers saw them).
pub fn schema_string(schema: &Schema) -> Result<String, String> {
    let mut fields = Vec::new();
    for f in schema.fields() {
        let t = delta_type(f.data_type())
            .ok_or_else(|| format!("column {} has no Delta type", f.name()))?;
        fields.push(serde_json::json!({
            "name": f.name(), "type": t, "nullable": f.is_nullable(), "metadata": {}
        }));
    }
    for p in PARTITION_COLUMNS {
        fields.push(
            serde_json::json!({"name": p, "type": "string", "nullable": true, "metadata": {}}),
        );
    }
    Ok(serde_json::json!({"type": "struct", "fields": fields}).to_string())
}

pub const PARTITION_COLUMNS: [&str; 2] = ["dt", "hour"];

/// `dt` and `hour` of a path `dt=…/hour=…/name`.
pub fn partition_values(path: &str) -> PartitionValues {
    let mut v = PartitionValues::new();
    for part in path.split('/') {
        if let Some((k, val)) = part.split_once('=') {
            if PARTITION_COLUMNS.contains(&k) {
                v.insert(k.to_owned(), Some(val.to_owned()));
            }
        }
    }
    v
}

fn map_of(k: DataType, v: DataType) -> DataType {
    DataType::Map(
        Arc::new(Field::new(
            "key_value",
            DataType::Struct(Fields::from(vec![
                Field::new("key", k, false),
                Field::new("value", v, true),
            ])),
            false,
        )),
        false,
    )
}

/// The classic checkpoint's columns, one struct per action kind (Delta protocol, "Checkpoint
/// Schema"); each row holds exactly one of them.
fn checkpoint_schema() -> SchemaRef {
    let s = || DataType::Utf8;
    let strmap = || map_of(DataType::Utf8, DataType::Utf8);
    let add = Fields::from(vec![
        Field::new("path", s(), false),
        Field::new("partitionValues", strmap(), true),
        Field::new("size", DataType::Int64, false),
        Field::new("modificationTime", DataType::Int64, false),
        Field::new("dataChange", DataType::Boolean, false),
        Field::new("stats", s(), true),
    ]);
    let remove = Fields::from(vec![
        Field::new("path", s(), false),
        Field::new("deletionTimestamp", DataType::Int64, true),
        Field::new("dataChange", DataType::Boolean, false),
        Field::new("extendedFileMetadata", DataType::Boolean, true),
        Field::new("partitionValues", strmap(), true),
        Field::new("size", DataType::Int64, true),
    ]);
    let format = Fields::from(vec![
        Field::new("provider", s(), false),
        Field::new("options", strmap(), true),
    ]);
    let metadata = Fields::from(vec![
        Field::new("id", s(), false),
        Field::new("name", s(), true),
        Field::new("description", s(), true),
        Field::new("format", DataType::Struct(format), false),
        Field::new("schemaString", s(), false),
        Field::new(
            "partitionColumns",
            DataType::List(Arc::new(Field::new("element", s(), true))),
            false,
        ),
        Field::new("configuration", strmap(), true),
        Field::new("createdTime", DataType::Int64, true),
    ]);
    let protocol = Fields::from(vec![
        Field::new("minReaderVersion", DataType::Int32, false),
        Field::new("minWriterVersion", DataType::Int32, false),
    ]);
    let txn = Fields::from(vec![
        Field::new("appId", s(), false),
        Field::new("version", DataType::Int64, false),
        Field::new("lastUpdated", DataType::Int64, true),
    ]);
    Arc::new(Schema::new(vec![
        Field::new("txn", DataType::Struct(txn), true),
        Field::new("add", DataType::Struct(add), true),
        Field::new("remove", DataType::Struct(remove), true),
        Field::new("metaData", DataType::Struct(metadata), true),
        Field::new("protocol", DataType::Struct(protocol), true),
    ]))
}

/// A table's log on a store: `<table>/_delta_log/`. Stateless; every call blocks.
#[derive(Clone, Debug)]
pub struct DeltaLog {
    store: Store,
    table: String,
}

#[derive(Serialize, Deserialize)]
struct LastCheckpoint {
    version: u64,
    size: u64,
}

impl DeltaLog {
    pub fn new(store: Store, table: &str) -> DeltaLog {
        DeltaLog {
            store,
            table: table.to_owned(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn dir(&self) -> String {
        format!("{}/_delta_log", self.table)
    }

    fn commit_key(&self, v: u64) -> String {
        format!("{}/{v:020}.json", self.dir())
    }

    fn checkpoint_key(&self, v: u64) -> String {
        format!("{}/{v:020}.checkpoint.parquet", self.dir())
    }

    /// The store key of a file of this table.
    pub fn file_key(&self, path: &str) -> String {
        format!("{}/{path}", self.table)
    }

    /// Versions of the commits present, sorted, at or after `from`.
    fn commit_versions(&self, from: u64) -> Result<Vec<u64>, DeltaError> {
        let mut v: Vec<u64> = self
            .store
            .list_files(&self.dir())?
            .iter()
            .filter_map(|n| n.strip_suffix(".json")?.parse::<u64>().ok())
            .filter(|v| *v >= from)
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    /// The actions of commit `v`, or None when it does not exist.
    pub fn read_commit(&self, v: u64) -> Result<Option<Vec<Action>>, DeltaError> {
        let Some(bytes) = self.store.get(&self.commit_key(v))? else {
            return Ok(None);
        };
        parse_actions(&bytes)
            .map(Some)
            .map_err(|e| log_err(&self.table, format!("commit {v}: {e}")))
    }

    /// Create commit `v` with `actions` unless it exists: false when another writer made it.
    pub fn try_commit(&self, v: u64, actions: &[Action]) -> Result<bool, DeltaError> {
        let mut bytes = Vec::new();
        for a in actions {
            serde_json::to_writer(&mut bytes, a).map_err(|e| log_err(&self.table, e))?;
            bytes.push(b'\n');
        }
        Ok(self.store.put_new(&self.commit_key(v), bytes)?)
    }

    /// The table's state now: the newest checkpoint, then the commits after it.
    pub fn snapshot(&self) -> Result<Snapshot, DeltaError> {
        let mut snap = Snapshot::default();
        let mut from = 0;
        let last = self
            .store
            .get(&format!("{}/_last_checkpoint", self.dir()))?
            .and_then(|b| serde_json::from_slice::<LastCheckpoint>(&b).ok());
        if let Some(cp) = last {
            if let Some(bytes) = self.store.get(&self.checkpoint_key(cp.version))? {
                let actions = read_checkpoint(&bytes)
                    .map_err(|e| log_err(&self.table, format!("checkpoint {}: {e}", cp.version)))?;
                snap.apply(cp.version, &actions);
                from = cp.version + 1;
            }
        }
        for v in self.commit_versions(from)? {
            // Commits are contiguous; a gap would mean a listing raced a writer: stop there.
            if snap.version.map_or(v != 0, |s| v != s + 1) {
                break;
            }
            match self.read_commit(v)? {
                Some(actions) => snap.apply(v, &actions),
                None => break,
            }
        }
        Ok(snap)
    }

    /// Write `snap` as the checkpoint of its version and point `_last_checkpoint` at it
    /// (unless a newer checkpoint is already there). Tombstones older than `keep_tombstones_ms`
    /// are left out: past the vacuum grace they fence nothing.
    pub fn write_checkpoint(
        &self,
        snap: &Snapshot,
        keep_tombstones_ms: i64,
    ) -> Result<(), DeltaError> {
        let Some(version) = snap.version else {
            return Ok(());
        };
        let horizon = now_ms() - keep_tombstones_ms;
        let mut lines = Vec::new();
        let mut push = |a: Action| -> Result<(), DeltaError> {
            serde_json::to_writer(&mut lines, &a).map_err(|e| log_err(&self.table, e))?;
            lines.push(b'\n');
            Ok(())
        };
        if let Some(p) = &snap.protocol {
            push(Action::Protocol(p.clone()))?;
        }
        if let Some(m) = &snap.metadata {
            push(Action::MetaData(m.clone()))?;
        }
        for a in snap.files.values() {
            push(Action::Add(a.clone()))?;
        }
        for r in snap.tombstones.values() {
            if r.deletion_timestamp.unwrap_or(0) >= horizon {
                push(Action::Remove(r.clone()))?;
            }
        }
        let bytes = write_checkpoint_parquet(&lines).map_err(|e| log_err(&self.table, e))?;
        let size = lines.iter().filter(|b| **b == b'\n').count() as u64;
        self.store.put(&self.checkpoint_key(version), bytes)?;
        let last_key = format!("{}/_last_checkpoint", self.dir());
        let newer = self
            .store
            .get(&last_key)?
            .and_then(|b| serde_json::from_slice::<LastCheckpoint>(&b).ok())
            .is_some_and(|l| l.version > version);
        if !newer {
            let body = serde_json::to_vec(&LastCheckpoint { version, size })
                .map_err(|e| log_err(&self.table, e))?;
            self.store.put(&last_key, body)?;
        }
        Ok(())
    }

    /// Commit files whose versions are older than the newest checkpoint and older than
    /// `older_than_ms` are no longer needed by any reader that starts now: delete them (and
    /// checkpoints older than the newest). Returns how many objects went.
    pub fn clean_log(&self, keep_ms: i64) -> Result<u64, DeltaError> {
        let Some(last) = self
            .store
            .get(&format!("{}/_last_checkpoint", self.dir()))?
            .and_then(|b| serde_json::from_slice::<LastCheckpoint>(&b).ok())
        else {
            return Ok(0);
        };
        let horizon = now_ms() - keep_ms;
        let mut gone = 0;
        for name in self.store.list_files(&self.dir())? {
            let v = name
                .strip_suffix(".json")
                .or_else(|| name.strip_suffix(".checkpoint.parquet"))
                .and_then(|v| v.parse::<u64>().ok());
            let Some(v) = v else { continue };
            if v >= last.version {
                continue;
            }
            let key = format!("{}/{name}", self.dir());
            if self.store.modified_ms(&key)?.is_some_and(|m| m < horizon) {
                self.store.delete(&key)?;
                gone += 1;
            }
        }
        Ok(gone)
    }
}

fn parse_actions(bytes: &[u8]) -> Result<Vec<Action>, String> {
    let mut out = Vec::new();
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        let known = v.as_object().is_some_and(|o| {
            o.keys()
                .any(|k| matches!(k.as_str(), "add" | "remove" | "metaData" | "protocol"))
        });
        if known {
            out.push(serde_json::from_value(v).map_err(|e| format!("line {}: {e}", i + 1))?);
        }
    }
    Ok(out)
}

fn write_checkpoint_parquet(lines: &[u8]) -> Result<Vec<u8>, String> {
    let schema = checkpoint_schema();
    let mut decoder = arrow::json::ReaderBuilder::new(Arc::clone(&schema))
        .with_batch_size(8192)
        .build_decoder()
        .map_err(|e| e.to_string())?;
    let mut w = parquet::arrow::ArrowWriter::try_new(Vec::new(), Arc::clone(&schema), None)
        .map_err(|e| e.to_string())?;
    let mut rest = lines;
    while !rest.is_empty() {
        let n = decoder.decode(rest).map_err(|e| e.to_string())?;
        rest = &rest[n..];
        if let Some(batch) = decoder.flush().map_err(|e| e.to_string())? {
            w.write(&batch).map_err(|e| e.to_string())?;
        }
    }
    if let Some(batch) = decoder.flush().map_err(|e| e.to_string())? {
        w.write(&batch).map_err(|e| e.to_string())?;
    }
    w.into_inner().map_err(|e| e.to_string())
}

/// The actions of a checkpoint (ours, or another writer's with the same columns).
fn read_checkpoint(bytes: &[u8]) -> Result<Vec<Action>, String> {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        bytes::Bytes::copy_from_slice(bytes),
    )
    .and_then(|b| b.build())
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
        w.write(&batch).map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
        out.extend(parse_actions(&w.into_inner())?);
    }
    Ok(out)
}

/// One append waiting for a group commit.
struct Queued {
    ticket: u64,
    adds: Vec<Add>,
}

#[derive(Default)]
struct WriterState {
    /// The newest version this writer knows of (None: not loaded yet).
    loaded: bool,
    version: Option<u64>,
    /// Paths the upkeep removed (see the module's fence).
    tombstones: HashSet<String>,
    queue: Vec<Queued>,
    leading: bool,
    next_ticket: u64,
    /// Tickets up to here are decided; `failed` holds the ones that failed, with why.
    decided: u64,
    failed: BTreeMap<u64, (ErrorKind, String)>,
    last_commit: Option<Instant>,
}

/// Appends to one table from this process, batched: while one commit is in flight (or within
/// `min_interval` of the last), the appends that arrive wait and go into the next commit
/// together, so the log grows by at most one commit per interval however many partitions write.
pub struct TableWriter {
    log: DeltaLog,
    schema: SchemaRef,
    min_interval: Duration,
    keep_tombstones_ms: i64,
    state: Mutex<WriterState>,
    changed: Condvar,
    checkpointing: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl TableWriter {
    pub fn new(
        log: DeltaLog,
        schema: SchemaRef,
        min_interval: Duration,
        keep_tombstones_ms: i64,
    ) -> TableWriter {
        TableWriter {
            log,
            schema,
            min_interval,
            keep_tombstones_ms,
            state: Mutex::new(WriterState::default()),
            changed: Condvar::new(),
            checkpointing: Mutex::new(None),
        }
    }

    pub fn log(&self) -> &DeltaLog {
        &self.log
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WriterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the upkeep removed this path (its rows must not come back). Loads the table's
    /// state on first use.
    pub fn is_removed(&self, path: &str) -> Result<bool, DeltaError> {
        self.ensure_loaded()?;
        Ok(self.lock().tombstones.contains(path))
    }

    fn ensure_loaded(&self) -> Result<(), DeltaError> {
        if self.lock().loaded {
            return Ok(());
        }
        let snap = self.log.snapshot()?;
        let mut st = self.lock();
        if !st.loaded {
            st.loaded = true;
            st.version = snap.version;
            st.tombstones = snap.tombstones.into_keys().collect();
        }
        Ok(())
    }

    /// Add files to the table; returns once a commit holding them (or every one the upkeep
    /// already removed, dropped) is in the log.
    pub fn append(&self, adds: Vec<Add>) -> Result<(), DeltaError> {
        if adds.is_empty() {
            return Ok(());
        }
        self.ensure_loaded()?;
        let mut st = self.lock();
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queue.push(Queued { ticket, adds });
        loop {
            if st.decided > ticket {
                return match st.failed.remove(&ticket) {
                    None => Ok(()),
                    Some((kind, reason)) => Err(DeltaError::Log {
                        table: self.log.table.clone(),
                        reason,
                        kind,
                    }),
                };
            }
            if st.leading {
                st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.leading = true;
            if let Some(last) = st.last_commit {
                let wait = self.min_interval.saturating_sub(last.elapsed());
                if !wait.is_zero() {
                    drop(st);
                    std::thread::sleep(wait);
                    st = self.lock();
                }
            }
            let batch = std::mem::take(&mut st.queue);
            let upto = st.next_ticket;
            let (version, tombstones) = (st.version, st.tombstones.clone());
            drop(st);
            let result = self.commit_batch(&batch, version, tombstones);
            st = self.lock();
            st.leading = false;
            st.last_commit = Some(Instant::now());
            match result {
                Ok((v, tomb)) => {
                    st.version = Some(v);
                    st.tombstones = tomb;
                }
                Err(e) => {
                    let kind = e.kind();
                    for q in &batch {
                        st.failed.insert(q.ticket, (kind, e.to_string()));
                    }
                    // Someone else's commit may be why: learn the log again next time.
                    st.loaded = false;
                }
            }
            // Every ticket below `upto` was either in this batch or decided before.
            st.decided = st.decided.max(upto);
            self.changed.notify_all();
        }
    }

    /// Commit the batch at the first free version; creates the table at version 0 when it has
    /// no log. Returns the version committed and the tombstones known at it.
    fn commit_batch(
        &self,
        batch: &[Queued],
        mut known: Option<u64>,
        mut tombstones: HashSet<String>,
    ) -> Result<(u64, HashSet<String>), DeltaError> {
        loop {
            let next = known.map_or(0, |v| v + 1);
            let mut seen = HashSet::new();
            let mut adds = Vec::new();
            for q in batch {
                for a in &q.adds {
                    if !tombstones.contains(&a.path) && seen.insert(a.path.as_str()) {
                        adds.push(Action::Add(a.clone()));
                    }
                }
            }
            let mut actions = Vec::new();
            if next == 0 {
                // The files of this batch are already under the table too (written before
                // their commit): added once, as the batch has them (with their stats). The
                // protocol allows one add per path in a version.
                actions.extend(self.create_actions()?.into_iter().filter(
                    |a| !matches!(a, Action::Add(add) if seen.contains(add.path.as_str())),
                ));
            }
            actions.extend(adds);
            if next > 0 && actions.is_empty() {
                return Ok((known.unwrap_or(0), tombstones));
            }
            actions.push(commit_info("WRITE"));
            if self.log.try_commit(next, &actions)? {
                if next > 0 && next.is_multiple_of(CHECKPOINT_EVERY) {
                    self.checkpoint();
                }
                return Ok((next, tombstones));
            }
            // Another writer took `next`: learn what it did, then try the one after.
            match self.log.read_commit(next)? {
                Some(theirs) => {
                    for a in theirs {
                        match a {
                            Action::Remove(r) => {
                                tombstones.insert(r.path);
                            }
                            Action::Add(a) => {
                                tombstones.remove(&a.path);
                            }
                            _ => {}
                        }
                    }
                    known = Some(next);
                }
                None => {
                    return Err(DeltaError::Log {
                        table: self.log.table.clone(),
                        reason: format!("commit {next} exists but cannot be read"),
                        kind: ErrorKind::Transient,
                    })
                }
            }
        }
    }

    /// Version 0: protocol and schema, and every file already under the table (a lake written
    /// before the log existed becomes the table's first version).
    fn create_actions(&self) -> Result<Vec<Action>, DeltaError> {
        let schema = schema_string(&self.schema).map_err(|e| log_err(&self.log.table, e))?;
        let mut actions = vec![
            Action::Protocol(Protocol {
                min_reader_version: 1,
                min_writer_version: 2,
            }),
            Action::MetaData(Metadata {
                id: table_id(&self.log.table),
                name: Some(self.log.table.clone()),
                description: None,
                format: Format {
                    provider: "parquet".into(),
                    options: BTreeMap::new(),
                },
                schema_string: schema,
                partition_columns: PARTITION_COLUMNS.iter().map(|s| s.to_string()).collect(),
                configuration: BTreeMap::new(),
                created_time: Some(now_ms()),
            }),
        ];
        for path in self.existing_files()? {
            let size = self.log.store.size(&self.log.file_key(&path))?.unwrap_or(0);
            actions.push(Action::Add(Add {
                partition_values: partition_values(&path),
                path,
                size: size as i64,
                modification_time: now_ms(),
                data_change: true,
                stats: None,
            }));
        }
        Ok(actions)
    }

    fn existing_files(&self) -> Result<Vec<String>, DeltaError> {
        let store = &self.log.store;
        let t = &self.log.table;
        let mut out = Vec::new();
        for dt in store.list_dirs(t)? {
            if !dt.starts_with("dt=") {
                continue;
            }
            for hour in store.list_dirs(&format!("{t}/{dt}"))? {
                for f in store.list_files(&format!("{t}/{dt}/{hour}"))? {
                    if f.ends_with(".parquet") {
                        out.push(format!("{dt}/{hour}/{f}"));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Write a checkpoint of the table as it is now, on a thread of its own: a big table's
    /// checkpoint takes a while, and the appends waiting for the next commit must not wait for
    /// it. One at a time. Best effort: a reader without the checkpoint replays more commits.
    fn checkpoint(&self) {
        let mut slot = self.checkpointing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(previous) = slot.take() {
            previous.join().ok();
        }
        let (log, keep) = (self.log.clone(), self.keep_tombstones_ms);
        *slot = Some(std::thread::spawn(move || {
            let r = log.snapshot().and_then(|s| log.write_checkpoint(&s, keep));
            if let Err(e) = r {
                tracing::warn!(table = %log.table, error = %e, "cannot write a Delta checkpoint; readers replay more commits until the next");
            }
        }));
    }

    /// Wait for a checkpoint being written, if any.
    pub fn wait_for_checkpoint(&self) {
        let handle = self
            .checkpointing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle {
            h.join().ok();
        }
    }
}

/// A table's id: stable per table name, so every node creating the table writes the same one.
fn table_id(table: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("wtm-lake-table:{table}").as_bytes());
    let h: String = d.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

pub fn commit_info(operation: &str) -> Action {
    Action::CommitInfo(serde_json::json!({
        "timestamp": now_ms(),
        "operation": operation,
        "engineInfo": concat!("wtm/", env!("CARGO_PKG_VERSION")),
    }))
}

/// Milliseconds since the epoch, as Delta timestamps its actions.
pub fn delta_now_ms() -> i64 {
    now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(path: &str) -> Add {
        Add {
            path: path.into(),
            partition_values: partition_values(path),
            size: 1,
            modification_time: 0,
            data_change: true,
            stats: Some("{\"numRecords\":1}".into()),
        }
    }

    fn writer(dir: &std::path::Path) -> TableWriter {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        TableWriter::new(
            DeltaLog::new(Store::Local(dir.to_owned()), "t"),
            schema,
            Duration::ZERO,
            3_600_000,
        )
    }

    #[test]
    fn appends_commit_in_order_and_replay_to_the_same_files() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(dir.path());
        w.append(vec![add("dt=2026-01-01/hour=00/a.parquet")])
            .unwrap();
        w.append(vec![add("dt=2026-01-01/hour=00/b.parquet")])
            .unwrap();
        // The same path again (a replay) changes nothing but the log's length.
        w.append(vec![add("dt=2026-01-01/hour=00/a.parquet")])
            .unwrap();
        let snap = w.log().snapshot().unwrap();
        assert_eq!(snap.version, Some(2));
        assert_eq!(snap.files.len(), 2);
        assert_eq!(snap.metadata.unwrap().partition_columns, ["dt", "hour"]);
        assert_eq!(
            snap.files["dt=2026-01-01/hour=00/a.parquet"].partition_values["hour"],
            Some("00".into())
        );
    }

    #[test]
    fn a_path_the_upkeep_removed_is_not_added_again() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(dir.path());
        let other = writer(dir.path());
        w.append(vec![add("dt=2026-01-01/hour=00/a.parquet")])
            .unwrap();
        // Compaction (another writer) replaces a with c.
        let log = other.log();
        let v = log.snapshot().unwrap().version.unwrap();
        assert!(log
            .try_commit(
                v + 1,
                &[
                    Action::Remove(Remove {
                        path: "dt=2026-01-01/hour=00/a.parquet".into(),
                        deletion_timestamp: Some(delta_now_ms()),
                        data_change: false,
                        extended_file_metadata: None,
                        partition_values: None,
                        size: None,
                    }),
                    Action::Add(add("dt=2026-01-01/hour=00/c.parquet")),
                ],
            )
            .unwrap());
        // A replay of a (this writer has not seen the compaction yet) is dropped at commit.
        w.append(vec![
            add("dt=2026-01-01/hour=00/a.parquet"),
            add("dt=2026-01-01/hour=01/d.parquet"),
        ])
        .unwrap();
        let snap = log.snapshot().unwrap();
        let files: Vec<&str> = snap.files.keys().map(String::as_str).collect();
        assert_eq!(
            files,
            [
                "dt=2026-01-01/hour=00/c.parquet",
                "dt=2026-01-01/hour=01/d.parquet"
            ]
        );
        assert!(w.is_removed("dt=2026-01-01/hour=00/a.parquet").unwrap());
    }

    #[test]
    fn checkpoints_round_trip_and_snapshots_start_from_them() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(dir.path());
        for i in 0..(CHECKPOINT_EVERY + 3) {
            w.append(vec![add(&format!("dt=2026-01-01/hour=00/f{i}.parquet"))])
                .unwrap();
        }
        w.wait_for_checkpoint();
        let log = w.log();
        let last = dir.path().join("t/_delta_log/_last_checkpoint");
        assert!(last.exists(), "a checkpoint at version {CHECKPOINT_EVERY}");
        let snap = log.snapshot().unwrap();
        assert_eq!(snap.version, Some(CHECKPOINT_EVERY + 2));
        assert_eq!(snap.files.len() as u64, CHECKPOINT_EVERY + 3);
        // The checkpoint alone holds what the commits up to its version did (written in the
        // background, it may be of a version a little after the one that asked for it).
        let last: LastCheckpoint = serde_json::from_slice(&std::fs::read(last).unwrap()).unwrap();
        assert!((CHECKPOINT_EVERY..=CHECKPOINT_EVERY + 2).contains(&last.version));
        let bytes = std::fs::read(dir.path().join(format!(
            "t/_delta_log/{:020}.checkpoint.parquet",
            last.version
        )))
        .unwrap();
        let actions = read_checkpoint(&bytes).unwrap();
        let adds = actions
            .iter()
            .filter(|a| matches!(a, Action::Add(_)))
            .count();
        assert_eq!(adds as u64, last.version + 1);
        assert!(actions.iter().any(|a| matches!(a, Action::MetaData(_))));
    }

    #[test]
    fn a_lake_written_before_the_log_becomes_version_zero() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t/dt=2026-01-01/hour=03/old.parquet");
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, b"1234").unwrap();
        // The first append's file is written before its commit, like every table file.
        let new = dir.path().join("t/dt=2026-01-01/hour=04/new.parquet");
        std::fs::create_dir_all(new.parent().unwrap()).unwrap();
        std::fs::write(&new, b"1").unwrap();
        let w = writer(dir.path());
        w.append(vec![add("dt=2026-01-01/hour=04/new.parquet")])
            .unwrap();
        let snap = w.log().snapshot().unwrap();
        assert_eq!(snap.version, Some(0));
        assert_eq!(snap.files["dt=2026-01-01/hour=03/old.parquet"].size, 4);
        assert_eq!(snap.files.len(), 2);
        // One add per path in the version, the new file's with the stats it was appended with.
        let adds: Vec<Add> = w
            .log()
            .read_commit(0)
            .unwrap()
            .unwrap()
            .into_iter()
            .filter_map(|a| match a {
                Action::Add(a) => Some(a),
                _ => None,
            })
            .collect();
        assert_eq!(adds.len(), 2, "{adds:?}");
        let new = adds
            .iter()
            .find(|a| a.path.ends_with("new.parquet"))
            .unwrap();
        assert!(new.stats.is_some());
    }
}
