#!/bin/bash
# Turns fresh namespaces into a systemd host for one keyhold node, then execs systemd as PID 1.
# Run by `provision_systemd.rs` as `unshare --cgroup --pid --fork --mount --net --uts --ipc
# --mount-proc bash boot.sh` (after moving itself into cgroups of its own), as root.
#
# The host is left as it was: every directory systemd or the node writes to is a tmpfs, an
# overlay with a tmpfs on top, or a bind mount of the test's own directories, all in this
# private mount namespace; /sys and /proc/sys are read-only, /dev is a fresh tmpfs.
#
# Inputs (environment):
#   STAGE          the rendered files of the node (`provision render --host-layout` output for
#                  keyhold-1: etc/keyhold.d, etc/systemd/system, ...), and tls/ with the node's
#                  ca.crt, node.crt and node.key
#   SCRATCH        an empty directory, where this namespace keeps its tmpfs layers
#   DATA, LOGS     the test's directories, bound at /opt/keyhold/data and /var/log/keyhold
#   KEYHOLD_BIN    the binary under test, bound at /usr/local/bin/keyhold
#   CGROUP_LAYOUT  unified (cgroup v2 only), hybrid (v1 name=systemd + v2) or legacy (v1 only)
#   BOOT_TARGET    the unit systemd starts (written here: it wants keyhold.service)
set -euo pipefail

# Nothing mounted here may propagate back to the host.
mount --make-rprivate /

mount -t tmpfs -o mode=0700 keyhold-scratch "$SCRATCH"

# lift DIR: DIR becomes an overlay of itself under an empty tmpfs layer, so files and mount
# points can be made in it without touching the host's own DIR.
lift() {
    local layer
    layer="$SCRATCH/layers/$(echo "$1" | tr / _)"
    mkdir -p "$layer/upper" "$layer/work"
    mount -t overlay keyhold-layer -o "lowerdir=$1,upperdir=$layer/upper,workdir=$layer/work" "$1"
}
lift /etc
lift /var
lift /opt
lift /usr/local/bin

# /dev: a fresh tmpfs with the usual nodes (systemd chowns the console and makes symlinks).
dev="$SCRATCH/dev"
mkdir -p "$dev"
mount -t tmpfs -o mode=0755,nosuid keyhold-dev "$dev"
mknod -m 0666 "$dev/null" c 1 3
mknod -m 0666 "$dev/zero" c 1 5
mknod -m 0666 "$dev/full" c 1 7
mknod -m 0666 "$dev/random" c 1 8
mknod -m 0666 "$dev/urandom" c 1 9
mknod -m 0666 "$dev/tty" c 5 0
mkdir -m 0755 "$dev/pts" "$dev/shm" "$dev/mqueue" "$dev/hugepages"
ln -s pts/ptmx "$dev/ptmx"
ln -s /proc/self/fd "$dev/fd"
ln -s /proc/self/fd/0 "$dev/stdin"
ln -s /proc/self/fd/1 "$dev/stdout"
ln -s /proc/self/fd/2 "$dev/stderr"
mount --move "$dev" /dev
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm

# /sys read-only, with this namespace's own cgroup tree (rooted at the test's cgroup).
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs /sys
case "$CGROUP_LAYOUT" in
unified)
    mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
    ;;
hybrid | legacy)
    mount -t tmpfs -o mode=0755,nosuid,nodev,noexec keyhold-cgroup /sys/fs/cgroup
    mkdir /sys/fs/cgroup/systemd
    mount -t cgroup -o none,name=systemd,nosuid,nodev,noexec cgroup /sys/fs/cgroup/systemd
    if [ "$CGROUP_LAYOUT" = hybrid ]; then
        mkdir /sys/fs/cgroup/unified
        mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup/unified
    fi
    ;;
*)
    echo "boot.sh: unknown CGROUP_LAYOUT '$CGROUP_LAYOUT'" >&2
    exit 1
    ;;
esac
# Kernel settings stay the host's: systemd-sysctl skips a read-only /proc/sys.
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys

# The host's own units must not start here: only the rendered ones and the boot target.
rm -rf /etc/systemd/system
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

ip link set lo up

# Last: the test's directories are in the host's /tmp.
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp

# systemd's own messages go to the journal, with the service's output.
exec env -i container=other PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    /lib/systemd/systemd --unit="$BOOT_TARGET"
