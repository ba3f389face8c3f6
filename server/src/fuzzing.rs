//! The doors the fuzz targets in `fuzz/` come in by: the smallest public entries to decoders
//! that are otherwise private to their module. Not an API; nothing else calls these.

use std::collections::BTreeMap;

use aes_gcm::{Aes256Gcm, KeyInit};
use serde_json::{Map, Value};

use crate::barrier::{layout, RootKey, KEYRING_PATH};
use crate::error::Error;
use crate::logical::Operation;

pub use crate::core::keys::{decode_share, reconstruct, KeyCollector};
pub use crate::http::json_limits::JsonScanner;

/// `plaintext` encrypted as `core/keyring` is stored: under the root key, with term 0, so a
/// target can hand any keyring plaintext to [`crate::barrier::Barrier::unseal`].
pub fn seal_keyring(root: &RootKey, plaintext: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(aes_gcm::Key::<Aes256Gcm>::from_slice(root.as_bytes()));
    layout::encrypt(
        &cipher,
        layout::OUTSIDE_KEYRING_TERM,
        KEYRING_PATH,
        plaintext,
    )
    .unwrap_or_else(|_| panic!("AES-GCM refused {} bytes", plaintext.len()))
}

/// The request path after `/v1/`, as the HTTP layer decodes it.
pub fn decode_path(raw: &str) -> Result<String, Error> {
    crate::http::decode_path(raw)
}

/// The query string, as the HTTP layer decodes it.
pub fn parse_query(query: Option<&str>) -> BTreeMap<String, String> {
    crate::http::parse_query(query)
}

/// A request's data from its body and query, as the HTTP layer builds it.
pub fn request_data(
    operation: Operation,
    query: &BTreeMap<String, String>,
    body: Option<&[u8]>,
) -> Result<Map<String, Value>, Error> {
    crate::http::request_data(operation, query, body)
}
