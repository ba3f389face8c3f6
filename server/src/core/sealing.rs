//! Auto-unseal and seal migration on a running node.
//!
//! - Auto-unseal: with an auto-unseal seal, a background task unseals the
//!   node whenever it is sealed (at start, after init, after a restored
//!   snapshot sealed it) unless an operator sealed it with `sys/seal`. When
//!   the key service cannot be reached the node stays sealed, says why in
//!   `sys/seal-status` (`warnings`) and its log, and retries with exponential
//!   backoff, so it unseals on its own once the service is back.
//! - Migration (`sys/unseal` with `migrate`): a node whose config names
//!   another seal than the one its data is sealed by is unsealed with the old
//!   seal's keys; the active node then re-wraps the root key for the new seal
//!   (`Seal::migrate`), once, and the standbys receive the result by
//!   replication. This is Vault's node-by-node procedure: standbys first,
//!   then the active node steps down.

use std::sync::{Arc, Weak};
use std::time::Duration;

use zeroize::Zeroizing;

use super::{ha, Core, Error};
use crate::barrier::RootKey;

/// First retry after a failed auto-unseal, doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often an idle task (unsealed, or not yet initialised) looks again.
const IDLE_POLL: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(super) struct AutoUnsealState {
    /// The last failure, as shown in `sys/seal-status`.
    last_error: Option<String>,
    failures: u64,
    /// `sys/seal` was called: stay sealed until the process restarts (Vault's rule).
    pub operator_sealed: bool,
}

/// What a node unsealed with `-migrate` keeps until the migration is done:
/// the root key, and the key the operators unlocked it with (it becomes the
/// new recovery key, or the new unseal key).
pub(super) struct MigrationKeys {
    root: RootKey,
    key: Zeroizing<Vec<u8>>,
}

impl MigrationKeys {
    pub(super) fn new(root: &RootKey, key: &[u8]) -> Self {
        MigrationKeys {
            root: RootKey::from_bytes(root.as_bytes()).expect("a root key is 32 bytes"),
            key: Zeroizing::new(key.to_vec()),
        }
    }
}

/// What one look at the node found.
enum Step {
    /// Nothing to do (unsealed, not initialised, sealed by an operator, or
    /// waiting for a migration).
    Idle,
    Unsealed,
    Failed,
}

impl Core {
    /// Starts the auto-unseal task when the config names an auto-unseal seal.
    pub fn start_auto_unseal(self: &Arc<Self>) {
        if self.seal.auto().is_some() {
            tokio::spawn(auto_unseal_loop(Arc::downgrade(self)));
        }
    }

    /// Why a sealed node has not unsealed itself, for `sys/seal-status`.
    pub(super) fn auto_unseal_warning(&self, migration: bool) -> Option<String> {
        if migration {
            return Some(
                "seal migration pending: unseal this node with -migrate and the old seal's keys"
                    .into(),
            );
        }
        let auto = self.seal.auto()?;
        let state = self.auto_unseal.lock().expect("auto-unseal lock");
        if state.operator_sealed {
            return Some(format!(
                "sealed by an operator (sys/seal): restart the server to unseal with {} again",
                auto.describe()
            ));
        }
        state.last_error.clone()
    }

    /// The answer to unseal keys given to a node that does not take them.
    pub(super) fn no_unseal_keys(&self, stored: &str) -> Error {
        match self.seal.auto() {
            Some(auto) if stored == auto.kind() => {
                let why = self
                    .auto_unseal_warning(false)
                    .map(|w| format!(" It is still sealed because: {w}"))
                    .unwrap_or_default();
                Error::invalid(format!(
                    "this node unseals itself with {}; unseal keys are not used (recovery keys authorise generate-root and recovery rekey only).{why}",
                    auto.describe()
                ))
            }
            Some(auto) => Error::invalid(format!(
                "this node is configured with the {} seal, but the cluster it is joining is sealed by {stored}; use the cluster's seal stanza",
                auto.kind()
            )),
            None => Error::invalid(format!(
                "the data is sealed by {stored}, but this node's config has no seal \"{stored}\" stanza; add it (or, to migrate to Shamir, add it with disabled = \"true\" and unseal with -migrate)"
            )),
        }
    }

    /// One auto-unseal attempt, if the node needs one.
    async fn auto_unseal_step(self: &Arc<Self>) -> Step {
        let Some(auto) = self.seal.auto().cloned() else {
            return Step::Idle;
        };
        if !self.is_sealed()
            || self
                .auto_unseal
                .lock()
                .expect("auto-unseal lock")
                .operator_sealed
        {
            return Step::Idle;
        }
        let guard = self.lifecycle.lock().await;
        if !self.is_sealed() {
            return Step::Idle;
        }
        let stored = match self.seal.config().await {
            Ok(stored) => stored,
            Err(e) => return self.auto_unseal_failed(&e.to_string()),
        };
        let joining = match &stored {
            Some(config) if config.r#type != auto.kind() => return Step::Idle,
            Some(_) => false,
            None => match self.ha.as_ref().and_then(|ha| ha.pending_seal_config()) {
                Some(config) if config.r#type == auto.kind() => true,
                Some(config) => {
                    let e = self.no_unseal_keys(&config.r#type);
                    return self.auto_unseal_failed(&e.to_string());
                }
                None => return Step::Idle,
            },
        };
        let attempt = async {
            let root = match (&self.ha, joining) {
                (Some(ha), true) => {
                    ha.complete_join(&self.seal, ha::Unlock::Auto, self.cluster_routes())
                        .await?
                }
                _ => self.seal.auto_root_key(auto.as_ref()).await?,
            };
            self.open(&root).await
        }
        .await;
        if let Err(e) = attempt {
            self.seal_internal().await;
            return self.auto_unseal_failed(&e.to_string());
        }
        {
            let mut state = self.auto_unseal.lock().expect("auto-unseal lock");
            state.last_error = None;
            state.failures = 0;
        }
        tracing::info!(seal = %auto.describe(), joined = joining, "vault is unsealed (auto-unseal)");
        drop(guard);
        self.settle_after_unseal().await;
        Step::Unsealed
    }

    fn auto_unseal_failed(&self, error: &str) -> Step {
        let mut state = self.auto_unseal.lock().expect("auto-unseal lock");
        state.failures += 1;
        let retry = backoff(state.failures);
        let message = format!(
            "auto-unseal failed ({} attempt(s)): {error}; retrying in {}s",
            state.failures,
            retry.as_secs()
        );
        tracing::warn!(attempts = state.failures, retry_in_secs = retry.as_secs(), error = %error, "auto-unseal failed; the node stays sealed and retries");
        state.last_error = Some(message);
        Step::Failed
    }

    /// Re-wraps the root key for the configured seal, on the active node of a
    /// node unsealed with `-migrate`. Called with the lifecycle lock held.
    pub(super) async fn complete_migration(&self) {
        let Some(keys) = self.migration.lock().expect("migration lock").take() else {
            return;
        };
        match self.seal.pending_migration().await {
            Ok(None) => {
                tracing::info!("seal migration already done by another node");
            }
            Ok(Some(_)) => match self
                .seal
                .migrate(&self.barrier, &keys.root, &keys.key)
                .await
            {
                Ok(m) => {
                    tracing::info!(from = %m.from, to = %m.to, "seal migration complete");
                }
                Err(e) => {
                    tracing::error!(error = %e, "seal migration failed; the data stays sealed by the old seal; it is tried again when this node next becomes active");
                    *self.migration.lock().expect("migration lock") = Some(keys);
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "seal migration: reading the seal config failed");
                *self.migration.lock().expect("migration lock") = Some(keys);
            }
        }
    }
}

/// The wait before retry `failures` (1-based): 1 s, 2 s, 4 s ... 30 s.
fn backoff(failures: u64) -> Duration {
    let exp = failures.saturating_sub(1).min(16) as u32;
    MIN_BACKOFF
        .saturating_mul(2u32.saturating_pow(exp))
        .min(MAX_BACKOFF)
}

async fn auto_unseal_loop(core: Weak<Core>) {
    loop {
        let Some(strong) = core.upgrade() else { return };
        let wait = match strong.auto_unseal_step().await {
            Step::Idle | Step::Unsealed => IDLE_POLL,
            Step::Failed => backoff(
                strong
                    .auto_unseal
                    .lock()
                    .expect("auto-unseal lock")
                    .failures,
            ),
        };
        tokio::select! {
            _ = strong.auto_unseal_wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let waits: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(u64::MAX), MAX_BACKOFF);
    }
}
