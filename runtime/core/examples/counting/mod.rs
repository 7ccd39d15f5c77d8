//! The counting allocator the size examples share (`mod counting;`): live heap bytes.

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;

// A counting allocator from a crate (stats_alloc), not written here: no `unsafe` of our own.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Live heap bytes. (stats_alloc counts a realloc's growth in `bytes_allocated` already; its
/// `bytes_reallocated` is the same growth again.)
pub fn live() -> isize {
    let s = GLOBAL.stats();
    s.bytes_allocated as isize - s.bytes_deallocated as isize
}
