# The nodes' API answers only requests carrying this bearer token (every route but /healthz;
# /metrics stays open for Prometheus scrapes). The token lives in Secrets Manager; each task gets
# it as WTM__API__TOKEN, which `wtm probe` (the container health check) sends too.

resource "aws_secretsmanager_secret" "api_token" {
  #checkov:skip=CKV2_AWS_57:The token is read once at node start; rotating it means a rolling restart of every node and an update of every API client, which a rotation Lambda cannot coordinate.
  name       = "${var.name}-api-token"
  kms_key_id = aws_kms_key.this.arn
  tags       = local.tags
}

resource "random_password" "api_token" {
  length  = 48
  special = false
}

resource "aws_secretsmanager_secret_version" "api_token" {
  secret_id     = aws_secretsmanager_secret.api_token.id
  secret_string = random_password.api_token.result
}

resource "aws_iam_role_policy" "execution_api_token" {
  name = "read-api-token"
  role = aws_iam_role.execution.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      { Effect = "Allow", Action = ["secretsmanager:GetSecretValue"], Resource = [aws_secretsmanager_secret.api_token.arn] },
      { Effect = "Allow", Action = ["kms:Decrypt"], Resource = [aws_kms_key.this.arn] },
    ]
  })
}

locals {
  api_secrets = [
    { name = "WTM__API__TOKEN", valueFrom = aws_secretsmanager_secret.api_token.arn },
  ]
}
