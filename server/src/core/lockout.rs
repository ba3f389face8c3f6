//! Vault's user lockout (1.13+): after `lockout_threshold` failed logins of one alias (a userpass
//! username, an AppRole role_id) on one auth mount within `lockout_counter_reset`, that alias is
//! refused for `lockout_duration`, even with the right credentials. Defaults 5 / 15m / 15m;
//! set per mount (`user_lockout_config` tune) or in the server config (`user_lockout` stanza).
//!
//! Counts live in memory on the active node, as Vault keeps its failed-login counts; a bounded
//! table, so a stranger cycling through made-up names cannot grow it without limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

/// Auth methods Vault applies lockout to that this build has.
pub const LOCKOUT_METHODS: &[&str] = &["userpass", "approle"];

/// Failed-login records kept at most; past that, stale records are dropped first.
const MAX_ENTRIES: usize = 100_000;

/// The effective settings for one mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    pub threshold: u64,
    pub duration: Duration,
    pub counter_reset: Duration,
    pub disabled: bool,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        LockoutPolicy {
            threshold: 5,
            duration: Duration::from_secs(15 * 60),
            counter_reset: Duration::from_secs(15 * 60),
            disabled: false,
        }
    }
}

/// Whether `VAULT_DISABLE_USER_LOCKOUT` (Vault's switch: any value `strconv.ParseBool` reads
/// as true) was set when the server started; read once.
pub fn disabled_by_environment() -> bool {
    static DISABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DISABLED.get_or_init(|| {
        std::env::var("VAULT_DISABLE_USER_LOCKOUT")
            .is_ok_and(|v| matches!(v.trim(), "1" | "t" | "T" | "true" | "TRUE" | "True"))
    })
}

/// A mount's `user_lockout_config` tune, as persisted: each field unset means "inherit".
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockoutTune {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lockout_threshold: Option<u64>,
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lockout_duration: Option<u64>,
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lockout_counter_reset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lockout_disable: Option<bool>,
}

impl LockoutTune {
    /// `base` with this tune's fields laid over it.
    pub fn apply(&self, base: LockoutPolicy) -> LockoutPolicy {
        LockoutPolicy {
            threshold: self.lockout_threshold.unwrap_or(base.threshold),
            duration: self
                .lockout_duration
                .map_or(base.duration, Duration::from_secs),
            counter_reset: self
                .lockout_counter_reset
                .map_or(base.counter_reset, Duration::from_secs),
            disabled: self.lockout_disable.unwrap_or(base.disabled),
        }
    }
}

#[derive(Debug, Clone)]
struct Failures {
    count: u64,
    last_failure: Instant,
    /// When the alias was locked (wall clock for `sys/locked-users`, monotonic for expiry).
    locked: Option<(Instant, SystemTime)>,
}

/// One locked alias, as `sys/locked-users` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedUser {
    pub mount_accessor: String,
    pub alias: String,
}

/// The failed-login table.
#[derive(Debug, Default)]
pub struct UserLockout {
    entries: Mutex<HashMap<(String, String), Failures>>,
}

impl UserLockout {
    /// Whether `alias` on the mount with `accessor` is locked now.
    pub fn is_locked(&self, accessor: &str, alias: &str, policy: &LockoutPolicy) -> bool {
        if policy.disabled {
            return false;
        }
        let mut entries = self.entries.lock().expect("lockout lock");
        let key = (accessor.to_string(), alias.to_string());
        match entries.get(&key).and_then(|f| f.locked) {
            Some((at, _)) if at.elapsed() < policy.duration => true,
            Some(_) => {
                entries.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Counts one failed login; locks the alias when the count reaches the threshold.
    pub fn record_failure(&self, accessor: &str, alias: &str, policy: &LockoutPolicy) {
        if policy.disabled || policy.threshold == 0 {
            return;
        }
        let mut entries = self.entries.lock().expect("lockout lock");
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, f| {
                f.locked.is_some() || f.last_failure.elapsed() < policy.counter_reset
            });
            if entries.len() >= MAX_ENTRIES {
                tracing::warn!("user lockout table full; a failed login was not counted");
                return;
            }
        }
        let now = Instant::now();
        let entry = entries
            .entry((accessor.to_string(), alias.to_string()))
            .or_insert(Failures {
                count: 0,
                last_failure: now,
                locked: None,
            });
        if entry.locked.is_some() {
            return;
        }
        if entry.last_failure.elapsed() >= policy.counter_reset {
            entry.count = 0;
        }
        entry.count += 1;
        entry.last_failure = now;
        if entry.count >= policy.threshold {
            entry.locked = Some((now, SystemTime::now()));
            tracing::warn!(
                mount_accessor = accessor,
                "login attempts exceeded, user is locked out; unlock with sys/locked-users/<mount_accessor>/unlock/<alias>"
            );
        }
    }

    /// A successful login clears the alias's failures.
    pub fn record_success(&self, accessor: &str, alias: &str) {
        self.entries
            .lock()
            .expect("lockout lock")
            .remove(&(accessor.to_string(), alias.to_string()));
    }

    /// `sys/locked-users/<accessor>/unlock/<alias>`.
    pub fn unlock(&self, accessor: &str, alias: &str) {
        self.record_success(accessor, alias);
    }

    /// The aliases locked now, `policy_of` giving each mount's settings.
    pub fn locked(&self, policy_of: impl Fn(&str) -> LockoutPolicy) -> Vec<LockedUser> {
        let entries = self.entries.lock().expect("lockout lock");
        let mut out: Vec<LockedUser> = entries
            .iter()
            .filter(|((accessor, _), f)| {
                let policy = policy_of(accessor);
                f.locked
                    .is_some_and(|(at, _)| !policy.disabled && at.elapsed() < policy.duration)
            })
            .map(|((accessor, alias), _)| LockedUser {
                mount_accessor: accessor.clone(),
                alias: alias.clone(),
            })
            .collect();
        out.sort_by(|a, b| (&a.mount_accessor, &a.alias).cmp(&(&b.mount_accessor, &b.alias)));
        out
    }
}

/// Whether a login failed on its credentials (what Vault counts), rather than on a malformed
/// request or a server fault.
pub fn is_bad_credentials(err: &crate::error::Error) -> bool {
    use crate::error::Error;
    match err {
        Error::PermissionDenied => true,
        Error::InvalidRequest(msg) => {
            msg.contains("invalid username or password")
                || msg.contains("invalid role or secret ID")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifth_failure_locks_until_unlocked() {
        let lockout = UserLockout::default();
        let policy = LockoutPolicy::default();
        for _ in 0..4 {
            lockout.record_failure("acc", "alice", &policy);
        }
        assert!(!lockout.is_locked("acc", "alice", &policy));
        lockout.record_failure("acc", "alice", &policy);
        assert!(lockout.is_locked("acc", "alice", &policy));
        assert!(!lockout.is_locked("acc", "bob", &policy));
        assert!(!lockout.is_locked("other", "alice", &policy));
        assert_eq!(lockout.locked(|_| policy).len(), 1);
        lockout.unlock("acc", "alice");
        assert!(!lockout.is_locked("acc", "alice", &policy));
    }

    #[test]
    fn success_resets_and_disable_wins() {
        let lockout = UserLockout::default();
        let policy = LockoutPolicy::default();
        for _ in 0..4 {
            lockout.record_failure("acc", "alice", &policy);
        }
        lockout.record_success("acc", "alice");
        lockout.record_failure("acc", "alice", &policy);
        assert!(!lockout.is_locked("acc", "alice", &policy));
        let disabled = LockoutTune {
            lockout_disable: Some(true),
            ..LockoutTune::default()
        }
        .apply(policy);
        for _ in 0..10 {
            lockout.record_failure("acc", "carol", &disabled);
        }
        assert!(!lockout.is_locked("acc", "carol", &disabled));
        let short = LockoutTune {
            lockout_threshold: Some(2),
            lockout_duration: Some(0),
            ..LockoutTune::default()
        }
        .apply(policy);
        lockout.record_failure("acc", "dave", &short);
        lockout.record_failure("acc", "dave", &short);
        assert!(
            !lockout.is_locked("acc", "dave", &short),
            "a zero duration expires at once"
        );
    }
}
