//! The detector: judges each closed window of each host; model fits run on the blocking pool and
//! come back as messages.

mod alerts;
mod fits;
pub use alerts::{agent as alert_agent, episode_json};
use fits::FitQueue;
mod journal;
mod model;
pub mod offline;
mod points;
mod state;
mod weekly;

pub use model::fit;
pub use state::{DetectorState, FitJob, Observed, METRICS};

use alerts::Alerts;
use journal::Journal;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::time::Instant;
use wtm_config::{AlertsConfig, DetectorConfig};
use wtm_messages::{
    lookup, mailbox, tell, ClusterMsg, ClusterView, Detections, DetectorMsg, CLUSTER_NAME,
};
use wtm_storage::Records;
use wtm_telemetry::{ActorKind, KeyValue, Metrics};

pub struct DetectorActor;

pub struct DetectorRun {
    state: DetectorState,
    /// The checkpoint being read, until the first message (see `pre_start`).
    loading: Option<tokio::task::JoinHandle<Result<Loaded, ActorProcessingErr>>>,
    /// Hosts judged here as last told to the gauge and to membership (`/v1/cluster`).
    reported_hosts: u64,
    /// Whose host is whose, as of the archiver's last change of homes (None: a single node).
    view: Option<ClusterView>,
    /// Where episodes are announced (None: no receiver configured).
    alerts: Option<Alerts>,
    /// The detector's checkpoint (None: kept nowhere, as a batch run).
    journal: Option<Journal>,
    fits: FitQueue,
}

pub struct DetectorArgs {
    pub config: DetectorConfig,
    pub window_ms: i64,
    pub alerts: AlertsConfig,
    /// Explains episodes for the alerts' texts.
    pub explain: Option<wtm_messages::ExplainEpisode>,
    /// Where the detector keeps its checkpoint ([`journal`]).
    pub records: Option<Records>,
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
        // The checkpoint loads beside the node's start, and the first message waits for it: at
        // 115,000 sites reading it and rebuilding the state took about half a second, and the
        // partitions' owners (spawned after this actor) waited for it to restore.
        let placeholder = DetectorState::new(args.config.clone(), args.window_ms);
        Ok(DetectorRun {
            state: placeholder,
            loading: Some(tokio::task::spawn_blocking(move || load(args))),
            reported_hosts: u64::MAX,
            view: None,
            alerts: None,
            journal: None,
            // Half the cores: fits must not starve the owners that parse and aggregate.
            fits: FitQueue::new(std::thread::available_parallelism().map_or(1, |n| n.get() / 2)),
        })
    }

    async fn handle(
        &self,
        me: ActorRef<DetectorMsg>,
        msg: DetectorMsg,
        run: &mut DetectorRun,
    ) -> Result<(), ActorProcessingErr> {
        run.loaded().await?;
        let started = Instant::now();
        let id = me.get_id();
        match msg {
            DetectorMsg::Observe(host, point) => {
                let seen = run.state.observe(&host, point);
                run.judged(&host, seen, &me);
            }
            DetectorMsg::Seed(h) => {
                // A rebuild started under an older view may finish after homes moved again.
                if run.view.as_ref().is_none_or(|v| v.is_home(&h.host)) {
                    let caught_up = run.state.seed(&h.host, h.points, h.catch_up);
                    for seen in caught_up {
                        run.judged(&h.host, seen, &me);
                    }
                }
            }
            DetectorMsg::Homes(view) => {
                let mut moved = Observed::default();
                let dropped = run.state.retain_hosts(|h| view.is_home(h), &mut moved);
                if !moved.ended.is_empty() {
                    // No mark in it: the host only names a mark, so any of them will do.
                    run.announce(&dropped[0], &moved);
                }
                if let Some(j) = &mut run.journal {
                    if let Err(e) = j.forget(&dropped) {
                        tracing::warn!(error = %e, "cannot forget the checkpoint of hosts judged elsewhere now");
                    }
                }
                run.view = Some(view);
            }
            DetectorMsg::Fitted(forecasts) => {
                run.state.install(forecasts);
                run.next_fit(&me);
            }
            DetectorMsg::Anomalies(q, reply) => {
                reply
                    .send(Detections {
                        anomalies: run.state.anomalies(q.host.as_deref(), q.since_ms),
                        episodes: run.state.episodes(q.host.as_deref(), q.since_ms),
                    })
                    .ok();
            }
            DetectorMsg::Scores(q, reply) => {
                reply
                    .send(run.state.scores(&q.host, q.from_ms, q.to_ms))
                    .ok();
            }
        }
        let hosts = run.state.host_count() as u64;
        if hosts != run.reported_hosts {
            run.reported_hosts = hosts;
            Metrics::global().cluster_home_hosts.record(hosts, &[]);
            if let Some(cluster) = lookup::<ClusterMsg>(CLUSTER_NAME) {
                tell(&cluster, ActorKind::Cluster, ClusterMsg::HomeHosts(hosts)).ok();
            }
        }
        // Nothing else waiting (this message still counts): the judged windows' marks that
        // wait for company go in now.
        if mailbox::queued(id) <= 1 {
            run.flush_journal();
        }
        mailbox::handled(id, ActorKind::Detector, started);
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<DetectorMsg>,
        run: &mut DetectorRun,
    ) -> Result<(), ActorProcessingErr> {
        run.loaded().await?;
        run.flush_journal();
        Ok(())
    }
}

/// What the detector starts from: its checkpoint's state, and the alerts of its open episodes.
struct Loaded {
    state: DetectorState,
    journal: Option<Journal>,
    alerts: Option<Alerts>,
}

fn load(args: DetectorArgs) -> Result<Loaded, ActorProcessingErr> {
    let mut state = DetectorState::new(args.config, args.window_ms);
    let journal = match args.records {
        Some(records) => {
            let (journal, restored) = Journal::open(records)?;
            tracing::info!(
                hosts = restored.marks.len(),
                anomalies = restored.anomalies.len(),
                episodes = restored.episodes.len(),
                "detector state restored from its checkpoint"
            );
            let out = state.restore(restored);
            debug_assert!(out.evicted_anomalies.is_empty() && out.evicted_episodes.is_empty());
            Some(journal)
        }
        None => None,
    };
    let outbox = journal.as_ref().map(|j| j.records().clone());
    let open = state.episodes(None, i64::MIN);
    let open = open.into_iter().filter(|e| e.end_ms.is_none()).collect();
    let alerts = Alerts::start(&args.alerts, outbox, open, args.explain);
    Ok(Loaded {
        state,
        journal,
        alerts,
    })
}

impl DetectorRun {
    /// Wait for the checkpoint's state, the first time (see `pre_start`).
    async fn loaded(&mut self) -> Result<(), ActorProcessingErr> {
        if let Some(loading) = self.loading.take() {
            let loaded = loading.await??;
            self.state = loaded.state;
            self.journal = loaded.journal;
            self.alerts = loaded.alerts;
        }
        Ok(())
    }

    fn flush_journal(&mut self) {
        if let Some(j) = &mut self.journal {
            if let Err(e) = j.flush() {
                tracing::warn!(error = %e, "cannot keep the detector's marks: a restart judges those windows again");
            }
        }
    }

    /// Act on what judging one window of `host` found: count and log it, keep it in the
    /// journal, announce its episodes, run its model fit off the actor.
    fn judged(&mut self, host: &str, seen: Observed, me: &ActorRef<DetectorMsg>) {
        Metrics::global().judged_windows.add(1, &[]);
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
        }
        for e in &seen.ended {
            tracing::info!(host = %e.host, metric = %e.metric, kind = %e.kind, windows = e.windows, peak_score = e.peak_score, "episode ended");
        }
        self.announce(host, &seen);
        if seen.fit_due {
            if self.fits.due(host) && !self.start_fit(host, me) {
                self.next_fit(me);
            }
            self.report_waiting_fits();
        }
    }

    fn report_waiting_fits(&self) {
        Metrics::global()
            .detector_fits_waiting
            .record(self.fits.waiting() as u64, &[]);
    }

    /// A fit's slot is free: start the next waiting one that still has a series.
    fn next_fit(&mut self, me: &ActorRef<DetectorMsg>) {
        while let Some(host) = self.fits.finished() {
            if self.start_fit(&host, me) {
                break;
            }
        }
        self.report_waiting_fits();
    }

    /// Run `host`'s model fit on the blocking pool (false: no series to fit).
    fn start_fit(&mut self, host: &str, me: &ActorRef<DetectorMsg>) -> bool {
        let Some(job) = self.state.fit_job(host) else {
            return false;
        };
        let me = me.clone();
        tokio::task::spawn_blocking(move || {
            // Whatever happens in the model, the slot must come back (a panic would hold it
            // for good): no forecast then, the baseline judges alone until the next fit.
            let forecasts = std::panic::catch_unwind(|| fit(&job)).unwrap_or_else(|_| {
                tracing::warn!(host = %job.host, "a model fit panicked; this site is judged by its baseline until its next fit");
                Vec::new()
            });
            if tell(&me, ActorKind::Detector, DetectorMsg::Fitted(forecasts)).is_err() {
                tracing::debug!("detector restarted during a fit; it refits");
            }
        });
        true
    }

    /// Keep what judging `host`'s window changed in the journal, then queue its announcements.
    fn announce(&mut self, host: &str, seen: &Observed) {
        let announce = self.alerts.is_some();
        let announcements = match self.journal.as_mut() {
            Some(j) => j.record(host, seen, announce).unwrap_or_else(|e| {
                // Announced anyway: an alert told twice after a crash beats one lost.
                tracing::warn!(error = %e, "cannot keep the detector's state: a restart may announce this window's episodes again");
                journal::announcements(seen, announce)
            }),
            None => journal::announcements(seen, announce),
        };
        if let Some(a) = &self.alerts {
            a.queue(announcements);
        }
    }
}
