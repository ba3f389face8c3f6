# A 5-node Keyhold cluster on this machine, one node per loopback
# address (127.0.2.1-5) on the standard ports, TLS everywhere, Shamir seal, audit log on, the
# production guide's least-privilege admin policy, and the root token revoked once set up.
#
#   provision up --env local-5   # create or heal it (idempotent)
#   eval "$(provision env --env local-5)" # VAULT_ADDR, VAULT_CACERT, VAULT_TOKEN (admin login)
#   provision status --env local-5
#   provision down --env local-5 [--purge]

provider "local" {
  address_base = "127.0.2.1"
}

nodes = 5

listener {
  api_port        = 8200
  cluster_port    = 8201
  tls_min_version = "tls13"
}

raft {
  performance_multiplier = 1
}

autopilot {
  cleanup_dead_servers               = true
  dead_server_last_contact_threshold = "24h"
  min_quorum                         = 3
  server_stabilization_time          = "10s"
}

log {
  level  = "info"
  format = "standard"
}

seal "shamir" {}

init {
  secret_shares    = 5
  secret_threshold = 3
  # age recipients for the unseal shares and root token. Empty: provision generates an
  # identity in .provision/local-5/identity.txt (0600) and says so.
  recipients        = []
  revoke_root_token = true
}

tls {
  ca_lifetime   = "87600h"
  cert_lifetime = "8760h"
}

audit "file" {
  path      = "file"
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
  path    = "kv"
  version = 2
}

auth "userpass" {
  path = "userpass"
  user "admin" {
    policies  = ["vault-admin", "kv-apps"]
    token_ttl = "8h"
  }
}

auth "approle" {
  path = "approle"
  role "ci" {
    token_policies = ["kv-reader"]
    token_ttl      = "20m"
    token_max_ttl  = "1h"
  }
}

admin {
  auth_path = "userpass"
  user      = "admin"
}

snapshots {
  schedule = "hourly"
  retain   = 24
}
