//! Key material inside persisted JSON: [`KeyBytes`] is written as base64 (Go's
//! `[]byte` JSON encoding) and every buffer that holds it, encoded or not, is
//! zeroized when dropped. The barrier keyring and the transit engine's named
//! keys both store their keys this way.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

/// Key bytes, base64 in JSON, zeroized on drop; `Debug` shows only the length.
pub(crate) struct KeyBytes(pub(crate) Zeroizing<Vec<u8>>);

impl fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyBytes({} bytes, redacted)", self.0.len())
    }
}

impl Serialize for KeyBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut text = Zeroizing::new(String::with_capacity(self.0.len().div_ceil(3) * 4));
        B64.encode_string(&self.0[..], &mut text);
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for KeyBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = KeyBytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("base64 key bytes")
            }
            // Borrowed or transient: no owned String of the encoded key is made.
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeyBytes, E> {
                let mut out = Zeroizing::new(Vec::with_capacity(v.len() / 4 * 3 + 3));
                B64.decode_vec(v, &mut out)
                    .map_err(|_| E::custom("key bytes are not valid base64"))?;
                Ok(KeyBytes(out))
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_as_base64_and_hides_itself_from_debug() {
        let key = KeyBytes(Zeroizing::new(vec![0xde, 0xad, 0xbe, 0xef]));
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, "\"3q2+7w==\"");
        let back: KeyBytes = serde_json::from_str(&json).unwrap();
        assert_eq!(&back.0[..], &[0xde, 0xad, 0xbe, 0xef]);
        let shown = format!("{back:?}");
        assert_eq!(shown, "KeyBytes(4 bytes, redacted)");
        assert!(serde_json::from_str::<KeyBytes>("\"not base64!\"").is_err());
    }
}
