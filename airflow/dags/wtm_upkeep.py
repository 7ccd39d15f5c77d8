"""Shared pieces of wtm's DAGs: settings from Airflow Variables, running `wtm`, reading the lake.

Every setting is an Airflow Variable (set in the UI, with `airflow variables set`, or as the
environment variable AIRFLOW_VAR_<NAME>):

- `wtm_bin`                 path of the `wtm` binary (default: `wtm` on the PATH)
- `wtm_config`              the TOML whose `[lake]` names the lake (required)
- `wtm_compact_delay_hours` hours an hour must be over before it is compacted (default 1)
- `wtm_retention_keep`      `--keep` values, space separated (default `30`, e.g. `30 events=7`)
- `wtm_vacuum_grace_hours`  how long removed files stay for running queries (default 168)
- `wtm_backfill_source`     a directory or `s3://bucket/prefix` holding one folder per day
                            (`<source>/YYYY-MM-DD/`) of access-log files (backfill DAG)
- `wtm_backfill_config`     the TOML the backfill runs with (default: `wtm_config`)
- `wtm_node_urls`           comma-separated API base URLs of the nodes (data-quality DAG)
- `wtm_api_token`           the nodes' API bearer token, if they require one
- `wtm_lake_storage_options` JSON of delta-rs storage options for an S3 lake (endpoint, keys)
- `wtm_spark_python`        a Python with pyspark and delta-spark for the daily report (unset:
                            the report task is skipped)
- `wtm_report_dir`          where the daily report goes (default `<lake>/reports` locally)

S3 sources read with boto3 from the Airflow Connection `wtm_logs_s3` when it exists (login =
access key, password = secret key, extra `{"endpoint_url": …, "region_name": …}`), otherwise from
the standard AWS environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
import urllib.request
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Variable
from airflow.timetables.interval import CronDataIntervalTimetable


def dag(dag_id, cron, doc, retries=1, retry_minutes=10, tags=()):
    """One of wtm's DAGs: runs cover data intervals of `cron` (UTC), never catch up, one at a time."""
    return DAG(
        dag_id=dag_id,
        schedule=CronDataIntervalTimetable(cron, timezone="UTC"),
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        default_args={"retries": retries, "retry_delay": timedelta(minutes=retry_minutes)},
        tags=["wtm", "lake", *tags],
        doc_md=doc,
    )


def var(name, default=None):
    value = Variable.get(name, default=default)
    if value is None:
        raise ValueError(f"Airflow Variable {name} is not set (see airflow/dags/wtm_upkeep.py)")
    return value


def wtm(*args, config=None):
    """Run `wtm ARGS --config CONFIG --json` and return its JSON; fail with its stderr."""
    cmd = [var("wtm_bin", "wtm"), *args, "--config", config or var("wtm_config"), "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    print(r.stdout)
    return json.loads(r.stdout)


def lake_location(config=None):
    """The lake the config names: a local path or an s3:// URL (as `wtm` resolves it)."""
    path = config or var("wtm_config")
    with open(path, "rb") as f:
        cfg = tomllib.load(f)
    lake = cfg.get("lake", {})
    if lake.get("url"):
        return lake["url"].rstrip("/")
    if lake.get("path"):
        p = lake["path"]
        return p if os.path.isabs(p) else os.path.join(os.path.dirname(os.path.abspath(path)), p)
    data = cfg.get("node", {}).get("data_dir", "data")
    return os.path.join(data, "lake")


def storage_options():
    return json.loads(var("wtm_lake_storage_options", "{}"))


def partition_sums(lake):
    """Per partition, what the lake's tables hold: windows' requests, rows of late, invalid and
    events; read through the Delta logs (delta-rs)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    sums = {}
    for table, column in [("windows", "requests"), ("late", None), ("invalid", None), ("events", None)]:
        try:
            t = DeltaTable(f"{lake}/{table}", storage_options=storage_options())
        except TableNotFoundError:
            continue
        data = t.to_pyarrow_table(columns=["partition"] + ([column] if column else []))
        if column:
            grouped = data.group_by("partition").aggregate([(column, "sum")])
            values = zip(grouped.column("partition").to_pylist(), grouped.column(f"{column}_sum").to_pylist())
        else:
            grouped = data.group_by("partition").aggregate([("partition", "count")])
            values = zip(grouped.column("partition").to_pylist(), grouped.column("partition_count").to_pylist())
        key = {"windows": "window_requests", "late": "late", "invalid": "invalid", "events": "raw"}[table]
        for p, n in values:
            sums.setdefault(p, {}).setdefault(key, 0)
            sums[p][key] += int(n or 0)
    return sums


def overview(url):
    req = urllib.request.Request(url.rstrip("/") + "/v1/overview")
    token = Variable.get("wtm_api_token", default=None)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


MEASURES = ("window_requests", "late", "invalid", "raw")


def quality_problems(before, lake, after):
    """What disagrees between two overviews and the lake read between them: per partition and
    measure, the lake must hold at least what was published before the read and at most what
    was published after it; and the published must never exceed what came in."""
    problems = []
    for ov in (before, after):
        if ov.get("partial"):
            problems.append(f"a node did not answer for the cluster (missing: {ov.get('missing')}); cannot check")
            return problems
    first = {p["partition"]: p["published"] for p in before["partitions"]}
    last = {p["partition"]: p["published"] for p in after["partitions"]}
    for part in sorted(set(first) | set(last) | set(lake)):
        lo, hi, got = first.get(part, {}), last.get(part, {}), lake.get(part, {})
        for m in MEASURES:
            a, b, n = lo.get(m, 0), hi.get(m, 0), got.get(m, 0)
            if not a <= n <= b:
                problems.append(f"partition {part} {m}: the lake holds {n}, the nodes published {a}..{b}")
    pub = after["published"]
    if pub["window_requests"] + pub["late"] > after["events"]:
        problems.append(f"published windows + late ({pub['window_requests']} + {pub['late']}) exceed the events in ({after['events']})")
    if pub["invalid"] > after["invalid_total"]:
        problems.append(f"published invalid ({pub['invalid']}) exceeds the invalid records counted ({after['invalid_total']})")
    return problems
