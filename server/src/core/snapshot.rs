//! Raft snapshots through the API: `GET sys/storage/raft/snapshot` builds
//! Vault's archive on the active node; `POST .../snapshot` restores one taken
//! by this cluster (its sealed checksum must open with this cluster's keys),
//! `.../snapshot-force` restores any intact one. A restore is staged through
//! Raft and committed by one entry, so every node swaps its data at the same
//! index, all or nothing.

use std::time::Duration;

use super::Core;
use crate::client::snapshot::archive::{self, ArchiveMeta, Configuration, Server};
use crate::error::{Error, Result};
use crate::raft::{RESTORE_COMMIT_KEY, RESTORE_STAGING_PREFIX};

/// The "path" `SHA256SUMS` is sealed at.
const SUMS_SEAL_PATH: &str = "core/raft/snapshot-sums";
/// Staged chunk size: well under the default `max_entry_size` (1 MiB).
const CHUNK: usize = 256 * 1024;

fn is_restore_bookkeeping(key: &str) -> bool {
    key.starts_with(RESTORE_STAGING_PREFIX) || key == RESTORE_COMMIT_KEY
}

impl Core {
    pub(super) async fn raft_snapshot_save(&self) -> Result<Vec<u8>> {
        let ha = self
            .ha
            .as_ref()
            .ok_or_else(|| Error::invalid("snapshots need raft storage; this server uses inmem"))?;
        let node = ha.running().await.ok_or(Error::NoActiveNode)?;
        tokio::time::timeout(Duration::from_secs(30), node.raft().ensure_linearizable())
            .await
            .map_err(|_| {
                Error::internal("timed out waiting for the log to be applied before the snapshot")
            })?
            .map_err(|e| Error::internal(format!("not the leader any more: {e}")))?;
        let status = node.status().await;
        let entries: Vec<(String, Vec<u8>)> = ha
            .store()
            .export()?
            .into_iter()
            .filter(|(k, _)| !is_restore_bookkeeping(k))
            .collect();
        let state = archive::encode_state(&entries);
        let index = status.applied_index.unwrap_or(0);
        let meta = ArchiveMeta {
            version: 1,
            id: format!(
                "{}-{}-{}",
                status.term,
                index,
                chrono::Utc::now().timestamp_millis()
            ),
            index,
            term: status.term,
            configuration: Configuration {
                servers: node
                    .membership()
                    .into_iter()
                    .map(|(m, voter)| Server {
                        suffrage: if voter { 0 } else { 1 },
                        id: m.name,
                        address: m.cluster_addr,
                    })
                    .collect(),
            },
            configuration_index: index,
            size: state.len() as u64,
        };
        let barrier = self.barrier.clone();
        let bytes = archive::write(&meta, &state, |sums| {
            barrier
                .seal_value(SUMS_SEAL_PATH, sums)
                .map_err(|e| e.to_string())
        })
        .map_err(|e| Error::internal(format!("build the snapshot archive: {e}")))?;
        tracing::info!(
            index,
            keys = entries.len(),
            bytes = bytes.len(),
            "snapshot taken"
        );
        Ok(bytes)
    }

    pub(super) async fn raft_snapshot_restore(&self, bytes: &[u8], force: bool) -> Result<()> {
        if self.ha.is_none() {
            return Err(Error::invalid(
                "snapshots need raft storage; this server uses inmem",
            ));
        }
        if bytes.is_empty() {
            return Err(Error::invalid(
                "no snapshot in the request body: send the archive as the raw body",
            ));
        }
        let archive = archive::read(bytes).map_err(|e| Error::invalid(e.to_string()))?;
        if !force {
            let ours = matches!(self.barrier.open_value(SUMS_SEAL_PATH, &archive.sealed_sums), Ok(sums) if sums.as_slice() == archive.sums.as_slice());
            if !ours {
                return Err(Error::invalid(
                    "this snapshot was not taken by this cluster: its sealed checksum does not open with this cluster's keys. \
                     To restore it anyway use sys/storage/raft/snapshot-force (keyhold operator raft snapshot restore -force), \
                     then unseal every node with the keys of the cluster that took it",
                ));
            }
        }
        let entries = archive
            .entries()
            .map_err(|e| Error::invalid(e.to_string()))?;
        for required in ["core/seal-config", "core/keyring"] {
            if !entries.iter().any(|(k, _)| k == required) {
                return Err(Error::invalid(format!("the snapshot has no {required}: it is not a snapshot of an initialised keyhold/Vault cluster")));
            }
        }
        let physical = self.barrier.physical().clone();
        let id = uuid::Uuid::new_v4().simple().to_string();
        for (n, chunk) in archive.state.chunks(CHUNK).enumerate() {
            physical
                .put(
                    &format!("{RESTORE_STAGING_PREFIX}{id}/{n:08}"),
                    chunk.to_vec(),
                )
                .await?;
        }
        physical
            .put(RESTORE_COMMIT_KEY, id.clone().into_bytes())
            .await?;
        tracing::warn!(restore = %id, index = archive.meta.index, keys = entries.len(), force, "snapshot restored: all data replaced");

        // The services were built from the old data: rebuild them, or seal
        // if the restored keyring belongs to other keys.
        let _guard = self.lifecycle.lock().await;
        *self.state.write().expect("state lock") = None;
        if let Err(e) = self.barrier.reload_keyring().await {
            tracing::warn!(error = %e, "the restored data is sealed with other keys: sealing; unseal every node with the keys of the cluster that took the snapshot");
            self.seal_internal().await;
        }
        Ok(())
    }
}
