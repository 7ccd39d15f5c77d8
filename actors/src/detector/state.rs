//! Anomaly detection over each host's closed-window series (requests, 5xx rate, p99 latency).
//!
//! Every window is judged by a robust baseline: the median and MAD of the previous
//! `baseline_windows`, with noise floors (Poisson for counts, binomial for the 5xx share). Once a
//! host has `model_history` windows, an augurs model (AutoETS; MSTL with a daily season when two
//! days are available) is fitted off the actor and a window must also leave its 99% prediction
//! interval. Either way it must move by a practical margin (ratio guards), and 5xx rate and p99
//! are only judged on windows with enough requests: that keeps false alarms rare on small hosts.

use super::journal::Restored;
use super::points::Points;
use super::weekly::WeeklyProfile;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use wtm_config::DetectorConfig;
use wtm_messages::{Anomaly, Episode, Forecast, WindowPoint, WindowScores};

pub const METRICS: [&str; 3] = ["requests", "error_rate", "latency_p99_ms"];
const MAX_ANOMALIES: usize = 10_000;
const MAX_EPISODES: usize = 10_000;
/// Values handed to a model fit.
const MAX_FIT_POINTS: usize = 2 * 1440 + 60;
/// Windows up to this long learn a weekly shape (hour-of-week levels need hours to fill).
const WEEKLY_MAX_WINDOW_MS: i64 = 3_600_000;

/// A model fit to run off the actor.
#[derive(Debug, Clone)]
pub struct FitJob {
    pub host: String,
    pub last_start_ms: i64,
    pub window_ms: i64,
    pub series: [Vec<f64>; 3],
    /// Only these metrics are fitted (an offline series has one).
    pub metrics: [bool; 3],
    pub season: Option<usize>,
    pub horizon: usize,
}

/// An ongoing episode and the judged windows without it since its newest.
type Open = Option<Box<(Episode, usize)>>;

#[derive(Default)]
struct HostSeries {
    /// Its windows and how each metric scored.
    points: Points,
    since_fit: usize,
    /// Boxed, as `open` is: a host's series is kept inline in the detector's map, and most
    /// hosts have neither (unboxed, a series was ~1 KB before it held a window: 20,000 sites
    /// took ~30 MB of map, and twice that while it grew).
    forecasts: [Option<Box<Forecast>>; 3],
    /// Per metric: the ongoing episode, and the judged windows without it since its newest.
    open: [Open; 3],
    /// Start of the newest window judged here (kept across restarts: a replayed window at or
    /// before it raises nothing again).
    judged_through: Option<i64>,
    weekly: WeeklyProfile,
}

impl HostSeries {
    /// Judge each metric of window `p` against `history` (its previous windows, newest first)
    /// and, `with_forecast`, the model's forecast for it.
    fn judge_window(
        &self,
        cfg: &DetectorConfig,
        weekly_on: bool,
        window_ms: i64,
        p: &WindowPoint,
        history: &[WindowPoint],
        with_forecast: bool,
    ) -> [Option<Judgement>; 3] {
        let factor = self.weekly_factor(weekly_on, p.start_ms);
        std::array::from_fn(|metric| {
            let scale = if metric == 0 { factor } else { 1.0 };
            let hist: Vec<f64> = history
                .iter()
                .map(|h| match metric {
                    0 => h.requests / self.weekly_factor(weekly_on, h.start_ms),
                    _ => value(h, metric),
                })
                .collect();
            let forecast = self.forecasts[metric]
                .as_ref()
                .filter(|_| with_forecast)
                .and_then(|f| {
                    let k = (p.start_ms - f.first_start_ms).checked_div(window_ms)?;
                    let k = usize::try_from(k).ok()?;
                    Some((
                        f.point.get(k)?.max(0.0),
                        f.lower.get(k)?.max(0.0),
                        *f.upper.get(k)?,
                        f.model,
                    ))
                });
            let x = value(p, metric) / scale;
            judge(cfg, metric, x, p.requests, &hist, forecast).map(|j| Judgement {
                observed: value(p, metric),
                expected: j.expected * scale,
                lower: j.lower * scale,
                upper: j.upper * scale,
                ..j
            })
        })
    }

    /// The weekly factor requests of a window starting at `start_ms` are divided by (1: none
    /// learned for its hour yet, or off).
    fn weekly_factor(&self, on: bool, start_ms: i64) -> f64 {
        if on {
            self.weekly.factor(start_ms).unwrap_or(1.0)
        } else {
            1.0
        }
    }
}

/// What the detector keeps of a host across restarts (its checkpoint): how far it judged, and
/// its ongoing episodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostMark {
    pub judged_through: i64,
    /// Per metric: the ongoing episode and its quiet windows since.
    pub open: [Option<(Episode, u32)>; 3],
}

/// What judging one window found.
#[derive(Debug, Default)]
pub struct Observed {
    /// One per anomalous metric.
    pub anomalies: Vec<Anomaly>,
    /// Every metric's score (None: not judged).
    pub scores: [Option<f32>; 3],
    /// Episodes this window opened, and those it ended (now with their end).
    pub opened: Vec<Episode>,
    pub ended: Vec<Episode>,
    /// The host's models are due for a refit ([`DetectorState::fit_job`]).
    pub fit_due: bool,
    /// The host's new checkpoint mark (None: unchanged, a window older than the newest).
    pub mark: Option<HostMark>,
    /// The host's weekly profile, when this window changed it (kept in the checkpoint).
    pub weekly: Option<WeeklyProfile>,
    /// Anomalies and ended episodes that no longer fit the bounded lists.
    pub evicted_anomalies: Vec<Anomaly>,
    pub evicted_episodes: Vec<Episode>,
}

/// How one metric of one window was judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judgement {
    pub observed: f64,
    pub expected: f64,
    pub lower: f64,
    pub upper: f64,
    /// Robust z-score against the baseline (signed).
    pub z: f64,
    /// 0–1, monotone in how far the value is from what was expected.
    pub score: f64,
    /// The anomaly's kind when the window is anomalous.
    pub kind: Option<&'static str>,
    pub model: &'static str,
}

pub struct DetectorState {
    cfg: DetectorConfig,
    window_ms: i64,
    hosts: HashMap<String, HostSeries>,
    anomalies: VecDeque<Anomaly>,
    /// Ended episodes, oldest first (ongoing ones are with their host).
    episodes: VecDeque<Episode>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn value(p: &WindowPoint, metric: usize) -> f64 {
    match metric {
        0 => p.requests,
        1 => p.error_rate,
        _ => p.latency_p99_ms,
    }
}

/// The practical-significance guard of each metric and direction.
fn guard(metric: usize, x: f64, expected: f64) -> Option<&'static str> {
    match metric {
        0 if x >= 1.8 * expected => Some("traffic_spike"),
        0 if x <= 0.5 * expected && expected >= 20.0 => Some("traffic_drop"),
        1 if x >= expected + 0.05 => Some("error_burst"),
        2 if x >= 3.0 * expected && x >= expected + 50.0 => Some("latency_degradation"),
        _ => None,
    }
}

/// Requests a window needs before its 5xx rate or p99 means anything.
fn enough_requests(metric: usize, requests: f64) -> bool {
    match metric {
        1 => requests >= 50.0,
        2 => requests >= 200.0,
        _ => true,
    }
}

/// The score of a distance (in robust z units): 0.5 at `threshold`, 0.75 at twice it, → 1.
fn score_of(distance: f64, threshold: f64) -> f64 {
    1.0 - (-distance.abs() / threshold).exp2()
}

/// `minor`, `major` or `critical`, from an episode's peak score.
pub fn severity(peak_score: f64) -> &'static str {
    if peak_score >= 0.9 {
        "critical"
    } else if peak_score >= 0.75 {
        "major"
    } else {
        "minor"
    }
}

/// Judge `x`, metric `metric` of a window with `requests` requests, against the previous values
/// `history` (newest first) and, when a model has been fitted, its forecast (point, lower,
/// upper, model) for this window. None when the window has too few requests for the metric.
///
/// The robust baseline is the median and MAD of the history, with noise floors (Poisson for
/// counts, binomial for the 5xx share). Its z-score is the distance; with a model, the distance
/// is also measured outside the model's 99% interval (in units where the interval's edge is
/// `threshold`) and the smaller of the two counts: a window must be unusual for both.
pub fn judge(
    cfg: &DetectorConfig,
    metric: usize,
    x: f64,
    requests: f64,
    history: &[f64],
    forecast: Option<(f64, f64, f64, &'static str)>,
) -> Option<Judgement> {
    if !enough_requests(metric, requests) {
        return None;
    }
    let mut hist = history.to_vec();
    let med = median(&mut hist);
    let mut dev: Vec<f64> = hist.iter().map(|h| (h - med).abs()).collect();
    let floor = match metric {
        0 => med.max(1.0).sqrt().max(0.05 * med),
        1 => {
            let share = med.max(0.01);
            (share * (1.0 - share) / requests).sqrt().max(0.005)
        }
        _ => (0.1 * med).max(1.0),
    };
    let sigma = (1.4826 * median(&mut dev)).max(floor);
    let z = (x - med) / sigma;
    let band = cfg.threshold * sigma;
    let (expected, lower, upper, model) =
        forecast.unwrap_or((med, (med - band).max(0.0), med + band, "baseline"));
    let mut distance = z.abs();
    if model != "baseline" {
        // With a model, its interval must also be left: it knows trend and season, which the
        // baseline does not.
        let half = if x >= expected {
            upper - expected
        } else {
            expected - lower
        };
        let outside = if half > 0.0 {
            (x - expected).abs() / half * cfg.threshold
        } else if x == expected {
            0.0
        } else {
            f64::INFINITY
        };
        distance = distance.min(outside);
    }
    let score = score_of(distance, cfg.threshold);
    // The guard compares with the robust median, which an anomaly cannot drag along.
    let kind = (score >= cfg.score_threshold)
        .then(|| guard(metric, x, med))
        .flatten();
    Some(Judgement {
        observed: x,
        expected,
        lower,
        upper,
        z,
        score,
        kind,
        model,
    })
}

impl DetectorState {
    pub fn new(cfg: DetectorConfig, window_ms: i64) -> DetectorState {
        DetectorState {
            cfg,
            window_ms,
            hosts: HashMap::new(),
            anomalies: VecDeque::new(),
            episodes: VecDeque::new(),
        }
    }

    fn weekly_on(&self) -> bool {
        self.cfg.weekly_season && self.window_ms <= WEEKLY_MAX_WINDOW_MS
    }

    /// Judge a closed window: every metric's score, the anomalies it raises, the episodes it
    /// opens or ends, and whether the host's models are due for a refit.
    pub fn observe(&mut self, host: &str, p: WindowPoint) -> Observed {
        let cfg = self.cfg.clone();
        let window_ms = self.window_ms;
        // Requests are judged (and fitted) with the week's shape divided out.
        let weekly_on = self.weekly_on();
        let series = self.hosts.entry(host.to_owned()).or_default();
        let history: Vec<WindowPoint> = series
            .points
            .before(p.start_ms, cfg.baseline_windows)
            .collect();
        let is_newest = series.points.newest_start().is_none_or(|s| s < p.start_ms);
        // Judged before a restart (a replay): scored again, but nothing raised twice.
        let judged_before = series.judged_through.is_some_and(|t| p.start_ms <= t);
        let mut requests_anomalous = false;
        let mut out = Observed::default();
        if history.len() >= cfg.min_history {
            let judged = series.judge_window(&cfg, weekly_on, window_ms, &p, &history, true);
            for (metric, (metric_name, j)) in METRICS.iter().zip(judged).enumerate() {
                out.scores[metric] = j.map(|j| j.score as f32);
                requests_anomalous |= metric == 0 && j.is_some_and(|j| j.kind.is_some());
                let kind = j.and_then(|j| j.kind).filter(|_| !judged_before);
                if let (Some(j), Some(kind)) = (j, kind) {
                    out.anomalies.push(Anomaly {
                        host: host.to_owned(),
                        metric: (*metric_name).to_owned(),
                        window_start_ms: p.start_ms,
                        observed: j.observed,
                        expected: j.expected,
                        lower: j.lower,
                        upper: j.upper,
                        score: j.z,
                        anomaly_score: j.score,
                        kind: kind.to_owned(),
                        model: j.model.to_owned(),
                    });
                }
                if is_newest && !judged_before {
                    let open = &mut series.open[metric];
                    let (opened, ended) = next_episode(
                        open,
                        host,
                        metric,
                        &p,
                        j,
                        cfg.episode_quiet_windows,
                        window_ms,
                    );
                    out.opened.extend(opened);
                    out.ended.extend(ended);
                }
            }
        }
        let scores = out.scores.map(|s| s.unwrap_or(f32::NAN));
        series.points.put(&p, scores, MAX_FIT_POINTS);
        if weekly_on
            && series
                .weekly
                .observe(p.start_ms, p.requests, requests_anomalous)
        {
            out.weekly = Some(series.weekly.clone());
        }
        if is_newest && !judged_before {
            series.judged_through = Some(p.start_ms);
            out.mark = Some(mark_of(series, p.start_ms));
        }
        if is_newest {
            series.since_fit += 1;
            if series.points.len() >= cfg.model_history && series.since_fit >= cfg.refit_every {
                series.since_fit = 0;
                out.fit_due = true;
            }
        }
        let (anomalies, episodes) = (out.anomalies.clone(), out.ended.clone());
        self.keep(anomalies, episodes, &mut out);
        out
    }

    /// List raised anomalies and ended episodes, the oldest leaving the bounded lists.
    fn keep(&mut self, anomalies: Vec<Anomaly>, episodes: Vec<Episode>, out: &mut Observed) {
        for a in anomalies {
            self.anomalies.retain(|b| {
                !(b.host == a.host
                    && b.metric == a.metric
                    && b.window_start_ms == a.window_start_ms)
            });
            self.anomalies.push_back(a);
        }
        while self.anomalies.len() > MAX_ANOMALIES {
            out.evicted_anomalies.extend(self.anomalies.pop_front());
        }
        self.episodes.extend(episodes);
        while self.episodes.len() > MAX_EPISODES {
            out.evicted_episodes.extend(self.episodes.pop_front());
        }
    }

    /// Take back what a checkpoint kept: each host's mark and weekly profile, the raised
    /// anomalies and the ended episodes (oldest first).
    pub fn restore(&mut self, kept: Restored) -> Observed {
        for (host, m) in kept.marks {
            let series = self.hosts.entry(host).or_default();
            series.judged_through = Some(m.judged_through);
            series.open = m
                .open
                .map(|o| o.map(|(e, calm)| Box::new((e, calm as usize))));
        }
        for (host, w) in kept.weekly {
            self.hosts.entry(host).or_default().weekly = w;
        }
        let mut out = Observed::default();
        self.keep(kept.anomalies, kept.episodes, &mut out);
        out
    }

    /// A host's past windows (oldest first), taken as history without judging them (scored,
    /// raising nothing): the points a new home rebuilt from the lake. A window already judged
    /// here keeps its point. With
    /// `catch_up`, the windows after the host's checkpoint mark are judged instead, in order
    /// (a restarted node: they were written before it stopped, but not judged).
    pub fn seed(&mut self, host: &str, points: Vec<WindowPoint>, catch_up: bool) -> Vec<Observed> {
        let (cfg, window_ms, weekly_on) = (self.cfg.clone(), self.window_ms, self.weekly_on());
        let series = self.hosts.entry(host.to_owned()).or_default();
        let mark = series.judged_through.filter(|_| catch_up);
        let mut unjudged = Vec::new();
        let mut kept = Vec::new();
        for p in points {
            if mark.is_some_and(|m| p.start_ms > m) {
                unjudged.push(p);
            } else if series.points.put_if_absent(&p, MAX_FIT_POINTS) {
                kept.push(p);
            }
        }
        // Windows judged before (by this node before it restarted, or by the host's previous
        // home) get their scores back, from the baseline alone: the series route shows them.
        for p in kept {
            let history: Vec<WindowPoint> = series
                .points
                .before(p.start_ms, cfg.baseline_windows)
                .collect();
            if history.len() >= cfg.min_history {
                let judged = series.judge_window(&cfg, weekly_on, window_ms, &p, &history, false);
                let scores = judged.map(|j| j.map_or(f32::NAN, |j| j.score as f32));
                series.points.put(&p, scores, MAX_FIT_POINTS);
            }
        }
        unjudged
            .into_iter()
            .map(|p| self.observe(host, p))
            .collect()
    }

    /// Drop the series of hosts `keep` rejects (homes moved elsewhere): memory follows the
    /// hosts this node judges. Raised anomalies stay listed. Their ongoing episodes end here
    /// with their newest anomalous window (in `ended`: the new home judges on, and opens its
    /// own if the anomaly goes on; an alert left firing would never resolve). Returns the hosts
    /// dropped.
    pub fn retain_hosts(&mut self, keep: impl Fn(&str) -> bool, out: &mut Observed) -> Vec<String> {
        let dropped: Vec<String> = self.hosts.keys().filter(|h| !keep(h)).cloned().collect();
        let mut ended = Vec::new();
        for h in &dropped {
            if let Some(series) = self.hosts.remove(h) {
                for open in series.open.into_iter().flatten() {
                    let (mut e, _) = *open;
                    e.end_ms = Some(e.last_ms + self.window_ms);
                    ended.push(e);
                }
            }
        }
        out.ended.extend(ended.iter().cloned());
        self.keep(Vec::new(), ended, out);
        dropped
    }

    /// The model fit of `host`, from its newest windows (None: no series here).
    pub fn fit_job(&self, host: &str) -> Option<FitJob> {
        let series = self.hosts.get(host)?;
        let last_start_ms = series.points.newest_start()?;
        let weekly_on = self.weekly_on();
        let day = (86_400_000 / self.window_ms) as usize;
        let mut values: [Vec<f64>; 3] = Default::default();
        for w in series.points.tail(MAX_FIT_POINTS) {
            values[0].push(w.requests / series.weekly_factor(weekly_on, w.start_ms));
            values[1].push(w.error_rate);
            values[2].push(w.latency_p99_ms);
        }
        let n = values[0].len();
        Some(FitJob {
            host: host.to_owned(),
            last_start_ms,
            window_ms: self.window_ms,
            series: values,
            metrics: [true; 3],
            season: (day >= 2 && n >= 2 * day).then_some(day),
            horizon: self.cfg.refit_every + 2,
        })
    }

    /// Hosts with a series here.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    pub fn install(&mut self, forecasts: Vec<Forecast>) {
        for f in forecasts {
            if let Some(s) = self.hosts.get_mut(&f.host) {
                let m = f.metric;
                s.forecasts[m] = Some(Box::new(f));
            }
        }
    }

    pub fn anomalies(&self, host: Option<&str>, since_ms: i64) -> Vec<Anomaly> {
        let mut v: Vec<Anomaly> = self
            .anomalies
            .iter()
            .filter(|a| host.is_none_or(|h| a.host == h) && a.window_start_ms >= since_ms)
            .cloned()
            .collect();
        v.sort_by(|a, b| {
            (a.window_start_ms, &a.host, &a.metric).cmp(&(b.window_start_ms, &b.host, &b.metric))
        });
        v
    }

    /// Episodes (ended and ongoing) of `host` or all, that had an anomalous window at or after
    /// `since_ms`; oldest first.
    pub fn episodes(&self, host: Option<&str>, since_ms: i64) -> Vec<Episode> {
        let ongoing = self
            .hosts
            .iter()
            .filter(|(h, _)| host.is_none_or(|want| want == h.as_str()))
            .flat_map(|(_, s)| s.open.iter().flatten().map(|o| &o.0));
        let mut v: Vec<Episode> = self
            .episodes
            .iter()
            .filter(|e| host.is_none_or(|h| e.host == h))
            .chain(ongoing)
            .filter(|e| e.last_ms >= since_ms)
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.start_ms, &a.host, &a.metric).cmp(&(b.start_ms, &b.host, &b.metric)));
        v
    }

    /// The scores of `host`'s windows starting in `[from, to)` judged here.
    pub fn scores(&self, host: &str, from_ms: i64, to_ms: i64) -> Vec<WindowScores> {
        let Some(s) = self.hosts.get(host) else {
            return Vec::new();
        };
        if from_ms >= to_ms {
            return Vec::new();
        }
        s.points
            .scores(from_ms, to_ms)
            .map(|(start_ms, scores)| WindowScores {
                start_ms,
                scores: scores.map(|s| (!s.is_nan()).then_some(s)),
            })
            .collect()
    }
}

fn mark_of(series: &HostSeries, judged_through: i64) -> HostMark {
    HostMark {
        judged_through,
        open: series
            .open
            .each_ref()
            .map(|o| o.as_deref().map(|(e, calm)| (e.clone(), *calm as u32))),
    }
}

/// The next state of one (host, metric)'s episode after a judged window `p` (the host's newest):
/// an anomalous window extends the ongoing episode of its kind or opens one (ending one of
/// another kind); `quiet` judged windows without it end it. Returns (opened, ended).
fn next_episode(
    open: &mut Open,
    host: &str,
    metric: usize,
    p: &WindowPoint,
    j: Option<Judgement>,
    quiet: usize,
    window_ms: i64,
) -> (Option<Episode>, Option<Episode>) {
    let end = |mut e: Episode| {
        e.end_ms = Some(e.last_ms + window_ms);
        e
    };
    match j.and_then(|j| j.kind.map(|k| (j, k))) {
        Some((j, kind)) => {
            if let Some((e, calm)) = open.as_deref_mut().filter(|(e, _)| e.kind == kind) {
                e.last_ms = p.start_ms;
                e.windows += 1;
                *calm = 0;
                if j.score > e.peak_score {
                    e.peak_score = j.score;
                    e.peak_window_ms = p.start_ms;
                    e.peak_observed = j.observed;
                    e.peak_expected = j.expected;
                    e.severity = severity(j.score).to_owned();
                }
                return (None, None);
            }
            let e = Episode {
                host: host.to_owned(),
                metric: METRICS[metric].to_owned(),
                kind: kind.to_owned(),
                start_ms: p.start_ms,
                end_ms: None,
                last_ms: p.start_ms,
                windows: 1,
                peak_score: j.score,
                peak_window_ms: p.start_ms,
                peak_observed: j.observed,
                peak_expected: j.expected,
                severity: severity(j.score).to_owned(),
            };
            let ended = open.replace(Box::new((e.clone(), 0))).map(|old| end(old.0));
            (Some(e), ended)
        }
        None => {
            let Some((_, calm)) = open.as_deref_mut() else {
                return (None, None);
            };
            *calm += 1;
            if *calm >= quiet {
                return (None, open.take().map(|o| end(o.0)));
            }
            (None, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_series_is_small_until_it_has_a_forecast_or_an_episode() {
        // The detector's map holds one per host inline (100,000 at a hosting provider).
        assert!(
            std::mem::size_of::<HostSeries>() <= 160,
            "{}",
            std::mem::size_of::<HostSeries>()
        );
    }

    fn point(i: i64, requests: f64, err: f64, p99: f64) -> WindowPoint {
        WindowPoint {
            start_ms: i * 60_000,
            requests,
            error_rate: err,
            latency_p99_ms: p99,
        }
    }

    #[test]
    fn seeded_history_is_a_baseline_and_is_never_judged() {
        let cfg = DetectorConfig {
            model_history: 10_000,
            ..DetectorConfig::default()
        };
        let mut d = DetectorState::new(cfg.clone(), 60_000);
        // History that holds a spike: seeding raises nothing, and the spike is not re-raised.
        let mut past: Vec<WindowPoint> = (0..40).map(|i| point(i, 600.0, 0.01, 200.0)).collect();
        past[20].requests = 5000.0;
        assert!(
            d.seed("h", past, true).is_empty(),
            "no mark: nothing to catch up on"
        );
        assert!(d.anomalies(None, i64::MIN).is_empty());
        // Scored from the baseline (the series route shows them), from min_history on; the
        // spike scores high without being raised.
        let scored = d.scores("h", 0, 40 * 60_000);
        assert_eq!(scored.len(), 40 - 15);
        let spike = scored.iter().find(|w| w.start_ms == 20 * 60_000).unwrap();
        assert!(spike.scores[0].is_some_and(|s| s > 0.9), "{spike:?}");
        assert!(scored
            .iter()
            .filter(|w| w.start_ms != 20 * 60_000)
            .all(|w| w.scores.iter().all(|s| s.is_some_and(|s| s < 0.5))));
        // The very next window is judged against the seeded baseline.
        let a = d.observe("h", point(40, 3000.0, 0.01, 200.0)).anomalies;
        assert_eq!(a.len(), 1, "{a:?}");
        let mut out = Observed::default();
        d.retain_hosts(|h| h != "h", &mut out);
        assert_eq!(d.host_count(), 0);
        assert_eq!(out.ended.len(), 1, "its ongoing episode ends: {out:?}");
        assert_eq!(out.ended[0].end_ms, Some(41 * 60_000));
        assert_eq!(
            d.anomalies(None, i64::MIN).len(),
            1,
            "raised anomalies stay"
        );
    }

    #[test]
    fn baseline_flags_each_kind_and_not_noise() {
        let cfg = DetectorConfig::default();
        let mut d = DetectorState::new(
            DetectorConfig {
                model_history: 10_000,
                ..cfg
            },
            60_000,
        );
        for i in 0..40 {
            let wobble = if i % 2 == 0 { 1.05 } else { 0.95 };
            let o = d.observe("h", point(i, 600.0 * wobble, 0.01 * wobble, 200.0 * wobble));
            assert!(o.anomalies.is_empty(), "{:?}", o.anomalies);
            if i >= 15 {
                // Judged from min_history on: every metric scored, all well under 0.5.
                assert!(
                    o.scores.iter().all(|s| s.is_some_and(|s| s < 0.5)),
                    "{:?}",
                    o.scores
                );
            }
        }
        let kinds = |a: Vec<Anomaly>| a.into_iter().map(|a| a.kind).collect::<Vec<_>>();
        assert_eq!(
            kinds(d.observe("h", point(40, 3000.0, 0.01, 200.0)).anomalies),
            vec!["traffic_spike"]
        );
        assert_eq!(
            kinds(d.observe("h", point(41, 60.0, 0.01, 200.0)).anomalies),
            vec!["traffic_drop"]
        );
        assert_eq!(
            kinds(d.observe("h", point(42, 600.0, 0.4, 200.0)).anomalies),
            vec!["error_burst"]
        );
        assert_eq!(
            kinds(d.observe("h", point(43, 600.0, 0.01, 1200.0)).anomalies),
            vec!["latency_degradation"]
        );
        assert_eq!(d.anomalies(Some("h"), 0).len(), 4);
    }
}
