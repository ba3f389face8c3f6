# The image keyhold's machines boot from: Debian 12 (bookworm), minimal, hardened (playbooks
# harden-host), with the keyhold binary, its service user, directories and hardened unit
# (install-server), and what a VM needs to boot and be reached (image-base).
#
#   provision image build images/debian-bookworm-keyhold.hcl [--out DIR]
#
# Outputs a qcow2 disk, its kernel and initrd (qemu boots them directly: -kernel, -initrd,
# -append "root=LABEL=keyhold-root ..."), a rootfs tarball and a Packer-format manifest.
image "debian-bookworm-keyhold" {
  base {
    suite   = "bookworm"
    variant = "minbase"
    mirror  = "http://deb.debian.org/debian"
  }

  # Installed with the base by debootstrap (the playbooks then find them present).
  packages = [
    "systemd", "systemd-sysv", "dbus", "udev", "kmod",
    "linux-image-amd64",
    "openssh-server", "sudo",
    "auditd", "systemd-timesyncd",
    "iproute2", "ca-certificates", "logrotate", "procps",
    # The machine's own name resolves without DNS (sudo looks it up on every call).
    "libnss-myhostname",
  ]

  playbooks = ["image-base", "harden-host", "install-server"]

  disk_size = "3G"
}
