//! The userpass auth method: users with bcrypt-hashed passwords and the
//! token settings their logins get.
//!
//! Storage (the mount's view): `user/<lower-cased name>` → [`UserEntry`].

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Map;
use tokio::sync::OnceCell;

use crate::auth::{cidr, fields, TokenParams};
use crate::error::{Error, Result};
use crate::logical::{BackendRequest, LogicalBackend, Operation, Response};

/// Vault's userpass uses bcrypt's cost 10; higher costs slow every login.
const BCRYPT_COST: u32 = 10;
const BAD_CREDENTIALS: &str = "invalid username or password";

#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct UserEntry {
    password_hash: String,
    #[serde(flatten)]
    token: TokenParams,
}

impl std::fmt::Debug for UserEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserEntry")
            .field("password_hash", &"<redacted>")
            .field("token", &self.token)
            .finish()
    }
}

/// The userpass backend, mounted at `auth/<path>/`.
#[derive(Debug, Default)]
pub struct UserpassBackend {
    /// A hash to check unknown users' passwords against, so that a login for
    /// a missing user takes as long as one with a wrong password.
    dummy_hash: OnceCell<String>,
}

async fn bcrypt_hash(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || bcrypt::hash(password, BCRYPT_COST))
        .await
        .map_err(|_| Error::internal("password hashing task failed"))?
        .map_err(|_| Error::internal("password hashing failed"))
}

async fn bcrypt_verify(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
        .await
        .unwrap_or(false)
}

fn user_key(name: &str) -> String {
    format!("user/{}", name.to_lowercase())
}

fn valid_username(name: &str) -> Result<String> {
    let name = name.trim().to_lowercase();
    if name.is_empty() || name.contains('/') {
        return Err(Error::invalid("missing or invalid username"));
    }
    Ok(name)
}

fn password_field(data: &Map<String, serde_json::Value>) -> Result<Option<String>> {
    Ok(fields::str_field(data, "password")?.filter(|p| !p.is_empty()))
}

impl UserpassBackend {
    pub fn new() -> Self {
        Self::default()
    }

    async fn dummy_hash(&self) -> Result<String> {
        self.dummy_hash
            .get_or_try_init(|| {
                let random: String = uuid::Uuid::new_v4().to_string();
                bcrypt_hash(random)
            })
            .await
            .cloned()
    }

    async fn write_user(&self, req: &BackendRequest<'_>, name: &str) -> Result<Response> {
        let name = valid_username(name)?;
        let existing = req.storage.get_json::<UserEntry>(&user_key(&name)).await?;
        let creating = existing.is_none();
        let mut user = existing.unwrap_or_default();
        match password_field(req.data())? {
            Some(password) => user.password_hash = bcrypt_hash(password).await?,
            None if creating => return Err(Error::invalid("missing password")),
            None => {}
        }
        user.token.update_from(req.data())?;
        req.storage.put_json(&user_key(&name), &user).await?;
        Ok(Response::empty())
    }

    async fn update_user(
        &self,
        req: &BackendRequest<'_>,
        name: &str,
        change: impl FnOnce(&mut UserEntry) -> Result<()>,
    ) -> Result<Response> {
        let key = user_key(&valid_username(name)?);
        let mut user = req
            .storage
            .get_json::<UserEntry>(&key)
            .await?
            .ok_or_else(|| Error::invalid("username does not exist"))?;
        change(&mut user)?;
        req.storage.put_json(&key, &user).await?;
        Ok(Response::empty())
    }

    async fn login(&self, req: &BackendRequest<'_>, name: &str) -> Result<Response> {
        let password =
            password_field(req.data())?.ok_or_else(|| Error::invalid("missing password"))?;
        let name = valid_username(name).map_err(|_| Error::invalid(BAD_CREDENTIALS))?;
        let user = req.storage.get_json::<UserEntry>(&user_key(&name)).await?;
        let Some(user) = user else {
            bcrypt_verify(password, self.dummy_hash().await?).await;
            return Err(Error::invalid(BAD_CREDENTIALS));
        };
        if !bcrypt_verify(password, user.password_hash.clone()).await {
            return Err(Error::invalid(BAD_CREDENTIALS));
        }
        if !cidr::allows(
            &user.token.token_bound_cidrs,
            req.req.remote_addr.map(|a| a.ip()),
        ) {
            return Err(Error::PermissionDenied);
        }
        let mut auth = user.token.login_auth();
        auth.display_name = name.clone();
        auth.metadata.insert("username".into(), name);
        auth.path = format!("{}{}", req.mount.path, req.path);
        Ok(Response {
            auth: Some(auth),
            ..Default::default()
        })
    }
}

#[async_trait]
impl LogicalBackend for UserpassBackend {
    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response> {
        use Operation::{Create, Delete, List, Read, Update};
        let op = req.operation();
        let write = matches!(op, Create | Update);
        let segments: Vec<&str> = req.path.trim_end_matches('/').split('/').collect();
        match segments.as_slice() {
            ["users"] if op == List => {
                let mut names = req.storage.list("user/").await?;
                names.sort();
                Response::list(names)
            }
            ["users", name] => match op {
                Create | Update => self.write_user(&req, name).await,
                Read => {
                    let user = req
                        .storage
                        .get_json::<UserEntry>(&user_key(name))
                        .await?
                        .ok_or(Error::NotFound)?;
                    let mut data = Map::new();
                    user.token.write_fields(&mut data);
                    Ok(Response {
                        data: Some(data),
                        ..Default::default()
                    })
                }
                Delete => {
                    req.storage.delete(&user_key(name)).await?;
                    Ok(Response::empty())
                }
                _ => Err(Error::UnsupportedOperation),
            },
            ["users", name, "password"] if write => {
                let password = password_field(req.data())?
                    .ok_or_else(|| Error::invalid("missing password"))?;
                let hash = bcrypt_hash(password).await?;
                self.update_user(&req, name, |u| {
                    u.password_hash = hash;
                    Ok(())
                })
                .await
            }
            ["users", name, "policies"] if write => {
                let data = req.data().clone();
                self.update_user(&req, name, |u| {
                    let key = if data.contains_key("token_policies") {
                        "token_policies"
                    } else {
                        "policies"
                    };
                    let policies = fields::str_list(&data, key)?.unwrap_or_default();
                    u.token.token_policies = fields::sanitize_policies(&policies, false);
                    Ok(())
                })
                .await
            }
            ["login", name] if write => self.login(&req, name).await,
            ["users"] | ["users", _, "password" | "policies"] | ["login", _] => {
                Err(Error::UnsupportedOperation)
            }
            _ => Err(Error::UnsupportedPath(format!(
                "{}{}",
                req.mount.path, req.path
            ))),
        }
    }

    async fn exists(&self, req: BackendRequest<'_>) -> Result<Option<bool>> {
        match req.path.split('/').collect::<Vec<_>>().as_slice() {
            ["users", name] if !name.is_empty() => {
                Ok(Some(req.storage.get(&user_key(name)).await?.is_some()))
            }
            _ => Ok(None),
        }
    }

    fn unauthenticated_paths(&self) -> &'static [&'static str] {
        &["login/*"]
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{json, Value};

    use super::*;
    use crate::auth::TokenStore;
    use crate::logical::{Auth, MountInfo, Request, StorageView};

    struct Harness {
        backend: UserpassBackend,
        view: StorageView,
        mount: MountInfo,
    }

    impl Harness {
        fn new() -> Self {
            Harness {
                backend: UserpassBackend::new(),
                view: StorageView::inmem(),
                mount: MountInfo {
                    path: "auth/userpass/".into(),
                    kind: "userpass".into(),
                    default_lease_ttl: Duration::from_secs(3600),
                    max_lease_ttl: Duration::from_secs(7200),
                    ..Default::default()
                },
            }
        }

        async fn call_from(
            &self,
            op: Operation,
            path: &str,
            data: Value,
            addr: Option<&str>,
        ) -> Result<Response> {
            let mut req = Request::new(op, format!("auth/userpass/{path}")).with_data(data);
            req.remote_addr = addr.map(|a| a.parse().unwrap());
            self.backend
                .handle(BackendRequest {
                    path: path.into(),
                    req: &req,
                    storage: &self.view,
                    mount: &self.mount,
                })
                .await
        }

        async fn call(&self, op: Operation, path: &str, data: Value) -> Result<Response> {
            self.call_from(op, path, data, None).await
        }

        async fn login(&self, user: &str, password: &str) -> Result<Auth> {
            let resp = self
                .call(
                    Operation::Update,
                    &format!("login/{user}"),
                    json!({"password": password}),
                )
                .await?;
            Ok(resp.auth.expect("login answers with auth"))
        }
    }

    fn status<T>(r: Result<T>) -> Option<(u16, String)> {
        r.err().map(|e| (e.status(), e.to_string()))
    }

    #[tokio::test]
    async fn users_and_logins() {
        let h = Harness::new();
        h.call(
            Operation::Create,
            "users/Alice",
            json!({"password": "s3cret", "token_policies": "dev,ops", "token_ttl": "10m", "token_max_ttl": "1h"}),
        )
        .await
        .unwrap();
        let read = h
            .call(Operation::Read, "users/alice", json!({}))
            .await
            .unwrap()
            .data
            .unwrap();
        assert_eq!(read["token_policies"], json!(["dev", "ops"]));
        assert_eq!(read["token_ttl"], json!(600));
        assert!(!read.contains_key("password") && !read.contains_key("password_hash"));

        let auth = h.login("ALICE", "s3cret").await.unwrap();
        assert_eq!(auth.policies, ["dev", "ops"]);
        assert_eq!(
            auth.metadata.get("username").map(String::as_str),
            Some("alice")
        );
        assert_eq!((auth.lease_duration, auth.max_ttl), (600, 3600));
        assert_eq!(auth.display_name, "alice");
        assert_eq!(auth.path, "auth/userpass/login/ALICE");
        assert!(auth.renewable);

        // The token store turns it into a userpass-alice token.
        let store = TokenStore::new(StorageView::inmem());
        let minted = store.create_from_login(&auth, &h.mount).await.unwrap();
        let entry = store.lookup(&minted.client_token).await.unwrap().unwrap();
        assert_eq!(entry.display_name, "userpass-alice");
        assert_eq!(minted.policies, ["default", "dev", "ops"]);
        assert_eq!(minted.lease_duration, 600);

        let bad = (400, BAD_CREDENTIALS.to_string());
        assert_eq!(status(h.login("alice", "wrong").await), Some(bad.clone()));
        assert_eq!(status(h.login("nobody", "s3cret").await), Some(bad));
        assert_eq!(
            status(h.login("alice", "").await),
            Some((400, "missing password".into()))
        );

        // Password change.
        h.call(
            Operation::Update,
            "users/alice/password",
            json!({"password": "new"}),
        )
        .await
        .unwrap();
        assert!(h.login("alice", "s3cret").await.is_err());
        assert!(h.login("alice", "new").await.is_ok());
        // An update without a password keeps it.
        h.call(Operation::Update, "users/alice", json!({"token_ttl": 60}))
            .await
            .unwrap();
        assert_eq!(h.login("alice", "new").await.unwrap().lease_duration, 60);
        // Policies endpoint.
        h.call(
            Operation::Update,
            "users/alice/policies",
            json!({"policies": ["x"]}),
        )
        .await
        .unwrap();
        assert_eq!(h.login("alice", "new").await.unwrap().policies, ["x"]);

        // List, delete.
        h.call(Operation::Create, "users/bob", json!({"password": "pw"}))
            .await
            .unwrap();
        let list = h.call(Operation::List, "users/", json!({})).await.unwrap();
        assert_eq!(list.data.unwrap()["keys"], json!(["alice", "bob"]));
        h.call(Operation::Delete, "users/alice", json!({}))
            .await
            .unwrap();
        assert!(h.login("alice", "new").await.is_err());
        assert_eq!(
            status(h.call(Operation::Read, "users/alice", json!({})).await).map(|s| s.0),
            Some(404)
        );
        h.call(Operation::Delete, "users/bob", json!({}))
            .await
            .unwrap();
        assert_eq!(
            status(h.call(Operation::List, "users", json!({})).await).map(|s| s.0),
            Some(404)
        );
    }

    #[tokio::test]
    async fn validation_and_routing() {
        let h = Harness::new();
        let cases = [
            (Operation::Create, "users/carol", json!({}), 400),
            (
                Operation::Create,
                "users/carol",
                json!({"password": "p", "token_type": "batch"}),
                400,
            ),
            (
                Operation::Update,
                "users/nobody/password",
                json!({"password": "p"}),
                400,
            ),
            (Operation::Read, "login/carol", json!({}), 405),
            (Operation::Read, "elsewhere", json!({}), 404),
        ];
        for (op, path, data, want) in cases {
            let got = h.call(op, path, data.clone()).await;
            assert_eq!(status(got).map(|s| s.0), Some(want), "{op:?} {path} {data}");
        }
        assert_eq!(h.backend.unauthenticated_paths(), ["login/*"]);
        let exists = |path: &str| {
            let req = Request::new(Operation::Update, path);
            let view = h.view.clone();
            let mount = h.mount.clone();
            let backend = &h.backend;
            let path = path.to_string();
            async move {
                backend
                    .exists(BackendRequest {
                        path,
                        req: &req,
                        storage: &view,
                        mount: &mount,
                    })
                    .await
                    .unwrap()
            }
        };
        assert_eq!(exists("users/dave").await, Some(false));
        h.call(Operation::Create, "users/dave", json!({"password": "p"}))
            .await
            .unwrap();
        assert_eq!(exists("users/dave").await, Some(true));
        assert_eq!(exists("login/dave").await, None);
    }

    #[tokio::test]
    async fn bound_cidrs_and_secrets_in_debug() {
        let h = Harness::new();
        h.call(
            Operation::Create,
            "users/erin",
            json!({"password": "hunter2", "token_bound_cidrs": ["10.0.0.0/8"]}),
        )
        .await
        .unwrap();
        let login = |addr| {
            h.call_from(
                Operation::Update,
                "login/erin",
                json!({"password": "hunter2"}),
                addr,
            )
        };
        assert!(login(Some("10.1.2.3:5000")).await.is_ok());
        assert_eq!(
            status(login(Some("192.168.0.1:5000")).await).map(|s| s.0),
            Some(403)
        );
        // Debug output of a stored entry shows no hash; errors never echo a password.
        let entry: UserEntry = h.view.get_json("user/erin").await.unwrap().unwrap();
        assert!(!format!("{entry:?}").contains(&entry.password_hash));
        let err = h.login("erin", "not-hunter2").await.unwrap_err();
        assert!(!format!("{err:?} {err}").contains("hunter2"));
    }
}
