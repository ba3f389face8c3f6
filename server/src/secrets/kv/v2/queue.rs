//! Writes to one key share a transaction. Writes to a key are serialised (its lock is held from
//! reading the metadata until the new version is stored, through the whole Raft round trip), so
//! a busy key would take one round trip per write. Instead each write joins the key's queue, and
//! whichever write takes the lock next stores every write queued by then: each gets the next
//! version in queue order, with its own check-and-set evaluated against the versions before it,
//! and all of them, with the metadata, are one `StorageView::transaction`, committed or failed
//! together. A write's answer is its own version's metadata, as if it had been alone.
//!
//! The lock is taken, and the queue drained, by a task of the write's own, so a request that goes
//! away (its client disconnected) neither strands queued writes nor cancels a transaction other
//! writes wait for.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{Map, Value};
use tokio::sync::oneshot;

use super::{check_cas, load_config, load_metadata, metadata_key, next_version, put_op, KvBackend};
use crate::error::{Error, Result};
use crate::logical::{BackendRequest, Response, StorageView};
use crate::secrets::kv::Clock;

/// Bytes of queued data taken into one transaction (at least one write is always taken): keeps
/// a transaction of large secrets well under a Raft entry's size limit.
const MAX_BATCH_BYTES: usize = 256 << 10;

struct Queued {
    data: Map<String, Value>,
    /// The request's `options` (check-and-set), as `check_cas` reads them.
    options: Map<String, Value>,
    size: usize,
    done: oneshot::Sender<Result<Response>>,
}

/// The writes of a mount waiting for their key's lock, by key.
#[derive(Default)]
pub(crate) struct WriteQueues {
    keys: Mutex<HashMap<String, Vec<Queued>>>,
}

impl WriteQueues {
    fn push(&self, key: &str, write: Queued) {
        let mut keys = self.keys.lock().expect("kv write queue lock");
        keys.entry(key.to_string()).or_default().push(write);
    }

    /// The queued writes of `key` up to [`MAX_BATCH_BYTES`], oldest first; the rest stay
    /// queued (their own tasks wait for the lock and take them).
    fn take(&self, key: &str) -> Vec<Queued> {
        let mut keys = self.keys.lock().expect("kv write queue lock");
        let Some(queue) = keys.get_mut(key) else {
            return Vec::new();
        };
        let mut size = 0;
        let count = queue
            .iter()
            .take_while(|q| {
                size += q.size;
                size <= MAX_BATCH_BYTES
            })
            .count()
            .max(1);
        let taken: Vec<Queued> = queue.drain(..count.min(queue.len())).collect();
        if queue.is_empty() {
            keys.remove(key);
        }
        taken
    }
}

/// Writes `data` as the key's next version (with whatever else is queued for the key).
pub(super) async fn write(
    kv: &KvBackend,
    req: &BackendRequest<'_>,
    key: &str,
    data: Map<String, Value>,
) -> Result<Response> {
    let mut options = Map::new();
    if let Some(o) = req.data().get("options") {
        options.insert("options".into(), o.clone());
    }
    let size = serde_json::to_vec(&data).map(|v| v.len()).unwrap_or(0);
    let (done, answer) = oneshot::channel();
    kv.queued.push(
        key,
        Queued {
            data,
            options,
            size,
            done,
        },
    );
    let lock = kv.locks.for_key(key).clone();
    let (queues, storage, clock) = (kv.queued.clone(), req.storage.clone(), kv.clock.clone());
    let key = key.to_string();
    tokio::spawn(async move {
        let _guard = lock.write_owned().await;
        let batch = queues.take(&key);
        if !batch.is_empty() {
            store(&clock, &storage, &key, batch).await;
        }
    });
    answer
        .await
        .unwrap_or_else(|_| Err(Error::internal("the write stopped before it was stored")))
}

/// Stores `batch` (writes to `key`, in order) as one transaction and answers each write.
async fn store(clock: &Clock, storage: &StorageView, key: &str, batch: Vec<Queued>) {
    let config = match load_config(storage).await {
        Ok(c) => c,
        Err(e) => return fail(batch, &e),
    };
    let mut meta = match load_metadata(storage, key).await {
        Ok(m) => m.unwrap_or_default(),
        Err(e) => return fail(batch, &e),
    };
    let mut ops = Vec::new();
    let mut answers = Vec::with_capacity(batch.len());
    let mut refused = Vec::new();
    for q in batch {
        if let Err(e) = check_cas(&q.options, &config, &meta) {
            refused.push((q.done, e));
            continue;
        }
        let before = meta.clone();
        match next_version(clock(), &config, &mut meta, key, q.data) {
            Ok((version_ops, answer)) => {
                ops.extend(version_ops);
                answers.push((q.done, answer));
            }
            Err(e) => {
                meta = before;
                refused.push((q.done, e));
            }
        }
    }
    for (done, e) in refused {
        let _ = done.send(Err(e));
    }
    if answers.is_empty() {
        return;
    }
    let stored = match put_op(metadata_key(key), &meta) {
        Ok(op) => {
            ops.push(op);
            storage.transaction(ops).await.map_err(Error::from)
        }
        Err(e) => Err(e),
    };
    for (done, answer) in answers {
        let _ = done.send(match &stored {
            Ok(()) => Ok(Response::data(answer)),
            Err(e) => Err(e.clone()),
        });
    }
}

fn fail(batch: Vec<Queued>, e: &Error) {
    for q in batch {
        let _ = q.done.send(Err(e.clone()));
    }
}
