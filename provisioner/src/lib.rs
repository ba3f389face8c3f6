//! `provision`: turns an environment file into a running Keyhold cluster, then operates it.
//!
//! environment file -> [`environment::load`] -> [`deployment::Deployment`] (the environment
//! resolved through its [`providers::Provider`]) -> a workflow ([`workflows`]) made of steps
//! ([`steps`]) run by the [`engine`]: `plan` runs their checks, `up` checks and applies.
//! Steps reach machines through the provider's [`providers::Host`]s: certificates ([`pki`]),
//! files rendered from `templates/` ([`render`]), services; and the cluster through its HTTP
//! API ([`cluster`], over `keyhold_client`). Secret zero is sealed with age ([`secret_zero`]);
//! what was done is recorded in [`state`].
#![forbid(unsafe_code)]

pub mod aws;
pub mod cli;
pub mod cluster;
pub mod deployment;
pub mod engine;
pub mod environment;
pub mod image;
pub mod pki;
pub mod playbook;
pub mod providers;
pub mod render;
pub mod secret_zero;
pub mod state;
pub mod steps;
pub mod workflows;
