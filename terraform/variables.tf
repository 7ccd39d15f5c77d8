variable "name" {
  description = "Prefix of every resource name (e.g. \"wtm-prod\")."
  type        = string
  default     = "wtm"
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

# ---- network ------------------------------------------------------------------------------------

variable "vpc_id" {
  description = "An existing VPC to deploy into. Null: a small VPC is created (two private and two public subnets, one NAT gateway)."
  type        = string
  default     = null
}

variable "private_subnet_ids" {
  description = "Private subnets (at least two, in different AZs) of vpc_id for the nodes and MSK. Required with vpc_id."
  type        = list(string)
  default     = []
}

variable "vpc_cidr" {
  description = "CIDR of the VPC created when vpc_id is null."
  type        = string
  default     = "10.42.0.0/16"
}

# ---- Kafka --------------------------------------------------------------------------------------

variable "create_msk" {
  description = "Create an MSK cluster. False: bring your own brokers (kafka_bootstrap_brokers)."
  type        = bool
  default     = true
}

variable "kafka_bootstrap_brokers" {
  description = "Bootstrap servers of an existing Kafka (with create_msk = false), host:port[,host:port]."
  type        = string
  default     = ""
}

variable "kafka_port" {
  description = "Port the nodes reach the brokers on (MSK SASL/SCRAM over TLS: 9096)."
  type        = number
  default     = 9096
}

variable "kafka_cidr_blocks" {
  description = "Where the brokers are, for the nodes' egress rule (default: anywhere; narrow it to your brokers' subnets)."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "kafka_topic" {
  description = "Topic the nodes consume (access logs, keyed by host)."
  type        = string
  default     = "access-logs"
}

variable "kafka_group" {
  description = "Consumer group the nodes share."
  type        = string
  default     = "wtm"
}

variable "msk_kafka_version" {
  description = "Kafka version of the MSK cluster."
  type        = string
  default     = "3.8.x"
}

variable "msk_instance_type" {
  description = "Broker instance type."
  type        = string
  default     = "kafka.m7g.large"
}

variable "msk_broker_count" {
  description = "Brokers (a multiple of the number of private subnets)."
  type        = number
  default     = 2
}

variable "msk_scram_secret_arn" {
  description = "Secrets Manager secret (KMS-encrypted, name starting with AmazonMSK_) holding the SCRAM username/password the nodes use. Null: create_msk makes one."
  type        = string
  default     = null
}

# ---- nodes --------------------------------------------------------------------------------------

variable "image" {
  description = "The wtm container image (built from deploy/Dockerfile), e.g. <account>.dkr.ecr.<region>.amazonaws.com/wtm:0.1.0."
  type        = string
}

variable "node_cpu" {
  description = "Fargate CPU units per node."
  type        = number
  default     = 2048
}

variable "node_memory" {
  description = "Fargate memory (MiB) per node."
  type        = number
  default     = 4096
}

variable "min_nodes" {
  description = "Fewest nodes the service scales to."
  type        = number
  default     = 2
}

variable "max_nodes" {
  description = "Most nodes the service scales to (no more than the topic's partitions: a node without a partition idles)."
  type        = number
  default     = 6
}

variable "target_consumer_lag" {
  description = "Autoscaling target: the consumer group's total offset lag (MSK's SumOffsetLag) per node."
  type        = number
  default     = 100000
}

# ---- lake ---------------------------------------------------------------------------------------

variable "lake_bucket_name" {
  description = "Name of the lake bucket (globally unique). Null: <name>-lake-<account id>."
  type        = string
  default     = null
}

variable "lake_prefix" {
  description = "Prefix of the lake inside the bucket (no leading or trailing slash)."
  type        = string
  default     = "lake"
}

variable "lake_ia_after_days" {
  description = "Days before lake objects move to S3 Standard-IA."
  type        = number
  default     = 30
}

variable "lake_glacier_after_days" {
  description = "Days before lake objects move to Glacier Instant Retrieval."
  type        = number
  default     = 180
}

variable "enable_upkeep_schedules" {
  description = "Run `wtm compact` hourly and `wtm retention` daily as ECS tasks from EventBridge Scheduler (false when Airflow runs airflow/dags/)."
  type        = bool
  default     = true
}

variable "retention_keep" {
  description = "`wtm retention --keep` values: days for every table, or TABLE=DAYS."
  type        = list(string)
  default     = ["90", "events=30"]
}

variable "vacuum_grace_hours" {
  description = "Hours a file removed from the lake (compaction, retention) stays for running queries and as a fence against replays."
  type        = number
  default     = 168
}

variable "log_retention_days" {
  description = "CloudWatch log retention for the nodes and MSK."
  type        = number
  default     = 365
}

# ---- monitoring ---------------------------------------------------------------------------------

variable "enable_managed_prometheus" {
  description = "Create an Amazon Managed Service for Prometheus workspace (scrape the nodes' /metrics with an ADOT collector or a Prometheus agent)."
  type        = bool
  default     = false
}

variable "enable_managed_grafana" {
  description = "Create an Amazon Managed Grafana workspace with the Prometheus workspace as a data source (import deploy/grafana/dashboards)."
  type        = bool
  default     = false
}

variable "cluster_port" {
  description = "Port the nodes' cluster listens on (open only between nodes)"
  type        = number
  default     = 7400
}
