//! `files`: every file a node receives, rendered from `templates/` (the server config, and on a
//! host its units and hardening files), plus its private environment file (0600: the seal's and
//! S3's credentials), written through the node's host only where they differ.

use std::path::Path;

use anyhow::Result;
use async_trait::async_trait;

use super::UpRun;
use crate::engine::{Applied, Change, Note, Step};
use crate::environment::Seal;
use crate::render::{Layout, NodeSpec};
use crate::state::fingerprint;

pub struct Files;

impl Files {
    /// The node's environment file as this run would write it; None when there is nothing to
    /// pass on, or (in `plan`, under a transit seal) when the token is not known yet.
    fn environment_file(run: &UpRun) -> Option<String> {
        let token = run.transit_token.as_deref().map(|t| t.as_str());
        if matches!(run.d.env.seal, Seal::Transit(_)) && run.d.unsealer.is_some() && token.is_none()
        {
            return None;
        }
        run.d.node_environment_file(token)
    }

    async fn node_changes(run: &UpRun, node: &NodeSpec) -> Result<Vec<Change>> {
        let host = run.d.host(node);
        let mut changes = Vec::new();
        if run.d.binary_wanted(host.as_ref()).await?
            && host.read_file(Path::new(Layout::BINARY)).await?.is_none()
        {
            changes.push(Change::node(
                &node.name,
                format!("install {} ({})", Layout::BINARY, run.d.binary.display()),
            ));
        }
        if let Some(content) = Self::environment_file(run) {
            let file = node.layout.credentials_file();
            let old = host.read_file(Path::new(file)).await?;
            if old.as_deref() != Some(content.as_bytes()) {
                changes.push(Change::node(
                    &node.name,
                    format!("write {file} (credentials for its services)"),
                ));
            }
        }
        for file in run.renderer.render_node(&run.d.env, node)? {
            let old = host.read_file(&file.path).await?;
            if old.as_deref() != Some(file.content.as_bytes()) {
                let verb = if old.is_none() { "write" } else { "update" };
                changes.push(Change::node(
                    &node.name,
                    format!("{verb} {} ({})", file.path.display(), file.purpose),
                ));
            }
        }
        Ok(changes)
    }
}

#[async_trait(?Send)]
impl Step<UpRun> for Files {
    fn name(&self) -> &'static str {
        "files"
    }

    async fn check(&self, run: &UpRun) -> Result<Vec<Change>> {
        let checks = run.d.nodes.iter().map(|node| Self::node_changes(run, node));
        let per_node = futures::future::try_join_all(checks).await?;
        Ok(per_node.into_iter().flatten().collect())
    }

    async fn apply(&self, run: &mut UpRun, _: &[Change], _: &Note<'_>) -> Result<Applied> {
        let d = run.d.clone();
        let env_file = Self::environment_file(run);
        let mut written = Vec::new();
        for node in &d.nodes {
            let host = d.host(node);
            let service = node.layout.service_owner();
            host.ensure_dir(Path::new(Layout::DATA_DIR), 0o700, service.as_ref())
                .await?;
            host.ensure_dir(Path::new(Layout::LOG_DIR), 0o750, service.as_ref())
                .await?;
            let owner = node.layout.config_owner();
            // On a systemd host, units and the system's own files are root's alone.
            let owner_of = |path: &Path| {
                if node.layout.systemd && !path.starts_with(Layout::CONFIG_DIR) {
                    Some(crate::providers::Owner::new("root", "root"))
                } else {
                    owner.clone()
                }
            };
            if d.install_binary(host.as_ref()).await? {
                written.push(format!("{}:{}", node.name, Layout::BINARY));
            }
            if let Some(content) = &env_file {
                if host
                    .put_file(
                        Path::new(node.layout.credentials_file()),
                        content.as_bytes(),
                        node.layout.private_file().0,
                        owner.as_ref(),
                    )
                    .await?
                {
                    written.push(format!("{}:{}", node.name, node.layout.credentials_file()));
                    run.env_changed.insert(node.name.clone());
                }
            }
            for file in run.renderer.render_node(&d.env, node)? {
                if host
                    .put_file(
                        &file.path,
                        file.content.as_bytes(),
                        file.mode,
                        owner_of(&file.path).as_ref(),
                    )
                    .await?
                {
                    written.push(format!("{}:{}", node.name, file.path.display()));
                }
                if file.path == Path::new(Layout::SERVER_CONFIG) {
                    run.config_sha
                        .insert(node.name.clone(), fingerprint(file.content.as_bytes()));
                }
            }
        }
        Ok(if written.is_empty() {
            Applied::ok("up to date")
        } else {
            Applied::changed(format!("wrote {} file(s)", written.len()))
        })
    }
}
