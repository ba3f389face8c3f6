//! Group commit at the proposal: the writes that arrive while earlier ones are still in Raft
//! share the next log entry, so the leader's log takes one append and one flush for all of them,
//! and each follower one append per batch, instead of one per write.
//!
//! openraft 0.9 appends each proposed entry to the leader's log on its own and waits for that
//! flush inside its core loop, so the rate of entries, not of writes, is what the disk limits.
//! One task takes the queued writes: it waits for the first, then for one of [`IN_FLIGHT`] slots
//! (while every slot is busy the queue grows), then takes everything queued behind it up to
//! `max_entry_size` into one [`WriteBatch`] and proposes it from a task of its own, so a caller
//! that goes away (a client disconnecting) never cancels a proposal others wait for. Every write
//! of the batch gets the batch's outcome: committed on a quorum and applied, or not at all (one
//! entry is applied in one sled transaction).
//!
//! The batch is the writes' operations in arrival order; each op is an absolute put or delete,
//! so applying them in order is applying the writes one after another. A snapshot restore's
//! commit is proposed alone: the state machine swaps the whole data set on it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::types::{NodeId, Raft, WriteBatch};
use super::RESTORE_COMMIT_KEY;
use crate::physical::{StorageError, TxnOp};

/// Batches in Raft at once. Two keep the pipeline busy (the leader appends the next batch while
/// the followers take the previous one); more only make smaller batches, each costing the
/// leader's core loop an append and a flush of its own. Measured with `tests/bench/run`'s
/// writes on 2 cores: 1 / 2 / 4 in flight gave 2118 / 1949 / 1802 writes/s at c=16 and
/// 3161 / 3312 / 3364 at c=64.
pub(crate) const IN_FLIGHT: usize = 2;

struct Pending {
    ops: Vec<TxnOp>,
    size: usize,
    alone: bool,
    done: oneshot::Sender<Result<(), StorageError>>,
}

/// The queue into the proposing task; the task ends when this is dropped.
pub(crate) struct Proposer {
    queue: mpsc::UnboundedSender<Pending>,
    /// The highest log index of a write this node proposed, committed and applied: Raft's
    /// metrics publish an apply a moment after `client_write` returns, and an `X-Vault-Index`
    /// taken from them could name a state before the write the response acknowledges.
    written: Arc<AtomicU64>,
}

impl Proposer {
    /// Starts the proposing task for `raft`; a batch holds at most `max_entry_size` bytes of
    /// keys and values (one write larger than that is refused before it gets here).
    pub(crate) fn spawn(raft: Raft, max_entry_size: usize) -> Proposer {
        let (queue, rx) = mpsc::unbounded_channel();
        let written = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(raft, rx, max_entry_size, written.clone()));
        Proposer { queue, written }
    }

    /// The highest log index of a write proposed here that is applied here.
    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Proposes `ops` as one atomic write (sharing an entry with others) and returns when it is
    /// committed and applied on this node, or failed.
    /// `size` is the ops' [`WriteBatch::payload_size`].
    pub(crate) async fn propose(&self, ops: Vec<TxnOp>, size: usize) -> Result<(), StorageError> {
        let alone = ops.iter().any(|op| {
            matches!(op, TxnOp::Put { key, .. } | TxnOp::Delete { key } if key == RESTORE_COMMIT_KEY)
        });
        let (done, result) = oneshot::channel();
        self.queue
            .send(Pending {
                ops,
                size,
                alone,
                done,
            })
            .map_err(|_| StorageError::Io("raft is stopped on this node".into()))?;
        result.await.unwrap_or_else(|_| {
            Err(StorageError::Io(
                "raft stopped while the write was proposed; it may or may not have been applied"
                    .into(),
            ))
        })
    }
}

async fn run(
    raft: Raft,
    mut queue: mpsc::UnboundedReceiver<Pending>,
    limit: usize,
    written: Arc<AtomicU64>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match queue.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut size = first.size;
        let mut batch = vec![first];
        if !batch[0].alone {
            while let Ok(next) = queue.try_recv() {
                if next.alone || size + next.size > limit {
                    carried = Some(next);
                    break;
                }
                size += next.size;
                batch.push(next);
            }
        }
        let raft = raft.clone();
        let written = written.clone();
        tokio::spawn(async move {
            let _slot = slot;
            commit(&raft, batch, &written).await;
        });
    }
}

async fn commit(raft: &Raft, batch: Vec<Pending>, written: &AtomicU64) {
    let mut ops = Vec::with_capacity(batch.iter().map(|p| p.ops.len()).sum());
    let mut waiters = Vec::with_capacity(batch.len());
    for p in batch {
        ops.extend(p.ops);
        waiters.push(p.done);
    }
    metrics::histogram!("keyhold.raft.proposal.writes").record(waiters.len() as f64);
    let outcome = raft.client_write(WriteBatch(ops)).await;
    if let Ok(answer) = &outcome {
        written.fetch_max(answer.log_id.index, Ordering::SeqCst);
    }
    for done in waiters {
        let result = match &outcome {
            Ok(_) => Ok(()),
            Err(e) => Err(storage_error(e)),
        };
        let _ = done.send(result);
    }
}

fn storage_error(
    e: &RaftError<NodeId, ClientWriteError<NodeId, super::types::ClusterNode>>,
) -> StorageError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            let leader = f
                .leader_node
                .as_ref()
                .map(|n| format!("{} at {}", n.name, n.api_addr));
            StorageError::NotLeader { leader }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            StorageError::Io(format!("raft write failed: {e}"))
        }
        RaftError::Fatal(e) => StorageError::Io(format!(
            "raft is stopped on this node ({e}); the write was not applied"
        )),
    }
}
