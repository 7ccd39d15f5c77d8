# Optional managed monitoring: an Amazon Managed Service for Prometheus workspace for the nodes'
# /metrics, and an Amazon Managed Grafana workspace reading it (import deploy/grafana/dashboards).

resource "aws_cloudwatch_log_group" "amp" {
  count             = var.enable_managed_prometheus ? 1 : 0
  name              = "/${var.name}/prometheus"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_prometheus_workspace" "this" {
  count       = var.enable_managed_prometheus ? 1 : 0
  alias       = var.name
  kms_key_arn = aws_kms_key.this.arn
  tags        = local.tags
  logging_configuration {
    log_group_arn = "${aws_cloudwatch_log_group.amp[0].arn}:*"
  }
}

data "aws_iam_policy_document" "grafana_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["grafana.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "grafana" {
  count              = var.enable_managed_grafana ? 1 : 0
  name               = "${var.name}-grafana"
  assume_role_policy = data.aws_iam_policy_document.grafana_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "grafana_amp" {
  count = var.enable_managed_grafana && var.enable_managed_prometheus ? 1 : 0
  name  = "query-prometheus"
  role  = aws_iam_role.grafana[0].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect   = "Allow"
      Action   = ["aps:QueryMetrics", "aps:GetSeries", "aps:GetLabels", "aps:GetMetricMetadata", "aps:DescribeWorkspace"]
      Resource = [aws_prometheus_workspace.this[0].arn]
    }]
  })
}

resource "aws_grafana_workspace" "this" {
  count                    = var.enable_managed_grafana ? 1 : 0
  name                     = var.name
  account_access_type      = "CURRENT_ACCOUNT"
  authentication_providers = ["AWS_SSO"]
  permission_type          = "CUSTOMER_MANAGED"
  role_arn                 = aws_iam_role.grafana[0].arn
  data_sources             = ["PROMETHEUS"]
  tags                     = local.tags
}
