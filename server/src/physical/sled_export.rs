//! Point-in-time exports of a sled tree that run beside the writes to it.
//!
//! sled has no snapshots: an iterator over a tree being written sees some writes and not
//! others. A Raft snapshot build therefore exported the data between two applies, and every
//! apply waited for the whole scan (a few hundred milliseconds at 100,000 secrets, a stall in
//! every request's latency each time a snapshot was built). An [`Export`] instead keeps the
//! values a write is about to replace: while it runs, each write first records the value (or
//! the absence) of every key it touches that the export has not reached yet, unless one is
//! recorded already; the export emits a recorded value in place of what the tree holds, and
//! recorded keys the tree no longer holds in key order too. What it writes is the tree as it
//! was when the export began, while writes go on. It holds only what is written during it.
//!
//! One export at a time per store; [`Exports::begin`] answers `None` while one runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use sled::IVec;

/// The store's running export, shared by the export and the writes.
#[derive(Default, Clone)]
pub(crate) struct Exports(Arc<Mutex<Option<Running>>>);

struct Running {
    /// The tree being exported: writes to another (after a wholesale replacement) are not its.
    tree: Arc<sled::Tree>,
    /// The last key the export has emitted; the ones up to it are done.
    through: Option<IVec>,
    /// The values when the export began (`None`: absent) of the keys written since that it had
    /// not reached, all after `through`.
    before: BTreeMap<IVec, Option<IVec>>,
}

impl Exports {
    fn lock(&self) -> MutexGuard<'_, Option<Running>> {
        // The state is consistent after any panic of a holder (each step completes or not).
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts an export of `tree` as it is now, or `None` if one is running.
    pub(crate) fn begin(&self, tree: Arc<sled::Tree>) -> Option<Export> {
        let mut running = self.lock();
        if running.is_some() {
            return None;
        }
        *running = Some(Running {
            tree: tree.clone(),
            through: None,
            before: BTreeMap::new(),
        });
        Some(Export {
            exports: self.clone(),
            tree,
        })
    }

    /// Called by every write to `tree` before it writes `keys`: keeps their values for the
    /// running export. Holds the export's lock while it reads them, so the export never passes
    /// a key between this read and the write.
    pub(crate) fn before_write<'k>(
        &self,
        tree: &Arc<sled::Tree>,
        keys: impl IntoIterator<Item = &'k [u8]>,
    ) -> sled::Result<()> {
        let mut running = self.lock();
        let Some(running) = running.as_mut() else {
            return Ok(());
        };
        if !Arc::ptr_eq(&running.tree, tree) {
            return Ok(());
        }
        for key in keys {
            let reached = running.through.as_ref().is_some_and(|t| key <= &t[..]);
            if !reached && !running.before.contains_key(key) {
                running.before.insert(IVec::from(key), tree.get(key)?);
            }
        }
        Ok(())
    }
}

/// A running export (see the module's doc); dropping it ends it.
pub(crate) struct Export {
    exports: Exports,
    tree: Arc<sled::Tree>,
}

impl Export {
    /// Calls `emit` with every key and value of the tree as it was when the export began, in
    /// key order, while writes go on.
    pub(crate) fn for_each<E>(
        self,
        mut emit: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
        scan_error: impl Fn(sled::Error) -> E,
    ) -> Result<(), E> {
        let mut items = self.tree.iter();
        let mut out: Vec<(IVec, IVec)> = Vec::new();
        loop {
            // Read outside the lock: a write in between has kept the value this read may miss.
            let next = items.next().transpose().map_err(&scan_error)?;
            {
                let mut running = self.exports.lock();
                let running = running
                    .as_mut()
                    .expect("an export's state lives as long as the export");
                // Kept keys before the next one the tree holds: deleted since (or written and
                // deleted); the ones that were there come first.
                while let Some(kept) = running.before.first_entry() {
                    if next.as_ref().is_some_and(|(key, _)| kept.key() >= key) {
                        break;
                    }
                    if let (key, Some(value)) = kept.remove_entry() {
                        out.push((key, value));
                    }
                }
                if let Some((key, value)) = &next {
                    let value = match running.before.remove(key) {
                        Some(kept) => kept,
                        None => Some(value.clone()),
                    };
                    out.extend(value.map(|v| (key.clone(), v)));
                    running.through = Some(key.clone());
                }
            }
            for (key, value) in out.drain(..) {
                emit(&key, &value)?;
            }
            if next.is_none() {
                return Ok(());
            }
        }
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        *self.exports.lock() = None;
    }
}
