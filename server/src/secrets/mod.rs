//! Secret engines: the logical backends mounted under a path such as `secret/`.
//!
//! [`kv`] is Vault's key/value engine, in its unversioned (v1) and versioned
//! (v2) forms. [`transit`] is Vault's encryption-as-a-service engine: named
//! AEAD keys with versions, and `vault:vN:` ciphertexts.

mod key_locks;
pub mod kv;
pub mod transit;
