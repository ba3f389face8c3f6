//! KV v1: each path holds one JSON object, stored under the same key in the
//! mount's view and returned exactly as written. A `ttl` (or legacy `lease`)
//! field in the secret sets the lease duration readers see, as in Vault.

use serde_json::{Map, Value};

use super::{check_key, fields};
use crate::error::{Error, Result};
use crate::logical::{BackendRequest, Lease, Operation, Response};

pub(super) async fn handle(req: &BackendRequest<'_>) -> Result<Response> {
    let key = req.path.as_str();
    check_key(key)?;
    match req.operation() {
        Operation::Read => read(req, key).await,
        Operation::Create | Operation::Update => write(req, key).await,
        Operation::Delete => {
            if !key.is_empty() {
                req.storage.delete(key).await?;
            }
            Ok(Response::empty())
        }
        Operation::List => {
            let prefix = folder(key);
            Response::list(req.storage.list(&prefix).await?)
        }
        Operation::Patch => Err(Error::UnsupportedOperation),
    }
}

pub(super) async fn exists(req: &BackendRequest<'_>) -> Result<Option<bool>> {
    let key = req.path.as_str();
    if key.is_empty() || check_key(key).is_err() {
        return Ok(Some(false));
    }
    Ok(Some(req.storage.get(key).await?.is_some()))
}

async fn read(req: &BackendRequest<'_>, key: &str) -> Result<Response> {
    if key.is_empty() || key.ends_with('/') {
        return Err(Error::NotFound);
    }
    let Some(secret) = req.storage.get_json::<Map<String, Value>>(key).await? else {
        return Err(Error::NotFound);
    };
    let ttl_field = secret.get("ttl").or_else(|| secret.get("lease")).cloned();
    let lease_duration = ttl_field
        .and_then(|value| {
            let mut one = Map::new();
            one.insert("ttl".into(), value);
            fields::signed_duration_secs(&one, "ttl").ok().flatten()
        })
        .and_then(|secs| u64::try_from(secs).ok())
        .unwrap_or(req.mount.default_lease_ttl.as_secs());
    let mut resp = Response::data(Value::Object(secret));
    resp.lease = Some(Lease {
        lease_id: String::new(),
        renewable: false,
        lease_duration,
    });
    Ok(resp)
}

async fn write(req: &BackendRequest<'_>, key: &str) -> Result<Response> {
    if key.is_empty() {
        return Err(Error::invalid("missing path"));
    }
    if key.ends_with('/') {
        return Err(Error::invalid(format!(
            "invalid path {key:?}: a secret's path may not end in \"/\""
        )));
    }
    if req.data().is_empty() {
        return Err(Error::invalid("missing data fields"));
    }
    req.storage.put_json(key, req.data()).await?;
    Ok(Response::empty())
}

/// Vault lists the folder at a path whether or not the client added the `/`.
fn folder(key: &str) -> String {
    if key.is_empty() || key.ends_with('/') {
        key.to_string()
    } else {
        format!("{key}/")
    }
}
