//! The ACL built from a token's policies, and the one question it answers:
//! may this operation, with this data, be done on this path?
//!
//! Matching is Vault's (`vault/acl.go`): an exact rule wins; otherwise the
//! highest-priority non-exact rule, where rule P1 ranks below P2 when, in
//! order, (a) its first `+` or `*` comes earlier, (b) it ends in `*` and P2
//! does not, (c) it has more `+` segments, (d) it is shorter, (e) it sorts
//! lower. Only that one rule decides; rules of different patterns never combine.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::{Capabilities, PathRules, PatternKind, Policy, PolicyError, ROOT_POLICY_NAME};
use crate::logical::Operation;

/// What one request asks of the ACL.
#[derive(Debug, Clone, Copy)]
pub struct AclRequest<'a> {
    /// Full request path without `/v1/` (leading slashes are ignored).
    pub path: &'a str,
    pub operation: Operation,
    /// Body merged with query parameters: what parameter constraints are checked against.
    pub data: &'a Map<String, Value>,
    /// The TTL the client asked its response to be wrapped with (`X-Vault-Wrap-TTL`);
    /// a rule with `min_wrapping_ttl`/`max_wrapping_ttl` requires one in range.
    pub wrap_ttl: Option<Duration>,
}

/// The ACL's answer for one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclResult {
    pub allowed: bool,
    /// The deciding rule grants `sudo`, so root-protected paths are open (root: always).
    pub root_privs: bool,
    /// The token holds the root policy.
    pub is_root: bool,
    /// Capabilities of the deciding rule, as `sys/capabilities` lists them
    /// (`["root"]`, or `["deny"]` when denied by a rule or by no rule).
    pub capabilities: Vec<String>,
    /// Policies whose rule granted the capability the operation needs (audit's
    /// `policy_results.granting_policies`); empty when the capability is missing.
    pub granting_policies: Vec<String>,
}

/// The merged permissions of one pattern across all attached policies.
#[derive(Debug, Clone, Default)]
struct Permissions {
    capabilities: Capabilities,
    allowed_parameters: BTreeMap<String, Vec<Value>>,
    denied_parameters: BTreeMap<String, Vec<Value>>,
    required_parameters: Vec<String>,
    min_wrapping_ttl: Option<Duration>,
    max_wrapping_ttl: Option<Duration>,
    /// For each single capability, the policies that granted it.
    granting: HashMap<Capabilities, Vec<String>>,
}

impl Permissions {
    fn new(policy: &str, rules: &PathRules) -> Permissions {
        let mut perms = Permissions {
            capabilities: rules.capabilities,
            allowed_parameters: rules.allowed_parameters.clone(),
            denied_parameters: rules.denied_parameters.clone(),
            required_parameters: rules.required_parameters.clone(),
            min_wrapping_ttl: rules.min_wrapping_ttl,
            max_wrapping_ttl: rules.max_wrapping_ttl,
            granting: HashMap::new(),
        };
        perms.add_granting(policy, rules.capabilities);
        perms
    }

    fn add_granting(&mut self, policy: &str, capabilities: Capabilities) {
        for cap in capabilities.iter() {
            let names = self.granting.entry(cap).or_default();
            if !names.iter().any(|n| n == policy) {
                names.push(policy.to_string());
            }
        }
    }

    /// Folds the same pattern from another policy in, as Vault's `NewACL` does.
    fn merge(&mut self, policy: &str, rules: &PathRules) {
        if self.capabilities.is_deny() {
            return; // deny is sticky
        }
        if rules.capabilities.is_deny() {
            self.capabilities = Capabilities::DENY;
            self.allowed_parameters.clear();
            self.denied_parameters.clear();
            return;
        }
        self.capabilities |= rules.capabilities;
        self.add_granting(policy, rules.capabilities);

        // The shorter of two wrapping TTL bounds wins (Vault prefers short lifetimes).
        let lesser = |ours: Option<Duration>, theirs: Option<Duration>| match (ours, theirs) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.max_wrapping_ttl = lesser(self.max_wrapping_ttl, rules.max_wrapping_ttl);
        self.min_wrapping_ttl = lesser(self.min_wrapping_ttl, rules.min_wrapping_ttl);

        merge_parameters(&mut self.allowed_parameters, &rules.allowed_parameters);
        merge_parameters(&mut self.denied_parameters, &rules.denied_parameters);
        for required in &rules.required_parameters {
            if !self.required_parameters.contains(required) {
                self.required_parameters.push(required.clone());
            }
        }
    }
}

/// Vault's parameter-map merge: an empty value list (any value) absorbs the
/// other side; otherwise the value lists are concatenated.
fn merge_parameters(
    ours: &mut BTreeMap<String, Vec<Value>>,
    theirs: &BTreeMap<String, Vec<Value>>,
) {
    for (key, values) in theirs {
        match ours.get_mut(key) {
            Some(existing) if existing.is_empty() => {}
            Some(_) if values.is_empty() => {
                ours.insert(key.clone(), Vec::new());
            }
            Some(existing) => {
                let mut merged = values.clone();
                merged.append(existing);
                *existing = merged;
            }
            None => {
                ours.insert(key.clone(), values.clone());
            }
        }
    }
}

/// A pattern with `+` segments, pre-split for matching.
#[derive(Debug, Clone)]
struct SegmentRule {
    /// The pattern without its trailing `*`.
    stem: String,
    parts: Vec<String>,
    is_prefix: bool,
    first_wildcard: usize,
    wildcards: usize,
    perms: Permissions,
}

impl SegmentRule {
    fn matches(&self, path_parts: &[&str]) -> bool {
        if path_parts.len() < self.parts.len() {
            return false;
        }
        if !self.is_prefix && path_parts.len() != self.parts.len() {
            return false;
        }
        let last = self.parts.len() - 1;
        self.parts.iter().enumerate().all(|(i, part)| {
            part == "+"
                || part == path_parts[i]
                || (self.is_prefix && i == last && path_parts[i].starts_with(part.as_str()))
        })
    }
}

/// A candidate non-exact rule and the facts that rank it.
struct Candidate<'a> {
    first_wildcard: usize,
    is_prefix: bool,
    wildcards: usize,
    stem: &'a str,
    perms: &'a Permissions,
}

impl Candidate<'_> {
    /// Larger is higher priority: rules (a) to (e) of the module docs.
    fn rank(&self) -> (usize, bool, Reverse<usize>, usize, &str) {
        (
            self.first_wildcard,
            !self.is_prefix,
            Reverse(self.wildcards),
            self.stem.len(),
            self.stem,
        )
    }
}

/// The access-control list of a set of policies.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    root: bool,
    /// Construction failed (root combined with other policies): deny everything.
    poisoned: bool,
    exact: HashMap<String, Permissions>,
    /// Keyed by the pattern without its trailing `*`.
    prefix: HashMap<String, Permissions>,
    segment: Vec<SegmentRule>,
}

impl Acl {
    /// Builds the ACL of `policies`.
    ///
    /// Vault refuses to build an ACL from `root` together with any other policy
    /// ("other policies present along with root") and fails the request. This
    /// constructor cannot fail, so it fails closed instead: such an ACL denies
    /// everything. Use [`Acl::try_new`] to get Vault's error. Token policy lists
    /// never hold `root` next to another name once passed through
    /// [`super::sanitize_policies`], as Vault's token store does.
    pub fn new(policies: &[Arc<Policy>]) -> Acl {
        Acl::try_new(policies).unwrap_or_else(|_| Acl {
            poisoned: true,
            ..Acl::default()
        })
    }

    /// Builds the ACL of `policies`, or Vault's error when `root` is combined
    /// with another policy.
    pub fn try_new(policies: &[Arc<Policy>]) -> Result<Acl, PolicyError> {
        let mut acl = Acl::default();
        if policies.iter().any(|p| p.is_root()) {
            if policies.len() != 1 {
                return Err(PolicyError::RootCombined);
            }
            acl.root = true;
            return Ok(acl);
        }

        let mut segment: HashMap<String, Permissions> = HashMap::new();
        for policy in policies {
            for rules in &policy.paths {
                // Identity templates resolve per entity; without one Vault drops the path.
                if rules.is_templated() {
                    continue;
                }
                let (table, key) = match rules.kind {
                    PatternKind::Exact => (&mut acl.exact, rules.pattern.clone()),
                    PatternKind::Prefix => (&mut acl.prefix, rules.stem().to_string()),
                    PatternKind::SegmentWildcard => (&mut segment, rules.pattern.clone()),
                };
                match table.get_mut(&key) {
                    Some(existing) => existing.merge(&policy.name, rules),
                    None => {
                        table.insert(key, Permissions::new(&policy.name, rules));
                    }
                }
            }
        }

        acl.segment = segment
            .into_iter()
            .map(|(pattern, perms)| {
                let is_prefix = pattern.ends_with('*');
                let stem = pattern.strip_suffix('*').unwrap_or(&pattern).to_string();
                let parts: Vec<String> = stem.split('/').map(str::to_string).collect();
                SegmentRule {
                    first_wildcard: pattern.find('+').unwrap_or(pattern.len()),
                    wildcards: parts.iter().filter(|p| *p == "+").count(),
                    stem,
                    parts,
                    is_prefix,
                    perms,
                }
            })
            .collect();
        Ok(acl)
    }

    /// The ACL holds the root policy.
    pub fn is_root(&self) -> bool {
        self.root
    }

    /// Whether `op` on `path` with `data` is allowed (no response wrapping asked).
    pub fn allow_operation(
        &self,
        path: &str,
        op: Operation,
        data: &Map<String, Value>,
    ) -> AclResult {
        self.allow(&AclRequest {
            path,
            operation: op,
            data,
            wrap_ttl: None,
        })
    }

    /// Whether the request is allowed; see [`AclResult`] for what else it tells.
    pub fn allow(&self, req: &AclRequest<'_>) -> AclResult {
        let mut result = AclResult::default();
        if self.poisoned {
            result.capabilities = vec!["deny".to_string()];
            return result;
        }
        if self.root {
            return AclResult {
                allowed: true,
                root_privs: true,
                is_root: true,
                capabilities: vec![ROOT_POLICY_NAME.to_string()],
                granting_policies: vec![ROOT_POLICY_NAME.to_string()],
            };
        }

        let Some(perms) = self.find(req.path, req.operation == Operation::List) else {
            result.capabilities = vec!["deny".to_string()];
            return result;
        };
        result.root_privs = perms.capabilities.contains(Capabilities::SUDO);
        result.capabilities = perms.capabilities.names();

        let needed = match req.operation {
            Operation::Read => Capabilities::READ,
            Operation::List => Capabilities::LIST,
            Operation::Create => Capabilities::CREATE,
            Operation::Update => Capabilities::UPDATE,
            Operation::Patch => Capabilities::PATCH,
            Operation::Delete => Capabilities::DELETE,
        };
        // A deny rule holds only the deny bit, so this also answers "denied".
        if !perms.capabilities.contains(needed) {
            return result;
        }
        result.granting_policies = perms.granting.get(&needed).cloned().unwrap_or_default();

        if let Some(max) = perms.max_wrapping_ttl {
            if req.wrap_ttl.is_none_or(|ttl| ttl > max) {
                return result;
            }
        }
        if let Some(min) = perms.min_wrapping_ttl {
            if req.wrap_ttl.is_none_or(|ttl| ttl < min) {
                return result;
            }
        }
        // Merging can leave min above max even though each stanza was checked.
        if let (Some(min), Some(max)) = (perms.min_wrapping_ttl, perms.max_wrapping_ttl) {
            if max < min {
                return result;
            }
        }

        let checks_parameters = matches!(
            req.operation,
            Operation::Read | Operation::Create | Operation::Update | Operation::Patch
        );
        result.allowed = !checks_parameters || parameters_allowed(perms, req.data);
        result
    }

    /// The capabilities this ACL grants on `path`, sorted, as `sys/capabilities`
    /// answers: `["root"]` for root, `["deny"]` when denied or when nothing matches.
    ///
    /// Resolved as a LIST would be (an exact rule on the path without its trailing
    /// `/` counts), as Vault does.
    pub fn capabilities(&self, path: &str) -> Vec<String> {
        if self.poisoned {
            return vec!["deny".to_string()];
        }
        if self.root {
            return vec![ROOT_POLICY_NAME.to_string()];
        }
        match self.find(path, true) {
            Some(perms) => perms.capabilities.names(),
            None => vec!["deny".to_string()],
        }
    }

    /// Whether this ACL grants anything on `mount` (a mount path ending in `/`) or below it, as
    /// Vault's `hasMountAccess`: what decides which mounts `sys/internal/ui/mounts` shows a token.
    pub fn has_mount_access(&self, mount: &str) -> bool {
        if self.poisoned {
            return false;
        }
        if self.root {
            return true;
        }
        let grants = |p: &Permissions| !p.capabilities.is_empty() && !p.capabilities.is_deny();
        let mount = mount.trim_start_matches('/');
        self.exact
            .iter()
            .any(|(path, p)| path.starts_with(mount) && grants(p))
            || self.prefix.iter().any(|(stem, p)| {
                (stem.starts_with(mount) || mount.starts_with(stem.as_str())) && grants(p)
            })
            || self.segment.iter().any(|rule| grants(&rule.perms))
            || self.find(mount, true).is_some_and(grants)
    }

    /// The deciding rule for `path`.
    fn find(&self, path: &str, list: bool) -> Option<&Permissions> {
        let path = path.trim_start_matches('/');
        if let Some(perms) = self.exact.get(path) {
            return Some(perms);
        }
        let trimmed = path.strip_suffix('/');
        if list {
            if let Some(perms) = trimmed.and_then(|p| self.exact.get(p)) {
                return Some(perms);
            }
            // A LIST of `foo/` is decided by the rules for `foo` first, so that
            // `foo*` is not shadowed by a longer `foo/*`-style match (Vault 1.15+).
            if let Some(perms) = trimmed.and_then(|p| self.non_exact(p)) {
                return Some(perms);
            }
        }
        self.non_exact(path)
    }

    /// The highest-priority prefix or segment-wildcard rule matching `path`.
    fn non_exact(&self, path: &str) -> Option<&Permissions> {
        let mut best: Option<Candidate<'_>> = self
            .prefix
            .iter()
            .filter(|(stem, _)| path.starts_with(stem.as_str()))
            .max_by_key(|(stem, _)| stem.len())
            .map(|(stem, perms)| Candidate {
                first_wildcard: stem.len(),
                is_prefix: true,
                wildcards: 0,
                stem,
                perms,
            });
        if self.segment.is_empty() {
            return best.map(|c| c.perms);
        }
        let path_parts: Vec<&str> = path.split('/').collect();
        for rule in self.segment.iter().filter(|r| r.matches(&path_parts)) {
            let candidate = Candidate {
                first_wildcard: rule.first_wildcard,
                is_prefix: rule.is_prefix,
                wildcards: rule.wildcards,
                stem: &rule.stem,
                perms: &rule.perms,
            };
            if best.as_ref().is_none_or(|b| candidate.rank() > b.rank()) {
                best = Some(candidate);
            }
        }
        best.map(|c| c.perms)
    }
}

/// Vault's parameter constraints: required, then denied (which takes
/// precedence), then allowed.
fn parameters_allowed(perms: &Permissions, data: &Map<String, Value>) -> bool {
    // Vault looks the lower-cased name up in the request as sent.
    if perms
        .required_parameters
        .iter()
        .any(|p| !data.contains_key(&p.to_lowercase()))
    {
        return false;
    }
    if data.is_empty() {
        return true;
    }

    if !perms.denied_parameters.is_empty() {
        if perms.denied_parameters.contains_key("*") {
            return false;
        }
        for (name, value) in data {
            if let Some(denied) = perms.denied_parameters.get(&name.to_lowercase()) {
                if value_denied(value, denied) {
                    return false;
                }
            }
        }
    }

    if perms.allowed_parameters.is_empty() {
        return true;
    }
    let allowed_all = perms.allowed_parameters.contains_key("*");
    if allowed_all && perms.allowed_parameters.len() == 1 {
        return true;
    }
    data.iter().all(
        |(name, value)| match perms.allowed_parameters.get(&name.to_lowercase()) {
            Some(allowed) => value_allowed(value, allowed),
            None => allowed_all,
        },
    )
}

/// Whether `value` is allowed by `list`. An empty list allows any value. A list
/// value (or a comma-separated string, which Vault fields often are) is allowed
/// when each of its elements is.
fn value_allowed(value: &Value, list: &[Value]) -> bool {
    if list.is_empty() || value_in_list(value, list) {
        return true;
    }
    match value {
        Value::Array(items) => items.iter().all(|v| value_in_list(v, list)),
        Value::String(s) => comma_list(s).all(|v| value_in_list(&v, list)),
        _ => false,
    }
}

/// Whether `value` is denied by `list`. An empty list denies any value. A list
/// value (or a comma-separated string) is denied when any of its elements is.
fn value_denied(value: &Value, list: &[Value]) -> bool {
    if list.is_empty() || value_in_list(value, list) {
        return true;
    }
    match value {
        Value::Array(items) => items.iter().any(|v| value_in_list(v, list)),
        Value::String(s) => comma_list(s).any(|v| value_in_list(&v, list)),
        _ => false,
    }
}

fn comma_list(s: &str) -> impl Iterator<Item = Value> + '_ {
    s.split(',')
        .filter(move |_| !s.is_empty())
        .map(|part| Value::String(part.trim().to_string()))
}

fn value_in_list(value: &Value, list: &[Value]) -> bool {
    list.iter().any(|item| match (item, value) {
        (Value::Null, _) | (_, Value::Null) => item.is_null() && value.is_null(),
        (Value::String(pattern), Value::String(s)) => glob_match(pattern, s),
        (Value::String(_), _) => false,
        _ => json_equal(item, value),
    })
}

/// Vault's `GlobbedStringsMatch`: `*` at the start and/or end of `pattern` only.
fn glob_match(pattern: &str, value: &str) -> bool {
    if pattern.len() < 2 {
        return pattern == value;
    }
    match (pattern.strip_prefix('*'), pattern.strip_suffix('*')) {
        (Some(_), Some(_)) => value.contains(&pattern[1..pattern.len() - 1]),
        (Some(suffix), None) => value.ends_with(suffix),
        (None, Some(prefix)) => value.starts_with(prefix),
        (None, None) => pattern == value,
    }
}

/// Structural equality where `1` equals `1.0` (a policy number and a request
/// number may be spelled differently).
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_equal(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}
