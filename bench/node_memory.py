"""A node's memory at a hosting provider's scale: many sites, hours of event time.

The case issue 11 set: the built-in generator with 20,000 sites at 400 events/s over two hours of
event time, unpaced (2.88M events; 120 one-minute windows per busy site), raw-events archive on,
everything else default (`api.retention_windows` 360, so every window stays retained). Reports
peak RSS (VmHWM), RSS at the end, the history store's size on disk, and how long a site's series
and the listing take once the run is done (one client, 200 requests each).

Usage: node_memory.py WTM [BEFORE_WTM] — with a second binary, runs it first on the same input
(same machine, same run) and writes both rows.
"""

import json
import pathlib
import random
import subprocess
import sys
import tempfile
import time
import urllib.request

from node_throughput import cpu_seconds, get, machine, peak_rss_mb, start_node, write_results

OUT = pathlib.Path(__file__).with_name("RESULTS-memory.md")
CASE = dict(WTM__SOURCE__REALTIME="false", WTM__SOURCE__START="2026-01-01T00:00:00Z",
            WTM__SOURCE__HOSTS="20000", WTM__SOURCE__RATE="400", WTM__SOURCE__DURATION_S="7200",
            WTM__SOURCE__ANOMALIES="0", RUST_LOG="warn")


def rss_mb(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def latency_ms(port, paths):
    out = []
    for p in paths:
        t = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{p}", timeout=60) as r:
            r.read()
        out.append((time.perf_counter() - t) * 1000)
    out.sort()
    return out[len(out) // 2], out[int(len(out) * 0.99) - 1]


def run(label, wtm):
    with tempfile.TemporaryDirectory() as d:
        p, port = start_node(wtm, dict(CASE, PATH="/usr/bin:/bin"), d)
        try:
            t0, c0 = time.time(), cpu_seconds(p.pid)
            slow = 0  # overview polls that took over 30 s (a node too busy to answer)
            while True:
                try:
                    if get(port, "/v1/overview")["finished"]:
                        break
                except (TimeoutError, OSError):
                    slow += 1
                if p.poll() is not None:
                    raise RuntimeError(f"{label}: the node exited ({p.returncode})")
                time.sleep(0.5)
            wall, cpu = time.time() - t0, cpu_seconds(p.pid) - c0
            time.sleep(5)  # the last uploads and history writes settle
            hosts = [h["host"] for h in get(port, "/v1/hosts?windows=60")["hosts"]]
            rng = random.Random(7)
            series = latency_ms(port, [f"/v1/hosts/{rng.choice(hosts)}/windows" for _ in range(200)])
            listing = latency_ms(port, ["/v1/hosts"] * 20)
            listing_all = latency_ms(port, ["/v1/hosts?windows=360"] * 5)
            ov = get(port, "/v1/overview")
            row = dict(case=label, events=ov["events"], sites=len(hosts), wall_s=wall, cpu_s=cpu,
                       peak_rss_mb=peak_rss_mb(p.pid), end_rss_mb=rss_mb(p.pid),
                       history_mb=sum(f.stat().st_size for f in pathlib.Path(d).glob("history.redb")) / 2**20,
                       series_ms=series, listing_ms=listing, listing_all_ms=listing_all, slow_polls=slow)
        finally:
            p.terminate()
            p.wait()
    print(json.dumps(row), flush=True)
    return row


def main():
    rows = []
    if len(sys.argv) > 2:
        rows.append(run("before (the binary given second)", sys.argv[2]))
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    rows.append(run(f"this build ({rev})", sys.argv[1]))
    lines = [
        "# Node memory at many sites",
        "",
        f"Machine: {machine()}. Run: `bench/run memory` on {time.strftime('%Y-%m-%d')}.",
        "",
        "Built-in generator, 20,000 sites, 400 events/s over 2 h of event time, unpaced (2.88M events),",
        "4 partitions, raw-events archive on, `api.retention_windows` 360 (all of it retained). Latencies:",
        "one client after the run, p50 / p99 ms; a series is a random site's default range, the listing",
        "`/v1/hosts` (newest 60 windows, from memory) and `/v1/hosts?windows=360` (older counts from disk).",
        "",
        "| build | events | sites | wall s | CPU s | peak RSS MB | RSS at end MB | history on disk MB | series p50/p99 | listing p50/p99 | listing 360 p50/p99 | overview polls > 30 s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['case']} | {r['events']:,} | {r['sites']:,} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | "
                     f"{r['peak_rss_mb']:,.0f} | {r['end_rss_mb']:,.0f} | {r['history_mb']:,.0f} | "
                     f"{r['series_ms'][0]:.1f} / {r['series_ms'][1]:.1f} | {r['listing_ms'][0]:.0f} / {r['listing_ms'][1]:.0f} | "
                     f"{r['listing_all_ms'][0]:.0f} / {r['listing_all_ms'][1]:.0f} | {r['slow_polls']} |")
    write_results(OUT, lines)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
