# The nodes form one wtm cluster (see the README, "Running a cluster"): each task listens on the
# cluster port, registers its address in a Cloud Map private DNS namespace, and seeds from that
# name (an A record per running task), so an autoscaled service needs no seed list. Peers
# authenticate with a cookie kept in Secrets Manager; the cluster port is open only between nodes.

resource "aws_service_discovery_private_dns_namespace" "nodes" {
  name        = "${var.name}.internal"
  description = "wtm nodes find each other here"
  vpc         = local.vpc_id
  tags        = local.tags
}

resource "aws_service_discovery_service" "nodes" {
  name = "nodes"
  tags = local.tags

  dns_config {
    namespace_id   = aws_service_discovery_private_dns_namespace.nodes.id
    routing_policy = "MULTIVALUE"
    dns_records {
      ttl  = 10
      type = "A"
    }
  }

  health_check_custom_config {
    failure_threshold = 1
  }
}

resource "aws_secretsmanager_secret" "cluster_cookie" {
  #checkov:skip=CKV2_AWS_57:The cookie is read once at node start; rotating it means a rolling restart of every node with the new value, which a rotation Lambda cannot coordinate.
  name       = "${var.name}-cluster-cookie"
  kms_key_id = aws_kms_key.this.arn
  tags       = local.tags
}

resource "random_password" "cluster_cookie" {
  length  = 48
  special = false
}

resource "aws_secretsmanager_secret_version" "cluster_cookie" {
  secret_id     = aws_secretsmanager_secret.cluster_cookie.id
  secret_string = random_password.cluster_cookie.result
}

resource "aws_iam_role_policy" "execution_cluster_cookie" {
  name = "read-cluster-cookie"
  role = aws_iam_role.execution.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      { Effect = "Allow", Action = ["secretsmanager:GetSecretValue"], Resource = [aws_secretsmanager_secret.cluster_cookie.arn] },
      { Effect = "Allow", Action = ["kms:Decrypt"], Resource = [aws_kms_key.this.arn] },
    ]
  })
}

# The cluster port is open between nodes only: see the inline `self` rules of
# aws_security_group.nodes (network.tf; inline and separate rules on one group would fight).

locals {
  cluster_environment = [
    # A wildcard listen: each task advertises its own address towards the seed.
    { name = "WTM__CLUSTER__LISTEN", value = "0.0.0.0:${var.cluster_port}" },
    { name = "WTM__CLUSTER__SEEDS", value = "nodes.${aws_service_discovery_private_dns_namespace.nodes.name}:${var.cluster_port}" },
  ]
  cluster_secrets = [
    { name = "WTM__CLUSTER__COOKIE", valueFrom = aws_secretsmanager_secret.cluster_cookie.arn },
  ]
}
