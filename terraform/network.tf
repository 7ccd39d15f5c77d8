# A small VPC when none is given: two AZs, private subnets for nodes and brokers, public subnets
# for one NAT gateway (image pulls, AWS APIs through the VPC endpoints below where possible).

data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:Only the first two zones (sorted by name) are used; a zone AWS adds later sorts after them and changes nothing.
  state = "available"
}

locals {
  create_vpc = var.vpc_id == null
  azs        = slice(data.aws_availability_zones.available.names, 0, 2)
  vpc_id     = local.create_vpc ? aws_vpc.this[0].id : var.vpc_id
  subnet_ids = local.create_vpc ? aws_subnet.private[*].id : var.private_subnet_ids
}

resource "aws_vpc" "this" {
  count                = local.create_vpc ? 1 : 0
  cidr_block           = var.vpc_cidr
  enable_dns_hostnames = true
  enable_dns_support   = true
  tags                 = merge(local.tags, { Name = var.name })
}

# The default security group of a new VPC allows nothing.
resource "aws_default_security_group" "this" {
  count  = local.create_vpc ? 1 : 0
  vpc_id = aws_vpc.this[0].id
  tags   = local.tags
}

resource "aws_flow_log" "this" {
  count                = local.create_vpc ? 1 : 0
  vpc_id               = aws_vpc.this[0].id
  traffic_type         = "REJECT"
  log_destination_type = "cloud-watch-logs"
  log_destination      = aws_cloudwatch_log_group.flow[0].arn
  iam_role_arn         = aws_iam_role.flow[0].arn
  tags                 = local.tags
}

resource "aws_cloudwatch_log_group" "flow" {
  count             = local.create_vpc ? 1 : 0
  name              = "/${var.name}/vpc-flow"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_iam_role" "flow" {
  count              = local.create_vpc ? 1 : 0
  name               = "${var.name}-vpc-flow"
  assume_role_policy = data.aws_iam_policy_document.flow_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "flow_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["vpc-flow-logs.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "flow" {
  count = local.create_vpc ? 1 : 0
  name  = "write-flow-logs"
  role  = aws_iam_role.flow[0].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect   = "Allow"
      Action   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
      Resource = "${aws_cloudwatch_log_group.flow[0].arn}:*"
    }]
  })
}

resource "aws_subnet" "private" {
  count             = local.create_vpc ? 2 : 0
  vpc_id            = aws_vpc.this[0].id
  availability_zone = local.azs[count.index]
  cidr_block        = cidrsubnet(var.vpc_cidr, 4, count.index)
  tags              = merge(local.tags, { Name = "${var.name}-private-${count.index}" })
}

resource "aws_subnet" "public" {
  count             = local.create_vpc ? 2 : 0
  vpc_id            = aws_vpc.this[0].id
  availability_zone = local.azs[count.index]
  cidr_block        = cidrsubnet(var.vpc_cidr, 4, 8 + count.index)
  tags              = merge(local.tags, { Name = "${var.name}-public-${count.index}" })
}

resource "aws_internet_gateway" "this" {
  count  = local.create_vpc ? 1 : 0
  vpc_id = aws_vpc.this[0].id
  tags   = local.tags
}

resource "aws_eip" "nat" {
  count  = local.create_vpc ? 1 : 0
  domain = "vpc"
  tags   = local.tags
}

resource "aws_nat_gateway" "this" {
  count         = local.create_vpc ? 1 : 0
  allocation_id = aws_eip.nat[0].id
  subnet_id     = aws_subnet.public[0].id
  tags          = local.tags
}

resource "aws_route_table" "public" {
  count  = local.create_vpc ? 1 : 0
  vpc_id = aws_vpc.this[0].id
  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.this[0].id
  }
  tags = local.tags
}

resource "aws_route_table" "private" {
  count  = local.create_vpc ? 1 : 0
  vpc_id = aws_vpc.this[0].id
  route {
    cidr_block     = "0.0.0.0/0"
    nat_gateway_id = aws_nat_gateway.this[0].id
  }
  tags = local.tags
}

resource "aws_route_table_association" "public" {
  count          = local.create_vpc ? 2 : 0
  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public[0].id
}

resource "aws_route_table_association" "private" {
  count          = local.create_vpc ? 2 : 0
  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private[0].id
}

# S3 traffic stays inside AWS's network (and off the NAT bill).
resource "aws_vpc_endpoint" "s3" {
  count             = local.create_vpc ? 1 : 0
  vpc_id            = aws_vpc.this[0].id
  service_name      = "com.amazonaws.${local.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = [aws_route_table.private[0].id]
  tags              = local.tags
}

resource "aws_security_group" "nodes" {
  name        = "${var.name}-nodes"
  description = "wtm nodes: the API port from inside the VPC, anything out (brokers, S3, image pulls)"
  vpc_id      = local.vpc_id
  tags        = local.tags

  ingress {
    description = "wtm API and /metrics, from inside the VPC"
    from_port   = 8080
    to_port     = 8080
    protocol    = "tcp"
    cidr_blocks = [var.vpc_id == null ? var.vpc_cidr : data.aws_vpc.given[0].cidr_block]
  }

  ingress {
    description = "wtm cluster port, from other wtm nodes"
    from_port   = var.cluster_port
    to_port     = var.cluster_port
    protocol    = "tcp"
    self        = true
  }

  egress {
    description = "wtm cluster port, to other wtm nodes"
    from_port   = var.cluster_port
    to_port     = var.cluster_port
    protocol    = "tcp"
    self        = true
  }

  egress {
    description = "HTTPS: S3, ECR, CloudWatch Logs, Secrets Manager"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }

  egress {
    description = "Kafka brokers"
    from_port   = var.kafka_port
    to_port     = var.kafka_port
    protocol    = "tcp"
    cidr_blocks = var.kafka_cidr_blocks
  }
}

data "aws_vpc" "given" {
  count = local.create_vpc ? 0 : 1
  id    = var.vpc_id
}
