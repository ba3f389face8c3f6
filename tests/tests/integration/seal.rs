//! Auto-unseal and seal migration on real clusters: a 3-node cluster sealed by AWS KMS (moto's
//! server mode on loopback, through the real aws-sdk client) or by the transit engine of another
//! Keyhold; every node killed with SIGKILL and started again unseals itself; with the key service
//! down the nodes stay sealed, say why, and unseal by themselves when it returns. Recovery keys
//! authorise generate-root and recovery rekey and nothing else. Seal migration node by node, as
//! Vault documents it: shamir -> awskms -> transit -> awskms -> shamir, data checked after each
//! step and after every node is killed and started again.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use keyhold_tests::moto::{moto_ip, Moto};
use keyhold_tests::{eventually, Api, Cluster, InitKeys, Node, NodeOptions};
use serde_json::{json, Value};

/// The AWS environment of a node sealed by moto's KMS.
fn aws_env() -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn awskms_stanza(moto: &Moto, key_id: &str, disabled: bool) -> Vec<String> {
    let mut lines = vec![
        "seal \"awskms\" {".to_string(),
        "  region     = \"us-east-1\"".to_string(),
        format!("  kms_key_id = \"{key_id}\""),
        format!("  endpoint   = \"{}\"", moto.endpoint()),
    ];
    if disabled {
        lines.push("  disabled = \"true\"".into());
    }
    lines.push("}".into());
    lines
}

/// A one-node Keyhold whose transit engine auto-unseals others.
struct Unsealer {
    cluster: Cluster,
    token: String,
}

impl Unsealer {
    async fn start() -> Result<Unsealer> {
        let cluster = Cluster::single_active(NodeOptions::default()).await?;
        let root = cluster.nodes[0].api();
        root.post("sys/mounts/transit", json!({"type": "transit"}))
            .await?
            .expect_ok("mount transit on the unsealer")?;
        root.post("transit/keys/autounseal", json!({}))
            .await?
            .expect_ok("create the autounseal key")?;
        root.put(
            "sys/policies/acl/autounseal",
            json!({"policy": "path \"transit/encrypt/autounseal\" { capabilities = [\"update\"] }\n\
                            path \"transit/decrypt/autounseal\" { capabilities = [\"update\"] }\n"}),
        )
        .await?
        .expect_ok("write the autounseal policy")?;
        let token = root
            .create_token(
                json!({"policies": ["autounseal"], "no_default_policy": true, "period": "24h"}),
            )
            .await?;
        Ok(Unsealer { cluster, token })
    }

    fn stanza(&self, disabled: bool) -> Vec<String> {
        let node = &self.cluster.nodes[0];
        let mut lines = vec![
            "seal \"transit\" {".to_string(),
            format!("  address     = \"{}\"", node.api_addr()),
            format!("  token       = \"{}\"", self.token),
            "  key_name    = \"autounseal\"".to_string(),
            "  mount_path  = \"transit/\"".to_string(),
            format!("  tls_ca_cert = \"{}\"", self.cluster.pki.ca_path.display()),
        ];
        if disabled {
            lines.push("  disabled = \"true\"".into());
        }
        lines.push("}".into());
        lines
    }

    fn node(&mut self) -> &mut Node {
        &mut self.cluster.nodes[0]
    }
}

/// A 3-node cluster whose config has `seal` (plus AWS credentials), formed with recovery keys:
/// node 0 initialised, then every node unsealed and joined by itself.
async fn form_auto(seal: Vec<String>) -> Result<(Cluster, InitKeys)> {
    let options = NodeOptions {
        extra_top: seal,
        env: aws_env(),
        ..NodeOptions::default()
    };
    let mut cluster = Cluster::prepare_ha(3, options)?;
    cluster.start_all().await?;
    let keys = cluster.nodes[0].api().init_recovery(3, 2).await?;
    for node in &mut cluster.nodes {
        node.init_keys = Some(keys.clone());
    }
    cluster.nodes[0]
        .wait_active()
        .await
        .context("node 0 should unseal itself after init")?;
    cluster
        .set_autopilot(0, json!({"server_stabilization_time": "1s"}))
        .await?;
    cluster
        .wait_roles("auto-unsealed cluster formation")
        .await?;
    cluster
        .wait_voters(3, "auto-unsealed cluster formation")
        .await?;
    Ok((cluster, keys))
}

async fn seal_status(node: &Node) -> Result<Value> {
    node.api().seal_status().await
}

/// Reads `kv/app` through `node`, asking again while the cluster elects a leader (503).
async fn read_secret(node: &Node) -> Result<Value> {
    let api = node.api();
    eventually("read kv/app", 100, Duration::from_millis(100), || {
        let api = api.clone();
        async move {
            let r = api.get("kv/data/app").await?;
            match r.status.as_u16() {
                200 => Ok(Some(r.json["data"]["data"].clone())),
                503 => Ok(None),
                other => bail!("read kv/app: {other} {}", r.text),
            }
        }
    })
    .await
}

async fn check_everywhere(cluster: &Cluster, want: &Value, what: &str) -> Result<()> {
    for i in cluster.running() {
        let got = read_secret(&cluster.nodes[i])
            .await
            .with_context(|| format!("{what}: node {i}"))?;
        ensure!(&got == want, "{what}: node {i} read {got}, want {want}");
    }
    Ok(())
}

/// Waits until every node reports unsealed by itself (no keys given).
async fn wait_all_unsealed(cluster: &Cluster, what: &str) -> Result<()> {
    for node in &cluster.nodes {
        let api = node.api();
        eventually(what, 300, Duration::from_millis(100), || {
            let api = api.clone();
            async move {
                let s = api.seal_status().await?;
                Ok((s["sealed"] == json!(false)).then_some(()))
            }
        })
        .await
        .with_context(|| format!("{what}: {}; log:\n{}", node.id, node.log_tail(20)))?;
    }
    cluster.wait_roles(what).await?;
    Ok(())
}

async fn kill_all_and_start(cluster: &mut Cluster) -> Result<()> {
    for node in &mut cluster.nodes {
        node.kill9()?;
    }
    cluster.start_all().await
}

/// While the key service is away: every node stays sealed, and seal-status says why.
async fn wait_sealed_with_reason(cluster: &Cluster, service: &str) -> Result<()> {
    for node in &cluster.nodes {
        let api = node.api();
        let status = eventually(
            "a seal-status warning naming the key service",
            300,
            Duration::from_millis(100),
            || {
                let api = api.clone();
                async move {
                    let s = api.seal_status().await?;
                    Ok(s["warnings"]
                        .as_array()
                        .is_some_and(|w| !w.is_empty())
                        .then_some(s))
                }
            },
        )
        .await
        .with_context(|| format!("{}; log:\n{}", node.id, node.log_tail(20)))?;
        ensure!(status["sealed"] == json!(true), "{}: {status}", node.id);
        let warning = status["warnings"][0].as_str().unwrap_or_default();
        ensure!(
            warning.contains("auto-unseal failed") && warning.contains(service),
            "{}: the warning should say the auto-unseal failed and name {service}: {warning}",
            node.id
        );
        ensure!(
            node.log().contains("auto-unseal failed"),
            "{}: the log should say the auto-unseal failed",
            node.id
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kms_sealed_cluster_unseals_itself_after_kill9_and_after_a_kms_outage() -> Result<()> {
    let moto = Moto::start(moto_ip(20)).await?;
    let key_id = moto.create_kms_key("alias/keyhold-seal-test").await?;
    let (mut cluster, keys) = form_auto(awskms_stanza(&moto, &key_id, false)).await?;
    let status = seal_status(&cluster.nodes[1]).await?;
    ensure!(
        status["type"] == json!("awskms")
            && status["recovery_seal"] == json!(true)
            && status["recovery_seal_type"] == json!("shamir")
            && status["t"] == json!(2)
            && status["n"] == json!(3)
            && status["migration"] == json!(false),
        "seal-status of a KMS-sealed standby: {status}"
    );
    let api = cluster.nodes[0].api();
    api.mount_kv("kv", 2).await?;
    let data = json!({"password": "kms-sealed"});
    api.kv2_put("kv", "app", data.clone()).await?;

    kill_all_and_start(&mut cluster).await?;
    wait_all_unsealed(&cluster, "every node unseals itself after kill -9").await?;
    check_everywhere(&cluster, &data, "after kill -9 of every node").await?;

    // KMS away: the nodes come up sealed and say why; KMS back: they unseal by themselves.
    moto.set_reachable(false).await?;
    kill_all_and_start(&mut cluster).await?;
    wait_sealed_with_reason(&cluster, "KMS key").await?;
    moto.set_reachable(true).await?;
    wait_all_unsealed(&cluster, "every node unseals once KMS is back").await?;
    check_everywhere(&cluster, &data, "after the KMS outage").await?;

    // Unseal keys are refused with a reason; recovery keys authorise generate-root.
    let r = cluster.nodes[0]
        .api()
        .put("sys/unseal", json!({"key": keys.keys[0]}))
        .await?;
    ensure!(
        r.status == 200 && r.json["sealed"] == json!(false),
        "unseal on an unsealed node answers its status: {}",
        r.text
    );
    generate_root_with(&cluster.nodes[0].api(), &keys.keys[..2]).await?;
    Ok(())
}

/// Runs generate-root with `keys` and checks the decoded token works.
async fn generate_root_with(api: &Api, keys: &[String]) -> Result<()> {
    let start = api
        .put("sys/generate-root/attempt", json!({}))
        .await?
        .expect(200, "start generate-root")?;
    let otp = start.json["otp"].as_str().context("otp")?.to_string();
    let nonce = start.json["nonce"].as_str().context("nonce")?.to_string();
    let mut last = Value::Null;
    for key in keys {
        last = api
            .put(
                "sys/generate-root/update",
                json!({"key": key, "nonce": nonce}),
            )
            .await?
            .expect(200, "generate-root update")?
            .json;
    }
    ensure!(last["complete"] == json!(true), "generate-root: {last}");
    let encoded = last["encoded_token"].as_str().context("encoded_token")?;
    let token = keyhold::client::decode_root_token(encoded, &otp)
        .map_err(|e| anyhow::anyhow!("decode the root token: {e}"))?;
    api.with_token(Some(&token))
        .get("auth/token/lookup-self")
        .await?
        .expect(200, "the generated root token works")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn recovery_keys_authorise_root_operations_and_rekey() -> Result<()> {
    let moto = Moto::start(moto_ip(21)).await?;
    let key_id = moto.create_kms_key("alias/keyhold-recovery-test").await?;
    let options = NodeOptions {
        extra_top: awskms_stanza(&moto, &key_id, false),
        env: aws_env(),
        ..NodeOptions::default()
    };
    let mut cluster = Cluster::single(options).await?;
    let keys = cluster.nodes[0].api().init_recovery(3, 2).await?;
    cluster.nodes[0].init_keys = Some(keys.clone());
    cluster.nodes[0].wait_active().await?;
    let api = cluster.nodes[0].api();

    // A threshold of wrong keys is refused.
    let start = api
        .put("sys/generate-root/attempt", json!({}))
        .await?
        .expect(200, "start generate-root")?;
    let nonce = start.json["nonce"].as_str().context("nonce")?.to_string();
    let wrong = ["11".repeat(33), "22".repeat(33)];
    let mut refused = None;
    for key in &wrong {
        let r = api
            .put(
                "sys/generate-root/update",
                json!({"key": key, "nonce": nonce}),
            )
            .await?;
        if r.status != 200 {
            refused = Some(r);
            break;
        }
    }
    let refused = refused.context("generate-root accepted keys that are not the recovery keys")?;
    ensure!(refused.status == 400, "{}", refused.text);
    api.delete("sys/generate-root/attempt").await?;

    // The barrier's keys belong to KMS: a barrier rekey is refused, a recovery rekey works.
    let r = api
        .put(
            "sys/rekey/init",
            json!({"secret_shares": 3, "secret_threshold": 2}),
        )
        .await?;
    ensure!(
        r.status == 400 && r.text.contains("rekey-recovery-key"),
        "{}",
        r.text
    );
    let init = api
        .put(
            "sys/rekey-recovery-key/init",
            json!({"secret_shares": 4, "secret_threshold": 3}),
        )
        .await?
        .expect(200, "start a recovery rekey")?;
    let nonce = init.json["nonce"].as_str().context("nonce")?.to_string();
    let mut done = Value::Null;
    for key in &keys.keys[..2] {
        done = api
            .put(
                "sys/rekey-recovery-key/update",
                json!({"key": key, "nonce": nonce}),
            )
            .await?
            .expect(200, "recovery rekey update")?
            .json;
    }
    ensure!(done["complete"] == json!(true), "{done}");
    let new_keys: Vec<String> = done["keys"]
        .as_array()
        .context("new recovery keys")?
        .iter()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    ensure!(new_keys.len() == 4, "{done}");
    let status = seal_status(&cluster.nodes[0]).await?;
    ensure!(
        status["t"] == json!(3) && status["n"] == json!(4),
        "{status}"
    );
    generate_root_with(&api, &new_keys[..3]).await?;

    // The CLI, as an operator runs it: `status` names both seals, and
    // `operator rekey -target=recovery` drives sys/rekey-recovery-key.
    let node = &cluster.nodes[0];
    let cli = |args: &[&str]| -> Result<String> {
        let out = std::process::Command::new(keyhold_tests::keyhold_bin()?)
            .args(args)
            .env("VAULT_ADDR", node.api_addr())
            .env("VAULT_CACERT", &cluster.pki.ca_path)
            .env("VAULT_TOKEN", &keys.root_token)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        ensure!(
            out.status.success(),
            "keyhold {args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(text)
    };
    let status = cli(&["status"])?;
    ensure!(
        status.contains("awskms")
            && status.contains("Recovery Seal Type")
            && status.contains("Total Recovery Shares"),
        "{status}"
    );
    let started = cli(&[
        "operator",
        "rekey",
        "-target=recovery",
        "-init",
        "-key-shares=2",
        "-key-threshold=2",
    ])?;
    ensure!(started.contains("New Shares"), "{started}");
    // The threshold is 3 now.
    let mut done = String::new();
    for key in &new_keys[..3] {
        done = cli(&["operator", "rekey", "-target=recovery", key])?;
    }
    ensure!(
        done.contains("recovery keys rekeyed with 2 key shares"),
        "{done}"
    );

    // Recovery keys open nothing: a restart unseals through KMS, not through them.
    cluster.nodes[0].restart().await?;
    cluster.nodes[0].wait_active().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn transit_sealed_cluster_unseals_itself_and_waits_out_the_unsealer() -> Result<()> {
    let mut unsealer = Unsealer::start().await?;
    let (mut cluster, _keys) = form_auto(unsealer.stanza(false)).await?;
    let status = seal_status(&cluster.nodes[2]).await?;
    ensure!(
        status["type"] == json!("transit") && status["recovery_seal"] == json!(true),
        "{status}"
    );
    let api = cluster.nodes[0].api();
    api.mount_kv("kv", 2).await?;
    let data = json!({"password": "transit-sealed"});
    api.kv2_put("kv", "app", data.clone()).await?;

    kill_all_and_start(&mut cluster).await?;
    wait_all_unsealed(&cluster, "every node unseals itself from the unsealer").await?;
    check_everywhere(&cluster, &data, "after kill -9 of every node").await?;

    // The unsealer down: the nodes stay sealed and say why; back and unsealed: they unseal.
    unsealer.node().sigterm().await?;
    kill_all_and_start(&mut cluster).await?;
    wait_sealed_with_reason(&cluster, "transit").await?;
    unsealer.node().start().await?;
    unsealer.node().unseal().await?;
    wait_all_unsealed(&cluster, "every node unseals once the unsealer is back").await?;
    check_everywhere(&cluster, &data, "after the unsealer outage").await?;
    Ok(())
}

/// Vault's node-by-node seal migration: each standby is stopped, given the new config (`seal`:
/// the new stanza plus the old one marked disabled) and unsealed with `-migrate` and the old
/// seal's keys; then the active node is stopped, a migrated standby takes over and migrates, and
/// the old active node comes back with the new config the same way.
async fn migrate(cluster: &mut Cluster, seal: &[String], keys: &[String], to: &str) -> Result<()> {
    let active = cluster.active().await?;
    let mut order = cluster.others(active);
    order.push(active);
    for i in order {
        cluster.nodes[i].sigterm().await?;
        if i == active {
            cluster
                .wait_roles(&format!("a migrated standby takes over from node {i}"))
                .await?;
        }
        cluster.nodes[i].options.extra_top = seal.to_vec();
        cluster.nodes[i].write_config()?;
        cluster.nodes[i].start().await?;
        let api = cluster.nodes[i].api();
        let status = api.seal_status().await?;
        if i == active && status["migration"] == json!(false) && status["type"] == json!(to) {
            // The old active node handed leadership over before it stopped and stayed a
            // follower long enough to receive the new active node's migration: its data is
            // already sealed by the new seal, so it unseals as any node of that seal does
            // (shares: the old recovery keys became unseal keys; an auto seal by itself).
            if to == "shamir" {
                cluster.nodes[i].unseal_member(keys).await?;
            }
            continue;
        }
        ensure!(
            status["migration"] == json!(true) && status["sealed"] == json!(true),
            "node {i} restarted with the {to} seal should wait for -migrate: {status}"
        );
        let r = api.put("sys/unseal", json!({"key": keys[0]})).await?;
        ensure!(
            r.status == 400 && r.text.contains("-migrate"),
            "unseal without migrate during a migration: {}",
            r.text
        );
        let mut unsealed = false;
        for key in keys {
            let s = api
                .put("sys/unseal", json!({"key": key, "migrate": true}))
                .await?
                .expect(200, &format!("unseal -migrate node {i}"))?
                .json;
            if s["sealed"] == json!(false) {
                unsealed = true;
                break;
            }
        }
        ensure!(
            unsealed,
            "node {i} still sealed after -migrate with the old seal's keys"
        );
    }
    cluster.wait_roles(&format!("migrated to {to}")).await?;
    for (i, node) in cluster.nodes.iter().enumerate() {
        let api = node.api();
        eventually(
            "the migration replicated",
            300,
            Duration::from_millis(100),
            || {
                let api = api.clone();
                let to = to.to_string();
                async move {
                    let s = api.seal_status().await?;
                    Ok((s["type"] == json!(to) && s["migration"] == json!(false)).then_some(()))
                }
            },
        )
        .await
        .with_context(|| format!("node {i} after migrating to {to}:\n{}", node.log_tail(20)))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn seal_migration_round_trips_on_a_3_node_cluster() -> Result<()> {
    let moto = Moto::start(moto_ip(22)).await?;
    let key_id = moto.create_kms_key("alias/keyhold-migration-test").await?;
    let unsealer = Unsealer::start().await?;
    let options = NodeOptions {
        env: aws_env(),
        ..NodeOptions::default()
    };
    let mut cluster = Cluster::prepare_ha(3, options)?;
    let keys = cluster.form(3, 2).await?;
    // Through every seal, the operators' shares stay the same: unseal shares become recovery
    // shares and back again.
    let shares = keys.keys[..2].to_vec();
    let api = cluster.nodes[0].api();
    api.mount_kv("kv", 2).await?;
    let data = json!({"password": "survives every migration"});
    api.kv2_put("kv", "app", data.clone()).await?;

    let kms = awskms_stanza(&moto, &key_id, false);
    migrate(&mut cluster, &kms, &shares, "awskms").await?;
    check_everywhere(&cluster, &data, "shamir -> awskms").await?;
    kill_all_and_start(&mut cluster).await?;
    wait_all_unsealed(&cluster, "awskms after kill -9").await?;
    check_everywhere(&cluster, &data, "awskms after kill -9").await?;

    let transit = [unsealer.stanza(false), awskms_stanza(&moto, &key_id, true)].concat();
    migrate(&mut cluster, &transit, &shares, "transit").await?;
    check_everywhere(&cluster, &data, "awskms -> transit").await?;

    let back_to_kms = [kms.clone(), unsealer.stanza(true)].concat();
    migrate(&mut cluster, &back_to_kms, &shares, "awskms").await?;
    check_everywhere(&cluster, &data, "transit -> awskms").await?;

    let shamir = awskms_stanza(&moto, &key_id, true);
    migrate(&mut cluster, &shamir, &shares, "shamir").await?;
    check_everywhere(&cluster, &data, "awskms -> shamir").await?;
    let status = seal_status(&cluster.nodes[0]).await?;
    ensure!(
        status["recovery_seal"] == json!(false) && status["t"] == json!(2),
        "{status}"
    );
    kill_all_and_start(&mut cluster).await?;
    for node in &cluster.nodes {
        node.unseal_member(&shares).await?;
    }
    cluster.wait_roles("shamir again after kill -9").await?;
    check_everywhere(&cluster, &data, "shamir after kill -9").await?;
    Ok(())
}

/// The archive of `GET sys/storage/raft/snapshot` through `api` (its token).
async fn snapshot_of(api: &Api, token: &str) -> Result<Vec<u8>> {
    let resp = api
        .http()
        .get(api.url("sys/storage/raft/snapshot"))
        .header("X-Vault-Token", token)
        .send()
        .await?;
    ensure!(resp.status() == 200, "snapshot save: {}", resp.status());
    Ok(resp.bytes().await?.to_vec())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_kms_cluster_restores_another_clusters_snapshot_and_unseals_itself() -> Result<()> {
    let moto = Moto::start(moto_ip(23)).await?;
    let key_id = moto.create_kms_key("alias/keyhold-dr-test").await?;
    let stanza = awskms_stanza(&moto, &key_id, false);

    // The cluster that is lost: a secret, a policy and a token of its own.
    let options = NodeOptions {
        extra_top: stanza.clone(),
        env: aws_env(),
        ..NodeOptions::default()
    };
    let mut old = Cluster::single(options).await?;
    let old_keys = old.nodes[0].api().init_recovery(3, 2).await?;
    old.nodes[0].init_keys = Some(old_keys.clone());
    old.nodes[0].wait_active().await?;
    let api = old.nodes[0].api();
    api.mount_kv("kv", 2).await?;
    let data = json!({"password": "from the lost cluster"});
    api.kv2_put("kv", "app", data.clone()).await?;
    api.put(
        "sys/policies/acl/app-reader",
        json!({"policy": "path \"kv/data/app\" { capabilities = [\"read\"] }\n"}),
    )
    .await?
    .expect_ok("write a policy")?;
    let app_token = api
        .create_token(json!({"policies": ["app-reader"], "ttl": "24h"}))
        .await?;
    let archive = snapshot_of(&api, &old_keys.root_token).await?;
    drop(old);

    // A fresh cluster under the same KMS key: restore with snapshot-force; every node ends up
    // unsealed by itself with the old cluster's data, policies and tokens.
    let (cluster, keys) = form_auto(stanza).await?;
    let active = cluster.active().await?;
    let r = cluster.nodes[active]
        .api()
        .request_raw(
            reqwest::Method::POST,
            "sys/storage/raft/snapshot-force",
            archive,
        )
        .await?;
    ensure!(r.status == 204, "snapshot-force: {} {}", r.status, r.text);
    wait_all_unsealed(&cluster, "every node unsealed after the restore").await?;
    let restored = cluster.nodes[active].api().with_token(Some(&app_token));
    let got = eventually(
        "the old cluster's token reads the old secret",
        100,
        Duration::from_millis(100),
        || {
            let api = restored.clone();
            async move {
                let r = api.get("kv/data/app").await?;
                Ok((r.status == 200).then(|| r.json["data"]["data"].clone()))
            }
        },
    )
    .await?;
    ensure!(got == data, "restored secret: {got}");
    let fresh_root = cluster.nodes[active]
        .api()
        .with_token(Some(&keys.root_token));
    let r = fresh_root.get("auth/token/lookup-self").await?;
    ensure!(
        r.status == 403,
        "the fresh cluster's root token must be gone with its data: {} {}",
        r.status,
        r.text
    );
    let old_root = cluster.nodes[active]
        .api()
        .with_token(Some(&old_keys.root_token));
    let policy = old_root
        .get("sys/policies/acl/app-reader")
        .await?
        .expect(200, "the old policy")?;
    ensure!(
        policy.json["data"]["policy"]
            .as_str()
            .is_some_and(|p| p.contains("kv/data/app")),
        "{}",
        policy.text
    );
    Ok(())
}
