//! What a follower needs to serve reads from its own state machine: when it last heard from a
//! leader that it accepted (an append-entries or heartbeat answered with success), the commit
//! index that leader told it then, and how far it has applied.
//!
//! openraft 0.9 keeps no "last contact with the leader" on a follower, so the cluster listener
//! records it ([`LeaderContact::record`]) as it answers each append: a success means the sender
//! is the leader of a term this node accepts. The core serves a standby read only while that
//! contact is recent (`standby_read_max_staleness`) and this node has applied everything the
//! leader had told it was committed.
//!
//! The leader's clock: each RPC carries its sender's wall-clock time (`x-keyhold-sent-at`). A
//! standby reads "now" as the leader's time at the last accepted append plus what its own
//! monotonic clock measured since that append arrived ([`RaftNode::leader_clock`]), so a jump
//! of the standby's wall clock changes nothing, and the error is the append's one-way delay
//! (the standby serves only within the staleness bound of that append).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};

use super::RaftNode;
use crate::clock::Clock;

/// The last accepted contact from the leader.
#[derive(Debug, Default)]
pub struct LeaderContact {
    last: Mutex<Option<Contact>>,
}

/// One accepted append-entries request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contact {
    /// When it arrived here.
    pub at: Instant,
    /// The leader's commit index carried by that request.
    pub leader_commit: u64,
    /// The leader's wall-clock time when it sent the request (Unix milliseconds); `None` from
    /// a leader of a version that does not send it.
    pub leader_time_ms: Option<i64>,
}

impl Contact {
    /// The leader's time now, as this node reckons it: the leader's time at this contact plus
    /// the time since it arrived, measured on this node's monotonic clock.
    pub fn leader_now(&self) -> Option<DateTime<Utc>> {
        let elapsed = i64::try_from(self.at.elapsed().as_millis()).ok()?;
        Utc.timestamp_millis_opt(self.leader_time_ms?.checked_add(elapsed)?)
            .single()
    }
}

impl LeaderContact {
    pub(crate) fn record(&self, leader_commit: u64, at: Instant, leader_time_ms: Option<i64>) {
        let mut last = self.last.lock().expect("leader contact lock");
        let leader_commit = last.map_or(leader_commit, |c| c.leader_commit.max(leader_commit));
        *last = Some(Contact {
            at,
            leader_commit,
            leader_time_ms,
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

    /// The active node's clock as this node last heard it ([`Contact::leader_now`]), for a
    /// standby's token store and mounts. Before any contact (or from a leader that does not
    /// send its time) it reads this machine's clock; a standby serves no reads then.
    pub fn leader_clock(&self) -> Clock {
        let contact = Arc::clone(&self.contact);
        Arc::new(move || {
            contact
                .last()
                .and_then(|c| c.leader_now())
                .unwrap_or_else(Utc::now)
        })
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
        contact.record(7, Instant::now(), None);
        contact.record(5, Instant::now(), None);
        let last = contact.last().unwrap();
        assert_eq!(last.leader_commit, 7);
        contact.record(9, Instant::now(), None);
        assert_eq!(contact.last().unwrap().leader_commit, 9);
    }

    #[test]
    fn the_leaders_time_advances_by_this_nodes_monotonic_clock() {
        let contact = LeaderContact::default();
        // The leader an hour behind this machine, its append arrived 1.5 s ago.
        let leader_then_ms = (Utc::now() - chrono::Duration::hours(1)).timestamp_millis();
        let arrived = Instant::now() - Duration::from_millis(1500);
        contact.record(1, arrived, Some(leader_then_ms));
        let now = contact.last().unwrap().leader_now().unwrap();
        let ahead = now.timestamp_millis() - leader_then_ms;
        assert!((1500..1500 + 1000).contains(&ahead), "{ahead} ms");
        // Without the leader's time there is no leader clock.
        contact.record(2, Instant::now(), None);
        assert_eq!(contact.last().unwrap().leader_now(), None);
    }
}
