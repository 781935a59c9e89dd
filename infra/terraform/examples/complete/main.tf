# runnel on AWS: the module with MSK, in a VPC you already have.
#
#   tofu init && tofu apply -var-file=example.tfvars
#
# See ../../aws/README.md for every input and how to run a backfill.

terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.0, < 7.0"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      "managed-by" = "terraform"
    }
  }
}

variable "region" {
  description = "The AWS region."
  type        = string
  default     = "eu-west-1"
}

variable "vpc_id" {
  description = "Your VPC."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets with a NAT gateway or VPC endpoints, one per availability zone (three for three MSK brokers)."
  type        = list(string)
}

variable "public_subnet_ids" {
  description = "Public subnets for internet-facing load balancers; empty keeps them internal."
  type        = list(string)
  default     = []
}

variable "image" {
  description = "The runnel image pushed to ECR, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/runnel:1.0.0."
  type        = string
}

variable "certificate_arn" {
  description = "An ACM certificate for TLS on the load balancers (recommended)."
  type        = string
  default     = null
}

variable "client_cidr_blocks" {
  description = "The networks of your producers and query clients."
  type        = list(string)
}

module "runnel" {
  source = "../../aws"

  name                     = "runnel"
  vpc_id                   = var.vpc_id
  private_subnet_ids       = var.private_subnet_ids
  load_balancer_subnet_ids = length(var.public_subnet_ids) > 0 ? var.public_subnet_ids : null
  internal_load_balancers  = length(var.public_subnet_ids) == 0
  certificate_arn          = var.certificate_arn

  ingest_allowed_cidr_blocks  = var.client_cidr_blocks
  serving_allowed_cidr_blocks = var.client_cidr_blocks

  image                  = var.image
  stream_processor_count = 3
  serving_count          = 2

  msk_broker_count    = 3
  msk_instance_type   = "kafka.m7g.large"
  msk_volume_size_gib = 200

  tags = {
    environment = "production"
  }
}

output "ingest_endpoint" {
  description = "Send events here."
  value       = module.runnel.ingest_endpoint
}

output "serving_endpoint" {
  description = "Query results here."
  value       = module.runnel.serving_endpoint
}

output "tokens" {
  description = "Read a token with `aws secretsmanager get-secret-value --query SecretString --output text --secret-id <arn>`."
  value = {
    ingest  = module.runnel.ingest_auth_token_secret_arn
    serving = module.runnel.serving_auth_token_secret_arn
  }
}

output "backfill_command" {
  description = "Runs a backfill: JOB=page_views MODE=recompute, then this."
  value       = module.runnel.backfill_command
}
