//! Raft snapshots through the API: `GET sys/storage/raft/snapshot` builds
//! Vault's archive on the active node; `POST .../snapshot` restores one taken
//! by this cluster (its sealed checksum must open with this cluster's keys),
//! `.../snapshot-force` restores any intact one. A restore is staged through
//! Raft and committed by one entry, so every node swaps its data at the same
//! index, all or nothing.

use std::io::{BufReader, Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

use super::Core;
use crate::barrier::Barrier;
use crate::client::snapshot;
use crate::client::snapshot::archive::{self, ArchiveMeta, Configuration, Server};
use crate::error::{Error, Result};
use crate::logical::RawContent;
use crate::raft::snapshot::StateSummary;
use crate::raft::SnapshotFile;
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
    let (kept, dropped) = scan_state(state.as_slice())?;
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

/// An archive [`build_archive`] wrote.
struct Built {
    file: std::fs::File,
    len: u64,
    keys: usize,
    index: u64,
}

/// How many entries the state `input` holds, and whether a restore's bookkeeping is among
/// them, decoding one at a time.
fn scan_state(mut input: impl Read) -> Result<(usize, bool)> {
    use crate::client::snapshot::state::{decode_entry, next_message};
    let damaged = |e: String| Error::internal(format!("the Raft snapshot's state: {e}"));
    let (mut keys, mut bookkeeping) = (0usize, false);
    while let Some(message) = next_message(&mut input).map_err(|e| damaged(e.to_string()))? {
        let (key, _) = decode_entry(&message).map_err(|e| damaged(e.to_string()))?;
        if is_restore_bookkeeping(&key) {
            bookkeeping = true;
        } else {
            keys += 1;
        }
    }
    Ok((keys, bookkeeping))
}

/// Vault's archive of `snapshot` in an unnamed file in the node's data directory, its
/// `SHA256SUMS` sealed with `barrier`. The state is read twice from the file (to count it,
/// then into the archive) and never held, unless it holds a restore's bookkeeping (a save
/// while a restore was staging: rare), which is left out in memory. The state's length and
/// SHA-256 are checked against the snapshot's header on the way: a damaged file is an
/// error, never an archive.
fn build_archive(snapshot: SnapshotFile, barrier: &Barrier) -> Result<Built> {
    let SnapshotFile {
        header,
        mut file,
        dir,
        path,
    } = snapshot;
    let io =
        |e: &dyn std::fmt::Display| Error::internal(format!("reading {}: {e}", path.display()));
    let damaged = || {
        Error::internal(format!(
            "{} does not match the length and SHA-256 its header gives: this node's Raft \
             snapshot is damaged; take the snapshot from another node after it becomes active, \
             or restart this one (it builds a new one)",
            path.display()
        ))
    };
    let start = file.stream_position().map_err(|e| io(&e))?;
    let (keys, bookkeeping) = scan_state(BufReader::new((&file).take(header.state_len)))?;
    file.seek(SeekFrom::Start(start)).map_err(|e| io(&e))?;
    let meta = &header.meta;
    let (index, term) = meta
        .last_log_id
        .map_or((0, 0), |l| (l.index, l.leader_id.term));
    let membership = meta.last_membership.membership();
    let voters: std::collections::BTreeSet<_> = membership.voter_ids().collect();
    let mut archive_meta = ArchiveMeta {
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
        size: header.state_len,
    };
    let out = tempfile::tempfile_in(&dir).map_err(|e| {
        Error::internal(format!(
            "a file for the snapshot archive in {}: {e}",
            dir.display()
        ))
    })?;
    let out = std::io::BufWriter::with_capacity(256 << 10, out);
    let seal = |sums: &[u8]| {
        barrier
            .seal_value(SUMS_SEAL_PATH, sums)
            .map_err(|e| e.to_string())
    };
    let build = |e: String| Error::internal(format!("build the snapshot archive: {e}"));
    let out = if bookkeeping {
        let mut state = Vec::with_capacity(header.state_len as usize);
        (&file)
            .take(header.state_len)
            .read_to_end(&mut state)
            .map_err(|e| io(&e))?;
        if StateSummary::of(&state) != header.state() {
            return Err(damaged());
        }
        let (state, _) = without_bookkeeping(state)?;
        archive_meta.size = state.len() as u64;
        archive::write_to(out, &archive_meta, &state[..], state.len() as u64, seal)
            .map_err(build)?
            .0
    } else {
        let state = BufReader::with_capacity(256 << 10, (&file).take(header.state_len));
        // A state shorter or longer than the header says fails here, with both lengths.
        let (out, sha256) =
            archive::write_to(out, &archive_meta, state, header.state_len, seal).map_err(build)?;
        if sha256 != header.state_sha256 {
            return Err(damaged());
        }
        out
    };
    let file = out.into_inner().map_err(|e| build(e.error().to_string()))?;
    let len = file.metadata().map_err(|e| build(e.to_string()))?.len();
    Ok(Built {
        file,
        len,
        keys,
        index,
    })
}

impl Core {
    /// Vault's archive of the Raft snapshot at or after the applied index, built into an
    /// unnamed file on the data disk (on a blocking thread, the state read from the Raft
    /// snapshot's file as it is written) and sent from there: the node holds neither the
    /// state nor the archive in memory.
    pub(super) async fn raft_snapshot_save(&self) -> Result<RawContent> {
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
        let snapshot = node
            .snapshot_file_since(applied, Duration::from_secs(120))
            .await
            .map_err(|e| Error::internal(format!("take the snapshot: {e}")))?;
        let barrier = self.barrier.clone();
        let built = tokio::task::spawn_blocking(move || build_archive(snapshot, &barrier))
            .await
            .map_err(|e| Error::internal(format!("build the snapshot archive: {e}")))??;
        tracing::info!(
            index = built.index,
            keys = built.keys,
            bytes = built.len,
            "snapshot taken"
        );
        Ok(RawContent::File(Arc::new(built.file), built.len))
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
