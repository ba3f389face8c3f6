//! An acknowledged write survives `kill -9`: writers stream KV v2 writes at a raft-backed node,
//! the process is killed after a random number of acknowledgements (so at a random point in the
//! stream, with requests in flight), restarted, found sealed, unsealed with the same keys, and
//! every write it had acknowledged, in this round or any earlier one, must read back exactly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use keyhold_tests::{Api, Cluster, NodeOptions};
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
