# Full use of the application secrets mount `kv/` (KV v2): what the admin login of a local
# or CI environment needs to put test secrets in. Production environments give this to
# application owners, not to the admin login.
path "kv/data/*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}
path "kv/metadata/*" {
  capabilities = ["read", "list", "delete"]
}
path "kv/delete/*" {
  capabilities = ["update"]
}
path "kv/undelete/*" {
  capabilities = ["update"]
}
path "kv/destroy/*" {
  capabilities = ["update"]
}
