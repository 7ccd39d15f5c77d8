//! The archiver: writes committed publications to the Parquet lake, keeps recent closed windows
//! for the API, and hands closed windows to the detector.
//!
//! Uploads run in tasks of their own, so partitions write in parallel and API reads are never
//! queued behind a slow store; each owner sends its next publication only after the previous
//! one's reply, so a partition's writes stay in order. A finished upload comes back as
//! `Written` (queued before the reply goes out), which updates the recent windows in order.
//!
//! In a cluster, each host's detector runs on its *home* (rendezvous over the live members, from
//! the `View` membership sends every heartbeat): a written share of a host homed elsewhere goes to
//! that node's archiver, and every partition's progress goes to every member, so a home waits for
//! the whole cluster's partitions before it judges a window. When homes move, waiting shares are
//! handed to the new home, and a node that became home for a host seeds its detector with the
//! host's recent windows read back from the lake (history only: nothing is judged twice).

mod state;
mod whole;

pub use state::RecentWindows;
pub use whole::{WholeWindow, WholeWindows};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wtm_core::agg::{ClosedWindow, WindowAgg};
use wtm_core::checkpoint::Publication;
use wtm_core::window::WindowSpec;
use wtm_messages::{
    lookup, mailbox, owned_partitions, tell, ArchiverMsg, ClusterMsg, ClusterView, DetectorMsg,
    Failure, HomeShares, WindowPoint, CLUSTER_NAME, DETECTOR_NAME,
};
use wtm_storage::Lake;
use wtm_telemetry::{ActorKind, KeyValue, Metrics, STATUS_CLASSES};

pub struct ArchiverArgs {
    pub lake: Lake,
    pub retention_windows: usize,
    pub spec: WindowSpec,
    /// Hand closed windows to the detector (`detector.enabled`), whole.
    pub detect: bool,
    /// How long a window waits for its last partition before it is judged anyway.
    pub merge_wait: Duration,
    /// After homes move, how long nothing is judged: the previous homes' judged logs arrive
    /// meanwhile, so a window one of them judged is not judged again here.
    pub handover_grace: Duration,
}

pub struct ArchiverActor;

pub struct ArchiverRun {
    lake: Lake,
    recent: RecentWindows,
    /// Windows waiting to go to the detector whole (None: detection off).
    whole: Option<WholeWindows>,
    /// The cluster as membership last saw it (None on a single node: every host is ours).
    view: Option<ClusterView>,
    /// How far back a new home reads a host's history from the lake.
    history_ms: i64,
    handover_grace: Duration,
    /// Nothing is judged before this (homes just moved).
    hold_until: Option<Instant>,
    /// Shares of hosts homed elsewhere wait here (kept after too many forwards).
    strays: bool,
}

/// Shares sent to a home in one message: well below the cluster's frame limit even for heavy
/// windows (~40 KB each).
const SHARES_PER_MESSAGE: usize = 256;
/// Forwards between nodes whose views disagree before a share is judged where it is.
const MAX_HOPS: u8 = 2;

impl Actor for ArchiverActor {
    type Msg = ArchiverMsg;
    type State = ArchiverRun;
    type Arguments = ArchiverArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<ArchiverMsg>,
        args: ArchiverArgs,
    ) -> Result<ArchiverRun, ActorProcessingErr> {
        // Reload recent history so the API answers the same after a restart.
        let lake = args.lake.clone();
        let keep_ms = args.retention_windows as i64 * args.spec.size_ms;
        let mut recent = RecentWindows::new(args.retention_windows, args.spec.size_ms);
        // An unreachable lake (S3 down) must not keep the node from starting: the API then
        // starts without history.
        let reloaded = tokio::task::spawn_blocking(move || match lake.newest_window_hour()? {
            Some(h) => lake.read_windows(h + 3_600_000 - keep_ms),
            None => Ok(Vec::new()),
        })
        .await?;
        match reloaded {
            Ok(windows) => {
                tracing::info!(
                    windows = windows.len(),
                    "recent windows reloaded from the lake"
                );
                for w in windows {
                    recent.insert(w);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot reload recent windows from the lake"),
        }
        Ok(ArchiverRun {
            lake: args.lake,
            recent,
            whole: args
                .detect
                .then(|| WholeWindows::new(args.spec, args.merge_wait)),
            view: None,
            history_ms: keep_ms,
            handover_grace: args.handover_grace,
            hold_until: None,
            strays: false,
        })
    }

    async fn handle(
        &self,
        me: ActorRef<ArchiverMsg>,
        msg: ArchiverMsg,
        run: &mut ArchiverRun,
    ) -> Result<(), ActorProcessingErr> {
        let started = Instant::now();
        match msg {
            ArchiverMsg::Publish(p, reply) => upload(run.lake.clone(), me.clone(), p, reply),
            ArchiverMsg::Written(p) => run.written(&p)?,
            ArchiverMsg::Progress {
                partition,
                watermark_ms,
            } => {
                if let Some(whole) = run.whole.as_mut() {
                    whole.progress(partition, watermark_ms);
                    if run.view.is_some() {
                        send_to_cluster(
                            None,
                            HomeShares::Progress {
                                partition,
                                watermark_ms,
                            },
                        );
                    }
                }
                run.judge_whole()?;
            }
            ArchiverMsg::View(view) => run.view(view, &me),
            ArchiverMsg::JudgeReady => run.judge_whole()?,
            ArchiverMsg::FromPeer(shares) => run.shares_from_peer(shares)?,
            ArchiverMsg::Windows(q, reply) => {
                reply.send(run.recent.query(&q)).ok();
            }
            ArchiverMsg::Counts(q, reply) => {
                reply.send(run.recent.counts(q.windows, q.page)).ok();
            }
            ArchiverMsg::HostsSeen(reply) => {
                reply.send(run.recent.hosts_seen()).ok();
            }
        }
        mailbox::handled(me.get_id(), ActorKind::Archiver, started);
        Ok(())
    }
}

/// Write a publication on the blocking pool, off the archiver's mailbox; reply when durable.
fn upload(
    lake: Lake,
    me: ActorRef<ArchiverMsg>,
    p: Arc<Publication>,
    reply: RpcReplyPort<Result<(), Failure>>,
) {
    tokio::spawn(async move {
        let m = Metrics::global();
        let publication = Arc::clone(&p);
        let result = match tokio::task::spawn_blocking(move || lake.write(&publication)).await {
            Ok(Ok(stats)) => {
                m.lake_files.add(stats.files, &[]);
                m.lake_bytes.add(stats.bytes, &[]);
                // Queued before the reply, so the owner's next publication lands after it.
                if tell(&me, ActorKind::Archiver, ArchiverMsg::Written(p)).is_err() {
                    tracing::warn!("archiver restarting: recent windows reload from the lake");
                }
                Ok(())
            }
            Ok(Err(e)) => {
                m.lake_errors.add(1, &[KeyValue::new("table", "any")]);
                Err(Failure {
                    kind: e.kind(),
                    message: e.to_string(),
                })
            }
            Err(e) => Err(Failure::transient(format!("lake write task failed: {e}"))),
        };
        // The owner may have timed out; it retries from its checkpoint either way.
        reply.send(result).ok();
    });
}

impl ArchiverRun {
    /// A publication is in the lake: its windows join the recent history, and wait to go to the
    /// detector whole.
    fn written(&mut self, p: &Publication) -> Result<(), ActorProcessingErr> {
        let mut by_class = [0u64; 5];
        for w in &p.closed {
            for (sum, n) in by_class.iter_mut().zip(w.agg.status_class) {
                *sum += n;
            }
            self.recent.insert(w.clone());
        }
        self.route_shares(p.closed.iter().cloned(), 0);
        let m = Metrics::global();
        for (class, n) in STATUS_CLASSES.iter().zip(by_class) {
            if n > 0 {
                m.window_requests
                    .add(n, &[KeyValue::new("status_class", *class)]);
            }
        }
        self.judge_whole()
    }

    /// Shares for the detector: those of hosts homed here wait to go out whole; the others go
    /// to their home's archiver.
    fn route_shares(&mut self, shares: impl IntoIterator<Item = ClosedWindow>, hops: u8) {
        let Some(whole) = self.whole.as_mut() else {
            return;
        };
        let now = Instant::now();
        let mut away: std::collections::BTreeMap<String, Vec<ClosedWindow>> = Default::default();
        for w in shares {
            match &self.view {
                Some(v) if hops < MAX_HOPS && !v.is_home(&w.key.host) => {
                    away.entry(v.home_of(&w.key.host).to_owned())
                        .or_default()
                        .push(w);
                }
                view => {
                    if view.as_ref().is_some_and(|v| !v.is_home(&w.key.host)) {
                        // Kept after MAX_HOPS forwards: handed on at the next view.
                        self.strays = true;
                    }
                    if !whole.add(&w, now) {
                        Metrics::global().late_shares.add(1, &[]);
                        tracing::debug!(host = %w.key.host, start_ms = w.key.start_ms, partition = w.key.partition, "share of a window judged already: not judged again");
                    }
                }
            }
        }
        for (home, shares) in away {
            Metrics::global()
                .cluster_shares_sent
                .add(shares.len() as u64, &[]);
            for chunk in shares.chunks(SHARES_PER_MESSAGE) {
                send_to_cluster(
                    Some(home.clone()),
                    HomeShares::Windows {
                        shares: chunk.to_vec(),
                        hops: hops + 1,
                    },
                );
            }
        }
    }

    fn shares_from_peer(&mut self, shares: HomeShares) -> Result<(), ActorProcessingErr> {
        match shares {
            HomeShares::Windows { shares, hops } => self.route_shares(shares, hops),
            HomeShares::Progress {
                partition,
                watermark_ms,
            } => {
                if let Some(whole) = self.whole.as_mut() {
                    whole.progress(partition, watermark_ms);
                }
            }
            HomeShares::Judged(hosts) => {
                if let Some(whole) = self.whole.as_mut() {
                    let dropped: usize = hosts
                        .iter()
                        .map(|(host, starts)| whole.judged_elsewhere(host, starts))
                        .sum();
                    Metrics::global().late_shares.add(dropped as u64, &[]);
                }
            }
        }
        self.judge_whole()
    }

    /// Membership's latest view. When homes moved: hand waiting shares to their new homes, let
    /// the detector forget hosts homed elsewhere, and rebuild from the lake the history of hosts
    /// homed here now.
    fn view(&mut self, view: ClusterView, me: &ActorRef<ArchiverMsg>) {
        let old = self.view.replace(view.clone());
        let Some(whole) = self.whole.as_mut() else {
            return;
        };
        let same_members = old.as_ref().is_some_and(|o| o.members == view.members);
        if !same_members || std::mem::take(&mut self.strays) {
            // Shares waiting here for a host homed elsewhere now (homes moved, or a forward
            // from a node whose view lagged) go on to its home.
            let moved = whole.take_hosts(|h| !view.is_home(h));
            self.route_shares(moved, 0);
        }
        if same_members {
            return;
        }
        let Some(whole) = self.whole.as_mut() else {
            return;
        };
        // What this node judged of hosts homed elsewhere now travels to their new homes.
        let mut logs: std::collections::BTreeMap<String, Vec<(String, Vec<i64>)>> =
            Default::default();
        for (host, starts) in whole.take_judged(|h| !view.is_home(h)) {
            logs.entry(view.home_of(&host).to_owned())
                .or_default()
                .push((host, starts));
        }
        for (home, hosts) in logs {
            for chunk in hosts.chunks(4 * SHARES_PER_MESSAGE) {
                send_to_cluster(Some(home.clone()), HomeShares::Judged(chunk.to_vec()));
            }
        }
        if old.is_some() {
            self.hold_until = Some(Instant::now() + self.handover_grace);
            mailbox::tell_after(me.clone(), ActorKind::Archiver, self.handover_grace, || {
                ArchiverMsg::JudgeReady
            });
        }
        if let Some(detector) = lookup::<DetectorMsg>(DETECTOR_NAME) {
            tell(
                &detector,
                ActorKind::Detector,
                DetectorMsg::Homes(view.clone()),
            )
            .ok();
        }
        tracing::info!(members = ?view.members, "cluster members changed: host homes recomputed");
        let gained = move |h: &str| view.is_home(h) && old.as_ref().is_none_or(|o| !o.is_home(h));
        rebuild_history(self.lake.clone(), self.history_ms, gained);
    }

    /// Hand the windows every owned partition has closed (or that waited too long) to the
    /// detector, one point per host and window.
    fn judge_whole(&mut self) -> Result<(), ActorProcessingErr> {
        let Some(whole) = self.whole.as_mut() else {
            return Ok(());
        };
        if whole.waiting() == 0 {
            return Ok(());
        }
        if self.hold_until.is_some_and(|t| Instant::now() < t) {
            return Ok(());
        }
        // A home waits for every partition in the cluster, a single node for its own.
        let partitions = match &self.view {
            Some(v) => v.partitions.clone(),
            None => owned_partitions(),
        };
        // A host homed elsewhere now (a share that came on a lagging view) is handed over at the
        // next view, never judged here.
        let view = self.view.as_ref();
        let ready = whole.ready(&partitions, Instant::now(), |h| {
            view.is_none_or(|v| v.is_home(h))
        })?;
        let Some(detector) = lookup::<DetectorMsg>(DETECTOR_NAME) else {
            return Ok(());
        };
        let m = Metrics::global();
        for w in ready {
            tracing::debug!(host = %w.host, start_ms = w.start_ms, complete = w.complete, "whole window judged");
            if !w.complete {
                m.incomplete_windows.add(1, &[]);
                tracing::debug!(host = %w.host, start_ms = w.start_ms, "window judged before every partition closed it");
            }
            let point = point_of(w.start_ms, &w.agg);
            if tell(
                &detector,
                ActorKind::Detector,
                DetectorMsg::Observe(w.host, point),
            )
            .is_err()
            {
                tracing::debug!("detector restarting: a window goes unjudged");
            }
        }
        Ok(())
    }
}

fn point_of(start_ms: i64, agg: &WindowAgg) -> WindowPoint {
    let s = agg.finalize();
    WindowPoint {
        start_ms,
        requests: s.requests as f64,
        error_rate: s.error_rate,
        latency_p99_ms: s.latency_p99,
    }
}

/// Send to another member's archiver through the membership actor (nothing on a single node).
fn send_to_cluster(to: Option<String>, shares: HomeShares) {
    if let Some(cluster) = lookup::<ClusterMsg>(CLUSTER_NAME) {
        tell(
            &cluster,
            ActorKind::Cluster,
            ClusterMsg::Send { to, shares },
        )
        .ok();
    }
}

/// Read the recent windows back from the lake (off the actor), merge each gained host's
/// partition shares into whole windows and seed the detector with them as history.
fn rebuild_history(lake: Lake, history_ms: i64, gained: impl Fn(&str) -> bool + Send + 'static) {
    tokio::spawn(async move {
        let read = tokio::task::spawn_blocking(move || -> Result<_, String> {
            let Some(h) = lake.newest_window_hour().map_err(|e| e.to_string())? else {
                return Ok(Vec::new());
            };
            let windows = lake
                .read_windows(h + 3_600_000 - history_ms)
                .map_err(|e| e.to_string())?;
            let mut whole: std::collections::BTreeMap<(String, i64), WindowAgg> =
                Default::default();
            for w in windows.into_iter().filter(|w| gained(&w.key.host)) {
                let e = whole.entry((w.key.host, w.key.start_ms)).or_default();
                e.merge(&w.agg).map_err(|e| e.to_string())?;
            }
            let mut by_host: std::collections::BTreeMap<String, Vec<WindowPoint>> =
                Default::default();
            for ((host, start), agg) in whole {
                by_host.entry(host).or_default().push(point_of(start, &agg));
            }
            Ok(by_host.into_iter().collect::<Vec<_>>())
        })
        .await;
        let hosts = match read {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot rebuild detector history from the lake: those hosts start without a baseline");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "detector history rebuild failed");
                return;
            }
        };
        let Some(detector) = lookup::<DetectorMsg>(DETECTOR_NAME) else {
            return;
        };
        tracing::info!(
            hosts = hosts.len(),
            "detector history rebuilt from the lake for hosts homed here now"
        );
        for (host, points) in hosts {
            tell(
                &detector,
                ActorKind::Detector,
                DetectorMsg::Seed(host, points),
            )
            .ok();
        }
    });
}
