//! The decoder: one file's syntax tree becomes a `FileConfig` (every key as
//! written, nothing defaulted yet), checking key names, value types and the
//! stanza types this build knows. Defaults are applied only after all files
//! are merged, so that "a later file wins" means "a later file that sets it".

use super::error::{ConfigError, KeyLocations, Location};
use super::section::{Labelled, Section};
use super::syntax::{Node, Object, Source, Value};
use super::{
    AuditConfig, ListenerConfig, ListenerTelemetry, LogFormat, RaftStorageConfig, RetryJoin,
    SealConfig, StorageConfig, TelemetryConfig, UserLockoutConfig, AUDIT_DEVICE_TYPES,
};
use std::path::PathBuf;
use std::time::Duration;

/// One file's settings, before defaults. `None` means "not set in this file".
#[derive(Debug, Default)]
pub(super) struct FileConfig {
    pub storage: Option<(StorageConfig, Location)>,
    pub seal: Option<(SealConfig, Location)>,
    /// The stanza marked `disabled = "true"` (a seal migration's old seal).
    pub old_seal: Option<(SealConfig, Location)>,
    pub listeners: Vec<ListenerConfig>,
    pub telemetry: Option<TelemetryConfig>,
    pub user_lockout: Vec<UserLockoutConfig>,
    pub audit: Vec<AuditConfig>,
    pub top: TopLevel,
    pub keys: KeyLocations,
}

macro_rules! top_level {
    ($($field:ident: $ty:ty),* $(,)?) => {
        /// The top-level scalar keys, each as written in one file.
        #[derive(Debug, Default)]
        pub(super) struct TopLevel {
            $(pub $field: Option<$ty>,)*
        }

        impl TopLevel {
            /// Keys set in `later` win over keys set here.
            fn merge(&mut self, later: TopLevel) {
                $(if later.$field.is_some() { self.$field = later.$field; })*
            }
        }
    };
}

top_level! {
    api_addr: String,
    cluster_addr: String,
    cluster_name: String,
    ui: bool,
    log_level: String,
    log_file: PathBuf,
    log_format: LogFormat,
    log_rotate_duration: Duration,
    log_rotate_bytes: u64,
    log_rotate_max_files: u32,
    disable_mlock: bool,
    default_lease_ttl: Duration,
    max_lease_ttl: Duration,
    pid_file: PathBuf,
    plugin_directory: PathBuf,
    cache_size: u64,
    disable_cache: bool,
    raw_storage_endpoint: bool,
    introspection_endpoint: bool,
    enable_response_header_hostname: bool,
    enable_response_header_raft_node_id: bool,
    disable_standby_reads: bool,
    standby_read_max_staleness: Duration,
    standby_read_index_wait: Duration,
}

impl FileConfig {
    /// Folds a later file into this one: scalars and telemetry from `later`
    /// win, listeners accumulate, storage and seal may be given only once.
    pub fn merge(&mut self, later: FileConfig) -> Result<(), ConfigError> {
        for (name, mine, theirs) in [
            (
                "storage",
                self.storage.as_ref().map(|s| &s.1),
                later.storage.as_ref().map(|s| &s.1),
            ),
            (
                "seal",
                self.seal.as_ref().map(|s| &s.1),
                later.seal.as_ref().map(|s| &s.1),
            ),
            (
                "disabled seal",
                self.old_seal.as_ref().map(|s| &s.1),
                later.old_seal.as_ref().map(|s| &s.1),
            ),
        ] {
            if let (Some(first), Some(second)) = (mine, theirs) {
                return Err(ConfigError::new(
                    second.clone(),
                    name,
                    format!(
                        "{name} is given twice, at {first} and at {second}; \
                         keep exactly one {name} stanza across all config files"
                    ),
                ));
            }
        }
        if later.storage.is_some() {
            self.storage = later.storage;
        }
        if later.seal.is_some() {
            self.seal = later.seal;
        }
        if later.old_seal.is_some() {
            self.old_seal = later.old_seal;
        }
        self.user_lockout.extend(later.user_lockout);
        for device in later.audit {
            self.add_audit(device)?;
        }
        if later.telemetry.is_some() {
            self.telemetry = later.telemetry;
        }
        self.listeners.extend(later.listeners);
        self.top.merge(later.top);
        self.keys.extend(later.keys);
        Ok(())
    }

    /// Audit device names are unique across all files.
    fn add_audit(&mut self, device: AuditConfig) -> Result<(), ConfigError> {
        if let Some(first) = self.audit.iter().find(|d| d.name == device.name) {
            return Err(ConfigError::new(
                device.location.clone(),
                "audit",
                format!(
                    "audit device {:?} is declared twice, at {} and at {}; \
                     give each audit stanza its own name",
                    device.name, first.location, device.location
                ),
            ));
        }
        self.audit.push(device);
        Ok(())
    }
}

const TOP_KEYS: &[&str] = &[
    "api_addr",
    "audit",
    "cache_size",
    "cluster_addr",
    "cluster_name",
    "default_lease_ttl",
    "disable_cache",
    "disable_mlock",
    "disable_standby_reads",
    "enable_response_header_hostname",
    "enable_response_header_raft_node_id",
    "introspection_endpoint",
    "listener",
    "log_file",
    "log_format",
    "log_level",
    "log_rotate_bytes",
    "log_rotate_duration",
    "log_rotate_max_files",
    "max_lease_ttl",
    "pid_file",
    "plugin_directory",
    "raw_storage_endpoint",
    "seal",
    "standby_read_index_wait",
    "standby_read_max_staleness",
    "storage",
    "telemetry",
    "ui",
    "user_lockout",
];

const STORAGE_TYPES: &str = "raft, inmem";
const SEAL_TYPES: &str = "shamir, awskms, transit";
const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];

pub(super) fn decode_file(src: &Source<'_>, root: Object) -> Result<FileConfig, ConfigError> {
    let root = Node {
        value: Value::Object(root),
        pos: 0,
    };
    let top = Section::new(
        src,
        &root,
        "at the top level",
        "",
        TOP_KEYS,
        &[
            "audit",
            "listener",
            "storage",
            "seal",
            "telemetry",
            "user_lockout",
        ],
    )?;
    let mut out = FileConfig {
        keys: top.locations(),
        ..FileConfig::default()
    };

    let storages = top.labelled("storage", "storage \"raft\" { path = \"...\" }")?;
    if let Some(extra) = storages.get(1) {
        return Err(src.error(
            extra.pos,
            "storage",
            format!(
                "only one storage stanza is allowed; the first is at line {}",
                src.location(storages[0].pos).line
            ),
        ));
    }
    if let Some(block) = storages.first() {
        let location = src.location(block.pos);
        let storage = match block.label {
            "raft" => StorageConfig::Raft(decode_raft(src, block)?),
            "inmem" => {
                Section::new(
                    src,
                    block.body,
                    "in storage \"inmem\"",
                    "storage.inmem",
                    &[],
                    &[],
                )?;
                StorageConfig::Inmem
            }
            other => {
                return Err(src.error(
                    block.label_pos,
                    "storage",
                    format!(
                        "unsupported storage type {other:?}; Keyhold supports: {STORAGE_TYPES}"
                    ),
                ))
            }
        };
        out.keys.insert("storage".into(), location.clone());
        out.storage = Some((storage, location));
    }

    // One seal in force, and at most one more marked `disabled = "true"`:
    // the seal a migration moves away from (Vault's migration config).
    for block in top.labelled("seal", "seal \"shamir\" {}")? {
        let location = src.location(block.pos);
        let seal = decode_seal(src, &block)?;
        let disabled = seal.is_disabled();
        let slot = if disabled {
            &mut out.old_seal
        } else {
            &mut out.seal
        };
        if let Some((_, first)) = slot {
            return Err(src.error(
                block.pos,
                "seal",
                if disabled {
                    format!(
                        "only one disabled seal stanza is allowed (the seal being migrated \
                         away from); the first is at line {}",
                        first.line
                    )
                } else {
                    format!(
                        "only one seal stanza may be in force; the first is at line {}. To \
                         migrate between seals, mark the old one disabled = \"true\"",
                        first.line
                    )
                },
            ));
        }
        out.keys.insert(
            if disabled { "seal.disabled" } else { "seal" }.into(),
            location.clone(),
        );
        *slot = Some((seal, location));
    }

    for block in top.labelled("listener", "listener \"tcp\" { address = \"...\" }")? {
        if block.label != "tcp" {
            return Err(src.error(
                block.label_pos,
                "listener",
                format!(
                    "unsupported listener type {:?}; Keyhold supports: tcp",
                    block.label
                ),
            ));
        }
        out.listeners.push(decode_listener(src, &block)?);
    }

    let telemetry = top.blocks("telemetry")?;
    if let Some(extra) = telemetry.get(1) {
        return Err(src.error(
            extra.pos,
            "telemetry",
            format!(
                "only one telemetry stanza is allowed; the first is at line {}",
                src.location(telemetry[0].pos).line
            ),
        ));
    }
    if let Some(body) = telemetry.first() {
        out.telemetry = Some(decode_telemetry(src, body)?);
    }

    for block in top.labelled(
        "user_lockout",
        "user_lockout \"all\" { lockout_threshold = 5 }",
    )? {
        out.user_lockout.push(decode_user_lockout(src, &block)?);
    }

    for block in top.labelled("audit", AUDIT_EXAMPLE)? {
        for device in decode_audit(src, &block)? {
            out.add_audit(device)?;
        }
    }

    let t = &mut out.top;
    t.api_addr = top.string("api_addr")?;
    t.cluster_addr = top.string("cluster_addr")?;
    t.cluster_name = top.string("cluster_name")?;
    t.ui = top.bool("ui")?;
    t.log_level = match top.string("log_level")? {
        None => None,
        Some(level) => Some(log_level(&top, &level)?),
    };
    t.log_file = top.path("log_file")?;
    t.log_format = match top.string("log_format")? {
        None => None,
        Some(f) => Some(match f.to_ascii_lowercase().as_str() {
            "standard" => LogFormat::Standard,
            "json" => LogFormat::Json,
            _ => {
                return Err(top.value_error(
                    "log_format",
                    format!("unknown log format {f:?}; use \"standard\" or \"json\""),
                ))
            }
        }),
    };
    t.log_rotate_duration = top.duration("log_rotate_duration")?;
    t.log_rotate_bytes = top.uint("log_rotate_bytes", u64::MAX)?;
    t.log_rotate_max_files = top.u32("log_rotate_max_files")?;
    t.disable_mlock = top.bool("disable_mlock")?;
    t.default_lease_ttl = top.duration("default_lease_ttl")?;
    t.max_lease_ttl = top.duration("max_lease_ttl")?;
    t.pid_file = top.path("pid_file")?;
    t.plugin_directory = top.path("plugin_directory")?;
    t.cache_size = top.uint("cache_size", u32::MAX.into())?;
    t.disable_cache = top.bool("disable_cache")?;
    t.raw_storage_endpoint = top.bool("raw_storage_endpoint")?;
    t.introspection_endpoint = top.bool("introspection_endpoint")?;
    t.enable_response_header_hostname = top.bool("enable_response_header_hostname")?;
    t.enable_response_header_raft_node_id = top.bool("enable_response_header_raft_node_id")?;
    t.disable_standby_reads = top.bool("disable_standby_reads")?;
    t.standby_read_max_staleness = top.duration("standby_read_max_staleness")?;
    t.standby_read_index_wait = top.duration("standby_read_index_wait")?;
    Ok(out)
}

fn log_level(top: &Section<'_, '_>, level: &str) -> Result<String, ConfigError> {
    let normal = match level.trim().to_ascii_lowercase().as_str() {
        "warning" => "warn".to_string(),
        "err" => "error".to_string(),
        other => other.to_string(),
    };
    if LOG_LEVELS.contains(&normal.as_str()) {
        Ok(normal)
    } else {
        Err(top.value_error(
            "log_level",
            format!(
                "unknown log level {level:?}; use one of {}",
                LOG_LEVELS.join(", ")
            ),
        ))
    }
}

const RAFT_KEYS: &[&str] = &[
    "autopilot_reconcile_interval",
    "autopilot_redundancy_zone",
    "autopilot_update_interval",
    "autopilot_upgrade_version",
    "max_entry_size",
    "node_id",
    "path",
    "performance_multiplier",
    "retry_join",
    "snapshot_interval",
    "snapshot_threshold",
    "trailing_logs",
];

const RETRY_JOIN_KEYS: &[&str] = &[
    "auto_join",
    "auto_join_port",
    "auto_join_scheme",
    "leader_api_addr",
    "leader_ca_cert",
    "leader_ca_cert_file",
    "leader_client_cert",
    "leader_client_cert_file",
    "leader_client_key",
    "leader_client_key_file",
    "leader_tls_servername",
];

fn decode_raft(src: &Source<'_>, block: &Labelled<'_>) -> Result<RaftStorageConfig, ConfigError> {
    let s = Section::new(
        src,
        block.body,
        "in storage \"raft\"",
        "storage.raft",
        RAFT_KEYS,
        &["retry_join"],
    )?;
    let defaults = RaftStorageConfig::new(PathBuf::new());
    let mut retry_join = Vec::new();
    for body in s.blocks("retry_join")? {
        retry_join.push(decode_retry_join(src, body)?);
    }
    Ok(RaftStorageConfig {
        path: s.required_path("path", "the directory where this node keeps its data")?,
        node_id: s.string("node_id")?,
        performance_multiplier: s.u32("performance_multiplier")?.unwrap_or(0),
        snapshot_threshold: s
            .uint("snapshot_threshold", u64::MAX)?
            .unwrap_or(defaults.snapshot_threshold),
        snapshot_interval: s
            .duration("snapshot_interval")?
            .unwrap_or(defaults.snapshot_interval),
        trailing_logs: s
            .uint("trailing_logs", u64::MAX)?
            .unwrap_or(defaults.trailing_logs),
        max_entry_size: s
            .uint("max_entry_size", u64::MAX)?
            .unwrap_or(defaults.max_entry_size),
        autopilot_reconcile_interval: s
            .duration("autopilot_reconcile_interval")?
            .unwrap_or(defaults.autopilot_reconcile_interval),
        autopilot_update_interval: s
            .duration("autopilot_update_interval")?
            .unwrap_or(defaults.autopilot_update_interval),
        autopilot_upgrade_version: s.string("autopilot_upgrade_version")?,
        autopilot_redundancy_zone: s.string("autopilot_redundancy_zone")?,
        retry_join,
        location: src.location(block.pos),
        keys: s.locations(),
    })
}

fn decode_retry_join(src: &Source<'_>, body: &Node) -> Result<RetryJoin, ConfigError> {
    let s = Section::new(
        src,
        body,
        "in storage \"raft\" retry_join",
        "storage.raft.retry_join",
        RETRY_JOIN_KEYS,
        &[],
    )?;
    let auto_join_scheme = match s.string("auto_join_scheme")? {
        None => None,
        Some(scheme) if scheme == "http" || scheme == "https" => Some(scheme),
        Some(other) => {
            return Err(s.value_error(
                "auto_join_scheme",
                format!("unknown scheme {other:?}; use \"https\" or \"http\""),
            ))
        }
    };
    Ok(RetryJoin {
        leader_api_addr: s.string("leader_api_addr")?,
        auto_join: s.string("auto_join")?,
        auto_join_scheme,
        auto_join_port: s.port("auto_join_port")?,
        leader_tls_servername: s.string("leader_tls_servername")?,
        leader_ca_cert: s.string("leader_ca_cert")?,
        leader_ca_cert_file: s.path("leader_ca_cert_file")?,
        leader_client_cert: s.string("leader_client_cert")?,
        leader_client_cert_file: s.path("leader_client_cert_file")?,
        leader_client_key: s.string("leader_client_key")?,
        leader_client_key_file: s.path("leader_client_key_file")?,
        location: src.location(body.pos),
    })
}

const LISTENER_KEYS: &[&str] = &[
    "address",
    "cluster_address",
    "http_idle_timeout",
    "http_read_header_timeout",
    "max_json_array_element_count",
    "max_json_depth",
    "max_json_object_entry_count",
    "max_json_string_value_length",
    "max_request_duration",
    "max_request_size",
    "telemetry",
    "tls_cert_file",
    "tls_cipher_suites",
    "tls_client_ca_file",
    "tls_disable",
    "tls_disable_client_certs",
    "tls_key_file",
    "tls_max_version",
    "tls_min_version",
    "tls_require_and_verify_client_cert",
];

fn decode_listener(src: &Source<'_>, block: &Labelled<'_>) -> Result<ListenerConfig, ConfigError> {
    let s = Section::new(
        src,
        block.body,
        "in listener \"tcp\"",
        "listener.tcp",
        LISTENER_KEYS,
        &[],
    )?;
    let defaults = ListenerConfig::new(ListenerConfig::DEFAULT_ADDRESS);
    let mut telemetry = ListenerTelemetry::default();
    if let Some(body) = s.blocks("telemetry")?.first() {
        let t = Section::new(
            src,
            body,
            "in listener \"tcp\" telemetry",
            "listener.tcp.telemetry",
            &["unauthenticated_metrics_access"],
            &[],
        )?;
        telemetry.unauthenticated_metrics_access =
            t.bool("unauthenticated_metrics_access")?.unwrap_or(false);
    }
    let max_request_size = match s.int("max_request_size")? {
        None | Some(0) => defaults.max_request_size,
        Some(n) if n < 0 => {
            return Err(s.value_error(
                "max_request_size",
                "a negative size (no limit) is not supported; give a size in bytes, \
                 or 0 for the default of 33554432",
            ))
        }
        Some(n) => n.unsigned_abs(),
    };
    // Vault: a zero or absent limit means the default; a negative one is an error.
    let json_limit = |key: &str, default: u64| -> Result<u64, ConfigError> {
        match s.int(key)? {
            None | Some(0) => Ok(default),
            Some(n) if n < 0 => Err(s.value_error(key, "must be a positive number")),
            Some(n) => Ok(n.unsigned_abs()),
        }
    };
    let timeout = |key: &str, default: Duration| -> Result<Duration, ConfigError> {
        Ok(s.duration(key)?.filter(|d| !d.is_zero()).unwrap_or(default))
    };
    Ok(ListenerConfig {
        http_read_header_timeout: timeout(
            "http_read_header_timeout",
            defaults.http_read_header_timeout,
        )?,
        http_idle_timeout: timeout("http_idle_timeout", defaults.http_idle_timeout)?,
        max_json_depth: json_limit("max_json_depth", defaults.max_json_depth)?,
        max_json_string_value_length: json_limit(
            "max_json_string_value_length",
            defaults.max_json_string_value_length,
        )?,
        max_json_object_entry_count: json_limit(
            "max_json_object_entry_count",
            defaults.max_json_object_entry_count,
        )?,
        max_json_array_element_count: json_limit(
            "max_json_array_element_count",
            defaults.max_json_array_element_count,
        )?,
        address: s.string("address")?.unwrap_or(defaults.address),
        cluster_address: s.string("cluster_address")?,
        tls_disable: s.bool("tls_disable")?.unwrap_or(false),
        tls_cert_file: s.path("tls_cert_file")?,
        tls_key_file: s.path("tls_key_file")?,
        tls_min_version: s
            .tls_version("tls_min_version")?
            .unwrap_or(defaults.tls_min_version),
        tls_max_version: s.tls_version("tls_max_version")?,
        tls_cipher_suites: s.string_list("tls_cipher_suites")?.unwrap_or_default(),
        tls_client_ca_file: s.path("tls_client_ca_file")?,
        tls_require_and_verify_client_cert: s
            .bool("tls_require_and_verify_client_cert")?
            .unwrap_or(false),
        tls_disable_client_certs: s.bool("tls_disable_client_certs")?.unwrap_or(false),
        max_request_size,
        max_request_duration: match s.duration("max_request_duration")? {
            None => defaults.max_request_duration,
            Some(d) if d.is_zero() => defaults.max_request_duration,
            Some(d) => d,
        },
        telemetry,
        location: src.location(block.pos),
        keys: s.locations(),
    })
}

const AUDIT_EXAMPLE: &str =
    "audit \"file\" \"primary\" { options { file_path = \"/var/log/keyhold/audit.log\" } }";

/// `audit "<type>" "<name>" { description = "..." local = false options { ... } }`, as
/// OpenBao 2.x declares audit devices in its config.
fn decode_audit(src: &Source<'_>, block: &Labelled<'_>) -> Result<Vec<AuditConfig>, ConfigError> {
    if !AUDIT_DEVICE_TYPES.contains(&block.label) {
        return Err(src.error(
            block.label_pos,
            "audit",
            format!(
                "audit {:?}: unsupported audit device type; use one of {}",
                block.label,
                AUDIT_DEVICE_TYPES.join(", ")
            ),
        ));
    }
    let missing_name = || {
        src.error(
            block.label_pos,
            "audit",
            format!(
                "audit {:?} needs a name label after the type, e.g. {AUDIT_EXAMPLE}",
                block.label
            ),
        )
    };
    let Value::Object(names) = &block.body.value else {
        return Err(missing_name());
    };
    if names.is_block_body {
        return Err(missing_name());
    }
    let mut out = Vec::new();
    for entry in &names.entries {
        let name = entry.key.trim_matches('/');
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(src.error(
                entry.key_pos,
                "audit",
                format!(
                    "audit {:?} {:?}: the name must be a non-empty path without spaces, e.g. \"primary\"",
                    block.label, entry.key
                ),
            ));
        }
        let bodies: Vec<&Node> = match &entry.value.value {
            Value::List(items) => items.iter().collect(),
            _ => vec![&entry.value],
        };
        for body in bodies {
            let place = format!("in audit {:?} {:?}", block.label, name);
            let path = format!("audit.{}.{name}", block.label);
            let s = Section::new(
                src,
                body,
                place,
                path,
                &["description", "local", "options"],
                &[],
            )?;
            let mut options = std::collections::BTreeMap::new();
            for options_body in s.blocks("options")? {
                let Value::Object(object) = &options_body.value else {
                    continue;
                };
                for option in &object.entries {
                    let text = match &option.value.value {
                        Value::Str(text) => text.clone(),
                        Value::Bool(b) => b.to_string(),
                        Value::Int(n) => n.to_string(),
                        other => {
                            return Err(src.error(
                                option.value.pos,
                                &format!("audit.{}.{name}.options.{}", block.label, option.key),
                                format!(
                                    "audit {:?} {name:?}: option {:?}: expected a string, got {}",
                                    block.label,
                                    option.key,
                                    other.kind()
                                ),
                            ))
                        }
                    };
                    options.insert(option.key.clone(), text);
                }
            }
            out.push(AuditConfig {
                device_type: block.label.to_string(),
                name: name.to_string(),
                description: s.string("description")?.unwrap_or_default(),
                local: s.bool("local")?.unwrap_or(false),
                options,
                location: src.location(entry.key_pos),
            });
        }
    }
    Ok(out)
}

/// Vault writes these values as strings (`lockout_threshold = "25"`) or bare.
fn decode_user_lockout(
    src: &Source<'_>,
    block: &Labelled<'_>,
) -> Result<UserLockoutConfig, ConfigError> {
    const TYPES: &[&str] = &["all", "userpass", "approle", "ldap"];
    if !TYPES.contains(&block.label) {
        return Err(src.error(
            block.label_pos,
            "user_lockout",
            format!(
                "user_lockout {:?}: unsupported auth type; use one of {}",
                block.label,
                TYPES.join(", ")
            ),
        ));
    }
    let s = Section::new(
        src,
        block.body,
        "in user_lockout",
        "user_lockout",
        &[
            "disable_lockout",
            "lockout_counter_reset",
            "lockout_duration",
            "lockout_threshold",
        ],
        &[],
    )?;
    let lockout_threshold = match s.uint("lockout_threshold", u64::MAX) {
        Ok(v) => v,
        Err(_) => match s.string("lockout_threshold")? {
            None => None,
            Some(text) => Some(text.trim().parse().map_err(|_| {
                s.value_error("lockout_threshold", "must be a whole number, e.g. \"5\"")
            })?),
        },
    };
    let disable_lockout = match s.bool("disable_lockout") {
        Ok(v) => v,
        Err(_) => match s.string("disable_lockout")? {
            None => None,
            Some(text) => Some(
                text.trim()
                    .parse()
                    .map_err(|_| s.value_error("disable_lockout", "must be true or false"))?,
            ),
        },
    };
    Ok(UserLockoutConfig {
        auth_type: block.label.to_string(),
        lockout_threshold,
        lockout_duration: s.duration("lockout_duration")?,
        lockout_counter_reset: s.duration("lockout_counter_reset")?,
        disable_lockout,
        location: src.location(block.pos),
    })
}

fn decode_telemetry(src: &Source<'_>, body: &Node) -> Result<TelemetryConfig, ConfigError> {
    let s = Section::new(
        src,
        body,
        "in telemetry",
        "telemetry",
        &[
            "disable_hostname",
            "maximum_gauge_cardinality",
            "prometheus_retention_time",
            "usage_gauge_period",
        ],
        &[],
    )?;
    let defaults = TelemetryConfig::default();
    let usage_gauge_period = match s.one("usage_gauge_period") {
        Some(Node {
            value: Value::Str(v),
            ..
        }) if v.eq_ignore_ascii_case("none") => Some(Duration::ZERO),
        _ => s.duration("usage_gauge_period")?,
    };
    Ok(TelemetryConfig {
        prometheus_retention_time: s
            .duration("prometheus_retention_time")?
            .unwrap_or(defaults.prometheus_retention_time),
        disable_hostname: s.bool("disable_hostname")?.unwrap_or(false),
        usage_gauge_period,
        maximum_gauge_cardinality: s.uint("maximum_gauge_cardinality", u64::MAX)?,
    })
}

fn decode_seal(src: &Source<'_>, block: &Labelled<'_>) -> Result<SealConfig, ConfigError> {
    match block.label {
        "shamir" => {
            Section::new(
                src,
                block.body,
                "in seal \"shamir\"",
                "seal.shamir",
                &[],
                &[],
            )?;
            Ok(SealConfig::Shamir)
        }
        "awskms" => {
            let s = Section::new(
                src,
                block.body,
                "in seal \"awskms\"",
                "seal.awskms",
                &[
                    "access_key",
                    "disabled",
                    "endpoint",
                    "kms_key_id",
                    "region",
                    "secret_key",
                ],
                &[],
            )?;
            Ok(SealConfig::AwsKms {
                region: s.string("region")?,
                kms_key_id: s.required_string("kms_key_id", "the ARN, ID or alias of the key")?,
                endpoint: s.string("endpoint")?,
                access_key: s.string("access_key")?,
                secret_key: s.string("secret_key")?,
                disabled: s.bool("disabled")?.unwrap_or(false),
            })
        }
        "transit" => {
            let s = Section::new(
                src,
                block.body,
                "in seal \"transit\"",
                "seal.transit",
                &[
                    "address",
                    "disable_renewal",
                    "disabled",
                    "key_name",
                    "mount_path",
                    "namespace",
                    "tls_ca_cert",
                    "tls_client_cert",
                    "tls_client_key",
                    "tls_server_name",
                    "tls_skip_verify",
                    "token",
                ],
                &[],
            )?;
            Ok(SealConfig::Transit {
                address: s.required_string("address", "the URL of the transit server")?,
                token: s.string("token")?,
                key_name: s.required_string("key_name", "the transit key to encrypt with")?,
                mount_path: s.required_string("mount_path", "where transit is mounted")?,
                namespace: s.string("namespace")?,
                tls_ca_cert: s.path("tls_ca_cert")?,
                tls_client_cert: s.path("tls_client_cert")?,
                tls_client_key: s.path("tls_client_key")?,
                tls_server_name: s.string("tls_server_name")?,
                tls_skip_verify: s.bool("tls_skip_verify")?.unwrap_or(false),
                disable_renewal: s.bool("disable_renewal")?.unwrap_or(false),
                disabled: s.bool("disabled")?.unwrap_or(false),
            })
        }
        other => Err(src.error(
            block.label_pos,
            "seal",
            format!("unsupported seal type {other:?}; Keyhold supports: {SEAL_TYPES}"),
        )),
    }
}
