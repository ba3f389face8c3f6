//! `provision render` (every file each node receives, or a systemd host would, and the
//! environment's monitoring files) and
//! `provision certs show` (the CA and every node's certificates): read-only views of an
//! environment.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::deployment::Deployment;
use crate::pki;
use crate::render::{self, Layout, NodeSpec, Renderer};

/// `provision render`: every file each node receives, under `out/NODE/`. With
/// `host_layout`, the files a systemd host at these addresses would receive (units,
/// hardening files and all), whatever this environment's provider is.
pub fn render_to(d: &Deployment, out: &Path, host_layout: bool) -> Result<Vec<PathBuf>> {
    let renderer = Renderer::new()?;
    let mut written = Vec::new();
    let nodes = if host_layout {
        let addresses: Vec<IpAddr> = d.nodes.iter().map(|n| n.address).collect();
        NodeSpec::cluster(&d.env, &addresses, |_| Layout::system())?
    } else {
        d.nodes.clone()
    };
    for node in &nodes {
        for file in renderer.render_node(&d.env, node)? {
            let path = out.join(&node.name).join(&file.path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("create {}", parent.display()))?;
            }
            crate::state::write_atomic(&path, file.content.as_bytes(), file.mode)?;
            written.push(path);
        }
    }
    // The Prometheus server reads the CA and its token: on the operator's machine, where
    // `provision` keeps them; with the host layout, where a Prometheus host keeps its own.
    let (ca_file, token_file) = if host_layout {
        (
            PathBuf::from("/etc/prometheus/keyhold-ca.crt"),
            PathBuf::from("/etc/prometheus/keyhold-metrics-token"),
        )
    } else {
        (d.ca_file(), d.dir.root().join("prometheus-metrics-token"))
    };
    let operator = if host_layout {
        render::OperatorPaths::system(&d.env)
    } else {
        let agent = crate::workflows::drill_agent::process(d)?;
        render::OperatorPaths {
            provision: agent.program,
            state_dir: d
                .dir
                .root()
                .parent()
                .context("an environment's state directory has a parent")?
                .to_path_buf(),
            env_file: std::path::absolute(&d.env.file)?,
            aws_env_file: d.dir.root().join("aws.env"),
            user: None,
        }
    };
    let shared = renderer
        .render_monitoring(&d.env, &nodes, &ca_file, &token_file)?
        .into_iter()
        .chain(renderer.render_operator(&d.env, &operator)?);
    for file in shared {
        let path = out.join(&file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create {}", parent.display()))?;
        }
        crate::state::write_atomic(&path, file.content.as_bytes(), file.mode)?;
        written.push(path);
    }
    Ok(written)
}

/// `provision certs show`: the CA and every node's certificates, read from their hosts.
pub async fn certificates(d: &Deployment) -> Result<Vec<(String, PathBuf, pki::CertInfo)>> {
    let mut out = Vec::new();
    let ca = d.ca_file();
    if !ca.exists() {
        bail!(
            "{} has no certificates yet; `provision up --env {}` creates them",
            d.env.name,
            d.env.name
        );
    }
    out.push(("CA".to_string(), ca.clone(), pki::inspect_file(&ca)?));
    for node in &d.nodes {
        let host = d.host(node);
        for (what, file) in [
            ("server", render::NODE_CERT),
            ("client", render::CLIENT_CERT),
        ] {
            let rel = Path::new(Layout::TLS_DIR).join(file);
            if let Some(pem) = host.read_file(&rel).await? {
                let info = pki::inspect_pem(&String::from_utf8_lossy(&pem))
                    .with_context(|| format!("read {}'s {what} certificate", node.name))?;
                out.push((
                    format!("{} {what}", node.name),
                    node.layout.root.join(&rel),
                    info,
                ));
            }
        }
    }
    Ok(out)
}
