"""Lake upkeep at a day's scale: how many files a day of windows makes, what `wtm compact` does to
them, and how long DuckDB takes over the day through the Delta logs before and after.

The case: one UTC day (2026-01-01) of generated traffic, 300 sites, 4 log files (4 partitions),
`wtm batch` into a fresh lake (the raw-events archive off, as `wtm batch` defaults), then
`wtm compact --before 2026-01-02T00:00:00Z`, then `wtm retention --keep 3650 --grace-hours 0` (the
vacuum, so the replaced files are gone from disk too). Queries (DuckDB `delta_scan`, median of 5
runs, a fresh connection each):

- day:   requests and 5xx per site over the day
- site:  one site's hourly requests (a host predicate: the compacted files are sorted by host)
- paths: the day's top 10 paths over all sites (unnests every window's top-K)

Usage: lake_upkeep.py WTM
"""

import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from deltalake import DeltaTable

from node_throughput import machine, write_results

OUT = pathlib.Path(__file__).with_name("RESULTS-lake.md")
HOSTS, RATE, FILES = 300, 25.0, 4


def duck():
    import duckdb
    import importlib.util

    spec = importlib.util.find_spec("duckdb_ext")
    ext = pathlib.Path(list(spec.submodule_search_locations)[0]) / "extensions"
    con = duckdb.connect(config={"extension_directory": str(ext)})
    con.execute("LOAD delta")
    return con


QUERIES = {
    "day": "select host, sum(requests), sum(status_5xx) from delta_scan('{w}') group by host",
    "site": "select epoch_ms(date_trunc('hour', window_start)), sum(requests) from delta_scan('{w}') "
            "where host = '{host}' group by 1 order by 1",
    "paths": "select e.key, sum(e.count) n from (select unnest(from_json(top_paths, "
             "'[{{\"key\":\"VARCHAR\",\"count\":\"BIGINT\"}}]')) e from delta_scan('{w}')) group by 1 "
             "order by n desc limit 10",
}


def timed(sql):
    times, result = [], None
    for _ in range(5):
        con = duck()
        t = time.perf_counter()
        result = con.execute(sql).fetchall()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def files(lake):
    out = {}
    for table in ("windows", "late", "invalid"):
        p = lake / table
        if (p / "_delta_log").exists():
            active = len(DeltaTable(str(p)).file_uris())
            on_disk = len(list(p.glob("dt=*/hour=*/*.parquet")))
            out[table] = (active, on_disk)
    return out


def measure(lake, host):
    w = lake / "windows"
    return {name: timed(sql.format(w=w, host=host)) for name, sql in QUERIES.items()}


def main():
    wtm = sys.argv[1]
    with tempfile.TemporaryDirectory(prefix="wtm-bench-lake-") as tmp:
        tmp = pathlib.Path(tmp)
        logs = []
        for i in range(FILES):
            f = tmp / f"part-{i}.json"
            subprocess.run([wtm, "generate", "--seed", str(100 + i), "--hosts", str(HOSTS), "--rate", str(RATE),
                            "--start", "2026-01-01T00:00:00Z", "--duration", "1d", "--anomalies", "0",
                            "--partitions", "1", "--out", str(f)], check=True)
            logs.append(f)
        lake = tmp / "data" / "lake"
        t = time.perf_counter()
        r = subprocess.run([wtm, "batch", "--quiet", "--json", "--data-dir", str(tmp / "data"), *map(str, logs)],
                           check=True, capture_output=True, text=True)
        batch_s = time.perf_counter() - t
        events = json.loads(r.stdout)["events"]
        host = duck().execute(f"select host from delta_scan('{lake}/windows') group by host order by sum(requests) desc limit 1").fetchone()[0]
        before_files = files(lake)
        before = measure(lake, host)
        cfg = tmp / "lake.toml"
        cfg.write_text(f'[lake]\npath = "{lake}"\n')
        t = time.perf_counter()
        r = subprocess.run([wtm, "compact", "--config", str(cfg), "--before", "2026-01-02T00:00:00Z", "--json"],
                           check=True, capture_output=True, text=True)
        compact_s = time.perf_counter() - t
        report = json.loads(r.stdout)
        after_compact_files = files(lake)
        after = measure(lake, host)
        subprocess.run([wtm, "retention", "--config", str(cfg), "--keep", "3650", "--grace-hours", "0"],
                       check=True, capture_output=True)
        vacuumed_files = files(lake)
        vacuumed = measure(lake, host)
        for name in QUERIES:
            assert sorted(before[name][1]) == sorted(after[name][1]) == sorted(vacuumed[name][1]), name
    lines = [
        "# Lake upkeep: a day's files and DuckDB over them, before and after `wtm compact`",
        "",
        f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d')}. Produced by `bench/run lake` "
        f"(bench/lake_upkeep.py; its docstring has the case).",
        "",
        f"Input: one day, {HOSTS} sites, {FILES} files (partitions), {events:,} events; `wtm batch` {batch_s:.1f} s. "
        f"`wtm compact` of the day: {compact_s:.1f} s, {report['hours_compacted']} hours, "
        f"{report['files_before']:,} files → {report['files_after']:,}.",
        "",
        "| lake state | windows files (in table / on disk) | late files | day query s | site query s | paths query s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, f, m in [("as written", before_files, before), ("compacted", after_compact_files, after),
                        ("compacted + vacuumed", vacuumed_files, vacuumed)]:
        wf, lf = f.get("windows", (0, 0)), f.get("late", (0, 0))
        lines.append(f"| {label} | {wf[0]:,} / {wf[1]:,} | {lf[0]:,} / {lf[1]:,} | "
                     f"{m['day'][0]:.3f} | {m['site'][0]:.3f} | {m['paths'][0]:.3f} |")
    lines += ["", "Every query returns the same rows in all three states (checked by the script).", ""]
    write_results(OUT, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
