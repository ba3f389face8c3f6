path "secret/data/+/config*" {
  capabilities = ["create", "update", "read"]
  allowed_parameters = {
    "ttl" = ["1h", 3600]
    "*"   = []
  }
  denied_parameters = { "policies" = ["root"] }
  required_parameters = ["ttl"]
  min_wrapping_ttl = "1m"
  max_wrapping_ttl = 3600
}
path "auth/token/create" { policy = "write" }
path "sys/*" { capabilities = ["deny"] }
