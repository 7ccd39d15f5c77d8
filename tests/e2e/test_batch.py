"""`wtm batch`: the same pipeline over files. Ground truth is counted here from the files."""

import gzip
import json
import os
import subprocess

import duckdb

from conftest import START, WTM, Truth, duck, generate
from test_pipeline import assert_lake_equals_truth, lake_late

FINAL_COLUMNS = """host, epoch_ms(window_start) as w, requests, bytes, status_1xx, status_2xx, status_3xx,
    status_4xx, status_5xx, error_rate, latency_p50_ms, latency_p90_ms, latency_p95_ms, latency_p99_ms,
    latency_max_ms, unique_clients, bots, status_codes, methods, top_paths, top_referrers, top_user_agents"""


def batch(data_dir, *files, extra=(), env=None):
    r = subprocess.run(
        [WTM, "batch", "--quiet", "--json", "--data-dir", str(data_dir), *extra, *map(str, files)],
        capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})},
    )
    return r


def final_rows(lake):
    con = duckdb.connect()
    return sorted(con.execute(f"select {FINAL_COLUMNS} from read_parquet('{lake}/windows/*/*/*.parquet')").fetchall())


def test_batch_equals_streaming(node_factory, tmp_path):
    # One partition on both sides: the same events in the same order, so every lateness decision
    # and every aggregate must come out the same.
    flags = dict(seed=21, hosts=15, rate=200.0, start=START, duration=900, anomalies=0, partitions=1)
    events = generate(tmp_path / "events.json", **flags)
    node = node_factory(dict(seed=21, hosts=15, rate=200.0, realtime=False, start=START, duration_s=900,
                             anomalies=0, partitions=1))
    node.start()
    node.wait_finished()
    r = batch(tmp_path / "batch", events)
    assert r.returncode == 0, r.stderr
    streamed, batched = final_rows(node.lake), final_rows(tmp_path / "batch" / "lake")
    assert len(streamed) > 100
    assert streamed == batched
    assert lake_late(node.lake) == lake_late(tmp_path / "batch" / "lake")


def test_rotated_gzip_and_bad_lines_are_exact(tmp_path):
    src = generate(tmp_path / "all.log", seed=5, hosts=12, rate=250.0, start=START, duration=900,
                   format="vhost_combined", malformed_share=0.002)
    truth = Truth(src, fmt="vhost_combined")
    lines = src.read_bytes().splitlines(keepends=True)
    # Three rotated files covering the same span for the same hosts, one of them gzip.
    parts = [b"".join(lines[i::3]) for i in range(3)]
    (tmp_path / "access.log").write_bytes(parts[0])
    (tmp_path / "access.log.1").write_bytes(parts[1])
    with gzip.open(tmp_path / "access.log.2.gz", "wb") as f:
        f.write(parts[2])
    files = [tmp_path / "access.log", tmp_path / "access.log.1", tmp_path / "access.log.2.gz"]
    r = batch(tmp_path / "out", *files, extra=("--format", "vhost_combined"))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["files"] == 3
    assert summary["events"] == truth.events and summary["invalid_total"] == truth.malformed > 0
    assert summary["lines"] == len(lines)
    lake = tmp_path / "out" / "lake"
    windows, late = assert_lake_equals_truth(lake, truth)
    assert sum(l["requests"] for l in late.values()) == summary["late"]
    assert not (lake / "events").exists(), "the raw archive is off in batch mode by default"


def test_nothing_parsable_is_an_error(tmp_path):
    junk = tmp_path / "junk.log"
    junk.write_text("this is not\nan access log\n")
    r = batch(tmp_path / "out", junk, extra=("--format", "combined"))
    assert r.returncode != 0
    assert "no record could be parsed" in r.stderr
    r = batch(tmp_path / "out", tmp_path / "missing.log")
    assert r.returncode != 0 and "missing.log" in r.stderr


def test_a_rerun_at_other_timings_writes_the_same_files(tmp_path):
    """A backfill's recovery is a rerun into the same lake (the Airflow DAG's retry): every file
    it writes must be named by the input alone. Late, invalid and raw-event files hold offset
    ranges of a partition; were those ranges cut where batch sizes, checkpoint ticks or the
    machine's load happened to put them, a rerun would add their rows again under other names."""
    src = generate(tmp_path / "day.json", seed=8, hosts=10, rate=150.0, start=START, duration=600,
                   malformed_share=0.002)
    truth = Truth(src)
    lake = tmp_path / "lake"
    # The first run reads and checkpoints as often and as unevenly as it can be made to, and waits
    # for the lake at every block; the second at the defaults. Both keep `lake.flush_records`, the
    # block size, as a rerun must (README, `wtm batch`).
    timings = [
        {"WTM__SOURCE__BATCH_SIZE": "37", "WTM__CHECKPOINT__INTERVAL_MS": "10",
         "WTM__LAKE__FLUSH_INTERVAL_MS": "1", "WTM__LAKE__FLUSH_RECORDS": "5000",
         "WTM__LAKE__MAX_UNWRITTEN_RECORDS": "5000"},
        {"WTM__LAKE__FLUSH_RECORDS": "5000"},
    ]
    files = []
    for i, env in enumerate(timings):
        r = batch(tmp_path / f"run{i}", src, extra=("--raw-events",), env={"WTM__LAKE__PATH": str(lake), **env})
        assert r.returncode == 0, r.stderr
        summary = json.loads(r.stdout)
        assert summary["events"] == truth.events and summary["invalid_total"] == truth.malformed > 0
        files.append(sorted(str(p.relative_to(lake)) for p in lake.glob("*/*/*/*.parquet")))
    assert summary["late"] > 0, "the input has late events"
    assert len([f for f in files[0] if f.startswith("events/")]) > 2, "raw events span several files"
    assert files[1] == files[0], "the rerun wrote files the first run did not"
    # Each row once, in the files and through the tables' logs (what readers are told to use).
    con = duck()
    for table, rows in (("events", truth.events), ("late", summary["late"]), ("invalid", truth.malformed)):
        for source in (f"read_parquet('{lake}/{table}/*/*/*.parquet')", f"delta_scan('{lake}/{table}')"):
            n, distinct = con.execute(
                f"select count(*), count(distinct (partition, \"offset\")) from {source}"
            ).fetchone()
            assert (n, distinct) == (rows, rows), source
    assert_lake_equals_truth(lake, truth)
