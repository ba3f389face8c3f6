//! The leader's lease on its quorum: how long a leader cut off from its voters may go on acting
//! as the active node.
//!
//! openraft 0.9 has no check-quorum: a leader that hears from nobody stays leader in its own
//! eyes until it sees a higher term, which a leader cut off from everyone never does. Reads are
//! answered from the local state machine, so without a lease such a node would serve reads
//! (stale once the majority elected another leader and moved on) for as long as the partition
//! lasts, and `sys/health` would call it active (the partition test measured over 30 s of
//! reads and over 90 s of "active"). Like hashicorp/raft's leader lease, a leader here holds
//! its lease while a quorum of every voter configuration answered an RPC within
//! [`RaftNode::lease_duration`] (the node itself counted); the core stops acting as active
//! the moment it lapses, and takes up the role again only by confirming leadership anew.
//!
//! Why `election_timeout_max` (1 s·m): a follower stands for election no sooner than
//! `election_timeout_max + election_timeout_min` (1.5 s·m) after the last heartbeat it
//! received, and the answer to that heartbeat reached the leader at most one RPC timeout
//! (`heartbeat_interval`, 0.2 s·m) later. So the old leader stops acting as active at most
//! 1.2 s·m after the followers last heard from it, before any of them can have been elected
//! (given clocks that run at the same rate). A shorter lease would make a loaded leader whose
//! heartbeat answers come late give up the active role needlessly.

use std::time::{Duration, Instant};

use openraft::ServerState;

use super::RaftNode;

impl RaftNode {
    /// How long after its last contact with a quorum a leader stops acting as active.
    pub fn lease_duration(&self) -> Duration {
        self.timing.election_timeout_max
    }

    /// When this leader's lease on its quorum runs out: the last time a quorum of every voter
    /// configuration (this node counted as always in contact) answered, plus
    /// [`RaftNode::lease_duration`]. `None` when this node is not the leader or a quorum never
    /// answered.
    pub fn lease_expiry(&self) -> Option<Instant> {
        let metrics = self.shared.raft.metrics();
        let m = metrics.borrow();
        if m.state != ServerState::Leader || m.current_leader != Some(self.id) {
            return None;
        }
        let contacts = self.client.last_contact();
        let now = Instant::now();
        let mut quorum_contact = now;
        for voters in m.membership_config.membership().get_joint_config() {
            let mut heard: Vec<Instant> = voters
                .iter()
                .filter_map(|id| {
                    if *id == self.id {
                        Some(now)
                    } else {
                        contacts.get(id).copied()
                    }
                })
                .collect();
            let quorum = voters.len() / 2 + 1;
            if heard.len() < quorum {
                return None;
            }
            // Most recent first: the quorum-th most recent contact is when a quorum was last
            // all in touch.
            heard.sort_unstable_by(|a, b| b.cmp(a));
            quorum_contact = quorum_contact.min(heard[quorum - 1]);
        }
        Some(quorum_contact + self.lease_duration())
    }

    /// Whether this node is the leader and its lease on a quorum has not run out.
    pub fn holds_lease(&self) -> bool {
        self.lease_expiry().is_some_and(|end| Instant::now() < end)
    }
}
