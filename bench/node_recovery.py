"""Recovery: a node killed with SIGKILL while it holds open windows for 100k+ sites, restarted on
the same data directory — how long until it has caught up again.

Issue 11's recovery case (goal: caught up within 3 s). The built-in generator, paced by the wall
clock (`source.realtime`), its start a little in the past so that the node first reads a backlog
and then runs live; `SITES` sites at `EVENTS_PER_SITE_MINUTE` (Zipf-like popularity, so the
number of sites with an open window is measured, not assumed: the site-windows the node closed
per window while it ran live). Raw-events archive off, `limits.max_hosts` raised, the rest default
(1 s checkpoints, 60 s windows, the detector on: a restarted node reads its sites' recent
windows back from the lake to seed it).

The kill comes once the node is live (its lag under half a second of traffic) and late in a wall
clock minute, so the open window holds most of its sites. Then the same binary is started again on
the same data directory, at once, and the script times from that start:
- caught up: every owner has restored its checkpoint and read every record the wall clock
  released, the downtime and the checkpoint's age included (the sources' summed lag under half
  a second of traffic);
- ready: `/readyz` answers (every owner restored, and the API's window history read back from
  the lake).

Usage: node_recovery.py WTM [SITES] — prints one JSON row per run and writes
bench/RESULTS-recovery.md.
"""

import datetime
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

from node_throughput import cpu_seconds, get, machine, peak_rss_mb, start_node, write_results

OUT = pathlib.Path(__file__).with_name("RESULTS-recovery.md")
EVENTS_PER_SITE_MINUTE = 12
RUNS = 3
# The first window of the backlog: the node reads it unpaced, then runs live.
BACKLOG_S = 70


def lag(ov):
    return sum(p["lag"] or 0 for p in ov["partitions"])


def overview(port):
    try:
        return get(port, "/v1/overview")
    except (TimeoutError, OSError):
        return None  # busy: ask again


def run(wtm, sites):
    rate = sites * EVENTS_PER_SITE_MINUTE / 60
    live_lag = rate / 2  # half a second of traffic
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=BACKLOG_S)
    env = dict(PATH="/usr/bin:/bin", RUST_LOG="warn",
               WTM__SOURCE__REALTIME="true", WTM__SOURCE__START=start.strftime("%Y-%m-%dT%H:%M:%SZ"),
               WTM__SOURCE__HOSTS=str(sites), WTM__SOURCE__RATE=str(rate), WTM__SOURCE__ANOMALIES="0",
               WTM__LIMITS__MAX_HOSTS="4000000", WTM__LAKE__RAW_EVENTS="false")
    with tempfile.TemporaryDirectory() as d:
        p, port = start_node(wtm, env, d)
        try:
            # Live, through at least one whole window closed live, then late in a minute.
            live_since, closed_at_live, first_window = None, None, None
            while True:
                ov = overview(port)
                if p.poll() is not None:
                    raise RuntimeError(f"the node exited ({p.returncode}) before the kill")
                if ov is not None and lag(ov) <= live_lag:
                    now = time.time()
                    if live_since is None:
                        live_since, closed_at_live = now, ov["windows_closed"]
                        first_window = int(now // 60) + 1  # the first window that opens live
                    elif now // 60 >= first_window + 1 and now % 60 >= 45:
                        # whole windows closed since the node went live, per window
                        windows = int(now // 60) - first_window + 1
                        per_window = (ov["windows_closed"] - closed_at_live) / windows
                        break
                time.sleep(0.25)
            rss_before = peak_rss_mb(p.pid)
            events_before = ov["events"]
            time.sleep(1.5)  # one more checkpoint with the window this full
            p.send_signal(signal.SIGKILL)
            p.wait()
            killed = time.time()
        except BaseException:
            p.kill()
            p.wait()
            raise
        # Again, on the same directory, at once.
        t0 = time.time()
        p = subprocess.Popen([wtm, "run"], env=dict(env, WTM__NODE__LISTEN=f"127.0.0.1:{port}",
                                                      WTM__NODE__DATA_DIR=d),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ready = caught_up = first = None
            while ready is None or caught_up is None:
                if p.poll() is not None:
                    raise RuntimeError(f"the node exited ({p.returncode}) after the restart")
                if ready is None:
                    try:
                        get(port, "/readyz")
                        ready = time.time() - t0
                    except OSError:
                        pass  # not up, or not ready (503)
                ov = overview(port) if caught_up is None else None
                # Every owner restored and reading (a partition not yet open reports no lag).
                if ov is not None and all(q["lag"] is not None for q in ov["partitions"]):
                    first = first if first is not None else lag(ov)
                    if lag(ov) <= live_lag:
                        caught_up = time.time() - t0
                time.sleep(0.05)
            cpu = cpu_seconds(p.pid)
            rss = peak_rss_mb(p.pid)
        finally:
            p.terminate()
            p.wait()
    row = dict(sites=sites, rate=rate, site_windows_per_window=per_window, events_before_kill=events_before,
               rss_before_kill_mb=rss_before, downtime_s=t0 - killed, ready_s=ready,
               lag_at_restore=first, caught_up_s=caught_up, cpu_s=cpu, peak_rss_after_mb=rss)
    print(json.dumps(row), flush=True)
    return row


def main():
    wtm = sys.argv[1]
    sites = int(sys.argv[2]) if len(sys.argv) > 2 else 150_000
    rows = [run(wtm, sites) for _ in range(RUNS)]
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# Recovery after SIGKILL",
        "",
        f"Machine: {machine()}. Run: `bench/run recovery` on {time.strftime('%Y-%m-%d')}, build {rev}.",
        "",
        f"Built-in generator paced by the wall clock, {sites:,} sites at {EVENTS_PER_SITE_MINUTE} events per site",
        "per minute (Zipf-like), 4 partitions, 1 s checkpoints, 60 s windows, raw-events archive off, detector",
        "on. The node runs live, is killed (SIGKILL) 45+ s into a wall-clock minute and started again at",
        "once on its data directory. Caught up = every owner restored and the sources' summed lag under",
        "half a second of traffic; ready = `/readyz` answers (owners restored, API history refilled from the lake). Times from the restart; site-windows per",
        "window = the open state at the kill, measured as the windows the node closed per window live.",
        "",
        "| run | site-windows per window | events before kill | RSS before kill MB | ready s | lag when restored | "
        "caught up s | CPU s to ready and caught up | peak RSS after MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(rows, 1):
        lines.append(f"| {i} | {r['site_windows_per_window']:,.0f} | {r['events_before_kill']:,} | "
                     f"{r['rss_before_kill_mb']:,.0f} | {r['ready_s']:.2f} | {r['lag_at_restore']:,} | "
                     f"{r['caught_up_s']:.2f} | {r['cpu_s']:.1f} | {r['peak_rss_after_mb']:,.0f} |")
    write_results(OUT, lines)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
