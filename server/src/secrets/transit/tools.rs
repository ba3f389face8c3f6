//! The keyless helpers Vault's transit engine also serves: `random` (bytes
//! from the OS generator) and `hash` (SHA-2 digests).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};
use zeroize::Zeroizing;

use super::named_key::decode_base64;
use crate::auth::fields::{int_field, str_field};
use crate::error::{Error, Result};
use crate::logical::{BackendRequest, Response};

/// Vault's cap on one `random` request.
const MAX_RANDOM_BYTES: i64 = 128 * 1024;

/// `random[/:source][/:bytes][/:format]`, with `bytes` (default 32) and
/// `format` (`base64` or `hex`) also accepted in the body; the path wins.
pub(super) fn random(req: &BackendRequest<'_>, segments: &[&str]) -> Result<Response> {
    let data = req.data();
    let mut source = str_field(data, "source")?;
    let mut bytes = int_field(data, "bytes")?;
    let mut format = str_field(data, "format")?;
    for segment in segments.iter().filter(|s| !s.is_empty()) {
        match *segment {
            "platform" | "seal" | "all" => source = Some(segment.to_string()),
            "hex" | "base64" => format = Some(segment.to_string()),
            n => {
                bytes = Some(
                    n.parse()
                        .map_err(|_| Error::UnsupportedPath(req.req.path.clone()))?,
                )
            }
        }
    }
    match source.as_deref().unwrap_or("platform") {
        "platform" | "" => {}
        "seal" | "all" => {
            return Err(Error::invalid(
                "this server's seal (Shamir) has no entropy source: use source \"platform\"",
            ))
        }
        other => {
            return Err(Error::invalid(format!(
                "unsupported entropy source {other:?}; must be \"platform\", \"seal\", or \"all\""
            )))
        }
    }
    let bytes = bytes.unwrap_or(32);
    if bytes < 1 {
        return Err(Error::invalid(
            "missing or invalid number of bytes to generate",
        ));
    }
    if bytes > MAX_RANDOM_BYTES {
        return Err(Error::invalid(format!(
            "number of bytes to generate exceeds the maximum of {MAX_RANDOM_BYTES}"
        )));
    }
    let mut out = Zeroizing::new(vec![0u8; usize::try_from(bytes).expect("bounded above")]);
    OsRng.fill_bytes(&mut out);
    let encoded = encode(&out, format.as_deref().unwrap_or("base64"))?;
    Ok(Response::data(json!({ "random_bytes": encoded })))
}

/// `hash[/:algorithm]`: the digest of base64 `input`, as `hex` (default) or
/// `base64` in `sum`.
pub(super) fn hash(req: &BackendRequest<'_>, algorithm: Option<&str>) -> Result<Response> {
    let data = req.data();
    let algorithm = match algorithm {
        Some(a) => a.to_string(),
        None => str_field(data, "algorithm")?.unwrap_or_else(|| "sha2-256".into()),
    };
    let input = str_field(data, "input")?.unwrap_or_default();
    let input = decode_base64(&input)
        .map_err(|e| Error::invalid(format!("unable to decode input as base64: {e}")))?;
    let sum = match algorithm.as_str() {
        "sha2-224" => Sha224::digest(&input[..]).to_vec(),
        "sha2-256" => Sha256::digest(&input[..]).to_vec(),
        "sha2-384" => Sha384::digest(&input[..]).to_vec(),
        "sha2-512" => Sha512::digest(&input[..]).to_vec(),
        "sha3-224" | "sha3-256" | "sha3-384" | "sha3-512" => {
            return Err(Error::invalid(format!(
                "algorithm {algorithm} is not supported by this build; use sha2-224, sha2-256, \
                 sha2-384 or sha2-512"
            )))
        }
        other => return Err(Error::invalid(format!("unsupported algorithm {other}"))),
    };
    let format = str_field(data, "format")?
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| "hex".into());
    Ok(Response::data(json!({ "sum": encode(&sum, &format)? })))
}

fn encode(bytes: &[u8], format: &str) -> Result<String> {
    match format {
        "hex" => Ok(hex::encode(bytes)),
        "base64" | "" => Ok(B64.encode(bytes)),
        other => Err(Error::invalid(format!(
            "unsupported encoding format {other}; must be \"hex\" or \"base64\""
        ))),
    }
}
