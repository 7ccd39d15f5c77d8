"""Hourly: compact the lake's closed hours (`wtm compact`), one Delta commit per hour; safe while
nodes write and while anyone reads, and a rerun finishes what a failed run left."""

from datetime import timedelta

import pendulum
from airflow.timetables.interval import CronDataIntervalTimetable
from airflow.sdk import DAG, task

import wtm_upkeep

with DAG(
    dag_id="wtm_lake_compact",
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    tags=["wtm", "lake"],
    doc_md=__doc__,
) as dag:

    @task
    def compact(data_interval_end=None):
        delay = float(wtm_upkeep.var("wtm_compact_delay_hours", "1"))
        before = data_interval_end - timedelta(hours=delay)
        out = wtm_upkeep.wtm("compact", "--before", before.isoformat())
        if out["hours_left"]:
            # Another writer changed those hours meanwhile: fail so the retry takes them.
            raise RuntimeError(f"{out['hours_left']} hour(s) changed under the compaction; retrying")
        return {"hours": out["hours_compacted"], "files_before": out["files_before"], "files_after": out["files_after"]}

    compact()
