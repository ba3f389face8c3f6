//! `kv get|put|patch|list|delete|undelete|destroy|metadata`: the KV engine, v1 or v2, with the
//! version found by asking the server about the mount first, as vault does.

use serde_json::{json, Map, Value};

use crate::client::{Client, ClientError, Method, Secret};

use super::super::args::{
    KvCmd, KvGetCmd, KvMetadataCmd, KvMetadataPutCmd, KvPutCmd, KvVersionsCmd,
};
use super::super::data::parse_kv_args;
use super::super::output::{header_for_map, map_table, pad_equal_signs};
use super::{join_path, output_keys, CliError, Context, Ui};

pub async fn run(ctx: &Context, ui: &mut Ui, cmd: KvCmd) -> Result<u8, CliError> {
    match cmd {
        KvCmd::Get(cmd) => get(ctx, ui, cmd).await,
        KvCmd::Put(cmd) => put(ctx, ui, cmd, false).await,
        KvCmd::Patch(cmd) => put(ctx, ui, cmd, true).await,
        KvCmd::List(cmd) => {
            let client = ctx.client()?;
            let target = resolve(&client, cmd.mount.as_deref(), &cmd.path, "metadata").await?;
            let secret = client
                .list(&target.full)
                .await
                .map_err(|e| CliError::api(format!("Error listing {}", target.full), e))?
                .filter(|s| s.data.as_ref().is_some_and(|d| d.contains_key("keys")))
                .ok_or_else(|| CliError::Remote(format!("No value found at {}", target.full)))?;
            output_keys(ui, &secret)?;
            Ok(0)
        }
        KvCmd::Delete(cmd) => delete(ctx, ui, cmd).await,
        KvCmd::Undelete(cmd) => versions_op(ctx, ui, cmd, "undelete").await,
        KvCmd::Destroy(cmd) => versions_op(ctx, ui, cmd, "destroy").await,
        KvCmd::Metadata(cmd) => metadata(ctx, ui, cmd).await,
    }
}

/// Where a KV command's path points once the mount and its version are known.
struct Target {
    /// The API path, e.g. `secret/data/foo` (v2) or `kv/foo` (v1).
    full: String,
    v2: bool,
}

/// The mount holding `path` and its KV version, asked the way the `vault` CLI
/// asks: `sys/internal/ui/mounts/<path>` (needs no sudo, so least-privilege
/// tokens can use `kv`), then `sys/mounts-all/<path>`; a 404 from both means
/// a v1 mount (or an old server).
pub async fn kv_preflight(client: &Client, path: &str) -> Result<(String, u32), ClientError> {
    for prefix in ["sys/internal/ui/mounts/", "sys/mounts-all/"] {
        match client
            .request(Method::Get, &format!("{prefix}{path}"), None)
            .await
        {
            Ok(resp) => {
                let data = resp
                    .json()
                    .and_then(|v| v.get("data"))
                    .cloned()
                    .unwrap_or(Value::Null);
                let mount = data
                    .get("path")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let version = match data.get("options").and_then(|o| o.get("version")) {
                    Some(Value::String(v)) if v == "2" => 2,
                    Some(Value::Number(n)) if n.as_u64() == Some(2) => 2,
                    _ => 1,
                };
                return Ok((mount, version));
            }
            Err(e) if e.status() == Some(404) || e.status() == Some(405) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok((String::new(), 1))
}

async fn resolve(
    client: &Client,
    mount: Option<&str>,
    path: &str,
    v2_prefix: &str,
) -> Result<Target, CliError> {
    let partial = path.trim_start_matches('/');
    let preflight = |p: String| async move {
        kv_preflight(client, &p)
            .await
            .map_err(|e| CliError::api("Error determining the KV version of the mount", e))
    };
    match mount {
        Some(mount) => {
            let mount = mount.trim().trim_matches('/');
            let (mount_path, version) = preflight(mount.to_string()).await?;
            if version == 2 {
                let mount_path = if mount_path.is_empty() {
                    format!("{mount}/")
                } else {
                    mount_path
                };
                let joined = join_path(&[&mount_path, partial]);
                Ok(Target {
                    full: add_prefix_to_kv_path(&joined, &mount_path, v2_prefix),
                    v2: true,
                })
            } else {
                Ok(Target {
                    full: join_path(&[mount, partial]),
                    v2: false,
                })
            }
        }
        None => {
            let (mount_path, version) = preflight(partial.to_string()).await?;
            if version == 2 {
                Ok(Target {
                    full: add_prefix_to_kv_path(partial, &mount_path, v2_prefix),
                    v2: true,
                })
            } else {
                Ok(Target {
                    full: partial.to_string(),
                    v2: false,
                })
            }
        }
    }
}

/// `secret/foo` under mount `secret/` -> `secret/data/foo`, as vault's `addPrefixToKVPath`.
pub fn add_prefix_to_kv_path(path: &str, mount: &str, prefix: &str) -> String {
    let trimmed_mount = mount.trim_end_matches('/');
    if path == mount || path == trimmed_mount {
        return join_path(&[mount, prefix]);
    }
    let suffix = path.strip_prefix(trimmed_mount).unwrap_or(path);
    join_path(&[trimmed_mount, prefix, suffix])
}

fn require_v2(target: &Target, what: &str) -> Result<(), CliError> {
    if target.v2 {
        Ok(())
    } else {
        Err(CliError::Remote(format!(
            "K/V engine mount must be version 2 for {what} support"
        )))
    }
}

async fn get(ctx: &Context, ui: &mut Ui, cmd: KvGetCmd) -> Result<u8, CliError> {
    let client = ctx.client()?;
    let target = resolve(&client, cmd.mount.as_deref(), &cmd.path, "data").await?;
    let mut path = target.full.clone();
    if target.v2 && cmd.version > 0 {
        path.push_str(&format!("?version={}", cmd.version));
    }
    let secret = client
        .read(&path)
        .await
        .map_err(|e| CliError::api(format!("Error reading {}", target.full), e))?
        .ok_or_else(|| CliError::Remote(format!("No value found at {}", target.full)))?;

    if let Some(field) = ui.field.clone() {
        if target.v2 {
            let data = secret
                .data
                .as_ref()
                .and_then(|d| d.get("data"))
                .and_then(Value::as_object)
                .ok_or_else(|| CliError::Remote(format!("No data found at {}", target.full)))?;
            let value = data.get(&field).ok_or_else(|| {
                CliError::Local(format!("Field \"{field}\" not present in secret"))
            })?;
            return ui.raw_field(value).map(|_| 0);
        }
        return ui.secret(&secret).map(|_| 0);
    }
    if !ui.is_table() {
        return ui.structured(&secret).map(|_| 0);
    }
    ui.print_warnings(secret.warnings.as_deref().unwrap_or_default());
    ui.output(&kv_get_table(&target.full, target.v2, &secret));
    Ok(0)
}

/// `kv get`'s table output: the path (v2), the metadata and the data, each under a
/// `== Title ==` header.
pub fn kv_get_table(full_path: &str, v2: bool, secret: &Secret) -> String {
    let mut out = Vec::new();
    if v2 {
        out.push(pad_equal_signs("Secret Path", full_path.len()));
        out.push(full_path.to_string());
        out.push(String::new());
    }
    let empty = Map::new();
    let all = secret.data.as_ref().unwrap_or(&empty);
    if let Some(Value::Object(meta)) = all.get("metadata").filter(|_| v2) {
        out.push(header_for_map("Metadata", meta));
        out.push(map_table(meta));
        out.push(String::new());
    }
    let data = if v2 {
        all.get("data").and_then(Value::as_object)
    } else {
        Some(all)
    };
    if let Some(data) = data {
        out.push(header_for_map("Data", data));
        out.push(map_table(data));
    }
    out.join("\n")
}

async fn put(ctx: &Context, ui: &mut Ui, cmd: KvPutCmd, patch: bool) -> Result<u8, CliError> {
    let data = parse_kv_args(&cmd.data, &mut std::io::stdin())?;
    if data.is_empty() {
        return Err(CliError::Usage("Must supply data".into()));
    }
    let client = ctx.client()?;
    let target = resolve(&client, cmd.mount.as_deref(), &cmd.path, "data").await?;
    let secret = if patch {
        require_v2(&target, "patch")?;
        let mut body = json!({ "data": data, "options": {} });
        if cmd.cas >= 0 {
            body["options"]["cas"] = cmd.cas.into();
        }
        client
            .patch(&target.full, &body)
            .await
            .map_err(|e| CliError::api(format!("Error writing data to {}", target.full), e))?
    } else {
        let body = if target.v2 {
            let mut body = json!({ "data": data, "options": {} });
            if cmd.cas >= 0 {
                body["options"]["cas"] = cmd.cas.into();
            }
            body
        } else {
            Value::Object(data)
        };
        client
            .write(&target.full, &body)
            .await
            .map_err(|e| CliError::api(format!("Error writing data to {}", target.full), e))?
    };
    let Some(secret) = secret else {
        if ui.is_table() {
            ui.output(&format!("Success! Data written to: {}", target.full));
        }
        return Ok(0);
    };
    if ui.field.is_some() || !ui.is_table() {
        return ui.secret(&secret).map(|_| 0);
    }
    let meta = secret.data.clone().unwrap_or_default();
    ui.output(&pad_equal_signs("Secret Path", target.full.len()));
    ui.output(&target.full);
    ui.output("");
    ui.output(&header_for_map("Metadata", &meta));
    ui.output(&map_table(&meta));
    Ok(0)
}

fn parse_versions(raw: &[String]) -> Result<Vec<u64>, CliError> {
    raw.iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| CliError::Usage(format!("Invalid version {v:?} in -versions")))
        })
        .collect()
}

async fn delete(ctx: &Context, ui: &mut Ui, cmd: KvVersionsCmd) -> Result<u8, CliError> {
    let versions = parse_versions(&cmd.versions)?;
    let client = ctx.client()?;
    let prefix = if versions.is_empty() {
        "data"
    } else {
        "delete"
    };
    let target = resolve(&client, cmd.mount.as_deref(), &cmd.path, prefix).await?;
    let path = target.full.clone();
    let result = if target.v2 && !versions.is_empty() {
        client.write(&path, &json!({ "versions": versions })).await
    } else {
        client.delete(&path).await
    };
    result.map_err(|e| CliError::api(format!("Error deleting {path}"), e))?;
    ui.output(&format!("Success! Data deleted (if it existed) at: {path}"));
    Ok(0)
}

async fn versions_op(
    ctx: &Context,
    ui: &mut Ui,
    cmd: KvVersionsCmd,
    op: &str,
) -> Result<u8, CliError> {
    let versions = parse_versions(&cmd.versions)?;
    if versions.is_empty() {
        return Err(CliError::Usage(format!(
            "No versions provided, use the \"-versions\" flag to specify the version to {op}."
        )));
    }
    let client = ctx.client()?;
    let target = resolve(&client, cmd.mount.as_deref(), &cmd.path, op).await?;
    require_v2(&target, op)?;
    let secret = client
        .write(&target.full, &json!({ "versions": versions }))
        .await
        .map_err(|e| CliError::api(format!("Error writing data to {}", target.full), e))?;
    match secret {
        Some(secret) => ui.secret(&secret)?,
        None => ui.output(&format!("Success! Data written to: {}", target.full)),
    }
    Ok(0)
}

async fn metadata(ctx: &Context, ui: &mut Ui, cmd: KvMetadataCmd) -> Result<u8, CliError> {
    let client = ctx.client()?;
    match cmd {
        KvMetadataCmd::Get(cmd) => {
            let target = resolve(&client, cmd.mount.as_deref(), &cmd.path, "metadata").await?;
            require_v2(&target, "metadata")?;
            let secret = client
                .read(&target.full)
                .await
                .map_err(|e| CliError::api(format!("Error reading {}", target.full), e))?
                .ok_or_else(|| CliError::Remote(format!("No value found at {}", target.full)))?;
            if ui.field.is_some() || !ui.is_table() {
                return ui.secret(&secret).map(|_| 0);
            }
            let mut meta = secret.data.clone().unwrap_or_default();
            let versions = meta.remove("versions");
            ui.output(&pad_equal_signs("Metadata Path", target.full.len()));
            ui.output(&target.full);
            ui.output("");
            ui.output(&header_for_map("Metadata", &meta));
            ui.output(&map_table(&meta));
            if let Some(Value::Object(versions)) = versions {
                let mut keys: Vec<&String> = versions.keys().collect();
                keys.sort_by_key(|k| k.parse::<u64>().unwrap_or(0));
                for k in keys {
                    if let Value::Object(v) = &versions[k] {
                        ui.output("");
                        ui.output(&header_for_map(&format!("Version {k}"), v));
                        ui.output(&map_table(v));
                    }
                }
            }
            Ok(0)
        }
        KvMetadataCmd::Put(cmd) => metadata_put(&client, ui, cmd).await,
        KvMetadataCmd::Delete(cmd) => {
            let target = resolve(&client, cmd.mount.as_deref(), &cmd.path, "metadata").await?;
            require_v2(&target, "metadata")?;
            client
                .delete(&target.full)
                .await
                .map_err(|e| CliError::api(format!("Error deleting {}", target.full), e))?;
            ui.output(&format!(
                "Success! Data deleted (if it existed) at: {}",
                target.full
            ));
            Ok(0)
        }
    }
}

async fn metadata_put(client: &Client, ui: &mut Ui, cmd: KvMetadataPutCmd) -> Result<u8, CliError> {
    let target = resolve(client, cmd.mount.as_deref(), &cmd.path, "metadata").await?;
    require_v2(&target, "metadata")?;
    let mut body = Map::new();
    if let Some(n) = cmd.max_versions {
        body.insert("max_versions".into(), n.into());
    }
    if let Some(b) = cmd.cas_required {
        body.insert("cas_required".into(), b.into());
    }
    if let Some(d) = &cmd.delete_version_after {
        body.insert("delete_version_after".into(), d.clone().into());
    }
    if !cmd.custom_metadata.is_empty() {
        let custom = parse_kv_args(&cmd.custom_metadata, &mut std::io::empty())?;
        body.insert("custom_metadata".into(), Value::Object(custom));
    }
    client
        .write(&target.full, &Value::Object(body))
        .await
        .map_err(|e| CliError::api(format!("Error writing data to {}", target.full), e))?;
    ui.output(&format!("Success! Data written to: {}", target.full));
    Ok(0)
}
