//! `raft`: the cluster formed: one active node, autopilot configured with the environment's
//! timers (so joined nodes are promoted on them), and every node a voter. Also where the run
//! gets the token the remaining steps use.

use anyhow::Result;
use async_trait::async_trait;

use super::UpRun;
use crate::deployment::FORM_TIMEOUT;
use crate::engine::{Applied, Change, Note, Step};

pub struct Formation;

#[async_trait(?Send)]
impl Step<UpRun> for Formation {
    fn name(&self) -> &'static str {
        "raft"
    }

    /// Nothing to change by itself: a cluster forms from nodes that run and are unsealed;
    /// `apply` waits for it (and configures autopilot with `configure`'s fingerprint).
    async fn check(&self, _: &UpRun) -> Result<Vec<Change>> {
        Ok(Vec::new())
    }

    async fn apply(&self, run: &mut UpRun, _: &[Change], note: &Note<'_>) -> Result<Applied> {
        let d = run.d.clone();
        let cluster = run.cluster()?;
        cluster.wait_active(FORM_TIMEOUT).await?;
        let needs_config = run.needs_config();
        let init = run.init.as_ref().expect("the init step ran first");
        // A token for what follows: the initial root token while it lives, else a root token
        // generated from the shares for this run only.
        let (root_token, generated_root) = match run.state.cluster.root_token_revoked {
            false => (Some(init.root_token.clone()), false),
            true if needs_config => (Some(cluster.generate_root(run.keys()).await?), true),
            true => (None, false),
        };
        let store = run.store.as_ref().expect("the init step ran first");
        let identities = d.identities(&run.identity)?;
        let (credentials, credentials_changed) = d.credentials(store, &identities)?;
        if credentials_changed {
            store.save_credentials(&credentials)?;
        }
        let admin_token = match &root_token {
            Some(t) => t.clone(),
            None => d.admin_login(&cluster, &credentials).await?,
        };
        if let Some(token) = &root_token {
            // Autopilot first, so that joined nodes are promoted on this environment's timers.
            if needs_config {
                cluster.configure_autopilot(&d.env, token).await?;
            }
        }
        note.say("waiting for every node to become a voter");
        cluster.wait_voters(&admin_token, FORM_TIMEOUT).await?;
        run.root_token = root_token;
        run.generated_root = generated_root;
        run.admin_token = Some(admin_token);
        run.credentials = credentials;
        Ok(Applied::ok(format!("{} voters, one active", d.nodes.len())))
    }
}
