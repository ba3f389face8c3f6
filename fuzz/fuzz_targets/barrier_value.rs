//! The barrier's value decoders, through the real `Barrier` over the in-memory backend with a
//! fixed root key. Each input is (1) a stored value: reading it through the barrier, and opening
//! it as a sealed value, is an integrity error and never a panic (it cannot be ciphertext under
//! the key); and (2) the plaintext of `core/keyring`, encrypted under the root key: unsealing
//! with it either works or fails with a clear error, and a keyring that opens serves a write and
//! a read, and rotates.
#![no_main]

use std::sync::{Arc, OnceLock};

use keyhold::barrier::{Barrier, BarrierError, RootKey, KEYRING_PATH};
use keyhold::fuzzing::seal_keyring;
use keyhold::physical::inmem::InmemBackend;
use keyhold::physical::{Backend, StorageError};
use libfuzzer_sys::fuzz_target;

const ROOT_KEY: [u8; 32] = [7; 32];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let root = RootKey::from_bytes(&ROOT_KEY).unwrap();
    runtime().block_on(async {
        let physical = Arc::new(InmemBackend::new());
        let barrier = Barrier::new(physical.clone());
        barrier.initialize(&root).await.unwrap();
        barrier.unseal(&root).await.unwrap();

        physical
            .put("logical/fuzz/value", data.to_vec())
            .await
            .unwrap();
        match barrier.get("logical/fuzz/value").await {
            Err(StorageError::Integrity { .. }) => {}
            other => panic!("arbitrary bytes read through the barrier: {other:?}"),
        }
        assert!(barrier.open_value("logical/fuzz/value", data).is_err());

        let physical = Arc::new(InmemBackend::new());
        physical
            .put(KEYRING_PATH, seal_keyring(&root, data))
            .await
            .unwrap();
        let barrier = Barrier::new(physical);
        match barrier.unseal(&root).await {
            Ok(()) => {
                barrier
                    .put("logical/fuzz/x", b"value".to_vec())
                    .await
                    .unwrap();
                let back = barrier.get("logical/fuzz/x").await.unwrap();
                assert_eq!(back.as_deref(), Some(&b"value"[..]));
                match barrier.rotate().await {
                    Ok(status) => assert!(status.term > 0),
                    Err(BarrierError::Corrupt(_)) => {}
                    Err(e) => panic!("rotating a keyring that opened: {e}"),
                }
                assert_eq!(
                    barrier.get("logical/fuzz/x").await.unwrap().as_deref(),
                    Some(&b"value"[..])
                );
            }
            Err(BarrierError::Corrupt(msg)) => assert!(!msg.is_empty()),
            Err(e) => panic!("a keyring under the right key refused with {e}"),
        }
    });
});
