//! ACL policies: Vault's policy language (HCL or JSON) parsed into a [`Policy`] (by
//! `keyhold_config::policy`, the parser the provisioner shares), policies combined into an [`Acl`] that decides whether a token may perform an
//! operation on a path, and the [`PolicyStore`] that keeps them behind the barrier.
//!
//! The rules follow Vault (`vault/policy.go`, `vault/acl.go`, `vault/policy_store.go`)
//! as summarised in `reference/vault-api.md` §2:
//! - a request is decided by one rule only: the exact rule for the path if there is
//!   one, else the highest-priority glob (`*` suffix) or segment-wildcard (`+`) rule;
//! - the same pattern in several attached policies is merged (capabilities unioned,
//!   `deny` sticky); different patterns are never merged;
//! - `deny` beats everything, `sudo` included; no matching rule means denied.
//!
//! Deliberate differences from Vault, each stricter than Vault:
//! - a `*` anywhere but at the end of a pattern is rejected (Vault takes it literally,
//!   so such a rule silently never matches what its author meant);
//! - every parse error names its line;
//! - the text is read as HCL 2 (hcl-edit) where Vault reads HCL 1, so a key repeated in
//!   one block (which Vault deprecates) and several attributes on one line
//!   (`{ a = 1 b = 2 }`) are syntax errors, each with a hint on how to write it.
//!
//! Not implemented: identity templating (`{{identity.entity.id}}` paths are kept in the
//! policy text but never match, as in Vault for a token without an entity), control
//! groups and MFA (parsed and kept, not enforced; both are Vault Enterprise features).

mod acl;
mod store;

#[cfg(test)]
mod tests;

pub use acl::{Acl, AclRequest, AclResult};
pub use keyhold_config::policy::*;
pub use store::{is_assignable, PolicyStore, DEFAULT_POLICY, RESPONSE_WRAPPING_POLICY};
