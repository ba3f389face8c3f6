//! Snapshots to S3 (`snapshots { s3 { ... } }`): what `up` prepares for the snapshot agent
//! (the bucket, the `snapshot-agent` policy and AppRole role, each node's role-id and
//! secret-id files), and `provision snapshot save|list|restore`, which reuse the agent's own
//! code (`keyhold_snapshot`): a save is one agent pass on the active node, a restore
//! downloads through `S3Store::download` (which refuses an object whose checksum does not
//! match) and force-restores the archive on the active node.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_s3::error::DisplayErrorContext;
use keyhold_snapshot::{
    self, AgentConfig, Outcome, S3Settings, S3Store, SnapshotObject, SnapshotRef,
    DEFAULT_NAME_PREFIX,
};
use serde::Serialize;

use crate::deployment::Deployment;
use crate::environment::SnapshotS3;
use crate::render::Layout;

/// How long the cluster may take to serve again after a restore.
pub const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);

/// The agent's `s3` block from the environment's.
pub fn s3_settings(s3: &SnapshotS3) -> S3Settings {
    S3Settings {
        bucket: s3.bucket.clone(),
        prefix: s3.prefix.clone(),
        region: s3.region.clone(),
        endpoint: s3.endpoint.clone(),
        kms_key_id: s3.kms_key_id.clone(),
    }
}

/// The environment's bucket settings, or an error naming what to add.
pub fn env_s3(deployment: &Deployment) -> Result<&SnapshotS3> {
    deployment
        .env
        .snapshots
        .as_ref()
        .and_then(|s| s.s3.as_ref())
        .ok_or_else(|| {
            anyhow!(
                "environment {} stores no snapshots: add snapshots {{ s3 {{ bucket = \"...\" }} }} \
                 to {}",
                deployment.env.name,
                deployment.env.file.display()
            )
        })
}

pub async fn s3_store(s3: &SnapshotS3) -> S3Store {
    S3Store::connect(&s3_settings(s3)).await
}

/// Creates the bucket unless it exists; true when created.
pub async fn ensure_bucket(s3: &SnapshotS3) -> Result<bool> {
    let store = s3_store(s3).await;
    if store.check_bucket().await.is_ok() {
        return Ok(false);
    }
    let mut create = store.client().create_bucket().bucket(&s3.bucket);
    if s3.region != "us-east-1" {
        create = create.create_bucket_configuration(
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                    s3.region.as_str(),
                ))
                .build(),
        );
    }
    create
        .send()
        .await
        .map_err(|e| anyhow!("{}", DisplayErrorContext(&e)))
        .with_context(|| format!("create the snapshot bucket {}", s3.bucket))?;
    Ok(true)
}

/// The agent config rendered for node `index` (0-based), as the agent reads it.
pub fn agent_config(deployment: &Deployment, index: usize) -> Result<AgentConfig> {
    let path = deployment.nodes[index]
        .layout
        .path(Layout::SNAPSHOT_AGENT_CONFIG);
    AgentConfig::load(&path).map_err(|e| {
        anyhow!(
            "{e} (run `provision up --env {}` to write it)",
            deployment.env.name
        )
    })
}

/// What `provision snapshot save` stored.
#[derive(Debug, Serialize)]
pub struct Saved {
    pub node: String,
    pub url: String,
    pub key: String,
    pub size: u64,
    pub sha256: String,
    /// Known when provision ran the pass itself (a local node).
    pub raft_index: Option<u64>,
}

/// One agent pass on the active node: run here with the node's agent config (a local node), or
/// on the host as its timer runs it (`keyhold-snapshot.service`, a systemd host).
pub async fn save(deployment: &Deployment) -> Result<Saved> {
    env_s3(deployment)?;
    let cluster = deployment.cluster()?;
    let active = cluster.wait_active(Duration::from_secs(30)).await?;
    if deployment.nodes[active].layout.systemd {
        return save_on_host(deployment, active).await;
    }
    let config = agent_config(deployment, active)?;
    let report = keyhold_snapshot::run_once(&config)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    match report.outcome {
        Outcome::Uploaded(u) => Ok(Saved {
            node: deployment.nodes[active].name.clone(),
            url: format!("s3://{}/{}", u.bucket, u.key),
            key: u.key,
            size: u.size,
            sha256: u.sha256,
            raft_index: Some(u.index),
        }),
        Outcome::NotActive { address } => {
            bail!("{address} stopped being the active node during the save; run it again")
        }
    }
}

/// `save` on a systemd host: the agent's unit started there (a oneshot: it returns when the
/// pass is over), then the object it stored, as the bucket lists it.
async fn save_on_host(deployment: &Deployment, active: usize) -> Result<Saved> {
    let node = &deployment.nodes[active];
    let before = list(deployment).await?.pop().map(|l| l.key);
    let host = deployment.host(node);
    let out = host
        .run(
            &["systemctl", "start", "keyhold-snapshot.service"],
            RESTORE_TIMEOUT,
        )
        .await?;
    if !out.success() {
        let journal = host
            .run(
                &[
                    "journalctl",
                    "--unit=keyhold-snapshot.service",
                    "--lines=8",
                    "--no-pager",
                    "--output=cat",
                ],
                Duration::from_secs(30),
            )
            .await
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        bail!(
            "the snapshot agent failed on {}: {}; the end of its journal:\n{journal}",
            node.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let newest = list(deployment)
        .await?
        .pop()
        .filter(|l| Some(&l.key) != before.as_ref())
        .with_context(|| {
            format!(
                "the snapshot agent on {} ran but stored no new snapshot (was {} still the \
                 active node?)",
                node.name, node.name
            )
        })?;
    let s3 = env_s3(deployment)?;
    let info = s3_store(s3)
        .await
        .head(&newest.key)
        .await
        .map_err(|e| anyhow!("{e}"))?
        .with_context(|| format!("{} vanished right after it was stored", newest.url))?;
    Ok(Saved {
        node: node.name.clone(),
        url: newest.url,
        key: newest.key,
        size: newest.size,
        sha256: info.sha256.unwrap_or_default(),
        raft_index: None,
    })
}

/// A listed object, for `--json`.
#[derive(Debug, Serialize)]
pub struct Listed {
    pub key: String,
    pub url: String,
    pub size: u64,
    pub time: chrono::DateTime<chrono::Utc>,
}

/// The environment's snapshots, oldest first.
pub async fn list(deployment: &Deployment) -> Result<Vec<Listed>> {
    let s3 = env_s3(deployment)?;
    let objects: Vec<SnapshotObject> = s3_store(s3)
        .await
        .list_snapshots(DEFAULT_NAME_PREFIX)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    Ok(objects
        .into_iter()
        .map(|o| Listed {
            url: format!("s3://{}/{}", s3.bucket, o.key),
            key: o.key,
            size: o.size,
            time: o.time,
        })
        .collect())
}

/// `--from`: `latest` or `s3://BUCKET/KEY` (the environment's bucket).
pub fn parse_from(from: &str, s3: &SnapshotS3) -> Result<SnapshotRef> {
    if from == "latest" {
        return Ok(SnapshotRef::Latest);
    }
    let Some(rest) = from.strip_prefix("s3://") else {
        bail!("--from {from:?}: use `latest` or s3://{}/KEY", s3.bucket);
    };
    match rest.split_once('/') {
        Some((bucket, key)) if bucket == s3.bucket && !key.is_empty() => {
            Ok(SnapshotRef::Key(key.to_string()))
        }
        Some((bucket, _)) if bucket != s3.bucket => bail!(
            "--from {from:?}: this environment's snapshots are in bucket {}, not {bucket}",
            s3.bucket
        ),
        _ => bail!("--from {from:?}: name an object, s3://{}/KEY", s3.bucket),
    }
}

/// What `provision snapshot restore` restored.
#[derive(Debug, Serialize)]
pub struct Restored {
    pub url: String,
    pub size: u64,
    pub sha256: String,
    pub raft_index: u64,
    pub raft_term: u64,
    pub node: String,
}

/// Downloads (verified) and force-restores a snapshot on the active node, then waits until
/// the cluster serves again. Nothing is sent to the cluster unless the download verified.
/// The server's `max_request_size` when the listener sets none (Vault's 32 MiB).
const SERVER_MAX_REQUEST_SIZE: u64 = 32 << 20;

/// Refuses (before anything is touched) an archive of `size` bytes that `what` would post whole
/// to a node's API when it exceeds the listener's `max_request_size`.
pub fn check_postable(d: &Deployment, size: u64, snapshot: &str, what: &str) -> Result<()> {
    let limit = d
        .env
        .listener
        .max_request_size
        .unwrap_or(SERVER_MAX_REQUEST_SIZE);
    if size > limit {
        bail!(
            "refusing {what} from {snapshot}: the snapshot is {size} bytes and {what} posts it \
             whole to a node's API, whose max_request_size is {limit} bytes; set `listener {{ \
             max_request_size = N }}` above {size} in the environment and get it into every \
             node's config (`provision up` on the local provider, `provision render` for \
             hosts), or use a smaller snapshot; nothing was changed"
        );
    }
    Ok(())
}

pub async fn restore(deployment: &Deployment, from: &str, admin_token: &str) -> Result<Restored> {
    let s3 = env_s3(deployment)?;
    let which = parse_from(from, s3)?;
    let store = s3_store(s3).await;
    let dest: PathBuf = deployment.dir.root().join("restore.snap");
    let downloaded = store
        .download(DEFAULT_NAME_PREFIX, &which, &dest)
        .await
        .map_err(|e| anyhow!("refusing to restore: {e}; the cluster was not changed"))?;
    let archive = std::fs::read(&downloaded.path)
        .with_context(|| format!("read {}", downloaded.path.display()));
    let _ = std::fs::remove_file(&downloaded.path);
    let archive = archive?;
    check_postable(
        deployment,
        archive.len() as u64,
        &store.url(&downloaded.key),
        "the restore",
    )?;
    let cluster = deployment.cluster()?;
    let active = cluster.wait_active(Duration::from_secs(30)).await?;
    let client = cluster.client(active, Some(admin_token))?;
    client
        .raft_snapshot_restore(archive, true)
        .await
        .with_context(|| {
            format!(
                "restore {} on {}",
                store.url(&downloaded.key),
                deployment.nodes[active].name
            )
        })?;
    let serving = cluster.wait_active(RESTORE_TIMEOUT).await?;
    cluster.wait_serving(serving, RESTORE_TIMEOUT).await?;
    Ok(Restored {
        url: store.url(&downloaded.key),
        size: downloaded.size,
        sha256: downloaded.sha256,
        raft_index: downloaded.meta.index,
        raft_term: downloaded.meta.term,
        node: deployment.nodes[active].name.clone(),
    })
}
