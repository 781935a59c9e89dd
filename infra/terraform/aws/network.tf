# Security groups: each opens only what its service needs. Tasks reach Kafka on its client
# port and AWS's APIs (S3, ECR, Secrets Manager, CloudWatch Logs) on 443; nothing else.

resource "aws_security_group" "service" {
  #checkov:skip=CKV2_AWS_5:Attached to the ECS services (and the backfill task, by backfill_command) through for_each keys, which checkov does not resolve.
  for_each = local.services

  name_prefix = "${var.name}-${each.key}-"
  description = "runnel ${each.key} tasks"
  vpc_id      = var.vpc_id

  tags = merge(local.tags, { Name = "${var.name}-${each.key}" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_egress_rule" "service_https" {
  for_each = local.services

  security_group_id = aws_security_group.service[each.key].id
  description       = "AWS APIs: S3, ECR, Secrets Manager, CloudWatch Logs"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "service_kafka_msk" {
  for_each = local.create_msk ? toset(keys(local.services)) : toset([])

  security_group_id            = aws_security_group.service[each.key].id
  description                  = "Kafka (MSK)"
  ip_protocol                  = "tcp"
  from_port                    = local.kafka_port
  to_port                      = local.kafka_port
  referenced_security_group_id = aws_security_group.msk[0].id
}

resource "aws_vpc_security_group_egress_rule" "service_kafka_own" {
  for_each = local.create_msk ? {} : {
    for pair in setproduct(keys(local.services), var.kafka_client_cidr_blocks) : "${pair[0]} ${pair[1]}" => {
      service = pair[0]
      cidr    = pair[1]
    }
  }

  security_group_id = aws_security_group.service[each.value.service].id
  description       = "Kafka (your cluster)"
  ip_protocol       = "tcp"
  from_port         = local.kafka_port
  to_port           = local.kafka_port
  cidr_ipv4         = each.value.cidr
}

# Clients come in through the load balancer only.
resource "aws_vpc_security_group_ingress_rule" "service_from_load_balancer" {
  for_each = local.balanced

  security_group_id            = aws_security_group.service[each.key].id
  description                  = "${each.key} from its load balancer"
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  referenced_security_group_id = aws_security_group.load_balancer[each.key].id
}

resource "aws_vpc_security_group_ingress_rule" "service_metrics" {
  for_each = {
    for pair in setproduct([for name, service in local.services : name if service.metrics_port != null], var.metrics_allowed_cidr_blocks) :
    "${pair[0]} ${pair[1]}" => { service = pair[0], cidr = pair[1] }
  }

  security_group_id = aws_security_group.service[each.value.service].id
  description       = "Prometheus scrapes ${each.value.service}"
  ip_protocol       = "tcp"
  from_port         = local.services[each.value.service].metrics_port
  to_port           = local.services[each.value.service].metrics_port
  cidr_ipv4         = each.value.cidr
}

resource "aws_security_group" "load_balancer" {
  #checkov:skip=CKV2_AWS_5:Attached to the load balancers (aws_lb.this) through for_each keys, which checkov does not resolve.
  for_each = local.balanced

  name_prefix = "${var.name}-${each.key}-lb-"
  description = "runnel ${each.key}'s load balancer"
  vpc_id      = var.vpc_id

  tags = merge(local.tags, { Name = "${var.name}-${each.key}-lb" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "load_balancer_clients" {
  for_each = {
    for pair in setproduct(keys(local.balanced), distinct(concat(var.ingest_allowed_cidr_blocks, var.serving_allowed_cidr_blocks))) :
    "${pair[0]} ${pair[1]}" => { service = pair[0], cidr = pair[1] }
    if contains(local.balanced[pair[0]].allowed, pair[1])
  }

  security_group_id = aws_security_group.load_balancer[each.value.service].id
  description       = "${each.value.service}'s clients"
  ip_protocol       = "tcp"
  from_port         = local.balanced[each.value.service].port
  to_port           = local.balanced[each.value.service].port
  cidr_ipv4         = each.value.cidr
}

resource "aws_vpc_security_group_egress_rule" "load_balancer_targets" {
  for_each = local.balanced

  security_group_id            = aws_security_group.load_balancer[each.key].id
  description                  = "${each.key}'s tasks"
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  referenced_security_group_id = aws_security_group.service[each.key].id
}

resource "aws_security_group" "msk" {
  count = local.create_msk ? 1 : 0

  name_prefix = "${var.name}-msk-"
  description = "runnel's MSK brokers: TLS clients from runnel's tasks"
  vpc_id      = var.vpc_id

  tags = merge(local.tags, { Name = "${var.name}-msk" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "msk_from_services" {
  for_each = local.create_msk ? toset(keys(local.services)) : toset([])

  security_group_id            = aws_security_group.msk[0].id
  description                  = "Kafka from ${each.key}"
  ip_protocol                  = "tcp"
  from_port                    = local.kafka_port
  to_port                      = local.kafka_port
  referenced_security_group_id = aws_security_group.service[each.key].id
}
