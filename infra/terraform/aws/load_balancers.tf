# A network load balancer each for ingest (gRPC and HTTP on 7301) and serving (gRPC on 7303):
# TCP listeners, or TLS ones with `certificate_arn` (ALPN offers HTTP/2 for gRPC), forwarding
# TCP to the tasks.

resource "aws_lb" "this" {
  #checkov:skip=CKV_AWS_91:Access logs need a bucket of the deployer's own (`access_logs_bucket`, which turns them on).
  for_each = local.balanced

  name                             = "${var.name}-${each.key}"
  load_balancer_type               = "network"
  internal                         = var.internal_load_balancers
  subnets                          = var.load_balancer_subnet_ids != null ? var.load_balancer_subnet_ids : var.private_subnet_ids
  security_groups                  = [aws_security_group.load_balancer[each.key].id]
  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = var.load_balancer_deletion_protection

  dynamic "access_logs" {
    for_each = var.access_logs_bucket == null ? [] : [var.access_logs_bucket]
    content {
      bucket  = access_logs.value
      prefix  = "${var.name}/${each.key}"
      enabled = true
    }
  }

  tags = local.tags
}

resource "aws_lb_target_group" "this" {
  for_each = local.balanced

  name                 = "${var.name}-${each.key}"
  target_type          = "ip"
  protocol             = "TCP"
  port                 = each.value.port
  vpc_id               = var.vpc_id
  deregistration_delay = 30

  health_check {
    protocol            = "TCP"
    port                = "traffic-port"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }

  tags = local.tags
}

resource "aws_lb_listener" "this" {
  for_each = local.balanced

  load_balancer_arn = aws_lb.this[each.key].arn
  port              = each.value.port
  protocol          = var.certificate_arn == null ? "TCP" : "TLS"
  certificate_arn   = var.certificate_arn
  ssl_policy        = var.certificate_arn == null ? null : "ELBSecurityPolicy-TLS13-1-2-2021-06"
  alpn_policy       = var.certificate_arn == null ? null : "HTTP2Optional"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this[each.key].arn
  }

  tags = local.tags
}
