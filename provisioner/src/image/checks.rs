//! The hardening an image promises, each item checked rather than assumed applied: in the
//! built tree (through the chroot, `live = false`) and on a machine booted from it (over SSH,
//! `live = true`, which adds what only a running system shows: swap in use, kernel settings in
//! force, sshd's effective configuration, services active). One list, the same checks
//! whichever way the host is reached.

use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::providers::Host;

/// One checked item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// What was found (on success) or what is wrong (on failure).
    pub detail: String,
}

/// The services and timers an image may enable; anything else enabled is reported.
pub const ALLOWED_SERVICES: &[&str] = &[
    "logrotate.timer",
    "auditd.service",
    "getty@.service",
    "keyhold-firstboot.service",
    "keyhold.service",
    "ssh.service",
    "sshd.service",
    "systemd-network-generator.service",
    "systemd-networkd.service",
    "systemd-networkd-wait-online.service",
    "systemd-pstore.service",
    "systemd-timesyncd.service",
    "dbus-org.freedesktop.network1.service",
    "dbus-org.freedesktop.timesync1.service",
];

/// Each check: a name, and a script that prints what it found and exits 0, or prints what is
/// wrong and exits non-zero. `LIVE` is 1 on a booted machine.
const CHECKS: &[(&str, &str)] = &[
    (
        "service user without a shell",
        r#"line=$(getent passwd keyhold) || { echo "no user keyhold"; exit 1; }
shell=${line##*:}
case "$shell" in /usr/sbin/nologin|/sbin/nologin|/bin/false|/usr/bin/false) ;; *) echo "keyhold's shell is $shell"; exit 1;; esac
passwd_field=$(getent shadow keyhold | cut -d: -f2)
case "$passwd_field" in '!'*|'*'*) ;; *) echo "keyhold has a usable password"; exit 1;; esac
echo "keyhold: shell $shell, no password""#,
    ),
    (
        "binary and config owned by root, not writable by the service",
        r#"for p in /usr/local/bin/keyhold /etc/keyhold.d /opt/keyhold/tls /etc/systemd/system/keyhold.service; do
  [ -e "$p" ] || { echo "$p is missing"; exit 1; }
  set -- $(stat -c '%U %a' "$p")
  [ "$1" = root ] || { echo "$p is owned by $1"; exit 1; }
  case "$2" in *[2367]?|*[2367]) echo "$p is group- or world-writable ($2)"; exit 1;; esac
done
echo "root-owned, mode $(stat -c %a /usr/local/bin/keyhold) binary, $(stat -c '%a %U:%G' /etc/keyhold.d) config""#,
    ),
    (
        "data and audit directories private",
        r#"d=$(stat -c '%a %U:%G' /opt/keyhold/data) && l=$(stat -c '%a %U:%G' /var/log/keyhold) || exit 1
[ "$d" = "700 keyhold:keyhold" ] || { echo "/opt/keyhold/data is $d"; exit 1; }
[ "$l" = "750 keyhold:keyhold" ] || { echo "/var/log/keyhold is $l"; exit 1; }
echo "data $d, audit logs $l""#,
    ),
    (
        "swap off",
        r#"if grep -Eq '^[^#]*[[:space:]]swap[[:space:]]' /etc/fstab; then echo "/etc/fstab names swap"; exit 1; fi
[ "$(systemctl is-enabled swap.target 2>/dev/null)" = masked ] || { echo "swap.target is not masked"; exit 1; }
if [ "$LIVE" = 1 ] && [ "$(wc -l < /proc/swaps)" -gt 1 ]; then echo "swap in use: $(tail -n +2 /proc/swaps)"; exit 1; fi
echo "no swap in fstab, swap.target masked""#,
    ),
    (
        "core dumps off",
        r#"grep -Eqs '^\*[[:space:]]+hard[[:space:]]+core[[:space:]]+0' /etc/security/limits.d/*.conf || { echo "no hard core limit of 0 in limits.d"; exit 1; }
grep -Eqs '^DefaultLimitCORE=0' /etc/systemd/system.conf.d/*.conf || { echo "systemd's DefaultLimitCORE is not 0"; exit 1; }
grep -Eqs '^Storage=none' /etc/systemd/coredump.conf.d/*.conf || { echo "systemd-coredump stores dumps"; exit 1; }
grep -Ehs '^[[:space:]]*fs.suid_dumpable[[:space:]]*=' /etc/sysctl.d/*.conf | grep -Eq '=[[:space:]]*0' || { echo "fs.suid_dumpable is not 0 in sysctl.d"; exit 1; }
if [ "$LIVE" = 1 ]; then
  [ "$(sysctl -n fs.suid_dumpable)" = 0 ] || { echo "fs.suid_dumpable is $(sysctl -n fs.suid_dumpable) now"; exit 1; }
  case "$(sysctl -n kernel.core_pattern)" in '|/bin/false') ;; *) echo "kernel.core_pattern is $(sysctl -n kernel.core_pattern)"; exit 1;; esac
fi
echo "limits 0, DefaultLimitCORE=0, coredump Storage=none, fs.suid_dumpable=0""#,
    ),
    (
        "hardened unit installed",
        r#"u=/etc/systemd/system/keyhold.service
for k in NoNewPrivileges=yes ProtectSystem=strict LimitCORE=0 MemorySwapMax=0 User=keyhold; do
  grep -qx "$k" "$u" || { echo "$u lacks $k"; exit 1; }
done
[ "$(systemctl is-enabled keyhold.service 2>/dev/null)" = enabled ] || { echo "keyhold.service is not enabled"; exit 1; }
echo "keyhold.service enabled, sandboxed""#,
    ),
    (
        "ssh: keys only, no root login",
        r#"if [ "$LIVE" = 1 ]; then
  t=$(sshd -T 2>&1) || { echo "sshd -T: $t"; exit 1; }
  for k in "passwordauthentication no" "permitrootlogin no" "kbdinteractiveauthentication no" "permitemptypasswords no"; do
    echo "$t" | grep -qx "$k" || { echo "sshd runs without '$k'"; exit 1; }
  done
  echo "sshd -T: no passwords, no root login"
else
  grep -q '^Include /etc/ssh/sshd_config.d/\*.conf' /etc/ssh/sshd_config || { echo "sshd_config does not read sshd_config.d"; exit 1; }
  for k in "PasswordAuthentication no" "PermitRootLogin no" "KbdInteractiveAuthentication no"; do
    grep -qsx "$k" /etc/ssh/sshd_config.d/*.conf || { echo "no '$k' in sshd_config.d"; exit 1; }
  done
  if ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1; then echo "the image carries SSH host keys"; exit 1; fi
  echo "no passwords, no root login; no host keys (made on first boot)"
fi"#,
    ),
    (
        "no unneeded services",
        r#"extra=""
for u in $(systemctl list-unit-files --state=enabled --type=service --no-legend 2>/dev/null | awk '{print $1}'); do
  case " $ALLOWED " in *" $u "*) ;; *) extra="$extra $u";; esac
done
[ -z "$extra" ] || { echo "enabled but not needed:$extra"; exit 1; }
for u in $(systemctl list-unit-files --state=enabled --type=timer --no-legend 2>/dev/null | awk '{print $1}'); do
  case " $ALLOWED " in *" $u "*) ;; *) extra="$extra $u";; esac
done
[ -z "$extra" ] || { echo "timers enabled but not needed:$extra"; exit 1; }
echo "$(systemctl list-unit-files --state=enabled --type=service,timer --no-legend | wc -l) services and timers enabled, all needed""#,
    ),
    (
        "time sync and auditd",
        r#"for p in systemd-timesyncd auditd; do
  dpkg-query -W -f='${db:Status-Abbrev}' $p 2>/dev/null | grep -q '^ii' || { echo "$p is not installed"; exit 1; }
done
for s in systemd-timesyncd.service auditd.service; do
  [ "$(systemctl is-enabled $s 2>/dev/null)" = enabled ] || { echo "$s is not enabled"; exit 1; }
  if [ "$LIVE" = 1 ]; then [ "$(systemctl is-active $s)" = active ] || { echo "$s is $(systemctl is-active $s)"; exit 1; }; fi
done
echo "systemd-timesyncd and auditd installed and enabled""#,
    ),
];

/// How long one check may run: a bound against hangs, generous for a VM under emulation that
/// also runs a server.
const CHECK_LIMIT: Duration = Duration::from_secs(300);

/// Runs every check on `host`; an error only when the host cannot be reached.
pub async fn run(host: &dyn Host, live: bool) -> Result<Vec<Check>> {
    let allowed = ALLOWED_SERVICES.join(" ");
    let mut out = Vec::new();
    for (name, script) in CHECKS {
        let output = host
            .run(
                &[
                    "env",
                    &format!("LIVE={}", u8::from(live)),
                    &format!("ALLOWED={allowed}"),
                    "sh",
                    "-c",
                    script,
                ],
                CHECK_LIMIT,
            )
            .await?;
        let text = String::from_utf8_lossy(&output.stdout);
        let detail = match text.trim() {
            "" => String::from_utf8_lossy(&output.stderr).trim().to_string(),
            t => t.lines().last().unwrap_or(t).to_string(),
        };
        out.push(Check {
            name: name.to_string(),
            ok: output.success(),
            detail,
        });
    }
    Ok(out)
}
