# `tofu test` of the module's own logic, with a mocked AWS provider: nothing reaches AWS; the
# provider's schema (scripts/check-terraform.sh's schema-only stand-in for hashicorp/aws 6.25.0)
# types the resources, and the mocks give the attributes AWS would compute.

mock_provider "aws" {
  mock_data "aws_region" {
    defaults = { region = "eu-west-1" }
  }
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
  mock_data "aws_secretsmanager_random_password" {
    defaults = { random_password = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKL" }
  }
  mock_resource "aws_s3_bucket" {
    defaults = { id = "runnel-20261206", arn = "arn:aws:s3:::runnel-20261206" }
  }
  mock_resource "aws_kms_key" {
    defaults = { arn = "arn:aws:kms:eu-west-1:123456789012:key/00000000-0000-0000-0000-000000000000" }
  }
  mock_resource "aws_secretsmanager_secret" {
    defaults = { arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:runnel-token-AbCdEf" }
  }
  mock_resource "aws_msk_cluster" {
    defaults = {
      arn                        = "arn:aws:kafka:eu-west-1:123456789012:cluster/runnel/0f0e0d0c-0000-0000-0000-000000000000-1"
      cluster_uuid               = "0f0e0d0c-0000-0000-0000-000000000000-1"
      bootstrap_brokers_tls      = "b-1.runnel.kafka.eu-west-1.amazonaws.com:9094,b-2.runnel.kafka.eu-west-1.amazonaws.com:9094"
      bootstrap_brokers_sasl_iam = "b-1.runnel.kafka.eu-west-1.amazonaws.com:9098,b-2.runnel.kafka.eu-west-1.amazonaws.com:9098"
    }
  }
  mock_resource "aws_msk_configuration" {
    defaults = { arn = "arn:aws:kafka:eu-west-1:123456789012:configuration/runnel/0", latest_revision = 1 }
  }
  mock_resource "aws_ecs_task_definition" {
    defaults = { arn = "arn:aws:ecs:eu-west-1:123456789012:task-definition/runnel-batch-reprocessor:1" }
  }
  mock_resource "aws_ecs_cluster" {
    defaults = { arn = "arn:aws:ecs:eu-west-1:123456789012:cluster/runnel" }
  }
  mock_resource "aws_security_group" {
    defaults = { id = "sg-0123456789abcdef0" }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/runnel" }
  }
  mock_resource "aws_cloudwatch_log_group" {
    defaults = { arn = "arn:aws:logs:eu-west-1:123456789012:log-group:/runnel/x" }
  }
  mock_resource "aws_lb" {
    defaults = { arn = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/net/runnel/0", dns_name = "runnel-0.elb.eu-west-1.amazonaws.com" }
  }
  mock_resource "aws_lb_target_group" {
    defaults = { arn = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/runnel/0" }
  }
}

variables {
  vpc_id                      = "vpc-0123456789abcdef0"
  private_subnet_ids          = ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0aaaaaaaaaaaaaaa2", "subnet-0aaaaaaaaaaaaaaa3"]
  ingest_allowed_cidr_blocks  = ["10.0.0.0/8"]
  serving_allowed_cidr_blocks = ["10.1.0.0/16"]
  image                       = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/runnel:1.0.0"
}

run "msk_tokens_and_settings" {
  command = apply

  assert {
    condition     = length(aws_msk_cluster.this) == 1 && local.bootstrap_servers == aws_msk_cluster.this[0].bootstrap_brokers_sasl_iam
    error_message = "with no kafka_bootstrap_servers the module makes MSK and points runnel at its IAM brokers"
  }

  assert {
    condition     = local.common_settings["RUNNEL__STORAGE__LOG__KAFKA__AWS_MSK_IAM"] == "true" && aws_msk_cluster.this[0].client_authentication[0].sasl[0].iam && !aws_msk_cluster.this[0].client_authentication[0].unauthenticated
    error_message = "MSK takes IAM clients only, and runnel signs in with IAM"
  }

  assert {
    condition     = alltrue([for rule in aws_vpc_security_group_ingress_rule.msk_from_services : rule.from_port == 9098 && rule.to_port == 9098])
    error_message = "the tasks reach MSK's IAM port, 9098"
  }

  assert {
    condition     = length(aws_iam_role_policy.task_kafka) == 4
    error_message = "each service's task role gets its kafka-cluster actions"
  }

  assert {
    condition = (
      !contains(flatten([for st in data.aws_iam_policy_document.task_kafka["serving"].statement : tolist(st.actions)]), "kafka-cluster:WriteData")
      && !contains(flatten([for st in data.aws_iam_policy_document.task_kafka["serving"].statement : tolist(st.actions)]), "kafka-cluster:AlterGroup")
      && contains(flatten([for st in data.aws_iam_policy_document.task_kafka["serving"].statement : tolist(st.actions)]), "kafka-cluster:ReadData")
      && contains(flatten([for st in data.aws_iam_policy_document.task_kafka["stream-processor"].statement : tolist(st.actions)]), "kafka-cluster:AlterTransactionalId")
      && !contains(flatten([for st in data.aws_iam_policy_document.task_kafka["ingest"].statement : tolist(st.actions)]), "kafka-cluster:AlterTransactionalId")
    )
    error_message = "serving only reads; only the stream-processor and the batch-reprocessor use transactions"
  }

  assert {
    condition     = local.msk_resources.topics == "arn:aws:kafka:eu-west-1:123456789012:topic/runnel/0f0e0d0c-0000-0000-0000-000000000000-1/*"
    error_message = "the task roles reach the cluster's own topics"
  }

  assert {
    condition     = local.common_settings["RUNNEL__STORAGE__OBJECT_STORE_URL"] == "s3://runnel-20261206/runnel"
    error_message = "runnel keeps everything under the bucket's prefix"
  }

  assert {
    condition     = local.common_settings["RUNNEL__STORAGE__LOG__KAFKA__PROPERTIES__SECURITY_PROTOCOL"] == "SSL"
    error_message = "the default kafka_properties speak TLS, each dot written as _"
  }

  assert {
    condition     = [for s in jsondecode(aws_ecs_task_definition.this["ingest"].container_definitions)[0].secrets : s.name] == ["RUNNEL__INGEST__AUTH_TOKEN"]
    error_message = "ingest gets its own token from Secrets Manager, and only it"
  }

  assert {
    condition     = [for s in jsondecode(aws_ecs_task_definition.this["serving"].container_definitions)[0].secrets : s.name] == ["RUNNEL__SERVING__AUTH_TOKEN"]
    error_message = "serving gets its own token from Secrets Manager, and only it"
  }

  assert {
    condition = alltrue([
      for name in ["stream-processor", "batch-reprocessor"] :
      length(jsondecode(aws_ecs_task_definition.this[name].container_definitions)[0].secrets) == 0
      && !contains([for e in jsondecode(aws_ecs_task_definition.this[name].container_definitions)[0].environment : e.name], "RUNNEL__INGEST__LISTEN")
    ])
    error_message = "services that listen only on loopback get no token and no public listen address"
  }

  assert {
    condition     = alltrue([for name, definition in aws_ecs_task_definition.this : jsondecode(definition.container_definitions)[0].readonlyRootFilesystem])
    error_message = "every container's root file system is read-only"
  }

  assert {
    condition     = aws_ecs_service.this["stream-processor"].desired_count == 2 && aws_ecs_service.this["ingest"].desired_count == 1 && aws_ecs_service.this["ingest"].deployment_maximum_percent == 100
    error_message = "one ingest task (one archiver), never two during a deployment; stream_processor_count stream-processors"
  }

  assert {
    condition     = length(aws_secretsmanager_secret.auth_token) == 2
    error_message = "the module makes both tokens when none is given"
  }

  assert {
    condition     = aws_lb_listener.this["ingest"].protocol == "TCP" && startswith(output.ingest_endpoint, "http://")
    error_message = "no certificate: TCP listeners and http:// endpoints"
  }

  assert {
    condition = alltrue([
      strcontains(output.backfill_command, "--cluster runnel "),
      strcontains(output.backfill_command, "--task-definition arn:aws:ecs:eu-west-1:123456789012:task-definition/runnel-batch-reprocessor:1"),
      strcontains(output.backfill_command, "subnets=[subnet-0aaaaaaaaaaaaaaa1,subnet-0aaaaaaaaaaaaaaa2,subnet-0aaaaaaaaaaaaaaa3]"),
      strcontains(output.backfill_command, "\\\"backfill\\\",\\\"--job\\\",\\\"$JOB\\\""),
    ])
    error_message = "backfill_command runs the batch-reprocessor's task definition in the private subnets"
  }

  assert {
    condition     = local.ecr_repository == "arn:aws:ecr:eu-west-1:123456789012:repository/runnel"
    error_message = "an ECR image lets the execution roles pull exactly its repository"
  }
}

run "own_kafka_and_tls" {
  command = apply

  variables {
    kafka_bootstrap_servers      = "kafka-1.example.internal:9093,kafka-2.example.internal:9093"
    kafka_client_cidr_blocks     = ["10.2.0.0/16"]
    kafka_port                   = 9093
    certificate_arn              = "arn:aws:acm:eu-west-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"
    ingest_auth_token_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:mine-AbCdEf"
    image                        = "ghcr.io/example/runnel:1.0.0"
  }

  assert {
    condition     = length(aws_msk_cluster.this) == 0 && length(aws_security_group.msk) == 0
    error_message = "with kafka_bootstrap_servers the module makes no MSK"
  }

  assert {
    condition     = local.common_settings["RUNNEL__STORAGE__LOG__KAFKA__BOOTSTRAP_SERVERS"] == "kafka-1.example.internal:9093,kafka-2.example.internal:9093"
    error_message = "runnel uses the cluster given"
  }

  assert {
    condition     = length(aws_vpc_security_group_egress_rule.service_kafka_own) == 4 && alltrue([for rule in aws_vpc_security_group_egress_rule.service_kafka_own : rule.from_port == 9093 && rule.cidr_ipv4 == "10.2.0.0/16"])
    error_message = "each service may open kafka_port to the cluster's networks"
  }

  assert {
    condition     = keys(aws_secretsmanager_secret.auth_token) == ["serving"] && local.auth_token_secret_arns.ingest == "arn:aws:secretsmanager:eu-west-1:123456789012:secret:mine-AbCdEf"
    error_message = "a token secret given is used, and only the other is made"
  }

  assert {
    condition     = aws_lb_listener.this["serving"].protocol == "TLS" && aws_lb_listener.this["serving"].alpn_policy == "HTTP2Optional" && startswith(output.serving_endpoint, "https://")
    error_message = "a certificate makes TLS listeners that offer HTTP/2, and https:// endpoints"
  }

  assert {
    condition     = local.ecr_repository == null
    error_message = "an image from elsewhere gives no ECR permission"
  }
}

run "msk_without_iam" {
  command = apply

  variables {
    msk_iam_authentication = false
  }

  assert {
    condition     = local.bootstrap_servers == aws_msk_cluster.this[0].bootstrap_brokers_tls && !contains(keys(local.common_settings), "RUNNEL__STORAGE__LOG__KAFKA__AWS_MSK_IAM")
    error_message = "without IAM, runnel speaks plain TLS to MSK's TLS brokers"
  }

  assert {
    condition     = length(aws_iam_role_policy.task_kafka) == 0 && alltrue([for rule in aws_vpc_security_group_ingress_rule.msk_from_services : rule.from_port == 9094])
    error_message = "without IAM: no kafka-cluster policies, and port 9094"
  }
}

run "a_bad_name_is_refused" {
  command = plan

  variables {
    name = "Runnel_1"
  }

  expect_failures = [var.name]
}

run "a_token_in_extra_environment_is_refused" {
  command = plan

  variables {
    extra_environment = { RUNNEL__INGEST__AUTH_TOKEN = "secret" }
  }

  expect_failures = [var.extra_environment]
}

run "fewer_than_three_brokers_are_refused" {
  command = plan

  variables {
    msk_broker_count = 2
  }

  expect_failures = [var.msk_broker_count]
}
