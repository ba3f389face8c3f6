//! Replicated storage: openraft over the node's sled database. Storage parts
//! first ([`log_store`], [`state_machine`], [`snapshot`]); the network and
//! the node façade follow.

pub mod log_store;
pub mod snapshot;
pub mod state_machine;
pub mod types;
