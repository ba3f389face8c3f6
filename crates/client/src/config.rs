//! `ClientConfig`: where the server is and how to trust it, read from `VAULT_*` variables
//! through an injectable source so tests pass a map instead of the process environment.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ClientError;

/// The address used when `VAULT_ADDR` is not set, as in Vault.
pub const DEFAULT_ADDRESS: &str = "https://127.0.0.1:8200";
/// Vault's default client timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the CA bundle that signs the server's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaCert {
    /// A PEM bundle file (`VAULT_CACERT`).
    File(PathBuf),
    /// A directory of PEM files (`VAULT_CAPATH`).
    Dir(PathBuf),
    /// PEM text held in memory (the provisioner passes its CA this way).
    Pem(Vec<u8>),
}

/// Everything needed to build a [`super::Client`]. `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Base address, e.g. `https://127.0.0.1:8200` (no `/v1`).
    pub address: String,
    pub token: Option<String>,
    pub ca_cert: Option<CaCert>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Accept any server certificate. Only when explicitly asked for.
    pub skip_verify: bool,
    pub timeout: Duration,
    /// The name to check the server's certificate against instead of the address's host.
    pub tls_server_name: Option<String>,
    /// Sent as `X-Vault-Namespace`.
    pub namespace: Option<String>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            address: DEFAULT_ADDRESS.to_string(),
            token: None,
            ca_cert: None,
            client_cert: None,
            client_key: None,
            skip_verify: false,
            timeout: DEFAULT_TIMEOUT,
            tls_server_name: None,
            namespace: None,
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_cert", &self.ca_cert)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("skip_verify", &self.skip_verify)
            .field("timeout", &self.timeout)
            .field("tls_server_name", &self.tls_server_name)
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl ClientConfig {
    /// A config for `address` with every other setting at its default.
    pub fn new(address: impl Into<String>) -> Self {
        ClientConfig {
            address: address.into(),
            ..Default::default()
        }
    }

    /// Reads the process environment (see [`ClientConfig::from_env_source`]).
    pub fn from_env() -> Result<Self, ClientError> {
        Self::from_env_source(|k| std::env::var(k).ok())
    }

    /// Reads `VAULT_ADDR`, `VAULT_TOKEN` (else `$HOME/.vault-token`), `VAULT_CACERT`,
    /// `VAULT_CAPATH`, `VAULT_CLIENT_CERT`, `VAULT_CLIENT_KEY`, `VAULT_SKIP_VERIFY`,
    /// `VAULT_TLS_SERVER_NAME`, `VAULT_CLIENT_TIMEOUT` and `VAULT_NAMESPACE` from `get`.
    /// Empty values count as unset, as in Vault.
    pub fn from_env_source(get: impl Fn(&str) -> Option<String>) -> Result<Self, ClientError> {
        let var = |k: &str| get(k).filter(|v| !v.is_empty());
        let mut config = ClientConfig::default();
        if let Some(addr) = var("VAULT_ADDR") {
            config.address = addr;
        }
        config.token = match var("VAULT_TOKEN") {
            Some(t) => Some(t),
            None => var("HOME").and_then(|home| read_token_file(&token_file_path(&home))),
        };
        config.ca_cert = var("VAULT_CACERT")
            .map(|p| CaCert::File(p.into()))
            .or_else(|| var("VAULT_CAPATH").map(|p| CaCert::Dir(p.into())));
        config.client_cert = var("VAULT_CLIENT_CERT").map(PathBuf::from);
        config.client_key = var("VAULT_CLIENT_KEY").map(PathBuf::from);
        if let Some(v) = var("VAULT_SKIP_VERIFY") {
            config.skip_verify = parse_bool(&v).ok_or_else(|| {
                ClientError::Config(format!(
                    "could not parse VAULT_SKIP_VERIFY={v:?} as a boolean"
                ))
            })?;
        }
        config.tls_server_name = var("VAULT_TLS_SERVER_NAME");
        if let Some(v) = var("VAULT_CLIENT_TIMEOUT") {
            config.timeout = parse_duration(&v).ok_or_else(|| {
                ClientError::Config(format!(
                    "could not parse VAULT_CLIENT_TIMEOUT={v:?} as a duration"
                ))
            })?;
        }
        config.namespace = var("VAULT_NAMESPACE");
        Ok(config)
    }
}

/// `$HOME/.vault-token`, where Vault's default token helper keeps the token.
pub fn token_file_path(home: &str) -> PathBuf {
    Path::new(home).join(".vault-token")
}

fn read_token_file(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let token = text.trim();
    (!token.is_empty()).then(|| token.to_string())
}

/// Go's `strconv.ParseBool`.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// A Go duration (`30s`, `1m30s`) or a bare number of seconds, as Vault accepts for timeouts.
pub fn parse_duration(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    humantime::parse_duration(v).ok()
}
