//! Reads served by standbys (issue 14): a standby answers pure reads from its own replica,
//! audited and authorised as on the active node; `X-Vault-Index` gives a client its own
//! writes back through any node; a revoked token or a deleted policy stops working on a
//! standby once it applied the change; `disable_standby_reads = true` forwards everything, as
//! Vault OSS does. (A standby cut off from the leader: `partitions.rs`.)

use anyhow::{ensure, Context, Result};
use keyhold_tests::{Api, Cluster, NodeOptions};
use reqwest::Method;
use serde_json::{json, Value};

/// One request outside the harness's session, with the consistency headers given: the status,
/// the body and the `X-Vault-Index` of the answer.
async fn send(
    api: &Api,
    method: Method,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Result<(u16, Value, Option<String>)> {
    let mut req = api.http().request(method.clone(), api.url(path));
    if let Some(token) = api.token() {
        req = req.header("X-Vault-Token", token);
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("{method} {path}"))?;
    let index = resp
        .headers()
        .get("x-vault-index")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    Ok((status, body, index))
}

/// How many reads this node served from its own replica (its own `sys/metrics`).
pub(crate) async fn served_locally(api: &Api) -> Result<u64> {
    let metrics = api
        .get("sys/metrics?format=prometheus")
        .await?
        .expect(200, "metrics of a standby")?;
    Ok(metrics
        .text
        .lines()
        .find_map(|l| l.strip_prefix("keyhold_standby_read_served "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64)
}

/// Writes through the active node (or a standby, which forwards), each read back at once
/// through another standby with the write's `X-Vault-Index`: always the new value. The same
/// reads without the index are counted (and printed) where they came back stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_serves_reads_and_gives_a_client_its_own_writes() -> Result<()> {
    let mut cluster = Cluster::prepare_ha(3, NodeOptions::default())?;
    cluster.form(3, 2).await?;
    let active = cluster.active().await?;
    let standbys = cluster.others(active);
    let on_active = cluster.nodes[active].api().without_session();
    let writer_standby = cluster.nodes[standbys[0]].api().without_session();
    let reader = cluster.nodes[standbys[1]].api().without_session();
    on_active.mount_kv("ryw", 2).await?;

    let before = served_locally(&reader).await?;
    let rounds = 150;
    let mut stale_without_index = 0;
    for i in 0..rounds {
        let through = if i % 2 == 0 {
            &on_active
        } else {
            &writer_standby
        };
        let (status, _, index) = send(
            through,
            Method::POST,
            "ryw/data/key",
            Some(&json!({ "data": { "v": i } })),
            &[],
        )
        .await?;
        ensure!(status == 200, "write {i}: HTTP {status}");
        let index = index.context("a write's answer carries X-Vault-Index")?;
        let (status, body, _) = send(
            &reader,
            Method::GET,
            "ryw/data/key",
            None,
            &[("X-Vault-Index", &index)],
        )
        .await?;
        ensure!(
            status == 200 && body["data"]["data"]["v"] == json!(i),
            "read {i} through a standby with X-Vault-Index: HTTP {status} {body}"
        );
        let (status, body, _) = send(&reader, Method::GET, "ryw/data/key", None, &[]).await?;
        if status != 200 || body["data"]["data"]["v"] != json!(i) {
            stale_without_index += 1;
        }
    }
    let served = served_locally(&reader).await? - before;
    eprintln!(
        "standby reads: {rounds} writes each read back with X-Vault-Index, all current; \
         {stale_without_index} of the {rounds} reads without it were stale; the standby served \
         {served} reads itself"
    );
    ensure!(
        served >= rounds,
        "the standby served only {served} of {} reads itself (forwarded the rest)",
        2 * rounds
    );

    // A client that never sends the header (hvac, curl) and keeps to one standby: the write
    // it sent there was forwarded, and answered only once that standby applied it, so the
    // next read there (served by the standby itself) is never the old value.
    let before = served_locally(&reader).await?;
    for i in 0..rounds {
        let (status, _, _) = send(
            &reader,
            Method::POST,
            "ryw/data/same-node",
            Some(&json!({ "data": { "v": i } })),
            &[],
        )
        .await?;
        ensure!(
            status == 200,
            "write {i} through the standby: HTTP {status}"
        );
        let (status, body, _) = send(&reader, Method::GET, "ryw/data/same-node", None, &[]).await?;
        ensure!(
            status == 200 && body["data"]["data"]["v"] == json!(i),
            "read {i} without X-Vault-Index through the standby that forwarded the write: \
             HTTP {status} {body}"
        );
    }
    let served = served_locally(&reader).await? - before;
    eprintln!(
        "without the header, through one standby: {rounds} writes each read back current; the \
         standby served {served} of the reads itself"
    );
    ensure!(
        served >= rounds / 2,
        "the standby served only {served} of {rounds} reads itself"
    );

    // Lists, metadata, policies and token lookups are served there too; a write is forwarded.
    let root = cluster.nodes[standbys[1]].api();
    for (method, path) in [
        (keyhold_tests::list_method(), "ryw/metadata/"),
        (Method::GET, "ryw/metadata/key"),
        (Method::GET, "sys/policies/acl/default"),
        (keyhold_tests::list_method(), "sys/policies/acl"),
        (Method::GET, "auth/token/lookup-self"),
        (Method::GET, "sys/mounts"),
    ] {
        let before = served_locally(&reader).await?;
        let resp = root.request(method.clone(), path, None).await?;
        ensure!(
            resp.status == 200,
            "{method} {path} on a standby: {}",
            resp.text
        );
        ensure!(
            served_locally(&reader).await? > before,
            "{method} {path} was not served by the standby itself"
        );
    }
    let resp = root
        .post("sys/capabilities-self", json!({"paths": ["ryw/data/key"]}))
        .await?
        .expect(200, "capabilities-self on a standby")?;
    ensure!(
        resp.json["capabilities"] == json!(["root"]),
        "{}",
        resp.text
    );
    root.kv2_put("ryw", "through-reader", json!({"v": 1}))
        .await?
        .expect(200, "a write through the reading standby is forwarded")?;

    // A malformed index (a forged one: its tag is not even the right length) is refused, not
    // waited for.
    let (status, body, _) = send(
        &reader,
        Method::GET,
        "ryw/data/key",
        None,
        &[("X-Vault-Index", "Zm9yZ2VkOjk5OTk5OTk5OTphYmNk")],
    )
    .await?;
    ensure!(
        status == 400,
        "a forged X-Vault-Index: HTTP {status} {body}"
    );
    // A well-formed index of another cluster (what a client holds after a restore of another
    // cluster's snapshot) names nothing here: answered as without the header, not waited for.
    let (status, body, _) = send(
        &reader,
        Method::GET,
        "ryw/data/key",
        None,
        &[(
            "X-Vault-Index",
            "b3RoZXItY2x1c3Rlcjo5OTk5OTk5OTk6MDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDA=",
        )],
    )
    .await?;
    ensure!(
        status == 200,
        "an X-Vault-Index of another cluster: HTTP {status} {body}"
    );
    Ok(())
}

/// A token revoked, a policy deleted or edited on the active node: a standby answers with the
/// change as soon as it applied it (the request carries the change's `X-Vault-Index`). Uses of
/// a use-limited token are counted on the active node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_and_policy_changes_apply_on_standbys() -> Result<()> {
    let mut cluster = Cluster::prepare_ha(3, NodeOptions::default())?;
    cluster.form(3, 2).await?;
    let active = cluster.active().await?;
    let standby = cluster.others(active)[0];
    let on_active = cluster.nodes[active].api().without_session();
    let on_standby = cluster.nodes[standby].api().without_session();
    on_active.mount_kv("app", 2).await?;
    on_active
        .kv2_put("app", "db", json!({"password": "p"}))
        .await?
        .expect(200, "seed")?;
    let reader = "path \"app/data/*\" {\n  capabilities = [\"read\"]\n}\n";
    on_active
        .put("sys/policies/acl/reader", json!({ "policy": reader }))
        .await?
        .expect_ok("write the policy")?;
    let token = on_active
        .create_token(json!({"policies": ["reader"]}))
        .await?;

    // Each step: a change through the active node, then a read through the standby with the
    // change's index, answered from the standby's own replica.
    let read = |index: String| {
        let api = on_standby.with_token(Some(&token));
        async move {
            send(
                &api,
                Method::GET,
                "app/data/db",
                None,
                &[("X-Vault-Index", &index)],
            )
            .await
            .map(|(status, _, _)| status)
        }
    };
    let (_, _, index) = send(
        &on_active,
        Method::GET,
        "sys/policies/acl/reader",
        None,
        &[],
    )
    .await?;
    let before = served_locally(&on_standby).await?;
    ensure!(
        read(index.clone().context("index")?).await? == 200,
        "the token reads"
    );
    ensure!(
        served_locally(&on_standby).await? > before,
        "the read was not served by the standby itself"
    );
    let steps: [(&str, Method, &str, Option<Value>, u16); 4] = [
        (
            "policy deleted",
            Method::DELETE,
            "sys/policies/acl/reader",
            None,
            403,
        ),
        (
            "policy written again",
            Method::PUT,
            "sys/policies/acl/reader",
            Some(json!({ "policy": reader })),
            200,
        ),
        (
            "policy narrowed",
            Method::PUT,
            "sys/policies/acl/reader",
            Some(
                json!({ "policy": "path \"app/data/other\" {\n  capabilities = [\"read\"]\n}\n" }),
            ),
            403,
        ),
        (
            "token revoked",
            Method::POST,
            "auth/token/revoke",
            Some(json!({ "token": token })),
            403,
        ),
    ];
    for (what, method, path, body, want) in steps {
        let (status, _, index) = send(&on_active, method, path, body.as_ref(), &[]).await?;
        ensure!((200..300).contains(&status), "{what}: HTTP {status}");
        let got = read(index.context("index")?).await?;
        ensure!(
            got == want,
            "{what}: a read through the standby got HTTP {got}, not {want}"
        );
    }

    // A token with 3 uses: each use is counted once, on the active node, whichever node the
    // client asks; the fourth is refused.
    on_active
        .put("sys/policies/acl/reader", json!({ "policy": reader }))
        .await?
        .expect_ok("restore the policy")?;
    let limited = on_active
        .create_token(json!({"policies": ["reader"], "num_uses": 3}))
        .await?;
    let (_, _, index) = send(
        &on_active,
        Method::GET,
        "sys/policies/acl/reader",
        None,
        &[],
    )
    .await?;
    let index = index.context("index")?;
    let limited_api = on_standby.with_token(Some(&limited));
    for use_no in 1..=4 {
        let (status, _, _) = send(
            &limited_api,
            Method::GET,
            "app/data/db",
            None,
            &[("X-Vault-Index", &index)],
        )
        .await?;
        let want = if use_no <= 3 { 200 } else { 403 };
        ensure!(
            status == want,
            "use {use_no} of a 3-use token: HTTP {status}"
        );
    }
    Ok(())
}

/// `disable_standby_reads = true` (OpenBao's setting): standbys forward every request, as
/// Vault OSS does, and serve none themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_standby_reads_forwards_every_request() -> Result<()> {
    let options = NodeOptions {
        extra_top: vec!["disable_standby_reads = true".into()],
        ..NodeOptions::default()
    };
    let mut cluster = Cluster::prepare_ha(3, options)?;
    cluster.form(3, 2).await?;
    let active = cluster.active().await?;
    let standby = cluster.others(active)[0];
    let on_active = cluster.nodes[active].api().without_session();
    let on_standby = cluster.nodes[standby].api().without_session();
    on_active.mount_kv("fwd", 2).await?;
    for i in 0..20 {
        on_active
            .kv2_put("fwd", "key", json!({"v": i}))
            .await?
            .expect(200, "write")?;
        // Forwarded: the active node's answer, current without any index.
        let (status, body, index) =
            send(&on_standby, Method::GET, "fwd/data/key", None, &[]).await?;
        ensure!(
            status == 200 && body["data"]["data"]["v"] == json!(i),
            "read {i} through a forwarding standby: HTTP {status} {body}"
        );
        ensure!(
            index.is_some(),
            "the forwarded answer carries the active node's X-Vault-Index"
        );
    }
    ensure!(
        served_locally(&on_standby).await? == 0,
        "a standby with disable_standby_reads served reads itself"
    );
    Ok(())
}
