//! Where the server reads the wall-clock time when the answer depends on it (token expiry,
//! KV v2's automatic deletion).
//!
//! The active node reads its own clock. A standby serving reads reads the active node's,
//! carried by each append the leader sends ([`crate::raft::RaftNode::leader_clock`]): a
//! standby whose clock jumped must neither refuse a live token nor accept an expired one.

use std::sync::Arc;

use chrono::{DateTime, Utc};

/// A source of the current time; tests substitute a clock they can move.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// This machine's wall clock.
pub fn system() -> Clock {
    Arc::new(Utc::now)
}
