# Glue tables over the lake's Delta tables (<table>/_delta_log/ beside dt=YYYY-MM-DD/hour=HH/*.parquet).
# Athena reads a Delta table natively (`table_type = DELTA`): the file list and the schema come from
# the table's log, so a compaction or a retention run is seen atomically and no partitions need
# registering. The columns below are the archiver's Parquet schemas (runtime/storage/src/lake.rs),
# kept for other catalog readers; tests/e2e/test_deploy.py checks they agree. See docs/lake.md.

locals {
  event_columns = [
    { name = "partition", type = "int" },
    { name = "offset", type = "bigint" },
    { name = "ts", type = "timestamp" },
    { name = "host", type = "string" },
    { name = "method", type = "string" },
    { name = "path", type = "string" },
    { name = "status", type = "int" },
    { name = "bytes", type = "bigint" },
    { name = "latency_ms", type = "double" },
    { name = "client_ip", type = "string" },
    { name = "user_agent", type = "string" },
    { name = "referrer", type = "string" },
  ]

  lake_tables = {
    windows = [
      { name = "host", type = "string" },
      { name = "window_start", type = "timestamp" },
      { name = "window_end", type = "timestamp" },
      { name = "partition", type = "int" },
      { name = "requests", type = "bigint" },
      { name = "bytes", type = "bigint" },
      { name = "status_1xx", type = "bigint" },
      { name = "status_2xx", type = "bigint" },
      { name = "status_3xx", type = "bigint" },
      { name = "status_4xx", type = "bigint" },
      { name = "status_5xx", type = "bigint" },
      { name = "error_rate", type = "double" },
      { name = "latency_p50_ms", type = "double" },
      { name = "latency_p90_ms", type = "double" },
      { name = "latency_p95_ms", type = "double" },
      { name = "latency_p99_ms", type = "double" },
      { name = "latency_max_ms", type = "double" },
      { name = "unique_clients", type = "bigint" },
      { name = "bots", type = "bigint" },
      { name = "status_codes", type = "string" },
      { name = "methods", type = "string" },
      { name = "top_paths", type = "string" },
      { name = "top_referrers", type = "string" },
      { name = "top_user_agents", type = "string" },
      { name = "sketch", type = "binary" },
    ]
    late   = concat(local.event_columns, [{ name = "watermark", type = "timestamp" }])
    events = local.event_columns
    invalid = [
      { name = "partition", type = "int" },
      { name = "offset", type = "bigint" },
      { name = "reason", type = "string" },
      { name = "detail", type = "string" },
      { name = "raw", type = "binary" },
    ]
  }
}

resource "aws_glue_catalog_database" "lake" {
  name        = replace("${var.name}_lake", "-", "_")
  description = "wtm's Parquet lake in s3://${local.bucket_name}/${var.lake_prefix}"
}

resource "aws_glue_catalog_table" "lake" {
  for_each      = local.lake_tables
  name          = each.key
  database_name = aws_glue_catalog_database.lake.name
  table_type    = "EXTERNAL_TABLE"

  parameters = {
    "table_type"                 = "DELTA"
    "spark.sql.sources.provider" = "delta"
    "classification"             = "delta"
    "EXTERNAL"                   = "TRUE"
  }

  # Delta partition values are strings, as the log stores them.
  partition_keys {
    name = "dt"
    type = "string"
  }
  partition_keys {
    name = "hour"
    type = "string"
  }

  storage_descriptor {
    location      = "s3://${local.bucket_name}/${var.lake_prefix}/${each.key}/"
    input_format  = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
    output_format = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"

    ser_de_info {
      serialization_library = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
    }

    dynamic "columns" {
      for_each = each.value
      content {
        name = columns.value.name
        type = columns.value.type
      }
    }
  }
}

# Athena results: a workgroup that enforces encrypted results in the lake bucket.
resource "aws_athena_workgroup" "lake" {
  name = var.name
  tags = local.tags
  configuration {
    enforce_workgroup_configuration    = true
    publish_cloudwatch_metrics_enabled = true
    result_configuration {
      output_location = "s3://${local.bucket_name}/athena-results/"
      encryption_configuration {
        encryption_option = "SSE_KMS"
        kms_key_arn       = aws_kms_key.this.arn
      }
    }
  }
}
