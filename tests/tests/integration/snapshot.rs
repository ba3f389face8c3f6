//! Raft snapshots through real servers: save, then restore online (the data
//! comes back byte for byte), refusal of damaged and foreign archives with
//! nothing changed, `snapshot-force` of a foreign archive (the node seals and
//! unseals with the other cluster's keys), and offline restore into an empty
//! data directory (disaster recovery without init-then-restore).

use anyhow::{ensure, Context, Result};
use keyhold::client::snapshot::archive;
use keyhold::physical::sled_store::SledStore;
use keyhold_tests::provision::files_under;
use keyhold_tests::{keyhold_bin, Cluster, NodeOptions};
use reqwest::Method;
use serde_json::json;

/// `GET sys/storage/raft/snapshot` as raw bytes.
async fn save(cluster: &mut Cluster) -> Result<Vec<u8>> {
    let (status, body) = save_answer(cluster).await?;
    ensure!(
        status == 200,
        "snapshot save: {status} {}",
        String::from_utf8_lossy(&body)
    );
    Ok(body)
}

/// `GET sys/storage/raft/snapshot`: its status and body, whatever they are.
async fn save_answer(cluster: &mut Cluster) -> Result<(u16, Vec<u8>)> {
    let node = cluster.node();
    let api = node.api();
    let token = node
        .init_keys
        .as_ref()
        .context("initialised")?
        .root_token
        .clone();
    let resp = api
        .http()
        .get(api.url("sys/storage/raft/snapshot"))
        .header("X-Vault-Token", token)
        .send()
        .await?;
    Ok((resp.status().as_u16(), resp.bytes().await?.to_vec()))
}

/// A save streams the Raft snapshot's state from its file into the archive (nothing held in
/// memory) and checks it against the file's header on the way: a file damaged on disk is an
/// error that says so, never an archive; the next snapshot built after a write saves again.
#[tokio::test]
async fn a_save_from_a_damaged_raft_snapshot_file_is_an_error_not_an_archive() -> Result<()> {
    let mut cluster = Cluster::single_active(NodeOptions::default()).await?;
    let api = cluster.node().api();
    api.mount_kv("secret", 2).await?;
    for i in 0..20 {
        api.kv2_put(
            "secret",
            &format!("k{i}"),
            json!({"v": format!("value-{i}")}),
        )
        .await?
        .expect(200, "write")?;
    }
    let good = save(&mut cluster).await?;
    let parsed = archive::read(&good).context("the first save must be a whole archive")?;
    ensure!(parsed.entries()?.len() > 20, "the archive holds the data");

    // The snapshot file the save read, one byte of its state (its last) changed.
    let name = keyhold::raft::state_machine::SNAPSHOT_FILE;
    let found: Vec<_> = files_under(&cluster.node().data_dir)?
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n == name))
        .collect();
    ensure!(
        found.len() == 1,
        "one {name} in the data directory: {found:?}"
    );
    let file = &found[0];
    let mut bytes = std::fs::read(file)?;
    *bytes.last_mut().context("a snapshot file is never empty")? ^= 0x55;
    std::fs::write(file, &bytes)?;
    // No write since: the save reads the same (now damaged) snapshot.
    let (status, body) = save_answer(&mut cluster).await?;
    let body = String::from_utf8_lossy(&body);
    ensure!(
        status == 500,
        "a damaged snapshot file must fail the save: {status} {body}"
    );
    ensure!(
        body.contains("does not match the length and SHA-256 its header gives"),
        "the error says what is wrong: {body}"
    );

    api.kv2_put("secret", "after", json!({"v": "after"}))
        .await?
        .expect(200, "write after")?;
    let again = save(&mut cluster).await?;
    let parsed = archive::read(&again).context("a save after a new snapshot is whole again")?;
    ensure!(
        parsed.entries()?.len() > 20,
        "the new archive holds the data"
    );
    Ok(())
}

async fn restore(
    cluster: &mut Cluster,
    bytes: Vec<u8>,
    force: bool,
) -> Result<keyhold_tests::Resp> {
    let path = if force {
        "sys/storage/raft/snapshot-force"
    } else {
        "sys/storage/raft/snapshot"
    };
    cluster
        .node()
        .api()
        .request_raw(Method::POST, path, bytes)
        .await
}

async fn kv_value(cluster: &mut Cluster, key: &str) -> Result<Option<serde_json::Value>> {
    cluster.node().api().kv2_get("secret", key).await
}

#[tokio::test]
async fn online_restore_brings_back_the_snapshot_byte_for_byte() -> Result<()> {
    let mut cluster = Cluster::single_active(NodeOptions::default()).await?;
    let api = cluster.node().api();
    api.mount_kv("secret", 2).await?;
    for i in 0..10 {
        api.kv2_put(
            "secret",
            &format!("k{i}"),
            json!({"v": format!("before-{i}")}),
        )
        .await?
        .expect(200, "write")?;
    }
    let snapshot = save(&mut cluster).await?;
    let parsed = archive::read(&snapshot).context("our own snapshot must parse")?;

    api.kv2_put("secret", "k0", json!({"v": "changed"}))
        .await?
        .expect(200, "overwrite")?;
    api.delete("secret/metadata/k1")
        .await?
        .expect(204, "delete")?;
    api.kv2_put("secret", "k10", json!({"v": "new"}))
        .await?
        .expect(200, "write after")?;

    restore(&mut cluster, snapshot.clone(), false)
        .await?
        .expect(204, "restore our own snapshot")?;
    cluster.node().wait_active().await?;
    ensure!(
        kv_value(&mut cluster, "k0").await?.map(|d| d["v"].clone()) == Some(json!("before-0")),
        "k0 back to its snapshot value"
    );
    ensure!(
        kv_value(&mut cluster, "k1").await?.is_some(),
        "k1 deleted after the snapshot is back"
    );
    ensure!(
        kv_value(&mut cluster, "k10").await?.is_none(),
        "k10 written after the snapshot is gone"
    );

    // On disk: exactly the snapshot's keys and ciphertexts.
    let node = cluster.node();
    ensure!(node.sigterm().await?.success(), "clean stop");
    let on_disk = SledStore::open(&node.data_dir)?.export()?;
    let expected = parsed.entries()?;
    ensure!(
        on_disk.len() == expected.len(),
        "{} keys on disk, {} in the snapshot",
        on_disk.len(),
        expected.len()
    );
    ensure!(
        on_disk == expected,
        "the restored data differs from the snapshot"
    );
    Ok(())
}

#[tokio::test]
async fn damaged_and_foreign_snapshots_are_refused_and_change_nothing() -> Result<()> {
    let mut a = Cluster::single_active(NodeOptions::default()).await?;
    a.node().api().mount_kv("secret", 2).await?;
    a.node()
        .api()
        .kv2_put("secret", "owner", json!({"v": "a"}))
        .await?
        .expect(200, "write a")?;
    let snap_a = save(&mut a).await?;

    let mut b = Cluster::single_active(NodeOptions::default()).await?;
    b.node().api().mount_kv("secret", 2).await?;
    b.node()
        .api()
        .kv2_put("secret", "owner", json!({"v": "b"}))
        .await?
        .expect(200, "write b")?;
    let snap_b = save(&mut b).await?;
    let b_keys = b.node().init_keys.clone().context("b keys")?;
    drop(b);

    a.node()
        .api()
        .kv2_put("secret", "owner", json!({"v": "a2"}))
        .await?
        .expect(200, "write a2")?;
    let mut altered = snap_a.clone();
    let middle = altered.len() / 2;
    altered[middle] ^= 0x40;
    for (what, bytes, wanted) in [
        (
            "truncated",
            snap_a[..snap_a.len() / 2].to_vec(),
            "truncated",
        ),
        ("altered", altered, ""),
        ("empty", Vec::new(), "no snapshot"),
        ("foreign", snap_b.clone(), "not taken by this cluster"),
    ] {
        let r = restore(&mut a, bytes, false).await?;
        ensure!(
            r.status == 400,
            "{what} snapshot: expected 400, got {} {}",
            r.status,
            r.text
        );
        ensure!(
            r.errors().contains(wanted),
            "{what} snapshot: error should mention {wanted:?}: {}",
            r.errors()
        );
        ensure!(
            kv_value(&mut a, "owner").await?.map(|d| d["v"].clone()) == Some(json!("a2")),
            "a refused {what} snapshot changed nothing"
        );
    }

    // Forced, the foreign snapshot replaces everything; its keys are not
    // this node's, so the node seals until unsealed with the other cluster's.
    restore(&mut a, snap_b, true)
        .await?
        .expect(204, "snapshot-force of a foreign snapshot")?;
    let sealed = a.node().api().seal_status().await?;
    ensure!(
        sealed["sealed"] == true,
        "node seals after a foreign restore: {sealed}"
    );
    a.node().api().unseal_all(&b_keys.keys).await?;
    a.node().wait_active().await?;
    let api = a.node().api().with_token(Some(&b_keys.root_token));
    let owner = api.kv2_get("secret", "owner").await?;
    ensure!(
        owner.map(|d| d["v"].clone()) == Some(json!("b")),
        "after force + unseal with b's keys, b's data"
    );
    Ok(())
}

#[tokio::test]
async fn offline_restore_seeds_an_empty_data_directory() -> Result<()> {
    let mut source = Cluster::single_active(NodeOptions::default()).await?;
    source.node().api().mount_kv("secret", 2).await?;
    source
        .node()
        .api()
        .kv2_put("secret", "dr", json!({"v": "survives"}))
        .await?
        .expect(200, "write")?;
    let keys = source.node().init_keys.clone().context("keys")?;
    let snapshot = save(&mut source).await?;
    drop(source);

    let mut target = Cluster::prepare(1, NodeOptions::default())?;
    let file = target.dir().join("latest.snap");
    std::fs::write(&file, &snapshot)?;
    let config = target.node().config_path.clone();
    let out = std::process::Command::new(keyhold_bin()?)
        .args(["operator", "raft", "snapshot", "restore", "-offline"])
        .arg(format!("-config={}", config.display()))
        .arg(&file)
        .output()?;
    ensure!(
        out.status.success(),
        "offline restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A second offline restore into the now non-empty directory is refused.
    let again = std::process::Command::new(keyhold_bin()?)
        .args(["operator", "raft", "snapshot", "restore", "-offline"])
        .arg(format!("-config={}", config.display()))
        .arg(&file)
        .output()?;
    ensure!(
        again.status.code() == Some(1)
            && String::from_utf8_lossy(&again.stderr).contains("already holds data"),
        "offline restore into a non-empty directory must be refused: {}",
        String::from_utf8_lossy(&again.stderr)
    );

    target.node().start().await?;
    let status = target.node().api().seal_status().await?;
    ensure!(
        status["initialized"] == true && status["sealed"] == true,
        "seeded node starts sealed: {status}"
    );
    target.node().api().unseal_all(&keys.keys).await?;
    target.node().wait_active().await?;
    let api = target.node().api().with_token(Some(&keys.root_token));
    let dr = api.kv2_get("secret", "dr").await?;
    ensure!(
        dr.map(|d| d["v"].clone()) == Some(json!("survives")),
        "data from the snapshot"
    );
    api.kv2_put("secret", "after", json!({"v": 1}))
        .await?
        .expect(200, "the rebuilt node takes writes")?;
    Ok(())
}
