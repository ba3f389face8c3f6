//! The snapshot format: a JSON header (the snapshot's Raft meta plus the
//! length and SHA-256 of the state) followed by Vault's `state.bin`, a stream
//! of length-delimited protobuf `StorageEntry { string key = 1; bytes value
//! = 2; }` messages (Vault's `fsm.go` writes the same), so the lead can put
//! the state into Vault's snapshot archive (`meta.json`, `state.bin`,
//! `SHA256SUMS`, `SHA256SUMS.sealed`) unchanged.
//!
//! Layout: `[u32 big-endian header length][header JSON][state.bin]`.
//! Decoding checks the header, the length and the digest, and decodes every
//! entry before anything is installed: a truncated or altered snapshot is an
//! error, never a partial state.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use keyhold_client::snapshot::state::decode_state;
pub use keyhold_client::snapshot::state::Entries;
use keyhold_client::snapshot::state::{encode_state, StateError};

use super::types::SnapshotMeta;

/// The header format this code writes and accepts.
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("the snapshot is truncated: {0}")]
    Truncated(&'static str),
    #[error("the snapshot is malformed: {0}")]
    Malformed(String),
    #[error("the snapshot's state does not match its SHA-256 (altered or damaged in transit)")]
    Digest,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: u32,
    meta: SnapshotMeta,
    state_len: u64,
    /// Hex SHA-256 of `state.bin`, as in Vault's `SHA256SUMS`.
    state_sha256: String,
}

/// Encodes a snapshot of `entries` (sorted or not) with its meta.
pub fn encode_snapshot(meta: &SnapshotMeta, entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let state = encode_state(entries);
    let mut out = snapshot_prefix(meta, &state);
    out.extend_from_slice(&state);
    out
}

/// What comes before `state` (an encoded `state.bin`) in a snapshot of it with `meta`: the
/// header's length and the header. The snapshot is this followed by `state`.
pub fn snapshot_prefix(meta: &SnapshotMeta, state: &[u8]) -> Vec<u8> {
    let header = Header {
        format: FORMAT,
        meta: meta.clone(),
        state_len: state.len() as u64,
        state_sha256: hex::encode(Sha256::digest(state)),
    };
    let header = serde_json::to_vec(&header).expect("a snapshot header always serializes");
    let mut out = Vec::with_capacity(4 + header.len());
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&header);
    out
}

/// The meta of a snapshot, from its header alone (the state is neither decoded nor verified:
/// for a snapshot this node wrote and keeps, about to be sent whole to a follower, which
/// verifies it).
pub fn snapshot_meta(bytes: &[u8]) -> Result<SnapshotMeta, SnapshotError> {
    Ok(read_header(bytes)?.0.meta)
}

/// The header and where the state begins.
fn read_header(bytes: &[u8]) -> Result<(Header, usize), SnapshotError> {
    let len_bytes: [u8; 4] = bytes
        .get(..4)
        .ok_or(SnapshotError::Truncated("no header length"))?
        .try_into()
        .expect("4 bytes");
    let header_len = u32::from_be_bytes(len_bytes) as usize;
    let header_bytes = bytes
        .get(4..4 + header_len)
        .ok_or(SnapshotError::Truncated("header"))?;
    let header: Header = serde_json::from_slice(header_bytes)
        .map_err(|e| SnapshotError::Malformed(format!("header: {e}")))?;
    if header.format != FORMAT {
        return Err(SnapshotError::Malformed(format!(
            "format {} (this node reads format {FORMAT})",
            header.format
        )));
    }
    Ok((header, 4 + header_len))
}

/// Decodes and verifies a whole snapshot: its meta and every entry.
pub fn decode_snapshot(bytes: &[u8]) -> Result<(SnapshotMeta, Entries), SnapshotError> {
    let (header, state_at) = read_header(bytes)?;
    let state = &bytes[state_at..];
    if (state.len() as u64) < header.state_len {
        return Err(SnapshotError::Truncated(
            "state shorter than its header says",
        ));
    }
    if state.len() as u64 != header.state_len {
        return Err(SnapshotError::Malformed(
            "trailing bytes after the state".into(),
        ));
    }
    if hex::encode(Sha256::digest(state)) != header.state_sha256 {
        return Err(SnapshotError::Digest);
    }
    Ok((header.meta, decode_state(state)?))
}

impl From<StateError> for SnapshotError {
    fn from(err: StateError) -> Self {
        match err {
            StateError::Truncated(what) => SnapshotError::Truncated(what),
            StateError::Malformed(why) => SnapshotError::Malformed(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(items: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect()
    }

    #[test]
    fn snapshot_round_trips_and_refuses_damage() {
        let meta = SnapshotMeta {
            snapshot_id: "1-2-3".into(),
            ..Default::default()
        };
        let data = entries(&[("a", b"1"), ("b", b"2")]);
        let bytes = encode_snapshot(&meta, &data);
        assert_eq!(snapshot_meta(&bytes).unwrap(), meta);
        assert_eq!(decode_snapshot(&bytes).unwrap(), (meta, data));
        assert!(snapshot_meta(&bytes[..3]).is_err());

        // Every truncation, including a cut exactly at an entry boundary, is refused.
        for cut in 0..bytes.len() {
            assert!(decode_snapshot(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(decode_snapshot(&flipped), Err(SnapshotError::Digest));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode_snapshot(&longer),
            Err(SnapshotError::Malformed(_))
        ));
    }
}
