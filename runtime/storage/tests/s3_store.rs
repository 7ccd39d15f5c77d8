//! The S3 store against a real S3 API: SeaweedFS started by `scripts/s3` (SigV4 enforced). Small
//! objects go up in one PUT, large ones in parts; both read back byte for byte, listings see them,
//! a missing key is `None`, and wrong credentials are an error, not a panic. Conditional puts (the
//! fence of the partition snapshots) behave alike on S3 and on a local directory.

use std::path::PathBuf;
use std::process::Command;
use wtm_core::error::ErrorKind;
use wtm_storage::store::{Expect, S3Settings, Store, StoreError, MULTIPART_THRESHOLD};

/// The package's directory, from cargo at run time (a target directory shared by two
/// checkouts, as CI's reuse of ~/.cache, may hold a test binary built in the other one).
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

const KEY: &str = "wtm";
const SECRET: &str = "wtm-secret-key";

struct SeaweedFs {
    dir: tempfile::TempDir,
    endpoint: String,
}

impl SeaweedFs {
    fn start() -> SeaweedFs {
        let dir = tempfile::tempdir().unwrap();
        let script = manifest_dir().join("../../scripts/s3");
        let out = Command::new(&script)
            .args(["start", "--data-dir"])
            .arg(dir.path())
            .env("AWS_ACCESS_KEY_ID", KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .output()
            .expect("scripts/s3 runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let endpoint = stdout
            .lines()
            .find_map(|l| l.strip_prefix("endpoint="))
            .expect("scripts/s3 prints the endpoint")
            .to_owned();
        SeaweedFs { dir, endpoint }
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        let script = manifest_dir().join("../../scripts/s3");
        let _ = Command::new(script)
            .args(["stop", "--data-dir"])
            .arg(self.dir.path())
            .status();
    }
}

async fn connect(endpoint: &str, url: &str) -> Store {
    Store::s3(&S3Settings {
        url: url.into(),
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint.into()),
        path_style: true,
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_list_small_multipart_and_conditional() {
    // Explicit credentials and no metadata probing: nothing here may leave loopback.
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    std::env::set_var("AWS_ACCESS_KEY_ID", KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET);
    let s3 = SeaweedFs::start();
    let store = connect(&s3.endpoint, "s3://store-test/some/prefix").await;
    let big: Vec<u8> = (0..MULTIPART_THRESHOLD + (5 << 20))
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let result = tokio::task::spawn_blocking(move || {
        // SeaweedFS creates the bucket on the first upload by an admin identity.
        store.put("t/dt=2026-01-01/small.bin", b"hello".to_vec())?;
        store.put("t/dt=2026-01-02/big.bin", big.clone())?;
        store.put("t/dt=2026-01-02/small.bin", b"x".to_vec())?;
        store.put("t/dt=2026-01-02/small.bin", b"replaced".to_vec())?;
        assert_eq!(
            store.get("t/dt=2026-01-01/small.bin")?,
            Some(b"hello".to_vec())
        );
        assert_eq!(
            store.get("t/dt=2026-01-02/small.bin")?,
            Some(b"replaced".to_vec())
        );
        assert_eq!(
            store.get("t/dt=2026-01-02/big.bin")?.map(|b| b == big),
            Some(true)
        );
        assert_eq!(store.get("t/nothing.bin")?, None);
        assert_eq!(store.list_dirs("t")?, ["dt=2026-01-01", "dt=2026-01-02"]);
        assert_eq!(
            store.list_files("t/dt=2026-01-02")?,
            ["big.bin", "small.bin"]
        );
        assert!(store.list_files("none")?.is_empty());
        Ok::<_, wtm_storage::store::StoreError>(())
    })
    .await
    .unwrap();
    result.unwrap();

    // Conditional puts, as on a local directory (in this test: the credentials below are
    // process-wide, so a second test would race them).
    let store = connect(&s3.endpoint, "s3://cas-test/lake").await;
    tokio::task::spawn_blocking(move || {
        // SeaweedFS creates the bucket on the first upload.
        store.put("hello.bin", vec![1]).unwrap();
        compare_and_swap(&store)
    })
    .await
    .unwrap();

    // Wrong credentials: a clear error naming the object.
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "wrong");
    let bad = connect(&s3.endpoint, "s3://store-test/some/prefix").await;
    let err = tokio::task::spawn_blocking(move || bad.put("t/denied.bin", vec![1]))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::Permanent,
        "no retry fixes credentials: {err}"
    );
    let err = err.to_string();
    assert!(
        err.contains("s3://store-test/some/prefix/t/denied.bin"),
        "{err}"
    );

    // A store that does not answer: an error worth retrying.
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = connect(&format!("http://127.0.0.1:{port}"), "s3://store-test/x").await;
    let err = tokio::task::spawn_blocking(move || down.put("t/down.bin", vec![1]))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
}

/// A compare-and-swap sequence: create-if-absent, replace-if-version, stale versions refused
/// (also for an object big enough to go up in parts), and of racing writers expecting the same
/// version exactly one wins.
fn compare_and_swap(store: &Store) {
    let conflict = |r: Result<_, StoreError>| matches!(r, Err(StoreError::Conflict { .. }));
    let k = "checkpoints/partition-00007.ckpt";
    let v1 = store.put_if(k, b"one".to_vec(), &Expect::Absent).unwrap();
    assert!(conflict(store.put_if(k, b"two".to_vec(), &Expect::Absent)));
    let v2 = store
        .put_if(k, b"two".to_vec(), &Expect::Version(v1.clone()))
        .unwrap();
    assert_ne!(v1, v2);
    assert!(conflict(store.put_if(
        k,
        b"stale".to_vec(),
        &Expect::Version(v1)
    )));
    assert_eq!(
        store.get_versioned(k).unwrap(),
        Some((b"two".to_vec(), v2.clone()))
    );
    let big: Vec<u8> = (0..MULTIPART_THRESHOLD + (1 << 20))
        .map(|i| (i % 253) as u8)
        .collect();
    let v3 = store
        .put_if(k, big.clone(), &Expect::Version(v2.clone()))
        .unwrap();
    assert!(conflict(store.put_if(k, big.clone(), &Expect::Version(v2))));
    assert_eq!(store.get(k).unwrap().map(|b| b == big), Some(true));
    let winners: usize = std::thread::scope(|s| {
        let racers: Vec<_> = (0..6u8)
            .map(|i| {
                let expect = Expect::Version(v3.clone());
                s.spawn(move || store.put_if(k, vec![i; 64], &expect).is_ok() as usize)
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).sum()
    });
    assert_eq!(winners, 1, "one of the racing writers wins");
    // Lock files are not objects.
    assert_eq!(
        store.list_files("checkpoints").unwrap(),
        ["partition-00007.ckpt"]
    );
}

#[test]
fn local_compare_and_swap() {
    let dir = tempfile::tempdir().unwrap();
    compare_and_swap(&Store::Local(dir.path().to_owned()));
    // Losers and refused writes leave no temporary file behind: only the object and its lock.
    let mut names: Vec<String> = std::fs::read_dir(dir.path().join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [".partition-00007.ckpt.lock", "partition-00007.ckpt"]
    );
}
