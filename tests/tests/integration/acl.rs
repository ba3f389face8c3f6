//! ACL enforcement end to end: one policy, many requests, each with the status Vault would give.
//! Exact rules beat globs, `deny` wins, `+` matches one segment, `*` is a prefix, LIST matches
//! the folder form, and root-protected paths need `sudo`.

use anyhow::{ensure, Result};
use keyhold_tests::{list_method, Cluster, NodeOptions};
use reqwest::Method;
use serde_json::json;

const POLICY: &str = r#"
path "secret/data/team/*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}
path "secret/data/team/locked" {
  capabilities = ["deny"]
}
path "secret/data/team/readonly" {
  capabilities = ["read"]
}
path "secret/data/+/shared" {
  capabilities = ["read"]
}
path "secret/metadata/team/*" {
  capabilities = ["list"]
}
path "sys/mounts" {
  capabilities = ["read"]
}
path "sys/audit" {
  capabilities = ["read"]
}
path "sys/policies/acl/*" {
  capabilities = ["read", "sudo"]
}
"#;

#[tokio::test]
async fn policy_rules_decide_each_request() -> Result<()> {
    let mut cluster = Cluster::single_active(NodeOptions::default()).await?;
    let root = cluster.node().api();
    root.mount_kv("secret", 2).await?;
    root.put("sys/policies/acl/team", json!({ "policy": POLICY }))
        .await?
        .expect_ok("write policy")?;
    for key in [
        "team/readonly",
        "team/locked",
        "other/shared",
        "a/b/shared",
        "other/x",
    ] {
        root.kv2_put("secret", key, json!({"k": key}))
            .await?
            .expect(200, "seed")?;
    }
    let token = root
        .create_token(json!({"policies": ["team"], "no_default_policy": true}))
        .await?;
    let api = root.with_token(Some(&token));

    let data = Some(json!({"data": {"v": 1}}));
    let cases: Vec<(Method, &str, Option<serde_json::Value>, u16)> = vec![
        (Method::POST, "secret/data/team/a", data.clone(), 200),
        (Method::GET, "secret/data/team/a", None, 200),
        (Method::POST, "secret/data/team/locked", data.clone(), 403),
        (Method::GET, "secret/data/team/locked", None, 403),
        (Method::GET, "secret/data/team/readonly", None, 200),
        (Method::POST, "secret/data/team/readonly", data.clone(), 403),
        (Method::GET, "secret/data/team", None, 403),
        (Method::GET, "secret/data/other/shared", None, 200),
        (Method::POST, "secret/data/other/shared", data.clone(), 403),
        (Method::GET, "secret/data/a/b/shared", None, 403),
        (Method::GET, "secret/data/other/x", None, 403),
        (list_method(), "secret/metadata/team", None, 200),
        (Method::DELETE, "secret/metadata/team/a", None, 403),
        (Method::GET, "sys/mounts", None, 200),
        (Method::GET, "sys/audit", None, 403),
        (Method::GET, "sys/policies/acl/team", None, 200),
        (
            Method::PUT,
            "sys/policies/acl/team",
            Some(json!({"policy": ""})),
            403,
        ),
        (Method::GET, "auth/token/lookup-self", None, 403),
    ];
    let mut failures = Vec::new();
    for (method, path, body, want) in cases {
        let r = api.request(method.clone(), path, body.as_ref()).await?;
        if r.status.as_u16() != want {
            failures.push(format!(
                "{method} /v1/{path}: expected {want}, got {} {}",
                r.status, r.text
            ));
        }
    }
    ensure!(
        failures.is_empty(),
        "policy decisions differ from Vault's:\n{}",
        failures.join("\n")
    );
    Ok(())
}
