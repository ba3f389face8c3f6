//! Replicated Raft HA, from outside: clusters of 3 and 5 real processes on 127.0.0.x that form
//! through `retry_join`, forward from standbys to the active node, lose their leader to `kill -9`
//! and SIGTERM under a stream of client writes without losing an acknowledged one, refuse a
//! joiner that holds another cluster's keys, step down on request, rotate the cluster port's TLS
//! keyring under writes and take a joiner after it, and (slow, gated) let autopilot remove dead
//! voters without going below `min_quorum`.
//!
//! Clients here behave as Vault clients with several addresses do: a request that fails with a
//! 5xx or a broken connection is retried, with bounded backoff, against the next node.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use keyhold_tests::{
    next_keyhold_bin, slow_tests_enabled, Api, Cluster, InitKeys, NodeOptions, RaftServer,
    NEXT_VERSION,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// The seed is printed so a failing run can be replayed with `KEYHOLD_TEST_SEED`.
fn seeded_rng(test: &str) -> StdRng {
    let seed = std::env::var("KEYHOLD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test} seed: KEYHOLD_TEST_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

// ------------------------------------------------------------------------------------ clients

/// Attempts per request before the client gives up: with backoff capped at 500 ms this is
/// about 30 s, far beyond a Raft election, so a give-up means the cluster did not recover.
const MAX_ATTEMPTS: u32 = 60;

/// One acknowledged KV v2 write: the key, the value, and the version the server reported.
#[derive(Clone, Debug)]
struct Acked {
    key: String,
    value: String,
    version: u64,
}

/// A stream of KV v2 writes by several clients, and what came of them.
#[derive(Default)]
struct WriteStream {
    acked: Mutex<Vec<Acked>>,
    /// When each acknowledgement arrived, to print the longest pause.
    ack_times: Mutex<Vec<Instant>>,
    /// Writes abandoned: a non-retryable answer, or `MAX_ATTEMPTS` retryable ones.
    gave_up: Mutex<Vec<String>>,
    /// Attempts that failed with a retryable answer and were tried again.
    retries: AtomicUsize,
    stop: AtomicBool,
}

impl WriteStream {
    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits (bounded: 3000 x 10 ms) until `count` writes are acknowledged in all.
    async fn wait_acked(&self, count: usize, what: &str) -> Result<()> {
        for _ in 0..3_000 {
            if self.acked_count() >= count {
                return Ok(());
            }
            if !self.gave_up.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        bail!(
            "{what}: {} of {count} writes acknowledged within 3000 polls; abandoned writes: {:#?}",
            self.acked_count(),
            self.gave_up.lock().unwrap()
        )
    }

    /// The longest pause between consecutive acknowledgements after `since`.
    fn longest_pause_after(&self, since: Instant) -> Duration {
        let mut times: Vec<Instant> = self.ack_times.lock().unwrap().clone();
        times.sort();
        let mut previous = since;
        let mut longest = Duration::ZERO;
        for t in times.into_iter().filter(|t| *t >= since) {
            longest = longest.max(t - previous);
            previous = t;
        }
        longest
    }
}

/// Writes `key` through the nodes in `apis`, starting at `*at` and moving on to the next node
/// after each retryable failure (a broken connection or a 5xx), with backoff from 50 ms
/// doubling to 500 ms. Returns the version the server acknowledged.
async fn write_with_retry(
    apis: &[Api],
    at: &mut usize,
    key: &str,
    value: &str,
    stream: &WriteStream,
) -> std::result::Result<u64, String> {
    let mut backoff = Duration::from_millis(50);
    let mut last = String::new();
    for _ in 0..MAX_ATTEMPTS {
        let api = &apis[*at % apis.len()];
        match api.kv2_put("secret", key, json!({ "v": value })).await {
            Ok(resp) if resp.status.as_u16() == 200 => {
                return resp.json["data"]["version"].as_u64().ok_or_else(|| {
                    format!(
                        "POST secret/data/{key}: 200 without data.version: {}",
                        resp.text
                    )
                });
            }
            Ok(resp) if resp.status.is_server_error() => {
                last = format!("{} answered {} {}", api.base, resp.status, resp.text.trim());
            }
            Ok(resp) => {
                return Err(format!(
                    "POST secret/data/{key} to {}: non-retryable {} {}",
                    api.base,
                    resp.status,
                    resp.text.trim()
                ));
            }
            Err(e) => last = format!("{}: {e:#}", api.base),
        }
        stream.retries.fetch_add(1, Ordering::SeqCst);
        *at += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
    Err(format!(
        "POST secret/data/{key}: gave up after {MAX_ATTEMPTS} attempts; last: {last}"
    ))
}

/// One client: writes `prefix/k0`, `prefix/k1`, ... one at a time until told to stop (or an
/// upper bound of 5000 writes), starting at node `first`.
async fn writer(apis: Vec<Api>, first: usize, prefix: String, stream: Arc<WriteStream>) {
    let mut at = first;
    let mut rng = StdRng::seed_from_u64(rand::random());
    for i in 0..5_000 {
        if stream.stop.load(Ordering::SeqCst) {
            return;
        }
        let key = format!("{prefix}/k{i}");
        let value = format!("{:032x}", rng.gen::<u128>());
        match write_with_retry(&apis, &mut at, &key, &value, &stream).await {
            Ok(version) => {
                stream.acked.lock().unwrap().push(Acked {
                    key,
                    value,
                    version,
                });
                stream.ack_times.lock().unwrap().push(Instant::now());
            }
            Err(e) => {
                stream.gave_up.lock().unwrap().push(e);
                return;
            }
        }
    }
}

/// Starts `count` writers over every running node's API, writer `w` starting at node `w`.
fn start_writers(
    cluster: &Cluster,
    count: usize,
    prefix: &str,
    stream: &Arc<WriteStream>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let apis: Vec<Api> = cluster.nodes.iter().map(|n| n.api()).collect();
    (0..count)
        .map(|w| {
            tokio::spawn(writer(
                apis.clone(),
                w,
                format!("{prefix}/w{w}"),
                stream.clone(),
            ))
        })
        .collect()
}

async fn stop_writers(
    stream: &WriteStream,
    writers: Vec<tokio::task::JoinHandle<()>>,
) -> Result<()> {
    stream.stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.context("writer task")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------- verification

/// Reads every acknowledged write through each node in `through` (a standby forwards the read
/// to the active node) and fails with the first 20 that are missing or changed.
async fn check_readable(
    cluster: &Cluster,
    through: &[usize],
    acknowledged: &[Acked],
    what: &str,
) -> Result<()> {
    for node in through.iter().map(|&i| &cluster.nodes[i]) {
        let api = node.api();
        let mut wrong = Vec::new();
        for a in acknowledged {
            // A 503 says "no active node right now" (an election under load), not "lost":
            // ask again, a bounded number of times. A missing or different value is final.
            let mut read = api.kv2_get("secret", &a.key).await;
            for _ in 0..100 {
                match &read {
                    Err(e) if e.to_string().contains("503") => {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        read = api.kv2_get("secret", &a.key).await;
                    }
                    _ => break,
                }
            }
            match read {
                Ok(Some(data)) if data == json!({ "v": a.value }) => {}
                other => wrong.push(format!("{}: expected {}, read {other:?}", a.key, a.value)),
            }
        }
        ensure!(
            wrong.is_empty(),
            "{what}: through {}, {} of {} acknowledged writes are missing or changed:\n{}",
            node.id,
            wrong.len(),
            acknowledged.len(),
            wrong
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(())
}

/// The storage uuid of the `secret/` mount (its data lives under `logical/<uuid>/`).
async fn secret_mount_uuid(cluster: &Cluster) -> Result<String> {
    let active = cluster.active().await?;
    let mounts = cluster.nodes[active]
        .api()
        .get("sys/mounts")
        .await?
        .expect(200, "GET sys/mounts")?;
    Ok(mounts.json["data"]["secret/"]["uuid"]
        .as_str()
        .with_context(|| format!("no uuid for secret/ in {}", mounts.text))?
        .to_string())
}

/// With the cluster stopped: opens every node's own store and checks that the version key of
/// every acknowledged write is there (keys are clear text; values are ciphertext).
/// Every acknowledged write read back through every running node, then, with the cluster
/// caught up and stopped, found on every node's disk.
async fn check_kept(cluster: &mut Cluster, acknowledged: &[Acked], what: &str) -> Result<()> {
    check_readable(cluster, &cluster.running(), acknowledged, what).await?;
    let uuid = secret_mount_uuid(cluster).await?;
    cluster.wait_caught_up().await?;
    cluster.stop_all().await?;
    check_on_every_disk(cluster, &uuid, acknowledged)
}

fn check_on_every_disk(cluster: &Cluster, uuid: &str, acknowledged: &[Acked]) -> Result<()> {
    use keyhold::physical::sled_store::SledStore;
    for node in &cluster.nodes {
        ensure!(
            !node.is_up(),
            "{} must be stopped to open its store",
            node.id
        );
        let keys: HashSet<String> = {
            let store = SledStore::open(&node.data_dir)
                .with_context(|| format!("open the store of {}", node.id))?;
            store.export()?.into_iter().map(|(k, _)| k).collect()
        };
        let missing: Vec<String> = acknowledged
            .iter()
            .map(|a| format!("logical/{uuid}/versions/{}/{}", a.key, a.version))
            .filter(|k| !keys.contains(k))
            .collect();
        ensure!(
            missing.is_empty(),
            "{} of {} acknowledged writes are not in the store of {} ({} keys there); first missing:\n{}",
            missing.len(),
            acknowledged.len(),
            node.id,
            keys.len(),
            missing.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
        );
        eprintln!(
            "{}: all {} acknowledged writes on disk",
            node.id,
            acknowledged.len()
        );
    }
    Ok(())
}

/// A different quorum of the shares each time.
fn quorum(keys: &InitKeys, turn: usize) -> Vec<String> {
    (0..keys.threshold)
        .map(|i| keys.keys[(turn + i) % keys.keys.len()].clone())
        .collect()
}

// ------------------------------------------------------------------------------- formation

/// `size` nodes form through `retry_join`: each joiner is admitted as a non-voter, autopilot
/// (default `server_stabilization_time`, 10 s) promotes it, and then one node answers health
/// 200, the others 429, all agree on the leader, and the configuration lists `size` voters.
async fn check_formation(size: u8) -> Result<()> {
    let mut cluster = Cluster::prepare_ha(size, NodeOptions::default())?;
    cluster.start_all().await?;
    let keys = cluster.init_first(3, 2).await?;
    for i in 1..cluster.nodes.len() {
        cluster.join(i, &keys).await?;
        let servers = cluster.raft_servers(0).await?;
        let id = &cluster.nodes[i].id;
        let joined = servers.iter().find(|s| &s.node_id == id);
        ensure!(
            joined.is_some_and(|s| !s.voter),
            "{id} right after unseal: expected it listed as a non-voter, got {servers:?}"
        );
    }
    let started = Instant::now();
    let active = cluster.wait_roles("formation").await?;
    let roles = cluster.roles().await;
    ensure!(
        roles.active == vec![active] && roles.standby.len() == usize::from(size) - 1,
        "expected one 200 and {} x 429, got {roles:?}",
        size - 1
    );
    let servers = cluster
        .wait_voters(usize::from(size), "autopilot promotion")
        .await?;
    eprintln!(
        "{size} nodes: all voters {:?} after the last join",
        started.elapsed()
    );
    let leader = servers.iter().find(|s| s.leader).expect("one leader");
    ensure!(
        leader.node_id == cluster.nodes[active].id,
        "raft leader {} is not the active node {}",
        leader.node_id,
        cluster.nodes[active].id
    );
    let mut ids: Vec<&str> = servers.iter().map(|s| s.node_id.as_str()).collect();
    ids.sort_unstable();
    let mut want: Vec<&str> = cluster.nodes.iter().map(|n| n.id.as_str()).collect();
    want.sort_unstable();
    ensure!(
        ids == want,
        "raft configuration lists {ids:?}, expected {want:?}"
    );
    for (i, node) in cluster.nodes.iter().enumerate() {
        let leader = node
            .api()
            .get("sys/leader")
            .await?
            .expect(200, "sys/leader")?;
        ensure!(
            leader.json["is_self"] == json!(i == active)
                && leader.json["leader_address"] == json!(cluster.nodes[active].api_addr()),
            "sys/leader on {}: expected is_self={} and leader_address {}, got {}",
            node.id,
            i == active,
            cluster.nodes[active].api_addr(),
            leader.text
        );
    }
    Ok(())
}

#[tokio::test]
async fn three_nodes_form_through_retry_join() -> Result<()> {
    check_formation(3).await
}

#[tokio::test]
async fn five_nodes_form_through_retry_join() -> Result<()> {
    check_formation(5).await
}

// ------------------------------------------------------------------------------ forwarding

#[tokio::test]
async fn standbys_forward_writes_policies_and_mounts_to_the_active_node() -> Result<()> {
    let mut cluster = Cluster::prepare_ha(3, NodeOptions::default())?;
    cluster.form(3, 2).await?;
    let active = cluster.active().await?;
    let standbys = cluster.others(active);
    let (s1, s2) = (
        cluster.nodes[standbys[0]].api(),
        cluster.nodes[standbys[1]].api(),
    );
    let on_active = cluster.nodes[active].api();

    s1.mount_kv("fwd", 2).await?;
    let policy = "path \"fwd/*\" {\n  capabilities = [\"read\"]\n}\n";
    s1.put("sys/policies/acl/fwd-reader", json!({ "policy": policy }))
        .await?
        .expect_ok("write a policy through a standby")?;
    s1.kv2_put("fwd", "app/db", json!({"password": "through-a-standby"}))
        .await?
        .expect(200, "KV write through a standby")?;

    let mounts = on_active
        .get("sys/mounts")
        .await?
        .expect(200, "mounts on the active node")?;
    ensure!(
        mounts.json["data"]["fwd/"]["type"] == json!("kv"),
        "mount made through a standby is not on the active node: {}",
        mounts.text
    );
    let read = on_active
        .get("sys/policies/acl/fwd-reader")
        .await?
        .expect(200, "policy on the active node")?;
    ensure!(
        read.json["data"]["policy"] == json!(policy),
        "policy read on the active node: {}",
        read.text
    );
    for (name, api) in [
        ("active node", &on_active),
        ("other standby", &s2),
        ("same standby", &s1),
    ] {
        let got = api.kv2_get("fwd", "app/db").await?;
        ensure!(
            got == Some(json!({"password": "through-a-standby"})),
            "KV read through the {name}: {got:?}"
        );
    }
    // The policy works for a token used through the other standby.
    let token = s2
        .create_token(json!({"policies": ["fwd-reader"]}))
        .await
        .context("create a token through a standby")?;
    let limited = s2.with_token(Some(&token));
    limited
        .get("fwd/data/app/db")
        .await?
        .expect(200, "policy-limited read through a standby")?;
    limited
        .kv2_put("fwd", "app/db", json!({"password": "nope"}))
        .await?
        .expect(403, "policy-limited write through a standby")?;
    Ok(())
}

// ------------------------------------------------------------------------------- kill -9

/// `rounds` times: writers stream to every node; the active node is killed with `kill -9` at a
/// random point; the stream carries on through the survivors; the killed node is restarted
/// and unsealed. Every acknowledged write is then read back through every node and found in
/// every node's own store.
async fn kill_leader_rounds(size: u8, rounds: usize) -> Result<()> {
    const WRITERS: usize = 3;
    let mut rng = seeded_rng(&format!("kill -9 leader, {size} nodes"));
    let mut cluster = Cluster::prepare_ha(size, NodeOptions::default())?;
    let keys = cluster.form(3, 2).await?;
    let active = cluster.active().await?;
    cluster.nodes[active].api().mount_kv("secret", 2).await?;

    let mut acknowledged: Vec<Acked> = Vec::new();
    for round in 0..rounds {
        let stream = Arc::new(WriteStream::default());
        let writers = start_writers(&cluster, WRITERS, &format!("r{round}"), &stream);
        let before = rng.gen_range(10..120usize);
        stream
            .wait_acked(before, &format!("round {round} before the kill"))
            .await?;

        let leader = cluster.active().await?;
        let acked_at_kill = stream.acked_count();
        let killed_at = Instant::now();
        cluster.nodes[leader].kill9()?;
        let new_active = cluster.active().await?;
        let to_active = killed_at.elapsed();
        stream
            .wait_acked(
                acked_at_kill + 3 * WRITERS,
                &format!("round {round} after the kill"),
            )
            .await?;
        let to_writes = killed_at.elapsed();
        stream
            .wait_acked(acked_at_kill + 30, &format!("round {round} after the kill"))
            .await?;
        stop_writers(&stream, writers).await?;
        let gave_up = stream.gave_up.lock().unwrap().clone();
        ensure!(
            gave_up.is_empty(),
            "round {round}: writes abandoned around the kill of {}: {gave_up:#?}\n{}",
            cluster.nodes[leader].id,
            cluster.log_tails(20)
        );
        eprintln!(
            "round {round}: killed {} after {acked_at_kill} acks; {} active after {to_active:?}; \
             acks flowing again after {to_writes:?}; longest pause {:?}; {} retries; {} acked",
            cluster.nodes[leader].id,
            cluster.nodes[new_active].id,
            stream.longest_pause_after(killed_at),
            stream.retries.load(Ordering::SeqCst),
            stream.acked_count()
        );
        acknowledged.extend(stream.acked.lock().unwrap().iter().cloned());

        cluster.nodes[leader].start().await?;
        cluster.nodes[leader]
            .unseal_member(&quorum(&keys, round))
            .await?;
        cluster
            .wait_roles(&format!(
                "round {round}: after restarting {}",
                cluster.nodes[leader].id
            ))
            .await?;
        let active = cluster.active().await?;
        check_readable(
            &cluster,
            &[active],
            &acknowledged,
            &format!("round {round}, through the active node"),
        )
        .await?;
    }

    check_kept(&mut cluster, &acknowledged, "after all rounds").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_lose_no_acknowledged_write_when_the_leader_is_killed() -> Result<()> {
    kill_leader_rounds(3, 4).await
}

/// Slow tier: the same on five nodes (several minutes on two cores).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_five_nodes_lose_no_acknowledged_write_when_the_leader_is_killed() -> Result<()> {
    if !slow_tests_enabled("slow_five_nodes_lose_no_acknowledged_write") {
        return Ok(());
    }
    kill_leader_rounds(5, 3).await
}

/// Every node killed at once and restarted: each comes back sealed, unseals with the shares,
/// one becomes active, and every acknowledged write reads back through every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_nodes_killed_at_once_come_back_with_every_acknowledged_write() -> Result<()> {
    let mut cluster = Cluster::prepare_ha(3, NodeOptions::default())?;
    let keys = cluster.form(3, 2).await?;
    let active = cluster.active().await?;
    cluster.nodes[active].api().mount_kv("secret", 2).await?;

    let stream = Arc::new(WriteStream::default());
    let writers = start_writers(&cluster, 3, "all", &stream);
    let target = seeded_rng("all nodes killed").gen_range(20..150usize);
    stream.wait_acked(target, "before the kill").await?;
    // No stop flag first: the processes die under requests in flight.
    for node in &mut cluster.nodes {
        node.kill9()?;
    }
    stream.stop.store(true, Ordering::SeqCst);
    // Writers now retry against dead nodes until they give up or see the stop flag; abort them.
    for w in writers {
        w.abort();
        let _ = w.await;
    }
    let acknowledged = stream.acked.lock().unwrap().clone();
    eprintln!(
        "killed all 3 nodes after {} acknowledged writes",
        acknowledged.len()
    );

    cluster.start_all().await?;
    for (i, node) in cluster.nodes.iter().enumerate() {
        let status = node.api().seal_status().await?;
        ensure!(
            status["initialized"] == json!(true) && status["sealed"] == json!(true),
            "{} after kill -9 and restart: expected initialized and sealed, got {status}",
            node.id
        );
        node.api().unseal_all(&quorum(&keys, i)).await?;
    }
    let restarted = Instant::now();
    cluster.wait_roles("after restarting every node").await?;
    eprintln!(
        "one active, two standby {:?} after the last unseal",
        restarted.elapsed()
    );
    check_readable(
        &cluster,
        &cluster.running(),
        &acknowledged,
        "after kill -9 of every node",
    )
    .await?;
    cluster
        .wait_voters(3, "after restarting every node")
        .await?;
    Ok(())
}

// ------------------------------------------------------------------------- graceful handoff

/// SIGTERM of the active node hands leadership to a standby before the process exits: two
/// clients (one starting at the active node, one at a standby) stream writes with retries and
/// none of their writes fails; the longest pause between acknowledgements is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_the_active_node_hands_over_without_failed_writes() -> Result<()> {
    let mut cluster = Cluster::prepare_ha(3, NodeOptions::default())?;
    cluster.form(3, 2).await?;
    let old = cluster.active().await?;
    cluster.nodes[old].api().mount_kv("secret", 2).await?;

    let stream = Arc::new(WriteStream::default());
    let apis: Vec<Api> = cluster.nodes.iter().map(|n| n.api()).collect();
    let standby = cluster.others(old)[0];
    let writers: Vec<_> = [(old, "to-active"), (standby, "to-standby")]
        .into_iter()
        .map(|(first, prefix)| {
            tokio::spawn(writer(
                apis.clone(),
                first,
                prefix.to_string(),
                stream.clone(),
            ))
        })
        .collect();
    stream.wait_acked(40, "before SIGTERM").await?;

    let acked_at_term = stream.acked_count();
    let termed_at = Instant::now();
    let status = cluster.nodes[old].sigterm().await?;
    let exited_after = termed_at.elapsed();
    ensure!(
        status.success(),
        "the active node exited with {status} on SIGTERM"
    );
    let new = cluster.active().await?;
    let to_active = termed_at.elapsed();
    stream
        .wait_acked(acked_at_term + 40, "after SIGTERM")
        .await?;
    stop_writers(&stream, writers).await?;

    let gave_up = stream.gave_up.lock().unwrap().clone();
    ensure!(
        gave_up.is_empty(),
        "writes failed around the graceful stop of {}: {gave_up:#?}\n{}",
        cluster.nodes[old].id,
        cluster.log_tails(20)
    );
    ensure!(new != old, "leadership did not move");
    let leader = cluster.nodes[new]
        .api()
        .get("sys/leader")
        .await?
        .expect(200, "sys/leader")?;
    ensure!(
        leader.json["is_self"] == json!(true),
        "new active node {}: sys/leader {}",
        cluster.nodes[new].id,
        leader.text
    );
    eprintln!(
        "SIGTERM {}: exited after {exited_after:?}; {} active after {to_active:?}; longest pause \
         between acks {:?}; {} retried attempts; {} writes acknowledged",
        cluster.nodes[old].id,
        cluster.nodes[new].id,
        stream.longest_pause_after(termed_at),
        stream.retries.load(Ordering::SeqCst),
        stream.acked_count()
    );
    let acknowledged = stream.acked.lock().unwrap().clone();
    check_readable(
        &cluster,
        &cluster.running(),
        &acknowledged,
        "after the handoff",
    )
    .await?;
    // The others stop too, one after the other: the Raft RPCs a node receives while it stops
    // its Raft are answered 503, not handed to a stopped Raft (which logged an error for each).
    for i in cluster.running() {
        let status = cluster.nodes[i].sigterm().await?;
        ensure!(status.success(), "node {i} exited with {status} on SIGTERM");
    }
    for node in &cluster.nodes {
        let log = node.log();
        ensure!(
            !log.contains("failure sending RaftMsg"),
            "{} logged errors on its way out:\n{}",
            node.id,
            log.lines()
                .filter(|l| l.contains("RaftMsg"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(())
}

// ------------------------------------------------------------------ cluster port rotation

/// `sys/storage/raft/cluster-tls` on node `via`: the keyring's generation and step.
async fn cluster_tls_status(cluster: &Cluster, via: usize) -> Result<serde_json::Value> {
    Ok(cluster.nodes[via]
        .api()
        .get("sys/storage/raft/cluster-tls")
        .await?
        .expect(200, "GET sys/storage/raft/cluster-tls")?
        .json["data"]
        .clone())
}

/// The cluster port's TLS keyring rotates (`sys/storage/raft/cluster-tls/rotate`) while writers
/// stream through every node, so standbys forward over the cluster port and Raft replicates
/// over it throughout: the rotation goes through both of its steps to a new generation whose
/// CA and certificate are new, no write is abandoned, every acknowledged write is readable
/// through every node and on every node's own disk, a SIGHUP (which re-reads the keyring)
/// changes nothing, and a fourth node joins afterwards, becomes a voter and serves.
#[tokio::test]
async fn the_cluster_port_keyring_rotates_under_writes_and_a_node_joins_after() -> Result<()> {
    let mut cluster = Cluster::prepare_ha(3, NodeOptions::default())?;
    let keys = cluster.form(3, 2).await?;
    let active = cluster.active().await?;
    cluster.nodes[active].api().mount_kv("secret", 2).await?;
    let before = cluster_tls_status(&cluster, active).await?;
    ensure!(
        before["generation"] == json!(0) && before["phase"] == json!("stable"),
        "a new cluster's keyring: {before}"
    );

    let stream = Arc::new(WriteStream::default());
    let writers = start_writers(&cluster, 3, "rotation", &stream);
    stream.wait_acked(30, "before the rotation").await?;
    let begun = cluster.nodes[active]
        .api()
        .post("sys/storage/raft/cluster-tls/rotate", json!({}))
        .await?
        .expect(200, "begin the cluster TLS rotation")?;
    ensure!(
        begun.json["data"]["generation"] == json!(1)
            && begun.json["data"]["phase"] == json!("trust_both")
            && begun.json["data"]["ca_fingerprints_sha256"]
                .as_array()
                .map(Vec::len)
                == Some(2),
        "the rotation's first step: {}",
        begun.text
    );
    let again = cluster.nodes[active]
        .api()
        .post("sys/storage/raft/cluster-tls/rotate", json!({}))
        .await?;
    ensure!(
        again.status.as_u16() == 400
            || cluster_tls_status(&cluster, active).await?["phase"] == json!("stable"),
        "a second rotation while one is under way: {} {}",
        again.status,
        again.text
    );

    // Bounded: 600 x 100 ms for every member to take both steps.
    let mut phases = HashSet::new();
    let mut after = json!(null);
    for _ in 0..600 {
        let via = cluster.active().await?;
        after = cluster_tls_status(&cluster, via).await?;
        phases.insert(after["phase"].as_str().unwrap_or_default().to_string());
        if after["generation"] == json!(1) && after["phase"] == json!("stable") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        after["generation"] == json!(1) && after["phase"] == json!("stable"),
        "the rotation did not finish in 600 polls: {after}; phases seen {phases:?}\n{}",
        cluster.log_tails(20)
    );
    let old_ca = before["ca_fingerprints_sha256"][0].clone();
    let new_cas = after["ca_fingerprints_sha256"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        new_cas.len() == 1
            && new_cas[0] != old_ca
            && after["cert_fingerprint_sha256"] != before["cert_fingerprint_sha256"]
            && begun.json["data"]["ca_fingerprints_sha256"][1] == new_cas[0],
        "after the rotation: {after}; before: {before}"
    );

    let acked = stream.acked_count();
    stream.wait_acked(acked + 30, "after the rotation").await?;
    stop_writers(&stream, writers).await?;
    let gave_up = stream.gave_up.lock().unwrap().clone();
    ensure!(
        gave_up.is_empty(),
        "writes abandoned through the rotation: {gave_up:#?}\n{}",
        cluster.log_tails(20)
    );
    eprintln!(
        "cluster TLS rotation: phases seen {phases:?}; {} writes acknowledged, {} retried \
         attempts, leader {} -> {}",
        stream.acked_count(),
        stream.retries.load(Ordering::SeqCst),
        cluster.nodes[active].id,
        cluster.nodes[cluster.active().await?].id
    );

    // Each standby forwards a write at the first attempt, over the new keyring.
    let active = cluster.active().await?;
    for standby in cluster.others(active) {
        let node = &cluster.nodes[standby];
        node.api()
            .kv2_put(
                "secret",
                &format!("forwarded/{}", node.id),
                json!({ "v": "after" }),
            )
            .await?
            .expect(200, "a write through a standby after the rotation")?;
    }
    // SIGHUP re-reads the stored keyring: the same one, so nothing changes.
    let standby = cluster.others(active)[0];
    cluster.nodes[standby].sighup()?;
    cluster.nodes[standby]
        .api()
        .kv2_put("secret", "after-sighup", json!({ "v": "after" }))
        .await?
        .expect(200, "a write through a standby after SIGHUP")?;

    // A node joins after the rotation: it receives the new keyring and replicates.
    let newcomer = cluster.add_node(NodeOptions::default())?;
    cluster.nodes[newcomer].start().await?;
    cluster.join(newcomer, &keys).await?;
    cluster.wait_voters(4, "after the rotation").await?;
    cluster.wait_roles("after the newcomer joined").await?;
    cluster.nodes[newcomer]
        .api()
        .kv2_put("secret", "from-the-newcomer", json!({ "v": "after" }))
        .await?
        .expect(200, "a write through the newcomer")?;

    let acknowledged = stream.acked.lock().unwrap().clone();
    check_kept(
        &mut cluster,
        &acknowledged,
        "after the rotation and the join",
    )
    .await
}

// -------------------------------------------------------------------------------- joining

/// A node that joins cluster A but is unsealed with cluster B's shares is refused and never
/// becomes a member of A; unsealed afterwards with A's shares, the same node joins (so the
/// refusal is about the keys, not the setup).
#[tokio::test]
async fn a_joiner_with_another_clusters_keys_is_refused() -> Result<()> {
    let mut a = Cluster::prepare_ha(1, NodeOptions::default())?;
    let a_keys = a.form(3, 2).await?;
    let mut b = Cluster::prepare_ha(1, NodeOptions::default())?;
    let b_keys = b.form(3, 2).await?;

    let joiner = a.add_node(NodeOptions::default())?;
    a.nodes[joiner].start().await?;
    let id = a.nodes[joiner].id.clone();
    let api = a.nodes[joiner].api().with_token(None);
    let mut challenged = false;
    for _ in 0..300 {
        if api.seal_status().await?["initialized"] == json!(true) {
            challenged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(challenged, "{id} never got a join challenge from cluster A");

    let first = api
        .put("sys/unseal", json!({"key": b_keys.keys[0]}))
        .await?
        .expect(
            200,
            "first of cluster B's shares (threshold not reached yet)",
        )?;
    ensure!(first.json["sealed"] == json!(true), "{}", first.text);
    let refused = api
        .put("sys/unseal", json!({"key": b_keys.keys[1]}))
        .await?;
    ensure!(
        refused.status.as_u16() == 400 && !refused.errors().is_empty(),
        "unsealing a joiner of A with B's shares: expected 400 with an error, got {} {}",
        refused.status,
        refused.text
    );
    let status = api.seal_status().await?;
    ensure!(
        status["sealed"] == json!(true),
        "joiner after refusal: {status}"
    );
    for _ in 0..20 {
        let servers = a.raft_servers(0).await?;
        ensure!(
            servers.iter().all(|s| s.node_id != id),
            "{id}, unsealed with B's keys, is a member of A: {servers:?}"
        );
        ensure!(
            a.nodes[joiner].health_code().await == Some(503),
            "{id} after refusal: health should say sealed (503)"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let b_servers = b.raft_servers(0).await?;
    ensure!(b_servers.len() == 1, "cluster B changed: {b_servers:?}");

    a.nodes[joiner]
        .unseal_member(&a_keys.keys[..a_keys.threshold])
        .await
        .context("the same joiner, unsealed with A's shares after the refusal")?;
    a.nodes[joiner].init_keys = Some(a_keys.clone());
    a.wait_roles("after the joiner unsealed with A's shares")
        .await?;
    a.wait_voters(2, "the joiner promoted").await?;
    Ok(())
}

// ------------------------------------------------------------------------------ step-down

/// A rolling upgrade's rule, on the server: a leader handing over picks the caught-up voter with
/// the newest version, and an operator's step-down refuses when only older voters could take
/// over (leadership never moves back to an older build while a newer one is there).
#[tokio::test]
async fn step_down_hands_leadership_to_the_newest_version_and_never_back() -> Result<()> {
    let mut cluster = Cluster::prepare_ha(3, NodeOptions::default())?;
    let newest = 1;
    cluster.nodes[newest].set_bin(next_keyhold_bin()?);
    cluster.form(3, 2).await?;
    for (i, node) in cluster.nodes.iter().enumerate() {
        let health = node.api().with_token(None).get("sys/health").await?;
        let want = if i == newest {
            NEXT_VERSION
        } else {
            keyhold::VERSION
        };
        ensure!(
            health.json["version"] == json!(want),
            "{} reports {}, not {want}",
            node.id,
            health.json["version"]
        );
    }
    // Autopilot and ha-status show each member's own version (the mixed cluster of an
    // upgrade), whichever node answers.
    let active = cluster.active().await?;
    let state = cluster.nodes[active]
        .api()
        .get("sys/storage/raft/autopilot/state")
        .await?
        .expect(200, "autopilot state")?;
    let members = cluster.nodes[active]
        .api()
        .get("sys/ha-status")
        .await?
        .expect(200, "ha-status")?;
    for (i, node) in cluster.nodes.iter().enumerate() {
        let want = if i == newest {
            NEXT_VERSION
        } else {
            keyhold::VERSION
        };
        let in_state = &state.json["data"]["servers"][&node.id]["version"];
        let in_members = members.json["data"]["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|m| m["hostname"] == json!(node.id)))
            .map(|m| m["version"].clone());
        ensure!(
            *in_state == json!(want) && in_members == Some(json!(want)),
            "{} runs {want}; autopilot state says {in_state}, ha-status {in_members:?}",
            node.id
        );
    }
    // From an older active node: leadership goes to the newest, never to the other old one.
    // Twice, so the choice is not a coin toss that happened to land right.
    for round in 0..2 {
        let active = cluster.active().await?;
        if active == newest {
            break;
        }
        cluster.nodes[active]
            .api()
            .put("sys/step-down", json!({}))
            .await?
            .expect_ok("step-down on an older active node")?;
        let now = cluster.wait_new_active(active, "step-down").await?;
        ensure!(
            now == newest,
            "round {round}: leadership went from {} to {}, not to {} which runs {NEXT_VERSION}",
            cluster.nodes[active].id,
            cluster.nodes[now].id,
            cluster.nodes[newest].id
        );
    }
    ensure!(cluster.active().await? == newest, "the newest node leads");
    cluster.wait_caught_up().await?;
    // From the newest: every other voter is older, so an operator's step-down is refused.
    let refused = cluster.nodes[newest]
        .api()
        .put("sys/step-down", json!({}))
        .await?
        .expect(400, "step-down with only older voters to take over")?;
    ensure!(
        refused.errors().contains("older version"),
        "the refusal says why: {}",
        refused.errors()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(
        cluster.active().await? == newest,
        "the refused step-down moved leadership\n{}",
        cluster.log_tails(15)
    );
    Ok(())
}

#[tokio::test]
async fn step_down_moves_the_active_node() -> Result<()> {
    let mut cluster = Cluster::prepare_ha(3, NodeOptions::default())?;
    cluster.form(3, 2).await?;
    let old = cluster.active().await?;
    cluster.nodes[old]
        .api()
        .with_token(None)
        .put("sys/step-down", json!({}))
        .await?
        .expect(403, "step-down without a token")?;
    cluster.nodes[old]
        .api()
        .put("sys/step-down", json!({}))
        .await?
        .expect_ok("step-down with the root token")?;
    cluster.wait_new_active(old, "sys/step-down").await?;
    let active = cluster.wait_roles("after step-down").await?;
    ensure!(
        active != old,
        "{} took leadership straight back",
        cluster.nodes[old].id
    );
    let servers = cluster.wait_voters(3, "after step-down").await?;
    ensure!(
        servers
            .iter()
            .any(|s| s.leader && s.node_id == cluster.nodes[active].id),
        "raft configuration after step-down: {servers:?}"
    );
    Ok(())
}

// ------------------------------------------------------------------------------- autopilot

/// Polls the raft configuration through the active node every second, at most `polls` times,
/// until `done` says so (`Some(configuration)`), or `None` once the polls are spent; fails at
/// once if the voter count ever drops below `floor`.
async fn watch_voters(
    cluster: &Cluster,
    polls: u32,
    floor: usize,
    what: &str,
    done: impl Fn(&[RaftServer]) -> bool,
) -> Result<Option<Vec<RaftServer>>> {
    for _ in 0..polls {
        let active = cluster.active().await?;
        let servers = cluster.raft_servers(active).await?;
        let voters = servers.iter().filter(|s| s.voter).count();
        ensure!(
            voters >= floor,
            "{what}: voter count fell to {voters}, below min_quorum {floor}: {servers:?}"
        );
        if done(&servers) {
            return Ok(Some(servers));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(None)
}

/// Autopilot with `cleanup_dead_servers` on 5 nodes, `min_quorum = 3`: two nodes killed for
/// good are removed after `dead_server_last_contact_threshold` (1 min), a third killed after
/// that is kept (3 voters is the floor), and a sixth fresh node joins as a non-voter and is
/// promoted. Slow: runs only with `KEYHOLD_SLOW_TESTS=1`.
#[tokio::test]
async fn slow_autopilot_removes_dead_servers_down_to_min_quorum_and_promotes_a_newcomer(
) -> Result<()> {
    if !slow_tests_enabled("slow_autopilot") {
        return Ok(());
    }
    let mut cluster = Cluster::prepare_ha(5, NodeOptions::default())?;
    let keys = cluster.form(3, 2).await?;
    let active = cluster.active().await?;
    cluster
        .set_autopilot(
            active,
            json!({
                "cleanup_dead_servers": true,
                "dead_server_last_contact_threshold": "1m",
                "min_quorum": 3,
                "server_stabilization_time": "5s",
            }),
        )
        .await?;

    let dead: Vec<usize> = cluster.others(active).into_iter().take(2).collect();
    let dead_ids: Vec<String> = dead.iter().map(|&i| cluster.nodes[i].id.clone()).collect();
    for &i in &dead {
        cluster.nodes[i].kill9()?;
    }
    let killed_at = Instant::now();
    watch_voters(&cluster, 180, 3, "removal of two dead voters", |servers| {
        servers.len() == 3 && servers.iter().all(|s| !dead_ids.contains(&s.node_id))
    })
    .await?
    .with_context(|| format!("dead voters {dead_ids:?} not removed within 180 polls, 1 s apart"))?;
    eprintln!(
        "two dead voters {dead_ids:?} removed {:?} after the kill",
        killed_at.elapsed()
    );

    // At the floor now: a third dead voter must stay in the configuration.
    let active = cluster.active().await?;
    let third = cluster.others(active)[0];
    let third_id = cluster.nodes[third].id.clone();
    cluster.nodes[third].kill9()?;
    let killed_at = Instant::now();
    // 90 polls, 1 s apart: beyond the 1 min threshold plus a reconcile interval (10 s).
    let removed = watch_voters(&cluster, 90, 3, "a dead voter at min_quorum", |servers| {
        servers.iter().all(|s| s.node_id != third_id)
    })
    .await?;
    ensure!(
        removed.is_none(),
        "{third_id} was removed although that left fewer than min_quorum (3) voters: {removed:?}"
    );
    let servers = cluster.raft_servers(cluster.active().await?).await?;
    ensure!(
        servers.iter().any(|s| s.node_id == third_id && s.voter) && servers.len() == 3,
        "{third_id}, dead for {:?} with 3 voters (min_quorum 3), must stay a voter: {servers:?}",
        killed_at.elapsed()
    );
    // Bring it back, so the newcomer's promotion has a healthy quorum to commit with.
    cluster.nodes[third].start().await?;
    cluster.nodes[third]
        .unseal_member(&quorum(&keys, 1))
        .await?;

    let newcomer = cluster.add_node(NodeOptions::default())?;
    cluster.nodes[newcomer].start().await?;
    cluster.join(newcomer, &keys).await?;
    let new_id = cluster.nodes[newcomer].id.clone();
    let servers = cluster.raft_servers(cluster.active().await?).await?;
    ensure!(
        servers.iter().any(|s| s.node_id == new_id && !s.voter),
        "newcomer {new_id} right after unseal: expected a non-voter, got {servers:?}"
    );
    let joined_at = Instant::now();
    watch_voters(&cluster, 60, 3, "promotion of the newcomer", |servers| {
        servers.iter().any(|s| s.node_id == new_id && s.voter)
    })
    .await?
    .with_context(|| format!("newcomer {new_id} not promoted within 60 polls, 1 s apart"))?;
    eprintln!(
        "newcomer {new_id} promoted {:?} after joining",
        joined_at.elapsed()
    );
    Ok(())
}

/// A voter whose disk was lost comes back under its node id with an empty log, behind what the
/// leader last saw of it. The leader replicates to it from scratch (openraft's
/// `loosen-follower-log-revert`: without it the leader's Raft core panicked at the first append
/// and the whole cluster stopped serving), the node joins again with the cluster's keys, and
/// it ends up with every write: those made before, while it was gone, and after.
#[tokio::test]
async fn a_voter_that_lost_its_disk_rejoins_and_the_cluster_keeps_serving() -> Result<()> {
    let mut cluster = Cluster::prepare_ha(3, NodeOptions::default())?;
    let keys = cluster.form(3, 2).await?;
    let active = cluster.active().await?;
    let lost = cluster.others(active)[0];
    let api = cluster.nodes[active].api();
    api.mount_kv("secret", 2).await?;
    api.kv2_put_many("secret", "before", 300, 8).await?;
    cluster.wait_caught_up().await?;

    cluster.nodes[lost].kill9()?;
    let data_dir = cluster.nodes[lost].data_dir.clone();
    std::fs::remove_dir_all(&data_dir)?;
    std::fs::create_dir_all(&data_dir)?;
    api.kv2_put_many("secret", "while-gone", 100, 8).await?;

    cluster.nodes[lost].start().await?;
    cluster.join(lost, &keys).await?;
    api.kv2_put_many("secret", "after", 100, 8).await?;
    ensure!(
        cluster.active().await? == active,
        "leadership moved while a wiped voter came back\n{}",
        cluster.log_tails(20)
    );
    cluster.wait_voters(3, "the wiped voter back").await?;
    cluster.wait_caught_up().await?;
    for (prefix, count) in [("before", 300), ("while-gone", 100), ("after", 100)] {
        for i in [0, count - 1] {
            let got = cluster.nodes[lost]
                .api()
                .kv2_get("secret", &format!("{prefix}/{i}"))
                .await?;
            ensure!(
                got == Some(json!({"v": i})),
                "the rejoined node reads {prefix}/{i} as {got:?}"
            );
        }
    }
    for node in &cluster.nodes {
        ensure!(
            !node.log().contains("panicked"),
            "{} panicked:\n{}",
            node.id,
            node.log_tail(30)
        );
    }
    Ok(())
}
