//! The fuzz targets' bodies (`fuzz/`, run by `scripts/fuzz` under AFL++), shared with the test
//! that replays the committed corpus on every `scripts/test`: whatever the bytes, these return
//! and never panic.

use crate::agg::WindowAgg;
use crate::checkpoint::{decode, restored_windows, OpenWindows, PartitionCheckpoint};
use crate::event::Format;
use crate::limits::{bound_fields, plausible_host};
use crate::parse;

/// One record: the first byte picks the format, the rest is the line. A parsed event goes on
/// through the limits and into a window aggregate, as in a node.
pub fn parse_record(data: &[u8]) {
    parse_record_as(None, data)
}

/// The formats in the order of the first byte's choice.
pub const FORMATS: [Format; 3] = [Format::Json, Format::Combined, Format::VhostCombined];

/// As [`parse_record`], with the format fixed to `FORMATS[format]` when given (the first byte is
/// then ignored): `scripts/fuzz --per-format` counts executions per parser this way.
pub fn parse_record_as(format: Option<usize>, data: &[u8]) {
    let Some((&pick, line)) = data.split_first() else {
        return;
    };
    let format = FORMATS[format.unwrap_or(pick as usize) % FORMATS.len()];
    if let Ok(mut e) = parse::parse_record(format, line, "fuzz.example") {
        if plausible_host(&e.host) {
            bound_fields(&mut e, 64);
            let mut agg = WindowAgg::default();
            agg.add_view(&e.view());
            let _ = agg.finalize();
        }
    }
}

/// A partition checkpoint as stored locally and published as a shared snapshot, with the open
/// windows it carries: decoded whole, and as a restore reads them (keys first, each aggregate
/// when a shard needs it).
pub fn decode_checkpoint(data: &[u8]) {
    if let Ok(cp) = decode::<PartitionCheckpoint>("fuzz", data) {
        for blob in &cp.open {
            let _ = decode::<OpenWindows>("fuzz", blob);
            let restored = restored_windows(vec![blob.clone()], Vec::new());
            for (_, agg) in restored.into_iter().flatten() {
                let _ = agg.into_decoded();
            }
        }
        let _ = cp.resume_at();
    }
}
