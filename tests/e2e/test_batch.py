"""`wtm batch`: the same pipeline over files. Ground truth is counted here from the files."""

import gzip
import json
import subprocess

import duckdb

from conftest import START, WTM, Truth, generate
from test_pipeline import assert_lake_equals_truth, lake_late

FINAL_COLUMNS = """host, epoch_ms(window_start) as w, requests, bytes, status_1xx, status_2xx, status_3xx,
    status_4xx, status_5xx, error_rate, latency_p50_ms, latency_p90_ms, latency_p95_ms, latency_p99_ms,
    latency_max_ms, unique_clients, bots, status_codes, methods, top_paths, top_referrers, top_user_agents"""


def batch(data_dir, *files, extra=()):
    r = subprocess.run(
        [WTM, "batch", "--quiet", "--json", "--data-dir", str(data_dir), *extra, *map(str, files)],
        capture_output=True, text=True, timeout=600,
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
