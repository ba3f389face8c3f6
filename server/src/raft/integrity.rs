//! A damaged store refuses to serve: the node records, beside sled, how far it had applied,
//! and on start checks that its store still holds at least that much.
//!
//! Why: sled 0.34 treats the first record that fails its CRC as the end of its log on recovery,
//! so a `db` file with bytes flipped in the middle, or cut short, opens without an error and
//! holds only what came before the damage. The damage experiment in
//! `tests/tests/integration/damaged_stores.rs` measured it on a one-node cluster: of 9 damaged
//! copies 1 came back whole, 2 made sled panic on open, and 6 opened and served with 12 to 221
//! of 300 acknowledged writes silently missing.
//!
//! How: [`spawn_recorder`] follows the state machine's applied index; at most every
//! [`RECORD_INTERVAL`] it flushes sled (so everything up to that index is on disk) and then
//! writes `keyhold-durable.json` (temp file, fsync, rename, fsync of the directory) with that
//! index; when Raft stops (seal, SIGTERM) [`record_now`] records the last index applied. After
//! a crash the record trails by up to one interval, and damage that takes only the writes of
//! that last interval goes unseen. [`check`] runs when the server opens the store, before anything is served: its log
//! must have no holes, and it must hold an applied index, a log or a purge point at least as
//! far as the record says; otherwise the server stops with [`Damaged`], which tells the
//! operator how to bring the node back (move the data directory aside; a member of a cluster
//! rejoins under its node id and is replicated to from scratch; a one-node cluster is restored
//! from its latest snapshot).
//!
//! The record only ever trails what is durable (it is written after the flush that made its
//! index durable), so an intact store always passes. A damaged record is itself refused; a
//! missing one (a new node, data from before this check existed, a directory emptied for a
//! rejoin or an offline restore) passes, and the next applied entry writes it.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::types::{LogId, Raft};
use crate::physical::sled_store::SledStore;

/// The record's file name, in the data directory beside sled's files.
pub const MARKER_FILE: &str = "keyhold-durable.json";

/// How often, at most, the record is brought up to date (one sled flush and one small fsynced
/// file each time). It trails the applied index by at most this much, which only narrows what
/// the check can see, never makes it refuse an intact store.
pub const RECORD_INTERVAL: Duration = Duration::from_millis(250);

// Where the log store and the state machine keep their records (`log_store.rs`,
// `state_machine.rs`); `check_sees_what_the_raft_stores_wrote` below keeps these in step.
const LOG_TREE: &str = "raft_log";
const LOG_META_TREE: &str = "raft_meta";
const LAST_PURGED: &str = "last_purged";
const LAST_APPLIED: &str = "raft_last_applied";

/// What `keyhold-durable.json` holds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
struct Record {
    /// The last log index applied here and flushed to disk when the record was written.
    applied_index: u64,
    /// Its term.
    applied_term: u64,
}

/// The store holds less than the node recorded as durable, or its log has holes.
#[derive(Debug, thiserror::Error)]
#[error(
    "the data directory {dir} is damaged: {detail}. Its files were changed or cut short while \
     the server was stopped (a disk fault, a bad copy or restore); serving from it would \
     silently lose acknowledged writes, so this node will not start on it. To bring the node \
     back: move the directory aside (mv {dir} {dir}.damaged) and start the server again. In a \
     cluster the node starts uninitialised, retry_join (or `keyhold operator raft join`) asks \
     the active node for a join challenge, and once unsealed with the cluster's keys (or by \
     its auto-unseal) it rejoins under the same node id and the active node replicates \
     everything to it. A one-node cluster has nobody to copy from: restore its latest snapshot \
     into the empty directory (`keyhold operator raft snapshot restore -offline`)"
)]
pub struct Damaged {
    pub dir: String,
    pub detail: String,
}

fn damaged(dir: &Path, detail: String) -> Damaged {
    Damaged {
        dir: dir.display().to_string(),
        detail,
    }
}

fn read_record(dir: &Path) -> Result<Option<Record>, Damaged> {
    let path = dir.join(MARKER_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(damaged(dir, format!("{MARKER_FILE} cannot be read: {e}"))),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| damaged(dir, format!("{MARKER_FILE} is not a valid record ({e})")))
}

fn json_meta<T: serde::de::DeserializeOwned>(
    dir: &Path,
    what: &str,
    bytes: Option<sled::IVec>,
) -> Result<Option<T>, Damaged> {
    match bytes {
        None => Ok(None),
        Some(b) => serde_json::from_slice::<Option<T>>(&b)
            .or_else(|_| serde_json::from_slice::<T>(&b).map(Some))
            .map_err(|e| damaged(dir, format!("its {what} record does not decode ({e})"))),
    }
}

/// What the store holds: the furthest of its applied index, its log's last index and its purge
/// point; and whether its log runs without holes from its first index to its last.
fn held(store: &SledStore, dir: &Path) -> Result<u64, Damaged> {
    let io = |e: crate::physical::StorageError| damaged(dir, format!("it cannot be read ({e})"));
    let sled_io = |e: sled::Error| damaged(dir, format!("it cannot be read ({e})"));
    let log = store.open_tree(LOG_TREE).map_err(io)?;
    let log_meta = store.open_tree(LOG_META_TREE).map_err(io)?;
    let purged: Option<LogId> = json_meta(
        dir,
        "last purged log id",
        log_meta.get(LAST_PURGED).map_err(sled_io)?,
    )?;
    let applied: Option<LogId> = json_meta(
        dir,
        "last applied log id",
        store
            .get_meta(LAST_APPLIED)
            .map_err(io)?
            .map(sled::IVec::from),
    )?;
    let index = |k: &[u8]| -> Result<u64, Damaged> {
        let raw: [u8; 8] = k
            .try_into()
            .map_err(|_| damaged(dir, format!("its log holds a key of {} bytes", k.len())))?;
        Ok(u64::from_be_bytes(raw))
    };
    let first = log.first().map_err(sled_io)?;
    let last = log.last().map_err(sled_io)?;
    let mut log_last = None;
    if let (Some((first, _)), Some((last, _))) = (first, last) {
        let (first, last) = (index(&first)?, index(&last)?);
        let count = log.len() as u64;
        if last - first + 1 != count {
            return Err(damaged(
                dir,
                format!("its Raft log has holes: {count} entries between index {first} and {last}"),
            ));
        }
        log_last = Some(last);
    }
    Ok(
        [log_last, purged.map(|l| l.index), applied.map(|l| l.index)]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0),
    )
}

/// Opens the store in `dir` for the server, with a page cache of `cache_bytes`, and
/// [`check`]s it. sled itself panics on some damage (a flipped byte in a record header: "tried
/// to serialize Uninitialized"); that panic becomes the same [`Damaged`] error, with what to do.
pub fn open_checked(dir: &Path, cache_bytes: u64) -> anyhow::Result<SledStore> {
    let opened = std::panic::catch_unwind(|| SledStore::open_with_cache(dir, cache_bytes))
        .map_err(|panic| {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "no message".into());
            damaged(dir, format!("sled panicked while reading it ({why})"))
        })?;
    let store = opened?;
    check(&store)?;
    Ok(store)
}

/// Checks the store in `store.path()` against the node's record; run before anything is
/// served from it.
pub fn check(store: &SledStore) -> Result<(), Damaged> {
    let dir = store.path();
    let held = held(store, dir)?;
    let Some(record) = read_record(dir)? else {
        return Ok(());
    };
    if held < record.applied_index {
        return Err(damaged(
            dir,
            format!(
                "it holds Raft entries up to index {held}, but this node had applied and \
                 flushed index {} (term {}), as {MARKER_FILE} records",
                record.applied_index, record.applied_term
            ),
        ));
    }
    Ok(())
}

/// Writes `record` to `dir` atomically and durably.
fn write_record(dir: &Path, record: Record) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
    replace_file(dir, MARKER_FILE, &[&bytes])
}

/// Replaces the file `name` in `dir` with `parts`, one after another, atomically and durably:
/// a temp file (mode 0600), fsync, rename over `name`, fsync of the directory. After a crash the
/// file is the old one or the new one, whole.
pub(crate) fn replace_file(dir: &Path, name: &str, parts: &[&[u8]]) -> std::io::Result<()> {
    replace_file_with(dir, name, |file| {
        parts.iter().try_for_each(|part| file.write_all(part))
    })
}

/// [`replace_file`] with what `write` writes to the temp file.
pub(crate) fn replace_file_with(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let path = dir.join(name);
    let tmp: PathBuf = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    write(&mut file)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Flushes the store and records `applied` (with `dir` the store's directory); returns
/// whether the record was written.
async fn record(store: &SledStore, applied: LogId) -> bool {
    // Everything applied so far is made durable by this flush, so an index read before it may
    // be recorded after it.
    if let Err(e) = store.flush().await {
        tracing::warn!(error = %e, "could not flush the store to record how far it is durable");
        return false;
    }
    let record = Record {
        applied_index: applied.index,
        applied_term: applied.leader_id.term,
    };
    let dir = store.path().to_path_buf();
    match tokio::task::spawn_blocking(move || write_record(&dir, record)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, file = MARKER_FILE, "could not record how far the store is durable");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "the durable-index recorder failed");
            false
        }
    }
}

/// Keeps the record up to date while `raft` runs: at most every [`RECORD_INTERVAL`], when the
/// applied index moved, flushes the store and then records the index. Ends when Raft stops
/// ([`record_now`] writes the last one).
pub(super) fn spawn_recorder(raft: Raft, store: Arc<SledStore>) {
    tokio::spawn(async move {
        let mut recorded = read_record(store.path())
            .ok()
            .flatten()
            .map(|r| r.applied_index);
        let mut metrics = raft.metrics();
        loop {
            if metrics.changed().await.is_err() {
                return;
            }
            let applied = metrics.borrow_and_update().last_applied;
            let Some(applied) = applied else { continue };
            if recorded.is_some_and(|r| r >= applied.index) {
                continue;
            }
            if record(&store, applied).await {
                recorded = Some(applied.index);
            }
            tokio::time::sleep(RECORD_INTERVAL).await;
        }
    });
}

/// Records how far the store is applied, now (Raft has stopped: a clean stop leaves a record
/// of everything applied, not of where the last interval ended).
pub(super) async fn record_now(raft: &Raft, store: &SledStore) {
    let applied = raft.metrics().borrow().last_applied;
    if let Some(applied) = applied {
        let ahead = read_record(store.path())
            .ok()
            .flatten()
            .is_some_and(|r| r.applied_index >= applied.index);
        if !ahead {
            record(store, applied).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::log_store::LogStore;
    use crate::raft::types::Entry;
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
            payload: EntryPayload::Blank,
        }
    }

    async fn store_with_log(dir: &Path, last: u64) -> Arc<SledStore> {
        let store = Arc::new(SledStore::open(dir).unwrap());
        let mut log = LogStore::open(&store).unwrap();
        let entries: Vec<Entry> = (1..=last).map(entry).collect();
        log.blocking_append(entries).await.unwrap();
        store
    }

    #[tokio::test]
    async fn check_sees_what_the_raft_stores_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_log(dir.path(), 5).await;
        // No record yet: passes.
        check(&store).unwrap();
        write_record(
            dir.path(),
            Record {
                applied_index: 5,
                applied_term: 1,
            },
        )
        .unwrap();
        check(&store).unwrap();
        write_record(
            dir.path(),
            Record {
                applied_index: 9,
                applied_term: 1,
            },
        )
        .unwrap();
        let err = check(&store).unwrap_err().to_string();
        assert!(err.contains("up to index 5"), "{err}");
        assert!(err.contains("had applied and flushed index 9"), "{err}");
        assert!(err.contains("move the directory aside"), "{err}");
    }

    #[tokio::test]
    async fn a_hole_in_the_log_or_a_garbled_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_log(dir.path(), 5).await;
        store
            .open_tree(LOG_TREE)
            .unwrap()
            .remove(3u64.to_be_bytes())
            .unwrap();
        let err = check(&store).unwrap_err().to_string();
        assert!(
            err.contains("holes: 4 entries between index 1 and 5"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_log(dir.path(), 5).await;
        std::fs::write(dir.path().join(MARKER_FILE), b"{\"applied_ind").unwrap();
        let err = check(&store).unwrap_err().to_string();
        assert!(err.contains("not a valid record"), "{err}");
    }
}
