//! `operator init|unseal|seal|step-down|rekey|generate-root|rotate|key-status`; `operator
//! raft` and `operator members` are in `raft`.

use rand::Rng;
use serde_json::{json, Value};

use crate::client::{
    GenerateRootStatus, InitRequest, InitResponse, KeyStatus, RekeyInitRequest, RekeyKeys,
    RekeyStatus,
};

use super::super::args::{GenerateRootCmd, InitCmd, OperatorCmd, RekeyCmd, UnsealCmd};
use super::super::input::read_secret;
use super::super::output::{columns, wrap_at_length};
use super::status::print_seal_status;
use super::{not_supported, CliError, Context, Ui};

const KEY_PROMPT: &str = "Unseal Key (will be hidden): ";

pub async fn run(ctx: &Context, ui: &mut Ui, cmd: OperatorCmd) -> Result<u8, CliError> {
    match cmd {
        OperatorCmd::Init(cmd) => init(ctx, ui, cmd).await,
        OperatorCmd::Unseal(cmd) => unseal(ctx, ui, cmd).await,
        OperatorCmd::Seal => {
            let client = ctx.client()?;
            client
                .seal()
                .await
                .map_err(|e| CliError::api("Error sealing", e))?;
            ui.output("Success! Vault is sealed.");
            Ok(0)
        }
        OperatorCmd::StepDown => {
            let client = ctx.client()?;
            client
                .step_down()
                .await
                .map_err(|e| CliError::api("Error stepping down", e))?;
            ui.output(&format!("Success! Stepped down: {}", client.address()));
            Ok(0)
        }
        OperatorCmd::Rekey(cmd) => rekey(ctx, ui, cmd).await,
        OperatorCmd::GenerateRoot(cmd) => generate_root(ctx, ui, cmd).await,
        OperatorCmd::Rotate => {
            let client = ctx.client()?;
            client
                .rotate()
                .await
                .map_err(|e| CliError::api("Error rotating key", e))?;
            let status = client
                .key_status()
                .await
                .map_err(|e| CliError::api("Error reading key status", e))?;
            if ui.is_table() {
                ui.output("Success! Rotated key");
                ui.output("");
                ui.output(&key_status_text(&status));
                Ok(0)
            } else {
                ui.structured(&status).map(|_| 0)
            }
        }
        OperatorCmd::KeyStatus => {
            let client = ctx.client()?;
            let status = client
                .key_status()
                .await
                .map_err(|e| CliError::api("Error reading key status", e))?;
            if ui.is_table() {
                ui.output(&key_status_text(&status));
                Ok(0)
            } else {
                ui.structured(&status).map(|_| 0)
            }
        }
        OperatorCmd::Raft(cmd) => super::raft::run(ctx, ui, cmd).await,
        OperatorCmd::Members => super::raft::members(ctx, ui).await,
        OperatorCmd::Other(args) => {
            let mut full = vec!["operator".to_string()];
            full.extend(args);
            Err(not_supported(&full))
        }
    }
}

fn key_status_text(status: &KeyStatus) -> String {
    columns(&[
        vec!["Key Term".into(), status.term.to_string()],
        vec!["Install Time".into(), status.install_time.clone()],
        vec!["Encryption Count".into(), status.encryptions.to_string()],
    ])
}

async fn init(ctx: &Context, ui: &mut Ui, cmd: InitCmd) -> Result<u8, CliError> {
    let client = ctx.client()?;
    if cmd.status {
        let inited = client
            .init_status()
            .await
            .map_err(|e| CliError::Local(format!("Error checking init status: {e}")))?;
        if ui.is_table() {
            ui.output(if inited {
                "Vault is initialized"
            } else {
                "Vault is not initialized"
            });
        } else {
            ui.structured(&json!({ "initialized": inited }))?;
        }
        return Ok(if inited { 0 } else { 2 });
    }
    let status = client
        .seal_status()
        .await
        .map_err(|e| CliError::api("Error initializing", e))?;
    // Recovery shares only mean something with an auto-unseal (recovery) seal.
    let recovery = status.recovery_seal;
    let req = InitRequest {
        secret_shares: cmd.key_shares,
        secret_threshold: cmd.key_threshold,
        recovery_shares: if recovery { cmd.recovery_shares } else { 0 },
        recovery_threshold: if recovery { cmd.recovery_threshold } else { 0 },
        ..Default::default()
    };
    let resp = client
        .init(&req)
        .await
        .map_err(|e| CliError::api("Error initializing", e))?;
    if ui.is_table() {
        ui.output(&init_text(&req, &resp));
    } else {
        ui.structured(&init_json(&req, &resp))?;
    }
    Ok(0)
}

/// `operator init`'s table output: the shares, the root token and vault's advice.
pub fn init_text(req: &InitRequest, resp: &InitResponse) -> String {
    let mut out: Vec<String> = Vec::new();
    let pick = |hex: &[String], b64: &[String], i: usize| {
        if b64.len() == hex.len() {
            b64[i].clone()
        } else {
            hex[i].clone()
        }
    };
    for i in 0..resp.keys.len() {
        out.push(format!(
            "Unseal Key {}: {}",
            i + 1,
            pick(&resp.keys, &resp.keys_base64, i)
        ));
    }
    for i in 0..resp.recovery_keys.len() {
        out.push(format!(
            "Recovery Key {}: {}",
            i + 1,
            pick(&resp.recovery_keys, &resp.recovery_keys_base64, i)
        ));
    }
    out.push(String::new());
    out.push(format!("Initial Root Token: {}", resp.root_token));
    out.push(String::new());
    if !resp.keys.is_empty() {
        let t = req.secret_threshold;
        out.push(wrap_at_length(&format!(
            "Vault initialized with {} key shares and a key threshold of {t}. Please securely \
             distribute the key shares printed above. When the Vault is re-sealed, restarted, \
             or stopped, you must supply at least {t} of these keys to unseal it before it can \
             start servicing requests.",
            req.secret_shares
        )));
        out.push(String::new());
        out.push(wrap_at_length(&format!(
            "Vault does not store the generated root key. Without at least {t} keys to \
             reconstruct the root key, Vault will remain permanently sealed!"
        )));
        out.push(String::new());
        out.push(wrap_at_length(
            "It is possible to generate new unseal keys, provided you have a quorum of existing \
             unseal keys shares. See \"vault operator rekey\" for more information.",
        ));
    } else {
        out.push("Success! Vault is initialized".into());
    }
    if !resp.recovery_keys.is_empty() {
        out.push(String::new());
        out.push(wrap_at_length(&format!(
            "Recovery key initialized with {} key shares and a key threshold of {}. Please \
             securely distribute the key shares printed above.",
            req.recovery_shares, req.recovery_threshold
        )));
    }
    out.join("\n")
}

/// `operator init -format=json`, with vault's field names.
pub fn init_json(req: &InitRequest, resp: &InitResponse) -> Value {
    let (shares, threshold) = if resp.keys.is_empty() {
        (1, 1)
    } else {
        (req.secret_shares, req.secret_threshold)
    };
    json!({
        "unseal_keys_b64": resp.keys_base64,
        "unseal_keys_hex": resp.keys,
        "unseal_shares": shares,
        "unseal_threshold": threshold,
        "recovery_keys_b64": resp.recovery_keys_base64,
        "recovery_keys_hex": resp.recovery_keys,
        "recovery_keys_shares": req.recovery_shares,
        "recovery_keys_threshold": req.recovery_threshold,
        "root_token": resp.root_token,
    })
}

async fn unseal(ctx: &Context, ui: &mut Ui, cmd: UnsealCmd) -> Result<u8, CliError> {
    let client = ctx.client()?;
    let status = if cmd.reset {
        client
            .unseal_reset()
            .await
            .map_err(|e| CliError::api("Error resetting unseal process", e))?
    } else {
        let key = read_secret(KEY_PROMPT, cmd.key.as_deref())?;
        let result = if cmd.migrate {
            client.unseal_migrate(&key).await
        } else {
            client.unseal(&key).await
        };
        result.map_err(|e| CliError::api("Error unsealing", e))?
    };
    print_seal_status(ui, &client, &status).await?;
    Ok(0)
}

async fn rekey(ctx: &Context, ui: &mut Ui, cmd: RekeyCmd) -> Result<u8, CliError> {
    let client = ctx.client()?;
    let target = match cmd.target.as_str() {
        "barrier" => RekeyKeys::Barrier,
        "recovery" => RekeyKeys::Recovery,
        other => {
            return Err(CliError::Usage(format!(
                "unknown -target {other:?}: use \"barrier\" (unseal keys) or \"recovery\" (recovery keys of an auto-unseal seal)"
            )))
        }
    };
    if cmd.cancel {
        let result = if cmd.verify {
            client.rekey_verification_cancel(target).await
        } else {
            client.rekey_cancel(target).await
        };
        result.map_err(|e| CliError::api("Error canceling rekey", e))?;
        ui.output("Success! Canceled rekeying (if it was started)");
        return Ok(0);
    }
    if cmd.status {
        let status = client
            .rekey_status(target)
            .await
            .map_err(|e| CliError::api("Error reading rekey status", e))?;
        return print_rekey_status(ui, &status).map(|_| 0);
    }
    if cmd.init {
        let req = RekeyInitRequest {
            secret_shares: cmd.key_shares,
            secret_threshold: cmd.key_threshold,
            require_verification: cmd.verify,
            ..Default::default()
        };
        let status = client
            .rekey_init(target, &req)
            .await
            .map_err(|e| CliError::api("Error initializing rekey", e))?;
        if ui.is_table() {
            ui.warn(&wrap_at_length(
                "WARNING! If you lose the keys after they are returned, there is no recovery. \
                 Consider canceling this operation and re-initializing with the -pgp-keys flag \
                 to protect the returned unseal keys along with -backup to allow recovery of \
                 the encrypted keys in case of emergency. You can delete the stored keys later \
                 using the -delete flag.",
            ));
            ui.warn("");
        }
        return print_rekey_status(ui, &status).map(|_| 0);
    }

    if cmd.verify {
        let nonce = match cmd.nonce {
            Some(n) => n,
            None => {
                client
                    .rekey_verification_status(target)
                    .await
                    .map_err(|e| CliError::api("Error reading rekey verification status", e))?
                    .nonce
            }
        };
        let key = read_secret(KEY_PROMPT, cmd.key.as_deref())?;
        let resp = client
            .rekey_verification_update(target, &key, &nonce)
            .await
            .map_err(|e| CliError::api("Error posting unseal key", e))?;
        if resp.complete {
            ui.output(&format!(
                "Success! Rekey verification successful. The new unseal keys are in effect.\n\n\
                 Verification nonce: {}",
                resp.nonce
            ));
        } else if ui.is_table() {
            ui.output(&columns(&[
                vec!["Nonce".into(), resp.nonce.clone()],
                vec!["Started".into(), resp.started.to_string()],
                vec![
                    "Verification Progress".into(),
                    format!("{}/{}", resp.progress, resp.t),
                ],
                vec!["New Shares".into(), resp.n.to_string()],
                vec!["New Threshold".into(), resp.t.to_string()],
            ]));
        } else {
            ui.structured(&resp)?;
        }
        return Ok(0);
    }

    let status = client
        .rekey_status(target)
        .await
        .map_err(|e| CliError::api("Error reading rekey status", e))?;
    if !status.started {
        return Err(CliError::Remote(
            "No rekey is in progress. Start a rekey process by running \"vault operator rekey \
             -init\"."
                .into(),
        ));
    }
    let nonce = cmd.nonce.unwrap_or_else(|| status.nonce.clone());
    let key = read_secret(KEY_PROMPT, cmd.key.as_deref())?;
    let resp = client
        .rekey_update(target, &key, &nonce)
        .await
        .map_err(|e| CliError::api("Error posting unseal key", e))?;
    if !resp.complete {
        let status = client
            .rekey_status(target)
            .await
            .map_err(|e| CliError::api("Error reading rekey status", e))?;
        return print_rekey_status(ui, &status).map(|_| 0);
    }
    if !ui.is_table() {
        ui.structured(&resp)?;
        return Ok(0);
    }
    let mut out = Vec::new();
    for (i, key) in resp.keys.iter().enumerate() {
        let shown = resp.keys_base64.get(i).unwrap_or(key);
        out.push(format!("Key {}: {shown}", i + 1));
    }
    out.push(String::new());
    out.push(format!("Operation nonce: {}", resp.nonce));
    out.push(String::new());
    let t = status.t;
    if resp.verification_required {
        out.push(wrap_at_length(&format!(
            "Vault has created a new root key, split into {} key shares and a key threshold of \
             {t}. These will not be active until after verification is complete. Please \
             securely distribute the key shares printed above. When Vault is re-sealed, \
             restarted, or stopped, you must supply at least {t} of these keys to unseal it \
             before it can start servicing requests.",
            status.n
        )));
        out.push(String::new());
        out.push(format!(
            "Verification nonce: {}\n\nRun \"keyhold operator rekey -verify\" with {t} of the new \
             keys to complete the rekey.",
            resp.verification_nonce
        ));
    } else if target == RekeyKeys::Recovery {
        out.push(wrap_at_length(&format!(
            "Vault recovery keys rekeyed with {} key shares and a key threshold of {t}. \
             Please securely distribute the key shares printed above.",
            status.n
        )));
    } else {
        out.push(wrap_at_length(&format!(
            "Vault rekeyed with {} key shares and a key threshold of {t}. Please securely \
             distribute the key shares printed above. When Vault is re-sealed, restarted, or \
             stopped, you must supply at least {t} of these keys to unseal it before it can \
             start servicing requests.",
            status.n
        )));
    }
    ui.output(&out.join("\n"));
    Ok(0)
}

fn print_rekey_status(ui: &mut Ui, status: &RekeyStatus) -> Result<(), CliError> {
    if !ui.is_table() {
        return ui.structured(status);
    }
    let mut rows = vec![
        vec!["Key".to_string(), "Value".to_string()],
        vec!["---".to_string(), "-----".to_string()],
        vec!["Nonce".into(), status.nonce.clone()],
        vec!["Started".into(), status.started.to_string()],
        vec![
            "Rekey Progress".into(),
            format!("{}/{}", status.progress, status.required),
        ],
        vec!["New Shares".into(), status.n.to_string()],
        vec!["New Threshold".into(), status.t.to_string()],
        vec![
            "Verification Required".into(),
            status.verification_required.to_string(),
        ],
    ];
    if let Some(fps) = &status.pgp_fingerprints {
        rows.push(vec![
            "PGP Fingerprints".into(),
            format!("[{}]", fps.join(" ")),
        ]);
        rows.push(vec!["Backup".into(), status.backup.to_string()]);
    }
    ui.output(&columns(&rows));
    Ok(())
}

async fn generate_root(ctx: &Context, ui: &mut Ui, cmd: GenerateRootCmd) -> Result<u8, CliError> {
    if cmd.dr_token {
        return Err(CliError::NotSupported(
            "-dr-token: DR operation tokens are a Vault Enterprise feature that keyhold does not \
             have"
                .into(),
        ));
    }
    if let Some(encoded) = &cmd.decode {
        let otp = cmd.otp.as_deref().ok_or_else(|| {
            CliError::Usage("Missing -otp flag: -decode needs the OTP used at -init".into())
        })?;
        let token = decode_root_token(encoded, otp)?;
        if ui.is_table() {
            ui.raw_field(&Value::String(token))?;
        } else {
            ui.structured(&json!({ "token": token }))?;
        }
        return Ok(0);
    }
    let client = ctx.client()?;
    if cmd.generate_otp {
        let status = client
            .generate_root_status()
            .await
            .map_err(|e| CliError::api("Error getting root generation status", e))?;
        let len = if status.otp_length == 0 {
            28
        } else {
            status.otp_length
        } as usize;
        let otp: String = rand::thread_rng()
            .sample_iter(&rand::distributions::Alphanumeric)
            .take(len)
            .map(char::from)
            .collect();
        ui.raw_field(&Value::String(otp))?;
        return Ok(0);
    }
    if cmd.cancel {
        client
            .generate_root_cancel()
            .await
            .map_err(|e| CliError::api("Error canceling root token generation", e))?;
        ui.output("Success! Root token generation canceled (if it was started)");
        return Ok(0);
    }
    if cmd.status {
        let status = client
            .generate_root_status()
            .await
            .map_err(|e| CliError::api("Error getting root generation status", e))?;
        return print_generate_root_status(ui, &status).map(|_| 0);
    }
    if cmd.init {
        let status = client
            .generate_root_init(cmd.otp.as_deref(), cmd.pgp_key.as_deref())
            .await
            .map_err(|e| CliError::api("Error initializing root generation", e))?;
        return print_generate_root_status(ui, &status).map(|_| 0);
    }

    let status = client
        .generate_root_status()
        .await
        .map_err(|e| CliError::api("Error getting root generation status", e))?;
    if !status.started {
        return Err(CliError::Remote(
            "No root generation is in progress. Start a root generation by running \"vault \
             operator generate-root -init\"."
                .into(),
        ));
    }
    let nonce = cmd.nonce.unwrap_or_else(|| status.nonce.clone());
    if cmd.key.is_none() && ui.is_table() {
        ui.warn(&format!("Operation nonce: {nonce}"));
    }
    let key = read_secret(KEY_PROMPT, cmd.key.as_deref())?;
    let status = client
        .generate_root_update(&key, &nonce)
        .await
        .map_err(|e| CliError::api("Error posting unseal key", e))?;
    print_generate_root_status(ui, &status)?;
    Ok(0)
}

fn print_generate_root_status(ui: &mut Ui, status: &GenerateRootStatus) -> Result<(), CliError> {
    if !ui.is_table() {
        return ui.structured(status);
    }
    let mut rows = vec![
        vec!["Nonce".to_string(), status.nonce.clone()],
        vec!["Started".into(), status.started.to_string()],
        vec![
            "Progress".into(),
            format!("{}/{}", status.progress, status.required),
        ],
        vec!["Complete".into(), status.complete.to_string()],
    ];
    if !status.pgp_fingerprint.is_empty() {
        rows.push(vec![
            "PGP Fingerprint".into(),
            status.pgp_fingerprint.clone(),
        ]);
    }
    if !status.encoded_token.is_empty() {
        rows.push(vec!["Encoded Token".into(), status.encoded_token.clone()]);
    } else if !status.encoded_root_token.is_empty() {
        rows.push(vec![
            "Encoded Root Token".into(),
            status.encoded_root_token.clone(),
        ]);
    }
    if !status.otp.is_empty() {
        ui.warn(&wrap_at_length(
            "A One-Time-Password has been generated for you and is shown in the OTP field. You \
             will need this value to decode the resulting root token, so keep it safe.",
        ));
        rows.push(vec!["OTP".into(), status.otp.clone()]);
    }
    if status.otp_length != 0 {
        rows.push(vec!["OTP Length".into(), status.otp_length.to_string()]);
    }
    ui.output(&columns(&rows));
    Ok(())
}

/// The root token from generate-root's `encoded_token`: base64 (padded or not) XOR the OTP.
pub fn decode_root_token(encoded: &str, otp: &str) -> Result<String, CliError> {
    crate::client::decode_root_token(encoded, otp).map_err(CliError::Usage)
}
