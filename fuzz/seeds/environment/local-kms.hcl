# A 3-node cluster that unseals itself with AWS KMS: here a local moto server stands in for
# KMS (127.0.4.1-3, its own loopback range). Start moto and give provision credentials first:
#
#   python3 -m moto.server -H 127.0.0.1 -p 5000 &
#   export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
#   provision up --env local-kms     # creates alias/keyhold-local-kms in KMS if missing
#
# init makes recovery keys (not unseal keys): every node unseals itself at start and after a
# restart, with no keys given. The AWS_* variables provision runs with are passed to the nodes
# in their private environment files (etc/keyhold.d/keyhold.env, 0600), never in state.json.

provider "local" {
  address_base = "127.0.4.1"
}

nodes = 3

listener {
  tls_min_version = "tls13"
}

autopilot {
  cleanup_dead_servers      = true
  min_quorum                = 3
  server_stabilization_time = "10s"
}

seal "awskms" {
  region     = "us-east-1"
  kms_key_id = "alias/keyhold-local-kms"
  endpoint   = "http://127.0.0.1:5000"
}

init {
  # Recovery keys: they authorise generate-root and rekey; they cannot decrypt anything.
  recovery_shares    = 5
  recovery_threshold = 3
  recipients         = []
  revoke_root_token  = true
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
  }
}
