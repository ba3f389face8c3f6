//! Which stored snapshots to delete: a pure function of the snapshots, the policy and the time.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::naming::SnapshotObject;

/// What to keep. A snapshot is kept if it is among the newest `retain` OR younger than
/// `retain_for`; with neither set every snapshot is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub retain: Option<u32>,
    pub retain_for: Option<Duration>,
}

impl Retention {
    /// The keys of `snapshots` this policy lets go at `now`, oldest first. `keep` (the
    /// snapshot just uploaded) is never among them, whatever its name says.
    pub fn expired(
        &self,
        snapshots: &[SnapshotObject],
        now: DateTime<Utc>,
        keep: &str,
    ) -> Vec<String> {
        if self.retain.is_none() && self.retain_for.is_none() {
            return Vec::new();
        }
        let mut newest_first: Vec<&SnapshotObject> = snapshots.iter().collect();
        newest_first.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.key.cmp(&a.key)));
        let mut expired: Vec<String> = newest_first
            .iter()
            .enumerate()
            .filter(|(rank, s)| {
                let by_count = self.retain.is_some_and(|n| (*rank as u64) < u64::from(n));
                let by_age = self.retain_for.is_some_and(|max| {
                    // A time in the future (clock skew) counts as young.
                    (now - s.time).to_std().map_or(true, |age| age < max)
                });
                !(by_count || by_age) && s.key != keep
            })
            .map(|(_, s)| s.key.clone())
            .collect();
        expired.reverse();
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 2, 12, 0, 0).unwrap()
    }

    /// Snapshots named by their age in hours: `h5` was taken five hours before `now`.
    fn snapshots(ages_h: &[i64]) -> Vec<SnapshotObject> {
        ages_h
            .iter()
            .map(|h| SnapshotObject {
                key: format!("h{h}"),
                size: 1,
                time: now() - chrono::Duration::hours(*h),
            })
            .collect()
    }

    /// Deletions (oldest first) for snapshots aged `ages_h` hours, with `keep` just uploaded.
    fn check(policy: (Option<u32>, Option<u64>), ages_h: &[i64], keep: &str, expect: &[&str]) {
        let policy = Retention {
            retain: policy.0,
            retain_for: policy.1.map(|h| Duration::from_secs(h * 3600)),
        };
        let got = policy.expired(&snapshots(ages_h), now(), keep);
        assert_eq!(got, expect, "{policy:?}, ages {ages_h:?}, keep {keep}");
    }

    #[test]
    fn retention_table() {
        check((None, None), &[0, 1, 100, 1000], "h0", &[]);
        check((Some(2), None), &[0, 1, 2, 3], "h0", &["h3", "h2"]);
        check((Some(2), None), &[3, 0, 2, 1], "h0", &["h3", "h2"]);
        check((Some(5), None), &[0, 1, 2], "h0", &[]);
        check((Some(1), None), &[0], "h0", &[]);
        check((Some(1), None), &[], "h0", &[]);
        check(
            (None, Some(24)),
            &[0, 23, 24, 25, 100],
            "h0",
            &["h100", "h25", "h24"],
        );
        check((None, Some(24)), &[30, 40], "h0", &["h40", "h30"]);
        // Both: the union of what each keeps.
        check(
            (Some(2), Some(24)),
            &[0, 1, 2, 30, 40],
            "h0",
            &["h40", "h30"],
        );
        check((Some(4), Some(1)), &[0, 1, 2, 30, 40], "h0", &["h40"]);
        check((Some(1), Some(3)), &[0, 1, 2, 3, 4], "h0", &["h4", "h3"]);
        // The snapshot just made is never deleted, even if its name says it is old.
        check((Some(1), None), &[0, 5, 9], "h9", &["h5"]);
        check((None, Some(1)), &[5, 9], "h9", &["h5"]);
        // Clock skew: a snapshot from the future is young.
        check((None, Some(1)), &[-2, 3], "", &["h3"]);
    }
}
