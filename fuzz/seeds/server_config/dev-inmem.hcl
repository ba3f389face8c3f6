storage "inmem" {}

listener "tcp" {
  address     = "127.0.0.1:8200"
  # HCL1 habit: booleans as strings.
  tls_disable = "true"
}

ui        = true
log_level = "Debug"
