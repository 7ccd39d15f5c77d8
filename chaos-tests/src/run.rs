//! One chaos run: services up, nodes up, producers on, the fault schedule played against the
//! clock while the harness samples offsets and memory, then the drain and the oracle.

use crate::netfault::Nft;
use crate::nodes::{fill, free_port, mount_tmpfs, unmount, Cluster, Node};
use crate::oracle::{judge, LakeRows, LakeVerdict};
use crate::schedule::{Fault, FaultKind};
use crate::services::{create_topic, OffsetsProbe, Service};
use crate::truth::{Stream, Truth};
use anyhow::{bail, Result};
use nix::sys::signal::Signal;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wtm_core::time::{format_rfc3339, now_ms, parse_rfc3339};
use wtm_storage::store::{S3Settings, Store};

/// The nodes' window size (the default).
const WINDOW_MS: i64 = 60_000;
/// First group id of the nodes' processes (a partition fault matches on it).
const FIRST_GID: u32 = 47_000;

#[derive(Debug, Clone)]
pub struct Options {
    pub profile: String,
    pub seed: u64,
    pub nodes: usize,
    pub partitions: u32,
    pub hosts: u32,
    /// Events/s of the steady producer.
    pub rate: f64,
    /// Events/s of the overload producer.
    pub overload_rate: f64,
    /// How long the steady producer runs.
    pub produce_s: u64,
    pub faults: Vec<Fault>,
    pub malformed_share: f64,
    /// Peak RSS each node must stay under.
    pub rss_bound_mb: u64,
    pub wtm: PathBuf,
    /// The project's root (for `scripts/`).
    pub root: PathBuf,
    pub work: PathBuf,
}

/// One fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct FaultOutcome {
    pub kind: FaultKind,
    pub victim: Option<usize>,
    pub at_s: f64,
    pub hold_s: u64,
    /// Seconds from the fault's end until the group's lag was back under the threshold.
    pub recovery_s: Option<f64>,
    /// The group's largest lag (records produced, not committed) from the fault's start until
    /// it recovered.
    pub peak_lag: u64,
    /// Why it was not injected, if it was not.
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeOutcome {
    pub node: usize,
    pub peak_rss_mb: f64,
    pub starts: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Exit {
    pub node: usize,
    pub at_s: f64,
    /// Faults in progress when it was found gone.
    pub during: Vec<FaultKind>,
    pub expected: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub profile: String,
    pub seed: u64,
    pub nodes: usize,
    pub partitions: u32,
    pub records: u64,
    pub events: u64,
    pub malformed: u64,
    pub lake: LakeVerdict,
    pub faults: Vec<FaultOutcome>,
    pub faults_by_kind: BTreeMap<String, u32>,
    pub exits: Vec<Exit>,
    pub committed_backwards: u64,
    pub max_lag: u64,
    pub lag_threshold: u64,
    pub fenced_owners: u64,
    pub node_stats: Vec<NodeOutcome>,
    pub rss_bound_mb: u64,
    pub api_checked: Vec<String>,
    pub failures: Vec<String>,
    pub passed: bool,
    pub seconds: f64,
}

struct Active {
    fault: Fault,
    outcome: usize,
    victim: Option<usize>,
    filler: Option<PathBuf>,
    producer: Option<Child>,
}

pub struct Harness {
    o: Options,
    kafka: Service,
    s3: Service,
    cluster: Cluster,
    nodes: Vec<Node>,
    nft: Option<Nft>,
    tmpfs: Vec<PathBuf>,
    probe: OffsetsProbe,
    store: Store,
    /// Keeps the S3 client's runtime alive.
    _rt: tokio::runtime::Runtime,
    started: Instant,
    streams: Vec<Stream>,
    outcomes: Vec<FaultOutcome>,
    exits: Vec<Exit>,
    last_committed: BTreeMap<u32, u64>,
    committed_backwards: u64,
    max_lag: u64,
    lag_threshold: u64,
    /// Faults ended and not yet recovered from: (outcome index, when it ended).
    recovering: Vec<(usize, Instant)>,
    /// Faults begun and not yet recovered from (outcome indices): their peak lag is tracked.
    open_faults: Vec<usize>,
    /// Per node, when a full disk of its last ended: a node that ran out of space during the
    /// fault stops only once its restart budget is spent (seconds of backoff), which may be
    /// just after the space came back.
    disk_full_ended: BTreeMap<usize, Instant>,
}

/// How long past its time a fault aimed at one node waits for a node that owns partitions.
const VICTIM_WAIT_S: u64 = 30;
/// How long after its disk-full fault ended a node's exit still counts as caused by it.
const DISK_FULL_EXIT_GRACE: Duration = Duration::from_secs(30);

fn log(msg: impl AsRef<str>) {
    eprintln!("[chaos {}] {}", format_rfc3339(now_ms()), msg.as_ref());
}

impl Harness {
    pub fn start(o: Options) -> Result<Harness> {
        std::fs::create_dir_all(&o.work)?;
        let mut kafka = Service::kafka(&o.root, &o.work.join("kafka"));
        let mut s3 = Service::s3(&o.root, &o.work.join("s3"));
        log("starting Kafka and the S3 API");
        kafka.start()?;
        s3.start()?;
        let topic = format!("chaos-{}", o.seed);
        create_topic(&kafka.address, &topic, o.partitions)?;
        let group = format!("wtm-chaos-{}", o.seed);
        let bucket = format!("chaos-{}", o.seed);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        // Nothing may probe the instance-metadata address; the S3 API gets explicit keys.
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        std::env::set_var("AWS_ACCESS_KEY_ID", crate::services::S3_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", crate::services::S3_SECRET);
        let store = rt.block_on(Store::s3(&S3Settings {
            url: format!("s3://{bucket}/lake"),
            region: Some("us-east-1".into()),
            endpoint: Some(s3.address.clone()),
            path_style: true,
        }))?;
        // SeaweedFS creates a bucket on a first plain upload; the nodes' conditional snapshot
        // writes would find none.
        store.put("chaos-run.txt", format!("seed {}\n", o.seed).into_bytes())?;
        let root = nix::unistd::Uid::effective().is_root();
        let nft = if o.faults.iter().any(|f| f.kind == FaultKind::Partition) {
            match Nft::new() {
                Ok(n) => Some(n),
                Err(e) => {
                    log(format!("partitions will be skipped: {e:#}"));
                    None
                }
            }
        } else {
            None
        };
        let mut nodes: Vec<Node> = (0..o.nodes)
            .map(|i| {
                Node::new(
                    i,
                    o.work.join(format!("node-{i}")),
                    root.then_some(FIRST_GID + i as u32),
                )
            })
            .collect();
        let mut tmpfs = Vec::new();
        if root {
            // Every node's data on a small tmpfs of its own, so a disk-full fault can fill it.
            for n in &nodes {
                mount_tmpfs(&n.data_dir(), 1024)?;
                tmpfs.push(n.data_dir());
            }
        }
        let cluster = Cluster {
            wtm: o.wtm.clone(),
            bootstrap: kafka.address.clone(),
            topic: topic.clone(),
            group: group.clone(),
            s3_endpoint: s3.address.clone(),
            bucket,
            cluster_ports: (0..o.nodes).map(|_| free_port()).collect(),
        };
        log(format!("starting {} nodes", o.nodes));
        for n in &mut nodes {
            n.start(&cluster)?;
        }
        for n in &mut nodes {
            n.wait_ready(Duration::from_secs(120))?;
        }
        let probe = OffsetsProbe::new(&kafka.address, &topic, &group, o.partitions)?;
        let lag_threshold = ((o.rate * 10.0) as u64).max(1000);
        Ok(Harness {
            o,
            kafka,
            s3,
            cluster,
            nodes,
            nft,
            tmpfs,
            probe,
            store,
            _rt: rt,
            started: Instant::now(),
            streams: Vec::new(),
            outcomes: Vec::new(),
            exits: Vec::new(),
            last_committed: BTreeMap::new(),
            committed_backwards: 0,
            max_lag: 0,
            lag_threshold,
            recovering: Vec::new(),
            open_faults: Vec::new(),
            disk_full_ended: BTreeMap::new(),
        })
    }

    fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Start a producer of `stream` into the topic, paced to the wall clock.
    fn produce(&mut self, stream: Stream, name: &str) -> Result<Child> {
        let log = std::fs::File::create(self.o.work.join(format!("{name}.log")))?;
        let child = Command::new(&self.o.wtm)
            .args(stream.args())
            .args(["--realtime", "--kafka", &self.kafka.address, "--topic"])
            .arg(&self.cluster.topic)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.streams.push(stream);
        Ok(child)
    }

    fn stream(&self, seed: u64, rate: f64, seconds: u64) -> Stream {
        Stream {
            seed,
            hosts: self.o.hosts,
            rate,
            count: (rate * seconds as f64) as u64,
            start: format_rfc3339(now_ms() / 1000 * 1000),
            malformed_share: self.o.malformed_share,
            partitions: self.o.partitions,
        }
    }

    /// A victim for a fault aimed at one node: the drawn one if it is up and owns partitions,
    /// else the first that does.
    fn victim(&mut self, drawn: usize) -> Option<usize> {
        let owns = |n: &Node| {
            n.get("/v1/cluster")
                .ok()
                .and_then(|c| c["partitions"].as_array().map(|p| !p.is_empty()))
                .unwrap_or(false)
        };
        let order: Vec<usize> = (0..self.nodes.len())
            .map(|i| (drawn + i) % self.nodes.len())
            .collect();
        order
            .into_iter()
            .find(|&i| self.nodes[i].alive() && !self.nodes[i].frozen && owns(&self.nodes[i]))
    }

    /// Inject `fault`, or `None` when it is aimed at one node and no node owns partitions at
    /// this moment (a rebalance after the fault before, say): the caller offers it again a
    /// second later, for up to [`VICTIM_WAIT_S`] past its scheduled time. (Skipping at once
    /// left the quick profile's one kill un-injected whenever it followed a broker restart.)
    fn begin(&mut self, fault: &Fault) -> Result<Option<Active>> {
        let victim = match fault.victim {
            Some(d) => match self.victim(d) {
                Some(v) => Ok(Some(v)),
                None if self.elapsed() < (fault.at_s + VICTIM_WAIT_S) as f64 => return Ok(None),
                None => Err("no node owning partitions was up"),
            },
            None => Ok(None),
        };
        let at_s = self.elapsed();
        let outcome = self.outcomes.len();
        self.outcomes.push(FaultOutcome {
            kind: fault.kind,
            victim: None,
            at_s,
            hold_s: fault.hold_s,
            recovery_s: None,
            peak_lag: 0,
            skipped: None,
        });
        self.open_faults.push(outcome);
        // Held for `hold_s` from when it began, not from when it was due.
        let fault = Fault {
            at_s: at_s as u64,
            ..fault.clone()
        };
        let mut active = Active {
            fault: fault.clone(),
            outcome,
            victim: None,
            filler: None,
            producer: None,
        };
        let victim = match victim {
            Ok(v) => v,
            Err(why) => {
                self.outcomes[outcome].skipped = Some(why.into());
                return Ok(Some(active));
            }
        };
        active.victim = victim;
        self.outcomes[outcome].victim = victim;
        log(format!(
            "fault: {} victim {victim:?} for {} s",
            fault.kind.as_str(),
            fault.hold_s
        ));
        match fault.kind {
            FaultKind::Kill => self.nodes[victim.unwrap_or_default()].kill(),
            FaultKind::Zombie => self.nodes[victim.unwrap_or_default()].signal(Signal::SIGSTOP)?,
            FaultKind::BrokerRestart => self.kafka.stop()?,
            FaultKind::S3Outage => self.s3.stop()?,
            FaultKind::Partition => {
                let gid = self.nodes[victim.unwrap_or_default()].gid;
                match (&self.nft, gid) {
                    (Some(nft), Some(gid)) => nft.isolate(gid)?,
                    _ => self.outcomes[outcome].skipped = Some("needs root and nftables".into()),
                }
            }
            FaultKind::Overload => {
                let s = self.stream(self.o.seed + 1_000_000, self.o.overload_rate, fault.hold_s);
                active.producer = Some(self.produce(s, "overload-producer")?);
            }
            FaultKind::DiskFull => {
                let n = &self.nodes[victim.unwrap_or_default()];
                if self.tmpfs.contains(&n.data_dir()) {
                    active.filler = Some(fill(&n.data_dir())?);
                } else {
                    self.outcomes[outcome].skipped = Some("needs root (a tmpfs to fill)".into());
                }
            }
        }
        Ok(Some(active))
    }

    fn end(&mut self, mut a: Active) -> Result<()> {
        log(format!("fault over: {}", a.fault.kind.as_str()));
        let v = a.victim.unwrap_or_default();
        if self.outcomes[a.outcome].skipped.is_none() {
            match a.fault.kind {
                FaultKind::Kill => self.nodes[v].start(&self.cluster)?,
                FaultKind::Zombie => self.nodes[v].signal(Signal::SIGCONT)?,
                FaultKind::BrokerRestart => self.kafka.start()?,
                FaultKind::S3Outage => self.s3.start()?,
                FaultKind::Partition => {
                    if let Some(nft) = &self.nft {
                        nft.heal()?;
                    }
                }
                FaultKind::Overload => {
                    if let Some(mut p) = a.producer.take() {
                        let status = p.wait()?;
                        if !status.success() {
                            bail!("the overload producer failed (log: overload-producer.log)");
                        }
                    }
                }
                FaultKind::DiskFull => {
                    if let Some(f) = a.filler.take() {
                        std::fs::remove_file(f)?;
                    }
                    self.disk_full_ended.insert(v, Instant::now());
                    // It stopped for want of space (as it should): start it again.
                    let n = &mut self.nodes[v];
                    if std::mem::take(&mut n.held_down) && !n.alive() {
                        n.start(&self.cluster)?;
                    }
                }
            }
        }
        self.recovering.push((a.outcome, Instant::now()));
        Ok(())
    }

    /// Offsets: committed never backwards, lag and recovery.
    fn sample_offsets(&mut self) {
        let (Ok(ends), Ok(committed)) = (self.probe.end_offsets(), self.probe.committed()) else {
            return; // the broker is away
        };
        for (&p, &c) in &committed {
            if let Some(&last) = self.last_committed.get(&p) {
                if c < last {
                    log(format!(
                        "partition {p}: committed offset went back from {last} to {c}"
                    ));
                    self.committed_backwards += 1;
                }
            }
            self.last_committed.insert(p, c);
        }
        let lag: u64 = ends
            .iter()
            .map(|(p, e)| e.saturating_sub(committed.get(p).copied().unwrap_or(0)))
            .sum();
        self.max_lag = self.max_lag.max(lag);
        for &i in &self.open_faults {
            self.outcomes[i].peak_lag = self.outcomes[i].peak_lag.max(lag);
        }
        if lag <= self.lag_threshold {
            for (i, ended) in self.recovering.drain(..) {
                self.outcomes[i].recovery_s = Some(ended.elapsed().as_secs_f64());
                self.open_faults.retain(|&j| j != i);
            }
        }
    }

    /// Restart a node found gone (as an orchestrator would), noting whether a fault explains it.
    fn watchdog(&mut self, active: &[Active]) -> Result<()> {
        for i in 0..self.nodes.len() {
            let killed = active
                .iter()
                .any(|a| a.fault.kind == FaultKind::Kill && a.victim == Some(i));
            if killed || self.nodes[i].held_down || self.nodes[i].alive() {
                continue;
            }
            let during: Vec<FaultKind> = active.iter().map(|a| a.fault.kind).collect();
            let disk_full_now = active
                .iter()
                .any(|a| a.fault.kind == FaultKind::DiskFull && a.victim == Some(i));
            let expected = disk_full_now
                || self
                    .disk_full_ended
                    .get(&i)
                    .is_some_and(|t| t.elapsed() < DISK_FULL_EXIT_GRACE);
            log(format!(
                "node {i} exited (during {during:?}); restarting it"
            ));
            self.exits.push(Exit {
                node: i,
                at_s: self.elapsed(),
                during,
                expected,
            });
            // While its disk is still full it would only fail again: wait for the space.
            if disk_full_now {
                self.nodes[i].held_down = true;
            } else {
                self.nodes[i].start(&self.cluster)?;
            }
        }
        Ok(())
    }

    /// Play the schedule while the steady producer runs.
    pub fn play(&mut self) -> Result<()> {
        let steady = self.stream(self.o.seed, self.o.rate, self.o.produce_s);
        self.started = Instant::now();
        let mut producer = Some(self.produce(steady, "producer")?);
        let mut pending: Vec<Fault> = self.o.faults.clone();
        pending.sort_by_key(|f| f.at_s);
        pending.reverse();
        let mut active: Vec<Active> = Vec::new();
        let mut tick = 0u64;
        loop {
            let now = self.elapsed();
            let mut not_yet = Vec::new();
            while pending.last().is_some_and(|f| (f.at_s as f64) <= now) {
                let f = pending.pop().expect("checked");
                match self.begin(&f)? {
                    Some(a) => active.push(a),
                    None => not_yet.push(f),
                }
            }
            // Due already, so they go where the next tick looks first.
            pending.extend(not_yet.into_iter().rev());
            let (over, still): (Vec<Active>, Vec<Active>) = active
                .into_iter()
                .partition(|a| (a.fault.at_s + a.fault.hold_s) as f64 <= now);
            active = still;
            for a in over {
                self.end(a)?;
            }
            for n in &mut self.nodes {
                n.sample_rss();
            }
            if tick.is_multiple_of(2) && !self.kafka_down(&active) {
                self.sample_offsets();
            }
            self.watchdog(&active)?;
            if let Some(p) = producer.as_mut() {
                if let Some(status) = p.try_wait()? {
                    if !status.success() {
                        bail!("the producer failed (log: producer.log)");
                    }
                    log("the producer is done");
                    producer = None;
                }
            }
            if producer.is_none() && pending.is_empty() && active.is_empty() {
                return Ok(());
            }
            tick += 1;
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    fn kafka_down(&self, active: &[Active]) -> bool {
        active
            .iter()
            .any(|a| a.fault.kind == FaultKind::BrokerRestart)
    }

    /// Wait until the group has committed everything, then until the lake is exact (or the
    /// time is up), and judge it once more after a pause: a late write by a zombie shows.
    pub fn drain(&mut self, timeout: Duration) -> Result<(LakeVerdict, Truth, BTreeMap<u32, u64>)> {
        log("draining: waiting for every offset to be committed");
        let deadline = Instant::now() + timeout;
        let ends = self.probe.end_offsets()?;
        while Instant::now() < deadline {
            self.watchdog(&[])?;
            for n in &mut self.nodes {
                n.sample_rss();
            }
            self.sample_offsets();
            if self
                .probe
                .committed()
                .is_ok_and(|c| ends.iter().all(|(p, e)| c.get(p) == Some(e)))
            {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        let mut truth = Truth::default();
        for (i, s) in self.streams.clone().iter().enumerate() {
            truth.add(
                &self.o.wtm,
                s,
                &self.o.work.join(format!("truth-{i}.jsonl")),
                WINDOW_MS,
            )?;
        }
        log(format!(
            "ground truth: {} records, {} events, {} malformed; waiting for the lake",
            truth.records, truth.events, truth.malformed
        ));
        let mut verdict = LakeVerdict::default();
        while Instant::now() < deadline {
            self.watchdog(&[])?;
            for n in &mut self.nodes {
                n.sample_rss();
            }
            match LakeRows::read(&self.store) {
                Ok(rows) => {
                    verdict = judge(&rows, &truth, &ends, WINDOW_MS);
                    if verdict.exact() {
                        break;
                    }
                }
                Err(e) => log(format!("lake not readable yet: {e:#}")),
            }
            std::thread::sleep(Duration::from_secs(3));
        }
        std::thread::sleep(Duration::from_secs(8));
        let rows = LakeRows::read(&self.store)?;
        if verdict.exact() {
            verdict = judge(&rows, &truth, &ends, WINDOW_MS);
        }
        Ok((verdict, truth, ends))
    }

    /// Every node's API against the lake: the overview's totals, and a few sites' series.
    fn check_api(&mut self, truth: &Truth, rows: &LakeRows) -> (Vec<String>, Vec<String>) {
        let (mut checked, mut failures) = (Vec::new(), Vec::new());
        let totals = rows.window_totals();
        // The busiest site, a middling one and the quietest.
        let mut per_host: BTreeMap<&str, u64> = BTreeMap::new();
        for ((h, _), n) in &truth.windows {
            *per_host.entry(h).or_default() += n;
        }
        let mut by_size: Vec<(&str, u64)> = per_host.into_iter().collect();
        by_size.sort_by_key(|&(h, n)| (std::cmp::Reverse(n), h));
        let hosts: Vec<String> = by_size.iter().map(|(h, _)| h.to_string()).collect();
        let sample: Vec<String> = [0, hosts.len() / 2, hosts.len().saturating_sub(1)]
            .iter()
            .filter_map(|&i| hosts.get(i).cloned())
            .collect();
        let first = truth.windows.keys().map(|(_, w)| *w).min().unwrap_or(0);
        let last = truth.windows.keys().map(|(_, w)| *w).max().unwrap_or(0) + WINDOW_MS;
        for n in &mut self.nodes {
            if !n.alive() {
                failures.push(format!("node {} is not running at the end", n.index));
                continue;
            }
            let mut check = |what: String, ok: bool| {
                if ok {
                    checked.push(what);
                } else {
                    failures.push(what);
                }
            };
            match n.get("/v1/overview") {
                Ok(ov) => {
                    let got = (
                        ov["events"].as_u64(),
                        ov["invalid_total"].as_u64(),
                        ov["late"].as_u64(),
                        ov["partial"].as_bool(),
                    );
                    let want = (
                        Some(truth.events),
                        Some(truth.malformed),
                        Some(rows.late.len() as u64),
                        Some(false),
                    );
                    check(
                        format!(
                            "node {} overview (events, invalid, late, partial) {got:?} == {want:?}",
                            n.index
                        ),
                        got == want,
                    );
                }
                Err(e) => check(format!("node {} overview: {e:#}", n.index), false),
            }
            for host in &sample {
                let path = format!(
                    "/v1/hosts/{host}/windows?from={}&to={}",
                    format_rfc3339(first),
                    format_rfc3339(last)
                );
                let series = n.get(&path).map(|s| {
                    s["windows"]
                        .as_array()
                        .map(|ws| {
                            ws.iter()
                                .filter_map(|w| {
                                    Some((
                                        parse_rfc3339(w["start"].as_str()?)?,
                                        w["requests"].as_u64()?,
                                    ))
                                })
                                .collect::<BTreeMap<i64, u64>>()
                        })
                        .unwrap_or_default()
                });
                let want: BTreeMap<i64, u64> = totals
                    .iter()
                    .filter(|((h, _), _)| h == host)
                    .map(|((_, w), r)| (*w, *r))
                    .collect();
                match series {
                    Ok(got) => check(
                        format!(
                            "node {} series of {host}: {} windows as in the lake",
                            n.index,
                            want.len()
                        ),
                        got == want,
                    ),
                    Err(e) => check(format!("node {} series of {host}: {e:#}", n.index), false),
                }
            }
        }
        (checked, failures)
    }

    fn fenced_owners(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(|n| {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(5)))
                    .build()
                    .into();
                let text = agent
                    .get(&n.url("/metrics"))
                    .call()
                    .ok()?
                    .body_mut()
                    .read_to_string()
                    .ok()?;
                Some(
                    text.lines()
                        .filter(|l| l.starts_with("wtm_owner_fenced_total"))
                        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                        .sum::<f64>() as u64,
                )
            })
            .sum()
    }

    pub fn finish(mut self, timeout: Duration) -> Result<Report> {
        let (lake, truth, _) = self.drain(timeout)?;
        let rows = LakeRows::read(&self.store)?;
        let (api_checked, mut failures) = self.check_api(&truth, &rows);
        if !lake.exact() {
            failures.push(format!("the lake is not exact: {lake:?}"));
        }
        if self.committed_backwards > 0 {
            failures.push(format!(
                "committed offsets went backwards {} times",
                self.committed_backwards
            ));
        }
        for e in self.exits.iter().filter(|e| !e.expected) {
            failures.push(format!(
                "node {} exited at {:.0} s during {:?}",
                e.node, e.at_s, e.during
            ));
        }
        let node_stats: Vec<NodeOutcome> = self
            .nodes
            .iter()
            .map(|n| NodeOutcome {
                node: n.index,
                peak_rss_mb: n.peak_rss_kib as f64 / 1024.0,
                starts: n.starts,
            })
            .collect();
        for n in &node_stats {
            if n.peak_rss_mb > self.o.rss_bound_mb as f64 {
                failures.push(format!(
                    "node {} peaked at {:.0} MB, over the {} MB bound",
                    n.node, n.peak_rss_mb, self.o.rss_bound_mb
                ));
            }
        }
        for f in &self.outcomes {
            if f.skipped.is_none() && f.recovery_s.is_none() {
                failures.push(format!(
                    "no recovery after {} at {:.0} s",
                    f.kind.as_str(),
                    f.at_s
                ));
            }
        }
        let mut faults_by_kind = BTreeMap::new();
        for f in self.outcomes.iter().filter(|f| f.skipped.is_none()) {
            *faults_by_kind
                .entry(f.kind.as_str().to_owned())
                .or_default() += 1;
        }
        let report = Report {
            profile: self.o.profile.clone(),
            seed: self.o.seed,
            nodes: self.o.nodes,
            partitions: self.o.partitions,
            records: truth.records,
            events: truth.events,
            malformed: truth.malformed,
            lake,
            faults: self.outcomes.clone(),
            faults_by_kind,
            exits: self.exits.clone(),
            committed_backwards: self.committed_backwards,
            max_lag: self.max_lag,
            lag_threshold: self.lag_threshold,
            fenced_owners: self.fenced_owners(),
            node_stats,
            rss_bound_mb: self.o.rss_bound_mb,
            api_checked,
            passed: failures.is_empty(),
            failures,
            seconds: self.elapsed(),
        };
        Ok(report)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Nodes first (they hold the tmpfs mounts open), then the mounts.
        self.nodes.clear();
        for d in &self.tmpfs {
            unmount(d);
        }
    }
}

/// The report as a table for people.
pub fn table(r: &Report) -> String {
    let mut s = String::new();
    let line = |s: &mut String, k: &str, v: String| s.push_str(&format!("{k:<28} {v}\n"));
    line(
        &mut s,
        "profile / seed",
        format!("{} / {}", r.profile, r.seed),
    );
    line(
        &mut s,
        "nodes / partitions",
        format!("{} / {}", r.nodes, r.partitions),
    );
    line(
        &mut s,
        "records (events, malformed)",
        format!("{} ({}, {})", r.records, r.events, r.malformed),
    );
    line(
        &mut s,
        "lost / duplicated (windows)",
        format!("{} / {}", r.lake.lost, r.lake.duplicated),
    );
    line(
        &mut s,
        "lost / duplicated (records)",
        format!("{} / {}", r.lake.records_lost, r.lake.records_duplicated),
    );
    line(
        &mut s,
        "late / dead letters",
        format!(
            "{} / {} of {}",
            r.lake.late, r.lake.invalid_found, r.lake.invalid_expected
        ),
    );
    line(
        &mut s,
        "committed offsets backwards",
        r.committed_backwards.to_string(),
    );
    line(&mut s, "owners fenced", r.fenced_owners.to_string());
    line(
        &mut s,
        "max lag (threshold)",
        format!("{} ({})", r.max_lag, r.lag_threshold),
    );
    s.push_str(&format!(
        "{:<16} {:>6} {:>7} {:>6} {:>10} {:>9}\n",
        "fault", "victim", "at s", "hold s", "recovery s", "peak lag"
    ));
    for f in &r.faults {
        let rec = match (&f.skipped, f.recovery_s) {
            (Some(why), _) => format!("skipped: {why}"),
            (None, Some(t)) => format!("{t:.1}"),
            (None, None) => "never".into(),
        };
        let victim = f.victim.map_or("-".into(), |v| v.to_string());
        s.push_str(&format!(
            "{:<16} {:>6} {:>7.0} {:>6} {:>10} {:>9}\n",
            f.kind.as_str(),
            victim,
            f.at_s,
            f.hold_s,
            rec,
            f.peak_lag
        ));
    }
    for n in &r.node_stats {
        s.push_str(&format!(
            "node {}: peak RSS {:.0} MB (bound {} MB), started {} times\n",
            n.node, n.peak_rss_mb, r.rss_bound_mb, n.starts
        ));
    }
    for e in &r.exits {
        s.push_str(&format!(
            "node {} exited at {:.0} s during {:?} (expected: {})\n",
            e.node, e.at_s, e.during, e.expected
        ));
    }
    s.push_str(&format!("api checks passed: {}\n", r.api_checked.len()));
    for f in &r.failures {
        s.push_str(&format!("FAILED: {f}\n"));
    }
    s.push_str(if r.passed { "PASSED\n" } else { "FAILED\n" });
    s
}
