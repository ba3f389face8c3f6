//! `keyhold-config`: the server configuration (Vault's `vault.hcl` or its JSON form) parsed into
//! typed structs and checked, with errors that name the file, line and key; and [`policy`], the ACL
//! policy parser. The server and the provisioner (which validates what it renders) share both.
//!
//! Three layers, each in its own module:
//! - `syntax`: HCL (hcl-edit) or JSON text -> one tree of positioned values;
//! - `section`: the typed reader of one block body (allowed keys, value types), shared
//!   with the provisioner's environment files;
//! - `decode`: that tree -> one file's settings, rejecting unknown keys,
//!   wrong types and stanza types this build does not know;
//! - `check`: `validate` (semantic checks) and `unsupported` (stanzas that
//!   parse but this build cannot run yet).
//!
//! `ServerConfig::load` merges several files the way Vault does; the
//! provisioner uses `parse_str` + `validate_semantics` on every config it
//! renders, so this module must stay free of server internals.

mod check;
mod decode;
mod error;
pub mod policy;
pub mod section;
pub mod syntax;

#[cfg(test)]
mod tests;

pub use error::{ConfigError, KeyLocations, Location};

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Vault's default for both `default_lease_ttl` and `max_lease_ttl`: 768h (32 days).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(768 * 3600);

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub storage: StorageConfig,
    pub listeners: Vec<ListenerConfig>,
    /// The seal in force: the enabled `seal` stanza, or Shamir without one.
    pub seal: SealConfig,
    /// A `seal` stanza with `disabled = "true"`: the seal being migrated away from.
    pub old_seal: Option<SealConfig>,
    pub api_addr: Option<String>,
    pub cluster_addr: Option<String>,
    pub cluster_name: Option<String>,
    pub ui: bool,
    /// One of trace, debug, info, warn, error (lower-cased; "warning" and
    /// "err" are folded to "warn" and "error" as Vault does). Default "info".
    pub log_level: String,
    pub log_file: Option<PathBuf>,
    pub log_format: LogFormat,
    pub log_rotate_duration: Option<Duration>,
    pub log_rotate_bytes: Option<u64>,
    pub log_rotate_max_files: Option<u32>,
    pub disable_mlock: bool,
    pub default_lease_ttl: Duration,
    pub max_lease_ttl: Duration,
    pub telemetry: TelemetryConfig,
    /// `user_lockout "<auth type>"` stanzas (`all`, `userpass`, `approle`, `ldap`).
    pub user_lockout: Vec<UserLockoutConfig>,
    /// `audit "<type>" "<name>"` stanzas (OpenBao 2.x's declarative audit devices), in the
    /// order written; names are unique.
    pub audit: Vec<AuditConfig>,
    pub pid_file: Option<PathBuf>,
    /// Parsed so that a Vault config carrying it gets a clear answer from
    /// `unsupported()` rather than an unknown-key error: Keyhold has no
    /// external plugins.
    pub plugin_directory: Option<PathBuf>,
    /// Vault's `cache_size`: entries of the storage read cache. Keyhold's read cache is
    /// sled's page cache, sized in bytes; the server maps one to the other.
    pub cache_size: Option<u64>,
    /// Vault's `disable_cache`: the server keeps sled's page cache at its least.
    pub disable_cache: bool,
    pub raw_storage_endpoint: bool,
    pub introspection_endpoint: bool,
    pub enable_response_header_hostname: bool,
    pub enable_response_header_raft_node_id: bool,
    /// OpenBao's `disable_standby_reads`: standbys forward every request to the active node, as
    /// Vault OSS does. By default (false) a standby serves pure reads (KV, policies, token
    /// lookups) from its own replica, within the consistency contract below.
    pub disable_standby_reads: bool,
    /// How long after it last heard from the leader a standby stops serving reads itself (it
    /// forwards them instead). `None`: the Raft election timeout (1 s times
    /// `performance_multiplier`), the same bound as the active node's leader lease.
    pub standby_read_max_staleness: Option<Duration>,
    /// How long a request carrying `X-Vault-Index` waits for this node to apply that index
    /// before it is answered 412 or forwarded (`X-Vault-Inconsistent`). `None`: 2 s, Vault's wait.
    pub standby_read_index_wait: Option<Duration>,
    /// Built by `ServerConfig::dev`: no listener requirement, in-memory storage.
    pub dev_mode: bool,
    /// Where each top-level key was written; also `storage`, `seal` and
    /// `listener` entries for the stanzas. Empty for configs built in code.
    pub keys: KeyLocations,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Standard,
    Json,
}

// Built once per process; keeping `Raft(RaftStorageConfig)` unboxed keeps
// matches on it plain for every user of this API.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum StorageConfig {
    /// Memory only, gone on restart: for `-dev` and tests.
    Inmem,
    Raft(RaftStorageConfig),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RaftStorageConfig {
    pub path: PathBuf,
    pub node_id: Option<String>,
    /// As written; 0 means "not set", which Vault (and Keyhold) treat as 5.
    /// See `effective_performance_multiplier`. At most 10.
    pub performance_multiplier: u32,
    pub snapshot_threshold: u64,
    pub snapshot_interval: Duration,
    pub trailing_logs: u64,
    pub max_entry_size: u64,
    pub autopilot_reconcile_interval: Duration,
    pub autopilot_update_interval: Duration,
    pub retry_join: Vec<RetryJoin>,
    pub autopilot_upgrade_version: Option<String>,
    pub autopilot_redundancy_zone: Option<String>,
    /// Where the `storage "raft"` stanza starts.
    pub location: Location,
    pub keys: KeyLocations,
}

impl RaftStorageConfig {
    pub const DEFAULT_PERFORMANCE_MULTIPLIER: u32 = 5;
    pub const MAX_PERFORMANCE_MULTIPLIER: u32 = 10;

    /// A config with Vault's defaults and the given data directory.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RaftStorageConfig {
            path: path.into(),
            node_id: None,
            performance_multiplier: 0,
            snapshot_threshold: 8192,
            snapshot_interval: Duration::from_secs(120),
            trailing_logs: 10_000,
            max_entry_size: 1024 * 1024,
            autopilot_reconcile_interval: Duration::from_secs(10),
            autopilot_update_interval: Duration::from_secs(2),
            retry_join: Vec::new(),
            autopilot_upgrade_version: None,
            autopilot_redundancy_zone: None,
            location: Location::default(),
            keys: KeyLocations::new(),
        }
    }

    pub fn effective_performance_multiplier(&self) -> u32 {
        match self.performance_multiplier {
            0 => Self::DEFAULT_PERFORMANCE_MULTIPLIER,
            n => n,
        }
    }
}

/// One `retry_join` block: where to find a leader to join. Either
/// `leader_api_addr` or `auto_join` (go-discover syntax) is set.
#[derive(Clone, Default, PartialEq)]
pub struct RetryJoin {
    pub leader_api_addr: Option<String>,
    pub auto_join: Option<String>,
    pub auto_join_scheme: Option<String>,
    pub auto_join_port: Option<u16>,
    pub leader_tls_servername: Option<String>,
    /// Inline PEM; `leader_ca_cert_file` is the file form.
    pub leader_ca_cert: Option<String>,
    pub leader_ca_cert_file: Option<PathBuf>,
    pub leader_client_cert: Option<String>,
    pub leader_client_cert_file: Option<PathBuf>,
    /// Inline PEM private key: a secret, never printed by `Debug`.
    pub leader_client_key: Option<String>,
    pub leader_client_key_file: Option<PathBuf>,
    /// Where the `retry_join` block starts.
    pub location: Location,
}

impl fmt::Debug for RetryJoin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryJoin")
            .field("leader_api_addr", &self.leader_api_addr)
            .field("auto_join", &self.auto_join)
            .field("auto_join_scheme", &self.auto_join_scheme)
            .field("auto_join_port", &self.auto_join_port)
            .field("leader_tls_servername", &self.leader_tls_servername)
            .field("leader_ca_cert", &self.leader_ca_cert)
            .field("leader_ca_cert_file", &self.leader_ca_cert_file)
            .field("leader_client_cert", &self.leader_client_cert)
            .field("leader_client_cert_file", &self.leader_client_cert_file)
            .field("leader_client_key", &redacted(&self.leader_client_key))
            .field("leader_client_key_file", &self.leader_client_key_file)
            .field("location", &self.location)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// The spelling used in config files: `tls12`, `tls13`.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "tls12",
            TlsVersion::Tls13 => "tls13",
        }
    }
}

/// One `user_lockout` stanza (Vault 1.13+); unset keys inherit Vault's defaults (5, 15m, 15m).
#[derive(Debug, Clone, PartialEq)]
pub struct UserLockoutConfig {
    /// The stanza's label: `all` or an auth method type.
    pub auth_type: String,
    pub lockout_threshold: Option<u64>,
    pub lockout_duration: Option<Duration>,
    pub lockout_counter_reset: Option<Duration>,
    pub disable_lockout: Option<bool>,
    pub location: Location,
}

/// One `audit "<type>" "<name>" { description, local, options { ... } }` stanza: an audit
/// device the server enables at unseal, before it serves a request, and that the API cannot
/// disable or replace. The device options are checked by the server (`keyhold server -check`
/// and at start), since only it knows each device type's options.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditConfig {
    /// `file`, `syslog` or `socket`.
    pub device_type: String,
    /// The device's path in `sys/audit`, without the trailing slash.
    pub name: String,
    pub description: String,
    pub local: bool,
    /// Every value as a string, as the API takes them (`log_raw = true` is `"true"`).
    pub options: std::collections::BTreeMap<String, String>,
    /// Where the stanza starts.
    pub location: Location,
}

/// The audit device types `audit` stanzas may name.
pub const AUDIT_DEVICE_TYPES: &[&str] = &["file", "syslog", "socket"];

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub address: String,
    /// Defaults (at run time) to `address` with the port plus one, as in Vault.
    pub cluster_address: Option<String>,
    pub tls_disable: bool,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub tls_min_version: TlsVersion,
    pub tls_max_version: Option<TlsVersion>,
    /// Go-style names as written (`TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256`);
    /// empty means the TLS library's defaults.
    pub tls_cipher_suites: Vec<String>,
    pub tls_client_ca_file: Option<PathBuf>,
    pub tls_require_and_verify_client_cert: bool,
    pub tls_disable_client_certs: bool,
    /// Bytes; a 0 in the file means the default, 32 MiB.
    pub max_request_size: u64,
    pub max_request_duration: Duration,
    /// Time allowed to read a request's headers (Vault's default 10s).
    pub http_read_header_timeout: Duration,
    /// Time a keep-alive connection may wait for its next request (Vault's default 5m).
    pub http_idle_timeout: Duration,
    /// Vault's JSON body limits, checked while the body is read.
    pub max_json_depth: u64,
    pub max_json_string_value_length: u64,
    pub max_json_object_entry_count: u64,
    pub max_json_array_element_count: u64,
    pub telemetry: ListenerTelemetry,
    /// Where the `listener "tcp"` stanza starts.
    pub location: Location,
    pub keys: KeyLocations,
}

impl ListenerConfig {
    pub const DEFAULT_ADDRESS: &'static str = "127.0.0.1:8200";
    pub const DEFAULT_MAX_REQUEST_SIZE: u64 = 32 * 1024 * 1024;
    pub const DEFAULT_MAX_REQUEST_DURATION: Duration = Duration::from_secs(90);
    pub const DEFAULT_HTTP_READ_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    pub const DEFAULT_MAX_JSON_DEPTH: u64 = 300;
    pub const DEFAULT_MAX_JSON_STRING_VALUE_LENGTH: u64 = 1024 * 1024;
    pub const DEFAULT_MAX_JSON_OBJECT_ENTRY_COUNT: u64 = 10_000;
    pub const DEFAULT_MAX_JSON_ARRAY_ELEMENT_COUNT: u64 = 10_000;

    /// A TLS listener on `address` with Vault's defaults and no certificate yet.
    pub fn new(address: impl Into<String>) -> Self {
        ListenerConfig {
            address: address.into(),
            cluster_address: None,
            tls_disable: false,
            tls_cert_file: None,
            tls_key_file: None,
            tls_min_version: TlsVersion::Tls12,
            tls_max_version: None,
            tls_cipher_suites: Vec::new(),
            tls_client_ca_file: None,
            tls_require_and_verify_client_cert: false,
            tls_disable_client_certs: false,
            max_request_size: Self::DEFAULT_MAX_REQUEST_SIZE,
            max_request_duration: Self::DEFAULT_MAX_REQUEST_DURATION,
            http_read_header_timeout: Self::DEFAULT_HTTP_READ_HEADER_TIMEOUT,
            http_idle_timeout: Self::DEFAULT_HTTP_IDLE_TIMEOUT,
            max_json_depth: Self::DEFAULT_MAX_JSON_DEPTH,
            max_json_string_value_length: Self::DEFAULT_MAX_JSON_STRING_VALUE_LENGTH,
            max_json_object_entry_count: Self::DEFAULT_MAX_JSON_OBJECT_ENTRY_COUNT,
            max_json_array_element_count: Self::DEFAULT_MAX_JSON_ARRAY_ELEMENT_COUNT,
            telemetry: ListenerTelemetry::default(),
            location: Location::default(),
            keys: KeyLocations::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerTelemetry {
    /// Serve `/v1/sys/metrics` on this listener without a token.
    pub unauthenticated_metrics_access: bool,
}

#[derive(Clone, PartialEq)]
pub enum SealConfig {
    Shamir,
    AwsKms {
        region: Option<String>,
        kms_key_id: String,
        endpoint: Option<String>,
        access_key: Option<String>,
        secret_key: Option<String>,
        disabled: bool,
    },
    Transit {
        address: String,
        token: Option<String>,
        key_name: String,
        mount_path: String,
        namespace: Option<String>,
        tls_ca_cert: Option<PathBuf>,
        tls_client_cert: Option<PathBuf>,
        tls_client_key: Option<PathBuf>,
        tls_server_name: Option<String>,
        tls_skip_verify: bool,
        disable_renewal: bool,
        disabled: bool,
    },
}

impl SealConfig {
    /// `disabled = "true"`: kept only to unwrap the root key during a migration.
    pub fn is_disabled(&self) -> bool {
        match self {
            SealConfig::Shamir => false,
            SealConfig::AwsKms { disabled, .. } | SealConfig::Transit { disabled, .. } => *disabled,
        }
    }

    /// The stanza label: `shamir`, `awskms`, `transit`.
    pub fn kind(&self) -> &'static str {
        match self {
            SealConfig::Shamir => "shamir",
            SealConfig::AwsKms { .. } => "awskms",
            SealConfig::Transit { .. } => "transit",
        }
    }
}

fn redacted(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "<redacted>")
}

/// Credentials and tokens are shown as `<redacted>`, so a config can be logged.
impl fmt::Debug for SealConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SealConfig::Shamir => f.write_str("Shamir"),
            SealConfig::AwsKms {
                region,
                kms_key_id,
                endpoint,
                access_key,
                secret_key,
                disabled,
            } => f
                .debug_struct("AwsKms")
                .field("region", region)
                .field("kms_key_id", kms_key_id)
                .field("endpoint", endpoint)
                .field("access_key", &redacted(access_key))
                .field("secret_key", &redacted(secret_key))
                .field("disabled", disabled)
                .finish(),
            SealConfig::Transit {
                address,
                token,
                key_name,
                mount_path,
                namespace,
                tls_ca_cert,
                tls_client_cert,
                tls_client_key,
                tls_server_name,
                tls_skip_verify,
                disable_renewal,
                disabled,
            } => f
                .debug_struct("Transit")
                .field("address", address)
                .field("token", &redacted(token))
                .field("key_name", key_name)
                .field("mount_path", mount_path)
                .field("namespace", namespace)
                .field("tls_ca_cert", tls_ca_cert)
                .field("tls_client_cert", tls_client_cert)
                .field("tls_client_key", tls_client_key)
                .field("tls_server_name", tls_server_name)
                .field("tls_skip_verify", tls_skip_verify)
                .field("disable_renewal", disable_renewal)
                .field("disabled", disabled)
                .finish(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// How long Prometheus metrics are kept; `0` turns Prometheus output off.
    /// Vault's default is 24h.
    pub prometheus_retention_time: Duration,
    pub disable_hostname: bool,
    /// As written: `None` when not set (the default, 10m, applies);
    /// `Some(Duration::ZERO)` for `"none"`, which turns usage gauges off.
    /// See `usage_gauge_interval`.
    pub usage_gauge_period: Option<Duration>,
    /// As written: `None` when not set (the default, 500, applies).
    pub maximum_gauge_cardinality: Option<u64>,
}

impl TelemetryConfig {
    pub const DEFAULT_USAGE_GAUGE_PERIOD: Duration = Duration::from_secs(600);
    pub const DEFAULT_MAXIMUM_GAUGE_CARDINALITY: u64 = 500;

    /// How often to collect usage gauges; `None` when turned off.
    pub fn usage_gauge_interval(&self) -> Option<Duration> {
        match self.usage_gauge_period {
            None => Some(Self::DEFAULT_USAGE_GAUGE_PERIOD),
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
        }
    }

    pub fn gauge_cardinality(&self) -> u64 {
        self.maximum_gauge_cardinality
            .unwrap_or(Self::DEFAULT_MAXIMUM_GAUGE_CARDINALITY)
    }

    pub fn prometheus_enabled(&self) -> bool {
        !self.prometheus_retention_time.is_zero()
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            prometheus_retention_time: Duration::from_secs(24 * 3600),
            disable_hostname: false,
            usage_gauge_period: None,
            maximum_gauge_cardinality: None,
        }
    }
}

impl ServerConfig {
    /// Reads and merges config files in order. Each path is a file (`.hcl`,
    /// `.json`, or anything else: JSON if it starts with `{`) or a directory,
    /// whose `*.hcl` and `*.json` files are read in name order. Scalars and
    /// `telemetry` from later files win, listeners accumulate, and `storage`
    /// and `seal` may each appear in only one file.
    ///
    /// This parses; it does not `validate`: call that (or
    /// `validate_semantics`) next.
    pub fn load(paths: &[PathBuf]) -> Result<ServerConfig, ConfigError> {
        if paths.is_empty() {
            return Err(ConfigError::new(
                Location::default(),
                "",
                "no config file given; pass -config=PATH (a file or a directory)",
            ));
        }
        let mut files = Vec::new();
        for path in paths {
            files.extend(config_files(path)?);
        }
        let mut merged = decode::FileConfig::default();
        for file in &files {
            let name = file.display().to_string();
            let text = std::fs::read_to_string(file).map_err(|e| {
                ConfigError::new(Location::file(&name), "", format!("cannot read: {e}"))
            })?;
            merged.merge(parse_file(&text, &name)?)?;
        }
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        finish(merged, &names.join(", "))
    }

    /// Parses one file's text; `file_name` decides HCL or JSON (`.json`, or
    /// text starting with `{`) and names the file in errors.
    pub fn parse_str(text: &str, file_name: &str) -> Result<ServerConfig, ConfigError> {
        finish(parse_file(text, file_name)?, file_name)
    }

    /// A `-dev` server: in-memory storage, one plain-HTTP listener on
    /// `listen`, Shamir seal, no mlock.
    pub fn dev(listen: &str) -> ServerConfig {
        let mut listener = ListenerConfig::new(listen);
        listener.tls_disable = true;
        ServerConfig {
            storage: StorageConfig::Inmem,
            listeners: vec![listener],
            seal: SealConfig::Shamir,
            old_seal: None,
            api_addr: None,
            cluster_addr: None,
            cluster_name: None,
            ui: false,
            log_level: "info".into(),
            log_file: None,
            log_format: LogFormat::Standard,
            log_rotate_duration: None,
            log_rotate_bytes: None,
            log_rotate_max_files: None,
            disable_mlock: true,
            default_lease_ttl: DEFAULT_LEASE_TTL,
            max_lease_ttl: DEFAULT_LEASE_TTL,
            telemetry: TelemetryConfig::default(),
            user_lockout: Vec::new(),
            audit: Vec::new(),
            pid_file: None,
            plugin_directory: None,
            cache_size: None,
            disable_cache: false,
            raw_storage_endpoint: false,
            introspection_endpoint: false,
            enable_response_header_hostname: false,
            enable_response_header_raft_node_id: false,
            disable_standby_reads: false,
            standby_read_max_staleness: None,
            standby_read_index_wait: None,
            dev_mode: true,
            keys: KeyLocations::new(),
        }
    }

    /// Where `key` (a top-level key or `storage`/`seal`) was written, or
    /// the unknown location for configs built in code.
    pub fn location_of(&self, key: &str) -> Location {
        self.keys.get(key).cloned().unwrap_or_default()
    }
}

/// The files one `-config` argument stands for.
fn config_files(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let name = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| {
        let message = if e.kind() == std::io::ErrorKind::NotFound {
            "config file or directory not found".to_string()
        } else {
            format!("cannot read config: {e}")
        };
        ConfigError::new(Location::file(&name), "", message)
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path).map_err(|e| {
        ConfigError::new(
            Location::file(&name),
            "",
            format!("cannot list directory: {e}"),
        )
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| {
            ConfigError::new(
                Location::file(&name),
                "",
                format!("cannot list directory: {e}"),
            )
        })?;
        let file = entry.path();
        let wanted = matches!(
            file.extension().and_then(|e| e.to_str()),
            Some("hcl" | "json")
        );
        if wanted && file.is_file() {
            files.push(file);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(ConfigError::new(
            Location::file(&name),
            "",
            "directory holds no .hcl or .json config files",
        ));
    }
    Ok(files)
}

fn parse_file(text: &str, file_name: &str) -> Result<decode::FileConfig, ConfigError> {
    let src = syntax::Source::new(file_name, text);
    let root = syntax::parse(&src, text, syntax::is_json(file_name, text))?;
    decode::decode_file(&src, root)
}

/// Applies defaults once all files are merged.
fn finish(file: decode::FileConfig, sources: &str) -> Result<ServerConfig, ConfigError> {
    let Some((storage, _)) = file.storage else {
        return Err(ConfigError::new(
            Location::file(sources),
            "storage",
            "no storage stanza; add one, e.g. storage \"raft\" { path = \"/opt/keyhold/data\" }",
        ));
    };
    let t = file.top;
    let ttl = |d: Option<Duration>| d.filter(|d| !d.is_zero()).unwrap_or(DEFAULT_LEASE_TTL);
    Ok(ServerConfig {
        storage,
        listeners: file.listeners,
        seal: file.seal.map_or(SealConfig::Shamir, |s| s.0),
        old_seal: file.old_seal.map(|s| s.0),
        api_addr: t.api_addr,
        cluster_addr: t.cluster_addr,
        cluster_name: t.cluster_name,
        ui: t.ui.unwrap_or(false),
        log_level: t.log_level.unwrap_or_else(|| "info".into()),
        log_file: t.log_file,
        log_format: t.log_format.unwrap_or_default(),
        log_rotate_duration: t.log_rotate_duration,
        log_rotate_bytes: t.log_rotate_bytes,
        log_rotate_max_files: t.log_rotate_max_files,
        disable_mlock: t.disable_mlock.unwrap_or(false),
        default_lease_ttl: ttl(t.default_lease_ttl),
        max_lease_ttl: ttl(t.max_lease_ttl),
        telemetry: file.telemetry.unwrap_or_default(),
        user_lockout: file.user_lockout,
        audit: file.audit,
        pid_file: t.pid_file,
        plugin_directory: t.plugin_directory,
        cache_size: t.cache_size,
        disable_cache: t.disable_cache.unwrap_or(false),
        raw_storage_endpoint: t.raw_storage_endpoint.unwrap_or(false),
        introspection_endpoint: t.introspection_endpoint.unwrap_or(false),
        enable_response_header_hostname: t.enable_response_header_hostname.unwrap_or(false),
        enable_response_header_raft_node_id: t.enable_response_header_raft_node_id.unwrap_or(false),
        disable_standby_reads: t.disable_standby_reads.unwrap_or(false),
        standby_read_max_staleness: t.standby_read_max_staleness,
        standby_read_index_wait: t.standby_read_index_wait,
        dev_mode: false,
        keys: file.keys,
    })
}
