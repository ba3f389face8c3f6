//! `encrypt/:name`, `decrypt/:name`, `rewrap/:name` and
//! `datakey/{plaintext,wrapped}/:name`.
//!
//! The first three take one item in the body (`plaintext` or `ciphertext`,
//! `key_version`, `associated_data`) or a list of them in `batch_input`.
//! A single item that fails is a 400 with Vault's message. A batch always
//! answers `batch_results` in input order, each with its `reference` and
//! either its result or its `error`; as in Vault, the status is 400 when any
//! item failed for a reason of the caller's (500 when only the server's),
//! unless some item succeeded and `partial_failure_response_code` names
//! another status.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use serde_json::{json, Map, Value};
use zeroize::Zeroizing;

use super::manage::{key_type, refuse_derivation, upsert};
use super::named_key::{decode_base64, CryptoError, NamedKey, NewKey};
use super::{load, TransitBackend};
use crate::auth::fields::{bool_field, int_field, str_field};
use crate::error::{Error, Result};
use crate::logical::{BackendRequest, Operation, Response};

/// The answer for one item: its fields, or why it failed.
type ItemResult = Result<Map<String, Value>, CryptoError>;

/// Which of the three batch operations a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Encrypt,
    Decrypt,
    Rewrap,
}

impl Op {
    /// The field every item must carry, and Vault's words when it is missing.
    fn required(self) -> (&'static str, &'static str) {
        match self {
            Op::Encrypt => ("plaintext", "missing plaintext to encrypt"),
            Op::Decrypt => ("ciphertext", "missing ciphertext to decrypt"),
            Op::Rewrap => ("ciphertext", "missing ciphertext to rewrap"),
        }
    }
}

/// One unit of work: the body itself, or one element of `batch_input`.
#[derive(Debug, Default)]
struct Item {
    /// `plaintext` for encrypt, `ciphertext` for decrypt and rewrap.
    input: String,
    context: String,
    nonce: String,
    key_version: i64,
    associated_data: String,
    reference: String,
}

/// A request's items, and whether they came as a batch.
#[derive(Debug)]
struct Input {
    items: Vec<Item>,
    batch: bool,
}

impl Input {
    fn parse(data: &Map<String, Value>, op: Op) -> Result<Input> {
        let (field, missing) = op.required();
        let items = match data.get("batch_input") {
            None | Some(Value::Null) => {
                let input = str_field(data, field)?.ok_or_else(|| Error::invalid(missing))?;
                let item = Item {
                    input,
                    context: str_field(data, "context")?.unwrap_or_default(),
                    nonce: str_field(data, "nonce")?.unwrap_or_default(),
                    key_version: int_field(data, "key_version")?.unwrap_or(0),
                    associated_data: str_field(data, "associated_data")?.unwrap_or_default(),
                    reference: String::new(),
                };
                return Ok(Input {
                    items: vec![item],
                    batch: false,
                });
            }
            Some(raw) => parse_batch(raw, field, missing)
                .map_err(|e| Error::invalid(format!("failed to parse batch input: {e}")))?,
        };
        if items.is_empty() {
            return Err(Error::invalid("missing batch input to process"));
        }
        let input = Input { items, batch: true };
        Ok(input)
    }

    /// Keys here are never derived, so a `context` has nothing to select.
    fn refuse_context(&self) -> Result<()> {
        if self.items.iter().any(|i| !i.context.is_empty()) {
            return Err(Error::invalid(
                "context was given, but this build has no derived keys: send the request \
                 without \"context\"",
            ));
        }
        Ok(())
    }

    /// The response: the one item's result, or `batch_results` with Vault's status.
    fn respond(self, results: Vec<ItemResult>, data: &Map<String, Value>) -> Result<Response> {
        if !self.batch {
            let only = results.into_iter().next().expect("one item, one result");
            return Ok(Response::data(Value::Object(only?)));
        }
        let (mut user_error, mut server_error, mut success) = (false, false, false);
        let batch_results: Vec<Value> = results
            .into_iter()
            .zip(self.items)
            .map(|(result, item)| {
                let mut entry = match result {
                    Ok(fields) => {
                        success = true;
                        fields
                    }
                    Err(e) => {
                        if e.is_user_error() {
                            user_error = true;
                        } else {
                            server_error = true;
                        }
                        let mut fields = Map::new();
                        fields.insert("error".into(), json!(e.to_string()));
                        fields
                    }
                };
                entry.insert("reference".into(), json!(item.reference));
                Value::Object(entry)
            })
            .collect();
        let mut resp = Response::data(json!({ "batch_results": batch_results }));
        let failed = match (user_error, server_error) {
            (true, _) => Some(400),
            (false, true) => Some(500),
            (false, false) => None,
        };
        if let Some(mut status) = failed {
            if success {
                if let Some(code) = int_field(data, "partial_failure_response_code")? {
                    match u16::try_from(code) {
                        Ok(c @ 1..=599) => status = c,
                        _ => {
                            resp = resp.with_warning(format!(
                                "invalid HTTP response code override from \
                                 partial_failure_response_code, reverting to {status}"
                            ))
                        }
                    }
                }
            }
            resp.status = Some(status);
        }
        Ok(resp)
    }
}

/// `batch_input`: a list of objects (or a string holding one, as a CLI may
/// send it). Errors name the item and field as Vault's decoder does.
fn parse_batch(raw: &Value, field: &str, missing: &str) -> Result<Vec<Item>, String> {
    let parsed;
    let raw = match raw {
        Value::String(text) => {
            parsed = serde_json::from_str::<Value>(text).map_err(|_| {
                "batch_input is a string that does not hold a JSON list".to_string()
            })?;
            &parsed
        }
        other => other,
    };
    let Value::Array(list) = raw else {
        return Err(format!(
            "source data must be an array or slice, got {}",
            json_type(raw)
        ));
    };
    let mut errors = Vec::new();
    let mut items = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let Value::Object(map) = entry else {
            return Err(format!("[{i}] expected a map, got '{}'", json_type(entry)));
        };
        let mut text = |name: &str| match map.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                errors.push(format!(
                    "'[{i}].{name}' expected type 'string', got unconvertible type '{}'",
                    json_type(other)
                ));
                None
            }
        };
        let input = text(field);
        let item = Item {
            context: text("context").unwrap_or_default(),
            nonce: text("nonce").unwrap_or_default(),
            associated_data: text("associated_data").unwrap_or_default(),
            reference: text("reference").unwrap_or_default(),
            key_version: 0,
            input: input.clone().unwrap_or_default(),
        };
        if input.is_none() && !map.contains_key(field) {
            errors.push(format!("'[{i}].{field}' {missing}"));
        }
        let key_version = match map.get("key_version") {
            None | Some(Value::Null) => 0,
            Some(Value::Number(n)) if n.is_i64() => n.as_i64().unwrap_or(0),
            Some(Value::String(s)) if s.trim().parse::<i64>().is_ok() => {
                s.trim().parse().unwrap_or(0)
            }
            Some(other) => {
                errors.push(format!(
                    "'[{i}].key_version' expected type 'int', got unconvertible type '{}'",
                    json_type(other)
                ));
                0
            }
        };
        items.push(Item {
            key_version,
            ..item
        });
    }
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    Ok(items)
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `encrypt/:name`. A `create` (the key does not exist and the caller's
/// policy allows creating it) makes the key first, of the requested `type`.
pub(super) async fn encrypt(
    transit: &TransitBackend,
    req: &BackendRequest<'_>,
    name: &str,
) -> Result<Response> {
    let data = req.data();
    let input = Input::parse(data, Op::Encrypt)?;
    input.refuse_context()?;
    let (key, warning) = if req.operation() == Operation::Create {
        if bool_field(data, "convergent_encryption")? == Some(true) {
            return Err(Error::invalid(
                "convergent encryption requires derivation to be enabled, so context is required",
            ));
        }
        refuse_derivation(bool_field(data, "derived")?.unwrap_or(false))?;
        let settings = NewKey {
            kind: key_type(data)?,
            exportable: false,
            allow_plaintext_backup: false,
            auto_rotate_period: 0,
        };
        let (key, created) = upsert(transit, req, name, &settings).await?;
        let warning = (!created).then_some(
            "Attempted creation of the key during the encrypt operation, but it was created beforehand",
        );
        (key, warning)
    } else {
        (existing(req, name).await?, None)
    };
    let results = input
        .items
        .iter()
        .map(|item| encrypt_item(&key, item))
        .collect();
    let resp = input.respond(results, data)?;
    Ok(match warning {
        Some(w) => resp.with_warning(w),
        None => resp,
    })
}

pub(super) async fn decrypt(req: &BackendRequest<'_>, name: &str) -> Result<Response> {
    run(req, name, Op::Decrypt, decrypt_item).await
}

/// `rewrap/:name`: decrypts and encrypts again with `key_version` (the
/// latest by default), the plaintext never leaving the server.
pub(super) async fn rewrap(req: &BackendRequest<'_>, name: &str) -> Result<Response> {
    run(req, name, Op::Rewrap, rewrap_item).await
}

async fn run(
    req: &BackendRequest<'_>,
    name: &str,
    op: Op,
    one: fn(&NamedKey, &Item) -> ItemResult,
) -> Result<Response> {
    let input = Input::parse(req.data(), op)?;
    input.refuse_context()?;
    let key = existing(req, name).await?;
    let results = input.items.iter().map(|item| one(&key, item)).collect();
    input.respond(results, req.data())
}

async fn existing(req: &BackendRequest<'_>, name: &str) -> Result<NamedKey> {
    load(req.storage, name)
        .await?
        .ok_or_else(|| Error::invalid("encryption key not found"))
}

/// Nonces are the server's to choose: keys here are never convergent.
fn refuse_nonce(item: &Item) -> Result<(), CryptoError> {
    if item.nonce.is_empty() {
        Ok(())
    } else {
        Err(CryptoError::NonceNotAllowed)
    }
}

fn encrypt_item(key: &NamedKey, item: &Item) -> ItemResult {
    let plaintext = decode_base64(&item.input)?;
    refuse_nonce(item)?;
    let aad = decode_base64(&item.associated_data)?;
    let (ciphertext, version) = key.encrypt(item.key_version, &plaintext, &aad)?;
    Ok(sealed(ciphertext, version))
}

fn decrypt_item(key: &NamedKey, item: &Item) -> ItemResult {
    refuse_nonce(item)?;
    let aad = decode_base64(&item.associated_data)?;
    let (plaintext, _) = key.decrypt(&item.input, &aad)?;
    let mut out = Map::new();
    out.insert("plaintext".into(), json!(B64.encode(&plaintext[..])));
    Ok(out)
}

fn rewrap_item(key: &NamedKey, item: &Item) -> ItemResult {
    refuse_nonce(item)?;
    let aad = decode_base64(&item.associated_data)?;
    let (plaintext, _) = key.decrypt(&item.input, &aad)?;
    let (ciphertext, version) = key.encrypt(item.key_version, &plaintext, &aad)?;
    Ok(sealed(ciphertext, version))
}

fn sealed(ciphertext: String, version: u32) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("ciphertext".into(), json!(ciphertext));
    out.insert("key_version".into(), json!(version));
    out
}

/// `datakey/plaintext/:name` and `datakey/wrapped/:name`: a fresh random key
/// of `bits` (128, 256 or 512), sealed under the named key; `plaintext` also
/// returns it in the clear.
pub(super) async fn datakey(req: &BackendRequest<'_>, kind: &str, name: &str) -> Result<Response> {
    let data = req.data();
    let with_plaintext = match kind {
        "plaintext" => true,
        "wrapped" => false,
        other => {
            return Err(Error::invalid(format!(
            "invalid data key type {other:?}: use datakey/plaintext/NAME or datakey/wrapped/NAME"
        )))
        }
    };
    if str_field(data, "context")?.is_some_and(|c| !c.is_empty()) {
        return Err(Error::invalid(
            "context was given, but this build has no derived keys: send the request without \"context\"",
        ));
    }
    if str_field(data, "nonce")?.is_some_and(|n| !n.is_empty()) {
        return Err(CryptoError::NonceNotAllowed.into());
    }
    let bits = int_field(data, "bits")?.unwrap_or(256);
    if !matches!(bits, 128 | 256 | 512) {
        return Err(Error::invalid("invalid bits value: use 128, 256 or 512"));
    }
    let key = existing(req, name).await?;
    let mut fresh = Zeroizing::new(vec![0u8; usize::try_from(bits / 8).expect("bits checked")]);
    OsRng.fill_bytes(&mut fresh);
    let key_version = int_field(data, "key_version")?.unwrap_or(0);
    let (ciphertext, version) = key.encrypt(key_version, &fresh, &[])?;
    let mut out = sealed(ciphertext, version);
    if with_plaintext {
        out.insert("plaintext".into(), json!(B64.encode(&fresh[..])));
    }
    Ok(Response::data(Value::Object(out)))
}
