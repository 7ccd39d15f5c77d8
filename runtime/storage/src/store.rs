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

fn temp_name(path: &Path) -> String {
    format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("part"),
        std::process::id()
    )
}

fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
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
            Store::Local(root) => {
                let path = root.join(key);
                let dir = path.parent().expect("keys name files under a directory");
                std::fs::create_dir_all(dir).map_err(io_err(dir))?;
                // The process id keeps two nodes sharing a lake from writing one temporary file;
                // the name ends in `.tmp`, not `.parquet`, so no `*.parquet` glob (DuckDB, the
                // archiver's reload) ever reads one a crash left behind.
                let tmp = dir.join(temp_name(&path));
                let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
                f.write_all(&bytes).map_err(io_err(&tmp))?;
                f.sync_all().map_err(io_err(&tmp))?;
                std::fs::rename(&tmp, &path).map_err(io_err(&path))
            }
            Store::S3(s) => s.runtime.block_on(s.put(key, bytes)),
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
            Store::S3(s) => s.runtime.block_on(s.get(key)),
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

    fn list(&self, prefix: &str, dirs: bool) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Local(root) => {
                let dir = root.join(prefix);
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(io_err(&dir)(e)),
                };
                let mut v: Vec<String> = entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir() == dirs))
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| !is_temp_name(n))
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

    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let full = self.key(key);
        if bytes.len() <= MULTIPART_THRESHOLD {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&full)
                .body(ByteStream::from(bytes))
                .send()
                .await
                .map_err(|e| self.sdk_err(key, e))?;
            return Ok(());
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
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(&id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| self.sdk_err(key, e))?;
            Ok(())
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

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
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
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| self.err(key, e, ErrorKind::Transient))?;
        Ok(Some(body.into_bytes().to_vec()))
    }

    async fn list(&self, prefix: &str, dirs: bool) -> Result<Vec<String>, StoreError> {
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
                    Some(name.to_owned())
                }));
            } else {
                out.extend(
                    page.contents()
                        .iter()
                        .filter_map(|o| Some(o.key()?.strip_prefix(&base)?.to_owned())),
                );
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
