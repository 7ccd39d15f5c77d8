"""`wtm batch` side by side with the tools people use today, on the same file and the same job.

Input: `wtm generate --seed 42 --hosts 1000 --count 10000000 --format vhost_combined` (request times
included), written once under ~/.cache/wtm-bench and reused.

The job, for every tool: per host and per minute — requests, status classes, bytes, p99 latency,
approximate unique clients, top-10 paths.

- wtm batch (every aggregate on; the lake written as Parquet);
- DuckDB (one streaming `COPY (… GROUP BY …)` over read_csv, with approx_quantile / approx_count_distinct / approx_top_k);
- GoAccess (its own aggregation, JSON report; it has no per-minute-per-host breakdown, so it does
  less work than the others: noted in the results);
- PySpark (local[*], the same aggregation with percentile_approx / approx_count_distinct and a
  window for the top paths).

wtm and DuckDB run BENCH_RUNS times (default 3), GoAccess and PySpark BENCH_SLOW_RUNS (default 1;
0 leaves them out); the median wall time is reported, with CPU time
(user+sys of the process tree) and peak RSS. The per-host request totals must agree across every
tool, or the comparison is void and the script fails. Then each tool's per-minute answers are
checked against the exact ones (p99 within 1%, unique clients within 2%, the top-10 paths).
"""

import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from node_throughput import write_results

WTM = sys.argv[1]
PY = sys.executable
HERE = pathlib.Path(__file__).resolve().parent
CACHE = pathlib.Path.home() / ".cache" / "wtm-bench"
LINES = int(os.environ.get("BENCH_LINES", 10_000_000))
RUNS = int(os.environ.get("BENCH_RUNS", 3))
# GoAccess and PySpark take minutes per run here; their spread is small next to their gap.
SLOW_RUNS = int(os.environ.get("BENCH_SLOW_RUNS", 1))
INPUT = CACHE / f"access-{LINES}.log"
GOACCESS_FORMAT = '%v:%^ %h %^[%d:%t %^] "%r" %s %b "%R" "%u" %T'

LOGS_SQL = r"""
select split_part(vhost, ':', 1) as host,
       strptime(substr(day, 2), '%d/%b/%Y:%H:%M:%S') as ts,
       split_part(request, ' ', 2) as path,
       status, coalesce(try_cast(bytes as bigint), 0) as bytes, ip, rt * 1000 as latency_ms
from read_csv('{input}', delim = ' ', quote = '"', escape = '\', header = false, auto_detect = false,
              strict_mode = false,
              columns = {{'vhost': 'VARCHAR', 'ip': 'VARCHAR', 'ident': 'VARCHAR', 'user': 'VARCHAR',
                         'day': 'VARCHAR', 'tz': 'VARCHAR', 'request': 'VARCHAR', 'status': 'INTEGER',
                         'bytes': 'VARCHAR', 'referrer': 'VARCHAR', 'ua': 'VARCHAR', 'rt': 'DOUBLE'}})
"""

DUCKDB_SQL = r"""
-- One streaming pass: the CTE is inlined into the aggregation (no table of all rows).
copy (
  with logs as (""" + LOGS_SQL + r""")
  select host, date_trunc('minute', ts) as minute, count(*) as requests,
         count(*) filter (status < 200) as s1xx, count(*) filter (status between 200 and 299) as s2xx,
         count(*) filter (status between 300 and 399) as s3xx, count(*) filter (status between 400 and 499) as s4xx,
         count(*) filter (status >= 500) as s5xx, sum(bytes) as bytes,
         approx_quantile(latency_ms, 0.99) as p99, approx_count_distinct(ip) as unique_clients,
         approx_top_k(path, 10) as top_paths
  from logs group by all
) to '{out}/duckdb.parquet' (format parquet);
"""

PYSPARK = r"""
import sys
from pyspark.sql import SparkSession, Window, functions as F
spark = (SparkSession.builder.master("local[*]").appName("wtm-bench")
         .config("spark.ui.enabled", "false").config("spark.driver.memory", "6g")
         .config("spark.sql.shuffle.partitions", "8").config("spark.driver.host", "127.0.0.1")
         .config("spark.sql.session.timeZone", "UTC")
         .config("spark.driver.bindAddress", "127.0.0.1").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
rx = r'^(\S+?):\d+ (\S+) \S+ \S+ \[([^\]]+)\] "\S+ (\S+)[^"]*" (\d{3}) (\d+|-) "[^"]*" "[^"]*" ([\d.]+)$'
raw = spark.read.text(sys.argv[1])
logs = raw.select(
    F.regexp_extract("value", rx, 1).alias("host"),
    F.to_timestamp(F.regexp_extract("value", rx, 3), "dd/MMM/yyyy:HH:mm:ss Z").alias("ts"),
    F.regexp_extract("value", rx, 4).alias("path"),
    F.regexp_extract("value", rx, 5).cast("int").alias("status"),
    F.coalesce(F.regexp_extract("value", rx, 6).cast("long"), F.lit(0)).alias("bytes"),
    F.regexp_extract("value", rx, 2).alias("ip"),
    (F.regexp_extract("value", rx, 7).cast("double") * 1000).alias("latency_ms"),
).withColumn("minute", F.date_trunc("minute", "ts"))
logs.cache()
agg = logs.groupBy("host", "minute").agg(
    F.count("*").alias("requests"),
    *[F.sum(F.when((F.col("status") >= c * 100) & (F.col("status") < c * 100 + 100), 1).otherwise(0)).alias(f"s{c}xx") for c in range(1, 6)],
    F.sum("bytes").alias("bytes"),
    F.percentile_approx("latency_ms", 0.99).alias("p99"),
    F.approx_count_distinct("ip").alias("unique_clients"),
)
w = Window.partitionBy("host", "minute").orderBy(F.desc("count"), "path")
top = (logs.groupBy("host", "minute", "path").count()
       .withColumn("rank", F.row_number().over(w)).where("rank <= 10")
       .groupBy("host", "minute").agg(F.collect_list(F.struct("path", "count")).alias("top_paths")))
agg.join(top, ["host", "minute"]).write.mode("overwrite").parquet(sys.argv[2] + "/spark")
spark.stop()
"""


TICK = os.sysconf("SC_CLK_TCK")


def _proc_tree(root):
    """Pids of `root` and all its descendants, with (CPU seconds, peak RSS MB) of each."""
    kids, stats = {}, {}
    for d in pathlib.Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            hwm = next((int(l.split()[1]) for l in (d / "status").read_text().splitlines() if l.startswith("VmHWM:")), 0)
        except OSError:
            continue
        kids.setdefault(int(fields[1]), []).append(int(d.name))
        stats[int(d.name)] = ((int(fields[11]) + int(fields[12])) / TICK, hwm / 1024)
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            tree[pid] = stats[pid]
        todo += kids.get(pid, [])
    return tree


def timed(cmd):
    """Run a command; wall seconds, CPU seconds of its whole process tree, and the peak RSS (MB)
    of its largest process. A JVM that its parent never waits for is still counted: the tree is
    sampled every 100 ms, and the exact rusage of the command itself is the floor."""
    t = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = {}
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        for q, v in _proc_tree(p.pid).items():
            seen[q] = v
        time.sleep(0.1)
    wall = time.time() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    # wait4 is exact for the command and the children it waited for; sampling covers the rest.
    waited_cpu, waited_rss = ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024
    err = p.stderr.read().decode(errors="replace")
    if p.returncode:
        raise SystemExit(f"{cmd[0]} failed with status {p.returncode}: {err[-2000:]}")
    sampled_cpu = sum(c for c, _ in seen.values())
    sampled_rss = max((r for _, r in seen.values()), default=0.0)
    return wall, max(waited_cpu, sampled_cpu), max(waited_rss, sampled_rss)


def ensure_input():
    CACHE.mkdir(parents=True, exist_ok=True)
    if not INPUT.exists():
        tmp = INPUT.with_suffix(".tmp")
        subprocess.run([WTM, "generate", "--seed", "42", "--hosts", "1000", "--rate", "1000", "--count", str(LINES),
                        "--format", "vhost_combined", "--out", str(tmp)], check=True)
        tmp.rename(INPUT)
    return INPUT


def memory_case(gb):
    """Peak RSS of `wtm batch` on a ~`gb` GB input (same generator, more lines): memory should
    depend on open windows and sketches, not on input size."""
    n = int(gb * 1e9 / (INPUT.stat().st_size / LINES))
    path = CACHE / f"access-{n}.log"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        subprocess.run([WTM, "generate", "--seed", "43", "--hosts", "1000", "--rate", "1000", "--count", str(n),
                        "--format", "vhost_combined", "--out", str(tmp)], check=True)
        tmp.rename(path)
    with tempfile.TemporaryDirectory(dir=CACHE) as d:
        wall, cpu, rss = timed([WTM, "batch", "--quiet", "--format", "vhost_combined", "--data-dir", d, str(path)])
    return {"gb": path.stat().st_size / 1e9, "lines": n, "wall_s": wall, "peak_rss_mb": rss}


def duck(sql):
    import duckdb
    return duckdb.connect().execute(sql).fetchall()


# The exact answer per (host, minute), computed from the input by DuckDB without sketches: the
# p99 between the values at ranks floor and ceil of (n - 1) * 0.99 of the sorted latencies (wtm's
# sketch tests use the floor; other tools round up or interpolate, which at a handful of requests
# a minute is a different value), distinct clients, and every path's count.
TRUTH_SQL = r"""
set TimeZone = 'UTC';
create temp table logs as """ + LOGS_SQL + r""";
create temp table truth as
  select host, date_trunc('minute', ts) as minute,
         list_sort(list(latency_ms)) as lat,
         lat[floor((count(*) - 1) * 0.99)::bigint + 1] as p99_lo,
         lat[ceil((count(*) - 1) * 0.99)::bigint + 1] as p99_hi,
         count(distinct ip) as uniq
  from logs group by all;
create temp table path_counts as
  select host, date_trunc('minute', ts) as minute, path, count(*) as c from logs group by all;
create temp table top_truth as
  select host, minute, list(c order by c desc)[1:10] as counts, count(*) as paths
  from path_counts group by all;
drop table logs;
alter table truth drop column lat;
"""

# Each tool's answer as (host, minute, p99, uniq, top: its top paths' names).
ANSWERS = {
    "wtm batch": """select host, window_start::timestamp as minute, latency_p99_ms as p99,
                           unique_clients as uniq,
                           list_transform(from_json(top_paths, '[{{"key": "VARCHAR"}}]'), x -> x.key) as top
                    from read_parquet('{out}/lake/windows/*/*/*.parquet')""",
    "DuckDB": """select host, minute, p99, unique_clients as uniq, top_paths as top
                 from read_parquet('{out}/duckdb.parquet')""",
    "PySpark": """select host, minute, p99, unique_clients as uniq,
                         list_transform(top_paths, x -> x.path) as top
                  from read_parquet('{out}/spark/*.parquet')""",
}

# wtm_core::agg::TOP_K_CAPACITY: under it a window's top-K counts are exact.
TOP_K_CAPACITY = 100

# A top-10 is right when the exact counts of the paths it names are the 10 largest exact counts
# (ties may name either path).
ACCURACY_SQL = r"""
with r as ({answer}),
named as (
  select u.host, u.minute, list(pc.c order by pc.c desc) as counts
  from (select host, minute, unnest(top) as path from r) u
  left join path_counts pc using (host, minute, path) group by all
)
select count(*) as groups,
       count(r.host) as answered,
       count(*) filter (r.p99 between t.p99_lo * (1 - 0.01 * 1.0001) and t.p99_hi * (1 + 0.01 * 1.0001)) as p99_ok,
       max(greatest(t.p99_lo - r.p99, r.p99 - t.p99_hi, 0) / t.p99_lo) as p99_worst,
       count(*) filter (abs(r.uniq - t.uniq) <= t.uniq * 0.02) as uniq_ok,
       max(abs(r.uniq - t.uniq) / t.uniq) as uniq_worst,
       count(*) filter (coalesce(named.counts, []) = tt.counts) as top_ok,
       count(*) filter (tt.paths <= {cap}) as few_paths,
       count(*) filter (tt.paths <= {cap} and coalesce(named.counts, []) = tt.counts) as few_paths_top_ok
from truth t join top_truth tt using (host, minute)
left join r using (host, minute) left join named using (host, minute)
where (t.host, t.minute) not in (select (host, minute) from late_groups)
"""

# The (host, minute) groups where wtm's run found events later than its allowed lateness: those
# events are in the lake's `late` table, not in the window, so no window answer covers them.
LATE_SQL = r"""
create temp table late_groups as
  select distinct host, date_trunc('minute', ts::timestamp) as minute from {late}
"""


def accuracy(src, outs):
    """Per tool: of every (host, minute) of the input without a late event in wtm's run, how many
    answers have the p99 within 1% of the exact one, the unique clients within 2%, the exact
    top-10 paths; and the worst errors. Also how many groups were left out for late events."""
    import duckdb
    db = duckdb.connect()
    db.execute(TRUTH_SQL.format(input=src))
    late = outs["wtm batch"] / "lake" / "late"
    late = f"read_parquet('{late}/*/*/*.parquet')" if late.exists() else "(select null::varchar as host, null::timestamp as ts where false)"
    db.execute(LATE_SQL.format(late=late))
    late_groups = db.execute("select count(*) from late_groups").fetchone()[0]
    found = {}
    for name, out in outs.items():
        row = db.execute(ACCURACY_SQL.format(answer=ANSWERS[name].format(out=out), cap=TOP_K_CAPACITY)).fetchone()
        cols = ["groups", "answered", "p99_ok", "p99_worst", "uniq_ok", "uniq_worst", "top_ok",
                "few_paths", "few_paths_top_ok"]
        found[name] = dict(zip(cols, row))
        print("accuracy", name, found[name], flush=True)
    return found, late_groups


def host_totals_wtm(out):
    lake = out / "lake"
    rows = dict(duck(f"select host, sum(requests) from read_parquet('{lake}/windows/*/*/*.parquet') group by all"))
    if (lake / "late").exists():
        for h, n in duck(f"select host, count(*) from read_parquet('{lake}/late/*/*/*.parquet') group by all"):
            rows[h] = rows.get(h, 0) + n
    return rows


def versions(tools):
    """Versions of the tools that ran."""
    import duckdb
    out = {"wtm": subprocess.run([WTM, "--version"], capture_output=True, text=True).stdout.strip(),
           "duckdb": duckdb.__version__}
    if "GoAccess" in tools:
        out["goaccess"] = subprocess.run(["goaccess", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    if "PySpark" in tools:
        spark = subprocess.run([PY, "-c", "import pyspark; print(pyspark.__version__)"], capture_output=True, text=True).stdout.strip()
        java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()[0]
        out["pyspark"] = f"{spark} ({java})"
    return out


MEMORY_MARK = "Bounded memory:"


def memory_section():
    mem = [memory_case(1), memory_case(4)]
    return [
        f"{MEMORY_MARK} `wtm batch` on inputs of different sizes (same generator, seed 43, 1,000 hosts):",
        "",
        "| input GB | lines | wall s | peak RSS MB |",
        "|---|---|---|---|",
    ] + [f"| {m['gb']:.2f} | {m['lines']:,} | {m['wall_s']:.1f} | {m['peak_rss_mb']:.0f} |" for m in mem]


def main():
    src = ensure_input()
    if os.environ.get("BENCH_ONLY") == "memory":
        # Re-measure only the memory table of an existing results file.
        out = HERE / "RESULTS-batch.md"
        text = out.read_text()
        head = text.split(MEMORY_MARK)[0].rstrip("\n")
        write_results(out, [head, ""] + memory_section())
        print(out.read_text())
        return
    size_gb = src.stat().st_size / 1e9
    tools = {}
    totals = {}
    with tempfile.TemporaryDirectory(dir=CACHE) as d:
        d = pathlib.Path(d)
        def run_wtm(i):
            out = d / f"wtm-{i}"
            r = timed([WTM, "batch", "--quiet", "--format", "vhost_combined", "--data-dir", str(out), str(src)])
            totals["wtm batch"] = host_totals_wtm(out)
            return r

        def run_duckdb(i):
            out = d / f"duck-{i}"
            out.mkdir()
            sql = DUCKDB_SQL.format(input=src, out=out)
            r = timed([PY, "-c", f"import duckdb; duckdb.connect().execute({sql!r})"])
            totals["DuckDB"] = dict(duck(f"select host, sum(requests)::bigint from '{out}/duckdb.parquet' group by all"))
            return r

        def run_goaccess(i):
            out = d / f"goaccess-{i}.json"
            r = timed(["goaccess", str(src), "--log-format", GOACCESS_FORMAT, "--date-format", "%d/%b/%Y",
                       "--time-format", "%T", "--no-progress", "--max-items", "100000", "-o", str(out)])
            report = json.loads(out.read_text())
            totals["GoAccess"] = {v["data"]: v["hits"]["count"] for v in report["vhosts"]["data"]}
            return r

        def run_spark(i):
            script = d / "job.py"
            script.write_text(PYSPARK)
            out = d / f"spark-{i}"
            r = timed([PY, str(script), str(src), str(out)])
            totals["PySpark"] = dict(duck(f"select host, sum(requests)::bigint from read_parquet('{out}/spark/*.parquet') group by all"))
            return r

        for name, fn, n in [("wtm batch", run_wtm, RUNS), ("DuckDB", run_duckdb, RUNS),
                            ("GoAccess", run_goaccess, SLOW_RUNS), ("PySpark", run_spark, SLOW_RUNS)]:
            if n == 0:  # BENCH_SLOW_RUNS=0 leaves GoAccess and PySpark out
                continue
            runs = [fn(i) for i in range(n)]
            tools[name] = {
                "wall_s": statistics.median(r[0] for r in runs),
                "cpu_s": statistics.median(r[1] for r in runs),
                "peak_rss_mb": max(r[2] for r in runs),
                "runs": len(runs),
            }
            print(name, json.dumps(tools[name]), flush=True)
        # The last run's answers, against the exact ones (GoAccess has no per-minute answer).
        last = {"wtm batch": d / f"wtm-{RUNS - 1}", "DuckDB": d / f"duck-{RUNS - 1}",
                "PySpark": d / f"spark-{SLOW_RUNS - 1}"}
        found, late_groups = accuracy(src, {name: out for name, out in last.items() if name in tools})
    # wtm's bounds are guarantees, not odds: every minute answered, every p99 within 1%, every
    # top-10 exact under the top-K capacity (uniques are HLL's odds: reported, not asserted).
    w = found["wtm batch"]
    for got, want, what in [(w["answered"], w["groups"], "minutes answered"), (w["p99_ok"], w["groups"], "p99 within 1%"),
                            (w["few_paths_top_ok"], w["few_paths"], "top-10 right under the top-K capacity")]:
        if got != want:
            raise SystemExit(f"wtm batch: {what}: {got} of {want}")

    reference = totals["wtm batch"]
    agree = {name: t == reference for name, t in totals.items()}
    assert sum(reference.values()) == LINES, f"wtm counted {sum(reference.values())} of {LINES} lines"
    for name, ok in agree.items():
        if not ok:
            diff = {h for h in set(reference) | set(totals[name]) if reference.get(h) != totals[name].get(h)}
            raise SystemExit(f"per-host totals of {name} differ from wtm's on {len(diff)} hosts, e.g. {sorted(diff)[:5]}: comparison void")

    cores = os.cpu_count()
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    v = versions(tools)
    wtm_wall = tools["wtm batch"]["wall_s"]
    lines = [
        "# `wtm batch` against DuckDB, GoAccess and PySpark",
        "",
        f"Machine: {cores} cores, {model}, {platform.system()} {platform.release()}. Run: `bench/run batch` on {time.strftime('%Y-%m-%d')}.",
        "",
        f"Input: {LINES:,} lines of `vhost_combined` with request times, 1,000 hosts, {size_gb:.2f} GB, from",
        "`wtm generate --seed 42 --hosts 1000 --rate 1000`. The job: per host and minute — requests, status",
        "classes, bytes, p99 latency, approximate unique clients, top-10 paths. Median wall time of the runs;",
        "CPU = user + sys of the process tree (sampled for processes the tool does not wait for, e.g. Spark's JVM).",
        "Per-host request totals agree across all tools (checked by the script).",
        "",
        "Versions: " + "; ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        "| tool | runs | wall s | CPU s | lines/s | lines per CPU-second | peak RSS MB | wall time vs wtm |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, t in tools.items():
        lines.append(f"| {name} | {t['runs']} | {t['wall_s']:.1f} | {t['cpu_s']:.1f} | {LINES / t['wall_s']:,.0f} | "
                     f"{LINES / t['cpu_s']:,.0f} | {t['peak_rss_mb']:.0f} | {t['wall_s'] / wtm_wall:.2f}× |")
    lines += [
        "",
        "Accuracy against the exact answer (computed from the input by DuckDB without sketches) over every",
        "(host, minute): the p99 within 1% of the values at ranks ⌊(n−1)·0.99⌋ to ⌈(n−1)·0.99⌉ (wtm's DDSketch",
        "bound; the range admits other tools' rank conventions), unique clients within 2%, and the top-10",
        "paths (right when the exact counts of the paths named are the 10 largest; ties may name either",
        f"path). The last run of each tool. Left out: the {late_groups:,} (host, minute) groups with an event",
        "wtm found later than its allowed lateness (kept in the lake's `late` table, outside the window).",
        "",
        "| tool | (host, minute) answered | p99 within 1% | worst p99 error | uniques within 2% | worst uniques error | top-10 right |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, a in found.items():
        pct = lambda k: f"{a[k]:,} ({100 * a[k] / a['groups']:.2f}%)"
        lines.append(f"| {name} | {a['answered']:,} of {a['groups']:,} | {pct('p99_ok')} | {100 * (a['p99_worst'] or 0):.2f}% | "
                     f"{pct('uniq_ok')} | {100 * (a['uniq_worst'] or 0):.2f}% | {pct('top_ok')} |")
    few = next(iter(found.values()))["few_paths"]
    lines += [
        "",
        f"Of these, {few:,} minutes saw at most {TOP_K_CAPACITY} distinct paths (wtm's top-K capacity, under which its",
        f"counts are exact; above it Space-Saving's counts may be over by up to requests / {TOP_K_CAPACITY}). Top-10 right there: "
        + ", ".join(f"{name} {a['few_paths_top_ok']:,}" for name, a in found.items()) + ".",
    ]
    lines += [
        "",
        "GoAccess computes its own panels (per virtual host, not per host and minute), so it does less",
        "than the job; its row is a reference for a widely used single-threaded log analyser.",
    ]
    if os.environ.get("BENCH_MEMORY", "1") == "1":
        lines += [""] + memory_section()
    out = HERE / "RESULTS-batch.md"
    write_results(out, lines)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
