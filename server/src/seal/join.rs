//! Raft join challenges sealed by the seal itself, as Vault does: the active node seals a nonce
//! with the cluster's seal (the Shamir unseal key, or the KMS / transit key of an auto seal), and
//! a joining node proves it holds that seal by opening it (with the unseal key its operators
//! rebuild from the shares, or with its own auto seal, which must reach the same key).
//!
//! Nothing else leaves the active node before that proof: not the keyring, not the wrapped root
//! key. A Shamir-sealed challenge is `layout` ciphertext (term 0, AES-256-GCM under the unseal key,
//! [`CHALLENGE_AAD`] as associated data, as the root key is wrapped); an auto-sealed one is the
//! [`WrappedKey`] JSON the key service returned.
//!
//! The active node needs the unseal key to seal a Shamir challenge, so an unsealed node keeps the
//! unseal key it was opened with in memory (Vault keeps its Shamir KEK the same way), forgets it
//! when sealed, and checks before each use that it still opens the stored root key (a rekey on
//! another node leaves a standby's copy stale).

use aes_gcm::{Aes256Gcm, KeyInit};
use zeroize::Zeroizing;

use super::{AutoSeal, Seal, SealConfig, SealError, WrappedKey, UNSEAL_KEY_LEN};
use crate::barrier::layout;

/// Associated data of a Shamir-sealed challenge: a challenge cannot pass for a wrapped root key
/// or the other way round. Never a storage path.
const CHALLENGE_AAD: &str = "core/raft/bootstrap-challenge";

impl Seal {
    /// Keeps `key` (a combined unseal key that opened the root key) for sealing join challenges.
    pub(crate) fn remember_unseal_key(&self, key: &[u8]) {
        if let Ok(key) = <[u8; UNSEAL_KEY_LEN]>::try_from(key) {
            *self.unseal_key.lock().expect("unseal key lock") = Some(Zeroizing::new(key));
        }
    }

    /// Drops the kept unseal key (the node is sealed).
    pub fn forget_unseal_key(&self) {
        self.unseal_key.lock().expect("unseal key lock").take();
    }

    /// Seals a join challenge `nonce` with the stored seal (on the active node).
    pub async fn seal_challenge(&self, nonce: &[u8]) -> Result<Vec<u8>, SealError> {
        let config = self.config().await?.ok_or(SealError::NotInitialized)?;
        if !config.is_shamir() {
            let auto = self.auto_for(&config.r#type)?;
            return Ok(auto.wrap(nonce).await?.to_bytes());
        }
        let key = self
            .unseal_key
            .lock()
            .expect("unseal key lock")
            .clone()
            .ok_or_else(|| {
                SealError::WrongSeal(
                    "this node does not hold the unseal key (it was not unsealed with the key \
                     shares since it started); a join can be answered once it has been"
                        .into(),
                )
            })?;
        if self.unwrap_root_key(&key[..]).await.is_err() {
            return Err(SealError::WrongSeal(
                "the unseal keys were changed (rekey) since this node was unsealed; seal and \
                 unseal it with the new keys before it can answer a join"
                    .into(),
            ));
        }
        let cipher = Aes256Gcm::new(aes_gcm::Key::<Aes256Gcm>::from_slice(&key[..]));
        layout::encrypt(&cipher, layout::OUTSIDE_KEYRING_TERM, CHALLENGE_AAD, nonce)
            .map_err(|_| SealError::Corrupt("AES-GCM refused to seal a join challenge".into()))
    }

    /// Opens a join challenge sealed by a cluster whose seal is `config` (on the joiner):
    /// with `unseal_key` (Shamir), or with this node's own auto seal.
    pub async fn open_challenge(
        &self,
        config: &SealConfig,
        sealed: &[u8],
        unseal_key: Option<&[u8]>,
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if config.is_shamir() {
            let key = unseal_key.ok_or_else(|| {
                SealError::WrongSeal(
                    "the cluster uses the shamir seal: unseal this node with its key shares".into(),
                )
            })?;
            if key.len() != UNSEAL_KEY_LEN {
                return Err(SealError::InvalidKey);
            }
            let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| SealError::InvalidKey)?;
            return layout::decrypt(&cipher, CHALLENGE_AAD, sealed)
                .map(Zeroizing::new)
                .ok_or(SealError::InvalidKey);
        }
        let auto = self.auto_for(&config.r#type)?;
        let wrapped = WrappedKey::from_bytes("the join challenge", sealed)?;
        Ok(auto.unwrap(&wrapped).await?)
    }

    /// The configured auto seal of type `kind`: the one in force, or the one being left
    /// (`disabled = "true"`) while a migration away from it is pending.
    fn auto_for(&self, kind: &str) -> Result<&std::sync::Arc<dyn AutoSeal>, SealError> {
        [self.setup.auto.as_ref(), self.setup.old.as_ref()]
            .into_iter()
            .flatten()
            .find(|a| a.kind() == kind)
            .ok_or_else(|| {
                SealError::WrongSeal(format!(
                    "the cluster's data is sealed by {kind}, but this node has no {kind} seal \
                     stanza; configure the same seal as the cluster's nodes"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::barrier::Barrier;
    use crate::physical::inmem::InmemBackend;
    use crate::physical::Backend;

    async fn shamir_cluster() -> (Seal, Zeroizing<Vec<u8>>) {
        let physical: Arc<dyn Backend> = Arc::new(InmemBackend::new());
        let barrier = Barrier::new(physical.clone());
        let seal = Seal::new(physical);
        let shares = seal.initialize(&barrier, 1, 1).await.unwrap();
        (seal, shares[0].clone())
    }

    #[tokio::test]
    async fn shamir_challenge_opens_only_with_the_unseal_key() {
        let (seal, key) = shamir_cluster().await;
        let config = seal.config().await.unwrap().unwrap();
        // Not unsealed since start: nothing to seal with.
        assert!(matches!(
            seal.seal_challenge(b"nonce").await,
            Err(SealError::WrongSeal(_))
        ));
        seal.recover_root_key(&key).await.unwrap();
        let sealed = seal.seal_challenge(b"nonce").await.unwrap();
        let opened = seal
            .open_challenge(&config, &sealed, Some(&key))
            .await
            .unwrap();
        assert_eq!(&opened[..], b"nonce");

        let (_, other_key) = shamir_cluster().await;
        for wrong in [Some(&other_key[..]), Some(&[0u8; 5][..]), None] {
            assert!(seal.open_challenge(&config, &sealed, wrong).await.is_err());
        }
        seal.forget_unseal_key();
        assert!(seal.seal_challenge(b"nonce").await.is_err());
    }

    #[tokio::test]
    async fn a_stale_unseal_key_seals_nothing() {
        let physical: Arc<dyn Backend> = Arc::new(InmemBackend::new());
        let barrier = Barrier::new(physical.clone());
        let seal = Seal::new(physical.clone());
        let shares = seal.initialize(&barrier, 1, 1).await.unwrap();
        let root = seal.recover_root_key(&shares[0]).await.unwrap();
        barrier.unseal(&root).await.unwrap();
        // Another node of the cluster (same store) rekeys: this one's copy is stale.
        let other = Seal::new(physical);
        other.rekey(&barrier, &shares[0], 1, 1).await.unwrap();
        assert!(matches!(
            seal.seal_challenge(b"nonce").await,
            Err(SealError::WrongSeal(_))
        ));
        assert!(other.seal_challenge(b"nonce").await.is_ok());
    }
}
