//! The keyring: the barrier's data-encryption keys by term, plus the root key that protects them.
//!
//! Persisted at `core/keyring` as Vault's `EncodedKeyring` JSON
//! (`{"MasterKey": b64, "Keys": [{"Term", "Version", "Value", "InstallTime", "Encryptions"}]}`),
//! encrypted under the root key with term 0 (see [`super::layout`]). Every
//! buffer that holds key bytes, encoded or not, is zeroized when dropped.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aes_gcm::{Aes256Gcm, KeyInit};
use chrono::{DateTime, Utc};
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::RootKey;
use crate::key_bytes::KeyBytes;

/// Vault's keyring key version (`Key.Version`); the only one there is.
const KEY_VERSION: u32 = 1;

/// One data-encryption key of the keyring.
pub(crate) struct Term {
    pub(crate) term: u32,
    key: Zeroizing<[u8; 32]>,
    pub(crate) cipher: Aes256Gcm,
    pub(crate) install_time: DateTime<Utc>,
    /// Shared between successive keyrings (rotate, rekey) so no count is lost.
    encryptions: AtomicU64,
}

impl Term {
    fn new(term: u32, key: Zeroizing<[u8; 32]>, install_time: DateTime<Utc>, count: u64) -> Self {
        let cipher = Aes256Gcm::new(aes_gcm::Key::<Aes256Gcm>::from_slice(&key[..]));
        Term {
            term,
            key,
            cipher,
            install_time,
            encryptions: AtomicU64::new(count),
        }
    }

    fn generate(term: u32) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut key[..]);
        Term::new(term, key, Utc::now(), 0)
    }

    pub(crate) fn count_encryption(&self) {
        self.encryptions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn encryptions(&self) -> u64 {
        self.encryptions.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Term")
            .field("term", &self.term)
            .field("install_time", &self.install_time)
            .field("encryptions", &self.encryptions())
            .finish_non_exhaustive()
    }
}

/// The decoded keyring. Immutable once built: rotate and rekey build a new one.
pub(crate) struct Keyring {
    root: RootKey,
    pub(crate) root_cipher: Aes256Gcm,
    terms: BTreeMap<u32, Arc<Term>>,
    active: Arc<Term>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("terms", &self.terms.keys().collect::<Vec<_>>())
            .field("active", &self.active.term)
            .finish_non_exhaustive()
    }
}

impl Keyring {
    fn from_parts(root: RootKey, terms: BTreeMap<u32, Arc<Term>>) -> Option<Self> {
        let active = terms.values().next_back()?.clone();
        let root_cipher = root.cipher();
        Some(Keyring {
            root,
            root_cipher,
            terms,
            active,
        })
    }

    /// A fresh keyring holding term 1.
    pub(crate) fn new(root: &RootKey) -> Self {
        let mut terms = BTreeMap::new();
        terms.insert(1, Arc::new(Term::generate(1)));
        Keyring::from_parts(root.clone(), terms).expect("one term")
    }

    /// This keyring plus a new active term N+1.
    pub(crate) fn rotated(&self) -> Option<Self> {
        let next = self.active.term.checked_add(1)?;
        let mut terms = self.terms.clone();
        terms.insert(next, Arc::new(Term::generate(next)));
        Keyring::from_parts(self.root.clone(), terms)
    }

    /// The same terms under a new root key.
    pub(crate) fn with_root(&self, root: &RootKey) -> Self {
        Keyring::from_parts(root.clone(), self.terms.clone()).expect("non-empty keyring")
    }

    /// Terms decoded from storage, keeping this node's in-memory counts where
    /// they are ahead of the persisted ones (counts are persisted lazily).
    pub(crate) fn merged_counts(self, current: &Keyring) -> Self {
        for (n, term) in &self.terms {
            if let Some(mine) = current.terms.get(n) {
                term.encryptions
                    .fetch_max(mine.encryptions(), Ordering::Relaxed);
            }
        }
        self
    }

    pub(crate) fn root(&self) -> &RootKey {
        &self.root
    }

    pub(crate) fn active(&self) -> &Arc<Term> {
        &self.active
    }

    pub(crate) fn term(&self, term: u32) -> Option<&Arc<Term>> {
        self.terms.get(&term)
    }

    /// Vault's `EncodedKeyring` JSON, in a zeroizing buffer.
    pub(crate) fn encode(&self) -> Zeroizing<Vec<u8>> {
        let encoded = EncodedKeyring {
            master_key: KeyBytes(Zeroizing::new(self.root.as_bytes().to_vec())),
            keys: self
                .terms
                .values()
                .map(|t| EncodedKey {
                    term: t.term,
                    version: KEY_VERSION,
                    value: KeyBytes(Zeroizing::new(t.key.to_vec())),
                    install_time: t.install_time,
                    encryptions: t.encryptions(),
                })
                .collect(),
        };
        // Sized up front so the buffer holding base64 key bytes never reallocates
        // (a reallocation would leave an unzeroized copy behind).
        let mut out = Zeroizing::new(Vec::with_capacity(256 + 256 * self.terms.len()));
        serde_json::to_writer(&mut *out, &encoded).expect("keyring JSON encodes");
        out
    }

    /// Decodes `core/keyring`'s plaintext. Errors say where the JSON broke, never
    /// what it held (a serde message can quote the offending value).
    pub(crate) fn decode(json: &[u8]) -> Result<Self, String> {
        let encoded: EncodedKeyring = serde_json::from_slice(json).map_err(|e| {
            format!(
                "keyring JSON is malformed ({:?} error at line {}, column {})",
                e.classify(),
                e.line(),
                e.column()
            )
        })?;
        let root = RootKey::from_bytes(&encoded.master_key.0)
            .map_err(|_| "keyring root key is not 32 bytes".to_string())?;
        let mut terms = BTreeMap::new();
        for k in encoded.keys {
            if k.term == 0 {
                return Err("keyring holds a key with term 0".into());
            }
            let key: [u8; 32] = k.value.0[..]
                .try_into()
                .map_err(|_| format!("keyring term {} is not a 32-byte key", k.term))?;
            let term = Term::new(k.term, Zeroizing::new(key), k.install_time, k.encryptions);
            if terms.insert(k.term, Arc::new(term)).is_some() {
                return Err(format!("keyring holds term {} twice", k.term));
            }
        }
        Keyring::from_parts(root, terms).ok_or_else(|| "keyring holds no keys".to_string())
    }
}

#[derive(Serialize, Deserialize)]
struct EncodedKeyring {
    #[serde(rename = "MasterKey")]
    master_key: KeyBytes,
    #[serde(rename = "Keys")]
    keys: Vec<EncodedKey>,
}

#[derive(Serialize, Deserialize)]
struct EncodedKey {
    #[serde(rename = "Term")]
    term: u32,
    #[serde(rename = "Version")]
    version: u32,
    #[serde(rename = "Value")]
    value: KeyBytes,
    #[serde(rename = "InstallTime")]
    install_time: DateTime<Utc>,
    #[serde(rename = "Encryptions", default)]
    encryptions: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let root = RootKey::generate();
        let ring = Keyring::new(&root).rotated().unwrap();
        ring.active().count_encryption();
        let json = ring.encode();
        let text = std::str::from_utf8(&json).unwrap();
        assert!(text.contains("\"MasterKey\""));
        assert!(text.contains("\"Term\":2"));

        let back = Keyring::decode(&json).unwrap();
        assert!(back.root().ct_eq(&root));
        assert_eq!(back.active().term, 2);
        assert_eq!(back.active().encryptions(), 1);
        assert_eq!(back.term(1).unwrap().key[..], ring.term(1).unwrap().key[..]);
    }

    #[test]
    fn decode_errors_hide_values() {
        let bad = br#"{"MasterKey":"c2VjcmV0c2VjcmV0","Keys":[{"Term":"c2VjcmV0"}]}"#;
        let err = Keyring::decode(bad).unwrap_err();
        assert!(!err.contains("c2Vj"), "{err}");
        let short = br#"{"MasterKey":"c2VjcmV0","Keys":[]}"#;
        assert!(Keyring::decode(short).is_err());
    }

    #[test]
    fn debug_shows_no_key() {
        let ring = Keyring::new(&RootKey::generate());
        let dbg = format!("{ring:?} {:?}", ring.active());
        assert!(dbg.contains("terms"));
        assert!(!dbg.contains("key:"));
    }
}
