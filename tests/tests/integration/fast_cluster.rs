//! A cluster in seconds: joined nodes become voters as soon as their stabilization time ends
//! (not on autopilot's reconcile tick), and a node stopped last, with nobody left to hand
//! leadership to, exits at once. Times are printed, never asserted.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use keyhold_tests::{Cluster, NodeOptions};
use serde_json::json;

/// Three nodes with a reconcile interval far longer than any wait here: only a promotion that
/// follows the non-voter's health (not the tick) makes them voters within the harness's bounds.
fn three_nodes_with_an_idle_reconcile_tick() -> Result<Cluster> {
    let mut options = NodeOptions::default();
    options
        .extra_raft
        .push("autopilot_reconcile_interval = \"1h\"".to_string());
    Cluster::prepare_ha(3, options)
}

/// Starts, initialises node 0, sets a 1 s stabilization time, joins the others; returns how
/// long after the last join every node was a voter.
async fn form_fast(cluster: &mut Cluster) -> Result<Duration> {
    let started = Instant::now();
    cluster.start_all().await?;
    let keys = cluster.init_first(1, 1).await?;
    cluster
        .set_autopilot(0, json!({"server_stabilization_time": "1s"}))
        .await?;
    let active_at = started.elapsed();
    for i in 1..cluster.nodes.len() {
        cluster.join(i, &keys).await?;
    }
    let joined = Instant::now();
    let joined_at = started.elapsed();
    let servers = cluster.wait_voters(3, "fast formation").await?;
    let voters_after = joined.elapsed();
    ensure!(
        servers.iter().all(|s| s.voter) && servers.len() == 3,
        "expected 3 voters, got {servers:?}"
    );
    println!(
        "fast formation: node 0 active at {active_at:?}, others joined at {joined_at:?}, \
         3 voters {voters_after:?} after the last join (server_stabilization_time 1s, \
         autopilot_reconcile_interval 1h), {:?} in all",
        started.elapsed()
    );
    Ok(voters_after)
}

#[tokio::test(flavor = "multi_thread")]
async fn joined_nodes_become_voters_when_their_stabilization_time_ends() -> Result<()> {
    let mut cluster = three_nodes_with_an_idle_reconcile_tick()?;
    form_fast(&mut cluster).await?;
    let active = cluster.wait_roles("after fast formation").await?;
    let state = cluster.nodes[active]
        .api()
        .get("sys/storage/raft/autopilot/state")
        .await?
        .expect(200, "autopilot state")?;
    let voters = state.json["data"]["voters"]
        .as_array()
        .map(|v| v.len())
        .unwrap_or(0);
    ensure!(
        voters == 3 && state.json["data"]["non_voters"] == json!([]),
        "autopilot state should list 3 voters and no non-voter: {}",
        state.text
    );
    cluster.stop_all().await
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_to_the_last_node_exits_at_once_without_a_hand_over() -> Result<()> {
    let mut cluster = three_nodes_with_an_idle_reconcile_tick()?;
    form_fast(&mut cluster).await?;
    let active = cluster.wait_roles("before the stop").await?;
    // The standbys first, as a whole-cluster stop may: the active node is left with voters
    // that no longer answer.
    for i in cluster.others(active) {
        let status = cluster.nodes[i].sigterm().await?;
        ensure!(status.success(), "standby {i} exited with {status}");
    }
    let stopping = Instant::now();
    let status = cluster.nodes[active].sigterm().await?;
    let took = stopping.elapsed();
    println!("the last node exited {took:?} after SIGTERM (status {status})");
    ensure!(
        status.code() == Some(0),
        "the last node should exit with code 0 on SIGTERM, got {status}; log:\n{}",
        cluster.nodes[active].log_tail(30)
    );
    let log = cluster.nodes[active].log();
    ensure!(
        log.contains("no other voter answers: stopping without handing leadership over"),
        "the last node should have skipped the hand-over; log:\n{}",
        cluster.nodes[active].log_tail(30)
    );
    Ok(())
}

/// The graceful path is kept: SIGTERM to the active node while the other voters run hands
/// leadership over (it is not skipped), and another node becomes active.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_to_the_active_node_with_voters_up_still_hands_over() -> Result<()> {
    let mut cluster = three_nodes_with_an_idle_reconcile_tick()?;
    form_fast(&mut cluster).await?;
    let old = cluster.wait_roles("before the stop").await?;
    let stopping = Instant::now();
    let status = cluster.nodes[old].sigterm().await?;
    let exited = stopping.elapsed();
    ensure!(status.success(), "the active node exited with {status}");
    let new = cluster.active().await?;
    println!(
        "the active node exited {exited:?} after SIGTERM; another node was active {:?} after it",
        stopping.elapsed()
    );
    let log = cluster.nodes[old].log();
    ensure!(
        new != old && !log.contains("no other voter answers"),
        "with two voters up the hand-over must not be skipped; log:\n{}",
        cluster.nodes[old].log_tail(30)
    );
    ensure!(
        log.contains("leadership transferred"),
        "the stopped node should say it handed leadership over; log:\n{}",
        cluster.nodes[old].log_tail(30)
    );
    cluster.stop_all().await
}
