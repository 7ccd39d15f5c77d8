"""Daily backfill: `wtm batch` over one day's archived access logs (`<wtm_backfill_source>/<day>/`,
a directory or an S3 prefix) into the lake; the run of 2026-01-02T00:00 backfills 2026-01-01. Idempotent per day: the files are read in name order,
so a rerun of the day writes the same lake files under the same names, which the tables hold
once (a file already compacted is not added again).

The backfill's partitions are numbered by file, like a node's by source partition: point it at a
lake (`wtm_backfill_config`) where no live node writes the same days."""

import os
import subprocess
import tempfile

from airflow.sdk import task

import wtm_upkeep


def fetch_day(source, day, into):
    """The day's log files, local paths in name order (S3 objects downloaded first)."""
    if source.startswith("s3://"):
        import boto3

        bucket, _, prefix = source[len("s3://"):].partition("/")
        prefix = f"{prefix.strip('/')}/{day}/".lstrip("/")
        kwargs = {}
        try:
            from airflow.sdk import Connection

            c = Connection.get("wtm_logs_s3")
            kwargs = dict(aws_access_key_id=c.login, aws_secret_access_key=c.password, **(c.extra_dejson or {}))
        except Exception:  # noqa: BLE001 - no such connection: the standard AWS environment
            pass
        s3 = boto3.client("s3", **kwargs)
        keys = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/")]
        paths = []
        for key in sorted(keys):
            local = os.path.join(into, key[len(prefix):].replace("/", "_"))
            s3.download_file(bucket, key, local)
            paths.append(local)
        return paths
    folder = os.path.join(source, day)
    if not os.path.isdir(folder):
        return []
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if not f.startswith(".")]


with wtm_upkeep.dag("wtm_backfill", "0 0 * * *", __doc__, retries=1, retry_minutes=10) as dag:

    @task
    def backfill(data_interval_start=None):
        # The run at midnight backfills the day that just ended.
        ds = data_interval_start.strftime("%Y-%m-%d")
        source = wtm_upkeep.var("wtm_backfill_source")
        config = wtm_upkeep.var("wtm_backfill_config", wtm_upkeep.var("wtm_config"))
        with tempfile.TemporaryDirectory(prefix=f"wtm-backfill-{ds}-") as tmp:
            files = fetch_day(source, ds, tmp)
            if not files:
                print(f"no log files for {ds} under {source}")
                return {"files": 0}
            # A fresh data directory each run: the batch's checkpoints are not reused, the lake's
            # names make the rerun land on the same files.
            cmd = [wtm_upkeep.var("wtm_bin", "wtm"), "batch", "--quiet", "--json", "--config", config,
                   "--data-dir", os.path.join(tmp, "data"), *files]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"wtm batch failed ({r.returncode}): {r.stderr.strip()}")
            print(r.stdout)
            return {"files": len(files)}

    backfill()
