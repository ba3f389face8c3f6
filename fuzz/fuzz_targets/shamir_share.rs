//! The Shamir share decoder and combine, as `sys/unseal`, generate-root and rekey use them.
//! Each input is (1) lines of operator-typed keys: each is decoded (hex, then base64) to a share
//! of 16 to 33 bytes or an error, collected as the unseal progress collects them, and combined
//! at every threshold: never a panic, and a combine error is an error; and (2) a secret with a
//! split: any `threshold` of its shares, typed as hex or base64, decode and combine back to it.
#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use keyhold::fuzzing::{decode_share, reconstruct, KeyCollector};
use keyhold::seal::shamir;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut collector = KeyCollector::new();
    for line in text.lines() {
        if let Ok(share) = decode_share(line) {
            assert!((16..=33).contains(&share.len()), "{} bytes", share.len());
            collector.add(share);
        }
    }
    let keys = collector.take();
    for threshold in 0..=keys.len() + 1 {
        let _ = reconstruct(&keys, threshold);
    }

    let [parts, threshold, pick, secret @ ..] = data else {
        return;
    };
    let secret = &secret[..secret.len().min(32)];
    let parts = usize::from(*parts % 6) + 2;
    let threshold = usize::from(*threshold) % (parts - 1) + 2;
    let Ok(shares) = shamir::split(secret, parts, threshold) else {
        assert!(secret.is_empty());
        return;
    };
    let chosen: Vec<_> = shares
        .iter()
        .cycle()
        .skip(usize::from(*pick))
        .take(threshold)
        .enumerate()
        .map(|(i, share)| {
            let typed = if i % 2 == 0 {
                hex::encode(share)
            } else {
                STANDARD.encode(share)
            };
            // Shares below 16 bytes are refused as typed keys; combine them directly.
            match decode_share(&typed) {
                Ok(decoded) => {
                    assert_eq!(&decoded[..], &share[..]);
                    decoded
                }
                Err(_) => {
                    assert!(share.len() < 16, "a {}-byte share refused", share.len());
                    share.clone()
                }
            }
        })
        .collect();
    let back = reconstruct(&chosen, threshold).expect("shares of one split combine");
    assert_eq!(&back[..], secret);
});
