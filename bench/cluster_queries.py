"""Cluster query latency: how fast a node answers `/v1/hosts` and one site's series when it must
ask its peers, against the same questions asked of a node alone.

A 6-partition topic is filled by `wtm generate --kafka` (keyed by host) with an hour of event time
for BENCH_CLUSTER_HOSTS sites (default 1,000: 60 windows each). Case "one node": one release node
consumes it. Case "three nodes": three release nodes in one consumer group and one cluster
(`[cluster]` on 127.0.0.1, shared lake directory) consume it; the questions go to one of them,
which fans out to the other two. Once every partition is consumed, each route — `/v1/hosts`
(default 60 windows) and `/v1/hosts/{host}/windows` for a random site — is asked
BENCH_CLUSTER_REQUESTS times (default 1,000) twice: by one keep-alive client, one request after
another (the latency of a request on its own: the issue's goal), then by BENCH_CLUSTER_CLIENTS
client threads at once (default 4: latency under load, with queueing, and throughput). Latency is
measured at the client, which shares the machine's cores with the nodes and the broker. BENCH_CLUSTER_CASES=one runs the one-node case only
(to compare builds that have no cluster).
"""

import http.client
import json
import os
import pathlib
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from kafka_streaming import PARTITIONS, broker, ends, new_topic
from node_throughput import cpu_seconds, free_port, get, machine, write_results

WTM = sys.argv[1]
ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = pathlib.Path(__file__).with_name("RESULTS-cluster.md")
HOSTS = int(os.environ.get("BENCH_CLUSTER_HOSTS", 1000))
CLIENTS = int(os.environ.get("BENCH_CLUSTER_CLIENTS", 4))
REQUESTS = int(os.environ.get("BENCH_CLUSTER_REQUESTS", 1000))
EVENT_SECONDS = 3600
EVENTS = HOSTS * 600  # ~10 requests per site and window


def start_nodes(n, bootstrap, topic, lake):
    group = f"bench-cluster-{n}-{time.time_ns()}"
    cports = [free_port() for _ in range(n)]
    nodes = []
    for i in range(n):
        d = tempfile.mkdtemp(prefix=f"wtm-bench-{i}-")
        port = free_port()
        env = dict(os.environ, RUST_LOG="warn", WTM__NODE__ID=f"n{i}", WTM__NODE__LISTEN=f"127.0.0.1:{port}",
                   WTM__NODE__DATA_DIR=d, WTM__LAKE__PATH=str(lake), WTM__LAKE__RAW_EVENTS="false",
                   WTM__SOURCE__KIND="kafka", WTM__SOURCE__BROKERS=bootstrap, WTM__SOURCE__TOPIC=topic,
                   WTM__SOURCE__GROUP=group)
        if n > 1:
            env.update(WTM__CLUSTER__LISTEN=f"127.0.0.1:{cports[i]}", WTM__CLUSTER__SEEDS=f"127.0.0.1:{cports[0]}",
                       WTM__CLUSTER__COOKIE="bench-cookie")
        p = subprocess.Popen([WTM, "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        nodes.append((p, port))
    for p, port in nodes:
        while True:
            try:
                get(port, "/readyz")
                break
            except OSError:
                assert p.poll() is None, "a node exited"
                time.sleep(0.05)
    return nodes


def settled(port, end, members):
    c = get(port, "/v1/cluster")
    if len(c["members"]) != members or not all(m["alive"] for m in c["members"]):
        return False
    o = get(port, "/v1/overview")
    parts = {p["partition"]: p for p in o["partitions"]}
    return (not o["partial"] and len(parts) == PARTITIONS
            and all(parts[p]["next_offset"] >= end[p] for p in range(PARTITIONS)) and o["windows_closed"] > 0)


def quiesce(pids, limit=60):
    """Wait (up to `limit` s) until every node uses under 10% of a core: the model fits that
    follow the last windows would otherwise be measured as query latency."""
    deadline = time.time() + limit
    while time.time() < deadline:
        before = [cpu_seconds(p) for p in pids]
        time.sleep(1)
        if all(cpu_seconds(p) - b < 0.1 for p, b in zip(pids, before)):
            return
    print("nodes still busy after", limit, "s", flush=True)


def load(port, paths, clients):
    """Ask every path in turn from `clients` threads; latencies in ms, and the wall time."""
    chunks = [paths[i::clients] for i in range(clients)]
    lat = [[] for _ in chunks]
    errors = []

    def client(i):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for path in chunks[i]:
            t = time.perf_counter()
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
            lat[i].append((time.perf_counter() - t) * 1000)
            if r.status != 200 or json.loads(body).get("partial"):
                errors.append((path, r.status))
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    assert not errors, errors[:5]
    return sorted(x for l in lat for x in l), wall


def pct(sorted_ms, q):
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


def run_case(name, n, bootstrap, topic, end, hosts):
    with tempfile.TemporaryDirectory() as lake:
        nodes = start_nodes(n, bootstrap, topic, lake)
        try:
            port = nodes[0][1]
            deadline = time.time() + 600
            while not settled(port, end, n):
                assert time.time() < deadline, "the nodes did not consume the topic within 10 minutes"
                time.sleep(0.5)
            quiesce([p.pid for p, _ in nodes])
            listed = get(port, "/v1/hosts")["hosts"]
            rows = []
            rng = random.Random(7)
            routes = [("/v1/hosts", ["/v1/hosts"] * REQUESTS),
                      ("/v1/hosts/{host}/windows", [f"/v1/hosts/{rng.choice(hosts)}/windows" for _ in range(REQUESTS)])]
            load(port, [p for _, ps in routes for p in ps[:20]], CLIENTS)  # warm up
            for route, paths in routes:
                for clients in (1, CLIENTS):
                    ms, wall = load(port, paths, clients)
                    row = dict(case=name, route=route, clients=clients, requests=len(ms),
                               p50_ms=statistics.median(ms), p99_ms=pct(ms, 0.99), max_ms=ms[-1],
                               per_s=len(ms) / wall, sites=len(listed))
                    print(json.dumps(row), flush=True)
                    rows.append(row)
            return rows
        finally:
            for p, _ in nodes:
                p.terminate()
            for p, _ in nodes:
                p.wait()


def main():
    with broker() as (bootstrap, _):
        topic = new_topic(bootstrap, "bench-cluster")
        subprocess.run([WTM, "generate", "--kafka", bootstrap, "--topic", topic, "--count", str(EVENTS),
                        "--hosts", str(HOSTS), "--rate", str(EVENTS / EVENT_SECONDS), "--seed", "9"], check=True)
        end = ends(bootstrap, topic)
        assert sum(end.values()) == EVENTS, end
        hosts = subprocess.run([WTM, "generate", "--count", "20000", "--hosts", str(HOSTS), "--seed", "9"],
                               check=True, capture_output=True, text=True).stdout
        names = sorted({json.loads(l)["host"] for l in hosts.splitlines()})
        rows = run_case("one node", 1, bootstrap, topic, end, names)
        if os.environ.get("BENCH_CLUSTER_CASES") != "one":
            rows += run_case("three nodes (asked: one of them)", 3, bootstrap, topic, end, names)
    lines = [
        "# Cluster query latency",
        "",
        f"Machine: {machine()}; Apache Kafka (scripts/kafka, one broker) and every node on the same "
        f"machine. Run {time.strftime('%Y-%m-%d')} by `bench/run cluster`.",
        "",
        f"A {PARTITIONS}-partition topic holds {EVENTS:,} events: {HOSTS:,} sites over an hour of event time "
        f"(60 one-minute windows each), keyed by host. Release nodes consume it (detector on, raw archive off); "
        f"once the nodes are idle (under 10% of a core: the model fits after the last windows are done), "
        f"{REQUESTS} requests per route are asked of one node by one keep-alive client (one after another: "
        f"a request's own latency) and then by {CLIENTS} clients at once (latency under load, and throughput). "
        "`/v1/hosts` lists every site over its newest 60 windows; a series is one random site's newest 60 "
        "windows. In the cluster, the node asked gathers the other two nodes' shares (2 s timeout) and merges. "
        "Latency is measured at the client (Python), which shares the two cores with the nodes.",
        "",
        "| case | route | sites | clients | requests | p50 ms | p99 ms | max ms | requests/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['case']} | `{r['route']}` | {r['sites']:,} | {r['clients']} | {r['requests']} | "
                     f"{r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['max_ms']:.1f} | {r['per_s']:,.0f} |")
    write_results(OUT, lines)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
