# image-base: what makes a debootstrapped tree a bootable machine image (run by
# `provision image build` only, never on a live host): the root filesystem in fstab, networking
# from the kernel command line (`ip=`, read by systemd-network-generator), an `admin` login
# with sudo and no password whose keys the machine is given at boot, and SSH host keys made by
# each machine on its first boot (the image carries none).

file "/etc/fstab" {
  content = "# provision image-base: the image's one filesystem.\nLABEL=keyhold-root / ext4 defaults,noatime,errors=remount-ro 0 1\n"
}

file "/etc/hostname" {
  content = "keyhold\n"
}

file "/etc/hosts" {
  content = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
}

systemd "systemd-networkd.service" {
  enabled = true
}

systemd "systemd-network-generator.service" {
  enabled = true
}

# The operator's login: no password (locked), sudo without one, keys from the machine's seed.
user "admin" {
  system = false
  home   = "/home/admin"
  shell  = "/bin/bash"
}

directory "/home/admin" {
  mode  = "0750"
  owner = "admin"
  group = "admin"
}

file "/etc/sudoers.d/admin" {
  mode    = "0440"
  content = "# provision image-base: the operator login.\nadmin ALL=(ALL) NOPASSWD:ALL\n"
}

file "/usr/local/sbin/keyhold-firstboot" {
  mode    = "0755"
  content = <<SCRIPT
#!/bin/sh
# keyhold-firstboot: what a machine booted from a keyhold image makes for itself before sshd
# starts: its SSH host keys (the image carries none; made once, kept after), and the admin
# login's authorized keys when the machine is given them (qemu:
# -fw_cfg name=opt/keyhold/authorized_keys,file=KEYS). The host keys' fingerprints go to the
# console, where whoever booted the machine reads them to pin them.
set -eu
ssh-keygen -A >/dev/null
modprobe qemu_fw_cfg 2>/dev/null || true
seed=/sys/firmware/qemu_fw_cfg/by_name/opt/keyhold/authorized_keys/raw
if [ -r "$seed" ]; then
  install -d -m 0700 -o admin -g admin /home/admin/.ssh
  install -m 0600 -o admin -g admin "$seed" /home/admin/.ssh/authorized_keys
fi
for key in /etc/ssh/ssh_host_*_key.pub; do
  echo "keyhold-firstboot: host key $(ssh-keygen -l -f "$key")"
done
SCRIPT
}

file "/etc/systemd/system/keyhold-firstboot.service" {
  content = <<UNIT
[Unit]
Description=SSH host keys and seeded logins of a machine booted from a keyhold image
Before=ssh.service
After=local-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/keyhold-firstboot
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
UNIT
}

systemd "keyhold-firstboot.service" {
  enabled = true
}
