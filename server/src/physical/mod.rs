//! Physical storage: the durable key/value layer under the barrier.
//!
//! Everything the server persists goes through [`Backend`]. Values arriving here
//! from the barrier are already ciphertext; only the barrier's own bookkeeping
//! (seal configuration, wrapped root key) is stored in the clear, as in Vault.
//!
//! Implementations: [`inmem::InmemBackend`] for `-dev` and tests, and
//! [`sled_store::SledStore`], the durable store that the Raft state machine
//! is built on. Every implementation passes the same conformance suite
//! ([`conformance`]), and so do the replicated backends built over them
//! (`raft::RaftBackend`, the HA backend of `core::ha`).

pub mod inmem;
mod sled_export;
pub mod sled_store;

#[cfg(test)]
pub(crate) mod conformance;

use async_trait::async_trait;

/// Errors from a storage layer (physical store or barrier).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("storage I/O failed: {0}")]
    Io(String),
    #[error("the storage value at {key:?} failed its integrity check; it was not returned")]
    Integrity { key: String },
    #[error("Vault is sealed")]
    Sealed,
    /// A write reached a node that is not (or no longer) the Raft leader: it
    /// is a follower, or leadership is moving. Retryable: the write was not
    /// applied, and the same request succeeds once it reaches the leader.
    /// `leader` names the leader when this node knows it (`name at api_addr`).
    #[error(
        "leadership is changing (this node is not the Raft leader{}); retry the request on the active node",
        leader.as_ref().map(|l| format!("; the leader is {l}")).unwrap_or_else(|| "; no leader is known yet".into())
    )]
    NotLeader { leader: Option<String> },
    #[error("storage key {key:?} is invalid: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("the value for {key:?} is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        key: String,
        size: usize,
        limit: usize,
    },
    /// The data directory's file system has less free space than the store keeps in reserve:
    /// the write was refused before anything was written (a store that runs out of space
    /// mid-write stops its Raft node until a restart). Writes work again once space returns.
    #[error(
        "no space for the write: the data directory {path} has {available} bytes free, under the \
         {reserve} bytes kept in reserve; free space on its file system and retry"
    )]
    NoSpace {
        path: String,
        available: u64,
        reserve: u64,
    },
}

/// One operation of an atomic [`Backend::transaction`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TxnOp {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

impl TxnOp {
    /// The key the operation writes or deletes.
    pub fn key(&self) -> &str {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } => key,
        }
    }
}

/// A key/value store with Vault's list semantics.
///
/// Keys are `/`-separated paths. `list(prefix)` returns the names directly under
/// `prefix`: plain keys as their last segment, and each sub-folder once with a
/// trailing `/`. A write is durable when the call returns.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError>;
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StorageError>;
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError>;
    /// Applies every operation or none of them.
    async fn transaction(&self, ops: Vec<TxnOp>) -> Result<(), StorageError>;
}

/// Folds full keys under `prefix` into Vault's list answer (sorted, folders once).
pub fn list_children<'a>(prefix: &str, keys: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for key in keys {
        let Some(rest) = key.strip_prefix(prefix) else {
            continue;
        };
        if rest.is_empty() {
            continue;
        }
        let child = match rest.find('/') {
            Some(i) => &rest[..=i],
            None => rest,
        };
        if out.last().map(String::as_str) != Some(child) {
            out.push(child.to_string());
        }
    }
    out.sort();
    out.dedup();
    out
}
