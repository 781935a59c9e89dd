# The bucket: history (Parquet), checkpoints, batch views and the job catalog, all under
# `<bucket_prefix>/`.

resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_18:Access logs need a bucket of the deployer's own (`access_logs_bucket`, which turns them on).
  #checkov:skip=CKV_AWS_144:Cross-region replication needs a bucket and a key in a second region: a disaster-recovery choice left to the deployer.
  #checkov:skip=CKV2_AWS_62:Nothing consumes the bucket's events: runnel lists its manifests.
  bucket        = var.bucket_name
  bucket_prefix = var.bucket_name == null ? "${var.name}-" : null
  force_destroy = var.bucket_force_destroy

  tags = local.tags
}

resource "aws_s3_bucket_logging" "this" {
  count = var.access_logs_bucket == null ? 0 : 1

  bucket        = aws_s3_bucket.this.id
  target_bucket = var.access_logs_bucket
  target_prefix = "${var.name}/s3/"
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket = aws_s3_bucket.this.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "this" {
  bucket = aws_s3_bucket.this.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = local.kms_key_arn
    }
    bucket_key_enabled = true
  }
}

# runnel prunes a task's older checkpoint epochs itself; with versioning they stay as
# noncurrent versions until this expires them. The rest keeps its old versions longer.
resource "aws_s3_bucket_lifecycle_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    id     = "old-checkpoint-epochs"
    status = "Enabled"

    filter {
      prefix = "${var.bucket_prefix}/checkpoints/"
    }

    noncurrent_version_expiration {
      noncurrent_days = var.checkpoint_noncurrent_days
    }

    expiration {
      expired_object_delete_marker = true
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  rule {
    id     = "old-versions"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.this]
}

# Only TLS, only this account's principals.
data "aws_iam_policy_document" "bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.this.arn,
      "${aws_s3_bucket.this.arn}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  bucket = aws_s3_bucket.this.id
  policy = data.aws_iam_policy_document.bucket.json

  depends_on = [aws_s3_bucket_public_access_block.this]
}

# --- KMS ---------------------------------------------------------------------------------

locals {
  kms_key_arn = var.kms_key_arn != null ? var.kms_key_arn : aws_kms_key.this[0].arn
}

data "aws_iam_policy_document" "kms" {
  count = var.kms_key_arn == null ? 1 : 0

  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }

  statement {
    sid = "CloudWatchLogsEncryptsThisDeploymentsLogs"
    actions = [
      "kms:Encrypt*",
      "kms:Decrypt*",
      "kms:ReEncrypt*",
      "kms:GenerateDataKey*",
      "kms:Describe*",
    ]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${data.aws_region.current.region}.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values = [
        "arn:${data.aws_partition.current.partition}:logs:${data.aws_region.current.region}:${data.aws_caller_identity.current.account_id}:log-group:/${var.name}/*",
        "arn:${data.aws_partition.current.partition}:logs:${data.aws_region.current.region}:${data.aws_caller_identity.current.account_id}:log-group:/aws/msk/${var.name}",
      ]
    }
  }
}

resource "aws_kms_key" "this" {
  count = var.kms_key_arn == null ? 1 : 0

  description             = "runnel ${var.name}: the bucket, secrets, logs and MSK storage"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms[0].json

  tags = local.tags
}

resource "aws_kms_alias" "this" {
  count = var.kms_key_arn == null ? 1 : 0

  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this[0].key_id
}

# --- Bearer tokens -----------------------------------------------------------------------

locals {
  created_tokens = toset([
    for service, arn in {
      ingest  = var.ingest_auth_token_secret_arn
      serving = var.serving_auth_token_secret_arn
    } : service if arn == null
  ])

  auth_token_secret_arns = {
    ingest  = coalesce(var.ingest_auth_token_secret_arn, try(aws_secretsmanager_secret.auth_token["ingest"].arn, null))
    serving = coalesce(var.serving_auth_token_secret_arn, try(aws_secretsmanager_secret.auth_token["serving"].arn, null))
  }
}

resource "aws_secretsmanager_secret" "auth_token" {
  #checkov:skip=CKV2_AWS_57:Rotation needs a rotation function and a restart of the service, which reads its token at start; rotate by hand (see the README).
  for_each = local.created_tokens

  name_prefix = "${var.name}/${each.key}/auth-token-"
  description = "runnel ${var.name}: the bearer token of ${each.key} (clients send `authorization: Bearer <token>`)"
  kms_key_id  = local.kms_key_arn

  tags = local.tags
}

# A random token (letters and digits: a valid RFC 6750 bearer token). The data source draws a
# new one at every plan, so the version keeps the first: rotate by tainting the version (then
# redeploy the service, which reads its token at start).
data "aws_secretsmanager_random_password" "auth_token" {
  for_each = local.created_tokens

  password_length     = 48
  exclude_punctuation = true
  include_space       = false
}

resource "aws_secretsmanager_secret_version" "auth_token" {
  for_each = local.created_tokens

  secret_id     = aws_secretsmanager_secret.auth_token[each.key].id
  secret_string = data.aws_secretsmanager_random_password.auth_token[each.key].random_password

  lifecycle {
    ignore_changes = [secret_string]
  }
}
