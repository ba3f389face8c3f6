//! Striped per-key locks, so a read-modify-write of one stored object (a KV
//! CAS write, a transit key rotation) cannot interleave with another on the
//! same key. Only the active node serves writes, so a lock in this process is
//! enough.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tokio::sync::RwLock;

pub(crate) struct KeyLocks {
    // Shared, so a task that must finish whatever its caller does can own a guard.
    stripes: Vec<Arc<RwLock<()>>>,
}

impl KeyLocks {
    /// Unrelated keys on one stripe wait for each other's whole write (a Raft round trip): with
    /// 64 writers on distinct keys, 1024 stripes make that rare (each write meets another on its
    /// stripe about 6% of the time, against nearly two in three with 64).
    const STRIPES: usize = 1024;

    pub(crate) fn new() -> Self {
        KeyLocks {
            stripes: (0..Self::STRIPES)
                .map(|_| Arc::new(RwLock::new(())))
                .collect(),
        }
    }

    /// The lock guarding `key`; unrelated keys may share a stripe.
    pub(crate) fn for_key(&self, key: &str) -> &Arc<RwLock<()>> {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        &self.stripes[(hasher.finish() % Self::STRIPES as u64) as usize]
    }
}
