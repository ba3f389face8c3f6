//! KV v2: versioned secrets, following Vault's `kv` plugin on the wire.
//!
//! Storage layout inside the mount's view (keys in clear, values are JSON):
//! - `config`: the mount-wide [`MountConfig`];
//! - `metadata/<path>`: one [`KeyMetadata`] per secret, listing its versions;
//! - `versions/<path>/<n>`: the data of version `n` ([`VersionEntry`]).
//!
//! Architecture invariant: every change that touches a secret's metadata and
//! its version entries together is one `StorageView::transaction`, so a crash
//! never leaves metadata naming a version whose data was not written, nor
//! pruned data still stored.
//!
//! Behaviour that may surprise but is Vault's: a key's effective
//! `max_versions` is the larger of the key's and the mount's (10 when both are
//! 0); `oldest_version` stays 0 until the window of kept versions first fills
//! (it is 1 after the tenth write, when nothing has been pruned yet); a write to
//! `metadata/<path>` with no known field does nothing.

mod data;
mod metadata;
mod queue;

pub(super) use queue::WriteQueues;

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{check_key, unsupported, KvBackend};
use crate::error::{Error, Result};
use crate::logical::{BackendRequest, Operation, Response, StorageView};
use crate::physical::TxnOp;

use super::fields;

/// Versions kept per key when neither the key nor the mount sets `max_versions`.
const DEFAULT_MAX_VERSIONS: u32 = 10;
const CONFIG_KEY: &str = "config";

pub(super) async fn handle(kv: &KvBackend, req: &BackendRequest<'_>) -> Result<Response> {
    let path = req.path.as_str();
    let (section, key) = match path.split_once('/') {
        Some((section, key)) => (section, Some(key)),
        None => (path, None),
    };
    let op = req.operation();
    match (section, key) {
        ("config", None) => metadata::config(req).await,
        ("metadata", None) if op == Operation::List => metadata::list(req, "").await,
        ("metadata", Some(key)) => metadata::handle(kv, req, key).await,
        ("data" | "delete" | "undelete" | "destroy" | "subkeys", Some(key))
            if !key.is_empty() && !key.ends_with('/') =>
        {
            check_key(key)?;
            match section {
                "data" => data::data(kv, req, key).await,
                "delete" => data::delete_versions(kv, req, key).await,
                "undelete" => data::undelete_versions(kv, req, key).await,
                "destroy" => data::destroy_versions(kv, req, key).await,
                _ => data::subkeys(kv, req, key).await,
            }
        }
        _ => Err(unsupported(req)),
    }
}

/// `data/<path>` and `metadata/<path>` exist when the secret's metadata does;
/// other paths have no existence check (writes to them are updates).
pub(super) async fn exists(req: &BackendRequest<'_>) -> Result<Option<bool>> {
    let Some((section, key)) = req.path.split_once('/') else {
        return Ok(None);
    };
    match section {
        "data" | "metadata" => {
            if key.is_empty() || key.ends_with('/') || check_key(key).is_err() {
                return Ok(Some(false));
            }
            Ok(Some(load_metadata(req.storage, key).await?.is_some()))
        }
        _ => Ok(None),
    }
}

/// Mount-wide settings (`<mount>/config`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct MountConfig {
    max_versions: u32,
    cas_required: bool,
    /// Seconds. 0: unset. Negative: automatic deletion disabled on the mount,
    /// whatever keys ask for.
    delete_version_after: i64,
}

impl MountConfig {
    /// When a version written (or undeleted) at `from` is due to be deleted:
    /// `from` plus the smaller of the non-zero key and mount settings.
    fn deletion_time(&self, from: DateTime<Utc>, meta: &KeyMetadata) -> Option<DateTime<Utc>> {
        if self.delete_version_after < 0 {
            return None;
        }
        let after = [meta.delete_version_after, self.delete_version_after]
            .into_iter()
            .filter(|secs| *secs > 0)
            .min()?;
        Some(from + Duration::seconds(after))
    }
}

/// Everything known about one secret except its data.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct KeyMetadata {
    versions: BTreeMap<u64, VersionMetadata>,
    current_version: u64,
    oldest_version: u64,
    max_versions: u32,
    cas_required: bool,
    /// Seconds; 0 = use the mount's setting.
    delete_version_after: i64,
    created_time: Option<DateTime<Utc>>,
    updated_time: Option<DateTime<Utc>>,
    custom_metadata: BTreeMap<String, String>,
}

impl KeyMetadata {
    /// Records a new version and slides the window of kept versions. Returns
    /// the new version's number and the versions whose data must be removed.
    fn add_version(
        &mut self,
        created_time: DateTime<Utc>,
        deletion_time: Option<DateTime<Utc>>,
        mount_max_versions: u32,
    ) -> (u64, Vec<u64>) {
        self.current_version += 1;
        let version = self.current_version;
        self.versions.insert(
            version,
            VersionMetadata {
                created_time,
                deletion_time,
                destroyed: false,
            },
        );
        self.updated_time = Some(created_time);
        self.created_time.get_or_insert(created_time);

        let max_versions = match self.max_versions.max(mount_max_versions) {
            0 => DEFAULT_MAX_VERSIONS,
            n => n,
        };
        let mut pruned = Vec::new();
        if version - self.oldest_version >= u64::from(max_versions) {
            let last_pruned = version - u64::from(max_versions);
            self.versions.retain(|n, _| *n > last_pruned);
            pruned.extend(self.oldest_version.max(1)..=last_pruned);
            self.oldest_version = last_pruned + 1;
        }
        (version, pruned)
    }

    /// `custom_metadata` as Vault shows it: `null` when there is none.
    fn custom_metadata_json(&self) -> Value {
        if self.custom_metadata.is_empty() {
            Value::Null
        } else {
            json!(self.custom_metadata)
        }
    }

    /// The per-version block of data reads and writes.
    fn version_json(&self, version: u64, vm: &VersionMetadata) -> Value {
        json!({
            "created_time": fields::timestamp(&vm.created_time),
            "custom_metadata": self.custom_metadata_json(),
            "deletion_time": fields::optional_timestamp(vm.deletion_time.as_ref()),
            "destroyed": vm.destroyed,
            "version": version,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct VersionMetadata {
    created_time: DateTime<Utc>,
    /// Set by a delete, or ahead of time by `delete_version_after`; the
    /// version reads as deleted from this time on.
    #[serde(default)]
    deletion_time: Option<DateTime<Utc>>,
    #[serde(default)]
    destroyed: bool,
}

impl VersionMetadata {
    fn is_deleted(&self, now: DateTime<Utc>) -> bool {
        self.deletion_time.is_some_and(|at| at <= now)
    }

    fn is_live(&self, now: DateTime<Utc>) -> bool {
        !self.destroyed && !self.is_deleted(now)
    }
}

/// The stored data of one version.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VersionEntry {
    data: Map<String, Value>,
    created_time: DateTime<Utc>,
}

fn metadata_key(key: &str) -> String {
    format!("metadata/{key}")
}

fn version_key(key: &str, version: u64) -> String {
    format!("versions/{key}/{version}")
}

async fn load_config(storage: &StorageView) -> Result<MountConfig> {
    Ok(storage.get_json(CONFIG_KEY).await?.unwrap_or_default())
}

async fn load_metadata(storage: &StorageView, key: &str) -> Result<Option<KeyMetadata>> {
    storage.get_json(&metadata_key(key)).await
}

async fn load_version(storage: &StorageView, key: &str, version: u64) -> Result<VersionEntry> {
    storage
        .get_json(&version_key(key, version))
        .await?
        .ok_or_else(|| Error::internal("could not find version data"))
}

fn put_op<T: Serialize>(key: String, value: &T) -> Result<TxnOp> {
    let value = serde_json::to_vec(value)
        .map_err(|e| Error::internal(format!("encode kv entry {key:?}: {e}")))?;
    Ok(TxnOp::Put { key, value })
}

/// Writes `data` as the key's next version, prunes what `max_versions` no
/// longer keeps, and answers with the new version's metadata.
async fn write_version(
    kv: &KvBackend,
    storage: &StorageView,
    config: &MountConfig,
    meta: &mut KeyMetadata,
    key: &str,
    data: Map<String, Value>,
) -> Result<Response> {
    let (mut ops, answer) = next_version(kv.now(), config, meta, key, data)?;
    ops.push(put_op(metadata_key(key), meta)?);
    storage.transaction(ops).await?;
    Ok(Response::data(answer))
}

/// Adds `data` as the key's next version to `meta`: the ops that store it and
/// delete what `max_versions` no longer keeps (the caller adds the metadata's
/// own put), and the new version's metadata as a write answers it.
fn next_version(
    now: DateTime<Utc>,
    config: &MountConfig,
    meta: &mut KeyMetadata,
    key: &str,
    data: Map<String, Value>,
) -> Result<(Vec<TxnOp>, Value)> {
    let deletion_time = config.deletion_time(now, meta);
    let (version, pruned) = meta.add_version(now, deletion_time, config.max_versions);
    let entry = VersionEntry {
        data,
        created_time: now,
    };
    let mut ops = vec![put_op(version_key(key, version), &entry)?];
    ops.extend(pruned.into_iter().map(|n| TxnOp::Delete {
        key: version_key(key, n),
    }));
    Ok((ops, meta.version_json(version, &meta.versions[&version])))
}

/// Enforces check-and-set: a `cas` option must equal the current version
/// (0 for a key with none), and is required when the mount or key says so.
fn check_cas(data: &Map<String, Value>, config: &MountConfig, meta: &KeyMetadata) -> Result<()> {
    let cas = match data.get("options") {
        None | Some(Value::Null) => None,
        Some(Value::Object(options)) => options.get("cas"),
        Some(other) => {
            return Err(Error::invalid(format!(
                "options: expected a JSON object, got {other}"
            )))
        }
    };
    match cas {
        Some(raw) => {
            let cas = match raw {
                Value::Null => 0,
                other => {
                    let mut one = Map::new();
                    one.insert("cas".into(), other.clone());
                    fields::int(&one, "cas")
                        .ok()
                        .flatten()
                        .ok_or_else(|| Error::invalid("error parsing check-and-set parameter"))?
                }
            };
            if u64::try_from(cas).ok() != Some(meta.current_version) {
                return Err(Error::invalid(
                    "check-and-set parameter did not match the current version",
                ));
            }
        }
        None if config.cas_required || meta.cas_required => {
            return Err(Error::invalid(
                "check-and-set parameter required for this call",
            ));
        }
        None => {}
    }
    Ok(())
}
