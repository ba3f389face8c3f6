//! The durable store on local disk (sled), under the Raft state machine: data tree plus a metadata tree.
//!
//! Durability: sled fsyncs on its own only every 500 ms (spacejam/sled#1140), so
//! every write here awaits a flush before it returns; an acknowledged
//! write survives `kill -9`. (sled's flush uses `sync_file_range`, #1452: that
//! is as durable as sled gets.) Opened in `Mode::LowSpace` against sled's space
//! growth (databend PR #14709).
//!
//! Memory: sled keeps the pages it has read or written in a cache of its own, 1 GiB unless
//! told otherwise, and a node touches every page as it applies writes: at 100,000 secrets
//! that cache alone held most of a node's resident memory. The server bounds it
//! ([`DEFAULT_CACHE_BYTES`], or the config's `cache_size`, see [`cache_bytes`]).
//!
//! Layout: the data tree holds the [`Backend`] entries (barrier ciphertext, paths
//! as UTF-8 keys): `data`, or after a wholesale replacement (a snapshot install or
//! restore) the generation the meta record `data_tree` names (`data.1`, `data.2`,
//! ...; see [`SledStore::replace_all_with_meta`]); tree `meta` holds the Raft state
//! machine's own records (last applied log id, membership), kept apart so a
//! snapshot's [`SledStore::export`] and [`SledStore::replace_all`] never touch them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;

use super::sled_export::{Export, Exports};
use super::{list_children, Backend, StorageError, TxnOp};

const DATA_TREE: &str = "data";
const META_TREE: &str = "meta";
/// The meta record naming the current data tree: absent for [`DATA_TREE`], else
/// `data.<generation>` (a wholesale replacement writes the next generation beside it).
const DATA_TREE_KEY: &str = "data_tree";
/// How many entries, or bytes of them, a replacement writes to its new tree in one sled batch:
/// sled holds what a batch replaces until the batch ends.
const REPLACE_BATCH_ENTRIES: usize = 1024;
const REPLACE_BATCH_BYTES: usize = 4 << 20;
/// How long a replaced tree may stay in use (a long scan that began before the switch) before
/// it is left for the next start to drop.
const RETIRE_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

pub struct SledStore {
    path: PathBuf,
    /// The current data tree. A wholesale replacement fills a new tree and switches to it
    /// ([`SledStore::replace_all_with_meta`]); every user takes the tree through
    /// [`SledStore::data`] for one operation, and the old tree is dropped once none holds it.
    data: ArcSwap<sled::Tree>,
    meta: sled::Tree,
    // Kept so the database outlives its trees' users and flushes on drop.
    db: sled::Db,
    /// Bumped each time the whole data set is replaced (a restored or installed
    /// snapshot), so the core can tell that its keys may no longer fit.
    replacements: std::sync::atomic::AtomicU64,
    /// Bumped after each Raft apply that changed what a standby serving reads keeps in memory
    /// (mount and audit tables, policies, salts): see `raft::state_machine::shapes_services`.
    service_changes: std::sync::atomic::AtomicU64,
    /// The running point-in-time export, which every write to the data tree keeps the values
    /// it replaces for (`sled_export`).
    exports: Exports,
    /// Held for writing while a Raft apply writes its ops one by one
    /// ([`SledStore::apply_with_meta`]) and for reading by every read of the data, so a read
    /// sees an entry's writes all or none, as it would a sled transaction's.
    applying: Arc<std::sync::RwLock<()>>,
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
        let meta = db.open_tree(META_TREE).map_err(|e| open_error(path, e))?;
        let current = current_data_tree(&meta).map_err(|e| open_error(path, e))?;
        // A replacement a crash interrupted leaves its new tree (before the switch) or the old
        // one (after it): neither is the current tree, and nothing else uses them.
        for name in db.tree_names() {
            if is_data_tree(&name) && *name != *current.as_bytes() {
                tracing::info!(
                    tree = %String::from_utf8_lossy(&name),
                    "dropping a data tree left by an interrupted snapshot install or restore"
                );
                db.drop_tree(&name).map_err(|e| open_error(path, e))?;
            }
        }
        let data = db.open_tree(&current).map_err(|e| open_error(path, e))?;
        Ok(SledStore {
            path: path.to_path_buf(),
            data: ArcSwap::from_pointee(data),
            meta,
            db,
            replacements: std::sync::atomic::AtomicU64::new(0),
            service_changes: std::sync::atomic::AtomicU64::new(0),
            exports: Exports::default(),
            applying: Arc::default(),
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

    /// The current data tree, for one operation: held no longer, so that a replaced tree can
    /// be dropped once its last user is done.
    fn data(&self) -> Arc<sled::Tree> {
        self.data.load_full()
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
        let data = self.data();
        data.scan_prefix(prefix.as_bytes())
            .map(|item| {
                let (k, v) = item.map_err(|e| io_error("export", "", e))?;
                Ok((data_key(&self.path, &k)?.to_string(), v.to_vec()))
            })
            .collect()
    }

    /// The values of the data entries whose keys start with `prefix`, in key order, read as one
    /// stream (a restore's staged chunks), one value in memory at a time.
    pub(crate) fn prefix_reader(&self, prefix: &str) -> PrefixReader {
        let tree = self.data();
        PrefixReader {
            entries: tree.scan_prefix(prefix.as_bytes()),
            _tree: tree,
            current: sled::IVec::default(),
            at: 0,
        }
    }

    /// Starts a point-in-time export of the data (see `sled_export`): what
    /// [`StateExport::write_state_to`] writes is the data as it is now, however long it takes
    /// and whatever is written meanwhile. `None` while another export runs.
    pub fn begin_export(&self) -> Option<StateExport> {
        Some(StateExport {
            export: self.exports.begin(self.data())?,
            path: self.path.clone(),
        })
    }

    /// Writes every data entry, sorted by key, to `out` as a snapshot's `state.bin` stream:
    /// what `encode_state(&self.export()?)` returns, one entry at a time (at 100,000 secrets
    /// the stream is over 100 MiB, and a build holding it in memory set the node's peak RSS).
    /// The data as it is when called, if no writes run meanwhile; [`SledStore::begin_export`]
    /// for an export beside writes.
    pub fn export_state_to(&self, out: &mut dyn std::io::Write) -> Result<(), StorageError> {
        let mut entry = Vec::new();
        let data = self.data();
        for item in data.iter() {
            let (k, v) = item.map_err(|e| io_error("export", "", e))?;
            write_state_entry(&self.path, &mut entry, &k, &v, out)?;
        }
        Ok(())
    }

    /// Atomically replaces the whole data tree with `entries` (offline restore), flushed before
    /// returning. The metadata tree is untouched but for the record of which tree holds the data.
    pub async fn replace_all(&self, entries: Vec<(String, Vec<u8>)>) -> Result<(), StorageError> {
        let entries = entries.into_iter().map(Ok::<_, std::convert::Infallible>);
        match self.replace_all_with_meta(entries, Vec::new()).await? {
            Ok(()) => Ok(()),
            Err(never) => match never {},
        }
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
    ///
    /// Not a sled transaction either: the ops are written one after another, then `meta`
    /// (the applied log id) last. sled starts every transaction by writing out its current
    /// buffer and a batch marker, each its own write and sync on sled's thread pool, which the
    /// next log append's flush waits for. A crash part way through leaves some of the ops
    /// with the meta of the entry before; Raft applies the entry again, and each op being an
    /// absolute put or delete, applying a prefix of them and then all of them is applying all.
    pub(crate) async fn apply_with_meta(
        &self,
        ops: Vec<TxnOp>,
        meta: Vec<(String, Vec<u8>)>,
    ) -> Result<(), StorageError> {
        let writes = txn_writes(ops);
        if writes.len() + meta.len() > INLINE_WRITES {
            return self.write_unflushed(writes, meta).await;
        }
        let data = self.data();
        self.exports
            .before_write(&data, writes.iter().map(|(k, _)| k.as_slice()))
            .map_err(|e| io_error("read before an apply", "", e))?;
        let _applying = self.applying.write().unwrap_or_else(|p| p.into_inner());
        for (k, v) in writes {
            match v {
                Some(v) => data.insert(k, v),
                None => data.remove(k),
            }
            .map_err(|e| io_error("apply", "", e))?;
        }
        for (k, v) in meta {
            self.meta
                .insert(k.as_bytes(), v)
                .map_err(|e| io_error("apply", &k, e))?;
        }
        Ok(())
    }

    /// Replaces the whole data set with `entries` and writes `meta` records, atomically: a
    /// snapshot install or restore, whose data and the log id it corresponds to must never
    /// disagree after a crash. `entries` are written, a batch at a time, into a new tree beside
    /// the current one (memory holds one batch, not the data set: one sled transaction over
    /// every old and new key held 1.8-2.5 GB at 100,000 secrets); then one transaction on the
    /// meta tree makes it the current tree along with `meta`, and a flush makes that durable.
    /// Readers see the old data until the switch and the new after it. A crash before the
    /// switch leaves the old data (the new tree is dropped at the next open), after it the new.
    ///
    /// `entries` may fail (a stream that does not decode): then nothing has changed, the new
    /// tree is dropped, and the inner result carries the error. The caller holds the only
    /// writer (the Raft state machine, or an offline restore).
    pub(crate) async fn replace_all_with_meta<I, E>(
        &self,
        entries: I,
        meta: Vec<(String, Vec<u8>)>,
    ) -> Result<Result<(), E>, StorageError>
    where
        I: IntoIterator<Item = Result<(String, Vec<u8>), E>> + Send + 'static,
        I::IntoIter: Send,
        E: Send + 'static,
    {
        let (db, meta_tree) = (self.db.clone(), self.meta.clone());
        let next = blocking(move || {
            let next_name = next_data_tree(&current_data_tree(&meta_tree)?);
            // Left by a replacement whose entries failed and whose drop failed too.
            db.drop_tree(&next_name)?;
            let next = db.open_tree(&next_name)?;
            let mut batch = sled::Batch::default();
            let (mut count, mut bytes) = (0, 0);
            for entry in entries {
                let (key, value) = match entry {
                    Ok(entry) => entry,
                    Err(e) => {
                        drop(next);
                        db.drop_tree(&next_name)?;
                        return Ok(Err(e));
                    }
                };
                count += 1;
                bytes += key.len() + value.len();
                batch.insert(key.as_bytes(), value);
                if count == REPLACE_BATCH_ENTRIES || bytes >= REPLACE_BATCH_BYTES {
                    next.apply_batch(std::mem::take(&mut batch))?;
                    (count, bytes) = (0, 0);
                }
            }
            next.apply_batch(batch)?;
            // sled recovers a prefix of its one log: once the switch below is on disk, so is
            // every entry written before it.
            meta_tree
                .transaction(|m| {
                    m.insert(DATA_TREE_KEY, next_name.as_bytes())?;
                    for (k, v) in &meta {
                        m.insert(k.as_bytes(), v.as_slice())?;
                    }
                    Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
                })
                .map_err(|e| match e {
                    sled::transaction::TransactionError::Storage(e) => e,
                    sled::transaction::TransactionError::Abort(()) => {
                        sled::Error::ReportableBug("the meta transaction aborted".into())
                    }
                })?;
            Ok(Ok(next))
        })
        .await
        .map_err(|e| io_error("replace all entries", "", e))?;
        let next = match next {
            Ok(next) => next,
            Err(e) => return Ok(Err(e)),
        };
        self.flush().await?;
        let old = self.data.swap(Arc::new(next));
        self.replacements
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.retire(old);
        Ok(Ok(()))
    }

    /// Drops a replaced data tree once no operation holds it (a read or scan that began before
    /// the switch), on a thread of its own; one still held after [`RETIRE_WAIT`] is left for the
    /// next open to drop.
    fn retire(&self, old: Arc<sled::Tree>) {
        let db = self.db.clone();
        let spawned = std::thread::Builder::new()
            .name("keyhold-retire-tree".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                while Arc::strong_count(&old) > 1 {
                    if started.elapsed() > RETIRE_WAIT {
                        tracing::warn!("a replaced data tree is still in use; it is dropped at the next start");
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                let name = old.name();
                drop(old);
                if let Err(e) = db.drop_tree(&name) {
                    tracing::warn!(error = %e, "could not drop a replaced data tree; it is dropped at the next start");
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start dropping a replaced data tree; it is dropped at the next start");
        }
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
        let (data, meta_tree) = (self.data(), self.meta.clone());
        let exports = self.exports.clone();
        let inline = writes.len() + meta.len() <= INLINE_WRITES;
        let run = move || {
            exports
                .before_write(&data, writes.iter().map(|(k, _)| k.as_slice()))
                .map_err(sled::transaction::TransactionError::Storage)?;
            (&*data, &meta_tree).transaction(|(d, m)| {
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
        };
        // A Raft entry's few writes go in on the calling task: the hop to the blocking pool
        // and back cost more than the transaction (sled writes to memory; its reads are
        // already made on the calling task, see `get`).
        let done = if inline {
            run()
        } else {
            tokio::task::spawn_blocking(run)
                .await
                .map_err(|e| StorageError::Io(format!("sled transaction did not complete: {e}")))?
        };
        done.map_err(|e| StorageError::Io(format!("sled transaction failed: {e:?}")))?;
        Ok(())
    }

    /// Makes every write to any tree of this database durable.
    pub(crate) async fn flush(&self) -> Result<(), StorageError> {
        flush(&self.db).await.map_err(|e| io_error("flush", "", e))
    }
}

/// A data key as text (every key the server writes is).
fn data_key<'k>(path: &Path, key: &'k [u8]) -> Result<&'k str, StorageError> {
    std::str::from_utf8(key).map_err(|_| {
        StorageError::Io(format!(
            "sled store at {}: a data key is not UTF-8",
            path.display()
        ))
    })
}

/// Appends one entry to a `state.bin` stream in `out`, through the reused buffer `entry`.
fn write_state_entry(
    path: &Path,
    entry: &mut Vec<u8>,
    key: &[u8],
    value: &[u8],
    out: &mut dyn std::io::Write,
) -> Result<(), StorageError> {
    entry.clear();
    keyhold_client::snapshot::state::encode_entry(entry, data_key(path, key)?, value);
    out.write_all(entry)
        .map_err(|e| StorageError::Io(format!("write the snapshot's state while exporting: {e}")))
}

/// A point-in-time export of the data, begun by [`SledStore::begin_export`].
pub struct StateExport {
    export: Export,
    path: PathBuf,
}

impl StateExport {
    /// Writes the data as it was when the export began to `out` as a `state.bin` stream, in key
    /// order (what [`SledStore::export_state_to`] wrote then), while writes go on.
    pub fn write_state_to(self, out: &mut dyn std::io::Write) -> Result<(), StorageError> {
        let mut entry = Vec::new();
        let path = self.path;
        self.export.for_each(
            |key, value| write_state_entry(&path, &mut entry, key, value, out),
            |e| io_error("export", "", e),
        )
    }
}

/// See [`SledStore::prefix_reader`].
pub(crate) struct PrefixReader {
    entries: sled::Iter,
    /// Held so that the tree is not dropped under the scan (see [`SledStore::data`]).
    _tree: Arc<sled::Tree>,
    current: sled::IVec,
    at: usize,
}

impl std::io::Read for PrefixReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            match self.entries.next() {
                Some(Ok((_, value))) => (self.current, self.at) = (value, 0),
                Some(Err(e)) => {
                    return Err(std::io::Error::other(format!("sled scan failed: {e}")))
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
/// The name of the current data tree, from the meta tree.
fn current_data_tree(meta: &sled::Tree) -> sled::Result<String> {
    Ok(match meta.get(DATA_TREE_KEY)? {
        Some(name) => String::from_utf8_lossy(&name).into_owned(),
        None => DATA_TREE.to_string(),
    })
}

/// The tree a replacement of `current` fills: the next generation.
fn next_data_tree(current: &str) -> String {
    let generation = current
        .strip_prefix("data.")
        .and_then(|g| g.parse::<u64>().ok())
        .unwrap_or(0);
    format!("{DATA_TREE}.{}", generation + 1)
}

/// Whether a tree of the database is a data tree (the current one or a generation of it).
fn is_data_tree(name: &[u8]) -> bool {
    name == DATA_TREE.as_bytes()
        || name
            .strip_prefix(b"data.")
            .is_some_and(|g| !g.is_empty() && g.iter().all(u8::is_ascii_digit))
}

/// At most this many writes of one transaction are made on the calling task
/// ([`SledStore::write_with_meta`]); more go to the blocking pool.
const INLINE_WRITES: usize = 64;

/// Flushes every tree of `tree`'s database (a `Db` is a tree) to disk, from tokio's blocking
/// pool. Not sled's `flush_async`: that hands the flush to sled's own thread pool, whose every
/// job wakes all seven of its idle threads (`notify_all`), on top of the job sled's flush
/// itself queues there to write the buffer.
pub(crate) async fn flush(tree: &sled::Tree) -> sled::Result<()> {
    let tree = tree.clone();
    blocking(move || tree.flush().map(|_| ())).await
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
        let _whole = self.applying.read().unwrap_or_else(|p| p.into_inner());
        self.data
            .load()
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| io_error("get", key, e))
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StorageError> {
        let (data, exports) = (self.data(), self.exports.clone());
        let k = key.to_string();
        blocking(move || {
            exports.before_write(&data, [k.as_bytes()])?;
            data.insert(k, value).map(|_| ())
        })
        .await
        .map_err(|e| io_error("put", key, e))?;
        self.flush().await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let (data, exports) = (self.data(), self.exports.clone());
        let k = key.to_string();
        blocking(move || {
            exports.before_write(&data, [k.as_bytes()])?;
            data.remove(k).map(|_| ())
        })
        .await
        .map_err(|e| io_error("delete", key, e))?;
        self.flush().await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let (data, applying) = (self.data(), self.applying.clone());
        let p = prefix.to_string();
        let keys = blocking(move || {
            // The lock is taken for each step, not the whole scan (as sled's own lock for its
            // batches): a long listing must not hold up the applies.
            let mut scan = data.scan_prefix(p.as_bytes()).keys();
            let mut keys = Vec::new();
            loop {
                let next = {
                    let _whole = applying.read().unwrap_or_else(|p| p.into_inner());
                    scan.next()
                };
                match next {
                    Some(key) => keys.push(String::from_utf8_lossy(&key?).into_owned()),
                    None => return Ok(keys),
                }
            }
        })
        .await
        .map_err(|e| io_error("list", prefix, e))?;
        Ok(list_children(prefix, keys.iter().map(String::as_str)))
    }

    async fn transaction(&self, ops: Vec<TxnOp>) -> Result<(), StorageError> {
        let (data, exports) = (self.data(), self.exports.clone());
        blocking(move || {
            exports.before_write(&data, ops.iter().map(|op| op.key().as_bytes()))?;
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
    use std::collections::BTreeMap;

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

    fn data_trees(store: &SledStore) -> Vec<String> {
        let mut names: Vec<String> = store
            .db
            .tree_names()
            .into_iter()
            .filter(|n| is_data_tree(n))
            .map(|n| String::from_utf8_lossy(&n).into_owned())
            .collect();
        names.sort();
        names
    }

    /// Waits (bounded) for a replaced tree to be dropped by its retiring thread.
    fn wait_for_one_data_tree(store: &SledStore) -> Vec<String> {
        for _ in 0..500 {
            if data_trees(store).len() == 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        data_trees(store)
    }

    #[tokio::test]
    async fn a_replacement_switches_trees_and_drops_the_old_once_unused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.put("old", b"1".to_vec()).await.unwrap();
        // A scan that began before the switch reads the old data to its end.
        let mut scan = store.prefix_reader("");
        let entries = (0..3000).map(|i| Ok::<_, ()>((format!("k/{i:05}"), vec![i as u8; 100])));
        store
            .replace_all_with_meta(entries, vec![("applied".into(), b"9".to_vec())])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(store.get("old").await.unwrap(), None);
        assert_eq!(store.list("k/").await.unwrap().len(), 3000);
        assert_eq!(store.get_meta("applied").unwrap().unwrap(), b"9");
        assert_eq!(store.replacements(), 1);
        let mut old = Vec::new();
        std::io::Read::read_to_end(&mut scan, &mut old).unwrap();
        assert_eq!(old, b"1");
        assert_eq!(data_trees(&store), ["data", "data.1"], "held by the scan");
        drop(scan);
        assert_eq!(wait_for_one_data_tree(&store), ["data.1"]);

        // Again, from a generation past the first; then the data survives a reopen.
        store
            .replace_all_with_meta([Ok::<_, ()>(("k/new".into(), b"n".to_vec()))], vec![])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(wait_for_one_data_tree(&store), ["data.2"]);
        drop(store);
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            store.export().unwrap(),
            [("k/new".to_string(), b"n".to_vec())]
        );
        assert_eq!(store.get_meta("applied").unwrap().unwrap(), b"9");
    }

    #[tokio::test]
    async fn a_replacement_whose_entries_fail_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.put("kept", b"1".to_vec()).await.unwrap();
        // Past one batch, so some of the new tree was written before the failure.
        let entries = (0..REPLACE_BATCH_ENTRIES * 2 + 1).map(|i| {
            if i == REPLACE_BATCH_ENTRIES * 2 {
                Err("cut off")
            } else {
                Ok((format!("k/{i:05}"), vec![1; 10]))
            }
        });
        let result = store
            .replace_all_with_meta(entries, vec![("applied".into(), b"9".to_vec())])
            .await
            .unwrap();
        assert_eq!(result, Err("cut off"));
        assert_eq!(
            store.export().unwrap(),
            [("kept".to_string(), b"1".to_vec())]
        );
        assert_eq!(store.get_meta("applied").unwrap(), None);
        assert_eq!(store.replacements(), 0);
        assert_eq!(data_trees(&store), ["data"]);
    }

    #[tokio::test]
    async fn the_tree_an_interrupted_replacement_leaves_is_dropped_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            // Before the switch: a new tree half written.
            let store = SledStore::open(dir.path()).unwrap();
            store.put("old", b"1".to_vec()).await.unwrap();
            store
                .db
                .open_tree("data.1")
                .unwrap()
                .insert("half", b"x")
                .unwrap();
            store.flush().await.unwrap();
        }
        {
            let store = SledStore::open(dir.path()).unwrap();
            assert_eq!(data_trees(&store), ["data"]);
            assert_eq!(
                store.export().unwrap(),
                [("old".to_string(), b"1".to_vec())]
            );
            // After the switch, before the old tree was dropped.
            store
                .db
                .open_tree("data.1")
                .unwrap()
                .insert("new", b"2")
                .unwrap();
            store
                .set_meta(DATA_TREE_KEY, b"data.1".to_vec())
                .await
                .unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(data_trees(&store), ["data.1"]);
        assert_eq!(
            store.export().unwrap(),
            [("new".to_string(), b"2".to_vec())]
        );
    }

    /// A `Write` that, every few writes of the export into it, writes to the store all over
    /// the key space: overwrites, deletes and new keys, before and after the export's place.
    struct Meddling {
        out: Vec<u8>,
        calls: u64,
        store: Arc<SledStore>,
        rng: rand::rngs::StdRng,
        handle: tokio::runtime::Handle,
    }

    impl std::io::Write for Meddling {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            use rand::Rng as _;
            self.calls += 1;
            if self.calls.is_multiple_of(7) {
                let ops = (0..10)
                    .map(|_| {
                        let key = format!("k/{:04}", self.rng.gen_range(0..700));
                        if self.rng.gen_bool(0.4) {
                            TxnOp::Delete { key }
                        } else {
                            TxnOp::Put {
                                key,
                                value: self.calls.to_be_bytes().to_vec(),
                            }
                        }
                    })
                    .collect();
                let store = self.store.clone();
                self.handle
                    .block_on(store.apply_with_meta(ops, vec![]))
                    .unwrap();
            }
            self.out.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_export_is_the_data_when_it_began_whatever_is_written_meanwhile() {
        use rand::SeedableRng as _;
        for seed in 0..4 {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(SledStore::open(dir.path()).unwrap());
            for i in (0..600).step_by(2) {
                store.put(&format!("k/{i:04}"), vec![1; 50]).await.unwrap();
            }
            let mut expected = Vec::new();
            store.export_state_to(&mut expected).unwrap();

            let export = store.begin_export().unwrap();
            assert!(store.begin_export().is_none(), "one export at a time");
            let mut out = Meddling {
                out: Vec::new(),
                calls: 0,
                store: store.clone(),
                rng: rand::rngs::StdRng::seed_from_u64(seed),
                handle: tokio::runtime::Handle::current(),
            };
            let out = tokio::task::spawn_blocking(move || {
                export.write_state_to(&mut out).unwrap();
                out
            })
            .await
            .unwrap();
            assert!(
                out.calls > 100,
                "the export was written to {} times",
                out.calls
            );
            let mut now = Vec::new();
            store.export_state_to(&mut now).unwrap();
            assert_ne!(now, expected, "the writes changed the data");
            assert_eq!(
                keyhold_client::snapshot::state::decode_state(&out.out).unwrap(),
                keyhold_client::snapshot::state::decode_state(&expected).unwrap(),
                "seed {seed}"
            );
            assert!(store.begin_export().is_some(), "the export ended");
        }
    }

    #[tokio::test]
    async fn an_export_outlives_a_replacement_of_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.put("old", b"1".to_vec()).await.unwrap();
        let export = store.begin_export().unwrap();
        store
            .replace_all_with_meta([Ok::<_, ()>(("new".into(), b"2".to_vec()))], vec![])
            .await
            .unwrap()
            .unwrap();
        store.put("newer", b"3".to_vec()).await.unwrap();
        let mut out = Vec::new();
        export.write_state_to(&mut out).unwrap();
        assert_eq!(
            keyhold_client::snapshot::state::decode_state(&out).unwrap(),
            [("old".to_string(), b"1".to_vec())]
        );
        assert_eq!(wait_for_one_data_tree(&store), ["data.1"]);
    }

    /// Runs this test binary again, only the child test `name` of this module (with `env` set
    /// to `dir`), reads the numbers it prints after `prefix` until one is at least `at_least`,
    /// lets it go on for `linger`, then kills it (SIGKILL: no destructor, no sled flush on
    /// drop). Returns the last number read. The pipe stays open until the kill: a child
    /// writing to a closed pipe would die of that write's panic, cleanly, at its next line.
    fn kill_child_after(
        (name, env, dir): (&str, &str, &Path),
        prefix: &str,
        at_least: u64,
        linger: std::time::Duration,
    ) -> u64 {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &format!("physical::sled_store::tests::{name}"),
                "--nocapture",
                "--test-threads=1",
            ])
            .env(env, dir)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut last = 0;
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for line in &mut lines {
            if let Some(n) = line.unwrap().strip_prefix(prefix) {
                last = n.trim().parse().unwrap();
                if last >= at_least {
                    break;
                }
            }
        }
        std::thread::sleep(linger);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(last >= at_least, "the child {name} stopped at {last}");
        last
    }

    /// The meta record `key`, a big-endian number.
    fn meta_u64(store: &SledStore, key: &str) -> u64 {
        let bytes = store.get_meta(key).unwrap().expect("the meta record");
        u64::from_be_bytes(bytes.try_into().unwrap())
    }

    const REPLACE_CRASH_DIR_ENV: &str = "KEYHOLD_TEST_SLED_REPLACE_CRASH_DIR";

    /// The data set number `n` writes: a key count and a value that differ from the next's.
    fn replace_state(n: u64) -> Vec<(String, Vec<u8>)> {
        (0..2000 + n % 2 * 500)
            .map(|i| (format!("{}/{i:05}", n % 2), n.to_be_bytes().to_vec()))
            .collect()
    }

    /// The child half of `a_replacement_is_all_or_nothing_under_kill_9`: replaces the data
    /// set again and again, each time with its number in the meta, and prints each number once
    /// its replacement has returned. A no-op in a normal run.
    #[tokio::test]
    async fn replace_crash_child() {
        let Ok(dir) = std::env::var(REPLACE_CRASH_DIR_ENV) else {
            return;
        };
        let store = SledStore::open(Path::new(&dir)).unwrap();
        for n in 1u64.. {
            let meta = vec![("state".to_string(), n.to_be_bytes().to_vec())];
            let entries = replace_state(n).into_iter().map(Ok::<_, ()>);
            store
                .replace_all_with_meta(entries, meta)
                .await
                .unwrap()
                .unwrap();
            println!("replaced {n}");
        }
    }

    #[test]
    fn a_replacement_is_all_or_nothing_under_kill_9() {
        // Killed after a different number of replacements each time, so at different points
        // of the next one.
        for stop_after in [1u64, 2, 5, 8] {
            let dir = tempfile::tempdir().unwrap();
            let child = ("replace_crash_child", REPLACE_CRASH_DIR_ENV, dir.path());
            let linger = std::time::Duration::from_millis(stop_after * 3);
            let acked = kill_child_after(child, "replaced ", stop_after, linger);

            let store = SledStore::open(dir.path()).unwrap();
            let state = meta_u64(&store, "state");
            assert!(
                state >= acked,
                "replacement {acked} was acknowledged, {state} is on disk"
            );
            assert_eq!(
                store.export().unwrap(),
                replace_state(state),
                "data set {state}"
            );
            assert_eq!(data_trees(&store).len(), 1);
        }
    }

    /// A Raft apply writes its ops one by one, yet a read sees an entry whole: each entry
    /// puts `y`, twenty other keys, then `x`, all to its number; a reader reading `y` and then
    /// `x` never finds `x` behind `y` (it would, in the middle of an entry, without the lock).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_sees_an_apply_whole_or_not_at_all() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let put = |key: &str, n: u64| TxnOp::Put {
            key: key.to_string(),
            value: n.to_be_bytes().to_vec(),
        };
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (store, done) = (store.clone(), done.clone());
            tokio::spawn(async move {
                let (mut reads, mut torn) = (0u64, 0u64);
                while !done.load(Ordering::SeqCst) {
                    let y = store.get("y").await.unwrap();
                    let x = store.get("x").await.unwrap();
                    reads += 1;
                    if x < y {
                        torn += 1;
                    }
                    tokio::task::yield_now().await;
                }
                (reads, torn)
            })
        };
        for n in 1u64..=3000 {
            let mut ops = vec![put("y", n)];
            ops.extend((0..20).map(|i| put(&format!("pad/{i:02}"), n)));
            ops.push(put("x", n));
            store.apply_with_meta(ops, vec![]).await.unwrap();
            tokio::task::yield_now().await;
        }
        done.store(true, Ordering::SeqCst);
        let (reads, torn) = reader.await.unwrap();
        assert!(reads > 100, "only {reads} reads ran beside the applies");
        assert_eq!(torn, 0, "{torn} of {reads} reads found x behind y");
    }

    const APPLY_CRASH_DIR_ENV: &str = "KEYHOLD_TEST_SLED_APPLY_CRASH_DIR";

    /// Entry `n` of `an_apply_cut_short_by_kill_9_is_completed_by_applying_it_again`: 40
    /// of 100 keys (which ones depends on `n`) put to `n`, or deleted. With its meta record,
    /// few enough writes for the inline path (not the blocking pool's transaction).
    fn apply_ops(n: u64) -> Vec<TxnOp> {
        (0..40)
            .map(|i| {
                let key = format!("k/{:03}", (n * 37 + i * 13) % 100);
                if (n + i).is_multiple_of(7) {
                    TxnOp::Delete { key }
                } else {
                    TxnOp::Put {
                        key,
                        value: n.to_be_bytes().to_vec(),
                    }
                }
            })
            .collect()
    }

    fn apply_ops_to(data: &mut BTreeMap<String, Vec<u8>>, ops: &[TxnOp]) {
        for op in ops {
            match op {
                TxnOp::Put { key, value } => data.insert(key.clone(), value.clone()),
                TxnOp::Delete { key } => data.remove(key),
            };
        }
    }

    /// The data after entries `1..=n`.
    fn applied_through(n: u64) -> BTreeMap<String, Vec<u8>> {
        let mut data = BTreeMap::new();
        for i in 1..=n {
            apply_ops_to(&mut data, &apply_ops(i));
        }
        data
    }

    /// The child half of `an_apply_cut_short_by_kill_9_is_completed_by_applying_it_again`:
    /// applies entries as the state machine does (unflushed, the entry's number as the meta),
    /// flushes after every third as the next log append would, and prints the number once
    /// that flush has returned. A no-op in a normal run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn apply_crash_child() {
        let Ok(dir) = std::env::var(APPLY_CRASH_DIR_ENV) else {
            return;
        };
        let store = Arc::new(SledStore::open(Path::new(&dir)).unwrap());
        // Flushes all the time besides, so that what reaches the disk ends anywhere, in the
        // middle of an apply too, not only where the flushes below put it.
        let flusher = store.clone();
        tokio::spawn(async move {
            loop {
                flusher.flush().await.unwrap();
            }
        });
        for n in 1u64.. {
            let meta = vec![("applied".to_string(), n.to_be_bytes().to_vec())];
            store.apply_with_meta(apply_ops(n), meta).await.unwrap();
            if n.is_multiple_of(3) {
                store.flush().await.unwrap();
                println!("flushed {n}");
            }
        }
    }

    /// An apply is not one sled transaction: a crash may leave part of an entry's writes with
    /// the meta of the entry before. What is on disk is then always the entries up to the
    /// recorded one plus a prefix of the next one's writes, and applying that entry again (as
    /// Raft does after a restart) gives exactly the data of both applied whole.
    #[test]
    fn an_apply_cut_short_by_kill_9_is_completed_by_applying_it_again() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for stop_after in [3u64, 12, 30, 57, 99, 150, 201, 300] {
            let dir = tempfile::tempdir().unwrap();
            let child = ("apply_crash_child", APPLY_CRASH_DIR_ENV, dir.path());
            let linger = std::time::Duration::from_millis(stop_after % 7);
            let flushed = kill_child_after(child, "flushed ", stop_after, linger);

            let store = SledStore::open(dir.path()).unwrap();
            let applied = meta_u64(&store, "applied");
            assert!(
                applied >= flushed,
                "{flushed} was flushed, {applied} is on disk"
            );
            let on_disk: BTreeMap<String, Vec<u8>> = store.export().unwrap().into_iter().collect();
            let next = apply_ops(applied + 1);
            let prefix = (0..=next.len()).find(|&k| {
                let mut expected = applied_through(applied);
                apply_ops_to(&mut expected, &next[..k]);
                expected == on_disk
            });
            assert!(
                prefix.is_some(),
                "the data is neither entries 1..={applied} nor those and a prefix of the next"
            );
            let meta = vec![("applied".to_string(), (applied + 1).to_be_bytes().to_vec())];
            rt.block_on(store.apply_with_meta(next, meta)).unwrap();
            let after: BTreeMap<String, Vec<u8>> = store.export().unwrap().into_iter().collect();
            assert_eq!(after, applied_through(applied + 1));
        }
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
        let dir = tempfile::tempdir().unwrap();
        let child = ("crash_child_writer", CRASH_DIR_ENV, dir.path());
        let last = kill_child_after(child, "acked ", 200, std::time::Duration::ZERO);
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
