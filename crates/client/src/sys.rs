//! Typed `sys/` endpoints: init, seal and unseal, health, leader, generate-root, rekey, keyring.
//! Field names are Vault's, so the same structs read a Vault server's answers.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Client, ClientError, Method};

/// `GET sys/seal-status`, also the answer of `PUT sys/unseal`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SealStatus {
    #[serde(rename = "type")]
    pub seal_type: String,
    pub initialized: bool,
    pub sealed: bool,
    pub t: u32,
    pub n: u32,
    pub progress: u32,
    pub nonce: String,
    pub version: String,
    pub build_date: String,
    pub migration: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cluster_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cluster_id: String,
    pub recovery_seal: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub recovery_seal_type: String,
    pub storage_type: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `PUT sys/init` request. Zero and empty fields are left out of the body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InitRequest {
    pub secret_shares: u32,
    pub secret_threshold: u32,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub pgp_keys: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub root_token_pgp_key: String,
    #[serde(skip_serializing_if = "is_zero", default)]
    pub stored_shares: u32,
    #[serde(skip_serializing_if = "is_zero", default)]
    pub recovery_shares: u32,
    #[serde(skip_serializing_if = "is_zero", default)]
    pub recovery_threshold: u32,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub recovery_pgp_keys: Vec<String>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// `PUT sys/init` answer. Holds every key share and the root token, so `Debug` shows neither.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InitResponse {
    /// Unseal key shares, hex.
    pub keys: Vec<String>,
    pub keys_base64: Vec<String>,
    pub recovery_keys: Vec<String>,
    pub recovery_keys_base64: Vec<String>,
    pub root_token: String,
}

impl fmt::Debug for InitResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InitResponse")
            .field("keys", &format_args!("<{} redacted>", self.keys.len()))
            .field(
                "recovery_keys",
                &format_args!("<{} redacted>", self.recovery_keys.len()),
            )
            .field("root_token", &"<redacted>")
            .finish()
    }
}

/// `GET sys/health` query: which status code to answer for each state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthQuery {
    pub standby_ok: bool,
    pub perf_standby_ok: bool,
    pub active_code: Option<u16>,
    pub standby_code: Option<u16>,
    pub sealed_code: Option<u16>,
    pub uninit_code: Option<u16>,
}

impl HealthQuery {
    fn to_query(&self) -> String {
        let mut q = Vec::new();
        if self.standby_ok {
            q.push("standbyok=true".to_string());
        }
        if self.perf_standby_ok {
            q.push("perfstandbyok=true".to_string());
        }
        for (name, code) in [
            ("activecode", self.active_code),
            ("standbycode", self.standby_code),
            ("sealedcode", self.sealed_code),
            ("uninitcode", self.uninit_code),
        ] {
            if let Some(code) = code {
                q.push(format!("{name}={code}"));
            }
        }
        if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        }
    }
}

/// `GET sys/health` answer plus the status code the server chose.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthResponse {
    #[serde(skip)]
    pub status: u16,
    pub initialized: bool,
    pub sealed: bool,
    pub standby: bool,
    pub performance_standby: bool,
    pub replication_performance_mode: String,
    pub replication_dr_mode: String,
    pub server_time_utc: i64,
    pub version: String,
    pub cluster_name: String,
    pub cluster_id: String,
}

/// `GET sys/leader`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaderResponse {
    pub ha_enabled: bool,
    pub is_self: bool,
    pub active_time: String,
    pub leader_address: String,
    pub leader_cluster_address: String,
    pub performance_standby: bool,
    pub performance_standby_last_remote_wal: u64,
    pub last_wal: u64,
    pub raft_committed_index: u64,
    pub raft_applied_index: u64,
}

/// `sys/generate-root/attempt` and `.../update` answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerateRootStatus {
    pub nonce: String,
    pub started: bool,
    pub progress: u32,
    pub required: u32,
    pub complete: bool,
    pub encoded_token: String,
    pub encoded_root_token: String,
    pub pgp_fingerprint: String,
    /// Set when the server generated the OTP at `-init`; the caller needs it to decode.
    pub otp: String,
    pub otp_length: u32,
}

/// Which keys a rekey replaces: `sys/rekey/*` (unseal keys) or
/// `sys/rekey-recovery-key/*` (the recovery keys of an auto-unseal seal), as
/// `vault operator rekey -target=barrier|recovery` chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RekeyKeys {
    #[default]
    Barrier,
    Recovery,
}

impl RekeyKeys {
    fn path(self, step: &str) -> String {
        match self {
            RekeyKeys::Barrier => format!("sys/rekey/{step}"),
            RekeyKeys::Recovery => format!("sys/rekey-recovery-key/{step}"),
        }
    }
}

/// `PUT sys/rekey/init` request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RekeyInitRequest {
    pub secret_shares: u32,
    pub secret_threshold: u32,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub pgp_keys: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub backup: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub require_verification: bool,
}

/// `GET sys/rekey/init`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RekeyStatus {
    pub nonce: String,
    pub started: bool,
    pub t: u32,
    pub n: u32,
    pub progress: u32,
    pub required: u32,
    pub pgp_fingerprints: Option<Vec<String>>,
    pub backup: bool,
    pub verification_required: bool,
}

/// `PUT sys/rekey/update` answer. Holds the new shares when complete, so `Debug` hides them.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RekeyUpdateResponse {
    pub nonce: String,
    pub complete: bool,
    pub keys: Vec<String>,
    pub keys_base64: Vec<String>,
    pub pgp_fingerprints: Option<Vec<String>>,
    pub backup: bool,
    pub verification_required: bool,
    pub verification_nonce: String,
}

impl fmt::Debug for RekeyUpdateResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RekeyUpdateResponse")
            .field("nonce", &self.nonce)
            .field("complete", &self.complete)
            .field("keys", &format_args!("<{} redacted>", self.keys.len()))
            .field("verification_required", &self.verification_required)
            .finish()
    }
}

/// `sys/rekey/verify` status and update answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RekeyVerificationStatus {
    pub nonce: String,
    pub started: bool,
    pub t: u32,
    pub n: u32,
    pub progress: u32,
    pub complete: bool,
}

/// `GET sys/key-status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyStatus {
    pub term: u64,
    pub install_time: String,
    pub encryptions: u64,
}

impl Client {
    /// `GET sys/seal-status`.
    pub async fn seal_status(&self) -> Result<SealStatus, ClientError> {
        self.sys_json(Method::Get, "sys/seal-status", None).await
    }

    /// `GET sys/init`: whether the server has been initialised.
    pub async fn init_status(&self) -> Result<bool, ClientError> {
        let v: Value = self.sys_json(Method::Get, "sys/init", None).await?;
        Ok(v.get("initialized")
            .and_then(Value::as_bool)
            .unwrap_or(false))
    }

    /// `PUT sys/init`.
    pub async fn init(&self, req: &InitRequest) -> Result<InitResponse, ClientError> {
        let body = serde_json::to_value(req).expect("InitRequest serialises");
        self.sys_json(Method::Put, "sys/init", Some(&body)).await
    }

    /// `PUT sys/unseal` with one key share.
    pub async fn unseal(&self, key: &str) -> Result<SealStatus, ClientError> {
        self.sys_json(Method::Put, "sys/unseal", Some(&json!({ "key": key })))
            .await
    }

    /// `PUT sys/unseal` with `migrate`, for seal migration.
    pub async fn unseal_migrate(&self, key: &str) -> Result<SealStatus, ClientError> {
        let body = json!({ "key": key, "migrate": true });
        self.sys_json(Method::Put, "sys/unseal", Some(&body)).await
    }

    /// `PUT sys/unseal {"reset":true}`: forget the shares given so far.
    pub async fn unseal_reset(&self) -> Result<SealStatus, ClientError> {
        let body = json!({ "reset": true });
        self.sys_json(Method::Put, "sys/unseal", Some(&body)).await
    }

    /// `PUT sys/seal`.
    pub async fn seal(&self) -> Result<(), ClientError> {
        self.request(Method::Put, "sys/seal", None).await.map(drop)
    }

    /// `PUT sys/step-down`.
    pub async fn step_down(&self) -> Result<(), ClientError> {
        self.request(Method::Put, "sys/step-down", None)
            .await
            .map(drop)
    }

    /// `GET sys/health`. Every status the endpoint is documented to use (200, 429, 472,
    /// 473, 501, 503 or the codes asked for) is an answer, not an error.
    pub async fn health(&self, query: &HealthQuery) -> Result<HealthResponse, ClientError> {
        let path = format!("sys/health{}", query.to_query());
        let resp = match self.request(Method::Get, &path, None).await {
            Ok(resp) => resp,
            Err(ClientError::Api(e)) if e.body.is_some() => ApiResponse {
                status: e.status,
                body: Body::Json(e.body.clone().unwrap_or_default()),
            },
            Err(e) => return Err(e),
        };
        let mut health: HealthResponse = resp.decode(Method::Get, &self.url(&path))?;
        health.status = resp.status;
        Ok(health)
    }

    /// `GET sys/leader`.
    pub async fn leader(&self) -> Result<LeaderResponse, ClientError> {
        self.sys_json(Method::Get, "sys/leader", None).await
    }

    /// `GET sys/generate-root/attempt`.
    pub async fn generate_root_status(&self) -> Result<GenerateRootStatus, ClientError> {
        self.sys_json(Method::Get, "sys/generate-root/attempt", None)
            .await
    }

    /// `PUT sys/generate-root/attempt`. With no OTP and no PGP key, the server makes the OTP.
    pub async fn generate_root_init(
        &self,
        otp: Option<&str>,
        pgp_key: Option<&str>,
    ) -> Result<GenerateRootStatus, ClientError> {
        let mut body = serde_json::Map::new();
        if let Some(otp) = otp {
            body.insert("otp".into(), otp.into());
        }
        if let Some(pgp) = pgp_key {
            body.insert("pgp_key".into(), pgp.into());
        }
        self.sys_json(
            Method::Put,
            "sys/generate-root/attempt",
            Some(&Value::Object(body)),
        )
        .await
    }

    /// `PUT sys/generate-root/update` with one key share.
    pub async fn generate_root_update(
        &self,
        key: &str,
        nonce: &str,
    ) -> Result<GenerateRootStatus, ClientError> {
        let body = json!({ "key": key, "nonce": nonce });
        self.sys_json(Method::Put, "sys/generate-root/update", Some(&body))
            .await
    }

    /// `DELETE sys/generate-root/attempt`.
    pub async fn generate_root_cancel(&self) -> Result<(), ClientError> {
        self.request(Method::Delete, "sys/generate-root/attempt", None)
            .await
            .map(drop)
    }

    /// `GET sys/rekey/init`.
    pub async fn rekey_status(&self, target: RekeyKeys) -> Result<RekeyStatus, ClientError> {
        self.sys_json(Method::Get, &target.path("init"), None).await
    }

    /// `PUT sys/rekey/init`.
    pub async fn rekey_init(
        &self,
        target: RekeyKeys,
        req: &RekeyInitRequest,
    ) -> Result<RekeyStatus, ClientError> {
        let body = serde_json::to_value(req).expect("RekeyInitRequest serialises");
        self.sys_json(Method::Put, &target.path("init"), Some(&body))
            .await
    }

    /// `PUT sys/rekey/update` with one key share.
    pub async fn rekey_update(
        &self,
        target: RekeyKeys,
        key: &str,
        nonce: &str,
    ) -> Result<RekeyUpdateResponse, ClientError> {
        let body = json!({ "key": key, "nonce": nonce });
        self.sys_json(Method::Put, &target.path("update"), Some(&body))
            .await
    }

    /// `DELETE sys/rekey/init`.
    pub async fn rekey_cancel(&self, target: RekeyKeys) -> Result<(), ClientError> {
        self.request(Method::Delete, &target.path("init"), None)
            .await
            .map(drop)
    }

    /// `GET sys/rekey/verify`.
    pub async fn rekey_verification_status(
        &self,
        target: RekeyKeys,
    ) -> Result<RekeyVerificationStatus, ClientError> {
        self.sys_json(Method::Get, &target.path("verify"), None)
            .await
    }

    /// `PUT sys/rekey/verify` with one of the new key shares.
    pub async fn rekey_verification_update(
        &self,
        target: RekeyKeys,
        key: &str,
        nonce: &str,
    ) -> Result<RekeyVerificationStatus, ClientError> {
        let body = json!({ "key": key, "nonce": nonce });
        self.sys_json(Method::Put, &target.path("verify"), Some(&body))
            .await
    }

    /// `DELETE sys/rekey/verify`.
    pub async fn rekey_verification_cancel(&self, target: RekeyKeys) -> Result<(), ClientError> {
        self.request(Method::Delete, &target.path("verify"), None)
            .await
            .map(drop)
    }

    /// `GET sys/key-status`.
    pub async fn key_status(&self) -> Result<KeyStatus, ClientError> {
        let resp = self.request(Method::Get, "sys/key-status", None).await?;
        resp.decode_data(Method::Get, &self.url("sys/key-status"))
    }

    /// `PUT sys/rotate`: a new barrier key term.
    pub async fn rotate(&self) -> Result<(), ClientError> {
        self.request(Method::Put, "sys/rotate", None)
            .await
            .map(drop)
    }

    /// A raw sys handler answering bare JSON.
    async fn sys_json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, ClientError> {
        let resp = self.request(method, path, body).await?;
        resp.decode(method, &self.url(path))
    }
}

use super::{ApiResponse, Body};

/// Decodes the root token `sys/generate-root` returns (`encoded_token`, base64 of the token
/// XORed with the OTP the attempt was started with). Errors are messages for an operator.
pub fn decode_root_token(encoded: &str, otp: &str) -> Result<String, String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(encoded.trim().trim_end_matches('='))
        .map_err(|e| format!("Error decoding base64'd token: {e}"))?;
    if bytes.len() != otp.len() {
        return Err(format!(
            "Error xoring token: the encoded token is {} bytes long but the OTP is {}; is it the \
             OTP given at -init?",
            bytes.len(),
            otp.len()
        ));
    }
    let token: Vec<u8> = bytes.iter().zip(otp.bytes()).map(|(a, b)| a ^ b).collect();
    String::from_utf8(token)
        .map_err(|_| "Error decoding token: the result is not text; wrong OTP?".to_string())
}
