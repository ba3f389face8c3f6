//! The key/value secret engine, wire-compatible with Vault's `kv` plugin.
//!
//! One [`KvBackend`] serves one mount, in either form:
//! - **v1** ([`v1`]): a plain map from path to a JSON object, stored as is.
//! - **v2** ([`v2`]): versioned secrets under `data/`, `metadata/`, `delete/`,
//!   `undelete/`, `destroy/`, `subkeys/` and `config`, with check-and-set,
//!   soft delete, destroy, version pruning and automatic deletion.
//!
//! Both keep their keys in clear text in the mount's storage view (the barrier
//! below encrypts the values); see [`v2`] for the versioned layout.

mod fields;
mod v1;
mod v2;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::key_locks::KeyLocks;
use crate::error::{Error, Result};
use crate::logical::{BackendRequest, LogicalBackend, Response};

pub(crate) use crate::clock::Clock;

/// The `kv` secret engine for one mount.
pub struct KvBackend {
    version: u8,
    locks: KeyLocks,
    /// KV v2 writes waiting for their key's lock ([`v2::WriteQueues`]).
    queued: Arc<v2::WriteQueues>,
    clock: Clock,
}

impl KvBackend {
    /// `version` 2 gives the versioned engine; any other value gives v1, as a
    /// Vault `kv` mount without `options.version = "2"` is v1.
    pub fn new(version: u8) -> KvBackend {
        Self::with_clock(version, crate::clock::system())
    }

    pub(crate) fn with_clock(version: u8, clock: Clock) -> KvBackend {
        KvBackend {
            version: if version == 2 { 2 } else { 1 },
            locks: KeyLocks::new(),
            queued: Arc::default(),
            clock,
        }
    }

    /// 1 or 2.
    pub fn version(&self) -> u8 {
        self.version
    }

    fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }
}

impl std::fmt::Debug for KvBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvBackend")
            .field("version", &self.version)
            .finish()
    }
}

#[async_trait]
impl LogicalBackend for KvBackend {
    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response> {
        if self.version == 2 {
            v2::handle(self, &req).await
        } else {
            v1::handle(&req).await
        }
    }

    async fn exists(&self, req: BackendRequest<'_>) -> Result<Option<bool>> {
        if self.version == 2 {
            v2::exists(&req).await
        } else {
            v1::exists(&req).await
        }
    }
}

/// Rejects keys that would not round-trip through storage listing or that
/// look like path traversal: empty, `.` or `..` segments. A trailing `/`
/// (a folder) is the caller's to decide on.
fn check_key(key: &str) -> Result<()> {
    let body = key.strip_suffix('/').unwrap_or(key);
    if body.is_empty() {
        return Ok(());
    }
    if body
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(Error::invalid(format!(
            "invalid path {key:?}: a path may not contain empty, \".\" or \"..\" segments"
        )));
    }
    Ok(())
}

/// The unsupported-path error, naming the path as the client sent it.
fn unsupported(req: &BackendRequest<'_>) -> Error {
    Error::UnsupportedPath(req.req.path.clone())
}
