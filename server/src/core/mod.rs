//! The core: seal state, the unsealed server's services (mounts, tokens,
//! policies, audit), and the one request pipeline every client request takes:
//! token -> ACL -> audit request -> route -> audit response.
//!
//! Architecture invariant: handlers never see keys or plaintext storage
//! outside their mount's `StorageView`; the core never sees plaintext storage
//! except through the barrier.

mod cluster;
mod cluster_tls;
pub mod ha;
pub(crate) mod keys;
pub mod lockout;
pub mod mounts;
mod root_ops;
mod sealing;
mod snapshot;
mod standby;
mod system;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::audit::AuditBroker;
use crate::auth::token::TokenStore;
use crate::barrier::Barrier;
use crate::error::{Error, Result};
use crate::logical::{BackendRequest, LogicalBackend, Operation, Request, Response, StorageView};
use crate::physical::Backend;
use crate::policy::PolicyStore;
use crate::seal::{Seal, SealSetup};

pub use cluster::AutopilotConfig;
pub use keys::KeyCollector;
pub use mounts::{MountEntry, Table};
pub use root_ops::{GenerateRootStatus, RekeyStatus, RekeyTarget, RekeyUpdate, RekeyVerifyStatus};
pub use standby::StandbyRead;

use mounts::{Mount, Router};

const CLUSTER_INFO_KEY: &str = "core/cluster-info";
const AUDIT_TABLE_KEY: &str = "core/audit";
/// How often expired tokens are swept from storage.
const TIDY_INTERVAL: Duration = Duration::from_secs(60);

/// What the core needs from the server config.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub default_lease_ttl: Duration,
    pub max_lease_ttl: Duration,
    pub cluster_name: Option<String>,
    /// `raft` or `inmem`, reported in `sys/seal-status`.
    pub storage_type: String,
    pub api_addr: Option<String>,
    pub cluster_addr: Option<String>,
    pub ha_enabled: bool,
    /// Prometheus output of `sys/metrics`; `None` when disabled
    /// (`prometheus_retention_time = 0`).
    pub prometheus_enabled: bool,
    /// Per-device audit write timeout.
    pub audit_write_timeout: Duration,
    /// The auto-unseal seal in force and the one being migrated away from.
    pub seals: SealSetup,
    /// `user_lockout` stanzas of the server config, by auth type (`all`, `userpass`, ...).
    pub user_lockout: BTreeMap<String, lockout::LockoutTune>,
    /// Audit devices declared in the server config (`audit "TYPE" "NAME"`): enabled at unseal
    /// before the audit table's, listed by `sys/audit`, not changeable through the API.
    pub config_audit: Vec<crate::audit::AuditDeviceConfig>,
    /// The config files those came from, for errors that say where to change them.
    pub config_source: String,
    /// `telemetry { usage_gauge_period }`: how often the active node counts
    /// tokens and leases (`vault.token.count`, `vault.expire.num_leases`);
    /// `None` turns that off.
    pub usage_gauge_period: Option<Duration>,
    /// Standbys serve pure reads themselves (`disable_standby_reads = false`, the default);
    /// `false` forwards every request to the active node, as Vault OSS does.
    pub standby_reads: bool,
    /// `standby_read_max_staleness`; `None`: the Raft election timeout.
    pub standby_read_max_staleness: Option<Duration>,
    /// `standby_read_index_wait`: how long a request's `X-Vault-Index` is waited for.
    pub index_wait: Duration,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            default_lease_ttl: Duration::from_secs(768 * 3600),
            max_lease_ttl: Duration::from_secs(768 * 3600),
            cluster_name: None,
            storage_type: "inmem".into(),
            api_addr: None,
            cluster_addr: None,
            ha_enabled: false,
            prometheus_enabled: true,
            audit_write_timeout: Duration::from_secs(5),
            seals: SealSetup::default(),
            user_lockout: BTreeMap::new(),
            config_audit: Vec::new(),
            config_source: String::new(),
            usage_gauge_period: Some(Duration::from_secs(600)),
            standby_reads: true,
            standby_read_max_staleness: None,
            index_wait: Duration::from_secs(2),
        }
    }
}

/// Identity of the cluster, created at init and kept behind the barrier.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub name: String,
    pub id: String,
}

/// `sys/seal-status` (also the answer of `sys/unseal`).
#[derive(Debug, Clone, Serialize)]
pub struct SealStatus {
    #[serde(rename = "type")]
    pub kind: String,
    pub initialized: bool,
    pub sealed: bool,
    pub t: u8,
    pub n: u8,
    pub progress: usize,
    pub nonce: String,
    pub version: String,
    pub build_date: String,
    pub migration: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    pub recovery_seal: bool,
    /// `shamir` when the recovery keys are Shamir shares (auto-unseal seals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_seal_type: Option<String>,
    pub storage_type: String,
    pub removed_from_cluster: bool,
    /// Why a node that should unseal itself has not (the key service's error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<String>>,
}

/// `sys/init` input.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct InitRequest {
    #[serde(default)]
    pub secret_shares: u8,
    #[serde(default)]
    pub secret_threshold: u8,
    #[serde(default)]
    pub pgp_keys: Option<Vec<String>>,
    #[serde(default)]
    pub root_token_pgp_key: Option<String>,
    #[serde(default)]
    pub stored_shares: Option<u8>,
    #[serde(default)]
    pub recovery_shares: Option<u8>,
    #[serde(default)]
    pub recovery_threshold: Option<u8>,
}

/// `sys/init` output: shares hex- and base64-encoded, and the root token.
#[derive(Serialize)]
pub struct InitResponse {
    pub keys: Vec<String>,
    pub keys_base64: Vec<String>,
    pub recovery_keys: Vec<String>,
    pub recovery_keys_base64: Vec<String>,
    pub root_token: String,
}

/// The services that exist only while unsealed.
pub struct Unsealed {
    router: RwLock<Router>,
    pub tokens: TokenStore,
    pub policies: PolicyStore,
    pub audit: Arc<AuditBroker>,
    /// Serialises changes to the mount and audit tables.
    table_lock: Mutex<()>,
    pub cluster: ClusterInfo,
    pub active_time: DateTime<Utc>,
    /// Signs the `X-Vault-Index` values this cluster hands out (`standby.rs`).
    index_key: zeroize::Zeroizing<Vec<u8>>,
    /// Sweeps expired tokens (the active node only).
    tidy: Option<tokio::task::JoinHandle<()>>,
    /// Counts tokens and leases every `usage_gauge_period`, and sets the gauges
    /// while the flag (cleared on drop) says this node still counts.
    usage_gauges: Option<(tokio::task::JoinHandle<()>, Arc<std::sync::Mutex<bool>>)>,
    /// Autopilot (HA only): promotes caught-up non-voters, prunes dead voters.
    autopilot: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Failed logins and locked aliases (user lockout).
    pub lockout: lockout::UserLockout,
}

impl Drop for Unsealed {
    fn drop(&mut self) {
        if let Some(tidy) = &self.tidy {
            tidy.abort();
        }
        if let Some((usage, counting)) = &self.usage_gauges {
            usage.abort();
            // Only the active node counts; gauges never age out, so a node that stops
            // counting says 0 rather than keep its last count forever. Under the flag's
            // lock: a count the aborted task was setting cannot land after the 0.
            let mut counting = counting.lock().expect("usage gauge lock");
            *counting = false;
            metrics::gauge!("vault.token.count").set(0.0);
            metrics::gauge!("vault.expire.num_leases").set(0.0);
        }
        if let Some(autopilot) = self.autopilot.lock().expect("autopilot lock").take() {
            autopilot.abort();
        }
    }
}

/// Where this node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Sealed,
    /// Unsealed, not the Raft leader: client requests go to the active node.
    Standby,
    Active,
}

impl Unsealed {
    fn route(&self, path: &str) -> Option<(Mount, String)> {
        let router = self.router.read().expect("router lock");
        router.route(path).map(|(m, rel)| (m.clone(), rel))
    }
}

pub struct Core {
    pub config: CoreConfig,
    barrier: Arc<Barrier>,
    /// The barrier as every mount sees it: with timing metrics.
    storage: Arc<dyn Backend>,
    seal: Seal,
    state: RwLock<Option<Arc<Unsealed>>>,
    /// Auto-unseal: the last failure, and whether an operator sealed the node.
    auto_unseal: std::sync::Mutex<sealing::AutoUnsealState>,
    auto_unseal_wake: tokio::sync::Notify,
    /// Set on a node unsealed with `-migrate` until the migration is done.
    migration: std::sync::Mutex<Option<sealing::MigrationKeys>>,
    /// Serialises init, unseal, seal, rekey.
    lifecycle: Mutex<()>,
    /// Held while a snapshot restore runs here (`snapshot.rs`: one at a time).
    restoring: Mutex<()>,
    unseal_keys: std::sync::Mutex<KeyCollector>,
    root_ops: root_ops::RootOps,
    pub telemetry: crate::metrics::Telemetry,
    /// Replicated Raft, when `storage "raft"`.
    pub ha: Option<Arc<ha::Ha>>,
    /// Routes served on the cluster port besides Raft's (set by the HTTP layer).
    cluster_routes: std::sync::OnceLock<axum::Router>,
    /// Follows Raft leadership while unsealed (HA only).
    watcher: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Held while a cluster TLS rotation step is read, checked and stored.
    cluster_tls_rotation: Mutex<()>,
    /// A standby's read-only services (`standby.rs`), and the lock one build holds.
    standby_services: std::sync::Mutex<standby::StandbyServices>,
    standby_build: Mutex<()>,
}

impl Core {
    pub fn new(
        config: CoreConfig,
        physical: Arc<dyn Backend>,
        telemetry: crate::metrics::Telemetry,
    ) -> Arc<Core> {
        Self::build(config, physical, telemetry, None)
    }

    /// A core over replicated Raft.
    pub fn new_ha(
        config: CoreConfig,
        ha: Arc<ha::Ha>,
        telemetry: crate::metrics::Telemetry,
    ) -> Arc<Core> {
        Self::build(config, ha.backend(), telemetry, Some(ha))
    }

    fn build(
        config: CoreConfig,
        physical: Arc<dyn Backend>,
        telemetry: crate::metrics::Telemetry,
        ha: Option<Arc<ha::Ha>>,
    ) -> Arc<Core> {
        let barrier = Arc::new(Barrier::new(physical.clone()));
        let storage: Arc<dyn Backend> = Arc::new(crate::metrics::MeteredBackend::new(
            barrier.clone(),
            "barrier",
        ));
        Arc::new(Core {
            seal: Seal::with_setup(physical, config.seals.clone()),
            config,
            auto_unseal: Default::default(),
            auto_unseal_wake: tokio::sync::Notify::new(),
            migration: Default::default(),
            barrier,
            storage,
            state: RwLock::new(None),
            lifecycle: Mutex::new(()),
            restoring: Mutex::new(()),
            unseal_keys: std::sync::Mutex::new(KeyCollector::new()),
            root_ops: root_ops::RootOps::default(),
            telemetry,
            ha,
            cluster_routes: std::sync::OnceLock::new(),
            watcher: std::sync::Mutex::new(None),
            cluster_tls_rotation: Mutex::new(()),
            standby_services: std::sync::Mutex::new(None),
            standby_build: Mutex::new(()),
        })
    }

    /// Routes the cluster listener serves besides Raft (request forwarding).
    pub fn set_cluster_routes(&self, routes: axum::Router) {
        let _ = self.cluster_routes.set(routes);
    }

    fn cluster_routes(&self) -> axum::Router {
        self.cluster_routes.get().cloned().unwrap_or_default()
    }

    /// The active node's services: `Error::Sealed` when sealed,
    /// `Error::NoActiveNode` on a standby.
    pub fn unsealed(&self) -> Result<Arc<Unsealed>> {
        match self.state.read().expect("state lock").clone() {
            Some(u) => Ok(u),
            None if self.barrier.is_sealed() => Err(Error::Sealed),
            None => Err(Error::NoActiveNode),
        }
    }

    pub fn is_sealed(&self) -> bool {
        self.barrier.is_sealed()
    }

    pub fn role(&self) -> Role {
        if self.barrier.is_sealed() {
            Role::Sealed
        } else if self.state.read().expect("state lock").is_some() {
            Role::Active
        } else {
            Role::Standby
        }
    }

    pub async fn is_initialized(&self) -> Result<bool> {
        Ok(self.seal.config().await?.is_some()
            || self.ha.as_ref().is_some_and(|ha| ha.has_pending_join()))
    }

    fn view(&self, prefix: &str) -> StorageView {
        StorageView::new(self.storage.clone(), prefix)
    }

    // ---------------------------------------------------------------- init

    pub async fn init(self: &Arc<Self>, req: InitRequest) -> Result<InitResponse> {
        let _guard = self.lifecycle.lock().await;
        if self.is_initialized().await? {
            return Err(Error::invalid("Vault is already initialized"));
        }
        if req.pgp_keys.as_ref().is_some_and(|k| !k.is_empty())
            || req
                .root_token_pgp_key
                .as_deref()
                .is_some_and(|k| !k.is_empty())
        {
            return Err(Error::invalid("PGP-encrypted shares are not supported by this build; omit pgp_keys and root_token_pgp_key"));
        }
        let auto = self.seal.auto().cloned();
        match &auto {
            None if req.recovery_shares.unwrap_or(0) > 0 => {
                return Err(Error::invalid("recovery_shares only applies to auto-unseal seals; this server uses the shamir seal"));
            }
            Some(auto) if req.recovery_shares.unwrap_or(0) == 0 => {
                return Err(Error::invalid(format!(
                    "this server auto-unseals with {}: initialise it with recovery_shares and recovery_threshold (for example `keyhold operator init -recovery-shares=5 -recovery-threshold=3`)",
                    auto.kind()
                )));
            }
            _ => {}
        }
        if let Some(ha) = &self.ha {
            if ha.has_pending_join() {
                return Err(Error::invalid("this node is joining a cluster (retry_join or sys/storage/raft/join): unseal it with that cluster's keys instead of initialising it"));
            }
            ha.bootstrap().await?;
        }
        let (shares, recovery_shares, root_key) = match &auto {
            None => {
                let shares = self
                    .seal
                    .initialize(&self.barrier, req.secret_shares, req.secret_threshold)
                    .await?;
                let threshold = req.secret_threshold.max(1) as usize;
                let key = keys::reconstruct(&shares[..threshold.min(shares.len())], threshold)?;
                let root_key = self.seal.recover_root_key(&key).await?;
                (shares, Vec::new(), root_key)
            }
            Some(auto) => {
                let recovery = self
                    .seal
                    .initialize_auto(
                        &self.barrier,
                        req.recovery_shares.unwrap_or(0),
                        req.recovery_threshold.unwrap_or(0),
                    )
                    .await?;
                let root_key = self.seal.auto_root_key(auto.as_ref()).await?;
                (Vec::new(), recovery, root_key)
            }
        };

        // Unseal once to write the initial state (cluster identity, mounts,
        // root token), then seal again: Vault leaves a fresh Shamir server
        // sealed, and an auto-unseal one unseals itself next (below).
        self.barrier.unseal(&root_key).await?;
        let outcome = async {
            let name = self.config.cluster_name.clone().unwrap_or_else(|| {
                format!(
                    "vault-cluster-{}",
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                )
            });
            let info = ClusterInfo {
                name,
                id: uuid::Uuid::new_v4().to_string(),
            };
            self.view("").put_json(CLUSTER_INFO_KEY, &info).await?;
            if self.ha.is_some() {
                let tls = crate::raft::ClusterTls::generate().map_err(|e| {
                    Error::internal(format!("generate the cluster TLS keyring: {e}"))
                })?;
                self.view("").put_json(ha::CLUSTER_TLS_KEY, &tls).await?;
            }
            let unsealed = self.post_unseal().await?;
            let root = unsealed.tokens.create_root(None).await?;
            Ok::<_, Error>(root.id.clone())
        }
        .await;
        self.seal_internal().await;
        let root_token = outcome?;
        if auto.is_some() {
            self.auto_unseal_wake.notify_one();
        }

        Ok(InitResponse {
            keys: shares.iter().map(|s| hex::encode(s.as_slice())).collect(),
            keys_base64: shares.iter().map(|s| base64_std(s)).collect(),
            recovery_keys: recovery_shares
                .iter()
                .map(|s| hex::encode(s.as_slice()))
                .collect(),
            recovery_keys_base64: recovery_shares.iter().map(|s| base64_std(s)).collect(),
            root_token,
        })
    }

    // --------------------------------------------------------- seal status

    pub async fn seal_status(&self) -> Result<SealStatus> {
        let stored = self.seal.config().await?;
        let config = match &stored {
            Some(c) => Some(c.clone()),
            None => self.ha.as_ref().and_then(|ha| ha.pending_seal_config()),
        };
        let unsealed = self.state.read().expect("state lock").clone();
        let barrier_sealed = self.barrier.is_sealed();
        // A standby has no services but can read the cluster's identity.
        let cluster: Option<ClusterInfo> = match (&unsealed, barrier_sealed) {
            (Some(u), _) => Some(u.cluster.clone()),
            (None, false) => self
                .view("")
                .get_json(CLUSTER_INFO_KEY)
                .await
                .ok()
                .flatten(),
            (None, true) => None,
        };
        let kind = config
            .as_ref()
            .map_or(self.seal.kind().to_string(), |c| c.r#type.clone());
        let recovery_seal = kind != "shamir";
        // With an auto-unseal seal, t and n are the recovery keys', as in Vault.
        let shares = if recovery_seal {
            self.seal.recovery_config().await?
        } else {
            config.clone()
        };
        let migration = self.seal.pending_migration().await?.is_some();
        let keys = self.unseal_keys.lock().expect("unseal lock");
        let (progress, nonce) = if keys.progress() > 0 {
            (keys.progress(), keys.nonce.clone())
        } else {
            (0, String::new())
        };
        let warnings = barrier_sealed
            .then(|| self.auto_unseal_warning(migration))
            .flatten();
        Ok(SealStatus {
            kind,
            initialized: config.is_some(),
            sealed: barrier_sealed,
            t: shares.as_ref().map_or(0, |c| c.secret_threshold),
            n: shares.as_ref().map_or(0, |c| c.secret_shares),
            progress,
            nonce,
            version: crate::VERSION.to_string(),
            build_date: env!("KEYHOLD_BUILD_DATE").to_string(),
            migration,
            cluster_name: cluster.as_ref().map(|c| c.name.clone()),
            cluster_id: cluster.as_ref().map(|c| c.id.clone()),
            recovery_seal,
            recovery_seal_type: recovery_seal.then(|| "shamir".to_string()),
            storage_type: self.config.storage_type.clone(),
            removed_from_cluster: false,
            warnings: warnings.map(|w| vec![w]),
        })
    }

    // -------------------------------------------------------------- unseal

    /// One `sys/unseal` call: a key share, or `reset`. With `migrate`, the
    /// shares are the old seal's (unseal keys from Shamir, recovery keys from
    /// an auto-unseal seal) and the node unseals for a seal migration.
    pub async fn unseal(
        self: &Arc<Self>,
        key: Option<&str>,
        reset: bool,
        migrate: bool,
    ) -> Result<SealStatus> {
        // Already unsealed: answer without waiting on an operation in flight.
        if !reset && !self.is_sealed() {
            return self.seal_status().await;
        }
        let _guard = self.lifecycle.lock().await;
        let (config, joining) = match self.seal.config().await? {
            Some(config) => (config, false),
            None => match self.ha.as_ref().and_then(|ha| ha.pending_seal_config()) {
                Some(config) => (config, true),
                None => return Err(Error::NotInitialized),
            },
        };
        if reset {
            self.unseal_keys.lock().expect("unseal lock").reset();
            return self.seal_status().await;
        }
        if !self.is_sealed() {
            return self.seal_status().await;
        }
        let migration = self.seal.pending_migration().await?;
        let threshold = match (&migration, migrate) {
            (Some(m), false) => {
                return Err(Error::invalid(format!(
                    "seal migration pending: this node is configured with the {to} seal but its data is sealed by {from}; unseal it with -migrate (\"migrate\": true) and the {keys} keys of the {from} seal",
                    to = m.to,
                    from = m.from,
                    keys = if m.from == "shamir" { "unseal" } else { "recovery" },
                )));
            }
            (None, true) => {
                return Err(Error::invalid(format!(
                    "no seal migration is pending: the data is sealed by {}, the seal this node is configured with; unseal without -migrate",
                    config.r#type
                )));
            }
            (Some(_), true) => self.seal.migration_key_config().await?.secret_threshold,
            (None, false) => {
                if config.r#type != "shamir" || self.seal.auto().is_some() {
                    return Err(self.no_unseal_keys(&config.r#type));
                }
                config.secret_threshold
            }
        }
        .max(1) as usize;
        let Some(key) = key.filter(|k| !k.trim().is_empty()) else {
            return Err(Error::invalid(
                "'key' must be specified in request body as JSON, or 'reset' set to true",
            ));
        };
        let share = keys::decode_share(key)?;
        let collected = {
            let mut keys = self.unseal_keys.lock().expect("unseal lock");
            keys.add(share);
            if keys.progress() < threshold {
                None
            } else {
                Some(keys.take())
            }
        };
        let Some(collected) = collected else {
            return self.seal_status().await;
        };
        let attempt = async {
            let combined = keys::reconstruct(&collected, threshold)?;
            let root_key = match (&self.ha, joining, migration.is_some()) {
                (_, _, true) => {
                    let root = self.seal.unlock_for_migration(&combined).await.map_err(|e| match e {
                        crate::seal::SealError::InvalidKey => Error::invalid("the key shares are not the old seal's keys (cipher: message authentication failed); unseal progress was reset, submit the correct keys again"),
                        other => other.into(),
                    })?;
                    *self.migration.lock().expect("migration lock") = Some(sealing::MigrationKeys::new(&root, &combined));
                    root
                }
                (Some(ha), true, false) => {
                    ha.complete_join(&self.seal, ha::Unlock::UnsealKey(&combined), self.cluster_routes())
                        .await?
                }
                _ => self.seal.recover_root_key(&combined).await.map_err(|_| {
                    Error::invalid("the key shares did not reconstruct this server's unseal key (cipher: message authentication failed); unseal progress was reset, submit the correct keys again")
                })?,
            };
            self.open(&root_key).await
        }
        .await;
        if let Err(e) = attempt {
            self.migration.lock().expect("migration lock").take();
            self.seal_internal().await;
            tracing::warn!(error = %e, "unseal attempt failed");
            return Err(e);
        }
        tracing::info!(migrate, "vault is unsealed");
        drop(_guard);
        self.settle_after_unseal().await;
        self.seal_status().await
    }

    /// Opens the barrier with `root_key` and starts what runs while unsealed:
    /// Raft (the watcher then makes the leader active), or the services.
    /// `vault.core.unseal` times it (its count is the number of unseals);
    /// `vault.core.unsealed` turns 1 here, on standbys too.
    async fn open(self: &Arc<Self>, root_key: &crate::barrier::RootKey) -> Result<()> {
        let started = Instant::now();
        self.barrier.unseal(root_key).await?;
        match &self.ha {
            Some(ha) => self.start_ha(ha).await?,
            None => {
                self.post_unseal().await?;
                self.complete_migration().await;
                metrics::gauge!("vault.core.active").set(1.0);
            }
        }
        metrics::gauge!("vault.core.unsealed").set(1.0);
        metrics::histogram!("vault.core.unseal").record(started.elapsed().as_secs_f64() * 1000.0);
        Ok(())
    }

    /// A cluster of one elects itself at once: return when it is active, so
    /// the node is usable as soon as unseal returns (as with Vault).
    async fn settle_after_unseal(&self) {
        let Some(ha) = &self.ha else { return };
        let Some(node) = ha.running().await else {
            return;
        };
        if ha.is_only_voter(&node) {
            if let Err(e) = ha.lead_alone(&node).await {
                tracing::warn!(error = %e, "unsealed, but not yet active");
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.role() == Role::Standby && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Builds the unsealed services from what is stored behind the barrier.
    async fn post_unseal(self: &Arc<Self>) -> Result<Arc<Unsealed>> {
        let unsealed = Arc::new(self.build_services(false).await?);
        self.drop_standby_services();
        *self.state.write().expect("state lock") = Some(unsealed.clone());
        metrics::gauge!("vault.core.unsealed").set(1.0);
        Ok(unsealed)
    }

    /// The services, built from storage. `read_only` builds a standby's (`standby.rs`): it
    /// writes nothing (what is missing is the active node's to create, and the build fails
    /// with [`Error::ForwardToActive`]) and runs no background task.
    async fn build_services(self: &Arc<Self>, read_only: bool) -> Result<Unsealed> {
        let cluster: ClusterInfo = match self.view("").get_json(CLUSTER_INFO_KEY).await? {
            Some(info) => info,
            None => {
                return Err(Error::internal(
                    "cluster identity missing from storage (core/cluster-info)",
                ))
            }
        };
        let policies = PolicyStore::new(self.view("sys/"));
        let tokens = if read_only {
            // A standby judges expiry by the active node's clock, as its appends carry it.
            let ha = self.ha.as_ref().ok_or(Error::ForwardToActive)?;
            let node = ha.running().await.ok_or(Error::ForwardToActive)?;
            TokenStore::read_only(self.view("sys/token/"), node.leader_clock())
        } else {
            policies.setup().await?;
            TokenStore::new(self.view("sys/token/"))
        };
        tokens.setup().await?;
        let index_key = self.index_key(read_only).await?;
        let audit = Arc::new(AuditBroker::with_write_timeout(
            self.config.audit_write_timeout,
        ));

        let mut router = Router::default();
        for (key, defaults) in [
            (
                mounts::MOUNTS_KEY,
                vec![MountEntry::new(
                    Table::Secret,
                    "sys",
                    "system",
                    "system endpoints used for control, policy and debugging",
                )],
            ),
            (
                mounts::AUTH_KEY,
                vec![MountEntry::new(
                    Table::Auth,
                    "token",
                    "token",
                    "token based credentials",
                )],
            ),
        ] {
            let entries: Vec<MountEntry> = match self.view("").get_json(key).await? {
                Some(entries) => entries,
                None if read_only => return Err(Error::ForwardToActive),
                None => {
                    self.view("").put_json(key, &defaults).await?;
                    defaults
                }
            };
            for entry in entries {
                let backend = self.backend_for(&entry, &tokens)?;
                let view = self.view(&entry.view_prefix());
                router.insert(Mount {
                    entry,
                    backend,
                    view,
                })?;
            }
        }

        // Config-declared devices first: the node is audited by them from its first request.
        // Each keeps its salt in a view named after its path, so every node declaring it
        // hashes alike and a restart keeps the salt.
        for config in &self.config.config_audit {
            let view = self.view(&config_audit_view(&config.path));
            audit.enable(config, view).await.map_err(|e| {
                Error::internal(format!(
                    "audit device {:?} declared in {} could not be enabled ({e}); refusing to unseal without it, because requests would go unaudited. Fix the device (path, permissions) and unseal again",
                    config.path, self.config.config_source
                ))
            })?;
        }
        let audit_table: Vec<AuditTableEntry> = self
            .view("")
            .get_json(AUDIT_TABLE_KEY)
            .await?
            .unwrap_or_default();
        for entry in &audit_table {
            if let Some(declared) = self.config_audit_at(&entry.config.path) {
                tracing::error!(
                    path = %entry.config.path,
                    "the audit table's device is not enabled: the config file declares audit device {declared:?} at the same path; disable one of them"
                );
                continue;
            }
            audit.enable(&entry.config, self.view(&format!("audit/{}/", entry.uuid))).await.map_err(|e| {
                Error::internal(format!(
                    "audit device {:?} could not be re-enabled ({e}); refusing to unseal without it, because requests would go unaudited. Fix the device (path, permissions) and unseal again",
                    entry.config.path
                ))
            })?;
        }

        let tidy = (!read_only).then(|| {
            let tokens = tokens.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(TIDY_INTERVAL);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    match tokens.tidy().await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(removed = n, "expired tokens removed"),
                        Err(e) => tracing::warn!(error = %e, "token tidy failed"),
                    }
                }
            })
        });
        let usage_gauges = self.config.usage_gauge_period.filter(|_| !read_only).map(|period| {
            let tokens = tokens.clone();
            let counting = Arc::new(std::sync::Mutex::new(true));
            let still = counting.clone();
            let task = tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    match tokens.usage().await {
                        Ok(usage) => {
                            let counting = still.lock().expect("usage gauge lock");
                            if !*counting {
                                return;
                            }
                            metrics::gauge!("vault.token.count").set(usage.tokens as f64);
                            // Keyhold's only leases are those of tokens with a TTL.
                            metrics::gauge!("vault.expire.num_leases").set(usage.leases as f64);
                        }
                        Err(e) => tracing::warn!(error = %e, "counting tokens for vault.token.count failed"),
                    }
                }
            });
            (task, counting)
        });
        Ok(Unsealed {
            router: RwLock::new(router),
            tokens,
            policies,
            audit,
            table_lock: Mutex::new(()),
            cluster,
            active_time: Utc::now(),
            index_key,
            tidy,
            usage_gauges,
            autopilot: std::sync::Mutex::new(None),
            lockout: lockout::UserLockout::default(),
        })
    }

    fn backend_for(
        &self,
        entry: &MountEntry,
        tokens: &TokenStore,
    ) -> Result<Arc<dyn LogicalBackend>> {
        backend_factory(entry, tokens)
    }

    /// Drops the unsealed services and the keys.
    /// Drops the unsealed services and the keys, and stops Raft (handing
    /// leadership over first when this node leads).
    async fn seal_internal(&self) {
        if let Some(watcher) = self.watcher.lock().expect("watcher lock").take() {
            watcher.abort();
        }
        *self.state.write().expect("state lock") = None;
        self.drop_standby_services();
        if let Some(ha) = &self.ha {
            ha.stop().await;
        }
        self.barrier.seal();
        self.seal.forget_unseal_key();
        self.unseal_keys.lock().expect("unseal lock").reset();
        metrics::gauge!("vault.core.unsealed").set(0.0);
        metrics::gauge!("vault.core.active").set(0.0);
    }

    /// `sys/seal`: needs a token with `sudo` on `sys/seal` (root or a policy).
    pub async fn seal(&self, token: Option<&str>) -> Result<()> {
        self.authorize_sudo(token, "sys/seal").await?;
        let _guard = self.lifecycle.lock().await;
        self.seal_internal().await;
        self.auto_unseal
            .lock()
            .expect("auto-unseal lock")
            .operator_sealed = true;
        tracing::info!("vault is sealed");
        Ok(())
    }

    /// `sys/step-down`: needs `sudo` on `sys/step-down`. A single-voter
    /// cluster has no standby to hand leadership to, so after the check there
    /// is nothing to do; with replicated Raft this transfers leadership to the
    /// caught-up voter with the newest version, and refuses (400) when every
    /// voter that could take over runs an older version than this node.
    pub async fn step_down(&self, token: Option<&str>) -> Result<()> {
        self.authorize_sudo(token, "sys/step-down").await?;
        if let Some(node) = match &self.ha {
            Some(ha) => ha.running().await,
            None => None,
        } {
            if node.is_leader() {
                node.transfer_leadership_with(crate::raft::Handover::NotOlder)
                    .await
                    .map_err(|e| match e {
                        e @ crate::raft::ClusterError::OnlyOlderVoters { .. } => {
                            Error::invalid(format!("step down: {e}"))
                        }
                        e => Error::internal(format!("step down: {e}")),
                    })?;
                tracing::info!("stepped down: leadership handed to another node");
            }
        }
        Ok(())
    }

    /// Checks that `token` holds `sudo` (and update) on a root-protected path.
    async fn authorize_sudo(&self, token: Option<&str>, path: &str) -> Result<()> {
        let u = self.unsealed()?;
        let entry = match token {
            Some(t) => u.tokens.use_token(t).await?,
            None => None,
        };
        let Some(entry) = entry else {
            return Err(Error::PermissionDenied);
        };
        let acl = u.policies.acl(&entry.policies).await?;
        let result = acl.allow_operation(path, Operation::Update, &serde_json::Map::new());
        if result.allowed && result.root_privs {
            Ok(())
        } else {
            Err(Error::PermissionDenied)
        }
    }

    /// `sys/metrics` on a listener with `unauthenticated_metrics_access`.
    pub fn metrics_unauthenticated(&self, req: &Request) -> Result<Response> {
        self.metrics_response(req)
    }

    /// Seals on shutdown so key material leaves memory before exit.
    pub async fn shutdown(&self) {
        self.seal_internal().await;
    }

    pub async fn rotate(&self) -> Result<crate::barrier::KeyStatus> {
        let _guard = self.lifecycle.lock().await;
        Ok(self.barrier.rotate().await?)
    }

    pub fn key_status(&self) -> Result<crate::barrier::KeyStatus> {
        Ok(self.barrier.key_status()?)
    }

    // ------------------------------------------------------------ requests

    /// Serves one client request through token check, ACL, audit and routing.
    pub async fn handle_request(&self, mut req: Request) -> Result<Response> {
        let started = Instant::now();
        let u = self.unsealed()?;
        let result = self.handle_unsealed(&u, &mut req).await;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        metrics::histogram!("vault.core.handle_request").record(elapsed_ms);
        if let Some(mount) = &req.mount {
            let mount_label = mount.path.replace('/', "-");
            metrics::histogram!(format!(
                "vault.route.{}.{}",
                req.operation.as_str(),
                mount_label.trim_end_matches('-')
            ))
            .record(elapsed_ms);
        }
        result
    }

    /// Whether a request to `path` with `token` will be refused for want of a valid token, so
    /// the HTTP layer need not read, parse or audit its body: an unauthenticated caller's huge
    /// body then costs the server nothing. `false` when sealed or unsure (the full pipeline
    /// decides), and for the paths that answer without a token.
    pub async fn refused_without_token(&self, path: &str, token: Option<&str>) -> bool {
        let Ok(u) = self.unsealed() else {
            return false;
        };
        if is_unauthenticated_route(u.route(path).as_ref()) {
            return false;
        }
        match token.filter(|t| !t.is_empty()) {
            None => true,
            Some(token) => matches!(u.tokens.lookup(token).await, Ok(None)),
        }
    }

    async fn handle_unsealed(&self, u: &Unsealed, req: &mut Request) -> Result<Response> {
        let route = u.route(&req.path);
        if let Some((mount, _)) = &route {
            req.mount = Some(
                mount
                    .entry
                    .info(self.config.default_lease_ttl, self.config.max_lease_ttl),
            );
        }
        let unauthenticated = is_unauthenticated_route(route.as_ref());

        // Token: required unless the path is a login path.
        let token_entry = match req.client_token.as_deref().filter(|t| !t.is_empty()) {
            Some(token) => u.tokens.use_token(token).await?,
            None => None,
        };
        if token_entry.is_none() && !unauthenticated {
            return self.refuse(u, req, Error::PermissionDenied).await;
        }
        req.auth = token_entry.as_ref().map(|e| u.tokens.to_auth(e));

        if !unauthenticated {
            let policies = token_entry
                .as_ref()
                .map(|e| e.policies.clone())
                .unwrap_or_default();
            let acl = u.policies.acl(&policies).await?;
            if req.operation == Operation::Update {
                if let Some((mount, rel)) = &route {
                    if self.exists(u, mount, rel, req).await? == Some(false) {
                        req.operation = Operation::Create;
                    }
                }
            }
            let verdict = acl.allow_operation(&req.path, req.operation, &req.data);
            if !verdict.allowed {
                return self.refuse(u, req, Error::PermissionDenied).await;
            }
            let needs_sudo = match &route {
                Some((mount, rel)) if mount.entry.kind == "system" => system::needs_sudo(rel),
                Some((mount, rel)) if mount.entry.kind == "token" => {
                    rel.starts_with("accessors") || rel.starts_with("revoke-orphan")
                }
                _ => false,
            };
            if needs_sudo && !verdict.root_privs {
                return self.refuse(u, req, Error::PermissionDenied).await;
            }
        }

        // User lockout: a locked alias is refused before its credentials are even checked.
        let login = self.lockout_target(route.as_ref(), req);
        if let Some((accessor, alias, policy)) = &login {
            if u.lockout.is_locked(accessor, alias, policy) {
                return self.refuse(u, req, Error::PermissionDenied).await;
            }
        }

        let audit_started = Instant::now();
        let logged = u.audit.log_request(req, req.auth.as_ref(), None).await;
        metrics::histogram!("vault.audit.log_request")
            .record(audit_started.elapsed().as_secs_f64() * 1000.0);
        logged?;
        let result = match &route {
            None => Err(Error::UnsupportedPath(req.path.clone())),
            Some((mount, rel)) if mount.entry.kind == "system" => self.system(u, req, rel).await,
            Some((mount, rel)) => {
                let info = req.mount.clone().unwrap_or_default();
                let outcome = mount
                    .backend
                    .handle(BackendRequest {
                        path: rel.clone(),
                        req,
                        storage: &mount.view,
                        mount: &info,
                    })
                    .await;
                match outcome {
                    Ok(mut resp)
                        if mount.entry.table == Table::Auth && mount.entry.kind != "token" =>
                    {
                        if let Some(login) = resp.auth.take() {
                            resp.auth = Some(u.tokens.create_from_login(&login, &info).await?);
                        }
                        Ok(resp)
                    }
                    other => other,
                }
            }
        };
        if let Some((accessor, alias, policy)) = &login {
            match &result {
                Ok(resp) if resp.auth.is_some() => u.lockout.record_success(accessor, alias),
                Err(e) if lockout::is_bad_credentials(e) => {
                    u.lockout.record_failure(accessor, alias, policy)
                }
                _ => {}
            }
        }
        let error = result.as_ref().err().map(|e| e.to_string());
        let audit_started = Instant::now();
        let logged = u
            .audit
            .log_response(
                req,
                req.auth.as_ref(),
                result.as_ref().ok(),
                error.as_deref(),
            )
            .await;
        metrics::histogram!("vault.audit.log_response")
            .record(audit_started.elapsed().as_secs_f64() * 1000.0);
        logged?;
        result
    }

    /// Audits a refused request (so denied attempts are on record) and
    /// returns the refusal; an audit failure wins, as the request was not logged.
    async fn refuse(&self, u: &Unsealed, req: &Request, err: Error) -> Result<Response> {
        let msg = err.to_string();
        u.audit
            .log_request(req, req.auth.as_ref(), Some(&msg))
            .await?;
        u.audit
            .log_response(req, req.auth.as_ref(), None, Some(&msg))
            .await?;
        Err(err)
    }

    /// For a login to a userpass or AppRole mount: the mount accessor, the alias (username or
    /// role_id) and the lockout settings in force for that mount.
    fn lockout_target(
        &self,
        route: Option<&(Mount, String)>,
        req: &Request,
    ) -> Option<(String, String, lockout::LockoutPolicy)> {
        let (mount, rel) = route?;
        if mount.entry.table != Table::Auth
            || !lockout::LOCKOUT_METHODS.contains(&mount.entry.kind.as_str())
        {
            return None;
        }
        let alias = match mount.entry.kind.as_str() {
            "userpass" => rel.strip_prefix("login/")?.to_lowercase(),
            "approle" if rel == "login" => req.get_str("role_id")?,
            _ => return None,
        };
        if alias.is_empty() {
            return None;
        }
        Some((
            mount.entry.accessor.clone(),
            alias,
            self.lockout_policy(&mount.entry),
        ))
    }

    /// Vault's defaults, then the config's `user_lockout "all"`, then the stanza for the
    /// mount's type, then the mount's own tune; `VAULT_DISABLE_USER_LOCKOUT` in the server's
    /// environment turns it off everywhere, as in Vault.
    fn lockout_policy(&self, entry: &mounts::MountEntry) -> lockout::LockoutPolicy {
        let mut policy = lockout::LockoutPolicy::default();
        if lockout::disabled_by_environment() {
            policy.disabled = true;
            return policy;
        }
        for key in ["all", entry.kind.as_str()] {
            if let Some(tune) = self.config.user_lockout.get(key) {
                policy = tune.apply(policy);
            }
        }
        match &entry.config.user_lockout_config {
            Some(tune) => tune.apply(policy),
            None => policy,
        }
    }

    async fn exists(
        &self,
        u: &Unsealed,
        mount: &Mount,
        rel: &str,
        req: &Request,
    ) -> Result<Option<bool>> {
        if mount.entry.kind == "system" {
            return Ok(system::exists(self, u, rel).await);
        }
        let info = req.mount.clone().unwrap_or_default();
        mount
            .backend
            .exists(BackendRequest {
                path: rel.to_string(),
                req,
                storage: &mount.view,
                mount: &info,
            })
            .await
    }
}

/// Whether a routed path answers without a token: the system backend's own list, and each
/// mount's login paths.
fn is_unauthenticated_route(route: Option<&(Mount, String)>) -> bool {
    match route {
        Some((mount, rel)) if mount.entry.kind == "system" => system::is_unauthenticated(rel),
        Some((mount, rel)) => mount
            .backend
            .unauthenticated_paths()
            .iter()
            .any(|p| path_matches(p, rel)),
        None => false,
    }
}

/// The storage view of a config-declared audit device (`audit/config/<path>`): named by
/// path, where the audit table's devices use `audit/<uuid>/`.
fn config_audit_view(path: &str) -> String {
    format!("audit/config/{}/", path.trim_matches('/'))
}

impl Core {
    /// The config-declared audit device whose path equals, contains or sits under `path`.
    pub(crate) fn config_audit_at(&self, path: &str) -> Option<String> {
        let path = format!("{}/", path.trim_matches('/'));
        self.config
            .config_audit
            .iter()
            .map(|d| format!("{}/", d.path.trim_matches('/')))
            .find(|declared| declared.starts_with(&path) || path.starts_with(declared.as_str()))
    }
}

/// A persisted audit device: its config and the uuid of its storage view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditTableEntry {
    pub config: crate::audit::AuditDeviceConfig,
    pub uuid: String,
}

/// Builds the backend serving a mount entry.
fn backend_factory(entry: &MountEntry, tokens: &TokenStore) -> Result<Arc<dyn LogicalBackend>> {
    use crate::auth::{approle::ApproleBackend, userpass::UserpassBackend};
    use crate::secrets::kv::KvBackend;
    use crate::secrets::transit::TransitBackend;
    let backend: Arc<dyn LogicalBackend> = match (entry.table, entry.kind.as_str()) {
        (_, "system") => Arc::new(system::Placeholder),
        (Table::Auth, "token") => Arc::new(tokens.clone()),
        (Table::Auth, "userpass") => Arc::new(UserpassBackend::new()),
        (Table::Auth, "approle") => Arc::new(ApproleBackend::new()),
        (Table::Secret, "kv") => {
            let version = entry
                .options
                .get("version")
                .map(String::as_str)
                .unwrap_or("1");
            // The token store's clock: a standby's mounts read the active node's time too.
            Arc::new(KvBackend::with_clock(
                if version == "2" { 2 } else { 1 },
                tokens.clock(),
            ))
        }
        (Table::Secret, "transit") => Arc::new(TransitBackend::new()),
        (table, kind) => {
            let what = if table == Table::Auth {
                "auth method"
            } else {
                "secrets engine"
            };
            return Err(Error::internal(format!(
                "{what} type {kind:?} in the mount table is not supported by this build"
            )));
        }
    };
    Ok(backend)
}

/// Vault's special-path match: exact, or prefix when the pattern ends in `*`.
fn path_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => pattern == path,
    }
}

fn base64_std(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// JSON for a `KeyStatus`, as Vault shows it.
pub fn key_status_json(status: &crate::barrier::KeyStatus) -> Value {
    json!({
        "term": status.term,
        "install_time": status.install_time.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        "encryptions": status.encryptions,
    })
}
