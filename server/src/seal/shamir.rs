//! Shamir secret sharing over GF(2^8), byte-compatible with Vault's `shamir` package.
//!
//! Share encoding (as in hashicorp/vault `shamir/shamir.go`): a share holds one
//! y-value per secret byte followed by a single trailing x-coordinate byte, so a
//! 32-byte secret gives 33-byte shares. The field is the AES field (reduction
//! polynomial x^8 + x^4 + x^3 + x + 1, 0x11B), as in Vault.
//!
//! The field arithmetic uses no tables and no secret-dependent branches: a
//! multiply is a fixed 8-round shift-and-add, and an inverse is a fixed
//! exponentiation (a^254). At 32-byte secrets this costs nothing noticeable.

use rand::rngs::OsRng;
use rand::seq::SliceRandom;
use rand::RngCore;
use zeroize::Zeroizing;

/// Why a split or a combine was refused. The messages are Vault's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShamirError {
    #[error("parts cannot be less than threshold")]
    PartsLessThanThreshold,
    #[error("parts cannot exceed 255")]
    TooManyParts,
    #[error("threshold must be at least 2")]
    ThresholdTooSmall,
    #[error("threshold cannot exceed 255")]
    ThresholdTooLarge,
    #[error("cannot split an empty secret")]
    EmptySecret,
    #[error("less than two parts cannot be used to reconstruct the secret")]
    TooFewParts,
    #[error("parts must be at least two bytes")]
    PartTooShort,
    #[error("all parts must be the same length")]
    PartLengthMismatch,
    #[error("duplicate part detected")]
    DuplicatePart,
}

/// Splits `secret` into `parts` shares, any `threshold` of which rebuild it.
///
/// Each share is `secret.len() + 1` bytes: the y-values, then the x-coordinate.
/// The x-coordinates are distinct, non-zero and in random order; every
/// non-constant coefficient is uniform over the whole field (including zero,
/// unlike `sharks`, RUSTSEC-2024-0398).
pub fn split(
    secret: &[u8],
    parts: usize,
    threshold: usize,
) -> Result<Vec<Zeroizing<Vec<u8>>>, ShamirError> {
    if parts < threshold {
        return Err(ShamirError::PartsLessThanThreshold);
    }
    if parts > 255 {
        return Err(ShamirError::TooManyParts);
    }
    if threshold < 2 {
        return Err(ShamirError::ThresholdTooSmall);
    }
    if threshold > 255 {
        return Err(ShamirError::ThresholdTooLarge);
    }
    if secret.is_empty() {
        return Err(ShamirError::EmptySecret);
    }

    let mut rng = OsRng;
    let mut xs: Vec<u8> = (1..=255u8).collect();
    xs.shuffle(&mut rng);
    xs.truncate(parts);

    let mut out: Vec<Zeroizing<Vec<u8>>> = xs
        .iter()
        .map(|&x| {
            let mut share = Zeroizing::new(vec![0u8; secret.len() + 1]);
            share[secret.len()] = x;
            share
        })
        .collect();

    // coefficients[0] is the secret byte; the rest are uniform random.
    let mut coefficients = Zeroizing::new(vec![0u8; threshold]);
    for (idx, &byte) in secret.iter().enumerate() {
        coefficients[0] = byte;
        rng.fill_bytes(&mut coefficients[1..]);
        for (share, &x) in out.iter_mut().zip(&xs) {
            share[idx] = evaluate(&coefficients, x);
        }
    }
    Ok(out)
}

/// Rebuilds the secret from shares produced by [`split`] (or by Vault).
///
/// Fewer than the original threshold of shares yields a wrong value, not an
/// error: Shamir shares carry no integrity check. The caller detects a wrong
/// secret by using it (the unseal key fails to authenticate).
pub fn combine(shares: &[&[u8]]) -> Result<Zeroizing<Vec<u8>>, ShamirError> {
    if shares.len() < 2 {
        return Err(ShamirError::TooFewParts);
    }
    let len = shares[0].len();
    if len < 2 {
        return Err(ShamirError::PartTooShort);
    }
    if shares.iter().any(|s| s.len() != len) {
        return Err(ShamirError::PartLengthMismatch);
    }
    let secret_len = len - 1;

    // x-coordinates are public, so checking them for duplicates may branch.
    let mut seen = [false; 256];
    let mut xs = Vec::with_capacity(shares.len());
    for share in shares {
        let x = share[secret_len];
        if seen[x as usize] {
            return Err(ShamirError::DuplicatePart);
        }
        seen[x as usize] = true;
        xs.push(x);
    }

    // The Lagrange basis at x = 0 depends only on the x-coordinates, so it is
    // computed once rather than once per byte.
    let basis: Vec<u8> = (0..xs.len())
        .map(|i| {
            xs.iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .fold(1u8, |acc, (_, &xj)| mul(acc, div(xj, xs[i] ^ xj)))
        })
        .collect();

    let mut secret = Zeroizing::new(vec![0u8; secret_len]);
    for (idx, out) in secret.iter_mut().enumerate() {
        *out = shares
            .iter()
            .zip(&basis)
            .fold(0u8, |acc, (share, &b)| acc ^ mul(share[idx], b));
    }
    Ok(secret)
}

/// Horner evaluation of the polynomial with `coefficients` (constant term first) at `x`.
fn evaluate(coefficients: &[u8], x: u8) -> u8 {
    coefficients
        .iter()
        .rev()
        .fold(0u8, |acc, &c| mul(acc, x) ^ c)
}

/// Multiplication in GF(2^8) mod 0x11B, in constant time (Vault's `mult`).
fn mul(a: u8, b: u8) -> u8 {
    let mut r: u8 = 0;
    for i in (0..8).rev() {
        let bit = (b >> i) & 1;
        let carry = r >> 7;
        r = (r << 1) ^ (0u8.wrapping_sub(carry) & 0x1B) ^ (0u8.wrapping_sub(bit) & a);
    }
    r
}

/// Multiplicative inverse as a^254 by a fixed addition chain; inverse(0) = 0.
fn inverse(a: u8) -> u8 {
    let a2 = mul(a, a);
    let a3 = mul(a2, a);
    let a6 = mul(a3, a3);
    let a12 = mul(a6, a6);
    let a15 = mul(a12, a3);
    let a30 = mul(a15, a15);
    let a60 = mul(a30, a30);
    let a63 = mul(a60, a3);
    let a126 = mul(a63, a63);
    let a127 = mul(a126, a);
    mul(a127, a127)
}

/// a / b; callers guarantee b != 0 (denominators are differences of distinct x).
fn div(a: u8, b: u8) -> u8 {
    mul(a, inverse(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Schoolbook carry-less multiply then reduction, written independently of `mul`.
    fn reference_mul(a: u8, b: u8) -> u8 {
        let mut product: u16 = 0;
        for i in 0..8 {
            if (b >> i) & 1 == 1 {
                product ^= (a as u16) << i;
            }
        }
        for bit in (8..16).rev() {
            if product & (1 << bit) != 0 {
                product ^= 0x11B << (bit - 8);
            }
        }
        product as u8
    }

    #[test]
    fn field_known_values() {
        // FIPS-197 §4.2: {57}·{83} = {c1}, {57}·{13} = {fe}; {53}·{ca} = {01}.
        let cases: &[(u8, u8, u8)] = &[
            (0x57, 0x83, 0xC1),
            (0x57, 0x13, 0xFE),
            (0x53, 0xCA, 0x01),
            (0x02, 0x80, 0x1B),
            (0x00, 0xFF, 0x00),
            (0x01, 0xAB, 0xAB),
        ];
        for &(a, b, want) in cases {
            assert_eq!(mul(a, b), want, "{a:#04x}·{b:#04x}");
            assert_eq!(mul(b, a), want, "{b:#04x}·{a:#04x}");
        }
        assert_eq!(inverse(0x53), 0xCA);
        assert_eq!(inverse(0), 0);
    }

    #[test]
    fn field_exhaustive() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                assert_eq!(mul(a, b), reference_mul(a, b));
            }
            if a != 0 {
                assert_eq!(mul(a, inverse(a)), 1, "inverse of {a:#04x}");
            }
        }
    }

    #[test]
    fn hand_built_shares_combine() {
        // Secret 0x2A with f(x) = 0x2A + 0x07·x (threshold 2):
        // f(1) = 0x2D, f(2) = 0x2A ^ 0x0E = 0x24, f(3) = 0x2A ^ mul(7,3) = 0x2A ^ 0x09 = 0x23.
        assert_eq!(mul(0x07, 0x03), 0x09);
        let s1 = [0x2D, 0x01];
        let s2 = [0x24, 0x02];
        let s3 = [0x23, 0x03];
        for pair in [[&s1[..], &s2[..]], [&s1, &s3], [&s3, &s2]] {
            assert_eq!(&combine(&pair).unwrap()[..], &[0x2A]);
        }
    }

    #[test]
    fn combines_shares_from_vaults_table_arithmetic() {
        // Made by an independent port of Vault's original `Split` (log/exp
        // tables with generator 0xe5, x = 1..=5): threshold 3, secret 0x10..=0x2f.
        // Vault's tables agree with `mul` on all 65536 products; spot-check
        // its exp table: 0xe5^2 = 0x4c, 0xe5^3 = 0xb5.
        assert_eq!(mul(0xE5, 0xE5), 0x4C);
        assert_eq!(mul(0x4C, 0xE5), 0xB5);
        let shares: Vec<Vec<u8>> = [
            "a5bbbea28829a66a1e83dace124cc61a7cc01dec0c9082438a2931608a3220e701",
            "d38c83d8e31e2ff349400f99df1198b6dca74d462bab5aed1c1b9b22ba11543602",
            "66262f697f229f8e4fdacf4cd14040b380467289031efe89be1b80691c0e5afe03",
            "73554e609cd477bcd5683ec8d08bbdecc851b8445df362a0f7857973325d596304",
            "c6ffe2d100e8c7c1d3f2fe1ddeda65e994b0878b7546c6c455856238944257ab05",
        ]
        .iter()
        .map(|h| hex::decode(h).unwrap())
        .collect();
        let secret: Vec<u8> = (0x10..0x30).collect();
        for a in 0..5 {
            for b in a + 1..5 {
                for c in b + 1..5 {
                    let subset = [&shares[c][..], &shares[a], &shares[b]];
                    assert_eq!(&combine(&subset).unwrap()[..], &secret[..]);
                }
                let pair = [&shares[a][..], &shares[b]];
                assert_ne!(&combine(&pair).unwrap()[..], &secret[..]);
            }
        }
    }

    #[test]
    fn split_format() {
        let secret = [7u8; 32];
        let shares = split(&secret, 5, 3).unwrap();
        assert_eq!(shares.len(), 5);
        let mut xs: Vec<u8> = shares.iter().map(|s| s[32]).collect();
        assert!(shares.iter().all(|s| s.len() == 33));
        assert!(xs.iter().all(|&x| x != 0));
        xs.sort();
        xs.dedup();
        assert_eq!(xs.len(), 5, "x-coordinates must be distinct");
    }

    #[test]
    fn split_and_combine_errors() {
        let check = |parts, threshold, secret: &[u8], want| {
            assert_eq!(split(secret, parts, threshold).unwrap_err(), want);
        };
        check(2, 3, b"s", ShamirError::PartsLessThanThreshold);
        check(256, 3, b"s", ShamirError::TooManyParts);
        check(5, 1, b"s", ShamirError::ThresholdTooSmall);
        check(5, 0, b"s", ShamirError::ThresholdTooSmall);
        check(5, 3, b"", ShamirError::EmptySecret);
        assert!(split(b"s", 255, 255).is_ok());

        let a = [1u8, 1];
        let b = [2u8, 2];
        assert_eq!(combine(&[&a]).unwrap_err(), ShamirError::TooFewParts);
        assert_eq!(
            combine(&[&[1u8][..], &[2u8][..]]).unwrap_err(),
            ShamirError::PartTooShort
        );
        assert_eq!(
            combine(&[&a, &[1u8, 2, 3][..]]).unwrap_err(),
            ShamirError::PartLengthMismatch
        );
        assert_eq!(
            combine(&[&a, &b, &[9u8, 1][..]]).unwrap_err(),
            ShamirError::DuplicatePart
        );
    }

    #[test]
    fn coefficients_cover_zero() {
        // With threshold 2, share y = secret ^ c·x; c = 0 makes y == secret.
        // Over many one-byte splits some coefficient must be zero (p = 1/256
        // each; 4096 tries miss with probability ~1e-7). sharks never did.
        let zero_seen = (0..4096).any(|_| {
            let shares = split(&[0x5A], 2, 2).unwrap();
            shares[0][0] == 0x5A
        });
        assert!(zero_seen);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_threshold_subset_reconstructs(
            secret in proptest::collection::vec(any::<u8>(), 1..48),
            parts in 2usize..12,
            threshold_seed in any::<usize>(),
            pick_seed in any::<u64>(),
        ) {
            let threshold = 2 + threshold_seed % (parts - 1);
            let shares = split(&secret, parts, threshold).unwrap();
            prop_assert!(shares.iter().all(|s| s.len() == secret.len() + 1));

            // A pseudo-random threshold-sized subset, in a scrambled order.
            let mut idx: Vec<usize> = (0..parts).collect();
            let mut state = pick_seed | 1;
            for i in (1..idx.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                idx.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let subset: Vec<&[u8]> = idx[..threshold].iter().map(|&i| &shares[i][..]).collect();
            prop_assert_eq!(&combine(&subset).unwrap()[..], &secret[..]);

            // More than threshold shares also work.
            let all: Vec<&[u8]> = shares.iter().map(|s| &s[..]).collect();
            prop_assert_eq!(&combine(&all).unwrap()[..], &secret[..]);
        }

        #[test]
        fn fewer_than_threshold_gives_another_value(
            secret in proptest::collection::vec(any::<u8>(), 16..33),
            parts in 3usize..10,
        ) {
            // With 16+ bytes, a below-threshold combine matching the secret by
            // chance has probability 2^-128.
            let threshold = parts;
            let shares = split(&secret, parts, threshold).unwrap();
            let subset: Vec<&[u8]> = shares[..threshold - 1].iter().map(|s| &s[..]).collect();
            prop_assert_ne!(&combine(&subset).unwrap()[..], &secret[..]);
        }
    }
}
