//! One module per command group; [`dispatch`] routes a parsed command to it.

mod kv;
mod logical;
mod mounts;
mod operator;
mod policy;
mod raft;
mod snapshot_agent;
mod status;
mod token;

use serde_json::Value;

use super::args::{Command, ServerCmd};
use super::{CliError, Context, Ui};

#[cfg(test)]
pub(super) use kv::{add_prefix_to_kv_path, kv_get_table};
#[cfg(test)]
pub(super) use operator::{decode_root_token, init_json, init_text};
#[cfg(test)]
pub(super) use raft::{byte_size, config_update, join_request, tabwriter};
#[cfg(test)]
pub(super) use status::seal_status_table;
#[cfg(test)]
pub(super) use token::create_body;

pub async fn dispatch(ctx: &Context, ui: &mut Ui, command: Command) -> Result<u8, CliError> {
    match command {
        Command::Server(cmd) => server(cmd).await,
        Command::Status => status::status(ctx, ui).await,
        Command::Version => version(ui),
        Command::Operator(cmd) => operator::run(ctx, ui, cmd).await,
        Command::Read(cmd) => logical::read(ctx, ui, cmd).await,
        Command::Write(cmd) => logical::write(ctx, ui, cmd).await,
        Command::List(cmd) => logical::list(ctx, ui, cmd).await,
        Command::Delete(cmd) => logical::delete(ctx, ui, cmd).await,
        Command::Kv(cmd) => kv::run(ctx, ui, cmd).await,
        Command::Secrets(cmd) => mounts::secrets(ctx, ui, cmd).await,
        Command::Auth(cmd) => mounts::auth(ctx, ui, cmd).await,
        Command::Audit(cmd) => mounts::audit(ctx, ui, cmd).await,
        Command::Policy(cmd) => policy::run(ctx, ui, cmd).await,
        Command::Token(cmd) => token::run(ctx, ui, cmd).await,
        Command::Login(cmd) => token::login(ctx, ui, cmd).await,
        Command::SnapshotAgent(cmd) => snapshot_agent::run(cmd).await,
        Command::Other(args) => Err(not_supported(&args)),
    }
}

/// The error for a `vault` command keyhold does not implement yet.
pub fn not_supported(args: &[String]) -> CliError {
    let words: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .take_while(|a| !a.starts_with('-'))
        .take(3)
        .collect();
    CliError::NotSupported(format!(
        "\"{}\" is not supported by keyhold yet. Run \"keyhold -h\" for the commands it has.",
        words.join(" ")
    ))
}

async fn server(cmd: ServerCmd) -> Result<u8, CliError> {
    let args = crate::server::ServerArgs {
        config: cmd.config,
        dev: cmd.dev,
        dev_root_token_id: cmd.dev_root_token_id,
        dev_listen_address: cmd.dev_listen_address,
        check: cmd.check,
        log_level: cmd.log_level,
    };
    if !args.dev && args.config.is_empty() {
        return Err(CliError::Usage(
            "Must specify at least one config path using -config".into(),
        ));
    }
    crate::server::run(args)
        .await
        .map_err(|e| CliError::Local(format!("Error: {e:#}")))?;
    Ok(0)
}

fn version(ui: &mut Ui) -> Result<u8, CliError> {
    if ui.is_table() {
        ui.output(&format!("Keyhold v{}", crate::VERSION));
    } else {
        ui.structured(&serde_json::json!({ "version": crate::VERSION }))?;
    }
    Ok(0)
}

/// Joins path segments as Go's `path.Join` does for the paths the CLI builds: no empty
/// segments, no leading or trailing slash.
pub fn join_path(parts: &[&str]) -> String {
    parts
        .iter()
        .flat_map(|p| p.split('/'))
        .filter(|s| !s.is_empty() && *s != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// `k=v` pairs as a URL query string (`?a=b&c=d`), for `read` and `delete` with data.
pub fn query_string(data: &serde_json::Map<String, Value>) -> String {
    if data.is_empty() {
        return String::new();
    }
    let mut url = reqwest::Url::parse("http://query.invalid/").expect("static URL parses");
    {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in data {
            match v {
                Value::Array(items) => {
                    for item in items {
                        pairs.append_pair(k, &value_text(item));
                    }
                }
                other => {
                    pairs.append_pair(k, &value_text(other));
                }
            }
        }
    }
    format!("?{}", url.query().unwrap_or_default())
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints a list answer's `keys` as vault's `OutputList`: a `Keys` table, or the JSON array.
pub fn output_keys(ui: &mut Ui, secret: &crate::client::Secret) -> Result<(), CliError> {
    let keys = secret
        .data
        .as_ref()
        .and_then(|d| d.get("keys"))
        .cloned()
        .unwrap_or(Value::Array(Vec::new()));
    if !ui.is_table() {
        return ui.structured(&keys);
    }
    ui.print_warnings(secret.warnings.as_deref().unwrap_or_default());
    let mut names: Vec<String> = keys
        .as_array()
        .map(|a| a.iter().map(value_text).collect())
        .unwrap_or_default();
    names.sort();
    let rows: Vec<Vec<String>> = names.into_iter().map(|k| vec![k]).collect();
    ui.output(&super::output::table(&["Keys"], &rows));
    Ok(())
}
