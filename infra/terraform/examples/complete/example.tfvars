# Values for a try-out; replace every id with yours.
region             = "eu-west-1"
vpc_id             = "vpc-0123456789abcdef0"
private_subnet_ids = ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0aaaaaaaaaaaaaaa2", "subnet-0aaaaaaaaaaaaaaa3"]
public_subnet_ids  = []
image              = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/runnel:1.0.0"
client_cidr_blocks = ["10.0.0.0/8"]
