//! The conventions every Vault client relies on (reference/vault-api.md §1.1): both LIST forms,
//! both token headers, the response wrapper's always-present fields, Vault-shaped error bodies,
//! and Prometheus metrics behind a token.

use anyhow::{ensure, Result};
use keyhold_tests::{Cluster, NodeOptions};
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test]
async fn list_verb_and_list_query_agree() -> Result<()> {
    let mut cluster = Cluster::single_active(NodeOptions::default()).await?;
    let api = cluster.node().api();
    api.mount_kv("secret", 2).await?;
    for key in ["a", "b", "dir/c"] {
        api.kv2_put("secret", &format!("l/{key}"), json!({"k": key}))
            .await?
            .expect(200, "write")?;
    }
    let verb = api.list("secret/metadata/l").await?.expect(200, "LIST")?;
    let query = api
        .get("secret/metadata/l?list=true")
        .await?
        .expect(200, "GET ?list=true")?;
    let keys = |v: &Value| v["data"]["keys"].clone();
    assert_eq!(keys(&verb.json), json!(["a", "b", "dir/"]), "{}", verb.text);
    assert_eq!(keys(&verb.json), keys(&query.json), "{}", query.text);
    let empty = api.list("secret/metadata/nothing-here").await?;
    ensure!(
        empty.status == 404,
        "LIST with no results: expected 404, got {} {}",
        empty.status,
        empty.text
    );
    Ok(())
}

/// (case name, request headers, expected status)
type HeaderCase<'a> = (&'a str, Vec<(&'a str, String)>, u16);

#[tokio::test]
async fn token_header_forms_and_client_headers() -> Result<()> {
    let mut cluster = Cluster::single_active(NodeOptions::default()).await?;
    let node = cluster.node();
    let token = node.init_keys.as_ref().unwrap().root_token.clone();
    let api = node.api().with_token(None);
    let url = api.url("auth/token/lookup-self");
    let cases: [HeaderCase; 5] = [
        ("X-Vault-Token", vec![("X-Vault-Token", token.clone())], 200),
        (
            "Authorization: Bearer",
            vec![("Authorization", format!("Bearer {token}"))],
            200,
        ),
        (
            "X-Vault-Token with X-Vault-Request",
            vec![
                ("X-Vault-Token", token.clone()),
                ("X-Vault-Request", "true".into()),
            ],
            200,
        ),
        ("no token", vec![], 403),
        (
            "wrong token",
            vec![("X-Vault-Token", "hvs.nope".into())],
            403,
        ),
    ];
    let mut failures = Vec::new();
    for (name, headers, want) in cases {
        let mut req = api.http().get(&url);
        for (k, v) in &headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status != want {
            failures.push(format!("{name}: expected {want}, got {status} {body}"));
        } else if want == 403 && !body["errors"].is_array() {
            failures.push(format!("{name}: 403 without an errors array: {body}"));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[tokio::test]
async fn responses_carry_the_wrapper_fields_and_errors_are_vault_shaped() -> Result<()> {
    let mut cluster = Cluster::single_active(NodeOptions::default()).await?;
    let api = cluster.node().api();
    api.mount_kv("secret", 2).await?;
    api.kv2_put("secret", "w", json!({"x": "y"}))
        .await?
        .expect(200, "write")?;

    // vaultrs deserialises these as non-optional: a missing one breaks the client.
    let read = api.get("secret/data/w").await?.expect(200, "read")?;
    for (field, want) in [
        ("lease_id", json!("")),
        ("renewable", json!(false)),
        ("lease_duration", json!(0)),
    ] {
        assert_eq!(read.json[field], want, "field {field} in {}", read.text);
    }
    ensure!(
        read.json["request_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "request_id missing: {}",
        read.text
    );
    for field in ["data", "wrap_info", "warnings", "auth"] {
        ensure!(
            read.json.get(field).is_some(),
            "field {field} missing: {}",
            read.text
        );
    }

    // Error bodies: {"errors":[...]}; a missing KV key has an empty list.
    let missing = api
        .get("secret/data/absent")
        .await?
        .expect(404, "missing key")?;
    assert_eq!(missing.json, json!({"errors": []}), "{}", missing.text);
    let cases = [
        (Method::GET, "sys/mounts", None, 403),
        (
            Method::POST,
            "sys/mounts/x",
            Some(json!({"type": "no-such-engine"})),
            400,
        ),
    ];
    let anonymous = api.with_token(None);
    let mut failures = Vec::new();
    for (i, (method, path, body, want)) in cases.into_iter().enumerate() {
        let client = if i == 0 { &anonymous } else { &api };
        let r = client.request(method.clone(), path, body.as_ref()).await?;
        let errors_ok = r.json["errors"]
            .as_array()
            .is_some_and(|e| !e.is_empty() && e.iter().all(Value::is_string));
        if r.status.as_u16() != want || !errors_ok {
            failures.push(format!(
                "{method} /v1/{path}: expected {want} with a non-empty errors array, got {} {}",
                r.status, r.text
            ));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[tokio::test]
async fn prometheus_metrics_need_a_token() -> Result<()> {
    let mut cluster = Cluster::single_active(NodeOptions::default()).await?;
    let api = cluster.node().api();
    let anonymous = api.with_token(None);
    let r = anonymous.get("sys/metrics?format=prometheus").await?;
    ensure!(
        r.status == 403,
        "metrics without a token: expected 403, got {} {}",
        r.status,
        r.text
    );
    let r = api
        .get("sys/metrics?format=prometheus")
        .await?
        .expect(200, "metrics with the root token")?;
    ensure!(
        r.text.lines().any(|l| l.starts_with("vault_")),
        "no vault_* metric in the Prometheus output:\n{}",
        r.text.chars().take(2000).collect::<String>()
    );
    ensure!(
        r.text.lines().any(|l| l.starts_with("# TYPE ")),
        "not Prometheus text format:\n{}",
        r.text.chars().take(2000).collect::<String>()
    );
    Ok(())
}
