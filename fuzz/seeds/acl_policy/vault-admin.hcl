# The production guide's least-privilege admin policy ("Least-Privilege Practices"),
# written as the guide gives it: admins manage infrastructure, not application data.
# Manage secrets engines
path "sys/mounts/*" {
capabilities = ["create", "read", "update", "delete", "list"]
}
path "sys/mounts" {
capabilities = ["read", "list"]
}
# Manage policies
path "sys/policies/acl/*" {
capabilities = ["create", "read", "update", "delete", "list"]
}
path "sys/policies/acl" {
capabilities = ["list"]
}
# Manage auth methods
path "sys/auth/*" {
capabilities = ["create", "read", "update", "delete", "list", "sudo"]
}
path "sys/auth" {
capabilities = ["read", "list"]
}
# Manage audit devices
path "sys/audit/*" {
capabilities = ["create", "read", "update", "delete", "list", "sudo"]
}
path "sys/audit" {
capabilities = ["read", "list"]
}
# View system health and leader status
path "sys/health" {
capabilities = ["read"]
}
path "sys/leader" {
capabilities = ["read"]
}
# Manage leases
path "sys/leases/*" {
capabilities = ["create", "read", "update", "delete", "list"]
}
# Read metrics
path "sys/metrics" {
capabilities = ["read"]
}
# Raft operations
path "sys/storage/raft/*" {
capabilities = ["read", "list"]
}
# DENY direct access to application secrets
# Admins manage infrastructure, not application data
path "secret/*" {
capabilities = ["deny"]
}
path "database/*" {
capabilities = ["deny"]
}
