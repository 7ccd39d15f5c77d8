//! `wtm`: the command line. Parsing, config and wiring only; the work lives in the crates.

mod detect;
mod upkeep;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ractor::Actor;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use wtm_actors::supervisor::{follow_group, gave_up_because, SupervisorActor, SupervisorArgs};
use wtm_config::{Config, SourceKind};
use wtm_core::event::Format;
use wtm_core::generator::{AnomalyKind, Generator, GeneratorSpec, Magnitude};
use wtm_core::time::{now_ms, parse_rfc3339};
use wtm_messages::{ask, SupervisorMsg, SUPERVISOR_NAME};
use wtm_sources::kafka::{KafkaSink, KafkaSources};
use wtm_sources::{GeneratorSources, SourceFactory};
use wtm_storage::store::{S3Settings, Store};
use wtm_storage::{CheckpointStore, Lake};
use wtm_telemetry::ActorKind;

// The pipeline allocates per event (parsed strings, batches): glibc's malloc made an unpaced
// node 30% slower. jemalloc rather than mimalloc (used before): at the same speed, it gives
// memory back: the embedded default's first three minutes at 48-55 MB where mimalloc grew to
// 72-88 MB (bench/RESULTS.md, 2026-11-30).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Real-time web-traffic monitoring: access logs in, per-site insight, anomalies and a Parquet lake out.
#[derive(Parser)]
#[command(name = "wtm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: sources → windows → lake, detector and HTTP API.
    Run(RunArgs),
    /// Generate realistic access-log traffic (deterministic for a seed).
    Generate(GenerateArgs),
    /// Run the same pipeline over log files (backfill): each file is a partition; writes the lake.
    Batch(BatchArgs),
    /// Run the detector over one series from a CSV file (timestamp,value): every row's anomaly
    /// score, and the episodes.
    Detect(detect::DetectArgs),
    /// Rewrite closed hours of the lake's many small files into few, sorted by host and time
    /// (a Delta commit: readers never see a row twice or miss one).
    Compact(upkeep::CompactArgs),
    /// Remove the lake's days older than a number of days, and delete files removed longer
    /// ago than the grace period (by this or by compaction).
    Retention(upkeep::RetentionArgs),
    /// Health check for containers: GET a URL of a node (e.g. http://127.0.0.1:8080/readyz);
    /// exit 0 on a 2xx answer, 1 otherwise (images without curl use this). Sends the bearer
    /// token in WTM__API__TOKEN when it is set.
    Probe {
        /// http://HOST:PORT/PATH, or https://… with --ca
        url: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
        /// For https://: the CA certificate(s) (PEM) that signed the API's certificate.
        #[arg(long)]
        ca: Option<PathBuf>,
    },
    /// Print the effective configuration (defaults, file, WTM__ environment) as TOML.
    Config {
        /// TOML config file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// TOML config file (keys as printed by `wtm config`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// API listen address (overrides node.listen).
    #[arg(long)]
    listen: Option<String>,
    /// Data directory for checkpoints and the default lake (overrides node.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct BatchArgs {
    /// Log files, plain or gzip (detected by content); `-` reads standard input.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Record format [default: source.format from the config, json].
    #[arg(long)]
    format: Option<Format>,
    /// Site name for `combined` lines, which carry none (overrides source.host).
    #[arg(long)]
    host: Option<String>,
    /// Data directory; the lake goes to <DIR>/lake unless lake.path says otherwise.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// TOML config (window, lake and detector settings apply; the source is the files).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Also archive every parsed event under events/ (off: the input files are the raw data).
    #[arg(long)]
    raw_events: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct GenerateArgs {
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of sites.
    #[arg(long, default_value_t = 50)]
    hosts: usize,
    /// Mean events per second over all sites.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this much event time: seconds, or with a unit (90s, 10m, 2h, 1d).
    #[arg(long, value_parser = parse_duration_s)]
    duration: Option<u64>,
    /// Event-time origin, RFC 3339 [default: 2026-01-01T00:00:00Z, or now with --realtime].
    #[arg(long)]
    start: Option<String>,
    /// Pace output to the wall clock (otherwise as fast as possible).
    #[arg(long)]
    realtime: bool,
    #[arg(long, default_value = "json")]
    format: Format,
    /// Output file [default: stdout].
    #[arg(long, conflicts_with = "kafka")]
    out: Option<PathBuf>,
    /// Produce to Kafka instead (bootstrap servers, host:port[,…]), keyed by host, with an
    /// idempotent producer.
    #[arg(long, requires = "topic")]
    kafka: Option<String>,
    /// The topic to produce to (with --kafka).
    #[arg(long, requires = "kafka")]
    topic: Option<String>,
    /// Write the injected anomalies here, one JSON object per line.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Number of injected anomalies (of --kinds in turn; each labelled).
    #[arg(long, default_value_t = 0)]
    anomalies: usize,
    /// The kinds injected in turn, comma-separated: traffic_spike, traffic_drop, error_burst,
    /// latency_degradation, bot_surge, path_hotspot, slow_endpoint, not_found_storm,
    /// latency_creep [default: the first four].
    #[arg(long, value_delimiter = ',', value_parser = parse_kind)]
    kinds: Vec<AnomalyKind>,
    /// Magnitudes (weak, medium, strong), comma-separated: each after a round of every kind
    /// [default: strong].
    #[arg(long, value_delimiter = ',', value_parser = parse_magnitude)]
    magnitudes: Vec<Magnitude>,
    /// Share of lines written malformed (truncated), to exercise dead-lettering.
    #[arg(long, default_value_t = 0.0)]
    malformed_share: f64,
    /// Traffic on Saturdays and Sundays (UTC) as a share of weekdays' (1: no weekly cycle; each
    /// site's own share is drawn around it).
    #[arg(long, default_value_t = GeneratorSpec::DEFAULT_WEEKEND)]
    weekend: f64,
    /// Partitions the hosts are keyed over (as a node with the same setting reads them).
    #[arg(long, default_value_t = 4)]
    partitions: u32,
}

fn parse_duration_s(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86_400),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("{s:?} is not a duration such as 600, 90s, 10m, 2h or 1d"))
}

fn main() -> std::process::ExitCode {
    // Errors are for operators: one line with its causes, not a Debug dump with a backtrace.
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Generate(args) => generate(args),
        Command::Batch(args) => batch(args),
        Command::Detect(args) => detect::detect(args),
        Command::Compact(args) => upkeep::compact(args),
        Command::Retention(args) => upkeep::retention(args),
        Command::Probe { url, timeout, ca } => {
            let token = std::env::var("WTM__API__TOKEN").ok();
            let timeout = std::time::Duration::from_secs(timeout);
            wtm_api::probe::probe(&url, timeout, token.as_deref(), ca.as_deref())
                .map_err(anyhow::Error::msg)
        }
        Command::Config { config } => {
            let cfg = Config::load(config.as_deref())?;
            print!("{}", cfg.to_toml());
            Ok(())
        }
    }
}

fn generate(a: GenerateArgs) -> Result<()> {
    if a.count.is_none() && a.duration.is_none() && !a.realtime {
        bail!("give --count or --duration (an endless stream needs --realtime)");
    }
    if !(a.rate >= 0.001 && a.rate.is_finite()) || a.hosts == 0 || a.partitions == 0 {
        bail!("--rate must be at least 0.001, --hosts and --partitions at least 1");
    }
    if !(0.0..=1.0).contains(&a.malformed_share) {
        bail!("--malformed-share must be between 0 and 1");
    }
    if !(0.0..=5.0).contains(&a.weekend) {
        bail!("--weekend must be between 0 and 5 (a share of weekday traffic)");
    }
    let start_ms = match &a.start {
        Some(s) => {
            parse_rfc3339(s).with_context(|| format!("--start {s:?} is not an RFC 3339 time"))?
        }
        None if a.realtime => now_ms() / 1000 * 1000,
        None => parse_rfc3339("2026-01-01T00:00:00Z").expect("valid constant"),
    };
    let g = Arc::new(Generator::new(GeneratorSpec {
        seed: a.seed,
        hosts: a.hosts,
        rate: a.rate,
        start_ms,
        partitions: a.partitions,
        anomalies: a.anomalies,
        kinds: a.kinds.clone(),
        magnitudes: a.magnitudes.clone(),
        malformed_share: a.malformed_share,
        weekend: a.weekend,
        duration_ms: a.duration.map(|d| d as i64 * 1000),
        count: a.count,
    }));
    if let Some(path) = &a.labels {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        );
        for l in g.anomalies() {
            serde_json::to_writer(&mut f, l)?;
            f.write_all(b"\n")?;
        }
        f.flush()?;
    }
    let sink = match (&a.kafka, &a.topic) {
        (Some(brokers), Some(topic)) => Some(KafkaSink::connect(
            brokers,
            topic,
            &Default::default(),
            "wtm-generate",
        )?),
        _ => None,
    };
    let mut out: Box<dyn Write> = match &a.out {
        Some(p) => Box::new(std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::with_capacity(
            1 << 20,
            std::io::stdout().lock(),
        )),
    };
    // Second by second, partition by partition: the order `--count` is defined over.
    let mut cursors: Vec<_> = (0..a.partitions).map(|p| (p, g.cursor(p, 0))).collect();
    let mut line = Vec::with_capacity(512);
    while let Some(s) = cursors
        .iter_mut()
        .filter_map(|(_, c)| c.next_second())
        .min()
    {
        if a.realtime {
            let wait = start_ms + (s + 1) * 1000 - now_ms();
            if wait > 0 {
                out.flush()?;
                std::thread::sleep(std::time::Duration::from_millis(wait as u64));
            }
        }
        for (p, c) in cursors.iter_mut() {
            while c.next_second() == Some(s) {
                let offset = c.offset();
                let Some(e) = c.next_event() else { break };
                line.clear();
                g.render(*p, offset, &e, a.format, &mut line);
                if let Some(sink) = &sink {
                    // The record is the line without its newline.
                    let record = line.strip_suffix(b"\n").unwrap_or(&line);
                    sink.send(e.host.as_bytes(), record)
                        .map_err(anyhow::Error::msg)?;
                    continue;
                }
                if let Err(err) = out.write_all(&line) {
                    if err.kind() == std::io::ErrorKind::BrokenPipe {
                        return Ok(());
                    }
                    return Err(err.into());
                }
            }
        }
    }
    if let Some(sink) = &sink {
        sink.flush(std::time::Duration::from_secs(120))
            .map_err(anyhow::Error::msg)?;
    }
    out.flush()?;
    Ok(())
}

fn init_tracing(default: &str) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .init();
}

fn batch(a: BatchArgs) -> Result<()> {
    let mut cfg = Config::load(a.config.as_deref())?;
    if let Some(f) = a.format {
        cfg.source.format = f;
    }
    if let Some(h) = a.host {
        cfg.source.host = h;
    }
    if let Some(d) = a.data_dir {
        cfg.node.data_dir = d;
    }
    if a.files.iter().filter(|f| f.as_os_str() == "-").count() > 1 {
        bail!("standard input (-) can be given once");
    }
    for f in a.files.iter().filter(|f| f.as_os_str() != "-") {
        if !f.is_file() {
            bail!("{} is not a readable file", f.display());
        }
    }
    cfg.source.partitions = u32::try_from(a.files.len()).context("too many files")?;
    cfg.lake.raw_events = a.raw_events;
    cfg.detector.enabled = false;
    // No API in a batch run: keep no window history (it would grow with hosts).
    cfg.api.retention_windows = 1;
    cfg.api.listing_windows = 1;
    cfg.validate()?;
    init_tracing("warn");
    let summary = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(batch_node(Arc::new(cfg), a.files, a.quiet))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        summary.print();
    }
    if summary.events == 0 {
        bail!(
            "no record could be parsed ({} invalid: {:?}); is --format right?",
            summary.invalid_total,
            summary.invalid
        );
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct BatchSummary {
    files: usize,
    lines: u64,
    events: u64,
    invalid_total: u64,
    invalid: std::collections::BTreeMap<String, u64>,
    late: u64,
    hosts: u64,
    windows: u64,
    elapsed_s: f64,
    lines_per_s: f64,
    lake: String,
}

impl BatchSummary {
    fn print(&self) {
        println!("files        {}", self.files);
        println!("lines        {}", self.lines);
        println!("events       {}", self.events);
        println!("invalid      {} {:?}", self.invalid_total, self.invalid);
        println!("late         {}", self.late);
        println!("hosts        {}", self.hosts);
        println!("windows      {}", self.windows);
        println!("elapsed      {:.2} s", self.elapsed_s);
        println!("lines/s      {:.0}", self.lines_per_s);
        println!("lake         {}", self.lake);
    }
}

async fn batch_node(cfg: Arc<Config>, files: Vec<PathBuf>, quiet: bool) -> Result<BatchSummary> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use wtm_messages::{lookup, partition_statuses, ArchiverMsg, ARCHIVER_NAME};
    use wtm_sources::FileSources;

    let started = std::time::Instant::now();
    std::fs::create_dir_all(&cfg.node.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.node.data_dir.display()))?;
    // Checkpoints of a batch run are its own: a rerun starts over (and overwrites the same files).
    let scratch = tempfile::Builder::new()
        .prefix(".batch-")
        .tempdir_in(&cfg.node.data_dir)?;
    let store = CheckpointStore::open(scratch.path())?;
    let bytes_read = Arc::new(AtomicU64::new(0));
    let sources = Arc::new(FileSources {
        paths: files.clone(),
        bytes_read: Arc::clone(&bytes_read),
        max_record_bytes: cfg.limits.max_record_bytes,
    });
    let total = sources.total_bytes();
    let lake = open_lake(&cfg).await?;
    let lake_name = lake.describe();
    let args = SupervisorArgs {
        config: Arc::clone(&cfg),
        sources,
        store,
        lake,
        durable: false,
        partitions: (0..cfg.source.partitions).collect(),
        snapshots: None,
        history: None,
        explain: None,
    };
    let (sup, mut sup_done) = Actor::spawn(None, SupervisorActor, args)
        .await
        .map_err(|e| anyhow::anyhow!("batch failed to start: {e}"))?;
    let bar = if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = match total {
            Some(t) => indicatif::ProgressBar::new(t),
            None => indicatif::ProgressBar::no_length(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .expect("valid template"),
        );
        bar
    };
    let statuses = loop {
        tokio::select! {
            _ = &mut sup_done => bail!("the pipeline stopped: {}", gave_up_because().unwrap_or("see the log")),
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
        }
        bar.set_position(bytes_read.load(Ordering::Relaxed));
        // An owner restarting does not answer: ask again next time.
        if let Ok(all) = partition_statuses(0..cfg.source.partitions, true).await {
            if all.iter().all(|s| s.finished) {
                break all;
            }
        }
    };
    bar.finish_and_clear();
    let hosts = match lookup::<ArchiverMsg>(ARCHIVER_NAME) {
        Some(a) => ask(&a, ActorKind::Archiver, ArchiverMsg::HostsSeen)
            .await
            .map(|n| n as u64)
            .unwrap_or(0),
        None => 0,
    };
    sup.stop(None);
    let _ = sup_done.await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut invalid = std::collections::BTreeMap::new();
    let (mut events, mut late, mut windows) = (0, 0, 0);
    for s in &statuses {
        events += s.totals.events;
        late += s.totals.late;
        windows += s.totals.windows_closed;
        for (r, n) in &s.totals.invalid {
            *invalid.entry(r.as_str().to_owned()).or_insert(0) += n;
        }
    }
    let invalid_total: u64 = invalid.values().sum();
    Ok(BatchSummary {
        files: files.len(),
        lines: events + invalid_total,
        events,
        invalid_total,
        invalid,
        late,
        hosts,
        windows,
        elapsed_s: elapsed,
        lines_per_s: (events + invalid_total) as f64 / elapsed.max(1e-9),
        lake: lake_name,
    })
}

fn run(a: RunArgs) -> Result<()> {
    let mut cfg = Config::load(a.config.as_deref())?;
    if let Some(l) = a.listen {
        cfg.node.listen = l;
    }
    if let Some(d) = a.data_dir {
        cfg.node.data_dir = d;
    }
    cfg.validate()?;
    if !cfg.alerts.alertmanager.is_empty() || !cfg.alerts.webhooks.is_empty() {
        // The receivers' CA file parses, or the node does not start.
        wtm_actors::detector::alert_agent(&cfg.alerts)
            .map_err(|e| anyhow::anyhow!("config: {e}"))?;
    }
    init_tracing("info");
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(node(Arc::new(cfg)))
}

async fn node(cfg: Arc<Config>) -> Result<()> {
    std::fs::create_dir_all(&cfg.node.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.node.data_dir.display()))?;
    let store = CheckpointStore::open(&cfg.node.data_dir.join("checkpoints"))?;
    let lake = open_lake(&cfg).await?;
    let lake_name = lake.describe();
    let listener = tokio::net::TcpListener::bind(&cfg.node.listen)
        .await
        .with_context(|| format!("cannot listen on {} (node.listen)", cfg.node.listen))?;
    let addr = listener.local_addr()?;
    drop(listener);
    let node_id = cfg.node_id();
    let advertised = wtm_cluster::advertised(&cfg).await?;
    // A generator node owns its partitions from the start; a Kafka node owns what its consumer
    // group assigns, and hands partitions over through the lake's shared snapshots.
    let (sources, partitions, snapshots, kafka): (Arc<dyn SourceFactory>, _, _, _) =
        match cfg.source.kind {
            SourceKind::Generator => {
                let start_ms = match &cfg.source.start {
                    Some(s) => parse_rfc3339(s).expect("validated"),
                    // Remembered, so a restarted node resumes the same event-time stream.
                    None => store.meta_i64("generator_start_ms", || now_ms() / 1000 * 1000)?,
                };
                let sources = Arc::new(GeneratorSources {
                    generator: Arc::new(Generator::new(cfg.generator_spec(start_ms))),
                    format: cfg.source.format,
                    realtime: cfg.source.realtime,
                });
                (
                    sources as _,
                    (0..cfg.source.partitions).collect(),
                    None,
                    None,
                )
            }
            SourceKind::Kafka => {
                let (events, group) = tokio::sync::mpsc::unbounded_channel();
                // With discovery, the group's members carry their cluster addresses.
                let client_id = match (&advertised, cfg.cluster.discover_from_kafka) {
                    (Some(a), true) => wtm_cluster::discoverable_client_id(&node_id, a),
                    _ => format!("wtm-{node_id}"),
                };
                let k = KafkaSources::connect(&cfg.source, &client_id, events)?;
                (
                    Arc::clone(&k) as _,
                    Vec::new(),
                    Some(lake.clone()),
                    Some((k, group)),
                )
            }
        };
    let kafka_source = cfg.source.kind == SourceKind::Kafka;
    let api = wtm_api::ApiContext {
        partitions: (!kafka_source).then_some(cfg.source.partitions),
        node: node_id.clone(),
        api_addr: addr.to_string(),
        source: if kafka_source { "kafka" } else { "generator" }.into(),
        topic: kafka_source.then(|| cfg.source.topic.clone()),
        group: kafka_source.then(|| cfg.source.group.clone()),
        shards: cfg.window.shards,
        window_ms: cfg.window_spec().size_ms,
        default_windows: 60,
        baseline_windows: cfg.detector.baseline_windows,
        access: api_access(&cfg)?,
    };
    let args = SupervisorArgs {
        config: Arc::clone(&cfg),
        sources,
        store,
        lake,
        durable: true,
        partitions,
        snapshots,
        history: Some(cfg.node.data_dir.join("history.redb")),
        // Alert texts say what drove an episode, as the API does.
        explain: Some(wtm_api::explainer(api.clone())),
    };
    let (sup, sup_done) = Actor::spawn(Some(SUPERVISOR_NAME.into()), SupervisorActor, args)
        .await
        .map_err(|e| anyhow::anyhow!("node failed to start: {e}"))?;
    let kafka = match kafka {
        Some((k, group)) => {
            follow_group(group, sup.clone());
            k.start()
                .context("cannot start the Kafka consumer thread")?;
            Some(k)
        }
        None => None,
    };
    let discover = match (&kafka, cfg.cluster.discover_from_kafka) {
        (Some(k), true) => Some(kafka_discovery(Arc::clone(k))),
        _ => None,
    };
    // Peers find this node's API through its heartbeats.
    let _cluster = match &advertised {
        Some(a) => Some(wtm_cluster::start(&cfg, &node_id, &addr.to_string(), a, discover).await?),
        None => None,
    };
    let app = wtm_api::routes(api);
    use poem::listener::Listener;
    let plain = poem::listener::TcpListener::bind(addr.to_string());
    let (listener, scheme) = match &cfg.api.tls {
        Some(t) => {
            let configs = wtm_api::tls::reloading(t.cert.clone(), t.key.clone())
                .map_err(|e| anyhow::anyhow!("config: {e}"))?;
            (plain.rustls(configs).boxed(), "https")
        }
        None => (plain.boxed(), "http"),
    };
    tracing::info!(%addr, data_dir = %cfg.node.data_dir.display(), lake = %lake_name, "wtm node running; API docs at {scheme}://{addr}/docs");
    let server = poem::Server::new(listener);
    let shutdown = async {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
            _ = terminate() => tracing::info!("terminated; stopping"),
        }
    };
    let mut sup_done = sup_done;
    tokio::select! {
        r = server.run_with_graceful_shutdown(app, shutdown, Some(std::time::Duration::from_secs(5))) => {
            r.context("API server failed")?;
            if let Some(k) = kafka {
                // Leaving the group revokes every partition: final checkpoints, published
                // snapshots and committed offsets, before the other members take over.
                let _ = tokio::task::spawn_blocking(move || k.leave()).await;
            }
            // Final checkpoints, so the next start replays nothing.
            if let Err(e) = ask(&sup, ActorKind::Supervisor, SupervisorMsg::DrainAll).await {
                tracing::warn!(error = %e, "final checkpoints not confirmed");
            }
            tracing::info!("partitions checkpointed; stopped");
            sup.stop(None);
            let _ = (&mut sup_done).await;
            Ok(())
        }
        _ = &mut sup_done => {
            // Exit here, not by unwinding: every checkpoint was made durable when it was taken,
            // and unwinding would wait on tasks and files of a node that already failed (its disk
            // may be full), which could leave a process that neither works nor exits.
            eprintln!("error: the node stopped: {}", gave_up_because().unwrap_or("see the log"));
            std::process::exit(1);
        }
    }
}

/// The lake the config names: S3 (`lake.url`) or a local directory.
async fn open_lake(cfg: &Config) -> Result<Lake> {
    let commit_interval = std::time::Duration::from_millis(cfg.lake.commit_interval_ms);
    match &cfg.lake.url {
        Some(url) => {
            let store = Store::s3(&S3Settings {
                url: url.clone(),
                region: cfg.lake.region.clone(),
                endpoint: cfg.lake.endpoint.clone(),
                path_style: cfg.lake.path_style,
            })
            .await?;
            Ok(Lake::with_commit_interval(store, commit_interval))
        }
        None => Ok(Lake::with_commit_interval(
            Store::Local(cfg.lake_path()),
            commit_interval,
        )),
    }
}

async fn terminate() {
    #[cfg(unix)]
    {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
            return;
        }
    }
    std::future::pending::<()>().await
}

/// The API's tokens (as digests) and request bounds, from `[api]`.
fn parse_kind(s: &str) -> Result<AnomalyKind, String> {
    AnomalyKind::parse(s).ok_or_else(|| {
        let names: Vec<&str> = AnomalyKind::ALL.iter().map(|k| k.name()).collect();
        format!("{s:?} is not a kind: one of {}", names.join(", "))
    })
}

fn parse_magnitude(s: &str) -> Result<Magnitude, String> {
    Magnitude::parse(s).ok_or_else(|| format!("{s:?} is not a magnitude: weak, medium or strong"))
}

/// Peers' cluster addresses, from the `client.id`s of the consumer group's members.
fn kafka_discovery(k: Arc<KafkaSources>) -> wtm_cluster::Discover {
    Arc::new(
        move || match k.group_client_ids(std::time::Duration::from_secs(5)) {
            Ok(ids) => ids
                .iter()
                .filter_map(|id| wtm_cluster::address_in_client_id(id))
                .map(str::to_owned)
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for peers in the Kafka group");
                Vec::new()
            }
        },
    )
}

fn api_access(cfg: &Config) -> Result<wtm_api::Access> {
    let digests: Vec<[u8; 32]> = cfg
        .api
        .tokens()?
        .into_iter()
        .map(|t| match t {
            wtm_config::ApiToken::Plain(s) => wtm_api::Access::digest(s.expose()),
            wtm_config::ApiToken::Sha256(d) => d,
        })
        .collect();
    if digests.is_empty() && !cfg.node.listen.starts_with("127.") {
        tracing::warn!(listen = %cfg.node.listen, "the API listens beyond loopback without a token: anyone who reaches it sees every site's traffic (set api.token or api.tokens_file)");
    }
    Ok(wtm_api::Access::new(
        digests,
        cfg.api.protect_metrics,
        std::time::Duration::from_secs(cfg.api.request_timeout_s),
        cfg.api.max_concurrent_requests,
    ))
}
