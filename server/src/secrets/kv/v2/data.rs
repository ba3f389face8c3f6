//! The secret itself: `data/<path>` (read, write, patch, soft delete), the
//! version operations `delete/`, `undelete/`, `destroy/`, and `subkeys/`.

use serde_json::{json, Map, Value};

use super::{
    check_cas, load_config, load_metadata, load_version, metadata_key, put_op, version_key,
    write_version, KeyMetadata,
};
use crate::error::{Error, Result};
use crate::logical::{BackendRequest, Operation, Response};
use crate::physical::TxnOp;
use crate::secrets::kv::{fields, KvBackend};

pub(super) async fn data(kv: &KvBackend, req: &BackendRequest<'_>, key: &str) -> Result<Response> {
    match req.operation() {
        Operation::Read => read(kv, req, key).await,
        Operation::Create | Operation::Update => write(kv, req, key).await,
        Operation::Patch => patch(kv, req, key).await,
        Operation::Delete => delete_latest(kv, req, key).await,
        Operation::List => Err(Error::UnsupportedOperation),
    }
}

/// The `version` parameter of reads; absent or not positive means the latest.
fn requested_version(req: &BackendRequest<'_>, meta: &KeyMetadata) -> Result<u64> {
    Ok(match fields::int(req.data(), "version")? {
        Some(n) if n > 0 => n as u64,
        _ => meta.current_version,
    })
}

/// A 404 that still carries a body, as Vault answers for a deleted or
/// destroyed version (the CLI prints its metadata).
fn not_found_with(body: Value) -> Response {
    let mut resp = Response::data(body);
    resp.status = Some(404);
    resp
}

async fn read(kv: &KvBackend, req: &BackendRequest<'_>, key: &str) -> Result<Response> {
    let _guard = kv.locks.for_key(key).read().await;
    let meta = load_metadata(req.storage, key)
        .await?
        .ok_or(Error::NotFound)?;
    let version = requested_version(req, &meta)?;
    let vm = meta.versions.get(&version).ok_or(Error::NotFound)?;
    let metadata = meta.version_json(version, vm);
    if !vm.is_live(kv.now()) {
        return Ok(not_found_with(
            json!({ "data": null, "metadata": metadata }),
        ));
    }
    let entry = load_version(req.storage, key, version).await?;
    Ok(Response::data(
        json!({ "data": entry.data, "metadata": metadata }),
    ))
}

/// The `data` object of a write or patch body.
fn body_data(req: &BackendRequest<'_>) -> Result<Map<String, Value>> {
    match req.data().get("data") {
        None | Some(Value::Null) => Err(Error::invalid("no data provided")),
        Some(Value::Object(data)) => Ok(data.clone()),
        Some(other) => Err(Error::invalid(format!(
            "data: expected a JSON object, got {other}"
        ))),
    }
}

/// A write joins the key's queue; whichever write takes the key's lock next
/// stores every write queued by then as one transaction ([`super::queue`]).
async fn write(kv: &KvBackend, req: &BackendRequest<'_>, key: &str) -> Result<Response> {
    let data = body_data(req)?;
    super::queue::write(kv, req, key, data).await
}

/// Applies a JSON merge patch (RFC 7386) to the latest version and writes
/// the result as a new version.
async fn patch(kv: &KvBackend, req: &BackendRequest<'_>, key: &str) -> Result<Response> {
    let patch = body_data(req)?;
    let _guard = kv.locks.for_key(key).write().await;
    let mut meta = load_metadata(req.storage, key)
        .await?
        .ok_or(Error::NotFound)?;
    let config = load_config(req.storage).await?;
    check_cas(req.data(), &config, &meta)?;
    let current = meta.current_version;
    let vm = meta.versions.get(&current).ok_or(Error::NotFound)?;
    if !vm.is_live(kv.now()) {
        return Ok(not_found_with(meta.version_json(current, vm)));
    }
    let mut merged = Value::Object(load_version(req.storage, key, current).await?.data);
    merge_patch(&mut merged, &Value::Object(patch));
    let Value::Object(merged) = merged else {
        unreachable!("merging an object patch always yields an object")
    };
    write_version(kv, req.storage, &config, &mut meta, key, merged).await
}

/// RFC 7386: objects merge key by key, `null` removes a key, anything else replaces.
pub(super) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        unreachable!("made an object above")
    };
    for (name, value) in patch {
        if value.is_null() {
            target.shift_remove(name);
        } else {
            merge_patch(target.entry(name.clone()).or_insert(Value::Null), value);
        }
    }
}

/// `DELETE data/<path>`: soft-deletes the latest version, if it is live.
async fn delete_latest(kv: &KvBackend, req: &BackendRequest<'_>, key: &str) -> Result<Response> {
    let _guard = kv.locks.for_key(key).write().await;
    let Some(mut meta) = load_metadata(req.storage, key).await? else {
        return Ok(Response::empty());
    };
    let now = kv.now();
    let current = meta.current_version;
    match meta.versions.get_mut(&current) {
        Some(vm) if vm.is_live(now) => vm.deletion_time = Some(now),
        _ => return Ok(Response::empty()),
    }
    req.storage.put_json(&metadata_key(key), &meta).await?;
    Ok(Response::empty())
}

fn require_write(req: &BackendRequest<'_>) -> Result<()> {
    match req.operation() {
        Operation::Create | Operation::Update => Ok(()),
        _ => Err(Error::UnsupportedOperation),
    }
}

/// `delete/<path>`: soft-deletes the listed versions that are live.
pub(super) async fn delete_versions(
    kv: &KvBackend,
    req: &BackendRequest<'_>,
    key: &str,
) -> Result<Response> {
    require_write(req)?;
    let versions = fields::versions(req.data())?;
    if versions.is_empty() {
        return Err(Error::invalid("No version number provided"));
    }
    let _guard = kv.locks.for_key(key).write().await;
    let Some(mut meta) = load_metadata(req.storage, key).await? else {
        return Ok(Response::empty());
    };
    let now = kv.now();
    for version in versions {
        if let Some(vm) = meta.versions.get_mut(&version) {
            if vm.is_live(now) {
                vm.deletion_time = Some(now);
            }
        }
    }
    req.storage.put_json(&metadata_key(key), &meta).await?;
    Ok(Response::empty())
}

/// `undelete/<path>`: clears the deletion of the listed versions that are not
/// destroyed (restarting their `delete_version_after` clock, as Vault does).
pub(super) async fn undelete_versions(
    kv: &KvBackend,
    req: &BackendRequest<'_>,
    key: &str,
) -> Result<Response> {
    require_write(req)?;
    let versions = fields::versions(req.data())?;
    if versions.is_empty() {
        return Err(Error::invalid("No version number provided"));
    }
    let config = load_config(req.storage).await?;
    let _guard = kv.locks.for_key(key).write().await;
    let Some(mut meta) = load_metadata(req.storage, key).await? else {
        return Ok(Response::empty());
    };
    let deletion_time = config.deletion_time(kv.now(), &meta);
    for version in versions {
        if let Some(vm) = meta.versions.get_mut(&version) {
            if !vm.destroyed {
                vm.deletion_time = deletion_time;
            }
        }
    }
    req.storage.put_json(&metadata_key(key), &meta).await?;
    Ok(Response::empty())
}

/// `destroy/<path>`: removes the data of the listed versions for good and
/// marks them destroyed, in one transaction.
pub(super) async fn destroy_versions(
    kv: &KvBackend,
    req: &BackendRequest<'_>,
    key: &str,
) -> Result<Response> {
    require_write(req)?;
    let versions = fields::versions(req.data())?;
    if versions.is_empty() {
        return Err(Error::invalid("no version number provided"));
    }
    let _guard = kv.locks.for_key(key).write().await;
    let Some(mut meta) = load_metadata(req.storage, key).await? else {
        return Ok(Response::empty());
    };
    for version in &versions {
        if let Some(vm) = meta.versions.get_mut(version) {
            vm.destroyed = true;
        }
    }
    let mut ops = vec![put_op(metadata_key(key), &meta)?];
    ops.extend(versions.iter().map(|version| TxnOp::Delete {
        key: version_key(key, *version),
    }));
    req.storage.transaction(ops).await?;
    Ok(Response::empty())
}

/// `subkeys/<path>`: the shape of a version's data with every leaf value
/// replaced by `null`, down to `depth` levels (0: no limit).
pub(super) async fn subkeys(
    kv: &KvBackend,
    req: &BackendRequest<'_>,
    key: &str,
) -> Result<Response> {
    if req.operation() != Operation::Read {
        return Err(Error::UnsupportedOperation);
    }
    let depth = fields::int(req.data(), "depth")?.unwrap_or(0);
    let _guard = kv.locks.for_key(key).read().await;
    let meta = load_metadata(req.storage, key)
        .await?
        .ok_or(Error::NotFound)?;
    let version = requested_version(req, &meta)?;
    let vm = meta.versions.get(&version).ok_or(Error::NotFound)?;
    let metadata = meta.version_json(version, vm);
    if !vm.is_live(kv.now()) {
        return Ok(not_found_with(
            json!({ "metadata": metadata, "subkeys": null }),
        ));
    }
    let mut data = load_version(req.storage, key, version).await?.data;
    strip_values(&mut data, 1, depth);
    Ok(Response::data(
        json!({ "metadata": metadata, "subkeys": data }),
    ))
}

/// Replaces leaves (non-objects and empty objects) with `null`; objects at
/// `max_depth` count as leaves so nothing below them leaks.
fn strip_values(map: &mut Map<String, Value>, depth: i64, max_depth: i64) {
    for value in map.values_mut() {
        match value {
            Value::Object(inner) if (max_depth == 0 || depth < max_depth) && !inner.is_empty() => {
                strip_values(inner, depth + 1, max_depth)
            }
            other => *other = Value::Null,
        }
    }
}
