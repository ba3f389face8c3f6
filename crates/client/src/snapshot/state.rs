//! `state.bin`, the body of a Raft snapshot: a stream of length-delimited protobuf
//! `StorageEntry { string key = 1; bytes value = 2; }` messages, as Vault's `fsm.go` writes
//! it. The one codec for it: the server's Raft snapshots, the archive and `inspect` all use it.

use std::io::{self, Read};

/// A store's contents: every key with its value.
pub type Entries = Vec<(String, Vec<u8>)>;

/// Largest `StorageEntry` accepted (Vault reads with `math.MaxInt32`).
pub const MAX_ENTRY: u64 = i32::MAX as u64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("the snapshot state is truncated: {0}")]
    Truncated(&'static str),
    #[error("the snapshot state is malformed: {0}")]
    Malformed(String),
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

/// The `state.bin` stream for `entries`.
pub fn encode_state(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in entries {
        encode_entry(&mut out, key, value);
    }
    out
}

/// Decodes a whole `state.bin` stream. Unknown fields are skipped, as protobuf requires; a
/// message or field cut short is an error.
pub fn decode_state(input: &[u8]) -> Result<Entries, StateError> {
    StateReader::new(input).collect()
}

/// The entries of a `state.bin` stream, decoded one at a time as they are read (a restore or an
/// install at 100,000 secrets need not hold the decoded state beside its encoding): what
/// [`decode_state`] returns, item by item. After an error it yields nothing more.
pub struct StateReader<R> {
    input: R,
    failed: bool,
}

impl<R: Read> StateReader<R> {
    pub fn new(input: R) -> StateReader<R> {
        StateReader {
            input,
            failed: false,
        }
    }
}

impl<R: Read> Iterator for StateReader<R> {
    type Item = Result<(String, Vec<u8>), StateError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let entry = match next_message(&mut self.input) {
            Ok(Some(message)) => decode_entry(&message),
            Ok(None) => return None,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(StateError::Truncated("entry"))
            }
            Err(e) => Err(StateError::Malformed(e.to_string())),
        };
        self.failed = entry.is_err();
        Some(entry)
    }
}

/// Why [`next_message`] failed when the stream ended inside a message body (as opposed to an
/// I/O error of the stream underneath, such as a gzip stream cut short).
#[derive(Debug, thiserror::Error)]
#[error("the last entry is cut off (unexpected EOF)")]
pub struct EntryCutOff;

/// The next framed message of a `state.bin` stream; `Ok(None)` at a clean end. A stream that
/// ends inside a message is `UnexpectedEof` (carrying [`EntryCutOff`] when it ended inside the
/// body); a length past [`MAX_ENTRY`] is `InvalidData`.
pub fn next_message(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let Some(len) = read_varint(r)? else {
        return Ok(None);
    };
    if len > MAX_ENTRY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("an entry claims {len} bytes; the state is damaged"),
        ));
    }
    let mut message = Vec::new();
    r.by_ref().take(len).read_to_end(&mut message)?;
    if (message.len() as u64) < len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, EntryCutOff));
    }
    Ok(Some(message))
}

/// One `StorageEntry` message: its key and value, other fields skipped.
pub fn decode_entry(mut message: &[u8]) -> Result<(String, Vec<u8>), StateError> {
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
                return Err(StateError::Malformed(format!(
                    "field {field} has unsupported wire type {wire}"
                )))
            }
        }
    }
    let key = String::from_utf8(key)
        .map_err(|_| StateError::Malformed("a storage key is not UTF-8".into()))?;
    Ok((key, value))
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

/// A protobuf varint from a stream; `Ok(None)` at a clean end of stream.
fn read_varint(r: &mut impl Read) -> io::Result<Option<u64>> {
    let mut value = 0u64;
    for i in 0..10 {
        let mut byte = [0u8; 1];
        if r.read(&mut byte)? == 0 {
            return if i == 0 {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        value |= u64::from(byte[0] & 0x7f) << (7 * i);
        if byte[0] & 0x80 == 0 {
            return Ok(Some(value));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "varint longer than 10 bytes",
    ))
}

fn take_varint(input: &mut &[u8]) -> Result<u64, StateError> {
    match read_varint(input) {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(StateError::Truncated("varint")),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(StateError::Truncated("varint")),
        Err(e) => Err(StateError::Malformed(e.to_string())),
    }
}

fn take<'a>(input: &mut &'a [u8], len: usize, what: &'static str) -> Result<&'a [u8], StateError> {
    if input.len() < len {
        return Err(StateError::Truncated(what));
    }
    let (head, rest) = input.split_at(len);
    *input = rest;
    Ok(head)
}

fn take_len_delimited<'a>(input: &mut &'a [u8]) -> Result<&'a [u8], StateError> {
    let len = take_varint(input)? as usize;
    take(input, len, "length-delimited field")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(items: &[(&str, &[u8])]) -> Entries {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect()
    }

    fn state(items: &[(&str, &[u8])]) -> Vec<u8> {
        encode_state(&entries(items))
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
            Err(StateError::Truncated(_))
        ));
        assert!(matches!(
            decode_state(&[5, 0x0A, 9, b'a']),
            Err(StateError::Truncated(_))
        ));
        assert!(matches!(
            decode_state(&[2, 0x0B, 0]),
            Err(StateError::Malformed(_))
        ));
        assert!(matches!(
            decode_state(&[3, 0x0A, 1, 0xFF]),
            Err(StateError::Malformed(_))
        ));
    }
}
