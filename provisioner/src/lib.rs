//! `provision`: turns an environment file into a running Keyhold cluster, then operates it.
//!
//! environment file -> [`environment::load`] -> plan (diff against [`state`]) -> apply through
//! a provider ([`deploy`]): certificates ([`certs`]), files rendered from `templates/`
//! ([`render`]) and written through a [`host`], and cluster operations over the HTTP API
//! ([`cluster`], which uses `keyhold_client`). Secret zero is sealed with age ([`secrets`]).
#![forbid(unsafe_code)]

pub mod certs;
pub mod cluster;
pub mod deploy;
pub mod environment;
pub mod host;
pub mod kms;
pub mod output;
pub mod render;
pub mod secrets;
pub mod snapshots;
pub mod state;
