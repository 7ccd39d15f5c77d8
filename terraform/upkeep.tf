# Lake upkeep on AWS without Airflow: EventBridge Scheduler runs the node image as a one-off ECS
# task, `wtm compact` every hour and `wtm retention` every day (README "Operating the lake").
# Chosen over MWAA: the jobs are two commands with no dependencies between them, and an MWAA
# environment is an always-on Airflow (scheduler, workers, metadata database) billed by the hour
# whether it runs anything; Scheduler + Fargate bills the minutes the jobs run. Teams that already
# run Airflow use airflow/dags/ instead and set enable_upkeep_schedules = false.

resource "aws_cloudwatch_log_group" "upkeep" {
  name              = "/${var.name}/upkeep"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

# The upkeep rewrites and deletes lake objects (compaction, retention, vacuum): its own role,
# so the nodes keep a role that cannot delete.
resource "aws_iam_role" "upkeep" {
  name               = "${var.name}-upkeep"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "upkeep_lake" {
  name = "lake-upkeep"
  role = aws_iam_role.upkeep.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      local.lake_list_statement,
      {
        Sid      = "RewriteLake"
        Effect   = "Allow"
        Action   = concat(local.lake_write_actions, ["s3:DeleteObject"])
        Resource = ["${aws_s3_bucket.lake.arn}/${var.lake_prefix}/*"]
      },
      local.lake_key_statement,
    ]
  })
}

resource "aws_ecs_task_definition" "upkeep" {
  family                   = "${var.name}-upkeep"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 1024
  memory                   = 4096
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.upkeep.arn
  tags                     = local.tags

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  # The command comes from each schedule; the lake from the environment, as for the nodes.
  container_definitions = jsonencode([{
    name                   = "wtm"
    image                  = var.image
    essential              = true
    command                = ["compact"]
    readonlyRootFilesystem = true
    user                   = "10001"
    environment = [
      { name = "WTM__LAKE__URL", value = "s3://${local.bucket_name}/${var.lake_prefix}" },
      { name = "WTM__LAKE__REGION", value = local.region },
    ]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        "awslogs-group"         = aws_cloudwatch_log_group.upkeep.name
        "awslogs-region"        = local.region
        "awslogs-stream-prefix" = "upkeep"
      }
    }
  }])
}

data "aws_iam_policy_document" "scheduler_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["scheduler.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "scheduler" {
  count              = var.enable_upkeep_schedules ? 1 : 0
  name               = "${var.name}-upkeep-scheduler"
  assume_role_policy = data.aws_iam_policy_document.scheduler_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "scheduler_run_task" {
  count = var.enable_upkeep_schedules ? 1 : 0
  name  = "run-upkeep-task"
  role  = aws_iam_role.scheduler[0].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect    = "Allow"
        Action    = ["ecs:RunTask"]
        Resource  = [aws_ecs_task_definition.upkeep.arn_without_revision, "${aws_ecs_task_definition.upkeep.arn_without_revision}:*"]
        Condition = { ArnEquals = { "ecs:cluster" = aws_ecs_cluster.this.arn } }
      },
      {
        Effect   = "Allow"
        Action   = ["iam:PassRole"]
        Resource = [aws_iam_role.execution.arn, aws_iam_role.upkeep.arn]
      },
    ]
  })
}

locals {
  upkeep_jobs = {
    compact   = { cron = "cron(15 * * * ? *)", command = ["compact", "--before", "2h"] }
    retention = { cron = "cron(30 3 * * ? *)", command = concat(["retention", "--grace-hours", tostring(var.vacuum_grace_hours)], flatten([for k in var.retention_keep : ["--keep", k]])) }
  }
}

resource "aws_scheduler_schedule" "upkeep" {
  for_each                     = var.enable_upkeep_schedules ? local.upkeep_jobs : {}
  name                         = "${var.name}-${each.key}"
  schedule_expression          = each.value.cron
  schedule_expression_timezone = "UTC"
  kms_key_arn                  = aws_kms_key.this.arn

  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = aws_ecs_cluster.this.arn
    role_arn = aws_iam_role.scheduler[0].arn

    ecs_parameters {
      task_definition_arn = aws_ecs_task_definition.upkeep.arn_without_revision
      launch_type         = "FARGATE"
      network_configuration {
        subnets          = local.subnet_ids
        security_groups  = [aws_security_group.nodes.id]
        assign_public_ip = false
      }
    }

    input = jsonencode({
      containerOverrides = [{ name = "wtm", command = each.value.command }]
    })

    retry_policy {
      maximum_retry_attempts       = 3
      maximum_event_age_in_seconds = 3600
    }
  }
}
