"""Kafka end to end, against a genuine Apache Kafka broker started by scripts/kafka.

Seeded events are produced into a 6-partition topic by an independent client (the Python
confluent-kafka package, keyed by host), while nodes consume it in one consumer group. The lake
(read by DuckDB) must equal ground truth counted from the generated lines, per (host, window): after
a clean run, after SIGKILL and restart, with two nodes sharing the topic and a lake while one is
killed and comes back, and across a broker restart.
"""

import json
import threading
import time

import duckdb
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import START, Broker, Truth, generate
from test_pipeline import assert_lake_equals_truth, q

PARTITIONS = 6
GEN_FLAGS = dict(seed=11, hosts=24, rate=300.0, start="2026-01-01T00:00:00Z", duration=600, anomalies=0,
                 malformed_share=0.001)


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    path = generate(tmp_path_factory.mktemp("kafka-gen") / "events.json", **GEN_FLAGS)
    return path, Truth(path)


_topics = iter(range(1_000_000))


def new_topic(broker, name):
    topic = f"{name}-{next(_topics)}-{int(time.time())}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for f in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        f.result(timeout=30)
    return topic


class PacedProducer(threading.Thread):
    """Produces the generated lines, keyed by host, spread over `seconds` (so nodes are killed
    mid-stream), with an idempotent producer that retries through broker outages."""

    def __init__(self, broker, topic, path, seconds, keyed=True):
        super().__init__(daemon=True)
        self.keyed = keyed
        self.producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True,
                                  "linger.ms": 20, "message.timeout.ms": 300_000,
                                  # Unkeyed records: a random partition each, not sticky batches.
                                  **({} if keyed else {"sticky.partitioning.linger.ms": 0})})
        self.topic, self.seconds = topic, seconds
        self.lines = path.read_bytes().splitlines()
        self.sent = 0
        self.failed = []

    def _delivered(self, err, _msg):
        if err is not None:
            self.failed.append(err)

    def run(self):
        chunks = max(1, int(self.seconds * 10))
        per = -(-len(self.lines) // chunks)
        start = time.time()
        for i in range(chunks):
            for line in self.lines[i * per:(i + 1) * per]:
                try:
                    key = json.loads(line)["host"].encode() if self.keyed else None
                except ValueError:
                    key = None  # a malformed line: any partition
                while True:
                    try:
                        self.producer.produce(self.topic, value=line, key=key, on_delivery=self._delivered)
                        break
                    except BufferError:
                        self.producer.poll(0.05)
                self.sent += 1
            self.producer.poll(0)
            time.sleep(max(0.0, start + (i + 1) / 10 - time.time()))
        assert self.producer.flush(300) == 0
        self.producer = None  # disconnect now, not when the broker is long gone

    def finish(self):
        self.join(timeout=600)
        assert not self.is_alive() and not self.failed and self.sent == len(self.lines), self.failed[:3]


def kafka_source(broker, topic, **extra):
    src = {"kind": "kafka", "brokers": broker.bootstrap, "topic": topic, "group": f"g-{topic}", "format": "json",
           # A killed member is noticed after this (the broker's minimum), not the default 45 s.
           "kafka": {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}}
    src.update(extra)
    return src


FAST = dict(window={"idle_timeout_s": 3}, checkpoint={"interval_ms": 200, "snapshot_interval_ms": 1000},
            lake={"flush_interval_ms": 700})


def wait_exact(lake, truth, timeout=240):
    """Wait until the lake holds exactly the truth (windows close once the partitions go idle);
    fail with the last difference. Duplicates never go away, so they fail here too."""
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        try:
            return assert_lake_equals_truth(lake, truth)
        except (AssertionError, duckdb.Error) as e:
            last = e
        time.sleep(1)
    raise AssertionError(f"lake never equalled the ground truth: {last!r}")


def end_offsets(broker, topic):
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "wtm-test-probe"})
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS)}
    finally:
        c.close()


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return
        except (OSError, AssertionError, KeyError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def owned(node):
    status, body = node.get("/v1/cluster")
    assert status == 200, body
    return {p["partition"]: p for p in body["partitions"]}


def check_records(lake, truth):
    """Every parsed event once in the raw archive, every malformed line once in invalid/."""
    (raw,) = q(lake, "select count(*), count(distinct (partition, \"offset\")) from '{lake}/events/*/*/*.parquet'")
    assert raw == (truth.events, truth.events)
    (inv,) = q(lake, "select count(*), count(distinct (partition, \"offset\")) from '{lake}/invalid/*/*/*.parquet'")
    assert inv == (truth.malformed, truth.malformed) and truth.malformed > 0


def test_kafka_node_matches_ground_truth(broker, events, node_factory):
    path, truth = events
    topic = new_topic(broker, "exact")
    dlt = new_topic(broker, "dead")
    producer = PacedProducer(broker, topic, path, seconds=8)
    producer.start()
    node = node_factory(kafka_source(broker, topic, dead_letter_topic=dlt), **FAST).start()
    producer.finish()
    windows, _ = wait_exact(node.lake, truth)
    check_records(node.lake, truth)
    assert all(w["rows"] == 1 for w in windows.values()), "hosts are keyed to one partition each"

    # The API agrees: totals over the partitions, and each partition's offsets are committed.
    ends = end_offsets(broker, topic)
    wait_for(lambda: {p: s["committed_offset"] for p, s in owned(node).items()} == ends, 30, "offsets committed")
    cluster = owned(node)
    assert sorted(cluster) == list(range(PARTITIONS))
    assert all(s["lag"] == 0 and s["next_offset"] == ends[p] for p, s in cluster.items())
    ov = node.overview()
    assert ov["events"] == truth.events and ov["invalid"] == {"bad_json": truth.malformed}
    late = sum(r[0] for r in q(node.lake, "select count(*) from '{lake}/late/*/*/*.parquet'")) if (node.lake / "late").exists() else 0
    assert ov["late"] == late

    # Malformed records also went to the dead-letter topic (no crash here, so exactly once).
    dead = end_offsets(broker, dlt)
    assert sum(dead.values()) == truth.malformed

    status, metrics = node.get("/metrics")
    text = metrics.decode()
    for name in ["wtm_consumer_lag", "wtm_watermark_lag_seconds", "wtm_kafka_rebalances_total",
                 "wtm_kafka_commit_seconds_bucket", "wtm_checkpoint_snapshots_total", "wtm_kafka_dead_letters_total"]:
        assert name in text, name


def test_kafka_sigkill_and_restart_is_exact(broker, events, node_factory):
    path, truth = events
    topic = new_topic(broker, "kill")
    producer = PacedProducer(broker, topic, path, seconds=15)
    producer.start()
    node = node_factory(kafka_source(broker, topic), **FAST).start()
    for share in (0.3, 0.6):
        wait_for(lambda: node.overview()["events"] >= share * truth.events, 120, f"{share:.0%} consumed")
        node.kill()
        node.start()
    producer.finish()
    wait_exact(node.lake, truth)
    check_records(node.lake, truth)
    # The restarts restored every partition from a checkpoint (each restore raises the epoch; one
    # killed before its first checkpoint of a run restores the older one again, so ≥ 2).
    assert all(p["owner_epoch"] >= 2 for p in owned(node).values()), owned(node)


def test_two_nodes_share_a_topic_and_take_over(broker, events, node_factory, tmp_path):
    path, truth = events
    topic = new_topic(broker, "pair")
    shared_lake = tmp_path / "shared-lake"
    lake = dict(FAST["lake"], path=str(shared_lake))
    sections = dict(FAST, lake=lake)
    producer = PacedProducer(broker, topic, path, seconds=30)
    producer.start()
    a = node_factory(kafka_source(broker, topic), name="a", **sections).start()
    b = node_factory(kafka_source(broker, topic), name="b", **sections).start()

    # The group splits the partitions between the two nodes.
    wait_for(lambda: len(owned(a)) > 0 and len(owned(b)) > 0 and len(owned(a)) + len(owned(b)) == PARTITIONS,
             60, "partitions split between a and b")
    assert not set(owned(a)) & set(owned(b))
    first_on_a = set(owned(a))

    # Kill a mid-stream: b takes over a's partitions from the shared snapshots.
    wait_for(lambda: a.overview()["events"] + b.overview()["events"] >= 0.35 * truth.events, 120, "35% consumed")
    a.kill()
    wait_for(lambda: sorted(owned(b)) == list(range(PARTITIONS)), 60, "b owns every partition")

    # a comes back: partitions rebalance back to it, still mid-stream.
    wait_for(lambda: b.overview()["events"] >= 0.6 * truth.events, 120, "60% consumed")
    a.start()
    wait_for(lambda: len(owned(a)) > 0 and len(owned(a)) + len(owned(b)) == PARTITIONS, 60, "partitions back on a")
    producer.finish()
    wait_exact(shared_lake, truth)
    check_records(shared_lake, truth)
    # Totals travel with the snapshots: the two overviews add up to the truth.
    wait_for(lambda: a.overview()["events"] + b.overview()["events"] == truth.events, 60, "overview totals")
    # Every move restored the newer owner's state: a partition that went a → b → a is on its
    # third epoch (a chose b's shared snapshot over its own stale local checkpoint), one that
    # went a → b on its second.
    for p, status in owned(a).items():
        assert status["owner_epoch"] >= (3 if p in first_on_a else 2), (p, status)
    for p, status in owned(b).items():
        assert status["owner_epoch"] >= (2 if p in first_on_a else 1), (p, status)


def test_broker_restart_mid_stream_is_exact(events, node_factory, tmp_path):
    path, truth = events
    broker = Broker(tmp_path / "own-broker").start()
    try:
        topic = new_topic(broker, "bounce")
        producer = PacedProducer(broker, topic, path, seconds=20)
        producer.start()
        # Windows stay open through the outage (no idle advance while the broker is away).
        node = node_factory(kafka_source(broker, topic), window={"idle_timeout_s": 20},
                            checkpoint=FAST["checkpoint"], lake=FAST["lake"]).start()
        wait_for(lambda: node.overview()["events"] >= 0.3 * truth.events, 120, "30% consumed")
        broker.stop()
        time.sleep(3)
        broker.start()
        producer.finish()
        wait_exact(node.lake, truth, timeout=300)
        check_records(node.lake, truth)
        ends = end_offsets(broker, topic)
        wait_for(lambda: {p: s["committed_offset"] for p, s in owned(node).items()} == ends, 60, "commits after the restart")
    finally:
        broker.stop()


def metric_total(node, name):
    _, text = node.get("/metrics")
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.decode().splitlines() if l.startswith(name))


def test_unkeyed_records_are_judged_on_whole_windows(broker, node_factory, tmp_path):
    """A producer that does not key by host (the default of many log shippers) spreads every
    host over all partitions. The detector must judge each host's whole window once — not each
    partition's share as it arrives, which reads as a traffic drop — so a steady stream raises
    no anomaly, and the points judged are exactly the (host, window) pairs in the lake."""
    path = generate(tmp_path / "unkeyed.json", seed=21, hosts=8, rate=150.0, start=START, duration=2400,
                    anomalies=0, partitions=PARTITIONS)
    truth = Truth(path)
    topic = new_topic(broker, "unkeyed")
    producer = PacedProducer(broker, topic, path, seconds=2, keyed=False)
    producer.start()
    producer.finish()
    assert not producer.failed
    node = node_factory(kafka_source(broker, topic), **FAST).start()
    windows, _ = wait_exact(node.lake, truth)
    busy = [w for w in windows.values() if w["requests"] >= 20]
    spread = sum(1 for w in busy if w["partitions"] >= 3)
    assert spread >= 0.9 * len(busy), f"only {spread} of {len(busy)} busy windows spread over partitions"
    wait_for(lambda: metric_total(node, "wtm_detector_windows_total") >= len(windows), 60, "every window judged")
    time.sleep(2)  # nothing more may come
    assert metric_total(node, "wtm_detector_windows_total") == len(windows), "one point per (host, window)"
    assert metric_total(node, "wtm_detector_incomplete_windows_total") == 0
    status, body = node.get("/v1/anomalies")
    assert status == 200 and body["anomalies"] == [], body["anomalies"][:5]
