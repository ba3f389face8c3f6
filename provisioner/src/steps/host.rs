//! `host setup` (systemd hosts: the ssh provider): the `install-server` playbook on every host,
//! concurrently, before anything else is written there: the service user the other steps give
//! files to, the directories, the hardened unit (enabled, systemd reloaded) and the host files
//! that keep secrets out of swap and core dumps; with S3 snapshots, `snapshot-timer` after it.
//! Local nodes need none of it.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use async_trait::async_trait;

use super::UpRun;
use crate::engine::{Applied, Change, Note, Step};
use crate::playbook::{Playbook, Target};
use crate::render::NodeSpec;

pub struct HostSetup;

/// The playbooks `up` runs on a host of this environment, in order.
fn playbooks(run: &UpRun) -> Vec<&'static str> {
    let mut names = vec!["install-server"];
    if run.d.env.snapshots.as_ref().is_some_and(|s| s.s3.is_some()) {
        names.push("snapshot-timer");
    }
    names
}

fn vars(run: &UpRun) -> BTreeMap<String, String> {
    BTreeMap::from([(
        "keyhold_binary".to_string(),
        run.d.binary.display().to_string(),
    )])
}

async fn on_node(run: &UpRun, node: &NodeSpec, apply: bool) -> Result<(String, Vec<String>)> {
    let mut lines = Vec::new();
    for name in playbooks(run) {
        lines.extend(one_playbook(run, node, name, apply).await?);
    }
    Ok((node.name.clone(), lines))
}

async fn one_playbook(
    run: &UpRun,
    node: &NodeSpec,
    name: &str,
    apply: bool,
) -> Result<Vec<String>> {
    let playbook = Playbook::shipped(name)?;
    let host = run.d.host(node);
    let rendered = run.renderer.render_node(&run.d.env, node)?;
    let vars = vars(run);
    let target = Target {
        host: host.as_ref(),
        rendered: &rendered,
        vars: &vars,
        live: true,
    };
    let lines = if apply {
        playbook
            .apply(&target)
            .await
            .with_context(|| format!("the {name} playbook on {}", node.name))?
            .into_iter()
            .filter(|o| o.changed)
            .map(|o| format!("{}: {}", o.step, o.detail))
            .collect()
    } else {
        playbook
            .check(&target)
            .await
            .with_context(|| format!("the {name} playbook on {}", node.name))?
    };
    Ok(lines)
}

#[async_trait(?Send)]
impl Step<UpRun> for HostSetup {
    fn name(&self) -> &'static str {
        "host setup"
    }

    fn wanted(&self, run: &UpRun) -> bool {
        run.d.nodes.iter().any(|n| n.layout.systemd)
    }

    async fn check(&self, run: &UpRun) -> Result<Vec<Change>> {
        let checks = run.d.nodes.iter().map(|node| on_node(run, node, false));
        Ok(futures::future::try_join_all(checks)
            .await?
            .into_iter()
            .flat_map(|(node, lines)| lines.into_iter().map(move |line| Change::node(&node, line)))
            .collect())
    }

    async fn apply(&self, run: &mut UpRun, _: &[Change], _: &Note<'_>) -> Result<Applied> {
        let run: &UpRun = run;
        let applies = run.d.nodes.iter().map(|node| on_node(run, node, true));
        let done = futures::future::try_join_all(applies).await?;
        let changed: Vec<String> = done
            .iter()
            .filter(|(_, lines)| !lines.is_empty())
            .map(|(node, lines)| format!("{node}: {} step(s)", lines.len()))
            .collect();
        let names = playbooks(run).join(" + ");
        Ok(if changed.is_empty() {
            Applied::ok(format!("{names}: nothing to change"))
        } else {
            Applied::changed(format!("{names}: {}", changed.join(", ")))
        })
    }
}
