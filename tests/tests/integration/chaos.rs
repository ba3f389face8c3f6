//! The reliability harness (issue 15): faults injected into provisioned clusters while `provision
//! load` runs, every acknowledged write checked afterwards. Kill loops (`kill -9` of a random
//! node, sometimes the active one, sometimes two at once on five nodes, healed by `provision up`)
//! and full disks (the audit devices' and the data directory's file systems, small tmpfs mounts,
//! filled and freed again).
//!
//! Every scenario prints one `chaos-figures: {json}` line (rounds, operations, failed, lost,
//! longest unavailability) that `tests/chaos/run` collects into its table; nothing asserts on
//! those times. The normal tier runs a short 3-node kill loop and the disk cases; the `slow_`
//! tests run the longer loops on three and five nodes. The disk tests mount tmpfs and so need
//! root: without it they fail and say so.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use keyhold::physical::sled_store::SledStore;
use keyhold_tests::provision::{environment_hcl, loopback_base, EnvSpec, Provisioned};
use keyhold_tests::{keyhold_bin, slow_tests_enabled, Api};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

// Each test's own third octet of its loopback range (see `loopback_base`): 50-59 are this
// module's.
const SLOT_KILL_3: u8 = 50;
const SLOT_KILL_3_SLOW: u8 = 51;
const SLOT_KILL_5_SLOW: u8 = 52;
const SLOT_AUDIT_FULL: u8 = 53;
const SLOT_DATA_FULL: u8 = 54;

fn seeded_rng(test: &str) -> StdRng {
    let seed = std::env::var("KEYHOLD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test} seed: KEYHOLD_TEST_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

/// One scenario's outcome, as `tests/chaos/run` tabulates it (also used by `partitions` and
/// `damaged_stores`).
pub(crate) struct Figures {
    pub(crate) scenario: String,
    pub(crate) rounds: u32,
    pub(crate) operations: u64,
    pub(crate) failed: u64,
    pub(crate) lost: u64,
    /// Kill loops and partitions: the longest time between two acknowledged writes. Full
    /// disks: from the moment space returned to the first request served again (no operator
    /// in between).
    pub(crate) longest_unavailability_ms: f64,
    /// Figures of the scenario's own (`stale_leader_ms`, `whole`, ...), printed beside the
    /// others; `tests/chaos/run` lists them in its notes column.
    pub(crate) extra: serde_json::Map<String, Value>,
}

impl Figures {
    pub(crate) fn print(&self) {
        let mut figures = json!({
            "scenario": self.scenario,
            "rounds": self.rounds,
            "operations": self.operations,
            "failed": self.failed,
            "lost": self.lost,
            "longest_unavailability_ms": self.longest_unavailability_ms.round(),
        });
        if !self.extra.is_empty() {
            figures["extra"] = Value::Object(self.extra.clone());
        }
        println!("chaos-figures: {figures}");
    }
}

fn count(v: &Value, key: &str) -> Result<u64> {
    v[key]
        .as_u64()
        .with_context(|| format!("no {key} in the load report {v}"))
}

// ---------------------------------------------------------------------------------- kill loops

struct KillLoop {
    scenario: &'static str,
    /// The environment's name (lowercase, digits, '-').
    env: &'static str,
    slot: u8,
    nodes: u8,
    rounds: u32,
}

/// The nodes to kill in `round`: the active node in the first round (so every run kills it at
/// least once), then a random node; on five nodes every other round two random nodes at once,
/// which leaves a quorum of three.
fn victims(rng: &mut StdRng, nodes: u8, round: u32, active: u8) -> Vec<u8> {
    let all: Vec<u8> = (1..=nodes).collect();
    if round == 0 {
        return vec![active];
    }
    let take = if nodes >= 5 && round % 2 == 1 { 2 } else { 1 };
    let mut picked: Vec<u8> = all.choose_multiple(rng, take).copied().collect();
    picked.sort_unstable();
    picked
}

/// `provision load` runs through every round; each round SIGKILLs its victims at a random point
/// and `provision up` restarts and unseals them. Then the load is stopped (it reads back every
/// write it had acknowledged, through the active node, and compares the values) and
/// [`every_node_holds_the_writes`] checks each node's own store.
async fn kill_loop(spec: KillLoop) -> Result<Figures> {
    let mut rng = seeded_rng(spec.scenario);
    let mut p = Provisioned::new(spec.env, spec.slot, EnvSpec::nodes(spec.nodes))?;
    p.up_json().await?;
    // Bounded by the loop: SIGTERM below ends it; the duration is only a backstop.
    let load = p.spawn(&["load", "--duration", "15m", "--rate", "20", "--json"])?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for round in 0..spec.rounds {
        let roles = p.roles().await?;
        let active = roles
            .iter()
            .position(|r| r == "active")
            .with_context(|| format!("round {round}: no active node: {roles:?}"))?;
        let active = u8::try_from(active + 1)?;
        let killed = victims(&mut rng, spec.nodes, round, active);
        for n in &killed {
            p.kill9_node(*n).await?;
        }
        eprintln!("round {round}: killed {killed:?} (active: {active})");
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2500))).await;
        let healed = p.run(&["up", "--json"]).await?;
        ensure!(
            healed.code == Some(0),
            "round {round}: up did not heal the cluster after killing {killed:?}: exit {:?}\n{}\n{}",
            healed.code,
            healed.stderr,
            p.log_tails(20)
        );
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..3000))).await;
    }
    load.signal(libc::SIGTERM)?;
    let ran = load.wait().await?;
    let report = ran.json()?;
    println!(
        "{}: load through {} rounds: {report}",
        spec.scenario, spec.rounds
    );
    let (lost, verified) = (count(&report, "lost_writes")?, count(&report, "verified")?);
    ensure!(
        lost == 0 && verified > 0,
        "{}: {lost} acknowledged writes lost ({verified} verified): {report}",
        spec.scenario
    );
    every_node_holds_the_writes(&mut p, verified).await?;
    Ok(Figures {
        scenario: spec.scenario.to_string(),
        rounds: spec.rounds,
        operations: count(&report, "operations")?,
        failed: count(&report, "failures")?,
        lost,
        longest_unavailability_ms: report["longest_write_gap_ms"].as_f64().unwrap_or(f64::NAN),
        extra: Default::default(),
    })
}

/// Proves that every node holds every acknowledged write with its value. `provision load` has
/// read each one back through the active node and compared its value; here every node's Raft
/// applied index reaches the active node's commit index, the cluster is stopped, and each
/// node's own store is opened: the KV mount's keys and their ciphertexts are byte for byte the
/// same on every node, and they hold at least as many of the workload's versions as it
/// verified. So the ciphertext the active node decrypted to the acknowledged value is on
/// every disk.
async fn every_node_holds_the_writes(p: &mut Provisioned, verified: u64) -> Result<()> {
    let vars = p.env_vars().await?;
    let token = vars
        .get("VAULT_TOKEN")
        .context("provision env sets no VAULT_TOKEN")?;
    let mounts = p
        .api(1, Some(token))?
        .get("sys/mounts")
        .await?
        .expect(200, "sys/mounts")?;
    let uuid = mounts.json["data"]["kv/"]["uuid"]
        .as_str()
        .with_context(|| format!("no uuid for kv/ in {}", mounts.text))?
        .to_string();
    wait_applied_everywhere(p).await?;
    p.run(&["down"]).await?.expect(0)?;

    let prefix = format!("logical/{uuid}/");
    let workload = format!("{prefix}versions/provision-load/");
    let mut first: Option<(u8, BTreeMap<String, Vec<u8>>)> = None;
    for n in 1..=p.nodes {
        let store = SledStore::open(&data_dir(p, n))
            .with_context(|| format!("open the store of {}", p.node_name(n)))?;
        let kv: BTreeMap<String, Vec<u8>> = store
            .export()?
            .into_iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .collect();
        drop(store);
        let versions = kv.keys().filter(|k| k.starts_with(&workload)).count() as u64;
        ensure!(
            versions >= verified,
            "{} holds {versions} of the workload's versions; {verified} were acknowledged",
            p.node_name(n)
        );
        match &first {
            None => first = Some((n, kv)),
            Some((m, theirs)) => {
                let differ: Vec<&String> = kv
                    .keys()
                    .chain(theirs.keys())
                    .filter(|k| kv.get(*k) != theirs.get(*k))
                    .take(10)
                    .collect();
                ensure!(
                    differ.is_empty(),
                    "the stores of {} and {} differ under kv/, first keys: {differ:?}",
                    p.node_name(n),
                    p.node_name(*m)
                );
            }
        }
        eprintln!(
            "{}: {versions} workload versions on disk, kv/ identical to the first node",
            p.node_name(n)
        );
    }
    Ok(())
}

/// Waits (bounded) until every node's `raft_applied_index` reaches the commit index the active
/// node reports.
async fn wait_applied_everywhere(p: &Provisioned) -> Result<()> {
    let mut committed = None;
    for n in 1..=p.nodes {
        let leader = p.api(n, None)?.get("sys/leader").await?;
        if leader.json["is_self"] == json!(true) {
            committed = leader.json["raft_committed_index"].as_u64();
        }
    }
    let committed = committed.context("no node says it is the leader")?;
    for n in 1..=p.nodes {
        let mut applied = None;
        for _ in 0..300 {
            let leader = p.api(n, None)?.get("sys/leader").await?;
            applied = leader.json["raft_applied_index"].as_u64();
            if applied.is_some_and(|a| a >= committed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ensure!(
            applied.is_some_and(|a| a >= committed),
            "{} did not apply up to the commit index {committed} within 300 polls (applied {applied:?})",
            p.node_name(n)
        );
    }
    Ok(())
}

fn data_dir(p: &Provisioned, n: u8) -> PathBuf {
    p.node_dir(n).join("opt/keyhold/data")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_loop_on_three_nodes_loses_no_acknowledged_write() -> Result<()> {
    kill_loop(KillLoop {
        scenario: "kill loop, 3 nodes",
        env: "kill3",
        slot: SLOT_KILL_3,
        nodes: 3,
        rounds: 3,
    })
    .await?
    .print();
    Ok(())
}

/// Slow tier: more rounds on three nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_kill_loop_on_three_nodes_many_rounds() -> Result<()> {
    if !slow_tests_enabled("slow_kill_loop_on_three_nodes_many_rounds") {
        return Ok(());
    }
    kill_loop(KillLoop {
        scenario: "kill loop, 3 nodes, long",
        env: "kill3-long",
        slot: SLOT_KILL_3_SLOW,
        nodes: 3,
        rounds: 10,
    })
    .await?
    .print();
    Ok(())
}

/// Slow tier: five nodes, one or two killed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_kill_loop_on_five_nodes_kills_one_or_two_at_once() -> Result<()> {
    if !slow_tests_enabled("slow_kill_loop_on_five_nodes_kills_one_or_two_at_once") {
        return Ok(());
    }
    kill_loop(KillLoop {
        scenario: "kill loop, 5 nodes (1 or 2 at once)",
        env: "kill5",
        slot: SLOT_KILL_5_SLOW,
        nodes: 5,
        rounds: 8,
    })
    .await?
    .print();
    Ok(())
}

// ---------------------------------------------------------------------------------- full disks

/// Fails, saying why, unless the test runs as root (it mounts tmpfs).
fn require_root(test: &str) -> Result<()> {
    let uid = fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_string))
        .context("no effective uid in /proc/self/status")?;
    ensure!(
        uid == "0",
        "{test} mounts small tmpfs file systems to fill them and needs root (effective uid {uid})"
    );
    Ok(())
}

fn sh(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A small tmpfs mounted over a directory for one test, so that the directory can be filled.
/// Dropping it unmounts it (lazily when a process still holds a file there), so a failing test
/// leaves no mount behind.
struct Tmpfs {
    dir: PathBuf,
    mounted: bool,
}

const FILLER: &str = "chaos-filler";

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` over `dir` and copies in what `dir` held (hidden by the mount).
    fn mount_over(dir: &Path, bytes: u64) -> Result<Tmpfs> {
        fs::create_dir_all(dir)?;
        let aside = dir.with_extension("before-tmpfs");
        fs::create_dir_all(&aside)?;
        let (d, a) = (dir.display().to_string(), aside.display().to_string());
        sh("cp", &["-a", &format!("{d}/."), &a])?;
        sh(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=0700"),
                "tmpfs",
                &d,
            ],
        )?;
        let guard = Tmpfs {
            dir: dir.to_path_buf(),
            mounted: true,
        };
        sh("cp", &["-a", &format!("{a}/."), &d])?;
        fs::remove_dir_all(&aside)?;
        Ok(guard)
    }

    /// Writes a filler file until the file system says it is full; returns its size.
    fn fill(&self) -> Result<u64> {
        let path = self.dir.join(FILLER);
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        let chunk = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e).with_context(|| format!("fill {}", path.display())),
            }
        }
        eprintln!("filled {} with {total} bytes", self.dir.display());
        Ok(total)
    }

    /// Deletes the filler: the space is back.
    fn free(&self) -> Result<()> {
        fs::remove_file(self.dir.join(FILLER)).context("remove the filler")
    }

    /// Unmounts, failing if something still holds a file there.
    fn unmount(mut self) -> Result<()> {
        self.mounted = false;
        sh("umount", &[&self.dir.display().to_string()])
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if self.mounted {
            let dir = self.dir.display().to_string();
            if sh("umount", &[&dir]).is_err() {
                let _ = sh("umount", &["-l", &dir]);
            }
        }
    }
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Fails unless every line of the audit log at `path` is a whole JSON object.
fn every_line_is_json(path: &Path) -> Result<usize> {
    let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    for (i, line) in text.lines().enumerate() {
        ensure!(
            serde_json::from_str::<Value>(line).is_ok_and(|v| v.is_object()),
            "{}:{}: not a whole JSON line: {:?}",
            path.display(),
            i + 1,
            &line[..line.len().min(200)]
        );
    }
    ensure!(
        text.is_empty() || text.ends_with('\n'),
        "{} ends in a partial line",
        path.display()
    );
    Ok(text.lines().count())
}

/// A secret whose audit request line is larger than a memory page (every field is HMACed to
/// the same length), so it cannot slip into the unused end of an audit file's last page.
fn bulky_secret(tag: &str) -> Value {
    let fields: serde_json::Map<String, Value> = (0..120)
        .map(|i| (format!("field-{i:03}"), json!(format!("{tag}-value-{i}"))))
        .collect();
    Value::Object(fields)
}

/// Writes `key`, returning whether it was acknowledged, and the refusal otherwise.
async fn try_write(api: &Api, key: &str, data: Value) -> Result<std::result::Result<(), String>> {
    let resp = api.kv2_put("kv", key, data).await?;
    Ok(if resp.status.is_success() {
        Ok(())
    } else {
        Err(format!("{} {}", resp.status.as_u16(), resp.errors()))
    })
}

/// Both audit devices on tmpfs file systems of their own (`a` and `b`). With `a` full the service stays up and `b` records every request. With both full
/// every request is refused (500), a write is not carried out and a read returns no data; once
/// `b` has room again the service resumes without an operator, and `a` too once it has. Every
/// acknowledged write is there afterwards, every audit line is whole JSON, and no secret
/// value reached an audit file or the server log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_audit_disks_fail_closed_and_recover_by_themselves() -> Result<()> {
    const TEST: &str = "full_audit_disks_fail_closed_and_recover_by_themselves";
    require_root(TEST)?;
    let base = loopback_base(SLOT_AUDIT_FULL, 1)?;
    let one_device = "audit \"file\" {\n  file_path = \"audit.log\"\n}\n";
    let two_devices = "audit \"file\" {\n  path      = \"file-a\"\n  file_path = \"a/audit.log\"\n}\n\n\
                       audit \"file\" {\n  path      = \"file-b\"\n  file_path = \"b/audit.log\"\n}\n";
    let hcl = environment_hcl(&EnvSpec::nodes(1), base, &keyhold_bin()?);
    ensure!(
        hcl.contains(one_device),
        "the harness's audit block changed:\n{hcl}"
    );
    let mut p =
        Provisioned::with_text("auditfull", 1, base, &hcl.replace(one_device, two_devices))?;
    // `provision` makes the log directory but not subdirectories of it: the tmpfs mounts are
    // made first, and the devices open their files there at the first unseal.
    let log_dir = p.node_dir(1).join("var/log/keyhold");
    let (a_log, b_log) = (log_dir.join("a/audit.log"), log_dir.join("b/audit.log"));
    let a = Tmpfs::mount_over(&log_dir.join("a"), 8 << 20)?;
    let b = Tmpfs::mount_over(&log_dir.join("b"), 8 << 20)?;
    p.up_json().await?;
    let token = p.env_vars().await?["VAULT_TOKEN"].clone();
    let api = p.api(1, Some(&token))?;

    let mut operations = 0u64;
    let mut failed = 0u64;
    let mut acknowledged: Vec<(String, Value)> = Vec::new();
    for i in 0..3 {
        let key = format!("chaos/probe-{i}");
        let data = json!({ "v": format!("probe-secret-{i}") });
        operations += 1;
        try_write(&api, &key, data.clone())
            .await?
            .map_err(anyhow::Error::msg)?;
        acknowledged.push((key, data));
    }
    ensure!(
        file_len(&a_log) > 0 && file_len(&b_log) > 0,
        "the audit devices do not write to their tmpfs"
    );

    // One device full: the other records, the service stays up.
    a.fill()?;
    let (a_full, b_before) = (file_len(&a_log), file_len(&b_log));
    for i in 0..5 {
        let key = format!("chaos/one-full-{i}");
        let data = bulky_secret(&format!("one-full-{i}"));
        operations += 1;
        if let Err(refused) = try_write(&api, &key, data.clone()).await? {
            bail!("with one audit device full and one working, a write was refused: {refused}");
        }
        acknowledged.push((key, data));
    }
    ensure!(
        file_len(&b_log) > b_before,
        "the working audit device recorded nothing while the other was full"
    );
    ensure!(
        file_len(&a_log) <= a_full + 4096,
        "the full audit device grew by more than its last page"
    );

    // Both full: the end of each audit file's last page may take a few small lines; then
    // every request is refused.
    b.fill()?;
    let (probe_key, probe_value) = acknowledged[0].clone();
    let mut refused_at = None;
    for _ in 0..20 {
        operations += 1;
        let resp = api.get(&format!("kv/data/{probe_key}")).await?;
        if !resp.status.is_success() {
            failed += 1;
            refused_at = Some(());
            break;
        }
    }
    ensure!(
        refused_at.is_some(),
        "with both audit devices full, 20 reads were served"
    );
    let unaudited = "chaos/while-full";
    for round in 0..3 {
        operations += 2;
        failed += 2;
        let resp = api.get(&format!("kv/data/{probe_key}")).await?;
        ensure!(
            resp.status.as_u16() == 500
                && !resp.text.contains(probe_value["v"].as_str().unwrap_or("-")),
            "round {round}: a read with no audit device able to log: {} {}",
            resp.status,
            resp.text
        );
        let write = try_write(&api, unaudited, bulky_secret("while-full")).await?;
        ensure!(
            write.as_ref().is_err_and(|e| e.starts_with("500")),
            "round {round}: a write with no audit device able to log: {write:?}"
        );
    }

    // Room again on `b`: the service resumes by itself.
    b.free()?;
    let freed_at = std::time::Instant::now();
    let mut resumed = None;
    for _ in 0..100 {
        operations += 1;
        let resp = api.get(&format!("kv/data/{probe_key}")).await?;
        if resp.status.is_success() {
            resumed = Some(freed_at.elapsed());
            break;
        }
        failed += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unavailable =
        resumed.context("the service did not resume after the audit disk had room again")?;
    a.free()?;
    let a_before = file_len(&a_log);
    let mut a_back = false;
    for i in 0..50 {
        let key = format!("chaos/after-{i}");
        let data = bulky_secret(&format!("after-{i}"));
        operations += 1;
        try_write(&api, &key, data.clone())
            .await?
            .map_err(anyhow::Error::msg)?;
        acknowledged.push((key, data));
        if file_len(&a_log) > a_before {
            a_back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        a_back,
        "the audit device whose disk had room again did not resume"
    );

    ensure!(
        api.kv2_get("kv", unaudited).await?.is_none(),
        "a write refused for want of an audit device was carried out"
    );
    let mut lost = 0;
    for (key, data) in &acknowledged {
        if api.kv2_get("kv", key).await?.as_ref() != Some(data) {
            lost += 1;
        }
    }
    ensure!(
        lost == 0,
        "{lost} acknowledged writes are missing or different"
    );
    let lines = (every_line_is_json(&a_log)?, every_line_is_json(&b_log)?);
    let server_log = fs::read_to_string(p.server_log(1))?;
    ensure!(
        server_log.contains("No space left on device"),
        "the server log does not say why the audit devices failed:\n{}",
        p.log_tails(30)
    );
    for text in [
        fs::read_to_string(&a_log)?,
        fs::read_to_string(&b_log)?,
        server_log,
    ] {
        ensure!(
            !text.contains("-value-") && !text.contains("probe-secret-"),
            "a secret value reached a log"
        );
    }
    eprintln!(
        "audit lines: a {}, b {}; unavailable for {unavailable:?}",
        lines.0, lines.1
    );
    p.run(&["down"]).await?.expect(0)?;
    a.unmount()?;
    b.unmount()?;
    Figures {
        scenario: "audit disks full (one, then both)".into(),
        rounds: 1,
        operations,
        failed,
        lost,
        longest_unavailability_ms: unavailable.as_secs_f64() * 1000.0,
        extra: Default::default(),
    }
    .print();
    Ok(())
}

/// Writes `key` and records it when acknowledged; returns the refusal otherwise.
async fn write_recorded(
    api: &Api,
    acknowledged: &mut Vec<(String, Value)>,
    key: String,
    data: Value,
) -> Result<std::result::Result<(), String>> {
    let outcome = try_write(api, &key, data.clone()).await?;
    if outcome.is_ok() {
        acknowledged.push((key, data));
    }
    Ok(outcome)
}

/// Counts the acknowledged writes that do not read back with their value.
async fn missing(api: &Api, acknowledged: &[(String, Value)]) -> Result<u64> {
    let mut lost = 0;
    for (key, data) in acknowledged {
        if api.kv2_get("kv", key).await?.as_ref() != Some(data) {
            lost += 1;
        }
    }
    Ok(lost)
}

/// A one-node cluster whose data directory is a small tmpfs (its files copied in while the
/// node was down). Filled, writes are refused with an error that says the disk is full, and
/// what was written reads back; freed, writes work again without a restart; restarted, the
/// store opens and holds every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_directory_refuses_writes_cleanly_and_recovers() -> Result<()> {
    const TEST: &str = "a_full_data_directory_refuses_writes_cleanly_and_recovers";
    require_root(TEST)?;
    let mut p = Provisioned::new("datafull", SLOT_DATA_FULL, EnvSpec::nodes(1))?;
    p.up_json().await?;
    p.run(&["down"]).await?.expect(0)?;
    let data = data_dir(&p, 1);
    let used: u64 = keyhold_tests::provision::files_under(&data)?
        .iter()
        .map(|f| file_len(f))
        .sum();
    let disk = Tmpfs::mount_over(&data, ((used >> 20) + 64) << 20)?;
    p.up_json().await?;
    let token = p.env_vars().await?["VAULT_TOKEN"].clone();
    let api = p.api(1, Some(&token))?;

    let mut acknowledged: Vec<(String, Value)> = Vec::new();
    let (mut operations, mut failed) = (0u64, 0u64);
    for i in 0..5 {
        operations += 1;
        write_recorded(
            &api,
            &mut acknowledged,
            format!("chaos/before-{i}"),
            bulky_secret(&format!("before-{i}")),
        )
        .await?
        .map_err(anyhow::Error::msg)?;
    }
    disk.fill()?;
    let mut refusals = Vec::new();
    for i in 0..40 {
        operations += 1;
        match write_recorded(
            &api,
            &mut acknowledged,
            format!("chaos/full-{i}"),
            bulky_secret(&format!("full-{i}")),
        )
        .await?
        {
            Ok(()) => {}
            Err(refused) => {
                failed += 1;
                refusals.push(refused);
                if refusals.len() == 3 {
                    break;
                }
            }
        }
    }
    eprintln!(
        "while full: {} acknowledged, refusals: {refusals:#?}",
        acknowledged.len()
    );
    ensure!(
        !refusals.is_empty(),
        "40 writes to a node whose data directory is full were all acknowledged"
    );
    for refused in &refusals {
        ensure!(
            refused.starts_with("507")
                && refused.contains("data directory is full")
                && !refused.contains("-value-"),
            "a write refused on a full disk does not say so: {refused}"
        );
    }
    let lost_while_full = missing(&api, &acknowledged).await?;
    ensure!(
        lost_while_full == 0,
        "{lost_while_full} acknowledged writes unreadable while the disk is full"
    );

    disk.free()?;
    let freed_at = std::time::Instant::now();
    let mut resumed = None;
    for i in 0..100 {
        operations += 1;
        match write_recorded(
            &api,
            &mut acknowledged,
            format!("chaos/after-{i}"),
            bulky_secret(&format!("after-{i}")),
        )
        .await?
        {
            Ok(()) => {
                resumed = Some(freed_at.elapsed());
                break;
            }
            Err(_) => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unavailable = resumed.with_context(|| {
        format!(
            "writes did not work again once the data directory had room
{}",
            p.log_tails(30)
        )
    })?;
    for i in 0..5 {
        operations += 1;
        write_recorded(
            &api,
            &mut acknowledged,
            format!("chaos/later-{i}"),
            bulky_secret(&format!("later-{i}")),
        )
        .await?
        .map_err(anyhow::Error::msg)?;
    }

    // Restarted from what is on the tmpfs: nothing corrupted, nothing missing.
    p.run(&["down"]).await?.expect(0)?;
    p.up_json().await?;
    let token = p.env_vars().await?["VAULT_TOKEN"].clone();
    let api = p.api(1, Some(&token))?;
    let lost = missing(&api, &acknowledged).await?;
    ensure!(
        lost == 0,
        "{lost} of {} acknowledged writes lost after the restart",
        acknowledged.len()
    );
    let server_log = fs::read_to_string(p.server_log(1))?;
    ensure!(
        !server_log.contains("-value-"),
        "a secret value reached the server log"
    );
    p.run(&["down"]).await?.expect(0)?;
    disk.unmount()?;
    Figures {
        scenario: "data directory full".into(),
        rounds: 1,
        operations,
        failed,
        lost,
        longest_unavailability_ms: unavailable.as_secs_f64() * 1000.0,
        extra: Default::default(),
    }
    .print();
    Ok(())
}
