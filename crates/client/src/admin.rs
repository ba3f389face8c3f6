//! Typed calls that configure a server, with Vault's paths and fields: ACL policies, secrets
//! engines, audit devices, auth methods, userpass users and logins, AppRole roles and secret
//! IDs, transit keys, and tokens. What the provisioner (and any tool) writes goes through these
//! instead of raw paths and JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{Client, ClientError, Method, Secret, SecretAuth};

/// A mount table (`sys/mounts`, `sys/auth`, `sys/audit`): path (with its trailing `/`) -> type.
pub type MountTable = BTreeMap<String, String>;

/// `token_*` settings shared by userpass users and AppRole roles (`None`: left to the server).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenSettings {
    pub policies: Vec<String>,
    pub ttl: Option<Duration>,
    pub max_ttl: Option<Duration>,
}

impl TokenSettings {
    fn into_body(self) -> Map<String, Value> {
        let mut body = Map::new();
        body.insert("token_policies".into(), self.policies.join(",").into());
        put_duration(&mut body, "token_ttl", self.ttl);
        put_duration(&mut body, "token_max_ttl", self.max_ttl);
        body
    }
}

/// `auth/<mount>/role/<name>` of an AppRole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppRoleRole {
    pub token: TokenSettings,
    pub secret_id_ttl: Option<Duration>,
    pub secret_id_num_uses: Option<u64>,
}

/// `auth/token/create[-orphan]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenRequest {
    pub policies: Vec<String>,
    /// A periodic token: renewable forever, each renewal for this long.
    pub period: Option<Duration>,
    pub display_name: Option<String>,
    /// Not a child of the calling token (`create-orphan`).
    pub orphan: bool,
}

fn put_duration(body: &mut Map<String, Value>, key: &str, d: Option<Duration>) {
    if let Some(d) = d {
        body.insert(key.into(), format!("{}s", d.as_secs()).into());
    }
}

impl Client {
    fn decode_error(&self, method: &str, path: &str, cause: impl Into<String>) -> ClientError {
        ClientError::Decode {
            method: method.into(),
            url: self.url(path),
            cause: cause.into(),
        }
    }

    /// `PUT sys/policies/acl/:name`.
    pub async fn policy_write(&self, name: &str, policy: &str) -> Result<(), ClientError> {
        let path = format!("sys/policies/acl/{name}");
        self.write(&path, &json!({ "policy": policy }))
            .await
            .map(drop)
    }

    /// `LIST sys/policies/acl`: the names of the ACL policies (`root` is never listed).
    pub async fn policies(&self) -> Result<Vec<String>, ClientError> {
        Ok(self
            .list("sys/policies/acl")
            .await?
            .and_then(|s| s.data)
            .and_then(|d| {
                d.get("keys")?.as_array().map(|keys| {
                    keys.iter()
                        .filter_map(|k| k.as_str().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default())
    }

    async fn table(&self, path: &str) -> Result<MountTable, ClientError> {
        let data = self
            .read(path)
            .await?
            .and_then(|s| s.data)
            .unwrap_or_default();
        Ok(data
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.get("type")?.as_str()?.to_string())))
            .collect())
    }

    /// `GET sys/mounts`: the secrets engines.
    pub async fn mounts(&self) -> Result<MountTable, ClientError> {
        self.table("sys/mounts").await
    }

    /// `POST sys/mounts/:path` with the engine's type and options (`version` for KV).
    pub async fn mount(
        &self,
        path: &str,
        kind: &str,
        options: &BTreeMap<String, String>,
    ) -> Result<(), ClientError> {
        let mut body = json!({ "type": kind });
        if !options.is_empty() {
            body["options"] = json!(options);
        }
        self.write(&format!("sys/mounts/{path}"), &body)
            .await
            .map(drop)
    }

    /// `GET sys/audit`: the audit devices.
    pub async fn audit_devices(&self) -> Result<MountTable, ClientError> {
        self.table("sys/audit").await
    }

    /// `PUT sys/audit/:path`.
    pub async fn enable_audit(
        &self,
        path: &str,
        kind: &str,
        options: &BTreeMap<String, String>,
    ) -> Result<(), ClientError> {
        let body = json!({ "type": kind, "options": options });
        self.write(&format!("sys/audit/{path}"), &body)
            .await
            .map(drop)
    }

    /// `GET sys/auth`: the auth methods.
    pub async fn auth_methods(&self) -> Result<MountTable, ClientError> {
        self.table("sys/auth").await
    }

    /// `POST sys/auth/:path`.
    pub async fn enable_auth(&self, path: &str, kind: &str) -> Result<(), ClientError> {
        self.write(&format!("sys/auth/{path}"), &json!({ "type": kind }))
            .await
            .map(drop)
    }

    /// `POST auth/:mount/users/:name` (userpass): creates the user or updates it.
    pub async fn userpass_write(
        &self,
        mount: &str,
        user: &str,
        password: &str,
        token: TokenSettings,
    ) -> Result<(), ClientError> {
        let mut body = token.into_body();
        body.insert("password".into(), password.into());
        self.write(&format!("auth/{mount}/users/{user}"), &Value::Object(body))
            .await
            .map(drop)
    }

    /// `POST auth/:mount/login/:name` (userpass): the new token.
    pub async fn userpass_login(
        &self,
        mount: &str,
        user: &str,
        password: &str,
    ) -> Result<SecretAuth, ClientError> {
        let path = format!("auth/{mount}/login/{user}");
        let secret = self.write(&path, &json!({ "password": password })).await?;
        auth_of(secret).ok_or_else(|| self.decode_error("PUT", &path, "no auth in the answer"))
    }

    /// `POST auth/:mount/role/:name` (AppRole).
    pub async fn approle_role_write(
        &self,
        mount: &str,
        role: &str,
        settings: AppRoleRole,
    ) -> Result<(), ClientError> {
        let mut body = settings.token.into_body();
        put_duration(&mut body, "secret_id_ttl", settings.secret_id_ttl);
        if let Some(n) = settings.secret_id_num_uses {
            body.insert("secret_id_num_uses".into(), n.into());
        }
        self.write(&format!("auth/{mount}/role/{role}"), &Value::Object(body))
            .await
            .map(drop)
    }

    /// `GET auth/:mount/role/:name/role-id`.
    pub async fn approle_role_id(&self, mount: &str, role: &str) -> Result<String, ClientError> {
        let path = format!("auth/{mount}/role/{role}/role-id");
        self.read(&path)
            .await?
            .and_then(|s| s.data)
            .and_then(|d| d.get("role_id")?.as_str().map(str::to_owned))
            .ok_or_else(|| self.decode_error("GET", &path, "no role_id in the answer"))
    }

    /// `POST auth/:mount/role/:name/secret-id`: a new secret ID.
    pub async fn approle_secret_id(&self, mount: &str, role: &str) -> Result<String, ClientError> {
        let path = format!("auth/{mount}/role/{role}/secret-id");
        self.write(&path, &json!({}))
            .await?
            .and_then(|s| s.data)
            .and_then(|d| d.get("secret_id")?.as_str().map(str::to_owned))
            .ok_or_else(|| self.decode_error("PUT", &path, "no secret_id in the answer"))
    }

    /// `POST auth/:mount/role/:name/secret-id/lookup`: whether the server still knows it.
    pub async fn approle_secret_id_live(
        &self,
        mount: &str,
        role: &str,
        secret_id: &str,
    ) -> Result<bool, ClientError> {
        let path = format!("auth/{mount}/role/{role}/secret-id/lookup");
        let found = self
            .write(&path, &json!({ "secret_id": secret_id }))
            .await?;
        Ok(found.and_then(|s| s.data).is_some())
    }

    /// Whether the transit key `:mount/keys/:name` exists.
    pub async fn transit_key_exists(&self, mount: &str, name: &str) -> Result<bool, ClientError> {
        Ok(self.read(&format!("{mount}/keys/{name}")).await?.is_some())
    }

    /// `POST :mount/keys/:name` with the key's type (`aes256-gcm96`, ...).
    pub async fn transit_key_create(
        &self,
        mount: &str,
        name: &str,
        kind: &str,
    ) -> Result<(), ClientError> {
        self.write(&format!("{mount}/keys/{name}"), &json!({ "type": kind }))
            .await
            .map(drop)
    }

    /// `POST auth/token/create` (or `create-orphan`): the new token.
    pub async fn token_create(&self, req: &TokenRequest) -> Result<SecretAuth, ClientError> {
        let path = if req.orphan {
            "auth/token/create-orphan"
        } else {
            "auth/token/create"
        };
        let mut body = Map::new();
        body.insert("policies".into(), json!(req.policies));
        body.insert("renewable".into(), true.into());
        put_duration(&mut body, "period", req.period);
        if let Some(name) = &req.display_name {
            body.insert("display_name".into(), name.clone().into());
        }
        let secret = self.write(path, &Value::Object(body)).await?;
        auth_of(secret).ok_or_else(|| self.decode_error("PUT", path, "no auth in the answer"))
    }

    /// `GET auth/token/lookup-self`: `None` when the token is not (or no longer) valid.
    pub async fn token_lookup_self(&self) -> Result<Option<Secret>, ClientError> {
        match self.read("auth/token/lookup-self").await {
            Err(ClientError::Api(e)) if e.status == 403 => Ok(None),
            other => other,
        }
    }

    /// `POST auth/token/revoke-self`.
    pub async fn token_revoke_self(&self) -> Result<(), ClientError> {
        self.request(Method::Put, "auth/token/revoke-self", Some(&json!({})))
            .await
            .map(drop)
    }
}

fn auth_of(secret: Option<Secret>) -> Option<SecretAuth> {
    secret
        .and_then(|s| s.auth)
        .filter(|a| !a.client_token.is_empty())
}
