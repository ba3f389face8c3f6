//! Checks on a whole, merged config: `validate` (is it coherent, do the
//! files it names exist) and `unsupported` (what parses but this build
//! cannot run yet). Each problem points at the line that causes it.

use super::{
    ConfigError, KeyLocations, ListenerConfig, Location, RaftStorageConfig, SealConfig,
    ServerConfig, StorageConfig,
};
use std::path::Path;

impl ServerConfig {
    /// Semantic checks, then that every file the config names exists.
    /// Returns the first problem; `problems` lists them all.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The checks that do not touch the filesystem: for a config rendered
    /// on one machine and run on another (the provisioner).
    pub fn validate_semantics(&self) -> Result<(), ConfigError> {
        let mut out = Vec::new();
        self.semantic_problems(&mut out);
        out.into_iter().next().map_or(Ok(()), Err)
    }

    /// Every problem `validate` would find, in file order as far as possible.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut out = Vec::new();
        self.semantic_problems(&mut out);
        self.file_problems(&mut out);
        out
    }

    /// Stanzas that parse but this build cannot run yet. A server should
    /// refuse to start while this is not empty; each error says what to do.
    pub fn unsupported(&self) -> Vec<ConfigError> {
        let mut out = Vec::new();
        if let StorageConfig::Raft(raft) = &self.storage {
            for join in raft.retry_join.iter().filter(|j| j.auto_join.is_some()) {
                out.push(ConfigError::new(
                    join.location.clone(),
                    "storage.raft.retry_join.auto_join",
                    "retry_join: auto_join (cloud auto-discovery) is not supported by this build; \
                     list the nodes with leader_api_addr instead",
                ));
            }
            if raft.autopilot_upgrade_version.is_some() {
                out.push(ConfigError::new(
                    at(&raft.keys, "autopilot_upgrade_version", &raft.location),
                    "storage.raft.autopilot_upgrade_version",
                    "storage.raft.autopilot_upgrade_version: autopilot upgrade migrations are not \
                     supported by this build yet; remove it, or run a build that supports \
                     automated upgrades",
                ));
            }
        }
        if self.plugin_directory.is_some() {
            out.push(ConfigError::new(
                self.location_of("plugin_directory"),
                "plugin_directory",
                "plugin_directory: Keyhold does not run external plugins; remove it",
            ));
        }
        out
    }

    fn semantic_problems(&self, out: &mut Vec<ConfigError>) {
        let top = |key: &str, message: String| {
            ConfigError::new(self.location_of(key), key, format!("{key}: {message}"))
        };
        if let StorageConfig::Raft(raft) = &self.storage {
            raft_problems(raft, out);
            if self.cluster_addr.is_none() && !self.dev_mode {
                out.push(ConfigError::new(
                    raft.location.clone(),
                    "cluster_addr",
                    "storage \"raft\" needs cluster_addr, the address other nodes reach this \
                     one on; add e.g. cluster_addr = \"https://node-1.internal:8201\"",
                ));
            }
        }
        for key in ["api_addr", "cluster_addr"] {
            let value = if key == "api_addr" {
                &self.api_addr
            } else {
                &self.cluster_addr
            };
            if let Some(url) = value {
                if let Err(why) = check_url(url) {
                    out.push(top(key, why));
                }
            }
        }
        if self.listeners.is_empty() && !self.dev_mode {
            out.push(ConfigError::new(
                Location::file(self.sources()),
                "listener",
                "no listener stanza; add one, e.g. listener \"tcp\" { address = \"0.0.0.0:8200\" } \
                 with tls_cert_file and tls_key_file set",
            ));
        }
        for (i, listener) in self.listeners.iter().enumerate() {
            listener_problems(listener, out);
            if let Some(first) = self.listeners[..i]
                .iter()
                .find(|l| l.address == listener.address)
            {
                out.push(ConfigError::new(
                    at(&listener.keys, "address", &listener.location),
                    "listener.tcp.address",
                    format!(
                        "listener.tcp.address: {:?} is already used by the listener at {}",
                        listener.address, first.location
                    ),
                ));
            }
        }
        if self.default_lease_ttl.is_zero() {
            out.push(top("default_lease_ttl", "must be greater than zero".into()));
        }
        if self.max_lease_ttl < self.default_lease_ttl {
            out.push(top(
                "max_lease_ttl",
                format!(
                    "({}) is shorter than default_lease_ttl ({}); raise max_lease_ttl or lower \
                     default_lease_ttl",
                    human(self.max_lease_ttl),
                    human(self.default_lease_ttl)
                ),
            ));
        }
        if self.standby_read_max_staleness.is_some_and(|d| d.is_zero()) {
            out.push(top(
                "standby_read_max_staleness",
                "must be greater than zero; to have standbys forward every read instead, set \
                 disable_standby_reads = true"
                    .into(),
            ));
        }
        if self
            .standby_read_index_wait
            .is_some_and(|d| d > std::time::Duration::from_secs(60))
        {
            out.push(top(
                "standby_read_index_wait",
                format!(
                    "({}) is over 60s: a client holding an index waits at most this long per \
                     request; use a few seconds (Vault waits 2s)",
                    human(self.standby_read_index_wait.unwrap_or_default())
                ),
            ));
        }
        if self.log_rotate_duration.is_some_and(|d| d.is_zero()) {
            out.push(top(
                "log_rotate_duration",
                "must be greater than zero; remove it to rotate by size only".into(),
            ));
        }
        if !["trace", "debug", "info", "warn", "error"].contains(&self.log_level.as_str()) {
            out.push(top(
                "log_level",
                format!(
                    "unknown log level {:?}; use one of trace, debug, info, warn, error",
                    self.log_level
                ),
            ));
        }
        self.seal_problems(out);
    }

    fn seal_problems(&self, out: &mut Vec<ConfigError>) {
        if let Some(old) = &self.old_seal {
            if old.kind() == self.seal.kind() {
                out.push(ConfigError::new(
                    self.location_of("seal.disabled"),
                    "seal",
                    format!(
                        "seal: the disabled seal stanza and the one in force are both {}; a \
                         migration moves between two different seal types",
                        old.kind()
                    ),
                ));
            }
        }
        for (seal, key) in std::iter::once((&self.seal, "seal"))
            .chain(self.old_seal.iter().map(|s| (s, "seal.disabled")))
        {
            let here = self.location_of(key);
            let kind = seal.kind();
            let mut problem = |field: &str, message: &str| {
                let path = format!("seal.{kind}.{field}");
                out.push(ConfigError::new(
                    here.clone(),
                    path.clone(),
                    format!("{path}: {message}"),
                ));
            };
            match seal {
                SealConfig::Shamir => {}
                SealConfig::AwsKms { kms_key_id, .. } => {
                    if kms_key_id.trim().is_empty() {
                        problem("kms_key_id", "must not be empty");
                    }
                }
                SealConfig::Transit {
                    address,
                    key_name,
                    mount_path,
                    ..
                } => {
                    if let Err(why) = check_url(address) {
                        problem("address", &why);
                    }
                    if key_name.trim().is_empty() {
                        problem("key_name", "must not be empty");
                    }
                    if mount_path.trim().is_empty() {
                        problem("mount_path", "must not be empty");
                    }
                }
            }
        }
    }

    fn file_problems(&self, out: &mut Vec<ConfigError>) {
        for listener in &self.listeners {
            if listener.tls_disable {
                continue;
            }
            for (key, file) in [
                ("tls_cert_file", &listener.tls_cert_file),
                ("tls_key_file", &listener.tls_key_file),
                ("tls_client_ca_file", &listener.tls_client_ca_file),
            ] {
                if let Some(file) = file {
                    let location = at(&listener.keys, key, &listener.location);
                    check_file(location, &format!("listener.tcp.{key}"), file, out);
                }
            }
        }
        if let StorageConfig::Raft(raft) = &self.storage {
            for join in &raft.retry_join {
                for (key, file) in [
                    ("leader_ca_cert_file", &join.leader_ca_cert_file),
                    ("leader_client_cert_file", &join.leader_client_cert_file),
                    ("leader_client_key_file", &join.leader_client_key_file),
                ] {
                    if let Some(file) = file {
                        let path = format!("storage.raft.retry_join.{key}");
                        check_file(join.location.clone(), &path, file, out);
                    }
                }
            }
        }
        for (seal, key) in std::iter::once((&self.seal, "seal"))
            .chain(self.old_seal.iter().map(|s| (s, "seal.disabled")))
        {
            if let SealConfig::Transit {
                tls_ca_cert,
                tls_client_cert,
                tls_client_key,
                ..
            } = seal
            {
                for (field, file) in [
                    ("tls_ca_cert", tls_ca_cert),
                    ("tls_client_cert", tls_client_cert),
                    ("tls_client_key", tls_client_key),
                ] {
                    if let Some(file) = file {
                        let path = format!("seal.transit.{field}");
                        check_file(self.location_of(key), &path, file, out);
                    }
                }
            }
        }
    }

    /// The files this config came from, for problems that belong to no line.
    fn sources(&self) -> String {
        let mut files: Vec<&str> = self.keys.values().map(|l| l.file.as_str()).collect();
        files.sort_unstable();
        files.dedup();
        files.join(", ")
    }
}

fn raft_problems(raft: &RaftStorageConfig, out: &mut Vec<ConfigError>) {
    let problem = |key: &str, message: String| {
        let path = format!("storage.raft.{key}");
        ConfigError::new(
            at(&raft.keys, key, &raft.location),
            path.clone(),
            format!("{path}: {message}"),
        )
    };
    if raft.path.as_os_str().is_empty() {
        out.push(problem("path", "must not be empty".into()));
    }
    if raft
        .node_id
        .as_deref()
        .is_some_and(|id| id.trim().is_empty())
    {
        out.push(problem("node_id", "must not be empty".into()));
    }
    if raft.performance_multiplier > RaftStorageConfig::MAX_PERFORMANCE_MULTIPLIER {
        out.push(problem(
            "performance_multiplier",
            format!(
                "{} is above the maximum of {}; use 1 for production clusters, or leave it \
                 unset for the default ({})",
                raft.performance_multiplier,
                RaftStorageConfig::MAX_PERFORMANCE_MULTIPLIER,
                RaftStorageConfig::DEFAULT_PERFORMANCE_MULTIPLIER
            ),
        ));
    }
    for (key, value) in [
        ("snapshot_threshold", raft.snapshot_threshold),
        ("trailing_logs", raft.trailing_logs),
        ("max_entry_size", raft.max_entry_size),
    ] {
        if value == 0 {
            out.push(problem(key, "must be greater than zero".into()));
        }
    }
    for (key, value) in [
        ("snapshot_interval", raft.snapshot_interval),
        (
            "autopilot_reconcile_interval",
            raft.autopilot_reconcile_interval,
        ),
        ("autopilot_update_interval", raft.autopilot_update_interval),
    ] {
        if value.is_zero() {
            out.push(problem(key, "must be greater than zero".into()));
        }
    }
    for join in &raft.retry_join {
        let problem = |message: String| {
            ConfigError::new(
                join.location.clone(),
                "storage.raft.retry_join",
                format!("storage.raft.retry_join: {message}"),
            )
        };
        match (&join.leader_api_addr, &join.auto_join) {
            (None, None) => out.push(problem(
                "set leader_api_addr (e.g. \"https://node-2.internal:8200\") or auto_join".into(),
            )),
            (Some(_), Some(_)) => {
                out.push(problem("set leader_api_addr or auto_join, not both".into()));
            }
            (Some(url), None) => {
                if let Err(why) = check_url(url) {
                    out.push(problem(format!("leader_api_addr {why}")));
                }
            }
            (None, Some(_)) => {}
        }
        for (inline, file, name) in [
            (
                &join.leader_ca_cert,
                &join.leader_ca_cert_file,
                "leader_ca_cert",
            ),
            (
                &join.leader_client_cert,
                &join.leader_client_cert_file,
                "leader_client_cert",
            ),
            (
                &join.leader_client_key,
                &join.leader_client_key_file,
                "leader_client_key",
            ),
        ] {
            if inline.is_some() && file.is_some() {
                out.push(problem(format!("set {name} or {name}_file, not both")));
            }
        }
    }
}

fn listener_problems(l: &ListenerConfig, out: &mut Vec<ConfigError>) {
    let problem = |key: &str, message: String| {
        let path = format!("listener.tcp.{key}");
        ConfigError::new(
            at(&l.keys, key, &l.location),
            path.clone(),
            format!("{path}: {message}"),
        )
    };
    if let Err(why) = check_host_port(&l.address) {
        out.push(problem("address", why));
    }
    if let Some(addr) = &l.cluster_address {
        if let Err(why) = check_host_port(addr) {
            out.push(problem("cluster_address", why));
        }
    }
    if !l.tls_disable {
        for key in ["tls_cert_file", "tls_key_file"] {
            let missing = match key {
                "tls_cert_file" => l.tls_cert_file.is_none(),
                _ => l.tls_key_file.is_none(),
            };
            if missing {
                out.push(ConfigError::new(
                    l.location.clone(),
                    format!("listener.tcp.{key}"),
                    format!(
                        "listener \"tcp\" on {} serves TLS but has no {key}; set tls_cert_file \
                         and tls_key_file, or tls_disable = true for plain HTTP (never in \
                         production)",
                        l.address
                    ),
                ));
                break;
            }
        }
    }
    if l.tls_require_and_verify_client_cert && l.tls_disable_client_certs {
        out.push(problem(
            "tls_require_and_verify_client_cert",
            "cannot be combined with tls_disable_client_certs; set only one".into(),
        ));
    }
    if l.tls_max_version.is_some_and(|max| max < l.tls_min_version) {
        out.push(problem(
            "tls_max_version",
            format!("is below tls_min_version ({})", l.tls_min_version.as_str()),
        ));
    }
    for name in &l.tls_cipher_suites {
        if let Err(why) = check_cipher_suite(name) {
            out.push(problem("tls_cipher_suites", why));
        }
    }
    if l.max_request_duration.is_zero() {
        out.push(problem(
            "max_request_duration",
            "must be greater than zero".into(),
        ));
    }
    if l.max_request_size == 0 {
        out.push(problem(
            "max_request_size",
            "must be greater than zero".into(),
        ));
    }
}

/// The `tls_cipher_suites` names (Go's, as Vault takes them) this build can serve: the AEAD
/// suites with forward secrecy. TLS 1.3 suites are named too; Vault (Go) ignores them, as
/// TLS 1.3 suites are not configurable there.
pub const TLS_CIPHER_SUITES: &[&str] = &[
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Whether `name` is a suite this build serves; otherwise why not.
fn check_cipher_suite(name: &str) -> Result<(), String> {
    if TLS_CIPHER_SUITES.contains(&name) {
        return Ok(());
    }
    let upper = name.to_ascii_uppercase();
    let supported = TLS_CIPHER_SUITES.join(", ");
    if ["RC4", "3DES", "DES_", "NULL", "EXPORT", "MD5", "ANON"]
        .iter()
        .any(|weak| upper.contains(weak))
    {
        return Err(format!(
            "{name:?} is an insecure cipher suite and is refused; choose from {supported}"
        ));
    }
    if upper.contains("_CBC_") || upper.starts_with("TLS_RSA_WITH_") {
        return Err(format!(
            "{name:?} (CBC mode or RSA key exchange, no forward secrecy) is not supported; \
             choose from {supported}"
        ));
    }
    Err(format!(
        "unknown cipher suite {name:?}; choose from {supported}"
    ))
}

fn at(keys: &KeyLocations, key: &str, fallback: &Location) -> Location {
    keys.get(key).unwrap_or(fallback).clone()
}

fn check_file(location: Location, key: &str, file: &Path, out: &mut Vec<ConfigError>) {
    let message = match std::fs::metadata(file) {
        Ok(meta) if meta.is_file() => return,
        Ok(_) => format!("{} is not a regular file", file.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            format!("{} not found", file.display())
        }
        Err(e) => format!("cannot read {}: {e}", file.display()),
    };
    out.push(ConfigError::new(location, key, format!("{key}: {message}")));
}

/// `host:port`, with a bracketed IPv6 host, and a numeric port.
fn check_host_port(addr: &str) -> Result<(), String> {
    let bad = || format!("{addr:?} is not host:port, e.g. \"0.0.0.0:8200\"");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "{addr:?}: put an IPv6 host in brackets, e.g. \"[::]:8200\""
        ));
    }
    Ok(())
}

/// An `http://` or `https://` URL with a host.
fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(rest) if !rest.is_empty() && !rest.starts_with(['/', ':']) => Ok(()),
        _ => Err(format!(
            "{url:?} is not a URL; give scheme and host, e.g. \"https://node-1.internal:8200\""
        )),
    }
}

fn human(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}
