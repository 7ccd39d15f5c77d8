"""Streaming from Kafka: events/s one node sustains from a pre-filled topic, through windows,
checkpoints (local redb + shared snapshots + offset commits) and the lake, with the broker beside it.

The topic (6 partitions) is filled first by `wtm generate --kafka` (keyed by host, idempotent
producer), then each partition gets one sentinel event an hour of event time after the input, so
that every window of the input closes; a node then consumes the topic from the beginning in a
fresh consumer group. The clock starts when the node is spawned (start-up and the group join
included) and stops when the last window of the input is in the lake: the requests of the windows
written (`/v1/overview`'s `published`) plus the late and invalid events (in no window) reach the
events produced. Also
recorded: when the node was ready and when it had read to the topic's end. CPU of the node and of
the broker over the whole interval come from /proc.

Environment: BENCH_KAFKA_EVENTS (default 30,000,000), BENCH_KAFKA_HOSTS (1,000),
BEFORE_WTM=path/to/older/wtm also runs that binary on the same topic, each case alternating the two
(for a before/after in one run, on one broker),
BENCH_PERF=1 also records a cpu-clock profile of the node (perf, from readiness to the end of
reading) and prints its top symbols; PERF_SORT sets its `--sort` (default symbol; comm gives the
split by thread).
"""

import contextlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

# The process and HTTP helpers of the node benchmark, not copies of them.
from node_throughput import cpu_seconds, free_port, get, machine, peak_rss_mb, write_results

WTM = sys.argv[1]
BEFORE = os.environ.get("BEFORE_WTM")
ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = pathlib.Path(__file__).with_name("RESULTS-kafka.md")
EVENTS = int(os.environ.get("BENCH_KAFKA_EVENTS", 30_000_000))
HOSTS = int(os.environ.get("BENCH_KAFKA_HOSTS", 1000))
PARTITIONS = 6


@contextlib.contextmanager
def broker():
    """A Kafka broker (scripts/kafka) in a scratch directory: yields (bootstrap, broker pid)."""
    with tempfile.TemporaryDirectory() as kd:
        out = subprocess.run([str(ROOT / "scripts/kafka"), "start", "--data-dir", kd], check=True,
                             capture_output=True, text=True).stdout
        bootstrap = next(l.split("=", 1)[1] for l in out.splitlines() if l.startswith("bootstrap="))
        try:
            yield bootstrap, int(pathlib.Path(kd, "broker.pid").read_text())
        finally:
            subprocess.run([str(ROOT / "scripts/kafka"), "stop", "--data-dir", kd], check=True)


def new_topic(bootstrap, prefix):
    """A fresh topic of PARTITIONS partitions."""
    topic = f"{prefix}-{time.time_ns()}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        f.result(timeout=30)
    return topic


def add_sentinels(bootstrap, topic):
    """One event per partition an hour of event time after the generator's input (which starts
    at 2026-01-01T00:00Z and spans EVENTS / 20,000 s), so every partition's watermark passes the
    input's last window and the node closes and writes all of them. The sentinels' own windows
    stay open: they are not part of what the clock waits for."""
    last_s = EVENTS // 20_000
    ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1767225600 + last_s + 3600))
    prod = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for p in range(PARTITIONS):
        event = {"ts": ts, "host": "sentinel.bench.invalid", "method": "GET", "path": "/", "status": 200}
        prod.produce(topic, json.dumps(event).encode(), partition=p)
    assert prod.flush(30) == 0, "sentinels not delivered"


def in_lake(port):
    """Input events accounted for by window files in the lake: the written windows' requests
    (`/v1/overview`'s `published`), plus the events that belong to no window (late and invalid
    ones, counted as read; their own files go out every `lake.flush_interval_ms`)."""
    o = get(port, "/v1/overview")
    return o["published"]["window_requests"] + o["late"] + o["invalid_total"]


def ends(bootstrap, topic):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-probe"})
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS)}
    finally:
        c.close()


def run_case(name, wtm, bootstrap, broker_pid, topic, end, raw_events, perf):
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        env = dict(os.environ, RUST_LOG="warn", WTM__NODE__LISTEN=f"127.0.0.1:{port}", WTM__NODE__DATA_DIR=d,
                   WTM__SOURCE__KIND="kafka", WTM__SOURCE__BROKERS=bootstrap, WTM__SOURCE__TOPIC=topic,
                   WTM__SOURCE__GROUP=f"bench-{name}-{time.time_ns()}",
                   WTM__LAKE__RAW_EVENTS="true" if raw_events else "false", WTM__DETECTOR__ENABLED="false")
        b0 = cpu_seconds(broker_pid)
        t0 = time.time()
        p = subprocess.Popen([wtm, "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        prof = None
        try:
            while True:
                try:
                    get(port, "/readyz")
                    break
                except OSError:
                    time.sleep(0.02)
            ready = time.time() - t0
            if perf:
                prof = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "499", "-g", "-o",
                                         f"{d}/perf.data", "-p", str(p.pid)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            read = None
            while True:
                parts = get(port, "/v1/cluster")["partitions"]
                if read is None and len(parts) == PARTITIONS and all(
                        x["next_offset"] >= end[x["partition"]] for x in parts):
                    read = time.time() - t0
                    if prof:
                        prof.send_signal(2)
                        prof.wait()
                if read is not None and in_lake(port) >= EVENTS:
                    break
                if read is not None and time.time() - t0 > read + 600:
                    raise RuntimeError(f"{name}: the lake accounts for {in_lake(port):,} of {EVENTS:,} input events "
                                       "10 minutes after the input was read")
                time.sleep(0.05)
            wall = time.time() - t0
            cpu, bcpu = cpu_seconds(p.pid), cpu_seconds(broker_pid) - b0
            rss = peak_rss_mb(p.pid)
            top = []
            if prof:
                rep = subprocess.run(["perf", "report", "-i", f"{d}/perf.data", "--no-children", "--stdio", "-g", "none",
                                      "--sort", os.environ.get("PERF_SORT", "symbol"), "--percent-limit", "1.5"],
                                     capture_output=True, text=True).stdout
                top = [l.strip() for l in rep.splitlines() if l.strip() and not l.startswith("#") and "%" in l][:40]
        finally:
            p.terminate()
            p.wait()
    row = dict(case=name, events=EVENTS, ready_s=ready, read_s=read, wall_s=wall, node_cpu_s=cpu,
               broker_cpu_s=bcpu, events_per_s=EVENTS / wall, peak_rss_mb=rss)
    print(json.dumps(row), flush=True)
    for line in top:
        print("   ", line)
    return row, top


def main():
    perf = os.environ.get("BENCH_PERF") == "1"
    with broker() as (bootstrap, broker_pid):
        topic = new_topic(bootstrap, "bench")
        t0 = time.time()
        subprocess.run([WTM, "generate", "--kafka", bootstrap, "--topic", topic, "--count", str(EVENTS),
                        "--hosts", str(HOSTS), "--rate", "20000", "--seed", "5"], check=True)
        fill = time.time() - t0
        add_sentinels(bootstrap, topic)
        end = ends(bootstrap, topic)
        assert sum(end.values()) == EVENTS + PARTITIONS, end
        print(json.dumps({"filled": EVENTS, "seconds": fill}), flush=True)
        binaries = [("", WTM)] + ([(" (before)", BEFORE)] if BEFORE else [])
        rows = []
        for i, (name, raw) in enumerate([("raw archive on", True), ("raw archive off", False)]):
            # Alternate which binary goes first, so neither always meets a warmer page cache.
            for label, wtm in binaries[::-1] if i % 2 else binaries:
                rows.append(run_case(name + label, wtm, bootstrap, broker_pid, topic, end, raw, perf))
    lines = [
        "# Streaming from Kafka",
        "",
        f"Machine: {machine()}; "
        f"Apache Kafka 4.1.1 (scripts/kafka, KRaft, one broker) on the same machine. "
        f"Run {time.strftime('%Y-%m-%d')} by `bench/run kafka`.",
        "",
        f"A {PARTITIONS}-partition topic pre-filled with {EVENTS:,} JSON events ({HOSTS:,} hosts, keyed by host) "
        f"by `wtm generate --kafka` in {fill:.1f} s, and one sentinel event per partition an hour of event time "
        "later (so every window of the input closes); one release node consumes it from the beginning "
        "(windows, local checkpoints every second, shared snapshots and offset commits, Parquet lake). "
        "Detector off. The clock runs from spawning the node (start-up and the consumer group's join "
        "included) until the last window of the input is in the lake (the written windows' requests, "
        "`/v1/overview`'s `published`, plus the late and invalid events reach the events produced); "
        "events/s is over that time. "
        "Ready and read are when `/readyz` first answered and when every partition had been read to its end. "
        "CPU is over the whole time.",
        "",
        "| case | events | ready s | read s | in lake s | events/s | node CPU s | broker CPU s | node peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r, _ in rows:
        lines.append(f"| {r['case']} | {r['events']:,} | {r['ready_s']:.1f} | {r['read_s']:.1f} | {r['wall_s']:.1f} | "
                     f"{r['events_per_s']:,.0f} | "
                     f"{r['node_cpu_s']:.1f} | {r['broker_cpu_s']:.1f} | {r['peak_rss_mb']:.0f} |")
    for r, top in rows:
        if top:
            lines += ["", f"Node profile, {r['case']} (perf cpu-clock, self time, symbols ≥ 1.5%):", "", "```"] + top + ["```"]
    write_results(OUT, lines)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
