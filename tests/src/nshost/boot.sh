#!/bin/bash
# Turns fresh namespaces into a host run by systemd, then execs systemd as PID 1. Run by
# `tests/src/nshost.rs` as `unshare --cgroup --pid --fork --mount --net --uts --ipc --mount-proc
# bash boot.sh` (after moving itself into cgroups of its own), as root.
#
# The machine is left as it was: every directory systemd or the host writes to is a tmpfs, an
# overlay with a tmpfs on top, or a bind mount of the test's own directories, all in this
# private mount namespace; /sys and /proc/sys are read-only, /dev is a fresh tmpfs.
#
# Inputs (environment):
#   SCRATCH        an empty directory, where this namespace keeps its tmpfs layers
#   SETUP          a script sourced once the file systems are ready: it makes the host what the
#                  test wants (units, users, files) and writes /etc/systemd/system/$BOOT_TARGET
#   KEEP           directories of the test (under /tmp) the host sees at the same path
#   CGROUP_LAYOUT  unified (cgroup v2 only), hybrid (v1 name=systemd + v2) or legacy (v1 only)
#   BOOT_TARGET    the unit systemd starts
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
lift /root
lift /home

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

# The host's own units must not start here: only what SETUP installs and the boot target.
rm -rf /etc/systemd/system
mkdir -p /etc/systemd/system
# shellcheck source=/dev/null
. "$SETUP"

ip link set lo up

# Last: the test's directories are in the host's /tmp. Those in KEEP are set aside first and
# bound back at the same path in the new /tmp.
mount -t tmpfs -o mode=0755,nosuid,nodev keyhold-keep /mnt
i=0
for keep in ${KEEP:-}; do
    mkdir -p "/mnt/$i"
    mount --bind "$keep" "/mnt/$i"
    i=$((i + 1))
done
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
i=0
for keep in ${KEEP:-}; do
    mkdir -p "$keep"
    mount --bind "/mnt/$i" "$keep"
    i=$((i + 1))
done

# systemd's own messages go to the journal, with the service's output.
exec env -i container=other PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    /lib/systemd/systemd --unit="$BOOT_TARGET"
