//! # Layout
//!
//! `wtm-runtime` is everything below the actors, with no actor in it:
//!
//! - [`event`], [`parse`]: the event model and the log-format parsers (JSON, combined,
//!   vhost_combined); malformed input becomes a reasoned [`parse::ParseError`], never a panic.
//! - [`time`]: civil-time conversions for RFC 3339 and access-log timestamps.
//! - [`window`]: the pure window, watermark and lateness arithmetic.
//! - [`sketch`], [`agg`]: mergeable sketches and the per (host, window, partition) aggregate.
//! - [`generator`], [`source`]: the deterministic traffic generator and the partition-source
//!   trait every source (generator, files, Kafka) implements.
//! - [`kafka`]: the Kafka consumer-group source and producers (the only file using rdkafka).
//! - [`config`]: layered configuration (defaults, TOML, `WTM__` environment).
//! - [`checkpoint`]: the sled checkpoint store and its versioned wire format.
//! - [`lake`]: the Parquet lake writer and reader (Hive-style partitions, deterministic names);
//!   [`store`]: where its objects live, a local directory or S3 (the only file using aws-sdk-s3).
//! - [`msg`]: every message the actors exchange, so actors never import each other.
//! - [`telemetry`]: the one place metrics are defined.

pub mod agg;
pub mod checkpoint;
pub mod config;
pub mod event;
pub mod generator;
pub mod kafka;
pub mod lake;
pub mod msg;
pub mod parse;
pub mod sketch;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod window;
