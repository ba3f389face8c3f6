//! Vault's Raft snapshot archive, written and read whole by the server: a gzip'd tar of `meta.json` (the Raft
//! snapshot metadata, Vault's field names), `state.bin` (length-delimited
//! `StorageEntry` protobufs: every stored key and its barrier ciphertext),
//! `SHA256SUMS` (`<hex>  <file>` lines) and, last, `SHA256SUMS.sealed`
//! (the sums sealed by the cluster that took the snapshot, so a restore can
//! tell its own snapshots from a foreign or altered one).
//!
//! Reading checks everything before anything is used: the four files, the
//! sums, and that `state.bin` decodes whole.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use super::state::encode_state;
use super::state::{Entries, StateReader};
pub use super::{META, SEALED_SUMS, STATE, SUMS};

/// `meta.json`, as hashicorp/raft writes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ArchiveMeta {
    pub version: u32,
    #[serde(rename = "ID")]
    pub id: String,
    pub index: u64,
    pub term: u64,
    pub configuration: Configuration,
    pub configuration_index: u64,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Configuration {
    pub servers: Vec<Server>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Server {
    /// 0 voter, 1 non-voter (hashicorp/raft's `ServerSuffrage`).
    pub suffrage: u8,
    #[serde(rename = "ID")]
    pub id: String,
    pub address: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ArchiveError {
    #[error("the snapshot is not a gzip'd tar archive, or it is truncated ({0}); take a new snapshot with `keyhold operator raft snapshot save`")]
    Format(String),
    #[error("the snapshot archive has no {0}; it is incomplete or not a Raft snapshot")]
    Missing(&'static str),
    #[error("the snapshot's {0} does not match SHA256SUMS: the archive was altered or damaged")]
    Checksum(&'static str),
    #[error("the snapshot's {0} is malformed: {1}")]
    Malformed(&'static str, String),
}

/// A checked archive.
pub struct Archive {
    pub meta: ArchiveMeta,
    pub state: Vec<u8>,
    pub sums: Vec<u8>,
    pub sealed_sums: Vec<u8>,
}

fn hex_sum(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `SHA256SUMS` for the two data files.
pub fn sums(meta_json: &[u8], state: &[u8]) -> Vec<u8> {
    sums_of(&hex_sum(meta_json), &hex_sum(state))
}

/// `SHA256SUMS` for the two data files' hex digests.
fn sums_of(meta_sha256: &str, state_sha256: &str) -> Vec<u8> {
    format!("{meta_sha256}  {META}\n{state_sha256}  {STATE}\n").into_bytes()
}

/// Writes the archive; `seal` seals `SHA256SUMS`.
pub fn write(
    meta: &ArchiveMeta,
    state: &[u8],
    seal: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<Vec<u8>, String> {
    // Sized up front: the state is most of the archive, and growing by doubling would hold
    // up to twice its size (stored deflate blocks add 5 bytes per 64 KiB, tar 512 per file).
    let capacity = state.len() + state.len() / 8192 + (64 << 10);
    let (bytes, _) = write_to(
        Vec::with_capacity(capacity),
        meta,
        state,
        state.len() as u64,
        seal,
    )?;
    Ok(bytes)
}

/// Writes the archive into `out` with `state` read as it is written (never held whole):
/// `state_len` bytes of it, which `meta.json` (written first) and the tar header say; the
/// SHA-256 for `SHA256SUMS` is taken on the way. `out` back, and the state's hex SHA-256 (a
/// caller whose state came with a digest compares the two). A state that ends before
/// `state_len`, or goes on after it, is an error, never a short archive.
pub fn write_to<W: Write>(
    out: W,
    meta: &ArchiveMeta,
    state: impl Read,
    state_len: u64,
    seal: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<(W, String), String> {
    let meta_json = serde_json::to_vec_pretty(meta).map_err(|e| e.to_string())?;
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::none());
    let mut tar = tar::Builder::new(gz);
    let mtime = chrono::Utc::now().timestamp().max(0) as u64;
    let header = |len: u64| {
        let mut header = tar::Header::new_gnu();
        header.set_size(len);
        header.set_mode(0o600);
        header.set_mtime(mtime);
        header.set_cksum();
        header
    };
    tar.append_data(&mut header(meta_json.len() as u64), META, &meta_json[..])
        .map_err(|e| e.to_string())?;
    // One byte past the length, to tell a longer state from one of exactly that length.
    let mut hashing = super::HashingReader::new(state.take(state_len.saturating_add(1)));
    tar.append_data(&mut header(state_len), STATE, &mut hashing)
        .map_err(|e| e.to_string())?;
    if hashing.len != state_len {
        return Err(format!(
            "the state is {} bytes where {state_len} were expected",
            hashing.len
        ));
    }
    let state_sha256 = hex::encode(hashing.hash.finalize());
    let sums = sums_of(&hex_sum(&meta_json), &state_sha256);
    let sealed = seal(&sums)?;
    for (name, body) in [(SUMS, &sums[..]), (SEALED_SUMS, &sealed[..])] {
        tar.append_data(&mut header(body.len() as u64), name, body)
            .map_err(|e| e.to_string())?;
    }
    let gz = tar.into_inner().map_err(|e| e.to_string())?;
    let mut out = gz.finish().map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    Ok((out, state_sha256))
}

/// Reads and checks an archive (not the sealed sums: only the cluster can).
pub fn read(bytes: &[u8]) -> Result<Archive, ArchiveError> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let (mut meta, mut state, mut sums_file, mut sealed) = (None, None, None, None);
    let entries = tar
        .entries()
        .map_err(|e| ArchiveError::Format(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ArchiveError::Format(e.to_string()))?;
        let name = entry
            .path()
            .map_err(|e| ArchiveError::Format(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        // The header's size, bounded by what the archive holds, so a forged size reserves
        // nothing beyond it.
        let size = usize::try_from(entry.header().size().unwrap_or(0)).unwrap_or(0);
        let mut body = Vec::with_capacity(size.min(bytes.len()));
        entry
            .read_to_end(&mut body)
            .map_err(|e| ArchiveError::Format(e.to_string()))?;
        match name.as_str() {
            META => meta = Some(body),
            STATE => state = Some(body),
            SUMS => sums_file = Some(body),
            SEALED_SUMS => sealed = Some(body),
            other => {
                return Err(ArchiveError::Malformed(
                    "archive",
                    format!("unexpected file {other:?}"),
                ))
            }
        }
    }
    // Read the gzip stream to its end: its CRC trailer catches a truncation
    // that cut only the tar's end padding.
    let mut rest = tar.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink())
        .map_err(|e| ArchiveError::Format(e.to_string()))?;
    let meta_json = meta.ok_or(ArchiveError::Missing(META))?;
    let state = state.ok_or(ArchiveError::Missing(STATE))?;
    let sums_file = sums_file.ok_or(ArchiveError::Missing(SUMS))?;
    let sealed = sealed
        .filter(|s| !s.is_empty())
        .ok_or(ArchiveError::Missing(SEALED_SUMS))?;
    let listed = String::from_utf8_lossy(&sums_file).into_owned();
    let sum_of = |file: &str| {
        listed.lines().find_map(|line| {
            let (sum, name) = line.split_once("  ")?;
            (name.trim() == file).then(|| sum.trim().to_string())
        })
    };
    if sum_of(META).as_deref() != Some(hex_sum(&meta_json).as_str()) {
        return Err(ArchiveError::Checksum(META));
    }
    if sum_of(STATE).as_deref() != Some(hex_sum(&state).as_str()) {
        return Err(ArchiveError::Checksum(STATE));
    }
    let meta: ArchiveMeta = serde_json::from_slice(&meta_json)
        .map_err(|e| ArchiveError::Malformed(META, e.to_string()))?;
    // Decoded one entry at a time, to check it, not collected: at 100,000 secrets the state
    // is over 100 MB, and the server holds the upload and the state already.
    for entry in StateReader::new(state.as_slice()) {
        entry.map_err(|e| ArchiveError::Malformed(STATE, e.to_string()))?;
    }
    Ok(Archive {
        meta,
        state,
        sums: sums_file,
        sealed_sums: sealed,
    })
}

/// The keys the snapshot of every initialised cluster holds (its seal configuration and
/// keyring): a restore refuses a snapshot without them.
pub const REQUIRED_KEYS: [&str; 2] = ["core/seal-config", "core/keyring"];

impl Archive {
    /// The entries of `state.bin`, decoded one at a time as they are taken.
    pub fn entry_reader(
        &self,
    ) -> impl Iterator<Item = Result<(String, Vec<u8>), ArchiveError>> + '_ {
        StateReader::new(self.state.as_slice())
            .map(|entry| entry.map_err(|e| ArchiveError::Malformed(STATE, e.to_string())))
    }

    pub fn entries(&self) -> Result<Entries, ArchiveError> {
        self.entry_reader().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let entries = vec![
            ("core/keyring".to_string(), vec![1, 2, 3]),
            ("logical/x/a".to_string(), b"v".to_vec()),
        ];
        let state = encode_state(&entries);
        let meta = ArchiveMeta {
            version: 1,
            id: "2-17-abc".into(),
            index: 17,
            term: 2,
            configuration: Configuration {
                servers: vec![Server {
                    suffrage: 0,
                    id: "n1".into(),
                    address: "127.0.0.1:8201".into(),
                }],
            },
            configuration_index: 3,
            size: state.len() as u64,
        };
        write(&meta, &state, |sums| {
            Ok([b"sealed:".as_slice(), sums].concat())
        })
        .unwrap()
    }

    #[test]
    fn round_trip() {
        let archive = read(&sample()).unwrap();
        assert_eq!(archive.meta.index, 17);
        assert_eq!(archive.entries().unwrap().len(), 2);
        assert!(archive.sealed_sums.starts_with(b"sealed:"));
        assert!(String::from_utf8(archive.sums.clone())
            .unwrap()
            .contains("  state.bin\n"));
    }

    #[test]
    fn a_streamed_state_of_another_length_is_an_error_not_a_short_archive() {
        let state = encode_state(&[("core/keyring".to_string(), vec![7; 100])]);
        let meta = ArchiveMeta {
            version: 1,
            id: "1-1-1".into(),
            index: 1,
            term: 1,
            configuration: Configuration { servers: vec![] },
            configuration_index: 1,
            size: state.len() as u64,
        };
        let seal = |sums: &[u8]| Ok(sums.to_vec());
        let len = state.len() as u64;
        let (whole, sha256) = write_to(Vec::new(), &meta, &state[..], len, seal).unwrap();
        assert_eq!(sha256, hex_sum(&state));
        assert_eq!(read(&whole).unwrap().state, state);
        for (given, claimed) in [(&state[..state.len() - 1], len), (&state[..], len - 1)] {
            let err = write_to(Vec::new(), &meta, given, claimed, seal).unwrap_err();
            assert!(err.starts_with("the state is"), "{err}");
        }
    }

    #[test]
    fn damage_is_refused() {
        let good = sample();
        // Every truncation is refused (never a partial restore).
        for cut in 0..good.len() {
            assert!(read(&good[..cut]).is_err(), "truncated at {cut}");
        }
        // Unpack, alter state.bin, repack with the old sums.
        let mut files = Vec::new();
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&good[..]));
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut body = Vec::new();
            entry.read_to_end(&mut body).unwrap();
            files.push((name, body));
        }
        let repack = |files: &[(String, Vec<u8>)]| {
            let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::none(),
            ));
            for (name, body) in files {
                let mut h = tar::Header::new_gnu();
                h.set_size(body.len() as u64);
                h.set_mode(0o600);
                h.set_cksum();
                tar.append_data(&mut h, name, &body[..]).unwrap();
            }
            tar.into_inner().unwrap().finish().unwrap()
        };
        let mut altered = files.clone();
        altered[1].1[0] ^= 1;
        assert_eq!(
            read(&repack(&altered)).err(),
            Some(ArchiveError::Checksum(STATE))
        );
        let without_sealed: Vec<_> = files
            .iter()
            .filter(|(n, _)| n != SEALED_SUMS)
            .cloned()
            .collect();
        assert_eq!(
            read(&repack(&without_sealed)).err(),
            Some(ArchiveError::Missing(SEALED_SUMS))
        );
        assert!(matches!(
            read(b"not a snapshot"),
            Err(ArchiveError::Format(_))
        ));
    }
}
