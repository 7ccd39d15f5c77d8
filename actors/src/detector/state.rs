//! Anomaly detection over each host's closed-window series (requests, 5xx rate, p99 latency).
//!
//! Every window is judged by a robust baseline: the median and MAD of the previous
//! `baseline_windows`, with noise floors (Poisson for counts, binomial for the 5xx share). Once a
//! host has `model_history` windows, an augurs model (AutoETS; MSTL with a daily season when two
//! days are available) is fitted off the actor and a window must also leave its 99% prediction
//! interval. Either way it must move by a practical margin (ratio guards), and 5xx rate and p99
//! are only judged on windows with enough requests: that keeps false alarms rare on small hosts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use wtm_config::DetectorConfig;
use wtm_messages::{Anomaly, Forecast, WindowPoint};

pub const METRICS: [&str; 3] = ["requests", "error_rate", "latency_p99_ms"];
const MAX_ANOMALIES: usize = 10_000;
/// Values handed to a model fit.
const MAX_FIT_POINTS: usize = 2 * 1440 + 60;

/// A model fit to run off the actor.
#[derive(Debug, Clone)]
pub struct FitJob {
    pub host: String,
    pub last_start_ms: i64,
    pub window_ms: i64,
    pub series: [Vec<f64>; 3],
    pub season: Option<usize>,
    pub horizon: usize,
}

#[derive(Default)]
struct HostSeries {
    points: BTreeMap<i64, WindowPoint>,
    since_fit: usize,
    forecasts: [Option<Forecast>; 3],
}

pub struct DetectorState {
    cfg: DetectorConfig,
    window_ms: i64,
    hosts: HashMap<String, HostSeries>,
    anomalies: VecDeque<Anomaly>,
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

impl DetectorState {
    pub fn new(cfg: DetectorConfig, window_ms: i64) -> DetectorState {
        DetectorState {
            cfg,
            window_ms,
            hosts: HashMap::new(),
            anomalies: VecDeque::new(),
        }
    }

    /// Judge a closed window; returns the anomalies it raised and maybe a model fit to run.
    pub fn observe(&mut self, host: &str, p: WindowPoint) -> (Vec<Anomaly>, Option<FitJob>) {
        let cfg = self.cfg.clone();
        let window_ms = self.window_ms;
        let series = self.hosts.entry(host.to_owned()).or_default();
        let history: Vec<WindowPoint> = series
            .points
            .range(..p.start_ms)
            .rev()
            .take(cfg.baseline_windows)
            .map(|(_, v)| *v)
            .collect();
        let is_newest = series
            .points
            .last_key_value()
            .is_none_or(|(s, _)| *s < p.start_ms);
        series.points.insert(p.start_ms, p);
        while series.points.len() > MAX_FIT_POINTS {
            series.points.pop_first();
        }
        let mut found = Vec::new();
        if history.len() >= cfg.min_history {
            for (metric, metric_name) in METRICS.iter().enumerate() {
                let x = value(&p, metric);
                let mut hist: Vec<f64> = history.iter().map(|h| value(h, metric)).collect();
                let med = median(&mut hist);
                let mut dev: Vec<f64> = hist.iter().map(|h| (h - med).abs()).collect();
                if !enough_requests(metric, p.requests) {
                    continue;
                }
                // Noise floors: Poisson for counts, binomial for the 5xx share.
                let floor = match metric {
                    0 => med.max(1.0).sqrt().max(0.05 * med),
                    1 => {
                        let share = med.max(0.01);
                        (share * (1.0 - share) / p.requests).sqrt().max(0.005)
                    }
                    _ => (0.1 * med).max(1.0),
                };
                let sigma = (1.4826 * median(&mut dev)).max(floor);
                let score = (x - med) / sigma;
                let forecast = series.forecasts[metric].as_ref().and_then(|f| {
                    let k = (p.start_ms - f.first_start_ms).checked_div(window_ms)?;
                    let k = usize::try_from(k).ok()?;
                    Some((
                        f.point.get(k)?.max(0.0),
                        f.lower.get(k)?.max(0.0),
                        *f.upper.get(k)?,
                        f.model,
                    ))
                });
                // With a model, its interval must also be left: it knows trend and season, which
                // the baseline does not.
                let band = cfg.threshold * sigma;
                let (expected, lower, upper, model) =
                    forecast.unwrap_or((med, (med - band).max(0.0), med + band, "baseline"));
                let outside = score.abs() >= cfg.threshold && (x < lower || x > upper);
                // The guard compares with the robust median, which an anomaly cannot drag along.
                if let (true, Some(kind)) = (outside, guard(metric, x, med)) {
                    found.push(Anomaly {
                        host: host.to_owned(),
                        metric: (*metric_name).to_owned(),
                        window_start_ms: p.start_ms,
                        observed: x,
                        expected,
                        lower,
                        upper,
                        score,
                        kind: kind.to_owned(),
                        model: model.to_owned(),
                    });
                }
            }
        }
        for a in &found {
            self.anomalies.retain(|b| {
                !(b.host == a.host
                    && b.metric == a.metric
                    && b.window_start_ms == a.window_start_ms)
            });
            self.anomalies.push_back(a.clone());
        }
        while self.anomalies.len() > MAX_ANOMALIES {
            self.anomalies.pop_front();
        }
        let mut job = None;
        if is_newest {
            series.since_fit += 1;
            if series.points.len() >= cfg.model_history && series.since_fit >= cfg.refit_every {
                series.since_fit = 0;
                let day = (86_400_000 / window_ms) as usize;
                let n = series.points.len();
                let take = |m: usize| {
                    series
                        .points
                        .values()
                        .map(|v| value(v, m))
                        .collect::<Vec<f64>>()
                };
                job = Some(FitJob {
                    host: host.to_owned(),
                    last_start_ms: p.start_ms,
                    window_ms,
                    series: [take(0), take(1), take(2)],
                    season: (day >= 2 && n >= 2 * day).then_some(day),
                    horizon: cfg.refit_every + 2,
                });
            }
        }
        (found, job)
    }

    /// A host's past windows, taken as history without judging them: the points a new home
    /// rebuilt from the lake. A window already judged here keeps its point.
    pub fn seed(&mut self, host: &str, points: Vec<WindowPoint>) {
        let series = self.hosts.entry(host.to_owned()).or_default();
        for p in points {
            series.points.entry(p.start_ms).or_insert(p);
        }
        while series.points.len() > MAX_FIT_POINTS {
            series.points.pop_first();
        }
    }

    /// Drop the series of hosts `keep` rejects (homes moved elsewhere): memory follows the
    /// hosts this node judges. Raised anomalies stay listed.
    pub fn retain_hosts(&mut self, keep: impl Fn(&str) -> bool) {
        self.hosts.retain(|h, _| keep(h));
    }

    /// Hosts with a series here.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    pub fn install(&mut self, forecasts: Vec<Forecast>) {
        for f in forecasts {
            if let Some(s) = self.hosts.get_mut(&f.host) {
                let m = f.metric;
                s.forecasts[m] = Some(f);
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
}

/// Fit each metric's model and forecast the next windows with 99% intervals. Blocking (CPU).
pub fn fit(job: &FitJob) -> Vec<Forecast> {
    use augurs::ets::AutoETS;
    use augurs::mstl::MSTLModel;
    use augurs::{Fit, Predict};
    let mut out = Vec::new();
    for (metric, y) in job.series.iter().enumerate() {
        let y: Vec<f64> = y.iter().rev().take(MAX_FIT_POINTS).rev().copied().collect();
        let result = match job.season {
            Some(day) => MSTLModel::new(vec![day], AutoETS::non_seasonal().into_trend_model())
                .fit(&y)
                .and_then(|f| f.predict(job.horizon, 0.99))
                .map(|f| (f, "mstl"))
                .map_err(|e| e.to_string()),
            None => AutoETS::non_seasonal()
                .fit(&y)
                .and_then(|f| f.predict(job.horizon, 0.99))
                .map(|f| (f, "ets"))
                .map_err(|e| e.to_string()),
        };
        match result {
            Ok((f, model)) => {
                if let Some(iv) = f.intervals {
                    out.push(Forecast {
                        host: job.host.clone(),
                        metric,
                        model,
                        first_start_ms: job.last_start_ms + job.window_ms,
                        point: f.point,
                        lower: iv.lower,
                        upper: iv.upper,
                    });
                }
            }
            Err(e) => {
                tracing::debug!(host = %job.host, metric = METRICS[metric], error = %e, "model fit failed")
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
        d.seed("h", past);
        assert!(d.anomalies(None, i64::MIN).is_empty());
        // The very next window is judged against the seeded baseline.
        let (a, _) = d.observe("h", point(40, 3000.0, 0.01, 200.0));
        assert_eq!(a.len(), 1, "{a:?}");
        d.retain_hosts(|h| h != "h");
        assert_eq!(d.host_count(), 0);
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
            let (a, _) = d.observe("h", point(i, 600.0 * wobble, 0.01 * wobble, 200.0 * wobble));
            assert!(a.is_empty(), "{a:?}");
        }
        let kinds = |a: Vec<Anomaly>| a.into_iter().map(|a| a.kind).collect::<Vec<_>>();
        assert_eq!(
            kinds(d.observe("h", point(40, 3000.0, 0.01, 200.0)).0),
            vec!["traffic_spike"]
        );
        assert_eq!(
            kinds(d.observe("h", point(41, 60.0, 0.01, 200.0)).0),
            vec!["traffic_drop"]
        );
        assert_eq!(
            kinds(d.observe("h", point(42, 600.0, 0.4, 200.0)).0),
            vec!["error_burst"]
        );
        assert_eq!(
            kinds(d.observe("h", point(43, 600.0, 0.01, 1200.0)).0),
            vec!["latency_degradation"]
        );
        assert_eq!(d.anomalies(Some("h"), 0).len(), 4);
    }

    #[test]
    fn ets_fit_gives_intervals_around_a_steady_series() {
        let job = FitJob {
            host: "h".into(),
            last_start_ms: 0,
            window_ms: 60_000,
            series: [
                (0..80).map(|i| 500.0 + (i % 5) as f64 * 3.0).collect(),
                vec![0.01; 80],
                (0..80).map(|i| 200.0 + (i % 3) as f64).collect(),
            ],
            season: None,
            horizon: 5,
        };
        let f = fit(&job);
        assert!(!f.is_empty());
        let req = f.iter().find(|f| f.metric == 0).unwrap();
        assert!(req.lower[0] < 506.0 && req.upper[0] > 500.0, "{req:?}");
        assert_eq!(req.model, "ets");
    }
}
