//! Announcing anomaly episodes: to Alertmanager (API v2) and to plain webhooks. Each episode
//! fires once when it opens and resolves once when it ends; Alertmanager also gets the firing
//! alerts again every `resend_s` (it resolves alerts that are not re-sent).
//!
//! The detector only queues (never waits on a receiver): one thread delivers in order, retrying
//! a failed delivery with a doubling wait (1 s up to `retry_max_s`) for as long as the receiver
//! is down. The queue is bounded; an announcement that does not fit is dropped and counted.
//!
//! With a journal, announcements wait in its outbox until every receiver has them: the thread
//! of a restarted detector (or node) delivers what its predecessor had not, once that one has
//! stopped.

use super::journal::{pending, Announcement};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use wtm_config::AlertsConfig;
use wtm_core::time::format_rfc3339;
use wtm_messages::{Episode, EpisodeExplanation, ExplainEpisode};
use wtm_storage::{RecordBatch, Records};
use wtm_telemetry::{KeyValue, Metrics};

/// The delivery thread of this process's detector, stopped and joined by the next one.
static RUNNING: Mutex<Option<(Arc<AtomicBool>, JoinHandle<()>)>> = Mutex::new(None);

/// The detector's end of the queue.
pub struct Alerts {
    tx: SyncSender<Announcement>,
    outbox: Option<Records>,
    stop: Arc<AtomicBool>,
}

impl Drop for Alerts {
    fn drop(&mut self) {
        // The thread leaves what it has not delivered in the outbox for its successor.
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The HTTP client of the deliveries: https:// receivers are verified against `alerts.ca` or,
/// without it, the system's trust store. An error names what is wrong (checked at start).
pub fn agent(cfg: &AlertsConfig) -> Result<ureq::Agent, String> {
    use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
    let roots: Vec<Certificate<'static>> = match &cfg.ca {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("alerts.ca: cannot read {}: {e}", path.display()))?;
            let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(format!(
                    "alerts.ca: {} holds no PEM certificate",
                    path.display()
                ));
            }
            certs
        }
        None => rustls_native_certs::load_native_certs()
            .certs
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect(),
    };
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::new_with_certs(&roots))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .build();
    Ok(ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .tls_config(tls)
        .build()
        .into())
}

impl Alerts {
    /// Start the delivery thread (None when no receiver is configured). `outbox`: the journal's
    /// records, whose waiting announcements go out first; `open`: the ongoing episodes (their
    /// alerts are re-sent to Alertmanager until they end); `explain`: what an alert's text says
    /// drove its episode (worked out on this runtime, called from a tokio context).
    pub fn start(
        cfg: &AlertsConfig,
        outbox: Option<Records>,
        open: Vec<Episode>,
        explain: Option<ExplainEpisode>,
    ) -> Option<Alerts> {
        if cfg.alertmanager.is_empty() && cfg.webhooks.is_empty() {
            return None;
        }
        let agent = match agent(cfg) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "alerts are not delivered");
                return None;
            }
        };
        // The outbox as it is now, before this detector queues anything (which it also keeps
        // there): read later, an announcement would go out twice.
        let waiting = match &outbox {
            Some(o) => pending(o).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the alert outbox: waiting announcements are not sent");
                Vec::new()
            }),
            None => Vec::new(),
        };
        let (tx, rx) = sync_channel(cfg.queue);
        let stop = Arc::new(AtomicBool::new(false));
        let mut running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        let previous = running.take().map(|(old_stop, old)| {
            old_stop.store(true, Ordering::SeqCst);
            old
        });
        let delivery = Delivery {
            cfg: cfg.clone(),
            outbox: outbox.clone(),
            stop: Arc::clone(&stop),
            explain: explain.zip(tokio::runtime::Handle::try_current().ok()),
        };
        let handle = std::thread::Builder::new()
            .name("wtm-alerts".into())
            .spawn(move || {
                // The old thread may be inside a delivery: the outbox is read once it is done.
                if let Some(old) = previous {
                    old.join().ok();
                }
                delivery.run(&agent, rx, waiting, open)
            })
            .ok()?;
        *running = Some((Arc::clone(&stop), handle));
        Some(Alerts { tx, outbox, stop })
    }

    /// Queue announcements (already in the outbox when there is one).
    pub fn queue(&self, announcements: Vec<Announcement>) {
        for a in announcements {
            let (host, metric, key) = (
                a.episode.host.clone(),
                a.episode.metric.clone(),
                a.outbox_key.clone(),
            );
            if let Err(TrySendError::Full(_)) = self.tx.try_send(a) {
                Metrics::global().alerts_dropped.add(1, &[]);
                tracing::warn!(%host, %metric, "alert queue full (alerts.queue): an episode announcement is dropped");
                if let (Some(outbox), Some(k)) = (&self.outbox, key) {
                    outbox
                        .apply(RecordBatch {
                            puts: Vec::new(),
                            removes: vec![k],
                        })
                        .ok();
                }
            }
        }
    }
}

type EpisodeKey = (String, String, String, i64);

/// A firing alert as it opened, re-sent to Alertmanager until it resolves.
struct Firing {
    episode: Episode,
    why: Option<EpisodeExplanation>,
}

fn key(e: &Episode) -> EpisodeKey {
    (e.host.clone(), e.metric.clone(), e.kind.clone(), e.start_ms)
}

/// The Alertmanager alert of an episode. Labels identify it (the same episode is the same
/// alert), so they are those it opened with (`opened`): its severity may grow before it ends.
fn alertmanager_alert(
    e: &Episode,
    opened: &Episode,
    firing: bool,
    why: Option<&EpisodeExplanation>,
) -> serde_json::Value {
    let mut description = format!(
        "{} anomalous window(s) from {}; peak score {:.2} at {}: observed {:.4}, expected {:.4}",
        e.windows,
        format_rfc3339(e.start_ms),
        e.peak_score,
        format_rfc3339(e.peak_window_ms),
        e.peak_observed,
        e.peak_expected
    );
    if let Some(x) = why {
        description.push_str(&format!(". What changed: {}", x.summary));
    }
    let mut a = serde_json::json!({
        "labels": {
            "alertname": "WtmAnomaly",
            "host": opened.host,
            "metric": opened.metric,
            "kind": opened.kind,
            "episode_start": format_rfc3339(opened.start_ms),
            "severity": opened.severity,
        },
        "annotations": {
            "summary": format!("{} {} on {}", e.kind.replace('_', " "), e.metric, e.host),
            "description": description,
        },
        "startsAt": format_rfc3339(e.start_ms),
    });
    if let Some(x) = why {
        a["annotations"]["explanation"] = x.summary.clone().into();
    }
    if let (false, Some(end)) = (firing, e.end_ms) {
        a["endsAt"] = format_rfc3339(end).into();
    }
    a
}

/// What a webhook gets: the episode ([`episode_json`]), whether it fired or ended, and what
/// drove it (`explanation`, as in `/v1/anomalies`; null when it cannot be worked out now).
fn webhook_body(e: &Episode, firing: bool, why: Option<&EpisodeExplanation>) -> serde_json::Value {
    let mut body = episode_json(e);
    body["status"] = if firing { "firing" } else { "resolved" }.into();
    body["explanation"] = serde_json::to_value(why).unwrap_or_default();
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

/// The delivery thread.
struct Delivery {
    cfg: AlertsConfig,
    outbox: Option<Records>,
    stop: Arc<AtomicBool>,
    explain: Option<(ExplainEpisode, tokio::runtime::Handle)>,
}

/// How long an alert waits for its explanation before it goes without.
const EXPLAIN_TIMEOUT: Duration = Duration::from_secs(5);

impl Delivery {
    /// Deliver `waiting` (the outbox as it was at start), then what is queued.
    fn run(
        self,
        agent: &ureq::Agent,
        rx: Receiver<Announcement>,
        waiting: Vec<Announcement>,
        open: Vec<Episode>,
    ) {
        let resend = Duration::from_secs(self.cfg.resend_s);
        let am_urls: Vec<String> = self
            .cfg
            .alertmanager
            .iter()
            .map(|u| format!("{}/api/v2/alerts", u.trim_end_matches('/')))
            .collect();
        // Firing alerts as they opened, re-sent to Alertmanager until they resolve.
        let mut firing: BTreeMap<EpisodeKey, Firing> = open
            .into_iter()
            .map(|e| {
                let why = self.why(&e);
                (key(&e), Firing { episode: e, why })
            })
            .collect();
        if !waiting.is_empty() {
            tracing::info!(
                announcements = waiting.len(),
                "alert announcements left by the previous run are sent now"
            );
        }
        // One the previous thread delivered while this one waited for it is out of the outbox.
        let still_waiting = |a: &Announcement| match (&self.outbox, &a.outbox_key) {
            (Some(o), Some(k)) => o.contains(k).unwrap_or(true),
            _ => true,
        };
        let mut waiting = waiting.into_iter().filter(still_waiting);
        let mut last_resend = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            let next = match waiting.next() {
                Some(a) => Some(a),
                None => match rx.recv_timeout(resend.saturating_sub(last_resend.elapsed())) {
                    Ok(a) => Some(a),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
            };
            if let Some(a) = next {
                if !self.announce(agent, &am_urls, &mut firing, a) {
                    return;
                }
            }
            if last_resend.elapsed() >= resend {
                last_resend = Instant::now();
                if !firing.is_empty() && !am_urls.is_empty() {
                    let all = serde_json::Value::Array(
                        firing
                            .values()
                            .map(|f| {
                                alertmanager_alert(&f.episode, &f.episode, true, f.why.as_ref())
                            })
                            .collect(),
                    );
                    for url in &am_urls {
                        if !self.post_until_taken(agent, url, &all, "alertmanager") {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Deliver one announcement to every receiver, then take it out of the outbox. False when
    /// told to stop first (it stays in the outbox).
    fn announce(
        &self,
        agent: &ureq::Agent,
        am_urls: &[String],
        firing: &mut BTreeMap<EpisodeKey, Firing>,
        a: Announcement,
    ) -> bool {
        if let Some(o) = &self.outbox {
            // What the receivers are told must survive a crash: the episode's state first.
            if let Err(e) = o.flush() {
                tracing::warn!(error = %e, "cannot flush the detector's journal before an alert");
            }
        }
        let e = &a.episode;
        let why = self.why(e);
        let opened = match a.firing {
            true => {
                let f = Firing {
                    episode: e.clone(),
                    why: why.clone(),
                };
                firing.insert(key(e), f);
                e.clone()
            }
            false => firing
                .remove(&key(e))
                .map_or_else(|| e.clone(), |f| f.episode),
        };
        let alert =
            serde_json::Value::Array(vec![alertmanager_alert(e, &opened, a.firing, why.as_ref())]);
        for url in am_urls {
            if !self.post_until_taken(agent, url, &alert, "alertmanager") {
                return false;
            }
        }
        let body = webhook_body(e, a.firing, why.as_ref());
        for url in &self.cfg.webhooks {
            if !self.post_until_taken(agent, url, &body, "webhook") {
                return false;
            }
        }
        if let (Some(o), Some(k)) = (&self.outbox, a.outbox_key) {
            let done = RecordBatch {
                puts: Vec::new(),
                removes: vec![k],
            };
            // Durable at once: a crash from here on must not deliver it again.
            if let Err(e) = o.apply(done).and_then(|()| o.flush()) {
                tracing::warn!(error = %e, "cannot take a delivered alert out of the outbox");
            }
        }
        true
    }

    /// What drove episode `e`, as the API explains it (None: no explainer, or not now).
    fn why(&self, e: &Episode) -> Option<EpisodeExplanation> {
        let (explain, runtime) = self.explain.as_ref()?;
        let work = explain(e.clone());
        runtime
            .block_on(async { tokio::time::timeout(EXPLAIN_TIMEOUT, work).await })
            .ok()
            .flatten()
    }

    /// Post until it is taken, waiting longer after each failure (the receiver may be down).
    /// False when told to stop first.
    fn post_until_taken(
        &self,
        agent: &ureq::Agent,
        url: &str,
        body: &serde_json::Value,
        target: &'static str,
    ) -> bool {
        let m = Metrics::global();
        let retry_max = Duration::from_secs(self.cfg.retry_max_s);
        let mut wait = Duration::from_secs(1);
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return false;
            }
            match post(agent, url, body) {
                Ok(()) => {
                    m.alerts_sent.add(1, &[KeyValue::new("target", target)]);
                    return true;
                }
                Err(e) => {
                    m.alerts_failed.add(1, &[KeyValue::new("target", target)]);
                    tracing::warn!(url, error = %e, retry_in_s = wait.as_secs(), "alert delivery failed; retrying");
                    // In steps, so a successor waiting for this thread is not held up.
                    let until = Instant::now() + wait;
                    while Instant::now() < until && !self.stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    wait = (wait * 2).min(retry_max);
                }
            }
        }
    }
}
