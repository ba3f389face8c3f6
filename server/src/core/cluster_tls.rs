//! Rotation of the cluster port's TLS keyring (`core/cluster/tls`): the
//! active node begins a new generation (`sys/storage/raft/cluster-tls/rotate`),
//! every node applies the stored keyring when it changes (its leadership
//! watcher looks every [`FOLLOW_INTERVAL`], and SIGHUP looks at once), and
//! the active node moves the rotation to its next step only when every
//! member has proved on a fresh handshake that it took the current one (see
//! `raft::tls`). A member that is down holds the rotation where it is, so it
//! never comes back to a cluster it can no longer talk to.

use std::time::Duration;

use serde_json::Value;

use super::ha::CLUSTER_TLS_KEY;
use super::{Core, Role};
use crate::error::{Error, Result};

/// How often each node compares the stored keyring with the one it uses.
pub(super) const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);

impl Core {
    /// `sys/storage/raft/cluster-tls/rotate` (active node): begins a new
    /// generation; the answer is the stored state, as the read shows it.
    pub(super) async fn rotate_cluster_tls(&self) -> Result<Value> {
        let ha = self
            .ha
            .as_ref()
            .ok_or_else(|| Error::invalid("this server does not use raft storage"))?;
        let _guard = self.cluster_tls_rotation.lock().await;
        let current = self.cluster_tls().await?;
        let next = current
            .begin_rotation()
            .map_err(|e| Error::invalid(e.to_string()))?;
        self.view("").put_json(CLUSTER_TLS_KEY, &next).await?;
        ha.apply_tls(&next).await?;
        tracing::info!(
            generation = next.generation,
            "cluster TLS rotation begun: every node trusts the new CA next"
        );
        Ok(next.status())
    }

    /// `sys/storage/raft/cluster-tls` (read): the stored generation, step and
    /// fingerprints.
    pub(super) async fn cluster_tls_status(&self) -> Result<Value> {
        Ok(self.cluster_tls().await?.status())
    }

    /// Applies the stored cluster TLS keyring if this node uses another one,
    /// and, on the active node, moves a rotation on when every member is
    /// ready. Errors are logged: the next look tries again.
    pub async fn follow_cluster_tls(&self) {
        let Some(ha) = &self.ha else { return };
        if self.is_sealed() {
            return;
        }
        let stored = match self.cluster_tls().await {
            Ok(tls) => tls,
            Err(e) => {
                tracing::debug!(error = %e, "cluster TLS keyring not readable yet");
                return;
            }
        };
        match ha.apply_tls(&stored).await {
            Ok(true) => tracing::info!(
                generation = stored.generation,
                status = %stored.status(),
                "cluster TLS reloaded from the stored keyring"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not apply the stored cluster TLS keyring"),
        }
        if stored.rotation.is_some() && self.role() == Role::Active {
            if let Err(e) = self.advance_cluster_tls().await {
                tracing::warn!(error = %e, "cluster TLS rotation: could not take the next step");
            }
        }
    }

    /// Probes every other member with the current step's probe client; when
    /// all answer, stores and applies the next step.
    async fn advance_cluster_tls(&self) -> Result<()> {
        let Some(ha) = &self.ha else { return Ok(()) };
        let Some(node) = ha.running().await else {
            return Ok(());
        };
        let _guard = self.cluster_tls_rotation.lock().await;
        let current = self.cluster_tls().await?;
        let Some(next) = current.advance() else {
            return Ok(());
        };
        let me = node.node().name.clone();
        for (member, _) in node.membership() {
            if member.name == me {
                continue;
            }
            if let Err(e) = crate::raft::probe_cluster_tls(&current, &member.cluster_addr).await {
                tracing::debug!(node = %member.name, error = %e, "cluster TLS rotation waits for a member");
                return Ok(());
            }
        }
        self.view("").put_json(CLUSTER_TLS_KEY, &next).await?;
        ha.apply_tls(&next).await?;
        tracing::info!(
            generation = next.generation,
            status = %next.status(),
            "cluster TLS rotation: every member took the previous step; stored the next"
        );
        Ok(())
    }
}
