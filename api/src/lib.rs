//! # Layout
//!
//! The node's HTTP API: poem + poem-openapi. [`routes`] builds the whole app: the `/v1` JSON API
//! (OpenAPI document at `/openapi.json`, Swagger UI at `/docs`), health probes and `/metrics`.
//! Handlers talk to actors only through `wtm_messages` (looked up by registered name) and
//! merge what they get back: closed windows from the archiver, open ones from the window shards.
//! `model` holds the JSON shapes, `params` the parameter types (their schema states exactly what
//! is accepted); [`probe`] is the client side of a health check (`wtm probe`); [`Access`] the
//! bearer tokens and request bounds every route but `/healthz` passes through; `ui` the
//! dashboard's page and assets (`/`, `/ui/…`), compiled in.

mod access;
mod model;
mod params;
pub mod probe;
pub mod tls;
mod ui;

pub use access::Access;

use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use model::*;
use params::Rfc3339;
use poem::middleware::Cors;
use poem::{handler, Endpoint, EndpointExt, IntoResponse, Response, Route};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{EventStream, Json, PlainText};
use poem_openapi::types::ToJSON;
use poem_openapi::{ApiResponse, Object, OpenApi, OpenApiService};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use wtm_core::agg::{network_name, Detail, SeriesStats, WindowAgg};
use wtm_core::explain::{path_name, path_names};
use wtm_core::time::{format_rfc3339, now_ms};
use wtm_messages::local::{self, Partitions, SeriesRange, WindowPart};
use wtm_messages::{
    ask, lookup, AnomalyQuery, ClusterAnswer, ClusterMsg, ClusterQuery, Episode, Gathered,
    HostTotals, HostsPage, PartitionStatus, Targeted, CLUSTER_NAME,
};
use wtm_telemetry::{ActorKind, KeyValue, Metrics};

/// What the API needs to know about the node it serves.
#[derive(Debug, Clone)]
pub struct ApiContext {
    /// Partitions the node always owns (generator: `source.partitions`); None when a consumer
    /// group decides (Kafka): then the owners running now.
    pub partitions: Option<u32>,
    /// `node.id`, and the source as `/v1/cluster` reports it.
    pub node: String,
    /// Where this API listens (as `/v1/cluster` reports it).
    pub api_addr: String,
    pub source: String,
    pub topic: Option<String>,
    pub group: Option<String>,
    pub shards: usize,
    pub window_ms: i64,
    /// Windows the default range of a series covers.
    pub default_windows: i64,
    /// The detector's baseline (`detector.baseline_windows`): what an episode is explained against.
    pub baseline_windows: usize,
    /// Tokens and request bounds.
    pub access: Access,
}

#[derive(Object, Debug, Clone)]
pub struct ErrorBody {
    /// What was wrong with the request.
    pub error: String,
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "bad_request")]
pub enum Reply<T: ToJSON> {
    #[oai(status = 200)]
    Ok(Json<T>),
    /// A parameter is malformed or out of range.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No such host.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The node could not answer (an actor is restarting).
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

fn bad_request<T: ToJSON>(err: poem::Error) -> Reply<T> {
    Reply::BadRequest(Json(ErrorBody {
        error: err.to_string(),
    }))
}

fn bad<T: ToJSON>(msg: impl Into<String>) -> Reply<T> {
    Reply::BadRequest(Json(ErrorBody { error: msg.into() }))
}

fn unavailable<T: ToJSON>(msg: impl std::fmt::Display) -> Reply<T> {
    Reply::Unavailable(Json(ErrorBody {
        error: msg.to_string(),
    }))
}

enum QueryError {
    Bad(String),
    NotFound(String),
    Unavailable(String),
}

impl QueryError {
    fn reply<T: ToJSON>(self) -> Reply<T> {
        match self {
            QueryError::Bad(e) => bad(e),
            QueryError::NotFound(e) => Reply::NotFound(Json(ErrorBody { error: e })),
            QueryError::Unavailable(e) => unavailable(e),
        }
    }
}

#[derive(Clone)]
struct Api {
    ctx: ApiContext,
    /// Open `/v1/stream` connections (each polls the overview every second).
    streams: Arc<Semaphore>,
    /// Explanations already worked out, by episode (its peak window and baseline are closed:
    /// they never change). Cleared when full.
    explained: Arc<std::sync::Mutex<std::collections::HashMap<EpisodeKey, Arc<ExplanationOut>>>>,
}

/// (host, metric, kind, start, peak window start).
type EpisodeKey = (String, String, String, i64, i64);

/// Episodes explained per `/v1/anomalies` reply (the newest); older ones have none.
const MAX_EXPLAINED: usize = 20;
const MAX_CACHED_EXPLANATIONS: usize = 10_000;

/// At most this many `/v1/stream` connections at once per node.
const MAX_STREAMS: usize = 64;
const STREAM_CHECK: Duration = Duration::from_secs(1);
const STREAM_KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(ApiResponse)]
enum StreamReply {
    /// `text/event-stream` of `overview` and `windows` events.
    #[oai(status = 200)]
    Ok(EventStream<BoxStream<'static, StreamEvent>>),
    /// Too many streams are open.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

/// A tick every `every` (a late tick is skipped, not caught up).
fn ticks(every: Duration) -> impl Stream<Item = ()> {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    futures_util::stream::unfold(interval, |mut t| async move {
        t.tick().await;
        Some(((), t))
    })
}

/// One merged window of one host: its aggregate (or, for a series, its statistics).
struct Merged<T> {
    value: T,
    all_final: bool,
    /// The detector's scores, once the window's home judged it.
    scores: Option<[Option<f32>; 3]>,
}

/// A host's shares as every member answered.
struct HostShares {
    parts: Vec<WindowPart>,
    scores: BTreeMap<i64, [Option<f32>; 3]>,
    missing: Vec<String>,
}

/// How a route merges a host's shares into windows ([`local::merge_series`] or
/// [`local::merge_parts`]).
type MergeFn<T> =
    fn(Vec<WindowPart>, SeriesRange) -> Result<BTreeMap<i64, (T, bool)>, local::MergeError>;

impl Api {
    /// `host`'s shares in `range` in `detail`, from this node and every live member; with the
    /// detector's scores by window start and the members that did not answer.
    async fn shares_of(
        &self,
        host: &str,
        range: SeriesRange,
        detail: Detail,
    ) -> Result<HostShares, String> {
        // This node's share and the peers' at once: the slower of the two is the latency.
        let (mine, gathered) = tokio::join!(
            local::host_parts(host, self.ctx.shards, range, detail),
            self.gather(ClusterQuery::HostWindows {
                host: host.to_owned(),
                range,
                detail,
            })
        );
        let (mine, gathered) = (mine?, gathered?);
        let theirs = gathered.answers.into_iter().filter_map(|(_, a)| match a {
            ClusterAnswer::HostWindows(parts) => Some(parts),
            _ => None,
        });
        let mut out = HostShares {
            parts: Vec::new(),
            scores: BTreeMap::new(),
            missing: gathered.missing,
        };
        for h in std::iter::once(mine).chain(theirs) {
            out.parts.extend(h.parts);
            for s in h.scores {
                out.scores.entry(s.start_ms).or_insert(s.scores);
            }
        }
        Ok(out)
    }

    /// `host`'s windows in `range`, merged over partitions and, in a cluster, over every live
    /// member, from shares in `detail`; with the members that did not answer.
    async fn windows_of<T>(
        &self,
        host: &str,
        range: SeriesRange,
        detail: Detail,
        merge: MergeFn<T>,
    ) -> Result<(BTreeMap<i64, Merged<T>>, Vec<String>), String> {
        let mut shares = self.shares_of(host, range, detail).await?;
        let merged = match merge(std::mem::take(&mut shares.parts), range) {
            // A site on several partitions: its windows' sketches are needed after all (asked
            // once more; that answer is whole by itself).
            Err(local::MergeError::NeedSketches) if detail == Detail::Stats => {
                shares = self.shares_of(host, range, Detail::Sketches).await?;
                merge(std::mem::take(&mut shares.parts), range)
            }
            merged => merged,
        }
        .map_err(|e| e.to_string())?;
        let windows = merged
            .into_iter()
            .map(|(start, (value, all_final))| {
                let scores = shares.scores.get(&start).copied();
                (
                    start,
                    Merged {
                        value,
                        all_final,
                        scores,
                    },
                )
            })
            .collect();
        Ok((windows, shares.missing))
    }

    /// Totals per host: closed (newest `n` windows) plus open windows, over every live member;
    /// with the members that did not answer.
    async fn host_totals(
        &self,
        n: usize,
        sparkline: bool,
    ) -> Result<(BTreeMap<String, HostTotals>, Vec<String>), String> {
        let (counts, gathered) = tokio::join!(
            local::host_counts(n, self.ctx.shards, HostsPage::ALL),
            self.gather(ClusterQuery::Hosts {
                windows: n,
                page: None,
            })
        );
        let (mut counts, gathered) = (counts?, gathered?);
        let mut missing = gathered.missing;
        for (member, answer) in gathered.answers {
            let ClusterAnswer::Hosts {
                counts: first,
                page,
            } = answer
            else {
                continue;
            };
            counts.extend(first);
            // A member with many sites answers in pages (each under the transport's frame).
            for index in 1..page.of {
                let query = ClusterQuery::Hosts {
                    windows: n,
                    page: Some(HostsPage { index, of: page.of }),
                };
                match self.ask_member(&member, query).await? {
                    Some(ClusterAnswer::Hosts { counts: more, .. }) => counts.extend(more),
                    _ => {
                        missing.push(member.clone());
                        break;
                    }
                }
            }
        }
        let totals = local::merge_host_counts(counts, n, self.ctx.window_ms, sparkline);
        Ok((totals, missing))
    }

    /// Ask one member of the cluster (None: it did not answer in time).
    async fn ask_member(
        &self,
        to: &str,
        query: ClusterQuery,
    ) -> Result<Option<ClusterAnswer>, String> {
        let Some(c) = lookup::<ClusterMsg>(CLUSTER_NAME) else {
            return Ok(None);
        };
        let t = Targeted {
            to: to.to_owned(),
            query,
        };
        ask(&c, ActorKind::Cluster, |r| ClusterMsg::Ask(t, r))
            .await
            .map_err(|e| e.to_string())
    }

    /// `/v1/overview`, over every live member; with how many closed windows their archivers have
    /// made readable.
    async fn overview_out(&self) -> Result<(OverviewOut, u64), String> {
        let (mine, gathered) = tokio::join!(
            local::overview(self.scope(), self.ctx.shards),
            self.gather(ClusterQuery::Overview)
        );
        let (mine, gathered) = (mine?, gathered?);
        let others = gathered.answers.into_iter().filter_map(|(_, a)| match a {
            ClusterAnswer::Overview(p) => Some(p),
            _ => None,
        });
        let merged = local::merge_overviews(std::iter::once(mine).chain(others));
        let parts = merged.partitions;
        let hosts = merged.hosts.len() as u64;
        let hosts_overflow = merged
            .hosts
            .iter()
            .any(|h| h == wtm_core::limits::OVERFLOW_HOST);
        let now = now_ms();
        let mut invalid: BTreeMap<String, u64> = BTreeMap::new();
        let mut out = OverviewOut {
            events: 0,
            published: PublishedOut::default(),
            invalid_total: 0,
            invalid: BTreeMap::new(),
            late: 0,
            hosts,
            hosts_overflow,
            windows_closed: 0,
            watermark_lag_seconds: None,
            finished: parts.iter().all(|p| p.finished) && gathered.missing.is_empty(),
            partitions: Vec::new(),
            partial: !gathered.missing.is_empty(),
            missing: gathered.missing,
        };
        for p in &parts {
            out.events += p.totals.events;
            out.late += p.totals.late;
            out.windows_closed += p.totals.windows_closed;
            out.published.add(&p.totals.published);
            for (r, n) in &p.totals.invalid {
                *invalid.entry(r.as_str().to_owned()).or_default() += n;
                out.invalid_total += n;
            }
            let lag = p.watermark_ms.map(|w| (now - w) as f64 / 1000.0);
            if let Some(l) = lag {
                out.watermark_lag_seconds =
                    Some(out.watermark_lag_seconds.map_or(l, |m: f64| m.max(l)));
            }
            out.partitions.push(PartitionOut {
                partition: p.partition,
                next_offset: p.next_offset,
                watermark: p.watermark_ms.map(format_rfc3339),
                max_event_time: p.max_event_ms.map(format_rfc3339),
                events: p.totals.events,
                late: p.totals.late,
                lag: p.lag,
                finished: p.finished,
                published: {
                    let mut pb = PublishedOut::default();
                    pb.add(&p.totals.published);
                    pb
                },
            });
        }
        out.invalid = invalid;
        Ok((out, merged.windows_archived))
    }

    fn scope(&self) -> Partitions {
        match self.ctx.partitions {
            Some(n) => Partitions::Fixed(n),
            None => Partitions::Assigned,
        }
    }

    async fn partitions(&self) -> Result<Vec<PartitionStatus>, String> {
        local::partitions(self.scope()).await
    }

    /// Ask the cluster's other live members too (nothing without `[cluster]`).
    async fn gather(&self, q: ClusterQuery) -> Result<Gathered, String> {
        match lookup::<ClusterMsg>(CLUSTER_NAME) {
            Some(c) => ask(&c, ActorKind::Cluster, |r| ClusterMsg::Gather(q, r))
                .await
                .map_err(|e| e.to_string()),
            None => Ok(Gathered::default()),
        }
    }

    /// What drove episode `e`: its peak window against the `baseline_windows` before it, merged
    /// over the cluster with their top-K. None when the windows cannot be read now (not kept:
    /// asked again next time), or have left the history.
    async fn explain(&self, e: &Episode) -> Option<Arc<ExplanationOut>> {
        let key = (
            e.host.clone(),
            e.metric.clone(),
            e.kind.clone(),
            e.start_ms,
            e.peak_window_ms,
        );
        if let Some(x) = self.explained.lock().ok()?.get(&key) {
            return Some(Arc::clone(x));
        }
        let (w, n) = (self.ctx.window_ms, self.ctx.baseline_windows);
        let range = SeriesRange {
            from_ms: Some(e.start_ms.saturating_sub(n as i64 * w)),
            to_ms: e.peak_window_ms + w,
            default_windows: self.ctx.default_windows,
            window_ms: w,
        };
        let (windows, missing) = self
            .windows_of(&e.host, range, Detail::Top, local::merge_parts)
            .await
            .ok()?;
        let observed = &windows.get(&e.peak_window_ms)?.value;
        let mut baseline = WindowAgg::default();
        let mut count = 0;
        for m in windows.range(..e.start_ms).map(|(_, m)| m) {
            baseline.merge(&m.value).ok()?;
            count += 1;
        }
        if count == 0 {
            return None;
        }
        let moved = wtm_core::explain::Moved::of_metric(&e.metric);
        let drivers = wtm_core::explain::drivers(observed, &baseline, count, 3, moved);
        let x = Arc::new(ExplanationOut {
            summary: wtm_core::explain::summary(&drivers, observed, &baseline, count, moved),
            baseline_windows: count as u32,
            drivers: drivers
                .into_iter()
                .map(|d| DriverOut {
                    dimension: d.dimension.to_owned(),
                    key: d.key,
                    baseline_share: d.baseline_share,
                    observed_share: d.observed_share,
                    contribution: d.contribution,
                })
                .collect(),
        });
        // A partial answer is not kept: the next reply may have every member.
        if missing.is_empty() {
            let mut cache = self.explained.lock().ok()?;
            if cache.len() >= MAX_CACHED_EXPLANATIONS {
                cache.clear();
            }
            cache.insert(key, Arc::clone(&x));
        }
        Some(x)
    }

    /// The windows of `host` in the requested range; without `from`, the newest
    /// `default_windows` up to `to`. Unknown host → NotFound. Also the members that did not
    /// answer (the series is partial without them).
    async fn host_windows<T>(
        &self,
        host: &str,
        from: Option<Rfc3339>,
        to: Option<Rfc3339>,
        detail: Detail,
        merge: MergeFn<T>,
    ) -> Result<(Vec<(i64, Merged<T>)>, Vec<String>), QueryError> {
        let from_ms = from.map(|t| t.0);
        let to_ms = to.map_or(i64::MAX, |t| t.0);
        if let Some(f) = from_ms.filter(|f| *f >= to_ms) {
            return Err(QueryError::Bad(format!(
                "`from` ({}) must be before `to` ({})",
                format_rfc3339(f),
                format_rfc3339(to_ms)
            )));
        }
        let range = SeriesRange {
            from_ms,
            to_ms,
            default_windows: self.ctx.default_windows,
            window_ms: self.ctx.window_ms,
        };
        let (windows, missing) = self
            .windows_of(host, range, detail, merge)
            .await
            .map_err(QueryError::Unavailable)?;
        if windows.is_empty() && missing.is_empty() {
            return Err(QueryError::NotFound(format!("unknown host {host:?}")));
        }
        Ok((windows.into_iter().collect(), missing))
    }
}

/// `part` of `whole` as a share (0 when there is nothing).
fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn window_out(start: i64, window_ms: i64, m: &Merged<SeriesStats>) -> WindowOut {
    let s = &m.value;
    let [p50, p90, p95, p99, max] = s.latency_ms;
    WindowOut {
        start: format_rfc3339(start),
        end: format_rfc3339(start + window_ms),
        requests: s.requests,
        bytes: s.bytes,
        status: StatusClasses {
            s1xx: s.status_class[0],
            s2xx: s.status_class[1],
            s3xx: s.status_class[2],
            s4xx: s.status_class[3],
            s5xx: s.status_class[4],
        },
        error_rate: s.error_rate(),
        latency_ms: Latency {
            p50,
            p90,
            p95,
            p99,
            max,
        },
        unique_clients: s.unique_clients,
        bots: s.bots,
        is_final: m.all_final,
        scores: m.scores.map(|[requests, error_rate, latency_p99_ms]| {
            let f = |s: Option<f32>| s.map(f64::from);
            MetricScores {
                requests: f(requests),
                error_rate: f(error_rate),
                latency_p99_ms: f(latency_p99_ms),
            }
        }),
    }
}

fn episode_out(e: Episode, explanation: Option<Arc<ExplanationOut>>) -> EpisodeOut {
    EpisodeOut {
        explanation: explanation.map(|x| (*x).clone()),
        host: e.host,
        metric: e.metric,
        kind: e.kind,
        start: format_rfc3339(e.start_ms),
        end: e.end_ms.map(format_rfc3339),
        ongoing: e.end_ms.is_none(),
        last_window_start: format_rfc3339(e.last_ms),
        windows: e.windows,
        peak_score: e.peak_score,
        peak_window_start: format_rfc3339(e.peak_window_ms),
        peak_observed: e.peak_observed,
        peak_expected: e.peak_expected,
        severity: e.severity,
    }
}

#[OpenApi]
impl Api {
    /// The monitored sites, with totals over their most recent windows.
    #[oai(path = "/v1/hosts", method = "get")]
    async fn hosts(
        &self,
        /// Closed windows the totals cover, newest first (default 60).
        #[oai(validator(minimum(value = "1"), maximum(value = "10000")))]
        windows: Query<Option<u32>>,
        /// Add each site's requests per window (`requests_per_window`).
        sparkline: Query<Option<bool>>,
    ) -> Reply<HostsOut> {
        let n = windows.0.unwrap_or(60);
        match self
            .host_totals(n as usize, sparkline.0 == Some(true))
            .await
        {
            Ok((t, missing)) => Reply::Ok(Json(HostsOut {
                partial: !missing.is_empty(),
                missing,
                hosts: t
                    .into_values()
                    .map(|t| HostOut {
                        error_rate: share(t.status_5xx, t.requests),
                        host: t.host,
                        windows: t.windows,
                        requests: t.requests,
                        bytes: t.bytes,
                        status_5xx: t.status_5xx,
                        bots: t.bots,
                        first_window_start: format_rfc3339(t.first_start_ms),
                        last_window_start: format_rfc3339(t.last_start_ms),
                        latest: t.latest.map(|l| LatestOut {
                            start: format_rfc3339(l.start_ms),
                            requests: l.requests,
                            error_rate: share(l.status_5xx, l.requests),
                            bots: l.bots,
                            latency_p99_ms: l.latency_p99_ms,
                            unique_clients: l.unique_clients,
                            partitions: l.partitions,
                        }),
                        requests_per_window: t.requests_per_window,
                    })
                    .collect(),
            })),
            Err(e) => unavailable(e),
        }
    }

    /// The window series of one site. Without `from`/`to`: its newest windows.
    #[oai(path = "/v1/hosts/:host/windows", method = "get")]
    async fn windows(
        &self,
        host: Path<String>,
        /// Start of the range (RFC 3339), before `to` (else 400); default: the newest 60
        /// windows up to `to`.
        from: Query<Option<Rfc3339>>,
        /// End of the range, exclusive (RFC 3339); default: open-ended.
        to: Query<Option<Rfc3339>>,
    ) -> Reply<WindowSeries> {
        let series = self.host_windows(&host, from.0, to.0, Detail::Stats, local::merge_series);
        let (windows, missing) = match series.await {
            Ok(w) => w,
            Err(e) => return e.reply(),
        };
        let w = self.ctx.window_ms;
        let windows = windows.iter().map(|(s, m)| window_out(*s, w, m)).collect();
        Reply::Ok(Json(WindowSeries {
            host: host.0,
            windows,
            partial: !missing.is_empty(),
            missing,
        }))
    }

    /// Top-K of one dimension of a site's traffic over a range (default: its newest windows).
    #[oai(path = "/v1/hosts/:host/top", method = "get")]
    async fn top(
        &self,
        host: Path<String>,
        dimension: Query<Dimension>,
        /// Entries to return (default 10); the sketches keep 100 per dimension (32 for
        /// `network` and `path_time`).
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        k: Query<Option<u32>>,
        /// Start of the range (RFC 3339), before `to` (else 400); default: the newest 60
        /// windows up to `to`.
        from: Query<Option<Rfc3339>>,
        /// End of the range, exclusive (RFC 3339).
        to: Query<Option<Rfc3339>>,
    ) -> Reply<TopOut> {
        // The documented maximum is the sketch's capacity.
        const _: () = assert!(wtm_core::agg::TOP_K_CAPACITY == 100);
        let k = k.0.unwrap_or(10);
        let in_range = self.host_windows(&host, from.0, to.0, Detail::Top, local::merge_parts);
        let (in_range, missing) = match in_range.await {
            Ok(w) => w,
            Err(e) => return e.reply(),
        };
        let mut agg = WindowAgg::default();
        for (_, m) in &in_range {
            if let Err(e) = agg.merge(&m.value) {
                return unavailable(e);
            }
        }
        let windows = in_range.len() as u64;
        let total = match dimension.0 {
            Dimension::PathTime => agg.latency_ms_total,
            _ => agg.requests,
        };
        let entries: Vec<(String, u64)> = match dimension.0 {
            Dimension::Path => agg.paths.top(k as usize),
            Dimension::Referrer => agg.referrers.top(k as usize),
            Dimension::UserAgent => agg.user_agents.top(k as usize),
            Dimension::Network => {
                let named = agg.networks.top(k as usize).into_iter();
                named.map(|(id, n)| (network_name(id), n)).collect()
            }
            Dimension::PathTime => {
                let names = path_names([&agg]);
                let named = agg.path_time.top(k as usize).into_iter();
                named.map(|(id, n)| (path_name(&names, id), n)).collect()
            }
            Dimension::Status => {
                let mut v: Vec<(String, u64)> = agg
                    .status_codes
                    .iter()
                    .map(|(c, n)| (c.to_string(), *n))
                    .collect();
                v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                v.truncate(k as usize);
                v
            }
        };
        Reply::Ok(Json(TopOut {
            host: host.0,
            dimension: dimension.0,
            windows,
            requests: agg.requests,
            total,
            entries: entries
                .into_iter()
                .map(|(key, count)| TopEntry { key, count })
                .collect(),
            partial: !missing.is_empty(),
            missing,
        }))
    }

    /// Node-wide counters: events ingested, invalid by reason, late, hosts, windows, watermark lag.
    #[oai(path = "/v1/overview", method = "get")]
    async fn overview(&self) -> Reply<OverviewOut> {
        match self.overview_out().await {
            Ok((o, _)) => Reply::Ok(Json(o)),
            Err(e) => unavailable(e),
        }
    }

    /// Server-sent events, checked every second: `overview` (the `/v1/overview` object) at once
    /// and whenever events, invalid or late records or closed windows change; `windows` at once
    /// and whenever new closed windows have become readable through the API (refetch series and
    /// listings then). A comment every 15 s keeps proxies from closing a quiet stream.
    #[oai(path = "/v1/stream", method = "get")]
    async fn stream(&self) -> StreamReply {
        let Ok(permit) = self.streams.clone().try_acquire_owned() else {
            return StreamReply::Unavailable(Json(ErrorBody {
                error: format!("too many open streams (at most {MAX_STREAMS}); retry shortly"),
            }));
        };
        let api = self.clone();
        let events = ticks(STREAM_CHECK)
            .then(move |_| {
                let api = api.clone();
                async move { api.overview_out().await.ok() }
            })
            .filter_map(|o| async move { o })
            // The permit lives as long as the stream.
            .scan((None, None, permit), |(last, archived, _), (o, a)| {
                let key = (
                    o.events,
                    o.invalid_total,
                    o.late,
                    o.windows_closed,
                    o.partial,
                );
                let mut out = Vec::with_capacity(2);
                if *last != Some(key) {
                    *last = Some(key);
                    out.push(StreamEvent::Overview(o));
                }
                if *archived != Some(a) {
                    *archived = Some(a);
                    out.push(StreamEvent::Windows(WindowsEvent {
                        windows_archived: a,
                    }));
                }
                async move { Some(futures_util::stream::iter(out)) }
            })
            .flatten();
        StreamReply::Ok(
            EventStream::new(events.boxed())
                .keep_alive(STREAM_KEEP_ALIVE)
                .to_event(|e| {
                    let name = match &e {
                        StreamEvent::Overview(_) => "overview",
                        StreamEvent::Windows(_) => "windows",
                    };
                    poem::web::sse::Event::message(e.to_json_string()).event_type(name)
                }),
        )
    }

    /// Anomalies raised by the detector, oldest first.
    #[oai(path = "/v1/anomalies", method = "get")]
    async fn anomalies(
        &self,
        /// Only this site's anomalies.
        host: Query<Option<String>>,
        /// Only anomalies of windows starting at or after this time (RFC 3339).
        since: Query<Option<Rfc3339>>,
    ) -> Reply<AnomaliesOut> {
        let since_ms = since.0.map_or(i64::MIN, |t| t.0);
        let q = AnomalyQuery {
            host: host.0.clone(),
            since_ms,
        };
        let (mine, gathered) = match tokio::join!(
            local::anomalies(q.clone()),
            self.gather(ClusterQuery::Anomalies {
                host: q.host,
                since_ms,
            })
        ) {
            (Ok(l), Ok(g)) => (l, g),
            (Err(e), _) | (_, Err(e)) => return unavailable(e),
        };
        let theirs = gathered.answers.into_iter().filter_map(|(_, a)| match a {
            ClusterAnswer::Anomalies(l) => Some(l),
            _ => None,
        });
        let found = local::merge_detections(std::iter::once(mine).chain(theirs));
        // The newest episodes are explained (each once: the answer is kept).
        let mut explanations = Vec::with_capacity(found.episodes.len());
        let first_explained = found.episodes.len().saturating_sub(MAX_EXPLAINED);
        for (i, e) in found.episodes.iter().enumerate() {
            explanations.push(match i >= first_explained {
                true => self.explain(e).await,
                false => None,
            });
        }
        Reply::Ok(Json(AnomaliesOut {
            episodes: found
                .episodes
                .into_iter()
                .zip(explanations)
                .map(|(e, x)| episode_out(e, x))
                .collect(),
            anomalies: found
                .anomalies
                .into_iter()
                .map(|a| AnomalyOut {
                    host: a.host,
                    metric: a.metric,
                    window_start: format_rfc3339(a.window_start_ms),
                    observed: a.observed,
                    expected: a.expected,
                    lower: a.lower,
                    upper: a.upper,
                    score: a.score,
                    anomaly_score: a.anomaly_score,
                    kind: a.kind,
                    model: a.model,
                })
                .collect(),
            partial: !gathered.missing.is_empty(),
            missing: gathered.missing,
        }))
    }

    /// This node's view of the cluster: the partitions it owns, their committed and current
    /// offsets, lag and watermarks.
    #[oai(path = "/v1/cluster", method = "get")]
    async fn cluster(&self) -> Reply<ClusterOut> {
        let parts = match self.partitions().await {
            Ok(p) => p,
            Err(e) => return unavailable(e),
        };
        let members = match lookup::<ClusterMsg>(CLUSTER_NAME) {
            Some(c) => match ask(&c, ActorKind::Cluster, ClusterMsg::Members).await {
                Ok(m) => m
                    .into_iter()
                    .map(|m| MemberOut {
                        id: m.id,
                        api: m.api_addr,
                        cluster: Some(m.cluster_addr),
                        alive: m.alive,
                        this_node: m.this_node,
                        last_heartbeat: m.last_heartbeat_ms.map(format_rfc3339),
                        partitions: m.partitions,
                        home_hosts: m.home_hosts,
                        actor_restarts: m.actor_restarts,
                    })
                    .collect(),
                Err(e) => return unavailable(e),
            },
            None => vec![MemberOut {
                id: self.ctx.node.clone(),
                api: self.ctx.api_addr.clone(),
                cluster: None,
                alive: true,
                this_node: true,
                last_heartbeat: None,
                partitions: parts.iter().map(|p| p.partition).collect(),
                home_hosts: self
                    .host_totals(1, false)
                    .await
                    .map_or(0, |(t, _)| t.len() as u64),
                actor_restarts: Metrics::global()
                    .restarts_total
                    .load(std::sync::atomic::Ordering::Relaxed),
            }],
        };
        Reply::Ok(Json(ClusterOut {
            members,
            node: self.ctx.node.clone(),
            source: self.ctx.source.clone(),
            topic: self.ctx.topic.clone(),
            group: self.ctx.group.clone(),
            partitions: parts
                .into_iter()
                .map(|p| ClusterPartitionOut {
                    partition: p.partition,
                    next_offset: p.next_offset,
                    committed_offset: p.committed_offset,
                    lag: p.lag,
                    watermark: p.watermark_ms.map(format_rfc3339),
                    max_event_time: p.max_event_ms.map(format_rfc3339),
                    owner_epoch: p.owner_epoch,
                })
                .collect(),
        }))
    }

    /// Liveness: the process serves HTTP.
    #[oai(path = "/healthz", method = "get")]
    async fn healthz(&self) -> PlainText<&'static str> {
        PlainText("ok")
    }

    /// Readiness: every partition owner has restored its checkpoint and answers, and the
    /// window history is back from the lake (a restarted node reads and catches up before
    /// that; its history answers would be short until then).
    #[oai(path = "/readyz", method = "get")]
    async fn readyz(&self) -> Reply<ReadyOut> {
        let p = match self.partitions().await {
            Ok(p) => p,
            Err(e) => return unavailable(e),
        };
        match local::history_ready().await {
            Ok(true) => Reply::Ok(Json(ReadyOut {
                ready: true,
                partitions: p.len() as u32,
            })),
            Ok(false) => unavailable("the window history is being refilled from the lake"),
            Err(e) => unavailable(e),
        }
    }
}

#[handler]
fn metrics() -> Response {
    Metrics::global()
        .render()
        .with_content_type("text/plain; version=0.0.4")
        .into_response()
}

/// Route template of a request path (bounded label values).
fn route_of(path: &str) -> &'static str {
    match path.split('/').collect::<Vec<_>>().as_slice() {
        ["", "v1", "hosts"] => "/v1/hosts",
        ["", "v1", "hosts", _, "windows"] => "/v1/hosts/{host}/windows",
        ["", "v1", "hosts", _, "top"] => "/v1/hosts/{host}/top",
        ["", "v1", "overview"] => "/v1/overview",
        ["", "v1", "anomalies"] => "/v1/anomalies",
        ["", "v1", "cluster"] => "/v1/cluster",
        ["", "healthz"] => "/healthz",
        ["", "readyz"] => "/readyz",
        ["", "metrics"] => "/metrics",
        ["", "v1", "stream"] => "/v1/stream",
        ["", ""] => "/",
        ["", "ui", ..] => "/ui",
        ["", "openapi.json"] => "/openapi.json",
        ["", "docs", ..] => "/docs",
        _ => "other",
    }
}

/// The whole HTTP app.
/// The API's explanation of episodes, for the alerts' texts (the same as `/v1/anomalies` gives:
/// the peak window against the baseline, merged over the cluster).
pub fn explainer(ctx: ApiContext) -> wtm_messages::ExplainEpisode {
    let api = Api {
        ctx,
        streams: Arc::new(Semaphore::new(0)),
        explained: Default::default(),
    };
    Arc::new(move |e| {
        let api = api.clone();
        Box::pin(async move {
            let x = api.explain(&e).await?;
            Some(wtm_messages::EpisodeExplanation {
                summary: x.summary.clone(),
                baseline_windows: x.baseline_windows,
                drivers: x
                    .drivers
                    .iter()
                    .map(|d| wtm_messages::EpisodeDriver {
                        dimension: d.dimension.clone(),
                        key: d.key.clone(),
                        baseline_share: d.baseline_share,
                        observed_share: d.observed_share,
                        contribution: d.contribution,
                    })
                    .collect(),
            })
        })
    })
}

pub fn routes(ctx: ApiContext) -> impl Endpoint {
    let access = ctx.access.clone();
    let service = OpenApiService::new(
        Api {
            ctx,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            explained: Default::default(),
        },
        "wtm",
        env!("CARGO_PKG_VERSION"),
    )
    .description("Real-time web-traffic insight: sites, windows, top-K, anomalies.");
    let ui = service.swagger_ui();
    let spec = service.spec_endpoint();
    Route::new()
        .nest("/docs", ui)
        .at("/openapi.json", spec)
        .at("/metrics", metrics)
        .at("/ui/:name", ui::asset)
        .nest("/", service)
        .with(Cors::new())
        .around(move |ep, req| {
            let access = access.clone();
            async move {
                let route = route_of(req.uri().path());
                // The service nested at "/" takes "/" itself: the dashboard's page is served here.
                let mut resp = if route == "/" && req.method() == poem::http::Method::GET {
                    ui::page()
                } else {
                    access.serve(ep.as_ref(), route, req).await
                };
                if resp.status() == poem::http::StatusCode::METHOD_NOT_ALLOWED {
                    // RFC 9110: a 405 names the methods the resource supports; every route is GET.
                    resp.headers_mut().insert(
                        poem::http::header::ALLOW,
                        poem::http::HeaderValue::from_static("GET"),
                    );
                }
                Metrics::global().api_requests.add(
                    1,
                    &[
                        KeyValue::new("route", route),
                        KeyValue::new("status", resp.status().as_u16().to_string()),
                    ],
                );
                Ok(resp)
            }
        })
}
