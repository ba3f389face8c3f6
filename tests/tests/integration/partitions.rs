//! Network partitions (issue 15): a 3-node cluster with every node in a network namespace of
//! its own (`keyhold_tests::nshost::NetNs`), joined by a bridge of the test's, under a workload
//! of the test's own client that records every acknowledged write. A node is cut off from its
//! peers (blackhole routes on both sides; the test's client, on the bridge's own address,
//! still reaches it) and healed:
//!
//! - the cut-off node serves no write and no read: a standby has nobody to forward to, and an
//!   active node stops acting as active once its lease on a quorum has lapsed (the time from
//!   the cut to the last read it served is measured and printed: the stale-leader bound);
//! - the majority elects (when it lost its leader) and serves;
//! - after healing, the cut-off node catches up, and every acknowledged write is in every
//!   node's own store (the stores are opened after the cluster stops and compared).
//!
//! Needs root (namespaces, links, routes): without it, or without `ip`/`nsenter`, the test fails
//! and says why. Prints a `chaos-figures:` line for `tests/chaos/run`; nothing asserts on time.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use keyhold::physical::sled_store::SledStore;
use keyhold_tests::nshost::{Bridge, NetNs};
use keyhold_tests::{slow_tests_enabled, Api, Cluster, NodeOptions};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::chaos::Figures;

// Bridge slots (see `Bridge::create`): 61-64 are `ssh_hosts`', 70-73 this module's.
const SLOT_ONE_ROUND: u8 = 70;
const SLOT_SLOW: u8 = 71;
const SLOT_STANDBY_READS: u8 = 72;
const SLOT_STALE_BRIDGE: u8 = 73;

/// The staleness bound of standby reads in these clusters: `performance_multiplier = 1` makes
/// the default (the Raft election timeout) 1 s.
const STANDBY_READ_BOUND: Duration = Duration::from_secs(1);

/// The API port inside every namespace (each has its own address, so all use the same one).
const PORT: u16 = 8200;

/// How long a client waits for one answer: a node cut off from its peers may hold a request
/// until its own timeouts fire, and a client that retries elsewhere must not wait for that.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Fails, saying why, when this machine cannot make the namespaces.
fn preflight(test: &str) -> Result<()> {
    let uid = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_string))
        .context("no effective uid in /proc/self/status")?;
    ensure!(
        uid == "0",
        "{test} makes network namespaces, veth links, a bridge and routes, and needs root \
         (effective uid {uid}); CI runs as root"
    );
    for tool in ["ip", "nsenter"] {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .any(|dir| dir.join(tool).is_file());
        ensure!(
            found,
            "{test} needs `{tool}` (iproute2, util-linux); scripts/test installs them"
        );
    }
    Ok(())
}

/// Three nodes, each in its namespace on the test's bridge, formed into a cluster with a KV v2
/// mount at `kv/`. Fields drop in order: the servers die before their namespaces and bridge go.
struct PartitionedCluster {
    cluster: Cluster,
    netns: Vec<NetNs>,
    addresses: Vec<Ipv4Addr>,
    _bridge: Bridge,
}

impl PartitionedCluster {
    async fn form(slot: u8) -> Result<PartitionedCluster> {
        let mut bridge = Bridge::create(slot)
            .await
            .context("create the test's bridge (does this kernel have bridge and veth?)")?;
        let mut netns = Vec::new();
        let mut addresses = Vec::new();
        for n in 0..3u8 {
            let ns = NetNs::create(slot, n + 1)
                .await
                .context("create a network namespace (ip netns add)")?;
            addresses.push(bridge.attach_netns(&ns, n + 2).await?);
            netns.push(ns);
        }
        let at: Vec<(Ipv4Addr, u16)> = addresses.iter().map(|a| (*a, PORT)).collect();
        let mut cluster = Cluster::prepare_ha_at(&at, NodeOptions::default())?;
        for (node, ns) in cluster.nodes.iter_mut().zip(&netns) {
            node.set_netns(ns.path());
        }
        cluster.form(1, 1).await?;
        cluster.nodes[0].api().mount_kv("kv", 2).await?;
        Ok(PartitionedCluster {
            cluster,
            netns,
            addresses,
            _bridge: bridge,
        })
    }

    fn peers_of(&self, victim: usize) -> Vec<Ipv4Addr> {
        (0..self.addresses.len())
            .filter(|&i| i != victim)
            .map(|i| self.addresses[i])
            .collect()
    }

    /// Cuts `victim` off from the other nodes, in both directions.
    async fn cut(&self, victim: usize) -> Result<()> {
        self.netns[victim].cut_off(&self.peers_of(victim)).await?;
        for i in (0..self.netns.len()).filter(|&i| i != victim) {
            self.netns[i].cut_off(&[self.addresses[victim]]).await?;
        }
        Ok(())
    }

    async fn heal(&self, victim: usize) -> Result<()> {
        self.netns[victim].heal(&self.peers_of(victim)).await?;
        for i in (0..self.netns.len()).filter(|&i| i != victim) {
            self.netns[i].heal(&[self.addresses[victim]]).await?;
        }
        Ok(())
    }
}

/// What one request came back with: a status, or nothing within [`REQUEST_TIMEOUT`].
pub(crate) async fn send(
    api: &Api,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> Option<(u16, Value)> {
    let mut req = api
        .http()
        .request(method, api.url(path))
        .timeout(REQUEST_TIMEOUT);
    if let Some(token) = api.token() {
        req = req.header("X-Vault-Token", token);
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    let resp = req.send().await.ok()?;
    let status = resp.status().as_u16();
    let json = resp.json::<Value>().await.unwrap_or(Value::Null);
    Some((status, json))
}

/// The workload: one key after another (`PREFIX/k-N` = `{"v": "value-N"}`), each tried on
/// the nodes in turn (a client that retries elsewhere, as Vault clients given several
/// addresses do), at most two passes over the nodes per key. Every acknowledged write is
/// recorded with the time of its acknowledgement.
#[derive(Default)]
pub(crate) struct Workload {
    pub(crate) acknowledged: Vec<(String, Value, Instant)>,
    pub(crate) operations: u64,
    pub(crate) failed: u64,
}

pub(crate) async fn run_workload(
    apis: Vec<Api>,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
    into: Arc<Mutex<Workload>>,
) {
    let mut next_node = 0usize;
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        seq += 1;
        let key = format!("{prefix}/k-{seq}");
        let value = json!({ "v": format!("value-{seq}") });
        let body = json!({ "data": value });
        let mut acked = false;
        for _ in 0..(2 * apis.len()) {
            let api = &apis[next_node % apis.len()];
            next_node += 1;
            if let Some((status, _)) = send(
                api,
                reqwest::Method::POST,
                &format!("kv/data/{key}"),
                Some(&body),
            )
            .await
            {
                if (200..300).contains(&status) {
                    acked = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        {
            let mut w = into.lock().expect("workload lock");
            w.operations += 1;
            if acked {
                w.acknowledged.push((key, value, Instant::now()));
            } else {
                w.failed += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

/// What one partition round measured.
struct Round {
    victim_was_active: bool,
    /// From the cut to the last read the cut-off node answered with data.
    last_read_after_cut: Option<Duration>,
    /// From the cut to the last time the cut-off node's `sys/health` said active (200).
    last_active_after_cut: Option<Duration>,
    /// Reads the cut-off node served after the majority had acknowledged a write of its own.
    stale_reads: u64,
    /// Writes the cut-off node acknowledged while cut off (must be 0).
    minority_writes: u64,
}

/// One round: cut `victim` off, probe it until it has refused everything for a while and the
/// majority has acknowledged writes, keep the partition a little longer, heal, and wait until
/// every node applied what the active node committed.
async fn partition_round(
    pc: &PartitionedCluster,
    victim: usize,
    workload: &Arc<Mutex<Workload>>,
) -> Result<Round> {
    let victim_api = pc.cluster.nodes[victim].api();
    let probe_key = {
        let w = workload.lock().expect("workload lock");
        w.acknowledged
            .last()
            .map(|(k, _, _)| k.clone())
            .context("the workload acknowledged nothing before the partition")?
    };
    let victim_was_active = pc.cluster.nodes[victim].health_code().await == Some(200);
    let acked_before = workload.lock().expect("workload lock").acknowledged.len();
    pc.cut(victim).await?;
    let cut_at = Instant::now();
    eprintln!(
        "cut off {} (active: {victim_was_active})",
        pc.cluster.nodes[victim].id
    );

    let mut round = Round {
        victim_was_active,
        last_read_after_cut: None,
        last_active_after_cut: None,
        stale_reads: 0,
        minority_writes: 0,
    };
    // Bounded: 400 probes (each at most REQUEST_TIMEOUT). Done once the cut-off node has
    // refused 20 probes in a row and the majority has acknowledged at least 20 writes.
    let mut refused_in_a_row = 0;
    let mut majority_acked_at: Option<Instant> = None;
    let mut probe = 0u64;
    for _ in 0..400 {
        probe += 1;
        let now = Instant::now();
        let read = send(
            &victim_api,
            reqwest::Method::GET,
            &format!("kv/data/{probe_key}"),
            None,
        )
        .await;
        let served = matches!(&read, Some((200, body)) if body["data"]["data"].is_object());
        if served {
            round.last_read_after_cut = Some(now - cut_at);
            // A standby serves reads from its replica for up to its staleness bound after it
            // last heard from the leader (by design, as Vault's performance standbys do); past
            // the bound (plus a margin for the probe itself) a read there is a stale read.
            let allowed = if victim_was_active {
                Duration::ZERO
            } else {
                STANDBY_READ_BOUND + REQUEST_TIMEOUT
            };
            if majority_acked_at.is_some_and(|t| t <= now) && now - cut_at > allowed {
                round.stale_reads += 1;
            }
            refused_in_a_row = 0;
        } else {
            refused_in_a_row += 1;
        }
        if let Some((200, _)) = send(&victim_api, reqwest::Method::GET, "sys/health", None).await {
            round.last_active_after_cut = Some(now - cut_at);
        }
        if probe.is_multiple_of(10) {
            // A write through the cut-off node must never be acknowledged: it cannot reach a
            // quorum.
            let key = format!("partition/minority-{victim}-{probe}");
            let body = json!({ "data": { "v": "minority" } });
            if let Some((status, _)) = send(
                &victim_api,
                reqwest::Method::POST,
                &format!("kv/data/{key}"),
                Some(&body),
            )
            .await
            {
                if (200..300).contains(&status) {
                    round.minority_writes += 1;
                }
            }
        }
        let acked = {
            let w = workload.lock().expect("workload lock");
            let after: Vec<Instant> = w.acknowledged[acked_before..]
                .iter()
                .map(|(_, _, t)| *t)
                .filter(|t| *t > cut_at)
                .collect();
            if majority_acked_at.is_none() {
                majority_acked_at = after.first().copied();
            }
            after.len()
        };
        if refused_in_a_row >= 20 && acked >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(
        refused_in_a_row >= 20,
        "{} still served reads after {probe} probes while cut off (last read {:?} after the cut)\n{}",
        pc.cluster.nodes[victim].id,
        round.last_read_after_cut,
        pc.cluster.log_tails(20)
    );
    ensure!(
        majority_acked_at.is_some(),
        "the majority acknowledged no write while {} was cut off\n{}",
        pc.cluster.nodes[victim].id,
        pc.cluster.log_tails(20)
    );
    pc.heal(victim).await?;
    eprintln!("healed {}", pc.cluster.nodes[victim].id);
    pc.cluster.wait_roles("after healing").await?;
    pc.cluster.wait_caught_up().await?;
    Ok(round)
}

/// Every acknowledged write (a key of the KV v2 mount `kv/` and its value) reads back through
/// the active node; then the cluster stops and every node's own store holds the same `kv/`
/// ciphertexts, with a version of every acknowledged key. Returns how many did not read back.
pub(crate) async fn every_node_holds(
    cluster: &mut Cluster,
    acknowledged: &[(String, Value)],
) -> Result<u64> {
    let active = cluster.wait_roles("before the check").await?;
    let api = cluster.nodes[active].api();
    let mut lost = 0;
    for (key, value) in acknowledged {
        if api.kv2_get("kv", key).await?.as_ref() != Some(value) {
            lost += 1;
        }
    }
    let mounts = api.get("sys/mounts").await?.expect(200, "sys/mounts")?;
    let uuid = mounts.json["data"]["kv/"]["uuid"]
        .as_str()
        .with_context(|| format!("no uuid for kv/ in {}", mounts.text))?
        .to_string();
    cluster.wait_caught_up().await?;
    cluster.stop_all().await?;
    let prefix = format!("logical/{uuid}/");
    let versions_of = format!("{prefix}versions/");
    let keys: BTreeSet<&str> = acknowledged.iter().map(|(k, _)| k.as_str()).collect();
    let mut first: Option<(String, BTreeMap<String, Vec<u8>>)> = None;
    for node in &cluster.nodes {
        let store = SledStore::open(&node.data_dir)
            .with_context(|| format!("open the store of {}", node.id))?;
        let kv: BTreeMap<String, Vec<u8>> = store
            .export()?
            .into_iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .collect();
        drop(store);
        // `versions/<path>/<n>`: the keys with a version on this node's disk.
        let held: BTreeSet<&str> = kv
            .keys()
            .filter_map(|k| k.strip_prefix(&versions_of))
            .filter_map(|v| v.rsplit_once('/').map(|(path, _)| path))
            .filter(|path| keys.contains(path))
            .collect();
        ensure!(
            held.len() == keys.len(),
            "{} holds a version of {} of the {} acknowledged keys",
            node.id,
            held.len(),
            keys.len()
        );
        match &first {
            None => first = Some((node.id.clone(), kv)),
            Some((other, theirs)) => {
                let differ: Vec<&String> = kv
                    .keys()
                    .chain(theirs.keys())
                    .filter(|k| kv.get(*k) != theirs.get(*k))
                    .take(10)
                    .collect();
                ensure!(
                    differ.is_empty(),
                    "the stores of {} and {other} differ under kv/, first keys: {differ:?}",
                    node.id
                );
            }
        }
    }
    Ok(lost)
}

async fn partitions(test: &str, scenario: &str, slot: u8, rounds: u32) -> Result<Figures> {
    preflight(test)?;
    let seed = std::env::var("KEYHOLD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test} seed: KEYHOLD_TEST_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut pc = PartitionedCluster::form(slot).await?;
    let apis: Vec<Api> = pc.cluster.nodes.iter().map(|n| n.api()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let workload = Arc::new(Mutex::new(Workload::default()));
    let load = tokio::spawn(run_workload(
        apis,
        "partition",
        stop.clone(),
        workload.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut measured = Vec::new();
    for round in 0..rounds {
        let active = pc.cluster.wait_roles(&format!("round {round}")).await?;
        // The active node first (the stale-leader case), then a random node.
        let victim = if round == 0 {
            active
        } else {
            rng.gen_range(0..3)
        };
        let r = partition_round(&pc, victim, &workload).await?;
        eprintln!(
            "round {round}: {} cut off (was active: {}); last read it served {:?} after the cut, \
             last health 200 {:?} after; stale reads {}, writes it acknowledged {}",
            pc.cluster.nodes[victim].id,
            r.victim_was_active,
            r.last_read_after_cut,
            r.last_active_after_cut,
            r.stale_reads,
            r.minority_writes
        );
        measured.push(r);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2000))).await;
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
    let lost = every_node_holds(&mut pc.cluster, &acknowledged).await?;
    let stale_reads: u64 = measured.iter().map(|r| r.stale_reads).sum();
    let minority_writes: u64 = measured.iter().map(|r| r.minority_writes).sum();
    let leader_bound = measured
        .iter()
        .filter(|r| r.victim_was_active)
        .filter_map(|r| r.last_read_after_cut.max(r.last_active_after_cut))
        .max();
    let standby_reads = measured
        .iter()
        .filter(|r| !r.victim_was_active)
        .filter_map(|r| r.last_read_after_cut)
        .max();
    eprintln!(
        "{scenario}: {} operations, {} failed, {} acknowledged, {lost} lost; longest gap between \
         acknowledged writes {gap:?}; a cut-off active node served reads or said active for at \
         most {leader_bound:?} after the cut; a cut-off standby served its last read \
         {standby_reads:?} after; stale reads {stale_reads}; writes acknowledged by a cut-off \
         node {minority_writes}",
        w.operations,
        w.failed,
        acknowledged.len()
    );
    ensure!(
        lost == 0,
        "{lost} acknowledged writes are missing or different"
    );
    ensure!(
        stale_reads == 0 && minority_writes == 0,
        "a cut-off node served {stale_reads} reads after the majority had moved on and \
         acknowledged {minority_writes} writes"
    );
    if acknowledged.is_empty() {
        bail!("the workload acknowledged no write");
    }
    let mut figures = Figures {
        scenario: scenario.to_string(),
        rounds,
        operations: w.operations,
        failed: w.failed,
        lost,
        longest_unavailability_ms: gap.as_secs_f64() * 1000.0,
        extra: serde_json::Map::new(),
    };
    figures.extra.insert(
        "stale_leader_ms".into(),
        json!(leader_bound.map(|d| d.as_millis() as u64)),
    );
    figures
        .extra
        .insert("stale_reads".into(), json!(stale_reads));
    Ok(figures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_of_the_active_node_heals_without_loss() -> Result<()> {
    partitions(
        "partition_of_the_active_node_heals_without_loss",
        "partition, 3 nodes (active cut off)",
        SLOT_ONE_ROUND,
        1,
    )
    .await?
    .print();
    Ok(())
}

/// Slow tier: more rounds, the active node first, then a random node each round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_partitions_of_random_nodes_heal_without_loss() -> Result<()> {
    const TEST: &str = "slow_partitions_of_random_nodes_heal_without_loss";
    if !slow_tests_enabled(TEST) {
        return Ok(());
    }
    partitions(TEST, "partitions, 3 nodes, long", SLOT_SLOW, 6)
        .await?
        .print();
    Ok(())
}

/// A standby cut off from the leader serves reads from its replica only until its staleness
/// bound has passed since it last heard from the leader; then it forwards, and with nobody to
/// forward to it answers nothing: never the old value of a key the majority has changed since.
/// A read carrying the `X-Vault-Index` of such a change is never answered with the old value
/// either (412, or no answer). The time from the cut to the last read the standby served is
/// printed; nothing asserts on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_standby_stops_serving_reads_after_its_bound() -> Result<()> {
    const TEST: &str = "a_cut_off_standby_stops_serving_reads_after_its_bound";
    preflight(TEST)?;
    let pc = PartitionedCluster::form(SLOT_STANDBY_READS).await?;
    let active = pc.cluster.wait_roles("before the cut").await?;
    let victim = (active + 1) % 3;
    let majority: Vec<Api> = (0..3)
        .filter(|&i| i != victim)
        .map(|i| pc.cluster.nodes[i].api().without_session())
        .collect();
    let victim_api = pc.cluster.nodes[victim].api().without_session();
    let write = |value: &'static str| {
        let majority = majority.clone();
        async move {
            for api in majority.iter().cycle().take(20) {
                let body = json!({ "data": { "v": value } });
                let mut req = api
                    .http()
                    .post(api.url("kv/data/probe"))
                    .timeout(REQUEST_TIMEOUT)
                    .json(&body);
                if let Some(token) = api.token() {
                    req = req.header("X-Vault-Token", token);
                }
                if let Ok(resp) = req.send().await {
                    if resp.status().is_success() {
                        return resp
                            .headers()
                            .get("x-vault-index")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                            .context("a write's answer has no X-Vault-Index");
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            bail!("the majority acknowledged no write of {value:?}")
        }
    };
    let read_on_victim = move |headers: Vec<(&'static str, String)>| {
        let api = victim_api.clone();
        async move {
            let mut req = api
                .http()
                .get(api.url("kv/data/probe"))
                .timeout(REQUEST_TIMEOUT);
            if let Some(token) = api.token() {
                req = req.header("X-Vault-Token", token);
            }
            for (name, value) in headers {
                req = req.header(name, value);
            }
            let resp = req.send().await.ok()?;
            let status = resp.status().as_u16();
            let body = resp.json::<Value>().await.unwrap_or(Value::Null);
            Some((
                status,
                body["data"]["data"]["v"].as_str().map(str::to_string),
            ))
        }
    };

    // Before the cut the standby serves the current value itself.
    let index = write("before").await?;
    let got = read_on_victim(vec![("X-Vault-Index", index)]).await;
    ensure!(
        matches!(&got, Some((200, Some(v))) if v == "before"),
        "before the cut the standby read {got:?}"
    );

    pc.cut(victim).await?;
    let cut_at = Instant::now();
    // The majority moves on at once: from now on "before" is stale.
    let index_after = write("after").await?;
    let changed_at = cut_at.elapsed();
    // Reads carrying the change's index, beside the plain probes (each may wait out
    // `standby_read_index_wait`): never the old value.
    let index_probes = {
        let read_on_victim = read_on_victim.clone();
        let index_after = index_after.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for round in 0..4 {
                for mode in ["fail", "forward-active-node"] {
                    let at = cut_at.elapsed();
                    let got = read_on_victim(vec![
                        ("X-Vault-Index", index_after.clone()),
                        ("X-Vault-Inconsistent", mode.to_string()),
                    ])
                    .await;
                    seen.push((at, mode, got));
                }
                if round < 3 {
                    tokio::time::sleep(Duration::from_millis(700)).await;
                }
            }
            seen
        })
    };
    // Bounded: at most 60 probes 100 ms apart (plus each probe's own timeout).
    let mut last_served: Option<Duration> = None;
    let mut stale_past_bound = Vec::new();
    for _ in 0..60 {
        let at = cut_at.elapsed();
        let got = read_on_victim(Vec::new()).await;
        if let Some((200, Some(value))) = &got {
            last_served = Some(at);
            if value == "before" && at > STANDBY_READ_BOUND + REQUEST_TIMEOUT {
                stale_past_bound.push(format!("{at:?}: {value}"));
            }
        }
        if at > STANDBY_READ_BOUND + 2 * REQUEST_TIMEOUT
            && last_served.is_none_or(|l| at - l > REQUEST_TIMEOUT)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let index_probes = index_probes.await.context("the index probes")?;
    for (at, mode, got) in &index_probes {
        ensure!(
            !matches!(got, Some((200, Some(v))) if v == "before"),
            "the cut-off standby answered a read carrying the change's X-Vault-Index with the \
             old value ({mode}, {at:?} after the cut)"
        );
    }
    let with_index: Vec<String> = index_probes
        .iter()
        .map(|(at, mode, got)| format!("{at:?} {mode}: {got:?}"))
        .collect();
    eprintln!(
        "a cut-off standby: the majority changed the key {changed_at:?} after the cut; the \
         standby served its last read {last_served:?} after the cut (bound {STANDBY_READ_BOUND:?}); \
         reads with the change's index: {with_index:?}"
    );
    ensure!(
        stale_past_bound.is_empty(),
        "the cut-off standby served the old value past its bound: {stale_past_bound:?}\n{}",
        pc.cluster.log_tails(20)
    );
    let final_read = read_on_victim(Vec::new()).await;
    ensure!(
        !matches!(&final_read, Some((200, _))),
        "the cut-off standby still serves reads {:?} after the cut: {final_read:?}",
        cut_at.elapsed()
    );

    pc.heal(victim).await?;
    pc.cluster.wait_roles("after healing").await?;
    // Healed, it serves the current value again (read-your-writes through the index).
    let mut healed = None;
    for _ in 0..50 {
        healed = read_on_victim(vec![("X-Vault-Index", index_after.clone())]).await;
        if matches!(&healed, Some((200, _))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(
        matches!(&healed, Some((200, Some(v))) if v == "after"),
        "after healing the standby read {healed:?}"
    );
    Ok(())
}

/// `ip ARGS`; whether it succeeded.
fn ip(args: &[&str]) -> Result<bool> {
    Ok(std::process::Command::new("ip")
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()?
        .success())
}

/// A bridge named as a test bridge of process `id`, holding `address`, up.
fn leftover_bridge(name: &str, address: &str) -> Result<()> {
    let _ = ip(&["link", "del", name])?;
    ensure!(
        ip(&["link", "add", name, "type", "bridge"])?,
        "ip link add {name}"
    );
    ensure!(
        ip(&["addr", "add", address, "dev", name])?,
        "ip addr add {address} dev {name}"
    );
    ensure!(ip(&["link", "set", name, "up"])?, "ip link set {name} up");
    Ok(())
}

/// A bridge an interrupted run left on the /24 this process's bridge takes (a process gone,
/// with another pid but the same pid modulo 100) is deleted before the new bridge is made: the
/// host would route that /24 to the dead bridge, and every namespace's SSH or API address
/// would answer "No route to host" (which failed `ssh_hosts` once in CI). One whose owner runs
/// is refused, saying so.
#[tokio::test]
async fn a_bridge_left_on_the_same_subnet_is_cleared_only_when_its_process_is_gone() -> Result<()> {
    preflight("a_bridge_left_on_the_same_subnet_is_cleared_only_when_its_process_is_gone")?;
    let id = std::process::id() % 100_000;
    let address = format!("10.{}.{SLOT_STALE_BRIDGE}.1/24", 100 + id % 100);
    let running_pids: Vec<u32> = std::fs::read_dir("/proc")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    // A name no running process can own: another id with the same last two digits.
    let dead = (1..1000u32)
        .map(|k| (id % 100 + 100 * k) % 100_000)
        .find(|d| *d != id && !running_pids.iter().any(|p| p % 100_000 == *d))
        .context("an id no running process has")?;
    let live = format!("khb1s{SLOT_STALE_BRIDGE}");
    let stale = format!("khb{dead}s{SLOT_STALE_BRIDGE}");

    // pid 1 runs: its bridge stays, and this test's bridge is refused.
    leftover_bridge(&live, &address)?;
    let refused = Bridge::create(SLOT_STALE_BRIDGE).await;
    let _ = ip(&["link", "del", &live])?;
    let err = match refused {
        Ok(_) => anyhow::bail!("a bridge on a live process's /24 must be refused"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains(&live) && err.contains("its owner is running"),
        "{err}"
    );

    leftover_bridge(&stale, &address)?;
    let bridge = Bridge::create(SLOT_STALE_BRIDGE).await;
    let stale_left = ip(&["link", "show", &stale])?;
    let _ = ip(&["link", "del", &stale])?;
    let bridge = bridge.context("a dead run's bridge on the same /24 is cleared first")?;
    ensure!(!stale_left, "{stale} was left in place");
    ensure!(
        bridge.gateway().to_string() == address.trim_end_matches("/24"),
        "the new bridge holds {address}"
    );
    Ok(())
}
