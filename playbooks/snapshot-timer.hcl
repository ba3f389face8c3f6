# snapshot-timer: the S3 snapshot agent on a systemd host (environments with
# `snapshots { s3 { ... } }`): its staging directory, its service and timer (rendered for the
# node), systemd told about them and the timer enabled. Run by `provision up` after
# install-server; the agent's AppRole login files come from `up`'s snapshots step.

directory "/opt/keyhold/snapshots" {
  mode  = "0700"
  owner = "keyhold"
  group = "keyhold"
}

template "keyhold-snapshot.service" {
  owner = "root"
  group = "root"
}

template "keyhold-snapshot.timer" {
  owner = "root"
  group = "root"
}

systemd "keyhold-snapshot.timer" {
  daemon_reload = true
  enabled       = true
}
