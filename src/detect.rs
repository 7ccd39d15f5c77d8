//! `wtm detect`: the node's detector over one series in a CSV file (`timestamp,value`), writing
//! `timestamp,value,anomaly_score` for every row and, optionally, the episodes as JSON lines.
//! Streams: a row is read, judged and written before the next (after the first
//! `INFER_ROWS`, held to infer the interval).

use anyhow::{bail, Context, Result};
use std::collections::VecDeque;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use wtm_actors::detector::offline::{Scored, SeriesDetector, SeriesKind};
use wtm_core::time::{format_rfc3339, parse_rfc3339};
use wtm_messages::Episode;

#[derive(clap::Args)]
pub struct DetectArgs {
    /// CSV with a header `timestamp,value`; `-` for stdin. Timestamps: RFC 3339 or Unix
    /// seconds; rows in increasing time order.
    #[arg(long)]
    input: PathBuf,
    /// Where `timestamp,value,anomaly_score` goes; `-` for stdout.
    #[arg(long)]
    output: PathBuf,
    /// The noise model: count (requests per interval), ratio (a share in [0, 1]) or latency.
    #[arg(long, value_enum, default_value = "count")]
    kind: Kind,
    /// Also write the episodes, one JSON object per line.
    #[arg(long)]
    episodes: Option<PathBuf>,
    /// TOML config file: its `[detector]` settings apply (as printed by `wtm config`).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum Kind {
    Count,
    Ratio,
    Latency,
}

fn open_out(path: &Path) -> Result<Box<dyn Write>> {
    Ok(if path == Path::new("-") {
        Box::new(BufWriter::new(std::io::stdout().lock()))
    } else {
        Box::new(BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        ))
    })
}

/// A timestamp as RFC 3339 or Unix seconds (integer or decimal), in ms.
fn parse_ts(s: &str) -> Option<i64> {
    parse_rfc3339(s).or_else(|| {
        let secs: f64 = s.parse().ok()?;
        (secs.is_finite() && secs.abs() < 1e14).then(|| (secs * 1000.0).round() as i64)
    })
}

/// An episode of the one series: the node's episode JSON without the host.
fn episode_json(e: &Episode) -> serde_json::Value {
    let mut v = wtm_actors::detector::episode_json(e);
    if let Some(o) = v.as_object_mut() {
        o.remove("host");
    }
    v
}

/// Write judged rows (their timestamps as they came) and the episodes they ended.
fn write_rows(
    rows: Vec<Scored>,
    texts: &mut VecDeque<String>,
    out: &mut dyn Write,
    episodes: &mut Option<Box<dyn Write>>,
) -> Result<()> {
    for r in rows {
        let ts = texts.pop_front().unwrap_or_else(|| format_rfc3339(r.ts_ms));
        match r.score {
            Some(s) => writeln!(out, "{ts},{},{s:.6}", r.value)?,
            None => writeln!(out, "{ts},{},", r.value)?,
        }
        if let Some(ep) = episodes.as_mut() {
            for e in &r.ended {
                writeln!(ep, "{}", episode_json(e))?;
            }
        }
    }
    Ok(())
}

pub fn detect(a: DetectArgs) -> Result<()> {
    let cfg = wtm_config::Config::load(a.config.as_deref())?;
    let kind = match a.kind {
        Kind::Count => SeriesKind::Count,
        Kind::Ratio => SeriesKind::Ratio,
        Kind::Latency => SeriesKind::Latency,
    };
    let input: Box<dyn BufRead> = if a.input == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&a.input)
                .with_context(|| format!("cannot open {}", a.input.display()))?,
        ))
    };
    let name = a.input.display().to_string();
    let mut out = open_out(&a.output)?;
    let mut episodes = a.episodes.as_deref().map(open_out).transpose()?;
    let mut detector = SeriesDetector::new(cfg.detector.clone(), kind);
    // The timestamp text of held rows, written back as it came.
    let mut texts: VecDeque<String> = VecDeque::new();
    writeln!(out, "timestamp,value,anomaly_score")?;
    let mut rows = 0u64;
    for (i, line) in input.lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("{name}: line {n}: cannot read"))?;
        let line = line.trim_end_matches('\r');
        if n == 1 {
            let cols: Vec<String> = line
                .split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .collect();
            if cols != ["timestamp", "value"] {
                bail!("{name}: line 1: the header must be `timestamp,value`, found `{line}`");
            }
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let Some((ts, value)) = line.split_once(',') else {
            bail!("{name}: line {n}: expected `timestamp,value`, found `{line}`");
        };
        let (ts, value) = (ts.trim(), value.trim());
        let Some(ts_ms) = parse_ts(ts) else {
            bail!("{name}: line {n}: `{ts}` is not a timestamp (RFC 3339 or Unix seconds)");
        };
        let Ok(v) = value.parse::<f64>() else {
            bail!("{name}: line {n}: `{value}` is not a number");
        };
        let scored = detector
            .push(ts_ms, v)
            .map_err(|e| anyhow::anyhow!("{name}: line {n}: {e}"))?;
        texts.push_back(ts.to_owned());
        write_rows(scored, &mut texts, &mut out, &mut episodes)?;
        rows += 1;
    }
    let (rest, ongoing) = detector.finish();
    write_rows(rest, &mut texts, &mut out, &mut episodes)?;
    if let Some(ep) = episodes.as_mut() {
        for e in &ongoing {
            writeln!(ep, "{}", episode_json(e))?;
        }
        ep.flush()?;
    }
    out.flush()?;
    tracing::info!(rows, interval_ms = detector.interval_ms(), "series judged");
    Ok(())
}
