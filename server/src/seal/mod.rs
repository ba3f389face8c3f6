//! Seals: what wraps the barrier's root key while the server is sealed.

pub mod shamir;
