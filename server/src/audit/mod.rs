//! Audit devices: every request and response, hashed, written to each enabled
//! device before the request is served and before its answer leaves.
//!
//! - [`AuditBroker`] holds the enabled devices, builds one entry per request
//!   or response and hands each device its rendering. Fail closed: with at
//!   least one device enabled, a request is served only if some device
//!   confirmed the line.
//! - `entry`: Vault's JSON entry shape; `hash`: the per-device salt and HMAC;
//!   `file`: the `file` device, every device's options, and the writer thread
//!   each device owns, which keeps a blocked file or socket from hanging
//!   requests; `net`: the `syslog` and `socket` devices' options and
//!   connections (made lazily, remade after a failure).
//! - Devices come from the audit table (enabled through `sys/audit`) and from
//!   the server config's `audit "TYPE" "NAME"` stanzas (enabled at unseal,
//!   before the first request; the API cannot disable or replace them).
//!
//! Architecture invariant: no plaintext secret leaves this module except in
//! the lines of a device enabled with `log_raw=true`; errors and tracing
//! events name devices and causes, never entry contents.

mod broker;
mod entry;
mod file;
mod hash;
mod net;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use broker::AuditBroker;

/// One row of the audit table, as persisted by the core and shown by
/// `GET sys/audit` (options exactly as given at enable time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditDeviceConfig {
    /// Where the device is enabled, with a trailing slash (`file/`).
    pub path: String,
    /// Device type: `file`, `syslog` or `socket`.
    pub r#type: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Not replicated to performance secondaries (kept for Vault parity).
    #[serde(default)]
    pub local: bool,
}

/// Checks a device's options as `sys/audit` would, without opening anything:
/// for config-declared devices, when the config is loaded.
pub fn validate_options(
    device_type: &str,
    options: &BTreeMap<String, String>,
) -> crate::error::Result<()> {
    file::DeviceOptions::parse(device_type, options).map(|_| ())
}

/// Device options from `(key, value)` pairs, for the devices' tests.
#[cfg(test)]
pub(crate) fn test_options(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
