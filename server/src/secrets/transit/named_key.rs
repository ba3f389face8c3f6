//! A named transit key: its versions of key material, its settings, and the
//! AEAD operations on Vault's ciphertext format
//! `vault:v<N>:<base64(nonce 12 || ciphertext || tag 16)>`.
//!
//! A key is one JSON document in the mount's storage view (so behind the
//! barrier); its key bytes are [`KeyBytes`], zeroized on drop, and never
//! appear in `Debug` output or error messages. Every encryption draws a fresh
//! random 96-bit nonce from the OS.

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes128Gcm, Aes256Gcm};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::ChaCha20Poly1305;
use chrono::{DateTime, Utc};
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::key_bytes::KeyBytes;

/// Vault's ciphertext prefix up to the version number.
const PREFIX: &str = "vault:v";
/// Every supported AEAD uses a 96-bit nonce.
const NONCE_LEN: usize = 12;

/// The key types this build can create. Vault's asymmetric, HMAC and managed
/// types are refused at creation with a message naming these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum KeyType {
    #[serde(rename = "aes128-gcm96")]
    Aes128Gcm96,
    #[serde(rename = "aes256-gcm96")]
    Aes256Gcm96,
    #[serde(rename = "chacha20-poly1305")]
    ChaCha20Poly1305,
}

/// Vault's key types that this build knows by name but does not implement.
const VAULT_ONLY_TYPES: &[&str] = &[
    "ed25519",
    "ecdsa-p256",
    "ecdsa-p384",
    "ecdsa-p521",
    "rsa-2048",
    "rsa-3072",
    "rsa-4096",
    "hmac",
    "managed_key",
    "aes128-cmac",
    "aes256-cmac",
    "ml-dsa",
    "hybrid",
];

impl KeyType {
    pub(crate) const ALL: [KeyType; 3] = [
        KeyType::Aes128Gcm96,
        KeyType::Aes256Gcm96,
        KeyType::ChaCha20Poly1305,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            KeyType::Aes128Gcm96 => "aes128-gcm96",
            KeyType::Aes256Gcm96 => "aes256-gcm96",
            KeyType::ChaCha20Poly1305 => "chacha20-poly1305",
        }
    }

    /// The `type` field of a create (or upserting encrypt) request.
    pub(crate) fn parse(name: &str) -> Result<KeyType, Error> {
        if let Some(kind) = Self::ALL.into_iter().find(|k| k.as_str() == name) {
            return Ok(kind);
        }
        let supported = Self::ALL.map(KeyType::as_str).join(", ");
        if VAULT_ONLY_TYPES.contains(&name) {
            Err(Error::invalid(format!(
                "key type {name} is not supported by this build; supported: {supported}"
            )))
        } else {
            Err(Error::invalid(format!(
                "unknown key type {name}; supported: {supported}"
            )))
        }
    }

    fn key_len(self) -> usize {
        match self {
            KeyType::Aes128Gcm96 => 16,
            KeyType::Aes256Gcm96 | KeyType::ChaCha20Poly1305 => 32,
        }
    }

    /// The name Go's AEAD gives itself in "message authentication failed".
    fn aead_name(self) -> &'static str {
        match self {
            KeyType::Aes128Gcm96 | KeyType::Aes256Gcm96 => "cipher",
            KeyType::ChaCha20Poly1305 => "chacha20poly1305",
        }
    }
}

/// Why one encryption or decryption failed. The messages are Vault's own, so
/// clients that match on them keep working; none ever quotes key material or
/// plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CryptoError {
    #[error("invalid ciphertext: no prefix")]
    NoPrefix,
    #[error("invalid ciphertext: wrong number of fields")]
    WrongNumberOfFields,
    #[error("invalid ciphertext: version number could not be decoded")]
    UndecodableVersion,
    #[error("invalid ciphertext: version is too new")]
    VersionTooNew,
    #[error("ciphertext or signature version is disallowed by policy (too old)")]
    VersionTooOld,
    #[error("invalid ciphertext: could not decode base64")]
    CiphertextNotBase64,
    #[error("invalid ciphertext length")]
    CiphertextTooShort,
    #[error("{0}: message authentication failed")]
    Authentication(&'static str),
    #[error("requested version for encryption is negative")]
    EncryptVersionNegative,
    #[error("requested version for encryption is higher than the latest key version")]
    EncryptVersionTooNew,
    #[error("requested version for encryption is less than the minimum encryption key version")]
    EncryptVersionTooOld,
    #[error("no such key version")]
    NoSuchVersion,
    #[error("illegal base64 data at input byte {0}")]
    Base64(usize),
    #[error("provided nonce not allowed for this key")]
    NonceNotAllowed,
    /// The AEAD refused to seal (only a plaintext near 64 GiB can do that).
    #[error("encryption failed")]
    SealFailed,
}

impl CryptoError {
    /// A failure the caller caused (400), as opposed to one of the server (500).
    pub(crate) fn is_user_error(&self) -> bool {
        !matches!(self, CryptoError::SealFailed)
    }
}

impl From<CryptoError> for Error {
    fn from(e: CryptoError) -> Error {
        if e.is_user_error() {
            Error::invalid(e.to_string())
        } else {
            Error::internal(e.to_string())
        }
    }
}

/// Decodes standard padded base64 as Go's `StdEncoding.DecodeString` does
/// (line breaks are skipped), into a zeroizing buffer, with Go's message.
pub(crate) fn decode_base64(text: &str) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let cleaned: Zeroizing<String>;
    let text = if text.contains(['\r', '\n']) {
        cleaned = Zeroizing::new(text.chars().filter(|c| !matches!(c, '\r' | '\n')).collect());
        cleaned.as_str()
    } else {
        text
    };
    let mut out = Zeroizing::new(Vec::with_capacity(text.len() / 4 * 3 + 3));
    B64.decode_vec(text, &mut out).map_err(|e| {
        use base64::DecodeError::*;
        CryptoError::Base64(match e {
            InvalidByte(offset, _) | InvalidLastSymbol(offset, _) => offset,
            InvalidLength(_) | InvalidPadding => text.len(),
        })
    })?;
    Ok(out)
}

/// One version of a key: its bytes and when it was made.
#[derive(Debug, Serialize, Deserialize)]
struct KeyVersion {
    key: KeyBytes,
    creation_time: DateTime<Utc>,
}

/// A named key as stored at `keys/<name>` in the mount's view.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct NamedKey {
    pub(crate) name: String,
    #[serde(rename = "type")]
    pub(crate) kind: KeyType,
    pub(crate) exportable: bool,
    pub(crate) allow_plaintext_backup: bool,
    pub(crate) deletion_allowed: bool,
    /// Ciphertexts of older versions are refused (1 or more).
    pub(crate) min_decryption_version: u32,
    /// Encryption with an older version is refused; 0 means "latest only by
    /// default, any version on request", as in Vault.
    pub(crate) min_encryption_version: u32,
    /// Versions below this one have been trimmed away for good (0: none).
    pub(crate) min_available_version: u32,
    pub(crate) latest_version: u32,
    /// Seconds; stored and reported, 0 disables. Rotation on this schedule is
    /// not performed by this build.
    pub(crate) auto_rotate_period: u64,
    versions: BTreeMap<u32, KeyVersion>,
}

/// Settings a new key is created with.
#[derive(Debug, Clone)]
pub(crate) struct NewKey {
    pub(crate) kind: KeyType,
    pub(crate) exportable: bool,
    pub(crate) allow_plaintext_backup: bool,
    pub(crate) auto_rotate_period: u64,
}

impl NamedKey {
    /// A key with one fresh version.
    pub(crate) fn generate(name: &str, settings: &NewKey, now: DateTime<Utc>) -> NamedKey {
        let mut key = NamedKey {
            name: name.to_string(),
            kind: settings.kind,
            exportable: settings.exportable,
            allow_plaintext_backup: settings.allow_plaintext_backup,
            deletion_allowed: false,
            min_decryption_version: 1,
            min_encryption_version: 0,
            min_available_version: 0,
            latest_version: 0,
            auto_rotate_period: settings.auto_rotate_period,
            versions: BTreeMap::new(),
        };
        key.rotate(now);
        key
    }

    /// Adds a fresh version and makes it the latest.
    pub(crate) fn rotate(&mut self, now: DateTime<Utc>) {
        let mut bytes = Zeroizing::new(vec![0u8; self.kind.key_len()]);
        OsRng.fill_bytes(&mut bytes);
        self.latest_version += 1;
        self.versions.insert(
            self.latest_version,
            KeyVersion {
                key: KeyBytes(bytes),
                creation_time: now,
            },
        );
    }

    /// Forgets every version below `min_available_version` (the caller has
    /// checked it against the minimum encryption and decryption versions).
    pub(crate) fn trim(&mut self, min_available_version: u32) {
        self.min_available_version = min_available_version;
        self.versions = self.versions.split_off(&min_available_version);
    }

    /// Creation time of each version a client can still decrypt with, as
    /// Vault lists them in `keys`.
    pub(crate) fn version_times(&self) -> impl Iterator<Item = (u32, DateTime<Utc>)> + '_ {
        self.versions
            .range(self.min_decryption_version..)
            .map(|(v, kv)| (*v, kv.creation_time))
    }

    /// Encrypts with `requested` (0: the latest version) and answers the
    /// ciphertext and the version used.
    pub(crate) fn encrypt(
        &self,
        requested: i64,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<(String, u32), CryptoError> {
        let version = self.encryption_version(requested)?;
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext,
            aad,
        };
        let sealed = self
            .with_cipher(version, |cipher| cipher.seal(&nonce, payload))?
            .map_err(|_| CryptoError::SealFailed)?;
        let mut blob = Vec::with_capacity(NONCE_LEN + sealed.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        Ok((format!("{PREFIX}{version}:{}", B64.encode(&blob)), version))
    }

    /// Decrypts a `vault:vN:` ciphertext; the plaintext comes back in a
    /// zeroizing buffer with the version that sealed it.
    pub(crate) fn decrypt(
        &self,
        ciphertext: &str,
        aad: &[u8],
    ) -> Result<(Zeroizing<Vec<u8>>, u32), CryptoError> {
        let (version, encoded) = parse_ciphertext(ciphertext)?;
        if version > self.latest_version {
            return Err(CryptoError::VersionTooNew);
        }
        if version < self.min_decryption_version {
            return Err(CryptoError::VersionTooOld);
        }
        let blob = B64
            .decode(encoded)
            .map_err(|_| CryptoError::CiphertextNotBase64)?;
        if blob.len() < NONCE_LEN {
            return Err(CryptoError::CiphertextTooShort);
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let nonce: &[u8; NONCE_LEN] = nonce.try_into().expect("split at the nonce length");
        let payload = Payload { msg: sealed, aad };
        let plain = self
            .with_cipher(version, |cipher| cipher.open(nonce, payload))?
            .map_err(|_| CryptoError::Authentication(self.kind.aead_name()))?;
        Ok((plain, version))
    }

    /// Vault's rules for `key_version` on encryption.
    fn encryption_version(&self, requested: i64) -> Result<u32, CryptoError> {
        match requested {
            0 => Ok(self.latest_version),
            r if r < 0 => Err(CryptoError::EncryptVersionNegative),
            r if r > i64::from(self.latest_version) => Err(CryptoError::EncryptVersionTooNew),
            r if r < i64::from(self.min_encryption_version) => {
                Err(CryptoError::EncryptVersionTooOld)
            }
            r => u32::try_from(r).map_err(|_| CryptoError::EncryptVersionTooNew),
        }
    }

    /// Runs `f` with the AEAD of `version`; the cipher (and its expanded key)
    /// is zeroized when it goes out of scope.
    fn with_cipher<T>(&self, version: u32, f: impl FnOnce(&Cipher) -> T) -> Result<T, CryptoError> {
        let entry = self
            .versions
            .get(&version)
            .ok_or(CryptoError::NoSuchVersion)?;
        let key = &entry.key.0[..];
        let cipher = match self.kind {
            KeyType::Aes128Gcm96 => Aes128Gcm::new_from_slice(key).map(Cipher::Aes128),
            KeyType::Aes256Gcm96 => Aes256Gcm::new_from_slice(key).map(Cipher::Aes256),
            KeyType::ChaCha20Poly1305 => {
                ChaCha20Poly1305::new_from_slice(key).map(Cipher::ChaCha20Poly1305)
            }
        }
        // A stored key of the wrong length is corrupt storage, not a user error.
        .map_err(|_| CryptoError::NoSuchVersion)?;
        Ok(f(&cipher))
    }
}

/// `vault:v<N>:<payload>` to its version (`0` reads as 1, as in Vault) and
/// base64 payload.
pub(crate) fn parse_ciphertext(value: &str) -> Result<(u32, &str), CryptoError> {
    let rest = value.strip_prefix(PREFIX).ok_or(CryptoError::NoPrefix)?;
    let (version, payload) = rest
        .split_once(':')
        .ok_or(CryptoError::WrongNumberOfFields)?;
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CryptoError::UndecodableVersion);
    }
    let version: u32 = version
        .parse()
        .map_err(|_| CryptoError::UndecodableVersion)?;
    Ok((version.max(1), payload))
}

/// The AEADs of the supported key types, behind one interface.
// One short-lived value on the stack per operation: boxing the larger AES
// key schedule would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Cipher {
    Aes128(Aes128Gcm),
    Aes256(Aes256Gcm),
    ChaCha20Poly1305(ChaCha20Poly1305),
}

impl Cipher {
    fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        payload: Payload<'_, '_>,
    ) -> Result<Vec<u8>, aes_gcm::aead::Error> {
        let nonce = nonce.into();
        match self {
            Cipher::Aes128(c) => c.encrypt(nonce, payload),
            Cipher::Aes256(c) => c.encrypt(nonce, payload),
            Cipher::ChaCha20Poly1305(c) => c.encrypt(nonce, payload),
        }
    }

    fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        payload: Payload<'_, '_>,
    ) -> Result<Zeroizing<Vec<u8>>, aes_gcm::aead::Error> {
        let nonce = nonce.into();
        match self {
            Cipher::Aes128(c) => c.decrypt(nonce, payload),
            Cipher::Aes256(c) => c.decrypt(nonce, payload),
            Cipher::ChaCha20Poly1305(c) => c.decrypt(nonce, payload),
        }
        .map(Zeroizing::new)
    }
}
