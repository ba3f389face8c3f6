//! `seal "awskms"`: AWS KMS wraps the root key (Encrypt/Decrypt with a
//! symmetric key).
//!
//! Credentials and region come from the standard AWS chain (environment,
//! profile, instance role) unless the stanza names them, as in Vault. With
//! `endpoint` set (a VPC endpoint, or moto in the tests) the SDK talks to it
//! instead of the public endpoint.

use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_kms::config::{Credentials, Region};
use aws_sdk_kms::error::{DisplayErrorContext, SdkError};
use aws_sdk_kms::primitives::Blob;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use zeroize::Zeroizing;

use super::auto::{AutoSeal, AutoSealError, WrappedKey};

/// Encryption context bound to every wrap: a ciphertext made for Keyhold's
/// root key cannot be passed off as something else under the same KMS key.
const CONTEXT_KEY: &str = "keyhold";
const CONTEXT_VALUE: &str = "seal";

/// What `seal "awskms"` says (see [`crate::config::SealConfig::AwsKms`]).
#[derive(Clone)]
pub struct AwsKmsSettings {
    pub region: Option<String>,
    pub kms_key_id: String,
    pub endpoint: Option<String>,
    pub access_key: Option<String>,
    pub secret_key: Option<Zeroizing<String>>,
}

pub struct AwsKmsSeal {
    client: aws_sdk_kms::Client,
    key_id: String,
    region: String,
    endpoint: Option<String>,
}

impl std::fmt::Debug for AwsKmsSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl AwsKmsSeal {
    /// Builds the KMS client. Nothing is sent until the first wrap or unwrap.
    pub async fn new(settings: AwsKmsSettings) -> Self {
        // The behaviour version is pinned, not `latest()`: a new SDK release
        // must not change retry or timeout behaviour under a running server.
        let mut loader = aws_config::defaults(BehaviorVersion::v2026_01_12()).timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(10))
                .operation_timeout(Duration::from_secs(30))
                .build(),
        );
        let region = settings
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()))
            .or_else(|| {
                std::env::var("AWS_DEFAULT_REGION")
                    .ok()
                    .filter(|r| !r.is_empty())
            })
            .unwrap_or_else(|| "us-east-1".to_string());
        loader = loader.region(Region::new(region.clone()));
        let endpoint = settings.endpoint.clone().or_else(|| {
            std::env::var("AWS_KMS_ENDPOINT")
                .ok()
                .filter(|e| !e.is_empty())
        });
        if let Some(endpoint) = &endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let (Some(access), Some(secret)) = (&settings.access_key, &settings.secret_key) {
            loader = loader.credentials_provider(Credentials::new(
                access.clone(),
                secret.as_str(),
                None,
                None,
                "keyhold-seal-stanza",
            ));
        }
        let sdk = loader.load().await;
        AwsKmsSeal {
            client: aws_sdk_kms::Client::new(&sdk),
            key_id: settings.kms_key_id,
            region,
            endpoint,
        }
    }
}

/// Sorts an SDK failure into "try again later" and "the service said no".
fn classify<E, R>(what: &str, seal: &AwsKmsSeal, e: SdkError<E, R>) -> AutoSealError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let detail = DisplayErrorContext(&e).to_string();
    let message = format!("awskms: {what} with {}: {detail}", seal.describe());
    match e {
        SdkError::ServiceError(_) => AutoSealError::Refused(message),
        _ => AutoSealError::Unreachable(message),
    }
}

#[async_trait]
impl AutoSeal for AwsKmsSeal {
    fn kind(&self) -> &'static str {
        "awskms"
    }

    fn describe(&self) -> String {
        match &self.endpoint {
            Some(endpoint) => format!("KMS key {} in {} at {endpoint}", self.key_id, self.region),
            None => format!("KMS key {} in {}", self.key_id, self.region),
        }
    }

    async fn wrap(&self, plaintext: &[u8]) -> Result<WrappedKey, AutoSealError> {
        let out = self
            .client
            .encrypt()
            .key_id(&self.key_id)
            .plaintext(Blob::new(plaintext))
            .encryption_context(CONTEXT_KEY, CONTEXT_VALUE)
            .send()
            .await
            .map_err(|e| classify("encrypt", self, e))?;
        let blob = out.ciphertext_blob().ok_or_else(|| {
            AutoSealError::Refused(format!(
                "awskms: {} answered Encrypt without a ciphertext",
                self.describe()
            ))
        })?;
        Ok(WrappedKey {
            seal: "awskms".into(),
            key_id: out.key_id().unwrap_or(&self.key_id).to_string(),
            ciphertext: B64.encode(blob.as_ref()),
        })
    }

    async fn unwrap(&self, wrapped: &WrappedKey) -> Result<Zeroizing<Vec<u8>>, AutoSealError> {
        if wrapped.seal != "awskms" {
            return Err(AutoSealError::Malformed(format!(
                "the stored key was wrapped by the {} seal, not awskms",
                wrapped.seal
            )));
        }
        let ciphertext = wrapped.binary_ciphertext()?;
        // The key that wrapped it, not the configured one: after the stanza
        // moves to a new key, what the old key wrapped still opens.
        let out = self
            .client
            .decrypt()
            .key_id(&wrapped.key_id)
            .ciphertext_blob(Blob::new(ciphertext))
            .encryption_context(CONTEXT_KEY, CONTEXT_VALUE)
            .send()
            .await
            .map_err(|e| classify("decrypt", self, e))?;
        let plain = out.plaintext().ok_or_else(|| {
            AutoSealError::Refused(format!(
                "awskms: {} answered Decrypt without a plaintext",
                self.describe()
            ))
        })?;
        Ok(Zeroizing::new(plain.as_ref().to_vec()))
    }
}
