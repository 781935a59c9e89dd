# Inputs of the runnel module. The README's tables are generated from these descriptions
# (infra/terraform/readme.py); keep each description one paragraph.

variable "name" {
  description = "Name of this deployment. Prefixes every resource's name (e.g. `<name>-ingest`)."
  type        = string
  default     = "runnel"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,19}$", var.name))
    error_message = "name must be 1 to 20 characters: a lower-case letter, then lower-case letters, digits and dashes (it prefixes load balancer and target group names, which AWS limits to 32 characters)."
  }
}

variable "tags" {
  description = "Tags added to every resource that takes tags."
  type        = map(string)
  default     = {}
}

# --- Network -----------------------------------------------------------------------------

variable "vpc_id" {
  description = "The VPC everything runs in."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must be a VPC id (vpc-...)."
  }
}

variable "private_subnet_ids" {
  description = "Subnets for the ECS tasks and the MSK brokers, one per availability zone (at least two). Tasks get no public address: these subnets need a route to S3, ECR, Secrets Manager and CloudWatch Logs (a NAT gateway or VPC endpoints)."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) >= 2 && alltrue([for id in var.private_subnet_ids : can(regex("^subnet-[0-9a-f]+$", id))])
    error_message = "private_subnet_ids must be at least two subnet ids (subnet-...)."
  }
}

variable "load_balancer_subnet_ids" {
  description = "Subnets for the ingest and serving network load balancers: public subnets when `internal_load_balancers` is false. Default: `private_subnet_ids`."
  type        = list(string)
  default     = null

  validation {
    condition     = alltrue([for id in(var.load_balancer_subnet_ids == null ? [] : var.load_balancer_subnet_ids) : can(regex("^subnet-[0-9a-f]+$", id))])
    error_message = "load_balancer_subnet_ids must be subnet ids (subnet-...)."
  }
}

variable "internal_load_balancers" {
  description = "Whether the ingest and serving load balancers are internal (reachable from the VPC and what is peered with it) rather than internet-facing."
  type        = bool
  default     = true
}

variable "ingest_allowed_cidr_blocks" {
  description = "Client networks allowed to reach ingest's load balancer (gRPC and HTTP, port 7301)."
  type        = list(string)

  validation {
    condition     = length(var.ingest_allowed_cidr_blocks) > 0 && alltrue([for c in var.ingest_allowed_cidr_blocks : can(cidrhost(c, 0))])
    error_message = "ingest_allowed_cidr_blocks must be one or more CIDR blocks."
  }
}

variable "serving_allowed_cidr_blocks" {
  description = "Client networks allowed to reach serving's load balancer (gRPC, port 7303)."
  type        = list(string)

  validation {
    condition     = length(var.serving_allowed_cidr_blocks) > 0 && alltrue([for c in var.serving_allowed_cidr_blocks : can(cidrhost(c, 0))])
    error_message = "serving_allowed_cidr_blocks must be one or more CIDR blocks."
  }
}

variable "metrics_allowed_cidr_blocks" {
  description = "Networks (e.g. a Prometheus server's) allowed to scrape the services' `/metrics` and `/status` directly on their tasks: ingest 7301, stream-processor 7302, serving 7305. Empty: none."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.metrics_allowed_cidr_blocks : can(cidrhost(c, 0))])
    error_message = "metrics_allowed_cidr_blocks must be CIDR blocks."
  }
}

variable "certificate_arn" {
  description = "An ACM certificate for the load balancers. Given: their listeners speak TLS (clients use `https://`, gRPC negotiates HTTP/2 with ALPN) and forward plain TCP to the tasks. Null: plain TCP listeners."
  type        = string
  default     = null

  validation {
    condition     = var.certificate_arn == null || can(regex("^arn:aws[a-z-]*:acm:", var.certificate_arn))
    error_message = "certificate_arn must be an ACM certificate ARN."
  }
}

variable "load_balancer_deletion_protection" {
  description = "Whether the load balancers refuse deletion (turn it off before `destroy`)."
  type        = bool
  default     = true
}

# --- Kafka -------------------------------------------------------------------------------

variable "kafka_bootstrap_servers" {
  description = "Bring your own Kafka: its bootstrap servers (`host:port,...`). Given, the module creates no MSK cluster, and `kafka_properties` says how to reach it. Null: the module creates an Amazon MSK cluster."
  type        = string
  default     = null

  validation {
    condition     = var.kafka_bootstrap_servers == null || can(regex("^[^,\\s]+:[0-9]+(,[^,\\s]+:[0-9]+)*$", var.kafka_bootstrap_servers))
    error_message = "kafka_bootstrap_servers must be a comma-separated host:port list."
  }
}

variable "kafka_client_cidr_blocks" {
  description = "Bring your own Kafka: the networks its brokers are in, to which the tasks may open `kafka_port`. Ignored with MSK (the tasks may reach exactly its security group)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.kafka_client_cidr_blocks : can(cidrhost(c, 0))])
    error_message = "kafka_client_cidr_blocks must be CIDR blocks."
  }
}

variable "kafka_port" {
  description = "Bring your own Kafka: the brokers' client port. Ignored with MSK (9098 with IAM, 9094 without)."
  type        = number
  default     = 9094

  validation {
    condition     = var.kafka_port > 0 && var.kafka_port < 65536
    error_message = "kafka_port must be a TCP port."
  }
}

variable "kafka_properties" {
  description = "librdkafka properties for every Kafka client (runnel's `storage.log.kafka.properties`), e.g. `{ \"security.protocol\" = \"SSL\" }`. The default speaks TLS with the system's CA certificates; with MSK's IAM authentication runnel sets `security.protocol` and `sasl.mechanism` itself."
  type        = map(string)
  default = {
    "security.protocol" = "SSL"
    "ssl.ca.location"   = "probe"
  }

  validation {
    condition     = alltrue([for k, _ in var.kafka_properties : can(regex("^[a-z][a-z0-9.]*$", k))])
    error_message = "kafka_properties keys must be librdkafka property names (lower-case letters, digits and dots)."
  }
}

variable "msk_iam_authentication" {
  description = "MSK: clients authenticate with IAM (SASL/OAUTHBEARER over TLS, port 9098; runnel's `aws-msk-iam`), and each task role gets only the `kafka-cluster:` actions its service needs. False: unauthenticated TLS on 9094, confined by the security groups alone."
  type        = bool
  default     = true
}

variable "msk_kafka_version" {
  description = "MSK: the Apache Kafka version of the cluster."
  type        = string
  default     = "3.9.x"
}

variable "msk_instance_type" {
  description = "MSK: the brokers' instance type."
  type        = string
  default     = "kafka.m7g.large"

  validation {
    condition     = startswith(var.msk_instance_type, "kafka.")
    error_message = "msk_instance_type must be an MSK broker type (kafka....)."
  }
}

variable "msk_broker_count" {
  description = "MSK: the number of brokers, a multiple of the number of private subnets. runnel's topics have replication factor 3 and `min.insync.replicas` 2, so at least 3."
  type        = number
  default     = 3

  validation {
    condition     = var.msk_broker_count >= 3
    error_message = "msk_broker_count must be at least 3 (replication factor 3)."
  }
}

variable "msk_volume_size_gib" {
  description = "MSK: each broker's EBS volume, in GiB."
  type        = number
  default     = 100

  validation {
    condition     = var.msk_volume_size_gib >= 1 && var.msk_volume_size_gib <= 16384
    error_message = "msk_volume_size_gib must be between 1 and 16384."
  }
}

# --- Storage -----------------------------------------------------------------------------

variable "bucket_name" {
  description = "Name of the S3 bucket the module creates for history, checkpoints and batch views. Null: a unique name from `name`."
  type        = string
  default     = null

  validation {
    condition     = var.bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", coalesce(var.bucket_name, "x")))
    error_message = "bucket_name must be a valid S3 bucket name."
  }
}

variable "bucket_prefix" {
  description = "The key prefix under which runnel keeps everything in the bucket (`s3://<bucket>/<prefix>`); the tasks' roles reach only keys under it."
  type        = string
  default     = "runnel"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_-]*$", var.bucket_prefix))
    error_message = "bucket_prefix must be one path segment: lower-case letters, digits, `_` and `-`."
  }
}

variable "bucket_force_destroy" {
  description = "Whether `destroy` deletes the bucket with everything in it."
  type        = bool
  default     = false
}

variable "checkpoint_noncurrent_days" {
  description = "Days a checkpoint epoch runnel has pruned (a noncurrent object version under `<prefix>/checkpoints/`) is kept before S3 expires it."
  type        = number
  default     = 3

  validation {
    condition     = var.checkpoint_noncurrent_days >= 1
    error_message = "checkpoint_noncurrent_days must be at least 1."
  }
}

variable "noncurrent_version_days" {
  description = "Days any other overwritten or deleted object version (history, batch views, the job catalog) is kept before S3 expires it."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_days >= 1
    error_message = "noncurrent_version_days must be at least 1."
  }
}

variable "kms_key_arn" {
  description = "A KMS key for the bucket, the secrets, the log groups and MSK's storage. Its policy must let CloudWatch Logs use it. Null: the module creates one (with rotation)."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN."
  }
}

# --- Services ----------------------------------------------------------------------------

variable "image" {
  description = "The runnel container image (built by infra/docker/build-images.sh and pushed), e.g. `123456789012.dkr.ecr.eu-west-1.amazonaws.com/runnel:1.0.0`. From ECR, the tasks may pull exactly that repository."
  type        = string

  validation {
    condition     = can(regex("^[^\\s:]+(:[0-9]+)?/[^\\s]+(:[A-Za-z0-9_.-]+|@sha256:[0-9a-f]{64})$", var.image))
    error_message = "image must be a repository URL with a tag or digest, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/runnel:1.0.0."
  }
}

variable "cpu_architecture" {
  description = "The image's CPU architecture: X86_64 or ARM64."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.cpu_architecture)
    error_message = "cpu_architecture must be X86_64 or ARM64."
  }
}

variable "stream_processor_count" {
  description = "How many stream-processor tasks share the jobs' partitions (more than a job's partition count leaves some idle for that job)."
  type        = number
  default     = 2

  validation {
    condition     = var.stream_processor_count >= 1 && floor(var.stream_processor_count) == var.stream_processor_count
    error_message = "stream_processor_count must be a whole number, at least 1."
  }
}

variable "serving_count" {
  description = "How many serving tasks answer queries behind its load balancer."
  type        = number
  default     = 2

  validation {
    condition     = var.serving_count >= 1 && floor(var.serving_count) == var.serving_count
    error_message = "serving_count must be a whole number, at least 1."
  }
}

variable "task_sizes" {
  description = "Fargate CPU units and memory (MiB) of each service's task. Ingest runs one task (it runs the archiver, which must run once); the others scale by their counts."
  type = object({
    ingest            = object({ cpu = number, memory = number })
    stream_processor  = object({ cpu = number, memory = number })
    serving           = object({ cpu = number, memory = number })
    batch_reprocessor = object({ cpu = number, memory = number })
  })
  default = {
    ingest            = { cpu = 1024, memory = 2048 }
    stream_processor  = { cpu = 2048, memory = 4096 }
    serving           = { cpu = 1024, memory = 2048 }
    batch_reprocessor = { cpu = 4096, memory = 16384 }
  }

  validation {
    condition     = alltrue([for s in values(var.task_sizes) : contains([256, 512, 1024, 2048, 4096, 8192, 16384], s.cpu) && s.memory >= 512])
    error_message = "Each task's cpu must be a Fargate size (256, 512, 1024, 2048, 4096, 8192 or 16384) and its memory at least 512 MiB."
  }
}

variable "ephemeral_storage_gib" {
  description = "Fargate ephemeral storage of each task, in GiB (runnel's `/data`: local state and files being written)."
  type        = number
  default     = 40

  validation {
    condition     = var.ephemeral_storage_gib >= 21 && var.ephemeral_storage_gib <= 200
    error_message = "ephemeral_storage_gib must be between 21 and 200."
  }
}

variable "extra_environment" {
  description = "More `RUNNEL__...` settings for every service (e.g. your streams and jobs, or `RUNNEL_CONFIG` naming a config file baked into a derived image), added to the module's own. Tokens are not taken here: they come from Secrets Manager."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, _ in var.extra_environment : can(regex("^RUNNEL(_CONFIG|__[A-Z0-9_]+)$", k))])
    error_message = "extra_environment keys must be RUNNEL_CONFIG or RUNNEL__ settings."
  }

  validation {
    condition     = length(setintersection(keys(var.extra_environment), ["RUNNEL__INGEST__AUTH_TOKEN", "RUNNEL__SERVING__AUTH_TOKEN"])) == 0
    error_message = "Tokens come from Secrets Manager (ingest_auth_token_secret_arn, serving_auth_token_secret_arn), not extra_environment."
  }
}

variable "ingest_auth_token_secret_arn" {
  description = "A Secrets Manager secret holding ingest's bearer token (the whole secret string). Null: the module creates one with a random token."
  type        = string
  default     = null

  validation {
    condition     = var.ingest_auth_token_secret_arn == null || can(regex("^arn:aws[a-z-]*:secretsmanager:", var.ingest_auth_token_secret_arn))
    error_message = "ingest_auth_token_secret_arn must be a Secrets Manager secret ARN."
  }
}

variable "serving_auth_token_secret_arn" {
  description = "A Secrets Manager secret holding serving's bearer token (the whole secret string). Null: the module creates one with a random token."
  type        = string
  default     = null

  validation {
    condition     = var.serving_auth_token_secret_arn == null || can(regex("^arn:aws[a-z-]*:secretsmanager:", var.serving_auth_token_secret_arn))
    error_message = "serving_auth_token_secret_arn must be a Secrets Manager secret ARN."
  }
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps the services' and MSK's logs."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a retention CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288 or 3653)."
  }
}

variable "log_level" {
  description = "The services' log filter (`RUST_LOG`), e.g. `info` or `info,runnel_log=debug`."
  type        = string
  default     = "info"
}

variable "access_logs_bucket" {
  description = "An S3 bucket (yours, set up for S3 server access logs and load balancer access logs) that receives the bucket's access logs and the load balancers' access logs, under `<name>/`. Null: no access logs."
  type        = string
  default     = null
}
