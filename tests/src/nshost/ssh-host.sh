# Sourced by boot.sh as SETUP: a bare host reached over SSH, as a freshly installed server is.
# Its sshd (Debian's ssh.service) has host keys of its own and lets root, `deploy` (sudo without
# a password) and `guest` (no sudo) in with one key.
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
# Two more logins with the same key, as cloud images have: `deploy`, allowed sudo without a
# password, and `guest`, allowed no sudo at all.
for user in deploy guest; do
    if ! id "$user" >/dev/null 2>&1; then
        # '*': no password, and not locked (sshd refuses keys of a locked account).
        useradd --create-home --shell /bin/bash --password '*' "$user"
    fi
    mkdir -p -m 0700 "/home/$user/.ssh"
    cp "$AUTHORIZED_KEY" "/home/$user/.ssh/authorized_keys"
    chown -R "$user:$user" "/home/$user/.ssh"
done
mkdir -p /etc/sudoers.d
echo 'deploy ALL=(ALL) NOPASSWD:ALL' >/etc/sudoers.d/deploy
chmod 0440 /etc/sudoers.d/deploy
hostname "$HOSTNAME_"
echo "$HOSTNAME_" >/etc/hostname
# As an installer writes it: the host's name resolves (sudo warns on every command otherwise).
echo "127.0.1.1 $HOSTNAME_" >>/etc/hosts
