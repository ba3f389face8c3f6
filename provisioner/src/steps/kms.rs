//! `kms key`: under an awskms seal, the KMS key behind the seal's alias, created when the
//! alias names none (on the local provider against moto or a real endpoint), before any node
//! needs it.

use anyhow::Result;
use async_trait::async_trait;

use super::UpRun;
use crate::aws::kms::{self, KeyState};
use crate::engine::{Applied, Change, Note, Step};
use crate::environment::Seal;

pub struct KmsKey;

#[async_trait(?Send)]
impl Step<UpRun> for KmsKey {
    fn name(&self) -> &'static str {
        "kms key"
    }

    fn wanted(&self, run: &UpRun) -> bool {
        matches!(run.d.env.seal, Seal::AwsKms(_))
    }

    async fn check(&self, run: &UpRun) -> Result<Vec<Change>> {
        let Seal::AwsKms(settings) = &run.d.env.seal else {
            return Ok(Vec::new());
        };
        Ok(match kms::key_state(settings).await {
            Ok(KeyState::Exists(_)) => Vec::new(),
            Ok(KeyState::MissingAlias) => vec![Change::cluster(format!(
                "create a symmetric KMS key and its alias {} ({})",
                settings.kms_key_id,
                settings.endpoint.as_deref().unwrap_or("AWS")
            ))],
            Err(e) => vec![Change::cluster(format!(
                "check the KMS key (cannot be read now: {e:#})"
            ))],
        })
    }

    async fn apply(&self, run: &mut UpRun, _: &[Change], _: &Note<'_>) -> Result<Applied> {
        let Seal::AwsKms(settings) = &run.d.env.seal else {
            return Ok(Applied::ok("not an awskms seal"));
        };
        let (id, created) = kms::ensure_key(settings, &run.d.env.name).await?;
        Ok(if created {
            Applied::changed(format!(
                "created key {id} and alias {}",
                settings.kms_key_id
            ))
        } else {
            Applied::ok(format!("{} exists", settings.kms_key_id))
        })
    }
}
