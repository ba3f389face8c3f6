//! Collecting key shares from operators: unseal, generate-root and rekey all
//! gather a threshold of shares one request at a time, under a nonce, and
//! forget them as soon as the attempt ends.

use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::seal;

/// Shares submitted so far for one attempt.
#[derive(Default)]
pub struct KeyCollector {
    pub nonce: String,
    keys: Vec<Zeroizing<Vec<u8>>>,
}

impl KeyCollector {
    pub fn new() -> Self {
        KeyCollector {
            nonce: uuid::Uuid::new_v4().to_string(),
            keys: Vec::new(),
        }
    }

    pub fn progress(&self) -> usize {
        self.keys.len()
    }

    /// Adds a share; a share already given is ignored (as Vault does), so the
    /// same operator pasting twice does not count twice.
    pub fn add(&mut self, key: Zeroizing<Vec<u8>>) {
        if !self.keys.iter().any(|k| seal::ct_eq(k, &key)) {
            self.keys.push(key);
        }
    }

    /// Takes the shares and starts over with a fresh nonce.
    pub fn take(&mut self) -> Vec<Zeroizing<Vec<u8>>> {
        self.nonce = uuid::Uuid::new_v4().to_string();
        std::mem::take(&mut self.keys)
    }

    pub fn reset(&mut self) {
        self.take();
    }
}

/// Decodes a submitted key (hex or base64) and checks its length the way Vault
/// does before it is counted.
pub fn decode_share(key: &str) -> Result<Zeroizing<Vec<u8>>> {
    let bytes = seal::decode_key(key.trim())?;
    if bytes.len() > 33 {
        return Err(Error::invalid("key is longer than maximum 33 bytes"));
    }
    if bytes.len() < 16 {
        return Err(Error::invalid("key is shorter than minimum 16 bytes"));
    }
    Ok(bytes)
}

/// Rebuilds the secret from `threshold` shares (a single unsplit key when the
/// threshold is 1).
pub fn reconstruct(keys: &[Zeroizing<Vec<u8>>], threshold: usize) -> Result<Zeroizing<Vec<u8>>> {
    if threshold <= 1 {
        return keys
            .first()
            .cloned()
            .ok_or_else(|| Error::invalid("no key given"));
    }
    let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
    seal::shamir::combine(&refs)
        .map_err(|e| Error::invalid(format!("failed to combine the key shares: {e}")))
}
