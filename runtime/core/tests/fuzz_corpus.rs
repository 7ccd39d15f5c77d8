//! Replays the committed fuzz corpus (fuzz/corpus, grown by scripts/fuzz under AFL++) through
//! the fuzz targets' bodies: every input, including those that once found new paths, returns
//! without a panic.

use std::path::PathBuf;

/// The package's directory, from cargo at run time (a target directory shared by two
/// checkouts, as CI's reuse of ~/.cache, may hold a test binary built in the other one).
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = manifest_dir().join("../../fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("corpus entry").path();
        let bytes = std::fs::read(&path).expect("corpus file");
        let outcome = std::panic::catch_unwind(|| run(&bytes));
        assert!(outcome.is_ok(), "{} panics", path.display());
        n += 1;
    }
    n
}

#[test]
fn the_parse_corpus_replays_clean() {
    assert!(replay("parse", wtm_core::fuzzing::parse_record) >= 12);
}

#[test]
fn the_checkpoint_corpus_replays_clean() {
    assert!(replay("checkpoint", wtm_core::fuzzing::decode_checkpoint) >= 3);
}
