//! `policy write|read|list|delete` on `sys/policies/acl`.

use std::io::Read;

use serde_json::{json, Value};

use super::super::args::PolicyCmd;
use super::{CliError, Context, Ui};

pub async fn run(ctx: &Context, ui: &mut Ui, cmd: PolicyCmd) -> Result<u8, CliError> {
    let client = ctx.client()?;
    match cmd {
        PolicyCmd::Write { name, file } => {
            let name = name.trim().to_lowercase();
            let rules = if file == "-" {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text).map_err(|e| {
                    CliError::Local(format!("Error reading policy from stdin: {e}"))
                })?;
                text
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| CliError::Local(format!("Error opening policy file: {e}")))?
            };
            client
                .write(
                    &format!("sys/policies/acl/{name}"),
                    &json!({ "policy": rules }),
                )
                .await
                .map_err(|e| CliError::api("Error uploading policy", e))?;
            ui.output(&format!("Success! Uploaded policy: {name}"));
            Ok(0)
        }
        PolicyCmd::Read { name } => {
            let name = name.trim().to_lowercase();
            let secret = client
                .read(&format!("sys/policies/acl/{name}"))
                .await
                .map_err(|e| CliError::api(format!("Error reading policy named {name}"), e))?
                .ok_or_else(|| CliError::Remote(format!("No policy named: {name}")))?;
            if ui.field.is_some() || !ui.is_table() {
                return ui.secret(&secret).map(|_| 0);
            }
            let policy = secret
                .data
                .as_ref()
                .and_then(|d| d.get("policy").or_else(|| d.get("rules")))
                .and_then(Value::as_str)
                .unwrap_or_default();
            ui.output(policy.trim_end());
            Ok(0)
        }
        PolicyCmd::List => {
            let secret = client
                .list("sys/policies/acl")
                .await
                .map_err(|e| CliError::api("Error listing policies", e))?;
            let keys: Vec<String> = secret
                .and_then(|s| s.data)
                .and_then(|d| d.get("keys").cloned())
                .and_then(|k| serde_json::from_value(k).ok())
                .unwrap_or_default();
            if ui.is_table() {
                for k in &keys {
                    ui.output(k);
                }
                Ok(0)
            } else {
                ui.structured(&keys).map(|_| 0)
            }
        }
        PolicyCmd::Delete { name } => {
            let name = name.trim().to_lowercase();
            client
                .delete(&format!("sys/policies/acl/{name}"))
                .await
                .map_err(|e| CliError::api("Error deleting policy", e))?;
            ui.output(&format!("Success! Deleted policy: {name}"));
            Ok(0)
        }
    }
}
