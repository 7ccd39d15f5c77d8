//! What drove an anomalous window: the keys (paths, client networks, user agents, referrers,
//! status codes; for latency, the paths the serving time went to) whose share moved most against
//! the baseline windows before it, and how much of the change in requests each accounts for.
//!
//! Counts come from the windows' top-K summaries (exact below their capacity, upper bounds
//! above it: see [`crate::sketch::TopK`]) and the exact status codes. Client addresses are
//! counted by network (IPv4 /24, IPv6 /48): one address is rarely the story, its network often
//! is (a scraper's range, a cloud's).

use crate::agg::{network_name, path_id, WindowAgg};
use crate::sketch::TopK;
use std::collections::BTreeMap;

/// Keys compared per dimension: the top of the window and of the baseline.
const KEYS: usize = 100;

/// What an episode is about: it decides what a key's part of the change is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved {
    /// Requests per window: a key's part of the extra (or missing) requests.
    Requests,
    /// The 5xx share: a key's change of share.
    ErrorRate,
    /// p99 latency: a key's change of share, and the paths' share of the serving time.
    Latency,
}

impl Moved {
    /// The episode metric's name (`requests`, `error_rate`, `latency_p99_ms`).
    pub fn of_metric(metric: &str) -> Moved {
        match metric {
            "requests" => Moved::Requests,
            "latency_p99_ms" => Moved::Latency,
            _ => Moved::ErrorRate,
        }
    }
}

/// One key whose share moved.
#[derive(Debug, Clone, PartialEq)]
pub struct Driver {
    /// `path`, `network`, `user_agent`, `referrer`, `status`, or `path_time` (latency
    /// episodes: a path's share of the milliseconds spent answering, not of the requests).
    pub dimension: &'static str,
    pub key: String,
    /// The key's share of the requests (of the time, for `path_time`) in the baseline windows
    /// and in the window.
    pub baseline_share: f64,
    pub observed_share: f64,
    /// Its part of the change: of the extra (or missing) requests when the episode is about
    /// requests and they moved by more than 5% of the baseline's mean, else its change of share.
    pub contribution: f64,
}

/// Requests (or milliseconds) per key of one dimension.
type Counts = BTreeMap<String, u64>;

fn counts(t: &TopK) -> Counts {
    t.top(KEYS).into_iter().collect()
}

/// Counts of an id-keyed summary, by name.
fn named(t: &TopK<u64>, name: impl Fn(u64) -> String) -> Counts {
    let mut out = Counts::new();
    for (id, c) in t.top(KEYS) {
        *out.entry(name(id)).or_default() += c;
    }
    out
}

/// Path names by [`path_id`], from the windows' path summaries.
pub fn path_names<'a>(aggs: impl IntoIterator<Item = &'a WindowAgg>) -> BTreeMap<u64, String> {
    aggs.into_iter()
        .flat_map(|a| a.paths.top(KEYS))
        .map(|(p, _)| (path_id(&p), p))
        .collect()
}

/// A path id's name, or what stands for a path whose name was not kept.
pub fn path_name(names: &BTreeMap<u64, String>, id: u64) -> String {
    names
        .get(&id)
        .cloned()
        .unwrap_or_else(|| format!("(a path outside the top {KEYS}, #{id:016x})"))
}

/// The change in requests to explain, when there is one: a traffic episode whose requests moved
/// by more than 5% of the baseline's mean.
fn extra_requests(observed: &WindowAgg, baseline: &WindowAgg, n: f64, moved: Moved) -> Option<f64> {
    let extra = observed.requests as f64 - baseline.requests as f64 / n;
    (moved == Moved::Requests && extra.abs() >= (0.05 * baseline.requests as f64 / n).max(1.0))
        .then_some(extra)
}

/// One dimension's counts in the window and the baseline, with the totals their shares are of.
struct Dimension {
    name: &'static str,
    observed: Counts,
    baseline: Counts,
    totals: (f64, f64),
}

fn dimensions(observed: &WindowAgg, baseline: &WindowAgg, moved: Moved) -> Vec<Dimension> {
    let requests = (observed.requests as f64, baseline.requests as f64);
    let status = |a: &WindowAgg| -> Counts {
        a.status_codes
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect()
    };
    let paths = path_names([observed, baseline]);
    let top = |name, of: fn(&WindowAgg) -> &TopK| Dimension {
        name,
        observed: counts(of(observed)),
        baseline: counts(of(baseline)),
        totals: requests,
    };
    let mut dims = vec![
        top("path", |a| &a.paths),
        Dimension {
            name: "network",
            observed: named(&observed.networks, network_name),
            baseline: named(&baseline.networks, network_name),
            totals: requests,
        },
        top("user_agent", |a| &a.user_agents),
        top("referrer", |a| &a.referrers),
        Dimension {
            name: "status",
            observed: status(observed),
            baseline: status(baseline),
            totals: requests,
        },
    ];
    if moved == Moved::Latency {
        dims.push(Dimension {
            name: "path_time",
            observed: named(&observed.path_time, |id| path_name(&paths, id)),
            baseline: named(&baseline.path_time, |id| path_name(&paths, id)),
            totals: (
                observed.latency_ms_total as f64,
                baseline.latency_ms_total as f64,
            ),
        });
    }
    dims
}

/// The drivers of `observed` against `baseline` (the merge of the `n` windows before it), for
/// an episode about `moved`: per dimension, the `per_dimension` keys that stand out most; all of
/// them, largest contribution first.
///
/// A key stands out by its lift: how much more of the change it accounts for than its usual
/// share (a spike that is the same traffic, only more, lifts no key: each brings its share).
/// Only keys lifted by at least 5 points are drivers.
pub fn drivers(
    observed: &WindowAgg,
    baseline: &WindowAgg,
    n: usize,
    per_dimension: usize,
    moved: Moved,
) -> Vec<Driver> {
    let n = n.max(1) as f64;
    let extra = extra_requests(observed, baseline, n, moved);
    let share = |c: u64, total: f64| if total > 0.0 { c as f64 / total } else { 0.0 };
    let mut out = Vec::new();
    for dim in dimensions(observed, baseline, moved) {
        let (obs, base) = (&dim.observed, &dim.baseline);
        // Time by path is a share of milliseconds: only its change of share means anything.
        let extra = extra.filter(|_| dim.name != "path_time");
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
                let (observed_share, baseline_share) =
                    (share(o, dim.totals.0), share(b, dim.totals.1));
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
                    dimension: dim.name,
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
    moved: Moved,
) -> String {
    let pct = |x: f64| format!("{:.0}%", 100.0 * x);
    let mut seen = std::collections::BTreeSet::new();
    let parts: Vec<String> = drivers
        .iter()
        .filter(|d| seen.insert(d.dimension))
        .take(3)
        .map(|d| {
            let (what, of) = match d.dimension {
                "path_time" => ("time on path".to_owned(), "of the serving time"),
                other => (other.replace('_', " "), "of requests"),
            };
            format!(
                "{what} {} ({} → {} {of})",
                d.key,
                pct(d.baseline_share),
                pct(d.observed_share)
            )
        })
        .collect();
    let Some(top) = drivers.first() else {
        return "no single path, network, user agent, referrer or status stands out".into();
    };
    let lead = match extra_requests(observed, baseline, n.max(1) as f64, moved) {
        Some(extra) if top.dimension != "path_time" => {
            let what = if extra > 0.0 { "extra" } else { "missing" };
            format!("{} of the {what} requests", pct(top.contribution))
        }
        _ => "share moved".to_owned(),
    };
    format!("{lead}: {}", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agg::network_of;
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
        let d = drivers(&observed, &baseline, 10, 2, Moved::Requests);
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
        let s = summary(&d, &observed, &baseline, 10, Moved::Requests);
        assert!(
            s.starts_with("100% of the extra requests: path /wp-login.php (0% → 81% of requests)"),
            "{s}"
        );
        // The same traffic as its baseline: nothing stands out.
        let calm = drivers(&window(140, 0), &baseline, 10, 2, Moved::Requests);
        assert!(calm.is_empty(), "{calm:?}");
        // Three times the same traffic: every key brings its share, none stands out.
        let mut more = window(140, 0);
        more.merge(&window(140, 0)).unwrap();
        more.merge(&window(140, 0)).unwrap();
        assert!(drivers(&more, &baseline, 10, 2, Moved::Requests).is_empty());
        // Not a traffic episode (the 5xx share, say): shares that moved, by how much.
        let d = drivers(&observed, &baseline, 10, 2, Moved::ErrorRate);
        assert_eq!(
            (d[0].key.as_str(), (d[0].contribution * 740.0).round()),
            ("/wp-login.php", 600.0)
        );
    }

    fn event(path: &str, ip: &str, latency_ms: f64) -> Event {
        Event {
            ts_ms: 0,
            host: "h".into(),
            method: "GET".into(),
            path: path.into(),
            status: 200,
            bytes: 10,
            latency_ms: Some(latency_ms),
            client_ip: Some(ip.into()),
            user_agent: Some("Mozilla/5.0".into()),
            referrer: None,
        }
    }

    /// `n` requests over 10 paths (`/` one in ten) from 25 networks (fewer than the networks'
    /// summary keeps: exact counts); `/` answered in `slow` ms, the rest in 20; and `surge` more
    /// from 203.0.113.0/24.
    fn site(n: usize, slow: f64, surge: usize) -> WindowAgg {
        let mut a = WindowAgg::default();
        for i in 0..n {
            let path = if i % 10 == 0 {
                "/".to_owned()
            } else {
                format!("/p{}", i % 10)
            };
            let ip = format!("198.51.{}.7", i % 25);
            a.add(&event(&path, &ip, if path == "/" { slow } else { 20.0 }));
        }
        for i in 0..surge {
            // The site's usual paths: only the network stands out.
            let path = if i % 10 == 0 {
                "/".to_owned()
            } else {
                format!("/p{}", i % 10)
            };
            a.add(&event(
                &path,
                &format!("203.0.113.{}", 1 + i % 250),
                if path == "/" { slow } else { 20.0 },
            ));
        }
        a
    }

    #[test]
    fn a_surge_is_explained_by_its_network_and_a_slow_path_by_its_time() {
        let mut baseline = WindowAgg::default();
        for _ in 0..10 {
            baseline.merge(&site(1000, 20.0, 0)).unwrap();
        }
        let surge = site(1000, 20.0, 2000);
        let d = drivers(&surge, &baseline, 10, 3, Moved::Requests);
        assert_eq!(
            (d[0].dimension, d[0].key.as_str()),
            ("network", "203.0.113.0/24")
        );
        assert!(
            (d[0].contribution - 1.0).abs() < 1e-9 && d.len() == 1,
            "{d:?}"
        );
        assert!(
            summary(&d, &surge, &baseline, 10, Moved::Requests).starts_with(
                "100% of the extra requests: network 203.0.113.0/24 (0% → 67% of requests)"
            )
        );
        // `/` answered in 400 ms instead of 20: its share of requests stays at 10%, its share
        // of the time goes from 10% to 100 × 400 / (100 × 400 + 900 × 20) = 69%.
        let slow = site(1000, 400.0, 0);
        let d = drivers(&slow, &baseline, 10, 3, Moved::Latency);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!((d[0].dimension, d[0].key.as_str()), ("path_time", "/"));
        assert!((d[0].baseline_share - 0.1).abs() < 1e-9);
        assert!((d[0].observed_share - 40_000.0 / 58_000.0).abs() < 1e-9);
        let s = summary(&d, &slow, &baseline, 10, Moved::Latency);
        assert_eq!(
            s,
            "share moved: time on path / (10% → 69% of the serving time)"
        );
        // Every path slower alike: no path's share of the time moves.
        let every_request_in = |ms: f64| {
            let mut a = WindowAgg::default();
            for i in 0..1000 {
                a.add(&event(
                    if i % 10 == 0 { "/" } else { "/p1" },
                    "198.0.0.7",
                    ms,
                ));
            }
            a
        };
        let (all_slow, even) = (every_request_in(400.0), every_request_in(20.0));
        assert!(drivers(&all_slow, &even, 1, 3, Moved::Latency).is_empty());
        let name = |ip| network_of(ip).map(network_name);
        assert_eq!(name("2001:db8:1:2::5").as_deref(), Some("2001:db8:1::/48"));
        assert_eq!(name("203.0.113.77").as_deref(), Some("203.0.113.0/24"));
        assert_eq!(name("not an address"), None);
    }
}
