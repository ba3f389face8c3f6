# /etc/vault.d/vault.hcl -- Node 1 (initial leader)
# Raft storage backend
storage "raft" {
path = "/opt/vault/data"
node_id = "vault-1"
# Performance tuning
performance_multiplier = 1
# Autopilot configuration for automatic cluster management
autopilot_reconcile_interval = "10s"
# Peer discovery: list all other nodes
retry_join {
leader_api_addr = "https://vault-2.internal:8200"
leader_ca_cert_file = "/opt/vault/tls/ca.crt"
leader_client_cert_file = "/opt/vault/tls/vault.crt"
leader_client_key_file = "/opt/vault/tls/vault.key"
}
retry_join {
leader_api_addr = "https://vault-3.internal:8200"
leader_ca_cert_file = "/opt/vault/tls/ca.crt"
leader_client_cert_file = "/opt/vault/tls/vault.crt"
leader_client_key_file = "/opt/vault/tls/vault.key"
}
}
# API listener with TLS
listener "tcp" {
address = "0.0.0.0:8200"
cluster_address = "0.0.0.0:8201"
# TLS configuration
tls_cert_file = "/opt/vault/tls/vault.crt"
tls_key_file = "/opt/vault/tls/vault.key"
tls_min_version = "tls13"
# Client certificate verification (for mTLS)
tls_require_and_verify_client_cert = false
tls_client_ca_file = "/opt/vault/tls/ca.crt"
# Request handling
max_request_size = 33554432 # 32 MB
max_request_duration = "90s"
# Telemetry
telemetry {
unauthenticated_metrics_access = true
}
}
# Cluster communication addresses
api_addr = "https://vault-1.internal:8200"
cluster_addr = "https://vault-1.internal:8201"
cluster_name = "vault-prod"
# Web UI
ui = true
# Logging
log_level = "info"
log_file = "/var/log/vault/vault.log"
log_rotate_duration = "24h"
log_rotate_max_files = 30
# Telemetry for monitoring
telemetry {
prometheus_retention_time = "30s"
disable_hostname = true
usage_gauge_period = "10m"
maximum_gauge_cardinality = 500
}
# Disable memory lock only if the system capability cannot be set
# disable_mlock = true
# Default and maximum lease TTLs
default_lease_ttl = "1h"
max_lease_ttl = "768h"
