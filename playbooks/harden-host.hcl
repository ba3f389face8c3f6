# harden-host: the host-level hardening of HashiCorp's production hardening guide for a machine
# that runs a keyhold node: no swap, no core dumps, kernel settings that keep secrets and
# kernel addresses private, SSH with keys only and no root login, time sync and auditd, and no
# service or timer the node does not need. The image builder runs it in every image (then
# checks each item in the built tree, and again on a machine booted from it).
#
# On a live host, mind the SSH settings below before running it: a host reached as root over
# SSH is locked out once root logins are refused; log in as a sudo user (`sudo = true`).

# What a node's host needs; what it must not run.
package "auditd" {}
package "systemd-timesyncd" {}
package "openssh-server" {}
package "sudo" {}
package "telnetd" {
  state = "absent"
}
package "rsh-server" {
  state = "absent"
}
# systemd's timers run what cron would (logrotate.timer rotates the audit logs).
package "cron" {
  state = "absent"
}

# No swap: secrets in memory never reach a disk (keyhold also locks its memory).
command "no swap in fstab" {
  argv   = ["sed", "-i", "-E", "/^[^#]*[[:space:]]swap[[:space:]]/d", "/etc/fstab"]
  unless = ["sh", "-c", "! grep -Eq '^[^#]*[[:space:]]swap[[:space:]]' /etc/fstab"]
}
systemd "swap.target" {
  masked = true
}

# No core dumps: a dump of the server would hold its keys. Off in the limits, in systemd (for
# every service), in systemd-coredump, and in the kernel.
file "/etc/security/limits.d/80-no-core.conf" {
  content = "# provision harden-host: no core dumps.\n* hard core 0\n* soft core 0\n"
}
file "/etc/systemd/system.conf.d/80-no-core.conf" {
  content = "# provision harden-host: no core dumps for any service.\n[Manager]\nDefaultLimitCORE=0\n"
}
file "/etc/systemd/coredump.conf.d/80-no-core.conf" {
  content = "# provision harden-host: systemd-coredump keeps nothing.\n[Coredump]\nStorage=none\nProcessSizeMax=0\n"
}
sysctl "fs.suid_dumpable" {
  value = "0"
}
sysctl "kernel.core_pattern" {
  value = "|/bin/false"
}

# The kernel's addresses and log for root only; no unprivileged BPF; no ptrace of others.
sysctl "kernel.kptr_restrict" {
  value = "2"
}
sysctl "kernel.dmesg_restrict" {
  value = "1"
}
sysctl "kernel.unprivileged_bpf_disabled" {
  value = "1"
}
sysctl "kernel.yama.ptrace_scope" {
  value = "1"
}

# Not a router: no redirects accepted or sent, reverse-path filtering, SYN cookies.
sysctl "net.ipv4.conf.all.accept_redirects" {
  value = "0"
}
sysctl "net.ipv4.conf.default.accept_redirects" {
  value = "0"
}
sysctl "net.ipv4.conf.all.send_redirects" {
  value = "0"
}
sysctl "net.ipv4.conf.all.rp_filter" {
  value = "1"
}
sysctl "net.ipv4.tcp_syncookies" {
  value = "1"
}

# SSH: keys only, no root login (Debian's sshd_config reads sshd_config.d first, and the
# first value of a setting wins).
file "/etc/ssh/sshd_config.d/80-harden.conf" {
  content = <<CONF
# provision harden-host: keys only, no root login.
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
PermitRootLogin no
X11Forwarding no
AllowAgentForwarding no
MaxAuthTries 3
LoginGraceTime 30
CONF
}

# Time sync (TLS and token TTLs need a right clock) and the kernel audit trail.
systemd "systemd-timesyncd.service" {
  enabled = true
}
systemd "auditd.service" {
  enabled = true
}
systemd "ssh.service" {
  enabled = true
}

# Nothing the node does not need: machines are rebuilt from a new image, not patched in place.
systemd "apt-daily.timer" {
  enabled = false
}
systemd "apt-daily-upgrade.timer" {
  enabled = false
}
systemd "dpkg-db-backup.timer" {
  enabled = false
}
systemd "e2scrub_all.timer" {
  enabled = false
}
systemd "fstrim.timer" {
  enabled = false
}
systemd "e2scrub_reap.service" {
  enabled = false
}
