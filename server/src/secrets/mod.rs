//! Secret engines: the logical backends mounted under a path such as `secret/`.
//!
//! [`kv`] is Vault's key/value engine, in its unversioned (v1) and versioned
//! (v2) forms.

pub mod kv;
