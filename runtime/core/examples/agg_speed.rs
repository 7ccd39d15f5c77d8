//! Time per event of the window aggregates alone, on one thread: adding a log's events to
//! their (host, minute) windows, decoding them from a checkpoint's bytes as a restart does,
//! then closing and encoding each window as the lake does
//! (`cargo run --release -p wtm-core --example agg_speed -- FILE [LINES]`, FILE in
//! `vhost_combined`, e.g. from `wtm generate --format vhost_combined`).
//!
//! Why: a whole `wtm batch` spreads over threads and this box's CPU time for the same work
//! varies by a third between runs, which hides a change of a few percent in the aggregates.
//! Here each stage runs several times over the same events, and the fastest run counts.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;
use wtm_core::agg::{network_of, path_id, WindowAgg};
use wtm_core::checkpoint::{decode, encode_into};
use wtm_core::event::{BotCache, Event, Format};
use wtm_core::parse::parse_line;

// The node's allocator: the aggregates allocate as they grow, and glibc's malloc shows costs
// the node does not have.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const RUNS: usize = 7;
const MINUTE_MS: i64 = 60_000;

/// Open windows: host → window start → aggregate, as a window shard keeps them.
type Open = HashMap<String, BTreeMap<i64, WindowAgg>>;

/// The event's (host, minute) window, made on first sight.
fn window_of<'a>(open: &'a mut Open, e: &Event) -> &'a mut WindowAgg {
    // Looked up before an entry is made, so a known host costs no copy of its name.
    if !open.contains_key(&e.host) {
        open.insert(e.host.clone(), BTreeMap::new());
    }
    open.get_mut(&e.host)
        .expect("inserted above")
        .entry(e.ts_ms - e.ts_ms.rem_euclid(MINUTE_MS))
        .or_default()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: agg_speed FILE [LINES]");
    let lines: usize = args.next().map_or(1_000_000, |n| n.parse().expect("LINES"));
    let text = std::fs::read(&path).expect("read FILE");
    let events: Vec<Event> = text
        .split(|&b| b == b'\n')
        .take(lines)
        .filter_map(|l| parse_line(Format::VhostCombined, l, "").ok())
        .collect();
    let n = events.len() as f64;
    if std::env::var_os("AGG_PARTS").is_some() {
        parts(&events);
        return;
    }
    let (mut add, mut close, mut encode, mut finalize) = (vec![], vec![], vec![], vec![]);
    let mut restore = vec![];
    let mut distinct = vec![];
    let mut windows = 0;
    let mut encoded = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        let mut open = Open::new();
        // As a window shard judges agents: once per distinct agent.
        let mut bots = BotCache::default();
        for e in &events {
            window_of(&mut open, e).add_judged(&e.view(), bots.is_bot(e.user_agent.as_deref()));
        }
        add.push(t.elapsed().as_secs_f64());
        let mut closed: Vec<WindowAgg> =
            open.into_values().flat_map(BTreeMap::into_values).collect();
        // A restart decodes the open windows its checkpoint holds.
        let open_bytes: Vec<Vec<u8>> = closed
            .iter()
            .map(|a| wtm_core::checkpoint::encode(a).expect("encode"))
            .collect();
        let t = Instant::now();
        let restored: Vec<WindowAgg> = open_bytes
            .iter()
            .map(|b| decode("w", b).expect("decode"))
            .collect();
        restore.push(t.elapsed().as_secs_f64());
        drop(std::hint::black_box(restored));
        windows = closed.len();
        let t = Instant::now();
        closed.iter_mut().for_each(WindowAgg::close);
        close.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        // As the lake writes the `sketch` column: into one reused buffer.
        let mut buf = Vec::new();
        encoded = closed
            .iter()
            .map(|a| {
                encode_into(&mut buf, a).expect("encode");
                buf.len()
            })
            .sum::<usize>();
        encode.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        closed.iter().for_each(|a| {
            std::hint::black_box(a.finalize());
        });
        finalize.push(t.elapsed().as_secs_f64());
        // Of finalize: the distinct count (a copy of the sketch, estimated).
        let t = Instant::now();
        closed.iter().for_each(|a| {
            std::hint::black_box(a.clients.clone().estimate());
        });
        distinct.push(t.elapsed().as_secs_f64());
    }
    let per_event = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        format!("{:.0} / {:.0}", v[0] / n * 1e9, v[v.len() / 2] / n * 1e9)
    };
    println!(
        "{} events, {windows} windows, {:.0} bytes encoded per window; ns per event over {RUNS} runs (fastest / median): add {}, decode open {}, close {}, encode {}, finalize {} (of which the distinct count {})",
        events.len(),
        encoded as f64 / windows as f64,
        per_event(&mut add),
        per_event(&mut restore),
        per_event(&mut close),
        per_event(&mut encode),
        per_event(&mut finalize),
        per_event(&mut distinct),
    );
}

/// Each part of adding an event alone (`AGG_PARTS=1`): ns per event, the window lookup included
/// in each (the `lookup` row is it alone).
fn parts(events: &[Event]) {
    type Part = fn(&mut WindowAgg, &Event);
    let parts: [(&str, Part); 12] = [
        ("lookup", |a, _| a.requests += 1),
        ("status codes", |a, e| a.status_codes.add(&e.status, 1)),
        ("methods", |a, e| a.methods.add(e.method.as_str(), 1)),
        ("latency", |a, e| a.latency.add(e.latency_ms.unwrap_or(1.0))),
        ("time by path", |a, e| {
            a.path_time.insert_n(&path_id(&e.path), 5)
        }),
        ("clients (HLL)", |a, e| {
            a.clients.insert(e.client_ip.as_deref().unwrap_or(""))
        }),
        ("networks", |a, e| {
            if let Some(n) = e.client_ip.as_deref().and_then(network_of) {
                a.networks.insert(&n)
            }
        }),
        ("network_of", |a, e| {
            a.bytes += e.client_ip.as_deref().and_then(network_of).unwrap_or(0) & 1
        }),
        ("path_id", |a, e| a.bytes += path_id(&e.path) & 1),
        ("paths", |a, e| a.paths.insert(e.path.as_str())),
        ("referrers", |a, e| {
            a.referrers.insert(e.referrer.as_deref().unwrap_or(""))
        }),
        ("user agents", |a, e| {
            a.user_agents.insert(e.user_agent.as_deref().unwrap_or(""))
        }),
    ];
    for (name, part) in parts {
        let mut best = f64::MAX;
        for _ in 0..RUNS {
            let t = Instant::now();
            let mut open = Open::new();
            for e in events {
                part(window_of(&mut open, e), e);
            }
            best = best.min(t.elapsed().as_secs_f64());
            drop(open);
        }
        println!(
            "{name:>14}: {:.0} ns per event (fastest of {RUNS})",
            best / events.len() as f64 * 1e9
        );
    }
}
