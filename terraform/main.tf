# wtm on AWS: nodes on ECS Fargate consuming MSK (or your brokers), the Parquet lake and the shared
# checkpoint snapshots in S3, Glue tables over the lake for Athena. See README.md here.

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

locals {
  tags        = merge({ "app" = "wtm", "managed-by" = "terraform" }, var.tags)
  account_id  = data.aws_caller_identity.current.account_id
  region      = data.aws_region.current.name
  bucket_name = coalesce(var.lake_bucket_name, "${var.name}-lake-${local.account_id}")
  brokers     = var.create_msk ? aws_msk_cluster.this[0].bootstrap_brokers_sasl_scram : var.kafka_bootstrap_brokers
}

resource "aws_kms_key" "this" {
  description         = "${var.name}: lake, logs, MSK and secrets"
  enable_key_rotation = true
  policy              = data.aws_iam_policy_document.kms.json
  tags                = local.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_111:A key policy's Resource "*" is the key itself; the account root statement is AWS's default key policy, access is granted through IAM.
  #checkov:skip=CKV_AWS_356:A key policy's Resource "*" is the key itself, not every resource.
  #checkov:skip=CKV_AWS_109:AWS's default key policy (account root administers the key), required so the key stays manageable.
  statement {
    sid       = "AccountAdmin"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${local.account_id}:root"]
    }
  }
  statement {
    sid       = "CloudWatchLogs"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }
  }
}
