//! What a follower needs to serve reads from its own state machine: when it last heard from a
//! leader that it accepted (an append-entries or heartbeat answered with success), the commit
//! index that leader told it then, and how far it has applied.
//!
//! openraft 0.9 keeps no "last contact with the leader" on a follower, so the cluster listener
//! records it ([`LeaderContact::record`]) as it answers each append: a success means the sender
//! is the leader of a term this node accepts. The core serves a standby read only while that
//! contact is recent (`standby_read_max_staleness`) and this node has applied everything the
//! leader had told it was committed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::RaftNode;

/// The last accepted contact from the leader.
#[derive(Debug, Default)]
pub struct LeaderContact {
    last: Mutex<Option<Contact>>,
}

/// One accepted append-entries request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contact {
    pub at: Instant,
    /// The leader's commit index carried by that request.
    pub leader_commit: u64,
}

impl LeaderContact {
    pub(crate) fn record(&self, leader_commit: u64) {
        let mut last = self.last.lock().expect("leader contact lock");
        let leader_commit = last.map_or(leader_commit, |c| c.leader_commit.max(leader_commit));
        *last = Some(Contact {
            at: Instant::now(),
            leader_commit,
        });
    }

    pub fn last(&self) -> Option<Contact> {
        *self.last.lock().expect("leader contact lock")
    }
}

impl RaftNode {
    /// The last accepted contact from a leader, while this node is a follower or learner.
    pub fn leader_contact(&self) -> Option<Contact> {
        if self.is_leader() {
            return None;
        }
        self.contact.last()
    }

    /// The highest log index applied to this node's state machine as far as is known: Raft's
    /// metrics (published a moment after each apply), or the last write this node proposed,
    /// whichever is further (a write's answer must name an index that includes it).
    pub fn applied_index(&self) -> u64 {
        let published = self
            .shared
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index);
        published.max(self.shared.proposer.written())
    }

    /// Waits at most `timeout` until this node has applied `index`; true when it has.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        if self.applied_index() >= index {
            return true;
        }
        if timeout.is_zero() {
            return false;
        }
        self.shared
            .raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "standby read")
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commit_index_never_goes_back() {
        let contact = LeaderContact::default();
        assert_eq!(contact.last(), None);
        contact.record(7);
        contact.record(5);
        let last = contact.last().unwrap();
        assert_eq!(last.leader_commit, 7);
        contact.record(9);
        assert_eq!(contact.last().unwrap().leader_commit, 9);
    }
}
