//! `secrets`, `auth` and `audit`: enable, disable and list the three kinds of mounts.

use serde_json::{json, Map, Value};

use crate::client::Method;

use super::super::args::{AuditCmd, AuthCmd, SecretsCmd};
use super::super::data::parse_kv_args;
use super::super::output::{go_value, human_duration, table};
use super::{CliError, Context, Ui};

/// `foo` -> `foo/`, the way mount paths are printed.
fn with_slash(path: &str) -> String {
    format!("{}/", path.trim().trim_matches('/'))
}

fn bare(path: &str) -> String {
    path.trim().trim_matches('/').to_string()
}

/// The mount table of `sys/mounts`, `sys/auth` or `sys/audit`: `data` when wrapped, else the
/// top level without the wrapper's own keys.
async fn mount_table(
    ctx: &Context,
    path: &str,
    what: &str,
) -> Result<Map<String, Value>, CliError> {
    let client = ctx.client()?;
    let resp = client
        .request(Method::Get, path, None)
        .await
        .map_err(|e| CliError::api(format!("Error listing {what}"), e))?;
    let json = resp.json().cloned().unwrap_or(Value::Null);
    let table = match json.get("data") {
        Some(Value::Object(data)) => data.clone(),
        _ => json
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(_, v)| v.is_object())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default(),
    };
    Ok(table)
}

fn text(entry: &Value, key: &str) -> String {
    match entry.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => go_value(other),
    }
}

fn ttl(entry: &Value, key: &str) -> String {
    match entry
        .get("config")
        .and_then(|c| c.get(key))
        .and_then(Value::as_i64)
    {
        Some(0) | None => "system".into(),
        Some(secs) => human_duration(secs),
    }
}

fn sorted(table: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<(&String, &Value)> = table.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

pub async fn secrets(ctx: &Context, ui: &mut Ui, cmd: SecretsCmd) -> Result<u8, CliError> {
    match cmd {
        SecretsCmd::Enable(cmd) => {
            let (engine, mut version) = match cmd.engine_type.as_str() {
                "kv-v2" => ("kv".to_string(), Some(2)),
                other => (other.to_string(), None),
            };
            if cmd.version.is_some() {
                version = cmd.version;
            }
            let path = bare(cmd.path.as_deref().unwrap_or(&engine));
            let mut options = parse_kv_args(&cmd.options, &mut std::io::empty())?;
            if let Some(v) = version {
                options.insert("version".into(), v.to_string().into());
            }
            let mut config = Map::new();
            if let Some(t) = &cmd.default_lease_ttl {
                config.insert("default_lease_ttl".into(), t.clone().into());
            }
            if let Some(t) = &cmd.max_lease_ttl {
                config.insert("max_lease_ttl".into(), t.clone().into());
            }
            let body = json!({
                "type": engine,
                "description": cmd.description.unwrap_or_default(),
                "config": config,
                "options": options,
                "local": cmd.local,
                "seal_wrap": cmd.seal_wrap,
            });
            let client = ctx.client()?;
            client
                .request(Method::Post, &format!("sys/mounts/{path}"), Some(&body))
                .await
                .map_err(|e| CliError::api("Error enabling", e))?;
            let shown = if engine == "kv" && version == Some(2) {
                "kv-v2"
            } else {
                &engine
            };
            ui.output(&format!(
                "Success! Enabled the {shown} secrets engine at: {}",
                with_slash(&path)
            ));
            Ok(0)
        }
        SecretsCmd::Disable(cmd) => {
            let path = bare(&cmd.path);
            let client = ctx.client()?;
            client
                .request(Method::Delete, &format!("sys/mounts/{path}"), None)
                .await
                .map_err(|e| {
                    CliError::api(format!("Error disabling secrets engine at {path}"), e)
                })?;
            ui.output(&format!(
                "Success! Disabled the secrets engine (if it existed) at: {}",
                with_slash(&path)
            ));
            Ok(0)
        }
        SecretsCmd::List(cmd) => {
            let mounts = mount_table(ctx, "sys/mounts", "secrets engines").await?;
            if !ui.is_table() {
                return ui.structured(&mounts).map(|_| 0);
            }
            let rows: Vec<Vec<String>> = sorted(&mounts)
                .into_iter()
                .map(|(path, m)| {
                    if cmd.detailed {
                        vec![
                            path.clone(),
                            text(m, "type"),
                            text(m, "accessor"),
                            ttl(m, "default_lease_ttl"),
                            ttl(m, "max_lease_ttl"),
                            m.get("config")
                                .and_then(|c| c.get("force_no_cache"))
                                .and_then(Value::as_bool)
                                .unwrap_or(false)
                                .to_string(),
                            replication(m),
                            m.get("seal_wrap")
                                .and_then(Value::as_bool)
                                .unwrap_or(false)
                                .to_string(),
                            m.get("external_entropy_access")
                                .and_then(Value::as_bool)
                                .unwrap_or(false)
                                .to_string(),
                            options_text(m),
                            text(m, "description"),
                            text(m, "uuid"),
                        ]
                    } else {
                        vec![
                            path.clone(),
                            text(m, "type"),
                            text(m, "accessor"),
                            text(m, "description"),
                        ]
                    }
                })
                .collect();
            let header: &[&str] = if cmd.detailed {
                &[
                    "Path",
                    "Plugin",
                    "Accessor",
                    "Default TTL",
                    "Max TTL",
                    "Force No Cache",
                    "Replication",
                    "Seal Wrap",
                    "External Entropy Access",
                    "Options",
                    "Description",
                    "UUID",
                ]
            } else {
                &["Path", "Type", "Accessor", "Description"]
            };
            ui.output(&table(header, &rows));
            Ok(0)
        }
    }
}

fn replication(m: &Value) -> String {
    if m.get("local").and_then(Value::as_bool).unwrap_or(false) {
        "local".into()
    } else {
        "replicated".into()
    }
}

/// `map[k:v]` as Go prints a mount's options, or `n/a`.
fn options_text(m: &Value) -> String {
    match m.get("options") {
        Some(Value::Object(o)) if !o.is_empty() => go_value(&Value::Object(o.clone())),
        _ => String::new(),
    }
}

pub async fn auth(ctx: &Context, ui: &mut Ui, cmd: AuthCmd) -> Result<u8, CliError> {
    match cmd {
        AuthCmd::Enable(cmd) => {
            let path = bare(cmd.path.as_deref().unwrap_or(&cmd.method_type));
            let body = json!({
                "type": cmd.method_type,
                "description": cmd.description.unwrap_or_default(),
                "local": cmd.local,
            });
            let client = ctx.client()?;
            client
                .request(Method::Post, &format!("sys/auth/{path}"), Some(&body))
                .await
                .map_err(|e| {
                    CliError::api(format!("Error enabling {} auth", cmd.method_type), e)
                })?;
            ui.output(&format!(
                "Success! Enabled {} auth method at: {}",
                cmd.method_type,
                with_slash(&path)
            ));
            Ok(0)
        }
        AuthCmd::Disable(cmd) => {
            let path = bare(&cmd.path);
            let client = ctx.client()?;
            client
                .request(Method::Delete, &format!("sys/auth/{path}"), None)
                .await
                .map_err(|e| CliError::api(format!("Error disabling auth method at {path}"), e))?;
            ui.output(&format!(
                "Success! Disabled the auth method (if it existed) at: {}",
                with_slash(&path)
            ));
            Ok(0)
        }
        AuthCmd::List(cmd) => {
            let mounts = mount_table(ctx, "sys/auth", "enabled auth methods").await?;
            if !ui.is_table() {
                return ui.structured(&mounts).map(|_| 0);
            }
            let rows: Vec<Vec<String>> = sorted(&mounts)
                .into_iter()
                .map(|(path, m)| {
                    let mut row = vec![path.clone(), text(m, "type"), text(m, "accessor")];
                    if cmd.detailed {
                        row.extend([
                            ttl(m, "default_lease_ttl"),
                            ttl(m, "max_lease_ttl"),
                            replication(m),
                        ]);
                    }
                    row.extend([text(m, "description"), text(m, "plugin_version")]);
                    row
                })
                .collect();
            let header: &[&str] = if cmd.detailed {
                &[
                    "Path",
                    "Type",
                    "Accessor",
                    "Default TTL",
                    "Max TTL",
                    "Replication",
                    "Description",
                    "Version",
                ]
            } else {
                &["Path", "Type", "Accessor", "Description", "Version"]
            };
            ui.output(&table(header, &rows));
            Ok(0)
        }
    }
}

pub async fn audit(ctx: &Context, ui: &mut Ui, cmd: AuditCmd) -> Result<u8, CliError> {
    match cmd {
        AuditCmd::Enable(cmd) => {
            let path = bare(cmd.path.as_deref().unwrap_or(&cmd.device_type));
            let options = parse_kv_args(&cmd.options, &mut std::io::stdin())?;
            let options: Map<String, Value> = options
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => Value::String(s),
                        other => Value::String(go_value(&other)),
                    };
                    (k, v)
                })
                .collect();
            let body = json!({
                "type": cmd.device_type,
                "description": cmd.description.unwrap_or_default(),
                "options": options,
                "local": cmd.local,
            });
            let client = ctx.client()?;
            client
                .request(Method::Put, &format!("sys/audit/{path}"), Some(&body))
                .await
                .map_err(|e| CliError::api("Error enabling audit device", e))?;
            ui.output(&format!(
                "Success! Enabled the {} audit device at: {}",
                cmd.device_type,
                with_slash(&path)
            ));
            Ok(0)
        }
        AuditCmd::Disable(cmd) => {
            let path = bare(&cmd.path);
            let client = ctx.client()?;
            client
                .request(Method::Delete, &format!("sys/audit/{path}"), None)
                .await
                .map_err(|e| CliError::api("Error disabling audit device", e))?;
            ui.output(&format!(
                "Success! Disabled audit device (if it was enabled) at: {}",
                with_slash(&path)
            ));
            Ok(0)
        }
        AuditCmd::List(cmd) => {
            let devices = mount_table(ctx, "sys/audit", "audits").await?;
            if devices.is_empty() {
                return Err(CliError::Remote("No audit devices are enabled.".into()));
            }
            if !ui.is_table() {
                return ui.structured(&devices).map(|_| 0);
            }
            let rows: Vec<Vec<String>> = sorted(&devices)
                .into_iter()
                .map(|(path, d)| {
                    let mut row = vec![path.clone(), text(d, "type"), text(d, "description")];
                    if cmd.detailed {
                        row.push(replication(d));
                        let opts = match d.get("options") {
                            Some(Value::Object(o)) => {
                                let mut kv: Vec<String> = o
                                    .iter()
                                    .map(|(k, v)| format!("{k}={}", go_value(v)))
                                    .collect();
                                kv.sort();
                                kv.join(" ")
                            }
                            _ => String::new(),
                        };
                        row.push(opts);
                    }
                    row
                })
                .collect();
            let header: &[&str] = if cmd.detailed {
                &["Path", "Type", "Description", "Replication", "Options"]
            } else {
                &["Path", "Type", "Description"]
            };
            ui.output(&table(header, &rows));
            Ok(0)
        }
    }
}
