//! The built-in traffic generator: realistic access-log traffic as a pure function of
//! (seed, partition, offset).
//!
//! Each partition is a stream of seconds; second `s` of partition `p` holds a number of events
//! drawn from the hosts keyed to `p` (skewed popularity, each host with its own diurnal phase and
//! any injected anomaly), and event `j` of that second is drawn from an RNG seeded by
//! `(seed, p, s, j)`. So a node can resume a partition at any offset and produce the same bytes,
//! and `wtm generate` (the partitions merged second by second) writes exactly what a node ingests.

use crate::event::{Event, Format};
use crate::time::{format_clf, format_rfc3339};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::sync::Arc;

const SECOND_MS: i64 = 1000;
const DAY_MS: f64 = 86_400_000.0;
/// Length of an injected anomaly.
pub const ANOMALY_MS: i64 = 5 * 60_000;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratorSpec {
    pub seed: u64,
    pub hosts: usize,
    /// Mean events per second over all hosts (the diurnal shape moves it ±50%).
    pub rate: f64,
    /// Event-time origin (UTC ms).
    pub start_ms: i64,
    pub partitions: u32,
    /// Number of injected anomalies.
    pub anomalies: usize,
    /// Their kinds, in turn (empty: the classic four, [`AnomalyKind::CLASSIC`]).
    #[serde(default)]
    pub kinds: Vec<AnomalyKind>,
    /// Their magnitudes: each kind at each of these in turn, after a round of every kind
    /// (empty: strong only).
    #[serde(default)]
    pub magnitudes: Vec<Magnitude>,
    /// Share of records written malformed (truncated), as real log streams carry some.
    #[serde(default)]
    pub malformed_share: f64,
    /// Traffic on Saturdays and Sundays (UTC) as a share of weekdays' (1: no weekly cycle);
    /// each site's own share is drawn around it ([`GeneratorSpec::DEFAULT_WEEKEND`]).
    #[serde(default = "GeneratorSpec::default_weekend")]
    pub weekend: f64,
    /// Event-time length (ms); None for an endless stream.
    pub duration_ms: Option<i64>,
    /// Total events over all partitions (in `wtm generate`'s merged order); None for no limit.
    pub count: Option<u64>,
}

impl GeneratorSpec {
    /// Weekends at 70% of weekdays (each site between 55% and 85%).
    pub const DEFAULT_WEEKEND: f64 = 0.7;

    fn default_weekend() -> f64 {
        GeneratorSpec::DEFAULT_WEEKEND
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// More of the same traffic.
    TrafficSpike,
    TrafficDrop,
    /// A share of requests answered 5xx.
    ErrorBurst,
    /// Every request slower.
    LatencyDegradation,
    /// Extra requests from one network (203.0.113.0/24) with a scraper's user agent.
    BotSurge,
    /// Extra requests to one path.
    PathHotspot,
    /// One popular path (`/`) slow: the site's p99 moves through it alone.
    SlowEndpoint,
    /// Extra requests for paths that do not exist, answered 404 (a scanner).
    NotFoundStorm,
    /// Latency rising steadily from normal to its worst over the anomaly.
    LatencyCreep,
}

impl AnomalyKind {
    /// The kinds injected in turn by default (and before the others existed).
    pub const CLASSIC: [AnomalyKind; 4] = [
        AnomalyKind::TrafficSpike,
        AnomalyKind::TrafficDrop,
        AnomalyKind::ErrorBurst,
        AnomalyKind::LatencyDegradation,
    ];
    pub const ALL: [AnomalyKind; 9] = [
        AnomalyKind::TrafficSpike,
        AnomalyKind::TrafficDrop,
        AnomalyKind::ErrorBurst,
        AnomalyKind::LatencyDegradation,
        AnomalyKind::BotSurge,
        AnomalyKind::PathHotspot,
        AnomalyKind::SlowEndpoint,
        AnomalyKind::NotFoundStorm,
        AnomalyKind::LatencyCreep,
    ];

    /// Its name in labels, configs and flags (`traffic_spike`, `bot_surge`, …).
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::TrafficSpike => "traffic_spike",
            AnomalyKind::TrafficDrop => "traffic_drop",
            AnomalyKind::ErrorBurst => "error_burst",
            AnomalyKind::LatencyDegradation => "latency_degradation",
            AnomalyKind::BotSurge => "bot_surge",
            AnomalyKind::PathHotspot => "path_hotspot",
            AnomalyKind::SlowEndpoint => "slow_endpoint",
            AnomalyKind::NotFoundStorm => "not_found_storm",
            AnomalyKind::LatencyCreep => "latency_creep",
        }
    }

    pub fn parse(s: &str) -> Option<AnomalyKind> {
        AnomalyKind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Extra requests on top of the site's usual ones, as a share of them (0: none).
    fn extra_share(self, m: Magnitude) -> f64 {
        match self {
            AnomalyKind::BotSurge | AnomalyKind::PathHotspot | AnomalyKind::NotFoundStorm => {
                m.pick(1.0, 2.0, 4.0)
            }
            _ => 0.0,
        }
    }
}

/// How strong an injected anomaly is. `strong` is what the classic kinds always were.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Magnitude {
    Weak,
    Medium,
    #[default]
    Strong,
}

impl Magnitude {
    pub const ALL: [Magnitude; 3] = [Magnitude::Weak, Magnitude::Medium, Magnitude::Strong];

    pub fn name(self) -> &'static str {
        match self {
            Magnitude::Weak => "weak",
            Magnitude::Medium => "medium",
            Magnitude::Strong => "strong",
        }
    }

    pub fn parse(s: &str) -> Option<Magnitude> {
        Magnitude::ALL.into_iter().find(|m| m.name() == s)
    }

    fn pick(self, weak: f64, medium: f64, strong: f64) -> f64 {
        match self {
            Magnitude::Weak => weak,
            Magnitude::Medium => medium,
            Magnitude::Strong => strong,
        }
    }
}

/// One injected anomaly: the label line `wtm generate --labels` writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnomalyLabel {
    pub host: String,
    pub kind: AnomalyKind,
    #[serde(default)]
    pub magnitude: Magnitude,
    /// RFC 3339.
    pub start: String,
    pub end: String,
    #[serde(skip)]
    pub start_ms: i64,
    #[serde(skip)]
    pub end_ms: i64,
    #[serde(skip)]
    host_index: usize,
}

/// The epoch was a Thursday: day 2 and 3 of every 7 after it are Saturday and Sunday.
fn is_weekend(day: f64) -> bool {
    (2..4).contains(&(day.floor() as i64).rem_euclid(7))
}

/// One partition's hosts' rates summed, so a second's total is one sine, not one per host: each
/// host adds `share · (1 + ½ sin τ(day − phase))`, times its weekend factor on weekends.
struct PartitionRates {
    /// Σ share, Σ share · cos τ·phase, Σ share · sin τ·phase.
    weekday: [f64; 3],
    /// The same, each host's terms times its weekend factor.
    weekend: [f64; 3],
    /// Hosts of the partition with an anomaly scheduled, each once.
    anomalous: Vec<usize>,
}

impl PartitionRates {
    fn new(
        partition: u32,
        hosts_here: &[usize],
        hosts: &[HostProfile],
        anomalies: &[AnomalyLabel],
    ) -> Self {
        let (mut weekday, mut weekend) = ([0.0; 3], [0.0; 3]);
        for &h in hosts_here {
            let host = &hosts[h];
            let (sin, cos) = (std::f64::consts::TAU * host.phase).sin_cos();
            let terms = [host.share, host.share * cos, host.share * sin];
            for i in 0..3 {
                weekday[i] += terms[i];
                weekend[i] += terms[i] * host.weekend;
            }
        }
        let mut anomalous: Vec<usize> = anomalies
            .iter()
            .map(|a| a.host_index)
            .filter(|&h| hosts[h].partition == partition)
            .collect();
        anomalous.sort_unstable();
        anomalous.dedup();
        PartitionRates {
            weekday,
            weekend,
            anomalous,
        }
    }
}

struct HostProfile {
    name: String,
    /// Share of the total rate.
    share: f64,
    /// Offset of the daily peak, as a fraction of a day.
    phase: f64,
    /// Its traffic on weekends as a share of weekdays'.
    weekend: f64,
    clients: u64,
    partition: u32,
}

/// SplitMix64: tiny, fast, and stable forever (the generator's output is an interface).
#[derive(Clone)]
struct Rng(u64);

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    fn from_parts(parts: &[u64]) -> Rng {
        Rng(parts
            .iter()
            .fold(0x243f_6a88_85a3_08d3, |acc, p| mix(acc ^ p)))
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
    /// Log-uniform over 0..n: a Zipf-like skew (rank r has weight ~1/(r+1)).
    fn skewed(&mut self, n: u64) -> u64 {
        (((n as f64 + 1.0).powf(self.unit())) as u64)
            .saturating_sub(1)
            .min(n - 1)
    }
    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.unit().max(1e-12), self.unit());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
}

const SUBDOMAINS: [&str; 10] = [
    "www", "shop", "api", "blog", "docs", "news", "app", "cdn", "forum", "status",
];
const BRANDS: [&str; 12] = [
    "acme",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "stark",
    "wayne",
    "tyrell",
    "soylent",
    "wonka",
    "cyberdyne",
    "aperture",
];
const TLDS: [&str; 4] = ["com", "io", "net", "org"];
const BROWSERS: [&str; 6] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.0.0",
];
const CRAWLERS: [&str; 6] = [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)",
    "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
];
const EXTERNAL_REFERRERS: [&str; 5] = [
    "https://www.google.com/",
    "https://www.bing.com/",
    "https://news.ycombinator.com/",
    "https://t.co/",
    "https://www.reddit.com/",
];
const PATHS_PER_HOST: u64 = 300;
/// What a scanner asks for (a 404 storm).
const SCANNED_PATHS: [&str; 8] = [
    "wp-login.php",
    "wp-admin/setup-config.php",
    ".env",
    ".git/config",
    "phpmyadmin/index.php",
    "admin/config.php",
    "xmlrpc.php",
    "cgi-bin/luci",
];

/// Stable partition of a host name (FNV-1a), as a Kafka producer keying by host would do.
pub fn partition_of(host: &str, partitions: u32) -> u32 {
    (mix(crate::hash::fnv1a(host.as_bytes())) % partitions.max(1) as u64) as u32
}

/// The generator: host profiles and anomaly schedule derived from a [`GeneratorSpec`].
pub struct Generator {
    spec: GeneratorSpec,
    hosts: Vec<HostProfile>,
    by_partition: Vec<Vec<usize>>,
    /// Per partition, what a second's total rate needs without visiting every host.
    rates: Vec<PartitionRates>,
    anomalies: Vec<AnomalyLabel>,
    /// Per-partition end offsets when `count` limits the run.
    end_offsets: Option<Vec<u64>>,
}

impl Generator {
    pub fn new(spec: GeneratorSpec) -> Generator {
        let mut rng = Rng::from_parts(&[spec.seed, 0x686f_7374]);
        let n = spec.hosts.max(1);
        // Popularity ~ 1/rank (Zipf, s = 1).
        let harmonic: f64 = (1..=n).map(|r| 1.0 / r as f64).sum();
        let brand_offset = rng.below(BRANDS.len() as u64) as usize;
        let hosts: Vec<HostProfile> = (0..n)
            .map(|i| {
                let sub = SUBDOMAINS[i % SUBDOMAINS.len()];
                let brand = BRANDS[(i / SUBDOMAINS.len() + brand_offset) % BRANDS.len()];
                let round = i / (SUBDOMAINS.len() * BRANDS.len());
                let tld = TLDS[(i / SUBDOMAINS.len()) % TLDS.len()];
                let name = if round == 0 {
                    format!("{sub}.{brand}.{tld}")
                } else {
                    format!("{sub}.{brand}{round}.{tld}")
                };
                let share = (1.0 / (i + 1) as f64) / harmonic;
                HostProfile {
                    partition: partition_of(&name, spec.partitions),
                    name,
                    share,
                    phase: rng.unit(),
                    // Drawn apart from `rng`, so every other property is what it was before
                    // sites had weeks.
                    weekend: (1.0
                        - (1.0 - spec.weekend)
                            * (0.5 + Rng::from_parts(&[spec.seed, i as u64, 0x7765_656b]).unit()))
                    .max(0.0),
                    clients: 50 + (share * 200_000.0) as u64,
                }
            })
            .collect();
        let mut by_partition = vec![Vec::new(); spec.partitions.max(1) as usize];
        for (i, h) in hosts.iter().enumerate() {
            by_partition[h.partition as usize].push(i);
        }
        let anomalies = schedule_anomalies(&spec, &hosts, &mut rng);
        let rates = by_partition
            .iter()
            .enumerate()
            .map(|(p, hs)| PartitionRates::new(p as u32, hs, &hosts, &anomalies))
            .collect();
        let mut g = Generator {
            spec,
            hosts,
            by_partition,
            rates,
            anomalies,
            end_offsets: None,
        };
        g.end_offsets = g.spec.count.map(|c| g.end_offsets_for(c));
        g
    }

    pub fn anomalies(&self) -> &[AnomalyLabel] {
        &self.anomalies
    }

    /// Last second (exclusive) of the stream, if the duration bounds it.
    fn end_second(&self) -> Option<i64> {
        self.spec
            .duration_ms
            .map(|d| (d + SECOND_MS - 1) / SECOND_MS)
    }

    fn host_rate(&self, h: usize, t_ms: i64) -> f64 {
        let mut rate = self.host_rate_without_anomalies(h, t_ms);
        for a in &self.anomalies {
            if a.host_index == h && (a.start_ms..a.end_ms).contains(&t_ms) {
                let m = a.magnitude;
                rate *= match a.kind {
                    AnomalyKind::TrafficSpike => m.pick(2.0, 3.0, 5.0),
                    AnomalyKind::TrafficDrop => m.pick(0.5, 0.3, 0.1),
                    k => 1.0 + k.extra_share(m),
                };
            }
        }
        rate
    }

    fn anomaly_at(&self, h: usize, t_ms: i64) -> Option<&AnomalyLabel> {
        self.anomalies
            .iter()
            .find(|a| a.host_index == h && (a.start_ms..a.end_ms).contains(&t_ms))
    }

    /// Hosts of partition `p` with their cumulative rates during second `s`.
    fn second_plan(&self, p: u32, s: i64) -> (Vec<(usize, f64)>, u64) {
        let mid = self.spec.start_ms + s * SECOND_MS + SECOND_MS / 2;
        let mut total = 0.0;
        let plan: Vec<(usize, f64)> = self.by_partition[p as usize]
            .iter()
            .map(|&h| {
                total += self.host_rate(h, mid);
                (h, total)
            })
            .collect();
        // The plan picks hosts; the count is `second_count`'s, so a seek lands where reading
        // from the start would have.
        (plan, self.second_count(p, s))
    }

    /// How many events second `s` of partition `p` holds (`second_plan`'s count too).
    ///
    /// Seeking a restarted partition, counting a backlog and finding a bounded stream's end
    /// walk every second from the start, so this must not visit every host: with 30,000 hosts
    /// a partition, a restart after five minutes spent most of a second here, after a day an
    /// hour. The hosts' diurnal sines sum to one sine ([`PartitionRates`]); hosts with an
    /// anomaly under way are taken one by one.
    fn second_count(&self, p: u32, s: i64) -> u64 {
        let mid = self.spec.start_ms + s * SECOND_MS + SECOND_MS / 2;
        let rates = &self.rates[p as usize];
        let day = mid as f64 / DAY_MS;
        let [share, cos, sin] = if is_weekend(day) {
            rates.weekend
        } else {
            rates.weekday
        };
        let (sin_day, cos_day) = (std::f64::consts::TAU * day).sin_cos();
        // sin(τ(day − φ)) = sin τday · cos τφ − cos τday · sin τφ
        let mut total = self.spec.rate * (share + 0.5 * (sin_day * cos - cos_day * sin));
        for &h in &rates.anomalous {
            if self.anomaly_at(h, mid).is_some() {
                total += self.host_rate(h, mid) - self.host_rate_without_anomalies(h, mid);
            }
        }
        self.count_of(p, s, total)
    }

    fn host_rate_without_anomalies(&self, h: usize, t_ms: i64) -> f64 {
        let p = &self.hosts[h];
        let day = t_ms as f64 / DAY_MS;
        let diurnal = 1.0 + 0.5 * (std::f64::consts::TAU * (day - p.phase)).sin();
        let weekly = if is_weekend(day) { p.weekend } else { 1.0 };
        self.spec.rate * p.share * diurnal * weekly
    }

    /// A second's count from its expected total (its fraction decided by the seeded draw).
    fn count_of(&self, p: u32, s: i64, total: f64) -> u64 {
        let mut rng = Rng::from_parts(&[self.spec.seed, p as u64, s as u64, 0x0063_6f75_6e74]);
        total.floor() as u64 + u64::from(rng.unit() < total.fract())
    }

    /// Render the record at `offset` of partition `p` as a line (with its newline), malformed for
    /// a `malformed_share` of offsets.
    pub fn render(&self, p: u32, offset: u64, e: &Event, format: Format, out: &mut Vec<u8>) {
        let start = out.len();
        write_line(out, e, format);
        if self.spec.malformed_share > 0.0 {
            let mut rng = Rng::from_parts(&[self.spec.seed, p as u64, offset, 0x0062_6164]);
            if rng.unit() < self.spec.malformed_share {
                let len = out.len() - start;
                out.truncate(start + len / 2);
                out.push(b'\n');
            }
        }
    }

    /// The offset at which partition `p` ends, if the stream is bounded.
    pub fn end_offset(&self, p: u32) -> Option<u64> {
        if let Some(ends) = &self.end_offsets {
            return Some(ends[p as usize]);
        }
        let end_s = self.end_second()?;
        Some((0..end_s).map(|s| self.second_count(p, s)).sum())
    }

    /// Per-partition ends when the first `count` events of the merged order are taken.
    fn end_offsets_for(&self, count: u64) -> Vec<u64> {
        let parts = self.spec.partitions.max(1);
        let mut ends = vec![0u64; parts as usize];
        let mut left = count;
        let mut s = 0i64;
        while left > 0 && self.end_second().is_none_or(|e| s < e) {
            for p in 0..parts {
                let n = self.second_count(p, s).min(left);
                ends[p as usize] += n;
                left -= n;
            }
            s += 1;
        }
        ends
    }

    /// A cursor over partition `p` starting at `offset`.
    pub fn cursor(self: &Arc<Self>, p: u32, offset: u64) -> Cursor {
        if self.by_partition[p as usize].is_empty() {
            // No host is keyed to this partition (few hosts, many partitions): an empty stream,
            // rather than a search for an event that never comes.
            let (plan, n) = (Vec::new(), 0);
            return Cursor {
                g: Arc::clone(self),
                p,
                s: 0,
                j: 0,
                plan,
                n,
                offset,
                end: Some(offset),
            };
        }
        let mut s = 0i64;
        let mut before = 0u64;
        loop {
            let n = self.second_count(p, s);
            if before + n > offset || self.end_second().is_some_and(|e| s >= e) {
                let (plan, n) = self.second_plan(p, s);
                return Cursor {
                    g: Arc::clone(self),
                    p,
                    s,
                    j: offset - before,
                    plan,
                    n,
                    offset,
                    end: self.end_offset(p),
                };
            }
            before += n;
            s += 1;
        }
    }

    /// Event `j` of `n` in second `s` of partition `p`.
    fn event(&self, p: u32, s: i64, j: u64, n: u64, plan: &[(usize, f64)]) -> Event {
        let mut rng = Rng::from_parts(&[self.spec.seed, p as u64, s as u64, j]);
        let total = plan.last().map_or(0.0, |x| x.1);
        let target = rng.unit() * total;
        let idx = plan
            .partition_point(|&(_, c)| c <= target)
            .min(plan.len() - 1);
        let h = plan[idx].0;
        let host = &self.hosts[h];
        let mut ts = self.spec.start_ms + s * SECOND_MS + (j as i64 * SECOND_MS) / n.max(1) as i64;
        let anomaly = self.anomaly_at(h, ts).map(|a| {
            let progress = (ts - a.start_ms) as f64 / (a.end_ms - a.start_ms) as f64;
            (a.kind, a.magnitude, progress)
        });
        let kind = anomaly.map(|a| a.0);
        // The anomaly's own extra requests (a surge, a hot spot, a scan), drawn apart.
        let extra = anomaly.is_some_and(|(k, m, _)| {
            let share = k.extra_share(m);
            share > 0.0 && rng.unit() < share / (1.0 + share)
        });
        // Out-of-order arrivals: most within a few seconds, a few far behind (late).
        let u = rng.unit();
        if u < 0.0005 {
            ts -= 20_000 + rng.below(70_000) as i64;
        } else if u < 0.03 {
            ts -= rng.below(4_000) as i64;
        }
        ts = ts.max(0);
        let bot = rng.unit() < 0.07;
        let k = rng.skewed(PATHS_PER_HOST);
        let mut path = path_for(k, &mut rng);
        let api = k % 7 == 5;
        let method = if api {
            rng.pick(&["GET", "GET", "GET", "POST", "POST", "PUT", "DELETE"])
        } else {
            let m = rng.unit();
            if m < 0.96 {
                "GET"
            } else if m < 0.98 {
                "HEAD"
            } else if m < 0.99 {
                "OPTIONS"
            } else {
                "POST"
            }
        };
        let burst = match anomaly {
            Some((AnomalyKind::ErrorBurst, m, _)) => m.pick(0.08, 0.15, 0.35),
            _ => 0.0,
        };
        let mut status = pick_status(&mut rng, burst, bot);
        let bytes = body_bytes(&mut rng, k, status);
        let base =
            8.0 + (mix(h as u64 * 1000 + k) % 150) as f64 * if k % 7 == 2 { 0.1 } else { 1.0 };
        let mut latency = base * (0.45 * rng.normal()).exp();
        // A thin slow tail (0.3%): it shows in p99.9 and max; p99 stays in the body, as on a
        // healthy site.
        if rng.unit() < 0.003 {
            latency *= 5.0 + 15.0 * rng.unit();
        }
        match anomaly {
            Some((AnomalyKind::LatencyDegradation, m, _)) => {
                latency = latency * m.pick(2.0, 3.0, 5.0) + m.pick(100.0, 200.0, 300.0);
            }
            Some((AnomalyKind::SlowEndpoint, m, _)) if k == 0 => {
                latency = latency * m.pick(4.0, 8.0, 15.0) + m.pick(200.0, 400.0, 800.0);
            }
            Some((AnomalyKind::LatencyCreep, m, progress)) => {
                latency *= 1.0 + (m.pick(2.0, 3.0, 5.0) - 1.0) * progress;
                latency += m.pick(100.0, 200.0, 300.0) * progress;
            }
            _ => {}
        }
        if status >= 500 {
            latency += 30.0 * rng.unit();
        }
        // Whole milliseconds, so JSON and combined (`$request_time` in seconds) carry equal values.
        let latency_ms = latency.round().max(1.0);
        let client = rng.skewed(host.clients);
        let ip = mix(h as u64 ^ (client << 20));
        let client_ip = format!(
            "{}.{}.{}.{}",
            11 + (ip >> 56) % 200,
            (ip >> 48) & 255,
            (ip >> 40) & 255,
            1 + (ip >> 32) % 254
        );
        let user_agent = if bot {
            rng.pick(&CRAWLERS)
        } else {
            BROWSERS[(client % BROWSERS.len() as u64) as usize]
        };
        let r = rng.unit();
        let referrer = if bot || r < 0.4 {
            None
        } else if r < 0.7 {
            Some(format!(
                "https://{}{}",
                host.name,
                path_for(rng.skewed(PATHS_PER_HOST), &mut rng)
            ))
        } else {
            Some(rng.pick(&EXTERNAL_REFERRERS).to_owned())
        };
        let (mut client_ip, mut user_agent, mut referrer) =
            (client_ip, user_agent.to_owned(), referrer);
        if extra {
            match kind {
                Some(AnomalyKind::BotSurge) => {
                    client_ip = format!("203.0.113.{}", 1 + rng.below(254));
                    user_agent = "python-requests/2.31.0".to_owned();
                    referrer = None;
                }
                Some(AnomalyKind::PathHotspot) => path = "/products/flash-sale".to_owned(),
                Some(AnomalyKind::NotFoundStorm) => {
                    path = format!("/{}", rng.pick(&SCANNED_PATHS));
                    status = 404;
                    referrer = None;
                }
                _ => {}
            }
        }
        Event {
            ts_ms: ts,
            host: host.name.clone(),
            method: method.to_owned(),
            path,
            status,
            bytes,
            latency_ms: Some(latency_ms),
            client_ip: Some(client_ip),
            user_agent: Some(user_agent),
            referrer,
        }
    }
}

fn schedule_anomalies(
    spec: &GeneratorSpec,
    hosts: &[HostProfile],
    rng: &mut Rng,
) -> Vec<AnomalyLabel> {
    if spec.anomalies == 0 {
        return Vec::new();
    }
    let horizon = spec.duration_ms.unwrap_or(6 * 3_600_000);
    // Leave the detector an hour of history where there is room, and a tail after the last one.
    let warmup = (horizon / 2).min(60 * 60_000);
    let usable = (horizon - warmup - ANOMALY_MS * 2).max(ANOMALY_MS);
    let spacing = usable / spec.anomalies as i64;
    let candidates = hosts.len().min(8) as u64;
    (0..spec.anomalies)
        .map(|i| {
            let at = spec.start_ms + warmup + spacing * i as i64;
            let start_ms = at - at.rem_euclid(60_000);
            let host_index = rng.below(candidates) as usize;
            let kinds: &[AnomalyKind] = match spec.kinds.is_empty() {
                true => &AnomalyKind::CLASSIC,
                false => &spec.kinds,
            };
            let magnitudes: &[Magnitude] = match spec.magnitudes.is_empty() {
                true => &[Magnitude::Strong],
                false => &spec.magnitudes,
            };
            AnomalyLabel {
                host: hosts[host_index].name.clone(),
                kind: kinds[i % kinds.len()],
                magnitude: magnitudes[(i / kinds.len()) % magnitudes.len()],
                start: format_rfc3339(start_ms),
                end: format_rfc3339(start_ms + ANOMALY_MS),
                start_ms,
                end_ms: start_ms + ANOMALY_MS,
                host_index,
            }
        })
        .collect()
}

fn path_for(k: u64, rng: &mut Rng) -> String {
    match k % 7 {
        _ if k == 0 => "/".to_owned(),
        0 => format!("/products/{k}"),
        1 => format!("/blog/post-{k}"),
        2 => format!("/static/js/app.{:x}.js", mix(k) & 0xffff_ffff),
        3 => format!("/images/{k}.jpg"),
        4 => format!("/search?q=term{}", rng.below(50)),
        5 => format!("/api/v1/items/{k}"),
        _ => format!("/docs/page-{k}.html"),
    }
}

/// A status; during an error burst, 5xx for a `burst` share of requests.
fn pick_status(rng: &mut Rng, burst: f64, bot: bool) -> u16 {
    let u = rng.unit();
    if u < burst {
        return [500, 502, 503, 504][rng.below(4) as usize];
    }
    let u = rng.unit();
    let table: &[(f64, u16)] = if bot {
        &[
            (0.80, 200),
            (0.85, 301),
            (0.97, 404),
            (0.99, 403),
            (1.0, 500),
        ]
    } else {
        &[
            (0.86, 200),
            (0.90, 304),
            (0.915, 301),
            (0.93, 302),
            (0.935, 201),
            (0.965, 404),
            (0.970, 403),
            (0.975, 400),
            (0.978, 401),
            (0.984, 499),
            (0.990, 500),
            (0.995, 502),
            (0.998, 503),
            (1.0, 504),
        ]
    };
    table.iter().find(|(p, _)| u < *p).map_or(200, |(_, s)| *s)
}

fn body_bytes(rng: &mut Rng, k: u64, status: u16) -> u64 {
    match status {
        304 | 301 | 302 => 0,
        400..=599 => 150 + rng.below(450),
        _ => match k % 7 {
            2 => 40_000 + rng.below(260_000),
            3 => 15_000 + rng.below(485_000),
            5 | 4 => 300 + rng.below(4_700),
            _ => 4_000 + rng.below(46_000),
        },
    }
}

/// A position in one partition's stream.
pub struct Cursor {
    g: Arc<Generator>,
    p: u32,
    s: i64,
    j: u64,
    plan: Vec<(usize, f64)>,
    n: u64,
    offset: u64,
    end: Option<u64>,
}

impl Cursor {
    /// Offset of the next event.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Offset at which this partition ends, if bounded.
    pub fn end_offset(&self) -> Option<u64> {
        self.end
    }

    /// Whether the stream has ended.
    pub fn finished(&self) -> bool {
        self.end.is_some_and(|e| self.offset >= e)
    }

    /// Events available but not yet read: up to the stream's end, or (`until_ms`) up to the
    /// last second complete at that wall-clock time. Counts at most `max_seconds` ahead.
    pub fn backlog(&mut self, until_ms: Option<i64>, max_seconds: i64) -> u64 {
        if !self.advance() {
            return 0;
        }
        if let (None, Some(end)) = (until_ms, self.end) {
            return end.saturating_sub(self.offset);
        }
        let complete =
            |s: i64| until_ms.is_none_or(|t| self.g.spec.start_ms + (s + 1) * SECOND_MS <= t);
        if !complete(self.s) {
            return 0;
        }
        let mut n = self.n - self.j;
        let mut s = self.s + 1;
        while s - self.s <= max_seconds && complete(s) && self.g.end_second().is_none_or(|e| s < e)
        {
            n += self.g.second_count(self.p, s);
            s += 1;
        }
        match self.end {
            Some(end) => n.min(end.saturating_sub(self.offset)),
            None => n,
        }
    }

    /// Position at the next event; false once a bounded stream has ended.
    fn advance(&mut self) -> bool {
        if self.finished() {
            return false;
        }
        while self.j >= self.n {
            if self.g.end_second().is_some_and(|e| self.s + 1 >= e) {
                self.end = Some(self.offset);
                return false;
            }
            self.s += 1;
            self.j = 0;
            (self.plan, self.n) = self.g.second_plan(self.p, self.s);
        }
        true
    }

    /// The second (since the start) of the next event, or None at the end.
    pub fn next_second(&mut self) -> Option<i64> {
        self.advance().then_some(self.s)
    }

    /// Wall-clock time (UTC ms) at which the next event's second is complete, for pacing.
    pub fn ready_at_ms(&mut self) -> i64 {
        self.advance();
        self.g.spec.start_ms + (self.s + 1) * SECOND_MS
    }

    /// The next event, or None at the end of a bounded stream.
    pub fn next_event(&mut self) -> Option<Event> {
        if !self.advance() {
            return None;
        }
        let e = self.g.event(self.p, self.s, self.j, self.n, &self.plan);
        self.j += 1;
        self.offset += 1;
        Some(e)
    }
}

/// Write one event as a line in `format` (with the trailing newline).
pub fn write_line(out: &mut Vec<u8>, e: &Event, format: Format) {
    #[derive(Serialize)]
    struct JsonLine<'a> {
        ts: String,
        host: &'a str,
        method: &'a str,
        path: &'a str,
        status: u16,
        bytes: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        latency_ms: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_ip: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_agent: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        referrer: Option<&'a str>,
    }
    match format {
        Format::Json => {
            let line = JsonLine {
                ts: format_rfc3339(e.ts_ms),
                host: &e.host,
                method: &e.method,
                path: &e.path,
                status: e.status,
                bytes: e.bytes,
                latency_ms: e.latency_ms,
                client_ip: e.client_ip.as_deref(),
                user_agent: e.user_agent.as_deref(),
                referrer: e.referrer.as_deref(),
            };
            // Writing into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, &line);
        }
        Format::Combined | Format::VhostCombined => {
            if format == Format::VhostCombined {
                let _ = write!(out, "{}:443 ", e.host);
            }
            let _ = write!(
                out,
                "{} - - [{}] \"{} {} HTTP/1.1\" {} {} \"{}\" \"{}\"",
                e.client_ip.as_deref().unwrap_or("-"),
                format_clf(e.ts_ms),
                e.method,
                e.path,
                e.status,
                e.bytes,
                e.referrer.as_deref().unwrap_or("-"),
                e.user_agent.as_deref().unwrap_or("-"),
            );
            if let Some(l) = e.latency_ms {
                let _ = write!(out, " {:.3}", l / 1000.0);
            }
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_line;

    fn spec() -> GeneratorSpec {
        GeneratorSpec {
            seed: 7,
            hosts: 20,
            rate: 300.0,
            start_ms: 1_767_225_600_000,
            partitions: 4,
            anomalies: 4,
            kinds: Vec::new(),
            magnitudes: Vec::new(),
            malformed_share: 0.0,
            weekend: GeneratorSpec::DEFAULT_WEEKEND,
            duration_ms: Some(120_000),
            count: None,
        }
    }

    #[test]
    fn weekends_carry_each_sites_share_of_weekday_traffic() {
        // 2026-01-02 is a Friday; the next day, same time, a Saturday; then Monday.
        let friday_noon = 1_767_355_200_000;
        let g = Generator::new(spec());
        let mut shares = Vec::new();
        for h in 0..g.hosts.len() {
            let friday = g.host_rate(h, friday_noon);
            let saturday = g.host_rate(h, friday_noon + 86_400_000);
            let sunday = g.host_rate(h, friday_noon + 2 * 86_400_000);
            let monday = g.host_rate(h, friday_noon + 3 * 86_400_000);
            assert!((saturday / friday - sunday / friday).abs() < 1e-9);
            assert!((monday / friday - 1.0).abs() < 1e-9);
            shares.push(saturday / friday);
        }
        assert!(
            shares.iter().all(|s| (0.55..=0.85).contains(s)),
            "{shares:?}"
        );
        assert!(
            shares.iter().any(|s| (s - shares[0]).abs() > 0.01),
            "each site its own"
        );
        let flat = Generator::new(GeneratorSpec {
            weekend: 1.0,
            ..spec()
        });
        let ratio = flat.host_rate(0, friday_noon + 86_400_000) / flat.host_rate(0, friday_noon);
        assert!((ratio - 1.0).abs() < 1e-9, "{ratio}");
    }

    /// The events of `host` in `[from, to)`, over every partition.
    fn events_of(g: &Arc<Generator>, host: &str, from: i64, to: i64) -> Vec<Event> {
        let p = partition_of(host, g.spec.partitions);
        let mut c = g.cursor(p, 0);
        std::iter::from_fn(|| c.next_event())
            .filter(|e| e.host == host && (from..to).contains(&e.ts_ms))
            .collect()
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    #[test]
    fn each_new_kind_changes_what_it_says_and_no_more() {
        let base = GeneratorSpec {
            hosts: 3,
            duration_ms: Some(3 * 3_600_000),
            anomalies: 5,
            kinds: AnomalyKind::ALL[4..].to_vec(),
            ..spec()
        };
        let with = Arc::new(Generator::new(base.clone()));
        let without = Arc::new(Generator::new(GeneratorSpec {
            anomalies: 0,
            ..base
        }));
        assert_eq!(with.anomalies().len(), 5);
        for a in with.anomalies() {
            assert_eq!(a.magnitude, Magnitude::Strong);
            let (got, usual) = (
                events_of(&with, &a.host, a.start_ms, a.end_ms),
                events_of(&without, &a.host, a.start_ms, a.end_ms),
            );
            let ratio = got.len() as f64 / usual.len() as f64;
            let count = |v: &[Event], f: &dyn Fn(&Event) -> bool| v.iter().filter(|e| f(e)).count();
            match a.kind {
                AnomalyKind::BotSurge => {
                    assert!((4.0..6.0).contains(&ratio), "{ratio}");
                    let bots = |e: &Event| {
                        e.client_ip
                            .as_deref()
                            .is_some_and(|ip| ip.starts_with("203.0.113."))
                            && e.user_agent.as_deref() == Some("python-requests/2.31.0")
                    };
                    assert_eq!(count(&usual, &bots), 0);
                    let share = count(&got, &bots) as f64 / got.len() as f64;
                    assert!((0.75..0.85).contains(&share), "{share}");
                }
                AnomalyKind::PathHotspot => {
                    assert!((4.0..6.0).contains(&ratio), "{ratio}");
                    let hot = |e: &Event| e.path == "/products/flash-sale";
                    let share = count(&got, &hot) as f64 / got.len() as f64;
                    assert!((0.75..0.85).contains(&share), "{share}");
                }
                AnomalyKind::NotFoundStorm => {
                    assert!((4.0..6.0).contains(&ratio), "{ratio}");
                    let scans =
                        |e: &Event| e.status == 404 && SCANNED_PATHS.contains(&&e.path[1..]);
                    let share = count(&got, &scans) as f64 / got.len() as f64;
                    assert!((0.75..0.85).contains(&share), "{share}");
                }
                AnomalyKind::SlowEndpoint => {
                    // The same requests; `/` slow, every other path as usual.
                    assert_eq!(got.len(), usual.len());
                    let lat = |v: &[Event], root: bool| {
                        median(
                            v.iter()
                                .filter(|e| (e.path == "/") == root)
                                .filter_map(|e| e.latency_ms)
                                .collect(),
                        )
                    };
                    assert!(lat(&got, true) > 10.0 * lat(&usual, true));
                    assert_eq!(lat(&got, false), lat(&usual, false));
                }
                AnomalyKind::LatencyCreep => {
                    assert_eq!(got.len(), usual.len());
                    let minute = |v: &[Event], m: i64| {
                        let from = a.start_ms + m * 60_000;
                        median(
                            v.iter()
                                .filter(|e| (from..from + 60_000).contains(&e.ts_ms))
                                .filter_map(|e| e.latency_ms)
                                .collect(),
                        )
                    };
                    // Little at first, most at the end.
                    assert!(minute(&got, 0) < 1.3 * minute(&usual, 0) + 60.0);
                    assert!(minute(&got, 4) > 3.0 * minute(&usual, 4));
                }
                k => panic!("not scheduled: {k:?}"),
            }
        }
    }

    #[test]
    fn magnitudes_go_round_after_every_kind() {
        let g = Generator::new(GeneratorSpec {
            anomalies: 6,
            kinds: vec![AnomalyKind::TrafficSpike, AnomalyKind::BotSurge],
            magnitudes: Magnitude::ALL.to_vec(),
            duration_ms: Some(3 * 3_600_000),
            ..spec()
        });
        let got: Vec<(AnomalyKind, Magnitude)> = g
            .anomalies()
            .iter()
            .map(|a| (a.kind, a.magnitude))
            .collect();
        use AnomalyKind::*;
        use Magnitude::*;
        assert_eq!(
            got,
            [
                (TrafficSpike, Weak),
                (BotSurge, Weak),
                (TrafficSpike, Medium),
                (BotSurge, Medium),
                (TrafficSpike, Strong),
                (BotSurge, Strong)
            ]
        );
        for k in AnomalyKind::ALL {
            assert_eq!(AnomalyKind::parse(k.name()), Some(k));
        }
    }

    #[test]
    fn resuming_at_any_offset_gives_the_same_events() {
        let g = Arc::new(Generator::new(spec()));
        let all: Vec<Event> = {
            let mut c = g.cursor(1, 0);
            std::iter::from_fn(|| c.next_event()).collect()
        };
        assert_eq!(all.len() as u64, g.end_offset(1).unwrap());
        for at in [0usize, 1, 17, all.len() / 2, all.len() - 1] {
            let mut c = g.cursor(1, at as u64);
            assert_eq!(c.next_event().as_ref(), Some(&all[at]));
        }
        assert!(g.cursor(1, all.len() as u64).next_event().is_none());
    }

    #[test]
    fn hosts_stay_on_their_partition_and_the_rate_holds() {
        let g = Arc::new(Generator::new(spec()));
        let mut total = 0;
        for p in 0..4 {
            let mut c = g.cursor(p, 0);
            while let Some(e) = c.next_event() {
                assert_eq!(partition_of(&e.host, 4), p);
                total += 1;
            }
        }
        // 120 s at 300/s, the diurnal factor within ±50% and spikes/drops on top.
        assert!((10_000..80_000).contains(&total), "{total}");
    }

    #[test]
    fn a_seconds_count_is_the_one_its_hosts_rates_sum_to() {
        // What a second's count was before the hosts' rates were summed as one sine: the sum
        // over every host. The generator's output is an interface; this keeps it.
        let by_host = |g: &Generator, p: u32, s: i64| {
            let mid = g.spec.start_ms + s * SECOND_MS + SECOND_MS / 2;
            let hosts = g.by_partition[p as usize].iter();
            g.count_of(p, s, hosts.fold(0.0, |t, &h| t + g.host_rate(h, mid)))
        };
        let week = GeneratorSpec {
            hosts: 300,
            anomalies: 40,
            weekend: 0.4,
            duration_ms: Some(8 * 86_400_000),
            ..spec()
        };
        let (mut seconds, mut anomalous) = (0, 0);
        for spec in [spec(), week] {
            let g = Generator::new(spec.clone());
            let end = g.end_second().unwrap_or(120);
            for p in 0..spec.partitions {
                for s in (0..end).step_by(if end > 1_000 { 97 } else { 1 }) {
                    let mid = spec.start_ms + s * SECOND_MS + SECOND_MS / 2;
                    let rates = &g.rates[p as usize];
                    if rates
                        .anomalous
                        .iter()
                        .any(|&h| g.anomaly_at(h, mid).is_some())
                    {
                        anomalous += 1;
                    }
                    let n = g.second_count(p, s);
                    assert_eq!(n, by_host(&g, p, s), "partition {p}, second {s}");
                    assert_eq!(n, g.second_plan(p, s).1);
                    seconds += 1;
                }
            }
        }
        assert!(seconds > 20_000 && anomalous > 100, "{seconds} {anomalous}");
    }

    #[test]
    fn backlog_counts_what_is_left() {
        let g = Arc::new(Generator::new(spec()));
        let end = g.end_offset(2).unwrap();
        let mut c = g.cursor(2, 10);
        assert_eq!(c.backlog(None, 1_000), end - 10);
        // Paced: at the start nothing is released; after the whole span, everything is.
        assert_eq!(c.backlog(Some(spec().start_ms), 1_000), 0);
        assert_eq!(c.backlog(Some(spec().start_ms + 200_000), 1_000), end - 10);
    }

    #[test]
    fn a_partition_without_hosts_is_an_empty_stream() {
        let g = Arc::new(Generator::new(GeneratorSpec {
            hosts: 1,
            duration_ms: None,
            ..spec()
        }));
        let empty = (0..4)
            .find(|p| g.by_partition[*p as usize].is_empty())
            .unwrap();
        let mut c = g.cursor(empty, 0);
        assert!(c.next_event().is_none() && c.finished());
    }

    #[test]
    fn count_limits_the_merged_order() {
        let g = Arc::new(Generator::new(GeneratorSpec {
            count: Some(1234),
            ..spec()
        }));
        let sum: u64 = (0..4).map(|p| g.end_offset(p).unwrap()).sum();
        assert_eq!(sum, 1234);
    }

    #[test]
    fn every_format_parses_back() {
        let g = Arc::new(Generator::new(spec()));
        let mut c = g.cursor(0, 0);
        for _ in 0..500 {
            let e = c.next_event().unwrap();
            for f in [Format::Json, Format::Combined, Format::VhostCombined] {
                let mut line = Vec::new();
                write_line(&mut line, &e, f);
                let back = parse_line(f, &line, &e.host).unwrap_or_else(|err| {
                    panic!("{f}: {} on {}", err.detail, String::from_utf8_lossy(&line))
                });
                assert_eq!(back.host, e.host);
                assert_eq!(back.status, e.status);
                assert_eq!(back.latency_ms, e.latency_ms);
                let ts = if f == Format::Json {
                    e.ts_ms
                } else {
                    e.ts_ms - e.ts_ms % 1000
                };
                assert_eq!(back.ts_ms, ts);
            }
        }
    }
}
