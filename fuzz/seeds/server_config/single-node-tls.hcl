# One node, TLS on the API, Shamir unseal: the smallest production config.
storage "raft" {
  path    = "/var/lib/keyhold/data"
  node_id = "node-1"
}

listener "tcp" {
  address         = "0.0.0.0:8200"
  tls_cert_file   = "/etc/keyhold/tls/node.crt"
  tls_key_file    = "/etc/keyhold/tls/node.key"
  tls_min_version = "tls12"
}

api_addr      = "https://node-1.internal:8200"
cluster_addr  = "https://node-1.internal:8201"
disable_mlock = true
