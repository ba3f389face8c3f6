//! `keyhold server`: load config, open storage, build the core, serve HTTP
//! until SIGINT/SIGTERM; SIGHUP reloads TLS certificates and the client CA,
//! applies the stored cluster TLS keyring, reloads the config file's
//! `log_level`, and reopens audit files.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{LogFormat, ServerConfig, StorageConfig};
use crate::core::{Core, CoreConfig, InitRequest};
use crate::http::{router, serve_listener, JsonLimits, ListenerSettings};
use crate::physical::Backend;

/// Arguments of `keyhold server`, parsed by `cli`.
#[derive(Debug, Clone, Default)]
pub struct ServerArgs {
    /// `-config=FILE|DIR`, repeatable.
    pub config: Vec<PathBuf>,
    /// `-dev`: in-memory, TLS off, initialised and unsealed at start.
    pub dev: bool,
    /// `-dev-root-token-id`.
    pub dev_root_token_id: Option<String>,
    /// `-dev-listen-address` (default 127.0.0.1:8200).
    pub dev_listen_address: Option<String>,
    /// `-check`: validate the config and exit.
    pub check: bool,
    /// `-log-level`, overriding the config file.
    pub log_level: Option<String>,
}

/// How long in-flight requests get to finish on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Loads and checks the configuration the way `server` would use it.
pub fn load_config(args: &ServerArgs) -> anyhow::Result<ServerConfig> {
    let config = if args.dev {
        ServerConfig::dev(
            args.dev_listen_address
                .as_deref()
                .unwrap_or("127.0.0.1:8200"),
        )
    } else {
        if args.config.is_empty() {
            bail!("no configuration given: pass -config=FILE (repeatable, or a directory), or -dev for a throw-away in-memory server");
        }
        ServerConfig::load(&args.config)?
    };
    config.validate()?;
    for device in &config.audit {
        crate::audit::validate_options(&device.device_type, &device.options).map_err(|e| {
            anyhow::anyhow!(
                "{}: audit {:?} {:?}: {e}",
                device.location,
                device.device_type,
                device.name
            )
        })?;
    }
    let unsupported = config.unsupported();
    if !unsupported.is_empty() {
        let lines: Vec<String> = unsupported.iter().map(|e| format!("  {e}")).collect();
        bail!(
            "the configuration uses features this build cannot run yet:\n{}",
            lines.join("\n")
        );
    }
    Ok(config)
}

/// Runs the server until it is told to stop. `Ok(())` is a clean shutdown.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    if args.check {
        // Load what the listeners would load: files that exist but do not parse, or a
        // certificate and key that do not belong together, fail here and not at start.
        for listener in config.listeners.iter().filter(|l| !l.tls_disable) {
            crate::http::tls_server_config(listener).with_context(|| {
                format!(
                    "{}: listener \"tcp\" on {}",
                    listener.location, listener.address
                )
            })?;
        }
        println!("Configuration is valid.");
        return Ok(());
    }
    let log_level = init_logging(&config, args.log_level.as_deref())?;

    if config.ui {
        tracing::warn!(
            "ui = true: keyhold has no web UI; /ui is not served (the API and CLI are unaffected)"
        );
    }
    if !config.disable_mlock {
        crate::memlock::lock_memory().context("lock memory (mlockall)")?;
    }
    crate::memlock::restrict_new_file_modes();
    if let Some(pid_file) = &config.pid_file {
        std::fs::write(pid_file, format!("{}\n", std::process::id()))
            .with_context(|| format!("write pid_file {}", pid_file.display()))?;
    }

    let telemetry = crate::metrics::Telemetry::install(&config.telemetry);
    let seals = crate::seal::SealSetup::from_config(&config.seal, config.old_seal.as_ref())
        .await
        .with_context(|| format!("set up seal \"{}\"", config.seal.kind()))?;
    let core_config = |storage_type: &str, ha_enabled: bool| CoreConfig {
        default_lease_ttl: config.default_lease_ttl,
        max_lease_ttl: config.max_lease_ttl,
        cluster_name: config.cluster_name.clone(),
        storage_type: storage_type.into(),
        api_addr: config.api_addr.clone(),
        cluster_addr: config.cluster_addr.clone(),
        ha_enabled,
        prometheus_enabled: !config.telemetry.prometheus_retention_time.is_zero(),
        usage_gauge_period: config.telemetry.usage_gauge_interval(),
        audit_write_timeout: Duration::from_secs(5),
        standby_reads: !config.disable_standby_reads,
        standby_read_max_staleness: config.standby_read_max_staleness,
        index_wait: config
            .standby_read_index_wait
            .unwrap_or(Duration::from_secs(2)),
        seals: seals.clone(),
        user_lockout: config
            .user_lockout
            .iter()
            .map(|l| {
                (
                    l.auth_type.clone(),
                    crate::core::lockout::LockoutTune {
                        lockout_threshold: l.lockout_threshold,
                        lockout_duration: l.lockout_duration.map(|d| d.as_secs()),
                        lockout_counter_reset: l.lockout_counter_reset.map(|d| d.as_secs()),
                        lockout_disable: l.disable_lockout,
                    },
                )
            })
            .collect(),
        config_audit: config
            .audit
            .iter()
            .map(|d| crate::audit::AuditDeviceConfig {
                path: format!("{}/", d.name.trim_matches('/')),
                r#type: d.device_type.clone(),
                description: d.description.clone(),
                options: d.options.clone(),
                local: d.local,
            })
            .collect(),
        config_source: args
            .config
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    };
    let (core, storage_type) = match &config.storage {
        StorageConfig::Inmem => {
            let physical: Arc<dyn Backend> = Arc::new(crate::physical::inmem::InmemBackend::new());
            (
                Core::new(core_config("inmem", false), physical, telemetry),
                "inmem",
            )
        }
        StorageConfig::Raft(raft) => {
            create_private_dir(&raft.path)?;
            restrict_existing_modes(&raft.path)?;
            // Checked before anything is served: a store damaged while the server was stopped
            // can hold less than it acknowledged, and sled opens it without a word.
            let cache =
                crate::physical::sled_store::cache_bytes(config.cache_size, config.disable_cache);
            let store = Arc::new(crate::raft::integrity::open_checked(&raft.path, cache)?);
            let ha = crate::core::ha::Ha::new(ha_settings(&config, raft)?, store);
            (
                Core::new_ha(core_config("raft", true), ha, telemetry),
                "raft",
            )
        }
    };
    core.set_cluster_routes(crate::http::cluster_routes(core.clone()));
    core.start_auto_unseal();
    if let Some(ha) = &core.ha {
        if !ha.settings.retry_join.is_empty() {
            tokio::spawn(core.clone().retry_join(ha.settings.retry_join.clone()));
        }
    }

    // `-dev` is initialised, unsealed and holds its root token before it serves anything, so
    // no client ever sees it half-ready (sealed, or standby while its services are built).
    if args.dev {
        dev_bootstrap(&core, &config, args.dev_root_token_id.as_deref()).await?;
    }

    let mut listeners = Vec::new();
    let mut tasks = Vec::new();
    for listener in &config.listeners {
        let settings = ListenerSettings {
            max_request_size: listener.max_request_size,
            max_request_duration: listener.max_request_duration,
            unauthenticated_metrics_access: listener.telemetry.unauthenticated_metrics_access,
            join_needs_client_cert: !listener.tls_disable
                && !listener.tls_disable_client_certs
                && listener.tls_client_ca_file.is_some(),
            json_limits: JsonLimits {
                max_depth: usize::try_from(listener.max_json_depth).unwrap_or(usize::MAX),
                max_string_value_length: usize::try_from(listener.max_json_string_value_length)
                    .unwrap_or(usize::MAX),
                max_object_entry_count: usize::try_from(listener.max_json_object_entry_count)
                    .unwrap_or(usize::MAX),
                max_array_element_count: usize::try_from(listener.max_json_array_element_count)
                    .unwrap_or(usize::MAX),
            },
        };
        let (handle, task) = serve_listener(listener, router(core.clone(), settings)).await?;
        tracing::info!(address = %handle.address, tls = !listener.tls_disable, "listening");
        listeners.push(handle);
        tasks.push(task);
    }

    tracing::info!(
        version = crate::VERSION,
        storage = storage_type,
        "keyhold server started"
    );

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading TLS certificates, the cluster TLS keyring and the log level, reopening audit files");
                reload_log_level(&args, log_level.as_ref());
                for l in &listeners {
                    l.reload_tls();
                }
                core.follow_cluster_tls().await;
                core.reopen_audit_files().await;
            }
        }
    }
    tracing::info!("shutting down");
    for l in &listeners {
        l.shutdown(SHUTDOWN_GRACE);
    }
    for task in tasks {
        let _ = tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), task).await;
    }
    core.shutdown().await;
    if let Some(pid_file) = &config.pid_file {
        let _ = std::fs::remove_file(pid_file);
    }
    tracing::info!("shutdown complete");
    Ok(())
}

/// The HA layer's settings from the config (`storage "raft"` and addresses).
fn ha_settings(
    config: &ServerConfig,
    raft: &crate::config::RaftStorageConfig,
) -> anyhow::Result<crate::core::ha::HaSettings> {
    let node_name = match &raft.node_id {
        Some(id) => id.clone(),
        None => std::env::var("VAULT_RAFT_NODE_ID")
            .ok()
            .filter(|s| !s.is_empty())
            .context("storage \"raft\" needs node_id (or VAULT_RAFT_NODE_ID)")?,
    };
    let cluster_addr = config
        .cluster_addr
        .clone()
        .context("storage \"raft\" needs cluster_addr, e.g. https://10.0.0.1:8201")?;
    let cluster_hostport = cluster_addr
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let read = |what: &str,
                inline: &Option<String>,
                file: &Option<PathBuf>|
     -> anyhow::Result<Option<String>> {
        match (inline, file) {
            (Some(pem), _) => Ok(Some(pem.clone())),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(Some)
                .with_context(|| format!("read retry_join {what} {}", path.display())),
            (None, None) => Ok(None),
        }
    };
    let mut retry_join = Vec::new();
    for join in &raft.retry_join {
        let Some(leader) = &join.leader_api_addr else {
            continue;
        };
        retry_join.push(crate::core::ha::JoinTarget {
            leader_api_addr: leader.clone(),
            ca_cert_pem: read(
                "leader_ca_cert_file",
                &join.leader_ca_cert,
                &join.leader_ca_cert_file,
            )?,
            client_cert_pem: read(
                "leader_client_cert_file",
                &join.leader_client_cert,
                &join.leader_client_cert_file,
            )?,
            client_key_pem: read(
                "leader_client_key_file",
                &join.leader_client_key,
                &join.leader_client_key_file,
            )?
            .map(zeroize::Zeroizing::new),
            tls_server_name: join.leader_tls_servername.clone(),
            non_voter: false,
        });
    }
    Ok(crate::core::ha::HaSettings {
        node_name,
        api_addr: config.api_addr.clone().unwrap_or_default(),
        cluster_addr: cluster_hostport,
        performance_multiplier: raft.performance_multiplier,
        snapshot_threshold: raft.snapshot_threshold,
        trailing_logs: raft.trailing_logs,
        max_entry_size: raft.max_entry_size as usize,
        retry_join,
        autopilot_reconcile_interval: raft.autopilot_reconcile_interval,
        autopilot_update_interval: raft.autopilot_update_interval,
    })
}

/// `keyhold operator raft snapshot restore -offline`: seeds an empty data
/// directory from a snapshot archive, with no server running. The node then
/// starts sealed, unseals with the keys of the cluster that took the
/// snapshot, and forms a one-node cluster that others join.
pub async fn restore_offline(config: &[PathBuf], archive_bytes: &[u8]) -> anyhow::Result<String> {
    let config = ServerConfig::load(config)?;
    config.validate_semantics()?;
    let StorageConfig::Raft(raft) = &config.storage else {
        bail!("offline restore needs storage \"raft\"; the config uses inmem storage");
    };
    let archive = crate::client::snapshot::archive::read(archive_bytes)?;
    let entries = archive.entries()?;
    let required = crate::client::snapshot::archive::REQUIRED_KEYS;
    if let Some(required) = required
        .iter()
        .find(|r| !entries.iter().any(|(k, _)| k == *r))
    {
        bail!("the snapshot has no {required}: it is not a snapshot of an initialised cluster");
    }
    create_private_dir(&raft.path)?;
    let store = crate::physical::sled_store::SledStore::open(&raft.path)?;
    if !store.export()?.is_empty() || store.open_raw_tree_len("raft_log")? > 0 {
        bail!(
            "the data directory {} already holds data; offline restore only seeds an empty directory (move the old one away first)",
            raft.path.display()
        );
    }
    let keys = entries.len();
    store.replace_all(entries).await?;
    Ok(format!(
        "Restored snapshot {} (index {}, {keys} keys) into {}.\n\
         Start the server and unseal it with the keys of the cluster that took the snapshot: it starts\n\
         as a one-node cluster, and the other nodes join it with retry_join.",
        archive.meta.id,
        archive.meta.index,
        raft.path.display()
    ))
}

fn create_private_dir(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !path.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .with_context(|| format!("create storage directory {}", path.display()))?;
    }
    Ok(())
}

/// Owner-only modes on the storage directory and what is already in it (files 0600, directories
/// 0700): a data directory made by an older build, or by hand, may be world-readable. Bounded
/// in depth; symlinks are not followed.
fn restrict_existing_modes(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fn walk(path: &std::path::Path, depth: u32) -> std::io::Result<()> {
        let meta = std::fs::symlink_metadata(path)?;
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        let mode = if meta.is_dir() { 0o700 } else { 0o600 };
        if meta.permissions().mode() & 0o777 != mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
        if meta.is_dir() && depth < 8 {
            for entry in std::fs::read_dir(path)? {
                walk(&entry?.path(), depth + 1)?;
            }
        }
        Ok(())
    }
    walk(path, 0).with_context(|| {
        format!(
            "make the storage directory {} private to this user (0700, files 0600)",
            path.display()
        )
    })
}

fn init_logging(
    config: &ServerConfig,
    override_level: Option<&str>,
) -> anyhow::Result<Option<crate::logging::LevelReload>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, reload, Layer, Registry};
    let level = override_level.unwrap_or(&config.log_level);
    let filter = crate::logging::level_filter(level).map_err(anyhow::Error::msg)?;
    let (filter, handle) = reload::Layer::new(filter);
    type Output = Box<
        dyn Layer<
                tracing_subscriber::layer::Layered<
                    reload::Layer<tracing_subscriber::EnvFilter, Registry>,
                    Registry,
                >,
            > + Send
            + Sync,
    >;
    let output: Output = match (&config.log_file, config.log_format) {
        (Some(path), format) => {
            let policy = crate::logging::RotationPolicy {
                every: config.log_rotate_duration,
                max_bytes: config.log_rotate_bytes,
                max_files: config.log_rotate_max_files,
            };
            let file = crate::logging::RotatingFile::open(path, policy)
                .with_context(|| format!("open log_file {}", path.display()))?;
            let writer = crate::logging::SharedLog(std::sync::Mutex::new(file));
            let layer = fmt::layer()
                .with_target(false)
                .with_ansi(false)
                .with_writer(writer);
            match format {
                LogFormat::Json => layer.json().boxed(),
                LogFormat::Standard => layer.boxed(),
            }
        }
        (None, LogFormat::Json) => fmt::layer()
            .with_target(false)
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
        (None, LogFormat::Standard) => fmt::layer()
            .with_target(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    match tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
    {
        Ok(()) => Ok(Some(crate::logging::LevelReload::new(handle))),
        // Already initialised (tests running servers in-process).
        Err(_) => Ok(None),
    }
}

/// SIGHUP: the config file's `log_level`, if it sets one, becomes the level
/// (it wins over `-log-level`, as in Vault). A config that no longer loads
/// leaves the level as it was and says why.
fn reload_log_level(args: &ServerArgs, reload: Option<&crate::logging::LevelReload>) {
    let Some(reload) = reload else { return };
    if args.dev {
        return;
    }
    let config = match load_config(args) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("SIGHUP: the config no longer loads, log level unchanged: {e:#}");
            return;
        }
    };
    if !config.keys.contains_key("log_level") {
        return;
    }
    match reload.set(&config.log_level) {
        Ok(()) => {
            tracing::warn!(level = %config.log_level, "SIGHUP: log level set from the config file")
        }
        Err(e) => tracing::error!("SIGHUP: {e}"),
    }
}

/// `-dev`: initialise with one share, unseal, mount KV v2 at `secret/`.
async fn dev_bootstrap(
    core: &Arc<Core>,
    config: &ServerConfig,
    root_token_id: Option<&str>,
) -> anyhow::Result<()> {
    let init = core
        .init(InitRequest {
            secret_shares: 1,
            secret_threshold: 1,
            ..Default::default()
        })
        .await?;
    let key = init
        .keys_base64
        .first()
        .cloned()
        .context("init returned no key")?;
    core.unseal(Some(&key), false, false).await?;
    let unsealed = core.unsealed()?;
    let root = match root_token_id {
        Some(id) => {
            let token = unsealed
                .tokens
                .create_root(Some(id.to_string()))
                .await?
                .id
                .clone();
            unsealed.tokens.revoke(&init.root_token).await?;
            token
        }
        None => init.root_token.clone(),
    };
    let mount = crate::logical::Request::new(crate::logical::Operation::Update, "sys/mounts/secret")
        .with_token(root.clone())
        .with_data(serde_json::json!({"type": "kv", "options": {"version": "2"}, "description": "key/value secret storage"}));
    core.handle_request(mount).await?;
    let addr = config
        .listeners
        .first()
        .map(|l| l.address.clone())
        .unwrap_or_default();
    println!(
        "WARNING! dev mode is enabled! In this mode, keyhold runs entirely in-memory\n\
         and starts unsealed with a single unseal key. Never use it in production.\n\n\
         You may need to set the following environment variables:\n\n    \
         $ export VAULT_ADDR='http://{addr}'\n    $ export VAULT_TOKEN='{root}'\n\n\
         The unseal key and root token are displayed below in case you want to\n\
         seal/unseal or re-authenticate.\n\nUnseal Key: {key}\nRoot Token: {root}\n"
    );
    Ok(())
}
