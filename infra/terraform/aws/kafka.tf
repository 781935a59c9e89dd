# Amazon MSK, unless `kafka_bootstrap_servers` brings a cluster of your own. Clients speak TLS,
# are let in by the brokers' security group, which admits runnel's tasks only, and
# authenticate with IAM (port 9098; `msk_iam_authentication`), each task role allowed only the
# `kafka-cluster:` actions its service needs (iam.tf).

resource "aws_msk_configuration" "this" {
  count = local.create_msk ? 1 : 0

  name           = var.name
  kafka_versions = [var.msk_kafka_version]
  description    = "runnel ${var.name}: topics are made by runnel; transactions for exactly-once"

  # runnel makes its topics with replication factor 3 and min.insync.replicas 2; the
  # transaction state log (exactly-once) and the consumer offsets get the same.
  server_properties = <<-PROPERTIES
    auto.create.topics.enable=false
    default.replication.factor=3
    min.insync.replicas=2
    offsets.topic.replication.factor=3
    transaction.state.log.replication.factor=3
    transaction.state.log.min.isr=2
    unclean.leader.election.enable=false
  PROPERTIES
}

resource "aws_cloudwatch_log_group" "msk" {
  count = local.create_msk ? 1 : 0

  name              = "/aws/msk/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = local.kms_key_arn

  tags = local.tags
}

resource "aws_msk_cluster" "this" {
  count = local.create_msk ? 1 : 0

  cluster_name           = var.name
  kafka_version          = var.msk_kafka_version
  number_of_broker_nodes = var.msk_broker_count
  enhanced_monitoring    = "PER_TOPIC_PER_PARTITION"

  broker_node_group_info {
    instance_type   = var.msk_instance_type
    client_subnets  = var.private_subnet_ids
    security_groups = [aws_security_group.msk[0].id]

    storage_info {
      ebs_storage_info {
        volume_size = var.msk_volume_size_gib
      }
    }

    connectivity_info {
      public_access {
        type = "DISABLED"
      }
    }
  }

  configuration_info {
    arn      = aws_msk_configuration.this[0].arn
    revision = aws_msk_configuration.this[0].latest_revision
  }

  encryption_info {
    encryption_at_rest_kms_key_arn = local.kms_key_arn

    encryption_in_transit {
      client_broker = "TLS"
      in_cluster    = true
    }
  }

  client_authentication {
    unauthenticated = !var.msk_iam_authentication

    sasl {
      iam = var.msk_iam_authentication
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

  tags = local.tags
}
