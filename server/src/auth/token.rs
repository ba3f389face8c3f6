//! The token store: mints, looks up, renews and revokes tokens, and serves the
//! `auth/token/` endpoints.
//!
//! Storage layout inside the store's view (Vault's, with every secret salted):
//!
//! ```text
//! salt                          32 random bytes, the HMAC key for the names below
//! id/<h(token)>                 TokenEntry (the token ID itself is never stored)
//! accessor/<h(accessor)>        AccessorIndex { accessor, token: h(token) }
//! parent/<h(parent)>/<h(child)> empty marker, so revoking a parent finds its children
//! ```
//!
//! `h` is HMAC-SHA256 keyed with `salt`, hex-encoded. Storage keys are visible
//! in snapshots and to anyone with the physical store, so no token ID or
//! accessor appears in one; the entry value keeps the accessor (it is behind
//! the barrier and `LIST accessors` needs it) but never the token ID.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{SecondsFormat, TimeZone, Utc};
use hmac::{Hmac, Mac};
use rand::distributions::Alphanumeric;
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::Sha256;
use tokio::sync::{Mutex, OnceCell};

use crate::auth::fields;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::logical::{
    Auth, BackendRequest, LogicalBackend, MountInfo, Operation, Response, StorageView,
};
use crate::physical::TxnOp;

/// Service tokens look like Vault 1.10+ ones: `hvs.` and 24 base62 characters.
const SERVICE_TOKEN_PREFIX: &str = "hvs.";
const TOKEN_RANDOM_LEN: usize = 24;
const ACCESSOR_LEN: usize = 24;
/// `num_uses` of a token whose last use has been taken (Vault's
/// `tokenRevocationPending`); such an entry is never valid again.
pub const REVOCATION_PENDING: i64 = -1;
/// Bound on the parent chain walked on every lookup; a deeper chain means a
/// corrupted store (a cycle), not a real token tree.
const MAX_TOKEN_DEPTH: usize = 1024;

/// A token as stored. `id` is filled in from the caller's input when the
/// entry is found by its ID, and is empty when it was found another way (by
/// accessor, or as a child during revocation); it is never persisted.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenEntry {
    #[serde(skip)]
    pub id: String,
    pub accessor: String,
    /// Salted hash of the parent's ID; `None` for orphans.
    pub parent: Option<String>,
    pub policies: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub display_name: String,
    /// Remaining uses; 0 = unlimited, [`REVOCATION_PENDING`] after the last.
    pub num_uses: i64,
    /// Unix seconds.
    pub creation_time: i64,
    /// TTL given at creation, in seconds (0 = none); renewals without an
    /// increment extend by this much.
    pub ttl: u64,
    /// Effective max TTL at creation (mount or role max), seconds, 0 = none.
    pub max_ttl: u64,
    pub explicit_max_ttl: u64,
    pub period: u64,
    pub renewable: bool,
    /// Path that created the token, e.g. `auth/token/create`.
    pub path: String,
    pub orphan: bool,
    /// Always `service`.
    pub token_type: String,
    pub no_default_policy: bool,
    /// Unix milliseconds at which the token expires; `None` = never.
    pub expires_at_ms: Option<i64>,
    /// Unix seconds of the last renewal.
    pub last_renewal_time: Option<i64>,
}

impl std::fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEntry")
            .field("id", &if self.id.is_empty() { "" } else { "<redacted>" })
            .field("accessor", &self.accessor)
            .field("policies", &self.policies)
            .field("display_name", &self.display_name)
            .field("num_uses", &self.num_uses)
            .field("creation_time", &self.creation_time)
            .field("ttl", &self.ttl)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("renewable", &self.renewable)
            .field("orphan", &self.orphan)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl TokenEntry {
    /// When the token expires, if it does.
    pub fn expire_time(&self) -> Option<chrono::DateTime<Utc>> {
        self.expires_at_ms
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
    }

    /// Seconds left before expiry at `now_ms` (0 for a token without TTL).
    pub fn remaining_ttl(&self, now_ms: i64) -> u64 {
        match self.expires_at_ms {
            None => 0,
            Some(ms) => ((ms - now_ms).max(0) as u64).div_ceil(1000),
        }
    }

    fn is_expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// Vault's `lookup` data block, its `ttl` as at `now_ms`.
    pub fn lookup_data(&self, now_ms: i64) -> Map<String, Value> {
        let rfc3339 = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
        let issue = Utc
            .timestamp_opt(self.creation_time, 0)
            .single()
            .map(rfc3339);
        let mut data = json!({
            "accessor": self.accessor,
            "creation_time": self.creation_time,
            "creation_ttl": self.ttl,
            "display_name": self.display_name,
            "entity_id": "",
            "expire_time": self.expire_time().map(rfc3339),
            "explicit_max_ttl": self.explicit_max_ttl,
            "id": self.id,
            "identity_policies": [],
            "issue_time": issue,
            "meta": if self.meta.is_empty() { Value::Null } else { json!(self.meta) },
            "num_uses": self.num_uses.max(0),
            "orphan": self.orphan,
            "path": self.path,
            "policies": self.policies,
            "renewable": self.renewable,
            "ttl": self.remaining_ttl(now_ms),
            "type": self.token_type,
        });
        let map = data.as_object_mut().expect("json object");
        if self.period > 0 {
            map.insert("period".into(), json!(self.period));
        }
        if let Some(t) = self.last_renewal_time {
            map.insert("last_renewal_time".into(), json!(t));
            if let Some(at) = Utc.timestamp_opt(t, 0).single() {
                map.insert("last_renewal".into(), json!(rfc3339(at)));
            }
        }
        data.as_object().cloned().unwrap_or_default()
    }
}

/// What `accessor/<h(accessor)>` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AccessorIndex {
    accessor: String,
    /// Salted hash of the token ID.
    token: String,
}

/// The token store. Cheap to clone; clones share the salt and the lock.
#[derive(Clone)]
pub struct TokenStore {
    inner: Arc<Inner>,
}

struct Inner {
    view: StorageView,
    salt: OnceCell<Vec<u8>>,
    /// Serialises read-modify-write of entries (use counts, renewals).
    update: Mutex<()>,
    /// A standby's store ([`TokenStore::read_only`]): it never writes.
    read_only: bool,
    /// Expiry is judged by this clock: the active node's own, or on a standby the active
    /// node's as its appends carry it.
    clock: Clock,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("view", &self.inner.view)
            .finish_non_exhaustive()
    }
}

fn random_base62(len: usize) -> String {
    rand::rngs::OsRng
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Vault's display-name rule for `auth/token/create`: `token-<name>`, with
/// anything but letters, digits and `-` turned into `-`.
fn token_display_name(requested: &str) -> String {
    if requested.is_empty() {
        return "token".into();
    }
    let full: String = format!("token-{requested}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    full.trim_end_matches('-').to_string()
}

/// Display name of a login token: the mount path (`userpass`) and the name the
/// method gave (`userpass-alice`).
fn login_display_name(mount: &MountInfo, name: &str) -> String {
    let mount_name = mount
        .path
        .strip_prefix("auth/")
        .unwrap_or(&mount.path)
        .trim_end_matches('/')
        .replace('/', "-");
    match (mount_name.is_empty(), name.is_empty()) {
        (true, _) => name.to_string(),
        (false, true) => mount_name,
        (false, false) => format!("{mount_name}-{name}"),
    }
}

fn min_nonzero(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

/// A new token's TTL (seconds, 0 = never expires), as Vault's CalculateTTL:
/// a period wins (capped by the explicit max); otherwise the requested TTL or
/// the default, capped by the smaller of the max and the explicit max. Tokens
/// with the root policy and no requested TTL are exempt from the default.
fn initial_ttl(
    requested: u64,
    default: u64,
    max: u64,
    explicit_max: u64,
    period: u64,
    root: bool,
) -> u64 {
    if period > 0 {
        return min_nonzero(period, explicit_max);
    }
    let cap = min_nonzero(max, explicit_max);
    let ttl = match (requested, root) {
        (0, true) => explicit_max,
        (0, false) if default == 0 => cap,
        (0, false) => default,
        (r, _) => r,
    };
    if cap > 0 && ttl > cap {
        cap
    } else {
        ttl
    }
}

/// What [`TokenStore::usage`] counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TokenUsage {
    pub tokens: u64,
    pub leases: u64,
}

impl TokenStore {
    pub fn new(view: StorageView) -> Self {
        TokenStore {
            inner: Arc::new(Inner {
                view,
                salt: OnceCell::new(),
                update: Mutex::new(()),
                read_only: false,
                clock: crate::clock::system(),
            }),
        }
    }

    /// The store a standby serving reads uses: lookups never write (an expired token is gone,
    /// its revocation left to the active node), and what would write (a use of a use-limited
    /// token, a missing salt) is [`Error::ForwardToActive`]. Expiry is judged by `clock`, the
    /// active node's time as the standby last heard it.
    pub fn read_only(view: StorageView, clock: Clock) -> Self {
        TokenStore {
            inner: Arc::new(Inner {
                view,
                salt: OnceCell::new(),
                update: Mutex::new(()),
                read_only: true,
                clock,
            }),
        }
    }

    /// The clock this store judges expiry by (the mounts of the same node share it).
    pub fn clock(&self) -> Clock {
        self.inner.clock.clone()
    }

    fn now_ms(&self) -> i64 {
        (self.inner.clock)().timestamp_millis()
    }

    /// Revokes the invalid subtree at `hash`, unless this is a standby's store.
    async fn revoke_invalid(&self, hash: &str) -> Result<()> {
        if self.inner.read_only {
            return Ok(());
        }
        self.revoke_tree(hash).await
    }

    fn view(&self) -> &StorageView {
        &self.inner.view
    }

    /// Loads the salt, creating it on first start. Called by the core after
    /// unseal; every other method also does it on demand.
    pub async fn setup(&self) -> Result<()> {
        self.salt().await.map(|_| ())
    }

    async fn salt(&self) -> Result<&[u8]> {
        self.inner
            .salt
            .get_or_try_init(|| async {
                if let Some(salt) = self.view().get("salt").await? {
                    return Ok::<_, Error>(salt);
                }
                if self.inner.read_only {
                    return Err(Error::ForwardToActive);
                }
                let mut salt = vec![0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut salt);
                self.view().put("salt", salt.clone()).await?;
                Ok(salt)
            })
            .await
            .map(Vec::as_slice)
    }

    /// The salted name of a token ID or accessor in storage keys.
    async fn hash(&self, value: &str) -> Result<String> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.salt().await?)
            .map_err(|_| Error::internal("token store salt has an invalid length"))?;
        mac.update(value.as_bytes());
        Ok(hex::encode(mac.finalize().into_bytes()))
    }

    async fn get_by_hash(&self, hash: &str) -> Result<Option<TokenEntry>> {
        self.view().get_json(&format!("id/{hash}")).await
    }

    /// A valid entry by hash: expired ones are revoked on the spot, ones whose
    /// last use is taken are treated as gone, and so is a token with an
    /// expired or missing ancestor (the whole invalid subtree is revoked).
    /// Walking the ancestors costs a read per level, but without it a child
    /// would outlive its expired parent until the next tidy.
    async fn lookup_hash(&self, hash: &str) -> Result<Option<TokenEntry>> {
        let Some(entry) = self.get_by_hash(hash).await? else {
            return Ok(None);
        };
        if entry.num_uses == REVOCATION_PENDING {
            return Ok(None);
        }
        let now = self.now_ms();
        if entry.is_expired(now) {
            self.revoke_invalid(hash).await?;
            return Ok(None);
        }
        let mut ancestor = entry.parent.clone();
        let mut depth = 0;
        while let Some(parent) = ancestor {
            depth += 1;
            if depth > MAX_TOKEN_DEPTH {
                return Err(Error::internal("token parent chain is too deep"));
            }
            match self.get_by_hash(&parent).await? {
                None => {
                    // A leftover of an interrupted revocation.
                    self.revoke_invalid(hash).await?;
                    return Ok(None);
                }
                Some(p) if p.is_expired(now) => {
                    self.revoke_invalid(&parent).await?;
                    return Ok(None);
                }
                Some(p) if p.num_uses == REVOCATION_PENDING => return Ok(None),
                Some(p) => ancestor = p.parent,
            }
        }
        Ok(Some(entry))
    }

    /// The token with this ID, unless unknown, revoked or expired.
    pub async fn lookup(&self, id: &str) -> Result<Option<TokenEntry>> {
        if id.is_empty() {
            return Ok(None);
        }
        let hash = self.hash(id).await?;
        Ok(self.lookup_hash(&hash).await?.map(|mut e| {
            e.id = id.to_string();
            e
        }))
    }

    /// Like [`lookup`](Self::lookup), and takes one use of a use-limited
    /// token. The use that reaches zero is allowed: the returned entry has
    /// `num_uses == REVOCATION_PENDING` and the token (with its children) is
    /// already revoked when this returns.
    pub async fn use_token(&self, id: &str) -> Result<Option<TokenEntry>> {
        if id.is_empty() {
            return Ok(None);
        }
        let hash = self.hash(id).await?;
        let guard = self.inner.update.lock().await;
        let Some(mut entry) = self.lookup_hash(&hash).await? else {
            return Ok(None);
        };
        entry.id = id.to_string();
        if entry.num_uses == 0 {
            return Ok(Some(entry));
        }
        if self.inner.read_only {
            // Uses are counted on the active node only.
            return Err(Error::ForwardToActive);
        }
        entry.num_uses -= 1;
        if entry.num_uses > 0 {
            self.view().put_json(&format!("id/{hash}"), &entry).await?;
            return Ok(Some(entry));
        }
        // Mark first, so that a crash before the revocation leaves a token
        // nobody can use (tidy removes it).
        entry.num_uses = REVOCATION_PENDING;
        self.view().put_json(&format!("id/{hash}"), &entry).await?;
        drop(guard);
        self.revoke_tree(&hash).await?;
        Ok(Some(entry))
    }

    /// Persists a new entry and its indexes; generates the ID (unless set)
    /// and the accessor.
    async fn store_new(&self, mut entry: TokenEntry) -> Result<TokenEntry> {
        if entry.id.is_empty() {
            entry.id = format!("{SERVICE_TOKEN_PREFIX}{}", random_base62(TOKEN_RANDOM_LEN));
        }
        entry.accessor = random_base62(ACCESSOR_LEN);
        if entry.token_type.is_empty() {
            entry.token_type = "service".into();
        }
        entry.orphan = entry.parent.is_none();
        let hash = self.hash(&entry.id).await?;
        if self.get_by_hash(&hash).await?.is_some() {
            return Err(Error::invalid("cannot create a token with a duplicate ID"));
        }
        let mut ops = vec![
            TxnOp::Put {
                key: format!("id/{hash}"),
                value: encode(&entry)?,
            },
            TxnOp::Put {
                key: format!("accessor/{}", self.hash(&entry.accessor).await?),
                value: encode(&AccessorIndex {
                    accessor: entry.accessor.clone(),
                    token: hash.clone(),
                })?,
            },
        ];
        if let Some(parent) = &entry.parent {
            ops.push(TxnOp::Put {
                key: format!("parent/{parent}/{hash}"),
                value: Vec::new(),
            });
        }
        self.view().transaction(ops).await?;
        // Vault's `vault.token.creation`, by the auth mount that minted it.
        let mount = entry.path.split('/').take(2).collect::<Vec<_>>().join("/");
        metrics::counter!(
            "vault.token.creation",
            "mount_point" => format!("{mount}/"),
            "token_type" => entry.token_type.clone(),
        )
        .increment(1);
        Ok(entry)
    }

    /// Live tokens, and how many of them expire (hold a lease), for the usage
    /// gauges `vault.token.count` and `vault.expire.num_leases`.
    pub async fn usage(&self) -> Result<TokenUsage> {
        let now = self.now_ms();
        let mut usage = TokenUsage::default();
        for hash in self.view().list("id/").await? {
            let Some(entry) = self.get_by_hash(&hash).await? else {
                continue;
            };
            if entry.is_expired(now) || entry.num_uses == REVOCATION_PENDING {
                continue;
            }
            usage.tokens += 1;
            if entry.expires_at_ms.is_some() {
                usage.leases += 1;
            }
        }
        Ok(usage)
    }

    /// The root token (`operator init`, `-dev`, generate-root). `id` lets
    /// `-dev-root-token-id` choose it.
    pub async fn create_root(&self, id: Option<String>) -> Result<TokenEntry> {
        let id = id.unwrap_or_default();
        self.store_new(TokenEntry {
            id,
            policies: vec!["root".into()],
            display_name: "root".into(),
            creation_time: self.now_ms() / 1000,
            path: "auth/token/root".into(),
            token_type: "service".into(),
            ..Default::default()
        })
        .await
    }

    /// Mints the token for a successful login and returns the filled `Auth`.
    pub async fn create_from_login(&self, login: &Auth, mount: &MountInfo) -> Result<Auth> {
        if !matches!(login.token_type.as_str(), "" | "service" | "default") {
            return Err(Error::invalid("batch tokens are not supported"));
        }
        if login.num_uses < 0 {
            return Err(Error::invalid("number of uses cannot be negative"));
        }
        let policies = fields::sanitize_policies(&login.policies, !login.no_default_policy);
        let root = policies.iter().any(|p| p == "root");
        let max_ttl = min_nonzero(login.max_ttl, mount.max_lease_ttl.as_secs());
        let ttl = initial_ttl(
            login.lease_duration,
            mount.default_lease_ttl.as_secs(),
            max_ttl,
            login.explicit_max_ttl,
            login.period,
            root,
        );
        let now = self.now_ms();
        let path = if login.path.is_empty() {
            format!("{}login", mount.path)
        } else {
            login.path.clone()
        };
        let entry = self
            .store_new(TokenEntry {
                policies,
                meta: login.metadata.clone(),
                display_name: login_display_name(mount, &login.display_name),
                num_uses: login.num_uses,
                creation_time: now / 1000,
                ttl,
                max_ttl,
                explicit_max_ttl: login.explicit_max_ttl,
                period: login.period,
                renewable: login.renewable,
                path,
                no_default_policy: login.no_default_policy,
                expires_at_ms: (ttl > 0).then(|| now + ttl as i64 * 1000),
                ..Default::default()
            })
            .await?;
        Ok(self.to_auth(&entry))
    }

    /// An `auth` block for a response or an audit entry; `lease_duration` is
    /// the remaining TTL.
    pub fn to_auth(&self, entry: &TokenEntry) -> Auth {
        Auth {
            client_token: entry.id.clone(),
            accessor: entry.accessor.clone(),
            display_name: entry.display_name.clone(),
            policies: entry.policies.clone(),
            token_policies: entry.policies.clone(),
            identity_policies: Vec::new(),
            metadata: entry.meta.clone(),
            entity_id: String::new(),
            token_type: entry.token_type.clone(),
            orphan: entry.orphan,
            renewable: entry.renewable,
            num_uses: entry.num_uses.max(0),
            lease_duration: entry.remaining_ttl(self.now_ms()),
            max_ttl: entry.max_ttl,
            explicit_max_ttl: entry.explicit_max_ttl,
            period: entry.period,
            issue_time: entry.creation_time,
            path: entry.path.clone(),
            no_default_policy: entry.no_default_policy,
        }
    }

    /// Revokes the token and all its descendants. Unknown tokens are ignored.
    pub async fn revoke(&self, id: &str) -> Result<()> {
        if id.is_empty() {
            return Ok(());
        }
        let hash = self.hash(id).await?;
        self.revoke_tree(&hash).await
    }

    /// Revokes the token; its children become orphans.
    pub async fn revoke_orphan(&self, id: &str) -> Result<()> {
        if id.is_empty() {
            return Ok(());
        }
        let hash = self.hash(id).await?;
        let _guard = self.inner.update.lock().await;
        for child in self.view().list(&format!("parent/{hash}/")).await? {
            let mut ops = vec![TxnOp::Delete {
                key: format!("parent/{hash}/{child}"),
            }];
            if let Some(mut entry) = self.get_by_hash(&child).await? {
                entry.parent = None;
                entry.orphan = true;
                ops.push(TxnOp::Put {
                    key: format!("id/{child}"),
                    value: encode(&entry)?,
                });
            }
            self.view().transaction(ops).await?;
        }
        self.delete_one(&hash).await
    }

    /// Deletes a token tree, children first, so that an interrupted revocation
    /// never leaves a child whose parent index is already gone.
    async fn revoke_tree(&self, root: &str) -> Result<()> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        let mut pending = vec![root.to_string()];
        while let Some(hash) = pending.pop() {
            if !seen.insert(hash.clone()) {
                continue;
            }
            for child in self.view().list(&format!("parent/{hash}/")).await? {
                pending.push(child.trim_end_matches('/').to_string());
            }
            order.push(hash);
        }
        for hash in order.iter().rev() {
            self.delete_one(hash).await?;
        }
        Ok(())
    }

    /// Deletes one entry and the index entries pointing at it.
    async fn delete_one(&self, hash: &str) -> Result<()> {
        let mut ops = vec![TxnOp::Delete {
            key: format!("id/{hash}"),
        }];
        if let Some(entry) = self.get_by_hash(hash).await? {
            if !entry.accessor.is_empty() {
                ops.push(TxnOp::Delete {
                    key: format!("accessor/{}", self.hash(&entry.accessor).await?),
                });
            }
            if let Some(parent) = entry.parent {
                ops.push(TxnOp::Delete {
                    key: format!("parent/{parent}/{hash}"),
                });
            }
        }
        for child in self.view().list(&format!("parent/{hash}/")).await? {
            ops.push(TxnOp::Delete {
                key: format!("parent/{hash}/{child}"),
            });
        }
        Ok(self.view().transaction(ops).await?)
    }

    /// The token hash behind an accessor.
    async fn accessor_target(&self, accessor: &str) -> Result<Option<String>> {
        if accessor.is_empty() {
            return Ok(None);
        }
        let key = format!("accessor/{}", self.hash(accessor).await?);
        Ok(self
            .view()
            .get_json::<AccessorIndex>(&key)
            .await?
            .map(|idx| idx.token))
    }

    /// The valid token behind an accessor; its `id` is empty.
    pub async fn lookup_accessor(&self, accessor: &str) -> Result<Option<TokenEntry>> {
        match self.accessor_target(accessor).await? {
            Some(hash) => self.lookup_hash(&hash).await,
            None => Ok(None),
        }
    }

    /// Revokes the token behind an accessor, with its descendants.
    pub async fn revoke_accessor(&self, accessor: &str) -> Result<()> {
        if let Some(hash) = self.accessor_target(accessor).await? {
            self.revoke_tree(&hash).await?;
        }
        Ok(())
    }

    /// Every live accessor, sorted.
    pub async fn list_accessors(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for key in self.view().list("accessor/").await? {
            if let Some(idx) = self
                .view()
                .get_json::<AccessorIndex>(&format!("accessor/{key}"))
                .await?
            {
                out.push(idx.accessor);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Renews the token and returns the updated entry (its `id` as the one
    /// given to find it) and any warnings. Increments are capped by the
    /// token's max TTL and explicit max TTL, counted from its creation;
    /// periodic tokens renew to their period.
    async fn renew_hash(&self, hash: &str, increment: u64) -> Result<(TokenEntry, Vec<String>)> {
        let _guard = self.inner.update.lock().await;
        let mut entry = self
            .lookup_hash(hash)
            .await?
            .ok_or_else(|| Error::invalid("token not found"))?;
        if !entry.renewable {
            return Err(Error::invalid("token is not renewable"));
        }
        let mut warnings = Vec::new();
        if entry.expires_at_ms.is_none() {
            // Nothing to extend: a token without a TTL never expires.
            return Ok((entry, warnings));
        }
        let now = self.now_ms();
        let (ttl, cap) = if entry.period > 0 {
            (entry.period, entry.explicit_max_ttl)
        } else {
            let ttl = if increment > 0 { increment } else { entry.ttl };
            (ttl, min_nonzero(entry.max_ttl, entry.explicit_max_ttl))
        };
        let mut expires = now + ttl as i64 * 1000;
        if cap > 0 {
            let limit = (entry.creation_time + cap as i64) * 1000;
            if expires > limit {
                expires = limit.max(now);
                warnings.push(format!(
                    "TTL of \"{ttl}s\" exceeded the effective max_ttl of \"{cap}s\"; TTL value is capped accordingly"
                ));
            }
        }
        entry.expires_at_ms = Some(expires);
        entry.last_renewal_time = Some(now / 1000);
        self.view().put_json(&format!("id/{hash}"), &entry).await?;
        Ok((entry, warnings))
    }

    /// Renews a token by ID; see [`Self::renew_hash`] for the rules.
    pub async fn renew(&self, id: &str, increment: u64) -> Result<(TokenEntry, Vec<String>)> {
        if id.is_empty() {
            return Err(Error::invalid("missing token"));
        }
        let hash = self.hash(id).await?;
        let (mut entry, warnings) = self.renew_hash(&hash, increment).await?;
        entry.id = id.to_string();
        Ok((entry, warnings))
    }

    /// Removes expired and half-revoked tokens, tokens whose parent is gone,
    /// and index entries that point at nothing. Returns how many tokens and
    /// index entries it removed.
    pub async fn tidy(&self) -> Result<usize> {
        let mut removed = 0;
        let now = self.now_ms();
        let mut live = HashSet::new();
        let mut entries = Vec::new();
        for hash in self.view().list("id/").await? {
            if let Some(entry) = self.get_by_hash(&hash).await? {
                entries.push((hash, entry));
            }
        }
        let present: HashSet<String> = entries.iter().map(|(h, _)| h.clone()).collect();
        for (hash, entry) in &entries {
            let orphaned_child = entry.parent.as_ref().is_some_and(|p| !present.contains(p));
            if entry.is_expired(now) || entry.num_uses == REVOCATION_PENDING || orphaned_child {
                if self.get_by_hash(hash).await?.is_some() {
                    self.revoke_tree(hash).await?;
                    removed += 1;
                }
            } else {
                live.insert(hash.clone());
            }
        }
        // Children revoked with a parent above may still be in `live`.
        let mut still = HashSet::new();
        for hash in live {
            if self.get_by_hash(&hash).await?.is_some() {
                still.insert(hash);
            }
        }
        for key in self.view().list("accessor/").await? {
            let path = format!("accessor/{key}");
            let target = self.view().get_json::<AccessorIndex>(&path).await?;
            if !target.is_some_and(|idx| still.contains(&idx.token)) {
                self.view().delete(&path).await?;
                removed += 1;
            }
        }
        for parent in self.view().list("parent/").await? {
            let parent = parent.trim_end_matches('/');
            for child in self.view().list(&format!("parent/{parent}/")).await? {
                let keep = still.contains(&child)
                    && self
                        .get_by_hash(&child)
                        .await?
                        .is_some_and(|e| e.parent.as_deref() == Some(parent));
                if !keep {
                    self.view()
                        .delete(&format!("parent/{parent}/{child}"))
                        .await?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    async fn handle_create(&self, req: &BackendRequest<'_>, orphan_path: bool) -> Result<Response> {
        let data = req.data();
        let caller = req.req.client_token.as_deref().unwrap_or_default();
        let parent = self.lookup(caller).await?.ok_or(Error::PermissionDenied)?;
        let is_root = parent.policies.iter().any(|p| p == "root");

        let token_type = fields::str_field(data, "type")?.unwrap_or_default();
        if !matches!(token_type.as_str(), "" | "service" | "default") {
            return Err(Error::invalid(if token_type == "batch" {
                "batch tokens are not supported".to_string()
            } else {
                format!("unsupported token type {token_type:?}")
            }));
        }
        let id = fields::str_field(data, "id")?.unwrap_or_default();
        if !id.is_empty() && !is_root {
            return Err(Error::invalid(
                "root or sudo privileges required to specify token id",
            ));
        }
        let no_parent = fields::bool_field(data, "no_parent")?.unwrap_or(false);
        if no_parent && !orphan_path && !is_root {
            return Err(Error::invalid(
                "root or sudo privileges required to create orphan token",
            ));
        }
        let orphan = orphan_path || no_parent;
        let no_default_policy = fields::bool_field(data, "no_default_policy")?.unwrap_or(false);
        let requested = fields::str_list(data, "policies")?.unwrap_or_default();
        let policies = if requested.is_empty() {
            let inherited: Vec<String> = parent
                .policies
                .iter()
                .filter(|p| !(no_default_policy && *p == "default"))
                .cloned()
                .collect();
            fields::sanitize_policies(&inherited, !no_default_policy)
        } else {
            let wanted = fields::sanitize_policies(&requested, false);
            let allowed = |p: &String| p == "default" || parent.policies.contains(p);
            if !is_root && !wanted.iter().all(allowed) {
                return Err(Error::invalid("child policies must be subset of parent"));
            }
            fields::sanitize_policies(&wanted, !no_default_policy)
        };
        let num_uses = fields::int_field(data, "num_uses")?.unwrap_or(0);
        if num_uses < 0 {
            return Err(Error::invalid("number of uses cannot be negative"));
        }
        let period = fields::duration_secs(data, "period")?.unwrap_or(0);
        if period > 0 && !is_root {
            return Err(Error::invalid(
                "root or sudo privileges required to create periodic token",
            ));
        }
        let explicit_max_ttl = fields::duration_secs(data, "explicit_max_ttl")?.unwrap_or(0);
        let requested_ttl = fields::duration_secs(data, "ttl")?
            .or(fields::duration_secs(data, "lease")?)
            .unwrap_or(0);
        let max_ttl = req.mount.max_lease_ttl.as_secs();
        let root_token = policies.iter().any(|p| p == "root");
        let ttl = initial_ttl(
            requested_ttl,
            req.mount.default_lease_ttl.as_secs(),
            max_ttl,
            explicit_max_ttl,
            period,
            root_token,
        );
        let mut warnings = Vec::new();
        if requested_ttl > 0 && ttl < requested_ttl && period == 0 {
            warnings.push(format!(
                "TTL of \"{requested_ttl}s\" exceeded the effective max_ttl of \"{ttl}s\"; TTL value is capped accordingly"
            ));
        }
        let now = self.now_ms();
        let parent_hash = if orphan {
            None
        } else {
            Some(self.hash(caller).await?)
        };
        let display = fields::str_field(data, "display_name")?.unwrap_or_default();
        let entry = self
            .store_new(TokenEntry {
                id,
                parent: parent_hash,
                policies,
                meta: fields::string_map(data, "meta")?.unwrap_or_default(),
                display_name: token_display_name(&display),
                num_uses,
                creation_time: now / 1000,
                ttl,
                max_ttl,
                explicit_max_ttl,
                period,
                renewable: fields::bool_field(data, "renewable")?.unwrap_or(true),
                path: format!("{}{}", req.mount.path, req.path),
                no_default_policy,
                expires_at_ms: (ttl > 0).then(|| now + ttl as i64 * 1000),
                ..Default::default()
            })
            .await?;
        Ok(Response {
            auth: Some(self.to_auth(&entry)),
            warnings,
            ..Default::default()
        })
    }

    fn caller(req: &BackendRequest<'_>) -> Result<String> {
        req.req
            .client_token
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or(Error::PermissionDenied)
    }

    /// A field from the body, or the path's last segment (`lookup/:token`).
    fn param(req: &BackendRequest<'_>, key: &str, from_path: Option<&str>) -> Result<String> {
        let value = fields::str_field(req.data(), key)?
            .filter(|s| !s.is_empty())
            .or_else(|| from_path.filter(|s| !s.is_empty()).map(str::to_string));
        value.ok_or_else(|| Error::invalid(format!("missing {key}")))
    }

    fn lookup_response(&self, entry: &TokenEntry) -> Response {
        Response {
            data: Some(entry.lookup_data(self.now_ms())),
            ..Default::default()
        }
    }

    fn renew_response(&self, (entry, warnings): (TokenEntry, Vec<String>)) -> Response {
        Response {
            auth: Some(self.to_auth(&entry)),
            warnings,
            ..Default::default()
        }
    }
}

/// JSON bytes for a transaction value.
fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::internal(format!("encode token entry: {e}")))
}

#[async_trait]
impl LogicalBackend for TokenStore {
    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response> {
        use Operation::{Create, List, Read, Update};
        let op = req.operation();
        let write = matches!(op, Create | Update);
        let (head, tail) = match req.path.split_once('/') {
            Some((h, t)) => (h, Some(t)),
            None => (req.path.as_str(), None),
        };
        let increment =
            || fields::duration_secs(req.data(), "increment").map(Option::unwrap_or_default);
        match (head, tail) {
            ("create", None) | ("create-orphan", None) if write => {
                self.handle_create(&req, head == "create-orphan").await
            }
            ("create", Some(role)) if write => Err(Error::invalid(format!(
                "unknown role {role}: token roles are not supported"
            ))),
            ("lookup", _) if write || op == Read => {
                let id = Self::param(&req, "token", tail)?;
                let entry = self.lookup(&id).await?.ok_or(Error::PermissionDenied)?;
                Ok(self.lookup_response(&entry))
            }
            ("lookup-self", None) if write || op == Read => {
                let entry = self
                    .lookup(&Self::caller(&req)?)
                    .await?
                    .ok_or(Error::PermissionDenied)?;
                Ok(self.lookup_response(&entry))
            }
            ("lookup-accessor", _) if write || op == Read => {
                let accessor = Self::param(&req, "accessor", tail)?;
                let entry = self
                    .lookup_accessor(&accessor)
                    .await?
                    .ok_or_else(|| Error::invalid("invalid accessor"))?;
                Ok(self.lookup_response(&entry))
            }
            ("renew", _) if write => {
                let id = Self::param(&req, "token", tail)?;
                Ok(self.renew_response(self.renew(&id, increment()?).await?))
            }
            ("renew-self", None) if write => {
                Ok(self.renew_response(self.renew(&Self::caller(&req)?, increment()?).await?))
            }
            ("renew-accessor", _) if write => {
                let accessor = Self::param(&req, "accessor", tail)?;
                let hash = self
                    .accessor_target(&accessor)
                    .await?
                    .ok_or_else(|| Error::invalid("invalid accessor"))?;
                let (mut entry, warnings) = self.renew_hash(&hash, increment()?).await?;
                // Renewing by accessor must not hand out the token itself.
                entry.id.clear();
                Ok(self.renew_response((entry, warnings)))
            }
            ("revoke", _) if write => {
                self.revoke(&Self::param(&req, "token", tail)?).await?;
                Ok(Response::empty())
            }
            ("revoke-self", None) if write => {
                self.revoke(&Self::caller(&req)?).await?;
                Ok(Response::empty())
            }
            ("revoke-accessor", _) if write => {
                self.revoke_accessor(&Self::param(&req, "accessor", tail)?)
                    .await?;
                Ok(Response::empty())
            }
            ("revoke-orphan", _) if write => {
                self.revoke_orphan(&Self::param(&req, "token", tail)?)
                    .await?;
                Ok(Response::empty())
            }
            ("accessors", None | Some("")) if op == List => {
                Response::list(self.list_accessors().await?)
            }
            ("tidy", None) if write => {
                let removed = self.tidy().await?;
                Ok(Response {
                    warnings: vec![format!(
                        "Tidy operation finished; removed {removed} expired or dangling entries."
                    )],
                    ..Default::default()
                })
            }
            (
                "create" | "create-orphan" | "lookup" | "lookup-self" | "lookup-accessor" | "renew"
                | "renew-self" | "renew-accessor" | "revoke" | "revoke-self" | "revoke-accessor"
                | "revoke-orphan" | "accessors" | "tidy",
                _,
            ) => Err(Error::UnsupportedOperation),
            _ => Err(Error::UnsupportedPath(format!(
                "{}{}",
                req.mount.path, req.path
            ))),
        }
    }
}

#[cfg(test)]
mod tests;
