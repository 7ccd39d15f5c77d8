//! Heap bytes and push time per raw record waiting for the lake, plain columns against coded
//! ones (`cargo run --release -p wtm-core --example records_bytes`).
//!
//! The records are the built-in generator's (20,000 sites, one partition of four), as a
//! backfill holds them: 100,000 rows in one batch, as many as `lake.flush_records` cuts. A
//! counting global allocator (stats_alloc) gives the live bytes, buffers' spare room included.

mod counting;
use counting::live;

use std::sync::Arc;
use std::time::Instant;
use wtm_core::event::Event;
use wtm_core::generator::{Generator, GeneratorSpec};
use wtm_core::records::EventColumns;

const ROWS: usize = 100_000;

fn main() {
    let generator = Arc::new(Generator::new(GeneratorSpec {
        seed: 7,
        hosts: 20_000,
        rate: 400.0,
        start_ms: 1_700_000_000_000,
        partitions: 4,
        anomalies: 0,
        kinds: Vec::new(),
        magnitudes: Vec::new(),
        malformed_share: 0.0,
        weekend: GeneratorSpec::DEFAULT_WEEKEND,
        duration_ms: None,
        count: None,
    }));
    let mut cursor = generator.cursor(0, 0);
    let events: Vec<Event> = std::iter::from_fn(|| cursor.next_event())
        .take(ROWS)
        .collect();
    let text: usize = events
        .iter()
        .map(|e| {
            let opt = |v: &Option<String>| v.as_ref().map_or(0, String::len);
            e.host.len()
                + e.method.len()
                + e.path.len()
                + opt(&e.client_ip)
                + opt(&e.user_agent)
                + opt(&e.referrer)
        })
        .sum();
    println!(
        "{} records, {:.0} bytes of text each",
        events.len(),
        text as f64 / events.len() as f64
    );
    for (name, empty) in [
        ("plain", EventColumns::default as fn() -> EventColumns),
        ("coded", EventColumns::coded),
    ] {
        let before = live();
        let started = Instant::now();
        let mut columns = empty();
        for (i, e) in events.iter().enumerate() {
            columns.push(i as u64, e.view());
        }
        let took = started.elapsed();
        let bytes = live() - before;
        let coded: Vec<&str> = [
            ("host", &columns.host),
            ("method", &columns.method),
            ("path", &columns.path),
            ("client_ip", &columns.client_ip),
            ("user_agent", &columns.user_agent),
            ("referrer", &columns.referrer),
        ]
        .into_iter()
        .filter(|(_, c)| c.is_coded())
        .map(|(n, _)| n)
        .collect();
        println!(
            "{name}: {:.0} bytes per record, {:.0} ns per push; coded columns: {coded:?}",
            bytes as f64 / events.len() as f64,
            took.as_nanos() as f64 / events.len() as f64,
        );
        std::hint::black_box(columns);
    }
}
