# The nodes: an ECS Fargate service in the private subnets, one consumer-group member per task,
# scaled on the consumer group's lag (MSK's SumOffsetLag). A task stopping gets SIGTERM: it leaves
# the group after publishing its partitions' snapshots to the lake, so the others take over at once.

resource "aws_ecs_cluster" "this" {
  name = var.name
  tags = local.tags
  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_cloudwatch_log_group" "nodes" {
  name              = "/${var.name}/nodes"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

locals {
  node_environment = [
    { name = "WTM__SOURCE__KIND", value = "kafka" },
    { name = "WTM__SOURCE__BROKERS", value = local.brokers },
    { name = "WTM__SOURCE__TOPIC", value = var.kafka_topic },
    { name = "WTM__SOURCE__GROUP", value = var.kafka_group },
    { name = "WTM__NODE__LISTEN", value = "0.0.0.0:8080" },
    { name = "WTM__NODE__DATA_DIR", value = "/data" },
    { name = "WTM__LAKE__URL", value = "s3://${local.bucket_name}/${var.lake_prefix}" },
    { name = "WTM__LAKE__REGION", value = local.region },
    # librdkafka settings: underscores stand for dots (see the README).
    { name = "WTM__SOURCE__KAFKA__SECURITY_PROTOCOL", value = "SASL_SSL" },
    { name = "WTM__SOURCE__KAFKA__SASL_MECHANISM", value = "SCRAM-SHA-512" },
  ]
  node_secrets = local.scram_secret_arn == null ? [] : [
    { name = "WTM__SOURCE__KAFKA__SASL_USERNAME", valueFrom = "${local.scram_secret_arn}:username::" },
    { name = "WTM__SOURCE__KAFKA__SASL_PASSWORD", valueFrom = "${local.scram_secret_arn}:password::" },
  ]
}

resource "aws_ecs_task_definition" "node" {
  family                   = "${var.name}-node"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.node_cpu
  memory                   = var.node_memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  tags                     = local.tags

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  container_definitions = jsonencode([{
    name                   = "wtm"
    image                  = var.image
    essential              = true
    command                = ["run"]
    readonlyRootFilesystem = true
    user                   = "10001"
    portMappings           = [{ containerPort = 8080, protocol = "tcp" }, { containerPort = var.cluster_port, protocol = "tcp" }]
    environment            = concat(local.node_environment, local.cluster_environment)
    secrets                = concat(local.node_secrets, local.cluster_secrets, local.api_secrets)
    mountPoints            = [{ sourceVolume = "data", containerPath = "/data", readOnly = false }]
    stopTimeout            = 60
    # Liveness, not readiness: ECS replaces a task whose check fails, and a restarted node is
    # ready (/readyz) only once the API's history is read back from the lake, which at many
    # sites and a long api.retention_windows takes minutes (the partitions catch up before).
    healthCheck = {
      command     = ["CMD", "/usr/local/bin/wtm", "probe", "http://127.0.0.1:8080/healthz"]
      interval    = 15
      timeout     = 5
      retries     = 3
      startPeriod = 60
    }
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        "awslogs-group"         = aws_cloudwatch_log_group.nodes.name
        "awslogs-region"        = local.region
        "awslogs-stream-prefix" = "node"
      }
    }
  }])

  # Local checkpoints (redb): task storage (a replaced task restores from the lake's snapshots).
  volume {
    name = "data"
  }
}

resource "aws_ecs_service" "nodes" {
  name                               = "${var.name}-nodes"
  cluster                            = aws_ecs_cluster.this.id
  task_definition                    = aws_ecs_task_definition.node.arn
  desired_count                      = var.min_nodes
  launch_type                        = "FARGATE"
  deployment_minimum_healthy_percent = 50
  deployment_maximum_percent         = 200
  propagate_tags                     = "SERVICE"
  tags                               = local.tags

  network_configuration {
    subnets          = local.subnet_ids
    security_groups  = [aws_security_group.nodes.id]
    assign_public_ip = false
  }

  # Each running task's address under nodes.<name>.internal: the cluster's seed.
  service_registries {
    registry_arn = aws_service_discovery_service.nodes.arn
  }

  lifecycle {
    ignore_changes = [desired_count] # owned by autoscaling
  }
}

resource "aws_appautoscaling_target" "nodes" {
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.nodes.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.min_nodes
  max_capacity       = var.max_nodes
}

# Target tracking on the group's total lag per node. With bring-your-own brokers, publish the lag
# to CloudWatch yourself (e.g. from wtm_consumer_lag) under the same metric, or scale on CPU.
resource "aws_appautoscaling_policy" "lag" {
  name               = "${var.name}-consumer-lag"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.nodes.service_namespace
  resource_id        = aws_appautoscaling_target.nodes.resource_id
  scalable_dimension = aws_appautoscaling_target.nodes.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.target_consumer_lag
    scale_in_cooldown  = 300
    scale_out_cooldown = 60

    customized_metric_specification {
      metrics {
        id          = "lag"
        return_data = false
        metric_stat {
          stat = "Maximum"
          metric {
            namespace   = "AWS/Kafka"
            metric_name = "SumOffsetLag"
            dimensions {
              name  = "Cluster Name"
              value = var.name
            }
            dimensions {
              name  = "Consumer Group"
              value = var.kafka_group
            }
            dimensions {
              name  = "Topic"
              value = var.kafka_topic
            }
          }
        }
      }
      metrics {
        id          = "tasks"
        return_data = false
        metric_stat {
          stat = "Average"
          metric {
            namespace   = "ECS/ContainerInsights"
            metric_name = "RunningTaskCount"
            dimensions {
              name  = "ClusterName"
              value = aws_ecs_cluster.this.name
            }
            dimensions {
              name  = "ServiceName"
              value = aws_ecs_service.nodes.name
            }
          }
        }
      }
      metrics {
        id          = "lag_per_node"
        expression  = "lag / MAX([tasks, 1])"
        label       = "consumer lag per node"
        return_data = true
      }
    }
  }
}
