"""Lake upkeep on a lake a real node wrote: `wtm compact` (while the node writes, while a reader
polls, killed at random points and rerun) and `wtm retention`. Every table is read through its
Delta log (DuckDB's `delta_scan`, and delta-rs) and compared with ground truth counted from
`wtm generate`'s output with the same flags."""

import json
import os
import random
import shutil
import subprocess
import sys
import time

import pytest
from deltalake import DeltaTable

from conftest import WINDOW_MS, WTM, Truth, duck, generate, parse_ts

# Four hours across midnight: two hours of 2025-12-31, two of 2026-01-01.
START = "2025-12-31T22:00:00Z"
SOURCE = dict(seed=23, hosts=20, rate=40.0, realtime=False, start=START, duration_s=4 * 3600, anomalies=0,
              malformed_share=0.001, partitions=4)
GEN_FLAGS = dict(seed=23, hosts=20, rate=40.0, start=START, duration=4 * 3600, anomalies=0, malformed_share=0.001,
                 partitions=4)
MIDNIGHT = "2026-01-01T00:00:00Z"
MIDNIGHT_MS = parse_ts(MIDNIGHT)


def per_window(lake, before_ms=None):
    """(host, window) -> requests of windows + late, read through the tables' logs."""
    con = duck()
    cond = f"where epoch_ms(window_start) < {before_ms}" if before_ms else ""
    out = {}
    for host, w, n in con.execute(
            f"select host, epoch_ms(window_start), sum(requests) from delta_scan('{lake}/windows') {cond} group by all").fetchall():
        out[(host, w)] = out.get((host, w), 0) + n
    if (lake / "late" / "_delta_log").exists():
        cond = f"where epoch_ms(ts) < {before_ms}" if before_ms else ""
        for host, w, n in con.execute(
                f"""select host, (epoch_ms(ts) // {WINDOW_MS}) * {WINDOW_MS}, count(*) from delta_scan('{lake}/late')
                    {cond} group by all""").fetchall():
            out[(host, w)] = out.get((host, w), 0) + n
    return out


def active_files(lake, table, dt=None):
    root = str(lake / table).rstrip("/") + "/"
    files = [u.split(root, 1)[-1] for u in DeltaTable(str(lake / table)).file_uris()]
    return sorted(f for f in files if dt is None or f.startswith(f"dt={dt}/"))


def compact(lake, *args, check=True):
    r = subprocess.run([WTM, "compact", "--config", str(lake_config(lake)), "--json", *args],
                       capture_output=True, text=True, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)
    return r


def lake_config(lake):
    cfg = lake.parent / f"{lake.name}-lake.toml"
    cfg.write_text(f'[lake]\npath = "{lake}"\n')
    return cfg


POLLER = r"""
import json, sys, time, pathlib
sys.path.insert(0, sys.argv[4])
from conftest import duck
lake, before_ms, stop = sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3])
con = duck()
seen = []
while not stop.exists():
    (n, s) = con.execute(f"select count(*), sum(requests) from delta_scan('{lake}/windows') "
                         f"where epoch_ms(window_start) < {before_ms}").fetchone()
    seen.append([n, int(s or 0)])
print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    return Truth(generate(tmp_path_factory.mktemp("gen") / "events.json", **GEN_FLAGS))


def test_compaction_and_retention_keep_every_row_once(node_factory, truth, tmp_path):
    node = node_factory(SOURCE)
    lake = node.lake
    node.start()

    # 1. Compaction running over and over while the node writes, killed at random points now and
    #    then; windows keep arriving for hours it already compacted. Nothing may be lost or doubled.
    rng = random.Random(5)
    runs = kills = 0
    while not node.overview()["finished"]:
        if not (lake / "windows" / "_delta_log").exists():
            time.sleep(0.2)
            continue
        p = subprocess.Popen([WTM, "compact", "--config", str(lake_config(lake)), "--before", "2026-01-02T00:00:00Z"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if runs % 2:
            time.sleep(rng.uniform(0.0, 0.5))
            p.kill()
            kills += 1
        _, err = p.communicate(timeout=600)
        assert p.returncode in (0, -9), err
        runs += 1
    assert runs >= 2, "the node finished before compaction could race it"
    node.wait_finished()
    time.sleep(3)  # the last group commit
    everything = "2026-01-02T00:00:00Z"
    compact(lake, "--before", everything)
    got = per_window(lake)
    want = {k: w["requests"] for k, w in truth.windows.items()}
    assert got == want
    con = duck()
    assert con.execute(f"select count(*), count(distinct (partition, \"offset\")) from delta_scan('{lake}/events')").fetchone() \
        == (truth.events, truth.events)
    assert con.execute(f"select count(*) from delta_scan('{lake}/invalid')").fetchone()[0] == truth.malformed
    # delta-rs, an independent reader of the same log, agrees on the windows.
    t = DeltaTable(str(lake / "windows")).to_pyarrow_table(columns=["requests"])
    (duck_sum,) = con.execute(f"select sum(requests) from delta_scan('{lake}/windows')").fetchone()
    assert sum(t.column("requests").to_pylist()) == duck_sum
    print(f"compaction ran {runs} times during the node's run, {kills} killed")


def test_a_reader_never_sees_a_change_and_kills_do_not_change_the_end_state(node_factory, tmp_path):
    node = node_factory(dict(SOURCE, seed=29))
    lake = node.lake
    node.start()
    node.wait_finished()
    time.sleep(3)
    node.stop()
    reference = tmp_path / "reference"
    shutil.copytree(lake, reference)

    files_before = len(active_files(lake, "windows", "2025-12-31"))
    before = per_window(lake, MIDNIGHT_MS)
    total = list(duck().execute(f"select count(*), sum(requests) from delta_scan('{lake}/windows') "
                                f"where epoch_ms(window_start) < {MIDNIGHT_MS}").fetchone())

    stop = tmp_path / "stop"
    poller = subprocess.Popen([sys.executable, "-c", POLLER, str(lake), str(MIDNIGHT_MS), str(stop),
                               os.path.dirname(__file__)], stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    rng = random.Random(9)
    for _ in range(4):
        p = subprocess.Popen([WTM, "compact", "--config", str(lake_config(lake)), "--before", MIDNIGHT, "--table", "windows"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 0.6))
        p.kill()
        p.wait()
    report = compact(lake, "--before", MIDNIGHT, "--table", "windows")
    time.sleep(1)
    stop.touch()
    seen, _ = poller.communicate(timeout=120)
    seen = json.loads(seen)
    assert len(seen) >= 3, seen
    assert {tuple(s) for s in seen} == {tuple(total)}, "a reader saw a different total during compaction"

    # Same rows, ≥ 50× fewer files, and the same end state as one uninterrupted run.
    assert per_window(lake, MIDNIGHT_MS) == before
    files_after = active_files(lake, "windows", "2025-12-31")
    assert files_before >= 50 * len(files_after), (files_before, files_after, report)
    print(f"2025-12-31 windows: {files_before} files -> {len(files_after)}; the reader polled {len(seen)} times")
    compact(reference, "--before", MIDNIGHT, "--table", "windows")
    assert active_files(reference, "windows") == active_files(lake, "windows")

    # Retention: keep one day (2026-01-01) → 2025-12-31 goes, the rest is exactly as before.
    r = subprocess.run([WTM, "retention", "--config", str(lake_config(lake)), "--keep", "1", "--now",
                        "2026-01-01T06:00:00Z", "--grace-hours", "0", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    windows = next(t for t in out["tables"] if t["table"] == "windows")
    assert windows["kept_from"] == "2026-01-01" and windows["files_removed"] == len(files_after)
    rest = per_window(lake)
    assert rest and all(w >= MIDNIGHT_MS for (_, w) in rest)
    assert rest == {k: v for k, v in per_window(reference).items() if k[1] >= MIDNIGHT_MS}
    # Vacuum with no grace: the removed files are gone from disk, so even a plain glob reader
    # now reads what the table holds.
    assert not list((lake / "windows" / "dt=2025-12-31").glob("*/*.parquet"))
    glob_rows = duck().execute(f"select count(*) from read_parquet('{lake}/windows/*/*/*.parquet')").fetchone()[0]
    table_rows = duck().execute(f"select count(*) from delta_scan('{lake}/windows')").fetchone()[0]
    assert glob_rows == table_rows
