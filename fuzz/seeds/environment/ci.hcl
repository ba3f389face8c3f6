# An ephemeral 3-node cluster for a CI job: up in seconds, gone without a trace.
#
#   provision up --env ci
#   eval "$(provision env --env ci)"
#   ... run the job's tests against VAULT_ADDR ...
#   provision down --env ci --purge
#
# Fast timers (short autopilot stabilization), one unseal share, and the root token kept
# (encrypted in .provision/ci/secrets) so a job may reconfigure the cluster freely.

provider "local" {
  address_base = "127.0.3.1"
}

nodes = 3

listener {
  tls_min_version = "tls13"
}

raft {
  performance_multiplier = 1
}

# server_stabilization_time is what makes formation fast: a joined node votes this long after
# it is first seen healthy (autopilot follows Raft changes; it does not wait for its 10s reconcile
# tick). Vault's 10s default guards a production quorum against a newcomer that flaps; a CI
# cluster's nodes are processes on one machine's loopback, thrown away after the job, so a short
# proof of health is enough. Production environments (local.hcl, ...) keep 10s.
autopilot {
  cleanup_dead_servers      = false
  server_stabilization_time = "2s"
  last_contact_threshold    = "5s"
}

log {
  level = "warn"
}

init {
  secret_shares     = 1
  secret_threshold  = 1
  revoke_root_token = false
}

tls {
  ca_lifetime   = "48h"
  cert_lifetime = "24h"
}

audit "file" {
  file_path = "audit.log"
}

policy "vault-admin" {
  file = "policies/vault-admin.hcl"
}

policy "kv-apps" {
  file = "policies/kv-apps.hcl"
}

policy "kv-reader" {
  file = "policies/kv-reader.hcl"
}

secrets "kv" {
  path = "kv"
}

auth "userpass" {
  user "admin" {
    policies = ["vault-admin", "kv-apps"]
  }
}

auth "approle" {
  role "ci" {
    token_policies = ["kv-reader"]
    token_ttl      = "20m"
  }
}
