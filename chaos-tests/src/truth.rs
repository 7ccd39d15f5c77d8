//! Ground truth, counted from the input: the producers' exact lines, written again to a file by
//! `wtm generate` with the same flags (the generator is deterministic; only the pacing differs)
//! and parsed line by line.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::process::Command;
use wtm_core::event::Format;
use wtm_core::parse::parse_line;

/// One producer's stream: the `wtm generate` flags that define it.
#[derive(Debug, Clone)]
pub struct Stream {
    pub seed: u64,
    pub hosts: u32,
    pub rate: f64,
    pub count: u64,
    /// Event-time origin (RFC 3339), also the moment pacing starts from.
    pub start: String,
    pub malformed_share: f64,
    pub partitions: u32,
}

impl Stream {
    pub fn args(&self) -> Vec<String> {
        vec![
            "generate".into(),
            "--seed".into(),
            self.seed.to_string(),
            "--hosts".into(),
            self.hosts.to_string(),
            "--rate".into(),
            self.rate.to_string(),
            "--count".into(),
            self.count.to_string(),
            "--start".into(),
            self.start.clone(),
            "--malformed-share".into(),
            self.malformed_share.to_string(),
            "--partitions".into(),
            self.partitions.to_string(),
        ]
    }
}

/// What the lake and the API must hold.
#[derive(Debug, Default, Clone)]
pub struct Truth {
    /// Every record produced.
    pub records: u64,
    /// Records that parse: events.
    pub events: u64,
    pub malformed: u64,
    /// Events per (host, window start).
    pub windows: BTreeMap<(String, i64), u64>,
}

impl Truth {
    /// Add a stream: generate its lines into `file` and count them.
    pub fn add(&mut self, wtm: &Path, stream: &Stream, file: &Path, window_ms: i64) -> Result<()> {
        let status = Command::new(wtm)
            .args(stream.args())
            .arg("--out")
            .arg(file)
            .status()
            .with_context(|| format!("cannot run {}", wtm.display()))?;
        if !status.success() {
            bail!("wtm generate failed for the ground truth");
        }
        let f = std::io::BufReader::new(std::fs::File::open(file)?);
        for line in f.split(b'\n') {
            let line = line?;
            self.records += 1;
            match parse_line(Format::Json, &line, "localhost") {
                Ok(e) => {
                    self.events += 1;
                    let start = e.ts_ms.div_euclid(window_ms) * window_ms;
                    *self.windows.entry((e.host, start)).or_default() += 1;
                }
                Err(_) => self.malformed += 1,
            }
        }
        Ok(())
    }
}
