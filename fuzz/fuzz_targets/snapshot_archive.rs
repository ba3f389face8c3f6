//! The snapshot archive readers of `keyhold_client::snapshot`: `archive::read` (the server's
//! restore, whole) and `inspect` (the CLI and the agent, streaming). Each input is read twice:
//! as the archive's bytes, and as the parts of an archive (`meta.json`, `state.bin`, sums, the
//! sealed sums) that the target packs with correct checksums, so the fuzzer reaches the metadata
//! and state decoders behind the gzip CRC and the SHA-256 sums. Never a panic; an archive the
//! server accepts, `inspect` accepts too, with the same metadata, key count, required keys
//! and sums; `state_chunks` (the online restore's second pass) reads the same `state.bin`
//! again; and it decodes to entries that encode back to the same bytes.
#![no_main]

use keyhold_client::snapshot::archive::{self, encode_state};
use keyhold_client::snapshot::{
    self, build_archive, InspectOptions, META, SEALED_SUMS, STATE, SUMS,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check(data);
    // Parts: meta.json, state.bin and the sealed sums, separated by the first two 0xFF bytes
    // (a byte JSON text never holds); the sums are made to match unless the input ends in 0xFE.
    let mut parts = data.splitn(3, |&b| b == 0xFF);
    let meta = parts.next().unwrap_or_default();
    let state = parts.next().unwrap_or_default();
    let sealed = parts.next().unwrap_or(b"sealed");
    let sums = if data.last() == Some(&0xFE) {
        sealed.to_vec()
    } else {
        archive::sums(meta, state)
    };
    check(&build_archive(&[
        (META, meta),
        (STATE, state),
        (SUMS, &sums),
        (SEALED_SUMS, sealed),
    ]));
});

fn check(bytes: &[u8]) {
    let whole = archive::read(bytes);
    let streamed = snapshot::inspect(bytes, &InspectOptions::default());
    let Ok(read) = whole else {
        return;
    };
    let info = match streamed {
        Ok(info) => info,
        Err(e) => panic!("the server reads the archive but inspect refuses it: {e}"),
    };
    assert_eq!(info.meta.id, read.meta.id);
    assert_eq!(info.meta.index, read.meta.index);
    assert_eq!(info.meta.term, read.meta.term);
    let entries = read.entries().expect("read checked that state.bin decodes");
    let keyed = entries.iter().filter(|(k, _)| !k.is_empty()).count() as u64;
    assert_eq!(info.total_count, keyed);
    assert_eq!(info.entries, entries.len() as u64);
    for required in archive::REQUIRED_KEYS {
        let held = entries.iter().any(|(k, _)| k == required);
        assert_eq!(info.missing.contains(&required), !held);
    }
    assert_eq!(info.sums, read.sums);
    assert_eq!(info.sealed_sums, read.sealed_sums);
    // The server's restore stages what `state_chunks` reads again: the same state.bin.
    let mut staged = Vec::new();
    snapshot::state_chunks(bytes, 7, |piece| {
        assert!(!piece.is_empty() && piece.len() <= 7);
        staged.extend_from_slice(&piece);
        true
    })
    .expect("an inspected archive's state reads again");
    assert_eq!(staged, read.state);
    let reencoded = encode_state(&entries);
    let back = keyhold_client::snapshot::state::decode_state(&reencoded).unwrap();
    assert_eq!(back, entries);
}
