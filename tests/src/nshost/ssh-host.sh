# Sourced by boot.sh as SETUP: a bare host reached over SSH, as a freshly installed server is.
# Its sshd (Debian's ssh.service) has host keys of its own and lets root in with one key.
#   AUTHORIZED_KEY   the public key root logs in with
#   HOSTNAME_        the host's name
printf '[Unit]\nDescription=keyhold test host\nWants=ssh.service\n' \
    >"/etc/systemd/system/$BOOT_TARGET"
rm -f /etc/ssh/ssh_host_*
ssh-keygen -A >/dev/null
mkdir -p /etc/ssh/sshd_config.d
printf 'PermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\n' \
    >/etc/ssh/sshd_config.d/keyhold-test.conf
# root's home as on a fresh server: nothing of this machine's (its dotfiles would run in every
# SSH session).
mount -t tmpfs -o mode=0700 keyhold-root-home /root
mkdir -p -m 0700 /root/.ssh
cp "$AUTHORIZED_KEY" /root/.ssh/authorized_keys
chmod 0600 /root/.ssh/authorized_keys
hostname "$HOSTNAME_"
echo "$HOSTNAME_" >/etc/hostname
