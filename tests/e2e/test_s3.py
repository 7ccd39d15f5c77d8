"""The lake on S3, against a real S3 API: SeaweedFS started by scripts/s3 (SigV4 enforced). The
objects are read back with an independent client (boto3) and checked with DuckDB against ground
truth; then the store is stopped mid-run and started again, and every window must still arrive."""

import json
import os
import signal
import subprocess
import time
import urllib.parse

import boto3
import duckdb
import pytest

from conftest import ROOT, START, WTM, Truth, generate
from test_kafka import FAST, PacedProducer, check_records, kafka_source, new_topic
from test_lake_upkeep import per_window
from test_pipeline import RANGE, assert_lake_equals_truth

KEY, SECRET = "wtm", "wtm-secret-key"
SOURCE = dict(seed=9, hosts=12, rate=300.0, realtime=False, start=START, duration_s=900, anomalies=0,
              malformed_share=0.001)
GEN_FLAGS = dict(seed=9, hosts=12, rate=300.0, start=START, duration=900, anomalies=0, malformed_share=0.001,
                 partitions=4)


class SeaweedFS:
    def __init__(self, data_dir):
        self.data_dir = data_dir
        self.endpoint = None

    def start(self):
        out = subprocess.run([str(ROOT / "scripts/s3"), "start", "--data-dir", str(self.data_dir)], check=True,
                             capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET)).stdout
        self.endpoint = next(l.split("=", 1)[1] for l in out.splitlines() if l.startswith("endpoint="))
        return self

    def stop(self):
        subprocess.run([str(ROOT / "scripts/s3"), "stop", "--data-dir", str(self.data_dir)], check=True, timeout=60)

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                            region_name="us-east-1")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    path = generate(tmp_path_factory.mktemp("s3-gen") / "events.json", **GEN_FLAGS)
    return path, Truth(path)


@pytest.fixture(scope="module")
def truth(generated):
    return generated[1]


@pytest.fixture
def s3(tmp_path, monkeypatch):
    # The node finds its credentials the standard AWS way; nothing may probe the metadata address.
    for k, v in dict(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_EC2_METADATA_DISABLED="true",
                     AWS_REGION="us-east-1").items():
        monkeypatch.setenv(k, v)
    store = SeaweedFS(tmp_path / "seaweedfs").start()
    yield store
    store.stop()


def download(store, bucket, prefix, dest):
    """Every object under the prefix, with an independent client, into a local tree."""
    n = 0
    for page in store.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for o in page.get("Contents", []):
            path = dest / o["Key"][len(prefix) + 1:]
            path.parent.mkdir(parents=True, exist_ok=True)
            store.client().download_file(bucket, o["Key"], str(path))
            n += 1
    return n


def check_lake(store, bucket, tmp_path, truth):
    dest = tmp_path / "downloaded"
    dest.mkdir(parents=True)
    assert download(store, bucket, "wtm", dest) > 0
    assert_lake_equals_truth(dest, truth)
    check_records(dest, truth)


def s3_lake(store, bucket):
    return {"url": f"s3://{bucket}/wtm", "endpoint": store.endpoint, "path_style": True, "flush_interval_ms": 700}


def test_s3_lake_matches_ground_truth(s3, node_factory, tmp_path, truth):
    s3.client().create_bucket(Bucket="lake-exact")
    node = node_factory(SOURCE, lake=s3_lake(s3, "lake-exact")).start()
    node.wait_finished()
    check_lake(s3, "lake-exact", tmp_path, truth)
    assert node.overview()["events"] == truth.events


def test_denied_credentials_stop_the_node_at_once(s3, node_factory, monkeypatch):
    # A secret the store refuses is not an outage: no retry can fix it, so the node stops at
    # once and says why, instead of spending its restart budget (here it would take > 40 s).
    s3.client().create_bucket(Bucket="lake-denied")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    node = node_factory(SOURCE, lake=s3_lake(s3, "lake-denied"),
                        supervisor={"backoff_initial_ms": 5000, "backoff_max_ms": 10000})
    started = time.time()
    run = subprocess.run([WTM, "run", "--config", str(node.config)], capture_output=True, text=True, timeout=120)
    took = time.time() - started
    assert run.returncode != 0, run.stderr[-2000:]
    assert took < 25, f"took {took:.0f} s: retried a permanent failure"
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the node stopped") and "permanently" in last and "lake-denied" in last, last


def test_s3_outage_loses_nothing(s3, node_factory, tmp_path, truth):
    # The store is down from the node's start: it must still read and aggregate the whole stream
    # (nothing waits on the lake), show the backlog, and write everything once the store is back.
    s3.client().create_bucket(Bucket="lake-outage")
    s3.stop()
    node = node_factory(SOURCE, lake=s3_lake(s3, "lake-outage"), checkpoint={"interval_ms": 200}).start()
    deadline = time.time() + 120
    while node.overview()["events"] < truth.events and time.time() < deadline:
        time.sleep(0.2)
    assert node.overview()["events"] == truth.events, "the node stopped reading while the store was away"
    status, metrics = node.get("/metrics")
    backlog = sum(float(l.rsplit(" ", 1)[1]) for l in metrics.decode().splitlines()
                  if l.startswith("wtm_lake_backlog_publications{"))
    assert backlog > 0
    assert not node.overview()["finished"], "nothing can be finished while the lake is away"
    # The API shows every counted event meanwhile: windows the watermark closed wait for the lake
    # in their owners, and neither a site's listing nor its series may lose them.
    late = node.overview()["late"]
    status, listing = node.get("/v1/hosts?windows=10000")
    assert status == 200
    listed = {h["host"]: h["requests"] for h in listing["hosts"]}
    assert sorted(listed) == sorted({h for h, _ in truth.windows})
    assert sum(listed.values()) == truth.events - late
    closed = 0
    for host, requests in listed.items():
        status, series = node.get(f"/v1/hosts/{urllib.parse.quote(host)}/windows?{RANGE}")
        assert status == 200, series
        assert sum(w["requests"] for w in series["windows"]) == requests, host
        closed += sum(w["final"] for w in series["windows"])
    assert closed > len(listed), "the closed windows waiting for the lake were expected in the series"
    s3.start()
    node.wait_finished(timeout=300)
    check_lake(s3, "lake-outage", tmp_path, truth)


def test_reads_and_reading_go_on_while_the_store_hangs(s3, node_factory, tmp_path, truth):
    # A store that takes writes and never answers (frozen, not down: each write waits for the
    # client's 30 s attempt timeout) holds up the lake writes, and reading a few checkpoints ahead
    # of them (so what waits for the store stays bounded). Each partition's status (which
    # /v1/overview and /v1/cluster ask its owner for) and the API go on answering; once the store
    # answers again, everything is written exactly once.
    s3.client().create_bucket(Bucket="lake-hang")
    node = node_factory(SOURCE, lake=s3_lake(s3, "lake-hang"), checkpoint={"interval_ms": 200}).start()
    pid = int((s3.data_dir / "weed.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    slowest, events = 0.0, 0
    try:
        frozen = time.time()
        # Past one write's timeout.
        while time.time() < frozen + 35:
            for path in ("/v1/overview", "/v1/cluster"):
                asked = time.monotonic()
                status, body = node.get(path)
                slowest = max(slowest, time.monotonic() - asked)
                assert status == 200, body
                if path == "/v1/overview":
                    events = body["events"]
            time.sleep(0.2)
        assert not node.overview()["finished"], "nothing can be finished while the store hangs"
    finally:
        os.kill(pid, signal.SIGCONT)
    assert events > 0
    assert slowest < 3.0, f"a status read waited {slowest:.1f} s behind a lake write"
    node.wait_finished(timeout=300)
    check_lake(s3, "lake-hang", tmp_path, truth)


def test_kafka_node_keeps_lake_and_snapshots_in_s3(s3, broker, node_factory, tmp_path, generated):
    path, truth = generated
    s3.client().create_bucket(Bucket="lake-kafka")
    topic = new_topic(broker, "s3lake")
    producer = PacedProducer(broker, topic, path, seconds=5)
    producer.start()
    node = node_factory(kafka_source(broker, topic), window=FAST["window"], checkpoint=FAST["checkpoint"],
                        lake=s3_lake(s3, "lake-kafka")).start()
    producer.finish()
    deadline, last = time.time() + 180, None
    while time.time() < deadline:
        try:
            check_lake(s3, "lake-kafka", tmp_path / f"try-{int(time.time() * 1000)}", truth)
            break
        except (AssertionError, duckdb.Error) as e:
            last = e
            time.sleep(2)
    else:
        raise AssertionError(f"S3 lake never equalled the ground truth: {last!r}")
    # Every partition's shared snapshot is in the bucket, beside the tables.
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket="lake-kafka", Prefix="wtm/checkpoints/")["Contents"]]
    assert sorted(keys) == [f"wtm/checkpoints/partition-{p:05}.ckpt" for p in range(6)]
    assert node.get("/metrics")[1].decode().count("wtm_checkpoint_snapshots_total") >= 1


def test_compaction_and_retention_on_s3(s3, node_factory, tmp_path, truth):
    # The upkeep against a real S3 API: conditional log commits, listing, deletes. Read back
    # through the tables' logs from an independent download.
    s3.client().create_bucket(Bucket="lake-upkeep")
    node = node_factory(SOURCE, lake=s3_lake(s3, "lake-upkeep")).start()
    node.wait_finished()
    node.stop()
    cfg = tmp_path / "s3-lake.toml"
    cfg.write_text(f'[lake]\nurl = "s3://lake-upkeep/wtm"\nendpoint = "{s3.endpoint}"\npath_style = true\n')

    def table_rows(name):
        dest = tmp_path / name
        dest.mkdir()
        download(s3, "lake-upkeep", "wtm", dest)
        return per_window(dest), len(list((dest / "windows").glob("dt=*/hour=*/*.parquet")))

    want = {k: t["requests"] for k, t in truth.windows.items()}
    before, files_before = table_rows("before")
    assert before == want
    r = subprocess.run([WTM, "compact", "--config", str(cfg), "--before", "2026-01-02T00:00:00Z", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["hours_compacted"] >= 1
    r = subprocess.run([WTM, "retention", "--config", str(cfg), "--keep", "3650", "--grace-hours", "0",
                        "--now", "2026-01-02T00:00:00Z"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    after, files_after = table_rows("after")
    assert after == want
    assert files_after < files_before / 10, (files_before, files_after)
