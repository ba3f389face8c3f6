//! The security barrier: Vault's AES-256-GCM encryption layer between the core and physical storage.
//!
//! Every value written through [`Barrier`] (itself a [`Backend`]) is encrypted
//! with the keyring's active term, the storage path as associated data (see
//! [`layout`] for the bytes). Paths stay in the clear, as in Vault.
//!
//! Storage the barrier owns (all in the physical store):
//! - `core/keyring`: the [`keyring`] JSON, encrypted under the root key (term 0).
//! - `core/root-key`: the root key, encrypted under the newest keyring term, so
//!   a node that already holds the keyring can follow a rekey
//!   ([`Barrier::reload_keyring`]).
//!
//! Architecture invariant: nothing outside this module sees plaintext storage
//! values from the physical store, or a data-encryption key. The root key
//! crosses the boundary only as a [`RootKey`], to and from the seal.

mod keyring;
pub(crate) mod layout;

use std::fmt;
use std::sync::{Arc, RwLock};

use aes_gcm::{Aes256Gcm, KeyInit};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rand::rngs::OsRng;
use rand::RngCore;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::physical::{Backend, StorageError, TxnOp};
use keyring::Keyring;

pub const KEYRING_PATH: &str = "core/keyring";
pub const ROOT_KEY_PATH: &str = "core/root-key";

/// Paths whose values are written only by the barrier or the seal, straight to
/// the physical store (some in the clear). A write through the barrier's data
/// path would make the store unopenable, so it is refused.
const RESERVED_EXACT: &[&str] = &[
    KEYRING_PATH,
    ROOT_KEY_PATH,
    "core/master",
    "core/seal-config",
    "core/recovery-config",
];
const RESERVED_PREFIXES: &[&str] = &["core/hsm/", "core/upgrade/"];

/// Why a barrier operation failed. No variant carries key material.
#[derive(Debug, thiserror::Error)]
pub enum BarrierError {
    #[error("Vault is sealed")]
    Sealed,
    #[error("Vault is not initialized")]
    NotInitialized,
    #[error("Vault is already initialized")]
    AlreadyInitialized,
    #[error("Unseal failed, invalid key")]
    InvalidRootKey,
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("barrier keyring is corrupt: {0}")]
    Corrupt(String),
}

impl From<BarrierError> for crate::error::Error {
    fn from(e: BarrierError) -> Self {
        use crate::error::Error;
        match e {
            BarrierError::Sealed => Error::Sealed,
            BarrierError::NotInitialized => Error::NotInitialized,
            BarrierError::AlreadyInitialized => Error::invalid("Vault is already initialized"),
            BarrierError::InvalidRootKey => Error::invalid("Unseal failed, invalid key"),
            // Keeps its own status mapping (503 for sealed, 500 otherwise).
            BarrierError::Storage(e) => Error::Storage(e),
            BarrierError::Corrupt(msg) => {
                Error::internal(format!("barrier keyring is corrupt: {msg}"))
            }
        }
    }
}

/// The 32-byte root key that encrypts the keyring. Zeroized on drop; its Debug
/// output is redacted.
#[derive(Clone)]
pub struct RootKey(Zeroizing<[u8; 32]>);

impl RootKey {
    pub const LEN: usize = 32;

    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut key[..]);
        RootKey(key)
    }

    /// Exactly 32 bytes; anything else is [`BarrierError::InvalidRootKey`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BarrierError> {
        if bytes.len() != Self::LEN {
            return Err(BarrierError::InvalidRootKey);
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(bytes);
        Ok(RootKey(key))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Equality without an early exit on the first differing byte.
    pub(crate) fn ct_eq(&self, other: &RootKey) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(aes_gcm::Key::<Aes256Gcm>::from_slice(&self.0[..]))
    }
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RootKey(<redacted>)")
    }
}

/// The active term as `sys/key-status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyStatus {
    pub term: u32,
    /// RFC 3339 in JSON.
    pub install_time: DateTime<Utc>,
    pub encryptions: u64,
}

/// Vault's AES-256-GCM barrier over a physical store.
pub struct Barrier {
    physical: Arc<dyn Backend>,
    /// `None` while sealed. Readers clone the `Arc` and never hold the lock
    /// across an await; [`Barrier::seal`] drops the barrier's reference, and
    /// the keys are zeroized when the last in-flight operation finishes.
    keyring: RwLock<Option<Arc<Keyring>>>,
    /// Serialises the operations that read, then replace, the keyring.
    admin: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("sealed", &self.is_sealed())
            .finish_non_exhaustive()
    }
}

impl Barrier {
    pub fn new(physical: Arc<dyn Backend>) -> Self {
        Barrier {
            physical,
            keyring: RwLock::new(None),
            admin: tokio::sync::Mutex::new(()),
        }
    }

    /// The physical store under this barrier (the seal writes its own entries there).
    pub fn physical(&self) -> &Arc<dyn Backend> {
        &self.physical
    }

    pub async fn initialized(&self) -> Result<bool, StorageError> {
        Ok(self.physical.get(KEYRING_PATH).await?.is_some())
    }

    /// Writes keyring term 1 under `root_key`. The barrier stays sealed.
    pub async fn initialize(&self, root_key: &RootKey) -> Result<(), BarrierError> {
        self.initialize_with(root_key, Vec::new()).await
    }

    /// [`Barrier::initialize`], committing `extra` physical operations (the
    /// seal's configuration and wrapped root key) in the same transaction, so
    /// an interrupted init leaves either everything or nothing.
    pub(crate) async fn initialize_with(
        &self,
        root_key: &RootKey,
        extra: Vec<TxnOp>,
    ) -> Result<(), BarrierError> {
        let _admin = self.admin.lock().await;
        if self.initialized().await? {
            return Err(BarrierError::AlreadyInitialized);
        }
        let ring = Keyring::new(root_key);
        let mut ops = keyring_ops(&ring)?;
        ops.extend(extra);
        self.physical.transaction(ops).await?;
        Ok(())
    }

    /// Opens the keyring with `root_key`. Already unsealed is a no-op, as in Vault.
    pub async fn unseal(&self, root_key: &RootKey) -> Result<(), BarrierError> {
        let _admin = self.admin.lock().await;
        if !self.is_sealed() {
            return Ok(());
        }
        let stored = self
            .physical
            .get(KEYRING_PATH)
            .await?
            .ok_or(BarrierError::NotInitialized)?;
        let ring =
            open_keyring(&root_key.cipher(), &stored)?.ok_or(BarrierError::InvalidRootKey)?;
        if !ring.root().ct_eq(root_key) {
            return Err(BarrierError::Corrupt(
                "the keyring's root key differs from the key that decrypted it".into(),
            ));
        }
        *self.keyring.write().expect("keyring lock") = Some(Arc::new(ring));
        Ok(())
    }

    /// Drops the keyring; its keys are zeroized once no operation holds it.
    pub fn seal(&self) {
        self.keyring.write().expect("keyring lock").take();
    }

    pub fn is_sealed(&self) -> bool {
        self.keyring.read().expect("keyring lock").is_none()
    }

    /// Adds term N+1 and makes it active; older terms keep decrypting.
    pub async fn rotate(&self) -> Result<KeyStatus, BarrierError> {
        let _admin = self.admin.lock().await;
        let current = self.current()?;
        let next = current
            .rotated()
            .ok_or_else(|| BarrierError::Corrupt("no key term is left after 2^32-1".into()))?;
        self.physical.transaction(keyring_ops(&next)?).await?;
        let status = status_of(&next);
        self.install_if_current(&current, next)?;
        Ok(status)
    }

    pub fn key_status(&self) -> Result<KeyStatus, BarrierError> {
        let ring = self.current()?;
        Ok(status_of(&ring))
    }

    /// Re-encrypts the keyring under `new_root_key`, in one transaction.
    pub async fn rekey(&self, new_root_key: &RootKey) -> Result<(), BarrierError> {
        self.rekey_with(new_root_key, Vec::new()).await
    }

    /// [`Barrier::rekey`], committing `extra` physical operations in the same
    /// transaction (the seal's new wrapped root key and configuration).
    pub(crate) async fn rekey_with(
        &self,
        new_root_key: &RootKey,
        extra: Vec<TxnOp>,
    ) -> Result<(), BarrierError> {
        let _admin = self.admin.lock().await;
        let current = self.current()?;
        let next = current.with_root(new_root_key);
        let mut ops = keyring_ops(&next)?;
        ops.extend(extra);
        self.physical.transaction(ops).await?;
        self.install_if_current(&current, next)
    }

    /// Whether `key` is the root key of the open keyring.
    pub(crate) fn root_key_matches(&self, key: &RootKey) -> Result<bool, BarrierError> {
        Ok(self.current()?.root().ct_eq(key))
    }

    /// Re-reads `core/keyring` while unsealed (a standby after the active node
    /// rotated or rekeyed). After a rekey the stored keyring no longer opens
    /// with the root key held here; the new root key is then read from
    /// `core/root-key`, which is encrypted under a term this node already has.
    pub async fn reload_keyring(&self) -> Result<(), BarrierError> {
        let _admin = self.admin.lock().await;
        let current = self.current()?;
        let stored = self
            .physical
            .get(KEYRING_PATH)
            .await?
            .ok_or(BarrierError::NotInitialized)?;
        let ring = match open_keyring(&current.root_cipher, &stored)? {
            Some(ring) => ring,
            None => {
                let root = self.read_root_key(&current).await?;
                open_keyring(&root.cipher(), &stored)?.ok_or_else(|| {
                    BarrierError::Corrupt(
                        "core/keyring does not open with the root key at core/root-key".into(),
                    )
                })?
            }
        };
        self.install_if_current(&current, ring.merged_counts(&current))
    }

    async fn read_root_key(&self, ring: &Keyring) -> Result<RootKey, BarrierError> {
        let stored = self
            .physical
            .get(ROOT_KEY_PATH)
            .await?
            .ok_or_else(|| BarrierError::Corrupt("core/root-key is missing".into()))?;
        let term = layout::term_of(&stored)
            .and_then(|t| ring.term(t))
            .ok_or_else(|| {
                BarrierError::Corrupt("core/root-key is under a key term this node lacks".into())
            })?;
        let plain = Zeroizing::new(
            layout::decrypt(&term.cipher, ROOT_KEY_PATH, &stored).ok_or_else(|| {
                BarrierError::Corrupt("core/root-key failed its integrity check".into())
            })?,
        );
        RootKey::from_bytes(&plain)
            .map_err(|_| BarrierError::Corrupt("core/root-key is not 32 bytes".into()))
    }

    fn current(&self) -> Result<Arc<Keyring>, BarrierError> {
        self.keyring
            .read()
            .expect("keyring lock")
            .clone()
            .ok_or(BarrierError::Sealed)
    }

    /// Encrypts `value` as if stored at `path`, without storing it: for
    /// material handed to another process that must prove it holds this
    /// cluster's keys (the Raft join challenge, the cluster TLS keyring).
    pub fn seal_value(&self, path: &str, value: &[u8]) -> Result<Vec<u8>, StorageError> {
        let ring = self.current_for_storage()?;
        let term = ring.active();
        let out = layout::encrypt(&term.cipher, term.term, path, value).map_err(|_| {
            StorageError::Io(format!(
                "the barrier could not encrypt the value for {path:?}"
            ))
        })?;
        term.count_encryption();
        Ok(out)
    }

    /// Opens what [`Barrier::seal_value`] produced for the same `path`.
    pub fn open_value(
        &self,
        path: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, StorageError> {
        let ring = self.current_for_storage()?;
        let integrity = || StorageError::Integrity {
            key: path.to_string(),
        };
        let term = layout::term_of(sealed)
            .and_then(|t| ring.term(t))
            .ok_or_else(integrity)?;
        layout::decrypt(&term.cipher, path, sealed)
            .map(Zeroizing::new)
            .ok_or_else(integrity)
    }

    fn current_for_storage(&self) -> Result<Arc<Keyring>, StorageError> {
        self.current().map_err(|_| StorageError::Sealed)
    }

    /// Installs `next` unless the barrier was sealed (or changed) meanwhile:
    /// a seal must never be undone by a rotation that was in flight.
    fn install_if_current(&self, seen: &Arc<Keyring>, next: Keyring) -> Result<(), BarrierError> {
        let mut slot = self.keyring.write().expect("keyring lock");
        match slot.as_ref() {
            Some(now) if Arc::ptr_eq(now, seen) => {
                *slot = Some(Arc::new(next));
                Ok(())
            }
            _ => Err(BarrierError::Sealed),
        }
    }

    fn encrypt(&self, ring: &Keyring, key: &str, value: &[u8]) -> Result<Vec<u8>, StorageError> {
        check_writable(key)?;
        let term = ring.active();
        let out = layout::encrypt(&term.cipher, term.term, key, value).map_err(|_| {
            StorageError::Io(format!(
                "the barrier could not encrypt the value for {key:?}"
            ))
        })?;
        term.count_encryption();
        Ok(out)
    }
}

fn check_writable(key: &str) -> Result<(), StorageError> {
    if RESERVED_EXACT.contains(&key) || RESERVED_PREFIXES.iter().any(|p| key.starts_with(p)) {
        return Err(StorageError::InvalidKey {
            key: key.to_string(),
            reason: "reserved for the barrier and seal",
        });
    }
    Ok(())
}

fn status_of(ring: &Keyring) -> KeyStatus {
    let active = ring.active();
    KeyStatus {
        term: active.term,
        install_time: active.install_time,
        encryptions: active.encryptions(),
    }
}

/// The physical writes that persist `ring`: the keyring under its root key,
/// and the root key under the active term.
fn keyring_ops(ring: &Keyring) -> Result<Vec<TxnOp>, BarrierError> {
    let refused = |_| BarrierError::Corrupt("AES-GCM refused to encrypt the keyring".into());
    let json = ring.encode();
    let keyring = layout::encrypt(
        &ring.root_cipher,
        layout::OUTSIDE_KEYRING_TERM,
        KEYRING_PATH,
        &json,
    )
    .map_err(refused)?;
    let active = ring.active();
    let root = layout::encrypt(
        &active.cipher,
        active.term,
        ROOT_KEY_PATH,
        ring.root().as_bytes(),
    )
    .map_err(refused)?;
    active.count_encryption();
    Ok(vec![
        TxnOp::Put {
            key: KEYRING_PATH.into(),
            value: keyring,
        },
        TxnOp::Put {
            key: ROOT_KEY_PATH.into(),
            value: root,
        },
    ])
}

/// `Ok(None)` when `root_cipher` is not the key `stored` was encrypted with.
fn open_keyring(root_cipher: &Aes256Gcm, stored: &[u8]) -> Result<Option<Keyring>, BarrierError> {
    let Some(plain) = layout::decrypt(root_cipher, KEYRING_PATH, stored) else {
        return Ok(None);
    };
    let plain = Zeroizing::new(plain);
    Keyring::decode(&plain)
        .map(Some)
        .map_err(BarrierError::Corrupt)
}

#[async_trait]
impl Backend for Barrier {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let ring = self.current_for_storage()?;
        let Some(stored) = self.physical.get(key).await? else {
            return Ok(None);
        };
        let integrity = || StorageError::Integrity {
            key: key.to_string(),
        };
        let term = layout::term_of(&stored)
            .and_then(|t| ring.term(t))
            .ok_or_else(integrity)?;
        layout::decrypt(&term.cipher, key, &stored)
            .map(Some)
            .ok_or_else(integrity)
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StorageError> {
        let value = Zeroizing::new(value);
        let ring = self.current_for_storage()?;
        let sealed = self.encrypt(&ring, key, &value)?;
        drop(ring);
        self.physical.put(key, sealed).await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.current_for_storage()?;
        check_writable(key)?;
        self.physical.delete(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.current_for_storage()?;
        self.physical.list(prefix).await
    }

    async fn transaction(&self, ops: Vec<TxnOp>) -> Result<(), StorageError> {
        let ring = self.current_for_storage()?;
        let ops = ops
            .into_iter()
            .map(|op| match op {
                TxnOp::Put { key, value } => {
                    let value = Zeroizing::new(value);
                    let value = self.encrypt(&ring, &key, &value)?;
                    Ok(TxnOp::Put { key, value })
                }
                TxnOp::Delete { key } => {
                    check_writable(&key)?;
                    Ok(TxnOp::Delete { key })
                }
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        drop(ring);
        self.physical.transaction(ops).await
    }
}

#[cfg(test)]
mod tests;
