//! # Layout
//!
//! `wtm-core` is the pure model: no tokio, no network, no disk, no actor. Everything here is a
//! function of its inputs, unit- and property-tested in isolation.
//!
//! - [`event`], [`records`], [`parse`]: the event model, raw records as sources hand them out,
//!   and the log-format parsers (JSON, combined, vhost_combined); malformed input becomes a
//!   reasoned [`parse::ParseError`], never a panic.
//! - [`time`]: civil-time conversions for RFC 3339 and access-log timestamps.
//! - [`window`]: the pure window, watermark and lateness arithmetic.
//! - [`sketch`], [`agg`]: mergeable sketches and the per (host, window, partition) aggregate.
//! - [`explain`]: what drove an anomalous window (keys whose share moved against its baseline).
//! - [`checkpoint`]: what a checkpoint and a publication hold, and their versioned wire format.
//! - [`generator`]: the deterministic traffic generator (a pure function of seed, partition and
//!   offset: the tests' ground truth).
//! - [`hash`]: the one stable hash (FNV-1a) behind shards, generator streams and sketches.
//! - [`error`]: [`error::ErrorKind`], whether a failure is worth retrying.
//! - [`limits`]: bounds on what strangers control (record size, host names, field lengths).
//! - [`fuzzing`]: the fuzz targets' bodies, also replayed over the committed corpus by the tests.

pub mod agg;
pub mod checkpoint;
pub mod error;
pub mod event;
pub mod explain;
pub mod fuzzing;
pub mod generator;
pub mod hash;
pub mod limits;
pub mod parse;
pub mod records;
pub mod sketch;
pub mod time;
pub mod window;
