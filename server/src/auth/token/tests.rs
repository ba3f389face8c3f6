//! Unit tests of the token store: creation, lookup, renewal, revocation trees and use counts.

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::logical::Request;

const DEFAULT_TTL: u64 = 3600;
const MAX_TTL: u64 = 7200;

fn token_mount() -> MountInfo {
    MountInfo {
        path: "auth/token/".into(),
        kind: "token".into(),
        default_lease_ttl: Duration::from_secs(DEFAULT_TTL),
        max_lease_ttl: Duration::from_secs(MAX_TTL),
        ..Default::default()
    }
}

struct Harness {
    store: TokenStore,
    view: StorageView,
    mount: MountInfo,
    root: String,
}

impl Harness {
    async fn new() -> Self {
        let view = StorageView::inmem();
        let store = TokenStore::new(view.clone());
        store.setup().await.unwrap();
        let root = store.create_root(None).await.unwrap().id;
        Harness {
            store,
            view,
            mount: token_mount(),
            root,
        }
    }

    async fn call(&self, op: Operation, path: &str, token: &str, data: Value) -> Result<Response> {
        let mut req = Request::new(op, format!("auth/token/{path}")).with_data(data);
        if !token.is_empty() {
            req = req.with_token(token);
        }
        self.store
            .handle(BackendRequest {
                path: path.to_string(),
                req: &req,
                storage: &self.view,
                mount: &self.mount,
            })
            .await
    }

    /// `auth/token/create` as `parent`; returns the new token's auth block.
    async fn create(&self, parent: &str, data: Value) -> Result<Auth> {
        let resp = self.call(Operation::Update, "create", parent, data).await?;
        Ok(resp.auth.expect("create answers with an auth block"))
    }

    async fn lookup_self(&self, token: &str) -> Result<Map<String, Value>> {
        let resp = self
            .call(Operation::Read, "lookup-self", token, json!({}))
            .await?;
        Ok(resp.data.expect("lookup answers with data"))
    }

    async fn alive(&self, token: &str) -> bool {
        self.store.lookup(token).await.unwrap().is_some()
    }
}

fn err_msg(r: Result<impl std::fmt::Debug>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => format!("{} {e}", e.status()),
    }
}

#[tokio::test]
async fn create_and_lookups() {
    let h = Harness::new().await;
    let auth = h
        .create(
            &h.root,
            json!({"policies": ["app"], "meta": {"team": "a"}, "display_name": "my app"}),
        )
        .await
        .unwrap();
    assert!(auth.client_token.starts_with("hvs."));
    assert_eq!(auth.client_token.len(), 4 + 24);
    assert_eq!(auth.accessor.len(), 24);
    assert_eq!(auth.policies, ["app", "default"]);
    assert_eq!(auth.token_policies, auth.policies);
    assert_eq!(auth.lease_duration, DEFAULT_TTL);
    assert!(auth.renewable && !auth.orphan);
    assert_eq!(auth.token_type, "service");
    assert_eq!(auth.metadata.get("team").map(String::as_str), Some("a"));

    let data = h.lookup_self(&auth.client_token).await.unwrap();
    let expect = [
        ("id", json!(auth.client_token)),
        ("accessor", json!(auth.accessor)),
        ("display_name", json!("token-my-app")),
        ("path", json!("auth/token/create")),
        ("policies", json!(["app", "default"])),
        ("meta", json!({"team": "a"})),
        ("creation_ttl", json!(DEFAULT_TTL)),
        ("ttl", json!(DEFAULT_TTL)),
        ("explicit_max_ttl", json!(0)),
        ("num_uses", json!(0)),
        ("orphan", json!(false)),
        ("renewable", json!(true)),
        ("type", json!("service")),
        ("entity_id", json!("")),
        ("identity_policies", json!([])),
    ];
    for (key, want) in expect {
        assert_eq!(data.get(key), Some(&want), "lookup-self {key}");
    }
    assert!(data["expire_time"].is_string() && data["issue_time"].is_string());
    assert!(data["creation_time"].as_i64().unwrap() > 1_600_000_000);

    // lookup {token}, the deprecated lookup/:token, and lookup-accessor.
    let by_body = h
        .call(
            Operation::Update,
            "lookup",
            &h.root,
            json!({"token": auth.client_token}),
        )
        .await
        .unwrap();
    assert_eq!(by_body.data.unwrap()["accessor"], json!(auth.accessor));
    let by_path = h
        .call(
            Operation::Read,
            &format!("lookup/{}", auth.client_token),
            &h.root,
            json!({}),
        )
        .await
        .unwrap();
    assert_eq!(by_path.data.unwrap()["id"], json!(auth.client_token));
    let by_accessor = h
        .call(
            Operation::Update,
            "lookup-accessor",
            &h.root,
            json!({"accessor": auth.accessor}),
        )
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(by_accessor["id"], json!(""));
    assert_eq!(by_accessor["display_name"], json!("token-my-app"));

    // Root token as Vault shows it.
    let root = h.lookup_self(&h.root).await.unwrap();
    assert_eq!(root["policies"], json!(["root"]));
    assert_eq!(root["expire_time"], Value::Null);
    assert_eq!(root["ttl"], json!(0));
    assert_eq!(root["display_name"], json!("root"));
    assert_eq!(root["meta"], Value::Null);

    // Unknown tokens and accessors.
    let unknown = h.call(
        Operation::Update,
        "lookup",
        &h.root,
        json!({"token": "hvs.nope"}),
    );
    assert_eq!(err_msg(unknown.await), "403 permission denied");
    let unknown = h.call(
        Operation::Update,
        "lookup-accessor",
        &h.root,
        json!({"accessor": "x"}),
    );
    assert_eq!(err_msg(unknown.await), "400 invalid accessor");
    let list = h
        .call(Operation::List, "accessors/", &h.root, json!({}))
        .await
        .unwrap();
    let keys = list.data.unwrap()["keys"].clone();
    assert!(keys.as_array().unwrap().contains(&json!(auth.accessor)));
    assert_eq!(keys.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn custom_root_id_and_duplicates() {
    let h = Harness::new().await;
    let dev = h.store.create_root(Some("dev-root".into())).await.unwrap();
    assert_eq!(dev.id, "dev-root");
    assert!(h.alive("dev-root").await);
    assert!(h.store.create_root(Some("dev-root".into())).await.is_err());
    let custom = h.create(&h.root, json!({"id": "my-token"})).await.unwrap();
    assert_eq!(custom.client_token, "my-token");
    // Inherits root: no TTL.
    assert_eq!(custom.lease_duration, 0);
    assert_eq!(custom.policies, ["root"]);
}

#[tokio::test]
async fn create_rules_for_non_root_parents() {
    let h = Harness::new().await;
    let parent = h
        .create(&h.root, json!({"policies": ["a", "b"]}))
        .await
        .unwrap()
        .client_token;
    // (request, Ok(policies) or Err(message))
    let cases: Vec<(Value, std::result::Result<Vec<&str>, &str>)> = vec![
        (json!({}), Ok(vec!["a", "b", "default"])),
        (json!({"policies": ["a"]}), Ok(vec!["a", "default"])),
        (json!({"policies": "b,default"}), Ok(vec!["b", "default"])),
        (
            json!({"policies": ["a"], "no_default_policy": true}),
            Ok(vec!["a"]),
        ),
        (json!({"no_default_policy": true}), Ok(vec!["a", "b"])),
        (
            json!({"policies": ["c"]}),
            Err("400 child policies must be subset of parent"),
        ),
        (
            json!({"policies": ["root"]}),
            Err("400 child policies must be subset of parent"),
        ),
        (
            json!({"id": "chosen"}),
            Err("400 root or sudo privileges required to specify token id"),
        ),
        (
            json!({"no_parent": true}),
            Err("400 root or sudo privileges required to create orphan token"),
        ),
        (
            json!({"period": "1h"}),
            Err("400 root or sudo privileges required to create periodic token"),
        ),
        (
            json!({"num_uses": -1}),
            Err("400 number of uses cannot be negative"),
        ),
        (
            json!({"type": "batch"}),
            Err("400 batch tokens are not supported"),
        ),
        (
            json!({"ttl": "nope"}),
            Err("400 ttl: invalid duration \"nope\": expected a number before the unit"),
        ),
    ];
    for (input, want) in cases {
        let got = h.create(&parent, input.clone()).await;
        match want {
            Ok(policies) => assert_eq!(got.unwrap().policies, policies, "{input}"),
            Err(msg) => assert_eq!(err_msg(got), msg, "{input}"),
        }
    }
    // create-orphan needs no root; the token has no parent.
    let orphan = h
        .call(
            Operation::Update,
            "create-orphan",
            &parent,
            json!({"policies": ["a"]}),
        )
        .await
        .unwrap()
        .auth
        .unwrap();
    assert!(orphan.orphan);
    // TTLs: default from the mount, capped at the mount's max.
    let capped = h.create(&parent, json!({"ttl": "100h"})).await.unwrap();
    assert_eq!(capped.lease_duration, MAX_TTL);
    let explicit = h
        .create(&parent, json!({"ttl": "1h", "explicit_max_ttl": 60}))
        .await
        .unwrap();
    assert_eq!(explicit.lease_duration, 60);
    // An unknown caller cannot create anything.
    assert_eq!(
        err_msg(h.create("hvs.unknown", json!({})).await),
        "403 permission denied"
    );
}

#[tokio::test]
async fn revoking_a_parent_revokes_children_but_not_orphans() {
    let h = Harness::new().await;
    let parent = h.create(&h.root, json!({})).await.unwrap().client_token;
    let child = h.create(&parent, json!({})).await.unwrap().client_token;
    let grandchild = h.create(&child, json!({})).await.unwrap().client_token;
    let orphan = h
        .call(Operation::Update, "create-orphan", &parent, json!({}))
        .await
        .unwrap()
        .auth
        .unwrap()
        .client_token;
    h.call(
        Operation::Update,
        "revoke",
        &h.root,
        json!({"token": parent}),
    )
    .await
    .unwrap();
    for gone in [&parent, &child, &grandchild] {
        assert!(!h.alive(gone).await);
    }
    assert!(h.alive(&orphan).await);

    // revoke-orphan: the children survive as orphans, grandchildren stay theirs.
    let parent = h.create(&h.root, json!({})).await.unwrap().client_token;
    let child = h.create(&parent, json!({})).await.unwrap().client_token;
    let grandchild = h.create(&child, json!({})).await.unwrap().client_token;
    h.call(
        Operation::Update,
        "revoke-orphan",
        &h.root,
        json!({"token": parent}),
    )
    .await
    .unwrap();
    assert!(!h.alive(&parent).await);
    assert!(h.alive(&child).await && h.alive(&grandchild).await);
    assert_eq!(h.lookup_self(&child).await.unwrap()["orphan"], json!(true));
    assert!(h
        .view
        .list(&format!("parent/{}/", h.store.hash(&parent).await.unwrap()))
        .await
        .unwrap()
        .is_empty());
    h.call(Operation::Update, "revoke-self", &child, json!({}))
        .await
        .unwrap();
    assert!(!h.alive(&child).await && !h.alive(&grandchild).await);

    // revoke-accessor takes the tree too; revoking an unknown token is a no-op.
    let parent = h.create(&h.root, json!({})).await.unwrap();
    let child = h
        .create(&parent.client_token, json!({}))
        .await
        .unwrap()
        .client_token;
    h.call(
        Operation::Update,
        "revoke-accessor",
        &h.root,
        json!({"accessor": parent.accessor}),
    )
    .await
    .unwrap();
    assert!(!h.alive(&parent.client_token).await && !h.alive(&child).await);
    h.call(
        Operation::Update,
        "revoke",
        &h.root,
        json!({"token": "hvs.none"}),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn use_limited_tokens() {
    let h = Harness::new().await;
    let token = h.create(&h.root, json!({"num_uses": 3})).await.unwrap();
    assert_eq!(token.num_uses, 3);
    let t = &token.client_token;
    let uses: Vec<i64> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(h.store.use_token(t).await.unwrap().unwrap().num_uses);
        }
        v
    };
    assert_eq!(uses, [2, 1, REVOCATION_PENDING]);
    assert!(h.store.use_token(t).await.unwrap().is_none());
    assert!(!h.alive(t).await);
    // Unlimited tokens are not counted down.
    let free = h.create(&h.root, json!({})).await.unwrap().client_token;
    for _ in 0..5 {
        assert_eq!(h.store.use_token(&free).await.unwrap().unwrap().num_uses, 0);
    }
}

#[tokio::test]
async fn expiry_and_tidy() {
    let h = Harness::new().await;
    let short = h.create(&h.root, json!({"ttl": "1s"})).await.unwrap();
    let short_child = h
        .create(&h.root, json!({"ttl": "1s"}))
        .await
        .unwrap()
        .client_token;
    let long = h
        .create(&h.root, json!({"ttl": "1h"}))
        .await
        .unwrap()
        .client_token;
    let long_child = h
        .create(&short.client_token, json!({"ttl": "1h"}))
        .await
        .unwrap()
        .client_token;
    assert!(h.alive(&short.client_token).await);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Looking an expired token up revokes it, with its children.
    assert!(h.store.lookup(&short.client_token).await.unwrap().is_none());
    assert!(!h.alive(&long_child).await);
    assert!(h.alive(&long).await);
    // A child outliving its parent's TTL dies with the parent, even when only
    // the child is looked up.
    let parent = h
        .create(&h.root, json!({"ttl": "1s"}))
        .await
        .unwrap()
        .client_token;
    let child = h
        .create(&parent, json!({"ttl": "1h"}))
        .await
        .unwrap()
        .client_token;
    let grandchild = h
        .create(&child, json!({"ttl": "1h"}))
        .await
        .unwrap()
        .client_token;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(h.store.use_token(&grandchild).await.unwrap().is_none());
    assert!(h
        .store
        .get_by_hash(&h.store.hash(&parent).await.unwrap())
        .await
        .unwrap()
        .is_none());
    assert!(!h.alive(&child).await);
    // Tidy removes the other expired token without anyone looking it up.
    let before = h.view.list("id/").await.unwrap().len();
    let removed = h.store.tidy().await.unwrap();
    assert_eq!(removed, 1);
    assert_eq!(h.view.list("id/").await.unwrap().len(), before - 1);
    assert!(!h.alive(&short_child).await);
    // Dangling index entries (as a crash mid-revocation would leave).
    h.view
        .put(
            "accessor/deadbeef",
            serde_json::to_vec(&json!({"accessor": "x", "token": "gone"})).unwrap(),
        )
        .await
        .unwrap();
    h.view
        .put("parent/gone/alsogone", Vec::new())
        .await
        .unwrap();
    assert_eq!(h.store.tidy().await.unwrap(), 2);
    assert_eq!(h.store.tidy().await.unwrap(), 0);
    assert!(h.alive(&long).await && h.alive(&h.root).await);
}

#[tokio::test]
async fn renewals() {
    let h = Harness::new().await;
    let renew = |token: String, increment: Value| {
        let h = &h;
        async move {
            h.call(
                Operation::Update,
                "renew",
                &h.root,
                json!({"token": token, "increment": increment}),
            )
            .await
        }
    };
    // Increment honoured, then capped by the explicit max.
    let t = h
        .create(&h.root, json!({"ttl": 60, "explicit_max_ttl": 300}))
        .await
        .unwrap()
        .client_token;
    let r = renew(t.clone(), json!(120)).await.unwrap();
    assert_eq!(r.auth.unwrap().lease_duration, 120);
    let r = renew(t.clone(), json!("1h")).await.unwrap();
    let lease = r.auth.as_ref().unwrap().lease_duration;
    assert!((299..=300).contains(&lease), "{lease}");
    assert_eq!(r.warnings.len(), 1);
    // Capped by the mount's max.
    let t = h
        .create(&h.root, json!({"ttl": 60, "policies": ["x"]}))
        .await
        .unwrap()
        .client_token;
    let lease = renew(t, json!(MAX_TTL * 10))
        .await
        .unwrap()
        .auth
        .unwrap()
        .lease_duration;
    assert!((MAX_TTL - 1..=MAX_TTL).contains(&lease), "{lease}");
    // No increment: the creation TTL again.
    let t = h
        .create(&h.root, json!({"ttl": 90, "policies": ["x"]}))
        .await
        .unwrap()
        .client_token;
    let r = h
        .call(Operation::Update, "renew-self", &t, json!({}))
        .await
        .unwrap();
    assert_eq!(r.auth.unwrap().lease_duration, 90);
    assert!(h
        .lookup_self(&t)
        .await
        .unwrap()
        .contains_key("last_renewal_time"));
    // Not renewable.
    let t = h
        .create(&h.root, json!({"renewable": false, "policies": ["x"]}))
        .await
        .unwrap()
        .client_token;
    assert_eq!(
        err_msg(renew(t, json!(10)).await),
        "400 token is not renewable"
    );
    // Periodic tokens renew to their period whatever the increment.
    let t = h
        .create(&h.root, json!({"period": "10m", "policies": ["x"]}))
        .await
        .unwrap();
    assert_eq!(t.lease_duration, 600);
    assert_eq!(
        h.lookup_self(&t.client_token).await.unwrap()["period"],
        json!(600)
    );
    let r = renew(t.client_token.clone(), json!(10)).await.unwrap();
    assert_eq!(r.auth.unwrap().lease_duration, 600);
    // renew-accessor works without revealing the token.
    let r = h
        .call(
            Operation::Update,
            "renew-accessor",
            &h.root,
            json!({"accessor": t.accessor, "increment": 5}),
        )
        .await
        .unwrap();
    let auth = r.auth.unwrap();
    assert_eq!((auth.client_token.as_str(), auth.lease_duration), ("", 600));
    // Unknown token.
    assert_eq!(
        err_msg(renew("hvs.none".into(), json!(1)).await),
        "400 token not found"
    );
}

#[tokio::test]
async fn login_tokens() {
    let h = Harness::new().await;
    let mount = MountInfo {
        path: "auth/userpass/".into(),
        default_lease_ttl: Duration::from_secs(DEFAULT_TTL),
        max_lease_ttl: Duration::from_secs(MAX_TTL),
        ..Default::default()
    };
    let login = Auth {
        policies: vec!["dev".into()],
        display_name: "alice".into(),
        metadata: BTreeMap::from([("username".to_string(), "alice".to_string())]),
        lease_duration: 0,
        max_ttl: 1800,
        renewable: true,
        path: "auth/userpass/login/alice".into(),
        ..Default::default()
    };
    let auth = h.store.create_from_login(&login, &mount).await.unwrap();
    assert_eq!(auth.policies, ["default", "dev"]);
    // Mount default 3600, capped by the login's max 1800.
    assert_eq!(auth.lease_duration, 1800);
    assert!(auth.orphan && auth.renewable);
    let data = h.lookup_self(&auth.client_token).await.unwrap();
    assert_eq!(data["display_name"], json!("userpass-alice"));
    assert_eq!(data["path"], json!("auth/userpass/login/alice"));
    assert_eq!(data["meta"], json!({"username": "alice"}));
    // Renewal stays within the login's max.
    let (entry, _) = h.store.renew(&auth.client_token, 100_000).await.unwrap();
    assert!(entry.remaining_ttl(chrono::Utc::now().timestamp_millis()) <= 1800);

    let periodic = Auth {
        period: 300,
        no_default_policy: true,
        policies: vec!["dev".into()],
        renewable: true,
        ..Default::default()
    };
    let auth = h.store.create_from_login(&periodic, &mount).await.unwrap();
    assert_eq!(
        (auth.lease_duration, auth.policies.clone()),
        (300, vec!["dev".to_string()])
    );
    let data = h.lookup_self(&auth.client_token).await.unwrap();
    assert_eq!(data["display_name"], json!("userpass"));
    assert_eq!(data["path"], json!("auth/userpass/login"));
}

#[tokio::test]
async fn storage_never_holds_ids_or_accessors_in_keys() {
    let h = Harness::new().await;
    let mut secrets = vec![h.root.clone()];
    let parent = h.create(&h.root, json!({"policies": ["a"]})).await.unwrap();
    let child = h
        .create(&parent.client_token, json!({"policies": ["a"]}))
        .await
        .unwrap();
    let custom = h.create(&h.root, json!({"id": "plainid"})).await.unwrap();
    for a in [&parent, &child, &custom] {
        secrets.push(a.client_token.clone());
        secrets.push(a.accessor.clone());
    }
    let root_entry = h.store.lookup(&h.root).await.unwrap().unwrap();
    secrets.push(root_entry.accessor.clone());
    let keys = h.view.list_recursive("").await.unwrap();
    assert!(keys.iter().any(|k| k.starts_with("parent/")));
    for key in &keys {
        for secret in &secrets {
            let bare = secret.trim_start_matches("hvs.");
            assert!(
                !key.contains(bare),
                "storage key {key:?} leaks a token or accessor"
            );
        }
        // Values never hold a token ID either.
        let value = String::from_utf8_lossy(&h.view.get(key).await.unwrap().unwrap()).to_string();
        for token in [
            &h.root,
            &parent.client_token,
            &child.client_token,
            &custom.client_token,
        ] {
            assert!(
                !value.contains(token.as_str()),
                "value at {key:?} holds a token ID"
            );
        }
    }
}

#[tokio::test]
async fn debug_output_redacts_the_token() {
    let h = Harness::new().await;
    let entry = h.store.lookup(&h.root).await.unwrap().unwrap();
    let printed = format!("{entry:?}");
    assert!(!printed.contains(&h.root), "{printed}");
    assert!(printed.contains("<redacted>"));
}

#[tokio::test]
async fn routing() {
    let h = Harness::new().await;
    let cases = [
        (Operation::Read, "create", 405),
        (Operation::Delete, "revoke", 405),
        (Operation::Read, "nope", 404),
        (Operation::Update, "create/somerole", 400),
        (Operation::Update, "lookup", 400),
    ];
    for (op, path, status) in cases {
        let got = h.call(op, path, &h.root, json!({})).await;
        assert_eq!(got.err().map(|e| e.status()), Some(status), "{op:?} {path}");
    }
    assert_eq!(err_msg(h.lookup_self("").await), "403 permission denied");
}

#[tokio::test]
async fn a_read_only_store_judges_expiry_by_the_clock_it_is_given() {
    use std::sync::atomic::{AtomicI64, Ordering};
    let h = Harness::new().await;
    let token = h
        .create(&h.root, json!({"ttl": "30m"}))
        .await
        .unwrap()
        .client_token;
    // A standby's store over the same replica, reading a clock the test moves (the active
    // node's time as its appends carry it).
    let offset_ms = Arc::new(AtomicI64::new(0));
    let clock: Clock = {
        let offset_ms = offset_ms.clone();
        Arc::new(move || {
            Utc::now() + chrono::Duration::milliseconds(offset_ms.load(Ordering::SeqCst))
        })
    };
    let standby = TokenStore::read_only(h.view.clone(), clock);
    let ttl = |s: &TokenStore, e: &TokenEntry| e.remaining_ttl(s.now_ms());
    let entry = standby.lookup(&token).await.unwrap().expect("live token");
    assert!((1790..=1800).contains(&ttl(&standby, &entry)));
    // The given clock an hour ahead: the token is expired there, and nothing was revoked.
    offset_ms.store(3_600_000, Ordering::SeqCst);
    assert!(standby.lookup(&token).await.unwrap().is_none());
    assert!(h.alive(&token).await, "a read-only store revoked a token");
    // Ten minutes ahead: 20 minutes left, whatever this machine's clock says.
    offset_ms.store(600_000, Ordering::SeqCst);
    let entry = standby.lookup(&token).await.unwrap().expect("live token");
    assert!((1190..=1200).contains(&ttl(&standby, &entry)));
}
