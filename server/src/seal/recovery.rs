//! Auto-unseal operations on the seal's storage: init with recovery keys,
//! unwrapping the root key through the key service, checking and rekeying
//! recovery keys, and seal migration.
//!
//! Migration keeps the root key (so the keyring and every value stay as they
//! are) and only re-wraps it, in one physical transaction:
//! - Shamir -> auto: the unseal key becomes the recovery key, so the
//!   operators' shares keep working, now as recovery shares.
//! - auto -> Shamir: the recovery key becomes the unseal key, so the recovery
//!   shares become unseal shares.
//! - auto -> auto: the root and recovery keys are re-wrapped by the new service.

use zeroize::Zeroizing;

use super::auto::{AutoSeal, WrappedKey};
use super::{
    ct_eq, new_split_key, seal_ops, Barrier, BarrierError, RootKey, Seal, SealConfig, SealError,
    Shares, TxnOp, RECOVERY_CONFIG_PATH, RECOVERY_KEY_PATH, SEAL_CONFIG_PATH, UNSEAL_KEYS_PATH,
    UNSEAL_KEY_LEN,
};

/// A seal migration this node's config asks for: the stored seal differs from
/// the configured one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub from: String,
    pub to: String,
}

/// New recovery shares, generated but not yet in force (rekey with verification).
pub struct PreparedRecoveryRekey {
    config: SealConfig,
    key: Zeroizing<[u8; UNSEAL_KEY_LEN]>,
    pub shares: Shares,
}

impl std::fmt::Debug for PreparedRecoveryRekey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedRecoveryRekey")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PreparedRecoveryRekey {
    pub fn new(shares: u8, threshold: u8) -> Result<Self, SealError> {
        let config = SealConfig::shamir(shares, threshold)?;
        let (key, shares) = new_split_key(&config)?;
        Ok(PreparedRecoveryRekey {
            config,
            key,
            shares,
        })
    }

    /// True when `shares` (a threshold of the new ones) rebuild the new key.
    pub fn verifies(&self, shares: &[&[u8]]) -> bool {
        match self.config.combine(shares) {
            Ok(key) => ct_eq(&key, &self.key[..]),
            Err(_) => false,
        }
    }
}

fn put_json<T: serde::Serialize>(key: &str, value: &T) -> TxnOp {
    TxnOp::Put {
        key: key.into(),
        value: serde_json::to_vec(value).expect("seal entries encode"),
    }
}

impl Seal {
    /// Initialises under the configured auto-unseal seal: the key service
    /// wraps a new root key and a new recovery key, committed with the keyring
    /// in one transaction. Returns the recovery shares.
    pub async fn initialize_auto(
        &self,
        barrier: &Barrier,
        recovery_shares: u8,
        recovery_threshold: u8,
    ) -> Result<Shares, SealError> {
        let auto = self.auto().ok_or_else(|| {
            SealError::WrongSeal(
                "recovery keys only exist with an auto-unseal seal; this server uses Shamir".into(),
            )
        })?;
        let recovery = SealConfig::shamir(recovery_shares, recovery_threshold)?;
        if barrier.initialized().await? {
            return Err(SealError::AlreadyInitialized);
        }
        let root = RootKey::generate();
        let (recovery_key, shares) = new_split_key(&recovery)?;
        let wrapped_root = auto.wrap(root.as_bytes()).await?;
        let wrapped_recovery = auto.wrap(&recovery_key[..]).await?;
        let ops = vec![
            put_json(SEAL_CONFIG_PATH, &SealConfig::auto(auto.kind())),
            put_json(RECOVERY_CONFIG_PATH, &recovery),
            TxnOp::Put {
                key: UNSEAL_KEYS_PATH.into(),
                value: wrapped_root.to_bytes(),
            },
            TxnOp::Put {
                key: RECOVERY_KEY_PATH.into(),
                value: wrapped_recovery.to_bytes(),
            },
        ];
        match barrier.initialize_with(&root, ops).await {
            Err(BarrierError::AlreadyInitialized) => Err(SealError::AlreadyInitialized),
            other => other.map_err(SealError::from),
        }?;
        Ok(shares)
    }

    /// Unwraps the root key through `seal` (the configured seal, or the old
    /// one during a migration). The stored seal type must be `seal`'s.
    pub async fn auto_root_key(&self, seal: &dyn AutoSeal) -> Result<RootKey, SealError> {
        let config = self.config().await?.ok_or(SealError::NotInitialized)?;
        if config.r#type != seal.kind() {
            return Err(SealError::WrongSeal(format!(
                "the root key is wrapped by the {} seal, but {} was asked to unwrap it",
                config.r#type,
                seal.kind()
            )));
        }
        let wrapped = self.wrapped(UNSEAL_KEYS_PATH).await?;
        let plain = seal.unwrap(&wrapped).await?;
        RootKey::from_bytes(&plain).map_err(|_| {
            SealError::Corrupt(format!(
                "{UNSEAL_KEYS_PATH} unwraps to something that is not a 32-byte key"
            ))
        })
    }

    async fn wrapped(&self, path: &str) -> Result<WrappedKey, SealError> {
        let raw = self
            .physical
            .get(path)
            .await?
            .ok_or(SealError::NotInitialized)?;
        Ok(WrappedKey::from_bytes(path, &raw)?)
    }

    /// Checks a (combined) recovery key against the stored one, unwrapped by
    /// `seal`. A wrong key is [`SealError::InvalidKey`].
    pub async fn verify_recovery_key(
        &self,
        seal: &dyn AutoSeal,
        key: &[u8],
    ) -> Result<(), SealError> {
        let stored = seal.unwrap(&self.wrapped(RECOVERY_KEY_PATH).await?).await?;
        if ct_eq(&stored, key) {
            Ok(())
        } else {
            Err(SealError::InvalidKey)
        }
    }

    /// Replaces the recovery key and its share config (the barrier is untouched).
    pub async fn apply_recovery_rekey(
        &self,
        prepared: &PreparedRecoveryRekey,
    ) -> Result<(), SealError> {
        let auto = self.auto().ok_or_else(|| {
            SealError::WrongSeal("this server has no recovery keys: it uses Shamir".into())
        })?;
        let wrapped = auto.wrap(&prepared.key[..]).await?;
        self.physical
            .transaction(vec![
                put_json(RECOVERY_CONFIG_PATH, &prepared.config),
                TxnOp::Put {
                    key: RECOVERY_KEY_PATH.into(),
                    value: wrapped.to_bytes(),
                },
            ])
            .await?;
        Ok(())
    }

    /// The migration the config asks for, if the stored seal differs from the
    /// configured one.
    pub async fn pending_migration(&self) -> Result<Option<Migration>, SealError> {
        let Some(stored) = self.config().await? else {
            return Ok(None);
        };
        if stored.r#type == self.kind() {
            return Ok(None);
        }
        Ok(Some(Migration {
            from: stored.r#type,
            to: self.kind().to_string(),
        }))
    }

    /// What unlocks the stored seal for `-migrate`: the old seal's unseal
    /// shares (Shamir), or its recovery shares (auto). Returns the stored
    /// config whose threshold applies.
    pub async fn migration_key_config(&self) -> Result<SealConfig, SealError> {
        let stored = self.config().await?.ok_or(SealError::NotInitialized)?;
        if stored.is_shamir() {
            return Ok(stored);
        }
        self.recovery_config().await?.ok_or_else(|| {
            SealError::Corrupt(format!(
                "the stored seal is {} but {RECOVERY_CONFIG_PATH} is missing",
                stored.r#type
            ))
        })
    }

    /// Opens the stored seal with the operators' combined key for a
    /// migration: returns the root key, after checking the key is the stored
    /// seal's (the unseal key for Shamir, the recovery key for auto seals).
    pub async fn unlock_for_migration(&self, key: &[u8]) -> Result<RootKey, SealError> {
        let stored = self.config().await?.ok_or(SealError::NotInitialized)?;
        if stored.is_shamir() {
            return self.recover_root_key(key).await;
        }
        let old = self.old_seal_for(&stored.r#type)?;
        let root = self.auto_root_key(old.as_ref()).await?;
        self.verify_recovery_key(old.as_ref(), key).await?;
        Ok(root)
    }

    fn old_seal_for(&self, kind: &str) -> Result<std::sync::Arc<dyn AutoSeal>, SealError> {
        match &self.setup.old {
            Some(old) if old.kind() == kind => Ok(old.clone()),
            Some(old) => Err(SealError::WrongSeal(format!(
                "the data is sealed by {kind}, but the config's disabled seal stanza is {}; \
                 to migrate away from {kind}, keep its stanza with disabled = \"true\"",
                old.kind()
            ))),
            None => Err(SealError::WrongSeal(format!(
                "the data is sealed by {kind}; to migrate away from it, keep its seal stanza \
                 in the config with disabled = \"true\" (the node needs it to unwrap the root key)"
            ))),
        }
    }

    /// Re-wraps `root` from the stored seal to the configured one (see the
    /// module docs). `key` is what the operators unlocked the migration with.
    pub async fn migrate(
        &self,
        barrier: &Barrier,
        root: &RootKey,
        key: &[u8],
    ) -> Result<Migration, SealError> {
        let Some(migration) = self.pending_migration().await? else {
            return Err(SealError::WrongSeal(
                "no seal migration is pending: the stored seal is the configured one".into(),
            ));
        };
        if !barrier.root_key_matches(root)? {
            return Err(SealError::Corrupt(
                "the migration's root key is not the barrier's".into(),
            ));
        }
        let key_config = self.migration_key_config().await?;
        let ops = match self.auto() {
            None => {
                let key: &[u8; UNSEAL_KEY_LEN] = key.try_into().map_err(|_| {
                    SealError::Corrupt("the recovery key is not 32 bytes long".into())
                })?;
                let mut ops = seal_ops(&key_config.as_shamir(), key, root)?;
                ops.push(TxnOp::Delete {
                    key: RECOVERY_CONFIG_PATH.into(),
                });
                ops.push(TxnOp::Delete {
                    key: RECOVERY_KEY_PATH.into(),
                });
                ops
            }
            Some(auto) => {
                let wrapped_root = auto.wrap(root.as_bytes()).await?;
                let wrapped_recovery = auto.wrap(key).await?;
                vec![
                    put_json(SEAL_CONFIG_PATH, &SealConfig::auto(auto.kind())),
                    put_json(RECOVERY_CONFIG_PATH, &key_config.as_shamir()),
                    TxnOp::Put {
                        key: UNSEAL_KEYS_PATH.into(),
                        value: wrapped_root.to_bytes(),
                    },
                    TxnOp::Put {
                        key: RECOVERY_KEY_PATH.into(),
                        value: wrapped_recovery.to_bytes(),
                    },
                ]
            }
        };
        self.physical.transaction(ops).await?;
        if self.auto().is_none() {
            // The recovery key is now the unseal key.
            self.remember_unseal_key(key);
        }
        Ok(migration)
    }
}

impl SealConfig {
    /// The same share counts as a Shamir config.
    fn as_shamir(&self) -> SealConfig {
        SealConfig {
            r#type: "shamir".into(),
            secret_shares: self.secret_shares,
            secret_threshold: self.secret_threshold,
            stored_shares: 1,
        }
    }
}
