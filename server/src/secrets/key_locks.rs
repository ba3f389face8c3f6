//! Striped per-key locks, so a read-modify-write of one stored object (a KV
//! CAS write, a transit key rotation) cannot interleave with another on the
//! same key. Only the active node serves writes, so a lock in this process is
//! enough.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use tokio::sync::RwLock;

pub(crate) struct KeyLocks {
    stripes: Vec<RwLock<()>>,
}

impl KeyLocks {
    const STRIPES: usize = 64;

    pub(crate) fn new() -> Self {
        KeyLocks {
            stripes: (0..Self::STRIPES).map(|_| RwLock::new(())).collect(),
        }
    }

    /// The lock guarding `key`; unrelated keys may share a stripe.
    pub(crate) fn for_key(&self, key: &str) -> &RwLock<()> {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        &self.stripes[(hasher.finish() % Self::STRIPES as u64) as usize]
    }
}
