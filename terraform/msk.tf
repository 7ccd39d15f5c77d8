# MSK: TLS in transit, KMS at rest, SASL/SCRAM for the nodes (librdkafka has no AWS IAM auth),
# broker logs to CloudWatch. Skipped entirely with create_msk = false.

resource "aws_security_group" "msk" {
  count       = var.create_msk ? 1 : 0
  name        = "${var.name}-msk"
  description = "MSK brokers: SASL/SCRAM over TLS from the wtm nodes only"
  vpc_id      = local.vpc_id
  tags        = local.tags

  ingress {
    description     = "Kafka SASL_SSL from the nodes"
    from_port       = 9096
    to_port         = 9096
    protocol        = "tcp"
    security_groups = [aws_security_group.nodes.id]
  }

  egress {
    description = "replies inside the VPC"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = [var.vpc_id == null ? var.vpc_cidr : data.aws_vpc.given[0].cidr_block]
  }
}

resource "aws_cloudwatch_log_group" "msk" {
  count             = var.create_msk ? 1 : 0
  name              = "/${var.name}/msk"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_msk_configuration" "this" {
  count             = var.create_msk ? 1 : 0
  name              = "${var.name}-msk"
  kafka_versions    = [var.msk_kafka_version]
  server_properties = <<-PROPS
    auto.create.topics.enable=false
    default.replication.factor=2
    min.insync.replicas=1
    num.partitions=12
  PROPS
}

resource "aws_msk_cluster" "this" {
  count                  = var.create_msk ? 1 : 0
  cluster_name           = var.name
  kafka_version          = var.msk_kafka_version
  number_of_broker_nodes = var.msk_broker_count
  enhanced_monitoring    = "PER_TOPIC_PER_PARTITION"
  tags                   = local.tags

  broker_node_group_info {
    instance_type   = var.msk_instance_type
    client_subnets  = local.subnet_ids
    security_groups = [aws_security_group.msk[0].id]
    storage_info {
      ebs_storage_info {
        volume_size = 500
      }
    }
  }

  configuration_info {
    arn      = aws_msk_configuration.this[0].arn
    revision = aws_msk_configuration.this[0].latest_revision
  }

  client_authentication {
    sasl {
      scram = true
    }
    unauthenticated = false
  }

  encryption_info {
    encryption_at_rest_kms_key_arn = aws_kms_key.this.arn
    encryption_in_transit {
      client_broker = "TLS"
      in_cluster    = true
    }
  }

  logging_info {
    broker_logs {
      cloudwatch_logs {
        enabled   = true
        log_group = aws_cloudwatch_log_group.msk[0].name
      }
    }
  }
}

# The nodes' SCRAM credentials (MSK requires the AmazonMSK_ name prefix and a customer key).
resource "aws_secretsmanager_secret" "scram" {
  count = var.create_msk && var.msk_scram_secret_arn == null ? 1 : 0
  #checkov:skip=CKV2_AWS_57:MSK SCRAM secrets cannot rotate automatically: MSK reads the password from this secret, and a rotation needs a coordinated client restart.
  name       = "AmazonMSK_${var.name}"
  kms_key_id = aws_kms_key.this.arn
  tags       = local.tags
}

resource "random_password" "scram" {
  count   = var.create_msk && var.msk_scram_secret_arn == null ? 1 : 0
  length  = 32
  special = false
}

resource "aws_secretsmanager_secret_version" "scram" {
  count         = var.create_msk && var.msk_scram_secret_arn == null ? 1 : 0
  secret_id     = aws_secretsmanager_secret.scram[0].id
  secret_string = jsonencode({ username = "wtm", password = random_password.scram[0].result })
}

locals {
  scram_secret_arn = var.msk_scram_secret_arn != null ? var.msk_scram_secret_arn : (var.create_msk ? aws_secretsmanager_secret.scram[0].arn : null)
}

resource "aws_msk_scram_secret_association" "this" {
  count           = var.create_msk ? 1 : 0
  cluster_arn     = aws_msk_cluster.this[0].arn
  secret_arn_list = [local.scram_secret_arn]
  depends_on      = [aws_secretsmanager_secret_version.scram]
}
