//! An acknowledged write survives `kill -9`: writers stream KV v2 writes at a raft-backed node,
//! the process is killed after a random number of acknowledgements (so at a random point in the
//! stream, with requests in flight), restarted, found sealed, unsealed with the same keys, and
//! every write it had acknowledged, in this round or any earlier one, must read back exactly.
//! On three nodes, the leader is killed under a burst of concurrent writes (which the leader
//! commits in shared Raft entries): every acknowledged write is on the new leader, and every
//! other one is there whole or not at all.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use keyhold_tests::{Api, Cluster, InitKeys, NodeOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

const ROUNDS: usize = 5;
const WRITERS: usize = 3;
/// Upper bound on writes per writer per round, so a server that never dies cannot loop forever.
const MAX_WRITES_PER_WRITER: usize = 2_000;

/// The seed is printed so a failing run can be replayed with `KEYHOLD_TEST_SEED`.
fn seeded_rng() -> StdRng {
    let seed = std::env::var("KEYHOLD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("durability seed: KEYHOLD_TEST_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

#[derive(Default)]
struct Stream {
    acked: Mutex<Vec<(String, String)>>,
    /// Non-200 answers received while the server was meant to be healthy.
    refused: Mutex<Vec<String>>,
    killing: AtomicBool,
}

async fn writer(api: Api, stream: Arc<Stream>, round: usize, writer: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    for i in 0..MAX_WRITES_PER_WRITER {
        if stream.killing.load(Ordering::SeqCst) {
            return;
        }
        let key = format!("r{round}/w{writer}/k{i}");
        let value = format!("{:032x}", rng.gen::<u128>());
        match api.kv2_put("secret", &key, json!({ "v": value })).await {
            Ok(resp) if resp.status.as_u16() == 200 => {
                stream.acked.lock().unwrap().push((key, value));
            }
            Ok(resp) => {
                if !stream.killing.load(Ordering::SeqCst) {
                    stream.refused.lock().unwrap().push(format!(
                        "POST secret/data/{key}: {} {}",
                        resp.status, resp.text
                    ));
                }
                return;
            }
            // The connection died: the process was killed under this request.
            Err(_) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() -> Result<()> {
    let mut rng = seeded_rng();
    let mut cluster = Cluster::single(NodeOptions::default()).await?;
    let node = cluster.node();
    let keys = node.init(3, 2).await?;
    node.unseal().await?;
    node.api().mount_kv("secret", 2).await?;

    let mut acknowledged: Vec<(String, String)> = Vec::new();
    for round in 0..ROUNDS {
        let target = rng.gen_range(5..400usize);
        let stream = Arc::new(Stream::default());
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| tokio::spawn(writer(node.api(), stream.clone(), round, w, rng.gen())))
            .collect();

        // Wait (bounded) for `target` acknowledgements, then kill without warning.
        let mut reached = false;
        for _ in 0..3_000 {
            if stream.acked.lock().unwrap().len() >= target {
                reached = true;
                break;
            }
            if writers.iter().all(|w| w.is_finished()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stream.killing.store(true, Ordering::SeqCst);
        node.kill9()?;
        for w in writers {
            w.await?;
        }
        let refused = stream.refused.lock().unwrap().clone();
        ensure!(
            refused.is_empty(),
            "round {round}: writes refused before the kill: {refused:#?}"
        );
        let acked = std::mem::take(&mut *stream.acked.lock().unwrap());
        ensure!(
            reached,
            "round {round}: only {} of {target} writes acknowledged before the bounded wait ended",
            acked.len()
        );
        eprintln!(
            "round {round}: killed after {} acknowledged writes",
            acked.len()
        );
        acknowledged.extend(acked);

        node.start().await?;
        let status = node.api().seal_status().await?;
        ensure!(
            status["initialized"] == json!(true) && status["sealed"] == json!(true),
            "round {round}: after kill -9 and restart expected initialized+sealed, got {status}"
        );
        // A different quorum of the same shares each round.
        let quorum = [&keys.keys[round % 3], &keys.keys[(round + 1) % 3]];
        node.unseal_all(&quorum.map(|k| k.clone())).await?;
        node.wait_active().await?;

        let api = node.api();
        let mut missing = Vec::new();
        for (key, value) in &acknowledged {
            match api.kv2_get("secret", key).await? {
                Some(data) if data == json!({ "v": value }) => {}
                other => missing.push(format!("{key}: expected {value}, read {other:?}")),
            }
        }
        if !missing.is_empty() {
            bail!(
                "round {round}: {} of {} acknowledged writes lost or changed after kill -9:\n{}\nserver log tail:\n{}",
                missing.len(),
                acknowledged.len(),
                missing.iter().take(20).cloned().collect::<Vec<_>>().join("\n"),
                node.log_tail(40)
            );
        }
    }
    Ok(())
}

/// Not only KV data: the mount table, policies, auth methods and their users, tokens, audit
/// devices and the keyring term are all acknowledged writes too, and must survive `kill -9`.
#[tokio::test]
async fn control_plane_state_survives_kill_9() -> Result<()> {
    let mut cluster = Cluster::single(NodeOptions::default()).await?;
    let audit_log = cluster.dir().join("audit.log");
    let node = cluster.node();
    let keys = node.init(3, 2).await?;
    node.unseal().await?;
    let api = node.api();

    let policy = "path \"kv1/*\" {\n  capabilities = [\"read\", \"list\"]\n}\n";
    api.put("sys/policies/acl/reader", json!({ "policy": policy }))
        .await?
        .expect_ok("write policy")?;
    api.mount_kv("kv1", 1).await?;
    api.post("kv1/app", json!({"password": "s3cret"}))
        .await?
        .expect_ok("kv1 write")?;
    api.post("sys/auth/userpass", json!({"type": "userpass"}))
        .await?
        .expect_ok("enable userpass")?;
    api.post(
        "auth/userpass/users/alice",
        json!({"password": "pw", "token_policies": ["reader"]}),
    )
    .await?
    .expect_ok("create user")?;
    let token = api
        .create_token(json!({"policies": ["reader"], "ttl": "1h"}))
        .await?;
    api.put(
        "sys/audit/file",
        json!({"type": "file", "options": {"file_path": audit_log.display().to_string()}}),
    )
    .await?
    .expect_ok("enable audit device")?;
    api.post("sys/rotate", json!({}))
        .await?
        .expect_ok("rotate")?;
    let term = api
        .get("sys/key-status")
        .await?
        .expect(200, "key-status")?
        .json["term"]
        .clone();
    ensure!(term == json!(2), "term after one rotation: {term}");

    node.kill9()?;
    node.start().await?;
    node.unseal_all(&keys.keys[1..3]).await?;
    node.wait_active().await?;
    let api = node.api();

    let read = api
        .get("sys/policies/acl/reader")
        .await?
        .expect(200, "policy after restart")?;
    assert_eq!(read.json["data"]["policy"], json!(policy), "{}", read.text);
    let mounts = api.get("sys/mounts").await?.expect(200, "mounts")?;
    assert_eq!(
        mounts.json["data"]["kv1/"]["type"],
        json!("kv"),
        "{}",
        mounts.text
    );
    let auths = api.get("sys/auth").await?.expect(200, "auth methods")?;
    assert_eq!(
        auths.json["data"]["userpass/"]["type"],
        json!("userpass"),
        "{}",
        auths.text
    );
    let audits = api.get("sys/audit").await?.expect(200, "audit devices")?;
    assert_eq!(
        audits.json["data"]["file/"]["type"],
        json!("file"),
        "{}",
        audits.text
    );
    let status = api.get("sys/key-status").await?.expect(200, "key-status")?;
    assert_eq!(status.json["term"], json!(2), "{}", status.text);

    let as_token = api.with_token(Some(&token));
    let secret = as_token
        .get("kv1/app")
        .await?
        .expect(200, "token from before the kill")?;
    assert_eq!(secret.json["data"], json!({"password": "s3cret"}));
    let login = api
        .with_token(None)
        .post("auth/userpass/login/alice", json!({"password": "pw"}))
        .await?
        .expect(200, "userpass login after restart")?;
    ensure!(
        login.json["auth"]["policies"]
            .as_array()
            .is_some_and(|p| p.contains(&json!("reader"))),
        "login policies: {}",
        login.text
    );
    let before = std::fs::read_to_string(&audit_log)
        .unwrap_or_default()
        .len();
    api.get("kv1/app").await?.expect(200, "audited read")?;
    let after = std::fs::read_to_string(&audit_log)
        .unwrap_or_default()
        .len();
    ensure!(
        after > before,
        "the audit device restored after restart does not log"
    );
    Ok(())
}

/// A completed rekey is an acknowledged write of the most precious kind: after `kill -9` the new
/// shares must unseal and the old ones must not.
#[tokio::test]
async fn completed_rekey_survives_kill_9() -> Result<()> {
    let mut cluster = Cluster::single(NodeOptions::default()).await?;
    let node = cluster.node();
    let old = node.init(3, 2).await?;
    node.unseal().await?;
    let api = node.api();
    api.mount_kv("secret", 2).await?;
    api.kv2_put("secret", "k", json!({"v": "kept"}))
        .await?
        .expect(200, "write")?;

    let started = api
        .put(
            "sys/rekey/init",
            json!({"secret_shares": 4, "secret_threshold": 3}),
        )
        .await?
        .expect(200, "rekey init")?;
    let nonce = started.json["nonce"].clone();
    let mut done = None;
    for key in &old.keys[..2] {
        let r = api
            .put("sys/rekey/update", json!({"key": key, "nonce": nonce}))
            .await?
            .expect(200, "rekey update")?;
        if r.json["complete"] == json!(true) {
            done = Some(r);
        }
    }
    let done =
        done.ok_or_else(|| anyhow::anyhow!("rekey did not complete with 2 of 3 old shares"))?;
    let new_keys: Vec<String> = done.json["keys"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ensure!(new_keys.len() == 4, "rekey answer: {}", done.text);

    node.kill9()?;
    node.start().await?;
    let status = node.api().seal_status().await?;
    ensure!(
        status["t"] == json!(3) && status["n"] == json!(4),
        "seal config after kill -9: expected t=3 n=4, got {status}"
    );
    let unauth = node.api().with_token(None);
    for key in &old.keys[..2] {
        unauth.put("sys/unseal", json!({"key": key})).await?;
    }
    let r = unauth
        .put("sys/unseal", json!({"key": old.keys[2]}))
        .await?;
    ensure!(
        r.status == 400,
        "old shares after rekey + kill -9: expected 400, got {} {}",
        r.status,
        r.text
    );
    unauth.unseal_all(&new_keys[1..4]).await?;
    node.wait_active().await?;
    assert_eq!(
        node.api().kv2_get("secret", "k").await?,
        Some(json!({"v": "kept"}))
    );
    Ok(())
}

/// Writes in each burst: enough that the leader batches many of them into one Raft entry.
const BURST: usize = 48;
/// Keys the bursts write; each burst writes every key once, so a key's versions count bursts.
const BURST_KEYS: usize = BURST;

/// What one write of a burst came back with.
enum Outcome {
    Acked,
    /// Refused with a status, or the connection died: not acknowledged.
    NotAcked,
}

/// A key's state on a node: its metadata's `current_version`, the versions the metadata lists,
/// and the data of the current version.
async fn kv2_state(api: &Api, key: &str) -> Result<(u64, Vec<u64>, serde_json::Value)> {
    let meta = api
        .get(&format!("secret/metadata/{key}"))
        .await?
        .expect(200, &format!("metadata of {key}"))?;
    let current = meta.json["data"]["current_version"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("metadata of {key}: {}", meta.text))?;
    let mut versions: Vec<u64> = meta.json["data"]["versions"]
        .as_object()
        .map(|v| v.keys().filter_map(|k| k.parse().ok()).collect())
        .unwrap_or_default();
    versions.sort_unstable();
    let data = api
        .get(&format!("secret/data/{key}?version={current}"))
        .await?;
    ensure!(
        data.status == 200,
        "{key}: metadata names version {current}, which reads {} {}",
        data.status,
        data.text
    );
    Ok((current, versions, data.json["data"]["data"].clone()))
}

fn burst_value(round: usize, key: usize) -> String {
    format!("round {round} key {key}")
}

/// Kills the leader of three nodes with `kill -9` while a burst of concurrent KV v2 writes is in
/// flight, several rounds. On the new leader (the old one still dead): every acknowledged write
/// reads back; every key's metadata and version agree (the current version exists and holds
/// either this round's value or the previous round's, its version list ends at it, and no later
/// version exists), so an unacknowledged write is applied whole or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_under_a_burst_of_writes_keeps_every_acknowledged_one_whole() -> Result<()> {
    const ROUNDS: usize = 3;
    let mut rng = seeded_rng();
    let mut cluster = Cluster::prepare_ha(3, NodeOptions::default())?;
    let keys: InitKeys = cluster.form(3, 2).await?;
    let active = cluster.active().await?;
    let api = cluster.nodes[active].api();
    api.mount_kv("secret", 2).await?;
    // Round 0's values, acknowledged one by one: the state every key starts from.
    for k in 0..BURST_KEYS {
        api.kv2_put(
            "secret",
            &format!("k{k}"),
            json!({ "v": burst_value(0, k) }),
        )
        .await?
        .expect(200, "first version")?;
    }
    // Per key: the last value acknowledged, and the value of a write still unknown.
    let mut acked: Vec<String> = (0..BURST_KEYS).map(|k| burst_value(0, k)).collect();

    for round in 1..=ROUNDS {
        let leader = cluster.active().await?;
        let api = cluster.nodes[leader].api();
        let mut burst = tokio::task::JoinSet::new();
        for k in 0..BURST_KEYS {
            let api = api.clone();
            burst.spawn(async move {
                let body = json!({ "v": burst_value(round, k) });
                let outcome = match api.kv2_put("secret", &format!("k{k}"), body).await {
                    Ok(resp) if resp.status == 200 => Outcome::Acked,
                    _ => Outcome::NotAcked,
                };
                (k, outcome)
            });
        }
        // Kill after the first few acknowledgements (none at all is allowed too: the burst may
        // still be queued), so most of the burst is in flight.
        let wait_for = rng.gen_range(1..=4usize);
        let mut outcomes = Vec::new();
        for _ in 0..wait_for {
            match tokio::time::timeout(Duration::from_secs(30), burst.join_next()).await {
                Ok(Some(done)) => outcomes.push(done?),
                _ => break,
            }
        }
        cluster.nodes[leader].kill9()?;
        while let Some(done) = burst.join_next().await {
            outcomes.push(done?);
        }
        let acked_now = outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Acked))
            .count();
        let new_leader = cluster
            .wait_new_active(leader, "kill -9 of the leader")
            .await?;
        eprintln!(
            "round {round}: killed {} with {acked_now} of {BURST} writes acknowledged; {} is active",
            cluster.nodes[leader].id, cluster.nodes[new_leader].id
        );

        let api = cluster.nodes[new_leader].api();
        let mut wrong = Vec::new();
        for (k, outcome) in &outcomes {
            let key = format!("k{k}");
            let (current, versions, data) = kv2_state(&api, &key).await?;
            let new = json!({ "v": burst_value(round, *k) });
            let old = json!({ "v": acked[*k] });
            let expect_new = matches!(outcome, Outcome::Acked);
            // Versions count acknowledged-or-applied writes: one per round at most.
            let later = api
                .get(&format!("secret/data/{key}?version={}", current + 1))
                .await?;
            if versions.last() != Some(&current) || later.status != 404 {
                wrong.push(format!(
                    "{key}: current_version {current}, versions {versions:?}, version {} reads {}",
                    current + 1,
                    later.status
                ));
            } else if data == new {
                acked[*k] = burst_value(round, *k);
            } else if expect_new || data != old {
                wrong.push(format!(
                    "{key} ({}): version {current} holds {data}; expected {new}{}",
                    if expect_new {
                        "acknowledged"
                    } else {
                        "not acknowledged"
                    },
                    if expect_new {
                        String::new()
                    } else {
                        format!(" or {old}")
                    }
                ));
            }
        }
        ensure!(
            outcomes.len() == BURST && wrong.is_empty(),
            "round {round}: {} outcomes; after kill -9 of the leader:\n{}\n{}",
            outcomes.len(),
            wrong.join("\n"),
            cluster.log_tails(20)
        );

        cluster.nodes[leader].start().await?;
        let quorum: Vec<String> = (0..keys.threshold)
            .map(|i| keys.keys[(round + i) % keys.keys.len()].clone())
            .collect();
        cluster.nodes[leader].unseal_member(&quorum).await?;
        cluster
            .wait_roles(&format!("round {round}: after restarting the old leader"))
            .await?;
    }
    Ok(())
}
