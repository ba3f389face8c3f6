//! `read`, `write`, `list`, `delete`: any API path.

use serde_json::Value;

use super::super::args::{PathArg, PathData, WriteCmd};
use super::super::data::parse_kv_args;
use super::{output_keys, query_string, CliError, Context, Ui};

fn sanitize(path: &str) -> String {
    path.trim().trim_start_matches('/').to_string()
}

pub async fn read(ctx: &Context, ui: &mut Ui, cmd: PathData) -> Result<u8, CliError> {
    let path = sanitize(&cmd.path);
    let data = parse_kv_args(&cmd.data, &mut std::io::stdin())?;
    let client = ctx.client()?;
    let full = format!("{path}{}", query_string(&data));
    let secret = client
        .read(&full)
        .await
        .map_err(|e| CliError::api(format!("Error reading {path}"), e))?
        .ok_or_else(|| CliError::Remote(format!("No value found at {path}")))?;
    ui.secret(&secret)?;
    Ok(0)
}

pub async fn write(ctx: &Context, ui: &mut Ui, cmd: WriteCmd) -> Result<u8, CliError> {
    let path = sanitize(&cmd.path);
    let data = parse_kv_args(&cmd.data, &mut std::io::stdin())?;
    if data.is_empty() && !cmd.force {
        return Err(CliError::Usage("Must supply data or use -force".into()));
    }
    let client = ctx.client()?;
    let secret = client
        .write(&path, &Value::Object(data))
        .await
        .map_err(|e| CliError::api(format!("Error writing data to {path}"), e))?;
    match secret {
        Some(secret) => ui.secret(&secret)?,
        None if ui.is_table() => ui.output(&format!("Success! Data written to: {path}")),
        None => {}
    }
    Ok(0)
}

pub async fn list(ctx: &Context, ui: &mut Ui, cmd: PathArg) -> Result<u8, CliError> {
    let path = sanitize(&cmd.path);
    let client = ctx.client()?;
    let secret = client
        .list(&path)
        .await
        .map_err(|e| CliError::api(format!("Error listing {path}"), e))?
        .filter(|s| s.data.as_ref().is_some_and(|d| d.contains_key("keys")))
        .ok_or_else(|| CliError::Remote(format!("No value found at {path}")))?;
    output_keys(ui, &secret)?;
    Ok(0)
}

pub async fn delete(ctx: &Context, ui: &mut Ui, cmd: PathData) -> Result<u8, CliError> {
    let path = sanitize(&cmd.path);
    let data = parse_kv_args(&cmd.data, &mut std::io::stdin())?;
    let client = ctx.client()?;
    let full = format!("{path}{}", query_string(&data));
    let secret = client
        .delete(&full)
        .await
        .map_err(|e| CliError::api(format!("Error deleting {path}"), e))?;
    match secret {
        Some(secret) => ui.secret(&secret)?,
        None if ui.is_table() => {
            ui.output(&format!("Success! Data deleted (if it existed) at: {path}"))
        }
        None => {}
    }
    Ok(0)
}
