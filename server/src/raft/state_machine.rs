//! The Raft state machine (openraft's `RaftStateMachine`): the node's
//! [`SledStore`] itself. Its `data` tree is the same one a single-node server
//! writes, so a node upgraded to Raft keeps its data; `last_applied` and
//! `last_membership` live in the store's `meta` tree, written in the same
//! sled transaction as the data they describe (so after a crash the two never
//! disagree; and re-applying entries would be harmless anyway, since every
//! [`TxnOp`] is an absolute put or delete).
//!
//! Durability: an apply of secret engine data (`logical/`) is not flushed on
//! its own. The entries it applies are already durable in the Raft log, in
//! the same sled database, whose one log sled recovers as a prefix: the apply
//! is on disk with the next flush (the next append's), and after a crash the
//! state machine restarts from an earlier `last_applied` and the log replays
//! the rest before the node serves (`become_active` waits for it). Everything
//! else is flushed before the apply returns: a node reads the seal
//! configuration, wrapped root key and keyring from this store while sealed,
//! before its Raft runs to replay anything. Membership changes, snapshot
//! installs and restores are flushed too.
//!
//! Snapshots ([`super::snapshot`] format) are built from a point-in-time export
//! begun between two applies and written by the build, on its own task, while
//! applies go on (`physical::sled_export`: a write keeps the values it replaces
//! for the export until the export has passed them), encoded straight into a
//! `state.bin` stream in a temp file beside sled's, [`STATE_TEMP_PREFIX`], never
//! held in memory; kept in the file [`SNAPSHOT_FILE`] beside sled's
//! (openraft asks for the current snapshot again after a restart); and
//! installed, or restored, by decoding the stream into a new data tree that
//! replaces the old one atomically with the meta
//! (`SledStore::replace_all_with_meta`), one batch in memory. The current snapshot
//! is not kept in memory: its bytes (about a megabyte per thousand secrets) are
//! read back from the file, meta from its header, when openraft asks for it
//! (to send it to a follower, which is rare), instead of being held by every
//! node for good. Building one holds none of it: openraft 0.9 takes only the
//! meta of a snapshot it had built (`sm::worker::build_snapshot`), so the
//! builder copies the staged state into the file after its header and hands
//! openraft no copy. The file only moves forward: a build that finishes after
//! a newer snapshot was written (an install, a later build) leaves the newer.
//! Earlier builds kept the snapshot in the `raft_snapshot` tree: it is still
//! read from there until a snapshot is written to the file, and then removed.

use std::io::{Cursor, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};

use super::integrity::replace_file_with;
use super::snapshot::{
    prefix_for, read_meta, snapshot_meta, verify_snapshot, SnapshotError, StateSummary,
};
use super::types::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use super::{RESTORE_COMMIT_KEY, RESTORE_STAGING_PREFIX};
use crate::physical::sled_store::{SledStore, StateExport};
use crate::physical::{Backend as _, TxnOp};
use keyhold_client::snapshot::state::StateReader;

const LAST_APPLIED: &str = "raft_last_applied";
const LAST_MEMBERSHIP: &str = "raft_last_membership";
const SNAPSHOT_TREE: &str = "raft_snapshot";
const SNAPSHOT_KEY: &str = "current";
/// The current Raft snapshot, in the store's directory.
pub const SNAPSHOT_FILE: &str = "keyhold-raft-snapshot.bin";
/// A build's staged state, in the store's directory until the build is done (a crash leaves
/// it behind; the next start removes it).
pub const STATE_TEMP_PREFIX: &str = "keyhold-snapshot-state.";

pub struct StateMachine {
    store: Arc<SledStore>,
    snapshots: sled::Tree,
    /// Held while the snapshot file is written: a build (openraft runs it on a task of its
    /// own) and an install may write it at the same time, and they share its temp file.
    file_lock: Arc<std::sync::Mutex<()>>,
}

impl StateMachine {
    pub fn open(store: Arc<SledStore>) -> Result<StateMachine, crate::physical::StorageError> {
        let snapshots = store.open_tree(SNAPSHOT_TREE)?;
        remove_staged_states(store.path());
        Ok(StateMachine {
            store,
            snapshots,
            file_lock: Arc::default(),
        })
    }

    fn read_state(&self) -> Result<(Option<LogId>, StoredMembership), AnyError> {
        let last_applied = match self
            .store
            .get_meta(LAST_APPLIED)
            .map_err(|e| AnyError::new(&e))?
        {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| AnyError::new(&e))?,
            None => None,
        };
        let membership = match self
            .store
            .get_meta(LAST_MEMBERSHIP)
            .map_err(|e| AnyError::new(&e))?
        {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| AnyError::new(&e))?,
            None => StoredMembership::default(),
        };
        Ok((last_applied, membership))
    }

    /// Installs an encoded snapshot: its header and digest verified first, then its entries
    /// decoded as they are written into a new data tree that replaces the old one, with the
    /// meta, atomically ([`SledStore::replace_all_with_meta`]). On any error nothing has
    /// changed.
    async fn install(&self, meta: &SnapshotMeta, bytes: Vec<u8>) -> Result<(), AnyError> {
        let (header_meta, state_at) = verify_snapshot(&bytes).map_err(|e| AnyError::new(&e))?;
        if header_meta.last_log_id != meta.last_log_id
            || header_meta.last_membership != meta.last_membership
        {
            return Err(AnyError::error(format!(
                "the snapshot's own meta ({header_meta}) is not the one it was sent with ({meta})"
            )));
        }
        let bytes = bytes::Bytes::from(bytes);
        let mut state = Cursor::new(bytes.clone());
        state.set_position(state_at as u64);
        self.store
            .replace_all_with_meta(
                StateReader::new(state),
                state_meta(meta.last_log_id, Some(&meta.last_membership))?,
            )
            .await
            .map_err(|e| AnyError::new(&e))?
            .map_err(|e| AnyError::new(&SnapshotError::from(e)))?;
        persist_snapshot(
            self.store.path(),
            &self.file_lock,
            &self.snapshots,
            meta.last_log_id,
            move |file| file.write_all(&bytes),
        )
        .await
    }
}

/// The meta records of a state machine at `last_applied`: the applied log id, and the
/// membership when `membership` is given (else the stored one stays).
fn state_meta(
    last_applied: Option<LogId>,
    membership: Option<&StoredMembership>,
) -> Result<Vec<(String, Vec<u8>)>, AnyError> {
    let mut meta = vec![(
        LAST_APPLIED.to_string(),
        serde_json::to_vec(&last_applied).map_err(|e| AnyError::new(&e))?,
    )];
    if let Some(membership) = membership {
        meta.push((
            LAST_MEMBERSHIP.to_string(),
            serde_json::to_vec(membership).map_err(|e| AnyError::new(&e))?,
        ));
    }
    Ok(meta)
}

/// Keeps what `write` writes (a snapshot of everything up to `last_log_id`) as the current
/// snapshot in `dir`'s [`SNAPSHOT_FILE`], durable before returning, unless the file already
/// holds a later one; drops an older version's copy in `tree`. One write at a time under `lock`.
async fn persist_snapshot(
    dir: &Path,
    lock: &Arc<std::sync::Mutex<()>>,
    tree: &sled::Tree,
    last_log_id: Option<LogId>,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()> + Send + 'static,
) -> Result<(), AnyError> {
    let dir = dir.to_path_buf();
    let lock = lock.clone();
    tokio::task::spawn_blocking(move || {
        let _writing = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(kept) = current_last_log_id(&dir) {
            if kept > last_log_id {
                tracing::debug!(
                    kept = ?kept,
                    built = ?last_log_id,
                    "a later snapshot was written while this one was built; keeping it"
                );
                return Ok(());
            }
        }
        replace_file_with(&dir, SNAPSHOT_FILE, write)
    })
    .await
    .map_err(|e| AnyError::error(format!("the snapshot write did not complete: {e}")))?
    .map_err(|e| AnyError::new(&e).add_context(|| format!("write {SNAPSHOT_FILE}")))?;
    if tree
        .contains_key(SNAPSHOT_KEY)
        .map_err(|e| AnyError::new(&e))?
    {
        tree.remove(SNAPSHOT_KEY).map_err(|e| AnyError::new(&e))?;
        crate::physical::sled_store::flush(tree)
            .await
            .map_err(|e| AnyError::new(&e))?;
    }
    Ok(())
}

/// The last log id of the snapshot in `dir`'s [`SNAPSHOT_FILE`]; `None` when there is none or
/// its header cannot be read (a file this node cannot read is replaced).
fn current_last_log_id(dir: &Path) -> Option<Option<LogId>> {
    let file = std::fs::File::open(dir.join(SNAPSHOT_FILE)).ok()?;
    read_meta(&mut std::io::BufReader::new(file))
        .ok()
        .map(|meta| meta.last_log_id)
}

/// Writes a `state.bin` stream with `export` into a temp file in `dir` (removed when dropped).
fn stage_state(
    dir: &Path,
    export: impl FnOnce(&mut dyn std::io::Write) -> Result<(), crate::physical::StorageError>,
) -> Result<tempfile::NamedTempFile, AnyError> {
    let started = std::time::Instant::now();
    let file = tempfile::Builder::new()
        .prefix(STATE_TEMP_PREFIX)
        .tempfile_in(dir)
        .map_err(|e| AnyError::new(&e).add_context(|| "create the snapshot's staging file"))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
    export(&mut out).map_err(|e| AnyError::new(&e))?;
    let file = out
        .into_inner()
        .map_err(|e| AnyError::new(e.error()).add_context(|| "write the snapshot's state"))?;
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        bytes = file.as_file().metadata().map(|m| m.len()).unwrap_or(0),
        "exported the data for a Raft snapshot"
    );
    Ok(file)
}

/// A snapshot's state: exported into a staging file by the build, on its own task, beside the
/// applies (a point in time however long it takes, see `physical::sled_export`); or, when
/// another export was running, staged already, between two applies.
enum Staging {
    Exporting(StateExport),
    Staged(Result<tempfile::NamedTempFile, AnyError>),
}

/// Removes the staged states a crash left in `dir` (best effort: they only take space).
fn remove_staged_states(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(STATE_TEMP_PREFIX))
        {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(file = %entry.path().display(), error = %e, "could not remove a snapshot build's leftover staging file");
            }
        }
    }
}

/// Builds a snapshot of the data as it was when the builder was created (between two applies,
/// so data and last-applied agree).
pub struct SnapshotBuilder {
    meta: SnapshotMeta,
    /// The data, to be written as a `state.bin` stream (taken by the first build).
    state: Option<Staging>,
    dir: PathBuf,
    file_lock: Arc<std::sync::Mutex<()>>,
    snapshots: sled::Tree,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let signature = self.meta.signature();
        let staged = match self.state.take() {
            Some(Staging::Exporting(export)) => {
                let dir = self.dir.clone();
                tokio::task::spawn_blocking(move || {
                    stage_state(&dir, |out| export.write_state_to(out))
                })
                .await
                .unwrap_or_else(|e| {
                    Err(AnyError::error(format!("the export did not complete: {e}")))
                })
            }
            Some(Staging::Staged(staged)) => staged,
            None => Err(AnyError::error("this builder has built its snapshot")),
        };
        let mut file = staged.map_err(StorageIOError::read_state_machine)?;
        let meta = self.meta.clone();
        persist_snapshot(
            &self.dir,
            &self.file_lock,
            &self.snapshots,
            self.meta.last_log_id,
            move |out| {
                // Two reads of the staged state (in the page cache): its digest for the
                // header, then the copy after it.
                let staged = file.as_file_mut();
                staged.rewind()?;
                let summary = StateSummary::read(staged)?;
                out.write_all(&prefix_for(&meta, &summary))?;
                staged.rewind()?;
                std::io::copy(staged, out).map(|_| ())
            },
        )
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(signature), e))?;
        // openraft 0.9 keeps only the meta of a snapshot it had built; the file is the
        // snapshot, read back by `get_current_snapshot` when a follower needs it.
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(Vec::new())),
        })
    }
}

/// Whether the node may read `key` from this store before its Raft is running, when the log has
/// not replayed what the store missed: the seal configuration, the wrapped root key, the keyring
/// and cluster TLS under `core/`, and every other table a node loads as it unseals. Only the
/// secret engines' data (`logical/`), read while serving after Raft has caught up, is not.
fn read_before_raft(key: &str) -> bool {
    !key.starts_with("logical/")
}

/// Whether a key is one the core's services keep in memory once built (mount and audit tables,
/// cluster identity, policies, the token store's and audit devices' salts): a standby serving
/// reads must rebuild them after such a key changes, so that a deleted policy or a disabled
/// mount stops working there as soon as the change is applied.
fn shapes_services(key: &str) -> bool {
    matches!(
        key,
        "core/mounts" | "core/auth" | "core/audit" | "core/cluster-info" | "core/index-hmac-key"
    ) || key.starts_with("sys/policy/")
        || key.starts_with("sys/token/salt")
        || key.starts_with("audit/")
}

/// The restore a batch commits, if it is a restore commit.
fn restore_commit(ops: &[TxnOp]) -> Option<String> {
    ops.iter().find_map(|op| match op {
        TxnOp::Put { key, value } if key == RESTORE_COMMIT_KEY => {
            String::from_utf8(value.clone()).ok()
        }
        _ => None,
    })
}

impl StateMachine {
    /// Replaces the data with the staged `state.bin` of restore `id` (the staged chunks go with
    /// the old data), decoding the chunks as they are read into the new data tree. A staged
    /// stream that does not decode leaves the data as it was, on every node alike.
    async fn apply_restore(
        &self,
        id: &str,
        meta: Vec<(String, Vec<u8>)>,
    ) -> Result<(), crate::physical::StorageError> {
        let prefix = format!("{RESTORE_STAGING_PREFIX}{id}/");
        if self.store.list(&prefix).await?.is_empty() {
            // Another restore committed first and took every staged chunk with the old data.
            // Decoding nothing would replace the data with nothing.
            tracing::error!(restore = id, "a restore's commit found none of its staged chunks (another restore committed first); the data is unchanged");
            return self.drop_restore(&prefix, meta).await;
        }
        tracing::info!(restore = id, "restoring a snapshot into the state machine");
        // Sorted by key, so the chunks in order.
        let state = StateReader::new(self.store.prefix_reader(&prefix));
        match self
            .store
            .replace_all_with_meta(state, meta.clone())
            .await?
        {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::error!(restore = id, error = %e, "a staged snapshot did not decode; the data is unchanged");
                self.drop_restore(&prefix, meta).await
            }
        }
    }

    /// Removes restore bookkeeping (its staged chunks, under `prefix`, and the commit key),
    /// recording the commit as applied, the data otherwise unchanged.
    async fn drop_restore(
        &self,
        prefix: &str,
        meta: Vec<(String, Vec<u8>)>,
    ) -> Result<(), crate::physical::StorageError> {
        let deletes = self
            .store
            .list(prefix)
            .await?
            .into_iter()
            .map(|key| TxnOp::Delete {
                key: format!("{prefix}{key}"),
            })
            .chain([TxnOp::Delete {
                key: RESTORE_COMMIT_KEY.into(),
            }])
            .collect();
        self.store.transaction_with_meta(deletes, meta).await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        self.read_state()
            .map_err(|e| StorageIOError::read_state_machine(e).into())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = std::time::Instant::now();
        // The membership record is written only when an entry changes it: it is most of an
        // apply's meta (over a kilobyte of JSON), the same for every other entry.
        let mut membership: Option<StoredMembership> = None;
        let mut ops: Vec<TxnOp> = Vec::new();
        let mut flush = false;
        let mut applied = None;
        let mut last = None;
        let mut count = 0;
        for entry in entries {
            count += 1;
            last = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(batch) => match restore_commit(&batch.0) {
                    // A snapshot restore: what came before is applied first,
                    // then the data tree is swapped, atomically with the
                    // record of this entry as applied.
                    Some(id) => {
                        if !ops.is_empty() {
                            let meta = state_meta(applied, membership.as_ref())
                                .map_err(|e| StorageIOError::apply(entry.log_id, e))?;
                            self.store
                                .transaction_with_meta(std::mem::take(&mut ops), meta)
                                .await
                                .map_err(|e| {
                                    StorageIOError::apply(entry.log_id, AnyError::new(&e))
                                })?;
                        }
                        let meta = state_meta(Some(entry.log_id), membership.as_ref())
                            .map_err(|e| StorageIOError::apply(entry.log_id, e))?;
                        self.apply_restore(&id, meta)
                            .await
                            .map_err(|e| StorageIOError::apply(entry.log_id, AnyError::new(&e)))?;
                    }
                    None => ops.extend(batch.0),
                },
                EntryPayload::Membership(m) => {
                    flush = true;
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                }
            }
            applied = Some(entry.log_id);
        }
        let Some(last) = last else {
            return Ok(Vec::new());
        };
        let meta = state_meta(Some(last), membership.as_ref())
            .map_err(|e| StorageIOError::apply(last, e))?;
        let services_changed = ops.iter().any(|op| shapes_services(op.key()));
        let applied = if flush || ops.iter().any(|op| read_before_raft(op.key())) {
            self.store.transaction_with_meta(ops, meta).await
        } else {
            self.store.apply_with_meta(ops, meta).await
        };
        applied.map_err(|e| StorageIOError::apply(last, AnyError::new(&e)))?;
        if services_changed {
            self.store.note_service_change();
        }
        metrics::histogram!("vault.raft.fsm.apply")
            .record(started.elapsed().as_secs_f64() * 1000.0);
        metrics::histogram!("vault.raft_storage.fsm.apply_batch_num").record(count as f64);
        Ok(vec![(); count])
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        let (last_applied, membership) = self.read_state().unwrap_or_default();
        let snapshot_id = match last_applied {
            Some(id) => format!(
                "{}-{}-{:016x}",
                id.leader_id.term,
                id.index,
                rand::random::<u64>()
            ),
            None => format!("0-0-{:016x}", rand::random::<u64>()),
        };
        SnapshotBuilder {
            meta: SnapshotMeta {
                last_log_id: last_applied,
                last_membership: membership,
                snapshot_id,
            },
            state: Some(match self.store.begin_export() {
                Some(export) => Staging::Exporting(export),
                None => Staging::Staged(stage_state(self.store.path(), |out| {
                    self.store.export_state_to(out)
                })),
            }),
            dir: self.store.path().to_path_buf(),
            file_lock: self.file_lock.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        self.install(meta, snapshot.into_inner())
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), e).into())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let file = self.store.path().join(SNAPSHOT_FILE);
        let snapshots = self.snapshots.clone();
        let stored = tokio::task::spawn_blocking(move || match std::fs::read(&file) {
            Ok(bytes) => Ok(Some(bytes)),
            // Not written yet by this version: an older version's, if any.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => snapshots
                .get(SNAPSHOT_KEY)
                .map(|v| v.map(|v| v.to_vec()))
                .map_err(|e| AnyError::new(&e)),
            Err(e) => Err(AnyError::new(&e).add_context(|| format!("read {}", file.display()))),
        })
        .await
        .map_err(|e| {
            StorageIOError::read_snapshot(
                None,
                AnyError::error(format!("the snapshot read did not complete: {e}")),
            )
        })?
        .map_err(|e| StorageIOError::read_snapshot(None, e))?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        let meta = snapshot_meta(&stored)
            .map_err(|e| StorageIOError::read_snapshot(None, AnyError::new(&e)))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::{CommittedLeaderId, Membership};

    use super::*;
    use crate::physical::Backend;
    use crate::raft::snapshot::decode_snapshot;
    use crate::raft::types::{ClusterNode, WriteBatch};

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn put(index: u64, key: &str, value: &[u8]) -> Entry {
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(WriteBatch(vec![TxnOp::Put {
                key: key.into(),
                value: value.to_vec(),
            }])),
        }
    }

    fn membership_entry(index: u64) -> Entry {
        let node = ClusterNode {
            name: "vault-1".into(),
            api_addr: "https://127.0.0.1:8200".into(),
            cluster_addr: "127.0.0.1:8201".into(),
        };
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Membership(Membership::new(
                vec![BTreeSet::from([node.id()])],
                BTreeMap::from([(node.id(), node)]),
            )),
        }
    }

    async fn open(dir: &std::path::Path) -> (Arc<SledStore>, StateMachine) {
        let store = Arc::new(SledStore::open(dir).unwrap());
        let sm = StateMachine::open(store.clone()).unwrap();
        (store, sm)
    }

    /// A snapshot of `sm` as it is now, built.
    async fn build(sm: &mut StateMachine) -> Snapshot {
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap()
    }

    /// The bytes of `sm`'s current snapshot (there must be one).
    async fn current_bytes(sm: &mut StateMachine) -> Vec<u8> {
        sm.get_current_snapshot()
            .await
            .unwrap()
            .unwrap()
            .snapshot
            .into_inner()
    }

    /// A state machine in `dir` with a membership (index 1) and `a` = 1 (index 2) applied.
    async fn open_with_a(dir: &std::path::Path) -> (Arc<SledStore>, StateMachine) {
        let (store, mut sm) = open(dir).await;
        sm.apply([membership_entry(1), put(2, "a", b"1")])
            .await
            .unwrap();
        (store, sm)
    }

    #[tokio::test]
    async fn apply_snapshot_and_install_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut sm) = open(dir.path()).await;
        assert_eq!(
            sm.applied_state().await.unwrap(),
            (None, Default::default())
        );
        sm.apply([
            membership_entry(1),
            put(2, "a", b"1"),
            put(3, "b/c", b"2"),
            Entry {
                log_id: log_id(4),
                payload: EntryPayload::Blank,
            },
        ])
        .await
        .unwrap();
        let (applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(4)));
        assert_eq!(membership.log_id(), &Some(log_id(1)));
        assert_eq!(store.get("b/c").await.unwrap().unwrap(), b"2");

        let snapshot = build(&mut sm).await;
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(4)));
        // Later writes are not in the snapshot.
        sm.apply([put(5, "later", b"x")]).await.unwrap();

        // Install into a fresh node, and into a node whose data differs.
        let other_dir = tempfile::tempdir().unwrap();
        let (other_store, mut other) = open(other_dir.path()).await;
        other_store.put("stale", b"gone".to_vec()).await.unwrap();
        // openraft keeps only the meta of what it built: the bytes come from the file.
        assert!(snapshot.snapshot.get_ref().is_empty());
        let bytes = current_bytes(&mut sm).await;
        other
            .install_snapshot(&snapshot.meta, Box::new(Cursor::new(bytes)))
            .await
            .unwrap();
        assert_eq!(
            other_store.export().unwrap(),
            vec![
                ("a".to_string(), b"1".to_vec()),
                ("b/c".to_string(), b"2".to_vec())
            ]
        );
        assert_eq!(
            other.applied_state().await.unwrap(),
            (Some(log_id(4)), membership.clone())
        );
        // The snapshot survives a restart of either node.
        drop((sm, store, other, other_store));
        let (_, mut sm) = open(dir.path()).await;
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, snapshot.meta);
        let (_, mut other) = open(other_dir.path()).await;
        assert_eq!(
            other.get_current_snapshot().await.unwrap().unwrap().meta,
            snapshot.meta
        );
    }

    /// The membership record is written by the entry that changes it, not by every apply:
    /// applies after it keep it, across a reopen, and a later change in a batch of puts wins.
    #[tokio::test]
    async fn the_membership_outlives_applies_that_do_not_change_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let (_store, mut sm) = open_with_a(dir.path()).await;
            let first = sm.applied_state().await.unwrap().1;
            assert_eq!(first.log_id(), &Some(log_id(1)));
            sm.apply([put(3, "b", b"2")]).await.unwrap();
            sm.apply([put(4, "c", b"3"), put(5, "d", b"4")])
                .await
                .unwrap();
            assert_eq!(
                sm.applied_state().await.unwrap(),
                (Some(log_id(5)), first.clone())
            );
            first
        };
        let (_store, mut sm) = open(dir.path()).await;
        assert_eq!(sm.applied_state().await.unwrap(), (Some(log_id(5)), first));
        sm.apply([put(6, "e", b"5"), membership_entry(7), put(8, "f", b"6")])
            .await
            .unwrap();
        let (applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(8)));
        assert_eq!(membership.log_id(), &Some(log_id(7)));
    }

    #[tokio::test]
    async fn damaged_snapshot_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut sm) = open_with_a(dir.path()).await;
        let snapshot = build(&mut sm).await;
        let good = current_bytes(&mut sm).await;
        assert_eq!(snapshot_meta(&good).unwrap(), snapshot.meta);

        let target_dir = tempfile::tempdir().unwrap();
        let (target_store, mut target) = open(target_dir.path()).await;
        target.apply([put(1, "mine", b"keep")]).await.unwrap();
        let before = (
            target_store.export().unwrap(),
            target.applied_state().await.unwrap(),
        );

        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        let mut other_meta = snapshot.meta.clone();
        other_meta.last_log_id = Some(log_id(9));
        let cases: Vec<(&str, SnapshotMeta, Vec<u8>)> = vec![
            (
                "truncated",
                snapshot.meta.clone(),
                good[..good.len() - 3].to_vec(),
            ),
            (
                "header only",
                snapshot.meta.clone(),
                good[..good.len() / 2].to_vec(),
            ),
            ("empty", snapshot.meta.clone(), Vec::new()),
            ("bit flip", snapshot.meta.clone(), flipped),
            ("meta mismatch", other_meta, good.clone()),
        ];
        for (name, meta, bytes) in cases {
            let result = target
                .install_snapshot(&meta, Box::new(Cursor::new(bytes)))
                .await;
            assert!(result.is_err(), "{name}: accepted");
            assert_eq!(
                (
                    target_store.export().unwrap(),
                    target.applied_state().await.unwrap()
                ),
                before,
                "{name}: state changed"
            );
            assert!(
                target.get_current_snapshot().await.unwrap().is_none(),
                "{name}"
            );
        }
    }

    /// A node upgraded from a build that kept the current snapshot in the `raft_snapshot` tree
    /// still has it; the next one it builds goes to the file and the tree's copy goes away.
    #[tokio::test]
    async fn a_snapshot_kept_in_the_tree_by_an_earlier_build_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut sm) = open_with_a(dir.path()).await;
        let old_meta = SnapshotMeta {
            last_log_id: Some(log_id(2)),
            snapshot_id: "1-2-old".into(),
            ..Default::default()
        };
        let old =
            crate::raft::snapshot::encode_snapshot(&old_meta, &[("a".to_string(), b"1".to_vec())]);
        sm.snapshots.insert(SNAPSHOT_KEY, old.clone()).unwrap();
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, old_meta);
        assert_eq!(current.snapshot.into_inner(), old);

        sm.apply([put(3, "b", b"2")]).await.unwrap();
        let built = build(&mut sm).await;
        assert!(sm.snapshots.get(SNAPSHOT_KEY).unwrap().is_none());
        assert!(dir.path().join(SNAPSHOT_FILE).exists());
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, built.meta);
        let (_, entries) = decode_snapshot(&current.snapshot.into_inner()).unwrap();
        assert_eq!(entries, store.export().unwrap());
    }

    /// Raft may apply entries again over their own result (a restart from an earlier
    /// `last_applied`): every op is an absolute put or delete, so the data comes out the same.
    #[tokio::test]
    async fn entries_applied_again_over_their_own_data_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut sm) = open_with_a(dir.path()).await;
        let delete = |index: u64, key: &str| Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(WriteBatch(vec![TxnOp::Delete { key: key.into() }])),
        };
        let entries = || {
            vec![
                put(3, "logical/m/k", b"v1"),
                put(4, "logical/m/gone", b"x"),
                put(5, "logical/m/k", b"v2"),
                delete(6, "logical/m/gone"),
                put(7, "logical/m/gone", b"back"),
                delete(8, "logical/m/k"),
            ]
        };
        sm.apply(entries()).await.unwrap();
        let after = store.export().unwrap();
        let state = sm.applied_state().await.unwrap();
        assert_eq!(state.0, Some(log_id(8)));

        // The meta as it was before those entries, the data as after them.
        let earlier = state_meta(Some(log_id(2)), Some(&state.1)).unwrap();
        for (key, value) in earlier {
            store.set_meta(&key, value).await.unwrap();
        }
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(2)));
        sm.apply(entries()).await.unwrap();
        assert_eq!(store.export().unwrap(), after);
        assert_eq!(sm.applied_state().await.unwrap(), state);
    }

    /// A restore's commit whose staged chunks are gone (a second restore committed first and
    /// swapped them out with the old data) leaves the data as it is, instead of replacing it
    /// with the nothing it decodes to.
    #[tokio::test]
    async fn a_restore_commit_without_its_staged_chunks_changes_no_data() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut sm) = open_with_a(dir.path()).await;
        let before = store.export().unwrap();
        sm.apply([put(3, RESTORE_COMMIT_KEY, b"0123456789abcdef")])
            .await
            .unwrap();
        assert_eq!(store.export().unwrap(), before);
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(3)));
    }

    /// Builds run on tasks of their own and may overlap (with each other, with an install):
    /// the file they leave is always one whole snapshot.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn overlapping_snapshot_writes_leave_one_whole_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut sm) = open_with_a(dir.path()).await;
        let mut builders = Vec::new();
        for i in 0..4u64 {
            // Megabytes each, so that unserialised writes of the one temp file would overlap.
            let big = vec![b'x' + i as u8; 2 << 20];
            sm.apply([put(3 + i, "logical/m/big", &big)]).await.unwrap();
            builders.push(sm.get_snapshot_builder().await);
        }
        let builds: Vec<_> = builders
            .into_iter()
            .map(|mut b| tokio::spawn(async move { b.build_snapshot().await.unwrap().meta }))
            .collect();
        let mut metas = Vec::new();
        for build in builds {
            metas.push(build.await.unwrap());
        }
        // Whichever finished last, the file holds the latest of them, whole.
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        let latest = metas.iter().max_by_key(|m| m.last_log_id).unwrap();
        assert_eq!(&current.meta, latest);
        let (meta, _) = decode_snapshot(&current.snapshot.into_inner()).unwrap();
        assert_eq!(meta, current.meta);
    }

    /// A build that was started before a newer snapshot was installed and finishes after it
    /// leaves the installed one in place; the build's staging file is gone either way.
    #[tokio::test]
    async fn a_build_finishing_after_a_newer_install_keeps_the_newer() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut sm) = open_with_a(dir.path()).await;
        // The build exports the data as it was here, beside the install.
        let mut stale = sm.get_snapshot_builder().await;

        // A newer snapshot, from another node's state machine.
        let other_dir = tempfile::tempdir().unwrap();
        let (_, mut other) = open_with_a(other_dir.path()).await;
        other.apply([put(3, "b", b"2")]).await.unwrap();
        let newer = build(&mut other).await;
        let bytes = current_bytes(&mut other).await;
        sm.install_snapshot(&newer.meta, Box::new(Cursor::new(bytes)))
            .await
            .unwrap();

        let built = stale.build_snapshot().await.unwrap();
        assert_eq!(built.meta.last_log_id, Some(log_id(2)));
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, newer.meta);
        assert_eq!(staged_files(dir.path()), 0);
        // A builder builds once.
        assert!(stale.build_snapshot().await.is_err());
    }

    /// A staging file a crash left behind is removed when the store opens again.
    #[tokio::test]
    async fn a_staging_file_left_by_a_crash_is_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut sm) = open_with_a(dir.path()).await;
        let mut builder = sm.get_snapshot_builder().await;
        // What a crash mid-build leaves: the staging file, never removed.
        let Some(Staging::Exporting(export)) = builder.state.take() else {
            panic!("no other export runs, so the build exports beside the applies");
        };
        let staged = stage_state(dir.path(), |out| export.write_state_to(out)).unwrap();
        staged.keep().unwrap();
        drop(builder);
        assert_eq!(staged_files(dir.path()), 1);
        drop((sm, store));
        let (_, _sm) = open(dir.path()).await;
        assert_eq!(staged_files(dir.path()), 0);
    }

    fn staged_files(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_str()
                    .unwrap()
                    .starts_with(STATE_TEMP_PREFIX)
            })
            .count()
    }
}
