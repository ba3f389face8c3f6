//! `provision down`: every service of the environment stopped (snapshot agents, nodes, then the
//! unsealer they no longer need); with `--purge`, everything the environment left on disk
//! removed as well (on systemd hosts: its units, config, TLS, data and logs; the service user
//! and the binary stay). A whole cluster going away needs no leadership hand-over, so the nodes are
//! stopped together rather than one after another.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::deployment::{Deployment, STOP_TIMEOUT};
use crate::engine::{Outcome, Progress};
use crate::providers::Service;
use crate::state::State;

/// What `down --purge` runs on a systemd host (relative paths: the node's root is `/`).
const PURGE_HOST: &str = "systemctl disable --now keyhold.service keyhold-snapshot.timer \
                          2>/dev/null; \
                          rm -f etc/systemd/system/keyhold.service \
                          etc/systemd/system/keyhold-snapshot.service \
                          etc/systemd/system/keyhold-snapshot.timer; \
                          rm -rf etc/keyhold.d opt/keyhold var/log/keyhold var/lib/keyhold && \
                          systemctl daemon-reload";

/// Stops `service` on every node at once; the names of those that ran.
async fn stop_all(d: &Deployment, service: Service) -> Result<Vec<String>> {
    let stops = d.nodes.iter().map(|node| async move {
        let stopped = d.host(node).stop(service, STOP_TIMEOUT).await?;
        anyhow::Ok(stopped.then(|| node.name.clone()))
    });
    Ok(futures::future::try_join_all(stops)
        .await?
        .into_iter()
        .flatten()
        .collect())
}

fn finish(progress: &mut Progress, step: crate::engine::Running, stopped: Vec<String>) {
    if stopped.is_empty() {
        progress.finish(step, Outcome::Ok, "not running");
    } else {
        progress.finish(
            step,
            Outcome::Changed,
            format!("stopped {}", stopped.join(", ")),
        );
    }
}

pub async fn down(d: &Deployment, purge: bool, progress: &mut Progress) -> Result<()> {
    if d.env.snapshots.as_ref().is_some_and(|s| s.s3.is_some()) {
        let step = progress.start("stop snapshot agents");
        let stopped = stop_all(d, Service::SnapshotAgent).await?;
        finish(progress, step, stopped);
    }
    let step = progress.start("stop nodes");
    let stopped = stop_all(d, Service::Server).await?;
    finish(progress, step, stopped);
    if let Some(unsealer) = &d.unsealer {
        // Last: the nodes no longer need it.
        let step = progress.start(format!("stop {}", unsealer.name));
        let stopped = d.host(unsealer).stop(Service::Server, STOP_TIMEOUT).await?;
        finish(
            progress,
            step,
            stopped.then(|| unsealer.name.clone()).into_iter().collect(),
        );
    }
    if purge && d.nodes.iter().any(|n| n.layout.systemd) {
        // On hosts provision did not make, purge takes away what it put there: units disabled
        // and removed, the server's config, TLS, data and logs deleted; the user and binary stay.
        let step = progress.start("purge keyhold from the hosts");
        let purges = d.nodes.iter().map(|node| async move {
            crate::providers::run_ok(
                d.host(node).as_ref(),
                &["sh", "-c", PURGE_HOST],
                Duration::from_secs(300),
            )
            .await
            .map(|()| node.name.clone())
        });
        let purged = futures::future::try_join_all(purges).await?;
        progress.finish(
            step,
            Outcome::Changed,
            format!("purged {}", purged.join(", ")),
        );
    }
    if purge {
        let step = progress.start("purge");
        let root = d.dir.root();
        if root.exists() {
            std::fs::remove_dir_all(root).with_context(|| format!("remove {}", root.display()))?;
            // The state root (`.provision`) goes too when this was its last environment.
            if let Some(parent) = root.parent() {
                let _ = std::fs::remove_dir(parent);
            }
            progress.finish(
                step,
                Outcome::Changed,
                format!("removed {}", root.display()),
            );
        } else {
            progress.finish(step, Outcome::Ok, "nothing to remove");
        }
    } else if let Ok(Some(mut state)) = State::load(&d.dir) {
        for node in state.nodes.values_mut() {
            node.provider = None;
        }
        state.save(&d.dir)?;
    }
    Ok(())
}
