//! Slow disks (issue 15): one node of a 3-node cluster finds its disk slow (its writes
//! throttled to a few operations a second by a blkio cgroup, `keyhold_tests::slow_disk`) while
//! the partition tests' retrying client writes through every node: first a standby, then the
//! active node. Nothing acknowledged is lost, and once the disk is fast again the slow node
//! catches up and every node's own store holds every acknowledged write. How many writes were
//! acknowledged while each node was slow is printed, not asserted: a slow standby costs
//! nothing, while a slow active node stalls the cluster (its lease lapses as the answers to its
//! heartbeats come late, yet its heartbeats reach the followers often enough that none stands
//! for election).
//!
//! Needs root and the cgroup v1 blkio controller (device-mapper's dm-delay is not available on
//! these machines): without them the test fails and says why. Prints a `chaos-figures:` line
//! for `tests/chaos/run`; nothing asserts on time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use keyhold_tests::slow_disk::SlowDisk;
use keyhold_tests::{Api, Cluster, NodeOptions};
use serde_json::{json, Value};

use super::chaos::Figures;
use super::partitions::{every_node_holds, run_workload, Workload};

/// The slow node's write operations a second: an fsync of sled plus the file system's journal
/// take several, so a write on that node waits about a second.
const WRITE_IOPS: u32 = 8;

/// How long each node stays slow.
const SLOW_FOR: Duration = Duration::from_secs(6);

fn acked_since(workload: &Arc<Mutex<Workload>>, since: Instant) -> usize {
    workload
        .lock()
        .expect("workload lock")
        .acknowledged
        .iter()
        .filter(|(_, _, t)| *t > since)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_disk_on_a_standby_then_the_active_node_loses_nothing() -> Result<()> {
    let mut cluster = Cluster::prepare_ha(3, NodeOptions::default())?;
    let name = format!("keyhold-test-slow-disk-{}", std::process::id());
    let disk = SlowDisk::create(&name, &cluster.nodes[0].data_dir)
        .context("a slow disk needs root and the blkio cgroup controller")?;
    cluster.form(1, 1).await?;
    let active = cluster.active().await?;
    cluster.nodes[active].api().mount_kv("kv", 2).await?;
    let standby = cluster.others(active)[0];

    let apis: Vec<Api> = cluster.nodes.iter().map(|n| n.api()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let workload = Arc::new(Mutex::new(Workload::default()));
    let load = tokio::spawn(run_workload(
        apis,
        "slow-disk",
        stop.clone(),
        workload.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut phases = serde_json::Map::new();
    for (phase, node) in [("standby", standby), ("active", active)] {
        let pid = cluster.nodes[node]
            .pid()
            .with_context(|| format!("{} is not running", cluster.nodes[node].id))?;
        disk.add(pid)?;
        disk.limit_writes(Some(WRITE_IOPS))?;
        let slowed = Instant::now();
        eprintln!(
            "{} ({phase}): writes limited to {WRITE_IOPS} a second on {}",
            cluster.nodes[node].id, disk.device
        );
        tokio::time::sleep(SLOW_FOR).await;
        disk.limit_writes(None)?;
        let acked = acked_since(&workload, slowed);
        let roles = cluster.roles().await;
        eprintln!(
            "{} ({phase}) slow for {SLOW_FOR:?}: {acked} writes acknowledged meanwhile; active now: {:?}",
            cluster.nodes[node].id, roles.active
        );
        phases.insert(format!("acked_while_{phase}_slow"), json!(acked));
        cluster
            .wait_roles(&format!("after the {phase}'s disk is fast again"))
            .await?;
        cluster.wait_caught_up().await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::SeqCst);
    load.await.context("the workload task")?;
    let w = std::mem::take(&mut *workload.lock().expect("workload lock"));
    let acknowledged: Vec<(String, Value)> = w
        .acknowledged
        .iter()
        .map(|(k, v, _)| (k.clone(), v.clone()))
        .collect();
    let gap = w
        .acknowledged
        .windows(2)
        .map(|p| p[1].2 - p[0].2)
        .max()
        .unwrap_or_default();
    let lost = every_node_holds(&mut cluster, &acknowledged).await?;
    eprintln!(
        "slow disks: {} operations, {} failed, {} acknowledged, {lost} lost; longest gap {gap:?}",
        w.operations,
        w.failed,
        acknowledged.len()
    );
    anyhow::ensure!(
        lost == 0,
        "{lost} acknowledged writes are missing or different"
    );
    drop(disk);
    Figures {
        scenario: format!("slow disk ({WRITE_IOPS} writes/s), a standby then the active node"),
        rounds: 2,
        operations: w.operations,
        failed: w.failed,
        lost,
        longest_unavailability_ms: gap.as_secs_f64() * 1000.0,
        extra: phases,
    }
    .print();
    Ok(())
}
