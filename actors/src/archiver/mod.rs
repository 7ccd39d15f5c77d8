//! The archiver: writes committed publications to the Parquet lake and then to the API's
//! history store on disk, keeps each host's newest counts in memory for `/v1/hosts`, and hands
//! closed windows to the detector.
//!
//! Uploads run in tasks of their own, so partitions write in parallel and API reads are never
//! queued behind a slow store; each owner sends its next publication only after the previous
//! one's reply, so a partition's writes stay in order. A finished upload comes back as
//! `Written` (queued before the reply goes out), which updates the counts in order. History
//! reads run on the blocking pool too, never in the archiver's handler.
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
mod unwritten;
mod whole;

pub use homes::{Action, HostHomes};
use state::merge_by_host;
pub use state::{with_older, RecentWindows};
use unwritten::{unwritten_counts, UnwrittenWindows};
pub use whole::{WholeWindow, WholeWindows};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wtm_core::agg::{ClosedWindow, SeriesStats, ShareCounts};
use wtm_core::checkpoint::Publication;
use wtm_core::window::WindowSpec;
use wtm_messages::{
    ask, lookup, mailbox, owned_partitions, tell, ArchiverMsg, ClusterAnswer, ClusterMsg,
    ClusterQuery, ClusterView, DetectorMsg, Failure, HandedOver, Handover, HandoverAsk, HomeShares,
    HostHistory, RefilledHistory, Targeted, Unwritten, WindowPoint, CLUSTER_NAME, DETECTOR_NAME,
};
use wtm_storage::{History, Lake, SeriesRead};
use wtm_telemetry::{ActorKind, KeyValue, Metrics, STATUS_CLASSES};

pub struct ArchiverArgs {
    pub lake: Lake,
    /// Closed windows per host the API serves (`api.retention_windows`), from the history store.
    pub retention_windows: usize,
    /// Closed windows per host whose counts stay in memory for `/v1/hosts`
    /// (`api.listing_windows`).
    pub listing_windows: usize,
    /// The history store's file (None: keep no history, as a batch run, which serves no API).
    pub history: Option<PathBuf>,
    /// The history store's page cache (`api.history_cache_mb`).
    pub history_cache_bytes: usize,
    pub spec: WindowSpec,
    /// Hand closed windows to the detector (`detector.enabled`), whole.
    pub detect: bool,
    /// How long a window waits for its last partition before it is judged anyway; also the
    /// longest judging waits for a member's handover after homes moved.
    pub merge_wait: Duration,
    /// A cluster member (`[cluster] listen`): nothing is judged before membership's first view.
    pub clustered: bool,
    /// Windows of history a detector is seeded with from the lake (its baseline, or what its
    /// model's first fit needs, whichever is longer).
    pub seed_windows: usize,
}

pub struct ArchiverActor;

pub struct ArchiverRun {
    lake: Lake,
    recent: RecentWindows,
    history: Option<Arc<History>>,
    /// Closed windows cut but not yet written, shown with the history (kept only when there
    /// is one: a batch run serves no API).
    unwritten: UnwrittenWindows,
    /// Where hosts are judged, and their windows waiting to go out whole (None: detection off).
    homes: Option<HostHomes>,
    /// How far back a new home (or a restarted node) reads its hosts' history from the lake.
    seed_ms: i64,
    window_ms: i64,
    /// The span of closed windows the API serves: the history store's retention (the listing's
    /// without a store).
    retained_ms: i64,
    /// The history store's start-up refill from the lake is over (or there is no store).
    refilled: bool,
    /// History rebuilds in flight: until they are done, windows to judge are held (judged
    /// without their history, they would be judged blind).
    rebuilding: usize,
    /// Judge actions only.
    held: Vec<Action>,
}

/// Windows held for a history rebuild at most; beyond, they are judged as they come.
const MAX_HELD: usize = 1 << 20;

impl Actor for ArchiverActor {
    type Msg = ArchiverMsg;
    type State = ArchiverRun;
    type Arguments = ArchiverArgs;

    async fn pre_start(
        &self,
        me: ActorRef<ArchiverMsg>,
        args: ArchiverArgs,
    ) -> Result<ArchiverRun, ActorProcessingErr> {
        // Recreate the history store and refill it from the lake, so the API answers the same
        // after a restart.
        let size = args.spec.size_ms;
        let keep_ms = args.retention_windows as i64 * size;
        let seed_ms = args.seed_windows as i64 * size;
        let recent = RecentWindows::new(args.listing_windows, size);
        let history = match args.history.clone() {
            Some(path) => {
                let (retention, cache) = (args.retention_windows, args.history_cache_bytes);
                let h = tokio::task::spawn_blocking(move || {
                    History::create(&path, size, retention, cache)
                })
                .await??;
                Some(Arc::new(h))
            }
            None => None,
        };
        // The refill reads every retained window back from the lake: at many sites that is
        // minutes of a core. So it runs beside the start, in the background (a restarted
        // node's owners restore and catch up first), and the node's readiness waits for it.
        // An unreachable lake (S3 down) must not keep the node from starting: the API then
        // serves what is archived from now on.
        let refilled = match &history {
            Some(h) => {
                let (lake, h, me) = (args.lake.clone(), Arc::clone(h), me.clone());
                let listing_ms = args.listing_windows as i64 * size;
                in_background(
                    "wtm-history-refill",
                    move || refill(&lake, &h, keep_ms, listing_ms),
                    move |refilled| {
                        tell(
                            &me,
                            ActorKind::Archiver,
                            ArchiverMsg::HistoryRefilled(refilled),
                        )
                        .ok();
                    },
                )?;
                false
            }
            None => true,
        };
        let mut rebuilding = 0;
        if args.detect && !args.clustered {
            // A restarted node judges on from the history it had (a cluster member does this
            // for the hosts homed here once membership's first view is in).
            rebuild_history(args.lake.clone(), seed_ms, |_| true, true, me.clone());
            rebuilding += 1;
        }
        Ok(ArchiverRun {
            refilled,
            rebuilding,
            held: Vec::new(),
            lake: args.lake,
            recent,
            retained_ms: match &history {
                Some(_) => keep_ms,
                None => args.listing_windows as i64 * size,
            },
            history,
            unwritten: UnwrittenWindows::default(),
            homes: args.detect.then(|| {
                let whole = WholeWindows::new(args.spec, args.merge_wait);
                HostHomes::new(whole, args.merge_wait, args.clustered)
            }),
            seed_ms,
            window_ms: size,
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
            ArchiverMsg::Publish(p, reply) => {
                upload(run.lake.clone(), run.history.clone(), me.clone(), p, reply)
            }
            ArchiverMsg::Written(p, counts) => run.written(&p, counts, &me)?,
            ArchiverMsg::Unwritten(u) if run.history.is_some() => match u {
                Unwritten::Cut(p) => run.unwritten.cut(&p),
                Unwritten::Reset {
                    partition,
                    unpublished,
                } => run.unwritten.reset(partition, &unpublished),
            },
            ArchiverMsg::Unwritten(_) => {}
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
            ArchiverMsg::HistoryRebuilt(hosts) => run.rebuilt(hosts, &me),
            ArchiverMsg::HistoryRefilled(refilled) => run.refilled(refilled),
            ArchiverMsg::HistoryReady(reply) => drop(reply.send(run.refilled)),
            ArchiverMsg::Windows(q, reply) => match (run.history.clone(), q.host) {
                (Some(h), Some(host)) => {
                    // Both sources' newest `last_windows` starts: the caller trims the union to
                    // the range its newest window decides.
                    let unwritten = run.unwritten.windows(
                        &host,
                        q.from_ms,
                        q.to_ms,
                        q.last_windows,
                        run.window_ms,
                    );
                    off_the_mailbox(reply, move || {
                        let mut windows = h.series(SeriesRead {
                            host: &host,
                            from_ms: q.from_ms,
                            to_ms: q.to_ms,
                            last_windows: q.last_windows,
                            detail: q.detail,
                        })?;
                        windows.extend(unwritten.iter().map(|u| u.to_share(q.detail)));
                        Ok(windows)
                    })
                }
                (None, _) => drop(reply.send(Ok(Vec::new()))),
                (_, None) => drop(reply.send(Err("a window query names its host".into()))),
            },
            ArchiverMsg::Counts(q, reply) => {
                let listed = run.recent.counts(q.windows, q.page);
                // The newest closed windows may not be written yet.
                let unwritten = run.unwritten.by_host(q.page);
                let (from, to) = (run.recent.first_of(q.windows), run.recent.first_listed());
                match &run.history {
                    // More windows than memory lists: the older ones' counts from the store.
                    Some(h) if run.recent.newest_start().is_some() && from < to => {
                        let h = Arc::clone(h);
                        off_the_mailbox(reply, move || {
                            let listed = merge_by_host(listed, unwritten_counts(unwritten));
                            h.counts(from, to)
                                .map(|older| with_older(listed, older, q.page))
                        })
                    }
                    _ if !unwritten.is_empty() => off_the_mailbox(reply, move || {
                        Ok(merge_by_host(listed, unwritten_counts(unwritten)))
                    }),
                    _ => drop(reply.send(Ok(listed))),
                }
            }
            ArchiverMsg::HostsSeen(reply) => {
                reply.send(run.recent.hosts_seen()).ok();
            }
            ArchiverMsg::HostNames(reply) => {
                let newest = run.recent.newest_start().unwrap_or(i64::MIN);
                let from = newest
                    .saturating_sub(run.retained_ms)
                    .saturating_add(run.window_ms);
                let mut names = run.recent.hosts_since(from);
                names.extend(run.unwritten.hosts().cloned());
                reply.send(names).ok();
            }
        }
        mailbox::handled(me.get_id(), ActorKind::Archiver, started);
        Ok(())
    }
}

/// Read the history store on the blocking pool, off the archiver's mailbox (reads never wait
/// behind writes or each other), and reply from there.
fn off_the_mailbox<T: Send + 'static>(
    reply: RpcReplyPort<Result<T, String>>,
    read: impl FnOnce() -> Result<T, wtm_storage::HistoryError> + Send + 'static,
) {
    tokio::spawn(async move {
        let answer = match tokio::task::spawn_blocking(read).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("history read failed: {e}")),
        };
        reply.send(answer).ok();
    });
}

/// Write a partition's publications on the blocking pool, off the archiver's mailbox; reply when
/// durable. Their closed windows then go to the history store (best effort: the lake holds them,
/// and a restart refills the store from it).
fn upload(
    lake: Lake,
    history: Option<Arc<History>>,
    me: ActorRef<ArchiverMsg>,
    ps: Vec<Arc<Publication>>,
    reply: RpcReplyPort<Result<(), Failure>>,
) {
    tokio::spawn(async move {
        let m = Metrics::global();
        let publications = ps.clone();
        let write = move || {
            let stats = lake.write_all(&publications)?;
            let mut counts = Vec::with_capacity(publications.len());
            for p in &publications {
                let s = stats_of(&p.closed);
                if let Some(h) = &history {
                    if let Err(e) = h.put(&p.closed, &s) {
                        tracing::warn!(error = %e, "cannot keep closed windows in the history store: the API misses them until a restart refills it from the lake");
                    }
                }
                counts.push(counts_of(&p.closed, &s));
            }
            Ok::<_, wtm_storage::LakeError>((stats, counts))
        };
        let result = match tokio::task::spawn_blocking(write).await {
            Ok(Ok((stats, counts))) => {
                m.lake_files.add(stats.files, &[]);
                m.lake_bytes.add(stats.bytes, &[]);
                // Queued before the reply, so the owner's next publications land after them.
                for (p, c) in ps.into_iter().zip(counts) {
                    if tell(&me, ActorKind::Archiver, ArchiverMsg::Written(p, c)).is_err() {
                        tracing::warn!("archiver restarting: recent windows reload from the lake");
                        break;
                    }
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
        counts: Vec<ShareCounts>,
        me: &ActorRef<ArchiverMsg>,
    ) -> Result<(), ActorProcessingErr> {
        self.unwritten.written(p);
        let mut by_class = [0u64; 5];
        for (w, c) in p.closed.iter().zip(counts) {
            for (sum, n) in by_class.iter_mut().zip(w.agg.status_class) {
                *sum += n;
            }
            self.recent.insert_counts(&w.key.host, c);
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
        if self.rebuilding > 0 && self.held.len() < MAX_HELD {
            let (judge, rest): (Vec<Action>, Vec<Action>) = actions
                .into_iter()
                .partition(|a| matches!(a, Action::Judge(_)));
            self.held.extend(judge);
            actions = rest;
        }
        perform(actions, homes.view().map(|v| v.me.as_str()), me);
        Ok(())
    }

    /// The start-up refill is over: list what it read (windows archived meanwhile are listed
    /// already; the listing takes the two in any order).
    fn refilled(&mut self, refilled: Result<RefilledHistory, String>) {
        self.refilled = true;
        match refilled {
            Ok(r) => {
                tracing::info!(windows = r.windows, "window history refilled from the lake");
                for (host, newest) in r.newest {
                    self.recent.seen_host(&host, newest);
                }
                for (host, c) in r.listed {
                    self.recent.insert_counts(&host, c);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot refill the window history from the lake"),
        }
    }

    /// A history rebuild is done: seed the detector (before any window held for it), then
    /// judge the held windows once no rebuild is left.
    fn rebuilt(&mut self, hosts: Vec<HostHistory>, me: &ActorRef<ArchiverMsg>) {
        if let Some(detector) = lookup::<DetectorMsg>(DETECTOR_NAME) {
            for h in hosts {
                tell(&detector, ActorKind::Detector, DetectorMsg::Seed(h)).ok();
            }
        }
        self.rebuilding = self.rebuilding.saturating_sub(1);
        if self.rebuilding == 0 && !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            tracing::info!(
                windows = held.len(),
                "windows held for the history rebuild are judged now"
            );
            let me_id = self
                .homes
                .as_ref()
                .and_then(|h| h.view())
                .map(|v| v.me.clone());
            perform(held, me_id.as_deref(), me);
        }
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
        rebuild_history(self.lake.clone(), self.seed_ms, gained, false, me.clone());
        self.rebuilding += 1;
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
                    let point = w.agg.point(w.start_ms);
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

/// Each closed share's statistics: computed once, when it is archived.
fn stats_of(closed: &[ClosedWindow]) -> Vec<SeriesStats> {
    closed.iter().map(|w| w.agg.series_stats()).collect()
}

/// The plain counts of closed windows, from their statistics.
fn counts_of(closed: &[ClosedWindow], stats: &[SeriesStats]) -> Vec<ShareCounts> {
    closed
        .iter()
        .zip(stats)
        .map(|(w, s)| ShareCounts::closed(&w.key, s))
        .collect()
}

/// Refill the history store with the lake's windows of the retained span, a chunk at a time
/// (never the whole span in memory).
fn refill(
    lake: &Lake,
    history: &History,
    keep_ms: i64,
    listing_ms: i64,
) -> Result<RefilledHistory, String> {
    const CHUNK: usize = 1024;
    let Some(hour) = lake.newest_window_hour().map_err(|e| e.to_string())? else {
        return Ok(RefilledHistory::default());
    };
    let end = hour + 3_600_000;
    let (mut n, mut newest, mut kept) = (0, i64::MIN, 0);
    let (mut listed, mut chunk) = (Vec::new(), Vec::with_capacity(CHUNK));
    let mut by_host: HashMap<String, i64> = HashMap::new();
    let mut put = |chunk: &mut Vec<ClosedWindow>| -> Result<(), String> {
        let stats = stats_of(chunk);
        history.put(chunk, &stats).map_err(|e| e.to_string())?;
        let counts = counts_of(chunk, &stats);
        n += chunk.len();
        for (w, c) in chunk.drain(..).zip(counts) {
            newest = newest.max(w.key.start_ms);
            match by_host.get_mut(&w.key.host) {
                Some(s) => *s = (*s).max(w.key.start_ms),
                None => {
                    by_host.insert(w.key.host.clone(), w.key.start_ms);
                }
            }
            listed.push((w.key.host, c));
        }
        // Files come in no particular order of time: keep what the newest so far lists
        // (pruned when the list has doubled, so the pruning costs O(1) per window).
        if listed.len() > 2 * kept + CHUNK {
            listed.retain(|(_, c): &(String, ShareCounts)| c.start_ms > newest - listing_ms);
            kept = listed.len();
        }
        Ok(())
    };
    let mut failed = None;
    lake.for_each_window(end - keep_ms, &mut |w| {
        chunk.push(w);
        if chunk.len() == CHUNK && failed.is_none() {
            failed = put(&mut chunk).err();
        }
    })
    .map_err(|e| e.to_string())?;
    if let Some(e) = failed {
        return Err(e);
    }
    put(&mut chunk)?;
    // Oldest first, so the listing moves its newest start forward a few times, not per share.
    listed.sort_by_key(|(_, c)| c.start_ms);
    Ok(RefilledHistory {
        windows: n,
        listed,
        newest: by_host,
    })
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

/// A window's point, summed over its shares as they are read back.
#[derive(Default)]
struct SeedPoint {
    requests: u64,
    server_errors: u64,
    p99_by_requests: f64,
}

impl SeedPoint {
    fn point(&self, start_ms: i64) -> WindowPoint {
        let n = self.requests.max(1) as f64;
        WindowPoint {
            start_ms,
            requests: self.requests as f64,
            error_rate: self.server_errors as f64 / n,
            latency_p99_ms: self.p99_by_requests / n,
        }
    }
}

/// Read the newest `seed_ms` of windows back from the lake (off the actor), sum each gained
/// host's partition shares into whole windows and hand them back (`HistoryRebuilt`) as the
/// detector's history (and, with `catch_up`, what it has still to judge).
fn rebuild_history(
    lake: Lake,
    seed_ms: i64,
    gained: impl Fn(&str) -> bool + Send + 'static,
    catch_up: bool,
    me: ActorRef<ArchiverMsg>,
) {
    let read = move || -> Result<_, String> {
        let Some(h) = lake.newest_window_hour().map_err(|e| e.to_string())? else {
            return Ok(Vec::new());
        };
        // A point per (site, window), never the shares' sketches: a rebuild of many sites
        // stays small. Shares of one window merge exactly but for the p99, which is their
        // request-weighted mean (exact for a site on one partition; close for a site spread
        // over partitions at random, whose shares are samples of one traffic).
        let mut whole: std::collections::BTreeMap<(String, i64), SeedPoint> = Default::default();
        lake.for_each_window(h - seed_ms, &mut |w| {
            if gained(&w.key.host) {
                let e = whole.entry((w.key.host, w.key.start_ms)).or_default();
                let n = w.agg.requests;
                e.requests += n;
                e.server_errors += w.agg.status_class[4];
                e.p99_by_requests += w.agg.latency.quantile(0.99).unwrap_or(0.0) * n as f64;
            }
        })
        .map_err(|e| e.to_string())?;
        let mut by_host: Vec<HostHistory> = Vec::new();
        for ((host, start), p) in whole {
            let point = p.point(start);
            match by_host.last_mut() {
                Some(h) if h.host == host => h.points.push(point),
                _ => by_host.push(HostHistory {
                    host,
                    points: vec![point],
                    catch_up,
                }),
            }
        }
        Ok(by_host)
    };
    let me_too = me.clone();
    let started = in_background("wtm-history-rebuild", read, move |read| {
        let hosts = read.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot rebuild detector history from the lake: those hosts start without a baseline");
            Vec::new()
        });
        tracing::info!(
            hosts = hosts.len(),
            "detector history rebuilt from the lake for hosts homed here now"
        );
        tell(&me, ActorKind::Archiver, ArchiverMsg::HistoryRebuilt(hosts)).ok();
    });
    if let Err(e) = started {
        // No thread, no rebuild: the windows held for it must not wait.
        tracing::warn!(error = %e, "cannot start the detector history rebuild");
        tell(
            &me_too,
            ActorKind::Archiver,
            ArchiverMsg::HistoryRebuilt(Vec::new()),
        )
        .ok();
    }
}

/// Run `work` on a thread of its own at the lowest CPU priority, then `done` with its result
/// there: reads of the lake that rebuild what a restart lost (the API's history, the
/// detector's) yield the CPU to the partitions' own work. A panic in `work` is an error result.
fn in_background<T>(
    name: &str,
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
    done: impl FnOnce(Result<T, String>) + Send + 'static,
) -> std::io::Result<()> {
    let name = name.to_owned();
    let thread = std::thread::Builder::new().name(name.clone());
    thread
        .spawn(move || {
            // Failing leaves the thread as it was: only slower.
            thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min).ok();
            let result = std::panic::catch_unwind(AssertUnwindSafe(work))
                .unwrap_or_else(|_| Err(format!("{name} panicked")));
            done(result);
        })
        .map(drop)
}
