//! `wtm compact` and `wtm retention`: the lake's upkeep jobs (run hourly and daily by a
//! scheduler, e.g. the Airflow DAGs). Both commit to the tables' Delta logs, so they are safe
//! while nodes write and while anyone reads, and a rerun after a crash finishes the job.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use wtm_config::Config;
use wtm_core::time::{format_rfc3339, parse_rfc3339};
use wtm_storage::lake::TABLES;
use wtm_storage::upkeep::{self, CompactOptions};
use wtm_storage::Lake;

#[derive(clap::Args)]
pub struct CompactArgs {
    /// TOML config file: its `[lake]` says where the lake is.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Compact hours that ended before this instant: RFC 3339, or a duration ago (90m, 2h, 1d)
    /// [default: 2h, so an hour's late windows are in first]
    #[arg(long)]
    before: Option<String>,
    /// Only these tables (repeatable) [default: all of windows, late, events, invalid]
    #[arg(long = "table", value_parser = ["windows", "late", "events", "invalid"])]
    tables: Vec<String>,
    /// A compacted file holds up to about this many MiB of input.
    #[arg(long, default_value_t = 128)]
    target_mb: u64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct RetentionArgs {
    /// TOML config file: its `[lake]` says where the lake is.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Days to keep: `30` for every table, or `TABLE=DAYS` (repeatable; overrides the former).
    /// A table given no number is kept whole. Days are whole UTC dates (`dt`) before today.
    #[arg(long = "keep", required = true)]
    keep: Vec<String>,
    /// Files removed (by this or by compaction) are deleted this many hours after their
    /// removal, once no query that started before it can still read them. The removals also
    /// fence replays until then.
    #[arg(long, default_value_t = 168.0)]
    grace_hours: f64,
    /// Log commits older than the newest checkpoint are deleted this many hours after they
    /// were written (readers start from the checkpoint).
    #[arg(long, default_value_t = 24.0)]
    log_retention_hours: f64,
    /// "Today", RFC 3339 [default: now]
    #[arg(long)]
    now: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// An instant: RFC 3339, or a duration before now.
fn instant(s: &str, what: &str) -> Result<i64> {
    if let Some(t) = parse_rfc3339(s) {
        return Ok(t);
    }
    match crate::parse_duration_s(s) {
        Ok(secs) => Ok(now_ms() - secs as i64 * 1000),
        Err(_) => bail!("{what} {s:?}: give an RFC 3339 time or a duration such as 90m, 2h, 1d"),
    }
}

fn lake_of(config: Option<&std::path::Path>) -> Result<(tokio::runtime::Runtime, Lake)> {
    let cfg = Config::load(config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let lake = rt.block_on(crate::open_lake(&cfg))?;
    Ok((rt, lake))
}

pub fn compact(a: CompactArgs) -> Result<()> {
    if a.target_mb == 0 {
        bail!("--target-mb must be at least 1");
    }
    let before_ms = instant(a.before.as_deref().unwrap_or("2h"), "--before")?;
    let tables: Vec<String> = if a.tables.is_empty() {
        TABLES.iter().map(|t| t.to_string()).collect()
    } else {
        a.tables.clone()
    };
    let (rt, lake) = lake_of(a.config.as_deref())?;
    let opts = CompactOptions {
        before_ms,
        target_bytes: a.target_mb << 20,
        row_group_rows: 128 * 1024,
    };
    let mut all = Vec::new();
    for t in &tables {
        let lake = lake.clone();
        let opts = opts.clone();
        let t2 = t.clone();
        let json = a.json;
        let reports = rt
            .block_on(async move {
                tokio::task::spawn_blocking(move || {
                    upkeep::compact(&lake, &t2, &opts, &mut |r| {
                        if !json {
                            println!(
                                "{} dt={} hour={}: {} files -> {} ({} rows, {} -> {} bytes){}",
                                r.table,
                                r.dt,
                                r.hour,
                                r.files_before,
                                r.files_after,
                                r.rows,
                                r.bytes_before,
                                r.bytes_after,
                                if r.committed {
                                    ""
                                } else {
                                    ", left: changed by another writer meanwhile (a rerun does it)"
                                }
                            );
                        }
                    })
                })
                .await
            })?
            .with_context(|| format!("compacting {t}"))?;
        all.extend(reports);
    }
    let committed = all.iter().filter(|r| r.committed).count();
    let before: usize = all
        .iter()
        .filter(|r| r.committed)
        .map(|r| r.files_before)
        .sum();
    let after: usize = all
        .iter()
        .filter(|r| r.committed)
        .map(|r| r.files_after)
        .sum();
    if a.json {
        let hours: Vec<serde_json::Value> = all
            .iter()
            .map(|r| {
                serde_json::json!({
                    "table": r.table, "dt": r.dt, "hour": r.hour,
                    "files_before": r.files_before, "files_after": r.files_after,
                    "rows": r.rows, "bytes_before": r.bytes_before, "bytes_after": r.bytes_after,
                    "committed": r.committed,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "lake": lake.describe(), "before": format_rfc3339(before_ms),
                "hours_compacted": committed, "hours_left": all.len() - committed,
                "files_before": before, "files_after": after, "hours": hours,
            })
        );
    } else {
        println!(
            "compacted {committed} hour(s) of {} before {}: {before} files -> {after}",
            lake.describe(),
            format_rfc3339(before_ms)
        );
    }
    Ok(())
}

/// `--keep` values as days per table.
fn keep_days(keep: &[String]) -> Result<BTreeMap<&'static str, u32>> {
    let mut all = None;
    let mut per = BTreeMap::new();
    for k in keep {
        let (table, days) = match k.split_once('=') {
            Some((t, d)) => {
                let Some(t) = TABLES.iter().find(|x| **x == t) else {
                    bail!(
                        "--keep {k:?}: no table {t:?} (tables: {})",
                        TABLES.join(", ")
                    );
                };
                (Some(*t), d)
            }
            None => (None, k.as_str()),
        };
        let days: u32 =
            days.parse().ok().filter(|d| *d >= 1).with_context(|| {
                format!("--keep {k:?}: days must be a whole number, at least 1")
            })?;
        match table {
            Some(t) => {
                per.insert(t, days);
            }
            None => all = Some(days),
        }
    }
    let mut out = BTreeMap::new();
    for t in TABLES {
        if let Some(d) = per.get(t).copied().or(all) {
            out.insert(t, d);
        }
    }
    Ok(out)
}

pub fn retention(a: RetentionArgs) -> Result<()> {
    let keep = keep_days(&a.keep)?;
    if !(a.grace_hours.is_finite() && a.grace_hours >= 0.0) {
        bail!("--grace-hours must be 0 or more");
    }
    if !(a.log_retention_hours.is_finite() && a.log_retention_hours >= 0.0) {
        bail!("--log-retention-hours must be 0 or more");
    }
    let log_keep_ms = (a.log_retention_hours * 3_600_000.0) as i64;
    let now = match &a.now {
        Some(s) => {
            parse_rfc3339(s).with_context(|| format!("--now {s:?}: not an RFC 3339 time"))?
        }
        None => now_ms(),
    };
    let grace_ms = (a.grace_hours * 3_600_000.0) as i64;
    let (rt, lake) = lake_of(a.config.as_deref())?;
    let mut out = Vec::new();
    for t in TABLES {
        let lake = lake.clone();
        let days = keep.get(t).copied();
        let (expired, vacuumed) = rt
            .block_on(async move {
                tokio::task::spawn_blocking(move || -> Result<_, wtm_storage::LakeError> {
                    let expired = match days {
                        Some(d) => {
                            let today = now - now.rem_euclid(86_400_000);
                            let from = format_rfc3339(today - (d as i64 - 1) * 86_400_000);
                            Some(upkeep::expire(&lake, t, &from[..10])?)
                        }
                        None => None,
                    };
                    Ok((expired, upkeep::vacuum(&lake, t, grace_ms, log_keep_ms)?))
                })
                .await
            })?
            .with_context(|| format!("retention of {t}"))?;
        if !a.json {
            match &expired {
                Some(e) => println!(
                    "{t}: kept dt >= {}, removed {} file(s) ({} bytes); vacuum deleted {} removed file(s), {} orphan(s) and {} log file(s)",
                    e.kept_from, e.files, e.bytes, vacuumed.files, vacuumed.orphans, vacuumed.log_files
                ),
                None => println!(
                    "{t}: kept whole; vacuum deleted {} removed file(s), {} orphan(s) and {} log file(s)",
                    vacuumed.files, vacuumed.orphans, vacuumed.log_files
                ),
            }
        }
        out.push(serde_json::json!({
            "table": t,
            "kept_from": expired.as_ref().map(|e| e.kept_from.clone()),
            "files_removed": expired.as_ref().map_or(0, |e| e.files),
            "bytes_removed": expired.as_ref().map_or(0, |e| e.bytes),
            "files_deleted": vacuumed.files,
            "orphans_deleted": vacuumed.orphans,
            "log_files_deleted": vacuumed.log_files,
        }));
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({"lake": lake.describe(), "tables": out})
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_is_days_for_all_tables_or_one() {
        let k = keep_days(&["30".into(), "events=7".into()]).unwrap();
        assert_eq!(k["windows"], 30);
        assert_eq!(k["events"], 7);
        let k = keep_days(&["late=2".into()]).unwrap();
        assert_eq!(k.len(), 1);
        assert!(keep_days(&["nope=3".into()]).is_err());
        assert!(keep_days(&["0".into()]).is_err());
        assert!(keep_days(&["x".into()]).is_err());
    }
}
