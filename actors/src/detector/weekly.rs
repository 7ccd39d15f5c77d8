//! A site's weekly shape: its mean requests per window in each hour of the week, learned as
//! windows are judged. Traffic on a Sunday is not Monday's, and without this the step where a
//! weekend's dip ends looked like a spike against the hours before it (bench/RESULTS-detection.md,
//! before this). A window's *weekly factor* is its hour's level over the mean level of the same
//! hour of day across the week's seven days; the detector divides request counts by it before
//! judging or fitting them, so what is left is the daily cycle (the model's season) and noise.
//!
//! Learned per hour of day once each day of the week has been seen at it (a week of history);
//! each hour's level is an exponentially weighted mean over the weeks, so the shape follows the
//! site, and windows found anomalous are left out of it. 168 levels per site: kept in the
//! detector's checkpoint, written when an hour is folded in (once an hour per site).

use serde::{Deserialize, Serialize};

pub const HOURS_PER_WEEK: usize = 168;
const HOUR_MS: i64 = 3_600_000;
/// Weight of the newest week in an hour's level.
const ALPHA: f32 = 0.3;
/// Factors are kept within these: a week's shape moves traffic, it does not switch it off.
const FACTOR_RANGE: (f64, f64) = (0.2, 5.0);
/// An hour of day this quiet (mean requests per window over the week) gets no factor: counts
/// that small are noise, not a shape.
const MIN_DAILY_LEVEL: f32 = 1.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeeklyProfile {
    /// Mean requests per window in each hour of the week (UTC, Monday 00:00 first); NaN: not
    /// seen yet.
    levels: Vec<f32>,
    /// The newest window taken in (a replayed one at or before it is not taken twice).
    last_ms: i64,
    /// The hour being gathered (hours since the epoch), its requests and windows so far.
    hour: i64,
    sum: f64,
    windows: u32,
}

impl Default for WeeklyProfile {
    fn default() -> Self {
        WeeklyProfile {
            levels: vec![f32::NAN; HOURS_PER_WEEK],
            last_ms: i64::MIN,
            hour: i64::MIN,
            sum: 0.0,
            windows: 0,
        }
    }
}

/// The hour of the week of hour `h` since the epoch (a Thursday): Monday 00:00 is 0.
fn hour_of_week(h: i64) -> usize {
    (h + 72).rem_euclid(HOURS_PER_WEEK as i64) as usize
}

impl WeeklyProfile {
    /// Take in a judged window's requests (left out when `anomalous`). Windows come in time
    /// order; one at or before the newest taken (a replay) is not taken again. Returns true
    /// when an hour was folded into the levels (the profile changed: keep it).
    pub fn observe(&mut self, start_ms: i64, requests: f64, anomalous: bool) -> bool {
        if start_ms <= self.last_ms {
            return false;
        }
        self.last_ms = start_ms;
        let h = start_ms.div_euclid(HOUR_MS);
        let mut folded = false;
        if h > self.hour {
            folded = self.fold();
            self.hour = h;
        }
        if !anomalous && requests.is_finite() {
            self.sum += requests;
            self.windows += 1;
        }
        folded
    }

    fn fold(&mut self) -> bool {
        if self.windows == 0 {
            return false;
        }
        let mean = (self.sum / f64::from(self.windows)) as f32;
        let level = &mut self.levels[hour_of_week(self.hour)];
        *level = if level.is_nan() {
            mean
        } else {
            ALPHA * mean + (1.0 - ALPHA) * *level
        };
        self.sum = 0.0;
        self.windows = 0;
        true
    }

    /// The weekly factor of a window starting at `start_ms` (None: not learned for its hour of
    /// day yet, or too quiet to tell).
    pub fn factor(&self, start_ms: i64) -> Option<f64> {
        let how = hour_of_week(start_ms.div_euclid(HOUR_MS));
        let hour_of_day = how % 24;
        let mut day_sum = 0.0;
        for day in 0..7 {
            let level = self.levels[day * 24 + hour_of_day];
            if level.is_nan() {
                return None;
            }
            day_sum += level;
        }
        let daily = day_sum / 7.0;
        if daily < MIN_DAILY_LEVEL {
            return None;
        }
        Some(f64::from(self.levels[how] / daily).clamp(FACTOR_RANGE.0, FACTOR_RANGE.1))
    }

    /// A profile read back from a checkpoint, if it has the shape this build keeps.
    pub fn is_valid(&self) -> bool {
        self.levels.len() == HOURS_PER_WEEK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW_MS: i64 = 300_000;
    /// 2026-01-05T00:00:00Z, a Monday.
    const MONDAY_MS: i64 = 1_767_571_200_000;

    fn weekend(t_ms: i64) -> bool {
        hour_of_week(t_ms.div_euclid(HOUR_MS)) >= 5 * 24
    }

    #[test]
    fn learns_the_weekend_dip_after_a_week_and_leaves_anomalies_out() {
        let mut w = WeeklyProfile::default();
        let level = |t: i64| if weekend(t) { 280.0 } else { 400.0 };
        let windows = 8 * 24 * 12;
        let mut learned_at = None;
        for i in 0..windows {
            let t = MONDAY_MS + i * WINDOW_MS;
            if learned_at.is_none() && w.factor(t).is_some() {
                learned_at = Some(i);
            }
            // A spike on the first Tuesday at 10:00, flagged: it must not become the shape.
            let spike = (24 * 12 + 10 * 12..24 * 12 + 10 * 12 + 3).contains(&i);
            w.observe(t, if spike { 5000.0 } else { level(t) }, spike);
        }
        // Every hour of day is seen on all seven days once the first week has passed.
        assert_eq!(learned_at, Some(7 * 24 * 12));
        let week_mean = (5.0 * 400.0 + 2.0 * 280.0) / 7.0;
        let saturday = MONDAY_MS + 7 * 86_400_000 + 5 * 86_400_000 + 3_600_000;
        let tuesday_10 = MONDAY_MS + 7 * 86_400_000 + 86_400_000 + 10 * 3_600_000;
        let f = |t| w.factor(t).unwrap();
        assert!(
            (f(saturday) - 280.0 / week_mean).abs() < 1e-4,
            "{}",
            f(saturday)
        );
        assert!(
            (f(tuesday_10) - 400.0 / week_mean).abs() < 1e-4,
            "{}",
            f(tuesday_10)
        );
        // A window at or before the newest taken changes nothing.
        assert!(!w.observe(MONDAY_MS, 1e6, false));
        assert!((w.factor(MONDAY_MS).unwrap() - 400.0 / week_mean).abs() < 1e-4);
    }

    #[test]
    fn quiet_sites_get_no_factor_and_factors_are_bounded() {
        let mut w = WeeklyProfile::default();
        for i in 0..8 * 24 * 12 {
            let t = MONDAY_MS + i * WINDOW_MS;
            w.observe(t, 0.5, false);
        }
        assert_eq!(w.factor(MONDAY_MS), None, "half a request a window: noise");
        let mut w = WeeklyProfile::default();
        for i in 0..8 * 24 * 12 {
            let t = MONDAY_MS + i * WINDOW_MS;
            w.observe(t, if weekend(t) { 0.0 } else { 1000.0 }, false);
        }
        assert_eq!(w.factor(MONDAY_MS + 6 * 86_400_000), Some(0.2));
        assert!(w.is_valid());
    }
}
