//! `provision certs rotate [--ca]`: new node certificates, delivered node by node (standbys
//! first, the active node last) and picked up without a restart: each node gets its new server
//! and client certificates, reloads them (SIGHUP), and is checked to present the new certificate
//! on a fresh connection and to serve before the next node is touched. Then the cluster port's
//! TLS keyring gets a new generation, which the active node spreads through Raft and finishes
//! once every member has moved (`sys/storage/raft/cluster-tls/rotate`).
//!
//! With `--ca`, a new CA (new key) replaces the environment's in three phases, each finished on
//! every node before the next begins and recorded in the state, so that running the command
//! again after an interruption continues where it stopped:
//! 1. trust both: the bundle of the old and the new CA becomes every node's CA file (the
//!    listener's `tls_client_ca_file`, `retry_join`'s CA, the snapshot agent's) and the
//!    environment's CA file that clients use (`provision env`), nodes reloaded;
//! 2. issue: node certificates from the new CA, node by node, as without `--ca`;
//! 3. drop the old: once every node presents a certificate from the new CA, the new CA alone
//!    goes into every bundle and becomes the environment's CA (`ca.crt`, `ca.key`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::cluster::{poll, retrying, Role};
use crate::deployment::{Deployment, FORM_TIMEOUT};
use crate::engine::{Outcome, Progress};
use crate::pki::{self, Ca, CertInfo};
use crate::providers::Service;
use crate::render::{self, Layout};
use crate::state::{fingerprint, write_atomic, CaRotation, CaRotationPhase, State};
use crate::steps::active_last;
use crate::steps::tls::issue_node_certs;

/// How long a node may take to present its new certificate after the reload.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the cluster port's rotation may take once begun (three steps, each waiting for
/// every member to prove it took the previous one).
const CLUSTER_TLS_TIMEOUT: Duration = Duration::from_secs(120);
/// The next CA's files in the TLS directory while a `--ca` rotation runs.
const NEXT_CA_CERT: &str = "ca-next.crt";
const NEXT_CA_KEY: &str = "ca-next.key";

/// One node's rotation.
#[derive(Debug, Clone, Serialize)]
pub struct Rotated {
    pub node: String,
    pub old_fingerprint_sha256: String,
    pub new_fingerprint_sha256: String,
    pub not_after: chrono::DateTime<chrono::Utc>,
}

/// The new CA of a `--ca` rotation.
#[derive(Debug, Clone, Serialize)]
pub struct CaRotated {
    pub old_fingerprint_sha256: String,
    pub new_fingerprint_sha256: String,
    pub not_after: chrono::DateTime<chrono::Utc>,
}

/// What `certs rotate` did.
#[derive(Debug, Clone, Serialize)]
pub struct RotateReport {
    /// Nodes given a new certificate by this run (a resumed `--ca` run lists only the rest).
    pub nodes: Vec<Rotated>,
    pub ca: Option<CaRotated>,
    pub cluster_tls: keyhold_client::ClusterTlsStatus,
}

/// Refuses, before anything changes, what `rotate` cannot do: no state or CA yet, a `--ca`
/// rotation under way without `--ca`, a node that does not serve. Returns the state.
pub async fn preflight(d: &Deployment, new_ca: bool) -> Result<State> {
    let Some(state) = State::load(&d.dir)? else {
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
    if let (Some(rotation), false) = (&state.ca_rotation, new_ca) {
        bail!(
            "a CA rotation of {} is under way (phase {:?}, since {}): finish it with `provision \
             certs rotate --env {} --ca`; nothing was changed",
            d.env.name,
            rotation.phase,
            rotation.started_at.format("%Y-%m-%d %H:%M UTC"),
            d.env.name
        );
    }
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
    Ok(state)
}

/// `token` may call `sys/storage/raft/cluster-tls/rotate` (sudo).
pub async fn rotate(
    d: &Deployment,
    progress: &mut Progress,
    new_ca: bool,
    token: &str,
) -> Result<RotateReport> {
    let mut state = preflight(d, new_ca).await?;

    let tls_dir = d.dir.tls_dir();
    let (old_ca, _) = Ca::ensure(&tls_dir, &d.env.name, d.env.tls.ca_lifetime)?;
    let mut report = RotateReport {
        nodes: Vec::new(),
        ca: None,
        cluster_tls: Default::default(),
    };
    if new_ca {
        let (next_cert, next_key) = (tls_dir.join(NEXT_CA_CERT), tls_dir.join(NEXT_CA_KEY));
        if state.ca_rotation.is_none() {
            let name = format!(
                "Keyhold {} CA {}",
                d.env.name,
                chrono::Utc::now().format("%Y-%m-%dT%H%MZ")
            );
            let (next, _) = Ca::ensure_files(&next_cert, &next_key, &name, d.env.tls.ca_lifetime)?;
            state.ca_rotation = Some(CaRotation {
                phase: CaRotationPhase::TrustBoth,
                old_ca_fingerprint_sha256: old_ca.info().fingerprint_sha256.clone(),
                new_ca_fingerprint_sha256: next.info().fingerprint_sha256.clone(),
                started_at: chrono::Utc::now(),
                moved: Vec::new(),
            });
            state.save(&d.dir)?;
        }
        let rotation = state.ca_rotation.clone().expect("set above");
        if rotation.phase != CaRotationPhase::DropOld {
            let next = Ca::load(&next_cert, &next_key).with_context(|| {
                format!(
                    "load the new CA of the rotation under way from {}",
                    next_cert.display()
                )
            })?;
            if next.info().fingerprint_sha256 != rotation.new_ca_fingerprint_sha256 {
                bail!(
                    "{} is not the new CA this rotation began with (state: {}); restore it, or \
                     remove `ca_rotation` from {} and the file to begin again",
                    next_cert.display(),
                    rotation.new_ca_fingerprint_sha256,
                    d.dir.state_file().display()
                );
            }
            if rotation.phase == CaRotationPhase::TrustBoth {
                let bundle = format!("{}{}", old_ca.cert_pem(), next.cert_pem());
                distribute_ca(d, &bundle, progress, "trust the old and the new CA").await?;
                set_phase(&mut state, d, CaRotationPhase::Issue)?;
            }
            report.nodes = issue_all(d, &mut state, &next, progress).await?;
            set_phase(&mut state, d, CaRotationPhase::DropOld)?;
        }
        let new_info = drop_old_ca(d, &tls_dir, &state, progress).await?;
        let rotation = state.ca_rotation.take().expect("set above");
        state.ca = Some((&new_info).into());
        state.save(&d.dir)?;
        report.ca = Some(CaRotated {
            old_fingerprint_sha256: rotation.old_ca_fingerprint_sha256,
            new_fingerprint_sha256: new_info.fingerprint_sha256.clone(),
            not_after: new_info.not_after,
        });
    } else {
        report.nodes = issue_all(d, &mut state, &old_ca, progress).await?;
    }
    report.cluster_tls = rotate_cluster_tls(d, token, progress).await?;
    Ok(report)
}

fn set_phase(state: &mut State, d: &Deployment, phase: CaRotationPhase) -> Result<()> {
    if let Some(rotation) = state.ca_rotation.as_mut() {
        rotation.phase = phase;
    }
    state.save(&d.dir)
}

/// Writes `pem` as every node's CA file and reloads each, then as the environment's CA file
/// that clients read.
async fn distribute_ca(
    d: &Deployment,
    pem: &str,
    progress: &mut Progress,
    what: &str,
) -> Result<()> {
    let step = progress.start(format!("{what}: every node's CA file, reloaded"));
    let cluster = d.cluster()?;
    let all: Vec<usize> = (0..d.nodes.len()).collect();
    for i in active_last(&all, cluster.active().await) {
        let node = &d.nodes[i];
        let host = d.host(node);
        host.put_file(
            &Path::new(Layout::TLS_DIR).join(render::CA_CERT),
            pem.as_bytes(),
            0o644,
            node.layout.config_owner().as_ref(),
        )
        .await
        .with_context(|| format!("write the CA bundle to {}", node.name))?;
        host.reload(Service::Server).await?;
        cluster.wait_serving(i, FORM_TIMEOUT).await?;
    }
    write_atomic(&d.ca_file(), pem.as_bytes(), 0o644)?;
    progress.finish(
        step,
        Outcome::Changed,
        format!(
            "{} CA(s) trusted by {} node(s) and by clients ({})",
            pki::certificate_blocks(pem).len(),
            d.nodes.len(),
            d.ca_file().display()
        ),
    );
    Ok(())
}

/// New certificates from `ca` for every node not yet moved, standbys first.
async fn issue_all(
    d: &Deployment,
    state: &mut State,
    ca: &Ca,
    progress: &mut Progress,
) -> Result<Vec<Rotated>> {
    // Built after any change to the CA file, so that it trusts what the nodes will present.
    let cluster = d.cluster()?;
    let all: Vec<usize> = (0..d.nodes.len()).collect();
    let mut rotated = Vec::new();
    for i in active_last(&all, cluster.active().await) {
        let node = &d.nodes[i];
        if state
            .ca_rotation
            .as_ref()
            .is_some_and(|r| r.moved.contains(&node.name))
        {
            continue;
        }
        let step = progress.start(format!("rotate {}", node.name));
        let host = d.host(node);
        let old = cluster
            .client(i, None)?
            .server_certificate()
            .await
            .with_context(|| format!("read {}'s certificate", node.name))?;
        let pem = issue_node_certs(d, host.as_ref(), node, ca, true).await?;
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
        if let Some(rotation) = state.ca_rotation.as_mut() {
            rotation.moved.push(node.name.clone());
        }
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

/// Phase 3 of `--ca`: checks that every node presents a certificate from the new CA, makes the
/// new CA the environment's (`ca.key`, then `ca.crt`; each step can be repeated), and drops the
/// old CA from every bundle.
async fn drop_old_ca(
    d: &Deployment,
    tls_dir: &Path,
    state: &State,
    progress: &mut Progress,
) -> Result<CertInfo> {
    let rotation = state.ca_rotation.as_ref().expect("a rotation under way");
    let (next_cert, next_key): (PathBuf, PathBuf) =
        (tls_dir.join(NEXT_CA_CERT), tls_dir.join(NEXT_CA_KEY));
    let new_pem = match std::fs::read_to_string(&next_cert) {
        Ok(pem) => pem,
        // Moved into place by an interrupted run.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::read_to_string(d.ca_file()).context("read the environment's CA file")?
        }
        Err(e) => return Err(e).context(format!("read {}", next_cert.display())),
    };
    let new_info = pki::inspect_pem(&new_pem)?;
    if new_info.fingerprint_sha256 != rotation.new_ca_fingerprint_sha256 {
        bail!(
            "the new CA on disk ({}) is not the one this rotation began with ({}); nothing was \
             changed",
            new_info.fingerprint_sha256,
            rotation.new_ca_fingerprint_sha256
        );
    }
    let cluster = d.cluster()?;
    for (i, node) in d.nodes.iter().enumerate() {
        let der = cluster
            .client(i, None)?
            .server_certificate()
            .await
            .with_context(|| format!("read {}'s certificate", node.name))?;
        let presented = pki::inspect_der(&der)?;
        if !pki::issued_by(&presented, &new_info) {
            bail!(
                "{} still presents a certificate from the old CA ({}): the old CA stays trusted; \
                 run `provision certs rotate --env {} --ca` again",
                node.name,
                presented.issuer,
                d.env.name
            );
        }
    }
    if next_key.exists() {
        std::fs::rename(&next_key, tls_dir.join(pki::CA_KEY_FILE))
            .with_context(|| format!("move {} into place", next_key.display()))?;
    }
    write_atomic(&d.ca_file(), new_pem.as_bytes(), 0o644)?;
    if next_cert.exists() {
        std::fs::remove_file(&next_cert)
            .with_context(|| format!("remove {}", next_cert.display()))?;
    }
    distribute_ca(d, &new_pem, progress, "drop the old CA").await?;
    Ok(new_info)
}

/// A new generation of the cluster port's TLS keyring, begun on the active node (unless one is
/// under way already) and waited for until every member has moved.
async fn rotate_cluster_tls(
    d: &Deployment,
    token: &str,
    progress: &mut Progress,
) -> Result<keyhold_client::ClusterTlsStatus> {
    let step = progress.start("rotate the cluster port's TLS keyring");
    let cluster = &d.cluster()?;
    let status = retrying(|| async move {
        let active = cluster
            .wait_active(FORM_TIMEOUT)
            .await
            .context("find the active node")?;
        let client = cluster.client(active, Some(token))?;
        let now = client
            .cluster_tls_status()
            .await
            .context("read the cluster TLS status")?;
        if now.phase != "stable" {
            return Ok(now);
        }
        client
            .cluster_tls_rotate()
            .await
            .context("begin the cluster TLS rotation")
    })
    .await?;
    let generation = status.generation;
    let done = poll(
        CLUSTER_TLS_TIMEOUT,
        Duration::from_millis(200),
        async || {
            let active = cluster.active().await?;
            let now = cluster
                .client(active, Some(token))
                .ok()?
                .cluster_tls_status()
                .await
                .ok()?;
            (now.generation >= generation && now.phase == "stable").then_some(now)
        },
    )
    .await;
    let Some(done) = done else {
        bail!(
            "the cluster port's TLS rotation (generation {generation}) did not finish within {}s: \
             a member has not taken its step (the active node's log names it); the cluster keeps \
             working with both CAs trusted, and running `provision certs rotate` again waits for \
             it",
            CLUSTER_TLS_TIMEOUT.as_secs()
        );
    };
    progress.finish(
        step,
        Outcome::Changed,
        format!(
            "generation {}, certificate {}…",
            done.generation,
            done.cert_fingerprint_sha256
                .as_deref()
                .map_or("?", |f| &f[..16.min(f.len())])
        ),
    );
    Ok(done)
}
