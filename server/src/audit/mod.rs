//! Audit devices: every request and response, hashed, written to each enabled
//! device before the request is served and before its answer leaves.
//!
//! - [`AuditBroker`] holds the enabled devices, builds one entry per request
//!   or response and hands each device its rendering. Fail closed: with at
//!   least one device enabled, a request is served only if some device
//!   confirmed the line.
//! - `entry`: Vault's JSON entry shape; `hash`: the per-device salt and HMAC;
//!   `file`: the `file` device, whose writer thread keeps a blocked file from
//!   hanging requests.
//!
//! Architecture invariant: no plaintext secret leaves this module except in
//! the lines of a device enabled with `log_raw=true`; errors and tracing
//! events name devices and causes, never entry contents.

mod broker;
mod entry;
mod file;
mod hash;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use broker::AuditBroker;

/// One row of the audit table, as persisted by the core and shown by
/// `GET sys/audit` (options exactly as given at enable time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditDeviceConfig {
    /// Where the device is enabled, with a trailing slash (`file/`).
    pub path: String,
    /// Device type; this build supports `file`.
    pub r#type: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Not replicated to performance secondaries (kept for Vault parity).
    #[serde(default)]
    pub local: bool,
}
