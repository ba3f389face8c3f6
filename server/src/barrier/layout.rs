//! The barrier's ciphertext layout, shared by every value the barrier or a seal encrypts.
//!
//! `[4-byte big-endian key term][version byte][12-byte random nonce][AES-256-GCM ciphertext + 16-byte tag]`
//!
//! Version 2 (written) authenticates the storage path as associated data, so a
//! value moved to another path fails to decrypt. Version 1 (read only, from
//! older Vault-style data) has no associated data.
//!
//! Term 0 never names a keyring term: it marks a value encrypted under a key
//! that lives outside the keyring (the root key for `core/keyring`, a seal's
//! unseal key for `core/hsm/barrier-unseal-keys`). Data encrypted under term 0
//! cannot be read through the barrier's data path, which only knows terms ≥ 1.

use aes_gcm::aead::{Aead, AeadInPlace, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::rngs::OsRng;
use rand::RngCore;

pub(crate) const VERSION_1: u8 = 1;
pub(crate) const VERSION_2: u8 = 2;
/// The term written on values encrypted under a key outside the keyring.
pub(crate) const OUTSIDE_KEYRING_TERM: u32 = 0;

const TERM_LEN: usize = 4;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = TERM_LEN + 1 + NONCE_LEN;

/// AES-GCM refused to encrypt (only for inputs beyond 2^36 bytes).
#[derive(Debug)]
pub(crate) struct EncryptError;

/// Encrypts `plaintext` as version 2 with `path` as associated data.
pub(crate) fn encrypt(
    cipher: &Aes256Gcm,
    term: u32,
    path: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>, EncryptError> {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);

    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&term.to_be_bytes());
    out.push(VERSION_2);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    // Encrypting in place overwrites the plaintext copy; the capacity above
    // means the tag is appended without a reallocation leaving one behind.
    let tag = cipher
        .encrypt_in_place_detached(
            Nonce::from_slice(&nonce),
            path.as_bytes(),
            &mut out[HEADER_LEN..],
        )
        .map_err(|_| EncryptError)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// The key term a stored value claims, or `None` if it is too short to be one.
pub(crate) fn term_of(ciphertext: &[u8]) -> Option<u32> {
    if ciphertext.len() < HEADER_LEN + TAG_LEN {
        return None;
    }
    let mut term = [0u8; TERM_LEN];
    term.copy_from_slice(&ciphertext[..TERM_LEN]);
    Some(u32::from_be_bytes(term))
}

/// Decrypts and authenticates a value stored at `path`. Any failure (short,
/// unknown version, wrong key, wrong path, tampered) is `None`: the caller
/// reports it without detail, and no unauthenticated byte is ever returned.
pub(crate) fn decrypt(cipher: &Aes256Gcm, path: &str, ciphertext: &[u8]) -> Option<Vec<u8>> {
    if ciphertext.len() < HEADER_LEN + TAG_LEN {
        return None;
    }
    let aad: &[u8] = match ciphertext[TERM_LEN] {
        VERSION_1 => b"",
        VERSION_2 => path.as_bytes(),
        _ => return None,
    };
    let nonce = Nonce::from_slice(&ciphertext[TERM_LEN + 1..HEADER_LEN]);
    cipher
        .decrypt(
            nonce,
            Payload {
                msg: &ciphertext[HEADER_LEN..],
                aad,
            },
        )
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::KeyInit;

    fn cipher(byte: u8) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(&[byte; 32]).unwrap()
    }

    #[test]
    fn layout_bytes() {
        let ct = encrypt(&cipher(1), 0x01020304, "a/b", b"hello").unwrap();
        assert_eq!(ct.len(), 4 + 1 + 12 + 5 + 16);
        assert_eq!(&ct[..5], &[1, 2, 3, 4, VERSION_2]);
        assert_eq!(term_of(&ct), Some(0x01020304));
        assert_eq!(decrypt(&cipher(1), "a/b", &ct).unwrap(), b"hello");
        assert!(decrypt(&cipher(1), "a/c", &ct).is_none());
        assert!(decrypt(&cipher(2), "a/b", &ct).is_none());
    }

    #[test]
    fn version_1_has_no_aad() {
        // Build a version 1 value by hand, as older Vault data would be.
        let c = cipher(3);
        let nonce = [9u8; 12];
        let body = c.encrypt(Nonce::from_slice(&nonce), &b"old"[..]).unwrap();
        let mut ct = vec![0, 0, 0, 1, VERSION_1];
        ct.extend_from_slice(&nonce);
        ct.extend_from_slice(&body);
        assert_eq!(decrypt(&c, "any/path", &ct).unwrap(), b"old");
        ct[4] = 7;
        assert!(decrypt(&c, "any/path", &ct).is_none(), "unknown version");
    }

    #[test]
    fn short_values_rejected() {
        let c = cipher(1);
        for len in 0..(HEADER_LEN + TAG_LEN) {
            assert!(decrypt(&c, "p", &vec![0; len]).is_none());
            assert!(term_of(&vec![0; len]).is_none());
        }
    }
}
