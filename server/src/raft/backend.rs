//! [`RaftBackend`]: the `physical::Backend` the server uses on a Raft node.
//! Reads come from the local state machine; writes are proposed to Raft (through the
//! [`super::proposer`], which lets concurrent writes share a log entry) and return once
//! committed on a quorum and applied here.

use std::sync::Arc;

use async_trait::async_trait;

use super::types::WriteBatch;
use super::Shared;
use crate::physical::{Backend, StorageError, TxnOp};

/// Free space the data directory must keep for a write to be proposed: room for sled to start
/// new log segments and for Raft's own records (votes, compaction) after the write.
pub(crate) const DATA_RESERVE_BYTES: u64 = 16 << 20;

pub struct RaftBackend {
    pub(crate) shared: Arc<Shared>,
}

impl RaftBackend {
    async fn write(&self, ops: Vec<TxnOp>) -> Result<(), StorageError> {
        let batch = WriteBatch(ops);
        let size = batch.payload_size();
        let limit = self.shared.max_entry_size;
        if size > limit {
            let key = match batch.0.first() {
                Some(TxnOp::Put { key, .. } | TxnOp::Delete { key }) => key.clone(),
                None => String::new(),
            };
            return Err(StorageError::TooLarge { key, size, limit });
        }
        self.shared.store.ensure_space(DATA_RESERVE_BYTES)?;
        if self.shared.transferring() {
            // Leadership is being handed to another node, which is not known yet.
            return Err(StorageError::NotLeader { leader: None });
        }
        let started = std::time::Instant::now();
        self.shared.proposer.propose(batch.0, size).await?;
        // Vault's names: `apply` counts transactions the leader
        // proposed; `commitTime` is proposal to committed and applied.
        metrics::counter!("vault.raft.apply").increment(1);
        metrics::histogram!("vault.raft.commitTime")
            .record(started.elapsed().as_secs_f64() * 1000.0);
        Ok(())
    }
}

#[async_trait]
impl Backend for RaftBackend {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.shared.store.get(key).await
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StorageError> {
        self.write(vec![TxnOp::Put {
            key: key.to_string(),
            value,
        }])
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.write(vec![TxnOp::Delete {
            key: key.to_string(),
        }])
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.shared.store.list(prefix).await
    }

    async fn transaction(&self, ops: Vec<TxnOp>) -> Result<(), StorageError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.write(ops).await
    }
}
