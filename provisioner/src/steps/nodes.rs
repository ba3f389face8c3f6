//! `nodes`: every node's server started (all at once: they are independent until they form a
//! cluster), a running node whose certificates changed reloaded, and a running node whose
//! config or environment changed queued for `rolling restart`, which restarts them one at a
//! time once the cluster is unsealed (standbys first, the active node last) so the cluster
//! keeps its quorum.

use std::path::Path;

use anyhow::{Context, Result};
use async_trait::async_trait;
use chrono::Utc;

use super::UpRun;
use crate::cluster::Cluster;
use crate::deployment::{AUTO_UNSEAL_TIMEOUT, FORM_TIMEOUT, START_TIMEOUT, STOP_TIMEOUT};
use crate::engine::{Applied, Change, Note, Step};
use crate::providers::{Service, ServiceState};
use crate::render::{Layout, NodeSpec};
use crate::state::fingerprint;

pub struct Nodes;
pub struct RollingRestart;

/// The SHA-256 of the server config `node` should run with.
fn wanted_config(run: &UpRun, node: &NodeSpec) -> Result<String> {
    if let Some(sha) = run.config_sha.get(&node.name) {
        return Ok(sha.clone());
    }
    let files = run.renderer.render_node(&run.d.env, node)?;
    Ok(files
        .iter()
        .find(|f| f.path == Path::new(Layout::SERVER_CONFIG))
        .map(|f| fingerprint(f.content.as_bytes()))
        .unwrap_or_default())
}

/// Whether a running `node` must be restarted to pick up its config or environment.
fn stale(run: &UpRun, node: &NodeSpec) -> Result<bool> {
    let running_with = run
        .state
        .nodes
        .get(&node.name)
        .map(|n| n.config_sha256.as_str());
    Ok(running_with != Some(wanted_config(run, node)?.as_str())
        || run.env_changed.contains(&node.name))
}

#[async_trait(?Send)]
impl Step<UpRun> for Nodes {
    fn name(&self) -> &'static str {
        "nodes"
    }

    async fn check(&self, run: &UpRun) -> Result<Vec<Change>> {
        let mut changes = Vec::new();
        for node in &run.d.nodes {
            let host = run.d.host(node);
            match host.service_state(Service::Server).await? {
                ServiceState::Stopped => changes.push(Change::node(&node.name, "start it")),
                ServiceState::Running { .. } if stale(run, node)? => {
                    changes.push(Change::node(&node.name, "restart it (its config changed)"))
                }
                ServiceState::Running { .. } if run.reload.contains(&node.name) => changes.push(
                    Change::node(&node.name, "reload it (its certificates changed)"),
                ),
                ServiceState::Running { .. } => {}
            }
        }
        Ok(changes)
    }

    async fn apply(&self, run: &mut UpRun, _: &[Change], note: &Note<'_>) -> Result<Applied> {
        let d = run.d.clone();
        let binary_sha = fingerprint(
            &std::fs::read(&d.binary).with_context(|| format!("read {}", d.binary.display()))?,
        );
        let cluster = run.cluster()?;
        let mut started = Vec::new();
        let mut to_start = Vec::new();
        for (i, node) in d.nodes.iter().enumerate() {
            let host = d.host(node);
            let running = matches!(
                host.service_state(Service::Server).await?,
                ServiceState::Running { .. }
            );
            if !running {
                to_start.push(i);
            } else if stale(run, node)? {
                run.restart.push(i);
            } else if run.reload.contains(&node.name) {
                host.reload(Service::Server).await?;
                started.push(format!("{} (reloaded: certificates changed)", node.name));
            }
        }
        note.say(&format!("starting {} node(s)", to_start.len()));
        let d_ = &d;
        let starts = to_start
            .iter()
            .map(|&i| async move { d_.host(&d_.nodes[i]).start(Service::Server).await });
        futures::future::try_join_all(starts).await?;
        for &i in &to_start {
            let node = &d.nodes[i];
            let sha = wanted_config(run, node)?;
            run.state
                .nodes
                .entry(node.name.clone())
                .or_default()
                .config_sha256 = sha;
            started.push(node.name.clone());
        }
        let waits = (0..d.nodes.len()).map(|i| cluster.wait_responding(i, START_TIMEOUT));
        let healths = futures::future::try_join_all(waits).await?;
        for (node, health) in d.nodes.iter().zip(healths) {
            let record = d.provider.record(node).await?;
            let entry = run.state.nodes.entry(node.name.clone()).or_default();
            entry.version = health.version;
            entry.address = node.address.to_string();
            entry.api_addr = node.api_addr.clone();
            entry.binary = d.binary.clone();
            entry.binary_sha256 = binary_sha.clone();
            if entry.provider.as_ref() != Some(&record) {
                entry.started_at = Some(Utc::now());
            }
            entry.provider = Some(record);
        }
        run.state.save(&d.dir)?;
        let queued: Vec<&str> = run
            .restart
            .iter()
            .map(|&i| d.nodes[i].name.as_str())
            .collect();
        let mut detail = if started.is_empty() {
            format!("{} running", d.nodes.len())
        } else {
            format!("started {}", started.join(", "))
        };
        if !queued.is_empty() {
            detail.push_str(&format!("; restart queued for {}", queued.join(", ")));
        }
        Ok(Applied {
            detail,
            changed: !started.is_empty(),
        })
    }
}

#[async_trait(?Send)]
impl Step<UpRun> for RollingRestart {
    fn name(&self) -> &'static str {
        "rolling restart"
    }

    fn wanted(&self, run: &UpRun) -> bool {
        !run.restart.is_empty()
    }

    async fn check(&self, run: &UpRun) -> Result<Vec<Change>> {
        Ok(run
            .restart
            .iter()
            .map(|&i| Change::node(&run.d.nodes[i].name, "restart it (its config changed)"))
            .collect())
    }

    async fn apply(&self, run: &mut UpRun, _: &[Change], note: &Note<'_>) -> Result<Applied> {
        let cluster = run.cluster()?;
        let mut done = Vec::new();
        let restart = std::mem::take(&mut run.restart);
        for i in active_last(&restart, cluster.active().await) {
            let node = &run.d.nodes[i];
            note.say(&format!("restarting {}", node.name));
            restart_one(run, &cluster, i).await?;
            let sha = wanted_config(run, node)?;
            let record = run.d.provider.record(node).await?;
            let entry = run.state.nodes.entry(node.name.clone()).or_default();
            entry.config_sha256 = sha;
            entry.started_at = Some(Utc::now());
            entry.provider = Some(record);
            run.state.save(&run.d.dir)?;
            done.push(node.name.clone());
        }
        Ok(Applied::changed(format!(
            "restarted {} (config changed)",
            done.join(", ")
        )))
    }
}

/// Restarts node `i` gracefully (it hands leadership over as it stops), unseals it (or waits
/// for it to unseal itself) and waits until it serves again.
pub async fn restart_one(run: &UpRun, cluster: &Cluster, i: usize) -> Result<()> {
    let d = run.d.clone();
    let host = d.host(&d.nodes[i]);
    host.restart(Service::Server, STOP_TIMEOUT).await?;
    cluster.wait_responding(i, START_TIMEOUT).await?;
    if d.env.seal.is_auto() {
        cluster.wait_auto_unsealed(i, AUTO_UNSEAL_TIMEOUT).await?;
    } else {
        cluster.unseal(i, run.keys()).await?;
    }
    cluster.wait_serving(i, FORM_TIMEOUT).await
}

/// `nodes` with the active one (if among them) moved to the end: standbys are stopped or
/// restarted first, so leadership moves at most once.
pub fn active_last(nodes: &[usize], active: Option<usize>) -> Vec<usize> {
    let (mut standbys, active): (Vec<usize>, Vec<usize>) =
        nodes.iter().partition(|i| Some(**i) != active);
    standbys.extend(active);
    standbys
}

#[cfg(test)]
mod tests {
    use super::active_last;

    #[test]
    fn the_active_node_goes_last() {
        let cases: &[(&[usize], Option<usize>, &[usize])] = &[
            (&[0, 1, 2], Some(0), &[1, 2, 0]),
            (&[0, 1, 2], Some(2), &[0, 1, 2]),
            (&[0, 1, 2], None, &[0, 1, 2]),
            (&[1, 2], Some(0), &[1, 2]),
            (&[], Some(1), &[]),
        ];
        for (nodes, active, want) in cases {
            assert_eq!(
                active_last(nodes, *active),
                *want,
                "{nodes:?} active {active:?}"
            );
        }
    }
}
