//! The AppRole auth method: roles with a RoleID, SecretIDs issued against
//! them, and a login that trades the pair for a token.
//!
//! Storage (the mount's view). RoleIDs and SecretIDs are credentials, so they
//! appear in keys only as salted hashes (HMAC-SHA256 keyed with `salt`):
//!
//! ```text
//! salt                              32 random bytes
//! role/<name>                       RoleEntry
//! role_id/<h(role_id)>              RoleIdIndex { name }
//! secret_id/<name>/<h(secret_id)>   SecretIdEntry (the SecretID itself is not stored)
//! accessor/<h(accessor)>            AccessorIndex { role, secret_id: h(secret_id) }
//! ```

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use chrono::{SecondsFormat, TimeZone, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::Sha256;
use tokio::sync::Mutex;

use crate::auth::{cidr, fields, TokenParams};
use crate::error::{Error, Result};
use crate::logical::{BackendRequest, LogicalBackend, Operation, Response, StorageView};
use crate::physical::TxnOp;

/// Vault's answer to any bad RoleID/SecretID pair, so that neither can be
/// probed on its own.
const BAD_CREDENTIALS: &str = "invalid role or secret ID";

#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
struct RoleEntry {
    role_id: String,
    bind_secret_id: bool,
    secret_id_bound_cidrs: Vec<String>,
    secret_id_num_uses: i64,
    secret_id_ttl: u64,
    #[serde(flatten)]
    token: TokenParams,
}

impl Default for RoleEntry {
    fn default() -> Self {
        RoleEntry {
            role_id: String::new(),
            bind_secret_id: true,
            secret_id_bound_cidrs: Vec::new(),
            secret_id_num_uses: 0,
            secret_id_ttl: 0,
            token: TokenParams::default(),
        }
    }
}

impl std::fmt::Debug for RoleEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleEntry")
            .field("role_id", &"<redacted>")
            .field("bind_secret_id", &self.bind_secret_id)
            .field("secret_id_num_uses", &self.secret_id_num_uses)
            .field("secret_id_ttl", &self.secret_id_ttl)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoleIdIndex {
    name: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct SecretIdEntry {
    accessor: String,
    /// Unix milliseconds.
    creation_ms: i64,
    last_updated_ms: i64,
    /// `None`: never expires.
    expires_ms: Option<i64>,
    /// Uses left; 0 = unlimited.
    num_uses: i64,
    ttl: u64,
    metadata: BTreeMap<String, String>,
    cidr_list: Vec<String>,
    token_bound_cidrs: Vec<String>,
}

impl SecretIdEntry {
    fn expired(&self, now: i64) -> bool {
        self.expires_ms.is_some_and(|at| at <= now)
    }

    /// Vault's lookup shape; a SecretID without TTL shows Go's zero time.
    fn lookup_data(&self) -> Map<String, Value> {
        let time = |ms: i64| {
            Utc.timestamp_millis_opt(ms)
                .single()
                .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
                .unwrap_or_default()
        };
        let data = json!({
            "cidr_list": self.cidr_list,
            "creation_time": time(self.creation_ms),
            "expiration_time": self.expires_ms.map(time).unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
            "last_updated_time": time(self.last_updated_ms),
            "metadata": self.metadata,
            "secret_id_accessor": self.accessor,
            "secret_id_num_uses": self.num_uses,
            "secret_id_ttl": self.ttl,
            "token_bound_cidrs": self.token_bound_cidrs,
        });
        data.as_object().cloned().unwrap_or_default()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AccessorIndex {
    role: String,
    /// Salted hash of the SecretID.
    secret_id: String,
}

/// The AppRole backend, mounted at `auth/<path>/`.
#[derive(Debug, Default)]
pub struct ApproleBackend {
    /// Salts by storage prefix (one per mount this backend serves).
    salts: Mutex<HashMap<String, Vec<u8>>>,
    /// Serialises SecretID use counting, so two logins cannot both take the
    /// last use.
    consume: Mutex<()>,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Vault's GenericNameRegex: word characters, with `-`, `.` and `@` inside.
fn role_name(name: &str) -> Result<String> {
    let ok_inner = |c: char| c.is_ascii_alphanumeric() || "_-.@".contains(c);
    let ok_edge = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let valid = !name.is_empty()
        && name.chars().all(ok_inner)
        && name.chars().next().is_some_and(ok_edge)
        && name.chars().last().is_some_and(ok_edge);
    if !valid {
        return Err(Error::invalid(format!(
            "invalid role name {name:?}: use letters, digits, '_', '-', '.' and '@'"
        )));
    }
    Ok(name.to_lowercase())
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::internal(format!("encode approle entry: {e}")))
}

fn secret_field(req: &BackendRequest<'_>, key: &str) -> Result<String> {
    fields::str_field(req.data(), key)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::invalid(format!("missing {key}")))
}

impl ApproleBackend {
    pub fn new() -> Self {
        Self::default()
    }

    async fn hash(&self, storage: &StorageView, value: &str) -> Result<String> {
        let salt = {
            let mut salts = self.salts.lock().await;
            match salts.get(storage.prefix()) {
                Some(salt) => salt.clone(),
                None => {
                    let salt = match storage.get("salt").await? {
                        Some(salt) => salt,
                        None => {
                            let mut salt = vec![0u8; 32];
                            rand::rngs::OsRng.fill_bytes(&mut salt);
                            storage.put("salt", salt.clone()).await?;
                            salt
                        }
                    };
                    salts.insert(storage.prefix().to_string(), salt.clone());
                    salt
                }
            }
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&salt)
            .map_err(|_| Error::internal("approle salt has an invalid length"))?;
        mac.update(value.as_bytes());
        Ok(hex::encode(mac.finalize().into_bytes()))
    }

    async fn role(&self, storage: &StorageView, name: &str) -> Result<Option<RoleEntry>> {
        storage
            .get_json(&format!("role/{}", role_name(name)?))
            .await
    }

    async fn existing_role(&self, storage: &StorageView, name: &str) -> Result<RoleEntry> {
        self.role(storage, name)
            .await?
            .ok_or_else(|| Error::invalid(format!("role {name:?} does not exist")))
    }

    /// Stores a role, moving its RoleID index when the RoleID changed.
    async fn save_role(
        &self,
        storage: &StorageView,
        name: &str,
        role: &RoleEntry,
        old_role_id: Option<&str>,
    ) -> Result<()> {
        let new_index = format!("role_id/{}", self.hash(storage, &role.role_id).await?);
        if let Some(owner) = storage.get_json::<RoleIdIndex>(&new_index).await? {
            if owner.name != name {
                return Err(Error::invalid("role_id already in use"));
            }
        }
        let mut ops = vec![
            TxnOp::Put {
                key: format!("role/{name}"),
                value: encode(role)?,
            },
            TxnOp::Put {
                key: new_index.clone(),
                value: encode(&RoleIdIndex { name: name.into() })?,
            },
        ];
        if let Some(old) = old_role_id.filter(|old| *old != role.role_id) {
            ops.push(TxnOp::Delete {
                key: format!("role_id/{}", self.hash(storage, old).await?),
            });
        }
        Ok(storage.transaction(ops).await?)
    }

    async fn write_role(&self, req: &BackendRequest<'_>, name: &str) -> Result<Response> {
        let name = role_name(name)?;
        let data = req.data();
        let existing = self.role(req.storage, &name).await?;
        let old_role_id = existing.as_ref().map(|r| r.role_id.clone());
        let mut role = existing.unwrap_or_else(|| RoleEntry {
            role_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        });
        if let Some(id) = fields::str_field(data, "role_id")?.filter(|s| !s.is_empty()) {
            role.role_id = id;
        }
        if let Some(v) = fields::bool_field(data, "bind_secret_id")? {
            role.bind_secret_id = v;
        }
        let cidr_key = if data.contains_key("secret_id_bound_cidrs") {
            "secret_id_bound_cidrs"
        } else {
            "bound_cidr_list"
        };
        if let Some(v) = fields::str_list(data, cidr_key)? {
            cidr::validate_all(&v)?;
            role.secret_id_bound_cidrs = v;
        }
        if let Some(v) = fields::int_field(data, "secret_id_num_uses")? {
            if v < 0 {
                return Err(Error::invalid("secret_id_num_uses cannot be negative"));
            }
            role.secret_id_num_uses = v;
        }
        if let Some(v) = fields::duration_secs(data, "secret_id_ttl")? {
            role.secret_id_ttl = v;
        }
        role.token.update_from(data)?;
        if !role.bind_secret_id
            && role.secret_id_bound_cidrs.is_empty()
            && role.token.token_bound_cidrs.is_empty()
        {
            return Err(Error::invalid(
                "at least one constraint should be enabled on the role",
            ));
        }
        self.save_role(req.storage, &name, &role, old_role_id.as_deref())
            .await?;
        Ok(Response::empty())
    }

    async fn read_role(&self, req: &BackendRequest<'_>, name: &str) -> Result<Response> {
        let role = self.role(req.storage, name).await?.ok_or(Error::NotFound)?;
        let mut data = json!({
            "bind_secret_id": role.bind_secret_id,
            "local_secret_ids": false,
            "secret_id_bound_cidrs": role.secret_id_bound_cidrs,
            "secret_id_num_uses": role.secret_id_num_uses,
            "secret_id_ttl": role.secret_id_ttl,
            "period": role.token.token_period,
        })
        .as_object()
        .cloned()
        .unwrap_or_default();
        role.token.write_fields(&mut data);
        Ok(Response {
            data: Some(data),
            ..Default::default()
        })
    }

    async fn delete_role(&self, req: &BackendRequest<'_>, name: &str) -> Result<Response> {
        let name = role_name(name)?;
        let Some(role) = self.role(req.storage, &name).await? else {
            return Ok(Response::empty());
        };
        for hash in req.storage.list(&format!("secret_id/{name}/")).await? {
            self.destroy_secret_id(req.storage, &name, &hash).await?;
        }
        let ops = vec![
            TxnOp::Delete {
                key: format!("role/{name}"),
            },
            TxnOp::Delete {
                key: format!("role_id/{}", self.hash(req.storage, &role.role_id).await?),
            },
        ];
        req.storage.transaction(ops).await?;
        Ok(Response::empty())
    }

    /// Issues a SecretID (`secret-id`, or `custom-secret-id` with `custom`).
    async fn issue_secret_id(
        &self,
        req: &BackendRequest<'_>,
        name: &str,
        custom: Option<String>,
    ) -> Result<Response> {
        let name = role_name(name)?;
        let role = self.existing_role(req.storage, &name).await?;
        let data = req.data();
        let mut ttl = fields::duration_secs(data, "ttl")?.unwrap_or(0);
        if role.secret_id_ttl > 0 && ttl > role.secret_id_ttl {
            return Err(Error::invalid(
                "ttl cannot be longer than the role's secret_id_ttl",
            ));
        }
        if ttl == 0 {
            ttl = role.secret_id_ttl;
        }
        let mut num_uses = fields::int_field(data, "num_uses")?.unwrap_or(0);
        if num_uses < 0 {
            return Err(Error::invalid("num_uses cannot be negative"));
        }
        if role.secret_id_num_uses > 0 && (num_uses == 0 || num_uses > role.secret_id_num_uses) {
            if num_uses > role.secret_id_num_uses {
                return Err(Error::invalid(
                    "num_uses cannot be higher than the role's secret_id_num_uses",
                ));
            }
            num_uses = role.secret_id_num_uses;
        }
        let cidr_list = fields::str_list(data, "cidr_list")?.unwrap_or_default();
        cidr::validate_all(&cidr_list)?;
        let token_bound_cidrs = fields::str_list(data, "token_bound_cidrs")?.unwrap_or_default();
        cidr::validate_all(&token_bound_cidrs)?;
        let metadata = fields::string_map(data, "metadata")?.unwrap_or_default();

        let secret_id = custom.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let accessor = uuid::Uuid::new_v4().to_string();
        let hash = self.hash(req.storage, &secret_id).await?;
        let key = format!("secret_id/{name}/{hash}");
        if req.storage.get(&key).await?.is_some() {
            return Err(Error::invalid("SecretID is already registered"));
        }
        let now = now_ms();
        let entry = SecretIdEntry {
            accessor: accessor.clone(),
            creation_ms: now,
            last_updated_ms: now,
            expires_ms: (ttl > 0).then(|| now + ttl as i64 * 1000),
            num_uses,
            ttl,
            metadata,
            cidr_list,
            token_bound_cidrs,
        };
        let ops = vec![
            TxnOp::Put {
                key,
                value: encode(&entry)?,
            },
            TxnOp::Put {
                key: format!("accessor/{}", self.hash(req.storage, &accessor).await?),
                value: encode(&AccessorIndex {
                    role: name,
                    secret_id: hash,
                })?,
            },
        ];
        req.storage.transaction(ops).await?;
        Ok(Response::data(json!({
            "secret_id": secret_id,
            "secret_id_accessor": accessor,
            "secret_id_ttl": ttl,
            "secret_id_num_uses": num_uses,
        })))
    }

    async fn destroy_secret_id(&self, storage: &StorageView, role: &str, hash: &str) -> Result<()> {
        let key = format!("secret_id/{role}/{hash}");
        let mut ops = vec![TxnOp::Delete { key: key.clone() }];
        if let Some(entry) = storage.get_json::<SecretIdEntry>(&key).await? {
            ops.push(TxnOp::Delete {
                key: format!("accessor/{}", self.hash(storage, &entry.accessor).await?),
            });
        }
        Ok(storage.transaction(ops).await?)
    }

    /// A live SecretID entry by hash; an expired one is removed.
    async fn live_secret_id(
        &self,
        storage: &StorageView,
        role: &str,
        hash: &str,
    ) -> Result<Option<SecretIdEntry>> {
        let key = format!("secret_id/{role}/{hash}");
        let Some(entry) = storage.get_json::<SecretIdEntry>(&key).await? else {
            return Ok(None);
        };
        if entry.expired(now_ms()) {
            self.destroy_secret_id(storage, role, hash).await?;
            return Ok(None);
        }
        Ok(Some(entry))
    }

    /// The SecretID hash an accessor of `role` points at.
    async fn accessor_target(
        &self,
        req: &BackendRequest<'_>,
        role: &str,
    ) -> Result<Option<String>> {
        let accessor = secret_field(req, "secret_id_accessor")?;
        let key = format!("accessor/{}", self.hash(req.storage, &accessor).await?);
        Ok(req
            .storage
            .get_json::<AccessorIndex>(&key)
            .await?
            .filter(|idx| idx.role == role)
            .map(|idx| idx.secret_id))
    }

    async fn list_secret_id_accessors(
        &self,
        req: &BackendRequest<'_>,
        name: &str,
    ) -> Result<Response> {
        let name = role_name(name)?;
        self.existing_role(req.storage, &name).await?;
        let mut accessors = Vec::new();
        for hash in req.storage.list(&format!("secret_id/{name}/")).await? {
            if let Some(entry) = self.live_secret_id(req.storage, &name, &hash).await? {
                accessors.push(entry.accessor);
            }
        }
        accessors.sort();
        Response::list(accessors)
    }

    async fn login(&self, req: &BackendRequest<'_>) -> Result<Response> {
        let role_id = secret_field(req, "role_id")?;
        let index_key = format!("role_id/{}", self.hash(req.storage, &role_id).await?);
        let index = req.storage.get_json::<RoleIdIndex>(&index_key).await?;
        let role = match &index {
            Some(idx) => self.role(req.storage, &idx.name).await?,
            None => None,
        };
        let (Some(index), Some(role)) = (index, role) else {
            return Err(Error::invalid(BAD_CREDENTIALS));
        };
        let name = index.name;
        let addr = req.req.remote_addr.map(|a| a.ip());
        if !cidr::allows(&role.secret_id_bound_cidrs, addr) {
            return Err(Error::invalid(
                "source address unauthorized by CIDR restrictions on the role",
            ));
        }
        let mut metadata = BTreeMap::new();
        let mut token_cidrs = role.token.token_bound_cidrs.clone();
        if role.bind_secret_id {
            let secret_id = secret_field(req, "secret_id")?;
            let hash = self.hash(req.storage, &secret_id).await?;
            let _guard = self.consume.lock().await;
            let entry = self
                .live_secret_id(req.storage, &name, &hash)
                .await?
                .ok_or_else(|| Error::invalid(BAD_CREDENTIALS))?;
            if !cidr::allows(&entry.cidr_list, addr) {
                return Err(Error::invalid(
                    "source address unauthorized through CIDR restrictions on the secret ID",
                ));
            }
            match entry.num_uses {
                0 => {}
                1 => self.destroy_secret_id(req.storage, &name, &hash).await?,
                n => {
                    let updated = SecretIdEntry {
                        num_uses: n - 1,
                        last_updated_ms: now_ms(),
                        ..entry.clone()
                    };
                    req.storage
                        .put_json(&format!("secret_id/{name}/{hash}"), &updated)
                        .await?;
                }
            }
            metadata = entry.metadata;
            if !entry.token_bound_cidrs.is_empty() {
                token_cidrs = entry.token_bound_cidrs;
            }
        }
        // Tokens carry no CIDR binding here, so the binding is enforced at
        // login, where the address is known.
        if !cidr::allows(&token_cidrs, addr) {
            return Err(Error::PermissionDenied);
        }
        let mut auth = role.token.login_auth();
        metadata.insert("role_name".into(), name);
        auth.metadata = metadata;
        auth.path = format!("{}{}", req.mount.path, req.path);
        Ok(Response {
            auth: Some(auth),
            ..Default::default()
        })
    }

    /// Removes expired SecretIDs and accessor entries that point at nothing.
    async fn tidy(&self, storage: &StorageView) -> Result<usize> {
        let mut removed = 0;
        for role in storage.list("secret_id/").await? {
            let role = role.trim_end_matches('/');
            for hash in storage.list(&format!("secret_id/{role}/")).await? {
                if self.live_secret_id(storage, role, &hash).await?.is_none() {
                    removed += 1;
                }
            }
        }
        for key in storage.list("accessor/").await? {
            let path = format!("accessor/{key}");
            let Some(idx) = storage.get_json::<AccessorIndex>(&path).await? else {
                continue;
            };
            let target = format!("secret_id/{}/{}", idx.role, idx.secret_id);
            if storage.get(&target).await?.is_none() {
                storage.delete(&path).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[async_trait]
impl LogicalBackend for ApproleBackend {
    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response> {
        use Operation::{Create, Delete, List, Read, Update};
        let op = req.operation();
        let write = matches!(op, Create | Update);
        let segments: Vec<&str> = req.path.trim_end_matches('/').split('/').collect();
        match segments.as_slice() {
            ["login"] if write => self.login(&req).await,
            ["role"] if op == List => {
                let mut names = req.storage.list("role/").await?;
                names.sort();
                Response::list(names)
            }
            ["role", name] => match op {
                Create | Update => self.write_role(&req, name).await,
                Read => self.read_role(&req, name).await,
                Delete => self.delete_role(&req, name).await,
                _ => Err(Error::UnsupportedOperation),
            },
            ["role", name, "role-id"] if op == Read => {
                let role = self.role(req.storage, name).await?.ok_or(Error::NotFound)?;
                Ok(Response::data(json!({ "role_id": role.role_id })))
            }
            ["role", name, "role-id"] if write => {
                let name = role_name(name)?;
                let mut role = self.existing_role(req.storage, &name).await?;
                let old = std::mem::replace(&mut role.role_id, secret_field(&req, "role_id")?);
                self.save_role(req.storage, &name, &role, Some(&old))
                    .await?;
                Ok(Response::empty())
            }
            ["role", name, "secret-id"] if write => self.issue_secret_id(&req, name, None).await,
            ["role", name, "secret-id"] if op == List => {
                self.list_secret_id_accessors(&req, name).await
            }
            ["role", name, "custom-secret-id"] if write => {
                let custom = secret_field(&req, "secret_id")?;
                self.issue_secret_id(&req, name, Some(custom)).await
            }
            ["role", name, "secret-id", action @ ("lookup" | "destroy")]
                if write || (op == Delete && *action == "destroy") =>
            {
                let name = role_name(name)?;
                self.existing_role(req.storage, &name).await?;
                let hash = self
                    .hash(req.storage, &secret_field(&req, "secret_id")?)
                    .await?;
                if *action == "destroy" {
                    self.destroy_secret_id(req.storage, &name, &hash).await?;
                    return Ok(Response::empty());
                }
                Ok(
                    match self.live_secret_id(req.storage, &name, &hash).await? {
                        Some(entry) => Response {
                            data: Some(entry.lookup_data()),
                            ..Default::default()
                        },
                        None => Response::empty(),
                    },
                )
            }
            ["role", name, "secret-id-accessor", action @ ("lookup" | "destroy")]
                if write || (op == Delete && *action == "destroy") =>
            {
                let name = role_name(name)?;
                self.existing_role(req.storage, &name).await?;
                let hash = self.accessor_target(&req, &name).await?;
                if *action == "destroy" {
                    if let Some(hash) = hash {
                        self.destroy_secret_id(req.storage, &name, &hash).await?;
                    }
                    return Ok(Response::empty());
                }
                let entry = match hash {
                    Some(hash) => self.live_secret_id(req.storage, &name, &hash).await?,
                    None => None,
                };
                let entry = entry.ok_or(Error::NotFound)?;
                Ok(Response {
                    data: Some(entry.lookup_data()),
                    ..Default::default()
                })
            }
            ["tidy", "secret-id"] if write => {
                let removed = self.tidy(req.storage).await?;
                Ok(Response::empty().with_warning(format!(
                    "Tidy operation finished; removed {removed} expired or dangling SecretID entries."
                )))
            }
            ["login"]
            | ["role"]
            | ["role", _, "role-id" | "secret-id" | "custom-secret-id"]
            | ["role", _, "secret-id" | "secret-id-accessor", "lookup" | "destroy"]
            | ["tidy", "secret-id"] => Err(Error::UnsupportedOperation),
            _ => Err(Error::UnsupportedPath(format!(
                "{}{}",
                req.mount.path, req.path
            ))),
        }
    }

    async fn exists(&self, req: BackendRequest<'_>) -> Result<Option<bool>> {
        match req.path.split('/').collect::<Vec<_>>().as_slice() {
            ["role", name] if !name.is_empty() => Ok(Some(
                self.role(req.storage, name).await.ok().flatten().is_some(),
            )),
            _ => Ok(None),
        }
    }

    fn unauthenticated_paths(&self) -> &'static [&'static str] {
        &["login"]
    }

    async fn cleanup(&self, storage: &StorageView) -> Result<()> {
        self.salts.lock().await.remove(storage.prefix());
        Ok(())
    }
}

#[cfg(test)]
mod tests;
