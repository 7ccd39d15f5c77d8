//! The detector against the generator's labelled anomalies: each of the four kinds is found
//! within 2 windows of its start, and a clean run of the same length raises few false alarms.
//!
//! Windows are aggregated straight from generated events (no node), then fed to the detector's
//! state in event-time order with model fits run inline, exactly as the actor would.

use std::collections::BTreeMap;
use std::sync::Arc;
use wtm_actors::detector::{fit, DetectorState};
use wtm_config::DetectorConfig;
use wtm_core::agg::WindowAgg;
use wtm_core::generator::{AnomalyLabel, Generator, GeneratorSpec};
use wtm_messages::{Anomaly, WindowPoint};

const WINDOW_MS: i64 = 60_000;
/// A clean 3-hour run over 20 hosts (3,600 host-windows) may raise at most this many alarms.
const MAX_FALSE_ALARMS: usize = 4;

fn spec(anomalies: usize) -> GeneratorSpec {
    GeneratorSpec {
        seed: 11,
        hosts: 20,
        rate: 100.0,
        start_ms: 1_767_225_600_000,
        partitions: 4,
        anomalies,
        kinds: Vec::new(),
        magnitudes: Vec::new(),
        malformed_share: 0.0,
        weekend: GeneratorSpec::DEFAULT_WEEKEND,
        duration_ms: Some(3 * 3_600_000),
        count: None,
    }
}

fn detect(spec: GeneratorSpec) -> (Vec<Anomaly>, Vec<AnomalyLabel>) {
    let g = Arc::new(Generator::new(spec.clone()));
    let mut windows: BTreeMap<(i64, String), WindowAgg> = BTreeMap::new();
    for p in 0..spec.partitions {
        let mut c = g.cursor(p, 0);
        while let Some(e) = c.next_event() {
            let start = e.ts_ms - e.ts_ms.rem_euclid(WINDOW_MS);
            windows.entry((start, e.host.clone())).or_default().add(&e);
        }
    }
    let mut d = DetectorState::new(DetectorConfig::default(), WINDOW_MS);
    for ((start, host), agg) in &windows {
        let s = agg.finalize();
        let point = WindowPoint {
            start_ms: *start,
            requests: s.requests as f64,
            error_rate: s.error_rate,
            latency_p99_ms: s.latency_p99,
        };
        if d.observe(host, point).fit_due {
            let job = d.fit_job(host).expect("a host just judged has a series");
            d.install(fit(&job));
        }
    }
    (d.anomalies(None, i64::MIN), g.anomalies().to_vec())
}

#[test]
fn each_injected_kind_is_detected_within_two_windows() {
    let (found, labels) = detect(spec(4));
    assert_eq!(labels.len(), 4);
    for l in &labels {
        let kind = serde_json::to_value(l.kind).unwrap();
        let hit = found.iter().find(|a| {
            a.host == l.host
                && kind == a.kind.as_str()
                && (l.start_ms..=l.start_ms + 2 * WINDOW_MS).contains(&a.window_start_ms)
        });
        assert!(hit.is_some(), "missed {l:?}; found {found:#?}");
    }
    eprintln!(
        "labelled run: {} anomalies raised for {} injected",
        found.len(),
        labels.len()
    );
}

#[test]
fn a_clean_run_raises_few_false_alarms() {
    let (found, _) = detect(spec(0));
    let mut by: BTreeMap<(String, String), usize> = BTreeMap::new();
    for a in &found {
        *by.entry((a.metric.clone(), a.model.clone())).or_default() += 1;
    }
    eprintln!(
        "clean run: {} false alarms by (metric, model): {by:?}",
        found.len()
    );
    for a in found.iter().take(12) {
        eprintln!(
            "  {} {} {} obs={:.3} exp={:.3} [{:.3}, {:.3}] z={:.1}",
            a.host, a.metric, a.window_start_ms, a.observed, a.expected, a.lower, a.upper, a.score
        );
    }
    assert!(
        found.len() <= MAX_FALSE_ALARMS,
        "{} false alarms",
        found.len()
    );
}
