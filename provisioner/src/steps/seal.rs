//! `init`, `auto-unseal` and `unseal`: the cluster initialised once (its shares and root token
//! encrypted with age before anything else happens), then every node unsealed: by the
//! operator's shares from the encrypted init output, or, under an auto seal, by itself (waited
//! for, bounded).

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use chrono::Utc;

use super::UpRun;
use crate::cluster::Role;
use crate::deployment::{AUTO_UNSEAL_TIMEOUT, JOIN_TIMEOUT};
use crate::engine::{Applied, Change, Note, Step};
use crate::pki;
use crate::secret_zero::InitSecrets;

pub struct Init;
pub struct AutoUnseal;
pub struct Unseal;

/// Whether the environment has certificates yet: before it does, nothing can be asked of the
/// cluster, and `plan` reports what `up` would then do.
fn has_ca(run: &UpRun) -> bool {
    run.ca.is_some() || pki::inspect_file(&run.d.ca_file()).is_ok()
}

#[async_trait(?Send)]
impl Step<UpRun> for Init {
    fn name(&self) -> &'static str {
        "init"
    }

    async fn check(&self, run: &UpRun) -> Result<Vec<Change>> {
        let initialized_before = run.state.cluster.initialized_at.is_some();
        let initialise = vec![Change::cluster("initialise the cluster")];
        if !has_ca(run) {
            return Ok(initialise);
        }
        let roles = run.cluster()?.roles().await;
        let any_initialized = roles
            .iter()
            .any(|(r, _)| matches!(r, Role::Active | Role::Standby | Role::Sealed));
        // Stopped nodes (after `down`) answer nothing, but `up` starts and unseals them.
        Ok(if any_initialized || initialized_before {
            Vec::new()
        } else {
            initialise
        })
    }

    async fn apply(&self, run: &mut UpRun, _: &[Change], _: &Note<'_>) -> Result<Applied> {
        let d = run.d.clone();
        let cluster = run.cluster()?;
        let (store, identity_created) = d.secret_store()?;
        run.identity_created = identity_created;
        let roles = cluster.roles().await;
        let initialized = roles
            .iter()
            .any(|(r, _)| matches!(r, Role::Active | Role::Standby | Role::Sealed));
        let pending = d.dir.init_pending_file();
        if let Ok(sent_at) = std::fs::read_to_string(&pending) {
            if initialized && !store.has_init() {
                bail!(
                    "an earlier `provision up` asked the cluster to initialise ({}) and was \
                     stopped before it saved the init output: the cluster is initialised but \
                     its unseal shares and root token are lost, and nothing can unseal it once \
                     its nodes restart. Take what you need from it now (it serves while it runs); \
                     then `provision down --env {} --purge` and `provision up` make a new one. \
                     ({} records this.)",
                    sent_at.trim(),
                    d.env.name,
                    pending.display()
                );
            }
            // Either the output was saved (stopped just after), or `sys/init` never reached a
            // node (stopped just before): nothing is lost either way.
            std::fs::remove_file(&pending)
                .with_context(|| format!("remove {}", pending.display()))?;
        }
        let applied = if initialized {
            if !store.has_init() {
                bail!(
                    "the cluster is initialised but its init output is not in {}; without the \
                     unseal shares nothing can be done. If this cluster holds nothing of value, \
                     run `provision down --env {} --purge` and `provision up` again",
                    d.dir.secrets_dir().display(),
                    d.env.name
                );
            }
            Applied::ok("already initialised")
        } else {
            if let Some(at) = run.state.cluster.initialized_at {
                bail!(
                    "state says the cluster was initialised at {at}, but no node reports being \
                     initialised: its data is gone. Restore it from a snapshot, or run \
                     `provision down --env {} --purge` to start again",
                    d.env.name
                );
            }
            if store.has_init() {
                bail!(
                    "{} already holds init output of an earlier cluster, and no node is \
                     initialised; move it away (it may be the only copy of that cluster's \
                     keys) or purge the environment",
                    d.dir.secrets_dir().display()
                );
            }
            let init = &d.env.init;
            let auto = d.env.seal.is_auto();
            crate::state::write_atomic(
                &pending,
                format!("sys/init sent to {} at {}\n", d.nodes[0].name, Utc::now()).as_bytes(),
                0o600,
            )?;
            let out = cluster
                .init(0, init.secret_shares, init.secret_threshold, auto)
                .await?;
            // Kept before anything else happens: these shares are the cluster's only keys.
            let files = store.save_init(&InitSecrets {
                unseal_keys_b64: if auto {
                    out.recovery_keys_base64.clone()
                } else {
                    out.keys_base64.clone()
                },
                root_token: out.root_token.clone(),
                created_at: Utc::now(),
                recovery: auto,
            })?;
            std::fs::remove_file(&pending)
                .with_context(|| format!("remove {}", pending.display()))?;
            run.state.cluster.initialized_at = Some(Utc::now());
            run.state.cluster.root_token_revoked = false;
            run.state.save(&d.dir)?;
            Applied::changed(format!(
                "{} {}shares (threshold {}) encrypted to {}",
                init.secret_shares,
                if auto { "recovery " } else { "" },
                init.secret_threshold,
                files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        };
        let identities = d.identities(&run.identity)?;
        run.init = Some(store.load_init(&identities)?);
        run.store = Some(store);
        Ok(applied)
    }
}

#[async_trait(?Send)]
impl Step<UpRun> for AutoUnseal {
    fn name(&self) -> &'static str {
        "auto-unseal"
    }

    fn wanted(&self, run: &UpRun) -> bool {
        run.d.env.seal.is_auto()
    }

    /// Nothing to change: the nodes unseal themselves; `apply` waits for them.
    async fn check(&self, _: &UpRun) -> Result<Vec<Change>> {
        Ok(Vec::new())
    }

    async fn apply(&self, run: &mut UpRun, _: &[Change], note: &Note<'_>) -> Result<Applied> {
        let cluster = run.cluster()?;
        let started = std::time::Instant::now();
        for (i, node) in run.d.nodes.iter().enumerate() {
            note.say(&format!("waiting for {} to unseal itself", node.name));
            cluster.wait_auto_unsealed(i, AUTO_UNSEAL_TIMEOUT).await?;
        }
        Ok(Applied::ok(format!(
            "every node unsealed itself ({}, {:.1}s)",
            run.d.env.seal.kind(),
            started.elapsed().as_secs_f64()
        )))
    }
}

#[async_trait(?Send)]
impl Step<UpRun> for Unseal {
    fn name(&self) -> &'static str {
        "unseal"
    }

    async fn check(&self, run: &UpRun) -> Result<Vec<Change>> {
        if run.d.env.seal.is_auto() {
            return Ok(Vec::new());
        }
        if !has_ca(run) {
            return Ok(vec![Change::cluster("unseal every node")]);
        }
        let roles = run.cluster()?.roles().await;
        Ok(run
            .d
            .nodes
            .iter()
            .zip(&roles)
            .filter(|(_, (role, _))| {
                matches!(role, Role::Sealed | Role::Uninitialized | Role::Down)
            })
            .map(|(node, _)| Change::node(&node.name, "unseal it"))
            .collect())
    }

    /// The first initialised node, then the rest (which join through `retry_join`).
    async fn apply(&self, run: &mut UpRun, _: &[Change], note: &Note<'_>) -> Result<Applied> {
        if run.d.env.seal.is_auto() {
            return Ok(Applied::ok("not needed: the nodes unseal themselves"));
        }
        let cluster = run.cluster()?;
        let roles = cluster.roles().await;
        let first = roles
            .iter()
            .position(|(r, _)| !matches!(r, Role::Uninitialized | Role::Down))
            .unwrap_or(0);
        let mut order: Vec<usize> = vec![first];
        order.extend((0..run.d.nodes.len()).filter(|i| *i != first));
        let mut unsealed = Vec::new();
        for i in order {
            let role = Role::from_health(cluster.health(i).await.as_ref());
            match role {
                Role::Active | Role::Standby => continue,
                Role::Uninitialized => {
                    note.say(&format!(
                        "{} waits for its join challenge",
                        run.d.nodes[i].name
                    ));
                    cluster.wait_initialized(i, JOIN_TIMEOUT).await?;
                }
                Role::Sealed | Role::Down => {}
            }
            cluster.unseal(i, run.keys()).await?;
            unsealed.push(run.d.nodes[i].name.clone());
        }
        Ok(if unsealed.is_empty() {
            Applied::ok("all unsealed")
        } else {
            Applied::changed(format!("unsealed {}", unsealed.join(", ")))
        })
    }
}
