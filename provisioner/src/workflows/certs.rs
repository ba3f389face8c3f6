//! `provision certs rotate`: new node certificates from the environment's CA, delivered node by
//! node (standbys first, the active node last) and picked up without a restart: each node gets
//! its new server and client certificates, reloads them (SIGHUP), and is checked to present the
//! new certificate on a fresh connection and to serve before the next node is touched. Open
//! connections keep working; clients trust the same CA throughout.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::cluster::Role;
use crate::deployment::{Deployment, FORM_TIMEOUT};
use crate::engine::{Outcome, Progress};
use crate::pki::{self, Ca};
use crate::providers::Service;
use crate::state::{fingerprint, State};
use crate::steps::active_last;
use crate::steps::tls::issue_node_certs;

/// How long a node may take to present its new certificate after the reload.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// One node's rotation.
#[derive(Debug, Clone, Serialize)]
pub struct Rotated {
    pub node: String,
    pub old_fingerprint_sha256: String,
    pub new_fingerprint_sha256: String,
    pub not_after: chrono::DateTime<chrono::Utc>,
}

pub async fn rotate(d: &Deployment, progress: &mut Progress) -> Result<Vec<Rotated>> {
    let Some(mut state) = State::load(&d.dir)? else {
        bail!(
            "{} has no state yet: `provision up --env {}` makes its certificates",
            d.env.name,
            d.env.name
        );
    };
    if !d.ca_file().exists() {
        bail!(
            "{} has no CA yet: run `provision up --env {}`",
            d.env.name,
            d.env.name
        );
    }
    let (ca, _) = Ca::ensure(&d.dir.tls_dir(), &d.env.name, d.env.tls.ca_lifetime)?;
    let cluster = d.cluster()?;
    for (i, node) in d.nodes.iter().enumerate() {
        if !matches!(
            Role::from_health(cluster.health(i).await.as_ref()),
            Role::Active | Role::Standby
        ) {
            bail!(
                "{} does not serve: rotate certificates on a healthy cluster (`provision status`, \
                 `provision up`), nothing was changed",
                node.name
            );
        }
    }
    let all: Vec<usize> = (0..d.nodes.len()).collect();
    let mut rotated = Vec::new();
    for i in active_last(&all, cluster.active().await) {
        let node = &d.nodes[i];
        let step = progress.start(format!("rotate {}", node.name));
        let host = d.host(node);
        let old = cluster
            .client(i, None)?
            .server_certificate()
            .await
            .with_context(|| format!("read {}'s certificate", node.name))?;
        let pem = issue_node_certs(d, host.as_ref(), node, &ca, true).await?;
        let info = pki::inspect_pem(&pem)?;
        host.reload(Service::Server).await?;
        // The node presents the new certificate on a fresh connection, and serves.
        let started = Instant::now();
        loop {
            let now = cluster.client(i, None)?.server_certificate().await.ok();
            if now.as_deref().map(fingerprint) == Some(info.fingerprint_sha256.clone()) {
                break;
            }
            if started.elapsed() > RELOAD_TIMEOUT {
                bail!(
                    "{} still presents its old certificate {}s after the reload; its log is under \
                     {}",
                    node.name,
                    RELOAD_TIMEOUT.as_secs(),
                    node.layout.root.join("var/log/keyhold").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cluster.wait_serving(i, FORM_TIMEOUT).await?;
        let entry = state.nodes.entry(node.name.clone()).or_default();
        entry.cert_fingerprint_sha256 = info.fingerprint_sha256.clone();
        entry.cert_not_after = info.not_after;
        state.save(&d.dir)?;
        progress.finish(
            step,
            Outcome::Changed,
            format!(
                "new certificate {}…, valid until {}",
                &info.fingerprint_sha256[..16],
                info.not_after.format("%Y-%m-%d")
            ),
        );
        rotated.push(Rotated {
            node: node.name.clone(),
            old_fingerprint_sha256: fingerprint(&old),
            new_fingerprint_sha256: info.fingerprint_sha256,
            not_after: info.not_after,
        });
    }
    Ok(rotated)
}
