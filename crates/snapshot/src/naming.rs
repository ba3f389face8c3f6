//! Object names the agent makes, and the test that tells them from everything else in a bucket.
//!
//! A name is `<s3.prefix><name_prefix>-<UTC time>-<8 hex digits>.snap`, the time written
//! `yyyy-mm-ddThh-mm-ssZ` (no colons: they need escaping in URLs and some tools), e.g.
//! `prod/keyhold-2026-11-02T14-00-03Z-9f3c01ab.snap`. Names under one prefix therefore sort
//! by time as strings; the random part keeps two agents that snapshot in the same second (a
//! leadership change between two timers) from overwriting each other. Only names that parse
//! back exactly are the agent's: retention never looks at anything else.

use chrono::{DateTime, NaiveDateTime, Utc};

/// A snapshot the agent stored, as listed: its name says when it was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotObject {
    pub key: String,
    pub size: u64,
    pub time: DateTime<Utc>,
}

/// The extension of every snapshot object.
pub const EXTENSION: &str = ".snap";
const TIME_FORMAT: &str = "%Y-%m-%dT%H-%M-%SZ";
/// `2026-11-02T14-00-03Z`
const TIME_LEN: usize = 20;
const RANDOM_LEN: usize = 8;

/// The object key for a snapshot taken at `time`; `random` is the 8-hex-digit tail.
pub fn object_key(prefix: &str, name_prefix: &str, time: DateTime<Utc>, random: u32) -> String {
    format!(
        "{prefix}{name_prefix}-{}-{random:08x}{EXTENSION}",
        time.format(TIME_FORMAT)
    )
}

/// A fresh object key for a snapshot taken now.
pub fn new_object_key(prefix: &str, name_prefix: &str) -> String {
    object_key(prefix, name_prefix, Utc::now(), rand::random())
}

/// The time a key made by [`object_key`] with this `prefix` and `name_prefix` encodes, or
/// `None` for any other key.
pub fn parse_object_key(key: &str, prefix: &str, name_prefix: &str) -> Option<DateTime<Utc>> {
    let rest = key
        .strip_prefix(prefix)?
        .strip_prefix(name_prefix)?
        .strip_prefix('-')?
        .strip_suffix(EXTENSION)?;
    if rest.len() != TIME_LEN + 1 + RANDOM_LEN || !rest.is_char_boundary(TIME_LEN) {
        return None;
    }
    let (time, tail) = rest.split_at(TIME_LEN);
    let random = tail.strip_prefix('-')?;
    if !random
        .chars()
        .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    {
        return None;
    }
    let time = NaiveDateTime::parse_from_str(time, TIME_FORMAT).ok()?;
    Some(time.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn keys_round_trip_and_sort_by_time() {
        let t = |s| Utc.with_ymd_and_hms(2026, 11, 2, 14, 0, s).unwrap();
        let key = object_key("prod/", "keyhold", t(3), 0x9f3c01ab);
        assert_eq!(key, "prod/keyhold-2026-11-02T14-00-03Z-9f3c01ab.snap");
        assert_eq!(parse_object_key(&key, "prod/", "keyhold"), Some(t(3)));
        assert_eq!(
            object_key("", "kh", t(0), 1),
            "kh-2026-11-02T14-00-00Z-00000001.snap"
        );

        let mut keys: Vec<String> = [(59, 1), (3, 0xffff_ffff), (10, 0), (3, 2)]
            .iter()
            .map(|(s, r)| object_key("p/", "keyhold", t(*s), *r))
            .collect();
        keys.sort();
        let times: Vec<_> = keys
            .iter()
            .map(|k| parse_object_key(k, "p/", "keyhold").unwrap())
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{keys:?}");

        let fresh = new_object_key("x/", "keyhold");
        assert!(
            parse_object_key(&fresh, "x/", "keyhold").is_some(),
            "{fresh}"
        );
    }

    /// Keys that are not the agent's, for this prefix and name prefix, are never parsed.
    #[test]
    fn foreign_keys_are_not_ours() {
        for key in [
            "prod/keyhold-2026-11-02T14-00-03Z-9f3c01ab.snap.tmp",
            "prod/keyhold-2026-11-02T14-00-03Z-9f3c01ab",
            "prod/keyhold-2026-11-02T14-00-03Z-9F3C01AB.snap",
            "prod/keyhold-2026-11-02T14-00-03Z-9f3c01a.snap",
            "prod/keyhold-2026-11-02T14:00:03Z-9f3c01ab.snap",
            "prod/keyhold-2026-13-02T14-00-03Z-9f3c01ab.snap",
            "prod/keyhold-dr-2026-11-02T14-00-03Z-9f3c01ab.snap",
            "prod/keyholdx-2026-11-02T14-00-03Z-9f3c01ab.snap",
            "prod/old/keyhold-2026-11-02T14-00-03Z-9f3c01ab.snap",
            "staging/keyhold-2026-11-02T14-00-03Z-9f3c01ab.snap",
            "keyhold-2026-11-02T14-00-03Z-9f3c01ab.snap",
            "prod/notes.txt",
            "prod/keyhold-é026-11-02T14-00-03Z-9f3c01ab.snap",
        ] {
            assert_eq!(parse_object_key(key, "prod/", "keyhold"), None, "{key}");
        }
    }
}
