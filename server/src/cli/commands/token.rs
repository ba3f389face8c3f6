//! `token create|lookup|renew|revoke` and `login`.

use serde_json::{json, Map, Value};

use crate::client::{parse_duration, Client, Secret, SecretAuth};

use super::super::args::{
    LoginCmd, TokenCmd, TokenCreateCmd, TokenRenewCmd, TokenRevokeCmd, TokenTargetCmd,
};
use super::super::data::parse_kv_args;
use super::super::input::read_secret;
use super::super::output::wrap_at_length;
use super::super::token_helper;
use super::{CliError, Context, Ui};

const TOKEN_PROMPT: &str = "Token (will be hidden): ";

pub async fn run(ctx: &Context, ui: &mut Ui, cmd: TokenCmd) -> Result<u8, CliError> {
    let client = ctx.client()?;
    match cmd {
        TokenCmd::Create(cmd) => create(&client, ui, cmd).await,
        TokenCmd::Lookup(cmd) => lookup(&client, ui, cmd).await,
        TokenCmd::Renew(cmd) => renew(&client, ui, cmd).await,
        TokenCmd::Revoke(cmd) => revoke(&client, ui, cmd).await,
    }
}

/// The body of `auth/token/create` from the flags, with vault's field names.
pub fn create_body(cmd: &TokenCreateCmd) -> Result<Value, CliError> {
    let mut body = Map::new();
    if !cmd.policy.is_empty() {
        body.insert("policies".into(), json!(cmd.policy));
    }
    for (key, value) in [
        ("ttl", &cmd.ttl),
        ("explicit_max_ttl", &cmd.explicit_max_ttl),
        ("period", &cmd.period),
        ("display_name", &cmd.display_name),
        ("type", &cmd.token_type),
        ("id", &cmd.id),
    ] {
        if let Some(v) = value {
            body.insert(key.into(), v.clone().into());
        }
    }
    if let Some(n) = cmd.use_limit {
        body.insert("num_uses".into(), n.into());
    }
    if let Some(r) = cmd.renewable {
        body.insert("renewable".into(), r.into());
    }
    if cmd.no_default_policy {
        body.insert("no_default_policy".into(), true.into());
    }
    if !cmd.metadata.is_empty() {
        let meta = parse_kv_args(&cmd.metadata, &mut std::io::empty())?;
        body.insert("meta".into(), Value::Object(meta));
    }
    Ok(Value::Object(body))
}

async fn create(client: &Client, ui: &mut Ui, cmd: TokenCreateCmd) -> Result<u8, CliError> {
    let body = create_body(&cmd)?;
    let path = match (&cmd.role, cmd.orphan) {
        (Some(role), _) => format!("auth/token/create/{role}"),
        (None, true) => "auth/token/create-orphan".to_string(),
        (None, false) => "auth/token/create".to_string(),
    };
    let secret = client
        .write(&path, &body)
        .await
        .map_err(|e| CliError::api("Error creating token", e))?
        .ok_or_else(|| {
            CliError::Remote("Error creating token: the server returned no token".into())
        })?;
    ui.secret(&secret)?;
    Ok(0)
}

fn target(arg: Option<&str>) -> Result<Option<String>, CliError> {
    match arg {
        Some("-") => read_secret(TOKEN_PROMPT, Some("-")).map(Some),
        Some(t) => Ok(Some(t.to_string())),
        None => Ok(None),
    }
}

async fn lookup(client: &Client, ui: &mut Ui, cmd: TokenTargetCmd) -> Result<u8, CliError> {
    let token = target(cmd.token.as_deref())?;
    let result = match (token, cmd.accessor) {
        (None, true) => {
            return Err(CliError::Usage(
                "Not enough arguments (expected 1, got 0): -accessor needs an accessor".into(),
            ))
        }
        (None, false) => client.read("auth/token/lookup-self").await,
        (Some(a), true) => {
            client
                .write("auth/token/lookup-accessor", &json!({ "accessor": a }))
                .await
        }
        (Some(t), false) => {
            client
                .write("auth/token/lookup", &json!({ "token": t }))
                .await
        }
    };
    let secret = result
        .map_err(|e| CliError::api("Error looking up token", e))?
        .ok_or_else(|| {
            CliError::Remote("Error looking up token: no token information returned".into())
        })?;
    ui.secret(&secret)?;
    Ok(0)
}

async fn renew(client: &Client, ui: &mut Ui, cmd: TokenRenewCmd) -> Result<u8, CliError> {
    let token = target(cmd.token.as_deref())?;
    let mut body = Map::new();
    if let Some(inc) = &cmd.increment {
        let secs = parse_duration(inc)
            .ok_or_else(|| CliError::Usage(format!("Invalid -increment {inc:?}: not a duration")))?
            .as_secs();
        body.insert("increment".into(), secs.into());
    }
    let path = match (token, cmd.accessor) {
        (None, _) => "auth/token/renew-self",
        (Some(a), true) => {
            body.insert("accessor".into(), a.into());
            "auth/token/renew-accessor"
        }
        (Some(t), false) => {
            body.insert("token".into(), t.into());
            "auth/token/renew"
        }
    };
    let secret = client
        .write(path, &Value::Object(body))
        .await
        .map_err(|e| CliError::api("Error renewing token", e))?
        .ok_or_else(|| {
            CliError::Remote("Error renewing token: no token information returned".into())
        })?;
    ui.secret(&secret)?;
    Ok(0)
}

async fn revoke(client: &Client, ui: &mut Ui, cmd: TokenRevokeCmd) -> Result<u8, CliError> {
    let token = target(cmd.token.as_deref())?;
    let orphan = match cmd.mode.as_deref() {
        None | Some("") | Some("path") => false,
        Some("orphan") => true,
        Some(other) => {
            return Err(CliError::Usage(format!(
                "Invalid -mode {other:?}: expected \"orphan\""
            )))
        }
    };
    let (path, body) = match (token, cmd.self_, cmd.accessor) {
        (Some(_), true, _) => {
            return Err(CliError::Usage(
                "Too many arguments: -self revokes the current token and takes none".into(),
            ))
        }
        (None, true, _) => ("auth/token/revoke-self", json!({})),
        (None, false, _) => {
            return Err(CliError::Usage(
                "Not enough arguments (expected 1, got 0): give a token, an accessor with \
                 -accessor, or -self"
                    .into(),
            ))
        }
        (Some(a), false, true) => ("auth/token/revoke-accessor", json!({ "accessor": a })),
        (Some(t), false, false) if orphan => ("auth/token/revoke-orphan", json!({ "token": t })),
        (Some(t), false, false) => ("auth/token/revoke", json!({ "token": t })),
    };
    client
        .write(path, &body)
        .await
        .map_err(|e| CliError::api("Error revoking token", e))?;
    ui.output("Success! Revoked token (if it existed)");
    Ok(0)
}

pub async fn login(ctx: &Context, ui: &mut Ui, cmd: LoginCmd) -> Result<u8, CliError> {
    let mut client = ctx.client()?;
    let method = cmd.method.as_str();
    let mount = cmd
        .path
        .clone()
        .unwrap_or_else(|| method.to_string())
        .trim_matches('/')
        .to_string();
    let secret = match method {
        "token" => {
            if cmd.args.len() > 1 {
                return Err(CliError::Usage(format!(
                    "Too many arguments (expected at most 1, got {})",
                    cmd.args.len()
                )));
            }
            let arg = cmd.args.first().map(String::as_str);
            let arg = match arg {
                Some(a) if a.starts_with("token=") => Some(&a["token=".len()..]),
                other => other,
            };
            let token = read_secret(TOKEN_PROMPT, arg)?;
            client.set_token(Some(token.clone()));
            let lookup = client
                .read("auth/token/lookup-self")
                .await
                .map_err(|e| CliError::api("Error authenticating", e))?
                .ok_or_else(|| CliError::Remote("Error authenticating: no token information returned".into()))?;
            token_secret_from_lookup(&token, &lookup)
        }
        "userpass" | "ldap" | "approle" => {
            let mut creds = parse_kv_args(&cmd.args, &mut std::io::stdin())?;
            let path = if method == "approle" {
                format!("auth/{mount}/login")
            } else {
                let username = creds
                    .remove("username")
                    .and_then(|v| v.as_str().map(str::to_string))
                    .ok_or_else(|| CliError::Usage("Missing username: give username=NAME".into()))?;
                if !creds.contains_key("password") {
                    let password = read_secret("Password (will be hidden): ", None)?;
                    creds.insert("password".into(), password.into());
                }
                format!("auth/{mount}/login/{username}")
            };
            client.set_token(None);
            client
                .write(&path, &Value::Object(creds))
                .await
                .map_err(|e| CliError::api("Error authenticating", e))?
                .ok_or_else(|| CliError::Remote("Error authenticating: no auth information returned".into()))?
        }
        other => {
            return Err(CliError::NotSupported(format!(
                "Unknown auth method: {other}. keyhold supports -method=token, userpass, ldap and approle."
            )))
        }
    };
    let auth = secret.auth.clone().ok_or_else(|| {
        CliError::Remote("Error authenticating: no auth information returned".into())
    })?;

    if cmd.token_only {
        ui.raw_field(&Value::String(auth.client_token.clone()))?;
        return Ok(0);
    }
    if !cmd.no_store {
        token_helper::store(&auth.client_token)?;
    }
    if std::env::var("VAULT_TOKEN").is_ok_and(|t| !t.is_empty()) {
        ui.warn(&wrap_at_length(
            "WARNING! The VAULT_TOKEN environment variable is set! The value of this variable \
             will take precedence; if this is unwanted please unset VAULT_TOKEN or update its \
             value accordingly.",
        ));
        ui.warn("");
    }
    if cmd.no_print {
        return Ok(0);
    }
    if ui.is_table() && ui.field.is_none() {
        if cmd.no_store {
            ui.output(&wrap_at_length(
                "Success! You are now authenticated. The token information displayed below is \
                 NOT stored in the token helper. Set the VAULT_TOKEN environment variable or \
                 pass the token below with each request to use it.",
            ));
        } else {
            ui.output(&wrap_at_length(
                "Success! You are now authenticated. The token information displayed below is \
                 already stored in the token helper. You do NOT need to run \"keyhold login\" \
                 again. Future requests will automatically use this token.",
            ));
        }
        ui.output("");
    }
    ui.secret(&secret)?;
    Ok(0)
}

/// The `auth` block vault builds from `lookup-self` for `login -method=token`.
fn token_secret_from_lookup(token: &str, lookup: &Secret) -> Secret {
    let data = lookup.data.clone().unwrap_or_default();
    let strings = |k: &str| -> Vec<String> {
        data.get(k)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    };
    let policies = strings("policies");
    let identity = strings("identity_policies");
    let mut all = policies.clone();
    all.extend(identity.iter().cloned());
    Secret {
        auth: Some(SecretAuth {
            client_token: token.to_string(),
            accessor: data
                .get("accessor")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            policies: all,
            token_policies: policies,
            identity_policies: Some(identity),
            lease_duration: data.get("ttl").and_then(Value::as_i64).unwrap_or(0),
            renewable: data
                .get("renewable")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}
