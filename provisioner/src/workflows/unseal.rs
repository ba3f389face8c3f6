//! `provision unseal`: every sealed node unsealed from the encrypted init output (the
//! unsealer first, when the environment has one); under an auto seal, waits for the nodes to
//! unseal themselves and reports it.

use std::path::PathBuf;

use anyhow::Result;

use crate::cluster::Role;
use crate::deployment::{Deployment, AUTO_UNSEAL_TIMEOUT, JOIN_TIMEOUT};
use crate::engine::{Outcome, Progress};

/// Unseals every sealed node from the encrypted init output.
pub async fn unseal(d: &Deployment, identity: &[PathBuf], progress: &mut Progress) -> Result<()> {
    if let Some(unsealer) = &d.unsealer {
        let step = progress.start(format!("unseal {}", unsealer.name));
        let cluster = d.unsealer_cluster(unsealer)?;
        match Role::from_health(cluster.health(0).await.as_ref()) {
            Role::Active | Role::Standby => progress.finish(step, Outcome::Ok, "unsealed"),
            Role::Down => progress.finish(
                step,
                Outcome::Failed,
                "not running (`provision up` starts it)",
            ),
            Role::Sealed | Role::Uninitialized => {
                let identities = d.identities(identity)?;
                let init = d.unsealer_store()?.load_init(&identities)?;
                cluster.unseal(0, &init.unseal_keys_b64).await?;
                progress.finish(step, Outcome::Changed, "unsealed");
            }
        }
    }
    if d.env.seal.is_auto() {
        let cluster = d.cluster()?;
        for (i, node) in d.nodes.iter().enumerate() {
            let step = progress.start(format!("unseal {}", node.name));
            match Role::from_health(cluster.health(i).await.as_ref()) {
                Role::Active | Role::Standby => progress.finish(
                    step,
                    Outcome::Ok,
                    format!("unsealed ({} auto-unseal)", d.env.seal.kind()),
                ),
                Role::Down => progress.finish(
                    step,
                    Outcome::Failed,
                    "not running (`provision up` starts it)",
                ),
                Role::Sealed | Role::Uninitialized => {
                    progress.note(&step, "the environment auto-unseals: waiting for it");
                    cluster.wait_auto_unsealed(i, AUTO_UNSEAL_TIMEOUT).await?;
                    progress.finish(step, Outcome::Ok, "unsealed itself");
                }
            }
        }
        return Ok(());
    }
    let identities = d.identities(identity)?;
    let (store, _) = d.secret_store()?;
    let init = store.load_init(&identities)?;
    let cluster = d.cluster()?;
    for (i, node) in d.nodes.iter().enumerate() {
        let step = progress.start(format!("unseal {}", node.name));
        match Role::from_health(cluster.health(i).await.as_ref()) {
            Role::Active | Role::Standby => progress.finish(step, Outcome::Ok, "unsealed"),
            Role::Down => progress.finish(
                step,
                Outcome::Failed,
                "not running (`provision up` starts it)",
            ),
            Role::Uninitialized => {
                cluster.wait_initialized(i, JOIN_TIMEOUT).await?;
                cluster.unseal(i, &init.unseal_keys_b64).await?;
                progress.finish(step, Outcome::Changed, "joined and unsealed");
            }
            Role::Sealed => {
                cluster.unseal(i, &init.unseal_keys_b64).await?;
                progress.finish(step, Outcome::Changed, "unsealed");
            }
        }
    }
    Ok(())
}
