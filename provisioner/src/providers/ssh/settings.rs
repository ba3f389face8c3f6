//! The ssh provider's block of an environment file, decoded and checked here:
//!
//! ```hcl
//! provider "ssh" {
//!   hosts              = ["10.0.0.11", "10.0.0.12", "10.0.0.13"]  # node N is hosts[N-1]
//!   user               = "admin"                # default root
//!   private_key_file   = "~/.ssh/id_ed25519"    # required; never copied anywhere
//!   port               = 22
//!   sudo               = true                   # default: when user is not root
//!   known_hosts        = "~/.ssh/known_hosts"   # the default
//!   host_key_fingerprints = ["SHA256:...", ...] # optional pins, one per host, in order
//!   trust_on_first_use = false                  # add unknown hosts' keys to known_hosts
//!   connect_timeout    = "10s"
//! }
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyhold_config::section::Section;
use keyhold_config::syntax::{Node, Source};
use keyhold_config::ConfigError;
use serde::Serialize;

/// `provider "ssh" { ... }`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SshSettings {
    /// Node N runs on `hosts[N-1]`; the address is also its API and cluster address.
    pub hosts: Vec<IpAddr>,
    pub user: String,
    pub private_key_file: PathBuf,
    pub port: u16,
    /// Run every command and file operation through `sudo -n` (the user is not root).
    pub sudo: bool,
    pub known_hosts: PathBuf,
    /// Pinned host keys (`SHA256:...`, as `ssh-keygen -l` prints them), one per host; checked
    /// instead of known_hosts when given.
    pub host_key_fingerprints: Vec<String>,
    /// Accept and record the key of a host known_hosts does not name (never a changed key).
    pub trust_on_first_use: bool,
    pub connect_timeout: Duration,
}

/// `~/` expanded against `$HOME`; a relative path is taken from the environment file's folder.
fn expand(path: &Path, dir: &Path) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    }
}

impl SshSettings {
    /// Decodes and checks the block's body; relative paths are taken from `dir`, the
    /// environment file's folder.
    pub fn decode(src: &Source<'_>, body: &Node, dir: &Path) -> Result<SshSettings, ConfigError> {
        let s = Section::new(
            src,
            body,
            "in provider \"ssh\"",
            "provider.ssh",
            &[
                "connect_timeout",
                "host_key_fingerprints",
                "hosts",
                "known_hosts",
                "port",
                "private_key_file",
                "sudo",
                "trust_on_first_use",
                "user",
            ],
            &[],
        )?;
        let names = s
            .string_list("hosts")?
            .ok_or_else(|| s.missing("hosts", "the hosts' addresses, one per node"))?;
        let mut hosts = Vec::new();
        for name in &names {
            match name.parse::<IpAddr>() {
                Ok(ip) if !hosts.contains(&ip) => hosts.push(ip),
                Ok(_) => {
                    return Err(s.value_error("hosts", format!("{name} is listed twice")));
                }
                Err(_) => {
                    return Err(s.value_error(
                        "hosts",
                        format!(
                            "{name:?} is not an IP address; the hosts are named by the address \
                             their nodes serve on (it goes into certificates and retry_join)"
                        ),
                    ))
                }
            }
        }
        if !matches!(hosts.len(), 1 | 3 | 5) {
            return Err(s.value_error(
                "hosts",
                format!(
                    "{} hosts: a cluster has 1, 3 or 5 nodes, one per host",
                    hosts.len()
                ),
            ));
        }
        let user = s.string("user")?.unwrap_or_else(|| "root".into());
        let private_key_file = expand(
            &s.required_path(
                "private_key_file",
                "the private key provision logs in with (e.g. \"~/.ssh/id_ed25519\")",
            )?,
            dir,
        );
        let known_hosts = expand(
            &s.path("known_hosts")?
                .unwrap_or_else(|| PathBuf::from("~/.ssh/known_hosts")),
            dir,
        );
        let host_key_fingerprints = s.string_list("host_key_fingerprints")?.unwrap_or_default();
        if !host_key_fingerprints.is_empty() {
            if host_key_fingerprints.len() != hosts.len() {
                return Err(s.value_error(
                    "host_key_fingerprints",
                    format!(
                        "{} fingerprints for {} hosts: give one per host, in the order of hosts",
                        host_key_fingerprints.len(),
                        hosts.len()
                    ),
                ));
            }
            if let Some(bad) = host_key_fingerprints
                .iter()
                .find(|f| !f.starts_with("SHA256:") || f.len() < 20)
            {
                return Err(s.value_error(
                    "host_key_fingerprints",
                    format!(
                        "{bad:?} is not a SHA256 fingerprint; `ssh-keygen -lf \
                         /etc/ssh/ssh_host_ed25519_key.pub` on the host prints one (SHA256:...)"
                    ),
                ));
            }
        }
        let connect_timeout = s
            .duration("connect_timeout")?
            .unwrap_or(Duration::from_secs(10));
        if connect_timeout < Duration::from_secs(1) {
            return Err(s.value_error("connect_timeout", "must be at least 1s"));
        }
        Ok(SshSettings {
            hosts,
            sudo: s.bool("sudo")?.unwrap_or(user != "root"),
            user,
            private_key_file,
            port: s.port("port")?.unwrap_or(22),
            known_hosts,
            host_key_fingerprints,
            trust_on_first_use: s.bool("trust_on_first_use")?.unwrap_or(false),
            connect_timeout,
        })
    }
}
