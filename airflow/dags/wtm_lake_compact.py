"""Hourly: compact the lake's closed hours (`wtm compact`), one Delta commit per hour; safe while
nodes write and while anyone reads, and a rerun finishes what a failed run left."""

from datetime import timedelta

from airflow.sdk import task

import wtm_upkeep

with wtm_upkeep.dag("wtm_lake_compact", "0 * * * *", __doc__, retries=2, retry_minutes=5) as dag:

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
