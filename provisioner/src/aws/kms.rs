//! The KMS key behind an `awskms` seal: whether it exists, and (for an `alias/NAME` that does
//! not) creating a symmetric key and the alias, through aws-sdk-kms. Credentials come from the
//! standard AWS chain of `provision`'s own environment; nothing here is logged or kept.

use std::time::Duration;

use anyhow::{Context, Result};
use aws_config::BehaviorVersion;
use aws_sdk_kms::config::Region;
use aws_sdk_kms::error::DisplayErrorContext;

use crate::environment::AwsKms;

/// The AWS variables a local node needs to reach KMS (and S3) as `provision` does. Only these
/// are passed on, into the node's private environment file.
pub const AWS_VARIABLES: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
];

/// What `up` finds (or would do) about the seal's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// The key (or the key the alias names) exists: its key id.
    Exists(String),
    /// An alias that names no key: `up` creates a key and the alias.
    MissingAlias,
}

pub async fn client(kms: &AwsKms) -> aws_sdk_kms::Client {
    let region = kms
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()))
        .unwrap_or_else(|| "us-east-1".to_string());
    let mut loader = aws_config::defaults(BehaviorVersion::v2026_01_12())
        .region(Region::new(region))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_timeout(Duration::from_secs(30))
                .build(),
        );
    if let Some(endpoint) = &kms.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    aws_sdk_kms::Client::new(&loader.load().await)
}

/// Looks the seal's key up.
pub async fn key_state(kms: &AwsKms) -> Result<KeyState> {
    let client = client(kms).await;
    match client.describe_key().key_id(&kms.kms_key_id).send().await {
        Ok(out) => Ok(KeyState::Exists(
            out.key_metadata()
                .map(|m| m.key_id().to_string())
                .unwrap_or_default(),
        )),
        Err(e)
            if kms.kms_key_id.starts_with("alias/")
                && e.as_service_error()
                    .is_some_and(|s| s.is_not_found_exception()) =>
        {
            Ok(KeyState::MissingAlias)
        }
        Err(e) => Err(anyhow::anyhow!(
            "look up KMS key {} ({}): {}; check the seal's endpoint and region and that AWS \
             credentials are set (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile)",
            kms.kms_key_id,
            kms.endpoint.as_deref().unwrap_or("AWS"),
            DisplayErrorContext(&e)
        )),
    }
}

/// Makes sure the seal's key exists; returns the key id and whether it was created now.
pub async fn ensure_key(kms: &AwsKms, environment: &str) -> Result<(String, bool)> {
    match key_state(kms).await? {
        KeyState::Exists(id) => Ok((id, false)),
        KeyState::MissingAlias => {
            let client = client(kms).await;
            let key = client
                .create_key()
                .description(format!(
                    "Keyhold auto-unseal key of environment {environment}"
                ))
                .key_usage(aws_sdk_kms::types::KeyUsageType::EncryptDecrypt)
                .key_spec(aws_sdk_kms::types::KeySpec::SymmetricDefault)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(&e)))
                .with_context(|| format!("create a KMS key for {}", kms.kms_key_id))?;
            let id = key
                .key_metadata()
                .map(|m| m.key_id().to_string())
                .context("KMS returned no key id")?;
            client
                .create_alias()
                .alias_name(&kms.kms_key_id)
                .target_key_id(&id)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(&e)))
                .with_context(|| format!("create KMS alias {} for key {id}", kms.kms_key_id))?;
            Ok((id, true))
        }
    }
}
