//! The detector over one series, offline (`wtm detect`): the same state, scores, episodes and
//! models as a node's detector, fed row by row, with model fits run in line (so a run is
//! deterministic).

use super::model::fit;
use super::state::{DetectorState, Observed};
use wtm_config::DetectorConfig;
use wtm_messages::{Episode, WindowPoint};

/// Which noise model a series gets: the node's metric with that model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesKind {
    /// Counts per interval (Poisson floor), like a site's requests.
    Count,
    /// A share in [0, 1] (binomial floor), like the 5xx rate.
    Ratio,
    /// A latency (floor 10%), like p99.
    Latency,
}

impl SeriesKind {
    fn metric(self) -> usize {
        match self {
            SeriesKind::Count => 0,
            SeriesKind::Ratio => 1,
            SeriesKind::Latency => 2,
        }
    }
}

/// Rows used to infer the interval (the median gap between the first timestamps).
pub const INFER_ROWS: usize = 16;
/// The host name episodes of an offline series carry.
pub const SERIES_HOST: &str = "series";

/// A row that cannot be judged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RowError {
    #[error("timestamp {ts_ms} ms is not after the previous row's ({previous_ms} ms): rows must be in increasing time order")]
    OutOfOrder { ts_ms: i64, previous_ms: i64 },
    #[error("value {0} is not a finite number ≥ 0")]
    BadValue(f64),
    #[error("value {0} is not a share in [0, 1] (--kind ratio)")]
    NotAShare(f64),
}

/// What one row came to.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub ts_ms: i64,
    pub value: f64,
    /// None before the detector has `min_history` rows.
    pub score: Option<f64>,
    /// Episodes this row ended.
    pub ended: Vec<Episode>,
}

pub struct SeriesDetector {
    cfg: DetectorConfig,
    kind: SeriesKind,
    /// Rows held until the interval is known.
    pending: Vec<(i64, f64)>,
    state: Option<DetectorState>,
    interval_ms: Option<i64>,
    last_ms: Option<i64>,
}

impl SeriesDetector {
    pub fn new(cfg: DetectorConfig, kind: SeriesKind) -> SeriesDetector {
        SeriesDetector {
            cfg,
            kind,
            pending: Vec::new(),
            state: None,
            interval_ms: None,
            last_ms: None,
        }
    }

    /// The interval inferred (None until [`INFER_ROWS`] rows or the end).
    pub fn interval_ms(&self) -> Option<i64> {
        self.interval_ms
    }

    /// Add a row; returns the rows judged now (held rows come out once the interval is known).
    pub fn push(&mut self, ts_ms: i64, value: f64) -> Result<Vec<Scored>, RowError> {
        if !value.is_finite() || value < 0.0 {
            return Err(RowError::BadValue(value));
        }
        if self.kind == SeriesKind::Ratio && value > 1.0 {
            return Err(RowError::NotAShare(value));
        }
        if let Some(previous_ms) = self.last_ms.filter(|p| ts_ms <= *p) {
            return Err(RowError::OutOfOrder { ts_ms, previous_ms });
        }
        self.last_ms = Some(ts_ms);
        self.pending.push((ts_ms, value));
        if self.state.is_none() && self.pending.len() < INFER_ROWS {
            return Ok(Vec::new());
        }
        Ok(self.drain())
    }

    /// The end of the input: the held rows, and the episodes still ongoing (no end).
    pub fn finish(&mut self) -> (Vec<Scored>, Vec<Episode>) {
        let rows = self.drain();
        let ongoing = self
            .state
            .as_ref()
            .map(|s| s.episodes(None, i64::MIN))
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.end_ms.is_none())
            .collect();
        (rows, ongoing)
    }

    fn drain(&mut self) -> Vec<Scored> {
        if self.state.is_none() {
            let mut gaps: Vec<i64> = self.pending.windows(2).map(|w| w[1].0 - w[0].0).collect();
            gaps.sort_unstable();
            let interval = gaps.get(gaps.len() / 2).copied().unwrap_or(60_000).max(1);
            self.interval_ms = Some(interval);
            self.state = Some(DetectorState::new(self.cfg.clone(), interval));
        }
        let rows = std::mem::take(&mut self.pending);
        rows.into_iter().map(|(ts, v)| self.judge(ts, v)).collect()
    }

    fn judge(&mut self, ts_ms: i64, value: f64) -> Scored {
        let metric = self.kind.metric();
        // Only the chosen metric carries the value; the others stay at 0 (never anomalous),
        // and enough "requests" that a share or a latency is always judged.
        let point = WindowPoint {
            start_ms: ts_ms,
            requests: if metric == 0 { value } else { 1e9 },
            error_rate: if metric == 1 { value } else { 0.0 },
            latency_p99_ms: if metric == 2 { value } else { 0.0 },
        };
        let state = self.state.as_mut().expect("drain sets the state first");
        let Observed {
            scores,
            ended,
            fit_due,
            ..
        } = state.observe(SERIES_HOST, point);
        if let Some(mut job) = state.fit_job(SERIES_HOST).filter(|_| fit_due) {
            job.metrics = [metric == 0, metric == 1, metric == 2];
            state.install(fit(&job));
        }
        Scored {
            ts_ms,
            value,
            score: scores[metric].map(f64::from),
            ended: ended
                .into_iter()
                .filter(|e| e.metric == super::METRICS[metric])
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infers_the_interval_scores_a_spike_and_reports_one_episode() {
        let mut d = SeriesDetector::new(DetectorConfig::default(), SeriesKind::Count);
        let mut out = Vec::new();
        for i in 0..80i64 {
            let wobble = [0.0, 7.0, -5.0, 3.0, -8.0][i as usize % 5];
            let v = if (50..53).contains(&i) {
                900.0
            } else {
                300.0 + wobble
            };
            out.extend(d.push(1_700_000_000_000 + i * 300_000, v).unwrap());
        }
        let (rest, ongoing) = d.finish();
        out.extend(rest);
        assert_eq!(d.interval_ms(), Some(300_000));
        assert_eq!(out.len(), 80);
        assert!(out[..15].iter().all(|r| r.score.is_none()));
        let high: Vec<usize> = (0..80)
            .filter(|i| out[*i].score.is_some_and(|s| s >= 0.5))
            .collect();
        assert_eq!(high, vec![50, 51, 52]);
        let ended: Vec<&Episode> = out.iter().flat_map(|r| &r.ended).collect();
        assert_eq!(ended.len(), 1, "{ended:?}");
        let e = ended[0];
        assert_eq!((e.windows, e.kind.as_str()), (3, "traffic_spike"));
        assert_eq!((e.start_ms, e.end_ms), (out[50].ts_ms, Some(out[53].ts_ms)));
        assert!(ongoing.is_empty());
        // Bad rows are errors, not panics.
        assert!(matches!(d.push(0, 1.0), Err(RowError::OutOfOrder { .. })));
        assert!(matches!(
            d.push(i64::MAX, f64::NAN),
            Err(RowError::BadValue(_))
        ));
    }

    /// Three weeks of 5-minute counts with a daily cycle and weekends at half the weekday level.
    fn weekly_series(cfg: DetectorConfig) -> Vec<Episode> {
        // 2026-01-05T00:00:00Z, a Monday.
        const MONDAY_MS: i64 = 1_767_571_200_000;
        let mut d = SeriesDetector::new(cfg, SeriesKind::Count);
        let mut episodes = Vec::new();
        let mut noise = 0x2545_f491_4f6c_dd1d_u64;
        for i in 0..3 * 7 * 288i64 {
            noise ^= noise << 13;
            noise ^= noise >> 7;
            noise ^= noise << 17;
            let wobble = (noise % 1000) as f64 / 1000.0 - 0.5;
            let day = i / 288;
            let daily = 1.0 + 0.35 * (std::f64::consts::TAU * (i % 288) as f64 / 288.0).sin();
            let weekly = if day % 7 >= 5 { 0.5 } else { 1.0 };
            let level = 400.0 * daily * weekly;
            let v = level + wobble * 3.0 * level.sqrt();
            for r in d.push(MONDAY_MS + i * 300_000, v).unwrap() {
                episodes.extend(r.ended);
            }
        }
        let (_, ongoing) = d.finish();
        episodes.extend(ongoing);
        episodes
    }

    #[test]
    fn a_learned_week_keeps_the_weekend_step_from_looking_like_a_spike() {
        let monday_of_week_2 = 1_767_571_200_000 + 7 * 86_400_000;
        let late = |eps: &[Episode]| {
            eps.iter()
                .filter(|e| e.start_ms >= monday_of_week_2)
                .count()
        };
        let without = weekly_series(DetectorConfig {
            weekly_season: false,
            ..DetectorConfig::default()
        });
        assert!(
            late(&without) >= 2,
            "each Monday's return to weekday traffic is a spike without the week: {without:?}"
        );
        let with = weekly_series(DetectorConfig::default());
        assert_eq!(late(&with), 0, "{with:?}");
    }
}
