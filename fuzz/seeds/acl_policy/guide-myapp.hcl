path "kv/data/myapp/*" {
capabilities = ["read"]
}
path "database/creds/myapp-role" {
capabilities = ["read"]
}
path "pki/issue/myapp-role" {
capabilities = ["create", "update"]
}
path "sys/capabilities-self" {
capabilities = ["create", "update"]
}
