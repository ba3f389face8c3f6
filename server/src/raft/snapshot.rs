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

use super::types::SnapshotMeta;

/// A store's contents: every key with its value.
pub type Entries = Vec<(String, Vec<u8>)>;

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
    let mut state = Vec::new();
    for (key, value) in entries {
        encode_entry(&mut state, key, value);
    }
    let header = Header {
        format: FORMAT,
        meta: meta.clone(),
        state_len: state.len() as u64,
        state_sha256: hex::encode(Sha256::digest(&state)),
    };
    let header = serde_json::to_vec(&header).expect("a snapshot header always serializes");
    let mut out = Vec::with_capacity(4 + header.len() + state.len());
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&state);
    out
}

/// Decodes and verifies a whole snapshot: its meta and every entry.
pub fn decode_snapshot(bytes: &[u8]) -> Result<(SnapshotMeta, Entries), SnapshotError> {
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
    let state = &bytes[4 + header_len..];
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

/// Appends one length-delimited `StorageEntry` to a `state.bin` stream.
/// Empty fields are omitted, as proto3 encoders do.
pub fn encode_entry(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let field_len = |len: usize| {
        if len == 0 {
            0
        } else {
            1 + varint_len(len as u64) + len
        }
    };
    let message_len = field_len(key.len()) + field_len(value.len());
    put_varint(out, message_len as u64);
    if !key.is_empty() {
        out.push(0x0A); // field 1, wire type 2 (length-delimited)
        put_varint(out, key.len() as u64);
        out.extend_from_slice(key.as_bytes());
    }
    if !value.is_empty() {
        out.push(0x12); // field 2, wire type 2
        put_varint(out, value.len() as u64);
        out.extend_from_slice(value);
    }
}

/// Decodes a whole `state.bin` stream. Unknown fields are skipped, as
/// protobuf requires; a message or field cut short is an error.
pub fn decode_state(mut input: &[u8]) -> Result<Entries, SnapshotError> {
    let mut entries = Vec::new();
    while !input.is_empty() {
        let len = take_varint(&mut input)? as usize;
        let mut message = take(&mut input, len, "entry")?;
        let (mut key, mut value) = (Vec::new(), Vec::new());
        while !message.is_empty() {
            let tag = take_varint(&mut message)?;
            match (tag >> 3, tag & 7) {
                (1, 2) => key = take_len_delimited(&mut message)?.to_vec(),
                (2, 2) => value = take_len_delimited(&mut message)?.to_vec(),
                (_, 0) => {
                    take_varint(&mut message)?;
                }
                (_, 1) => {
                    take(&mut message, 8, "fixed64 field")?;
                }
                (_, 2) => {
                    take_len_delimited(&mut message)?;
                }
                (_, 5) => {
                    take(&mut message, 4, "fixed32 field")?;
                }
                (field, wire) => {
                    return Err(SnapshotError::Malformed(format!(
                        "field {field} has unsupported wire type {wire}"
                    )))
                }
            }
        }
        let key = String::from_utf8(key)
            .map_err(|_| SnapshotError::Malformed("a storage key is not UTF-8".into()))?;
        entries.push((key, value));
    }
    Ok(entries)
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(input: &mut &[u8]) -> Result<u64, SnapshotError> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&byte, rest) = input
            .split_first()
            .ok_or(SnapshotError::Truncated("varint"))?;
        *input = rest;
        value |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(SnapshotError::Malformed(
        "varint longer than 10 bytes".into(),
    ))
}

fn take<'a>(
    input: &mut &'a [u8],
    len: usize,
    what: &'static str,
) -> Result<&'a [u8], SnapshotError> {
    if input.len() < len {
        return Err(SnapshotError::Truncated(what));
    }
    let (head, rest) = input.split_at(len);
    *input = rest;
    Ok(head)
}

fn take_len_delimited<'a>(input: &mut &'a [u8]) -> Result<&'a [u8], SnapshotError> {
    let len = take_varint(input)? as usize;
    take(input, len, "length-delimited field")
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

    fn state(items: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in items {
            encode_entry(&mut out, k, v);
        }
        out
    }

    #[test]
    fn entry_bytes_match_protobuf() {
        // protoc --encode=StorageEntry, length-delimited: {key:"a/b", value:"\x01\x02"}
        assert_eq!(
            state(&[("a/b", &[1, 2])]),
            [9, 0x0A, 3, b'a', b'/', b'b', 0x12, 2, 1, 2]
        );
        // proto3 omits empty fields.
        assert_eq!(state(&[("k", b"")]), [3, 0x0A, 1, b'k']);
        assert_eq!(state(&[("", b"")]), [0]);
        // A 200-byte value needs a two-byte varint length.
        let long = state(&[("k", &[7u8; 200])]);
        assert_eq!(&long[..6], &[0xCE, 0x01, 0x0A, 1, b'k', 0x12]);
        assert_eq!(&long[6..8], &[0xC8, 0x01]);
    }

    #[test]
    fn state_round_trips() {
        let cases: &[&[(&str, &[u8])]] = &[
            &[],
            &[("", b"")],
            &[("core/keyring", &[0, 1, 2, 255])],
            &[("a", b""), ("b/c", &[9; 300]), ("é/ü", &[0; 70_000])],
        ];
        for case in cases {
            let encoded = state(case);
            assert_eq!(decode_state(&encoded).unwrap(), entries(case), "{case:?}");
        }
    }

    #[test]
    fn unknown_fields_are_skipped() {
        // key, then an unknown varint field 3, fixed32 field 4, bytes field 5, then value.
        let message = [
            0x0A, 1, b'k', 0x18, 0x96, 0x01, 0x25, 1, 2, 3, 4, 0x2A, 1, 0, 0x12, 1, b'v',
        ];
        let mut stream = vec![message.len() as u8];
        stream.extend_from_slice(&message);
        assert_eq!(decode_state(&stream).unwrap(), entries(&[("k", b"v")]));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let full = state(&[("sys/policy/x", b"abc"), ("k", &[1; 150])]);
        for cut in 1..full.len() {
            // A cut at an entry boundary is a valid shorter stream; every other cut is an error.
            let boundary = cut == state(&[("sys/policy/x", b"abc")]).len();
            let result = decode_state(&full[..cut]);
            assert_eq!(result.is_ok(), boundary, "cut at {cut}: {result:?}");
        }
        assert!(matches!(
            decode_state(&[0x80]),
            Err(SnapshotError::Truncated("varint"))
        ));
        assert!(matches!(
            decode_state(&[5, 0x0A, 9, b'a']),
            Err(SnapshotError::Truncated(_))
        ));
        assert!(matches!(
            decode_state(&[2, 0x0B, 0]),
            Err(SnapshotError::Malformed(_))
        ));
        assert!(matches!(
            decode_state(&[3, 0x0A, 1, 0xFF]),
            Err(SnapshotError::Malformed(_))
        ));
    }

    #[test]
    fn snapshot_round_trips_and_refuses_damage() {
        let meta = SnapshotMeta {
            snapshot_id: "1-2-3".into(),
            ..Default::default()
        };
        let data = entries(&[("a", b"1"), ("b", b"2")]);
        let bytes = encode_snapshot(&meta, &data);
        assert_eq!(decode_snapshot(&bytes).unwrap(), (meta, data));

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
