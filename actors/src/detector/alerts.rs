//! Announcing anomaly episodes: to Alertmanager (API v2) and to plain webhooks. Each episode
//! fires once when it opens and resolves once when it ends; Alertmanager also gets the firing
//! alerts again every `resend_s` (it resolves alerts that are not re-sent).
//!
//! The detector only queues (never waits on a receiver): one thread delivers in order, retrying
//! a failed delivery with a doubling wait (1 s up to `retry_max_s`) for as long as the receiver
//! is down. The queue is bounded; an announcement that does not fit is dropped and counted.

use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};
use wtm_config::AlertsConfig;
use wtm_core::time::format_rfc3339;
use wtm_messages::Episode;
use wtm_telemetry::{KeyValue, Metrics};

/// An episode that opened (`firing`) or ended.
#[derive(Debug, Clone)]
struct Announcement {
    episode: Episode,
    firing: bool,
}

/// The detector's end of the queue.
pub struct Alerts {
    tx: SyncSender<Announcement>,
}

impl Alerts {
    /// Start the delivery thread (None when no receiver is configured).
    pub fn start(cfg: &AlertsConfig) -> Option<Alerts> {
        if cfg.alertmanager.is_empty() && cfg.webhooks.is_empty() {
            return None;
        }
        let (tx, rx) = sync_channel(cfg.queue);
        let cfg = cfg.clone();
        std::thread::Builder::new()
            .name("wtm-alerts".into())
            .spawn(move || deliver(cfg, rx))
            .ok()?;
        Some(Alerts { tx })
    }

    pub fn opened(&self, e: &Episode) {
        self.queue(e, true);
    }

    pub fn ended(&self, e: &Episode) {
        self.queue(e, false);
    }

    fn queue(&self, e: &Episode, firing: bool) {
        let a = Announcement {
            episode: e.clone(),
            firing,
        };
        if let Err(TrySendError::Full(_)) = self.tx.try_send(a) {
            Metrics::global().alerts_dropped.add(1, &[]);
            tracing::warn!(host = %e.host, metric = %e.metric, "alert queue full (alerts.queue): an episode announcement is dropped");
        }
    }
}

fn key(e: &Episode) -> (String, String, String, i64) {
    (e.host.clone(), e.metric.clone(), e.kind.clone(), e.start_ms)
}

/// The Alertmanager alert of an episode (labels identify it: the same episode is the same alert).
fn alertmanager_alert(e: &Episode, firing: bool) -> serde_json::Value {
    let mut a = serde_json::json!({
        "labels": {
            "alertname": "WtmAnomaly",
            "host": e.host,
            "metric": e.metric,
            "kind": e.kind,
            "episode_start": format_rfc3339(e.start_ms),
            "severity": e.severity,
        },
        "annotations": {
            "summary": format!("{} {} on {}", e.kind.replace('_', " "), e.metric, e.host),
            "description": format!(
                "{} anomalous window(s) from {}; peak score {:.2} at {}: observed {:.4}, expected {:.4}",
                e.windows, format_rfc3339(e.start_ms), e.peak_score,
                format_rfc3339(e.peak_window_ms), e.peak_observed, e.peak_expected
            ),
        },
        "startsAt": format_rfc3339(e.start_ms),
    });
    if let (false, Some(end)) = (firing, e.end_ms) {
        a["endsAt"] = format_rfc3339(end).into();
    }
    a
}

/// What a webhook gets: the episode ([`episode_json`]) and whether it fired or ended.
fn webhook_body(e: &Episode, firing: bool) -> serde_json::Value {
    let mut body = episode_json(e);
    body["status"] = if firing { "firing" } else { "resolved" }.into();
    body
}

/// An episode as JSON, with the fields `/v1/anomalies` gives it (less the explanation).
pub fn episode_json(e: &Episode) -> serde_json::Value {
    serde_json::json!({
        "host": e.host,
        "metric": e.metric,
        "kind": e.kind,
        "start": format_rfc3339(e.start_ms),
        "end": e.end_ms.map(format_rfc3339),
        "ongoing": e.end_ms.is_none(),
        "windows": e.windows,
        "peak_score": e.peak_score,
        "peak_window_start": format_rfc3339(e.peak_window_ms),
        "peak_observed": e.peak_observed,
        "peak_expected": e.peak_expected,
        "severity": e.severity,
    })
}

fn post(agent: &ureq::Agent, url: &str, body: &serde_json::Value) -> Result<(), String> {
    let resp = agent
        .post(url)
        .header("content-type", "application/json")
        .send(body.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    match resp.status().is_success() {
        true => Ok(()),
        false => Err(format!("status {}", resp.status())),
    }
}

/// Post until it is taken, waiting longer after each failure (the receiver may be down).
fn post_until_taken(
    agent: &ureq::Agent,
    url: &str,
    body: &serde_json::Value,
    target: &'static str,
    retry_max: Duration,
) {
    let m = Metrics::global();
    let mut wait = Duration::from_secs(1);
    loop {
        match post(agent, url, body) {
            Ok(()) => {
                m.alerts_sent.add(1, &[KeyValue::new("target", target)]);
                return;
            }
            Err(e) => {
                m.alerts_failed.add(1, &[KeyValue::new("target", target)]);
                tracing::warn!(url, error = %e, retry_in_s = wait.as_secs(), "alert delivery failed; retrying");
                std::thread::sleep(wait);
                wait = (wait * 2).min(retry_max);
            }
        }
    }
}

fn deliver(cfg: AlertsConfig, rx: Receiver<Announcement>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let retry_max = Duration::from_secs(cfg.retry_max_s);
    let resend = Duration::from_secs(cfg.resend_s);
    let am_urls: Vec<String> = cfg
        .alertmanager
        .iter()
        .map(|u| format!("{}/api/v2/alerts", u.trim_end_matches('/')))
        .collect();
    // Firing alerts, re-sent to Alertmanager until they resolve.
    let mut firing: BTreeMap<(String, String, String, i64), Episode> = BTreeMap::new();
    let mut last_resend = Instant::now();
    loop {
        let next = match rx.recv_timeout(resend.saturating_sub(last_resend.elapsed())) {
            Ok(a) => Some(a),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if let Some(a) = next {
            let e = &a.episode;
            match a.firing {
                true => firing.insert(key(e), e.clone()),
                false => firing.remove(&key(e)),
            };
            let alert = serde_json::Value::Array(vec![alertmanager_alert(e, a.firing)]);
            for url in &am_urls {
                post_until_taken(&agent, url, &alert, "alertmanager", retry_max);
            }
            let body = webhook_body(e, a.firing);
            for url in &cfg.webhooks {
                post_until_taken(&agent, url, &body, "webhook", retry_max);
            }
        }
        if last_resend.elapsed() >= resend {
            last_resend = Instant::now();
            if !firing.is_empty() && !am_urls.is_empty() {
                let all = serde_json::Value::Array(
                    firing
                        .values()
                        .map(|e| alertmanager_alert(e, true))
                        .collect(),
                );
                for url in &am_urls {
                    post_until_taken(&agent, url, &all, "alertmanager", retry_max);
                }
            }
        }
    }
}
