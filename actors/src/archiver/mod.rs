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
//! the whole cluster's partitions before it judges a window. When homes move, every member asks
//! every other for what it holds of its hosts ([`homes`]: the handover round), and a node that
//! became home for a host seeds its detector with the host's recent windows read back from the
//! lake (history only: nothing is judged twice).

mod homes;
mod state;
mod whole;

pub use homes::{Action, HostHomes};
pub use state::RecentWindows;
pub use whole::{WholeWindow, WholeWindows};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wtm_core::agg::WindowAgg;
use wtm_core::checkpoint::Publication;
use wtm_core::window::WindowSpec;
use wtm_messages::{
    ask, lookup, mailbox, owned_partitions, tell, ArchiverMsg, ClusterAnswer, ClusterMsg,
    ClusterQuery, ClusterView, DetectorMsg, Failure, HandedOver, Handover, HandoverAsk, HomeShares,
    Targeted, WindowPoint, CLUSTER_NAME, DETECTOR_NAME,
};
use wtm_storage::Lake;
use wtm_telemetry::{ActorKind, KeyValue, Metrics, STATUS_CLASSES};

pub struct ArchiverArgs {
    pub lake: Lake,
    pub retention_windows: usize,
    pub spec: WindowSpec,
    /// Hand closed windows to the detector (`detector.enabled`), whole.
    pub detect: bool,
    /// How long a window waits for its last partition before it is judged anyway; also the
    /// longest judging waits for a member's handover after homes moved.
    pub merge_wait: Duration,
    /// A cluster member (`[cluster] listen`): nothing is judged before membership's first view.
    pub clustered: bool,
}

pub struct ArchiverActor;

pub struct ArchiverRun {
    lake: Lake,
    recent: RecentWindows,
    /// Where hosts are judged, and their windows waiting to go out whole (None: detection off).
    homes: Option<HostHomes>,
    /// How far back a new home reads a host's history from the lake.
    history_ms: i64,
}

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
            homes: args.detect.then(|| {
                let whole = WholeWindows::new(args.spec, args.merge_wait);
                HostHomes::new(whole, args.merge_wait, args.clustered)
            }),
            history_ms: keep_ms,
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
            ArchiverMsg::Written(p) => run.written(&p, &me)?,
            ArchiverMsg::Progress {
                partition,
                watermark_ms,
            } => run.with_homes(&me, |h, _| h.progress(partition, watermark_ms, true))?,
            ArchiverMsg::View(view) => run.view(view, &me)?,
            ArchiverMsg::FromPeer(shares) => run.with_homes(&me, |h, now| match shares {
                HomeShares::Windows { shares, hops } => h.shares(shares, hops, now),
                HomeShares::Progress {
                    partition,
                    watermark_ms,
                } => h.progress(partition, watermark_ms, false),
            })?,
            ArchiverMsg::Handover(q, reply) => {
                // Detection off here: nothing to hand over, and nothing judged here either.
                let answer = match run.homes.as_mut() {
                    Some(h) => h.handover(&q.from, &q.members),
                    None => Handover {
                        settled: true,
                        ..Default::default()
                    },
                };
                reply.send(answer).ok();
            }
            ArchiverMsg::HandedOver(h) => run.with_homes(&me, |homes, now| {
                homes.handed_over(&h.from, &h.members, h.answer, now)
            })?,
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
    fn written(
        &mut self,
        p: &Publication,
        me: &ActorRef<ArchiverMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let mut by_class = [0u64; 5];
        for w in &p.closed {
            for (sum, n) in by_class.iter_mut().zip(w.agg.status_class) {
                *sum += n;
            }
            self.recent.insert(w.clone());
        }
        let m = Metrics::global();
        m.windows_archived
            .fetch_add(p.closed.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for (class, n) in STATUS_CLASSES.iter().zip(by_class) {
            if n > 0 {
                m.window_requests
                    .add(n, &[KeyValue::new("status_class", *class)]);
            }
        }
        self.with_homes(me, |h, now| h.shares(p.closed.iter().cloned(), 0, now))
    }

    /// Feed the host homes (when detecting), perform what they decide, then judge what is
    /// ready.
    fn with_homes(
        &mut self,
        me: &ActorRef<ArchiverMsg>,
        f: impl FnOnce(&mut HostHomes, Instant) -> Vec<Action>,
    ) -> Result<(), ActorProcessingErr> {
        let Some(homes) = self.homes.as_mut() else {
            return Ok(());
        };
        let now = Instant::now();
        let mut actions = f(homes, now);
        actions.extend(homes.judge(now, &owned_partitions())?);
        perform(actions, homes.view().map(|v| v.me.as_str()), me);
        Ok(())
    }

    /// Membership's latest view. When members changed: the detector forgets hosts homed
    /// elsewhere now, and rebuilds from the lake the history of hosts homed here now.
    fn view(
        &mut self,
        view: ClusterView,
        me: &ActorRef<ArchiverMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let Some(homes) = self.homes.as_ref() else {
            return Ok(());
        };
        let old = homes.view().cloned();
        let changed = old.as_ref().is_none_or(|o| o.members != view.members);
        self.with_homes(me, |h, now| h.new_view(view.clone(), now))?;
        if !changed {
            return Ok(());
        }
        if let Some(detector) = lookup::<DetectorMsg>(DETECTOR_NAME) {
            tell(
                &detector,
                ActorKind::Detector,
                DetectorMsg::Homes(view.clone()),
            )
            .ok();
        }
        tracing::info!(members = ?view.members, "cluster members changed: host homes recomputed, handing over");
        let gained = move |h: &str| view.is_home(h) && old.as_ref().is_none_or(|o| !o.is_home(h));
        rebuild_history(self.lake.clone(), self.history_ms, gained);
        Ok(())
    }
}

/// Carry out what the host homes decided. `me_id` is this node's member id (None on a single
/// node, which never sends nor asks).
fn perform(actions: Vec<Action>, me_id: Option<&str>, me: &ActorRef<ArchiverMsg>) {
    let m = Metrics::global();
    let detector = lookup::<DetectorMsg>(DETECTOR_NAME);
    for a in actions {
        match a {
            Action::Send { to, shares } => {
                if let HomeShares::Windows { shares, .. } = &shares {
                    m.cluster_shares_sent.add(shares.len() as u64, &[]);
                }
                send_to_cluster(to, shares);
            }
            Action::Ask { to, members } => {
                if let Some(from) = me_id {
                    ask_handover(
                        to,
                        HandoverAsk {
                            from: from.to_owned(),
                            members,
                        },
                        me.clone(),
                    );
                }
            }
            Action::Judge(w) => {
                tracing::debug!(host = %w.host, start_ms = w.start_ms, complete = w.complete, "whole window judged");
                if !w.complete {
                    m.incomplete_windows.add(1, &[]);
                }
                let sent = detector.as_ref().is_some_and(|d| {
                    let point = point_of(w.start_ms, &w.agg);
                    tell(
                        d,
                        ActorKind::Detector,
                        DetectorMsg::Observe(w.host.clone(), point),
                    )
                    .is_ok()
                });
                if !sent {
                    tracing::debug!("detector restarting: a window goes unjudged");
                }
            }
            Action::Late(n) => m.late_shares.add(n as u64, &[]),
            Action::HoldTimedOut(missing) => {
                m.cluster_handover_timeouts.add(1, &[]);
                tracing::warn!(?missing, "members did not hand over their hosts within detector.merge_wait_s: judging resumes without them (a window they judged may be judged again)");
            }
        }
    }
}

/// Ask member `to` for its handover (through the membership actor), off the archiver; the
/// answer comes back as `HandedOver`.
fn ask_handover(to: String, q: HandoverAsk, me: ActorRef<ArchiverMsg>) {
    tokio::spawn(async move {
        let answer = match lookup::<ClusterMsg>(CLUSTER_NAME) {
            Some(cluster) => {
                let target = Targeted {
                    to: to.clone(),
                    query: ClusterQuery::Handover(q.clone()),
                };
                match ask(&cluster, ActorKind::Cluster, |r| ClusterMsg::Ask(target, r)).await {
                    Ok(Some(ClusterAnswer::Handover(h))) => Some(h),
                    _ => None,
                }
            }
            None => None,
        };
        let done = HandedOver {
            from: to,
            members: q.members,
            answer,
        };
        tell(&me, ActorKind::Archiver, ArchiverMsg::HandedOver(done)).ok();
    });
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
