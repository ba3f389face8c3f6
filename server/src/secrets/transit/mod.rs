//! The transit secret engine, wire-compatible with Vault's `transit` plugin
//! for symmetric keys: encryption as a service, where the keys never leave
//! the server.
//!
//! One [`TransitBackend`] serves one mount. Paths (relative to the mount):
//! - [`manage`]: `keys` (LIST), `keys/:name` (create, read, delete),
//!   `keys/:name/config`, `keys/:name/rotate`, `keys/:name/trim`;
//! - [`crypt`]: `encrypt/:name` (creates the key when the caller may
//!   `create` it, as Vault's upsert), `decrypt/:name`, `rewrap/:name` (all
//!   with `batch_input`), `datakey/{plaintext,wrapped}/:name`;
//! - [`tools`]: `random[/:bytes][/:format]`, `hash[/:algorithm]`.
//!
//! Keys of type `aes128-gcm96`, `aes256-gcm96` (the default) and
//! `chacha20-poly1305`, in Vault's `vault:v<N>:` ciphertext format (see
//! [`named_key`]). Derived keys, convergent encryption, signing, HMAC,
//! export, backup and import are not in this build and are refused or
//! unrouted.
//!
//! Storage (the mount's view, behind the barrier): `keys/<name>`, one JSON
//! document per key holding every version's key bytes. Nothing is cached in
//! memory between requests, so a node that becomes active after a failover
//! serves exactly what the cluster stored.

mod crypt;
mod manage;
mod named_key;
mod tools;

#[cfg(test)]
mod tests;

use async_trait::async_trait;
use chrono::Utc;
use zeroize::Zeroizing;

use super::key_locks::KeyLocks;
use crate::error::{Error, Result};
use crate::logical::{BackendRequest, LogicalBackend, Operation, Response, StorageView};
use named_key::NamedKey;

/// Where the engine keeps its keys inside the mount's view.
const KEYS_PREFIX: &str = "keys/";

/// The `transit` secret engine for one mount.
pub struct TransitBackend {
    locks: KeyLocks,
}

impl TransitBackend {
    pub fn new() -> TransitBackend {
        TransitBackend {
            locks: KeyLocks::new(),
        }
    }
}

impl Default for TransitBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for TransitBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransitBackend")
    }
}

/// A request path, parsed. Names follow Vault's `GenericNameRegex`; a path
/// with any other name is not routed (404), as in Vault.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route<'a> {
    Keys,
    Key(&'a str),
    KeyConfig(&'a str),
    KeyRotate(&'a str),
    KeyTrim(&'a str),
    Encrypt(&'a str),
    Decrypt(&'a str),
    Rewrap(&'a str),
    Datakey { kind: &'a str, name: &'a str },
    Random(Vec<&'a str>),
    Hash(Option<&'a str>),
}

impl<'a> Route<'a> {
    fn parse(path: &'a str) -> Option<Route<'a>> {
        let segments: Vec<&str> = path.split('/').collect();
        let route = match segments.as_slice() {
            ["keys"] | ["keys", ""] => Route::Keys,
            ["keys", name] => Route::Key(name),
            ["keys", name, "config"] => Route::KeyConfig(name),
            ["keys", name, "rotate"] => Route::KeyRotate(name),
            ["keys", name, "trim"] => Route::KeyTrim(name),
            ["encrypt", name] => Route::Encrypt(name),
            ["decrypt", name] => Route::Decrypt(name),
            ["rewrap", name] => Route::Rewrap(name),
            ["datakey", kind, name] if valid_name(kind) => Route::Datakey { kind, name },
            ["random", rest @ ..] if rest.len() <= 3 => Route::Random(rest.to_vec()),
            ["hash"] => Route::Hash(None),
            ["hash", algorithm] => Route::Hash(Some(algorithm)),
            _ => return None,
        };
        match route.key_name() {
            Some(name) if !valid_name(name) => None,
            _ => Some(route),
        }
    }

    fn key_name(&self) -> Option<&'a str> {
        match self {
            Route::Key(n)
            | Route::KeyConfig(n)
            | Route::KeyRotate(n)
            | Route::KeyTrim(n)
            | Route::Encrypt(n)
            | Route::Decrypt(n)
            | Route::Rewrap(n)
            | Route::Datakey { name: n, .. } => Some(n),
            Route::Keys | Route::Random(_) | Route::Hash(_) => None,
        }
    }
}

/// Vault's `\w(([\w-.@]+)?\w)?`.
fn valid_name(name: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let (Some(first), Some(last)) = (name.chars().next(), name.chars().last()) else {
        return false;
    };
    word(first)
        && word(last)
        && name
            .chars()
            .all(|c| word(c) || matches!(c, '-' | '.' | '@'))
}

#[async_trait]
impl LogicalBackend for TransitBackend {
    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response> {
        let route =
            Route::parse(&req.path).ok_or_else(|| Error::UnsupportedPath(req.req.path.clone()))?;
        let write = matches!(req.operation(), Operation::Create | Operation::Update);
        match (route, req.operation()) {
            (Route::Keys, Operation::List) => manage::list(&req).await,
            (Route::Key(name), Operation::Read) => manage::read(&req, name).await,
            (Route::Key(name), Operation::Delete) => manage::delete(self, &req, name).await,
            (Route::Key(name), _) if write => manage::create(self, &req, name).await,
            (Route::KeyConfig(name), _) if write => manage::config(self, &req, name).await,
            (Route::KeyRotate(name), _) if write => manage::rotate(self, &req, name).await,
            (Route::KeyTrim(name), _) if write => manage::trim(self, &req, name).await,
            (Route::Encrypt(name), _) if write => crypt::encrypt(self, &req, name).await,
            (Route::Decrypt(name), _) if write => crypt::decrypt(&req, name).await,
            (Route::Rewrap(name), _) if write => crypt::rewrap(&req, name).await,
            (Route::Datakey { kind, name }, _) if write => crypt::datakey(&req, kind, name).await,
            (Route::Random(segments), _) if write => tools::random(&req, &segments),
            (Route::Hash(algorithm), _) if write => tools::hash(&req, algorithm),
            _ => Err(Error::UnsupportedOperation),
        }
    }

    /// Only `encrypt/:name` has an existence check (the key's), so that a
    /// policy with `create` there may make the key on first use and one with
    /// only `update` may not, as in Vault.
    async fn exists(&self, req: BackendRequest<'_>) -> Result<Option<bool>> {
        match Route::parse(&req.path) {
            Some(Route::Encrypt(name)) => Ok(Some(load(req.storage, name).await?.is_some())),
            _ => Ok(None),
        }
    }
}

/// The key stored under `name`, if any.
async fn load(storage: &StorageView, name: &str) -> Result<Option<NamedKey>> {
    let Some(bytes) = storage.get(&format!("{KEYS_PREFIX}{name}")).await? else {
        return Ok(None);
    };
    let bytes = Zeroizing::new(bytes);
    // serde's message can quote the offending value, which may be key bytes.
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        Error::internal(format!(
            "stored transit key {name:?} is malformed ({:?} error at line {}, column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })
}

/// Writes `key` back; the JSON buffer is sized up front so that the key bytes
/// it holds are never left behind by a reallocation.
async fn store(storage: &StorageView, key: &NamedKey) -> Result<()> {
    let capacity = 1024 + 256 * usize::try_from(key.latest_version).unwrap_or(0);
    let mut out = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut out, key)
        .map_err(|e| Error::internal(format!("encode transit key: {e}")))?;
    storage
        .put(&format!("{KEYS_PREFIX}{}", key.name), out)
        .await?;
    Ok(())
}

fn now() -> chrono::DateTime<Utc> {
    Utc::now()
}
