//! Workflows: what each `provision` command does, composed of steps (`up`, `plan`) or of the
//! same host and cluster operations (`down`, `unseal`, `status`, snapshots), and provider-
//! neutral: they reach machines only through the environment's provider.

pub mod certs;
pub mod down;
pub mod dr;
pub mod drill;
pub mod drill_agent;
pub mod hosts;
pub mod inspect;
pub mod inventory;
pub mod load;
pub mod snapshot;
pub mod status;
pub mod unseal;
pub mod up;
pub mod upgrade;
