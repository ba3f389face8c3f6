# Read-only use of `kv/` (KV v2), for machine logins such as the `ci` AppRole.
path "kv/data/*" {
  capabilities = ["read"]
}
path "kv/metadata/*" {
  capabilities = ["read", "list"]
}
