"""Daily, at midnight UTC: write the day that ended's per-site report with Spark from the lake
(when `wtm_spark_python` is set), then expire the lake's old days and vacuum removed files
(`wtm retention`, days counted back from the run's midnight). The run of 2026-01-02T00:00
reports 2026-01-01."""

import os
import subprocess

from airflow.exceptions import AirflowSkipException
from airflow.sdk import task

import wtm_upkeep

REPORT_JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "spark", "daily_report.py")

with wtm_upkeep.dag("wtm_lake_retention", "0 0 * * *", __doc__, retries=2, retry_minutes=10) as dag:

    # After the report, also when the report was skipped (no Spark configured).
    @task(trigger_rule="none_failed")
    def retention(data_interval_end=None):
        keep = wtm_upkeep.var("wtm_retention_keep", "30").split()
        grace = wtm_upkeep.var("wtm_vacuum_grace_hours", "168")
        args = ["retention", "--grace-hours", grace, "--now", data_interval_end.isoformat()]
        for k in keep:
            args += ["--keep", k]
        return wtm_upkeep.wtm(*args)

    @task
    def daily_report(data_interval_start=None):
        # The run at midnight reports the day that just ended.
        ds = data_interval_start.strftime("%Y-%m-%d")
        python = wtm_upkeep.var("wtm_spark_python", "")
        if not python:
            raise AirflowSkipException("wtm_spark_python is not set: no Spark report")
        lake = wtm_upkeep.lake_location()
        out = wtm_upkeep.var("wtm_report_dir", f"{lake}/reports")
        r = subprocess.run([python, REPORT_JOB, "--lake", lake, "--date", ds, "--out", out],
                           capture_output=True, text=True)
        print(r.stdout[-4000:])
        if r.returncode != 0:
            raise RuntimeError(f"the Spark report failed ({r.returncode}): {r.stderr[-4000:]}")
        return f"{out}/dt={ds}"

    # The report reads the day before retention may remove anything of it.
    daily_report() >> retention()
