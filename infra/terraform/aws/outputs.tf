output "ingest_endpoint" {
  description = "Where producers send events (gRPC and HTTP): `https://` with `certificate_arn`, else `http://`."
  value       = "${var.certificate_arn == null ? "http" : "https"}://${aws_lb.this["ingest"].dns_name}:7301"
}

output "serving_endpoint" {
  description = "Where clients query results (gRPC), e.g. `runnel query jobs --url <this> --token <token>`."
  value       = "${var.certificate_arn == null ? "http" : "https"}://${aws_lb.this["serving"].dns_name}:7303"
}

output "ingest_auth_token_secret_arn" {
  description = "The Secrets Manager secret holding ingest's bearer token."
  value       = local.auth_token_secret_arns.ingest
}

output "serving_auth_token_secret_arn" {
  description = "The Secrets Manager secret holding serving's bearer token."
  value       = local.auth_token_secret_arns.serving
}

output "bucket_name" {
  description = "The S3 bucket of history, checkpoints and batch views."
  value       = aws_s3_bucket.this.id
}

output "object_store_url" {
  description = "runnel's `storage.object-store-url`: the bucket and prefix everything is under."
  value       = local.object_store_url
}

output "kafka_bootstrap_servers" {
  description = "The Kafka bootstrap servers runnel uses (MSK's TLS brokers, or yours)."
  value       = local.bootstrap_servers
}

output "msk_cluster_arn" {
  description = "The MSK cluster's ARN; null when you brought your own Kafka."
  value       = local.create_msk ? aws_msk_cluster.this[0].arn : null
}

output "kms_key_arn" {
  description = "The KMS key of the bucket, the secrets, the logs and MSK's storage."
  value       = local.kms_key_arn
}

output "ecs_cluster_name" {
  description = "The ECS cluster the services run in."
  value       = aws_ecs_cluster.this.name
}

output "service_names" {
  description = "The ECS services, by runnel service: ingest, stream-processor, serving."
  value       = { for name, service in aws_ecs_service.this : name => service.name }
}

output "log_group_names" {
  description = "The CloudWatch log groups, by runnel service."
  value       = { for name, group in aws_cloudwatch_log_group.service : name => group.name }
}

output "security_group_ids" {
  description = "The tasks' security groups, by runnel service."
  value       = { for name, group in aws_security_group.service : name => group.id }
}

output "task_role_arns" {
  description = "The tasks' IAM roles (what runnel may do), by runnel service."
  value       = { for name, role in aws_iam_role.task : name => role.arn }
}

output "batch_reprocessor_task_definition_arn" {
  description = "The batch-reprocessor's task definition, run on demand for backfills."
  value       = aws_ecs_task_definition.this["batch-reprocessor"].arn
}

output "backfill_command" {
  description = "The `aws ecs run-task` command that runs a backfill: set JOB (a job's name) and MODE (`recompute` or `replay`), then run it; add `--from`/`--to` to the command list as `runnel backfill` takes them."
  value = join(" ", [
    "aws ecs run-task",
    "--region ${data.aws_region.current.region}",
    "--cluster ${aws_ecs_cluster.this.name}",
    "--task-definition ${aws_ecs_task_definition.this["batch-reprocessor"].arn}",
    "--launch-type FARGATE",
    "--network-configuration 'awsvpcConfiguration={subnets=[${join(",", var.private_subnet_ids)}],securityGroups=[${aws_security_group.service["batch-reprocessor"].id}],assignPublicIp=DISABLED}'",
    "--overrides \"{\\\"containerOverrides\\\":[{\\\"name\\\":\\\"batch-reprocessor\\\",\\\"command\\\":[\\\"backfill\\\",\\\"--job\\\",\\\"$JOB\\\",\\\"--mode\\\",\\\"$MODE\\\",\\\"--stop-when-caught-up\\\"]}]}\"",
  ])
}
