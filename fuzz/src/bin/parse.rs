//! Every log-format parser, then the limits and a window aggregate (see wtm_core::fuzzing).
fn main() {
    afl::fuzz!(|data: &[u8]| wtm_core::fuzzing::parse_record(data));
}
