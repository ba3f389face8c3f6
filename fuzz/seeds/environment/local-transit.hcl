# A 3-node cluster that unseals itself with the transit engine of another Keyhold: the
# "unsealer", a one-node Shamir Keyhold that provision runs beside the cluster
# (127.0.5.1-3 for the cluster, 127.0.5.9 for the unsealer: a loopback range of its own).
#
#   provision up --env local-transit
#
# `up` starts the unsealer first, initialises it (1 share, encrypted with age beside the
# cluster's init output, in .provision/local-transit/secrets/unsealer/), unseals it, mounts
# transit/, creates the key, a policy allowing only encrypt/decrypt with it, and a periodic
# orphan token with that policy. The token goes into each node's private environment file
# (etc/keyhold.d/keyhold.env, 0600) as VAULT_TOKEN, never into the config or state.json.
# init then makes recovery keys: every node unseals itself at start and after a restart.
# A dead unsealer is restarted and unsealed by the next `up` (or `provision unseal`).

provider "local" {
  address_base = "127.0.5.1"
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

unsealer {
  address = "127.0.5.9"
}

# With an unsealer, `address` defaults to it and `tls_ca_cert` to the environment's CA.
seal "transit" {
  key_name   = "autounseal"
  mount_path = "transit/"
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
