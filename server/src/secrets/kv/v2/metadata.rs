//! Settings: `metadata/<path>` (one secret's settings and version history,
//! and LIST of the secret tree) and `config` (the mount's defaults).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::{load_config, load_metadata, metadata_key, KeyMetadata, MountConfig, CONFIG_KEY};
use crate::error::{Error, Result};
use crate::logical::{BackendRequest, Operation, Response};
use crate::physical::TxnOp;
use crate::secrets::kv::{check_key, fields, KvBackend};

const MAX_CUSTOM_METADATA_KEYS: usize = 64;
const MAX_CUSTOM_METADATA_KEY_LEN: usize = 128;
const MAX_CUSTOM_METADATA_VALUE_LEN: usize = 512;
const CUSTOM_METADATA_ERROR: &str = "custom_metadata validation failed";
const CAS_IGNORED_WARNING: &str =
    "\"cas_required\" set to false, but is mandated by backend config. This value will be ignored.";

pub(super) async fn config(req: &BackendRequest<'_>) -> Result<Response> {
    match req.operation() {
        Operation::Read => {
            let config = load_config(req.storage).await?;
            Ok(Response::data(json!({
                "cas_required": config.cas_required,
                "delete_version_after": fields::go_duration(config.delete_version_after),
                "max_versions": config.max_versions,
            })))
        }
        Operation::Create | Operation::Update => {
            let data = req.data();
            let max_versions = max_versions(data)?;
            let cas_required = fields::boolean(data, "cas_required")?;
            let delete_after = fields::signed_duration_secs(data, "delete_version_after")?;
            if max_versions.is_none() && cas_required.is_none() && delete_after.is_none() {
                return Ok(Response::empty());
            }
            let mut config: MountConfig = load_config(req.storage).await?;
            if let Some(n) = max_versions {
                config.max_versions = n;
            }
            if let Some(required) = cas_required {
                config.cas_required = required;
            }
            if let Some(secs) = delete_after {
                // Negative disables automatic deletion for every key; 0 clears it.
                config.delete_version_after = secs.max(-1);
            }
            req.storage.put_json(CONFIG_KEY, &config).await?;
            Ok(Response::empty())
        }
        _ => Err(Error::UnsupportedOperation),
    }
}

pub(super) async fn handle(
    kv: &KvBackend,
    req: &BackendRequest<'_>,
    key: &str,
) -> Result<Response> {
    if req.operation() == Operation::List {
        return list(req, key).await;
    }
    check_key(key)?;
    match req.operation() {
        Operation::Read => read(req, key).await,
        Operation::Create | Operation::Update => write(kv, req, key).await,
        Operation::Patch => patch(kv, req, key).await,
        Operation::Delete => delete(kv, req, key).await,
        Operation::List => unreachable!("handled above"),
    }
}

/// LIST `metadata/<folder>`: the secrets and sub-folders (ending in `/`) in it.
/// `exclude_deleted=true` leaves out secrets whose latest version has a
/// deletion time, as Vault does.
pub(super) async fn list(req: &BackendRequest<'_>, folder: &str) -> Result<Response> {
    let folder = if folder.is_empty() || folder.ends_with('/') {
        folder.to_string()
    } else {
        format!("{folder}/")
    };
    check_key(&folder)?;
    let keys = req.storage.list(&metadata_key(&folder)).await?;
    if !fields::boolean(req.data(), "exclude_deleted")?.unwrap_or(false) {
        return Response::list(keys);
    }
    let mut kept = Vec::with_capacity(keys.len());
    for name in keys {
        if !name.ends_with('/') {
            let meta = load_metadata(req.storage, &format!("{folder}{name}")).await?;
            let latest_deleted = meta.is_some_and(|meta| {
                meta.versions
                    .get(&meta.current_version)
                    .is_some_and(|vm| vm.deletion_time.is_some())
            });
            if latest_deleted {
                continue;
            }
        }
        kept.push(name);
    }
    Response::list(kept)
}

async fn read(req: &BackendRequest<'_>, key: &str) -> Result<Response> {
    if key.is_empty() || key.ends_with('/') {
        return Err(Error::NotFound);
    }
    let meta = load_metadata(req.storage, key)
        .await?
        .ok_or(Error::NotFound)?;
    let versions: Map<String, Value> = meta
        .versions
        .iter()
        .map(|(n, vm)| {
            (
                n.to_string(),
                json!({
                    "created_time": fields::timestamp(&vm.created_time),
                    "deletion_time": fields::optional_timestamp(vm.deletion_time.as_ref()),
                    "destroyed": vm.destroyed,
                }),
            )
        })
        .collect();
    Ok(Response::data(json!({
        "cas_required": meta.cas_required,
        "created_time": fields::optional_timestamp(meta.created_time.as_ref()),
        "current_version": meta.current_version,
        "custom_metadata": meta.custom_metadata_json(),
        "delete_version_after": fields::go_duration(meta.delete_version_after),
        "max_versions": meta.max_versions,
        "oldest_version": meta.oldest_version,
        "updated_time": fields::optional_timestamp(meta.updated_time.as_ref()),
        "versions": versions,
    })))
}

fn writable_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid("missing path"));
    }
    if key.ends_with('/') {
        return Err(Error::invalid(format!(
            "invalid path {key:?}: a secret's path may not end in \"/\""
        )));
    }
    Ok(())
}

fn max_versions(data: &Map<String, Value>) -> Result<Option<u32>> {
    fields::int(data, "max_versions")?
        .map(|n| {
            u32::try_from(n).map_err(|_| {
                Error::invalid(format!(
                    "max_versions: expected a number from 0 to {}, got {n}",
                    u32::MAX
                ))
            })
        })
        .transpose()
}

/// A key's `delete_version_after`, which, unlike the mount's, cannot be negative.
fn key_delete_after(data: &Map<String, Value>) -> Result<Option<i64>> {
    match fields::signed_duration_secs(data, "delete_version_after")? {
        Some(secs) if secs < 0 => Err(Error::invalid(
            "delete_version_after: a secret's duration cannot be negative (use 0 to fall back to the mount's setting)",
        )),
        other => Ok(other),
    }
}

/// `custom_metadata` from a body, values read as strings the way Vault's
/// weak decoding does. With `skip_nulls` (for PATCH), `null` values are left
/// out so they can remove keys.
fn custom_metadata(
    data: &Map<String, Value>,
    skip_nulls: bool,
) -> Result<Option<BTreeMap<String, String>>> {
    let raw = match data.get("custom_metadata") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(raw)) => raw,
        Some(other) => {
            return Err(Error::invalid(format!(
                "{CUSTOM_METADATA_ERROR}: expected a JSON object of strings, got {other}"
            )))
        }
    };
    let mut out = BTreeMap::new();
    for (name, value) in raw {
        let text = match value {
            Value::Null if skip_nulls => continue,
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => if *b { "1" } else { "0" }.to_string(),
            Value::Array(_) | Value::Object(_) => {
                return Err(Error::invalid(format!(
                    "{CUSTOM_METADATA_ERROR}: value for key {name:?} must be a string"
                )))
            }
        };
        out.insert(name.clone(), text);
    }
    validate_custom_metadata(&out)?;
    Ok(Some(out))
}

/// Vault's limits on custom metadata, every problem reported at once in its
/// multi-error format.
fn validate_custom_metadata(custom: &BTreeMap<String, String>) -> Result<()> {
    let mut errors = Vec::new();
    if custom.len() > MAX_CUSTOM_METADATA_KEYS {
        errors.push(format!(
            "{CUSTOM_METADATA_ERROR}: payload must contain at most {MAX_CUSTOM_METADATA_KEYS} keys, provided {}",
            custom.len()
        ));
    } else {
        let printable = |s: &str| !s.chars().any(char::is_control);
        for (name, value) in custom {
            if name.is_empty() || name.len() > MAX_CUSTOM_METADATA_KEY_LEN {
                errors.push(format!(
                    "{CUSTOM_METADATA_ERROR}: length of key {name:?} is {} but must be 0 < len(key) <= {MAX_CUSTOM_METADATA_KEY_LEN}",
                    name.len()
                ));
            }
            if value.is_empty() || value.len() > MAX_CUSTOM_METADATA_VALUE_LEN {
                errors.push(format!(
                    "{CUSTOM_METADATA_ERROR}: length of value for key {name:?} is {} but must be 0 < len(value) <= {MAX_CUSTOM_METADATA_VALUE_LEN}",
                    value.len()
                ));
            }
            if !printable(name) {
                errors.push(format!(
                    "{CUSTOM_METADATA_ERROR}: key {name:?} ({name}) contains unprintable characters"
                ));
            }
            if !printable(value) {
                errors.push(format!(
                    "{CUSTOM_METADATA_ERROR}: value for key {name:?} contains unprintable characters"
                ));
            }
        }
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(Error::invalid(format!(
            "1 error occurred:\n\t* {}\n\n",
            errors[0]
        ))),
        n => Err(Error::invalid(format!(
            "{n} errors occurred:\n\t* {}\n\n",
            errors.join("\n\t* ")
        ))),
    }
}

fn cas_warning(data: &Map<String, Value>, config: &MountConfig) -> Result<Option<&'static str>> {
    let asked_off = fields::boolean(data, "cas_required")? == Some(false);
    Ok((asked_off && config.cas_required).then_some(CAS_IGNORED_WARNING))
}

fn respond(warning: Option<&str>) -> Response {
    match warning {
        Some(warning) => Response::empty().with_warning(warning),
        None => Response::empty(),
    }
}

/// POST `metadata/<path>`: sets the given fields, creating the metadata (with
/// no versions) when the secret does not exist yet.
async fn write(kv: &KvBackend, req: &BackendRequest<'_>, key: &str) -> Result<Response> {
    writable_key(key)?;
    let data = req.data();
    let max_versions = max_versions(data)?;
    let cas_required = fields::boolean(data, "cas_required")?;
    let delete_after = key_delete_after(data)?;
    let custom = custom_metadata(data, false)?;
    if max_versions.is_none()
        && cas_required.is_none()
        && delete_after.is_none()
        && custom.is_none()
    {
        return Ok(Response::empty());
    }
    let config = load_config(req.storage).await?;
    let warning = cas_warning(data, &config)?;

    let _guard = kv.locks.for_key(key).write().await;
    let mut meta = match load_metadata(req.storage, key).await? {
        Some(meta) => meta,
        None => {
            let now = kv.now();
            KeyMetadata {
                created_time: Some(now),
                updated_time: Some(now),
                ..KeyMetadata::default()
            }
        }
    };
    if let Some(n) = max_versions {
        meta.max_versions = n;
    }
    if let Some(required) = cas_required {
        meta.cas_required = required;
    }
    if let Some(secs) = delete_after {
        meta.delete_version_after = secs;
    }
    if let Some(custom) = custom {
        meta.custom_metadata = custom;
    }
    req.storage.put_json(&metadata_key(key), &meta).await?;
    Ok(respond(warning))
}

/// PATCH `metadata/<path>`: a merge patch of the settable fields; in
/// `custom_metadata`, `null` removes a key.
async fn patch(kv: &KvBackend, req: &BackendRequest<'_>, key: &str) -> Result<Response> {
    writable_key(key)?;
    let data = req.data();
    let max_versions = max_versions(data)?;
    let cas_required = fields::boolean(data, "cas_required")?;
    let delete_after = key_delete_after(data)?;
    // Validated without its nulls; the nulls themselves come from the raw body.
    custom_metadata(data, true)?;
    let config = load_config(req.storage).await?;

    let _guard = kv.locks.for_key(key).write().await;
    let mut meta = load_metadata(req.storage, key)
        .await?
        .ok_or(Error::NotFound)?;
    let warning = cas_warning(data, &config)?;
    if let Some(n) = max_versions {
        meta.max_versions = n;
    }
    if let Some(required) = cas_required {
        meta.cas_required = required;
    }
    if let Some(secs) = delete_after {
        meta.delete_version_after = secs;
    }
    match data.get("custom_metadata") {
        Some(Value::Object(changes)) => {
            for (name, value) in changes {
                match value {
                    Value::Null => {
                        meta.custom_metadata.remove(name);
                    }
                    Value::String(s) => {
                        meta.custom_metadata.insert(name.clone(), s.clone());
                    }
                    Value::Bool(b) => {
                        let text = if *b { "1" } else { "0" };
                        meta.custom_metadata.insert(name.clone(), text.into());
                    }
                    other => {
                        meta.custom_metadata.insert(name.clone(), other.to_string());
                    }
                }
            }
        }
        // A JSON merge patch with `"custom_metadata": null` removes it all.
        Some(Value::Null) => meta.custom_metadata.clear(),
        _ => {}
    }
    req.storage.put_json(&metadata_key(key), &meta).await?;
    Ok(respond(warning))
}

/// DELETE `metadata/<path>`: the secret, every version's data and its
/// history, in one transaction.
async fn delete(kv: &KvBackend, req: &BackendRequest<'_>, key: &str) -> Result<Response> {
    if key.is_empty() || key.ends_with('/') {
        return Ok(Response::empty());
    }
    let _guard = kv.locks.for_key(key).write().await;
    let Some(meta) = load_metadata(req.storage, key).await? else {
        return Ok(Response::empty());
    };
    let mut ops: Vec<TxnOp> = meta
        .versions
        .keys()
        .map(|n| TxnOp::Delete {
            key: super::version_key(key, *n),
        })
        .collect();
    ops.push(TxnOp::Delete {
        key: metadata_key(key),
    });
    req.storage.transaction(ops).await?;
    Ok(Response::empty())
}
