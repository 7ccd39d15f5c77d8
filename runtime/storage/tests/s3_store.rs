//! The S3 store against a real S3 API: SeaweedFS started by `scripts/s3` (SigV4 enforced). Small
//! objects go up in one PUT, large ones in parts; both read back byte for byte, listings see them,
//! a missing key is `None`, and wrong credentials are an error, not a panic.

use std::path::PathBuf;
use std::process::Command;
use wtm_core::error::ErrorKind;
use wtm_storage::store::{S3Settings, Store, MULTIPART_THRESHOLD};

const KEY: &str = "wtm";
const SECRET: &str = "wtm-secret-key";

struct SeaweedFs {
    dir: tempfile::TempDir,
    endpoint: String,
}

impl SeaweedFs {
    fn start() -> SeaweedFs {
        let dir = tempfile::tempdir().unwrap();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/s3");
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
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/s3");
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
async fn put_get_list_small_and_multipart() {
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
