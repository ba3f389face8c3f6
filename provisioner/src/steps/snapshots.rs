//! `snapshots` (with `snapshots { s3 { ... } }`): the bucket; then, with a root token, the
//! `snapshot-agent` policy and AppRole role and each node's role-id and secret-id files (0600; a
//! secret ID is kept while the server still knows it); and the snapshot agent service on every
//! node, started again when it died.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use keyhold_client::admin::{AppRoleRole, TokenSettings};

use super::UpRun;
use crate::cluster::{retrying, Cluster};
use crate::deployment::Deployment;
use crate::engine::{Applied, Change, Note, Step};
use crate::environment::SnapshotS3;
use crate::providers::{Service, ServiceState};
use crate::render::Layout;
use crate::workflows::snapshot::{ensure_bucket, s3_store, RESTORE_TIMEOUT};

pub struct Snapshots;

/// The policy and AppRole role the agent logs in with.
pub const AGENT_ROLE: &str = "snapshot-agent";
/// What the agent may do: read a snapshot, nothing else.
pub const AGENT_POLICY: &str =
    "path \"sys/storage/raft/snapshot\" {\n  capabilities = [\"read\"]\n}\n";
/// Whether every node has its role-id and secret-id files.
async fn files_present(deployment: &Deployment) -> Result<bool> {
    for node in &deployment.nodes {
        let host = deployment.host(node);
        for file in [Layout::SNAPSHOT_ROLE_ID, Layout::SNAPSHOT_SECRET_ID] {
            if host.read_file(Path::new(file)).await?.is_none() {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// `up`'s snapshot step: bucket; then, with a root `token`, policy, AppRole (enabled at the
/// agent's mount if absent), role, and per node the role-id and secret-id files (0600; a
/// secret ID is kept while the server still knows it). Returns what changed.
async fn prepare(
    deployment: &Deployment,
    cluster: &Cluster,
    token: Option<&str>,
    s3: &SnapshotS3,
) -> Result<Vec<String>> {
    let mut changed = Vec::new();
    if ensure_bucket(s3).await? {
        changed.push(format!("created bucket {}", s3.bucket));
    }
    let Some(token) = token else {
        return Ok(changed);
    };
    let mount = deployment.env.snapshot_approle_mount().to_string();
    let role = format!("auth/{mount}/role/{AGENT_ROLE}");
    let role_id = retrying(|| async {
        let active = cluster.wait_active(RESTORE_TIMEOUT).await?;
        let client = cluster.client(active, Some(token))?;
        client
            .policy_write(AGENT_ROLE, AGENT_POLICY)
            .await
            .context("write the snapshot-agent policy")?;
        let methods = client.auth_methods().await.context("read sys/auth")?;
        if !methods.contains_key(&format!("{mount}/")) {
            client
                .enable_auth(&mount, "approle")
                .await
                .with_context(|| format!("enable approle at auth/{mount}"))?;
        }
        let settings = AppRoleRole {
            token: TokenSettings {
                policies: vec![AGENT_ROLE.to_string()],
                ttl: Some(Duration::from_secs(15 * 60)),
                max_ttl: Some(Duration::from_secs(3600)),
            },
            ..AppRoleRole::default()
        };
        client
            .approle_role_write(&mount, AGENT_ROLE, settings)
            .await
            .with_context(|| format!("write the AppRole role {role}"))?;
        let id = client
            .approle_role_id(&mount, AGENT_ROLE)
            .await
            .context("read the snapshot agent's role ID")?;
        Ok((id, client))
    })
    .await?;
    let (role_id, client) = role_id;
    for node in &deployment.nodes {
        let host = deployment.host(node);
        if host
            .put_file(
                Path::new(Layout::SNAPSHOT_ROLE_ID),
                role_id.as_bytes(),
                node.layout.private_file().0,
                node.layout.private_file().1.as_ref(),
            )
            .await?
        {
            changed.push(format!("{}: role id", node.name));
        }
        let existing = host
            .read_file(Path::new(Layout::SNAPSHOT_SECRET_ID))
            .await?
            .and_then(|b| String::from_utf8(b).ok());
        let live = match &existing {
            Some(secret) => client
                .approle_secret_id_live(&mount, AGENT_ROLE, secret.trim())
                .await
                .context("look up a node's snapshot agent secret ID")?,
            None => false,
        };
        if !live {
            let secret = client
                .approle_secret_id(&mount, AGENT_ROLE)
                .await
                .context("issue a secret ID for the snapshot agent")?;
            host.put_file(
                Path::new(Layout::SNAPSHOT_SECRET_ID),
                secret.as_bytes(),
                node.layout.private_file().0,
                node.layout.private_file().1.as_ref(),
            )
            .await?;
            changed.push(format!("{}: secret id", node.name));
        }
    }
    Ok(changed)
}

#[async_trait(?Send)]
impl Step<UpRun> for Snapshots {
    fn name(&self) -> &'static str {
        "snapshots"
    }

    fn wanted(&self, run: &UpRun) -> bool {
        run.d.env.snapshots.as_ref().is_some_and(|s| s.s3.is_some())
    }

    async fn check(&self, run: &UpRun) -> Result<Vec<Change>> {
        let d = run.d.clone();
        let Some(s3) = d.env.snapshots.as_ref().and_then(|s| s.s3.as_ref()) else {
            return Ok(Vec::new());
        };
        let mut changes = Vec::new();
        if s3_store(s3).await.check_bucket().await.is_err() {
            changes.push(Change::cluster(format!(
                "create the snapshot bucket {} (or reach it: it does not answer now)",
                s3.bucket
            )));
        }
        for node in &d.nodes {
            let host = d.host(node);
            for file in [Layout::SNAPSHOT_ROLE_ID, Layout::SNAPSHOT_SECRET_ID] {
                if host.read_file(Path::new(file)).await?.is_none() {
                    changes.push(Change::node(
                        &node.name,
                        format!("write {file} (the snapshot agent's AppRole login)"),
                    ));
                }
            }
            if host.service_state(Service::SnapshotAgent).await? == ServiceState::Stopped {
                changes.push(Change::node(&node.name, "start the snapshot agent"));
            }
        }
        Ok(changes)
    }

    async fn apply(&self, run: &mut UpRun, _: &[Change], _: &Note<'_>) -> Result<Applied> {
        let d = run.d.clone();
        let Some(s3) = d.env.snapshots.as_ref().and_then(|s| s.s3.as_ref()) else {
            return Ok(Applied::ok("no bucket"));
        };
        let cluster = run.cluster()?;
        // The policy and role need a root token: this run's, or (only when a node lacks its
        // credential files) one generated from the shares for this step alone.
        let (token, generated) = match (&run.root_token, files_present(&d).await?) {
            (Some(t), _) => (Some(t.clone()), false),
            (None, true) => (None, false),
            (None, false) => (Some(cluster.generate_root(run.keys()).await?), true),
        };
        let changed = prepare(&d, &cluster, token.as_deref(), s3).await;
        if let (true, Some(t)) = (generated, &token) {
            cluster.revoke_self(t).await?;
        }
        let mut changed = changed?;
        for node in &d.nodes {
            let host = d.host(node);
            if host.service_state(Service::SnapshotAgent).await? == ServiceState::Stopped {
                host.start(Service::SnapshotAgent).await?;
                changed.push(format!("{}: started the snapshot agent", node.name));
                if host.service_state(Service::SnapshotAgent).await? == ServiceState::Stopped {
                    bail!(
                        "{}'s snapshot agent stopped right after it started",
                        node.name
                    );
                }
            }
            let record = d.provider.record(node).await?;
            run.state
                .nodes
                .entry(node.name.clone())
                .or_default()
                .provider = Some(record);
        }
        run.state.save(&d.dir)?;
        Ok(if changed.is_empty() {
            Applied::ok(format!("agent ready (bucket {})", s3.bucket))
        } else {
            Applied::changed(changed.join(", "))
        })
    }
}
