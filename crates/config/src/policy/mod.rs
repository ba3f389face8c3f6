//! ACL policies: Vault's policy language (HCL or JSON) parsed into a [`Policy`]. The server
//! combines policies into an ACL and keeps them behind its barrier; the provisioner parses the
//! policies of an environment file with this same parser before it sends them anywhere.
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

mod error;
mod parse;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

pub use error::PolicyError;
pub use parse::parse;

/// The name of the built-in policy that allows everything.
pub const ROOT_POLICY_NAME: &str = "root";
/// The name of the policy attached to every token unless `no_default_policy`.
pub const DEFAULT_POLICY_NAME: &str = "default";

/// A set of capabilities, as Vault's capability bitmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities(u32);

impl Capabilities {
    pub const NONE: Capabilities = Capabilities(0);
    pub const DENY: Capabilities = Capabilities(1 << 0);
    pub const CREATE: Capabilities = Capabilities(1 << 1);
    pub const READ: Capabilities = Capabilities(1 << 2);
    pub const UPDATE: Capabilities = Capabilities(1 << 3);
    pub const DELETE: Capabilities = Capabilities(1 << 4);
    pub const LIST: Capabilities = Capabilities(1 << 5);
    pub const SUDO: Capabilities = Capabilities(1 << 6);
    pub const PATCH: Capabilities = Capabilities(1 << 7);
    pub const SUBSCRIBE: Capabilities = Capabilities(1 << 8);
    pub const RECOVER: Capabilities = Capabilities(1 << 9);

    /// Every capability with its name, in Vault's bit order.
    const NAMED: [(Capabilities, &'static str); 10] = [
        (Capabilities::DENY, "deny"),
        (Capabilities::CREATE, "create"),
        (Capabilities::READ, "read"),
        (Capabilities::UPDATE, "update"),
        (Capabilities::DELETE, "delete"),
        (Capabilities::LIST, "list"),
        (Capabilities::SUDO, "sudo"),
        (Capabilities::PATCH, "patch"),
        (Capabilities::SUBSCRIBE, "subscribe"),
        (Capabilities::RECOVER, "recover"),
    ];

    /// The capability a policy spells `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Capabilities> {
        Self::NAMED
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(cap, _)| *cap)
    }

    pub fn contains(self, other: Capabilities) -> bool {
        other.0 != 0 && self.0 & other.0 == other.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn is_deny(self) -> bool {
        self.contains(Capabilities::DENY)
    }

    /// The single capabilities in this set, in Vault's bit order.
    pub fn iter(self) -> impl Iterator<Item = Capabilities> {
        Self::NAMED
            .into_iter()
            .map(|(cap, _)| cap)
            .filter(move |cap| self.contains(*cap))
    }

    /// The names in this set, sorted alphabetically as `sys/capabilities` returns
    /// them; `["deny"]` for a deny rule or an empty set (Vault's answer for both).
    pub fn names(self) -> Vec<String> {
        if self.is_deny() || self.is_empty() {
            return vec!["deny".to_string()];
        }
        let mut names: Vec<String> = Self::NAMED
            .iter()
            .filter(|(cap, _)| self.contains(*cap))
            .map(|(_, name)| name.to_string())
            .collect();
        names.sort();
        names
    }
}

impl std::ops::BitOr for Capabilities {
    type Output = Capabilities;
    fn bitor(self, rhs: Capabilities) -> Capabilities {
        Capabilities(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for Capabilities {
    fn bitor_assign(&mut self, rhs: Capabilities) {
        self.0 |= rhs.0
    }
}

/// How a path pattern matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternKind {
    /// No glob: the request path must be equal.
    Exact,
    /// Ends in `*` and has no `+` segment: the request path must start with the stem.
    Prefix,
    /// Has a `+` segment (one path segment), possibly also ending in `*`.
    SegmentWildcard,
}

/// One `path "<pattern>" { ... }` stanza.
#[derive(Debug, Clone, PartialEq)]
pub struct PathRules {
    /// The pattern as written, without a leading `/` (e.g. `secret/+/config*`).
    pub pattern: String,
    pub kind: PatternKind,
    pub capabilities: Capabilities,
    /// Parameter name (lower-cased) -> allowed values; an empty list allows any value,
    /// the key `*` allows any parameter.
    pub allowed_parameters: BTreeMap<String, Vec<serde_json::Value>>,
    /// Parameter name (lower-cased) -> denied values; an empty list denies any value,
    /// the key `*` denies every parameter.
    pub denied_parameters: BTreeMap<String, Vec<serde_json::Value>>,
    pub required_parameters: Vec<String>,
    pub min_wrapping_ttl: Option<Duration>,
    pub max_wrapping_ttl: Option<Duration>,
    /// Parsed and kept, not enforced (Vault Enterprise).
    pub mfa_methods: Vec<String>,
    /// Parsed and kept, not enforced (Vault Enterprise).
    pub control_group: Option<serde_json::Value>,
    /// Line of the stanza in the policy text (0 for built-in policies).
    pub line: usize,
}

impl PathRules {
    /// The pattern without its trailing `*`, for a prefix rule.
    pub fn stem(&self) -> &str {
        self.pattern.strip_suffix('*').unwrap_or(&self.pattern)
    }

    /// Whether the pattern uses identity templating (`{{identity.entity.id}}`).
    pub fn is_templated(&self) -> bool {
        self.pattern.contains("{{")
    }
}

/// A named ACL policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Lower-cased, as Vault stores names.
    pub name: String,
    /// The text the policy was written in, returned verbatim by `GET sys/policies/acl/:name`.
    pub raw: String,
    pub paths: Vec<PathRules>,
    /// True when some path uses identity templating.
    pub templated: bool,
    /// Only the built-in root policy; a written policy can never be root.
    root: bool,
}

impl Policy {
    /// The built-in `root` policy: no text, no paths, allows everything.
    pub fn root() -> Policy {
        Policy {
            name: ROOT_POLICY_NAME.to_string(),
            raw: String::new(),
            paths: Vec::new(),
            templated: false,
            root: true,
        }
    }

    pub fn is_root(&self) -> bool {
        self.root
    }
}

/// Vault's policy-name normalisation: trimmed and lower-cased.
pub fn normalize_name(name: &str) -> String {
    name.trim().to_lowercase()
}

/// The policy list a token gets, as Vault's `policyutil.SanitizePolicies`:
/// names normalised, empty names dropped, `root` replaces everything else,
/// `default` added when asked (never next to `root`), sorted and deduplicated.
pub fn sanitize_policies(names: &[String], add_default: bool) -> Vec<String> {
    let mut out: Vec<String> = names
        .iter()
        .map(|n| normalize_name(n))
        .filter(|n| !n.is_empty())
        .collect();
    if out.iter().any(|n| n == ROOT_POLICY_NAME) {
        return vec![ROOT_POLICY_NAME.to_string()];
    }
    if add_default && !out.iter().any(|n| n == DEFAULT_POLICY_NAME) {
        out.push(DEFAULT_POLICY_NAME.to_string());
    }
    out.sort();
    out.dedup();
    out
}
