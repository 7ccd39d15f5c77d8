"""A node's memory and speed as the number of sites grows: 1k, 10k, 100k and 1M.

Issue 11's scaling case. The built-in generator, unpaced, five minutes of event time (five
one-minute windows) at 4 events per site per minute, so the input grows with the sites (20
events a site: 20k events at 1k sites, 20M at 1M). Popularity is Zipf-like, as the generator
makes it, so not every site is seen in every window: the table counts what was there — the
(site, window) pairs the node closed, from `/v1/overview`'s `windows_closed`.

`limits.max_hosts` is raised to 2M so the cardinality guard folds nothing; the raw-events archive
is off (its buffers are bounded by `lake.flush_records`, not by sites, and would only add noise);
the rest is the default configuration.

Memory per site-window: peak RSS divided by the site-windows one window of event time holds
(closed pairs / 5). Flat is the goal: a node's memory should grow with the sites in flight, and
never with history.

Usage: node_scaling.py WTM [HOSTS ...] — writes bench/RESULTS-scaling.md and
bench/scaling.png.
"""

import json
import pathlib
import subprocess
import sys
import tempfile
import time

from node_memory import rss_mb
from node_throughput import cpu_seconds, get, machine, peak_rss_mb, start_node, write_results

HERE = pathlib.Path(__file__).parent
OUT = HERE / "RESULTS-scaling.md"
PLOT = HERE / "scaling.png"
WINDOWS = 5
# A case whose node grows past this is stopped and reported as such (the box has 24 GiB).
RSS_CAP_MB = 16 * 1024
EVENTS_PER_SITE_MINUTE = 4


def run(wtm, hosts):
    env = dict(PATH="/usr/bin:/bin", RUST_LOG="warn",
               WTM__SOURCE__REALTIME="false", WTM__SOURCE__START="2026-01-01T00:00:00Z",
               WTM__SOURCE__HOSTS=str(hosts),
               WTM__SOURCE__RATE=str(hosts * EVENTS_PER_SITE_MINUTE / 60),
               WTM__SOURCE__DURATION_S=str(WINDOWS * 60), WTM__SOURCE__ANOMALIES="0",
               WTM__LIMITS__MAX_HOSTS="2000000", WTM__LAKE__RAW_EVENTS="false")
    with tempfile.TemporaryDirectory() as d:
        p, port = start_node(wtm, env, d)
        try:
            t0, c0 = time.time(), cpu_seconds(p.pid)
            while True:
                try:
                    ov = get(port, "/v1/overview")
                    if ov["finished"]:
                        break
                except (TimeoutError, OSError):
                    pass  # a node busy with a million sites may answer late: ask again
                if p.poll() is not None:
                    raise RuntimeError(f"{hosts} sites: the node exited ({p.returncode})")
                if rss_mb(p.pid) > RSS_CAP_MB:
                    row = dict(hosts=hosts, capped=True, wall_s=time.time() - t0, peak_rss_mb=peak_rss_mb(p.pid),
                               events=get(port, "/v1/overview")["events"])
                    print(json.dumps(row), flush=True)
                    return row
                time.sleep(0.2)
            wall, cpu = time.time() - t0, cpu_seconds(p.pid) - c0
            peak = peak_rss_mb(p.pid)
        finally:
            p.terminate()
            p.wait()
    if ov["hosts_overflow"]:
        raise RuntimeError(f"{hosts} sites: the cardinality guard folded sites; raise limits.max_hosts")
    per_window = ov["windows_closed"] / WINDOWS
    row = dict(hosts=hosts, events=ov["events"], sites_seen=ov["hosts"], windows_closed=ov["windows_closed"],
               wall_s=wall, cpu_s=cpu, events_per_s=ov["events"] / wall, peak_rss_mb=peak,
               kb_per_site_window=peak * 1024 / per_window)
    print(json.dumps(row), flush=True)
    return row


def plot(rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    rows = [r for r in rows if not r.get("capped")]
    xs = [r["windows_closed"] / WINDOWS for r in rows]
    a.loglog(xs, [r["peak_rss_mb"] for r in rows], "o-")
    a.set_xlabel("site-windows per window of event time")
    a.set_ylabel("peak RSS (MB)")
    a.set_title("Peak memory")
    a.grid(True, which="both", alpha=0.3)
    b.semilogx(xs, [r["kb_per_site_window"] for r in rows], "o-")
    b.set_xlabel("site-windows per window of event time")
    b.set_ylabel("peak RSS per site-window (KB)")
    b.set_ylim(bottom=0)
    b.set_title("Memory per site-window (flat is the goal)")
    b.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=100)


def main():
    wtm = sys.argv[1]
    sizes = [int(h) for h in sys.argv[2:]] or [1_000, 10_000, 100_000, 1_000_000]
    rows = [run(wtm, h) for h in sizes]
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# Node memory and speed as sites grow",
        "",
        f"Machine: {machine()}. Run: `bench/run scaling` on {time.strftime('%Y-%m-%d')}, build {rev}.",
        "",
        f"Built-in generator, unpaced, {WINDOWS} one-minute windows of event time, "
        f"{EVENTS_PER_SITE_MINUTE} events per site per minute",
        "(Zipf-like popularity), 4 partitions, raw-events archive off, `limits.max_hosts` 2M. A",
        "site-window is a (site, window) pair the node closed; per site-window = peak RSS / (closed",
        f"pairs / {WINDOWS}). Plot: `bench/scaling.png`.",
        "",
        "| sites | events | sites seen | site-windows closed | wall s | CPU s | events/s | peak RSS MB | KB per site-window |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.get("capped"):
            lines.append(f"| {r['hosts']:,} | {r['events']:,} read | | | {r['wall_s']:.1f} | | | "
                         f"over {RSS_CAP_MB:,} (stopped) | |")
            continue
        lines.append(f"| {r['hosts']:,} | {r['events']:,} | {r['sites_seen']:,} | {r['windows_closed']:,} | "
                     f"{r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['events_per_s']:,.0f} | {r['peak_rss_mb']:,.0f} | "
                     f"{r['kb_per_site_window']:.1f} |")
    write_results(OUT, lines)
    plot(rows)
    print(f"wrote {OUT} and {PLOT}")


if __name__ == "__main__":
    main()
