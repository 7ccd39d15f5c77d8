//! Where the lake's objects live: a local directory or an S3 bucket (any S3 API: AWS, SeaweedFS,
//! MinIO). The only file that touches aws-sdk-s3.
//!
//! Keys are relative (`windows/dt=…/hour=…/part-….parquet`, `checkpoints/…`). Every call blocks:
//! the lake is used from `spawn_blocking`, and the S3 calls run on the runtime whose handle the
//! store was built with.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use wtm_config::parse_s3_url;
use wtm_core::error::ErrorKind;

/// Objects above this size go up in parts (S3's single PUT is limited to 5 GiB, and parts retry
/// independently).
pub const MULTIPART_THRESHOLD: usize = 16 << 20;
const PART_SIZE: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("lake: {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lake: s3://{bucket}/{key}: {reason}")]
    S3 {
        bucket: String,
        key: String,
        reason: String,
        kind: ErrorKind,
    },
    #[error("lake: {0}")]
    Config(String),
    /// A conditional write found another version of the object than it expected: someone else
    /// wrote it since (see [`Store::put_if`]).
    #[error("lake: {key}: replaced by another writer since it was read")]
    Conflict { key: String },
}

impl StoreError {
    /// Whether trying again can help: a store that is down or slow, yes; denied credentials,
    /// a missing bucket, a bad URL or a read-only directory, no.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                    ErrorKind::Permanent
                }
                _ => ErrorKind::Transient,
            },
            StoreError::S3 { kind, .. } => *kind,
            StoreError::Config(_) => ErrorKind::Permanent,
            // The caller decides (an owner that lost its partition stops writing).
            StoreError::Conflict { .. } => ErrorKind::Transient,
        }
    }
}

/// S3 error codes no retry can fix (credentials, permissions, the bucket itself).
const PERMANENT_S3_CODES: [&str; 8] = [
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "NoSuchBucket",
    "InvalidBucketName",
    "AccountProblem",
    "InvalidToken",
];

/// The kind of an S3 call's failure: by its error code, else by its HTTP status (401/403 are
/// permanent; a timeout, a refused connection or a 5xx is not).
fn s3_kind<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> ErrorKind {
    let by_code = e.code().is_some_and(|c| PERMANENT_S3_CODES.contains(&c));
    let status = e.raw_response().map(|r| r.status().as_u16());
    if by_code || matches!(status, Some(401 | 403)) {
        ErrorKind::Permanent
    } else {
        ErrorKind::Transient
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A temporary file's name beside `path`: the process id keeps two nodes sharing a lake apart,
/// a counter two writers in one process (an old and a new owner of a partition).
fn temp_name(path: &Path) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        ".{}.{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("part"),
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Temporary files (a crash may leave them) and lock files start with a dot: never listed.
fn is_hidden_name(name: &str) -> bool {
    name.starts_with('.')
}

/// How long a conditional write waits for another writer's lock on the same object before it
/// gives up (a transient failure, retried by the caller). A writer frozen while it holds the
/// lock (SIGSTOP) holds it until it resumes or dies, so the lock covers only a read of the
/// current object and a rename: the new bytes are written and synced before it is taken.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// The version of an object as a conditional write sees it: S3's ETag, or a digest of the
/// bytes of a local file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(pub String);

/// What a conditional write expects to find in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// No object at the key.
    Absent,
    /// The object as it was at this version.
    Version(Version),
}

fn local_version(bytes: &[u8]) -> Version {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Version(format!("sha256:{hex}"))
}

/// Write `bytes` to `path` through a temporary file, fsync, rename: readers see the old file or
/// the new one, never a part.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = write_temp(path, bytes)?;
    rename_or_remove(&tmp, path)
}

/// Write `bytes` to a new temporary file beside `path` and sync it; its path. The name starts
/// with a dot and ends in `.tmp`, not `.parquet`, so no `*.parquet` glob (DuckDB, the
/// archiver's reload) ever reads one a crash left behind.
fn write_temp(path: &Path, bytes: &[u8]) -> Result<PathBuf, StoreError> {
    let dir = path.parent().expect("keys name files under a directory");
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = dir.join(temp_name(path));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            std::fs::remove_file(&tmp).ok();
            Err(io_err(&tmp)(e))
        }
    }
}

/// Move a temporary file to its name; a temporary file that cannot be moved is removed.
fn rename_or_remove(tmp: &Path, path: &Path) -> Result<(), StoreError> {
    std::fs::rename(tmp, path).map_err(|e| {
        std::fs::remove_file(tmp).ok();
        io_err(path)(e)
    })
}

/// Settings of an S3 lake.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// `s3://bucket/prefix`.
    pub url: String,
    pub region: Option<String>,
    /// S3-compatible stores: their URL (e.g. `http://127.0.0.1:8333`).
    pub endpoint: Option<String>,
    pub path_style: bool,
}

pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    runtime: tokio::runtime::Handle,
}

#[derive(Clone)]
pub enum Store {
    Local(PathBuf),
    S3(std::sync::Arc<S3Store>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Store {
    /// An S3 store; credentials come from the standard AWS chain (environment, profile, web
    /// identity, container or instance metadata).
    pub async fn s3(s: &S3Settings) -> Result<Store, StoreError> {
        let (bucket, prefix) = parse_s3_url(&s.url).map_err(StoreError::Config)?;
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(r) = &s.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        let shared = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&shared)
            // An unreachable store fails within seconds; the owners retry at every checkpoint,
            // so nothing waits on one call for long.
            // Retries back off from 200 ms, not the SDK's 1 s: an owner waits on its write, and
            // a store that is down is retried by the owner's own backoff anyway.
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(3)
                    .with_initial_backoff(Duration::from_millis(200)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(30))
                    .build(),
            )
            .force_path_style(s.path_style);
        if let Some(e) = &s.endpoint {
            b = b.endpoint_url(e);
        }
        if shared.region().is_none() && s.region.is_none() {
            // S3-compatible stores ignore it, but the signer needs one.
            b = b.region(aws_config::Region::new("us-east-1"));
        }
        Ok(Store::S3(std::sync::Arc::new(S3Store {
            client: aws_sdk_s3::Client::from_conf(b.build()),
            bucket,
            prefix,
            runtime: tokio::runtime::Handle::current(),
        })))
    }

    pub fn describe(&self) -> String {
        match self {
            Store::Local(root) => root.display().to_string(),
            Store::S3(s) if s.prefix.is_empty() => format!("s3://{}", s.bucket),
            Store::S3(s) => format!("s3://{}/{}", s.bucket, s.prefix),
        }
    }

    /// Replace the object at `key` with `bytes`, atomically: readers see the old or the new
    /// object, never a part (local: temporary file, fsync, rename; S3: one PUT or a completed
    /// multipart upload). Locally the rename survives a crash of the process at once, and a
    /// power loss once [`Store::sync`] has run over the keys.
    ///
    pub fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        match self {
            Store::Local(root) => write_atomically(&root.join(key), &bytes),
            Store::S3(s) => s.runtime.block_on(s.put(key, bytes, None)).map(drop),
        }
    }

    /// Replace the object at `key` only if it is still as `expect` says (a compare-and-swap),
    /// and return its new version; [`StoreError::Conflict`] when another writer got there
    /// first. S3: a conditional PUT (`If-Match` / `If-None-Match: *`; AWS S3 and SeaweedFS
    /// honour both). Local: the bytes go to a synced temporary file first; then, under an
    /// exclusive lock on a lock file beside the object (`flock`; on NFS the kernel maps it to
    /// a POSIX lock), the current bytes' digest is compared and the temporary file renamed
    /// over the object; then its directory is synced.
    pub fn put_if(
        &self,
        key: &str,
        bytes: Vec<u8>,
        expect: &Expect,
    ) -> Result<Version, StoreError> {
        match self {
            Store::Local(root) => {
                let path = root.join(key);
                let dir = path.parent().expect("keys name files under a directory");
                std::fs::create_dir_all(dir).map_err(io_err(dir))?;
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("object");
                let lock_path = dir.join(format!(".{name}.lock"));
                // Written and synced before the lock is taken (see `LOCK_WAIT`); removed on
                // every way out but the rename.
                let tmp = write_temp(&path, &bytes)?;
                let unlink = |e: StoreError| {
                    std::fs::remove_file(&tmp).ok();
                    e
                };
                let lock = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock_path)
                    .map_err(|e| unlink(io_err(&lock_path)(e)))?;
                let deadline = std::time::Instant::now() + LOCK_WAIT;
                loop {
                    match lock.try_lock() {
                        Ok(()) => break,
                        Err(std::fs::TryLockError::WouldBlock)
                            if std::time::Instant::now() < deadline =>
                        {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(std::fs::TryLockError::WouldBlock) => {
                            return Err(unlink(io_err(&lock_path)(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "another writer holds the lock",
                            ))))
                        }
                        Err(std::fs::TryLockError::Error(e)) => {
                            return Err(unlink(io_err(&lock_path)(e)))
                        }
                    }
                }
                let current = match std::fs::read(&path) {
                    Ok(b) => Some(local_version(&b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(unlink(io_err(&path)(e))),
                };
                let as_expected = match (expect, &current) {
                    (Expect::Absent, None) => true,
                    (Expect::Version(v), Some(c)) => v == c,
                    _ => false,
                };
                if !as_expected {
                    return Err(unlink(StoreError::Conflict {
                        key: key.to_owned(),
                    }));
                }
                rename_or_remove(&tmp, &path)?;
                // The next writer may go on: the directory's sync makes the rename durable
                // before this write reports success.
                drop(lock);
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err(dir))?;
                Ok(local_version(&bytes))
            }
            Store::S3(s) => s
                .runtime
                .block_on(s.put(key, bytes, Some(expect)))?
                .ok_or_else(|| {
                    s.err(
                        key,
                        "the store returned no ETag for a conditional write",
                        ErrorKind::Permanent,
                    )
                }),
        }
    }

    /// Create the object at `key` unless one exists: false when it did (another writer won).
    /// The Delta log's commit primitive. Local: a temporary file, fsync, then a hard link to the
    /// name, which fails atomically when the name exists (no lock file beside every commit).
    /// S3: `If-None-Match: *`.
    pub fn put_new(&self, key: &str, bytes: Vec<u8>) -> Result<bool, StoreError> {
        match self {
            Store::Local(root) => {
                let path = root.join(key);
                let dir = path.parent().expect("keys name files under a directory");
                std::fs::create_dir_all(dir).map_err(io_err(dir))?;
                let tmp = write_temp(&path, &bytes)?;
                let linked = std::fs::hard_link(&tmp, &path);
                std::fs::remove_file(&tmp).ok();
                match linked {
                    Ok(()) => {
                        std::fs::File::open(dir)
                            .and_then(|d| d.sync_all())
                            .map_err(io_err(dir))?;
                        Ok(true)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(io_err(&path)(e)),
                }
            }
            Store::S3(s) => match s.runtime.block_on(s.put(key, bytes, Some(&Expect::Absent))) {
                Ok(_) => Ok(true),
                Err(StoreError::Conflict { .. }) => Ok(false),
                Err(e) => Err(e),
            },
        }
    }

    /// Delete the object at `key`; deleting one that is not there is not an error.
    pub fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self {
            Store::Local(root) => {
                let path = root.join(key);
                match std::fs::remove_file(&path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(io_err(&path)(e)),
                }
            }
            Store::S3(s) => s.runtime.block_on(async {
                s.client
                    .delete_object()
                    .bucket(&s.bucket)
                    .key(s.key(key))
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| s.sdk_err(key, e))
            }),
        }
    }

    /// Size in bytes of the object at `key`, if it exists.
    pub fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.head(key)?.map(|(size, _)| size))
    }

    /// When the object at `key` was last written (ms since the epoch), if it exists.
    pub fn modified_ms(&self, key: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.head(key)?.map(|(_, m)| m))
    }

    fn head(&self, key: &str) -> Result<Option<(u64, i64)>, StoreError> {
        match self {
            Store::Local(root) => {
                let path = root.join(key);
                match std::fs::metadata(&path) {
                    Ok(m) => {
                        let modified = m
                            .modified()
                            .ok()
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .map_or(0, |d| d.as_millis() as i64);
                        Ok(Some((m.len(), modified)))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(io_err(&path)(e)),
                }
            }
            Store::S3(s) => s.runtime.block_on(async {
                match s
                    .client
                    .head_object()
                    .bucket(&s.bucket)
                    .key(s.key(key))
                    .send()
                    .await
                {
                    Ok(o) => Ok(Some((
                        o.content_length().unwrap_or(0).max(0) as u64,
                        o.last_modified().map_or(0, |t| t.to_millis().unwrap_or(0)),
                    ))),
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
                    Err(e) => Err(s.sdk_err(key, e)),
                }
            }),
        }
    }

    /// The object at `key` with its version (for a later [`Store::put_if`]), if it exists.
    pub fn get_versioned(&self, key: &str) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
        match self {
            Store::Local(_) => Ok(self.get(key)?.map(|b| {
                let v = local_version(&b);
                (b, v)
            })),
            Store::S3(s) => s.runtime.block_on(s.get(key)),
        }
    }

    /// Make the puts of `keys` durable against power loss: fsync each distinct directory once
    /// (a no-op on S3, where a completed PUT is durable). One fsync per directory per publication
    /// instead of one per file: that was a quarter of an unpaced node's throughput.
    pub fn sync<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> Result<(), StoreError> {
        let Store::Local(root) = self else {
            return Ok(());
        };
        let dirs: std::collections::BTreeSet<PathBuf> = keys
            .into_iter()
            .filter_map(|k| root.join(k).parent().map(Path::to_path_buf))
            .collect();
        for dir in dirs {
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&dir))?;
        }
        Ok(())
    }

    /// The object at `key`, if it exists.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Local(root) => {
                let path = root.join(key);
                match std::fs::read(&path) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(io_err(&path)(e)),
                }
            }
            Store::S3(s) => Ok(s.runtime.block_on(s.get(key))?.map(|(b, _)| b)),
        }
    }

    /// Names of the "directories" directly under `prefix` (e.g. `dt=2026-01-01`), sorted.
    pub fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.list(prefix, true)
    }

    /// Names of the objects directly under `prefix`, sorted.
    pub fn list_files(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.list(prefix, false)
    }

    /// Names of the objects directly under `prefix` with when each was last written (ms since
    /// the epoch), sorted by name: what a sweep of unreferenced files needs in one listing.
    pub fn list_files_modified(&self, prefix: &str) -> Result<Vec<(String, i64)>, StoreError> {
        self.list_entries(prefix, false)
    }

    fn list(&self, prefix: &str, dirs: bool) -> Result<Vec<String>, StoreError> {
        Ok(self
            .list_entries(prefix, dirs)?
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }

    fn list_entries(&self, prefix: &str, dirs: bool) -> Result<Vec<(String, i64)>, StoreError> {
        match self {
            Store::Local(root) => {
                let dir = root.join(prefix);
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(io_err(&dir)(e)),
                };
                let modified = |e: &std::fs::DirEntry| {
                    e.metadata()
                        .ok()
                        .and_then(|m| m.modified().ok())
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_millis() as i64)
                };
                let mut v: Vec<(String, i64)> = entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir() == dirs))
                    .filter_map(|e| {
                        let m = if dirs { 0 } else { modified(&e) };
                        Some((e.file_name().into_string().ok()?, m))
                    })
                    .filter(|(n, _)| !is_hidden_name(n))
                    .collect();
                v.sort();
                Ok(v)
            }
            Store::S3(s) => s.runtime.block_on(s.list(prefix, dirs)),
        }
    }
}

impl S3Store {
    fn key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn err(&self, key: &str, e: impl std::fmt::Display, kind: ErrorKind) -> StoreError {
        StoreError::S3 {
            bucket: self.bucket.clone(),
            key: self.key(key),
            reason: e.to_string(),
            kind,
        }
    }

    /// A failed SDK call, with its kind.
    fn sdk_err<E>(&self, key: &str, e: SdkError<E, HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let kind = s3_kind(&e);
        self.err(key, DisplayErrorContext(e), kind)
    }

    /// A failed conditional write: 412 means another writer got there first.
    fn put_err<E>(&self, key: &str, e: SdkError<E, HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let status = e.raw_response().map(|r| r.status().as_u16());
        if status == Some(412) || e.code() == Some("PreconditionFailed") {
            StoreError::Conflict {
                key: key.to_owned(),
            }
        } else {
            self.sdk_err(key, e)
        }
    }

    /// Put an object, conditionally when `expect` is given; returns its ETag.
    async fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        expect: Option<&Expect>,
    ) -> Result<Option<Version>, StoreError> {
        let full = self.key(key);
        let (if_match, if_none_match) = match expect {
            None => (None, None),
            Some(Expect::Absent) => (None, Some("*".to_owned())),
            Some(Expect::Version(v)) => (Some(v.0.clone()), None),
        };
        if bytes.len() <= MULTIPART_THRESHOLD {
            let out = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&full)
                .set_if_match(if_match)
                .set_if_none_match(if_none_match)
                .body(ByteStream::from(bytes))
                .send()
                .await
                .map_err(|e| self.put_err(key, e))?;
            return Ok(out.e_tag().map(|t| Version(t.to_owned())));
        }
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| self.sdk_err(key, e))?;
        let id = upload
            .upload_id()
            .ok_or_else(|| self.err(key, "no upload id", ErrorKind::Transient))?
            .to_owned();
        let result = async {
            let mut parts = Vec::new();
            for (i, chunk) in bytes.chunks(PART_SIZE).enumerate() {
                let n = i as i32 + 1;
                let part = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(&full)
                    .upload_id(&id)
                    .part_number(n)
                    .body(ByteStream::from(chunk.to_vec()))
                    .send()
                    .await
                    .map_err(|e| self.sdk_err(key, e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(n)
                        .set_e_tag(part.e_tag().map(str::to_owned))
                        .build(),
                );
            }
            let out = self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(&id)
                .set_if_match(if_match)
                .set_if_none_match(if_none_match)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| self.put_err(key, e))?;
            Ok(out.e_tag().map(|t| Version(t.to_owned())))
        }
        .await;
        if result.is_err() {
            // Best effort: the bucket's lifecycle rule aborts what this misses.
            let aborted = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(&id)
                .send()
                .await;
            if let Err(e) = aborted {
                tracing::warn!(key = %full, error = %DisplayErrorContext(e), "cannot abort a failed multipart upload; the bucket lifecycle rule will");
            }
        }
        result
    }

    async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) => {
                if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                    return Ok(None);
                }
                return Err(self.sdk_err(key, e));
            }
        };
        let version = Version(out.e_tag().unwrap_or_default().to_owned());
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| self.err(key, e, ErrorKind::Transient))?;
        Ok(Some((body.into_bytes().to_vec(), version)))
    }

    async fn list(&self, prefix: &str, dirs: bool) -> Result<Vec<(String, i64)>, StoreError> {
        let base = format!("{}/", self.key(prefix.trim_end_matches('/')));
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&base)
                .delimiter("/")
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| self.sdk_err(prefix, e))?;
            if dirs {
                out.extend(page.common_prefixes().iter().filter_map(|p| {
                    let name = p.prefix()?.strip_prefix(&base)?.trim_end_matches('/');
                    Some((name.to_owned(), 0))
                }));
            } else {
                out.extend(page.contents().iter().filter_map(|o| {
                    let modified = o
                        .last_modified()
                        .and_then(|t| t.to_millis().ok())
                        .unwrap_or(0);
                    Some((o.key()?.strip_prefix(&base)?.to_owned(), modified))
                }));
            }
            match page.next_continuation_token() {
                Some(t) => token = Some(t.to_owned()),
                None => break,
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_store_put_get_list() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::Local(dir.path().to_owned());
        assert_eq!(s.get("a/b.bin").unwrap(), None);
        s.put("t/dt=2026-01-02/x.bin", vec![1, 2]).unwrap();
        s.put("t/dt=2026-01-01/y.bin", vec![3]).unwrap();
        s.put("t/dt=2026-01-01/y.bin", vec![4]).unwrap();
        // What a crash mid-put leaves behind is never listed.
        std::fs::write(
            dir.path()
                .join("t/dt=2026-01-01")
                .join(temp_name(Path::new("z.parquet"))),
            b"",
        )
        .unwrap();
        assert_eq!(s.get("t/dt=2026-01-01/y.bin").unwrap(), Some(vec![4]));
        assert_eq!(
            s.list_dirs("t").unwrap(),
            ["dt=2026-01-01", "dt=2026-01-02"]
        );
        assert_eq!(s.list_files("t/dt=2026-01-01").unwrap(), ["y.bin"]);
        assert!(s.list_files("nothing/here").unwrap().is_empty());
    }
}
