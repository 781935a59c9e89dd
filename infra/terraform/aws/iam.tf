# One execution role (what ECS does for the task: pull the image, write its logs, read its
# token) and one task role (what runnel does: the bucket's prefix) per service.

locals {
  # `<account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag>`: the repository ECS may pull.
  ecr_image      = regex("^(?:(?P<account>[0-9]{12})\\.dkr\\.ecr\\.(?P<region>[a-z0-9-]+)\\.amazonaws\\.com(?:\\.cn)?/(?P<repository>[^:@]+))?", var.image)
  ecr_repository = local.ecr_image.account == null ? null : "arn:${data.aws_partition.current.partition}:ecr:${local.ecr_image.region}:${local.ecr_image.account}:repository/${local.ecr_image.repository}"

  bucket_keys = "${aws_s3_bucket.this.arn}/${var.bucket_prefix}/*"

  # MSK's IAM resources: the cluster, and its topics, groups and transactional ids (any name:
  # runnel makes a topic and groups per stream and job version).
  msk_arn_prefix = local.msk_iam ? "arn:${data.aws_partition.current.partition}:kafka:${data.aws_region.current.region}:${data.aws_caller_identity.current.account_id}" : null
  msk_resources = local.msk_iam ? {
    cluster          = aws_msk_cluster.this[0].arn
    topics           = "${local.msk_arn_prefix}:topic/${aws_msk_cluster.this[0].cluster_name}/${aws_msk_cluster.this[0].cluster_uuid}/*"
    groups           = "${local.msk_arn_prefix}:group/${aws_msk_cluster.this[0].cluster_name}/${aws_msk_cluster.this[0].cluster_uuid}/*"
    transactional_id = "${local.msk_arn_prefix}:transactional-id/${aws_msk_cluster.this[0].cluster_name}/${aws_msk_cluster.this[0].cluster_uuid}/*"
  } : null
}

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_iam_role" "execution" {
  for_each = local.services

  name_prefix        = "${var.name}-${each.key}-exec-"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json

  tags = local.tags
}

data "aws_iam_policy_document" "execution" {
  for_each = local.services

  dynamic "statement" {
    for_each = local.ecr_repository == null ? [] : [local.ecr_repository]
    content {
      sid       = "PullTheImage"
      actions   = ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
      resources = [statement.value]
    }
  }

  dynamic "statement" {
    for_each = local.ecr_repository == null ? [] : [local.ecr_repository]
    content {
      sid = "LogInToEcr"
      # GetAuthorizationToken has no resource to scope it to.
      actions   = ["ecr:GetAuthorizationToken"]
      resources = ["*"]
    }
  }

  statement {
    sid       = "WriteItsLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.service[each.key].arn}:*"]
  }

  dynamic "statement" {
    for_each = length(local.service_secrets[each.key]) == 0 ? [] : [values(local.service_secrets[each.key])]
    content {
      sid       = "ReadItsToken"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = statement.value
    }
  }

  dynamic "statement" {
    for_each = length(local.service_secrets[each.key]) == 0 ? [] : [local.kms_key_arn]
    content {
      sid       = "DecryptItsToken"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["secretsmanager.${data.aws_region.current.region}.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role_policy" "execution" {
  for_each = local.services

  name   = "runnel-execution"
  role   = aws_iam_role.execution[each.key].id
  policy = data.aws_iam_policy_document.execution[each.key].json
}

resource "aws_iam_role" "task" {
  for_each = local.services

  name_prefix        = "${var.name}-${each.key}-task-"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json

  tags = local.tags
}

data "aws_iam_policy_document" "task" {
  for_each = local.services

  statement {
    sid       = "ListThePrefix"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.this.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.bucket_prefix}/*", var.bucket_prefix]
    }
  }

  statement {
    sid       = each.value.writes ? "ReadAndWriteThePrefix" : "ReadThePrefix"
    actions   = each.value.writes ? ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"] : ["s3:GetObject"]
    resources = [local.bucket_keys]
  }

  statement {
    sid       = "UseTheBucketKey"
    actions   = each.value.writes ? ["kms:Decrypt", "kms:GenerateDataKey"] : ["kms:Decrypt"]
    resources = [local.kms_key_arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${data.aws_region.current.region}.amazonaws.com"]
    }
  }
}

# MSK with IAM: what runnel's Kafka clients do. Every service connects, describes the cluster
# and creates the topics it uses (ingest the streams', the others their jobs' results and
# repartition topics); readers look up their groups' coordinators and committed offsets.
# Writers produce idempotently; the stream-processor and a replay commit offsets and use
# transactions (exactly-once).
data "aws_iam_policy_document" "task_kafka" {
  for_each = { for name, service in local.services : name => service if local.msk_iam }

  statement {
    sid       = "UseTheCluster"
    actions   = concat(["kafka-cluster:Connect", "kafka-cluster:DescribeCluster"], each.value.kafka.write ? ["kafka-cluster:WriteDataIdempotently"] : [])
    resources = [local.msk_resources.cluster]
  }

  statement {
    sid       = each.value.kafka.write ? "ReadAndWriteTopics" : "ReadTopics"
    actions   = concat(["kafka-cluster:CreateTopic", "kafka-cluster:DescribeTopic", "kafka-cluster:ReadData"], each.value.kafka.write ? ["kafka-cluster:WriteData"] : [])
    resources = [local.msk_resources.topics]
  }

  statement {
    sid       = each.value.kafka.write ? "UseGroups" : "DescribeGroups"
    actions   = concat(["kafka-cluster:DescribeGroup"], each.value.kafka.write ? ["kafka-cluster:AlterGroup"] : [])
    resources = [local.msk_resources.groups]
  }

  dynamic "statement" {
    for_each = each.value.kafka.transactions ? [local.msk_resources.transactional_id] : []
    content {
      sid       = "UseTransactions"
      actions   = ["kafka-cluster:DescribeTransactionalId", "kafka-cluster:AlterTransactionalId"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_role_policy" "task_kafka" {
  for_each = local.msk_iam ? toset(keys(local.services)) : toset([])

  name   = "runnel-kafka"
  role   = aws_iam_role.task[each.key].id
  policy = data.aws_iam_policy_document.task_kafka[each.key].json
}

resource "aws_iam_role_policy" "task" {
  for_each = local.services

  name   = "runnel-task"
  role   = aws_iam_role.task[each.key].id
  policy = data.aws_iam_policy_document.task[each.key].json
}
