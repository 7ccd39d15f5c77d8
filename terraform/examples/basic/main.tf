# The smallest real deployment: a new VPC, a 2-broker MSK cluster, 2–6 nodes, the lake bucket
# and its Glue tables. `terraform init && terraform apply -var image=<your wtm image>`.

provider "aws" {
  region = "eu-west-1"
}

variable "image" {
  description = "The wtm image (deploy/Dockerfile) in a registry the tasks can pull from."
  type        = string
}

module "wtm" {
  source = "../.."

  name      = "wtm-demo"
  image     = var.image
  min_nodes = 2
  max_nodes = 6
  tags      = { "env" = "demo" }
}

output "lake_url" {
  value = module.wtm.lake_url
}

output "glue_database" {
  value = module.wtm.glue_database
}
