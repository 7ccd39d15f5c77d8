//! Heap bytes of one host-window aggregate, by part: what issue 11's "≤ 2 KiB per host-window"
//! is measured against (`cargo run --release -p wtm-core --example agg_bytes`).
//!
//! A counting global allocator (stats_alloc) sums live bytes; each row builds 10,000 aggregates of the same
//! shape (so allocator rounding shows as it does in a node) and divides. Events are realistic
//! web traffic at three sizes: one request; five from one client; 30 with distinct paths,
//! clients and user agents. The parts are measured alone, with the same events.

mod counting;
use counting::live;

use wtm_core::agg::{network_of, path_id, WindowAgg};
use wtm_core::event::Event;
use wtm_core::sketch::{Distinct, Quantiles, TopK};

const N: usize = 10_000;

fn event(i: usize, distinct: bool) -> Event {
    let k = if distinct { i } else { 0 };
    Event {
        ts_ms: 1_700_000_000_000,
        host: "shop.example.com".into(),
        method: if i % 4 == 3 { "POST" } else { "GET" }.into(),
        path: format!("/products/item-{k}"),
        status: if i % 10 == 9 { 404 } else { 200 },
        bytes: 5_000 + i as u64 * 37,
        latency_ms: Some(20.0 + (i * 53 % 400) as f64),
        client_ip: Some(format!("198.51.{}.{}", 100 + k % 50, 1 + k % 200)),
        user_agent: Some(format!(
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/{}",
            100 + k
        )),
        referrer: Some("https://www.example.org/".into()),
    }
}

/// Live heap bytes per item of `make()`, over N items.
fn per_item<T>(make: impl Fn() -> T) -> f64 {
    let before = live();
    let items: Vec<T> = (0..N).map(|_| make()).collect();
    let after = live();
    let inline = std::mem::size_of::<T>() * N;
    drop(items);
    (after - before - inline as isize) as f64 / N as f64
}

fn main() {
    println!(
        "inline size: WindowAgg {} B (Quantiles {}, Distinct {}, TopK<String> {}, TopK<u64> {})",
        std::mem::size_of::<WindowAgg>(),
        std::mem::size_of::<Quantiles>(),
        std::mem::size_of::<Distinct>(),
        std::mem::size_of::<TopK>(),
        std::mem::size_of::<TopK<u64>>()
    );
    println!("| events | whole (inline + heap) | latency | clients | paths | referrers | user agents | networks | path time | status codes + methods |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (n, distinct) in [(1, false), (5, false), (30, true)] {
        let evs: Vec<Event> = (0..n).map(|i| event(i, distinct)).collect();
        let whole = per_item(|| {
            let mut a = WindowAgg::default();
            evs.iter().for_each(|e| a.add(e));
            a
        }) + std::mem::size_of::<WindowAgg>() as f64;
        let latency = per_item(|| {
            let mut q = Quantiles::default();
            evs.iter().for_each(|e| q.add(e.latency_ms.unwrap_or(0.0)));
            q
        });
        let clients = per_item(|| {
            let mut d = Distinct::default();
            evs.iter()
                .for_each(|e| d.insert(e.client_ip.as_deref().unwrap_or("")));
            d
        });
        let top = |f: fn(&Event) -> &str| {
            per_item(|| {
                let mut t = TopK::with_capacity(100);
                evs.iter().for_each(|e| t.insert(f(e)));
                t
            })
        };
        let networks = per_item(|| {
            let mut t = TopK::<u64>::with_capacity(32);
            evs.iter()
                .filter_map(|e| network_of(e.client_ip.as_deref()?))
                .for_each(|n| t.insert(&n));
            t
        });
        let path_time = per_item(|| {
            let mut t = TopK::<u64>::with_capacity(32);
            evs.iter().for_each(|e| t.insert_n(&path_id(&e.path), 20));
            t
        });
        let maps = per_item(|| {
            let mut a = WindowAgg::default();
            evs.iter().for_each(|e| {
                a.status_codes.add(&e.status, 1);
                a.methods.add(e.method.as_str(), 1);
            });
            (a.status_codes, a.methods)
        });
        println!(
            "| {n} | {whole:.0} | {latency:.0} | {clients:.0} | {:.0} | {:.0} | {:.0} | {networks:.0} | {path_time:.0} | {maps:.0} |",
            top(|e| &e.path),
            top(|e| e.referrer.as_deref().unwrap_or("")),
            top(|e| e.user_agent.as_deref().unwrap_or("")),
        );
    }
}
