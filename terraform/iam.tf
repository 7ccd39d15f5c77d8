# Least privilege: the execution role pulls the image, writes logs and reads the SCRAM secret;
# the task role reads and writes the lake prefix (tables and checkpoints/) and nothing else.

data "aws_iam_policy_document" "ecs_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

resource "aws_iam_role_policy" "execution_secrets" {
  count = local.scram_secret_arn == null ? 0 : 1
  name  = "read-scram-secret"
  role  = aws_iam_role.execution.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      { Effect = "Allow", Action = ["secretsmanager:GetSecretValue"], Resource = [local.scram_secret_arn] },
      { Effect = "Allow", Action = ["kms:Decrypt"], Resource = [aws_kms_key.this.arn] },
    ]
  })
}

resource "aws_iam_role" "task" {
  name               = "${var.name}-node"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
  tags               = local.tags
}

# What every role that touches the lake gets: listing its prefix and its KMS key; the objects
# themselves per role (the nodes read and write, the upkeep also deletes).
locals {
  lake_list_statement = {
    Sid       = "ListLake"
    Effect    = "Allow"
    Action    = ["s3:ListBucket"]
    Resource  = [aws_s3_bucket.lake.arn]
    Condition = { StringLike = { "s3:prefix" = ["${var.lake_prefix}/*"] } }
  }
  lake_key_statement = {
    Sid      = "LakeKey"
    Effect   = "Allow"
    Action   = ["kms:Decrypt", "kms:GenerateDataKey"]
    Resource = [aws_kms_key.this.arn]
  }
  lake_write_actions = ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
}

resource "aws_iam_role_policy" "task_lake" {
  name = "lake-read-write"
  role = aws_iam_role.task.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      local.lake_list_statement,
      {
        Sid      = "ReadWriteLake"
        Effect   = "Allow"
        Action   = local.lake_write_actions
        Resource = ["${aws_s3_bucket.lake.arn}/${var.lake_prefix}/*"]
      },
      local.lake_key_statement,
    ]
  })
}
