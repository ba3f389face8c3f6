//! `provision dr rebuild`: the environment's cluster rebuilt from an S3 snapshot after every
//! node was lost, with no init-then-restore dance. Before anything is touched the snapshot must
//! pass a restore drill (it downloads whole, and it unseals with what the environment has: its
//! encrypted shares, or its KMS/transit key); then every node is stopped, whatever data it had
//! is moved aside (never deleted), the snapshot is restored offline into the first node, which
//! is started and unsealed, and the others join it through `retry_join` and are unsealed. The
//! rebuilt cluster is checked (every node a voter, the admin login of the snapshot, and
//! everything the snapshot's inventory lists: `inventory::verify`, with a root token generated
//! from the shares and revoked afterwards), the snapshot agents are started again, and the time
//! from the start to serving (RTO) and the snapshot's age (RPO) are reported.
//!
//! The same command serves both losses: every node gone, or quorum lost with some node's data
//! left. Every data directory is kept aside either way (a survivor's may hold writes newer than
//! the snapshot; its path is in the report).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::Utc;
use keyhold_snapshot::DEFAULT_NAME_PREFIX;
use serde::Serialize;

use crate::deployment::{
    Deployment, AUTO_UNSEAL_TIMEOUT, FORM_TIMEOUT, START_TIMEOUT, STOP_TIMEOUT,
};
use crate::engine::{Outcome, Progress};
use crate::providers::Service;
use crate::render::Layout;
use crate::state::State;
use crate::workflows::drill::{restore_offline, run_drill};
use crate::workflows::inventory::{self, Inventory, Verified};
use crate::workflows::snapshot::{env_s3, parse_from, s3_store};

/// The server's `max_request_size` when the listener sets none (Vault's 32 MiB).
const SERVER_MAX_REQUEST_SIZE: u64 = 32 << 20;

/// What `dr rebuild` reports.
#[derive(Debug, Clone, Serialize)]
pub struct DrReport {
    pub snapshot: String,
    pub raft_index: u64,
    /// From the start of the rebuild until the cluster served with every node a voter.
    pub rto_seconds: f64,
    /// How old the snapshot was when the rebuild started (what was lost at most).
    pub rpo_seconds: Option<f64>,
    /// Where each node's previous data went (kept, never deleted).
    pub moved_aside: Vec<PathBuf>,
    /// What the rebuilt cluster was found to serve of the snapshot's inventory.
    pub verified: Verified,
}

pub async fn rebuild(
    d: &Deployment,
    from: &str,
    identity: &[PathBuf],
    progress: &mut Progress,
) -> Result<DrReport> {
    let started = Instant::now();
    let s3 = env_s3(d)?;

    let step = progress.start("verify the snapshot");
    let drill = run_drill(d, from, identity).await?;
    if !drill.ok {
        progress.finish(step, Outcome::Failed, drill.detail.clone());
        bail!(
            "refusing to rebuild from {}: {}; nothing was changed",
            drill.snapshot,
            drill.detail
        );
    }
    progress.finish(
        step,
        Outcome::Ok,
        format!("{}: {}", drill.snapshot, drill.detail),
    );
    let rpo_seconds = drill
        .snapshot_time
        .map(|t| (Utc::now() - t).num_milliseconds() as f64 / 1000.0);

    // The object the drill verified, by its exact key (`latest` may have moved on), fetched
    // before anything is touched.
    let which = parse_from(&drill.snapshot, s3)?;
    let store = s3_store(s3).await;
    let file = d.dir.root().join("dr.snap");
    let downloaded = store
        .download(DEFAULT_NAME_PREFIX, &which, &file)
        .await
        .map_err(|e| anyhow::anyhow!("download {}: {e}; nothing was changed", drill.snapshot))?;
    // The rebuild replicates the archive by posting it whole to the first node's API.
    let size = std::fs::metadata(&downloaded.path)
        .with_context(|| format!("read {}", downloaded.path.display()))?
        .len();
    let limit = d
        .env
        .listener
        .max_request_size
        .unwrap_or(SERVER_MAX_REQUEST_SIZE);
    if size > limit {
        let _ = std::fs::remove_file(&downloaded.path);
        bail!(
            "refusing to rebuild from {}: the snapshot is {size} bytes and the rebuild posts it \
             whole to a node's API, whose max_request_size is {limit} bytes; set `listener {{ \
             max_request_size = N }}` above {size} in the environment and get it into every \
             node's config (`provision render` for hosts; on the local provider the node \
             directories under the state directory), or rebuild from a smaller snapshot; \
             nothing was changed",
            drill.snapshot
        );
    }

    let step = progress.start("stop nodes");
    for node in &d.nodes {
        let host = d.host(node);
        if d.env.snapshots.as_ref().is_some_and(|s| s.s3.is_some()) {
            host.stop(Service::SnapshotAgent, STOP_TIMEOUT).await?;
        }
        host.stop(Service::Server, STOP_TIMEOUT).await?;
    }
    progress.finish(step, Outcome::Changed, format!("{} stopped", d.nodes.len()));

    let step = progress.start("move old data aside");
    let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
    let aside = format!("{}.lost-{stamp}", Layout::DATA_DIR);
    let mut moved = Vec::new();
    for node in &d.nodes {
        let host = d.host(node);
        let out = host
            .run(&["mv", Layout::DATA_DIR, &aside], Duration::from_secs(60))
            .await?;
        if out.success() {
            moved.push(node.layout.root.join(&aside));
        }
        host.ensure_dir(Path::new(Layout::DATA_DIR), 0o700, None)
            .await?;
    }
    progress.finish(
        step,
        Outcome::Changed,
        format!("{} data directories kept aside", moved.len()),
    );

    let step = progress.start("restore offline");
    let first = &d.nodes[0];
    let config = first.layout.root.join(Layout::SERVER_CONFIG);
    d.install_binary(d.host(first).as_ref()).await?;
    let restored = restore_offline(
        d.host(first).as_ref(),
        first,
        &config,
        &downloaded.path,
        Duration::from_secs(300),
    )
    .await;
    let archive = std::fs::read(&downloaded.path);
    let _ = std::fs::remove_file(&downloaded.path);
    restored?;
    let archive = archive.with_context(|| format!("read {}", downloaded.path.display()))?;
    let inventory = Inventory::read(&archive)
        .with_context(|| format!("read the inventory of {}", drill.snapshot))?;
    progress.finish(step, Outcome::Changed, format!("into {}", first.name));

    let step = progress.start("start and unseal");
    let cluster = d.cluster()?;
    // The shares (unseal or recovery keys) from the encrypted init output: they unseal a
    // Shamir node and authorise the root token the replication step needs.
    let init = d
        .init_secrets(identity)
        .context("open the environment's init output for the rebuild")?;
    let unseal = |i: usize| {
        let cluster = &cluster;
        let keys = &init.unseal_keys_b64;
        async move {
            if d.env.seal.is_auto() {
                cluster.wait_auto_unsealed(i, AUTO_UNSEAL_TIMEOUT).await
            } else {
                cluster.unseal(i, keys).await
            }
        }
    };
    let first_host = d.host(first);
    first_host.start(Service::Server).await?;
    cluster.wait_responding(0, START_TIMEOUT).await?;
    unseal(0).await?;
    cluster.wait_active(FORM_TIMEOUT).await?;
    // Data restored offline sits in the first node's store, not in its Raft log, so nodes that
    // join would never receive it. The same archive restored through Raft puts it in the log
    // (keys unchanged, so the node stays unsealed); a root token for it from the shares.
    let root = cluster
        .generate_root(&init.unseal_keys_b64)
        .await
        .context("generate a root token from the shares to replicate the restored data")?;
    cluster
        .client(0, Some(&root))?
        .raft_snapshot_restore(archive, true)
        .await
        .context("replicate the restored data through Raft")?;
    cluster.wait_active(FORM_TIMEOUT).await?;
    cluster.wait_serving(0, FORM_TIMEOUT).await?;
    for (i, node) in d.nodes.iter().enumerate().skip(1) {
        let host = d.host(node);
        d.install_binary(host.as_ref()).await?;
        host.start(Service::Server).await?;
        cluster.wait_responding(i, START_TIMEOUT).await?;
        if !d.env.seal.is_auto() {
            // A node with no data joins the restored one and gets its challenge first.
            cluster.wait_initialized(i, FORM_TIMEOUT).await?;
        }
        unseal(i).await?;
    }
    let token = d
        .admin_token_on(&cluster, identity)
        .await
        .context("log in as the environment's admin on the rebuilt cluster")?;
    cluster.wait_voters(&token, FORM_TIMEOUT).await?;
    let rto_seconds = started.elapsed().as_secs_f64();
    progress.finish(
        step,
        Outcome::Changed,
        format!(
            "{} voters, serving {:.1}s after the start",
            d.nodes.len(),
            rto_seconds
        ),
    );

    let step = progress.start("verify the rebuilt cluster");
    // The restore replaced the token store, and the root token used for it with it: a new one
    // for the check, revoked afterwards.
    let root = cluster
        .generate_root(&init.unseal_keys_b64)
        .await
        .context("generate a root token from the shares to verify the rebuilt cluster")?;
    let root_client = cluster.client(0, Some(&root))?;
    // Two tokens made since the restore: the root token and the admin login.
    let verified = inventory::verify(&root_client, &inventory, 2).await;
    root_client
        .token_revoke_self()
        .await
        .context("revoke the root token generated for the rebuild")?;
    let verified = verified?;
    progress.finish(step, Outcome::Ok, verified.summary());

    if d.env.snapshots.as_ref().is_some_and(|s| s.s3.is_some()) {
        for node in &d.nodes {
            d.host(node).start(Service::SnapshotAgent).await?;
        }
    }
    if let Some(mut state) = State::load(&d.dir)? {
        for node in &d.nodes {
            let record = d.provider.record(node).await?;
            let entry = state.nodes.entry(node.name.clone()).or_default();
            entry.provider = Some(record);
            entry.started_at = Some(Utc::now());
        }
        state.save(&d.dir)?;
    }
    Ok(DrReport {
        snapshot: drill.snapshot,
        raft_index: drill.raft_index,
        rto_seconds,
        rpo_seconds,
        moved_aside: moved,
        verified,
    })
}
