//! Unit tests of the AppRole backend: role settings, secret IDs with TTL and uses, login.

use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::logical::{Auth, MountInfo, Request};

struct Harness {
    backend: ApproleBackend,
    view: StorageView,
    mount: MountInfo,
}

impl Harness {
    fn new() -> Self {
        Harness {
            backend: ApproleBackend::new(),
            view: StorageView::inmem(),
            mount: MountInfo {
                path: "auth/approle/".into(),
                kind: "approle".into(),
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
        let mut req = Request::new(op, format!("auth/approle/{path}")).with_data(data);
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

    async fn data(&self, op: Operation, path: &str, data: Value) -> Map<String, Value> {
        self.call(op, path, data)
            .await
            .unwrap()
            .data
            .expect("a data block")
    }

    async fn role_id(&self, role: &str) -> String {
        let data = self
            .data(Operation::Read, &format!("role/{role}/role-id"), json!({}))
            .await;
        data["role_id"].as_str().unwrap().to_string()
    }

    /// Issues a SecretID; returns (secret_id, accessor).
    async fn secret_id(&self, role: &str, data: Value) -> (String, String) {
        let d = self
            .data(Operation::Update, &format!("role/{role}/secret-id"), data)
            .await;
        (
            d["secret_id"].as_str().unwrap().to_string(),
            d["secret_id_accessor"].as_str().unwrap().to_string(),
        )
    }

    async fn login(&self, role_id: &str, secret_id: &str) -> Result<Auth> {
        let resp = self
            .call(
                Operation::Update,
                "login",
                json!({"role_id": role_id, "secret_id": secret_id}),
            )
            .await?;
        Ok(resp.auth.expect("login answers with auth"))
    }
}

fn status<T>(r: Result<T>) -> Option<(u16, String)> {
    r.err().map(|e| (e.status(), e.to_string()))
}

fn bad_credentials() -> Option<(u16, String)> {
    Some((400, BAD_CREDENTIALS.to_string()))
}

#[tokio::test]
async fn role_crud_and_login() {
    let h = Harness::new();
    h.call(
        Operation::Create,
        "role/web",
        json!({"token_policies": ["web"], "token_ttl": "20m", "token_max_ttl": "1h", "secret_id_ttl": "10m"}),
    )
    .await
    .unwrap();
    let read = h.data(Operation::Read, "role/web", json!({})).await;
    let expect = [
        ("bind_secret_id", json!(true)),
        ("secret_id_ttl", json!(600)),
        ("secret_id_num_uses", json!(0)),
        ("token_policies", json!(["web"])),
        ("token_ttl", json!(1200)),
        ("token_max_ttl", json!(3600)),
        ("token_type", json!("default")),
    ];
    for (key, want) in expect {
        assert_eq!(read.get(key), Some(&want), "{key}");
    }
    assert!(!read.contains_key("role_id"));
    let list = h.data(Operation::List, "role/", json!({})).await;
    assert_eq!(list["keys"], json!(["web"]));

    let role_id = h.role_id("web").await;
    assert_eq!(role_id.len(), 36);
    let issued = h
        .data(
            Operation::Update,
            "role/web/secret-id",
            json!({"metadata": "{\"env\":\"prod\"}"}),
        )
        .await;
    assert_eq!(issued["secret_id_ttl"], json!(600));
    assert_eq!(issued["secret_id_num_uses"], json!(0));
    let secret_id = issued["secret_id"].as_str().unwrap();
    let auth = h.login(&role_id, secret_id).await.unwrap();
    assert_eq!(auth.policies, ["web"]);
    assert_eq!(
        auth.metadata.get("role_name").map(String::as_str),
        Some("web")
    );
    assert_eq!(auth.metadata.get("env").map(String::as_str), Some("prod"));
    assert_eq!((auth.lease_duration, auth.max_ttl), (1200, 3600));
    assert_eq!(auth.path, "auth/approle/login");
    assert!(auth.renewable && auth.display_name.is_empty());

    // Bad pairs all get the same answer.
    assert_eq!(status(h.login(&role_id, "wrong").await), bad_credentials());
    assert_eq!(status(h.login("wrong", secret_id).await), bad_credentials());
    assert_eq!(
        status(
            h.call(Operation::Update, "login", json!({"role_id": role_id}))
                .await
        ),
        Some((400, "missing secret_id".into()))
    );

    // A new RoleID replaces the old one.
    h.call(
        Operation::Update,
        "role/web/role-id",
        json!({"role_id": "my-role-id"}),
    )
    .await
    .unwrap();
    assert_eq!(
        status(h.login(&role_id, secret_id).await),
        bad_credentials()
    );
    assert!(h.login("my-role-id", secret_id).await.is_ok());
    // ...and cannot be taken by another role.
    h.call(Operation::Create, "role/other", json!({}))
        .await
        .unwrap();
    let taken = h.call(
        Operation::Update,
        "role/other/role-id",
        json!({"role_id": "my-role-id"}),
    );
    assert_eq!(
        status(taken.await),
        Some((400, "role_id already in use".into()))
    );

    // Deleting a role removes everything it owned.
    h.call(Operation::Delete, "role/web", json!({}))
        .await
        .unwrap();
    h.call(Operation::Delete, "role/other", json!({}))
        .await
        .unwrap();
    assert_eq!(
        status(h.login("my-role-id", secret_id).await),
        bad_credentials()
    );
    assert_eq!(h.view.list_recursive("").await.unwrap(), ["salt"]);
}

#[tokio::test]
async fn secret_id_num_uses_and_ttl() {
    let h = Harness::new();
    h.call(
        Operation::Create,
        "role/batch",
        json!({"secret_id_num_uses": 2, "secret_id_ttl": 1}),
    )
    .await
    .unwrap();
    let role_id = h.role_id("batch").await;
    let (secret, _) = h.secret_id("batch", json!({})).await;
    assert!(h.login(&role_id, &secret).await.is_ok());
    let lookup = h
        .data(
            Operation::Update,
            "role/batch/secret-id/lookup",
            json!({"secret_id": secret}),
        )
        .await;
    assert_eq!(lookup["secret_id_num_uses"], json!(1));
    assert!(h.login(&role_id, &secret).await.is_ok());
    assert_eq!(status(h.login(&role_id, &secret).await), bad_credentials());
    assert!(h.view.list("secret_id/batch/").await.unwrap().is_empty());
    assert!(h.view.list("accessor/").await.unwrap().is_empty());

    // Limits the role sets on SecretIDs.
    let cases = [
        (
            json!({"num_uses": 3}),
            "num_uses cannot be higher than the role's secret_id_num_uses",
        ),
        (
            json!({"ttl": 60}),
            "ttl cannot be longer than the role's secret_id_ttl",
        ),
        (json!({"num_uses": -1}), "num_uses cannot be negative"),
        (json!({"cidr_list": "nope"}), "invalid CIDR block \"nope\""),
    ];
    for (input, msg) in cases {
        let got = h
            .call(Operation::Update, "role/batch/secret-id", input.clone())
            .await;
        assert_eq!(status(got), Some((400, msg.to_string())), "{input}");
    }

    // Expiry: the SecretID fails and is removed.
    let (secret, _) = h.secret_id("batch", json!({})).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(status(h.login(&role_id, &secret).await), bad_credentials());
    assert!(h.view.list("secret_id/batch/").await.unwrap().is_empty());
    // Tidy finds expired ones nobody tried.
    let _ = h.secret_id("batch", json!({})).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let resp = h
        .call(Operation::Update, "tidy/secret-id", json!({}))
        .await
        .unwrap();
    assert_eq!(resp.warnings.len(), 1);
    assert!(h.view.list("accessor/").await.unwrap().is_empty());
}

#[tokio::test]
async fn without_bind_secret_id() {
    let h = Harness::new();
    let unconstrained = h.call(
        Operation::Create,
        "role/open",
        json!({"bind_secret_id": false}),
    );
    assert_eq!(
        status(unconstrained.await),
        Some((
            400,
            "at least one constraint should be enabled on the role".into()
        ))
    );
    h.call(
        Operation::Create,
        "role/open",
        json!({"bind_secret_id": false, "secret_id_bound_cidrs": "127.0.0.1/32"}),
    )
    .await
    .unwrap();
    let role_id = h.role_id("open").await;
    let login = |addr| {
        h.call_from(
            Operation::Update,
            "login",
            json!({"role_id": role_id}),
            addr,
        )
    };
    let auth = login(Some("127.0.0.1:4000")).await.unwrap().auth.unwrap();
    assert_eq!(
        auth.metadata.get("role_name").map(String::as_str),
        Some("open")
    );
    assert_eq!(
        status(login(Some("10.0.0.1:4000")).await).map(|s| s.0),
        Some(400)
    );
}

#[tokio::test]
async fn secret_id_management() {
    let h = Harness::new();
    h.call(Operation::Create, "role/app", json!({}))
        .await
        .unwrap();
    let role_id = h.role_id("app").await;
    let (generated, generated_acc) = h
        .secret_id("app", json!({"cidr_list": ["10.0.0.0/8"]}))
        .await;
    let custom = h
        .data(
            Operation::Update,
            "role/app/custom-secret-id",
            json!({"secret_id": "my-secret"}),
        )
        .await;
    assert_eq!(custom["secret_id"], json!("my-secret"));
    let custom_acc = custom["secret_id_accessor"].as_str().unwrap().to_string();
    let dup = h.call(
        Operation::Update,
        "role/app/custom-secret-id",
        json!({"secret_id": "my-secret"}),
    );
    assert_eq!(status(dup.await).map(|s| s.0), Some(400));

    let mut want = vec![generated_acc.clone(), custom_acc.clone()];
    want.sort();
    let listed = h
        .data(Operation::List, "role/app/secret-id", json!({}))
        .await;
    assert_eq!(listed["keys"], json!(want));

    // The SecretID's own CIDRs are checked on login.
    let login = |addr| {
        h.call_from(
            Operation::Update,
            "login",
            json!({"role_id": role_id, "secret_id": generated}),
            addr,
        )
    };
    assert_eq!(
        status(login(Some("192.168.1.1:1")).await).map(|s| s.0),
        Some(400)
    );
    assert!(login(Some("10.2.3.4:1")).await.is_ok());

    // Lookups by SecretID and by accessor agree; neither shows the SecretID.
    let by_id = h
        .data(
            Operation::Update,
            "role/app/secret-id/lookup",
            json!({"secret_id": "my-secret"}),
        )
        .await;
    let by_acc = h
        .data(
            Operation::Update,
            "role/app/secret-id-accessor/lookup",
            json!({"secret_id_accessor": custom_acc}),
        )
        .await;
    assert_eq!(by_id, by_acc);
    assert_eq!(by_id["secret_id_accessor"], json!(custom_acc));
    assert_eq!(by_id["expiration_time"], json!("0001-01-01T00:00:00Z"));
    assert!(!Value::Object(by_id).to_string().contains("my-secret"));
    // Unknown SecretID: 204 as in Vault; unknown accessor: 404.
    let unknown = h.call(
        Operation::Update,
        "role/app/secret-id/lookup",
        json!({"secret_id": "x"}),
    );
    assert!(unknown.await.unwrap().data.is_none());
    let unknown = h.call(
        Operation::Update,
        "role/app/secret-id-accessor/lookup",
        json!({"secret_id_accessor": "x"}),
    );
    assert_eq!(status(unknown.await).map(|s| s.0), Some(404));

    // Destroy by SecretID and by accessor.
    h.call(
        Operation::Update,
        "role/app/secret-id/destroy",
        json!({"secret_id": "my-secret"}),
    )
    .await
    .unwrap();
    assert_eq!(
        status(h.login(&role_id, "my-secret").await),
        bad_credentials()
    );
    h.call(
        Operation::Update,
        "role/app/secret-id-accessor/destroy",
        json!({"secret_id_accessor": generated_acc}),
    )
    .await
    .unwrap();
    let empty = h.call(Operation::List, "role/app/secret-id", json!({}));
    assert_eq!(status(empty.await).map(|s| s.0), Some(404));
}

#[tokio::test]
async fn credentials_never_in_storage_keys_or_debug() {
    let h = Harness::new();
    h.call(
        Operation::Create,
        "role/svc",
        json!({"role_id": "visible-role-id"}),
    )
    .await
    .unwrap();
    let (secret, accessor) = h.secret_id("svc", json!({})).await;
    let keys = h.view.list_recursive("").await.unwrap();
    for key in &keys {
        for secret in ["visible-role-id", secret.as_str(), accessor.as_str()] {
            assert!(!key.contains(secret), "{key} leaks a credential");
        }
        let value = String::from_utf8_lossy(&h.view.get(key).await.unwrap().unwrap()).to_string();
        assert!(
            !value.contains(&secret),
            "value at {key} holds the SecretID"
        );
    }
    let role: RoleEntry = h.view.get_json("role/svc").await.unwrap().unwrap();
    assert!(!format!("{role:?}").contains("visible-role-id"));
}

#[tokio::test]
async fn routing_and_validation() {
    let h = Harness::new();
    let cases = [
        (Operation::Read, "login", json!({}), 405),
        (Operation::Read, "nope", json!({}), 404),
        (Operation::Create, "role/bad name", json!({}), 400),
        (Operation::Create, "role/-x", json!({}), 400),
        (Operation::Update, "role/missing/secret-id", json!({}), 400),
        (Operation::Read, "role/missing", json!({}), 404),
        (Operation::Update, "login", json!({}), 400),
    ];
    for (op, path, data, want) in cases {
        let got = h.call(op, path, data).await;
        assert_eq!(status(got).map(|s| s.0), Some(want), "{op:?} {path}");
    }
    assert_eq!(h.backend.unauthenticated_paths(), ["login"]);
}
