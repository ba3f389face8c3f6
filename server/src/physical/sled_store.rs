//! The durable store on local disk (sled), under the Raft state machine: data tree plus a metadata tree.
//!
//! Durability: sled fsyncs on its own only every 500 ms (spacejam/sled#1140), so
//! every write here awaits `flush_async` before it returns; an acknowledged
//! write survives `kill -9`. (sled's flush uses `sync_file_range`, #1452: that
//! is as durable as sled gets.) Opened in `Mode::LowSpace` against sled's space
//! growth (databend PR #14709).
//!
//! Memory: sled keeps the pages it has read or written in a cache of its own, 1 GiB unless
//! told otherwise, and a node touches every page as it applies writes: at 100,000 secrets
//! that cache alone held most of a node's resident memory. The server bounds it
//! ([`DEFAULT_CACHE_BYTES`], or the config's `cache_size`, see [`cache_bytes`]).
//!
//! Layout: tree `data` holds the [`Backend`] entries (barrier ciphertext, paths
//! as UTF-8 keys); tree `meta` holds the Raft state machine's own records
//! (last applied log id, membership), kept apart so a snapshot's
//! [`SledStore::export`] and [`SledStore::replace_all`] never touch them.

use std::fmt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::{list_children, Backend, StorageError, TxnOp};

const DATA_TREE: &str = "data";
const META_TREE: &str = "meta";

pub struct SledStore {
    path: PathBuf,
    data: sled::Tree,
    meta: sled::Tree,
    // Kept so the database outlives its trees' users and flushes on drop.
    db: sled::Db,
    /// Bumped each time the whole data set is replaced (a restored or installed
    /// snapshot), so the core can tell that its keys may no longer fit.
    replacements: std::sync::atomic::AtomicU64,
    /// Bumped after each Raft apply that changed what a standby serving reads keeps in memory
    /// (mount and audit tables, policies, salts): see `raft::state_machine::shapes_services`.
    service_changes: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// sled's page cache when the config says nothing.
pub const DEFAULT_CACHE_BYTES: u64 = 32 << 20;

/// Vault's `cache_size` counts entries of its read cache; sled's cache counts bytes of
/// pages. An entry is taken as this many bytes, so Vault's default of 131,072 entries is
/// [`DEFAULT_CACHE_BYTES`].
pub const CACHE_BYTES_PER_ENTRY: u64 = 256;

/// The least sled cache: with `disable_cache` (sled has no uncached mode) or a tiny
/// `cache_size`.
pub const MIN_CACHE_BYTES: u64 = 4 << 20;

/// sled's cache size for the config's `cache_size` (entries, as in Vault) and
/// `disable_cache`.
pub fn cache_bytes(cache_size: Option<u64>, disable_cache: bool) -> u64 {
    if disable_cache {
        return MIN_CACHE_BYTES;
    }
    match cache_size {
        // 0 means the default, as for Vault's other sizes.
        None | Some(0) => DEFAULT_CACHE_BYTES,
        Some(entries) => entries
            .saturating_mul(CACHE_BYTES_PER_ENTRY)
            .max(MIN_CACHE_BYTES),
    }
}

impl SledStore {
    /// Opens (or creates) the store in the directory `path`, with the default cache.
    pub fn open(path: &Path) -> Result<SledStore, StorageError> {
        SledStore::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the store in the directory `path`, with a page cache of at most
    /// `cache_bytes`.
    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<SledStore, StorageError> {
        // sled's flusher thread releases the directory lock a moment after
        // the last handle is dropped, so a reopen in the same process (a
        // restore, a test) can see the lock still held: retry briefly.
        let mut attempts = 0;
        let db = loop {
            match sled::Config::new()
                .path(path)
                .mode(sled::Mode::LowSpace)
                .cache_capacity(cache_bytes)
                .open()
            {
                Ok(db) => break db,
                Err(sled::Error::Io(io))
                    if io.to_string().contains("could not acquire lock")
                        && attempts < LOCK_RETRIES =>
                {
                    attempts += 1;
                    std::thread::sleep(LOCK_RETRY_DELAY);
                }
                Err(e) => return Err(open_error(path, e)),
            }
        };
        let data = db.open_tree(DATA_TREE).map_err(|e| open_error(path, e))?;
        let meta = db.open_tree(META_TREE).map_err(|e| open_error(path, e))?;
        Ok(SledStore {
            path: path.to_path_buf(),
            data,
            meta,
            db,
            replacements: std::sync::atomic::AtomicU64::new(0),
            service_changes: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// How many times the data set was replaced wholesale since the store was opened.
    pub fn replacements(&self) -> u64 {
        self.replacements.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many applies changed the services a standby builds from storage (see
    /// `service_changes`), plus the wholesale replacements; a standby rebuilds when it moves.
    pub fn service_changes(&self) -> u64 {
        self.service_changes
            .load(std::sync::atomic::Ordering::SeqCst)
            .wrapping_add(self.replacements())
    }

    /// Called by the state machine after an apply that changed such keys is visible.
    pub(crate) fn note_service_change(&self) {
        self.service_changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every data entry, sorted by key (a snapshot's contents).
    /// Fails with [`StorageError::NoSpace`] when the file system holding the store has less
    /// than `reserve` bytes free for this process's user.
    pub fn ensure_space(&self, reserve: u64) -> Result<(), StorageError> {
        let stat = rustix::fs::statvfs(&self.path).map_err(|e| {
            StorageError::Io(format!(
                "free space of the data directory {}: {e}",
                self.path.display()
            ))
        })?;
        let available = stat.f_bavail.saturating_mul(stat.f_frsize);
        if available < reserve {
            return Err(StorageError::NoSpace {
                path: self.path.display().to_string(),
                available,
                reserve,
            });
        }
        Ok(())
    }

    pub fn export(&self) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        self.export_prefix("")
    }

    /// The data entries whose keys start with `prefix`, sorted by key.
    pub fn export_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        self.data
            .scan_prefix(prefix.as_bytes())
            .map(|item| {
                let (k, v) = item.map_err(|e| io_error("export", "", e))?;
                Ok((self.data_key(&k)?.to_string(), v.to_vec()))
            })
            .collect()
    }

    /// Writes every data entry, sorted by key, to `out` as a snapshot's `state.bin` stream:
    /// what `encode_state(&self.export()?)` returns, one entry at a time (at 100,000 secrets
    /// the stream is over 100 MiB, and a build holding it in memory set the node's peak RSS).
    pub fn export_state_to(&self, out: &mut impl std::io::Write) -> Result<(), StorageError> {
        let mut entry = Vec::new();
        for item in self.data.iter() {
            let (k, v) = item.map_err(|e| io_error("export", "", e))?;
            entry.clear();
            keyhold_client::snapshot::state::encode_entry(&mut entry, self.data_key(&k)?, &v);
            out.write_all(&entry).map_err(|e| {
                StorageError::Io(format!("write the snapshot's state while exporting: {e}"))
            })?;
        }
        Ok(())
    }

    /// A data key as text (every key the server writes is).
    fn data_key<'k>(&self, key: &'k [u8]) -> Result<&'k str, StorageError> {
        std::str::from_utf8(key).map_err(|_| {
            StorageError::Io(format!(
                "sled store at {}: a data key is not UTF-8",
                self.path.display()
            ))
        })
    }

    /// Atomically replaces the whole data tree with `entries` (snapshot
    /// install), flushed before returning. The metadata tree is untouched.
    pub async fn replace_all(&self, entries: Vec<(String, Vec<u8>)>) -> Result<(), StorageError> {
        let data = self.data.clone();
        blocking(move || {
            let mut batch = sled::Batch::default();
            for item in data.iter().keys() {
                batch.remove(item?);
            }
            // A later insert of the same key overrides the remove above.
            for (k, v) in entries {
                batch.insert(k.as_bytes(), v);
            }
            data.apply_batch(batch)
        })
        .await
        .map_err(|e| io_error("replace all entries", "", e))?;
        self.flush().await
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.meta
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| io_error("read metadata", key, e))
    }

    /// Writes a metadata record, flushed before returning.
    pub async fn set_meta(&self, key: &str, value: Vec<u8>) -> Result<(), StorageError> {
        let meta = self.meta.clone();
        let k = key.to_string();
        blocking(move || meta.insert(k, value).map(|_| ()))
            .await
            .map_err(|e| io_error("write metadata", key, e))?;
        self.flush().await
    }

    /// Opens another tree of the same database (the Raft log and vote live
    /// beside the data, so one flush makes all of them durable).
    /// Entries in a tree of the database (0 for a tree never written).
    pub fn open_raw_tree_len(&self, name: &str) -> Result<usize, StorageError> {
        Ok(self.open_tree(name)?.len())
    }

    pub(crate) fn open_tree(&self, name: &str) -> Result<sled::Tree, StorageError> {
        self.db
            .open_tree(name)
            .map_err(|e| io_error("open tree", name, e))
    }

    /// Applies `ops` to the data tree and writes `meta` records in one sled
    /// transaction across both trees, flushed before returning: after a crash
    /// either all of it is there or none of it.
    pub(crate) async fn transaction_with_meta(
        &self,
        ops: Vec<TxnOp>,
        meta: Vec<(String, Vec<u8>)>,
    ) -> Result<(), StorageError> {
        self.write_with_meta(txn_writes(ops), meta).await
    }

    /// [`SledStore::transaction_with_meta`] without the flush: for the Raft state machine's
    /// applies of data that is read only once Raft runs, whose entries are already durable in
    /// the Raft log of the same database. sled writes one log for all trees and recovers a
    /// prefix of it, so this write is on disk once any later flush returns (the next log
    /// append's), and a crash before that loses only state the Raft log replays.
    pub(crate) async fn apply_with_meta(
        &self,
        ops: Vec<TxnOp>,
        meta: Vec<(String, Vec<u8>)>,
    ) -> Result<(), StorageError> {
        self.write_unflushed(txn_writes(ops), meta).await
    }

    /// [`SledStore::replace_all`] and `meta` records in one transaction
    /// (snapshot install: the data and the log id it corresponds to must
    /// never disagree after a crash).
    pub(crate) async fn replace_all_with_meta(
        &self,
        entries: Vec<(String, Vec<u8>)>,
        meta: Vec<(String, Vec<u8>)>,
    ) -> Result<(), StorageError> {
        // The keys to remove are read outside the transaction (sled
        // transactions cannot iterate); the caller holds the only writer.
        let data = self.data.clone();
        let old_keys = blocking(move || data.iter().keys().collect::<sled::Result<Vec<_>>>())
            .await
            .map_err(|e| io_error("replace all entries", "", e))?;
        let mut writes: Vec<(Vec<u8>, Option<Vec<u8>>)> =
            Vec::with_capacity(old_keys.len() + entries.len());
        writes.extend(old_keys.into_iter().map(|k| (k.to_vec(), None)));
        // A later put of the same key overrides the removal above.
        writes.extend(entries.into_iter().map(|(k, v)| (k.into_bytes(), Some(v))));
        self.write_with_meta(writes, meta).await?;
        self.replacements
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Puts (`Some`) and removals (`None`) in the data tree plus `meta`
    /// records, as one transaction across both trees, then a flush.
    async fn write_with_meta(
        &self,
        writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        meta: Vec<(String, Vec<u8>)>,
    ) -> Result<(), StorageError> {
        self.write_unflushed(writes, meta).await?;
        self.flush().await
    }

    /// [`SledStore::write_with_meta`] without its flush.
    async fn write_unflushed(
        &self,
        writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        meta: Vec<(String, Vec<u8>)>,
    ) -> Result<(), StorageError> {
        use sled::transaction::ConflictableTransactionError;
        use sled::Transactional;
        let (data, meta_tree) = (self.data.clone(), self.meta.clone());
        tokio::task::spawn_blocking(move || {
            (&data, &meta_tree).transaction(|(d, m)| {
                for (k, v) in &writes {
                    match v {
                        Some(v) => d.insert(k.as_slice(), v.as_slice())?,
                        None => d.remove(k.as_slice())?,
                    };
                }
                for (k, v) in &meta {
                    m.insert(k.as_bytes(), v.as_slice())?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
        })
        .await
        .map_err(|e| StorageError::Io(format!("sled transaction did not complete: {e}")))?
        .map_err(|e| StorageError::Io(format!("sled transaction failed: {e:?}")))?;
        Ok(())
    }

    /// Makes every write to any tree of this database durable.
    pub(crate) async fn flush(&self) -> Result<(), StorageError> {
        self.data
            .flush_async()
            .await
            .map(|_| ())
            .map_err(|e| io_error("flush", "", e))
    }
}

/// Runs a sled call off the async worker threads. sled calls can block on
/// disk I/O; `spawn_blocking` (not `block_in_place`) also works on a
/// current-thread runtime, as in `#[tokio::test]`.
pub(crate) async fn blocking<T, F>(f: F) -> sled::Result<T>
where
    F: FnOnce() -> sled::Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(join) => Err(sled::Error::ReportableBug(format!(
            "sled task did not complete: {join}"
        ))),
    }
}

fn io_error(op: &str, key: &str, e: sled::Error) -> StorageError {
    if key.is_empty() {
        StorageError::Io(format!("sled {op} failed: {e}"))
    } else {
        StorageError::Io(format!("sled {op} {key:?} failed: {e}"))
    }
}

/// An open failure, worded for the operator: which directory, and what to do.
/// How long `open` waits for a lock released by a handle just dropped.
const LOCK_RETRIES: u32 = 40;
const LOCK_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

fn open_error(path: &Path, e: sled::Error) -> StorageError {
    let dir = path.display();
    let msg = match &e {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => format!(
            "cannot open the storage directory {dir}: another process holds its lock \
             (probably another keyhold server using the same data directory); stop it, \
             or give this server its own directory"
        ),
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => format!(
            "cannot open the storage directory {dir}: permission denied; make it readable \
             and writable by the user keyhold runs as ({io})"
        ),
        sled::Error::Corruption { .. } => format!(
            "cannot open the storage directory {dir}: sled reports corrupt data ({e}); \
             restore this node from a snapshot or rejoin it to the cluster with an empty directory"
        ),
        _ => format!("cannot open the storage directory {dir}: {e}"),
    };
    StorageError::Io(msg)
}

#[async_trait]
impl Backend for SledStore {
    /// On the calling task, not through [`blocking`]: a point read is a lookup in sled's page
    /// cache (a `pread` of the OS page cache at worst), a few microseconds, while handing it to
    /// the blocking pool and back cost two thread wake-ups, and a request reads several keys
    /// (its token, the secret's metadata, ...). Writes, flushes and scans stay off the workers.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.data
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| io_error("get", key, e))
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StorageError> {
        let data = self.data.clone();
        let k = key.to_string();
        blocking(move || data.insert(k, value).map(|_| ()))
            .await
            .map_err(|e| io_error("put", key, e))?;
        self.flush().await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let data = self.data.clone();
        let k = key.to_string();
        blocking(move || data.remove(k).map(|_| ()))
            .await
            .map_err(|e| io_error("delete", key, e))?;
        self.flush().await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let data = self.data.clone();
        let p = prefix.to_string();
        let keys = blocking(move || {
            data.scan_prefix(p.as_bytes())
                .keys()
                .map(|k| k.map(|k| String::from_utf8_lossy(&k).into_owned()))
                .collect::<sled::Result<Vec<String>>>()
        })
        .await
        .map_err(|e| io_error("list", prefix, e))?;
        Ok(list_children(prefix, keys.iter().map(String::as_str)))
    }

    async fn transaction(&self, ops: Vec<TxnOp>) -> Result<(), StorageError> {
        let data = self.data.clone();
        blocking(move || {
            let mut batch = sled::Batch::default();
            for op in ops {
                match op {
                    TxnOp::Put { key, value } => batch.insert(key.as_bytes(), value),
                    TxnOp::Delete { key } => batch.remove(key.as_bytes()),
                }
            }
            data.apply_batch(batch)
        })
        .await
        .map_err(|e| io_error("transaction", "", e))?;
        self.flush().await
    }
}

/// Transaction ops as the (key, value or delete) writes both meta-transaction paths take.
fn txn_writes(ops: Vec<TxnOp>) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    ops.into_iter()
        .map(|op| match op {
            TxnOp::Put { key, value } => (key.into_bytes(), Some(value)),
            TxnOp::Delete { key } => (key.into_bytes(), None),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_size_maps_entries_to_bytes() {
        for (cache_size, disable_cache, bytes) in [
            (None, false, DEFAULT_CACHE_BYTES),
            (Some(0), false, DEFAULT_CACHE_BYTES),
            // Vault's default entry count is Keyhold's default size.
            (Some(131_072), false, DEFAULT_CACHE_BYTES),
            (Some(1_000_000), false, 256_000_000),
            (Some(10), false, MIN_CACHE_BYTES),
            (Some(1_000_000), true, MIN_CACHE_BYTES),
            (None, true, MIN_CACHE_BYTES),
        ] {
            assert_eq!(
                cache_bytes(cache_size, disable_cache),
                bytes,
                "{cache_size:?} {disable_cache}"
            );
        }
    }

    #[tokio::test]
    async fn reopen_keeps_data_and_meta() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.put("a/b", b"one".to_vec()).await.unwrap();
            store
                .transaction(vec![
                    TxnOp::Put {
                        key: "c".into(),
                        value: vec![0, 255],
                    },
                    TxnOp::Delete { key: "a/b".into() },
                ])
                .await
                .unwrap();
            store.put("d", b"two".to_vec()).await.unwrap();
            store.set_meta("last_applied", b"7".to_vec()).await.unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.get("a/b").await.unwrap(), None);
        assert_eq!(store.get("c").await.unwrap().unwrap(), vec![0, 255]);
        assert_eq!(store.get("d").await.unwrap().unwrap(), b"two");
        assert_eq!(store.get_meta("last_applied").unwrap().unwrap(), b"7");
        assert_eq!(store.get_meta("absent").unwrap(), None);
    }

    #[test]
    fn a_write_is_refused_under_the_space_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.ensure_space(0).unwrap();
        let err = store.ensure_space(u64::MAX).unwrap_err();
        assert!(
            matches!(err, StorageError::NoSpace { reserve, .. } if reserve == u64::MAX),
            "{err}"
        );
    }

    #[tokio::test]
    async fn export_and_replace_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        for k in ["z", "a/1", "m"] {
            store.put(k, k.as_bytes().to_vec()).await.unwrap();
        }
        store.set_meta("vote", b"v".to_vec()).await.unwrap();
        let exported = store.export().unwrap();
        let keys: Vec<&str> = exported.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a/1", "m", "z"]);

        store
            .replace_all(vec![
                ("m".into(), b"new m".to_vec()),
                ("q".into(), b"q".to_vec()),
            ])
            .await
            .unwrap();
        assert_eq!(
            store.export().unwrap(),
            vec![
                ("m".to_string(), b"new m".to_vec()),
                ("q".to_string(), b"q".to_vec())
            ]
        );
        assert_eq!(
            store.get_meta("vote").unwrap().unwrap(),
            b"v",
            "meta untouched"
        );
        drop(store);
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.list("").await.unwrap(), ["m", "q"]);
    }

    const CRASH_DIR_ENV: &str = "KEYHOLD_TEST_SLED_CRASH_DIR";

    /// The child half of `acknowledged_writes_survive_kill_9`: writes keys and
    /// prints each one once its put has returned. A no-op in a normal run.
    #[tokio::test]
    async fn crash_child_writer() {
        let Ok(dir) = std::env::var(CRASH_DIR_ENV) else {
            return;
        };
        let store = SledStore::open(Path::new(&dir)).unwrap();
        for i in 0.. {
            store.put(&format!("k/{i:06}"), vec![7; 100]).await.unwrap();
            println!("acked {i}");
        }
    }

    #[test]
    fn acknowledged_writes_survive_kill_9() {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};

        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "physical::sled_store::tests::crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut last_acked = None;
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            if let Some(n) = line.unwrap().strip_prefix("acked ") {
                let n: u32 = n.parse().unwrap();
                last_acked = Some(n);
                if n >= 200 {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL on Unix: no destructor, no sled flush on drop
        child.wait().unwrap();

        let last = last_acked.expect("the child acknowledged writes");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        rt.block_on(async {
            for i in 0..=last {
                assert!(
                    store.get(&format!("k/{i:06}")).await.unwrap().is_some(),
                    "acknowledged write k/{i:06} was lost (last acked {last})"
                );
            }
        });
    }

    #[test]
    fn second_open_names_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledStore::open(dir.path()).unwrap();
        let err = SledStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("another process holds its lock"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
    }
}
