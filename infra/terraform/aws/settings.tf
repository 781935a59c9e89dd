# runnel's settings on ECS, as RUNNEL__ environment variables (the config layer that
# RUNNEL__SECTION__KEY sets; see config/runnel.toml). They are the compose cluster's settings
# (infra/compose/runnel.toml and docker-compose.yml) but for addresses and secrets:
# infra/terraform/test/test_parity.py fails when the two drift apart.

locals {
  create_msk = var.kafka_bootstrap_servers == null

  # MSK's clients authenticate with IAM unless told not to; a cluster of your own is reached
  # as kafka_properties say.
  msk_iam = local.create_msk && var.msk_iam_authentication

  bootstrap_servers = (!local.create_msk ? var.kafka_bootstrap_servers :
  local.msk_iam ? aws_msk_cluster.this[0].bootstrap_brokers_sasl_iam : aws_msk_cluster.this[0].bootstrap_brokers_tls)

  kafka_port = !local.create_msk ? var.kafka_port : local.msk_iam ? 9098 : 9094

  object_store_url = "s3://${aws_s3_bucket.this.id}/${var.bucket_prefix}"

  # The settings every service gets, as compose gives them (the parity test reads this map).
  settings = {
    RUNNEL__STORAGE__DATA_DIR                        = "/data"
    RUNNEL__STORAGE__LOG__BACKEND                    = "kafka"
    RUNNEL__STORAGE__LOG__KAFKA__REPLICATION_FACTOR  = "3"
    RUNNEL__STORAGE__LOG__KAFKA__MIN_INSYNC_REPLICAS = "2"
    RUNNEL__STORAGE__LOG__KAFKA__SESSION_TIMEOUT     = "10s"
    RUNNEL__STREAM_PROCESSOR__METRICS_LISTEN         = "0.0.0.0:7302"
    RUNNEL__STREAM_PROCESSOR__CHECKPOINT_INTERVAL    = "1s"
    RUNNEL__STREAM_PROCESSOR__EXACTLY_ONCE           = "true"
    RUNNEL__SERVING__METRICS_LISTEN                  = "0.0.0.0:7305"
  }

  # Where the log and the object store are: AWS's, not compose's.
  address_settings = {
    RUNNEL__STORAGE__OBJECT_STORE_URL              = local.object_store_url
    RUNNEL__STORAGE__LOG__KAFKA__BOOTSTRAP_SERVERS = local.bootstrap_servers
  }

  # How to reach the brokers: librdkafka properties, a key's dots written as `_` (runnel
  # reads a `-`, which `_` becomes, as `.`), and MSK's IAM authentication.
  kafka_transport_settings = merge(
    {
      for key, value in var.kafka_properties :
      "RUNNEL__STORAGE__LOG__KAFKA__PROPERTIES__${upper(replace(key, ".", "_"))}" => value
    },
    local.msk_iam ? { RUNNEL__STORAGE__LOG__KAFKA__AWS_MSK_IAM = "true" } : {},
  )

  common_settings = merge(
    local.settings,
    local.address_settings,
    local.kafka_transport_settings,
    {
      # object_store's S3 client takes its region and the task role's credentials from the
      # environment (AWS_REGION, and AWS_CONTAINER_CREDENTIALS_RELATIVE_URI, which ECS sets).
      AWS_REGION = data.aws_region.current.region
      RUST_LOG   = var.log_level
      # The root file system is read-only: temporary files go to /data.
      TMPDIR = "/data"
    },
    var.extra_environment,
  )

  # A service that listens beyond loopback must have a token (runnel refuses to start
  # otherwise), so each listen address goes only to the service that serves it, with its token.
  service_settings = {
    ingest = {
      RUNNEL__INGEST__LISTEN = "0.0.0.0:7301"
    }
    stream-processor = {}
    serving = {
      RUNNEL__SERVING__LISTEN = "0.0.0.0:7303"
    }
    batch-reprocessor = {}
  }

  service_secrets = {
    ingest            = { RUNNEL__INGEST__AUTH_TOKEN = local.auth_token_secret_arns.ingest }
    stream-processor  = {}
    serving           = { RUNNEL__SERVING__AUTH_TOKEN = local.auth_token_secret_arns.serving }
    batch-reprocessor = {}
  }
}
