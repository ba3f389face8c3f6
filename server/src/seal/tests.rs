//! Shamir seal tests: init, unseal by shares, validation, rekey and its atomicity, key decoding.

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

use super::*;
use crate::physical::inmem::InmemBackend;

fn setup() -> (Arc<dyn Backend>, Barrier, Seal) {
    let physical: Arc<dyn Backend> = Arc::new(InmemBackend::new());
    (
        physical.clone(),
        Barrier::new(physical.clone()),
        Seal::new(physical),
    )
}

async fn unseal_with(seal: &Seal, barrier: &Barrier, shares: &[&[u8]]) -> Result<(), SealError> {
    let config = seal.config().await?.ok_or(SealError::NotInitialized)?;
    let key = config.combine(shares)?;
    let root = seal.recover_root_key(&key).await?;
    barrier.unseal(&root).await?;
    Ok(())
}

#[tokio::test]
async fn init_then_unseal_with_any_threshold() {
    let (physical, barrier, seal) = setup();
    assert_eq!(seal.config().await.unwrap(), None);
    let shares = seal.initialize(&barrier, 5, 3).await.unwrap();
    assert_eq!(shares.len(), 5);
    assert!(shares.iter().all(|s| s.len() == UNSEAL_KEY_LEN + 1));
    assert!(barrier.initialized().await.unwrap());
    assert!(barrier.is_sealed());

    let config = seal.config().await.unwrap().unwrap();
    assert_eq!(config, SealConfig::shamir(5, 3).unwrap());
    let raw = physical.get(SEAL_CONFIG_PATH).await.unwrap().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"type": "shamir", "secret_shares": 5, "secret_threshold": 3, "stored_shares": 1})
    );

    // Two shares are not enough: the combined key fails to authenticate.
    let two: Vec<&[u8]> = shares[..2].iter().map(|s| &s[..]).collect();
    assert!(matches!(
        unseal_with(&seal, &barrier, &two).await,
        Err(SealError::InvalidKey)
    ));
    let three: Vec<&[u8]> = [&shares[4], &shares[1], &shares[2]]
        .iter()
        .map(|s| &s[..])
        .collect();
    unseal_with(&seal, &barrier, &three).await.unwrap();
    assert!(!barrier.is_sealed());
}

#[tokio::test]
async fn single_share_is_the_key_itself() {
    let (_, barrier, seal) = setup();
    let shares = seal.initialize(&barrier, 1, 1).await.unwrap();
    assert_eq!(shares.len(), 1);
    assert_eq!(shares[0].len(), UNSEAL_KEY_LEN);
    unseal_with(&seal, &barrier, &[&shares[0]]).await.unwrap();
}

#[test]
fn share_count_rules() {
    let check = |n: i64, t: i64, want: Option<&str>| {
        let got = check_share_counts(n, t).err().map(|e| e.to_string());
        let want = want.map(|m| format!("invalid seal configuration: {m}"));
        assert_eq!(got, want, "shares={n} threshold={t}");
    };
    check(0, 0, Some("shares must be at least one"));
    check(3, 0, Some("threshold must be at least one"));
    check(
        3,
        1,
        Some("threshold must be greater than one for multiple shares"),
    );
    check(3, 4, Some("threshold cannot be larger than shares"));
    check(1, 2, Some("threshold cannot be larger than shares"));
    check(256, 3, Some("shares must be less than 256"));
    check(255, 256, Some("threshold must be less than 256"));
    check(1, 1, None);
    check(2, 2, None);
    check(255, 255, None);
}

#[tokio::test]
async fn init_twice_is_refused_and_changes_nothing() {
    let (physical, barrier, seal) = setup();
    let shares = seal.initialize(&barrier, 3, 2).await.unwrap();
    let before = physical.get(UNSEAL_KEYS_PATH).await.unwrap();
    assert!(matches!(
        seal.initialize(&barrier, 1, 1).await,
        Err(SealError::AlreadyInitialized)
    ));
    assert_eq!(physical.get(UNSEAL_KEYS_PATH).await.unwrap(), before);
    assert_eq!(seal.config().await.unwrap().unwrap().secret_shares, 3);
    unseal_with(&seal, &barrier, &[&shares[0], &shares[2]])
        .await
        .unwrap();
}

#[tokio::test]
async fn wrong_keys_are_invalid_key() {
    let (_, barrier, seal) = setup();
    assert!(matches!(
        seal.recover_root_key(&[0; 32]).await,
        Err(SealError::NotInitialized)
    ));
    seal.initialize(&barrier, 1, 1).await.unwrap();
    for key in [&[0u8; 32][..], &[1; 31], &[], &[2; 33]] {
        assert!(matches!(
            seal.recover_root_key(key).await,
            Err(SealError::InvalidKey)
        ));
    }
}

#[tokio::test]
async fn rekey_replaces_shares_and_root_key() {
    let (physical, barrier, seal) = setup();
    let old = seal.initialize(&barrier, 3, 2).await.unwrap();
    let old_refs: Vec<&[u8]> = old.iter().map(|s| &s[..]).collect();
    unseal_with(&seal, &barrier, &old_refs[..2]).await.unwrap();
    barrier.put("secret/x", b"survives".to_vec()).await.unwrap();
    let old_key = seal
        .config()
        .await
        .unwrap()
        .unwrap()
        .combine(&old_refs)
        .unwrap();

    // Wrong current key: refused, nothing changes.
    assert!(matches!(
        seal.rekey(&barrier, &[9; 32], 5, 3).await,
        Err(SealError::InvalidKey)
    ));
    let new = seal.rekey(&barrier, &old_key, 5, 3).await.unwrap();
    assert_eq!(new.len(), 5);
    assert_eq!(seal.config().await.unwrap().unwrap().secret_shares, 5);
    assert_eq!(barrier.get("secret/x").await.unwrap().unwrap(), b"survives");

    // After a restart only the new shares open the store.
    let restarted = Barrier::new(physical);
    assert!(matches!(
        unseal_with(&seal, &restarted, &old_refs).await,
        Err(SealError::InvalidKey)
    ));
    let new_refs: Vec<&[u8]> = new[2..].iter().map(|s| &s[..]).collect();
    unseal_with(&seal, &restarted, &new_refs).await.unwrap();
    assert_eq!(
        restarted.get("secret/x").await.unwrap().unwrap(),
        b"survives"
    );

    barrier.seal();
    assert!(matches!(
        seal.rekey(&barrier, &old_key, 1, 1).await,
        Err(SealError::Barrier(BarrierError::Sealed))
    ));
}

/// A store whose transactions fail on demand, as a crash before commit would.
struct FailingTxn {
    inner: InmemBackend,
    fail: AtomicBool,
}

#[async_trait]
impl Backend for FailingTxn {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StorageError> {
        self.inner.put(key, value).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.inner.list(prefix).await
    }
    async fn transaction(&self, ops: Vec<TxnOp>) -> Result<(), StorageError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StorageError::Io("injected failure".into()));
        }
        self.inner.transaction(ops).await
    }
}

#[tokio::test]
async fn failed_rekey_leaves_old_shares_working() {
    let store = Arc::new(FailingTxn {
        inner: InmemBackend::new(),
        fail: AtomicBool::new(false),
    });
    let physical: Arc<dyn Backend> = store.clone();
    let barrier = Barrier::new(physical.clone());
    let seal = Seal::new(physical.clone());
    let old = seal.initialize(&barrier, 1, 1).await.unwrap();
    unseal_with(&seal, &barrier, &[&old[0]]).await.unwrap();

    store.fail.store(true, Ordering::SeqCst);
    assert!(seal.rekey(&barrier, &old[0], 3, 2).await.is_err());
    store.fail.store(false, Ordering::SeqCst);

    assert_eq!(seal.config().await.unwrap().unwrap().secret_shares, 1);
    let restarted = Barrier::new(physical);
    unseal_with(&seal, &restarted, &[&old[0]]).await.unwrap();
    // The running barrier kept its keys too.
    barrier.put("still", b"works".to_vec()).await.unwrap();
}

#[test]
fn decode_key_accepts_hex_and_base64() {
    let bytes: Vec<u8> = (0u8..32).collect();
    assert_eq!(&decode_key(&hex::encode(&bytes)).unwrap()[..], &bytes[..]);
    assert_eq!(&decode_key(&B64.encode(&bytes)).unwrap()[..], &bytes[..]);
    assert_eq!(
        &decode_key(&format!(" {}\n", hex::encode(&bytes))).unwrap()[..],
        &bytes[..]
    );
    for bad in ["", "zz-not-a-key!", "abc"] {
        let err = decode_key(bad).unwrap_err();
        assert_eq!(
            err.to_string(),
            "'key' must be a valid hex or base64 string"
        );
    }
}

#[test]
fn errors_map_to_vault_responses() {
    use crate::error::Error;
    let check = |e: SealError, status: u16, msg: &str| {
        let e = Error::from(e);
        assert_eq!((e.status(), e.to_string().as_str()), (status, msg));
    };
    check(
        SealError::InvalidKey,
        400,
        "cipher: message authentication failed",
    );
    check(
        SealError::InvalidConfig("threshold cannot be larger than shares"),
        400,
        "invalid seal configuration: threshold cannot be larger than shares",
    );
    check(
        SealError::AlreadyInitialized,
        400,
        "Vault is already initialized",
    );
    check(SealError::NotInitialized, 400, "Vault is not initialized");
    check(
        SealError::Barrier(BarrierError::Sealed),
        503,
        "Vault is sealed",
    );
    check(
        SealError::Shamir(ShamirError::DuplicatePart),
        400,
        "failed to combine the unseal key shares: duplicate part detected",
    );
}
