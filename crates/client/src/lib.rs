//! `keyhold-client`: the HTTP client of the Vault API, used by the server's CLI, its seals and
//! snapshot agent, and the provisioner (which reaches servers through nothing else).
//!
//! A library API: it never prints and never exits. [`Client::request`] is the one place a
//! request is sent; the helpers (`read`, `write`, `list`, ...) and the typed `sys/` calls in
//! [`sys`] and [`raft`] are built on it. [`snapshot`] reads Raft snapshot archives offline.

pub mod admin;
mod config;
mod error;
pub mod go_duration;
pub mod raft;
pub mod snapshot;
pub mod sys;
pub mod tls;

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use config::{
    parse_bool, parse_duration, token_file_path, CaCert, ClientConfig, DEFAULT_ADDRESS,
    DEFAULT_TIMEOUT,
};
pub use error::{ApiError, ClientError};
pub use raft::{
    AutopilotConfig, AutopilotConfigUpdate, AutopilotServer, AutopilotState, ClusterTlsStatus,
    HaNode, HaStatus, JoinRequest, JoinResponse, RaftConfiguration, RaftServer,
};
pub use sys::{
    decode_root_token, GenerateRootStatus, HealthQuery, HealthResponse, InitRequest, InitResponse,
    KeyStatus, LeaderResponse, RekeyInitRequest, RekeyKeys, RekeyStatus, RekeyUpdateResponse,
    RekeyVerificationStatus, SealStatus,
};

/// An HTTP method of the Vault API, including its `LIST` verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Post,
    Delete,
    List,
    Patch,
    Head,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
            Method::List => "LIST",
            Method::Patch => "PATCH",
            Method::Head => "HEAD",
        }
    }

    fn to_reqwest(self) -> reqwest::Method {
        match self {
            Method::Get => reqwest::Method::GET,
            Method::Put => reqwest::Method::PUT,
            Method::Post => reqwest::Method::POST,
            Method::Delete => reqwest::Method::DELETE,
            Method::Patch => reqwest::Method::PATCH,
            Method::Head => reqwest::Method::HEAD,
            Method::List => reqwest::Method::from_bytes(b"LIST").expect("LIST is a valid token"),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A response body: nothing (204), JSON, or bytes that are not JSON (a snapshot, metrics text).
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Empty,
    Json(Value),
    Raw(Vec<u8>),
}

/// A successful (status < 400) answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Body,
}

impl ApiResponse {
    /// The JSON body, if there is one.
    pub fn json(&self) -> Option<&Value> {
        match &self.body {
            Body::Json(v) => Some(v),
            _ => None,
        }
    }

    /// The body as Vault's logical response wrapper; `None` for an empty body.
    pub fn secret(&self) -> Option<Secret> {
        self.json()
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// Decodes the whole JSON body as `T`.
    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        url: &str,
    ) -> Result<T, ClientError> {
        let value = self.json().cloned().unwrap_or(Value::Null);
        serde_json::from_value(value).map_err(|e| ClientError::Decode {
            method: method.to_string(),
            url: url.to_string(),
            cause: e.to_string(),
        })
    }

    /// Decodes `data` when the body has it (wrapped responses), else the whole body
    /// (injector routes copy `data` to the top level, raw handlers have only that).
    fn decode_data<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        url: &str,
    ) -> Result<T, ClientError> {
        match self
            .json()
            .and_then(|v| v.get("data"))
            .filter(|d| d.is_object())
        {
            Some(data) => serde_json::from_value(data.clone()).map_err(|e| ClientError::Decode {
                method: method.to_string(),
                url: url.to_string(),
                cause: e.to_string(),
            }),
            None => self.decode(method, url),
        }
    }
}

/// Vault's logical response wrapper (Go's `api.Secret`). Serialises with every field, as
/// `vault read -format=json` prints it. `Debug` shows data keys only, never values.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Secret {
    pub request_id: String,
    pub lease_id: String,
    pub lease_duration: i64,
    pub renewable: bool,
    pub data: Option<Map<String, Value>>,
    pub warnings: Option<Vec<String>>,
    pub auth: Option<SecretAuth>,
    pub wrap_info: Option<Value>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("request_id", &self.request_id)
            .field("lease_duration", &self.lease_duration)
            .field(
                "data_keys",
                &self.data.as_ref().map(|d| d.keys().collect::<Vec<_>>()),
            )
            .field("warnings", &self.warnings)
            .field("auth", &self.auth)
            .finish()
    }
}

/// The `auth` block of a login or token-create answer. `Debug` hides the token.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecretAuth {
    pub client_token: String,
    pub accessor: String,
    pub policies: Vec<String>,
    pub token_policies: Vec<String>,
    pub identity_policies: Option<Vec<String>>,
    pub metadata: Option<Map<String, Value>>,
    pub orphan: bool,
    pub entity_id: String,
    pub lease_duration: i64,
    pub renewable: bool,
    pub token_type: String,
    pub num_uses: i64,
    pub mfa_requirement: Option<Value>,
}

impl fmt::Debug for SecretAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretAuth")
            .field("client_token", &"<redacted>")
            .field("accessor", &self.accessor)
            .field("policies", &self.policies)
            .field("lease_duration", &self.lease_duration)
            .field("renewable", &self.renewable)
            .finish()
    }
}

/// A request body and its `Content-Type`.
struct Payload {
    bytes: Vec<u8>,
    content_type: &'static str,
}

/// A client of one server. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    address: String,
    token: Option<String>,
    namespace: Option<String>,
    consistency: Option<Consistency>,
}

/// Read-your-writes across the nodes of a cluster whose standbys serve reads, as Vault's Go
/// client does with `RecordState`/`RequireState` and Vault Agent with `enforce_consistency =
/// "always"`: the newest `X-Vault-Index` any answer carried is kept, and every request of the
/// clients sharing this value sends it, so a standby answers only once it has applied it (or
/// with 412, which callers retry). Keyhold's index names its Raft index; a value this client
/// cannot order (another server's format) replaces the one kept.
#[derive(Debug, Clone, Default)]
pub struct Consistency {
    newest: std::sync::Arc<std::sync::Mutex<Option<KeptIndex>>>,
}

/// An `X-Vault-Index` value and the Raft index it names, when this client can read it.
type KeptIndex = (Option<u64>, String);

impl Consistency {
    /// The Raft index in a Keyhold `X-Vault-Index` (base64 of `cluster:index:tag`).
    fn order(value: &str) -> Option<u64> {
        use base64::Engine;
        let text = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .ok()?;
        let text = String::from_utf8(text).ok()?;
        let mut fields = text.rsplitn(3, ':');
        fields.next()?;
        fields.next()?.parse().ok()
    }

    fn record(&self, value: &str) {
        let index = Self::order(value);
        let mut newest = self.newest.lock().expect("consistency lock");
        let newer = match (&*newest, index) {
            (Some((Some(kept), _)), Some(index)) => index > *kept,
            _ => true,
        };
        if newer {
            *newest = Some((index, value.to_string()));
        }
    }

    /// The value requests carry now, if any answer gave one.
    pub fn header(&self) -> Option<String> {
        self.newest
            .lock()
            .expect("consistency lock")
            .as_ref()
            .map(|(_, v)| v.clone())
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl Client {
    pub fn new(config: &ClientConfig) -> Result<Self, ClientError> {
        let address = config.address.trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&address)
            .map_err(|e| ClientError::Config(format!("invalid address {address:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ClientError::Config(format!(
                "invalid address {address:?}: the scheme must be http or https"
            )));
        }
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::limited(5))
            // Keeps the server's certificate with each response (`server_certificate`).
            .tls_info(true);
        if tls::needs_custom(config) {
            builder = builder.tls_backend_preconfigured(tls::rustls_config(config)?);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Config(format!("building the HTTP client: {e}")))?;
        Ok(Client {
            http,
            address,
            token: config.token.clone(),
            namespace: config.namespace.clone(),
            consistency: None,
        })
    }

    /// This client (and every clone) takes part in `consistency`: see [`Consistency`].
    pub fn with_consistency(mut self, consistency: Consistency) -> Self {
        self.consistency = Some(consistency);
        self
    }

    /// The DER certificate the server presents, read from `sys/health` (any state answers). A
    /// new `Client` opens a new connection, so this is the certificate the server serves now,
    /// not the one an older pooled connection was made with.
    pub async fn server_certificate(&self) -> Result<Vec<u8>, ClientError> {
        let url = self.url("sys/health?standbyok=true&sealedcode=200&uninitcode=200");
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| self.transport(Method::Get, &url, e))?;
        resp.extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|info| info.peer_certificate())
            .map(<[u8]>::to_vec)
            .ok_or_else(|| ClientError::Decode {
                method: "GET".into(),
                url,
                cause: "the server presented no certificate (plain HTTP?)".into(),
            })
    }

    /// The base address, e.g. `https://127.0.0.1:8200`.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn set_token(&mut self, token: Option<String>) {
        self.token = token;
    }

    /// The full URL of an API path (`path` has no `/v1/` prefix, may carry a `?query`).
    pub fn url(&self, path: &str) -> String {
        format!("{}/v1/{}", self.address, path.trim_start_matches('/'))
    }

    /// Sends one request. A status >= 400 is a [`ClientError::Api`] carrying the server's
    /// `errors` list.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<ApiResponse, ClientError> {
        let payload = body.map(|b| Payload {
            bytes: serde_json::to_vec(b).expect("a Value serialises"),
            content_type: if method == Method::Patch {
                "application/merge-patch+json"
            } else {
                "application/json"
            },
        });
        self.send(method, path, payload).await
    }

    /// Sends raw bytes (a snapshot to restore) as `application/octet-stream` and returns
    /// the answer.
    pub async fn request_bytes(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<ApiResponse, ClientError> {
        let payload = Payload {
            bytes: body,
            content_type: "application/octet-stream",
        };
        self.send(method, path, Some(payload)).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Payload>,
    ) -> Result<ApiResponse, ClientError> {
        let (resp, url) = self.start(method, path, body).await?;
        let status = resp.status().as_u16();
        let is_json = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.transport(method, &url, e))?;
        let body = if bytes.is_empty() {
            Body::Empty
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(v) => Body::Json(v),
                Err(_) if is_json => {
                    return Err(ClientError::Decode {
                        method: method.to_string(),
                        url,
                        cause: "the body is not valid JSON".into(),
                    })
                }
                Err(_) => Body::Raw(bytes.to_vec()),
            }
        };
        Ok(ApiResponse { status, body })
    }

    /// Sends one request and returns the response with its body unread, or the
    /// [`ClientError::Api`] of a status >= 400 (whose body is read for its `errors`).
    async fn start(
        &self,
        method: Method,
        path: &str,
        body: Option<Payload>,
    ) -> Result<(reqwest::Response, String), ClientError> {
        let url = self.url(path);
        let mut req = self
            .http
            .request(method.to_reqwest(), &url)
            .header("X-Vault-Request", "true");
        if let Some(token) = &self.token {
            req = req.header("X-Vault-Token", token);
        }
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(index) = self.consistency.as_ref().and_then(Consistency::header) {
            req = req.header("X-Vault-Index", index);
        }
        if let Some(body) = body {
            req = req
                .header("Content-Type", body.content_type)
                .body(body.bytes);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.transport(method, &url, e))?;
        if let (Some(consistency), Some(index)) = (
            &self.consistency,
            resp.headers()
                .get("x-vault-index")
                .and_then(|v| v.to_str().ok()),
        ) {
            consistency.record(index);
        }
        let status = resp.status().as_u16();
        if status < 400 {
            return Ok((resp, url));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.transport(method, &url, e))?;
        let parsed: Option<Value> = if bytes.is_empty() {
            None
        } else {
            serde_json::from_slice(&bytes).ok()
        };
        let errors = parsed
            .as_ref()
            .and_then(|v| v.get("errors"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|e| {
                        e.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| e.to_string())
                    })
                    .collect::<Vec<_>>()
            });
        let (errors, raw) = match errors {
            Some(errors) => (errors, false),
            None if parsed.is_some() => (Vec::new(), false),
            None => (
                vec![String::from_utf8_lossy(&bytes).trim().to_string()],
                true,
            ),
        };
        Err(ClientError::Api(Box::new(ApiError {
            method: method.to_string(),
            url,
            status,
            errors,
            raw,
            body: parsed,
        })))
    }

    fn transport(&self, method: Method, url: &str, e: reqwest::Error) -> ClientError {
        ClientError::Transport {
            method: method.to_string(),
            url: url.to_string(),
            address: self.address.clone(),
            cause: error_chain(&e.without_url()),
        }
    }

    /// `GET path`. `Ok(None)` when nothing is there (404), as Vault's `Logical().Read`,
    /// except that a 404 carrying data or warnings (a deleted KV version) is returned.
    pub async fn read(&self, path: &str) -> Result<Option<Secret>, ClientError> {
        match self.request(Method::Get, path, None).await {
            Ok(resp) => Ok(resp.secret()),
            Err(ClientError::Api(e)) if e.status == 404 => Ok(e
                .body
                .and_then(|b| serde_json::from_value::<Secret>(b).ok())
                .filter(|s| {
                    s.data.as_ref().is_some_and(|d| !d.is_empty())
                        || s.warnings.as_ref().is_some_and(|w| !w.is_empty())
                })),
            Err(e) => Err(e),
        }
    }

    /// `PUT path` with a JSON body; `Ok(None)` for a 204.
    pub async fn write(&self, path: &str, body: &Value) -> Result<Option<Secret>, ClientError> {
        Ok(self.request(Method::Put, path, Some(body)).await?.secret())
    }

    /// `LIST path`; `Ok(None)` when there is nothing to list (404).
    pub async fn list(&self, path: &str) -> Result<Option<Secret>, ClientError> {
        match self.request(Method::List, path, None).await {
            Ok(resp) => Ok(resp.secret()),
            Err(ClientError::Api(e)) if e.status == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<Option<Secret>, ClientError> {
        Ok(self.request(Method::Delete, path, None).await?.secret())
    }

    /// `PATCH path` with a JSON merge patch (`application/merge-patch+json`).
    pub async fn patch(&self, path: &str, body: &Value) -> Result<Option<Secret>, ClientError> {
        Ok(self
            .request(Method::Patch, path, Some(body))
            .await?
            .secret())
    }
}

/// An error and its sources on one line, for transport failures whose useful part (connection
/// refused, unknown issuer) is often three levels down.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests;
