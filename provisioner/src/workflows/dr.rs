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
//!
//! `--into NEW` rebuilds the environment's snapshot as another environment (a new site, new
//! addresses, the old state directory's machine gone but its keys kept): refused, changing
//! nothing, unless NEW was never initialised, runs nothing, uses addresses of its own and has a
//! seal that opens the snapshot (Shamir both, or the same KMS key). After the drill, the old
//! environment's init output and logins are encrypted again to NEW's recipients, NEW's nodes
//! get their certificates and files (the first steps of `up`), the snapshot is restored into
//! them as above, and `up --env NEW` finishes the environment (its policies, engines, snapshot
//! agents, drill agent). The old environment is only read.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::Utc;
use keyhold_snapshot::DEFAULT_NAME_PREFIX;
use serde::Serialize;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::deployment::{
    Deployment, AUTO_UNSEAL_TIMEOUT, FORM_TIMEOUT, START_TIMEOUT, STOP_TIMEOUT,
};
use crate::engine::{self, Outcome, Progress};
use crate::environment::Seal;
use crate::providers::{Service, ServiceState};
use crate::render::Layout;
use crate::secret_zero::InitSecrets;
use crate::state::State;
use crate::workflows::drill::{restore_offline, run_drill};
use crate::workflows::inventory::{self, Inventory, Verified};
use crate::workflows::snapshot::{check_postable, env_s3, parse_from, s3_store};

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

/// `dr rebuild`: the environment's cluster rebuilt in place from its own snapshot.
pub async fn rebuild(
    d: &Deployment,
    from: &str,
    identity: &[PathBuf],
    progress: &mut Progress,
) -> Result<DrReport> {
    rebuild_core(d, d, from, identity, progress).await
}

/// What the source environment's cluster is opened with: its init output (the shares unseal
/// a Shamir node and authorise root tokens) and its logins.
struct Keys {
    init: InitSecrets,
    credentials: BTreeMap<String, String>,
}

impl Keys {
    fn open(d: &Deployment, identity: &[PathBuf]) -> Result<Keys> {
        let identities = d.identities(identity)?;
        let (store, _) = d.secret_store()?;
        Ok(Keys {
            init: store
                .load_init(&identities)
                .with_context(|| format!("open {}'s init output", d.env.name))?,
            credentials: store
                .load_credentials(&identities)
                .with_context(|| format!("open {}'s logins", d.env.name))?,
        })
    }
}

/// `dr rebuild --env OLD --into NEW`: OLD's snapshot rebuilt as the environment NEW, which
/// must never have been initialised; OLD is only read.
pub async fn rebuild_into(
    old: &Deployment,
    new: &Deployment,
    from: &str,
    identity: &[PathBuf],
    progress: &mut Progress,
) -> Result<DrReport> {
    refuse_into(old, new).await?;
    let report = rebuild_core(old, new, from, identity, progress).await?;
    // NEW now holds OLD's cluster: recorded as initialised (by OLD's init) so that `up` opens
    // and unseals it instead of initialising it, then `up` finishes the environment.
    let mut state = State::load(&new.dir)?.context("the rebuild recorded NEW's state")?;
    let old_state = State::load(&old.dir)?;
    state.cluster.initialized_at = old_state
        .as_ref()
        .and_then(|s| s.cluster.initialized_at)
        .or(Some(Utc::now()));
    state.cluster.root_token_revoked = old_state.is_some_and(|s| s.cluster.root_token_revoked);
    state.save(&new.dir)?;
    crate::workflows::up::up(new, &[], progress)
        .await
        .with_context(|| {
            format!(
                "{} serves {}'s data, but finishing it (`provision up --env {}`) failed; run \
                 that again",
                new.env.name, old.env.name, new.env.name
            )
        })?;
    Ok(report)
}

/// `--into` must name another environment (checked before its lock is taken: it is OLD's).
pub fn refuse_itself(old: &Deployment, new: &Deployment) -> Result<()> {
    if old.dir.root() == new.dir.root() {
        bail!(
            "--into names {} itself: run `provision dr rebuild --env {}` to rebuild it in place; \
             nothing was changed",
            new.env.name,
            new.env.name
        );
    }
    Ok(())
}

/// Why `--into NEW` would not work, found before anything is touched.
async fn refuse_into(old: &Deployment, new: &Deployment) -> Result<()> {
    let nothing = "nothing was changed";
    refuse_itself(old, new)?;
    let initialised = State::load(&new.dir)?.and_then(|s| s.cluster.initialized_at);
    // Looked at without making an identity: nothing is written before the drill.
    let store = crate::secret_zero::SecretStore::new(new.dir.secrets_dir(), Vec::new(), false);
    if initialised.is_some() || store.has_init() {
        bail!(
            "{} already has a cluster of its own (initialised{}); --into builds a new \
             environment from {}'s snapshot. Pick one that was never brought up, or remove this \
             one first with `provision down --env {} --purge` (which deletes its data); {nothing}",
            new.env.name,
            initialised.map_or_else(String::new, |t| format!(" at {t}")),
            old.env.name,
            new.env.name
        );
    }
    for node in &new.nodes {
        if new.host(node).service_state(Service::Server).await? != ServiceState::Stopped {
            bail!(
                "{}'s node {} runs; stop it (`provision down --env {}`) before rebuilding into \
                 it; {nothing}",
                new.env.name,
                node.name,
                new.env.name
            );
        }
        if old.nodes.iter().any(|o| o.address == node.address) {
            bail!(
                "{} and {} both use {}: give {} addresses of its own (its provider's \
                 address_base); {nothing}",
                old.env.name,
                new.env.name,
                node.address,
                new.env.name
            );
        }
    }
    if matches!(old.env.seal, Seal::Transit(_)) || matches!(new.env.seal, Seal::Transit(_)) {
        bail!(
            "transit-sealed environments are rebuilt in place only (their unsealer's key opens \
             the snapshot, and a second environment would need that same unsealer): run \
             `provision dr rebuild --env {}`; {nothing}",
            old.env.name
        );
    }
    if !opens(&old.env.seal, &new.env.seal) {
        bail!(
            "{}'s snapshot can only be opened by the seal that wrote it ({}), and {} names {}: \
             give {} the same seal block, then migrate seals after the rebuild if needed; \
             {nothing}",
            old.env.name,
            describe_seal(&old.env.seal),
            new.env.name,
            describe_seal(&new.env.seal),
            new.env.name
        );
    }
    Ok(())
}

/// Whether a node with seal `new` opens what seal `old` wrote: Shamir both (the shares come
/// along), or the same KMS key (the endpoint may differ: a VPC endpoint, say).
fn opens(old: &Seal, new: &Seal) -> bool {
    match (old, new) {
        (Seal::Shamir, Seal::Shamir) => true,
        (Seal::AwsKms(a), Seal::AwsKms(b)) => a.kms_key_id == b.kms_key_id && a.region == b.region,
        _ => false,
    }
}

fn describe_seal(seal: &Seal) -> String {
    match seal {
        Seal::Shamir => "Shamir unseal keys".to_string(),
        Seal::AwsKms(k) => format!(
            "the AWS KMS key {} in {}",
            k.kms_key_id,
            k.region.as_deref().unwrap_or("the default region")
        ),
        Seal::Transit(t) => format!("the transit key {} at {}", t.key_name, t.address),
    }
}

/// Rebuilds `target`'s cluster from `source`'s snapshot (the same environment in place).
async fn rebuild_core(
    source: &Deployment,
    d: &Deployment,
    from: &str,
    identity: &[PathBuf],
    progress: &mut Progress,
) -> Result<DrReport> {
    let started = Instant::now();
    let into = !std::ptr::eq(source, d);
    let s3 = env_s3(source)?;

    let step = progress.start("verify the snapshot");
    let drill = run_drill(source, from, identity).await?;
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
    if let Err(e) = check_postable(d, size, &drill.snapshot, "the rebuild") {
        let _ = std::fs::remove_file(&downloaded.path);
        return Err(e);
    }

    let keys = Keys::open(source, identity)?;
    if into {
        let step = progress.start(format!("keys for {}", d.env.name));
        let (store, _) = d.secret_store()?;
        let files = store.save_init(&keys.init)?;
        store.save_credentials(&keys.credentials)?;
        progress.finish(
            step,
            Outcome::Changed,
            format!(
                "{}'s init output and logins encrypted to {}'s recipients ({} files)",
                source.env.name,
                d.env.name,
                files.len() + 1
            ),
        );
        // NEW's certificates, node directories, configs and binaries: the first steps of `up`.
        let mut run = crate::steps::UpRun::new(Arc::new(d.clone()), &[])?;
        engine::apply(&crate::steps::prepare(), &mut run, progress).await?;
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
        // An empty data directory (a new environment's) holds nothing to keep.
        host.run(&["rmdir", Layout::DATA_DIR], Duration::from_secs(60))
            .await?;
        let out = host
            .run(&["mv", Layout::DATA_DIR, &aside], Duration::from_secs(60))
            .await?;
        if out.success() {
            moved.push(node.layout.root.join(&aside));
        }
        host.ensure_dir(
            Path::new(Layout::DATA_DIR),
            0o700,
            node.layout.service_owner().as_ref(),
        )
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
    let init = &keys.init;
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
    // The snapshot's own admin login (the source environment's).
    let token = source
        .admin_login(&cluster, &keys.credentials)
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

    // A new environment's agents need its own AppRole login first: `up` makes it.
    if !into && d.env.snapshots.as_ref().is_some_and(|s| s.s3.is_some()) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::environment::AwsKms;

    fn kms(key: &str, region: &str) -> Seal {
        Seal::AwsKms(AwsKms {
            region: Some(region.into()),
            kms_key_id: key.into(),
            endpoint: None,
        })
    }

    #[test]
    fn only_the_seal_that_wrote_a_snapshot_opens_it() {
        assert!(opens(&Seal::Shamir, &Seal::Shamir));
        assert!(opens(
            &kms("alias/k", "eu-west-1"),
            &kms("alias/k", "eu-west-1")
        ));
        assert!(!opens(
            &kms("alias/k", "eu-west-1"),
            &kms("alias/other", "eu-west-1")
        ));
        assert!(!opens(
            &kms("alias/k", "eu-west-1"),
            &kms("alias/k", "us-east-1")
        ));
        assert!(!opens(&Seal::Shamir, &kms("alias/k", "eu-west-1")));
        assert!(!opens(&kms("alias/k", "eu-west-1"), &Seal::Shamir));
    }
}
