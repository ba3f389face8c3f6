# Sourced by boot.sh (tests/src/nshost/boot.sh) as SETUP: lays the host out as the rendered files
# of one keyhold node say.
#   STAGE          the rendered files of the node (`provision render --host-layout` output for
#                  keyhold-1: etc/keyhold.d, etc/systemd/system, ...), and tls/ with the node's
#                  ca.crt, node.crt and node.key
#   DATA, LOGS     the test's directories, bound at /opt/keyhold/data and /var/log/keyhold
#   KEYHOLD_BIN    the binary under test, bound at /usr/local/bin/keyhold
cp -r "$STAGE/etc/." /etc/
printf '[Unit]\nDescription=keyhold test host\nWants=keyhold.service\n' \
    >"/etc/systemd/system/$BOOT_TARGET"

# The service user, as a host's package would create it.
if ! id keyhold >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin keyhold
fi

touch /usr/local/bin/keyhold
mount --bind "$KEYHOLD_BIN" /usr/local/bin/keyhold
mkdir -p /opt/keyhold/data /opt/keyhold/tls /var/log/keyhold
mount --bind "$DATA" /opt/keyhold/data
mount --bind "$LOGS" /var/log/keyhold
cp "$STAGE"/tls/* /opt/keyhold/tls/
chown -R root:keyhold /etc/keyhold.d /opt/keyhold/tls
chmod 0750 /etc/keyhold.d /opt/keyhold/tls
chmod 0640 /etc/keyhold.d/* /opt/keyhold/tls/*
chown keyhold:keyhold /opt/keyhold/data /var/log/keyhold
chmod 0750 /opt/keyhold/data /var/log/keyhold
