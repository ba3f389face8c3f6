//! `provision` with snapshots to S3 (moto standing in for it): `up` creates the bucket, the
//! agent's policy, AppRole role and per-node credential files (0600, the secret ID nowhere in
//! state) and starts one scheduled agent per node (objects appear; a killed agent is started
//! again by `up`; `down` stops them); `provision snapshot save` stores one, `list --json` shows it, `restore --from
//! latest` brings the old data back; an object overwritten with garbage is refused by its
//! checksum with a clear error, and the cluster keeps its data.
//!
//! Durations are printed for the record (`--no-capture`); nothing asserts on them.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use anyhow::{ensure, Context, Result};
use aws_sdk_s3::primitives::ByteStream;
use keyhold_tests::moto::{Moto, AWS_ENV};
use std::net::Ipv4Addr;

use keyhold_tests::provision::{loopback_base, step, wait_gone, EnvSpec, Provisioned};
use serde_json::json;

const SLOT_SNAPSHOTS: u8 = 23;
const SLOT_DRILL: u8 = 24;
const SLOT_DR: u8 = 25;
const SLOT_DR_QUORUM: u8 = 27;
const SLOT_DRILL_AGENT: u8 = 28;
const SLOT_DR_INTO: u8 = 29;
const SLOT_DR_INTO_NEW: u8 = 30;
const SLOT_TOO_LARGE: u8 = 31;
const SLOT_PRODUCTION: u8 = 32;

/// A 3-node test environment named `name` on its own loopback range (`slot`) whose snapshots go
/// to a fresh bucket on a moto started for the test; `settings` are the `snapshots` block's
/// lines before its `s3` block. `provision` reaches moto directly: it runs as a blocking child.
async fn with_bucket(name: &str, slot: u8, settings: &str) -> Result<(Moto, String, Provisioned)> {
    let base = loopback_base(slot, 3)?;
    let [_, a, b, _] = base.octets();
    let moto = Moto::start(std::net::Ipv4Addr::new(127, a, b, 200)).await?;
    let bucket = format!("keyhold-{name}-{}", std::process::id());
    let mut hcl = keyhold_tests::provision::environment_hcl(
        &EnvSpec::nodes(3),
        base,
        &keyhold_tests::node::keyhold_bin()?,
    );
    hcl.push_str(&format!(
        "\nsnapshots {{\n{settings}  s3 {{\n    bucket   = \"{bucket}\"\n    region   = \"us-east-1\"\n    endpoint = \"{}\"\n  }}\n}}\n",
        moto.direct_endpoint()
    ));
    let mut p = Provisioned::with_text(name, 3, base, &hcl)?;
    for (k, v) in AWS_ENV {
        p.set_env(k, v);
    }
    Ok((moto, bucket, p))
}

/// Replaces a stored snapshot's bytes with garbage, keeping its metadata (and so the SHA-256 it
/// was stored with): what a damaged or tampered object looks like.
async fn overwrite_with_garbage(moto: &Moto, bucket: &str, key: &str) -> Result<()> {
    put_garbage(moto, bucket, key, key).await
}

/// Stores garbage under `to` with the metadata (the SHA-256) of the snapshot `from`.
async fn put_garbage(moto: &Moto, bucket: &str, from: &str, to: &str) -> Result<()> {
    let s3 = moto.s3().await;
    let head = s3.head_object().bucket(bucket).key(from).send().await?;
    s3.put_object()
        .bucket(bucket)
        .key(to)
        .set_metadata(head.metadata().cloned())
        .body(ByteStream::from(vec![0x5a; 4096]))
        .send()
        .await
        .context("overwrite the snapshot with garbage")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn provision_snapshot_save_list_restore_and_a_corrupted_object_is_refused() -> Result<()> {
    let (moto, bucket, mut p) = with_bucket(
        "snaps",
        SLOT_SNAPSHOTS,
        "  schedule = \"every 2s\"\n  retain   = 2\n  retain_for = \"1h\"\n",
    )
    .await?;

    let (up, took) = p.up_json().await?;
    println!("up with snapshots: {:.1}s", took.as_secs_f64());
    let snap_step = step(&up, "snapshots")?;
    ensure!(
        snap_step["outcome"] == "changed"
            && snap_step["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!("created bucket {bucket}")),
        "snapshots step: {snap_step}"
    );
    // The local provider runs one scheduled agent per node; the active one uploads.
    let mut scheduled = Vec::new();
    for _ in 0..150 {
        scheduled = moto.object_keys(&bucket).await?;
        if !scheduled.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    ensure!(
        !scheduled.is_empty(),
        "no scheduled snapshot within 30s; agent output:\n{}",
        fs::read_to_string(p.node_dir(1).join("var/log/keyhold/snapshot-agent.out"))
            .unwrap_or_default()
    );
    let agent_pids = |state: &serde_json::Value| -> Vec<u32> {
        (1..=3)
            .filter_map(|n| {
                state["nodes"][format!("keyhold-{n}")]["provider"]["local"]["snapshot_agent_pid"]
                    .as_u64()
                    .map(|p| p as u32)
            })
            .collect()
    };
    // The agent's credential files: 0600, and the secret ID nowhere in state.
    let state = fs::read_to_string(p.env_dir().join("state.json"))?;
    for n in 1..=3 {
        let dir = p.node_dir(n).join("etc/keyhold.d");
        for file in ["snapshot-agent.role-id", "snapshot-agent.secret-id"] {
            let path = dir.join(file);
            let mode = fs::metadata(&path)
                .with_context(|| path.display().to_string())?
                .permissions()
                .mode();
            ensure!(mode & 0o777 == 0o600, "{} is {mode:o}", path.display());
        }
        let secret = fs::read_to_string(dir.join("snapshot-agent.secret-id"))?;
        ensure!(!secret.trim().is_empty(), "node {n}: empty secret id");
        ensure!(
            !state.contains(secret.trim()),
            "state.json holds a secret id"
        );
        let config = keyhold::snapshot_agent::AgentConfig::load(&dir.join("snapshot-agent.hcl"))?;
        ensure!(config.s3.bucket == bucket, "node {n}: {config:?}");
    }
    let pids = agent_pids(&serde_json::from_str(&state)?);
    ensure!(pids.len() == 3, "agent pids in state: {pids:?}");
    // A dead agent is started again by the next up; the secret IDs (still live) are kept.
    let killed = pids[0];
    std::process::Command::new("kill")
        .args(["-9", &killed.to_string()])
        .status()?;
    wait_gone(&[killed], "the SIGKILLed snapshot agent").await?;
    let (again, _) = p.up_json().await?;
    let detail = step(&again, "snapshots")?["detail"].to_string();
    ensure!(
        detail.contains("keyhold-1: started the snapshot agent") && !detail.contains("secret id"),
        "second up: {detail}"
    );
    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(p.env_dir().join("state.json"))?)?;
    let pids = agent_pids(&state);
    ensure!(
        pids.len() == 3 && pids[0] != killed,
        "agent pids after up: {pids:?}"
    );

    let vars = p.env_vars().await?;
    let api = p.api(1, Some(&vars["VAULT_TOKEN"]))?;
    api.kv2_put("kv", "snap/kept", json!({"v": "before"}))
        .await?
        .expect_ok("write before")?;

    let saved = p.run(&["snapshot", "save", "--json"]).await?.expect(0)?;
    println!("snapshot save: {:.1}s", saved.elapsed.as_secs_f64());
    let saved = saved.json()?;
    println!("saved: {saved}");
    let key = saved["key"]
        .as_str()
        .context("save --json has a key")?
        .to_string();

    api.kv2_put("kv", "snap/kept", json!({"v": "after"}))
        .await?
        .expect_ok("write after")?;

    let listed = p
        .run(&["snapshot", "list", "--json"])
        .await?
        .expect(0)?
        .json()?;
    let listed = listed.as_array().context("list --json is an array")?;
    ensure!(
        listed
            .iter()
            .any(|l| l["key"] == key.as_str() && l["size"].as_u64() > Some(0)),
        "list has no {key}: {listed:?}\nobjects: {:?}",
        moto.object_keys(&bucket).await?
    );
    let table = p.run(&["snapshot", "list"]).await?.expect(0)?;
    ensure!(table.stdout.contains(&key), "list table:\n{}", table.stdout);

    let restored = p
        .run(&[
            "snapshot",
            "restore",
            "--from",
            &format!("s3://{bucket}/{key}"),
        ])
        .await?
        .expect(0)?;
    println!("snapshot restore: {:.1}s", restored.elapsed.as_secs_f64());
    let vars = p.env_vars().await?;
    let got = p
        .api(2, Some(&vars["VAULT_TOKEN"]))?
        .kv2_get("kv", "snap/kept")
        .await?;
    ensure!(
        got == Some(json!({"v": "before"})),
        "after restore: {got:?}"
    );

    // Change the secret again, then corrupt the object (same metadata, other bytes).
    p.api(1, Some(&vars["VAULT_TOKEN"]))?
        .kv2_put("kv", "snap/kept", json!({"v": "current"}))
        .await?
        .expect_ok("write current")?;
    overwrite_with_garbage(&moto, &bucket, &key).await?;
    let refused = p
        .run(&[
            "snapshot",
            "restore",
            "--from",
            &format!("s3://{bucket}/{key}"),
        ])
        .await?;
    ensure!(refused.code == Some(1), "corrupted restore: {refused:?}");
    ensure!(
        refused.stderr.contains("refusing to restore")
            && refused.stderr.contains("the cluster was not changed"),
        "corrupted restore message:\n{}",
        refused.stderr
    );
    println!("corrupted object refused: {}", refused.stderr.trim());
    let vars = p.env_vars().await?;
    let got = p
        .api(3, Some(&vars["VAULT_TOKEN"]))?
        .kv2_get("kv", "snap/kept")
        .await?;
    ensure!(
        got == Some(json!({"v": "current"})),
        "after refusal: {got:?}"
    );

    // Another bucket is refused before anything is downloaded.
    let other = p
        .run(&["snapshot", "restore", "--from", "s3://other-bucket/x.snap"])
        .await?;
    ensure!(
        other.code == Some(1) && other.stderr.contains("not other-bucket"),
        "{other:?}"
    );

    // `latest` works too, once the scheduled agents (every 2 s) have stored a snapshot newer
    // than the corrupted one: object names sort by time. Bounded: 150 x 200 ms.
    let mut newer = false;
    for _ in 0..150 {
        newer = moto
            .object_keys(&bucket)
            .await?
            .iter()
            .any(|k| k.as_str() > key.as_str());
        if newer {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    ensure!(newer, "no scheduled snapshot newer than {key} within 30 s");
    p.run(&["snapshot", "restore", "--from", "latest"])
        .await?
        .expect(0)?;

    p.run(&["down", "--purge"]).await?.expect(0)?;
    wait_gone(&pids, "the snapshot agents after down").await?;
    Ok(())
}

/// A restore drill (`provision snapshot verify`): the saved snapshot is restored offline into a
/// throw-away one-node cluster, unsealed with the environment's shares, checked and torn down,
/// and `status` shows the result; the same object overwritten with garbage fails its drill with
/// a clear message, and the failure is what `status` then shows. The environment's own cluster
/// is untouched throughout.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_drill_passes_a_good_snapshot_and_fails_a_corrupted_one() -> Result<()> {
    let (moto, bucket, mut p) = with_bucket(
        "drill",
        SLOT_DRILL,
        "  schedule = \"every 1h\"\n  retain   = 5\n",
    )
    .await?;
    p.up_json().await?;
    let saved = p
        .run(&["snapshot", "save", "--json"])
        .await?
        .expect(0)?
        .json()?;
    let key = saved["key"].as_str().context("saved key")?.to_string();
    let drill = p
        .run(&["snapshot", "verify", "--from", "latest", "--json"])
        .await?
        .expect(0)?
        .json()?;
    println!("drill: {drill}");
    ensure!(
        drill["ok"] == json!(true)
            && drill["policies"].as_u64().unwrap_or(0) >= 3
            && drill["snapshot"]
                .as_str()
                .is_some_and(|s| s.ends_with(&key)),
        "drill: {drill}"
    );
    ensure!(
        !p.env_dir().join("drill").exists(),
        "the drill left its cluster behind"
    );
    let status = p.run(&["status"]).await?.expect(0)?;
    ensure!(
        status.stdout.contains("Last restore drill: passed"),
        "status after the drill:\n{}",
        status.stdout
    );
    // node_exporter's textfile collector reads the drill's result beside the state file.
    let textfile = p.env_dir().join("keyhold_restore_drill.prom");
    let metric = |name: &str| keyhold::snapshot_agent::textfile::read_value(&textfile, name);
    let passed_at = metric("keyhold_restore_drill_last_success_timestamp_seconds");
    ensure!(
        metric("keyhold_restore_drill_last_result") == Some(1.0)
            && passed_at.is_some()
            && metric("keyhold_restore_drill_last_verified_snapshot_age_seconds")
                .is_some_and(|age| age >= 0.0),
        "the drill's textfile after it passed:\n{}",
        std::fs::read_to_string(&textfile).unwrap_or_default()
    );

    overwrite_with_garbage(&moto, &bucket, &key).await?;
    let failed = p
        .run(&[
            "snapshot",
            "verify",
            "--from",
            &format!("s3://{bucket}/{key}"),
        ])
        .await?;
    println!("corrupted drill: {}", failed.stdout.trim());
    ensure!(
        failed.code == Some(1)
            && failed.stdout.contains("FAILED")
            && failed.stdout.contains("fails its drill"),
        "corrupted drill: {failed:?}"
    );
    ensure!(
        !p.env_dir().join("drill").exists(),
        "the failed drill left files behind"
    );
    let status = p.run(&["status"]).await?.expect(0)?;
    ensure!(
        status.stdout.contains("Last restore drill: FAILED"),
        "status after the failed drill:\n{}",
        status.stdout
    );
    ensure!(
        metric("keyhold_restore_drill_last_result") == Some(0.0)
            && metric("keyhold_restore_drill_last_success_timestamp_seconds") == passed_at,
        "a failed drill sets its result to 0 and keeps the last success:\n{}",
        std::fs::read_to_string(&textfile).unwrap_or_default()
    );
    p.run(&["down", "--purge"]).await?.expect(0)?;
    Ok(())
}

/// `cluster.last_drill` in the environment's state file, once it names a snapshot ending in
/// `key` (bounded: 900 polls of 200 ms, as long as a few drills of a debug build take).
async fn wait_drilled(p: &Provisioned, key: &str) -> Result<serde_json::Value> {
    let state = p.env_dir().join("state.json");
    for _ in 0..900 {
        let drill = fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map(|s| s["cluster"]["last_drill"].clone())
            .unwrap_or_default();
        if drill["snapshot"].as_str().is_some_and(|s| s.ends_with(key)) {
            return Ok(drill);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let log = fs::read_to_string(p.env_dir().join("drill-agent.log")).unwrap_or_default();
    anyhow::bail!("no drill of {key} was recorded; the drill agent's log:\n{log}")
}

/// Scheduled drills (`snapshots { drill { after_upload = true } }`): `up` starts the drill
/// agent; every upload is drilled once, by itself, with the result in the state file, `status`
/// and the textfile; a damaged upload is caught the same way; `up` again changes nothing;
/// `down` stops the agent.
#[tokio::test(flavor = "multi_thread")]
async fn scheduled_drills_check_every_upload_and_catch_a_damaged_one() -> Result<()> {
    let (moto, bucket, mut p) = with_bucket(
        "drills",
        SLOT_DRILL_AGENT,
        "  schedule = \"every 1h\"\n  drill {\n    after_upload  = true\n    poll_interval = \"1s\"\n  }\n",
    )
    .await?;
    let (up, _) = p.up_json().await?;
    ensure!(
        step(&up, "drill agent")?["outcome"] == "changed",
        "up: {up}"
    );
    let status = p.run(&["status"]).await?.expect(0)?;
    ensure!(
        status
            .stdout
            .contains("Restore drills: after every upload; agent running"),
        "status:\n{}",
        status.stdout
    );
    let agent: Vec<u32> = p
        .processes()
        .into_iter()
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"drill-agent"))
        })
        .collect();
    ensure!(agent.len() == 1, "drill agent processes: {agent:?}");

    let saved = p
        .run(&["snapshot", "save", "--json"])
        .await?
        .expect(0)?
        .json()?;
    let key = saved["key"].as_str().context("saved key")?.to_string();
    let drill = wait_drilled(&p, &key).await?;
    println!("scheduled drill: {drill}");
    ensure!(drill["ok"] == json!(true), "drill of {key}: {drill}");
    let textfile = p.env_dir().join("keyhold_restore_drill.prom");
    let metric = |name: &str| keyhold::snapshot_agent::textfile::read_value(&textfile, name);
    ensure!(
        metric("keyhold_restore_drill_last_result") == Some(1.0),
        "textfile:\n{}",
        fs::read_to_string(&textfile).unwrap_or_default()
    );

    // A damaged upload: a newer object whose bytes do not match the checksum it carries.
    let damaged = keyhold::snapshot_agent::naming::new_object_key("", "keyhold");
    put_garbage(&moto, &bucket, &key, &damaged).await?;
    let drill = wait_drilled(&p, &damaged).await?;
    println!("damaged upload's drill: {drill}");
    ensure!(
        drill["ok"] == json!(false)
            && drill["detail"]
                .as_str()
                .is_some_and(|d| d.contains("fails its drill")),
        "drill of the damaged upload: {drill}"
    );
    ensure!(
        metric("keyhold_restore_drill_last_result") == Some(0.0),
        "textfile after the damaged upload:\n{}",
        fs::read_to_string(&textfile).unwrap_or_default()
    );
    let status = p.run(&["status"]).await?.expect(0)?;
    ensure!(
        status.stdout.contains("Last restore drill: FAILED"),
        "status:\n{}",
        status.stdout
    );

    let (again, _) = p.up_json().await?;
    ensure!(
        step(&again, "drill agent")?["outcome"] == "ok",
        "second up: {again}"
    );
    p.run(&["down"]).await?.expect(0)?;
    wait_gone(&agent, "the drill agent after down").await?;
    ensure!(
        !p.env_dir().join("drill").exists(),
        "a drill was left behind"
    );
    p.run(&["down", "--purge"]).await?.expect(0)?;
    Ok(())
}

/// How many secrets the DR tests' snapshots hold (the floor for a rebuild test).
const DR_SECRETS: usize = 10_000;

/// Every node lost (SIGKILLed, data directories gone): `provision dr rebuild --from latest`
/// drills the snapshot, restores it offline into the first node, unseals, lets the others join,
/// and the cluster serves what the snapshot held (a secret written after it is, as expected,
/// not there), with the old admin token; what was left of the old data is kept aside.
#[tokio::test(flavor = "multi_thread")]
async fn dr_rebuild_brings_a_lost_cluster_back_from_its_snapshot() -> Result<()> {
    dr_rebuild_after("dr", SLOT_DR, &[]).await
}

/// Quorum lost with one node's data left: two nodes SIGKILLed with their data gone, the third
/// still running on its data with no quorum. The rebuild stops it, keeps its data aside (it may
/// hold writes newer than the snapshot) and brings the cluster back from the snapshot.
#[tokio::test(flavor = "multi_thread")]
async fn dr_rebuild_after_quorum_loss_keeps_the_survivors_data_aside() -> Result<()> {
    dr_rebuild_after("dr-quorum", SLOT_DR_QUORUM, &[1]).await
}

/// A 3-node cluster holding `DR_SECRETS` secrets and a snapshot of them loses every node but
/// `survivors` (SIGKILL, data directory removed); `dr rebuild` brings it back.
async fn dr_rebuild_after(name: &str, slot: u8, survivors: &[u8]) -> Result<()> {
    let (_moto, _bucket, mut p) =
        with_bucket(name, slot, "  schedule = \"every 1h\"\n  retain   = 5\n").await?;
    p.up_json().await?;
    let vars = p.env_vars().await?;
    let old_token = vars["VAULT_TOKEN"].clone();
    let api = p.api(1, Some(&old_token))?;
    let loaded = std::time::Instant::now();
    api.kv2_put_many("kv", "dr", DR_SECRETS, 16).await?;
    println!(
        "{name}: wrote {DR_SECRETS} secrets in {:.1}s",
        loaded.elapsed().as_secs_f64()
    );
    p.run(&["snapshot", "save"]).await?.expect(0)?;
    api.kv2_put("kv", "dr/after", json!({"v": "after"}))
        .await?
        .expect_ok("write after the snapshot")?;

    let mut killed = Vec::new();
    for n in (1..=3).filter(|n| !survivors.contains(n)) {
        killed.push(p.kill9_node(n).await?);
    }
    wait_gone(&killed, "the killed nodes").await?;
    for n in (1..=3).filter(|n| !survivors.contains(n)) {
        fs::remove_dir_all(p.node_dir(n).join("opt/keyhold/data"))?;
    }

    let rebuilt = p
        .run(&["dr", "rebuild", "--from", "latest", "--json"])
        .await?
        .expect(0)
        .map_err(|e| e.context(p.log_tails(40)))?;
    let report = rebuilt.json()?;
    println!("{name}: dr rebuild: {report}");
    let verified = &report["verified"];
    ensure!(
        report["rto_seconds"].as_f64().is_some()
            && report["rpo_seconds"].as_f64().is_some()
            && verified["secrets"].as_u64() == Some(DR_SECRETS as u64)
            && verified["sampled"].as_u64().unwrap_or(0) >= 20
            && verified["policies"].as_u64().unwrap_or(0) >= 3
            && verified["auth_methods"].as_u64().unwrap_or(0) >= 2
            && verified["tokens_served"] == verified["tokens_in_snapshot"],
        "dr report: {report}"
    );
    // What each survivor had is kept aside, not deleted.
    let kept: Vec<String> = report["moved_aside"]
        .as_array()
        .context("moved_aside")?
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    ensure!(
        kept.len() == survivors.len()
            && survivors.iter().all(|n| {
                kept.iter().any(|k| {
                    std::path::Path::new(k).starts_with(p.node_dir(*n))
                        && std::path::Path::new(k).is_dir()
                })
            }),
        "kept aside: {kept:?}, survivors {survivors:?}"
    );
    // The admin token from before the loss still works on every node.
    for n in 1..=3 {
        let api = p.api(n, Some(&old_token))?;
        for i in [0, DR_SECRETS / 2, DR_SECRETS - 1] {
            let got = api.kv2_get("kv", &format!("dr/{i}")).await?;
            ensure!(got == Some(json!({"v": i})), "node {n}, dr/{i}: {got:?}");
        }
        ensure!(
            api.kv2_get("kv", "dr/after").await?.is_none(),
            "node {n} has a write made after the snapshot"
        );
    }
    let roles = p.roles().await?;
    ensure!(
        roles.iter().filter(|r| *r == "active").count() == 1
            && roles.iter().filter(|r| *r == "standby").count() == 2,
        "roles after the rebuild: {roles:?}"
    );
    p.run(&["down", "--purge"]).await?.expect(0)?;
    Ok(())
}

/// `dr rebuild --env OLD --into NEW`: OLD's snapshot becomes the environment NEW, on addresses
/// of its own, with certificates from NEW's own CA and OLD's keys encrypted again to NEW's
/// identity; NEW serves OLD's data to OLD's admin token, and `plan` on NEW finds nothing to
/// do. OLD is only read (it serves throughout). Refused, changing nothing: into OLD itself,
/// into an environment on OLD's addresses, and into NEW once it holds a cluster.
#[tokio::test(flavor = "multi_thread")]
async fn dr_rebuild_into_a_new_environment_serves_the_old_ones_data() -> Result<()> {
    const SECRETS: usize = 200;
    let (_moto, _bucket, mut p) =
        with_bucket("dr-into", SLOT_DR_INTO, "  schedule = \"every 1h\"\n").await?;
    p.up_json().await?;
    let old_token = p.env_vars().await?["VAULT_TOKEN"].clone();
    p.api(1, Some(&old_token))?
        .kv2_put_many("kv", "dr", SECRETS, 8)
        .await?;
    p.run(&["snapshot", "save"]).await?.expect(0)?;

    // NEW: the same bucket, its own addresses.
    let old_hcl = fs::read_to_string(&p.env_file)?;
    let snapshots = &old_hcl[old_hcl.find("\nsnapshots {").context("snapshots block")?..];
    let bin = keyhold_tests::node::keyhold_bin()?;
    let spec = EnvSpec::nodes(3);
    let new_base = loopback_base(SLOT_DR_INTO_NEW, 3)?;
    let new_file = p.dir().join("dr-into-new.hcl");
    fs::write(
        &new_file,
        keyhold_tests::provision::environment_hcl(&spec, new_base, &bin) + snapshots,
    )?;
    let clash_file = p.dir().join("dr-into-clash.hcl");
    fs::write(&clash_file, old_hcl.clone())?;
    let old_file = p.env_file.clone();

    for (into, expected, name) in [
        (&old_file, "itself", "dr-into"),
        (&clash_file, "both use", "dr-into-clash"),
    ] {
        let refused = p
            .run(&["dr", "rebuild", "--into", &into.display().to_string()])
            .await?;
        println!("refused: {}", refused.stderr.trim());
        ensure!(
            refused.code == Some(1)
                && refused.stderr.contains(expected)
                && refused.stderr.contains("nothing was changed"),
            "--into {name}: {refused:?}"
        );
    }
    ensure!(
        !p.state_dir.join("dr-into-clash/secrets").exists()
            && !p.state_dir.join("dr-into-clash/tls").exists(),
        "a refused --into wrote keys or certificates"
    );

    let rebuilt = p
        .run(&[
            "dr",
            "rebuild",
            "--from",
            "latest",
            "--into",
            &new_file.display().to_string(),
            "--json",
        ])
        .await?
        .expect(0)
        .map_err(|e| e.context(p.log_tails(40)))?;
    let report = rebuilt.json()?;
    println!("dr rebuild --into: {report}");
    ensure!(
        report["verified"]["secrets"].as_u64() == Some(SECRETS as u64)
            && report["moved_aside"]
                .as_array()
                .is_some_and(|a| a.is_empty()),
        "dr report: {report}"
    );
    let new_ca = p.state_dir.join("dr-into-new/tls/ca.crt");
    ensure!(
        fs::read(&new_ca)? != fs::read(p.ca_file())?,
        "NEW has a CA of its own"
    );
    for n in 0..3u32 {
        let addr = format!("https://{}:8200", Ipv4Addr::from(u32::from(new_base) + n));
        let api = p.api_at(&new_ca, &addr, Some(&old_token))?;
        for i in [0, SECRETS - 1] {
            let got = api.kv2_get("kv", &format!("dr/{i}")).await?;
            ensure!(
                got == Some(json!({"v": i})),
                "NEW node {n}, dr/{i}: {got:?}"
            );
        }
    }
    let plan = p.run_env(&new_file, &["plan"]).await?;
    ensure!(
        plan.code == Some(0),
        "plan on NEW after the rebuild: {plan:?}"
    );
    let status = p.run_env(&new_file, &["status"]).await?;
    ensure!(status.code == Some(0), "status of NEW: {status:?}");
    // OLD was only read: it still serves, with its own data.
    let roles = p.roles().await?;
    ensure!(
        roles.iter().filter(|r| *r == "active").count() == 1,
        "OLD's roles: {roles:?}"
    );
    let again = p
        .run(&["dr", "rebuild", "--into", &new_file.display().to_string()])
        .await?;
    ensure!(
        again.code == Some(1) && again.stderr.contains("already has a cluster"),
        "a second --into: {again:?}"
    );
    p.run_env(&new_file, &["down", "--purge"])
        .await?
        .expect(0)?;
    p.run(&["down", "--purge"]).await?.expect(0)?;
    Ok(())
}

/// A snapshot larger than the nodes' `listener { max_request_size }` cannot be posted to their
/// API: `snapshot restore` and `dr rebuild` refuse it with what to do before anything is
/// touched, and the cluster keeps serving its data.
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_larger_than_the_listener_takes_is_refused_before_anything_is_touched(
) -> Result<()> {
    const LIMIT: u64 = 32 * 1024;
    let (_moto, _bucket, mut p) =
        with_bucket("too-large", SLOT_TOO_LARGE, "  schedule = \"every 1h\"\n").await?;
    let hcl = fs::read_to_string(&p.env_file)?.replace(
        "tls_min_version = \"tls13\"",
        &format!("tls_min_version  = \"tls13\"\n  max_request_size = {LIMIT}"),
    );
    fs::write(&p.env_file, hcl)?;
    p.up_json().await?;
    let token = p.env_vars().await?["VAULT_TOKEN"].clone();
    let api = p.api(1, Some(&token))?;
    // Barrier-encrypted values do not compress: 120 of 400 bytes make the archive too large.
    for i in 0..120 {
        api.kv2_put("kv", &format!("big/{i}"), json!({"v": "x".repeat(400)}))
            .await?
            .expect_ok("write a secret")?;
    }
    let saved = p
        .run(&["snapshot", "save", "--json"])
        .await?
        .expect(0)?
        .json()?;
    let size = saved["size"].as_u64().context("size")?;
    ensure!(
        size > LIMIT,
        "the snapshot ({size} bytes) is not above {LIMIT}"
    );
    for args in [
        &["snapshot", "restore", "--from", "latest"][..],
        &["dr", "rebuild", "--from", "latest"][..],
    ] {
        let refused = p.run(args).await?;
        println!("{}: {}", args.join(" "), refused.stderr.trim());
        ensure!(
            refused.code == Some(1)
                && refused.stderr.contains("max_request_size")
                && refused.stderr.contains("nothing was changed"),
            "{args:?}: {refused:?}"
        );
    }
    let roles = p.roles().await?;
    ensure!(
        roles.iter().filter(|r| *r == "active").count() == 1
            && roles.iter().filter(|r| *r == "standby").count() == 2,
        "roles after the refusals: {roles:?}"
    );
    ensure!(
        api.kv2_get("kv", "big/119").await?.is_some(),
        "the data is still served"
    );
    p.run(&["down", "--purge"]).await?.expect(0)?;
    Ok(())
}

/// The shipped production-shaped environment (`environments/local-production.hcl`) as written,
/// but for its addresses, moto's endpoint, a bucket of the test's own and a drill poll of 1s:
/// five nodes come up sealed by KMS and serve, both audit devices record, the initial root token
/// is gone, and a snapshot is drilled by the drill agent once uploaded.
#[tokio::test(flavor = "multi_thread")]
async fn the_production_shaped_environment_comes_up_and_drills_its_snapshots() -> Result<()> {
    let shipped = keyhold_tests::provision::environments_dir().join("local-production.hcl");
    let text = fs::read_to_string(&shipped)?;
    let base = loopback_base(SLOT_PRODUCTION, 5)?;
    let [_, a, b, _] = base.octets();
    let moto = Moto::start(Ipv4Addr::new(127, a, b, 200)).await?;
    let bucket = format!("keyhold-production-{}", std::process::id());
    let policies = keyhold_tests::provision::environments_dir().join("policies");
    let mut hcl = text.clone();
    for (from, to) in [
        ("127.0.6.1".to_string(), base.to_string()),
        ("http://127.0.0.1:5000".into(), moto.direct_endpoint()),
        (
            "bucket   = \"keyhold-local-production\"".into(),
            format!("bucket   = \"{bucket}\""),
        ),
        ("\"policies/".into(), format!("\"{}/", policies.display())),
        (
            "after_upload = true".into(),
            "after_upload  = true\n    poll_interval = \"1s\"".into(),
        ),
    ] {
        ensure!(
            hcl.contains(&from),
            "{from:?} is not in {}",
            shipped.display()
        );
        hcl = hcl.replace(&from, &to);
    }
    let mut p = Provisioned::with_text("production", 5, base, &hcl)?;
    for (k, v) in AWS_ENV {
        p.set_env(k, v);
    }
    let (up, _) = p.up_json().await?;
    for name in ["kms key", "init", "snapshots", "root token", "drill agent"] {
        ensure!(step(&up, name)?["outcome"] == "changed", "{name}: {up}");
    }
    let roles = p.roles().await?;
    ensure!(
        roles.iter().filter(|r| *r == "active").count() == 1
            && roles.iter().filter(|r| *r == "standby").count() == 4,
        "roles: {roles:?}"
    );
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(p.env_dir().join("state.json"))?)?;
    ensure!(
        state["cluster"]["root_token_revoked"] == json!(true),
        "the initial root token is revoked: {}",
        state["cluster"]
    );
    let token = p.env_vars().await?["VAULT_TOKEN"].clone();
    p.api(1, Some(&token))?
        .kv2_put("kv", "prod/db", json!({"password": "from-the-test"}))
        .await?
        .expect_ok("write as the admin")?;
    // Both audit devices record on the active node.
    let active = (1..=5u8)
        .find(|n| roles[usize::from(*n) - 1] == "active")
        .context("an active node")?;
    let logs = keyhold_tests::provision::files_under(&p.node_dir(active))?;
    for name in ["audit.log", "audit-secondary.log"] {
        let log = logs
            .iter()
            .find(|f| f.file_name().is_some_and(|n| n == name))
            .with_context(|| format!("no {name} under {}", p.node_dir(active).display()))?;
        ensure!(
            fs::read_to_string(log)?.contains("kv/data/prod/db"),
            "{} does not record the write",
            log.display()
        );
    }
    let saved = p
        .run(&["snapshot", "save", "--json"])
        .await?
        .expect(0)?
        .json()?;
    let key = saved["key"].as_str().context("saved key")?.to_string();
    let drill = wait_drilled(&p, &key).await?;
    println!("production drill: {drill}");
    ensure!(drill["ok"] == json!(true), "drill: {drill}");
    p.run(&["down", "--purge"]).await?.expect(0)?;
    Ok(())
}
