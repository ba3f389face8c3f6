//! The transit engine on real servers: ACL `create` versus `update` on `encrypt/:name` (the
//! upsert), keys and ciphertexts that survive a restart, and a 3-node cluster where every
//! request goes through a standby (forwarded, batch statuses and bodies included) and
//! ciphertexts made before a failover decrypt on the new active node.

use anyhow::{ensure, Context, Result};
use base64::Engine;
use keyhold_tests::{Api, Cluster, NodeOptions};
use serde_json::{json, Value};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn mount_transit(api: &Api, path: &str) -> Result<()> {
    api.post(&format!("sys/mounts/{path}"), json!({"type": "transit"}))
        .await?
        .expect_ok(&format!("mount transit at {path}"))?;
    Ok(())
}

async fn encrypt(api: &Api, key: &str, plaintext: &[u8]) -> Result<String> {
    let r = api
        .post(
            &format!("transit/encrypt/{key}"),
            json!({"plaintext": b64(plaintext)}),
        )
        .await?
        .expect(200, &format!("encrypt with {key}"))?;
    r.json["data"]["ciphertext"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no ciphertext in {}", r.text))
}

async fn decrypt(api: &Api, key: &str, ciphertext: &str) -> Result<String> {
    let r = api
        .post(
            &format!("transit/decrypt/{key}"),
            json!({"ciphertext": ciphertext}),
        )
        .await?
        .expect(200, &format!("decrypt {ciphertext} with {key}"))?;
    Ok(r.json["data"]["plaintext"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

async fn token_with_policy(root: &Api, name: &str, policy: &str) -> Result<Api> {
    root.put(
        &format!("sys/policies/acl/{name}"),
        json!({ "policy": policy }),
    )
    .await?
    .expect_ok("write policy")?;
    let token = root
        .create_token(json!({"policies": [name], "no_default_policy": true}))
        .await?;
    Ok(root.with_token(Some(&token)))
}

#[tokio::test]
async fn encrypt_upserts_only_with_create_and_keys_survive_a_restart() -> Result<()> {
    let mut cluster = Cluster::single_active(NodeOptions::default()).await?;
    let root = cluster.node().api();
    mount_transit(&root, "transit").await?;

    let updater = token_with_policy(
        &root,
        "transit-update",
        "path \"transit/encrypt/*\" { capabilities = [\"update\"] }\n\
         path \"transit/decrypt/*\" { capabilities = [\"update\"] }\n",
    )
    .await?;
    let creator = token_with_policy(
        &root,
        "transit-create",
        "path \"transit/encrypt/*\" { capabilities = [\"create\", \"update\"] }\n",
    )
    .await?;

    // Without `create`, encrypting with a missing key is refused by the ACL.
    updater
        .post("transit/encrypt/fresh", json!({"plaintext": b64(b"x")}))
        .await?
        .expect(403, "encrypt with a missing key and only update")?;
    // With `create`, the first encrypt makes the key (Vault's upsert).
    let ciphertext = encrypt(&creator, "fresh", b"made on first use").await?;
    ensure!(ciphertext.starts_with("vault:v1:"), "{ciphertext}");
    // From then on `update` is enough.
    let again = encrypt(&updater, "fresh", b"second").await?;
    ensure!(
        decrypt(&updater, "fresh", &ciphertext).await? == b64(b"made on first use"),
        "round trip through the update-only token"
    );
    creator
        .post("transit/decrypt/fresh", json!({"ciphertext": ciphertext}))
        .await?
        .expect(403, "decrypt without a policy for it")?;

    root.post("transit/keys/fresh/rotate", json!({}))
        .await?
        .expect(200, "rotate")?;
    let v2 = encrypt(&root, "fresh", b"after rotation").await?;
    ensure!(v2.starts_with("vault:v2:"), "{v2}");

    // Keys live behind the barrier in the node's store: a restart keeps them.
    let node = cluster.node();
    node.sigterm().await?;
    node.start().await?;
    node.unseal().await?;
    let root = node.api();
    for (ciphertext, plaintext) in [
        (&ciphertext, &b"made on first use"[..]),
        (&again, b"second"),
        (&v2, b"after rotation"),
    ] {
        ensure!(
            decrypt(&root, "fresh", ciphertext).await? == b64(plaintext),
            "after a restart, {ciphertext} no longer decrypts to its plaintext"
        );
    }
    let key = root
        .get("transit/keys/fresh")
        .await?
        .expect(200, "read key")?;
    ensure!(
        key.json["data"]["latest_version"] == json!(2),
        "{}",
        key.text
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standbys_forward_transit_and_ciphertexts_survive_a_failover() -> Result<()> {
    let mut cluster = Cluster::prepare_ha(3, NodeOptions::default())?;
    cluster.form(3, 2).await?;
    let active = cluster.active().await?;
    let standby = cluster.nodes[cluster.others(active)[0]].api();

    mount_transit(&standby, "transit").await?;
    standby
        .post("transit/keys/shared", json!({"type": "chacha20-poly1305"}))
        .await?
        .expect(200, "create a key through a standby")?;
    let before = encrypt(&standby, "shared", b"sealed before the failover").await?;
    // An upsert through a standby: the existence check runs on the active node.
    let upserted = encrypt(&standby, "made-via-standby", b"upsert").await?;

    // A batch with a bad item keeps Vault's 400-with-results through forwarding.
    let batch = standby
        .post(
            "transit/decrypt/shared",
            json!({"batch_input": [{"ciphertext": before}, {"ciphertext": "vault:v1:AAAA", "reference": "bad"}]}),
        )
        .await?
        .expect(400, "batch with one bad item through a standby")?;
    let results = &batch.json["data"]["batch_results"];
    ensure!(
        results[0]["plaintext"] == json!(b64(b"sealed before the failover"))
            && results[1]["reference"] == json!("bad")
            && results[1]["error"] == json!("invalid ciphertext length"),
        "batch results through a standby: {}",
        batch.text
    );

    // Fail over: the active node dies; another takes over with the same keys.
    cluster.nodes[active].kill9()?;
    let new_active = cluster.active().await?;
    ensure!(new_active != active, "the killed node is still active");
    for i in cluster.running() {
        let api = cluster.nodes[i].api();
        ensure!(
            decrypt(&api, "shared", &before).await? == b64(b"sealed before the failover"),
            "{} cannot decrypt a ciphertext made before the failover",
            cluster.nodes[i].id
        );
        ensure!(
            decrypt(&api, "made-via-standby", &upserted).await? == b64(b"upsert"),
            "{}: the upserted key did not survive the failover",
            cluster.nodes[i].id
        );
    }
    let on_new = cluster.nodes[new_active].api();
    on_new
        .post("transit/keys/shared/rotate", json!({}))
        .await?
        .expect(200, "rotate on the new active node")?;
    let rewrapped = on_new
        .post("transit/rewrap/shared", json!({"ciphertext": before}))
        .await?
        .expect(200, "rewrap on the new active node")?;
    let rewrapped: &Value = &rewrapped.json["data"];
    ensure!(
        rewrapped["key_version"] == json!(2),
        "rewrap after failover: {rewrapped}"
    );
    Ok(())
}
