//! The augurs models behind the detector's second opinion: ETS on a host's recent windows,
//! MSTL with a daily season (its trend by the same ETS) once two days are kept. Blocking CPU work:
//! the actor runs it on the blocking pool, `wtm detect` in line.
//!
//! The trend (ETS) is fitted on the newest [`TREND_POINTS`] values only. Its cost is linear in
//! the points and it was 95% of `wtm detect`'s time when fitted on all of them (perf, 2,304-point
//! series); the level a trend model forecasts is a matter of the recent past, while the
//! seasonal part sees up to four days.

use super::state::{FitJob, METRICS};
use augurs::ets::model::{
    ErrorComponent, Model, ModelType, SeasonalComponent, TrendComponent, Unfit,
};
use augurs::mstl::{FittedTrendModel, MSTLModel, TrendModel};
use augurs::{Fit, Forecast as ModelForecast, Predict};
use std::borrow::Cow;
use wtm_messages::Forecast;

/// Values the trend model is fitted on.
pub const TREND_POINTS: usize = 288;
/// Days of values the seasonal decomposition sees (STL's cost is linear in them too).
const SEASON_DAYS: usize = 4;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Simple exponential smoothing with additive errors, ETS(A,N,N), on the newest
/// [`TREND_POINTS`] values. AutoETS's full non-seasonal search (six candidates) took twice the
/// time for the same precision and recall on bench/detection.py's series: over a dozen windows
/// ahead, a level is what matters. (`AutoETS` with spec `ANN` finds no model in augurs 0.10.3,
/// whatever the data: the model is fitted directly.)
fn fit_level(y: &[f64]) -> Result<Model, BoxError> {
    let spec = ModelType {
        error: ErrorComponent::Additive,
        trend: TrendComponent::None,
        season: SeasonalComponent::None,
    };
    Ok(Unfit::new(spec).fit(&y[y.len().saturating_sub(TREND_POINTS)..])?)
}

/// [`fit_level`] as MSTL's trend model.
#[derive(Debug)]
struct LevelTrend;

#[derive(Debug)]
struct FittedLevel(Model);

impl TrendModel for LevelTrend {
    fn name(&self) -> Cow<'_, str> {
        Cow::Borrowed("ETS(A,N,N)")
    }

    fn fit(&self, y: &[f64]) -> Result<Box<dyn FittedTrendModel + Sync + Send>, BoxError> {
        Ok(Box::new(FittedLevel(fit_level(y)?)))
    }
}

impl FittedTrendModel for FittedLevel {
    fn predict_inplace(
        &self,
        horizon: usize,
        level: Option<f64>,
        forecast: &mut ModelForecast,
    ) -> Result<(), BoxError> {
        Ok(self.0.predict_inplace(horizon, level, forecast)?)
    }

    fn predict_in_sample_inplace(
        &self,
        level: Option<f64>,
        forecast: &mut ModelForecast,
    ) -> Result<(), BoxError> {
        Ok(self.0.predict_in_sample_inplace(level, forecast)?)
    }

    fn training_data_size(&self) -> Option<usize> {
        Some(self.0.training_data_size())
    }
}

/// Fit each metric's model and forecast the next windows with 99% intervals.
pub fn fit(job: &FitJob) -> Vec<Forecast> {
    let mut out = Vec::new();
    for (metric, y) in job.series.iter().enumerate() {
        if !job.metrics[metric] {
            continue;
        }
        let result = match job.season {
            Some(day) => MSTLModel::new(vec![day], LevelTrend)
                .fit(&y[y.len().saturating_sub(SEASON_DAYS * day)..])
                .and_then(|f| f.predict(job.horizon, 0.99))
                .map(|f| (f, "mstl"))
                .map_err(|e| e.to_string()),
            None => fit_level(y)
                .and_then(|f| Ok(f.predict(job.horizon, 0.99)?))
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
            metrics: [true; 3],
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
