# install-server: what a systemd host needs before provision puts a keyhold node on it. Run by
# `provision up` on every host of an ssh environment (over SSH), and by the image builder in a
# chroot (where systemd does not run: units are only enabled). Idempotent: a second run
# changes nothing.

# The service user: a system account with no shell and no home (keyhold.service's User=).
user "keyhold" {
  system = true
  home   = "/nonexistent"
  shell  = "/usr/sbin/nologin"
}

# Config and TLS: owned by root, readable by the service, not writable by it.
directory "/etc/keyhold.d" {
  mode  = "0750"
  owner = "root"
  group = "keyhold"
}

directory "/opt/keyhold" {
  mode  = "0755"
  owner = "root"
  group = "root"
}

directory "/opt/keyhold/tls" {
  mode  = "0750"
  owner = "root"
  group = "keyhold"
}

# What the service writes: its data (0700), its logs and audit files (0750).
directory "/opt/keyhold/data" {
  mode  = "0700"
  owner = "keyhold"
  group = "keyhold"
}

directory "/var/log/keyhold" {
  mode  = "0750"
  owner = "keyhold"
  group = "keyhold"
}

# The hardened unit (templates/keyhold.service.hbs, rendered for this node) and the host files
# that keep secrets out of swap and core dumps.
template "keyhold.service" {
  owner = "root"
  group = "root"
}

template "sysctl.conf" {
  owner = "root"
  group = "root"
}

template "limits.conf" {
  owner = "root"
  group = "root"
}

template "coredump.conf" {
  owner = "root"
  group = "root"
}

template "logrotate" {
  owner = "root"
  group = "root"
}

systemd "keyhold.service" {
  daemon_reload = true
  enabled       = true
}
