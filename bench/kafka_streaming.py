"""Streaming from Kafka: events/s one node sustains from a pre-filled topic, through windows,
checkpoints (local redb + shared snapshots + offset commits) and the lake, with the broker beside it.

The topic (6 partitions) is filled first by `wtm generate --kafka` (keyed by host, idempotent
producer); then a node consumes it from the beginning in a fresh consumer group. The clock runs
from the node's readiness until every partition's next offset reaches the topic's end (read from
`/v1/cluster`). CPU of the node and of the broker over that interval come from /proc.

Environment: BENCH_KAFKA_EVENTS (default 3,000,000), BENCH_KAFKA_HOSTS (1,000),
BENCH_PERF=1 also records a cpu-clock profile of the node (perf) and prints its top symbols.
"""

import contextlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

# The process and HTTP helpers of the node benchmark, not copies of them.
from node_throughput import cpu_seconds, free_port, get, machine, peak_rss_mb, write_results

WTM = sys.argv[1]
ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = pathlib.Path(__file__).with_name("RESULTS-kafka.md")
EVENTS = int(os.environ.get("BENCH_KAFKA_EVENTS", 3_000_000))
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


def ends(bootstrap, topic):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-probe"})
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS)}
    finally:
        c.close()


def run_case(name, bootstrap, broker_pid, topic, end, raw_events, perf):
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        env = dict(os.environ, RUST_LOG="warn", WTM__NODE__LISTEN=f"127.0.0.1:{port}", WTM__NODE__DATA_DIR=d,
                   WTM__SOURCE__KIND="kafka", WTM__SOURCE__BROKERS=bootstrap, WTM__SOURCE__TOPIC=topic,
                   WTM__SOURCE__GROUP=f"bench-{name}-{time.time_ns()}",
                   WTM__LAKE__RAW_EVENTS="true" if raw_events else "false", WTM__DETECTOR__ENABLED="false")
        p = subprocess.Popen([WTM, "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        prof = None
        try:
            while True:
                try:
                    get(port, "/readyz")
                    break
                except OSError:
                    time.sleep(0.02)
            if perf:
                prof = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "499", "-g", "-o",
                                         f"{d}/perf.data", "-p", str(p.pid)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            t0, c0, b0 = time.time(), cpu_seconds(p.pid), cpu_seconds(broker_pid)
            while True:
                parts = get(port, "/v1/cluster")["partitions"]
                if len(parts) == PARTITIONS and all(x["next_offset"] >= end[x["partition"]] for x in parts):
                    break
                time.sleep(0.05)
            wall = time.time() - t0
            cpu, bcpu = cpu_seconds(p.pid) - c0, cpu_seconds(broker_pid) - b0
            rss = peak_rss_mb(p.pid)
            top = []
            if prof:
                prof.send_signal(2)
                prof.wait()
                rep = subprocess.run(["perf", "report", "-i", f"{d}/perf.data", "--no-children", "--stdio", "-g", "none",
                                      "--sort", "symbol", "--percent-limit", "1.5"],
                                     capture_output=True, text=True).stdout
                top = [l.strip() for l in rep.splitlines() if l.strip() and not l.startswith("#") and "%" in l][:25]
        finally:
            p.terminate()
            p.wait()
    events = sum(end.values())
    row = dict(case=name, events=events, wall_s=wall, node_cpu_s=cpu, broker_cpu_s=bcpu,
               events_per_s=events / wall, peak_rss_mb=rss)
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
        end = ends(bootstrap, topic)
        assert sum(end.values()) == EVENTS, end
        print(json.dumps({"filled": EVENTS, "seconds": fill}), flush=True)
        rows = [run_case("raw archive on", bootstrap, broker_pid, topic, end, True, perf),
                run_case("raw archive off", bootstrap, broker_pid, topic, end, False, perf)]
    lines = [
        "# Streaming from Kafka",
        "",
        f"Machine: {machine()}; "
        f"Apache Kafka 4.1.1 (scripts/kafka, KRaft, one broker) on the same machine. "
        f"Run {time.strftime('%Y-%m-%d')} by `bench/run kafka`.",
        "",
        f"A {PARTITIONS}-partition topic pre-filled with {EVENTS:,} JSON events ({HOSTS:,} hosts, keyed by host) "
        f"by `wtm generate --kafka` in {fill:.1f} s; one release node consumes it from the beginning "
        "(windows, local checkpoints every second, shared snapshots and offset commits, Parquet lake). "
        "Detector off.",
        "",
        "| case | events | wall s | events/s | node CPU s | broker CPU s | node peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r, _ in rows:
        lines.append(f"| {r['case']} | {r['events']:,} | {r['wall_s']:.1f} | {r['events_per_s']:,.0f} | "
                     f"{r['node_cpu_s']:.1f} | {r['broker_cpu_s']:.1f} | {r['peak_rss_mb']:.0f} |")
    for r, top in rows:
        if top:
            lines += ["", f"Node profile, {r['case']} (perf cpu-clock, self time, symbols ≥ 1.5%):", "", "```"] + top + ["```"]
    write_results(OUT, lines)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
