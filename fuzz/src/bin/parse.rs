//! Every log-format parser, then the limits and a window aggregate (see wtm_core::fuzzing).
//! `WTM_FUZZ_FORMAT` = 0, 1 or 2 fixes the parser (json, combined, vhost_combined) instead of
//! letting the first byte pick it.
fn main() {
    let format = std::env::var("WTM_FUZZ_FORMAT")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    afl::fuzz!(|data: &[u8]| wtm_core::fuzzing::parse_record_as(format, data));
}
