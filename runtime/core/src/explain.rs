//! What drove an anomalous window: the keys (paths, user agents, referrers, status codes) whose
//! share of the requests moved most against the baseline windows before it, and how much of the
//! change in requests each accounts for.
//!
//! Counts come from the windows' top-K summaries (exact below their capacity, upper bounds
//! above it: see [`crate::sketch::TopK`]) and the exact status codes. Client addresses are
//! only counted as distinct (HyperLogLog), so they cannot be named here.

use crate::agg::WindowAgg;
use crate::sketch::TopK;
use std::collections::BTreeMap;

/// Keys compared per dimension: the top of the window and of the baseline.
const KEYS: usize = 100;

/// One key whose share moved.
#[derive(Debug, Clone, PartialEq)]
pub struct Driver {
    /// `path`, `user_agent`, `referrer` or `status`.
    pub dimension: &'static str,
    pub key: String,
    /// The key's share of the requests in the baseline windows and in the window.
    pub baseline_share: f64,
    pub observed_share: f64,
    /// Its part of the change: of the extra (or missing) requests when the episode is about
    /// requests and they moved by more than 5% of the baseline's mean, else its change of share.
    pub contribution: f64,
}

/// Requests per key of one dimension.
type Counts = BTreeMap<String, u64>;

fn counts(t: &TopK) -> Counts {
    t.top(KEYS).into_iter().collect()
}

/// The change in requests to explain, when there is one: a traffic episode whose requests moved
/// by more than 5% of the baseline's mean.
fn extra_requests(
    observed: &WindowAgg,
    baseline: &WindowAgg,
    n: f64,
    traffic: bool,
) -> Option<f64> {
    let extra = observed.requests as f64 - baseline.requests as f64 / n;
    (traffic && extra.abs() >= (0.05 * baseline.requests as f64 / n).max(1.0)).then_some(extra)
}

/// The drivers of `observed` against `baseline` (the merge of the `n` windows before it), for a
/// traffic episode (`traffic`: requests moved) or another (5xx share, latency): per dimension,
/// the `per_dimension` keys that stand out most; all of them, largest contribution first.
///
/// A key stands out by its lift: how much more of the change it accounts for than its usual
/// share (a spike that is the same traffic, only more, lifts no key: each brings its share).
/// Only keys lifted by at least 5 points are drivers.
pub fn drivers(
    observed: &WindowAgg,
    baseline: &WindowAgg,
    n: usize,
    per_dimension: usize,
    traffic: bool,
) -> Vec<Driver> {
    let n = n.max(1) as f64;
    let (obs_total, base_total) = (observed.requests as f64, baseline.requests as f64);
    let extra = extra_requests(observed, baseline, n, traffic);
    let status = |a: &WindowAgg| -> Counts {
        a.status_codes
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect()
    };
    let dims: [(&'static str, Counts, Counts); 4] = [
        ("path", counts(&observed.paths), counts(&baseline.paths)),
        (
            "user_agent",
            counts(&observed.user_agents),
            counts(&baseline.user_agents),
        ),
        (
            "referrer",
            counts(&observed.referrers),
            counts(&baseline.referrers),
        ),
        ("status", status(observed), status(baseline)),
    ];
    let share = |c: u64, total: f64| if total > 0.0 { c as f64 / total } else { 0.0 };
    let mut out = Vec::new();
    for (dimension, obs, base) in dims {
        let mut keys: Vec<Driver> = obs
            .keys()
            .chain(base.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter_map(|k| {
                let (o, b) = (
                    obs.get(k).copied().unwrap_or(0),
                    base.get(k).copied().unwrap_or(0),
                );
                let (observed_share, baseline_share) = (share(o, obs_total), share(b, base_total));
                let (contribution, lift) = match extra {
                    Some(extra) => {
                        let c = (o as f64 - b as f64 / n) / extra;
                        (c, c - baseline_share)
                    }
                    None => {
                        let moved = observed_share - baseline_share;
                        (moved, moved)
                    }
                };
                (lift >= 0.05).then(|| Driver {
                    dimension,
                    key: k.clone(),
                    baseline_share,
                    observed_share,
                    contribution,
                })
            })
            .collect();
        keys.sort_by(|a, b| {
            b.contribution
                .total_cmp(&a.contribution)
                .then_with(|| a.key.cmp(&b.key))
        });
        keys.truncate(per_dimension);
        out.extend(keys);
    }
    out.sort_by(|a, b| b.contribution.total_cmp(&a.contribution));
    out
}

/// One line for people: the largest driver of each dimension, e.g. "78% of the extra requests:
/// path /wp-login.php (2% → 80% of requests); user agent python-requests (0% → 79%)".
pub fn summary(
    drivers: &[Driver],
    observed: &WindowAgg,
    baseline: &WindowAgg,
    n: usize,
    traffic: bool,
) -> String {
    let pct = |x: f64| format!("{:.0}%", 100.0 * x);
    let mut seen = std::collections::BTreeSet::new();
    let parts: Vec<String> = drivers
        .iter()
        .filter(|d| seen.insert(d.dimension))
        .take(3)
        .map(|d| {
            format!(
                "{} {} ({} → {} of requests)",
                d.dimension.replace('_', " "),
                d.key,
                pct(d.baseline_share),
                pct(d.observed_share)
            )
        })
        .collect();
    let Some(top) = drivers.first() else {
        return "no single path, user agent, referrer or status stands out".into();
    };
    let lead = match extra_requests(observed, baseline, n.max(1) as f64, traffic) {
        Some(extra) => {
            let what = if extra > 0.0 { "extra" } else { "missing" };
            format!("{} of the {what} requests", pct(top.contribution))
        }
        None => "share of requests moved".to_owned(),
    };
    format!("{lead}: {}", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn window(n: usize, attack: usize) -> WindowAgg {
        let mut a = WindowAgg::default();
        for i in 0..n + attack {
            let bad = i >= n;
            a.add(&Event {
                ts_ms: 0,
                host: "h".into(),
                method: "GET".into(),
                path: if bad {
                    "/wp-login.php".into()
                } else {
                    format!("/p{}", i % 7)
                },
                status: if bad { 401 } else { 200 },
                bytes: 10,
                latency_ms: Some(5.0),
                client_ip: Some("10.0.0.1".into()),
                user_agent: Some(if bad {
                    "python-requests/2.31".into()
                } else {
                    "Mozilla/5.0".into()
                }),
                referrer: None,
            });
        }
        a
    }

    #[test]
    fn a_login_flood_is_explained_by_its_path_user_agent_and_status() {
        // Baseline: 10 windows of 140 requests; the window: the same plus 600 login attempts.
        let mut baseline = WindowAgg::default();
        for _ in 0..10 {
            baseline.merge(&window(140, 0)).unwrap();
        }
        let observed = window(140, 600);
        let d = drivers(&observed, &baseline, 10, 2, true);
        let top: Vec<(&str, &str)> = d
            .iter()
            .take(3)
            .map(|d| (d.dimension, d.key.as_str()))
            .collect();
        assert_eq!(
            top,
            vec![
                ("path", "/wp-login.php"),
                ("user_agent", "python-requests/2.31"),
                ("status", "401")
            ]
        );
        // All 600 extra requests are the flood's: contribution 1, share 0 → 600/740.
        assert!((d[0].contribution - 1.0).abs() < 1e-9 && d[0].baseline_share == 0.0);
        assert!((d[0].observed_share - 600.0 / 740.0).abs() < 1e-9);
        let s = summary(&d, &observed, &baseline, 10, true);
        assert!(
            s.starts_with("100% of the extra requests: path /wp-login.php (0% → 81% of requests)"),
            "{s}"
        );
        // The same traffic as its baseline: nothing stands out.
        let calm = drivers(&window(140, 0), &baseline, 10, 2, true);
        assert!(calm.is_empty(), "{calm:?}");
        // Three times the same traffic: every key brings its share, none stands out.
        let mut more = window(140, 0);
        more.merge(&window(140, 0)).unwrap();
        more.merge(&window(140, 0)).unwrap();
        assert!(drivers(&more, &baseline, 10, 2, true).is_empty());
        // Not a traffic episode (the 5xx share, say): shares that moved, by how much.
        let d = drivers(&observed, &baseline, 10, 2, false);
        assert_eq!(
            (d[0].key.as_str(), (d[0].contribution * 740.0).round()),
            ("/wp-login.php", 600.0)
        );
    }
}
