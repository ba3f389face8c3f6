//! The snapshot agent (`keyhold snapshot-agent`): takes the cluster's Raft snapshot on the
//! active node, stores it in S3, and prunes old ones. Every node runs it on a timer; only the
//! active node's run does anything.
//!
//! One pass ([`run_once`]): ask the node (`sys/health`) whether it is active (a standby says so
//! and is done; a sealed or unreachable node is an error), log in (token file, `VAULT_TOKEN` or
//! AppRole), check the bucket, stream `sys/storage/raft/snapshot` into a 0600 file in
//! `staging_dir` while hashing it, check the archive, upload and verify it
//! ([`S3Store::upload_verified`]: a failed upload leaves no object), then delete what the
//! retention policy lets go. The staged file is removed whatever happens.
//!
//! With a `metrics { textfile }` block, every pass writes `keyhold_snapshot_*` to that
//! node_exporter textfile ([`textfile`]), failed or not.
//!
//! [`S3Store`] (with [`S3Store::list_snapshots`] and [`S3Store::download`]) is what
//! `provision snapshot ...` reuses.

mod config;
mod error;
pub mod naming;
mod retention;
mod schedule;
mod store;
pub mod textfile;

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use keyhold_client::{Client, ClientError, HealthQuery};

pub use config::{
    AgentConfig, AppRoleSettings, MetricsSettings, NodeSettings, S3Settings, SnapshotSettings,
    DEFAULT_APPROLE_MOUNT, DEFAULT_NAME_PREFIX,
};
pub use error::AgentError;
pub use naming::SnapshotObject;
pub use retention::Retention;
pub use schedule::Schedule;
pub use store::{
    behavior_version, Archive, Downloaded, ObjectInfo, S3Store, SnapshotRef, Verification,
    SHA256_METADATA,
};

/// What one pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    pub outcome: Outcome,
    /// From the first request to the end of pruning.
    pub duration: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The node is a standby: nothing was done.
    NotActive {
        address: String,
    },
    Uploaded(Upload),
}

/// A snapshot stored by a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    /// Hex SHA-256 of the archive, as stored in the object's metadata.
    pub sha256: String,
    /// The Raft index the snapshot was taken at.
    pub index: u64,
    pub verification: Verification,
    /// Keys deleted by the retention policy.
    pub pruned: Vec<String>,
}

impl fmt::Display for RunReport {
    /// The one line a pass logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let duration = format!("{:.2?}", self.duration);
        match &self.outcome {
            Outcome::NotActive { address } => write!(
                f,
                "not the active node ({address} is a standby): no snapshot taken, only the \
                 active node takes them; duration={duration}"
            ),
            Outcome::Uploaded(u) => write!(
                f,
                "snapshot stored: key={} bucket={} size={} sha256={} raft_index={} \
                 duration={duration} verified_by={} pruned={}",
                u.key,
                u.bucket,
                u.size,
                u.sha256,
                u.index,
                u.verification,
                u.pruned.len()
            ),
        }
    }
}

/// One pass, as described in the module documentation, and its metrics written.
pub async fn run_once(config: &AgentConfig) -> Result<RunReport, AgentError> {
    let result = pass(config).await;
    if let Some(metrics) = &config.metrics {
        if let Err(e) = record_pass(metrics, &result) {
            tracing::warn!(
                textfile = %metrics.textfile.display(),
                error = %e,
                "could not write the snapshot agent's metrics textfile"
            );
        }
    }
    result
}

/// `keyhold_snapshot_*` for one pass; the last success time and size survive a failure.
fn record_pass(
    metrics: &MetricsSettings,
    result: &Result<RunReport, AgentError>,
) -> std::io::Result<()> {
    let path = &metrics.textfile;
    let now = chrono::Utc::now().timestamp() as f64;
    let previous = |name: &str| textfile::read_value(path, name);
    let mut success = previous("keyhold_snapshot_last_success_timestamp_seconds");
    let mut failure = previous("keyhold_snapshot_last_failure_timestamp_seconds");
    let mut size = previous("keyhold_snapshot_last_size_bytes");
    let ok = match result {
        Ok(RunReport {
            outcome: Outcome::Uploaded(upload),
            ..
        }) => {
            success = Some(now);
            size = Some(upload.size as f64);
            true
        }
        Ok(_) => true,
        Err(_) => {
            failure = Some(now);
            false
        }
    };
    let mut samples = vec![
        ("keyhold_snapshot_last_run_timestamp_seconds", now),
        ("keyhold_snapshot_last_result", if ok { 1.0 } else { 0.0 }),
    ];
    for (name, value) in [
        ("keyhold_snapshot_last_success_timestamp_seconds", success),
        ("keyhold_snapshot_last_failure_timestamp_seconds", failure),
        ("keyhold_snapshot_last_size_bytes", size),
    ] {
        if let Some(value) = value {
            samples.push((name, value));
        }
    }
    textfile::write(path, &metrics.cluster, textfile::SNAPSHOT_METRICS, &samples)
}

async fn pass(config: &AgentConfig) -> Result<RunReport, AgentError> {
    let started = Instant::now();
    let address = &config.keyhold.address;
    let mut client = Client::new(&config.client_config())
        .map_err(|e| AgentError::Config(local_config_error(config, e)))?;

    let health = client
        .health(&HealthQuery::default())
        .await
        .map_err(|e| node_error(config, "ask the node whether it is active (sys/health)", e))?;
    if !health.initialized {
        return Err(AgentError::Node(format!(
            "{address} is not initialised: initialise the cluster first; there is nothing to \
             snapshot"
        )));
    }
    if health.sealed {
        return Err(AgentError::Node(format!(
            "{address} is sealed: unseal it (keyhold operator unseal), and the next run takes \
             the snapshot"
        )));
    }
    if health.standby || health.performance_standby {
        return Ok(RunReport {
            outcome: Outcome::NotActive {
                address: address.clone(),
            },
            duration: started.elapsed(),
        });
    }

    let login = login(config, &client).await?;
    client.set_token(Some(login.token.clone()));
    let result = snapshot_and_store(config, &client, started).await;
    if login.revoke {
        // The AppRole token is of no use after this pass; it would only wait out its TTL.
        let _ = client
            .request(keyhold_client::Method::Put, "auth/token/revoke-self", None)
            .await;
    }
    result
}

async fn snapshot_and_store(
    config: &AgentConfig,
    client: &Client,
    started: Instant,
) -> Result<RunReport, AgentError> {
    let store = S3Store::connect(&config.s3).await;
    store.check_bucket().await?;

    let settings = &config.snapshot;
    let staged = stage(config, client, &settings.staging_dir).await?;
    let key = naming::new_object_key(&config.s3.prefix, &settings.name_prefix);
    let verification = store.upload_verified(&key, &staged.archive).await?;
    let Staged {
        archive,
        index,
        file,
    } = staged;
    drop(file);

    let pruned = prune(&store, settings, &key).await.map_err(|e| {
        AgentError::S3(format!(
            "the snapshot was stored as {}, but pruning old snapshots failed: {e}",
            store.url(&key)
        ))
    })?;
    Ok(RunReport {
        outcome: Outcome::Uploaded(Upload {
            bucket: config.s3.bucket.clone(),
            key,
            size: archive.size,
            sha256: archive.sha256_hex(),
            index,
            verification,
            pruned,
        }),
        duration: started.elapsed(),
    })
}

/// Deletes the snapshots the retention policy lets go (never `keep`); returns their keys.
async fn prune(
    store: &S3Store,
    settings: &SnapshotSettings,
    keep: &str,
) -> Result<Vec<String>, AgentError> {
    let policy = settings.retention;
    if policy == Retention::default() {
        return Ok(Vec::new());
    }
    let snapshots = store.list_snapshots(&settings.name_prefix).await?;
    let expired = policy.expired(&snapshots, chrono::Utc::now(), keep);
    store.delete(&expired).await?;
    Ok(expired)
}

/// The snapshot in `staging_dir`: removed from disk when dropped.
struct Staged {
    archive: Archive,
    /// The Raft index in the archive's `meta.json`.
    index: u64,
    file: tempfile::NamedTempFile,
}

/// Streams the node's snapshot into a new 0600 file in `dir`, hashing it, and checks it is a
/// complete archive.
async fn stage(config: &AgentConfig, client: &Client, dir: &Path) -> Result<Staged, AgentError> {
    if !dir.is_dir() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                AgentError::io(format!("create snapshot.staging_dir {}", dir.display()), e)
            })?;
    }
    let file = tempfile::Builder::new()
        .prefix(".keyhold-snapshot-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| {
            AgentError::io(
                format!("create a file in snapshot.staging_dir {}", dir.display()),
                e,
            )
        })?;
    let mut sink = HashingWriter {
        inner: file
            .as_file()
            .try_clone()
            .map_err(|e| AgentError::io(format!("open {}", file.path().display()), e))?,
        hasher: Sha256::new(),
    };
    let size = client
        .raft_snapshot_save(&mut sink)
        .await
        .map_err(|e| match e {
            ClientError::Sink(cause) => AgentError::Io {
                context: format!("write the snapshot into {}", dir.display()),
                source: std::io::Error::other(cause),
            },
            other => node_error(
                config,
                "download the snapshot (sys/storage/raft/snapshot)",
                other,
            ),
        })?;
    let sha256: [u8; 32] = sink.hasher.finalize().into();
    let reader = file
        .reopen()
        .map_err(|e| AgentError::io(format!("read back {}", file.path().display()), e))?;
    let meta = store::check_archive(reader)
        .await
        .map_err(AgentError::Archive)?;
    Ok(Staged {
        archive: Archive {
            path: file.path().to_path_buf(),
            size,
            sha256,
        },
        index: meta.index,
        file,
    })
}

struct HashingWriter {
    inner: std::fs::File,
    hasher: Sha256,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A token, and whether this pass made it (and should revoke it).
struct Login {
    token: String,
    revoke: bool,
}

/// Logs in as the config says: AppRole, else `keyhold.token_file`, else `VAULT_TOKEN`.
async fn login(config: &AgentConfig, client: &Client) -> Result<Login, AgentError> {
    if let Some(approle) = &config.approle {
        let role_id = read_secret_file(&approle.role_id_file, "approle.role_id_file")?;
        let secret_id = read_secret_file(&approle.secret_id_file, "approle.secret_id_file")?;
        let path = format!("auth/{}/login", approle.mount);
        let body = serde_json::json!({ "role_id": role_id, "secret_id": secret_id });
        let mut anonymous = client.clone();
        anonymous.set_token(None);
        let secret = anonymous.write(&path, &body).await.map_err(|e| {
            let hint = match e.status() {
                Some(400 | 403) => {
                    "the role ID or secret ID was refused (expired, used up, or for another role): \
                     issue a new secret ID and write it to approle.secret_id_file"
                }
                Some(404) => "no AppRole auth method at that mount: check approle.mount",
                _ => "",
            };
            AgentError::Node(format!("log in with AppRole at {path} failed: {hint}\n{e}"))
        })?;
        let token = secret
            .and_then(|s| s.auth)
            .map(|a| a.client_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                AgentError::Node(format!(
                    "log in with AppRole at {path}: the answer has no token"
                ))
            })?;
        return Ok(Login {
            token,
            revoke: true,
        });
    }
    if let Some(file) = &config.keyhold.token_file {
        let token = read_secret_file(file, "keyhold.token_file")?;
        return Ok(Login {
            token,
            revoke: false,
        });
    }
    match std::env::var("VAULT_TOKEN") {
        Ok(token) if !token.trim().is_empty() => Ok(Login {
            token: token.trim().to_string(),
            revoke: false,
        }),
        _ => Err(AgentError::Credentials(
            "no token to log in with: set keyhold.token_file or an approle block in the agent's \
             config, or VAULT_TOKEN in its environment"
                .into(),
        )),
    }
}

/// The trimmed content of a file holding a credential; never shown in errors.
fn read_secret_file(path: &Path, key: &str) -> Result<String, AgentError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        AgentError::Credentials(format!("cannot read {key} {}: {e}", path.display()))
    })?;
    let value = text.trim();
    if value.is_empty() {
        return Err(AgentError::Credentials(format!(
            "{key} {} is empty",
            path.display()
        )));
    }
    Ok(value.to_string())
}

/// A failed request to the node, with what to check.
fn node_error(config: &AgentConfig, what: &str, e: ClientError) -> AgentError {
    let address = &config.keyhold.address;
    let hint = match &e {
        ClientError::Transport { cause, .. } => {
            return AgentError::Node(format!(
                "{what}: cannot reach keyhold at {address} ({cause}); is the server running? \
                 Check keyhold.address and keyhold.ca_cert"
            ))
        }
        ClientError::Api(api) if api.status == 403 => {
            "permission denied: the token needs the read capability on \
             sys/storage/raft/snapshot"
        }
        ClientError::IncompleteSnapshot => "the node stopped midway; try again",
        _ => "",
    };
    AgentError::Node(format!("{what} on {address} failed: {hint}\n{e}"))
}

/// A client config the client refuses (a CA file that does not parse...) as a config error.
fn local_config_error(config: &AgentConfig, e: ClientError) -> keyhold_config::ConfigError {
    keyhold_config::ConfigError::new(
        keyhold_config::Location::file(&config.file),
        "keyhold",
        format!("keyhold: {e}"),
    )
}
