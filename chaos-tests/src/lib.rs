//! # Layout
//!
//! `wtm-chaos-tests`: seeded faults against a real deployment — a genuine Kafka broker and S3
//! API started by `scripts/`, N `wtm run` processes forming a cluster — and an oracle that
//! proves nothing was lost or doubled. The binary `wtm-chaos` runs a profile and writes a report.
//!
//! - [`schedule`]: the fault schedule, a pure function of the seed (replay = same seed).
//! - [`services`]: Kafka and the S3 API through `scripts/`; the topic, end and committed offsets.
//! - [`nodes`]: the `wtm run` processes: configuration, signals, restarts, peak memory, the API.
//! - [`netfault`]: network partitions with nftables (by the node process's group id).
//! - [`truth`]: the ground truth, counted from the producers' lines.
//! - [`oracle`]: the lake read back and judged against the truth, by window and by offset.
//! - [`run`]: one run: set-up, the schedule played against the clock, drain, oracle, report.

pub mod netfault;
pub mod nodes;
pub mod oracle;
pub mod run;
pub mod schedule;
pub mod services;
pub mod truth;
