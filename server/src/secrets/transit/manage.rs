//! Key management: `keys` (LIST), `keys/:name` (create, read, delete) and
//! `keys/:name/{config,rotate,trim}`. Every write of a key is a
//! read-modify-write under the key's lock. Create, config, rotate and trim
//! answer with the key as a read shows it, as current Vault does.

use serde_json::{json, Map, Value};

use super::named_key::{KeyType, NamedKey, NewKey};
use super::{load, now, store, TransitBackend, KEYS_PREFIX};
use crate::auth::fields::{bool_field, duration_secs, int_field, str_field};
use crate::error::{Error, Result};
use crate::logical::{BackendRequest, Response};

/// Vault's shortest automatic rotation period.
const MIN_AUTO_ROTATE_SECS: u64 = 3600;

pub(super) async fn list(req: &BackendRequest<'_>) -> Result<Response> {
    let names = req
        .storage
        .list(KEYS_PREFIX)
        .await?
        .into_iter()
        .filter(|k| !k.ends_with('/'))
        .collect();
    Response::list(names)
}

pub(super) async fn read(req: &BackendRequest<'_>, name: &str) -> Result<Response> {
    let key = load(req.storage, name).await?.ok_or(Error::NotFound)?;
    Ok(Response::data(describe(&key)))
}

/// `POST keys/:name`: makes the key unless it exists (then it is left as it
/// is, with a warning).
pub(super) async fn create(
    transit: &TransitBackend,
    req: &BackendRequest<'_>,
    name: &str,
) -> Result<Response> {
    let data = req.data();
    let derived = bool_field(data, "derived")?.unwrap_or(false);
    let convergent = bool_field(data, "convergent_encryption")?.unwrap_or(false);
    if convergent && !derived {
        return Err(Error::invalid(
            "convergent encryption requires derivation to be enabled",
        ));
    }
    refuse_derivation(derived)?;
    if int_field(data, "key_size")?.is_some_and(|size| size != 0) {
        return Err(Error::invalid(
            "key_size is only valid for hmac keys, which this build does not support",
        ));
    }
    let auto_rotate_period = auto_rotate_period(data)?.unwrap_or(0);
    let settings = NewKey {
        kind: key_type(data)?,
        exportable: bool_field(data, "exportable")?.unwrap_or(false),
        allow_plaintext_backup: bool_field(data, "allow_plaintext_backup")?.unwrap_or(false),
        auto_rotate_period,
    };
    let (key, created) = upsert(transit, req, name, &settings).await?;
    let mut resp = Response::data(describe(&key));
    if !created {
        resp = resp.with_warning(format!("key {name} already existed"));
    }
    Ok(resp)
}

/// The key under `name`, made with `settings` if it does not exist yet.
/// Answers whether it was made by this call.
pub(super) async fn upsert(
    transit: &TransitBackend,
    req: &BackendRequest<'_>,
    name: &str,
    settings: &NewKey,
) -> Result<(NamedKey, bool)> {
    let _guard = transit.locks.for_key(name).write().await;
    if let Some(existing) = load(req.storage, name).await? {
        return Ok((existing, false));
    }
    let key = NamedKey::generate(name, settings, now());
    store(req.storage, &key).await?;
    Ok((key, true))
}

/// Derived keys (and so convergent encryption) are not in this build.
pub(super) fn refuse_derivation(derived: bool) -> Result<()> {
    if derived {
        return Err(Error::invalid(
            "derived keys are not supported by this build: create the key without \"derived\" \
             (and without \"convergent_encryption\")",
        ));
    }
    Ok(())
}

/// The `type` field, `aes256-gcm96` when absent.
pub(super) fn key_type(data: &Map<String, Value>) -> Result<KeyType> {
    match str_field(data, "type")? {
        None => Ok(KeyType::Aes256Gcm96),
        Some(t) if t.is_empty() => Ok(KeyType::Aes256Gcm96),
        Some(t) => KeyType::parse(&t),
    }
}

fn auto_rotate_period(data: &Map<String, Value>) -> Result<Option<u64>> {
    let period = duration_secs(data, "auto_rotate_period")?;
    if let Some(secs) = period {
        if secs != 0 && secs < MIN_AUTO_ROTATE_SECS {
            return Err(Error::invalid(
                "auto rotate period must be 0 to disable or at least an hour",
            ));
        }
    }
    Ok(period)
}

pub(super) async fn delete(
    transit: &TransitBackend,
    req: &BackendRequest<'_>,
    name: &str,
) -> Result<Response> {
    let _guard = transit.locks.for_key(name).write().await;
    let refuse = |why: &str| Error::invalid(format!("error deleting policy {name}: {why}"));
    let key = load(req.storage, name)
        .await?
        .ok_or_else(|| refuse("could not delete key; not found"))?;
    if !key.deletion_allowed {
        return Err(refuse(
            "deletion is not allowed for this key; set deletion_allowed=true at keys/NAME/config first",
        ));
    }
    req.storage.delete(&format!("{KEYS_PREFIX}{name}")).await?;
    Ok(Response::empty())
}

/// The read-modify-write of config, rotate and trim: under the key's lock,
/// `change` edits the key or refuses (then nothing is stored), and the answer
/// is the key as a read shows it, with `change`'s warning if it has one.
async fn modify(
    transit: &TransitBackend,
    req: &BackendRequest<'_>,
    name: &str,
    missing: &str,
    change: impl FnOnce(&mut NamedKey) -> Result<Option<&'static str>>,
) -> Result<Response> {
    let _guard = transit.locks.for_key(name).write().await;
    let mut key = load(req.storage, name)
        .await?
        .ok_or_else(|| Error::invalid(missing))?;
    let warning = change(&mut key)?;
    store(req.storage, &key).await?;
    let resp = Response::data(describe(&key));
    Ok(match warning {
        Some(w) => resp.with_warning(w),
        None => resp,
    })
}

/// `POST keys/:name/config`.
pub(super) async fn config(
    transit: &TransitBackend,
    req: &BackendRequest<'_>,
    name: &str,
) -> Result<Response> {
    let missing = format!("no existing key named {name} could be found");
    modify(transit, req, name, &missing, |key| {
        configure(key, req.data())
    })
    .await
}

fn configure(key: &mut NamedKey, data: &Map<String, Value>) -> Result<Option<&'static str>> {
    let mut warning = None;
    if let Some(min) = int_field(data, "min_decryption_version")? {
        if min < 0 {
            return Err(Error::invalid("min decryption version cannot be negative"));
        }
        key.min_decryption_version = if min == 0 {
            warning =
                Some("since Vault 0.3, transit key numbering starts at 1; forcing minimum to 1");
            1
        } else {
            version_at_most_latest(key, min, "decryption")?
        };
    }
    if let Some(min) = int_field(data, "min_encryption_version")? {
        if min < 0 {
            return Err(Error::invalid("min encryption version cannot be negative"));
        }
        key.min_encryption_version = version_at_most_latest(key, min, "encryption")?;
    }
    if key.min_encryption_version > 0 && key.min_encryption_version < key.min_decryption_version {
        return Err(Error::invalid(format!(
            "cannot set min encryption/decryption values; min encryption version of {} must be \
             greater than or equal to min decryption version of {}",
            key.min_encryption_version, key.min_decryption_version
        )));
    }
    if key.min_available_version > 0 {
        if key.min_encryption_version < key.min_available_version {
            return Err(Error::invalid(
                "min encryption version should not be less than min available version",
            ));
        }
        if key.min_decryption_version < key.min_available_version {
            return Err(Error::invalid(
                "min decryption version should not be less then min available version",
            ));
        }
    }
    if let Some(allowed) = bool_field(data, "deletion_allowed")? {
        key.deletion_allowed = allowed;
    }
    // Once set, these two cannot be unset (Vault ignores a `false`).
    if bool_field(data, "exportable")? == Some(true) {
        key.exportable = true;
    }
    if bool_field(data, "allow_plaintext_backup")? == Some(true) {
        key.allow_plaintext_backup = true;
    }
    if let Some(period) = auto_rotate_period(data)? {
        key.auto_rotate_period = period;
    }
    Ok(warning)
}

fn version_at_most_latest(key: &NamedKey, version: i64, what: &str) -> Result<u32> {
    match u32::try_from(version) {
        Ok(v) if v <= key.latest_version => Ok(v),
        _ => Err(Error::invalid(format!(
            "cannot set min {what} version of {version}, latest key version is {}",
            key.latest_version
        ))),
    }
}

pub(super) async fn rotate(
    transit: &TransitBackend,
    req: &BackendRequest<'_>,
    name: &str,
) -> Result<Response> {
    modify(transit, req, name, "key not found", |key| {
        key.rotate(now());
        Ok(None)
    })
    .await
}

/// `POST keys/:name/trim`: deletes the key material of every version below
/// `min_available_version`, for good.
pub(super) async fn trim(
    transit: &TransitBackend,
    req: &BackendRequest<'_>,
    name: &str,
) -> Result<Response> {
    let min = int_field(req.data(), "min_available_version")?;
    modify(transit, req, name, "invalid key name", |key| {
        let min = min.ok_or_else(|| Error::invalid("missing min_available_version"))?;
        let refusal = match min {
            m if m < i64::from(key.min_available_version) => {
                Some("minimum available version cannot be decremented")
            }
            _ if key.min_encryption_version == 0 => Some(
                "minimum available version cannot be set when minimum encryption version is not set",
            ),
            m if m > i64::from(key.min_encryption_version) => {
                Some("minimum available version cannot be greater than minmum encryption version")
            }
            m if m > i64::from(key.min_decryption_version) => {
                Some("minimum available version cannot be greater than minimum decryption version")
            }
            m if m < 0 => Some("minimum available version cannot be negative"),
            0 => Some("minimum available version should be positive"),
            _ => None,
        };
        if let Some(why) = refusal {
            return Err(Error::invalid(why));
        }
        key.trim(u32::try_from(min).expect("bounded by min_encryption_version"));
        Ok(None)
    })
    .await
}

/// The key as `GET keys/:name` shows it: settings and, per version a client
/// may still decrypt with, its creation time in Unix seconds. Never key bytes.
pub(super) fn describe(key: &NamedKey) -> Value {
    let versions: Map<String, Value> = key
        .version_times()
        .map(|(v, time)| (v.to_string(), json!(time.timestamp())))
        .collect();
    json!({
        "name": key.name,
        "type": key.kind.as_str(),
        "derived": false,
        "deletion_allowed": key.deletion_allowed,
        "exportable": key.exportable,
        "allow_plaintext_backup": key.allow_plaintext_backup,
        "keys": versions,
        "latest_version": key.latest_version,
        "min_available_version": key.min_available_version,
        "min_decryption_version": key.min_decryption_version,
        "min_encryption_version": key.min_encryption_version,
        "auto_rotate_period": key.auto_rotate_period,
        "imported_key": false,
        "supports_encryption": true,
        "supports_decryption": true,
        // Vault says true for these types; this build refuses derived keys.
        "supports_derivation": false,
        "supports_signing": false,
    })
}
