//! `configure`, `admin login` and `root token`: the environment's policies, secrets engines
//! and auth methods written through the API (audit devices are in each node's rendered
//! config, not here) (once per environment file: its
//! fingerprint is recorded), the admin login proven to work, and only then the initial root
//! token revoked.

use anyhow::{anyhow, Result};
use async_trait::async_trait;
use chrono::Utc;

use super::UpRun;
use crate::cluster::retrying;
use crate::engine::{Applied, Change, Note, Step};

pub struct Configure;
pub struct AdminLogin;
pub struct RootToken;

#[async_trait(?Send)]
impl Step<UpRun> for Configure {
    fn name(&self) -> &'static str {
        "configure"
    }

    async fn check(&self, run: &UpRun) -> Result<Vec<Change>> {
        Ok(if run.needs_config() {
            vec![Change::cluster(
                "configure policies, secrets engines and auth methods",
            )]
        } else {
            Vec::new()
        })
    }

    async fn apply(&self, run: &mut UpRun, changes: &[Change], _: &Note<'_>) -> Result<Applied> {
        if changes.is_empty() {
            return Ok(Applied::ok("as configured"));
        }
        let d = run.d.clone();
        let cluster = run.cluster()?;
        let token = run
            .root_token
            .as_deref()
            .ok_or_else(|| anyhow!("no root token"))?;
        // Idempotent, so retried whole through a leadership change.
        let created = retrying(|| cluster.configure(&d.env, token, &run.credentials)).await?;
        run.state.cluster.configured_fingerprint = Some(run.env_fingerprint.clone());
        run.state.save(&d.dir)?;
        Ok(Applied::ok(if created.is_empty() {
            "policies, users and roles written".to_string()
        } else {
            format!("created {}", created.join(", "))
        }))
    }
}

#[async_trait(?Send)]
impl Step<UpRun> for AdminLogin {
    fn name(&self) -> &'static str {
        "admin login"
    }

    /// Nothing to change: the admin login must work before the root token goes.
    async fn check(&self, _: &UpRun) -> Result<Vec<Change>> {
        Ok(Vec::new())
    }

    async fn apply(&self, run: &mut UpRun, _: &[Change], _: &Note<'_>) -> Result<Applied> {
        let d = run.d.clone();
        d.admin_login(&run.cluster()?, &run.credentials).await?;
        run.credentials.clear();
        Ok(Applied::ok(format!(
            "{} via auth/{}",
            d.env.admin.user, d.env.admin.auth_path
        )))
    }
}

#[async_trait(?Send)]
impl Step<UpRun> for RootToken {
    fn name(&self) -> &'static str {
        "root token"
    }

    async fn check(&self, run: &UpRun) -> Result<Vec<Change>> {
        Ok(
            if run.d.env.init.revoke_root_token && !run.state.cluster.root_token_revoked {
                vec![Change::cluster("revoke the initial root token")]
            } else {
                Vec::new()
            },
        )
    }

    async fn apply(&self, run: &mut UpRun, changes: &[Change], _: &Note<'_>) -> Result<Applied> {
        let d = run.d.clone();
        let cluster = run.cluster()?;
        if run.generated_root {
            if let Some(t) = &run.root_token {
                cluster.revoke_self(t).await?;
            }
        }
        let applied = if !changes.is_empty() {
            let init = run.init.as_ref().expect("the init step ran first");
            cluster.revoke_self(&init.root_token).await?;
            run.state.cluster.root_token_revoked = true;
            Applied::ok("initial root token revoked")
        } else if run.state.cluster.root_token_revoked {
            Applied::ok("revoked")
        } else {
            Applied::ok("kept (init.revoke_root_token = false)")
        };
        run.state.cluster.last_up = Some(Utc::now());
        run.state.env_fingerprint_sha256 = run.env_fingerprint.clone();
        run.state.save(&d.dir)?;
        Ok(applied)
    }
}
