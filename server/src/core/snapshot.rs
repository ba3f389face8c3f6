//! Raft snapshots through the API: `GET sys/storage/raft/snapshot` builds
//! Vault's archive on the active node; `POST .../snapshot` restores one taken
//! by this cluster (its sealed checksum must open with this cluster's keys),
//! `.../snapshot-force` restores any intact one. A restore is staged through
//! Raft and committed by one entry, so every node swaps its data at the same
//! index, all or nothing.

use std::time::Duration;

use super::Core;
use crate::client::snapshot;
use crate::client::snapshot::archive::{self, ArchiveMeta, Configuration, Server};
use crate::error::{Error, Result};
use crate::raft::{RESTORE_COMMIT_KEY, RESTORE_STAGING_PREFIX};

/// The "path" `SHA256SUMS` is sealed at.
const SUMS_SEAL_PATH: &str = "core/raft/snapshot-sums";
/// Staged chunk size: well under the default `max_entry_size` (1 MiB).
const CHUNK: usize = 256 * 1024;

/// Staged chunks proposed at once: enough for the proposer to put several in an entry with
/// `max_entry_size` at its default, and to keep two entries in Raft.
const CHUNKS_IN_FLIGHT: usize = 6;

/// Waits for one staged chunk's write. A failure leaves the staged chunks to the next restore's
/// clean-up: nothing is committed without the commit entry.
async fn join_staged(
    staging: &mut tokio::task::JoinSet<std::result::Result<(), crate::physical::StorageError>>,
) -> Result<()> {
    match staging.join_next().await {
        Some(Ok(written)) => Ok(written?),
        Some(Err(e)) => Err(Error::internal(format!("staging the snapshot: {e}"))),
        None => Ok(()),
    }
}

fn is_restore_bookkeeping(key: &str) -> bool {
    key.starts_with(RESTORE_STAGING_PREFIX) || key == RESTORE_COMMIT_KEY
}

/// `state` (a `state.bin` stream) without a restore's bookkeeping entries, and how many
/// entries it keeps. Unchanged, not copied, when it holds none (the usual case).
fn without_bookkeeping(state: Vec<u8>) -> Result<(Vec<u8>, usize)> {
    use crate::client::snapshot::state::{decode_entry, encode_entry, next_message};
    let damaged = |e: String| Error::internal(format!("the Raft snapshot's state: {e}"));
    let (mut kept, mut dropped) = (0usize, false);
    let mut input = state.as_slice();
    while let Some(message) = next_message(&mut input).map_err(|e| damaged(e.to_string()))? {
        let (key, _) = decode_entry(&message).map_err(|e| damaged(e.to_string()))?;
        if is_restore_bookkeeping(&key) {
            dropped = true;
        } else {
            kept += 1;
        }
    }
    if !dropped {
        return Ok((state, kept));
    }
    let mut out = Vec::with_capacity(state.len());
    let mut input = state.as_slice();
    while let Some(message) = next_message(&mut input).map_err(|e| damaged(e.to_string()))? {
        let (key, value) = decode_entry(&message).map_err(|e| damaged(e.to_string()))?;
        if !is_restore_bookkeeping(&key) {
            encode_entry(&mut out, &key, &value);
        }
    }
    Ok((out, kept))
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
        let applied = node.status().await.applied_index.unwrap_or(0);
        // The Raft snapshot is the data between two applies: a point in time, as Vault's
        // (a read of the live store while writes apply could pair one key's old value with
        // another's new one).
        let (snapshot, state) = node
            .snapshot_state_since(applied, Duration::from_secs(120))
            .await
            .map_err(|e| Error::internal(format!("take the snapshot: {e}")))?;
        let (state, keys) = without_bookkeeping(state)?;
        let (index, term) = snapshot
            .last_log_id
            .map_or((0, 0), |l| (l.index, l.leader_id.term));
        let membership = snapshot.last_membership.membership();
        let voters: std::collections::BTreeSet<_> = membership.voter_ids().collect();
        let meta = ArchiveMeta {
            version: 1,
            id: format!("{term}-{index}-{}", chrono::Utc::now().timestamp_millis()),
            index,
            term,
            configuration: Configuration {
                servers: membership
                    .nodes()
                    .map(|(id, m)| Server {
                        suffrage: if voters.contains(id) { 0 } else { 1 },
                        id: m.name.clone(),
                        address: m.cluster_addr.clone(),
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
        tracing::info!(index, keys, bytes = bytes.len(), "snapshot taken");
        Ok(bytes)
    }

    /// Restores the archive `bytes`, checked whole first ([`snapshot::inspect`], on a
    /// blocking thread, its state read as a stream), then staged a piece at a time as
    /// [`snapshot::state_chunks`] decompresses it again: the node holds the upload and the
    /// pieces in flight, never the decompressed state beside the upload.
    pub(super) async fn raft_snapshot_restore(
        &self,
        bytes: axum::body::Bytes,
        force: bool,
    ) -> Result<()> {
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
        // One restore at a time: a second one's commit would swap out the first one's staged
        // chunks with the old data (a client retrying a restore it gave up waiting for).
        let _restoring = self.restoring.try_lock().map_err(|_| {
            Error::invalid(
                "a snapshot restore is already running on this node: wait for it to finish \
                 (its request answers when the data is replaced), then check the data before \
                 restoring again",
            )
        })?;
        let upload = bytes.clone();
        let inspect = snapshot::InspectOptions {
            details: false,
            ..Default::default()
        };
        let archive = tokio::task::spawn_blocking(move || snapshot::inspect(&upload[..], &inspect))
            .await
            .map_err(|e| Error::internal(format!("checking the snapshot: {e}")))?
            .map_err(|e| Error::invalid(e.to_string()))?;
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
        let keys = archive.entries;
        if let Some(required) = archive.missing.first() {
            return Err(Error::invalid(format!("the snapshot has no {required}: it is not a snapshot of an initialised keyhold/Vault cluster")));
        }
        let physical = self.barrier.physical().clone();
        let id = uuid::Uuid::new_v4().simple().to_string();
        // Several chunks in Raft at once, so the proposer fills its entries and keeps its
        // pipeline busy (one at a time, each waited a whole Raft round trip); their order in
        // the log does not matter, the keys are numbered.
        let mut staging = tokio::task::JoinSet::new();
        // The state decompressed again on a blocking thread, a chunk at a time; the channel
        // holds two, so the reader stays just ahead of Raft. A failed stage drops `chunks`,
        // which stops the reader at its next chunk.
        let (sender, mut chunks) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
        let reader = tokio::task::spawn_blocking(move || {
            snapshot::state_chunks(&bytes[..], CHUNK, |chunk| {
                sender.blocking_send(chunk).is_ok()
            })
        });
        let mut n = 0usize;
        while let Some(chunk) = chunks.recv().await {
            if staging.len() >= CHUNKS_IN_FLIGHT {
                join_staged(&mut staging).await?;
            }
            let (physical, key) = (
                physical.clone(),
                format!("{RESTORE_STAGING_PREFIX}{id}/{n:08}"),
            );
            n += 1;
            staging.spawn(async move { physical.put(&key, chunk).await });
        }
        // The archive was checked whole above: a reader error here is not the upload's.
        reader
            .await
            .map_err(|e| Error::internal(format!("reading the snapshot's state: {e}")))?
            .map_err(|e| Error::internal(format!("reading the snapshot's state again: {e}")))?;
        while !staging.is_empty() {
            join_staged(&mut staging).await?;
        }
        physical
            .put(RESTORE_COMMIT_KEY, id.clone().into_bytes())
            .await?;
        tracing::warn!(restore = %id, index = archive.meta.index, keys, force, "snapshot restored: all data replaced");

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::snapshot::state::{decode_state, encode_state};

    fn entries(keys: &[&str]) -> Vec<(String, Vec<u8>)> {
        keys.iter()
            .map(|k| (k.to_string(), format!("value of {k}").into_bytes()))
            .collect()
    }

    #[test]
    fn a_saved_state_leaves_out_only_a_restores_bookkeeping() {
        let plain = encode_state(&entries(&["core/keyring", "logical/a/x"]));
        let (kept, count) = without_bookkeeping(plain.clone()).unwrap();
        assert_eq!((kept, count), (plain, 2));

        let staged = format!("{RESTORE_STAGING_PREFIX}0123/00000000");
        let mixed = encode_state(&entries(&[
            "core/keyring",
            &staged,
            RESTORE_COMMIT_KEY,
            "logical/a/x",
        ]));
        let (kept, count) = without_bookkeeping(mixed).unwrap();
        assert_eq!(count, 2);
        assert_eq!(
            decode_state(&kept).unwrap(),
            entries(&["core/keyring", "logical/a/x"])
        );

        let mut cut = encode_state(&entries(&["core/keyring"]));
        cut.pop();
        assert!(without_bookkeeping(cut).is_err());
    }
}
