//! `provision`: turns an environment file into a running Keyhold cluster, then operates it.
//!
//! environment file -> [`environment::load`] -> plan (diff against [`state`]) -> apply through
//! a provider: certificates ([`certs`]), files rendered from `templates/` ([`render`]), and
//! cluster operations over the HTTP API (`keyhold::client`). Secret zero is sealed with age
//! ([`secrets`]).
#![forbid(unsafe_code)]

pub mod certs;
pub mod environment;
pub mod render;
pub mod secrets;
pub mod state;
