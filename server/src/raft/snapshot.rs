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

use std::io::Read;

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

/// What a snapshot says of itself before its state.
#[derive(Debug, Serialize, Deserialize)]
pub struct Header {
    format: u32,
    pub meta: SnapshotMeta,
    pub state_len: u64,
    /// Hex SHA-256 of `state.bin`, as in Vault's `SHA256SUMS`.
    pub state_sha256: String,
}

impl Header {
    /// The length and SHA-256 the header gives its state.
    pub fn state(&self) -> StateSummary {
        StateSummary {
            len: self.state_len,
            sha256: self.state_sha256.clone(),
        }
    }
}

/// Encodes a snapshot of `entries` (sorted or not) with its meta.
pub fn encode_snapshot(meta: &SnapshotMeta, entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let state = encode_state(entries);
    let mut out = snapshot_prefix(meta, &state);
    out.extend_from_slice(&state);
    out
}

/// The length and SHA-256 of a `state.bin` stream: what a snapshot's header says of its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSummary {
    len: u64,
    sha256: String,
}

impl StateSummary {
    pub fn of(state: &[u8]) -> StateSummary {
        StateSummary {
            len: state.len() as u64,
            sha256: hex::encode(Sha256::digest(state)),
        }
    }

    /// The summary of the `state.bin` stream `state` reads to its end (never held whole).
    pub fn read(state: &mut impl Read) -> std::io::Result<StateSummary> {
        let mut sha256 = Sha256::new();
        let len = std::io::copy(state, &mut sha256)?;
        Ok(StateSummary {
            len,
            sha256: hex::encode(sha256.finalize()),
        })
    }
}

/// What comes before `state` (an encoded `state.bin`) in a snapshot of it with `meta`: the
/// header's length and the header. The snapshot is this followed by `state`.
pub fn snapshot_prefix(meta: &SnapshotMeta, state: &[u8]) -> Vec<u8> {
    prefix_for(meta, &StateSummary::of(state))
}

/// [`snapshot_prefix`] for a state known by its summary.
pub fn prefix_for(meta: &SnapshotMeta, state: &StateSummary) -> Vec<u8> {
    let header = Header {
        format: FORMAT,
        meta: meta.clone(),
        state_len: state.len,
        state_sha256: state.sha256.clone(),
    };
    let header = serde_json::to_vec(&header).expect("a snapshot header always serializes");
    let mut out = Vec::with_capacity(4 + header.len());
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&header);
    out
}

/// The longest header [`read_meta`] reads: a header is a few hundred bytes per cluster member.
const MAX_HEADER: usize = 1 << 20;

/// The meta of the snapshot `input` starts with, read from its header alone.
pub fn read_meta(input: &mut impl Read) -> Result<SnapshotMeta, SnapshotError> {
    Ok(read_header_from(input)?.meta)
}

/// The header of the snapshot `input` starts with, `input` left where its state begins (the
/// state is neither read nor verified).
pub fn read_header_from(input: &mut impl Read) -> Result<Header, SnapshotError> {
    let mut len = [0u8; 4];
    input
        .read_exact(&mut len)
        .map_err(|_| SnapshotError::Truncated("no header length"))?;
    let header_len = u32::from_be_bytes(len) as usize;
    if header_len > MAX_HEADER {
        return Err(SnapshotError::Malformed(format!(
            "a header of {header_len} bytes (at most {MAX_HEADER})"
        )));
    }
    let mut bytes = Vec::with_capacity(4 + header_len);
    bytes.extend_from_slice(&len);
    bytes.resize(4 + header_len, 0);
    input
        .read_exact(&mut bytes[4..])
        .map_err(|_| SnapshotError::Truncated("header"))?;
    Ok(read_header(&bytes)?.0)
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
    let (meta, state_at) = verify_snapshot(bytes)?;
    Ok((meta, decode_state(&bytes[state_at..])?))
}

/// Verifies a snapshot's header, length and digest (not its entries): its meta and where its
/// `state.bin` begins.
pub fn verify_snapshot(bytes: &[u8]) -> Result<(SnapshotMeta, usize), SnapshotError> {
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
    Ok((header.meta, state_at))
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
        assert_eq!(
            decode_snapshot(&bytes).unwrap(),
            (meta.clone(), data.clone())
        );
        assert!(snapshot_meta(&bytes[..3]).is_err());
        assert_eq!(read_meta(&mut bytes.as_slice()).unwrap(), meta);
        assert!(read_meta(&mut &bytes[..3]).is_err());
        assert!(read_meta(&mut &bytes[..10]).is_err());

        // A state summed as it is read gets the header the whole state gets.
        let state = encode_state(&data);
        let summary = StateSummary::read(&mut state.as_slice()).unwrap();
        assert_eq!(prefix_for(&meta, &summary), snapshot_prefix(&meta, &state));

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
