//! `wtm-chaos`: run a chaos profile and write its report (see the README, Tests).

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;
use wtm_chaos_tests::run::{table, Harness, Options};
use wtm_chaos_tests::schedule::{self, FaultKind};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Profile {
    /// Every fault kind once, about six minutes.
    Quick,
    /// Faults of random kinds at random moments for --minutes.
    Soak,
}

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Seeded faults against real wtm nodes, Kafka and S3, checked by an oracle"
)]
struct Args {
    #[arg(value_enum, default_value = "quick")]
    profile: Profile,
    /// Seed of the fault schedule and of the events (a failing run is replayed with it).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Length of the soak's production (the quick profile's is fixed).
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    #[arg(long, default_value_t = 6)]
    partitions: u32,
    #[arg(long, default_value_t = 200)]
    hosts: u32,
    /// Events/s of the steady producer.
    #[arg(long, default_value_t = 400.0)]
    rate: f64,
    /// Events/s of the overload producer.
    #[arg(long, default_value_t = 4000.0)]
    overload_rate: f64,
    /// Only these fault kinds (comma-separated, e.g. `zombie,kill`) [default: all].
    #[arg(long, value_delimiter = ',')]
    kinds: Vec<String>,
    /// Peak RSS each node must stay under (MB).
    #[arg(long, default_value_t = 1024)]
    rss_bound_mb: u64,
    /// The wtm binary [default: `wtm` beside this one].
    #[arg(long)]
    wtm: Option<PathBuf>,
    /// Where services, nodes and logs live [default: a new directory under /tmp].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// The report as JSON [default: wtm-chaos-<seed>-report.json in the temporary directory].
    #[arg(long)]
    report: Option<PathBuf>,
}

fn main() -> Result<()> {
    let a = Args::parse();
    // The project's scripts/: from the working directory when run from a checkout (the binary
    // may have been built in another one), else from where it was built.
    let root = match std::env::current_dir() {
        Ok(d) if d.join("scripts/kafka").is_file() => d,
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."),
    };
    let wtm = match a.wtm {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("no directory for this binary")?
            .join("wtm"),
    };
    let chosen_work_dir = a.work_dir.is_some();
    let work = match a.work_dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("wtm-chaos-{}-{}", a.seed, std::process::id())),
    };
    // The first fault comes once the nodes have settled; each is followed by a recovery gap.
    let unknown: Vec<&String> = a
        .kinds
        .iter()
        .filter(|k| !FaultKind::ALL.iter().any(|f| f.as_str() == k.as_str()))
        .collect();
    if !unknown.is_empty() {
        anyhow::bail!(
            "--kinds: unknown fault kind(s) {unknown:?}; known: {:?}",
            FaultKind::ALL.map(FaultKind::as_str)
        );
    }
    // A subset keeps the moments its faults have in the whole schedule (a replay of part of a
    // run); the quick profile produces until 15 s after its last fault.
    let (produce_s, faults) = match a.profile {
        Profile::Quick => {
            let f = schedule::only(schedule::every_kind_once(a.seed, a.nodes, 20, 12), &a.kinds);
            let end = f.last().map_or(60, |f| f.at_s + f.hold_s + 15);
            (end, f)
        }
        Profile::Soak => {
            let s = a.minutes * 60;
            let f = schedule::random(a.seed, a.nodes, 30, s.saturating_sub(30));
            (s, schedule::only(f, &a.kinds))
        }
    };
    let o = Options {
        profile: format!("{:?}", a.profile).to_lowercase(),
        seed: a.seed,
        nodes: a.nodes,
        partitions: a.partitions,
        hosts: a.hosts,
        rate: a.rate,
        overload_rate: a.overload_rate,
        produce_s,
        faults,
        malformed_share: 0.005,
        rss_bound_mb: a.rss_bound_mb,
        wtm,
        root,
        work: work.clone(),
    };
    eprintln!("work directory: {}", work.display());
    let mut h = Harness::start(o)?;
    h.play()?;
    let report = h.finish(Duration::from_secs(240))?;
    let text = table(&report);
    print!("{text}");
    let path = a
        .report
        .unwrap_or_else(|| std::env::temp_dir().join(format!("wtm-chaos-{}-report.json", a.seed)));
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    eprintln!("report: {}", path.display());
    if !report.passed {
        eprintln!("logs and data kept in {}", work.display());
        std::process::exit(1);
    }
    if !chosen_work_dir {
        std::fs::remove_dir_all(&work).ok();
    }
    Ok(())
}
