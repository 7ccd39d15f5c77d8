"""The daily per-site report, with Spark, from the lake's Delta tables (the role the replaced
stack's spark-jobs/ had). For one UTC day (`dt`), per site:

- `requests`        closed windows' requests plus the day's late events
- `status_5xx`      of them, 5xx answers (windows' `status_5xx` plus late events with status >= 500)
- `error_share_5xx` status_5xx / requests
- `worst_minute_p99_ms`  the highest per-window p99 latency of the day (the exact column)
- `top_paths`       the 5 paths with most requests, summed over the windows' top-K, as JSON
                    `[{"path": …, "requests": …}]` (ties by path)

Written as Parquet to `<out>/dt=<date>/`, replacing a previous run of the same day.

    python daily_report.py --lake LAKE --date YYYY-MM-DD --out DIR
"""

import argparse
import os
import sys

from delta import configure_spark_with_delta_pip
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, LongType, StringType, StructField, StructType
from pyspark.sql.window import Window

TOP = 5


def session():
    builder = (
        SparkSession.builder.appName("wtm-daily-report")
        .master(os.environ.get("WTM_SPARK_MASTER", "local[2]"))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.session.timeZone", "UTC")
        # Delta's jars come from Maven Central once, into a cache outside the repository.
        .config("spark.jars.ivy", os.path.expanduser(os.environ.get("WTM_IVY_CACHE", "~/.cache/wtm-ivy")))
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.databricks.delta.snapshotPartitions", "2")
        .config("spark.ui.showConsoleProgress", "false")
    )
    return configure_spark_with_delta_pip(builder).getOrCreate()


def report(spark, lake, date):
    windows = spark.read.format("delta").load(f"{lake}/windows").where(F.col("dt") == date)
    per_window = windows.groupBy("host").agg(
        F.sum("requests").alias("w_requests"),
        F.sum("status_5xx").alias("w_5xx"),
        F.max("latency_p99_ms").alias("worst_minute_p99_ms"),
    )
    late_path = f"{lake}/late"
    try:
        late = spark.read.format("delta").load(late_path).where(F.col("dt") == date)
        per_late = late.groupBy("host").agg(
            F.count("*").alias("l_requests"),
            F.sum(F.when(F.col("status") >= 500, 1).otherwise(0)).alias("l_5xx"),
        )
    except Exception:  # noqa: BLE001 - no late table yet: no late events
        per_late = spark.createDataFrame([], "host string, l_requests long, l_5xx long")
    entry = ArrayType(StructType([StructField("key", StringType()), StructField("count", LongType())]))
    paths = (
        windows.select("host", F.explode(F.from_json("top_paths", entry)).alias("e"))
        .groupBy("host", F.col("e.key").alias("path"))
        .agg(F.sum("e.count").alias("requests"))
    )
    ranked = paths.withColumn(
        "rank",
        F.row_number().over(
            Window.partitionBy("host").orderBy(F.desc("requests"), F.asc("path"))),
    ).where(F.col("rank") <= TOP)
    top = ranked.groupBy("host").agg(
        F.to_json(F.transform(F.array_sort(F.collect_list(F.struct("rank", "path", "requests"))),
                              lambda s: F.struct(s["path"].alias("path"), s["requests"].alias("requests"))))
        .alias("top_paths"))
    out = (
        per_window.join(per_late, "host", "full_outer")
        .join(top, "host", "left")
        .select(
            F.lit(date).alias("dt"),
            "host",
            (F.coalesce("w_requests", F.lit(0)) + F.coalesce("l_requests", F.lit(0))).alias("requests"),
            (F.coalesce("w_5xx", F.lit(0)) + F.coalesce("l_5xx", F.lit(0))).alias("status_5xx"),
            "worst_minute_p99_ms",
            F.coalesce("top_paths", F.lit("[]")).alias("top_paths"),
        )
        .withColumn("error_share_5xx", F.when(F.col("requests") > 0, F.col("status_5xx") / F.col("requests")))
        .orderBy("host")
    )
    return out


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lake", required=True, help="the lake's root (a directory or s3a:// URL)")
    ap.add_argument("--date", required=True, help="the UTC day, YYYY-MM-DD")
    ap.add_argument("--out", required=True, help="where the report goes (dt=<date>/ under it)")
    a = ap.parse_args(argv)
    spark = session()
    spark.sparkContext.setLogLevel("WARN")
    try:
        out = report(spark, a.lake, a.date)
        target = f"{a.out.rstrip('/')}/dt={a.date}"
        out.coalesce(1).write.mode("overwrite").parquet(target)
        n = spark.read.parquet(target).count()
        print(f"report for {a.date}: {n} sites -> {target}")
    finally:
        spark.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
