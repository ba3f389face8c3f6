//! The logical request model shared by the core, secret engines, auth methods
//! and audit devices: what a request asks ([`Request`]), what a handler answers
//! ([`Response`]), who is asking ([`Auth`]), and where a mount keeps its data
//! ([`StorageView`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::client::go_duration::parse_duration;
use crate::error::{Error, Result};
use crate::physical::{Backend, StorageError, TxnOp};

/// Vault's logical operations. PUT and POST arrive as `Update` (or `Create`
/// when the target does not exist yet, decided by an existence check).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Read,
    Create,
    Update,
    Patch,
    Delete,
    List,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::Patch => "patch",
            Operation::Delete => "delete",
            Operation::List => "list",
        }
    }
}

/// The mount a request was routed to.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MountInfo {
    /// Mount path with trailing slash, e.g. `secret/` or `auth/userpass/`.
    pub path: String,
    /// Engine type, e.g. `kv`, `userpass`, `token`, `system`.
    pub kind: String,
    pub accessor: String,
    pub uuid: String,
    /// Mount options (`version` for kv).
    pub options: BTreeMap<String, String>,
    /// Effective lease TTLs for the mount (tuned or system default).
    pub default_lease_ttl: Duration,
    pub max_lease_ttl: Duration,
}

/// A client request after parsing and routing.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: String,
    pub operation: Operation,
    /// Full path without `/v1/`, e.g. `secret/data/app`.
    pub path: String,
    /// JSON body merged with query parameters (as Vault does for reads).
    pub data: Map<String, Value>,
    pub client_token: Option<String>,
    pub remote_addr: Option<SocketAddr>,
    /// Request headers the handlers may need (lower-case names).
    pub headers: BTreeMap<String, String>,
    /// Filled in by the router.
    pub mount: Option<MountInfo>,
    /// The caller's token, once the core has resolved it.
    pub auth: Option<Auth>,
    /// A body that is not JSON (a snapshot archive being restored): the bytes as read from
    /// the connection, shared, not copied.
    pub raw_body: Option<axum::body::Bytes>,
}

impl Request {
    pub fn new(operation: Operation, path: impl Into<String>) -> Self {
        Request {
            id: uuid::Uuid::new_v4().to_string(),
            operation,
            path: path.into(),
            data: Map::new(),
            client_token: None,
            remote_addr: None,
            headers: BTreeMap::new(),
            mount: None,
            auth: None,
            raw_body: None,
        }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        if let Value::Object(map) = data {
            self.data = map;
        }
        self
    }

    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.client_token = Some(token.into());
        self
    }

    /// A string field of the body, if present and a string (numbers are
    /// stringified, as Vault's field parser does).
    pub fn get_str(&self, key: &str) -> Option<String> {
        match self.data.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

/// Who a token belongs to and what it may do. Used in responses (`auth`
/// block), for audit entries, and as the input of a login: an auth method
/// fills the policy and TTL fields and the core mints the token.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Auth {
    pub client_token: String,
    pub accessor: String,
    pub display_name: String,
    pub policies: Vec<String>,
    pub token_policies: Vec<String>,
    pub identity_policies: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub entity_id: String,
    /// `service` or `batch`.
    pub token_type: String,
    pub orphan: bool,
    pub renewable: bool,
    pub num_uses: i64,
    /// Seconds; the token's remaining TTL in responses, the requested TTL on login.
    pub lease_duration: u64,
    /// Login inputs (seconds, 0 = unset).
    pub max_ttl: u64,
    pub explicit_max_ttl: u64,
    pub period: u64,
    /// Unix seconds the token was issued, for audit `token_issue_time`.
    pub issue_time: i64,
    /// Mount path that issued the token, e.g. `auth/userpass/login/alice`.
    pub path: String,
    /// True when `no_default_policy` was asked for on login.
    pub no_default_policy: bool,
}

/// A lease attached to a response.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lease {
    pub lease_id: String,
    pub renewable: bool,
    pub lease_duration: u64,
}

/// A body that is not Vault JSON (Prometheus text, a snapshot archive).
#[derive(Debug, Clone)]
pub struct RawBody {
    pub content_type: String,
    pub body: RawContent,
}

/// What a raw body holds.
#[derive(Debug, Clone)]
pub enum RawContent {
    Bytes(Vec<u8>),
    /// A file sent as it is read, from its start, and its length: a snapshot archive, which
    /// is hundreds of megabytes at 100,000 secrets, waits on the data disk, not in memory.
    File(std::sync::Arc<std::fs::File>, u64),
}

impl From<Vec<u8>> for RawContent {
    fn from(bytes: Vec<u8>) -> Self {
        RawContent::Bytes(bytes)
    }
}

/// What a handler answers.
#[derive(Debug, Clone, Default)]
pub struct Response {
    pub data: Option<Map<String, Value>>,
    pub auth: Option<Auth>,
    pub lease: Option<Lease>,
    pub warnings: Vec<String>,
    /// Status to send instead of 200/204, e.g. 404 for a deleted KV version
    /// (Vault returns its metadata with the 404).
    pub status: Option<u16>,
    pub raw: Option<RawBody>,
}

impl Response {
    /// 204: nothing to say.
    pub fn empty() -> Self {
        Self::default()
    }

    pub fn data(value: Value) -> Self {
        match value {
            Value::Object(map) => Response {
                data: Some(map),
                ..Default::default()
            },
            other => {
                let mut map = Map::new();
                map.insert("value".into(), other);
                Response {
                    data: Some(map),
                    ..Default::default()
                }
            }
        }
    }

    /// `data.keys` for LIST; an empty list is a 404 as in Vault.
    pub fn list(keys: Vec<String>) -> Result<Self> {
        if keys.is_empty() {
            return Err(Error::NotFound);
        }
        Ok(Self::data(serde_json::json!({ "keys": keys })))
    }

    pub fn with_warning(mut self, warning: impl Into<String>) -> Self {
        self.warnings.push(warning.into());
        self
    }
}

/// A mount's slice of storage: every key is prefixed with the mount's view
/// prefix (`logical/<uuid>/`, `auth/<uuid>/`, `sys/...`). Handlers never see
/// keys outside their view.
#[derive(Clone)]
pub struct StorageView {
    inner: Arc<dyn Backend>,
    prefix: String,
}

impl std::fmt::Debug for StorageView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageView")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl StorageView {
    pub fn new(inner: Arc<dyn Backend>, prefix: impl Into<String>) -> Self {
        StorageView {
            inner,
            prefix: prefix.into(),
        }
    }

    /// A view over an in-memory store, for unit tests.
    pub fn inmem() -> Self {
        Self::new(Arc::new(crate::physical::inmem::InmemBackend::new()), "")
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A narrower view: `sub("users/")` keeps keys under `<prefix>users/`.
    pub fn sub(&self, prefix: &str) -> StorageView {
        StorageView {
            inner: self.inner.clone(),
            prefix: format!("{}{}", self.prefix, prefix),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(&self.key(key)).await
    }

    pub async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StorageError> {
        self.inner.put(&self.key(key), value).await
    }

    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.delete(&self.key(key)).await
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.inner.list(&self.key(prefix)).await
    }

    /// Atomic multi-key write; keys are relative to this view.
    pub async fn transaction(&self, ops: Vec<TxnOp>) -> Result<(), StorageError> {
        let ops = ops
            .into_iter()
            .map(|op| match op {
                TxnOp::Put { key, value } => TxnOp::Put {
                    key: self.key(&key),
                    value,
                },
                TxnOp::Delete { key } => TxnOp::Delete {
                    key: self.key(&key),
                },
            })
            .collect();
        self.inner.transaction(ops).await
    }

    pub async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.get(key).await? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::internal(format!("decode stored entry {:?}: {e}", self.key(key)))
            }),
        }
    }

    pub async fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let bytes =
            serde_json::to_vec(value).map_err(|e| Error::internal(format!("encode entry: {e}")))?;
        Ok(self.put(key, bytes).await?)
    }

    /// Every key under `prefix`, recursively (folders expanded).
    pub async fn list_recursive(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut out = Vec::new();
        let mut pending = vec![prefix.to_string()];
        while let Some(dir) = pending.pop() {
            for child in self.list(&dir).await? {
                let full = format!("{dir}{child}");
                if child.ends_with('/') {
                    pending.push(full);
                } else {
                    out.push(full);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes every key under `prefix` (used when a mount is disabled).
    pub async fn clear(&self, prefix: &str) -> Result<(), StorageError> {
        for key in self.list_recursive(prefix).await? {
            self.delete(&key).await?;
        }
        Ok(())
    }
}

/// What a mounted engine or auth method receives: the request with its path
/// made relative to the mount, and the mount's storage.
pub struct BackendRequest<'a> {
    /// Path relative to the mount, e.g. `data/app` for `secret/data/app`.
    pub path: String,
    pub req: &'a Request,
    pub storage: &'a StorageView,
    pub mount: &'a MountInfo,
}

impl BackendRequest<'_> {
    pub fn operation(&self) -> Operation {
        self.req.operation
    }

    pub fn data(&self) -> &Map<String, Value> {
        &self.req.data
    }
}

/// A secret engine or auth method mounted in the router.
#[async_trait]
pub trait LogicalBackend: Send + Sync {
    /// Serves one request. `Err(Error::UnsupportedPath)` for paths it does not
    /// know, `Err(Error::UnsupportedOperation)` for a known path and wrong verb.
    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response>;

    /// Whether the target of a write exists, so the ACL can ask for `create`
    /// or `update`. `None`: the path has no existence check (treated as update).
    async fn exists(&self, _req: BackendRequest<'_>) -> Result<Option<bool>> {
        Ok(None)
    }

    /// Mount-relative paths that need no token (`login`, `login/*`).
    /// A trailing `*` matches any suffix.
    fn unauthenticated_paths(&self) -> &'static [&'static str] {
        &[]
    }

    /// Called once when the mount is disabled, before its storage is cleared.
    async fn cleanup(&self, _storage: &StorageView) -> Result<()> {
        Ok(())
    }
}

/// A mount for engine unit tests: an in-memory view and the mount's info,
/// through which a request reaches a backend as the router would send it.
#[cfg(test)]
pub(crate) struct TestMount {
    pub(crate) storage: StorageView,
    pub(crate) info: MountInfo,
}

#[cfg(test)]
impl TestMount {
    /// `info` names the mount path (`secret/`) and whatever else the engine reads.
    pub(crate) fn new(info: MountInfo) -> Self {
        TestMount {
            storage: StorageView::inmem(),
            info,
        }
    }

    /// `op` on the mount-relative `path` with `body`.
    pub(crate) async fn handle(
        &self,
        backend: &dyn LogicalBackend,
        op: Operation,
        path: &str,
        body: Value,
    ) -> Result<Response> {
        let req = Request::new(op, format!("{}{path}", self.info.path)).with_data(body);
        backend.handle(self.request(path, &req)).await
    }

    /// The backend's existence check for `op` on `path`.
    pub(crate) async fn exists(
        &self,
        backend: &dyn LogicalBackend,
        op: Operation,
        path: &str,
    ) -> Result<Option<bool>> {
        let req = Request::new(op, format!("{}{path}", self.info.path));
        backend.exists(self.request(path, &req)).await
    }

    fn request<'a>(&'a self, path: &str, req: &'a Request) -> BackendRequest<'a> {
        BackendRequest {
            path: path.to_string(),
            req,
            storage: &self.storage,
            mount: &self.info,
        }
    }
}

/// Reads a Vault duration field: an integer number of seconds, or a Go-style
/// string (`"30s"`, `"1h"`, `"768h"`, `"1h30m"`). `None` when absent or empty.
pub fn parse_duration_field(data: &Map<String, Value>, key: &str) -> Result<Option<Duration>> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            n.as_u64()
                .map(|s| Some(Duration::from_secs(s)))
                .ok_or_else(|| {
                    Error::invalid(format!("{key}: expected a non-negative number of seconds"))
                })
        }
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => parse_duration(s)
            .map(Some)
            .map_err(|e| Error::invalid(format!("{key}: {e}"))),
        Some(_) => Err(Error::invalid(format!(
            "{key}: expected a duration such as \"30s\" or \"1h\""
        ))),
    }
}
