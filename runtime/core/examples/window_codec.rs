//! What encoding and decoding open windows costs per window: a checkpoint encodes them, a restore
//! decodes them (`cargo run --release -p wtm-core --example window_codec`; `SITES`, default
//! 30,000).
//!
//! One minute of the generator's traffic at 12 events per site per minute, one window per site,
//! encoded as one shard's blob; then decoded five times, whole, and with a delta that replaces a
//! tenth of the windows (what a restore read when the store holds deltas); then five times as a
//! restore reads it now, each aggregate left encoded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use wtm_core::agg::{WindowAgg, WindowKey};
use wtm_core::checkpoint::{encode, open_windows, restored_windows, OpenDelta, OpenWindows};
use wtm_core::generator::{Generator, GeneratorSpec};

fn main() {
    let sites: usize = std::env::var("SITES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30_000);
    let spec = GeneratorSpec {
        seed: 7,
        hosts: sites,
        rate: sites as f64 * 12.0 / 60.0,
        start_ms: 1_700_000_000_000,
        partitions: 1,
        anomalies: 0,
        kinds: vec![],
        magnitudes: vec![],
        malformed_share: 0.0,
        weekend: 1.0,
        duration_ms: Some(60_000),
        count: None,
    };
    let mut cursor = Arc::new(Generator::new(spec)).cursor(0, 0);
    let mut windows: HashMap<String, WindowAgg> = HashMap::new();
    let mut events = 0;
    while let Some(e) = cursor.next_event() {
        windows.entry(e.host.clone()).or_default().add(&e);
        events += 1;
    }
    let open: OpenWindows = windows
        .into_iter()
        .map(|(host, agg)| {
            let key = WindowKey {
                host,
                start_ms: 0,
                partition: 0,
            };
            (key, agg)
        })
        .collect();
    let n = open.len() as f64;
    let t = Instant::now();
    let whole = encode(&open).unwrap();
    println!(
        "{events} events, {} windows: {} bytes per window, encoded in {:.2} µs per window",
        open.len(),
        whole.len() / open.len(),
        t.elapsed().as_secs_f64() * 1e6 / n
    );
    let tenth: OpenWindows = open.iter().step_by(10).cloned().collect();
    let delta = OpenDelta {
        closed: Vec::new(),
        changed: vec![encode(&tenth).unwrap()],
    };
    let blobs = [whole];
    for (what, deltas) in [("whole", &[][..]), ("with a delta", &[delta][..])] {
        for _ in 0..5 {
            let t = Instant::now();
            let back = open_windows(&blobs, deltas).unwrap();
            let took = t.elapsed();
            assert_eq!(back.len(), open.len());
            println!(
                "decoded {what}: {:.2} µs per window",
                took.as_secs_f64() * 1e6 / n
            );
        }
    }
    // What a restore does now: keys decoded, aggregates stepped over and left encoded.
    for _ in 0..5 {
        let blob = blobs.to_vec();
        let t = Instant::now();
        let back = restored_windows(blob, Vec::new()).unwrap();
        let took = t.elapsed();
        assert_eq!(back.len(), open.len());
        println!(
            "restored (aggregates left encoded): {:.2} µs per window",
            took.as_secs_f64() * 1e6 / n
        );
    }
}
