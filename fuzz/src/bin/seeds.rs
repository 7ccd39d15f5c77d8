//! Writes the checkpoint seeds of the corpus (a real checkpoint with open windows and an
//! unpublished publication), encoded the way a node stores them. Built normally, not fuzzed.
use wtm_core::agg::{ClosedWindow, WindowAgg, WindowKey};
use wtm_core::checkpoint::{encode, PartitionCheckpoint, PartitionTotals, Publication};
use wtm_core::event::Format;
use wtm_core::parse::parse_line;
use wtm_core::window::WatermarkState;

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("usage: seeds DIR"));
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let line = br#"{"ts":1767225600000,"host":"a.example","method":"GET","path":"/x","status":200,"bytes":10,"latency_ms":3.5,"client_ip":"1.2.3.4","user_agent":"ua","referrer":"r"}"#;
    let e = parse_line(Format::Json, line, "").expect("a valid line");
    let mut agg = WindowAgg::default();
    agg.add(&e);
    let key = WindowKey {
        host: e.host.clone(),
        start_ms: 1_767_225_600_000,
        partition: 0,
    };
    let open = encode(&vec![(key.clone(), agg.clone())]).expect("encode");
    let publication = Publication {
        partition: 0,
        from_offset: 0,
        to_offset: 1,
        records_watermark: WatermarkState::default(),
        created_ms: 0,
        closed: vec![ClosedWindow {
            key,
            end_ms: 1_767_225_660_000,
            agg,
        }],
        late: vec![],
        invalid: vec![],
        raw: Default::default(),
        seq: 0,
    };
    for (name, cp) in [
        ("empty", checkpoint(vec![], vec![])),
        ("open", checkpoint(vec![open.clone()], vec![])),
        ("unpublished", checkpoint(vec![open], vec![publication])),
    ] {
        std::fs::write(dir.join(name), encode(&cp).expect("encode")).expect("write");
    }
}

fn checkpoint(open: Vec<Vec<u8>>, unpublished: Vec<Publication>) -> PartitionCheckpoint {
    PartitionCheckpoint {
        partition: 0,
        owner_epoch: 1,
        next_offset: 1,
        watermark: WatermarkState::default(),
        open,
        unpublished: unpublished.into_iter().map(std::sync::Arc::new).collect(),
        range_start: 1,
        range_start_watermark: WatermarkState::default(),
        finished: false,
        totals: PartitionTotals::default(),
        open_deltas: vec![],
    }
}
