//! The snapshot agent (`keyhold snapshot-agent`): takes the cluster's Raft snapshot on the
//! active node, stores it in S3, and prunes old ones. Every node runs it on a timer; only the
//! active node's run does anything.
//!
//! This part holds what needs no network: the agent's config file (`config`), the names of
//! the objects it makes (`naming`), what retention deletes (`retention`) and when a scheduled
//! agent runs (`schedule`).

mod config;
pub mod naming;
mod retention;
mod schedule;

pub use config::{
    AgentConfig, AppRoleSettings, NodeSettings, S3Settings, SnapshotSettings,
    DEFAULT_APPROLE_MOUNT, DEFAULT_NAME_PREFIX,
};
pub use naming::SnapshotObject;
pub use retention::Retention;
pub use schedule::Schedule;
