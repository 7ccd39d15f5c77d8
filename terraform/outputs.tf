output "lake_bucket" {
  description = "Bucket holding the lake (tables under <lake_prefix>/, snapshots under <lake_prefix>/checkpoints/)."
  value       = aws_s3_bucket.lake.bucket
}

output "lake_url" {
  description = "The nodes' lake.url."
  value       = "s3://${aws_s3_bucket.lake.bucket}/${var.lake_prefix}"
}

output "glue_database" {
  description = "Glue database with the windows, late, events and invalid tables (query with Athena)."
  value       = aws_glue_catalog_database.lake.name
}

output "athena_workgroup" {
  description = "Athena workgroup writing encrypted results into the lake bucket."
  value       = aws_athena_workgroup.lake.name
}

output "kafka_bootstrap_brokers" {
  description = "Bootstrap servers the nodes use (SASL/SCRAM over TLS when MSK is created)."
  value       = local.brokers
}

output "ecs_cluster" {
  description = "ECS cluster running the nodes."
  value       = aws_ecs_cluster.this.name
}

output "ecs_service" {
  description = "ECS service of the nodes (desired count managed by autoscaling on consumer lag)."
  value       = aws_ecs_service.nodes.name
}

output "node_security_group_id" {
  description = "Security group of the nodes (allow it on your brokers when bringing your own)."
  value       = aws_security_group.nodes.id
}

output "prometheus_workspace_endpoint" {
  description = "Remote-write/query endpoint of the managed Prometheus workspace, if created."
  value       = var.enable_managed_prometheus ? aws_prometheus_workspace.this[0].prometheus_endpoint : null
}

output "grafana_workspace_url" {
  description = "URL of the managed Grafana workspace, if created."
  value       = var.enable_managed_grafana ? aws_grafana_workspace.this[0].endpoint : null
}

output "api_token_secret_arn" {
  description = "Secrets Manager secret holding the bearer token the nodes' API requires (Authorization: Bearer <token>)"
  value       = aws_secretsmanager_secret.api_token.arn
}
