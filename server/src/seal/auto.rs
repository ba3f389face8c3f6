//! Auto-unseal: a key service outside the cluster (AWS KMS, or the transit
//! engine of another Keyhold or Vault) wraps the barrier's root key, so a
//! node unseals itself at start without operators.
//!
//! What is stored is a [`WrappedKey`]: the service's ciphertext and the key
//! it was made with. It is the same shape for every service, so seal-status,
//! join and migration handle them alike; only [`AutoSeal::wrap`] and
//! [`AutoSeal::unwrap`] talk to the service.

use std::fmt;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// A value wrapped by an auto-unseal key service, as stored (JSON) at
/// `core/hsm/barrier-unseal-keys` and `core/recovery-key`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// The seal type that made it: `awskms` or `transit`.
    pub seal: String,
    /// The service's key: the KMS key ARN, or `<mount>/<key name>` for transit.
    pub key_id: String,
    /// The service's ciphertext, base64 (transit's `vault:vN:` text for transit).
    pub ciphertext: String,
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedKey")
            .field("seal", &self.seal)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl WrappedKey {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a wrapped key encodes")
    }

    pub fn from_bytes(path: &str, bytes: &[u8]) -> Result<Self, AutoSealError> {
        serde_json::from_slice(bytes).map_err(|e| {
            AutoSealError::Malformed(format!(
                "{path} does not hold a key wrapped by an auto-unseal seal ({e}); \
                 the stored seal type and this entry disagree"
            ))
        })
    }

    pub(crate) fn binary_ciphertext(&self) -> Result<Vec<u8>, AutoSealError> {
        B64.decode(&self.ciphertext).map_err(|_| {
            AutoSealError::Malformed("the wrapped key's ciphertext is not base64".into())
        })
    }
}

/// Why the key service did not wrap or unwrap. No variant carries key bytes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AutoSealError {
    /// The service could not be reached or did not answer in time: retry later.
    #[error("{0}")]
    Unreachable(String),
    /// The service answered and refused (wrong key, no permission, key disabled).
    #[error("{0}")]
    Refused(String),
    /// What is stored is not something this seal made.
    #[error("{0}")]
    Malformed(String),
}

/// A key service that wraps and unwraps small secrets (the root key, the
/// recovery key).
#[async_trait]
pub trait AutoSeal: Send + Sync + fmt::Debug {
    /// `awskms` or `transit`, as in the config stanza and `sys/seal-status`.
    fn kind(&self) -> &'static str;

    /// Where the key lives, for messages: never a credential.
    fn describe(&self) -> String;

    async fn wrap(&self, plaintext: &[u8]) -> Result<WrappedKey, AutoSealError>;

    async fn unwrap(&self, wrapped: &WrappedKey) -> Result<Zeroizing<Vec<u8>>, AutoSealError>;
}
