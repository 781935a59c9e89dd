# The services, and the facts about them every other file uses.

data "aws_region" "current" {}
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  # Each runnel service: the `runnel` subcommand it runs, the ports its tasks open, whether
  # it writes to the bucket, its health check (as in compose). The batch-reprocessor is a task
  # definition only, run on demand (`backfill_command`).
  services = {
    ingest = {
      command      = ["ingest-service"]
      port         = 7301 # gRPC and HTTP, and /metrics
      metrics_port = 7301
      writes       = true # its archiver writes the history
      kafka        = { write = true, transactions = false }
      health       = ["runnel", "health", "ingest"]
      size         = var.task_sizes.ingest
    }
    stream-processor = {
      command      = ["stream-processor"]
      port         = null
      metrics_port = 7302
      writes       = true                                  # checkpoints, job failures
      kafka        = { write = true, transactions = true } # results, exactly-once
      health       = ["runnel", "health", "stream-processor"]
      size         = var.task_sizes.stream_processor
    }
    serving = {
      command      = ["serving"]
      port         = 7303
      metrics_port = 7305
      writes       = false                                   # reads checkpoints, batch views and the job catalog
      kafka        = { write = false, transactions = false } # reads the results topics
      health       = ["runnel", "health", "serving"]
      size         = var.task_sizes.serving
    }
    batch-reprocessor = {
      command      = ["batch-reprocessor"]
      port         = null
      metrics_port = null
      writes       = true                                  # batch views, the job catalog, a replay's checkpoints
      kafka        = { write = true, transactions = true } # a replay runs the live tasks
      health       = null
      size         = var.task_sizes.batch_reprocessor
    }
  }

  # The services that run all the time, with their task counts. Ingest runs once: its
  # archiver must not run twice, so its deployments also stop the old task first.
  long_running = {
    ingest           = { count = 1, min_healthy = 0, max_percent = 100 }
    stream-processor = { count = var.stream_processor_count, min_healthy = 50, max_percent = 200 }
    serving          = { count = var.serving_count, min_healthy = 100, max_percent = 200 }
  }

  # The services behind a network load balancer.
  balanced = {
    ingest  = { port = 7301, allowed = var.ingest_allowed_cidr_blocks }
    serving = { port = 7303, allowed = var.serving_allowed_cidr_blocks }
  }

  tags = merge({ "runnel:deployment" = var.name }, var.tags)
}

resource "aws_ecs_cluster" "this" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }

  tags = local.tags
}

resource "aws_ecs_cluster_capacity_providers" "this" {
  cluster_name       = aws_ecs_cluster.this.name
  capacity_providers = ["FARGATE"]

  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
  }
}

resource "aws_ecs_task_definition" "this" {
  for_each = local.services

  family                   = "${var.name}-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = tostring(each.value.size.cpu)
  memory                   = tostring(each.value.size.memory)
  execution_role_arn       = aws_iam_role.execution[each.key].arn
  task_role_arn            = aws_iam_role.task[each.key].arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  ephemeral_storage {
    size_in_gib = var.ephemeral_storage_gib
  }

  # runnel's state folder (/data) on the task's ephemeral storage; the root file system is
  # read-only.
  volume {
    name = "data"
  }

  container_definitions = jsonencode([
    merge(
      {
        name                   = each.key
        image                  = var.image
        essential              = true
        command                = each.value.command
        readonlyRootFilesystem = true
        mountPoints            = [{ sourceVolume = "data", containerPath = "/data", readOnly = false }]
        portMappings = [
          for port in distinct([for p in [each.value.port, each.value.metrics_port] : p if p != null]) :
          { containerPort = port, protocol = "tcp" }
        ]
        environment = [
          for key, value in merge(local.common_settings, local.service_settings[each.key]) :
          { name = key, value = value }
        ]
        secrets = [
          for key, arn in local.service_secrets[each.key] : { name = key, valueFrom = arn }
        ]
        # A clean stop: runnel checkpoints its tasks on SIGTERM.
        stopTimeout = 60
        logConfiguration = {
          logDriver = "awslogs"
          options = {
            awslogs-group         = aws_cloudwatch_log_group.service[each.key].name
            awslogs-region        = data.aws_region.current.region
            awslogs-stream-prefix = each.key
          }
        }
      },
      each.value.health == null ? {} : {
        healthCheck = {
          command     = concat(["CMD"], each.value.health)
          interval    = 10
          timeout     = 5
          retries     = 3
          startPeriod = 60
        }
      },
    )
  ])

  tags = local.tags
}

resource "aws_ecs_service" "this" {
  for_each = local.long_running

  name                               = each.key
  cluster                            = aws_ecs_cluster.this.arn
  task_definition                    = aws_ecs_task_definition.this[each.key].arn
  desired_count                      = each.value.count
  launch_type                        = "FARGATE"
  platform_version                   = "LATEST"
  deployment_minimum_healthy_percent = each.value.min_healthy
  deployment_maximum_percent         = each.value.max_percent
  health_check_grace_period_seconds  = contains(keys(local.balanced), each.key) ? 120 : null
  propagate_tags                     = "SERVICE"
  enable_ecs_managed_tags            = true
  wait_for_steady_state              = false

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.service[each.key].id]
    assign_public_ip = false
  }

  dynamic "load_balancer" {
    for_each = contains(keys(local.balanced), each.key) ? [local.balanced[each.key]] : []
    content {
      target_group_arn = aws_lb_target_group.this[each.key].arn
      container_name   = each.key
      container_port   = load_balancer.value.port
    }
  }

  # The target group must be attached to a listener before a service can use it.
  depends_on = [aws_lb_listener.this, aws_iam_role_policy.execution, aws_iam_role_policy.task, aws_iam_role_policy.task_kafka]

  tags = local.tags
}

resource "aws_cloudwatch_log_group" "service" {
  for_each = local.services

  name              = "/${var.name}/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = local.kms_key_arn

  tags = local.tags
}
