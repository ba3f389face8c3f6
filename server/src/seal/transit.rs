//! `seal "transit"`: the transit secrets engine of another Keyhold (or
//! Vault) wraps the root key, as Vault users auto-unseal from a central
//! cluster.
//!
//! Vault's stanza and environment fallbacks: `address`/`VAULT_ADDR`,
//! `token`/`VAULT_TOKEN`, `namespace`/`VAULT_NAMESPACE`, TLS files. Unless
//! `disable_renewal` is set, the token is renewed in the background at half
//! its TTL, so a periodic token outlives the node's uptime.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::json;
use zeroize::Zeroizing;

use super::auto::{AutoSeal, AutoSealError, WrappedKey};
use crate::client::{CaCert, Client, ClientConfig, ClientError, Method};

/// How long one call to the transit server may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Renewal retries after a failure.
const RENEW_RETRY: Duration = Duration::from_secs(30);

/// What `seal "transit"` says (see [`crate::config::SealConfig::Transit`]).
#[derive(Clone)]
pub struct TransitSettings {
    pub address: String,
    pub token: Option<Zeroizing<String>>,
    pub key_name: String,
    pub mount_path: String,
    pub namespace: Option<String>,
    pub tls_ca_cert: Option<PathBuf>,
    pub tls_client_cert: Option<PathBuf>,
    pub tls_client_key: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    pub tls_skip_verify: bool,
    pub disable_renewal: bool,
}

pub struct TransitSeal {
    client: Client,
    mount: String,
    key_name: String,
    renewal: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for TransitSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Drop for TransitSeal {
    fn drop(&mut self) {
        if let Some(task) = self.renewal.take() {
            task.abort();
        }
    }
}

impl TransitSeal {
    pub fn new(settings: TransitSettings) -> Result<Self, AutoSealError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let token = settings
            .token
            .as_ref()
            .map(|t| t.as_str().to_string())
            .or_else(|| env("VAULT_TOKEN"));
        let config = ClientConfig {
            address: settings.address.clone(),
            token,
            ca_cert: settings.tls_ca_cert.clone().map(CaCert::File),
            client_cert: settings.tls_client_cert.clone(),
            client_key: settings.tls_client_key.clone(),
            skip_verify: settings.tls_skip_verify,
            timeout: CALL_TIMEOUT,
            tls_server_name: settings.tls_server_name.clone(),
            namespace: settings
                .namespace
                .clone()
                .or_else(|| env("VAULT_NAMESPACE")),
        };
        if config.token.is_none() {
            return Err(AutoSealError::Refused(
                "seal \"transit\": no token; set `token` in the stanza or VAULT_TOKEN in the \
                 server's environment"
                    .into(),
            ));
        }
        let client = Client::new(&config).map_err(|e| {
            AutoSealError::Refused(format!("seal \"transit\": building the client: {e}"))
        })?;
        let renewal = (!settings.disable_renewal).then(|| tokio::spawn(renew(client.clone())));
        Ok(TransitSeal {
            client,
            mount: settings.mount_path.trim_matches('/').to_string(),
            key_name: settings.key_name,
            renewal,
        })
    }

    fn error(&self, what: &str, e: ClientError) -> AutoSealError {
        let at = format!(
            "transit: {what} with key {:?} on {}/{}",
            self.key_name,
            self.client.address(),
            self.mount
        );
        match &e {
            ClientError::Transport { cause, .. } => {
                AutoSealError::Unreachable(format!("{at}: {cause}"))
            }
            // Sealed, standby without an active node, rate limited: the
            // transit server will answer later.
            ClientError::Api(api) if matches!(api.status, 429 | 500..=599) => {
                AutoSealError::Unreachable(format!("{at}: {}", api.errors.join("; ")))
            }
            ClientError::Api(api) => {
                AutoSealError::Refused(format!("{at}: {} ({})", api.errors.join("; "), api.status))
            }
            other => AutoSealError::Unreachable(format!("{at}: {other}")),
        }
    }

    async fn call(
        &self,
        what: &str,
        op: &str,
        body: serde_json::Value,
        field: &str,
    ) -> Result<Zeroizing<String>, AutoSealError> {
        let path = format!("{}/{op}/{}", self.mount, self.key_name);
        let response = self
            .client
            .request(Method::Post, &path, Some(&body))
            .await
            .map_err(|e| self.error(what, e))?;
        let value = response
            .json()
            .and_then(|j| j.pointer(&format!("/data/{field}")))
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                AutoSealError::Refused(format!(
                    "transit: {what} at {}: the answer has no data.{field}",
                    self.client.address()
                ))
            })?;
        Ok(Zeroizing::new(value.to_string()))
    }
}

#[async_trait]
impl AutoSeal for TransitSeal {
    fn kind(&self) -> &'static str {
        "transit"
    }

    fn describe(&self) -> String {
        format!(
            "transit key {:?} at {}/v1/{}",
            self.key_name,
            self.client.address(),
            self.mount
        )
    }

    async fn wrap(&self, plaintext: &[u8]) -> Result<WrappedKey, AutoSealError> {
        let encoded = Zeroizing::new(B64.encode(plaintext));
        let ciphertext = self
            .call(
                "encrypt",
                "encrypt",
                json!({ "plaintext": encoded.as_str() }),
                "ciphertext",
            )
            .await?;
        Ok(WrappedKey {
            seal: "transit".into(),
            key_id: format!("{}/{}", self.mount, self.key_name),
            ciphertext: ciphertext.to_string(),
        })
    }

    async fn unwrap(&self, wrapped: &WrappedKey) -> Result<Zeroizing<Vec<u8>>, AutoSealError> {
        if wrapped.seal != "transit" {
            return Err(AutoSealError::Malformed(format!(
                "the stored key was wrapped by the {} seal, not transit",
                wrapped.seal
            )));
        }
        let plaintext = self
            .call(
                "decrypt",
                "decrypt",
                json!({ "ciphertext": wrapped.ciphertext }),
                "plaintext",
            )
            .await?;
        let mut out = Zeroizing::new(Vec::new());
        B64.decode_vec(plaintext.as_str(), &mut out).map_err(|_| {
            AutoSealError::Malformed("transit: the decrypted plaintext is not base64".into())
        })?;
        Ok(out)
    }
}

/// Renews the seal's token at half its TTL for as long as it is renewable.
async fn renew(client: Client) {
    loop {
        let wait = match client
            .request(Method::Get, "auth/token/lookup-self", None)
            .await
        {
            Ok(response) => {
                let data = response.json().and_then(|j| j.get("data")).cloned();
                let ttl = data
                    .as_ref()
                    .and_then(|d| d.get("ttl"))
                    .and_then(|t| t.as_u64())
                    .unwrap_or(0);
                let renewable = data
                    .as_ref()
                    .and_then(|d| d.get("renewable"))
                    .and_then(|r| r.as_bool())
                    .unwrap_or(false);
                if ttl == 0 || !renewable {
                    tracing::info!(
                        "seal \"transit\": the token does not expire or is not renewable; not renewing it"
                    );
                    return;
                }
                Duration::from_secs((ttl / 2).max(5))
            }
            Err(e) => {
                tracing::warn!(error = %e, "seal \"transit\": looking up the token failed; retrying");
                RENEW_RETRY
            }
        };
        tokio::time::sleep(wait).await;
        if let Err(e) = client
            .request(Method::Post, "auth/token/renew-self", Some(&json!({})))
            .await
        {
            tracing::warn!(error = %e, "seal \"transit\": renewing the token failed; retrying");
            tokio::time::sleep(RENEW_RETRY).await;
        }
    }
}
