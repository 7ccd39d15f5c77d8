"""How well the detector finds what it should and nothing else: `wtm detect` (the node's
detector, offline) over seeded synthetic series with labelled injected anomalies.

Series: 5-minute points over 8 days (2,304 each), a daily cycle, a weekend dip and noise of
the metric's kind: counts (Poisson-like, ~400/interval), 5xx shares (binomial-like, ~1%), p99
latencies (~220 ms ± 4%). Each series gets one injected anomaly after its first 2 days, of one
kind at one magnitude (weak, medium, strong); clean series get none. For each (kind, magnitude):
recall (an episode starts within the injection or up to 2 points after it), median delay
(points from the injection's start to the episode's), and precision (episodes that overlap an
injection / all episodes on those series); on clean series, false episodes per series-week.
Also `wtm detect`'s throughput in points per second (it refits its models every 10 points).

Usage: detection.py WTM [SERIES_PER_CASE]  -> bench/RESULTS-detection.md
"""

import json
import math
import pathlib
import random
import statistics
import subprocess
import sys
import tempfile
import time
import zlib

from node_throughput import machine

WTM = sys.argv[1]
PER_CASE = int(sys.argv[2]) if len(sys.argv) > 2 else 6
OUT = pathlib.Path(__file__).with_name("RESULTS-detection.md")
STEP = 300
N = 8 * 288
T0 = 1_767_225_600

KINDS = {
    # kind: (--kind, base, noise(base), {magnitude: (length, change)})
    "traffic_spike": ("count", 400.0, lambda b: math.sqrt(b) * 1.5,
                      {"weak": (3, lambda v: 1.9 * v), "medium": (3, lambda v: 3 * v), "strong": (3, lambda v: 6 * v)}),
    "traffic_drop": ("count", 400.0, lambda b: math.sqrt(b) * 1.5,
                     {"weak": (4, lambda v: 0.45 * v), "medium": (4, lambda v: 0.25 * v), "strong": (4, lambda v: 0.05 * v)}),
    "error_burst": ("ratio", 0.01, lambda b: 0.002,
                    {"weak": (4, lambda v: v + 0.07), "medium": (4, lambda v: v + 0.15), "strong": (4, lambda v: v + 0.4)}),
    "latency_degradation": ("latency", 220.0, lambda b: 0.04 * b,
                            {"weak": (3, lambda v: 3.2 * v), "medium": (3, lambda v: 5 * v), "strong": (3, lambda v: 10 * v)}),
}


def series(seed, kind, base, noise, inject):
    rng = random.Random(seed)
    phase = rng.random()
    rows = []
    for i in range(N):
        day = (i * STEP / 86400) % 7
        level = base * (1 + 0.35 * math.sin(2 * math.pi * (i / 288 + phase))) * (0.7 if day >= 5 else 1.0)
        if kind == "ratio":
            level = base
        v = max(0.0, rng.gauss(level, noise(level)))
        if inject and inject[0] <= i < inject[0] + inject[1]:
            v = inject[2](v)
        if kind == "ratio":
            v = min(v, 1.0)
        rows.append(v)
    return rows


def detect(kind, rows, d, name):
    src, out, eps = d / f"{name}.csv", d / f"{name}.out", d / f"{name}.jsonl"
    src.write_text("timestamp,value\n" + "".join(f"{T0 + i * STEP},{v:.6f}\n" for i, v in enumerate(rows)))
    subprocess.run([WTM, "detect", "--input", src, "--output", out, "--episodes", eps, "--kind", kind],
                   check=True, capture_output=True)
    return [json.loads(l) for l in eps.read_text().splitlines()]


def index(ts):
    return (int(time.mktime(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S"))) - time.timezone - T0) // STEP


def main():
    rows_out, points, spent = [], 0, 0.0
    with tempfile.TemporaryDirectory() as d:
        d = pathlib.Path(d)
        clean_eps, clean_series = 0, 0
        for kind, (flag, base, noise, mags) in KINDS.items():
            for c in range(PER_CASE):
                rows = series(1000 + c, flag, base, noise, None)
                t = time.time()
                clean_eps += len(detect(flag, rows, d, f"clean-{kind}-{c}"))
                spent += time.time() - t
                points += N
                clean_series += 1
            for mag, (length, change) in mags.items():
                found, delays, true_eps, all_eps = 0, [], 0, 0
                for c in range(PER_CASE):
                    rng = random.Random(zlib.crc32(f"{kind}/{mag}/{c}".encode()))
                    at = rng.randrange(2 * 288, N - 20)
                    rows = series(c, flag, base, noise, (at, length, change))
                    t = time.time()
                    eps = detect(flag, rows, d, f"{kind}-{mag}-{c}")
                    spent += time.time() - t
                    points += N
                    starts = [index(e["start"]) for e in eps]
                    hit = [s for s in starts if at <= s < at + length + 2]
                    if hit:
                        found += 1
                        delays.append(min(hit) - at)
                    all_eps += len(eps)
                    true_eps += sum(1 for e in eps if index(e["start"]) < at + length + 2 and index(e["end"] or e["start"]) >= at)
                rows_out.append(dict(kind=kind, magnitude=mag, series=PER_CASE, recall=found / PER_CASE,
                                     precision=(true_eps / all_eps) if all_eps else 1.0,
                                     delay=statistics.median(delays) if delays else None, episodes=all_eps))
                print(json.dumps(rows_out[-1]), flush=True)
    weeks = clean_series * N * STEP / (7 * 86400)
    lines = [
        "# Detection quality",
        "",
        f"Machine: {machine()}. Run: `bench/run detection` on {time.strftime('%Y-%m-%d')}.",
        "",
        "`wtm detect` (the node's detector, default `[detector]` settings) over synthetic 5-minute series of",
        f"8 days (daily cycle, weekend dip, noise of the metric's kind), {PER_CASE} series per kind and magnitude,",
        "one labelled injection each after the first two days (see bench/detection.py for the shapes). Recall: an",
        "episode starts within the injection or up to 2 points after; delay: points from the injection's",
        "start to the episode's; precision: episodes overlapping an injection / all episodes on those series.",
        "",
        "| kind | magnitude | series | recall | precision | median delay (points) | episodes |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows_out:
        delay = "–" if r["delay"] is None else f"{r['delay']:.0f}"
        lines.append(f"| {r['kind']} | {r['magnitude']} | {r['series']} | {r['recall']:.2f} | {r['precision']:.2f} | {delay} | {r['episodes']} |")
    lines += [
        "",
        f"Clean series: {clean_series} ({weeks:.1f} series-weeks), {clean_eps} false episodes = "
        f"{clean_eps / weeks:.2f} per series-week.",
        "",
        f"`wtm detect` throughput: {points:,} points in {spent:.1f} s = {points / spent:,.0f} points/s "
        "(one process per series, start-up included).",
    ]
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
