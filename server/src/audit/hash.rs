//! The per-device salt and the HMAC that hides secrets in audit entries.
//!
//! A value is logged as `hmac-sha256:<hex>`, HMAC-SHA256 keyed with the
//! device's salt (a random UUID string kept at `salt` in the device's storage
//! view, so it sits behind the barrier and is replicated). Operators who know a
//! plaintext can find it in the log through `sys/audit-hash`, which uses the
//! same function; nobody else can reverse or dictionary-check the values
//! without the salt.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::logical::StorageView;

/// Key of the salt inside the device's storage view (Vault's name).
pub(crate) const SALT_KEY: &str = "salt";

const HMAC_TYPE: &str = "hmac-sha256";

/// The salt of one audit device.
pub(crate) struct Salt {
    key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Salt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Salt(..)")
    }
}

impl Salt {
    /// Loads the salt stored in `view`, or creates and stores a new one.
    pub(crate) async fn load_or_create(view: &StorageView) -> Result<Salt> {
        if let Some(stored) = view.get(SALT_KEY).await? {
            if stored.is_empty() {
                return Err(Error::internal(
                    "the stored audit salt is empty; disable and re-enable the audit device",
                ));
            }
            return Ok(Salt::from_bytes(stored));
        }
        let fresh = uuid::Uuid::new_v4().to_string().into_bytes();
        view.put(SALT_KEY, fresh.clone()).await?;
        Ok(Salt::from_bytes(fresh))
    }

    pub(crate) fn from_bytes(key: Vec<u8>) -> Salt {
        Salt {
            key: Zeroizing::new(key),
        }
    }

    /// `hmac-sha256:<hex>` of `input`.
    pub(crate) fn hmac(&self, input: &str) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(input.as_bytes());
        format!("{HMAC_TYPE}:{}", hex::encode(mac.finalize().into_bytes()))
    }

    /// Replaces every string inside `value` (recursively through objects and
    /// arrays) by its HMAC. Object keys, numbers, booleans and nulls stay as
    /// they are.
    pub(crate) fn hash_strings(&self, value: &mut Value) {
        match value {
            Value::String(s) => *s = self.hmac(s),
            Value::Array(items) => items.iter_mut().for_each(|v| self.hash_strings(v)),
            Value::Object(map) => map.values_mut().for_each(|v| self.hash_strings(v)),
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// Hashes a string field in place; empty strings stay empty (an absent
    /// token is not a secret, and hashing it would suggest one was sent).
    pub(crate) fn hash_field(&self, field: &mut String) {
        if !field.is_empty() {
            *field = self.hmac(field);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hmac_matches_a_known_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let salt = Salt::from_bytes(b"Jefe".to_vec());
        assert_eq!(
            salt.hmac("what do ya want for nothing?"),
            "hmac-sha256:5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hash_strings_walks_nested_values_and_keeps_non_strings() {
        let salt = Salt::from_bytes(b"k".to_vec());
        let mut value = json!({
            "password": "hunter2",
            "nested": {"list": ["a", 1, true, null]},
            "ttl": 30,
        });
        salt.hash_strings(&mut value);
        assert_eq!(value["password"], json!(salt.hmac("hunter2")));
        assert_eq!(value["nested"]["list"][0], json!(salt.hmac("a")));
        assert_eq!(value["nested"]["list"][1], json!(1));
        assert_eq!(value["nested"]["list"][2], json!(true));
        assert_eq!(value["nested"]["list"][3], json!(null));
        assert_eq!(value["ttl"], json!(30));
    }

    #[tokio::test]
    async fn salt_is_created_once_and_reused() {
        let view = StorageView::inmem();
        let first = Salt::load_or_create(&view).await.unwrap();
        let second = Salt::load_or_create(&view).await.unwrap();
        assert_eq!(first.hmac("x"), second.hmac("x"));
        let stored = view.get(SALT_KEY).await.unwrap().unwrap();
        assert!(uuid::Uuid::parse_str(std::str::from_utf8(&stored).unwrap()).is_ok());
    }
}
