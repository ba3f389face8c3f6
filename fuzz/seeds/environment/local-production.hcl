# The production shape on one machine: five nodes, AWS KMS auto-unseal with recovery keys,
# scheduled S3 snapshots with retention, two audit devices (Vault's guidance: at least two,
# so the cluster serves while one is unavailable), the least-privilege admin policy, the
# initial root token revoked. KMS and S3 are moto's server mode on loopback here:
#
#   pip install 'moto[server]' && python3 -m moto.server -H 127.0.0.1 -p 5000 &
#   export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
#   provision up --env local-production
#
# Pointing the seal's and the bucket's endpoints at AWS (or removing them) is the whole step to
# real KMS and S3. Restore drills (a scheduled `provision snapshot verify`) come with the day-2
# workflows.

provider "local" {
  address_base = "127.0.6.1"
}

nodes = 5

listener {
  tls_min_version = "tls13"
}

raft {
  performance_multiplier = 1
}

# Vault's safe defaults: a joined node votes after 10 s of health; dead servers are removed
# but never below a quorum of five.
autopilot {
  cleanup_dead_servers      = true
  min_quorum                = 5
  server_stabilization_time = "10s"
}

seal "awskms" {
  region     = "us-east-1"
  kms_key_id = "alias/keyhold-local-production"
  endpoint   = "http://127.0.0.1:5000"
}

init {
  recovery_shares    = 5
  recovery_threshold = 3
  revoke_root_token  = true
}

audit "file" {
  path      = "file"
  file_path = "audit.log"
}

audit "file" {
  path      = "file-secondary"
  file_path = "audit-secondary.log"
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

snapshots {
  schedule   = "hourly"
  retain     = 24
  retain_for = "72h"
  s3 {
    bucket   = "keyhold-local-production"
    prefix   = "local-production/"
    region   = "us-east-1"
    endpoint = "http://127.0.0.1:5000"
  }
}
