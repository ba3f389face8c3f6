//! Barrier tests: round trips, tamper detection, seal/unseal, rotation, rekey, standby reload.

use std::sync::Arc;

use aes_gcm::aead::Aead;
use aes_gcm::Nonce;
use proptest::prelude::*;

use super::*;
use crate::physical::inmem::InmemBackend;

async fn unsealed() -> (Arc<InmemBackend>, Barrier, RootKey) {
    let physical = Arc::new(InmemBackend::new());
    let barrier = Barrier::new(physical.clone());
    let root = RootKey::generate();
    barrier.initialize(&root).await.unwrap();
    barrier.unseal(&root).await.unwrap();
    (physical, barrier, root)
}

fn is_integrity(r: Result<Option<Vec<u8>>, StorageError>, path: &str) -> bool {
    matches!(r, Err(StorageError::Integrity { key }) if key == path)
}

#[tokio::test]
async fn round_trip_and_ciphertext_at_rest() {
    let (physical, barrier, _) = unsealed().await;
    barrier
        .put("secret/a", b"plaintext!".to_vec())
        .await
        .unwrap();
    assert_eq!(
        barrier.get("secret/a").await.unwrap().unwrap(),
        b"plaintext!"
    );
    assert_eq!(barrier.get("secret/none").await.unwrap(), None);

    let raw = physical.get("secret/a").await.unwrap().unwrap();
    assert_eq!(&raw[..5], &[0, 0, 0, 1, 2], "term 1, version 2");
    assert_eq!(raw.len(), 4 + 1 + 12 + 10 + 16);
    assert!(!raw.windows(10).any(|w| w == b"plaintext!"));

    barrier.delete("secret/a").await.unwrap();
    assert_eq!(barrier.get("secret/a").await.unwrap(), None);
}

#[tokio::test]
async fn tampering_is_an_integrity_error() {
    let (physical, barrier, _) = unsealed().await;
    barrier.put("p/one", b"value one".to_vec()).await.unwrap();
    barrier.put("p/two", b"value two".to_vec()).await.unwrap();
    let one = physical.get("p/one").await.unwrap().unwrap();
    let two = physical.get("p/two").await.unwrap().unwrap();

    // Every byte: term, version, nonce, ciphertext and tag.
    for i in 0..one.len() {
        let mut bad = one.clone();
        bad[i] ^= 0x01;
        physical.put("p/one", bad).await.unwrap();
        assert!(
            is_integrity(barrier.get("p/one").await, "p/one"),
            "byte {i}"
        );
    }
    for len in [0, 3, 16, one.len() - 1] {
        physical.put("p/one", one[..len].to_vec()).await.unwrap();
        assert!(
            is_integrity(barrier.get("p/one").await, "p/one"),
            "len {len}"
        );
    }
    // A valid ciphertext moved to another path fails: the path is the AAD.
    physical.put("p/one", two).await.unwrap();
    assert!(is_integrity(barrier.get("p/one").await, "p/one"));
    // Unknown term and term 0 (outside the keyring).
    for term in [0u32, 7] {
        let mut bad = one.clone();
        bad[..4].copy_from_slice(&term.to_be_bytes());
        physical.put("p/one", bad).await.unwrap();
        assert!(is_integrity(barrier.get("p/one").await, "p/one"));
    }
    // A plaintext value that was never encrypted.
    physical
        .put("p/one", b"{\"not\":\"encrypted\"}".to_vec())
        .await
        .unwrap();
    assert!(is_integrity(barrier.get("p/one").await, "p/one"));
    // The keyring itself does not read through the data path.
    assert!(is_integrity(barrier.get(KEYRING_PATH).await, KEYRING_PATH));
}

#[tokio::test]
async fn version_1_values_still_decrypt() {
    let (physical, barrier, _) = unsealed().await;
    let ring = barrier.current().unwrap();
    let nonce = [5u8; 12];
    let body = ring
        .term(1)
        .unwrap()
        .cipher
        .encrypt(Nonce::from_slice(&nonce), &b"legacy"[..])
        .unwrap();
    let mut value = vec![0, 0, 0, 1, layout::VERSION_1];
    value.extend_from_slice(&nonce);
    value.extend_from_slice(&body);
    physical.put("old/entry", value).await.unwrap();
    assert_eq!(barrier.get("old/entry").await.unwrap().unwrap(), b"legacy");
}

#[tokio::test]
async fn lifecycle_init_seal_unseal() {
    let physical = Arc::new(InmemBackend::new());
    let barrier = Barrier::new(physical.clone());
    let root = RootKey::generate();
    assert!(!barrier.initialized().await.unwrap());
    assert!(matches!(
        barrier.unseal(&root).await,
        Err(BarrierError::NotInitialized)
    ));
    barrier.initialize(&root).await.unwrap();
    assert!(barrier.initialized().await.unwrap());
    assert!(barrier.is_sealed(), "initialize leaves the barrier sealed");
    assert!(matches!(
        barrier.initialize(&RootKey::generate()).await,
        Err(BarrierError::AlreadyInitialized)
    ));
    assert!(matches!(barrier.get("x").await, Err(StorageError::Sealed)));
    assert!(matches!(
        barrier.put("x", vec![1]).await,
        Err(StorageError::Sealed)
    ));
    assert!(matches!(barrier.list("").await, Err(StorageError::Sealed)));
    assert!(matches!(
        barrier.delete("x").await,
        Err(StorageError::Sealed)
    ));
    assert!(matches!(
        barrier.transaction(vec![]).await,
        Err(StorageError::Sealed)
    ));
    assert!(matches!(barrier.key_status(), Err(BarrierError::Sealed)));
    assert!(matches!(barrier.rotate().await, Err(BarrierError::Sealed)));

    assert!(matches!(
        barrier.unseal(&RootKey::generate()).await,
        Err(BarrierError::InvalidRootKey)
    ));
    assert!(barrier.is_sealed());
    barrier.unseal(&root).await.unwrap();
    assert!(!barrier.is_sealed());
    barrier.put("x", b"1".to_vec()).await.unwrap();

    barrier.seal();
    assert!(barrier.is_sealed());
    assert!(matches!(barrier.get("x").await, Err(StorageError::Sealed)));

    // A fresh barrier over the same store (a restart) opens with the same key.
    let restarted = Barrier::new(physical);
    restarted.unseal(&root).await.unwrap();
    assert_eq!(restarted.get("x").await.unwrap().unwrap(), b"1");
}

#[tokio::test]
async fn rotate_keeps_old_terms_readable() {
    let (physical, barrier, root) = unsealed().await;
    barrier.put("a", b"under term 1".to_vec()).await.unwrap();
    let status = barrier.rotate().await.unwrap();
    assert_eq!(status.term, 2);
    assert_eq!(barrier.key_status().unwrap().term, 2);
    barrier.put("b", b"under term 2".to_vec()).await.unwrap();
    assert_eq!(
        &physical.get("a").await.unwrap().unwrap()[..4],
        &[0, 0, 0, 1]
    );
    assert_eq!(
        &physical.get("b").await.unwrap().unwrap()[..4],
        &[0, 0, 0, 2]
    );
    assert_eq!(
        &physical.get(ROOT_KEY_PATH).await.unwrap().unwrap()[..4],
        &[0, 0, 0, 2]
    );

    assert_eq!(barrier.rotate().await.unwrap().term, 3);
    barrier.seal();
    barrier.unseal(&root).await.unwrap();
    assert_eq!(
        barrier.key_status().unwrap().term,
        3,
        "rotation was persisted"
    );
    assert_eq!(barrier.get("a").await.unwrap().unwrap(), b"under term 1");
    assert_eq!(barrier.get("b").await.unwrap().unwrap(), b"under term 2");
}

#[tokio::test]
async fn key_status_counts_encryptions() {
    let (_, barrier, root) = unsealed().await;
    let before = barrier.key_status().unwrap();
    assert_eq!(before.term, 1);
    for i in 0..3 {
        barrier.put(&format!("k{i}"), vec![i]).await.unwrap();
    }
    barrier
        .transaction(vec![
            TxnOp::Put {
                key: "t1".into(),
                value: vec![1],
            },
            TxnOp::Put {
                key: "t2".into(),
                value: vec![2],
            },
            TxnOp::Delete { key: "k0".into() },
        ])
        .await
        .unwrap();
    let after = barrier.key_status().unwrap();
    assert_eq!(after.encryptions, before.encryptions + 5);
    assert_eq!(after.install_time, before.install_time);

    // Counts reach storage with the next keyring write.
    let new_root = RootKey::generate();
    barrier.rekey(&new_root).await.unwrap();
    barrier.seal();
    barrier.unseal(&new_root).await.unwrap();
    assert!(barrier.key_status().unwrap().encryptions >= after.encryptions);
    drop(root);

    let json = serde_json::to_value(barrier.key_status().unwrap()).unwrap();
    let obj = json.as_object().unwrap();
    assert_eq!(obj.len(), 3);
    assert_eq!(obj["term"], 1);
    assert!(obj["encryptions"].is_u64());
    let time = obj["install_time"].as_str().unwrap();
    assert!(DateTime::parse_from_rfc3339(time).is_ok(), "{time}");
}

#[tokio::test]
async fn rekey_replaces_the_root_key() {
    let (physical, barrier, old_root) = unsealed().await;
    barrier.put("data", b"kept".to_vec()).await.unwrap();
    let new_root = RootKey::generate();
    barrier.rekey(&new_root).await.unwrap();
    assert!(barrier.root_key_matches(&new_root).unwrap());
    assert_eq!(barrier.get("data").await.unwrap().unwrap(), b"kept");

    let restarted = Barrier::new(physical);
    assert!(matches!(
        restarted.unseal(&old_root).await,
        Err(BarrierError::InvalidRootKey)
    ));
    restarted.unseal(&new_root).await.unwrap();
    assert_eq!(restarted.get("data").await.unwrap().unwrap(), b"kept");
}

#[tokio::test]
async fn standby_follows_rotation_and_rekey() {
    let (physical, active, root) = unsealed().await;
    let standby = Barrier::new(physical.clone());
    standby.unseal(&root).await.unwrap();

    active.rotate().await.unwrap();
    active.put("new", b"term 2".to_vec()).await.unwrap();
    assert!(
        is_integrity(standby.get("new").await, "new"),
        "term 2 unknown yet"
    );
    standby.reload_keyring().await.unwrap();
    assert_eq!(standby.get("new").await.unwrap().unwrap(), b"term 2");
    assert_eq!(standby.key_status().unwrap().term, 2);

    // After a rekey the standby's root key no longer opens core/keyring; it
    // reads the new one from core/root-key.
    let new_root = RootKey::generate();
    active.rekey(&new_root).await.unwrap();
    standby.reload_keyring().await.unwrap();
    assert!(standby.root_key_matches(&new_root).unwrap());

    standby.seal();
    assert!(matches!(
        standby.reload_keyring().await,
        Err(BarrierError::Sealed)
    ));
}

#[tokio::test]
async fn seal_wins_over_an_inflight_install() {
    let (_, barrier, _) = unsealed().await;
    let seen = barrier.current().unwrap();
    let next = seen.rotated().unwrap();
    barrier.seal();
    assert!(matches!(
        barrier.install_if_current(&seen, next),
        Err(BarrierError::Sealed)
    ));
    assert!(barrier.is_sealed());
}

#[tokio::test]
async fn reserved_paths_refused() {
    let (_, barrier, _) = unsealed().await;
    for key in [
        KEYRING_PATH,
        ROOT_KEY_PATH,
        "core/seal-config",
        "core/hsm/barrier-unseal-keys",
        "core/upgrade/1",
    ] {
        assert!(
            matches!(
                barrier.put(key, vec![1]).await,
                Err(StorageError::InvalidKey { .. })
            ),
            "{key}"
        );
        assert!(matches!(
            barrier.delete(key).await,
            Err(StorageError::InvalidKey { .. })
        ));
    }
    assert!(matches!(
        barrier
            .transaction(vec![
                TxnOp::Put {
                    key: "fine".into(),
                    value: vec![]
                },
                TxnOp::Delete {
                    key: KEYRING_PATH.into()
                }
            ])
            .await,
        Err(StorageError::InvalidKey { .. })
    ));
    assert_eq!(barrier.get("fine").await.unwrap(), None, "nothing applied");
    barrier.put("core/mounts", vec![1]).await.unwrap();
}

#[test]
fn root_key_rules_and_redaction() {
    assert!(RootKey::from_bytes(&[1; 31]).is_err());
    assert!(RootKey::from_bytes(&[1; 33]).is_err());
    let key = RootKey::from_bytes(&[0xAB; 32]).unwrap();
    assert_eq!(key.as_bytes(), &[0xAB; 32]);
    let dbg = format!("{key:?}");
    assert_eq!(dbg, "RootKey(<redacted>)");
    assert!(key.ct_eq(&key.clone()));
    assert!(!key.ct_eq(&RootKey::generate()));
    let barrier = Barrier::new(Arc::new(InmemBackend::new()));
    assert!(format!("{barrier:?}").contains("sealed: true"));
}

#[test]
fn errors_map_to_vault_responses() {
    use crate::error::Error;
    let check = |e: BarrierError, status: u16, msg: &str| {
        let e = Error::from(e);
        assert_eq!(e.status(), status);
        assert_eq!(e.to_string(), msg);
    };
    check(BarrierError::Sealed, 503, "Vault is sealed");
    check(
        BarrierError::InvalidRootKey,
        400,
        "Unseal failed, invalid key",
    );
    check(
        BarrierError::NotInitialized,
        400,
        "Vault is not initialized",
    );
    check(
        BarrierError::AlreadyInitialized,
        400,
        "Vault is already initialized",
    );
    check(
        BarrierError::Storage(StorageError::Sealed),
        503,
        "Vault is sealed",
    );
    check(
        BarrierError::Corrupt("x".into()),
        500,
        "barrier keyring is corrupt: x",
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn round_trips_any_path_and_value(
        entries in proptest::collection::btree_map(
            "[a-z0-9_./-]{1,40}",
            proptest::collection::vec(any::<u8>(), 0..2048),
            1..8,
        ),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let (_, barrier, _) = unsealed().await;
            for (k, v) in &entries {
                barrier.put(k, v.clone()).await.unwrap();
            }
            barrier.rotate().await.unwrap();
            for (k, v) in &entries {
                prop_assert_eq!(&barrier.get(k).await.unwrap().unwrap(), v);
            }
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn sealed_values_open_only_at_their_path_and_only_unsealed() {
    let (physical, barrier, root) = unsealed().await;
    let sealed = barrier.seal_value("core/raft/challenge", b"nonce").unwrap();
    assert_eq!(
        barrier
            .open_value("core/raft/challenge", &sealed)
            .unwrap()
            .as_slice(),
        b"nonce"
    );
    assert!(matches!(
        barrier.open_value("core/raft/other", &sealed),
        Err(StorageError::Integrity { .. })
    ));
    let mut flipped = sealed.clone();
    *flipped.last_mut().unwrap() ^= 1;
    assert!(matches!(
        barrier.open_value("core/raft/challenge", &flipped),
        Err(StorageError::Integrity { .. })
    ));
    // Nothing was stored.
    assert_eq!(physical.get("core/raft/challenge").await.unwrap(), None);
    // Another barrier over the same keys opens it (a joiner that holds them).
    let other = Barrier::new(physical.clone());
    other.unseal(&root).await.unwrap();
    assert_eq!(
        other
            .open_value("core/raft/challenge", &sealed)
            .unwrap()
            .as_slice(),
        b"nonce"
    );
    barrier.seal();
    assert!(matches!(
        barrier.open_value("core/raft/challenge", &sealed),
        Err(StorageError::Sealed)
    ));
}
