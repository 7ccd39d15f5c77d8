"""How well the detector finds what it should and nothing else: `wtm detect` (the node's
detector, offline) over three simulated weeks of 200 sites, every kind the generator injects at
every magnitude, plus clean sites.

Each site's 5-minute windows (3 weeks from a Monday, 6,048 each) are drawn the way a node would
see them: requests ~ Poisson around a daily cycle (±30–50%, the site's own phase) with weekends at
55–80% of weekdays; 5xx ~ binomial at the site's share (0.5–2%); p99 latency = the 99th
percentile of that window's requests drawn from the site's log-normal latency (drawn exactly, as
the order statistic through a Beta variate). Sites serve 1,000–10,000 requests per window at the
daily mean (log-uniform), so every window has the requests the node wants before it judges a 5xx
share (50) or a p99 (200).

Injected anomalies mirror the generator's kinds and magnitudes (weak / medium / strong, the
multipliers in runtime/core/src/generator.rs):
  traffic_spike          requests ×2 / ×3 / ×5, 3 windows
  bot_surge, path_hotspot, not_found_storm
                         +100% / +200% / +400% extra requests, 3 windows (the same in counts as a
                         spike; what tells them apart is the explanation, not measured here)
  traffic_drop           requests ×0.5 / ×0.3 / ×0.1, 4 windows
  error_burst            a 8% / 15% / 35% share of requests answered 5xx, 3 windows
  latency_degradation    every latency ×2+100 / ×3+200 / ×5+300 ms, 3 windows
  slow_endpoint          the site's most popular path (12% of requests, as `/` in the generator)
                         ×4+200 / ×8+400 / ×15+800 ms, 3 windows
  latency_creep          latencies rising steadily to ×2+100 / ×3+200 / ×5+300 ms over 12 windows
Each (kind, magnitude) case gets 6 sites with 6 injections each, spread over days 3–20; 38 sites
get none (clean). Each site's three series go through `wtm detect` (`--kind count`, `ratio`,
`latency`).

Recall: an injection is found when an episode (any metric) starts within it or up to 2 windows
after it; delay: windows from its start to the first such episode. Precision: episodes that
overlap an injection (or start up to 2 windows after it) / all episodes, on the sites of that
case. Clean sites: false episodes per site-week, in week 1 (the weekly shape not learned yet) and
weeks 2–3; and once more with `detector.weekly_season = false`.

Usage: detection.py WTM [SITES_PER_CASE [CLEAN_SITES]]  -> bench/RESULTS-detection.md
"""

import concurrent.futures
import json
import math
import os
import pathlib
import random
import statistics
import subprocess
import sys
import tempfile
import time
from statistics import NormalDist

from node_throughput import machine, write_results

WTM = sys.argv[1]
PER_CASE = int(sys.argv[2]) if len(sys.argv) > 2 else 6
CLEAN = int(sys.argv[3]) if len(sys.argv) > 3 else 38
INJECTIONS_PER_SITE = 6
OUT = pathlib.Path(os.environ.get("DETECTION_OUT", pathlib.Path(__file__).with_name("RESULTS-detection.md")))
STEP = 300
DAY = 86400 // STEP
N = 21 * DAY
T0 = 1_767_571_200  # 2026-01-05T00:00:00Z, a Monday
MAGS = ["weak", "medium", "strong"]
SPIKE = [2.0, 3.0, 5.0]
LAT = [(2.0, 100.0), (3.0, 200.0), (5.0, 300.0)]
KINDS = {
    # kind: (windows, effect(magnitude index) -> per-window change)
    "traffic_spike": (3, lambda m: dict(rate=SPIKE[m])),
    "bot_surge": (3, lambda m: dict(rate=SPIKE[m])),
    "path_hotspot": (3, lambda m: dict(rate=SPIKE[m])),
    "not_found_storm": (3, lambda m: dict(rate=SPIKE[m])),
    "traffic_drop": (4, lambda m: dict(rate=[0.5, 0.3, 0.1][m])),
    "error_burst": (3, lambda m: dict(burst=[0.08, 0.15, 0.35][m])),
    "latency_degradation": (3, lambda m: dict(latency=LAT[m])),
    "slow_endpoint": (3, lambda m: dict(slow_path=[(4.0, 200.0), (8.0, 400.0), (15.0, 800.0)][m])),
    "latency_creep": (12, lambda m: dict(creep=LAT[m])),
}
SLOW_PATH_SHARE = 0.12
STD = NormalDist()


class Site:
    def __init__(self, seed):
        rng = random.Random(seed)
        self.rng = rng
        self.level = math.exp(rng.uniform(math.log(1000), math.log(10000)))
        self.phase = rng.random()
        self.amp = rng.uniform(0.3, 0.5)
        self.weekend = rng.uniform(0.55, 0.8)
        self.err = rng.uniform(0.005, 0.02)
        self.median_ms = rng.uniform(40, 150)
        self.sigma = 0.5

    def rate(self, i):
        daily = 1 + self.amp * math.sin(2 * math.pi * (i / DAY + self.phase))
        weekly = self.weekend if (i // DAY) % 7 >= 5 else 1.0
        return self.level * daily * weekly

    def latency_quantile(self, q, change):
        """The q-quantile of one request's latency under `change`."""
        base = lambda p: self.median_ms * math.exp(self.sigma * STD.inv_cdf(min(max(p, 1e-12), 1 - 1e-12)))
        if "latency" in change:
            a, b = change["latency"]
            return a * base(q) + b
        if "slow_path" in change:
            # A mixture: 12% of requests slowed. Its quantile by bisection on its CDF.
            a, b = change["slow_path"]
            cdf = lambda x: ((1 - SLOW_PATH_SHARE) * STD.cdf(math.log(x / self.median_ms) / self.sigma)
                             + SLOW_PATH_SHARE * (STD.cdf(math.log(max(x - b, 1e-9) / a / self.median_ms) / self.sigma) if x > b else 0.0))
            lo, hi = 1e-3, (a * base(q) + b) * 2
            for _ in range(60):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
            return (lo + hi) / 2
        return base(q)

    def window(self, i, change):
        rng = self.rng
        lam = self.rate(i) * change.get("rate", 1.0)
        requests = max(0, round(rng.gauss(lam, math.sqrt(lam))))
        p = self.err
        if "burst" in change:
            p = change["burst"] + (1 - change["burst"]) * p
        errors = min(requests, max(0, round(rng.gauss(requests * p, math.sqrt(requests * p * (1 - p))))))
        error_rate = errors / requests if requests else 0.0
        # The p99 of `requests` draws: the k-th order statistic of uniforms is Beta(k, n+1-k).
        n = max(requests, 1)
        k = max(1, math.ceil(0.99 * n))
        u = rng.betavariate(k, n + 1 - k)
        if "creep" in change:
            a, b = change["creep"]
            prog = change["progress"]
            p99 = self.latency_quantile(u, {}) * (1 + (a - 1) * prog) + b * prog
        else:
            p99 = self.latency_quantile(u, change)
        return requests, error_rate, p99


def schedule(site_index, case):
    """Injection starts of one site: spread over days 3–20, at least a day apart."""
    rng = random.Random(f"schedule/{site_index}")
    first, last = 2 * DAY, N - DAY
    slot = (last - first) // INJECTIONS_PER_SITE
    length = KINDS[case[0]][0]
    return [first + j * slot + rng.randrange(slot - length - 3) for j in range(INJECTIONS_PER_SITE)]


def simulate(site_index, case):
    site = Site(site_index)
    starts = schedule(site_index, case) if case else []
    change_at = {}
    if case:
        kind, mag = case
        length, effect = KINDS[kind]
        for at in starts:
            for j in range(length):
                change = dict(effect(MAGS.index(mag)))
                change["progress"] = (j + 1) / length
                change_at[at + j] = change
    rows = [site.window(i, change_at.get(i, {})) for i in range(N)]
    return rows, starts


def detect(d, name, kind, values, config=None):
    src, out, eps = d / f"{name}.csv", d / f"{name}.out", d / f"{name}.jsonl"
    src.write_text("timestamp,value\n" + "".join(f"{T0 + i * STEP},{v:.6f}\n" for i, v in enumerate(values)))
    cmd = [WTM, "detect", "--input", src, "--output", out, "--episodes", eps, "--kind", kind]
    if config:
        cmd += ["--config", config]
    t = time.time()
    subprocess.run(cmd, check=True, capture_output=True)
    spent = time.time() - t
    found = [json.loads(l) for l in eps.read_text().splitlines()]
    for f in (src, out, eps):
        f.unlink()
    return found, spent


def index(ts):
    return (int(time.mktime(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S"))) - time.timezone - T0) // STEP


def site_episodes(d, name, rows, config=None):
    """Every episode of a site's three series, as (metric, start index, end index); and seconds spent."""
    out, spent = [], 0.0
    for col, kind in enumerate(["count", "ratio", "latency"]):
        eps, s = detect(d, f"{name}-{kind}", kind, [r[col] for r in rows], config)
        spent += s
        out += [(kind, index(e["start"]), index(e["end"]) if e.get("end") else N) for e in eps]
    return out, spent


def main():
    cases = [(k, m) for k in KINDS for m in MAGS]
    jobs = []  # (site index, case or None, config)
    for c, case in enumerate(cases):
        jobs += [(1000 + c * 100 + s, case, None) for s in range(PER_CASE)]
    jobs += [(s, None, None) for s in range(CLEAN)]
    results, points, spent = {}, 0, 0.0
    with tempfile.TemporaryDirectory() as d:
        d = pathlib.Path(d)
        off = d / "weekly-off.toml"
        off.write_text("[detector]\nweekly_season = false\n")
        jobs += [(s, None, off) for s in range(CLEAN)]

        def run(job):
            site, case, config = job
            rows, starts = simulate(site, case)
            eps, s = site_episodes(d, f"site{site}-{'off' if config else 'on'}", rows, config)
            return job, starts, eps, s

        t0 = time.time()
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            for n, (job, starts, eps, s) in enumerate(pool.map(run, jobs), 1):
                results[job] = (starts, eps)
                points += 3 * N
                spent += s
                if n % 20 == 0:
                    print(f"{n}/{len(jobs)} sites, {time.time() - t0:.0f} s", flush=True)

    rows_out = []
    for case in cases:
        kind, mag = case
        length = KINDS[kind][0]
        found, delays, true_eps, all_eps, injected = 0, [], 0, 0, 0
        for (site, c, config), (starts, eps) in results.items():
            if c != case:
                continue
            for at in starts:
                injected += 1
                hit = [s for _, s, _ in eps if at <= s < at + length + 2]
                if hit:
                    found += 1
                    delays.append(min(hit) - at)
            for _, s, e in eps:
                all_eps += 1
                true_eps += any(s < at + length + 2 and e >= at for at in starts)
        rows_out.append(dict(kind=kind, magnitude=mag, injected=injected, recall=found / injected,
                             precision=(true_eps / all_eps) if all_eps else 1.0,
                             delay=statistics.median(delays) if delays else None, episodes=all_eps))
        print(json.dumps(rows_out[-1]), flush=True)

    def clean(weekly_off):
        weeks = [0, 0, 0]
        for (site, c, config), (_, eps) in results.items():
            if c is None and (config is not None) == weekly_off:
                for _, s, _ in eps:
                    weeks[min(s // (7 * DAY), 2)] += 1
        return weeks

    on, off = clean(False), clean(True)
    goal = [r for r in rows_out if r["magnitude"] != "weak"]
    lines = [
        "# Detection quality",
        "",
        f"Machine: {machine()}. Run: `bench/run detection` on {time.strftime('%Y-%m-%d')}.",
        "",
        f"`wtm detect` (the node's detector, default `[detector]` settings) over three simulated weeks of",
        f"{len(cases) * PER_CASE + CLEAN} sites' 5-minute windows (daily and weekly cycles, Poisson counts, binomial 5xx, exact",
        "p99 order statistics; see bench/detection.py): every kind the generator injects at every",
        f"magnitude, {PER_CASE} sites per case with {INJECTIONS_PER_SITE} injections each, and {CLEAN} clean sites. Recall: an episode",
        "starts within the injection or up to 2 windows after; delay: windows from the injection's",
        "start to that episode's; precision: episodes overlapping an injection / all episodes on the",
        "case's sites.",
        "",
        "| kind | magnitude | injected | recall | precision | median delay (windows) | episodes |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows_out:
        delay = "–" if r["delay"] is None else f"{r['delay']:.0f}"
        lines.append(f"| {r['kind']} | {r['magnitude']} | {r['injected']} | {r['recall']:.2f} | {r['precision']:.2f} | {delay} | {r['episodes']} |")
    worst = lambda key: min(r[key] for r in goal)
    lines += [
        "",
        f"Medium and strong: recall ≥ {worst('recall'):.2f}, precision ≥ {worst('precision'):.2f} in every case; median delay "
        f"≤ {max(r['delay'] for r in goal if r['delay'] is not None):.0f} windows (goal: 0.95, 0.95, 2).",
        "",
        f"Clean sites ({CLEAN}, 3 weeks each), false episodes per site-week: week 1 {on[0] / CLEAN:.2f}, "
        f"weeks 2–3 {(on[1] + on[2]) / (2 * CLEAN):.2f} (goal ≤ 1). With `detector.weekly_season = false`: "
        f"week 1 {off[0] / CLEAN:.2f}, weeks 2–3 {(off[1] + off[2]) / (2 * CLEAN):.2f}.",
        "",
        f"`wtm detect` throughput: {points:,} points in {spent:.1f} process-seconds = {points / spent:,.0f} points/s "
        f"per process (6,048-point series, start-up included; {os.cpu_count()} at a time).",
    ]
    write_results(OUT, lines)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
