//! Named policies kept behind the barrier, with an in-memory cache of parsed
//! policies, and the ACL of a token's policy names.
//!
//! Layout as Vault's: the store is given the system view (Vault's `sys/` barrier
//! prefix) and keeps each policy at `policy/<name>` in it, i.e. `sys/policy/<name>`,
//! as JSON `{"Version":2,"Raw":"<text>","Type":0,"Templated":bool}`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{normalize_name, parse, Acl, Policy, DEFAULT_POLICY_NAME, ROOT_POLICY_NAME};
use crate::error::{Error, Result};
use crate::logical::StorageView;

/// Vault's built-in `default` policy, written by [`PolicyStore::setup`] when absent
/// (and from then on editable, but not deletable).
pub const DEFAULT_POLICY: &str = include_str!("default.hcl");

/// Vault's fixed policy for response-wrapping tokens.
pub const RESPONSE_WRAPPING_POLICY: &str = r#"
path "cubbyhole/response" {
    capabilities = ["create", "read"]
}

path "sys/wrapping/unwrap" {
    capabilities = ["update"]
}
"#;

const RESPONSE_WRAPPING_POLICY_NAME: &str = "response-wrapping";
const CONTROL_GROUP_POLICY_NAME: &str = "control-group";

/// Where policies live inside the system view.
const POLICY_PREFIX: &str = "policy/";

/// Policies nobody can write or delete.
const IMMUTABLE: [&str; 3] = [
    ROOT_POLICY_NAME,
    RESPONSE_WRAPPING_POLICY_NAME,
    CONTROL_GROUP_POLICY_NAME,
];

/// Stored but never listed nor assignable to a token.
const NON_ASSIGNABLE: [&str; 2] = [RESPONSE_WRAPPING_POLICY_NAME, CONTROL_GROUP_POLICY_NAME];

/// The stored form of a policy, field for field Vault's `PolicyEntry`.
#[derive(Debug, Serialize, Deserialize)]
struct PolicyEntry {
    #[serde(rename = "Version")]
    version: u32,
    #[serde(rename = "Raw")]
    raw: String,
    /// 0 = ACL, the only type there is here.
    #[serde(rename = "Type", default)]
    kind: u32,
    #[serde(rename = "Templated", default)]
    templated: bool,
}

/// The ACL policies of one cluster.
pub struct PolicyStore {
    view: StorageView,
    root: Arc<Policy>,
    cache: RwLock<HashMap<String, Arc<Policy>>>,
    /// Serialises writes against cache fills, so a fill never re-caches a stale read.
    modify: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for PolicyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyStore")
            .field("view", &self.view)
            .finish_non_exhaustive()
    }
}

impl PolicyStore {
    /// A store over the system view (policies at `policy/<name>` inside it).
    pub fn new(view: StorageView) -> Self {
        PolicyStore {
            view,
            root: Arc::new(Policy::root()),
            cache: RwLock::new(HashMap::new()),
            modify: tokio::sync::Mutex::new(()),
        }
    }

    /// Writes the built-in policies on unseal: `default` when absent (an operator's
    /// edits are kept), `response-wrapping` whenever its text differs from Vault's.
    pub async fn setup(&self) -> Result<()> {
        if self.get(DEFAULT_POLICY_NAME).await?.is_none() {
            self.store(DEFAULT_POLICY_NAME, DEFAULT_POLICY).await?;
        }
        let wrapping = self.get(RESPONSE_WRAPPING_POLICY_NAME).await?;
        if wrapping.is_none_or(|p| p.raw != RESPONSE_WRAPPING_POLICY) {
            self.store(RESPONSE_WRAPPING_POLICY_NAME, RESPONSE_WRAPPING_POLICY)
                .await?;
        }
        Ok(())
    }

    /// The named policy; `root` is the built-in root policy (empty text).
    pub async fn get(&self, name: &str) -> Result<Option<Arc<Policy>>> {
        let name = normalize_name(name);
        if name == ROOT_POLICY_NAME {
            return Ok(Some(self.root.clone()));
        }
        if let Some(policy) = self.cached(&name) {
            return Ok(Some(policy));
        }
        let _guard = self.modify.lock().await;
        if let Some(policy) = self.cached(&name) {
            return Ok(Some(policy));
        }
        let Some(entry) = self.view.get_json::<PolicyEntry>(&key(&name)).await? else {
            return Ok(None);
        };
        let policy = parse(&name, &entry.raw).map_err(|e| {
            Error::internal(format!("stored policy {name:?} no longer parses: {e}"))
        })?;
        let policy = Arc::new(policy);
        self.cache_write().insert(name, policy.clone());
        Ok(Some(policy))
    }

    /// Creates or replaces a policy. `text` is HCL or JSON, or either of them
    /// base64-encoded (Vault's API accepts both). Invalid text, an empty text or
    /// name, and the fixed policies (`root`, `response-wrapping`) are 400s.
    pub async fn set(&self, name: &str, text: &str) -> Result<()> {
        let name = normalize_name(name);
        if name.is_empty() {
            return Err(Error::invalid("policy name must be provided in the URL"));
        }
        if IMMUTABLE.contains(&name.as_str()) {
            return Err(Error::invalid(format!("cannot update {name:?} policy")));
        }
        if text.trim().is_empty() {
            return Err(Error::invalid("'policy' parameter not supplied or empty"));
        }
        let text = decode_base64(text);
        self.store(&name, &text).await
    }

    /// Deletes a policy; deleting one that does not exist succeeds. `root`,
    /// `default` and the fixed policies cannot be deleted (400).
    pub async fn delete(&self, name: &str) -> Result<()> {
        let name = normalize_name(name);
        if IMMUTABLE.contains(&name.as_str()) {
            return Err(Error::invalid(format!("cannot delete {name:?} policy")));
        }
        if name == DEFAULT_POLICY_NAME {
            return Err(Error::invalid("cannot delete default policy"));
        }
        let _guard = self.modify.lock().await;
        self.view.delete(&key(&name)).await?;
        self.cache_write().remove(&name);
        Ok(())
    }

    /// Policy names as Vault lists them: stored names sorted, the fixed internal
    /// ones left out, then `root`. `LIST sys/policies/acl` returns this as
    /// `data.keys`; legacy `GET sys/policy` returns the same list as both `keys`
    /// and `policies`.
    pub async fn list(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .view
            .list_recursive(POLICY_PREFIX)
            .await?
            .into_iter()
            .filter_map(|k| k.strip_prefix(POLICY_PREFIX).map(str::to_string))
            .filter(|n| !NON_ASSIGNABLE.contains(&n.as_str()))
            .collect();
        names.sort();
        names.push(ROOT_POLICY_NAME.to_string());
        Ok(names)
    }

    /// The ACL of a token's policy names. Unknown names are skipped, as Vault does;
    /// `root` next to another existing policy is Vault's 500 "other policies
    /// present along with root".
    pub async fn acl(&self, names: &[String]) -> Result<Acl> {
        let mut seen: Vec<String> = Vec::with_capacity(names.len());
        let mut policies = Vec::with_capacity(names.len());
        for name in names {
            let name = normalize_name(name);
            if seen.contains(&name) {
                continue;
            }
            if let Some(policy) = self.get(&name).await? {
                policies.push(policy);
            }
            seen.push(name);
        }
        Ok(Acl::try_new(&policies)?)
    }

    /// Drops a cached policy, for a node that learns another node changed it
    /// (replicated write on a standby).
    pub fn invalidate(&self, name: &str) {
        self.cache_write().remove(&normalize_name(name));
    }

    /// Parses and persists without the name checks of [`PolicyStore::set`].
    async fn store(&self, name: &str, text: &str) -> Result<()> {
        let policy = Arc::new(parse(name, text)?);
        let entry = PolicyEntry {
            version: 2,
            raw: policy.raw.clone(),
            kind: 0,
            templated: policy.templated,
        };
        let _guard = self.modify.lock().await;
        self.view.put_json(&key(&policy.name), &entry).await?;
        self.cache_write().insert(policy.name.clone(), policy);
        Ok(())
    }

    fn cached(&self, name: &str) -> Option<Arc<Policy>> {
        self.cache
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(name)
            .cloned()
    }

    fn cache_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Policy>>> {
        self.cache
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Whether a token may be given the policy `name`: Vault refuses its internal
/// fixed policies (`response-wrapping`, `control-group`) with "cannot assign policy".
pub fn is_assignable(name: &str) -> bool {
    !NON_ASSIGNABLE.contains(&normalize_name(name).as_str())
}

fn key(name: &str) -> String {
    format!("{POLICY_PREFIX}{name}")
}

/// Vault's API takes a policy as text or as standard base64 of the text.
fn decode_base64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_else(|| text.to_string())
}
