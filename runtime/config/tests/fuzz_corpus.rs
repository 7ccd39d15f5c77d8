//! Replays the committed config fuzz corpus (fuzz/corpus/config, grown by scripts/fuzz):
//! any text gives a config or an error value, never a panic.

use std::path::PathBuf;

/// The package's directory, from cargo at run time (a target directory shared by two
/// checkouts, as CI's reuse of ~/.cache, may hold a test binary built in the other one).
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

#[test]
fn the_config_corpus_replays_clean() {
    let dir = manifest_dir().join("../../fuzz/corpus/config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("corpus entry").path();
        let bytes = std::fs::read(&path).expect("corpus file");
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let outcome = std::panic::catch_unwind(|| {
                let _ = wtm_config::Config::from_toml_str(text);
            });
            assert!(outcome.is_ok(), "{} panics", path.display());
        }
        n += 1;
    }
    assert!(n >= 1);
}
