//! What a snapshot holds, and the check that a cluster restored from it serves all of it.
//!
//! The barrier encrypts values, not keys, so a snapshot's inventory is read from its key names
//! alone, without any key material: the policies (`sys/policy/NAME`), the data of each secrets
//! engine (`logical/UUID/...`; a KV v2 secret is one `metadata/PATH` key, a KV v1 secret one
//! key), each auth method's data (`auth/UUID/...`) and the tokens (`sys/token/id/...`). A
//! restored cluster is then asked, through the API with a root token, for the same things:
//! every engine and auth method whose data the snapshot holds is mounted (matched by UUID),
//! every KV engine lists exactly as many secrets, a sample of secrets spread over every KV
//! engine reads back, the policies are the same set, and no more tokens are served than the
//! snapshot held plus the ones the check itself made.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, ensure, Context, Result};
use keyhold_client::snapshot::{self, InspectOptions};
use keyhold_client::Client;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How many secrets are read back, spread evenly over the KV engines' keys.
const SAMPLE: usize = 24;

/// Policies that every node serves without storing them.
const BUILT_IN_POLICIES: &[&str] = &["root"];

/// Policies that are stored but never listed (as in Vault, `sys/policies/acl` hides it).
const UNLISTED_POLICIES: &[&str] = &["response-wrapping"];

/// A snapshot's contents, by key name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Inventory {
    pub policies: BTreeSet<String>,
    /// Every key of each secrets engine, relative to its `logical/UUID/`, by UUID.
    pub engines: BTreeMap<String, Vec<String>>,
    /// The UUIDs of the auth methods with data.
    pub auth_methods: BTreeSet<String>,
    pub tokens: u64,
    /// Every key in the snapshot.
    pub keys: u64,
    /// The Raft index the snapshot was taken at.
    pub raft_index: u64,
}

impl Inventory {
    /// Reads (and verifies: checksums, format) a whole snapshot archive.
    pub fn read(archive: &[u8]) -> Result<Inventory> {
        let info = snapshot::inspect(
            archive,
            &InspectOptions {
                details: true,
                depth: 0,
                filter: String::new(),
            },
        )?;
        let mut inventory = Inventory {
            keys: info.total_count,
            raft_index: info.meta.index,
            ..Inventory::default()
        };
        for stat in info.stats {
            let key = stat.name;
            if let Some(name) = key.strip_prefix("sys/policy/") {
                inventory.policies.insert(name.to_string());
            } else if key.starts_with("sys/token/id/") {
                inventory.tokens += stat.count;
            } else if let Some((uuid, rest)) =
                key.strip_prefix("logical/").and_then(|k| k.split_once('/'))
            {
                inventory
                    .engines
                    .entry(uuid.to_string())
                    .or_default()
                    .push(rest.to_string());
            } else if let Some((uuid, _)) =
                key.strip_prefix("auth/").and_then(|k| k.split_once('/'))
            {
                inventory.auth_methods.insert(uuid.to_string());
            }
        }
        Ok(inventory)
    }
}

/// What a restored cluster was found to serve, against its snapshot.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// KV secrets in the snapshot, each listed by the restored cluster.
    pub secrets: u64,
    /// Secrets read back.
    pub sampled: usize,
    pub policies: usize,
    /// Secrets engines and auth methods with data in the snapshot, each mounted.
    pub engines: usize,
    pub auth_methods: usize,
    pub tokens_in_snapshot: u64,
    /// Tokens served afterwards, less the ones the check made (fewer than in the snapshot
    /// when some expired since it was taken).
    pub tokens_served: u64,
}

impl Verified {
    pub fn summary(&self) -> String {
        format!(
            "{} secrets listed ({} read back), {} policies, {} engines and {} auth methods \
             mounted, {} of {} tokens",
            self.secrets,
            self.sampled,
            self.policies,
            self.engines,
            self.auth_methods,
            self.tokens_served,
            self.tokens_in_snapshot
        )
    }
}

/// A mount of `sys/mounts` or `sys/auth`: its path, type and KV version.
struct Mount {
    path: String,
    kind: String,
    kv_version: u8,
}

async fn mount_table(client: &Client, table: &str) -> Result<BTreeMap<String, Mount>> {
    let data = client
        .read(table)
        .await
        .with_context(|| format!("read {table}"))?
        .and_then(|s| s.data)
        .with_context(|| format!("{table} answered nothing"))?;
    let mut by_uuid = BTreeMap::new();
    for (path, entry) in data {
        let (Some(uuid), Some(kind)) = (entry["uuid"].as_str(), entry["type"].as_str()) else {
            continue;
        };
        let kv_version = match entry["options"]["version"].as_str() {
            Some("2") => 2,
            _ => 1,
        };
        by_uuid.insert(
            uuid.to_string(),
            Mount {
                path,
                kind: kind.to_string(),
                kv_version,
            },
        );
    }
    Ok(by_uuid)
}

fn keys_of(data: Option<Map<String, Value>>) -> Vec<String> {
    data.and_then(|d| d.get("keys").cloned())
        .and_then(|k| serde_json::from_value(k).ok())
        .unwrap_or_default()
}

/// Every secret under `list_prefix` (`kv/metadata/` or `kv/`), recursively, at most `bound`.
async fn list_all(client: &Client, list_prefix: &str, bound: usize) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let mut folders = vec![String::new()];
    while let Some(folder) = folders.pop() {
        let path = format!("{list_prefix}{folder}");
        let listed = client
            .list(&path)
            .await
            .with_context(|| format!("list {path}"))?;
        for key in keys_of(listed.and_then(|s| s.data)) {
            if key.ends_with('/') {
                folders.push(format!("{folder}{key}"));
            } else {
                found.push(format!("{folder}{key}"));
            }
        }
        ensure!(
            found.len() + folders.len() <= bound,
            "{list_prefix} lists more than the {bound} entries the snapshot can account for"
        );
    }
    Ok(found)
}

/// Checks a cluster restored from the snapshot of `inventory` through `root` (a client with a
/// root token); `own_tokens` is how many tokens were made since the restore (logins, the root
/// token itself).
pub async fn verify(root: &Client, inventory: &Inventory, own_tokens: u64) -> Result<Verified> {
    let engines = mount_table(root, "sys/mounts").await?;
    let methods = mount_table(root, "sys/auth").await?;
    let mut verified = Verified {
        tokens_in_snapshot: inventory.tokens,
        ..Verified::default()
    };

    let mut samples = Vec::new();
    for (uuid, keys) in &inventory.engines {
        let Some(mount) = engines.get(uuid) else {
            bail!(
                "the snapshot holds the data of a secrets engine (uuid {uuid}, {} keys) that the \
                 restored cluster does not mount",
                keys.len()
            );
        };
        verified.engines += 1;
        if mount.kind != "kv" {
            continue;
        }
        let (list_prefix, stored): (String, Vec<&str>) = if mount.kv_version == 2 {
            let stored = keys
                .iter()
                .filter_map(|k| k.strip_prefix("metadata/"))
                .collect();
            (format!("{}metadata/", mount.path), stored)
        } else {
            (
                mount.path.clone(),
                keys.iter().map(String::as_str).collect(),
            )
        };
        let listed = list_all(root, &list_prefix, stored.len() + 1).await?;
        if listed.len() != stored.len() {
            bail!(
                "{} holds {} secrets in the snapshot and lists {} after the restore",
                mount.path,
                stored.len(),
                listed.len()
            );
        }
        verified.secrets += stored.len() as u64;
        samples.extend(stored.iter().map(|key| (mount, key.to_string())));
    }
    let step = samples.len().div_ceil(SAMPLE).max(1);
    for (mount, key) in samples.into_iter().step_by(step) {
        let path = if mount.kv_version == 2 {
            format!("{}data/{key}", mount.path)
        } else {
            format!("{}{key}", mount.path)
        };
        if root
            .read(&path)
            .await
            .with_context(|| format!("read {path}"))?
            .is_none()
        {
            bail!("{path} is in the snapshot and cannot be read after the restore");
        }
        verified.sampled += 1;
    }

    for uuid in &inventory.auth_methods {
        if !methods.contains_key(uuid) {
            bail!(
                "the snapshot holds the data of an auth method (uuid {uuid}) that the restored \
                 cluster does not mount"
            );
        }
        verified.auth_methods += 1;
    }

    let served: BTreeSet<String> = root
        .policies()
        .await
        .context("list sys/policies/acl")?
        .into_iter()
        .filter(|p| !BUILT_IN_POLICIES.contains(&p.as_str()))
        .collect();
    let stored: BTreeSet<String> = inventory
        .policies
        .iter()
        .filter(|p| !UNLISTED_POLICIES.contains(&p.as_str()))
        .cloned()
        .collect();
    if served != stored {
        let missing: Vec<_> = stored.difference(&served).collect();
        let extra: Vec<_> = served.difference(&stored).collect();
        bail!(
            "the restored cluster serves other policies than the snapshot holds (missing: \
             {missing:?}, not in the snapshot: {extra:?})"
        );
    }
    verified.policies = served.len();

    let accessors = root
        .list("auth/token/accessors")
        .await
        .context("list auth/token/accessors")?;
    let served_tokens = keys_of(accessors.and_then(|s| s.data)).len() as u64;
    let served_tokens = served_tokens.saturating_sub(own_tokens);
    if served_tokens > inventory.tokens {
        bail!(
            "the restored cluster serves {served_tokens} tokens, more than the {} its snapshot \
             holds",
            inventory.tokens
        );
    }
    verified.tokens_served = served_tokens;
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(keys: &[&str]) -> Vec<u8> {
        let entries: Vec<(&str, &[u8])> = keys.iter().map(|k| (*k, &b"ciphertext"[..])).collect();
        snapshot::sample_archive(&entries, b"sealed-sums")
    }

    #[test]
    fn the_inventory_is_read_from_key_names() {
        let inv = Inventory::read(&archive(&[
            "sys/policy/default",
            "sys/policy/vault-admin",
            "sys/token/id/h1",
            "sys/token/id/h2",
            "sys/token/accessor/a1",
            "logical/u-kv/metadata/app/db",
            "logical/u-kv/metadata/web",
            "logical/u-kv/versions/web/1",
            "logical/u-transit/policy/k",
            "auth/u-userpass/user/admin",
            "core/mounts",
        ]))
        .expect("inventory");
        assert_eq!(
            inv.policies,
            BTreeSet::from(["default".to_string(), "vault-admin".to_string()])
        );
        assert_eq!(inv.tokens, 2);
        assert_eq!(inv.engines.len(), 2);
        assert_eq!(inv.engines["u-kv"].len(), 3);
        assert_eq!(inv.auth_methods, BTreeSet::from(["u-userpass".to_string()]));
        assert_eq!(inv.keys, 11);
    }

    #[test]
    fn a_corrupted_archive_has_no_inventory() {
        let mut bytes = archive(&["sys/policy/default"]);
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        assert!(Inventory::read(&bytes).is_err());
    }
}
