//! The detector: judges each closed window of each host; model fits run on the blocking pool and
//! come back as messages.

mod alerts;
pub use alerts::episode_json;
pub mod offline;
mod state;

pub use state::{fit, DetectorState, FitJob, Observed, METRICS};

use alerts::Alerts;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::time::Instant;
use wtm_config::{AlertsConfig, DetectorConfig};
use wtm_messages::{
    lookup, mailbox, tell, ClusterMsg, ClusterView, Detections, DetectorMsg, CLUSTER_NAME,
};
use wtm_telemetry::{ActorKind, KeyValue, Metrics};

pub struct DetectorActor;

pub struct DetectorRun {
    state: DetectorState,
    /// Hosts judged here as last told to the gauge and to membership (`/v1/cluster`).
    reported_hosts: u64,
    /// Whose host is whose, as of the archiver's last change of homes (None: a single node).
    view: Option<ClusterView>,
    /// Where episodes are announced (None: no receiver configured).
    alerts: Option<Alerts>,
}

pub struct DetectorArgs {
    pub config: DetectorConfig,
    pub window_ms: i64,
    pub alerts: AlertsConfig,
}

impl Actor for DetectorActor {
    type Msg = DetectorMsg;
    type State = DetectorRun;
    type Arguments = DetectorArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<DetectorMsg>,
        args: DetectorArgs,
    ) -> Result<DetectorRun, ActorProcessingErr> {
        // Every metric's series exists from the start (a dashboard panel is never blank).
        for metric in METRICS {
            let m = Metrics::global();
            m.anomalies.add(0, &[KeyValue::new("metric", metric)]);
            m.episodes.add(0, &[KeyValue::new("metric", metric)]);
        }
        Ok(DetectorRun {
            state: DetectorState::new(args.config, args.window_ms),
            reported_hosts: u64::MAX,
            view: None,
            alerts: Alerts::start(&args.alerts),
        })
    }

    async fn handle(
        &self,
        me: ActorRef<DetectorMsg>,
        msg: DetectorMsg,
        run: &mut DetectorRun,
    ) -> Result<(), ActorProcessingErr> {
        let state = &mut run.state;
        let started = Instant::now();
        let id = me.get_id();
        match msg {
            DetectorMsg::Observe(host, point) => {
                Metrics::global().judged_windows.add(1, &[]);
                let seen = state.observe(&host, point);
                for a in &seen.anomalies {
                    tracing::info!(host = %a.host, metric = %a.metric, kind = %a.kind, observed = a.observed, expected = a.expected, score = a.anomaly_score, "anomaly");
                    Metrics::global()
                        .anomalies
                        .add(1, &[KeyValue::new("metric", a.metric.clone())]);
                }
                for e in &seen.opened {
                    tracing::info!(host = %e.host, metric = %e.metric, kind = %e.kind, severity = %e.severity, "episode opened");
                    Metrics::global()
                        .episodes
                        .add(1, &[KeyValue::new("metric", e.metric.clone())]);
                    if let Some(a) = &run.alerts {
                        a.opened(e);
                    }
                }
                for e in &seen.ended {
                    tracing::info!(host = %e.host, metric = %e.metric, kind = %e.kind, windows = e.windows, peak_score = e.peak_score, "episode ended");
                    if let Some(a) = &run.alerts {
                        a.ended(e);
                    }
                }
                if let Some(job) = seen.fit {
                    tokio::task::spawn_blocking(move || {
                        let forecasts = fit(&job);
                        if tell(&me, ActorKind::Detector, DetectorMsg::Fitted(forecasts)).is_err() {
                            tracing::debug!("detector restarted during a fit; it refits");
                        }
                    });
                }
            }
            DetectorMsg::Seed(host, points) => {
                // A rebuild started under an older view may finish after homes moved again.
                if run.view.as_ref().is_none_or(|v| v.is_home(&host)) {
                    state.seed(&host, points);
                }
            }
            DetectorMsg::Homes(view) => {
                state.retain_hosts(|h| view.is_home(h));
                run.view = Some(view);
            }
            DetectorMsg::Fitted(forecasts) => state.install(forecasts),
            DetectorMsg::Anomalies(q, reply) => {
                reply
                    .send(Detections {
                        anomalies: state.anomalies(q.host.as_deref(), q.since_ms),
                        episodes: state.episodes(q.host.as_deref(), q.since_ms),
                    })
                    .ok();
            }
            DetectorMsg::Scores(q, reply) => {
                reply.send(state.scores(&q.host, q.from_ms, q.to_ms)).ok();
            }
        }
        let hosts = state.host_count() as u64;
        if hosts != run.reported_hosts {
            run.reported_hosts = hosts;
            Metrics::global().cluster_home_hosts.record(hosts, &[]);
            if let Some(cluster) = lookup::<ClusterMsg>(CLUSTER_NAME) {
                tell(&cluster, ActorKind::Cluster, ClusterMsg::HomeHosts(hosts)).ok();
            }
        }
        mailbox::handled(id, ActorKind::Detector, started);
        Ok(())
    }
}
