//! Replays the committed fuzz corpus (fuzz/corpus, grown by scripts/fuzz under AFL++) through
//! the fuzz targets' bodies: every input, including those that once found new paths, returns
//! without a panic.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
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
