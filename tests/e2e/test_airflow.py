"""The Airflow DAGs (airflow/dags/), each run with `airflow dags test` against a real lake made by
a real node or by `wtm batch`: compaction, retention with the Spark daily report, backfill, and
the data-quality check. Airflow and PySpark come from scripts/airflow (venvs under ~/.cache)."""

import json
import os
import pathlib
import shutil
import subprocess

import pytest
from deltalake import DeltaTable

from conftest import WINDOW_MS, WTM, Truth, duck, generate, parse_ts
from test_s3 import s3  # noqa: F401 - the fixture: SeaweedFS from scripts/s3

ROOT = pathlib.Path(__file__).resolve().parents[2]
AIRFLOW = pathlib.Path.home() / ".cache/wtm-airflow-venv/bin/airflow"
SPARK_PYTHON = pathlib.Path.home() / ".cache/wtm-spark-venv/bin/python"


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory):
    subprocess.run([ROOT / "scripts/airflow", "install"], check=True)
    home = tmp_path_factory.mktemp("airflow")
    subprocess.run([ROOT / "scripts/airflow", "home", home], check=True, capture_output=True)
    env = dict(os.environ, AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "airflow/dags"),
               AIRFLOW__CORE__LOAD_EXAMPLES="False")
    r = subprocess.run([AIRFLOW, "dags", "list-import-errors", "-o", "json"], env=env, capture_output=True, text=True)
    # The last line is the JSON (a warning about graphviz may come first).
    assert r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1]) == [], r.stdout + r.stderr
    return env


def dags_test(env, dag_id, date, **variables):
    """Run one DAG for one logical date; (succeeded, output)."""
    env = dict(env, AIRFLOW_VAR_WTM_BIN=WTM, **{f"AIRFLOW_VAR_{k.upper()}": str(v) for k, v in variables.items()})
    r = subprocess.run([AIRFLOW, "dags", "test", dag_id, date], env=env, capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    finished = [line for line in out.splitlines() if "DagRun Finished" in line]
    assert finished, out[-4000:]
    return "state=success" in finished[-1], out


def lake_config(tmp_path, lake):
    cfg = tmp_path / "lake.toml"
    cfg.write_text(f'[lake]\npath = "{lake}"\n')
    return cfg


def per_window(lake):
    con = duck()
    return {(h, w): n for h, w, n in con.execute(
        f"select host, epoch_ms(window_start), sum(requests) from delta_scan('{lake}/windows') group by all").fetchall()}


def requests_per_window(lake):
    """Requests per (site, window) in the lake: its windows, plus its late records by the window
    their time falls in (what a ground truth counts)."""
    got = per_window(lake)
    if (lake / "late" / "_delta_log").exists():
        for h, w, n in duck().execute(
                f"select host, (epoch_ms(ts) // {WINDOW_MS}) * {WINDOW_MS}, count(*) from delta_scan('{lake}/late')"
                " group by all").fetchall():
            got[(h, w)] = got.get((h, w), 0) + n
    return got


def hour_files(lake, dt, hour):
    root = str(lake / "windows").rstrip("/") + "/"
    return [u for u in DeltaTable(str(lake / "windows")).file_uris() if u.split(root, 1)[-1].startswith(f"dt={dt}/hour={hour}/")]


@pytest.fixture(scope="module")
def batch_lake(tmp_path_factory):
    """Three hours of 2026-01-01 from `wtm batch` over a generated log (every table gets files)."""
    d = tmp_path_factory.mktemp("batch")
    log = generate(d / "in.json", seed=41, hosts=12, rate=60.0, start="2026-01-01T00:00:00Z", duration=3 * 3600,
                   malformed_share=0.002, partitions=1)
    subprocess.run([WTM, "batch", "--quiet", "--data-dir", str(d / "data"), str(log)], check=True, capture_output=True)
    return d / "data" / "lake", Truth(log)


def test_compaction_dag_cuts_files_and_keeps_totals(airflow_home, batch_lake, tmp_path):
    src, _ = batch_lake
    lake = tmp_path / "lake"
    shutil.copytree(src, lake)
    before = per_window(lake)
    files = len(hour_files(lake, "2026-01-01", "00"))
    # The run of 03:00-04:00 compacts hours that ended an hour before its end: 00:00 to 02:00.
    ok, out = dags_test(airflow_home, "wtm_lake_compact", "2026-01-01T03:00:00+00:00",
                        wtm_config=lake_config(tmp_path, lake))
    assert ok, out[-4000:]
    after = len(hour_files(lake, "2026-01-01", "00"))
    assert files >= 50 * after, (files, after)
    assert len(hour_files(lake, "2026-01-01", "02")) > 1, "the hour that had not ended an hour ago stays"
    assert per_window(lake) == before


def test_retention_dag_writes_the_spark_report_equal_to_duckdb_then_expires(airflow_home, batch_lake, tmp_path):
    src, truth = batch_lake
    lake = tmp_path / "lake"
    shutil.copytree(src, lake)
    reports = tmp_path / "reports"
    # The run at 2026-01-02 00:00 reports 2026-01-01.
    ok, out = dags_test(airflow_home, "wtm_lake_retention", "2026-01-02T00:00:00+00:00",
                        wtm_config=lake_config(tmp_path, lake), wtm_spark_python=SPARK_PYTHON,
                        wtm_report_dir=reports, wtm_retention_keep="1", wtm_vacuum_grace_hours="0")
    assert ok, out[-6000:]
    con = duck()
    spark = con.execute(f"""select host, requests, status_5xx, error_share_5xx, worst_minute_p99_ms, top_paths
                            from read_parquet('{reports}/dt=2026-01-01/*.parquet') order by host""").fetchall()
    # The same report from the lake copy before retention, computed by DuckDB.
    want = con.execute(f"""
        with w as (select host, sum(requests) r, sum(status_5xx) e, max(latency_p99_ms) p99
                   from delta_scan('{src}/windows') where dt = '2026-01-01' group by host),
             l as (select host, count(*) r, count(*) filter (status >= 500) e
                   from delta_scan('{src}/late') where dt = '2026-01-01' group by host),
             p as (select host, e.key path, sum(e.count) n
                   from (select host, unnest(from_json(top_paths, '[{{"key":"VARCHAR","count":"BIGINT"}}]')) e
                         from delta_scan('{src}/windows') where dt = '2026-01-01') group by all),
             t as (select host, to_json(list({{'path': path, 'requests': n}} order by n desc, path)[1:5]) top
                   from p group by host)
        select w.host, w.r + coalesce(l.r, 0), w.e + coalesce(l.e, 0), (w.e + coalesce(l.e, 0)) / (w.r + coalesce(l.r, 0)),
               w.p99, t.top
        from w left join l using (host) left join t using (host) order by w.host""").fetchall()
    assert len(spark) == len(want) == 12
    for got, exp in zip(spark, want):
        assert got[:3] == exp[:3] and got[4] == exp[4], (got, exp)
        assert abs(got[3] - exp[3]) < 1e-12
        assert json.loads(got[5]) == json.loads(exp[5]), got[0]
    # Requests include the late events: the report's total is every generated event of the day.
    day = (parse_ts("2026-01-01T00:00:00Z"), parse_ts("2026-01-02T00:00:00Z"))
    assert sum(r[1] for r in spark) == sum(w["requests"] for (_, t), w in truth.windows.items() if day[0] <= t < day[1])
    # Retention kept one day counted back from the run's end (2026-01-02): 2026-01-01 is gone,
    # and with no grace its files are deleted.
    assert con.execute(f"select count(*) from delta_scan('{lake}/windows')").fetchone()[0] == 0
    assert not list((lake / "windows").glob("dt=2026-01-01/*/*.parquet"))


def test_backfill_dag_twice_is_once(airflow_home, tmp_path):
    source = tmp_path / "logs"
    day = source / "2026-01-01"
    day.mkdir(parents=True)
    a = generate(day / "a.json", seed=43, hosts=8, rate=30.0, start="2026-01-01T00:00:00Z", duration=7200, partitions=1)
    generate(day / "b.json", seed=44, hosts=8, rate=30.0, start="2026-01-01T02:00:00Z", duration=3600, partitions=1)
    truth_a, truth_b = Truth(a), Truth(day / "b.json")
    want = {}
    for t in (truth_a, truth_b):
        for k, w in t.windows.items():
            want[k] = want.get(k, 0) + w["requests"]
    lake = tmp_path / "lake"
    cfg = lake_config(tmp_path, lake)
    results = []
    for _ in range(2):
        ok, out = dags_test(airflow_home, "wtm_backfill", "2026-01-02T00:00:00+00:00", wtm_config=cfg,
                            wtm_backfill_source=source)
        assert ok, out[-4000:]
        results.append((requests_per_window(lake), sorted(DeltaTable(str(lake / "windows")).file_uris())))
    assert results[0][0] == want
    assert results[1] == results[0], "a rerun of the day changed the lake"


def test_backfill_dag_reads_a_day_from_an_s3_prefix(airflow_home, tmp_path, s3):
    """The backfill's source may be an S3 prefix (a real S3 API, SeaweedFS from scripts/s3): the
    day's objects are fetched and backfilled; the lake equals the ground truth of those files."""
    logs = tmp_path / "logs"
    logs.mkdir()
    a = generate(logs / "a.json", seed=45, hosts=6, rate=30.0, start="2026-01-01T00:00:00Z", duration=3600,
                 partitions=1)
    # Another day's object under the same prefix is not the day's.
    other = generate(logs / "other.json", seed=46, hosts=6, rate=30.0, start="2026-01-02T00:00:00Z",
                     duration=600, partitions=1)
    client = s3.client()
    client.create_bucket(Bucket="access-logs")
    client.upload_file(str(a), "access-logs", "edge/2026-01-01/a.json")
    client.upload_file(str(other), "access-logs", "edge/2026-01-02/other.json")
    lake = tmp_path / "lake"
    # The DAG reads S3 the standard AWS way (the fixture set the keys); the endpoint is local.
    env = dict(airflow_home, **{k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                            "AWS_REGION", "AWS_EC2_METADATA_DISABLED")},
               AWS_ENDPOINT_URL=s3.endpoint)
    ok, out = dags_test(env, "wtm_backfill", "2026-01-02T00:00:00+00:00", wtm_config=lake_config(tmp_path, lake),
                        wtm_backfill_source="s3://access-logs/edge")
    assert ok, out[-4000:]
    assert requests_per_window(lake) == {k: w["requests"] for k, w in Truth(a).windows.items()}


def test_data_quality_dag_passes_on_a_good_lake_and_fails_on_a_damaged_one(airflow_home, node_factory, tmp_path):
    node = node_factory(dict(seed=47, hosts=10, rate=50.0, realtime=False, start="2026-01-01T00:00:00Z",
                             duration_s=5400, anomalies=0, malformed_share=0.002))
    node.start()
    node.wait_finished()
    cfg = lake_config(tmp_path, node.lake)
    url = f"http://127.0.0.1:{node.port}"
    ok, out = dags_test(airflow_home, "wtm_data_quality", "2026-01-01T00:00:00+00:00", wtm_config=cfg, wtm_node_urls=url)
    assert ok, out[-4000:]
    assert "agrees with the nodes" in out
    # A file taken out of the table (a remove commit, as a careless manual fix would do): the lake
    # holds fewer requests than the node published.
    log = node.lake / "windows" / "_delta_log"
    version = max(int(p.name[:20]) for p in log.glob("*.json"))
    root = str(node.lake / "windows").rstrip("/") + "/"
    gone = sorted(DeltaTable(str(node.lake / "windows")).file_uris())[0].split(root, 1)[-1]
    (log / f"{version + 1:020}.json").write_text(json.dumps(
        {"remove": {"path": gone, "deletionTimestamp": 0, "dataChange": True}}) + "\n")
    ok, out = dags_test(airflow_home, "wtm_data_quality", "2026-01-01T00:00:00+00:00", wtm_config=cfg, wtm_node_urls=url)
    assert not ok
    assert "the lake disagrees with the nodes" in out and "window_requests" in out, out[-4000:]
    # A file deleted from under the table: the lake cannot be read, which fails as loudly.
    victim = sorted((node.lake / "windows").glob("dt=*/hour=*/*.parquet"))[-1]
    victim.unlink()
    ok, out = dags_test(airflow_home, "wtm_data_quality", "2026-01-01T00:00:00+00:00", wtm_config=cfg, wtm_node_urls=url)
    assert not ok
    assert "cannot be read through its logs" in out, out[-4000:]


def test_data_quality_dag_reads_an_s3_lake(airflow_home, node_factory, tmp_path, s3):
    """The data-quality DAG on a node whose lake is on S3 (SeaweedFS): the tables are read
    through delta-rs with `wtm_lake_storage_options`, and the lake agrees with the node."""
    from test_s3 import KEY, SECRET, s3_lake
    s3.client().create_bucket(Bucket="dq-lake")
    node = node_factory(dict(seed=48, hosts=8, rate=40.0, realtime=False, start="2026-01-01T00:00:00Z",
                             duration_s=3600, anomalies=0), lake=s3_lake(s3, "dq-lake"))
    node.start()
    node.wait_finished()
    options = {"AWS_ENDPOINT_URL": s3.endpoint, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
               "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
    ok, out = dags_test(airflow_home, "wtm_data_quality", "2026-01-01T00:00:00+00:00", wtm_config=node.config,
                        wtm_node_urls=f"http://127.0.0.1:{node.port}",
                        wtm_lake_storage_options=json.dumps(options))
    assert ok, out[-4000:]
    assert "agrees with the nodes" in out
