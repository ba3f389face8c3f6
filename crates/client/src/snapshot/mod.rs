//! Vault's Raft snapshot archive, read offline: a gzip'd tar of `meta.json` (hashicorp/raft's
//! `SnapshotMeta`), `state.bin` (length-delimited protobuf `StorageEntry{key, value}`),
//! `SHA256SUMS` (`<hex>  <file>` lines) and `SHA256SUMS.sealed` (the sums encrypted by the
//! seal, which only a server can open).
//!
//! [`inspect`] checks everything that can be checked without the seal: the gzip stream to
//! its CRC, the tar layout, both checksums, and that the sealed sums are there, reading
//! `state.bin` as a stream (its memory does not grow with the snapshot). [`state_chunks`]
//! reads an inspected archive's `state.bin` again, a piece at a time: the server's restore
//! checks an upload with the one and stages it with the other, and never holds the state
//! beside the upload. [`has_sealed_sums`] is the narrower check Vault's client makes on a
//! downloaded snapshot.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};

use serde::Deserialize;
use sha2::{Digest, Sha256};

pub mod archive;
pub mod state;

pub const META: &str = "meta.json";
pub const STATE: &str = "state.bin";
pub const SUMS: &str = "SHA256SUMS";
pub const SEALED_SUMS: &str = "SHA256SUMS.sealed";

/// Why an archive was refused. The texts follow `vault operator raft snapshot inspect` where
/// it has one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("failed to decompress snapshot: {0}")]
    Gzip(String),
    #[error(
        "the snapshot file is truncated (its gzip stream ends early); it was cut off while \
         being written or copied"
    )]
    Truncated,
    #[error("failed reading snapshot: {0}")]
    Tar(String),
    #[error("unexpected file \"{0}\" in snapshot")]
    UnexpectedFile(String),
    #[error("failed to decode snapshot metadata: {0}")]
    Meta(String),
    #[error("error parsing snapshot state: {0}")]
    State(String),
    #[error("failed to read snapshot hashes: {0}")]
    Sums(String),
    #[error("failed checking integrity of snapshot: {0}")]
    Integrity(String),
    /// Vault's `ErrIncompleteSnapshot`: the seal never wrote the sealed sums.
    #[error("incomplete snapshot, unable to read SHA256SUMS.sealed file")]
    Incomplete,
    /// A file other than `state.bin` over [`MAX_SMALL_FILE`], or one file twice: not an
    /// archive a Vault-compatible server wrote (and a small upload cannot decompress into
    /// gigabytes of metadata held in memory).
    #[error("the snapshot's {0}: it is not an archive of a Vault-compatible Raft snapshot")]
    Layout(String),
}

/// The most `meta.json`, `SHA256SUMS` or `SHA256SUMS.sealed` may hold: each is well under a
/// kilobyte in an archive Vault or Keyhold wrote (`meta.json` grows with the cluster's
/// members, a few hundred bytes each).
pub const MAX_SMALL_FILE: u64 = 1 << 20;

/// Reads a file other than `state.bin` whole, refusing it over [`MAX_SMALL_FILE`].
fn read_small(
    entry: &mut impl Read,
    name: &str,
    wrap: fn(String) -> SnapshotError,
) -> Result<Vec<u8>, SnapshotError> {
    let mut buf = Vec::new();
    entry
        .take(MAX_SMALL_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| read_error(&e, wrap))?;
    if buf.len() as u64 > MAX_SMALL_FILE {
        return Err(SnapshotError::Layout(format!(
            "{name} is over {} KiB",
            MAX_SMALL_FILE >> 10
        )));
    }
    Ok(buf)
}

/// `meta.json`: the fields of hashicorp/raft's `SnapshotMeta` that `inspect` shows (Go
/// marshals them with their Go names; snake_case is accepted too).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct SnapshotMeta {
    #[serde(rename = "ID", alias = "id")]
    pub id: String,
    #[serde(rename = "Size", alias = "size")]
    pub size: i64,
    #[serde(rename = "Index", alias = "index")]
    pub index: u64,
    #[serde(rename = "Term", alias = "term")]
    pub term: u64,
    #[serde(rename = "Version", alias = "version")]
    pub version: i64,
}

/// How `inspect` breaks the keys of `state.bin` down (Vault's `-details`, `-depth`, `-filter`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectOptions {
    pub details: bool,
    /// Key prefix depth (path segments); 0 means whole keys.
    pub depth: usize,
    /// Only keys starting with this.
    pub filter: String,
}

impl Default for InspectOptions {
    fn default() -> Self {
        InspectOptions {
            details: true,
            depth: 2,
            filter: String::new(),
        }
    }
}

/// Count and size of the keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStats {
    pub name: String,
    pub count: u64,
    pub size: u64,
}

/// What `inspect` found in a verified archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub meta: SnapshotMeta,
    /// By count (descending), then name; empty without `details`.
    pub stats: Vec<KeyStats>,
    pub total_count: u64,
    pub total_size: u64,
    /// Every entry of `state.bin`, whatever the options.
    pub entries: u64,
    /// Which of [`archive::REQUIRED_KEYS`] `state.bin` lacks: a snapshot of an initialised
    /// cluster holds them all.
    pub missing: Vec<&'static str>,
    /// `SHA256SUMS` as the archive holds it, and `SHA256SUMS.sealed`: a server opens the
    /// latter with its keys and compares (whether the snapshot is its own).
    pub sums: Vec<u8>,
    pub sealed_sums: Vec<u8>,
}

/// Reads and verifies a whole archive.
pub fn inspect(input: impl Read, opts: &InspectOptions) -> Result<SnapshotInfo, SnapshotError> {
    let decoder = flate2::read::GzDecoder::new(input);
    if decoder.header().is_none() {
        // The header is read eagerly; a file too short for one is cut off, anything else
        // is not gzip at all.
        return Err(match decoder_probe_error(decoder) {
            Some(e) if e.kind() == io::ErrorKind::UnexpectedEof => SnapshotError::Truncated,
            Some(e) => SnapshotError::Gzip(e.to_string()),
            None => SnapshotError::Truncated,
        });
    }
    let mut archive = tar::Archive::new(decoder);
    let mut meta: Option<SnapshotMeta> = None;
    let mut meta_sum = None;
    let mut state: Option<StateStats> = None;
    let mut state_sum = None;
    let mut sums: Option<Vec<u8>> = None;
    let mut sealed: Option<Vec<u8>> = None;
    let mut seen: Vec<String> = Vec::new();
    let entries = archive.entries().map_err(|e| tar_error(&e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| tar_error(&e))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        // One of each: a restore stages the state.bin this check read (`state_chunks` takes
        // the first), never another one further on.
        if seen.contains(&name) {
            return Err(SnapshotError::Layout(format!("{name} is in it twice")));
        }
        seen.push(name.clone());
        match name.as_str() {
            META => {
                let buf = read_small(&mut entry, META, SnapshotError::Meta)?;
                meta_sum = Some(hex::encode(Sha256::digest(&buf)));
                meta = Some(
                    serde_json::from_slice(&buf).map_err(|e| SnapshotError::Meta(e.to_string()))?,
                );
            }
            STATE => {
                let mut hashing = HashingReader::new(&mut entry);
                state = Some(read_state(&mut hashing, opts)?);
                // Whatever the parser left unread still counts for the checksum.
                io::copy(&mut hashing, &mut io::sink())
                    .map_err(|e| read_error(&e, SnapshotError::State))?;
                state_sum = Some(hex::encode(hashing.hash.finalize()));
            }
            SUMS => sums = Some(read_small(&mut entry, SUMS, SnapshotError::Sums)?),
            SEALED_SUMS => {
                sealed = Some(read_small(&mut entry, SEALED_SUMS, SnapshotError::Tar)?);
            }
            other => return Err(SnapshotError::UnexpectedFile(other.to_string())),
        }
    }
    // The tar reader stops at the end-of-archive blocks; reading the gzip stream to its
    // end checks its CRC and length, which catches a file cut off after the tar data.
    let mut decoder = archive.into_inner();
    io::copy(&mut decoder, &mut io::sink()).map_err(|e| read_error(&e, SnapshotError::Gzip))?;

    let meta = meta.ok_or(SnapshotError::Integrity(format!(
        "file missing for \"{META}\""
    )))?;
    let state = state.ok_or(SnapshotError::Integrity(format!(
        "file missing for \"{STATE}\""
    )))?;
    let sums = sums.ok_or(SnapshotError::Integrity(format!("no {SUMS} file")))?;
    let have: HashMap<&str, String> = [
        (META, meta_sum.unwrap_or_default()),
        (STATE, state_sum.unwrap_or_default()),
    ]
    .into_iter()
    .collect();
    verify_sums(&String::from_utf8_lossy(&sums), &have)?;
    let sealed_sums = sealed
        .filter(|s| !s.is_empty())
        .ok_or(SnapshotError::Incomplete)?;
    let mut stats: Vec<KeyStats> = state.by_prefix.into_values().collect();
    stats.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
    Ok(SnapshotInfo {
        meta,
        stats,
        total_count: state.total_count,
        total_size: state.total_size,
        entries: state.entries,
        missing: archive::REQUIRED_KEYS
            .into_iter()
            .filter(|k| !state.required.contains(k))
            .collect(),
        sums,
        sealed_sums,
    })
}

/// `state.bin` of an archive [`inspect`] accepted, read again in pieces of `size` bytes
/// (the last one shorter), each handed to `each` in order as soon as it is read; `each`
/// returns false to stop early. Only the pieces are held, never the whole state. Reads the
/// archive up to the end of `state.bin` and checks nothing `inspect` checked; an archive
/// without one gives no pieces and an error.
pub fn state_chunks(
    input: impl Read,
    size: usize,
    mut each: impl FnMut(Vec<u8>) -> bool,
) -> Result<(), SnapshotError> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(input));
    let entries = archive.entries().map_err(|e| tar_error(&e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| tar_error(&e))?;
        if entry.path_bytes().as_ref() != STATE.as_bytes() {
            continue;
        }
        loop {
            let mut piece = Vec::with_capacity(size);
            (&mut entry)
                .take(size as u64)
                .read_to_end(&mut piece)
                .map_err(|e| read_error(&e, SnapshotError::State))?;
            if piece.is_empty() || !each(piece) {
                return Ok(());
            }
        }
    }
    Err(SnapshotError::Integrity(format!(
        "file missing for \"{STATE}\""
    )))
}

/// Whether the archive ends with a non-empty `SHA256SUMS.sealed`, as Vault's client checks
/// before it trusts a downloaded snapshot. Any read error counts as "no".
pub fn has_sealed_sums(input: impl Read) -> bool {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(input));
    let Ok(entries) = archive.entries() else {
        return false;
    };
    for entry in entries {
        let Ok(mut entry) = entry else {
            return false;
        };
        if entry.path_bytes().as_ref() != SEALED_SUMS.as_bytes() {
            continue;
        }
        let mut first = [0u8; 1];
        return matches!(entry.read(&mut first), Ok(1));
    }
    false
}

/// Checks `SHA256SUMS` against the digests computed while reading: every line names a known
/// file with the right digest, and every known file has a line (Vault's `DecodeAndVerify`).
fn verify_sums(sums: &str, have: &HashMap<&str, String>) -> Result<(), SnapshotError> {
    let mut seen = Vec::new();
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let (hex_sum, file) = line
            .split_once("  ")
            .ok_or_else(|| SnapshotError::Integrity(format!("malformed {SUMS} line {line:?}")))?;
        let file = file.trim();
        let want = have
            .get(file)
            .ok_or_else(|| SnapshotError::Integrity(format!("list missing hash for \"{file}\"")))?;
        if !hex_sum.trim().eq_ignore_ascii_case(want) {
            return Err(SnapshotError::Integrity(format!(
                "hash check failed for \"{file}\""
            )));
        }
        seen.push(file);
    }
    let mut known: Vec<&&str> = have.keys().collect();
    known.sort();
    for file in known {
        if !seen.contains(file) {
            return Err(SnapshotError::Integrity(format!(
                "file missing for \"{file}\""
            )));
        }
    }
    Ok(())
}

#[derive(Default)]
struct StateStats {
    by_prefix: BTreeMap<String, KeyStats>,
    total_count: u64,
    total_size: u64,
    entries: u64,
    /// Which of [`archive::REQUIRED_KEYS`] were seen.
    required: Vec<&'static str>,
}

/// Reads `state.bin`'s entries and counts their keys by prefix.
fn read_state(r: &mut impl Read, opts: &InspectOptions) -> Result<StateStats, SnapshotError> {
    let mut stats = StateStats::default();
    loop {
        let message = match state::next_message(r) {
            Ok(Some(message)) => message,
            Ok(None) => return Ok(stats),
            Err(e)
                if e.get_ref()
                    .is_some_and(|inner| inner.is::<state::EntryCutOff>()) =>
            {
                return Err(SnapshotError::State(e.to_string()))
            }
            Err(e) => return Err(read_error(&e, SnapshotError::State)),
        };
        let len = message.len() as u64;
        let (key, _) =
            state::decode_entry(&message).map_err(|e| SnapshotError::State(e.to_string()))?;
        stats.entries += 1;
        if let Some(required) = archive::REQUIRED_KEYS.iter().find(|k| **k == key) {
            stats.required.push(required);
        }
        if !opts.details || key.is_empty() || !key.starts_with(opts.filter.as_str()) {
            continue;
        }
        let parts: Vec<&str> = key.split('/').collect();
        let depth = if opts.depth == 0 || opts.depth > parts.len() {
            parts.len()
        } else {
            opts.depth
        };
        let prefix = parts[..depth].join("/");
        let s = stats
            .by_prefix
            .entry(prefix.clone())
            .or_insert_with(|| KeyStats {
                name: prefix,
                count: 0,
                size: 0,
            });
        s.count += 1;
        s.size += len;
        stats.total_count += 1;
        stats.total_size += len;
    }
}

/// A reader that hashes (SHA-256) and counts what is read through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    pub(crate) hash: Sha256,
    pub(crate) len: u64,
}

impl<R> HashingReader<R> {
    pub(crate) fn new(inner: R) -> HashingReader<R> {
        HashingReader {
            inner,
            hash: Sha256::new(),
            len: 0,
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// An I/O error while reading the archive: a gzip stream that ends early is a truncated
/// file whatever was being read; anything else is reported as `wrap` says.
fn read_error(e: &io::Error, wrap: fn(String) -> SnapshotError) -> SnapshotError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        SnapshotError::Truncated
    } else {
        wrap(e.to_string())
    }
}

fn tar_error(e: &io::Error) -> SnapshotError {
    read_error(e, SnapshotError::Tar)
}

/// The error that kept the gzip header from being read, if any.
fn decoder_probe_error<R: Read>(mut decoder: flate2::read::GzDecoder<R>) -> Option<io::Error> {
    let mut byte = [0u8; 1];
    decoder.read(&mut byte).err()
}

/// Builds archives for tests: a gzip'd tar of `files` in order.
#[doc(hidden)]
pub fn build_archive(files: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
    let mut tar = tar::Builder::new(gz);
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o600);
        header.set_cksum();
        tar.append_data(&mut header, name, *data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// A `state.bin` of `entries` and a valid archive holding it, for tests.
#[doc(hidden)]
pub fn sample_archive(entries: &[(&str, &[u8])], sealed: &[u8]) -> Vec<u8> {
    let entries: state::Entries = entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect();
    let state = state::encode_state(&entries);
    let meta = br#"{"Version":1,"ID":"2-18-1711173600000","Index":18,"Term":2,"Peers":"ka5yYWZ0LTE6ODIwMQ==","Configuration":{"Servers":[]},"ConfigurationIndex":1,"Size":512}"#;
    let sums = archive::sums(meta, &state);
    build_archive(&[
        (META, meta),
        (STATE, &state),
        (SUMS, &sums),
        (SEALED_SUMS, sealed),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTRIES: &[(&str, &[u8])] = &[
        ("logical/1f2e/secret/a", b"ciphertext-1"),
        ("logical/1f2e/secret/b", b"ciphertext-2"),
        ("core/keyring", b"kr"),
        ("sys/policy/default", b"p"),
        ("logical/9a9a/x", b"y"),
    ];

    fn good() -> Vec<u8> {
        sample_archive(ENTRIES, b"sealed-blob")
    }

    #[test]
    fn a_valid_archive_inspects() {
        let info = inspect(&good()[..], &InspectOptions::default()).unwrap();
        assert_eq!(
            info.meta,
            SnapshotMeta {
                id: "2-18-1711173600000".into(),
                size: 512,
                index: 18,
                term: 2,
                version: 1
            }
        );
        let names: Vec<(&str, u64)> = info
            .stats
            .iter()
            .map(|s| (s.name.as_str(), s.count))
            .collect();
        assert_eq!(
            names,
            [
                ("logical/1f2e", 2),
                ("core/keyring", 1),
                ("logical/9a9a", 1),
                ("sys/policy", 1)
            ]
        );
        assert_eq!(info.total_count, 5);
        // Sizes are message lengths: tag+len+key, tag+len+value.
        assert_eq!(info.stats[1].size, 2 + 12 + 2 + 2);
        let no_details = InspectOptions {
            details: false,
            ..Default::default()
        };
        assert!(inspect(&good()[..], &no_details).unwrap().stats.is_empty());
        let filtered = InspectOptions {
            depth: 0,
            filter: "logical/1f2e".into(),
            ..Default::default()
        };
        let info = inspect(&good()[..], &filtered).unwrap();
        assert_eq!(info.stats.len(), 2);
        assert_eq!(info.stats[0].name, "logical/1f2e/secret/a");
        assert!(has_sealed_sums(&good()[..]));
    }

    fn check(archive: &[u8], expect: &str) {
        let err = inspect(archive, &InspectOptions::default()).unwrap_err();
        assert_eq!(err.to_string(), expect);
    }

    #[test]
    fn damaged_archives_are_refused_with_their_reason() {
        let good = good();
        // Cut anywhere after the gzip header, the stream ends early.
        for cut in [20, good.len() / 2, good.len() - 4, good.len() - 1] {
            check(
                &good[..cut],
                "the snapshot file is truncated (its gzip stream ends early); it was cut off \
                 while being written or copied",
            );
        }
        check(&good[..5], "the snapshot file is truncated (its gzip stream ends early); it was cut off while being written or copied");
        check(
            b"this is not a snapshot at all, just text",
            "failed to decompress snapshot: invalid gzip header",
        );

        let mut state = vec![4];
        state.extend(b"\x0a\x02ab");
        let meta = br#"{"ID":"x","Index":1,"Term":1,"Version":1}"#;
        let sums_for = |meta: &[u8], state: &[u8]| {
            format!(
                "{}  meta.json\n{}  state.bin\n",
                hex::encode(Sha256::digest(meta)),
                hex::encode(Sha256::digest(state))
            )
        };
        let sums = sums_for(meta, &state);
        let bad_sums = sums_for(meta, b"other state");
        check(
            &build_archive(&[
                (META, meta),
                (STATE, &state),
                (SUMS, bad_sums.as_bytes()),
                (SEALED_SUMS, b"s"),
            ]),
            "failed checking integrity of snapshot: hash check failed for \"state.bin\"",
        );
        let only_meta = format!("{}  meta.json\n", hex::encode(Sha256::digest(meta)));
        check(
            &build_archive(&[
                (META, meta),
                (STATE, &state),
                (SUMS, only_meta.as_bytes()),
                (SEALED_SUMS, b"s"),
            ]),
            "failed checking integrity of snapshot: file missing for \"state.bin\"",
        );
        let without_sealed =
            build_archive(&[(META, meta), (STATE, &state), (SUMS, sums.as_bytes())]);
        check(
            &without_sealed,
            "incomplete snapshot, unable to read SHA256SUMS.sealed file",
        );
        assert!(!has_sealed_sums(&without_sealed[..]));
        let empty_sealed = build_archive(&[
            (META, meta),
            (STATE, &state),
            (SUMS, sums.as_bytes()),
            (SEALED_SUMS, b""),
        ]);
        check(
            &empty_sealed,
            "incomplete snapshot, unable to read SHA256SUMS.sealed file",
        );
        assert!(!has_sealed_sums(&empty_sealed[..]));
        check(
            &build_archive(&[(META, meta), ("extra.txt", b"x")]),
            "unexpected file \"extra.txt\" in snapshot",
        );
        check(
            &build_archive(&[(META, b"{not json")]),
            "failed to decode snapshot metadata: key must be a string at line 1 column 2",
        );
        // A state whose last entry is cut off, with sums that match the cut state.
        let mut cut_state = state.clone();
        cut_state.truncate(3);
        check(
            &build_archive(&[(META, meta), (STATE, &cut_state)]),
            "error parsing snapshot state: the last entry is cut off (unexpected EOF)",
        );
    }

    #[test]
    fn inspect_reports_what_a_restore_checks() {
        let info = inspect(&good()[..], &InspectOptions::default()).unwrap();
        assert_eq!(info.entries, ENTRIES.len() as u64);
        // core/keyring is there, core/seal-config is not.
        assert_eq!(info.missing, vec!["core/seal-config"]);
        assert_eq!(info.sealed_sums, b"sealed-blob");
        let sums = String::from_utf8(info.sums.clone()).unwrap();
        assert!(sums.ends_with("  state.bin\n"), "{sums}");
        // The counts do not depend on the breakdown asked for.
        let bare = InspectOptions {
            details: false,
            ..Default::default()
        };
        let without = inspect(&good()[..], &bare).unwrap();
        assert_eq!(
            (without.entries, without.missing),
            (info.entries, info.missing)
        );
    }

    #[test]
    fn state_chunks_reads_the_state_again_in_pieces() {
        let archive = good();
        let whole = archive::read(&archive).unwrap().state;
        assert!(whole.len() > 20);
        for size in [1, 7, whole.len(), whole.len() + 1] {
            let mut pieces: Vec<Vec<u8>> = Vec::new();
            state_chunks(&archive[..], size, |piece| {
                pieces.push(piece);
                true
            })
            .unwrap();
            assert!(pieces.iter().all(|p| !p.is_empty() && p.len() <= size));
            assert_eq!(pieces.len(), whole.len().div_ceil(size), "size {size}");
            assert_eq!(pieces.concat(), whole, "size {size}");
        }
        // Stopped by its caller after the second piece.
        let mut taken = 0;
        state_chunks(&archive[..], 4, |_| {
            taken += 1;
            taken < 2
        })
        .unwrap();
        assert_eq!(taken, 2);
        let no_state = build_archive(&[(META, b"{}")]);
        assert_eq!(
            state_chunks(&no_state[..], 4, |_| panic!("no state to read")),
            Err(SnapshotError::Integrity(
                "file missing for \"state.bin\"".into()
            ))
        );
    }

    #[test]
    fn an_archive_of_another_shape_is_refused_before_its_state_is_used() {
        let entries: state::Entries = ENTRIES
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect();
        let state = state::encode_state(&entries);
        let meta = b"{}";
        let sums = archive::sums(meta, &state);
        // A second state.bin after the checked one: a restore would have staged the first.
        check(
            &build_archive(&[
                (META, meta),
                (STATE, &state),
                (SUMS, &sums),
                (SEALED_SUMS, b"s"),
                (STATE, b"other"),
            ]),
            "the snapshot's state.bin is in it twice: it is not an archive of a Vault-compatible Raft snapshot",
        );
        // A metadata file that decompresses into more than a mebibyte (here stored; a
        // deflated one of a few kilobytes would do the same) is not read whole.
        let big = vec![b' '; (MAX_SMALL_FILE + 1) as usize];
        check(
            &build_archive(&[(META, &big)]),
            "the snapshot's meta.json is over 1024 KiB: it is not an archive of a Vault-compatible Raft snapshot",
        );
        check(
            &build_archive(&[(META, meta), (STATE, &state), (SUMS, &big)]),
            "the snapshot's SHA256SUMS is over 1024 KiB: it is not an archive of a Vault-compatible Raft snapshot",
        );
    }
}
