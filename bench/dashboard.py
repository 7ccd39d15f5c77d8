"""Dashboard speed: first paint and time-to-interactive of the sites table with 1,000 and 10,000
sites, in Debian's headless Chromium driven by Playwright (as the tests drive it).

For each site count, a release node runs the built-in generator unpaced over 15 minutes of event
time (15 one-minute windows, ~8 requests per site and window) until it has finished, then idles.
Each of BENCH_DASH_RUNS (default 5) fresh browser contexts (empty cache) opens `/` at 1280×800
and reports, from the page's own performance timeline (ms from navigation start):
- first contentful paint (the page's frame, before any data);
- table ready: the first page of real rows rendered (the page's `wtm:sites-table` mark), i.e.
  `/v1/hosts?sparkline=true` fetched, parsed, sorted and drawn;
- sort and filter: ms from a click on the Site column (every site re-sorted, the first page drawn)
  or from typing one letter into the filter, to the next frame;
- the `/v1/hosts?sparkline=true` answer: its size and its fetch time as the browser saw them.
The medians over the runs go to bench/RESULTS-dashboard.md.
"""

import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from playwright.sync_api import sync_playwright

from node_throughput import cpu_seconds, free_port, get, machine, write_results

WTM = sys.argv[1]
OUT = pathlib.Path(__file__).with_name("RESULTS-dashboard.md")
RUNS = int(os.environ.get("BENCH_DASH_RUNS", 5))
SITES = [int(x) for x in os.environ.get("BENCH_DASH_SITES", "1000,10000").split(",")]
SECONDS = 900
CHROMIUM = os.environ.get("WTM_CHROMIUM", "/usr/bin/chromium")

MEASURE = """async () => {
  const frame = () => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
  const paint = performance.getEntriesByName('first-contentful-paint')[0];
  const table = performance.getEntriesByName('wtm:sites-table')[0];
  const hosts = performance.getEntriesByType('resource').find((e) => e.name.includes('/v1/hosts?'));
  let t = performance.now();
  document.querySelector('th button[data-sort=host]').click();
  await frame();
  const sort = performance.now() - t;
  const input = document.getElementById('filter');
  t = performance.now();
  input.value = 'a';
  input.dispatchEvent(new Event('input'));
  await frame();
  const filter = performance.now() - t;
  return {
    fcp: paint ? paint.startTime : null, table: table.startTime, sort, filter,
    hosts_kb: hosts.encodedBodySize / 1024, hosts_ms: hosts.duration,
    rows: document.querySelectorAll('#sites tbody tr').length,
  };
}"""


def node_with(sites):
    d = tempfile.mkdtemp(prefix="wtm-bench-dash-")
    port = free_port()
    rate = sites * 8 * (SECONDS // 60) / SECONDS
    env = dict(os.environ, RUST_LOG="warn", WTM__NODE__LISTEN=f"127.0.0.1:{port}", WTM__NODE__DATA_DIR=d,
               WTM__LAKE__RAW_EVENTS="false", WTM__SOURCE__REALTIME="false",
               WTM__SOURCE__START="2026-01-01T00:00:00Z", WTM__SOURCE__HOSTS=str(sites),
               WTM__SOURCE__RATE=str(rate), WTM__SOURCE__DURATION_S=str(SECONDS), WTM__SOURCE__ANOMALIES="0")
    p = subprocess.Popen([WTM, "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900
    while True:
        assert p.poll() is None and time.time() < deadline, "the node did not finish"
        try:
            if get(port, "/v1/overview")["finished"]:
                break
        except OSError:
            pass
        time.sleep(0.5)
    # Idle (the detector's fits after the last windows), so the page is what is measured.
    while True:
        before = cpu_seconds(p.pid)
        time.sleep(1)
        if cpu_seconds(p.pid) - before < 0.1:
            break
    return p, port


def main():
    rows = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for sites in SITES:
            p, port = node_with(sites)
            try:
                listed = len(get(port, "/v1/hosts")["hosts"])
                runs = []
                for _ in range(RUNS):
                    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
                    page = ctx.new_page()
                    page.goto(f"http://127.0.0.1:{port}/")
                    page.wait_for_function("() => performance.getEntriesByName('wtm:sites-table').length > 0",
                                           timeout=120000)
                    runs.append(page.evaluate(MEASURE))
                    ctx.close()
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if runs[0][k] is not None}
                row = dict(sites=listed, **med)
                print(row, flush=True)
                rows.append(row)
            finally:
                p.terminate()
                p.wait()
        browser.close()
    lines = [
        "# Dashboard: first paint and time-to-interactive",
        "",
        f"Machine: {machine()}; Debian's Chromium (headless, Playwright), the release node and the browser "
        f"on the same machine. Run {time.strftime('%Y-%m-%d')} by `bench/run dashboard`.",
        "",
        f"A finished node on the generator ({SECONDS // 60} one-minute windows, ~8 requests per site and "
        f"window); {RUNS} fresh browser contexts each; medians, in ms from navigation start. *Table ready*: "
        "the first 50 rows drawn from `/v1/hosts?sparkline=true` (the moment the table can be used); "
        "*sort* / *filter*: a click on the Site column / one letter typed, to the next frame.",
        "",
        "| sites | first contentful paint | table ready | `/v1/hosts` fetch | its size (KB) | sort | filter |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['sites']:,} | {r.get('fcp', float('nan')):.0f} | {r['table']:.0f} | {r['hosts_ms']:.0f} | "
                     f"{r['hosts_kb']:,.0f} | {r['sort']:.0f} | {r['filter']:.0f} |")
    write_results(OUT, lines)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
