//! `certificates`: the environment's CA (made once, kept in the state directory) and, per node,
//! the CA certificate, a server certificate with the node's DNS and IP SANs and a client
//! certificate for the cluster port; reissued when missing, wrong or close to expiry.

use std::path::Path;

use anyhow::Result;
use async_trait::async_trait;

use super::UpRun;
use crate::deployment::Deployment;
use crate::engine::{Applied, Change, Note, Step};
use crate::pki::{self, Ca};
use crate::providers::Host;
use crate::render::{self, Layout, NodeSpec};

pub struct Certificates;

/// Issues `node`'s server and client certificates from `ca` and writes them with their keys;
/// returns the new server certificate (PEM).
pub async fn issue_node_certs(
    d: &Deployment,
    host: &dyn Host,
    node: &NodeSpec,
    ca: &Ca,
    with_client: bool,
) -> Result<String> {
    let (dns, ips) = d.wanted_sans(node);
    let env = &d.env;
    let tls = Path::new(Layout::TLS_DIR);
    let (key_mode, owner) = node.layout.private_file();
    let owner = owner.as_ref();
    let cert = ca.issue_server(&node.name, &dns, &ips, env.tls.cert_lifetime)?;
    host.put_file(
        &tls.join(render::NODE_KEY),
        cert.key_pem.as_bytes(),
        key_mode,
        owner,
    )
    .await?;
    host.put_file(
        &tls.join(render::NODE_CERT),
        cert.cert_pem.as_bytes(),
        0o644,
        owner,
    )
    .await?;
    if with_client {
        let client = ca.issue_client(&format!("{}-client", node.name), env.tls.cert_lifetime)?;
        host.put_file(
            &tls.join(render::CLIENT_KEY),
            client.key_pem.as_bytes(),
            key_mode,
            owner,
        )
        .await?;
        host.put_file(
            &tls.join(render::CLIENT_CERT),
            client.cert_pem.as_bytes(),
            0o644,
            owner,
        )
        .await?;
    }
    Ok(cert.cert_pem.clone())
}

/// Whether the host's copy of the CA certificate differs from `ca_pem`.
pub async fn ca_differs(host: &dyn Host, ca_pem: Option<&str>) -> Result<bool> {
    let have = host
        .read_file(&Path::new(Layout::TLS_DIR).join(render::CA_CERT))
        .await?;
    Ok(have.as_deref() != ca_pem.map(str::as_bytes))
}

/// While `certs rotate --ca` is under way the CA files hold two CAs: writing either alone to
/// the nodes would cut off the nodes or clients still on the other.
fn refuse_during_ca_rotation(run: &UpRun) -> Result<()> {
    if let Some(rotation) = &run.state.ca_rotation {
        anyhow::bail!(
            "a CA rotation is under way (phase {:?}): finish it with `provision certs rotate \
             --env {} --ca` first",
            rotation.phase,
            run.d.env.name
        );
    }
    Ok(())
}

#[async_trait(?Send)]
impl Step<UpRun> for Certificates {
    fn name(&self) -> &'static str {
        "certificates"
    }

    async fn check(&self, run: &UpRun) -> Result<Vec<Change>> {
        refuse_during_ca_rotation(run)?;
        let d = run.d.clone();
        let ca = pki::inspect_file(&d.ca_file()).ok();
        let ca_pem = std::fs::read_to_string(d.ca_file()).ok();
        let mut changes = Vec::new();
        if ca.is_none() {
            changes.push(Change::cluster("create the environment's CA"));
        }
        for node in &d.nodes {
            let host = d.host(node);
            if let Some(reason) = d.cert_reason(host.as_ref(), node, ca.as_ref()).await? {
                changes.push(Change::node(
                    &node.name,
                    format!("issue its certificate ({reason})"),
                ));
            } else if ca_differs(host.as_ref(), ca_pem.as_deref()).await? {
                changes.push(Change::node(&node.name, "write the CA certificate"));
            }
        }
        Ok(changes)
    }

    async fn apply(&self, run: &mut UpRun, _: &[Change], _: &Note<'_>) -> Result<Applied> {
        refuse_during_ca_rotation(run)?;
        let d = run.d.clone();
        let (ca, ca_created) = Ca::ensure(&d.dir.tls_dir(), &d.env.name, d.env.tls.ca_lifetime)?;
        let mut issued = Vec::new();
        for node in &d.nodes {
            let host = d.host(node);
            let (dir_mode, owner) = node.layout.private_dir();
            host.ensure_dir(Path::new(Layout::TLS_DIR), dir_mode, owner.as_ref())
                .await?;
            let mut changed = host
                .put_file(
                    &Path::new(Layout::TLS_DIR).join(render::CA_CERT),
                    ca.cert_pem().as_bytes(),
                    0o644,
                    owner.as_ref(),
                )
                .await?;
            if let Some(reason) = d.cert_reason(host.as_ref(), node, Some(ca.info())).await? {
                issue_node_certs(&d, host.as_ref(), node, &ca, true).await?;
                issued.push(format!("{} ({reason})", node.name));
                changed = true;
            }
            if changed {
                run.reload.insert(node.name.clone());
            }
            let cert = host
                .read_file(&Path::new(Layout::TLS_DIR).join(render::NODE_CERT))
                .await?
                .unwrap_or_default();
            let info = pki::inspect_pem(&String::from_utf8_lossy(&cert))?;
            let entry = run.state.nodes.entry(node.name.clone()).or_default();
            entry.cert_fingerprint_sha256 = info.fingerprint_sha256;
            entry.cert_not_after = info.not_after;
        }
        // The CA file the clients (and `provision env`) use.
        crate::state::write_atomic(&d.ca_file(), ca.cert_pem().as_bytes(), 0o644)?;
        run.state.ca = Some(ca.info().into());
        run.state.save(&d.dir)?;
        let detail = match (ca_created, issued.is_empty()) {
            (true, _) => format!("created the CA; issued {}", issued.join(", ")),
            (false, true) => "all valid".to_string(),
            (false, false) => format!("issued {}", issued.join(", ")),
        };
        let changed = ca_created || !issued.is_empty();
        run.ca = Some(ca);
        Ok(Applied { detail, changed })
    }
}
