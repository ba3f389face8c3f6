//! Keyhold: a secrets server that speaks HashiCorp Vault's HTTP API.
//!
//! See ARCHITECTURE.md at the repository root for the bird's-eye view. The
//! path of a request: `http` (TLS, envelope) -> `core` (token, ACL, audit,
//! router) -> a mounted engine (`secrets`, `auth`, the system backend) ->
//! `logical::StorageView` -> `barrier` (AES-256-GCM) -> `physical`.

#![deny(unsafe_code)]

// What the server shares with the provisioner lives in crates of its own, so the provisioner
// can use them without this crate; the server reaches them under their old module names.
pub use keyhold_client as client;
pub use keyhold_config as config;
pub use keyhold_snapshot as snapshot_agent;

pub mod audit;
pub mod auth;
pub mod barrier;
pub mod cli;
pub mod clock;
pub mod core;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
mod key_bytes;
pub mod logging;
pub mod logical;
pub mod memlock;
pub mod metrics;
pub mod physical;
pub mod policy;
pub mod raft;
pub mod seal;
pub mod secrets;
pub mod server;

/// The version every node reports in `sys/health`, `sys/seal-status` and to
/// its peers (a leader hands over to the newest): `KEYHOLD_VERSION` at build
/// time (a release build sets it from its tag), else the crate's version.
pub const VERSION: &str = match option_env!("KEYHOLD_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};
