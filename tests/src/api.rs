//! A small HTTP client for the Vault-shaped API of one node: raw requests that keep the status
//! and body for assertions, plus the operator steps every test needs (init, unseal, KV writes).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// What the server answered: the status and the body, parsed as JSON when it is JSON.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: StatusCode,
    pub text: String,
    pub json: Value,
}

impl Resp {
    /// The `errors` array of a Vault error body, joined, for messages.
    pub fn errors(&self) -> String {
        match self.json.get("errors") {
            Some(Value::Array(errs)) => errs
                .iter()
                .map(|e| e.as_str().unwrap_or_default().to_string())
                .collect::<Vec<_>>()
                .join("; "),
            _ => self.text.clone(),
        }
    }

    /// Fails unless the status is `want`, naming the request and what came back.
    pub fn expect(self, want: u16, what: &str) -> Result<Resp> {
        ensure!(
            self.status.as_u16() == want,
            "{what}: expected HTTP {want}, got {} with body {}",
            self.status,
            self.text
        );
        Ok(self)
    }

    /// Fails unless the status is 200 or 204 (Vault answers either for success).
    pub fn expect_ok(self, what: &str) -> Result<Resp> {
        ensure!(
            self.status == StatusCode::OK || self.status == StatusCode::NO_CONTENT,
            "{what}: expected HTTP 200 or 204, got {} with body {}",
            self.status,
            self.text
        );
        Ok(self)
    }
}

/// The answer to `PUT /v1/sys/init`.
#[derive(Debug, Clone)]
pub struct InitKeys {
    /// Unseal key shares, hex.
    pub keys: Vec<String>,
    pub keys_base64: Vec<String>,
    pub root_token: String,
    pub threshold: usize,
}

/// A handle on one node's API. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    /// `https://127.0.0.1:PORT` (or `http://` for a TLS-disabled listener).
    pub base: String,
    /// Sent as `X-Vault-Token` when set.
    pub token: Option<String>,
    /// Shared by the handles on every node of one cluster: read-your-writes across nodes.
    session: Option<Session>,
}

/// What Vault Agent does with `enforce_consistency = "always"` and `when_inconsistent =
/// "retry"`: every request carries the newest `X-Vault-Index` any answer of the cluster gave,
/// and a 412 (that state not applied on the node yet) is retried. Standbys serve reads from
/// their own replica, so without it a read through one node right after a write through
/// another may not see the write yet.
#[derive(Clone, Default)]
pub struct Session {
    newest: Arc<Mutex<Option<(u64, String)>>>,
}

impl Session {
    /// The Raft index inside an `X-Vault-Index` value (base64 of `cluster:index:tag`); the
    /// value stays opaque to everything but this ordering.
    fn index_of(value: &str) -> Option<u64> {
        use base64::Engine;
        let text = base64::engine::general_purpose::STANDARD
            .decode(value)
            .ok()?;
        let text = String::from_utf8(text).ok()?;
        let mut fields = text.rsplitn(3, ':');
        fields.next()?;
        fields.next()?.parse().ok()
    }

    fn record(&self, resp: &reqwest::Response) {
        let Some(value) = resp
            .headers()
            .get("x-vault-index")
            .and_then(|v| v.to_str().ok())
        else {
            return;
        };
        let Some(index) = Self::index_of(value) else {
            return;
        };
        let mut newest = self.newest.lock().expect("session lock");
        if newest.as_ref().is_none_or(|(seen, _)| index > *seen) {
            *newest = Some((index, value.to_string()));
        }
    }

    fn header(&self) -> Option<String> {
        self.newest
            .lock()
            .expect("session lock")
            .as_ref()
            .map(|(_, v)| v.clone())
    }
}

/// The `LIST` verb hvac and the CLI use.
pub fn list_method() -> Method {
    Method::from_bytes(b"LIST").expect("LIST is a valid method token")
}

impl Api {
    pub fn new(http: reqwest::Client, base: String) -> Api {
        Api {
            http,
            base,
            token: None,
            session: None,
        }
    }

    /// This handle (and its clones) joins `session`: see [`Session`].
    pub fn with_session(mut self, session: Session) -> Api {
        self.session = Some(session);
        self
    }

    /// The session this handle belongs to, if any.
    pub fn session(&self) -> Option<Session> {
        self.session.clone()
    }

    /// The same node, outside any session: its requests carry no `X-Vault-Index`.
    pub fn without_session(&self) -> Api {
        Api {
            session: None,
            ..self.clone()
        }
    }

    /// The same node, speaking with another token (or none).
    pub fn with_token(&self, token: Option<&str>) -> Api {
        Api {
            http: self.http.clone(),
            base: self.base.clone(),
            token: token.map(str::to_string),
            session: self.session.clone(),
        }
    }

    /// The token this handle sends, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The underlying HTTP client, for requests the helpers below do not cover.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The full URL for an API path such as `sys/health` (the `/v1/` is added).
    pub fn url(&self, path: &str) -> String {
        format!("{}/v1/{}", self.base, path.trim_start_matches('/'))
    }

    /// Sends one request and returns whatever came back; only a transport failure is an error.
    pub async fn request(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Resp> {
        self.send_in_session(&method, path, |http| {
            let req = http
                .request(method.clone(), self.url(path))
                .timeout(Duration::from_secs(30));
            match body {
                Some(body) => req.json(body),
                None => req,
            }
        })
        .await
    }

    /// Sends a body given as raw bytes (for malformed or oversized input).
    pub async fn request_raw(&self, method: Method, path: &str, body: Vec<u8>) -> Result<Resp> {
        self.send_in_session(&method, path, |http| {
            http.request(method.clone(), self.url(path))
                .timeout(Duration::from_secs(30))
                .header("Content-Type", "application/json")
                .body(body.clone())
        })
        .await
    }

    /// Sends what `build` makes with the token and the session's index, records the index
    /// of the answer, and retries a 412 (bounded: 50 times, 100 ms apart).
    async fn send_in_session(
        &self,
        method: &Method,
        path: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Resp> {
        let mut attempt = 0;
        loop {
            let mut req = build(&self.http);
            if let Some(token) = &self.token {
                req = req.header("X-Vault-Token", token);
            }
            if let Some(index) = self.session.as_ref().and_then(Session::header) {
                req = req.header("X-Vault-Index", index);
            }
            let resp = req
                .send()
                .await
                .with_context(|| format!("{method} /v1/{path}"))?;
            if let Some(session) = &self.session {
                session.record(&resp);
            }
            attempt += 1;
            if resp.status() == StatusCode::PRECONDITION_FAILED
                && self.session.is_some()
                && attempt < 50
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            return Self::read(resp).await;
        }
    }

    async fn read(resp: reqwest::Response) -> Result<Resp> {
        let status = resp.status();
        let text = resp.text().await.context("read response body")?;
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Resp { status, text, json })
    }

    pub async fn get(&self, path: &str) -> Result<Resp> {
        self.request(Method::GET, path, None).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Result<Resp> {
        self.request(Method::PUT, path, Some(&body)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Resp> {
        self.request(Method::POST, path, Some(&body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Resp> {
        self.request(Method::DELETE, path, None).await
    }

    pub async fn list(&self, path: &str) -> Result<Resp> {
        self.request(list_method(), path, None).await
    }

    /// `GET /v1/sys/seal-status`, which must answer 200 in every state.
    pub async fn seal_status(&self) -> Result<Value> {
        Ok(self
            .get("sys/seal-status")
            .await?
            .expect(200, "seal-status")?
            .json)
    }

    /// `PUT /v1/sys/init` with Shamir shares; remembers nothing (see `Node::init`).
    pub async fn init(&self, shares: usize, threshold: usize) -> Result<InitKeys> {
        let resp = self
            .put(
                "sys/init",
                json!({"secret_shares": shares, "secret_threshold": threshold}),
            )
            .await?
            .expect(200, "PUT sys/init")?;
        let strings = |field: &str| -> Result<Vec<String>> {
            resp.json[field]
                .as_array()
                .with_context(|| format!("sys/init answer has no `{field}` array: {}", resp.text))?
                .iter()
                .map(|k| {
                    k.as_str()
                        .map(str::to_string)
                        .with_context(|| format!("non-string in `{field}`"))
                })
                .collect()
        };
        let keys = strings("keys")?;
        let keys_base64 = strings("keys_base64")?;
        ensure!(
            keys.len() == shares,
            "sys/init returned {} keys for {shares} shares",
            keys.len()
        );
        let root_token = resp.json["root_token"]
            .as_str()
            .with_context(|| format!("sys/init answer has no root_token: {}", resp.text))?
            .to_string();
        Ok(InitKeys {
            keys,
            keys_base64,
            root_token,
            threshold,
        })
    }

    /// `PUT /v1/sys/init` on a node with an auto-unseal seal: the answer's unseal `keys` must be
    /// empty, and the returned [`InitKeys::keys`] are the recovery keys (hex).
    pub async fn init_recovery(&self, shares: usize, threshold: usize) -> Result<InitKeys> {
        let resp = self
            .put(
                "sys/init",
                json!({"recovery_shares": shares, "recovery_threshold": threshold}),
            )
            .await?
            .expect(200, "PUT sys/init with recovery shares")?;
        ensure!(
            resp.json["keys"] == json!([]),
            "an auto-unseal init returned unseal keys: {}",
            resp.text
        );
        let strings = |field: &str| -> Vec<String> {
            resp.json[field]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let keys = strings("recovery_keys");
        ensure!(
            keys.len() == shares,
            "sys/init returned {} recovery keys for {shares} shares: {}",
            keys.len(),
            resp.text
        );
        Ok(InitKeys {
            keys,
            keys_base64: strings("recovery_keys_base64"),
            root_token: resp.json["root_token"]
                .as_str()
                .context("sys/init answer has no root_token")?
                .to_string(),
            threshold,
        })
    }

    /// Submits unseal keys one at a time until the node reports itself unsealed.
    pub async fn unseal_all(&self, keys: &[String]) -> Result<()> {
        for (i, key) in keys.iter().enumerate() {
            let status = self
                .put("sys/unseal", json!({"key": key}))
                .await?
                .expect(200, &format!("PUT sys/unseal with key {}", i + 1))?
                .json;
            if status["sealed"] == Value::Bool(false) {
                return Ok(());
            }
        }
        bail!("still sealed after submitting all {} keys", keys.len())
    }

    /// Mounts a KV engine of the given version (1 or 2) at `path`.
    pub async fn mount_kv(&self, path: &str, version: u8) -> Result<()> {
        self.post(
            &format!("sys/mounts/{path}"),
            json!({"type": "kv", "options": {"version": version.to_string()}}),
        )
        .await?
        .expect_ok(&format!("mount kv v{version} at {path}"))?;
        Ok(())
    }

    /// Creates a token with `auth/token/create` and `params` (`policies`, `ttl`, ...) and
    /// returns its id.
    pub async fn create_token(&self, params: Value) -> Result<String> {
        let resp = self
            .post("auth/token/create", params)
            .await?
            .expect(200, "create a token")?;
        resp.json["auth"]["client_token"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no auth.client_token in {}", resp.text))
    }

    /// Writes a KV v2 secret under `mount`.
    pub async fn kv2_put(&self, mount: &str, key: &str, data: Value) -> Result<Resp> {
        self.post(&format!("{mount}/data/{key}"), json!({ "data": data }))
            .await
    }

    /// Writes `count` KV v2 secrets `{prefix}/{i}` = `{"v": i}` with `workers` requests in
    /// flight (a bulk load for tests that need many secrets).
    pub async fn kv2_put_many(
        &self,
        mount: &str,
        prefix: &str,
        count: usize,
        workers: usize,
    ) -> Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..workers {
            let (api, mount, prefix) = (self.clone(), mount.to_string(), prefix.to_string());
            tasks.spawn(async move {
                for i in (w..count).step_by(workers) {
                    api.kv2_put(&mount, &format!("{prefix}/{i}"), json!({ "v": i }))
                        .await?
                        .expect_ok(&format!("write {mount}/{prefix}/{i}"))?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        Ok(())
    }

    /// Reads the latest version of a KV v2 secret, returning its `data.data` (None on 404).
    pub async fn kv2_get(&self, mount: &str, key: &str) -> Result<Option<Value>> {
        let resp = self.get(&format!("{mount}/data/{key}")).await?;
        if resp.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = resp.expect(200, &format!("read {mount}/data/{key}"))?;
        Ok(Some(resp.json["data"]["data"].clone()))
    }
}
