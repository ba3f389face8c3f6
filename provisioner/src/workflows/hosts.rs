//! `provision hosts check`: every host of the environment reached as `up` would reach it (host
//! key checked, logged in, through sudo when configured), with what `up` will need of it: root
//! (or sudo without a password), systemd, and the operating system it runs. Read-only.

use std::time::Duration;

use serde::Serialize;

use crate::deployment::Deployment;

/// One host's answer.
#[derive(Debug, Clone, Serialize)]
pub struct HostCheck {
    pub node: String,
    pub address: String,
    pub ok: bool,
    /// `PRETTY_NAME` of /etc/os-release.
    pub os: Option<String>,
    /// `systemctl --version`'s first line.
    pub systemd: Option<String>,
    /// What failed, or what the host lacks.
    pub detail: String,
}

const CHECK: &str = "set -e; [ \"$(id -u)\" = 0 ] || { echo 'not root (with sudo: a password \
                     is asked for; allow NOPASSWD for this user)' >&2; exit 1; }; \
                     . /etc/os-release 2>/dev/null && echo \"$PRETTY_NAME\" || echo unknown; \
                     systemctl --version | head -n 1";

/// Checks every host, concurrently; a failure is reported on its host's line, not raised.
pub async fn check(d: &Deployment) -> Vec<HostCheck> {
    let checks = d.nodes.iter().map(|node| async move {
        let host = d.host(node);
        let mut result = HostCheck {
            node: node.name.clone(),
            address: node.address.to_string(),
            ok: false,
            os: None,
            systemd: None,
            detail: String::new(),
        };
        match host
            .run(&["sh", "-c", CHECK], Duration::from_secs(30))
            .await
        {
            Ok(out) if out.success() => {
                let text = String::from_utf8_lossy(&out.stdout);
                let mut lines = text.lines();
                result.os = lines.next().map(str::to_string);
                result.systemd = lines.next().map(str::to_string);
                result.ok = result.systemd.is_some();
                result.detail = if result.ok {
                    "reachable, root, systemd".into()
                } else {
                    "no systemd: the server runs as a systemd unit".into()
                };
            }
            Ok(out) => result.detail = String::from_utf8_lossy(&out.stderr).trim().to_string(),
            Err(e) => result.detail = format!("{e:#}"),
        }
        result
    });
    futures::future::join_all(checks).await
}
