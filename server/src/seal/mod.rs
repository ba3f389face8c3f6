//! Seals: what wraps the barrier's root key while the server is sealed:
//! Vault's Shamir seal, or an auto-unseal key service ([`auto`]: AWS KMS,
//! transit) with recovery keys ([`recovery`]), and migration between them.
//!
//! Shamir: init generates a root key and a 32-byte unseal key (the key-encryption key),
//! wraps the root key under the unseal key with AES-256-GCM at
//! `core/hsm/barrier-unseal-keys`, and Shamir-splits the unseal key into the
//! shares handed to operators ([`shamir`], Vault's share encoding). Unseal
//! combines a threshold of shares, unwraps the root key and opens the barrier.
//!
//! Auto-unseal: the key service wraps the root key at the same path, and a
//! separate 32-byte recovery key, split into recovery shares, authorises
//! generate-root and recovery rekey. The recovery key is stored wrapped by the
//! key service too (`core/recovery-key`); it opens nothing.
//!
//! `core/seal-config` and `core/recovery-config` are stored in the clear so
//! that `t` and `n` are known while sealed. Their JSON uses Vault's field names.
//!
//! Crash safety: init and rekey commit every entry they touch (seal config,
//! wrapped root key, keyring, `core/root-key`) in ONE physical transaction.
//! Before it commits, the old shares open the store; after, the new ones do.
//! Never a mix, whatever the order of writes inside it.

pub mod auto;
pub mod awskms;
mod join;
mod recovery;
pub mod shamir;
pub mod transit;

use std::sync::Arc;

use aes_gcm::{Aes256Gcm, KeyInit};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::barrier::{layout, Barrier, BarrierError, RootKey};
use crate::physical::{Backend, StorageError, TxnOp};
use shamir::ShamirError;

pub use auto::{AutoSeal, AutoSealError, WrappedKey};
pub use recovery::{Migration, PreparedRecoveryRekey};

pub const SEAL_CONFIG_PATH: &str = "core/seal-config";
pub const UNSEAL_KEYS_PATH: &str = "core/hsm/barrier-unseal-keys";
pub const RECOVERY_CONFIG_PATH: &str = "core/recovery-config";
pub const RECOVERY_KEY_PATH: &str = "core/recovery-key";

/// Length of the unseal key (the key-encryption key the shares rebuild).
pub const UNSEAL_KEY_LEN: usize = 32;

/// Why a seal operation failed. No variant carries key bytes.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// A rule of Vault's `SealConfig.Validate`; the text is Vault's.
    #[error("invalid seal configuration: {0}")]
    InvalidConfig(&'static str),
    #[error("Vault is already initialized")]
    AlreadyInitialized,
    #[error("Vault is not initialized")]
    NotInitialized,
    /// The unseal key (or the shares it was combined from) does not open the
    /// wrapped root key. Vault's wording.
    #[error("cipher: message authentication failed")]
    InvalidKey,
    #[error("'key' must be a valid hex or base64 string")]
    KeyEncoding,
    #[error("failed to combine the unseal key shares: {0}")]
    Shamir(#[from] ShamirError),
    #[error(transparent)]
    Barrier(#[from] BarrierError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("seal storage is corrupt: {0}")]
    Corrupt(String),
    /// The auto-unseal key service failed or refused.
    #[error("{0}")]
    Auto(#[from] AutoSealError),
    /// What was asked does not fit the seal in use (e.g. unseal keys given to
    /// a node that unseals itself).
    #[error("{0}")]
    WrongSeal(String),
}

impl From<SealError> for crate::error::Error {
    fn from(e: SealError) -> Self {
        use crate::error::Error;
        match e {
            SealError::NotInitialized => Error::NotInitialized,
            SealError::Barrier(e) => e.into(),
            SealError::Storage(e) => Error::Storage(e),
            SealError::Corrupt(_) => Error::internal(e.to_string()),
            SealError::Auto(_) => Error::internal(e.to_string()),
            SealError::WrongSeal(_)
            | SealError::InvalidConfig(_)
            | SealError::AlreadyInitialized
            | SealError::InvalidKey
            | SealError::KeyEncoding
            | SealError::Shamir(_) => Error::invalid(e.to_string()),
        }
    }
}

/// The seal's configuration, as stored (in the clear) at `core/seal-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealConfig {
    /// `"shamir"`.
    pub r#type: String,
    pub secret_shares: u8,
    pub secret_threshold: u8,
    /// Keys stored by the seal itself: always 1 (the wrapped root key), as in
    /// Vault since 1.3.
    #[serde(default = "one")]
    pub stored_shares: u8,
}

fn one() -> u8 {
    1
}

impl SealConfig {
    /// The barrier config of an auto-unseal seal: one stored key, as in Vault.
    pub fn auto(kind: &str) -> Self {
        SealConfig {
            r#type: kind.to_string(),
            secret_shares: 1,
            secret_threshold: 1,
            stored_shares: 1,
        }
    }

    pub fn is_shamir(&self) -> bool {
        self.r#type == "shamir"
    }

    pub fn shamir(secret_shares: u8, secret_threshold: u8) -> Result<Self, SealError> {
        check_share_counts(secret_shares.into(), secret_threshold.into())?;
        Ok(SealConfig {
            r#type: "shamir".into(),
            secret_shares,
            secret_threshold,
            stored_shares: 1,
        })
    }

    /// Rebuilds the unseal key from a threshold of operator shares (already
    /// decoded, e.g. by [`decode_key`]). With one share the share is the key.
    pub fn combine(&self, shares: &[&[u8]]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        match shares {
            [single] if self.secret_shares == 1 => Ok(Zeroizing::new(single.to_vec())),
            _ => Ok(shamir::combine(shares)?),
        }
    }
}

/// Vault's share/threshold rules, over the request's integers (so the HTTP
/// layer can report 256 or -1 with Vault's message before narrowing to `u8`).
pub fn check_share_counts(shares: i64, threshold: i64) -> Result<(u8, u8), SealError> {
    let invalid = |msg| Err(SealError::InvalidConfig(msg));
    if shares < 1 {
        return invalid("shares must be at least one");
    }
    if threshold < 1 {
        return invalid("threshold must be at least one");
    }
    if shares > 1 && threshold == 1 {
        return invalid("threshold must be greater than one for multiple shares");
    }
    if shares > 255 {
        return invalid("shares must be less than 256");
    }
    if threshold > 255 {
        return invalid("threshold must be less than 256");
    }
    if threshold > shares {
        return invalid("threshold cannot be larger than shares");
    }
    Ok((shares as u8, threshold as u8))
}

/// Decodes an operator's key or share: hex first, then standard base64, as
/// Vault's `sys/unseal` does.
pub fn decode_key(s: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(SealError::KeyEncoding);
    }
    if let Ok(bytes) = hex::decode(s) {
        return Ok(Zeroizing::new(bytes));
    }
    let mut out = Zeroizing::new(Vec::with_capacity(s.len() / 4 * 3 + 3));
    B64.decode_vec(s, &mut out)
        .map_err(|_| SealError::KeyEncoding)?;
    Ok(out)
}

/// The seals a server is configured with: the one in force (`None` is
/// Shamir) and, during a migration, the one being left (`disabled = "true"`).
#[derive(Clone, Default)]
pub struct SealSetup {
    pub auto: Option<Arc<dyn AutoSeal>>,
    pub old: Option<Arc<dyn AutoSeal>>,
}

impl SealSetup {
    /// Builds the key-service clients the config names. Nothing is sent yet:
    /// an unreachable service shows up at the first unseal, which retries.
    pub async fn from_config(
        seal: &crate::config::SealConfig,
        old: Option<&crate::config::SealConfig>,
    ) -> Result<Self, AutoSealError> {
        Ok(SealSetup {
            auto: auto_seal(seal).await?,
            old: match old {
                Some(old) => auto_seal(old).await?,
                None => None,
            },
        })
    }
}

async fn auto_seal(
    config: &crate::config::SealConfig,
) -> Result<Option<Arc<dyn AutoSeal>>, AutoSealError> {
    use crate::config::SealConfig as Stanza;
    Ok(match config {
        Stanza::Shamir => None,
        Stanza::AwsKms {
            region,
            kms_key_id,
            endpoint,
            access_key,
            secret_key,
            ..
        } => Some(Arc::new(
            awskms::AwsKmsSeal::new(awskms::AwsKmsSettings {
                region: region.clone(),
                kms_key_id: kms_key_id.clone(),
                endpoint: endpoint.clone(),
                access_key: access_key.clone(),
                secret_key: secret_key.clone().map(Zeroizing::new),
            })
            .await,
        )),
        Stanza::Transit {
            address,
            token,
            key_name,
            mount_path,
            namespace,
            tls_ca_cert,
            tls_client_cert,
            tls_client_key,
            tls_server_name,
            tls_skip_verify,
            disable_renewal,
            ..
        } => Some(Arc::new(transit::TransitSeal::new(
            transit::TransitSettings {
                address: address.clone(),
                token: token.clone().map(Zeroizing::new),
                key_name: key_name.clone(),
                mount_path: mount_path.clone(),
                namespace: namespace.clone(),
                tls_ca_cert: tls_ca_cert.clone(),
                tls_client_cert: tls_client_cert.clone(),
                tls_client_key: tls_client_key.clone(),
                tls_server_name: tls_server_name.clone(),
                tls_skip_verify: *tls_skip_verify,
                disable_renewal: *disable_renewal,
            },
        )?)),
    })
}

impl std::fmt::Debug for SealSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealSetup")
            .field("auto", &self.auto.as_ref().map(|a| a.describe()))
            .field("old", &self.old.as_ref().map(|a| a.describe()))
            .finish()
    }
}

/// The seal over the physical store.
///
/// `physical` must be the same store the [`Barrier`] sits on: init and rekey
/// commit the seal's entries in the barrier's transaction.
pub struct Seal {
    physical: Arc<dyn Backend>,
    setup: SealSetup,
    /// The unseal key this node was last opened with (Shamir), for sealing join challenges
    /// ([`join`]); `None` while sealed.
    unseal_key: std::sync::Mutex<Option<Zeroizing<[u8; UNSEAL_KEY_LEN]>>>,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seal")
            .field("kind", &self.kind())
            .field("auto", &self.setup.auto)
            .field("old", &self.setup.old)
            .finish_non_exhaustive()
    }
}

impl Seal {
    /// A Shamir seal.
    pub fn new(physical: Arc<dyn Backend>) -> Self {
        Self::with_setup(physical, SealSetup::default())
    }

    pub fn with_setup(physical: Arc<dyn Backend>, setup: SealSetup) -> Self {
        Seal {
            physical,
            setup,
            unseal_key: std::sync::Mutex::new(None),
        }
    }

    /// The same seals over another store (a joiner's copy of the cluster's
    /// key material).
    pub fn over(&self, physical: Arc<dyn Backend>) -> Self {
        Self::with_setup(physical, self.setup.clone())
    }

    /// The configured seal's type: `shamir`, `awskms` or `transit`.
    pub fn kind(&self) -> &'static str {
        self.setup.auto.as_ref().map_or("shamir", |a| a.kind())
    }

    /// The auto-unseal seal in force, if any.
    pub fn auto(&self) -> Option<&Arc<dyn AutoSeal>> {
        self.setup.auto.as_ref()
    }

    pub async fn config(&self) -> Result<Option<SealConfig>, SealError> {
        self.read_config(SEAL_CONFIG_PATH).await
    }

    /// The recovery key's share config (auto-unseal seals only).
    pub async fn recovery_config(&self) -> Result<Option<SealConfig>, SealError> {
        self.read_config(RECOVERY_CONFIG_PATH).await
    }

    async fn read_config(&self, path: &str) -> Result<Option<SealConfig>, SealError> {
        let Some(raw) = self.physical.get(path).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| SealError::Corrupt(format!("{path} is not valid JSON: {e}")))
    }

    /// Initialises the seal and the barrier (left sealed) and returns the
    /// unseal key shares: the 32-byte key itself when `secret_shares` is 1,
    /// otherwise 33-byte Shamir shares. The caller encodes them for display.
    pub async fn initialize(
        &self,
        barrier: &Barrier,
        secret_shares: u8,
        secret_threshold: u8,
    ) -> Result<Shares, SealError> {
        self.check_same_store(barrier);
        if let Some(auto) = self.auto() {
            return Err(SealError::WrongSeal(format!(
                "this server auto-unseals with {}: initialise it with recovery_shares and recovery_threshold",
                auto.kind()
            )));
        }
        let config = SealConfig::shamir(secret_shares, secret_threshold)?;
        if barrier.initialized().await? {
            return Err(SealError::AlreadyInitialized);
        }
        let root = RootKey::generate();
        let (unseal_key, shares) = new_split_key(&config)?;
        let ops = seal_ops(&config, &unseal_key, &root)?;
        match barrier.initialize_with(&root, ops).await {
            Err(BarrierError::AlreadyInitialized) => Err(SealError::AlreadyInitialized),
            other => other.map_err(SealError::from),
        }?;
        Ok(shares)
    }

    /// Unwraps the root key with a (combined) unseal key, and keeps the key for sealing join
    /// challenges while the node is unsealed.
    pub async fn recover_root_key(&self, unseal_key: &[u8]) -> Result<RootKey, SealError> {
        let root = self.unwrap_root_key(unseal_key).await?;
        self.remember_unseal_key(unseal_key);
        Ok(root)
    }

    async fn unwrap_root_key(&self, unseal_key: &[u8]) -> Result<RootKey, SealError> {
        if let Some(config) = self.config().await? {
            if !config.is_shamir() {
                return Err(SealError::WrongSeal(format!(
                    "the root key is wrapped by the {} seal, not by unseal keys",
                    config.r#type
                )));
            }
        }
        let wrapped = self
            .physical
            .get(UNSEAL_KEYS_PATH)
            .await?
            .ok_or(SealError::NotInitialized)?;
        if unseal_key.len() != UNSEAL_KEY_LEN {
            return Err(SealError::InvalidKey);
        }
        let cipher = Aes256Gcm::new_from_slice(unseal_key).map_err(|_| SealError::InvalidKey)?;
        let plain = Zeroizing::new(
            layout::decrypt(&cipher, UNSEAL_KEYS_PATH, &wrapped).ok_or(SealError::InvalidKey)?,
        );
        RootKey::from_bytes(&plain).map_err(|_| {
            SealError::Corrupt(format!("{UNSEAL_KEYS_PATH} does not hold a 32-byte key"))
        })
    }

    /// Replaces the unseal key, its shares and the root key, given the current
    /// (combined) unseal key. The barrier must be unsealed.
    ///
    /// Everything is committed in one transaction with the re-encrypted
    /// keyring (see the module docs). What no write order can fix: once it
    /// commits, only the returned shares open the store, so a caller that
    /// loses them (crash before answering) loses the store. Vault's answer is
    /// PGP-encrypted backups and rekey verification; neither is here yet.
    pub async fn rekey(
        &self,
        barrier: &Barrier,
        current_unseal_key: &[u8],
        secret_shares: u8,
        secret_threshold: u8,
    ) -> Result<Shares, SealError> {
        let prepared = PreparedRekey::new(secret_shares, secret_threshold)?;
        self.apply_rekey(barrier, current_unseal_key, &prepared)
            .await?;
        Ok(prepared.shares)
    }

    /// Commits a prepared rekey: a new root key, wrapped by the prepared
    /// unseal key, written in one transaction with the new seal config.
    /// `current_unseal_key` must open the store as it is now.
    pub async fn apply_rekey(
        &self,
        barrier: &Barrier,
        current_unseal_key: &[u8],
        prepared: &PreparedRekey,
    ) -> Result<(), SealError> {
        self.check_same_store(barrier);
        if barrier.is_sealed() {
            return Err(BarrierError::Sealed.into());
        }
        if self.auto().is_some() {
            return Err(SealError::WrongSeal(
                "with an auto-unseal seal the unseal keys are the key service's; rekey the recovery keys instead (sys/rekey-recovery-key, -target=recovery)".into(),
            ));
        }
        let current_root = self.recover_root_key(current_unseal_key).await?;
        if !barrier.root_key_matches(&current_root)? {
            return Err(SealError::Corrupt(
                "the stored unseal keys open a different root key than the barrier holds; \
                 reload the keyring and retry"
                    .into(),
            ));
        }
        let root = RootKey::generate();
        let ops = seal_ops(&prepared.config, &prepared.unseal_key, &root)?;
        barrier.rekey_with(&root, ops).await?;
        self.remember_unseal_key(&prepared.unseal_key[..]);
        Ok(())
    }

    fn check_same_store(&self, barrier: &Barrier) {
        debug_assert!(
            std::ptr::addr_eq(Arc::as_ptr(&self.physical), Arc::as_ptr(barrier.physical())),
            "the seal and the barrier must share one physical store"
        );
    }
}

/// New unseal key and shares, generated but not yet in force: rekey with
/// verification hands the shares out first and applies them only once a
/// threshold of them has been given back.
pub struct PreparedRekey {
    config: SealConfig,
    unseal_key: Zeroizing<[u8; UNSEAL_KEY_LEN]>,
    pub shares: Shares,
}

impl PreparedRekey {
    pub fn new(secret_shares: u8, secret_threshold: u8) -> Result<Self, SealError> {
        let config = SealConfig::shamir(secret_shares, secret_threshold)?;
        let (unseal_key, shares) = new_split_key(&config)?;
        Ok(PreparedRekey {
            config,
            unseal_key,
            shares,
        })
    }

    /// True when `shares` (a threshold of the new ones) rebuild the new key.
    pub fn verifies(&self, shares: &[&[u8]]) -> bool {
        match self.config.combine(shares) {
            Ok(key) => ct_eq(&key, &self.unseal_key[..]),
            Err(_) => false,
        }
    }
}

impl std::fmt::Debug for PreparedRekey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedRekey")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Operator shares (or the single unseal key), each zeroized on drop.
pub type Shares = Vec<Zeroizing<Vec<u8>>>;

/// Whether two keys are equal, in time that does not depend on where they differ.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh 32-byte key (an unseal key, or a recovery key) and the shares
/// handed out for it under `config` (the key itself with one share).
pub(crate) fn new_split_key(
    config: &SealConfig,
) -> Result<(Zeroizing<[u8; UNSEAL_KEY_LEN]>, Shares), SealError> {
    let mut key = Zeroizing::new([0u8; UNSEAL_KEY_LEN]);
    OsRng.fill_bytes(&mut key[..]);
    let shares = if config.secret_shares == 1 {
        vec![Zeroizing::new(key.to_vec())]
    } else {
        shamir::split(
            &key[..],
            config.secret_shares.into(),
            config.secret_threshold.into(),
        )?
    };
    Ok((key, shares))
}

/// The seal's physical entries: its config (clear) and the wrapped root key.
pub(crate) fn seal_ops(
    config: &SealConfig,
    unseal_key: &[u8; UNSEAL_KEY_LEN],
    root: &RootKey,
) -> Result<Vec<TxnOp>, SealError> {
    let cipher = Aes256Gcm::new(aes_gcm::Key::<Aes256Gcm>::from_slice(&unseal_key[..]));
    let wrapped = layout::encrypt(
        &cipher,
        layout::OUTSIDE_KEYRING_TERM,
        UNSEAL_KEYS_PATH,
        root.as_bytes(),
    )
    .map_err(|_| SealError::Corrupt("AES-GCM refused to wrap the root key".into()))?;
    let config = serde_json::to_vec(config).expect("seal config encodes");
    Ok(vec![
        TxnOp::Put {
            key: SEAL_CONFIG_PATH.into(),
            value: config,
        },
        TxnOp::Put {
            key: UNSEAL_KEYS_PATH.into(),
            value: wrapped,
        },
    ])
}

#[cfg(test)]
mod tests;
