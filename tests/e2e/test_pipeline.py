"""End to end: a seeded generator run through a real node; the lake (read by DuckDB) and the API
must equal ground truth counted independently from `wtm generate`'s output, with and without
SIGKILL crashes mid-run."""

import json
import os
import subprocess
import urllib.parse

import duckdb
import pytest

from conftest import START, WINDOW_MS, WTM, Truth, exact_quantile, generate

# The node's built-in source and `wtm generate` with the same flags produce the same events.
SOURCE = dict(seed=7, hosts=20, rate=300.0, realtime=False, start=START, duration_s=1200, anomalies=0, malformed_share=0.001)
GEN_FLAGS = dict(seed=7, hosts=20, rate=300.0, start=START, duration=1200, anomalies=0, malformed_share=0.001, partitions=4)
RANGE = "from=2025-12-31T23:00:00Z&to=2026-01-01T02:00:00Z"


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    return Truth(generate(tmp_path_factory.mktemp("gen") / "events.json", **GEN_FLAGS))


def epochs(node):
    """Each owned partition's owner epoch (raised by every restore from a checkpoint)."""
    status, body = node.get("/v1/cluster")
    assert status == 200, body
    return {p["partition"]: p["owner_epoch"] for p in body["partitions"]}


def q(lake, sql):
    return duckdb.connect().execute(sql.replace("{lake}", str(lake))).fetchall()


def lake_windows(lake):
    rows = q(
        lake,
        """select host, epoch_ms(window_start), count(*), sum(requests), sum(bytes), sum(status_1xx), sum(status_2xx),
                  sum(status_3xx), sum(status_4xx), sum(status_5xx), max(latency_p99_ms), max(unique_clients),
                  count(distinct partition)
           from read_parquet('{lake}/windows/*/*/*.parquet', hive_partitioning = true) group by all""",
    )
    return {
        (r[0], r[1]): {"rows": r[2], "requests": r[3], "bytes": r[4], "status": list(r[5:10]), "p99": r[10], "unique": r[11],
                       "partitions": r[12]}
        for r in rows
    }


def lake_late(lake):
    if not (lake / "late").exists():
        return {}
    rows = q(
        lake,
        f"""select host, (epoch_ms(ts) // {WINDOW_MS}) * {WINDOW_MS} as w, count(*), sum(bytes),
                  count(*) filter (status < 200), count(*) filter (status between 200 and 299),
                  count(*) filter (status between 300 and 399), count(*) filter (status between 400 and 499),
                  count(*) filter (status >= 500)
           from read_parquet('{{lake}}/late/*/*/*.parquet', hive_partitioning = true) group by all""",
    )
    return {(r[0], r[1]): {"requests": r[2], "bytes": r[3], "status": list(r[4:9])} for r in rows}


def assert_lake_equals_truth(lake, truth):
    """Nothing lost, nothing doubled: final windows + late output == every generated event, per
    (host, window), and one row per (host, window, partition). Returns both tables."""
    windows, late = lake_windows(lake), lake_late(lake)
    assert set(windows) | set(late) == set(truth.windows)
    zero = {"requests": 0, "bytes": 0, "status": [0] * 5}
    for key, t in truth.windows.items():
        w, l = windows.get(key, zero), late.get(key, zero)
        got = (w["requests"] + l["requests"], w["bytes"] + l["bytes"], [a + b for a, b in zip(w["status"], l["status"])])
        assert got == (t["requests"], t["bytes"], t["status"]), key
    assert all(w["rows"] == w["partitions"] for w in windows.values()), "a (host, window, partition) has two rows"
    return windows, late


def check_exact(node, truth):
    lake = node.lake
    windows, late = assert_lake_equals_truth(lake, truth)
    # The node's producer keys hosts to partitions, so each (host, window) is a single row.
    assert all(w["rows"] == 1 for w in windows.values())
    late_total = sum(l["requests"] for l in late.values())
    assert late_total > 0, "the scenario should exercise the late path"

    # The overview agrees; malformed lines are counted by reason and dead-lettered with their bytes.
    ov = node.overview()
    assert ov["events"] == truth.events
    assert ov["late"] == late_total
    assert ov["invalid"] == {"bad_json": truth.malformed} and truth.malformed > 0
    (invalid,) = q(lake, "select count(*), count(*) filter (reason = 'bad_json'), min(octet_length(raw)) from '{lake}/invalid/*/*/*.parquet'")
    assert invalid[:2] == (truth.malformed, truth.malformed) and invalid[2] > 0

    # The raw archive holds every parsed event exactly once.
    (raw,) = q(lake, "select count(*), count(distinct (partition, \"offset\")) from '{lake}/events/*/*/*.parquet'")
    assert raw == (truth.events, truth.events)
    # ... with its fields as they came: per (host, window) requests, bytes, status classes and
    # clients equal the input's.
    by_window = {
        (h, w): (n, b, [s1, s2, s3, s4, s5], c)
        for h, w, n, b, s1, s2, s3, s4, s5, c in q(
            lake,
            f"""select host, epoch_ms(ts) - epoch_ms(ts) % {WINDOW_MS}, count(*), sum(bytes),
                count(*) filter (status < 200), count(*) filter (status between 200 and 299),
                count(*) filter (status between 300 and 399), count(*) filter (status between 400 and 499),
                count(*) filter (status >= 500), count(distinct client_ip)
               from '{{lake}}/events/*/*/*.parquet' group by all""",
        )
    }
    assert by_window == {
        k: (w["requests"], w["bytes"], w["status"], len(truth.clients[k])) for k, w in truth.windows.items()
    }

    # Sketches within their bounds, on windows the late path did not touch.
    checked = 0
    for key, w in windows.items():
        if key in late:
            continue
        exact = exact_quantile(truth.latencies[key], 0.99)
        assert abs(w["p99"] - exact) <= exact * 0.01 + 1e-9, (key, w["p99"], exact)
        distinct = len(truth.clients[key])
        assert abs(w["unique"] - distinct) <= distinct * 0.02 + 1, (key, w["unique"], distinct)
        checked += 1
    assert checked > 0.6 * len(windows)

    # The API serves the same numbers, all final.
    hosts = sorted({h for h, _ in truth.windows})
    status, listing = node.get("/v1/hosts?windows=10000")
    assert status == 200 and sorted(h["host"] for h in listing["hosts"]) == hosts
    # The listing's sums and each site's newest closed window equal the lake's (truth minus late),
    # its p99 and distinct clients the truth's within the sketches' bounds; the sparkline is the
    # requests of the newest windows, zero where a site had none.
    status, sparks = node.get("/v1/hosts?windows=5&sparkline=true")
    assert status == 200
    sparks = {h["host"]: h["requests_per_window"] for h in sparks["hosts"]}
    for h in listing["hosts"]:
        mine = {w: v for (host, w), v in windows.items() if host == h["host"]}
        assert (h["requests"], h["status_5xx"]) == (sum(v["requests"] for v in mine.values()),
                                                    sum(v["status"][4] for v in mine.values())), h["host"]
        newest, latest = max(mine), h["latest"]
        assert (START_MS(latest["start"]), latest["requests"], latest["partitions"]) == (newest, mine[newest]["requests"], 1)
        if (h["host"], newest) not in late:
            exact = exact_quantile(truth.latencies[(h["host"], newest)], 0.99)
            assert abs(latest["latency_p99_ms"] - exact) <= exact * 0.01 + 1e-9, h
            distinct = len(truth.clients[(h["host"], newest)])
            assert abs(latest["unique_clients"] - distinct) <= distinct * 0.02 + 1, h
        assert sparks[h["host"]] == [mine.get(newest - i * WINDOW_MS, {"requests": 0})["requests"] for i in range(4, -1, -1)]
    for host in hosts:
        status, series = node.get(f"/v1/hosts/{urllib.parse.quote(host)}/windows?{RANGE}")
        assert status == 200, series
        api = {START_MS(w["start"]): w for w in series["windows"]}
        mine = {w: v for (h, w), v in windows.items() if h == host}
        assert set(api) == set(mine), host
        for start, w in api.items():
            v = mine[start]
            status_classes = [w["status"][c] for c in ("1xx", "2xx", "3xx", "4xx", "5xx")]
            assert (w["requests"], w["bytes"], status_classes, w["final"]) == (v["requests"], v["bytes"], v["status"], True)


def START_MS(s):
    from conftest import parse_ts

    return parse_ts(s)


def test_node_matches_ground_truth(node_factory, truth):
    node = node_factory(SOURCE).start()
    node.wait_finished()
    check_exact(node, truth)

    # Bad parameters get a 4xx that says what is wrong.
    host = sorted({h for h, _ in truth.windows})[0]
    for path, code, words in [
        ("/v1/hosts/no.such.host/windows", 404, "unknown host"),
        (f"/v1/hosts/{host}/windows?from=yesterday", 400, "RFC 3339"),
        (f"/v1/hosts/{host}/windows?from=2026-01-01T01:00:00Z&to=2026-01-01T00:00:00Z", 400, "before"),
        (f"/v1/hosts/{host}/top?dimension=path&k=0", 400, "`k`"),
        (f"/v1/hosts/{host}/top?dimension=colour", 400, "dimension"),
        ("/v1/anomalies?since=soon", 400, "since"),
    ]:
        status, body = node.get(path)
        assert status == code and words in body["error"], (path, status, body)

    # Top status codes are exact: they must equal the lake's per-code counts summed over the range.
    status, top = node.get(f"/v1/hosts/{host}/top?dimension=status&k=3&{RANGE}")
    codes = {}
    for (row,) in q(node.lake, f"select status_codes from '{{lake}}/windows/*/*/*.parquet' where host = '{host}'"):
        for code, n in json.loads(row).items():
            codes[code] = codes.get(code, 0) + n
    expected = sorted(codes.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    assert status == 200 and [(e["key"], e["count"]) for e in top["entries"]] == expected
    assert top["requests"] == sum(codes.values())
    status, spec = node.get("/openapi.json")
    assert status == 200 and "/v1/hosts/{host}/windows" in spec["paths"]
    status, metrics = node.get("/metrics")
    text = metrics.decode()
    for name in ["wtm_events_total", "wtm_actor_mailbox_depth", "wtm_actor_handle_seconds_bucket",
                 "wtm_actor_restarts_total", "wtm_checkpoint_duration_seconds_bucket", "wtm_late_events_total",
                 "wtm_invalid_total", "wtm_lake_files_total", "wtm_windows_closed_total"]:
        assert name in text, name

    # Started again, the node serves the same history as soon as it says it is ready: the API's
    # window history is read back from the lake beside the restore, and /readyz waits for it.
    node.stop()
    node.start()
    check_exact(node, truth)


def test_sigkill_mid_run_loses_and_duplicates_nothing(node_factory, truth):
    node = node_factory(SOURCE, checkpoint={"interval_ms": 200}, lake={"flush_interval_ms": 700})
    node.start()
    for share in (0.25, 0.6):
        while node.overview()["events"] < share * truth.events:
            pass
        node.kill()
        node.start()
    node.wait_finished()
    check_exact(node, truth)
    # The restarts restored every partition from its checkpoint (each restore raises the epoch; a
    # partition that had finished before a kill writes no newer checkpoint, so ≥ 2, not 3).
    assert all(e >= 2 for e in epochs(node).values()), epochs(node)


def test_bad_config_fails_at_startup_naming_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[window]\nsise_s = 30\n")
    r = subprocess.run([WTM, "run", "--config", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "sise_s" in r.stderr, r.stderr
    env = dict(os.environ, WTM__WINDOW__SIZE_S="0")
    r = subprocess.run([WTM, "config"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode != 0 and "window.size_s" in r.stderr, r.stderr
    # A cluster over the per-node generator would merge different events as one partition.
    env = dict(os.environ, WTM__CLUSTER__LISTEN="127.0.0.1:7400", WTM__CLUSTER__COOKIE="x")
    r = subprocess.run([WTM, "config"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode != 0 and "cluster.listen" in r.stderr and "kafka" in r.stderr, r.stderr


def test_sigterm_checkpoints_then_a_restart_resumes_exactly(node_factory, truth):
    node = node_factory(SOURCE)
    node.start()
    while node.overview()["events"] < 0.3 * truth.events:
        pass
    node.stop()
    assert node.proc.returncode == 0, node.log()
    node.start()
    # Every partition resumed from the checkpoint the orderly stop left (its second epoch).
    assert sorted(epochs(node).values()) == [2, 2, 2, 2], epochs(node)
    node.wait_finished()
    check_exact(node, truth)
