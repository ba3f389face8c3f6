//! Clock jumps (issue 15): one node's wall clock jumps an hour ahead while the partition tests'
//! retrying client writes through every node, first a standby's, then the active node's, and
//! then the active node's jumps back.
//!
//! A process's `CLOCK_REALTIME` cannot be moved alone by a namespace (time namespaces offset
//! only the monotonic and boot clocks, and only before the first process enters), but `keyhold`
//! is linked dynamically against glibc, so Debian's libfaketime, preloaded, moves the wall
//! clock of the one server it is preloaded into. Its offset is read from a file of the node's
//! (re-read every second) so the clock jumps while the server runs; the monotonic clock, which
//! Raft's timers, the leader lease and every timeout use, is left alone
//! (`FAKETIME_DONT_FAKE_MONOTONIC=1`).
//!
//! What must hold, and what is measured:
//! - a standby's jump changes nothing a client sees: tokens keep their TTL through it (the
//!   active node's clock counts: a standby serving reads judges expiry by the leader's time
//!   its appends carry, advanced by its own monotonic clock), and no write is lost;
//! - an active node's jump moves token expiry with it, as in Vault (token TTLs follow the active
//!   node's wall clock): a token with less time left than the jump is expired and revoked, one
//!   with more has an hour less; when the clock jumps back, the revoked token stays revoked and
//!   the other has its time back; Raft does not notice (the leader stays the leader);
//! - every acknowledged write is in every node's own store at the end.
//!
//! Needs libfaketime (`scripts/test` installs it): without it the test fails and says so.
//! Prints a `chaos-figures:` line for `tests/chaos/run`; nothing asserts on elapsed time (the
//! TTL comparisons are about the fake clock's hour, far beyond what the test takes).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use keyhold_tests::{Api, Cluster, NodeOptions};
use serde_json::{json, Value};

use super::chaos::Figures;
use super::partitions::{every_node_holds, run_workload, Workload};
use super::standby_reads::served_locally;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The jump: an hour, far more than the test runs, so TTL differences cannot come from time
/// that really passed.
const JUMP_SECS: i64 = 3600;

/// Writes `secs` (libfaketime's `+Ns` form) into a node's offset `file`, then waits (bounded:
/// 50 polls) until the node behind `api` says, through `sys/health`'s `server_time_utc`, that
/// its clock moved (libfaketime re-reads the file every second).
async fn set_offset(api: &Api, file: &Path, secs: i64) -> Result<()> {
    std::fs::write(file, format!("{secs:+}s\n"))
        .with_context(|| format!("write {}", file.display()))?;
    let now = || chrono::Utc::now().timestamp();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let health = api.get("sys/health").await?;
        if let Some(server) = health.json["server_time_utc"].as_i64() {
            // Within a minute of the wanted offset: the clock moved (the jump is an hour).
            if (server - now() - secs).abs() < 60 {
                return Ok(());
            }
        }
    }
    anyhow::bail!(
        "the node's clock did not move to {secs:+} s within 50 polls (is libfaketime preloaded?)"
    )
}

/// The token's `ttl` (seconds left) as `via` answers `auth/token/lookup-self`, or the refusal.
async fn ttl(via: &Api, token: &str) -> Result<std::result::Result<i64, u16>> {
    let resp = via
        .with_token(Some(token))
        .get("auth/token/lookup-self")
        .await?;
    if !resp.status.is_success() {
        return Ok(Err(resp.status.as_u16()));
    }
    resp.json["data"]["ttl"]
        .as_i64()
        .map(Ok)
        .with_context(|| format!("no data.ttl in {}", resp.text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_jumps_move_token_expiry_only_on_the_active_node_and_lose_nothing() -> Result<()> {
    ensure!(
        Path::new(LIBFAKETIME).is_file(),
        "the clock-jump test preloads Debian's libfaketime ({LIBFAKETIME}) into one server to \
         move its wall clock; scripts/test installs it (apt-get install libfaketime)"
    );
    let mut cluster = Cluster::prepare_ha(3, NodeOptions::default())?;
    let mut clocks: Vec<PathBuf> = Vec::new();
    for node in &mut cluster.nodes {
        let file = node.dir.join("clock-offset");
        std::fs::write(&file, "+0s\n")?;
        node.options.env.extend([
            ("LD_PRELOAD".to_string(), LIBFAKETIME.to_string()),
            (
                "FAKETIME_TIMESTAMP_FILE".to_string(),
                file.display().to_string(),
            ),
            ("FAKETIME_CACHE_DURATION".to_string(), "1".to_string()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
        ]);
        clocks.push(file);
    }
    cluster.form(1, 1).await?;
    let active = cluster.active().await?;
    let standby = cluster.others(active)[0];
    let root = cluster.nodes[active].api();
    root.mount_kv("kv", 2).await?;
    let long = root.create_token(json!({"ttl": "4h"})).await?;
    let short = root.create_token(json!({"ttl": "30m"})).await?;
    let (via_active, via_standby) = (cluster.nodes[active].api(), cluster.nodes[standby].api());
    let long_before = ttl(&via_active, &long)
        .await?
        .map_err(|s| anyhow::anyhow!("lookup-self of a fresh token: {s}"))?;

    let apis: Vec<Api> = cluster.nodes.iter().map(|n| n.api()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let workload = Arc::new(Mutex::new(Workload::default()));
    let load = tokio::spawn(run_workload(
        apis,
        "clock-jump",
        stop.clone(),
        workload.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut notes = serde_json::Map::new();

    // A standby an hour ahead: nothing changes for a client.
    set_offset(&via_standby, &clocks[standby], JUMP_SECS).await?;
    let served_before = served_locally(&via_standby).await?;
    let long_standby_jumped = ttl(&via_standby, &long).await?;
    let short_standby_jumped = ttl(&via_standby, &short).await?;
    let served = served_locally(&via_standby).await? - served_before;
    eprintln!(
        "{} an hour ahead: long token ttl {long_standby_jumped:?} (was {long_before}), short \
         {short_standby_jumped:?}; {served} of the 2 lookups served by the standby itself",
        cluster.nodes[standby].id
    );
    // The workload only writes (forwarded): the standby served the lookups itself, judging
    // expiry by the active node's clock, not forwarded them.
    ensure!(
        served >= 2,
        "the standby forwarded the token lookups instead of serving them ({served} served)"
    );
    ensure!(
        long_standby_jumped.is_ok_and(|t| (long_before - t).abs() < 600)
            && short_standby_jumped.is_ok(),
        "a standby's clock jump changed token TTLs: long {long_standby_jumped:?} (was \
         {long_before}), short {short_standby_jumped:?}"
    );
    set_offset(&via_standby, &clocks[standby], 0).await?;

    // The active node an hour ahead: expiry follows its clock.
    set_offset(&via_active, &clocks[active], JUMP_SECS).await?;
    // The standby learns the active node's time from its next append (a heartbeat at most
    // away): bounded polling, until its answer moved.
    let mut long_active_jumped = ttl(&via_standby, &long).await?;
    for _ in 0..20 {
        if long_active_jumped.is_ok_and(|t| (long_before - JUMP_SECS - t).abs() < 600) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        long_active_jumped = ttl(&via_standby, &long).await?;
    }
    let short_active_jumped = ttl(&via_standby, &short).await?;
    eprintln!(
        "{} (active) an hour ahead: long token ttl {long_active_jumped:?}, short \
         {short_active_jumped:?}",
        cluster.nodes[active].id
    );
    ensure!(
        long_active_jumped.is_ok_and(|t| (long_before - JUMP_SECS - t).abs() < 600),
        "after the active node's clock jumped an hour ahead the 4 h token's TTL is \
         {long_active_jumped:?} (was {long_before})"
    );
    ensure!(
        short_active_jumped.is_err(),
        "a 30 min token is still valid an hour later by the active node's clock: \
         {short_active_jumped:?}"
    );
    // And back: the long token has its hour again, the expired one stays revoked.
    set_offset(&via_active, &clocks[active], 0).await?;
    let mut long_back = ttl(&via_standby, &long).await?;
    for _ in 0..20 {
        if long_back.is_ok_and(|t| (long_before - t).abs() < 600) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        long_back = ttl(&via_standby, &long).await?;
    }
    let short_back = ttl(&via_standby, &short).await?;
    eprintln!("clock back: long token ttl {long_back:?}, short {short_back:?}");
    ensure!(
        long_back.is_ok_and(|t| (long_before - t).abs() < 600) && short_back.is_err(),
        "after the clock jumped back: long {long_back:?} (was {long_before}), short {short_back:?}"
    );
    let still_active = cluster.active().await?;
    notes.insert("leader_unchanged".into(), json!(still_active == active));
    notes.insert(
        "short_token_revoked_by_jump".into(),
        json!(short_back.is_err()),
    );

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
        "clock jumps: {} operations, {} failed, {} acknowledged, {lost} lost; longest gap \
         {gap:?}; the leader {} during the jumps",
        w.operations,
        w.failed,
        acknowledged.len(),
        if still_active == active {
            "stayed"
        } else {
            "changed"
        }
    );
    ensure!(
        lost == 0,
        "{lost} acknowledged writes are missing or different"
    );
    Figures {
        scenario: "clock jump +1 h, a standby then the active node".into(),
        rounds: 2,
        operations: w.operations,
        failed: w.failed,
        lost,
        longest_unavailability_ms: gap.as_secs_f64() * 1000.0,
        extra: notes,
    }
    .print();
    Ok(())
}
