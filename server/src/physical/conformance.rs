//! The storage conformance suite: what every [`Backend`] (inmem, sled, the barrier) must do alike.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{Backend, TxnOp};

/// Runs every check against `backend`, which must start empty.
pub(crate) async fn run_all(backend: Arc<dyn Backend>) {
    crud(&*backend).await;
    values(&*backend).await;
    list(&*backend).await;
    transactions(&*backend).await;
    transaction_is_never_seen_half_done(backend.clone()).await;
}

fn put(key: &str, value: &[u8]) -> TxnOp {
    TxnOp::Put {
        key: key.into(),
        value: value.to_vec(),
    }
}

fn del(key: &str) -> TxnOp {
    TxnOp::Delete { key: key.into() }
}

async fn crud(b: &dyn Backend) {
    assert_eq!(b.get("crud/k").await.unwrap(), None);
    b.put("crud/k", b"v1".to_vec()).await.unwrap();
    assert_eq!(b.get("crud/k").await.unwrap().unwrap(), b"v1");
    b.put("crud/k", b"v2".to_vec()).await.unwrap();
    assert_eq!(b.get("crud/k").await.unwrap().unwrap(), b"v2", "overwrite");
    b.delete("crud/k").await.unwrap();
    assert_eq!(b.get("crud/k").await.unwrap(), None);
    b.delete("crud/k").await.unwrap(); // deleting nothing is fine
    b.delete("crud/never").await.unwrap();
    assert_eq!(b.list("crud/").await.unwrap(), Vec::<String>::new());
}

async fn values(b: &dyn Backend) {
    let binary: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let large: Vec<u8> = (0..2 * 1024 * 1024u32)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let cases: &[(&str, &[u8])] = &[
        ("values/empty", b""),
        ("values/binary", &binary),
        ("values/large", &large),
        ("values/sp ace/ünïcode", "ünïcode ✓".as_bytes()),
    ];
    for (key, value) in cases {
        b.put(key, value.to_vec()).await.unwrap();
    }
    for (key, value) in cases {
        assert_eq!(&b.get(key).await.unwrap().unwrap()[..], *value, "{key}");
    }
    for (key, _) in cases {
        b.delete(key).await.unwrap();
    }
}

async fn list(b: &dyn Backend) {
    for key in ["l/a", "l/b/c", "l/b/d/e", "l/b/d/f", "l/bb", "l/b0", "lz"] {
        b.put(key, b"x".to_vec()).await.unwrap();
    }
    let cases: &[(&str, &[&str])] = &[
        // Folders once, with a trailing '/', sorted with the plain keys.
        ("l/", &["a", "b/", "b0", "bb"]),
        ("l/b/", &["c", "d/"]),
        ("l/b/d/", &["e", "f"]),
        ("l/nope/", &[]),
        // A prefix not ending in '/' matches partial names, as in Vault.
        ("l/b", &["/", "0", "b"]),
        ("l", &["/", "z"]),
    ];
    for (prefix, want) in cases {
        assert_eq!(b.list(prefix).await.unwrap(), *want, "list({prefix:?})");
    }
    let root = b.list("").await.unwrap();
    assert!(
        root.contains(&"l/".to_string()) && root.contains(&"lz".to_string()),
        "{root:?}"
    );
    let mut sorted = root.clone();
    sorted.sort();
    assert_eq!(root, sorted);
    for key in ["l/a", "l/b/c", "l/b/d/e", "l/b/d/f", "l/bb", "l/b0", "lz"] {
        b.delete(key).await.unwrap();
    }
}

async fn transactions(b: &dyn Backend) {
    b.put("t/old", b"old".to_vec()).await.unwrap();
    b.put("t/rewrite", b"before".to_vec()).await.unwrap();
    b.transaction(vec![
        put("t/a", b"1"),
        put("t/b", b"2"),
        del("t/old"),
        put("t/rewrite", b"after"),
        // Later operations on one key win, as if applied in order.
        put("t/gone", b"briefly"),
        del("t/gone"),
        del("t/back"),
        put("t/back", b"here"),
    ])
    .await
    .unwrap();
    assert_eq!(b.get("t/a").await.unwrap().unwrap(), b"1");
    assert_eq!(b.get("t/b").await.unwrap().unwrap(), b"2");
    assert_eq!(b.get("t/old").await.unwrap(), None);
    assert_eq!(b.get("t/rewrite").await.unwrap().unwrap(), b"after");
    assert_eq!(b.get("t/gone").await.unwrap(), None);
    assert_eq!(b.get("t/back").await.unwrap().unwrap(), b"here");
    b.transaction(vec![]).await.unwrap();
    b.transaction(["t/a", "t/b", "t/rewrite", "t/back"].map(del).to_vec())
        .await
        .unwrap();
    assert_eq!(b.list("t/").await.unwrap(), Vec::<String>::new());
}

/// A reader racing a transaction sees none of it or all of it.
async fn transaction_is_never_seen_half_done(b: Arc<dyn Backend>) {
    const N: usize = 50;
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (b, done) = (b.clone(), done.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let finished = done.load(Ordering::SeqCst);
                seen.push(b.list("atomic/").await.unwrap().len());
                if finished {
                    return seen;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let ops = (0..N)
        .map(|i| put(&format!("atomic/{i:03}"), b"v"))
        .collect();
    b.transaction(ops).await.unwrap();
    done.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();
    assert!(seen.iter().all(|&n| n == 0 || n == N), "{seen:?}");
    assert_eq!(seen.last(), Some(&N));
    b.transaction((0..N).map(|i| del(&format!("atomic/{i:03}"))).collect())
        .await
        .unwrap();
}

mod run {
    use super::*;
    use crate::barrier::{Barrier, RootKey};
    use crate::physical::inmem::InmemBackend;
    use crate::physical::sled_store::SledStore;

    async fn unsealed_barrier(physical: Arc<dyn Backend>) -> Arc<dyn Backend> {
        let barrier = Barrier::new(physical);
        let root = RootKey::generate();
        barrier.initialize(&root).await.unwrap();
        barrier.unseal(&root).await.unwrap();
        Arc::new(barrier)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inmem() {
        run_all(Arc::new(InmemBackend::new())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sled() {
        let dir = tempfile::tempdir().unwrap();
        run_all(Arc::new(SledStore::open(dir.path()).unwrap())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn barrier_over_inmem() {
        run_all(unsealed_barrier(Arc::new(InmemBackend::new())).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn barrier_over_sled() {
        let dir = tempfile::tempdir().unwrap();
        let sled = Arc::new(SledStore::open(dir.path()).unwrap());
        run_all(unsealed_barrier(sled).await).await;
    }
}
