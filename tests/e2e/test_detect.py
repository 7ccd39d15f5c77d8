"""Anomaly scores and episodes.

- `wtm detect` over series this test writes, with anomalies it injects: every row comes back with
  its timestamp as given, exactly the injected rows score at least the threshold, each burst is
  one episode with its start, end and length, reruns are identical, and bad input fails naming
  the line.
- A node on the generator with injected anomalies: every raised anomaly belongs to exactly one
  episode (same site, metric and kind, inside its span, the episode's window count equal to its
  anomalies), the series route carries the same score the anomaly has, no episode is false
  (each overlaps an injected anomaly of its site), a 5xx burst is explained by a 5xx status code,
  and an explanation's first driver equals what the top and series routes give for the same
  windows.
"""

import json
import math
import random
import subprocess
import time
import urllib.parse

import pytest
from conftest import START, WTM, finished_node, parse_ts, settled

INTERVAL_S = 300
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def series(n, base, noise, seed, bursts):
    """A daily-cycling series with `bursts` = [(first row, rows, factor or value fn)]."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        day = 1 + 0.3 * math.sin(2 * math.pi * i / (86400 / INTERVAL_S))
        v = max(0.0, rng.gauss(base * day, noise(base * day)))
        for first, length, change in bursts:
            if first <= i < first + length:
                v = change(v)
        rows.append((T0 + i * INTERVAL_S, v))
    return rows


def run_detect(tmp_path, rows, kind="count", name="in.csv", header="timestamp,value", ts=str):
    src = tmp_path / name
    src.write_text(header + "\n" + "".join(f"{ts(t)},{v:.4f}\n" for t, v in rows))
    out, ep = tmp_path / (name + ".out.csv"), tmp_path / (name + ".episodes.jsonl")
    p = subprocess.run([WTM, "detect", "--input", src, "--output", out, "--episodes", ep, "--kind", kind],
                       capture_output=True, text=True, timeout=600)
    return p, out, ep


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@pytest.mark.parametrize("kind,base,noise,bursts,expect", [
    # A traffic spike (3 rows at ×4) and a drop (4 rows at 10%).
    ("count", 500.0, math.sqrt, [(1200, 3, lambda v: 4 * v), (1600, 4, lambda v: 0.1 * v)],
     [("traffic_spike", 1200, 3), ("traffic_drop", 1600, 4)]),
    # A 5xx burst: a 1% share goes to 30% for 5 rows.
    ("ratio", 0.01, lambda b: 0.002, [(900, 5, lambda v: 0.3)], [("error_burst", 900, 5)]),
    # p99 ×6 for 2 rows.
    ("latency", 220.0, lambda b: 8.0, [(1000, 2, lambda v: 6 * v)], [("latency_degradation", 1000, 2)]),
])
def test_detect_scores_exactly_the_injected_rows(tmp_path, kind, base, noise, bursts, expect):
    rows = series(2000, base, noise, seed=5, bursts=bursts)
    p, out, ep = run_detect(tmp_path, rows, kind=kind, ts=iso)
    assert p.returncode == 0, p.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "timestamp,value,anomaly_score" and len(lines) == len(rows) + 1
    got = [l.split(",") for l in lines[1:]]
    assert [g[0] for g in got] == [iso(t) for t, _ in rows], "timestamps come back as given"
    scores = [float(g[2]) if g[2] else None for g in got]
    assert all(s is None for s in scores[:15]) and all(s is not None for s in scores[15:])
    assert all(0.0 <= s <= 1.0 for s in scores[15:])
    injected = {i for first, n, _ in bursts for i in range(first, first + n)}
    high = {i for i, s in enumerate(scores) if s is not None and s >= 0.5}
    assert high == injected, sorted(high ^ injected)
    episodes = [json.loads(l) for l in ep.read_text().splitlines()]
    assert [(e["kind"], parse_ts(e["start"]), parse_ts(e["end"]), e["windows"]) for e in episodes] == [
        (k, (T0 + first * INTERVAL_S) * 1000, (T0 + (first + n) * INTERVAL_S) * 1000, n) for k, first, n in expect]
    assert all(not e["ongoing"] and e["peak_score"] >= 0.5 and e["severity"] in ("minor", "major", "critical")
               for e in episodes)
    # Deterministic: a rerun (Unix-seconds timestamps this time) scores the same.
    p2, out2, _ = run_detect(tmp_path, rows, kind=kind, name="again.csv")
    assert p2.returncode == 0, p2.stderr
    assert [l.split(",")[2] for l in out2.read_text().splitlines()[1:]] == [g[2] for g in got]


@pytest.mark.parametrize("text,kind,message", [
    ("time,value\n1,2\n", "count", "line 1: the header must be `timestamp,value`"),
    ("timestamp,value\n1700000000,5\n1700000300,five\n", "count", "line 3: `five` is not a number"),
    ("timestamp,value\n1700000000,5\nyesterday,4\n", "count", "line 3: `yesterday` is not a timestamp"),
    ("timestamp,value\n1700000300,5\n1700000000,4\n", "count", "line 3: timestamp"),
    ("timestamp,value\n1700000000,-1\n", "count", "line 2: value -1 is not a finite number"),
    ("timestamp,value\n1700000000,1.5\n", "ratio", "line 2: value 1.5 is not a share"),
    ("timestamp,value\n1700000000\n", "count", "line 2: expected `timestamp,value`"),
])
def test_detect_bad_input_names_the_line(tmp_path, text, kind, message):
    src = tmp_path / "bad.csv"
    src.write_text(text)
    p = subprocess.run([WTM, "detect", "--input", src, "--output", tmp_path / "o.csv", "--kind", kind],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and message in p.stderr, p.stderr
    assert "panicked" not in p.stderr


NODE = dict(seed=4, hosts=40, rate=400.0, realtime=False, start=START, duration_s=7200, anomalies=8)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    yield from finished_node(tmp_path_factory, "detect", NODE)


def test_node_episodes_group_the_anomalies_and_scores_reach_the_series(node, tmp_path):
    found = settled(node, "/v1/anomalies")
    anomalies, episodes = found["anomalies"], found["episodes"]
    assert anomalies and episodes
    labels_file = tmp_path / "labels.jsonl"
    subprocess.run([WTM, "generate", "--out", tmp_path / "events.json", "--labels", labels_file,
                    "--seed", "4", "--hosts", "40", "--rate", "400", "--start", START,
                    "--duration", "7200", "--anomalies", "8", "--partitions", "4"], check=True)
    labels = [json.loads(l) for l in labels_file.read_text().splitlines()]
    assert len(labels) == 8
    window = 60_000
    for a in anomalies:
        assert 0.5 <= a["anomaly_score"] <= 1.0, a
        start = parse_ts(a["window_start"])
        mine = [e for e in episodes if (e["host"], e["metric"], e["kind"]) == (a["host"], a["metric"], a["kind"])
                and parse_ts(e["start"]) <= start <= parse_ts(e["last_window_start"])]
        assert len(mine) == 1, (a, mine)
    for e in episodes:
        inside = [a for a in anomalies if (a["host"], a["metric"], a["kind"]) == (e["host"], e["metric"], e["kind"])
                  and parse_ts(e["start"]) <= parse_ts(a["window_start"]) <= parse_ts(e["last_window_start"])]
        assert e["windows"] == len(inside), e
        assert e["peak_score"] == max(a["anomaly_score"] for a in inside)
        assert e["ongoing"] == (e["end"] is None)
        if e["end"] is not None:
            assert parse_ts(e["end"]) == parse_ts(e["last_window_start"]) + window
        # No false episode: each overlaps an injected anomaly of its site (its effect may trail
        # the label by the windows the baseline needs to recover).
        assert any(l["host"] == e["host"] and parse_ts(l["start"]) <= parse_ts(e["start"]) <= parse_ts(l["end"]) + 5 * window
                   for l in labels), (e, [l for l in labels if l["host"] == e["host"]])
    # The series route carries each anomalous window's score, as the anomaly has it.
    for a in anomalies[:20]:
        start = parse_ts(a["window_start"])
        q = urllib.parse.urlencode({"from": a["window_start"], "to": iso(start // 1000 + 60)})
        status, body = node.get(f"/v1/hosts/{urllib.parse.quote(a['host'])}/windows?{q}")
        assert status == 200 and len(body["windows"]) == 1, body
        score = body["windows"][0]["scores"][a["metric"]]
        assert abs(score - a["anomaly_score"]) <= 1e-6, (score, a)
    # Every closed window that was judged has scores in [0, 1] (null where not judged).
    host = anomalies[0]["host"]
    status, body = node.get(f"/v1/hosts/{urllib.parse.quote(host)}/windows")
    judged = [w for w in body["windows"] if w["scores"] is not None]
    assert judged and all(s is None or 0 <= s <= 1 for w in judged for s in w["scores"].values())
    # Episodes say what drove them: the newest 20 are explained, and each first driver's numbers
    # equal what the top and series routes give for the same windows. (The generator's spikes
    # and drops are the same traffic, only more or less: no key stands out; its 5xx bursts are
    # one status code.)
    explained = [e for e in episodes if e["explanation"]]
    assert explained and len(explained) <= 20
    checked = 0
    for e in explained:
        x = e["explanation"]
        assert x["summary"] and 1 <= x["baseline_windows"] <= 30
        contributions = [d["contribution"] for d in x["drivers"]]
        assert contributions == sorted(contributions, reverse=True) and all(c >= 0.05 for c in contributions)
        assert all(0 <= d[k] <= 1 for d in x["drivers"] for k in ("baseline_share", "observed_share"))
        if e["kind"] == "error_burst":
            assert x["drivers"] and x["drivers"][0]["dimension"] == "status" and x["drivers"][0]["key"].startswith("5"), x
        if not x["drivers"]:
            continue
        first = x["drivers"][0]
        host = urllib.parse.quote(e["host"])
        start, peak, n = parse_ts(e["start"]), parse_ts(e["peak_window_start"]), x["baseline_windows"]

        def span(frm, to):
            q = urllib.parse.urlencode({"from": iso(frm // 1000), "to": iso(to // 1000)})
            top = node.get(f"/v1/hosts/{host}/top?dimension={first['dimension']}&k=100&{q}")[1]
            series = node.get(f"/v1/hosts/{host}/windows?{q}")[1]["windows"]
            requests = sum(w["requests"] for w in series)
            # A share of the requests, or for time by path of the milliseconds (`total`).
            assert top["requests"] == requests and (top["total"] == requests) == (first["dimension"] != "path_time")
            return {t["key"]: t["count"] for t in top["entries"]}, top["total"], len(series)
        base, base_total, windows = span(start - n * window, start)
        obs, obs_total, _ = span(peak, peak + window)
        assert windows == n
        o, b = obs.get(first["key"], 0), base.get(first["key"], 0)
        extra = obs_total - base_total / n
        if first["dimension"] != "path_time" and e["metric"] == "requests" and abs(extra) >= max(1, 0.05 * base_total / n):
            want = (o - b / n) / extra
        else:
            want = o / obs_total - b / base_total
        assert abs(first["contribution"] - want) <= 1e-9, (e, want)
        checked += 1
    assert checked >= 1
    print(f"{len(explained)} episodes explained, {checked} first drivers checked against /top")
    recall = sum(any(e["host"] == l["host"] and parse_ts(l["start"]) <= parse_ts(e["start"]) <= parse_ts(l["end"]) + 5 * window
                     for e in episodes) for l in labels)
    print(f"injected {len(labels)}, found {recall}; {len(episodes)} episodes from {len(anomalies)} anomalous windows")


NEW_KINDS = ["bot_surge", "path_hotspot", "not_found_storm", "slow_endpoint", "latency_creep"]
# What each new kind must be found as, and the keys its explanation must name (none: every
# request alike, so no key's share moves).
EXPECTED = {
    "bot_surge": ("requests", [("user_agent", "python-requests/2.31.0"), ("network", "203.0.113.0/24")]),
    "path_hotspot": ("requests", [("path", "/products/flash-sale")]),
    "not_found_storm": ("requests", [("status", "404")]),
    "slow_endpoint": ("latency_p99_ms", [("path_time", "/")]),
    "latency_creep": ("latency_p99_ms", []),
}


def test_the_generators_new_kinds_are_found_and_explained(tmp_path_factory, tmp_path):
    """A node on the generator injecting each new kind once (strong): each is one episode of
    the right metric on its site, explained by the keys injected (the surge by its user agent
    and its network, the slow endpoint by its path's share of the serving time)."""
    src = dict(NODE, anomalies=len(NEW_KINDS), anomaly_kinds=NEW_KINDS)
    node = next(finished_node(tmp_path_factory, "kinds", src))
    try:
        episodes = settled(node, "/v1/anomalies")["episodes"]
        labels_file = tmp_path / "labels.jsonl"
        subprocess.run([WTM, "generate", "--out", tmp_path / "events.json", "--labels", labels_file,
                        "--seed", "4", "--hosts", "40", "--rate", "400", "--start", START, "--duration", "7200",
                        "--anomalies", str(len(NEW_KINDS)), "--kinds", ",".join(NEW_KINDS), "--partitions", "4"],
                       check=True)
        labels = [json.loads(l) for l in labels_file.read_text().splitlines()]
        assert [l["kind"] for l in labels] == NEW_KINDS and all(l["magnitude"] == "strong" for l in labels)
        window = 60_000
        for l in labels:
            metric, drivers = EXPECTED[l["kind"]]
            mine = [e for e in episodes if e["host"] == l["host"] and e["metric"] == metric
                    and parse_ts(l["start"]) <= parse_ts(e["start"]) <= parse_ts(l["end"]) + 2 * window]
            assert len(mine) == 1, (l, [e for e in episodes if e["host"] == l["host"]])
            e = mine[0]
            keys = [(d["dimension"], d["key"]) for d in e["explanation"]["drivers"]]
            assert all(d in keys for d in drivers), (l["kind"], e["explanation"])
            print(f"{l['kind']}: {e['kind']} on {metric}, {e['windows']} window(s), peak {e['peak_score']:.2f}; "
                  f"{e['explanation']['summary'] if e['explanation'] else '-'}")
    finally:
        node.stop()
