//! The checkpoint and shared-snapshot decoder (see wtm_core::fuzzing).
fn main() {
    afl::fuzz!(|data: &[u8]| wtm_core::fuzzing::decode_checkpoint(data));
}
