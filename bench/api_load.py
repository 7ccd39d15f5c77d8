"""The API under load: requests/s and latency of one node's routes with many clients at once.

Issue 11's API case: a site's window series at ≥ 5,000 requests/s with p99 ≤ 10 ms on this box,
and reads that never wait behind writes. A release node runs the built-in generator unpaced over
an hour of event time for BENCH_API_SITES sites (default 1,000: 60 one-minute windows each) and
finishes; then wrk (Debian's, installed by bench/run) asks each route for BENCH_API_SECONDS
(default 10) with BENCH_API_CONNECTIONS keep-alive connections (default 32) on 2 threads — a
series asks a random site's default range (a Lua script picks among every site). wrk shares the
two cores with the node, so the node has about one core to answer with.

A first pass asks the series and the overview while a node is still consuming (the same traffic
over ten hours of event time, unpaced): reads while owners, shards and the archiver write, on a
node that wants every core. The overview asks every partition owner for its status, so its max
latency shows whether an owner ever waits on something slow (it once awaited its lake writes).
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

from node_throughput import get, machine, start_node, write_results

WTM = sys.argv[1]
OUT = pathlib.Path(__file__).with_name("RESULTS-api.md")
SITES = int(os.environ.get("BENCH_API_SITES", 1000))
SECONDS = int(os.environ.get("BENCH_API_SECONDS", 10))
CONNECTIONS = int(os.environ.get("BENCH_API_CONNECTIONS", 32))
CASE = dict(WTM__SOURCE__REALTIME="false", WTM__SOURCE__START="2026-01-01T00:00:00Z",
            WTM__SOURCE__HOSTS=str(SITES), WTM__SOURCE__RATE=str(max(1, SITES // 6)),
            WTM__SOURCE__DURATION_S="3600", WTM__SOURCE__ANOMALIES="0", WTM__LAKE__RAW_EVENTS="false",
            RUST_LOG="warn")
UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(port, script, path="/"):
    """Run wrk; requests/s, p50, p99 and max in ms, and how many requests were not 2xx. wrk's
    per-request timeout is raised to 30 s so a stalled request shows in the latencies."""
    out = subprocess.run(["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{SECONDS}s", "--timeout", "30s", "--latency",
                          "-s", script, f"http://127.0.0.1:{port}{path}"],
                         check=True, capture_output=True, text=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    pct = {m.group(1): float(m.group(2)) * UNIT_MS[m.group(3)]
           for m in re.finditer(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    top = re.search(r"^\s+Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out, re.M)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rate, pct["50"], pct["99"], float(top.group(1)) * UNIT_MS[top.group(2)], int(bad.group(1)) if bad else 0


def stop(p):
    """SIGTERM, then SIGKILL after 30 s: a wedged node (see RESULTS-api.md) must not hang the run."""
    p.terminate()
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        print("the node did not stop within 30 s of SIGTERM; killed", flush=True)
        p.kill()
        p.wait()


def scripts(d, hosts):
    series = pathlib.Path(d, "series.lua")
    names = ",".join(json.dumps(h) for h in hosts)
    series.write_text(
        "math.randomseed(7)\n"
        f"local hosts = {{{names}}}\n"
        "request = function()\n"
        "  return wrk.format('GET', '/v1/hosts/' .. hosts[math.random(#hosts)] .. '/windows')\n"
        "end\n")
    plain = pathlib.Path(d, "plain.lua")
    plain.write_text("")
    return str(series), str(plain)


def main():
    rows = []
    with tempfile.TemporaryDirectory() as d:
        # Reads during writes: a node consuming the same input, asked while it runs.
        # Ten hours of the same traffic, so it still consumes while wrk asks.
        busy = dict(CASE, PATH="/usr/bin:/bin", WTM__SOURCE__DURATION_S="36000")
        p, port = start_node(WTM, busy, os.path.join(d, "busy"))
        try:
            while not get(port, "/v1/hosts")["hosts"]:
                time.sleep(0.2)
            hosts = [h["host"] for h in get(port, "/v1/hosts")["hosts"]]
            series, plain = scripts(d, hosts)
            if not get(port, "/v1/overview")["finished"]:
                rows.append(("`/v1/hosts/{host}/windows`, while the node consumes", *wrk(port, series)))
            # The overview asks every partition owner for its status: it waits if an owner does.
            if not get(port, "/v1/overview")["finished"]:
                rows.append(("`/v1/overview`, while the node consumes", *wrk(port, plain, "/v1/overview")))
        finally:
            stop(p)
        p, port = start_node(WTM, dict(CASE, PATH="/usr/bin:/bin"), os.path.join(d, "idle"))
        try:
            while not get(port, "/v1/overview")["finished"]:
                time.sleep(0.5)
            time.sleep(5)  # the last windows reach the archiver and the detector's fits finish
            hosts = [h["host"] for h in get(port, "/v1/hosts")["hosts"]]
            series, plain = scripts(d, hosts)
            rows.append(("`/v1/hosts/{host}/windows`, idle node", *wrk(port, series)))
            rows.append(("`/v1/hosts`", *wrk(port, plain, "/v1/hosts")))
            rows.append(("`/v1/overview`", *wrk(port, plain, "/v1/overview")))
            rows.append(("`/healthz`", *wrk(port, plain, "/healthz")))
        finally:
            stop(p)
    for r in rows:
        print(json.dumps(r), flush=True)
    lines = [
        "# API under load",
        "",
        f"Machine: {machine()}. Run {time.strftime('%Y-%m-%d')} by `bench/run api`.",
        "",
        f"One release node, built-in generator unpaced over an hour of event time for {SITES:,} sites "
        f"(60 one-minute windows each), raw archive off. wrk, {CONNECTIONS} keep-alive connections on 2 threads, "
        f"{SECONDS} s per route; a series is a random site's default range (newest 60 windows). wrk shares the "
        "two cores with the node. The first rows ask while the node is still consuming its input.",
        "",
        "| route | requests/s | p50 ms | p99 ms | max ms | non-2xx |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, rate, p50, p99, top, bad in rows:
        lines.append(f"| {name} | {rate:,.0f} | {p50:.2f} | {p99:.2f} | {top:,.1f} | {bad} |")
    write_results(OUT, lines)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
