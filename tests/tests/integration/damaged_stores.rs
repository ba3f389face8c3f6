//! Damaged stores (issue 15): a node whose sled files were damaged while it was stopped (bytes
//! flipped in the middle of a file, a file truncated) must not silently serve less data.
//!
//! The experiment: a one-node cluster (nobody else holds its data, so whatever it serves is
//! all there is) takes acknowledged writes and is stopped; its data directory is kept, and for
//! each damage in [`DAMAGES`] a copy of it is damaged and the node started on it. Each trial
//! ends one of four ways: the node refuses to start or unseal (detected), it serves every
//! acknowledged write (whole), it answers some reads with errors (noticed, but only by the
//! reader), or it serves with acknowledged writes missing or different (silent loss, which
//! must never happen). Then a follower of a 3-node cluster damaged the same way refuses to
//! start with a message that says what to do, and the operator's way back that message gives
//! (data directory moved aside, the node started and unsealed again) brings it back whole.
//!
//! Prints a `chaos-figures:` line per scenario for `tests/chaos/run`; nothing asserts on time.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use keyhold_tests::{Cluster, Node, NodeOptions};
use serde_json::{json, Value};

use super::chaos::Figures;

/// Acknowledged writes before the node is stopped.
const WRITES: usize = 300;

/// One damage done to sled's `db` file (its log, where every page lives; sled 0.34 wrote no
/// `snap.*` page-table snapshot in these runs) while the node was stopped.
#[derive(Clone, Copy, Debug)]
enum Damage {
    /// 64 bytes inverted at this fraction of the file's length.
    Flip(f64),
    /// The file cut to this fraction of its length.
    Truncate(f64),
}

const DAMAGES: &[Damage] = &[
    Damage::Flip(0.25),
    Damage::Flip(0.5),
    Damage::Flip(0.6),
    Damage::Flip(0.75),
    Damage::Flip(0.9),
    Damage::Truncate(0.25),
    Damage::Truncate(0.5),
    Damage::Truncate(0.75),
    Damage::Truncate(0.95),
];

/// How a damaged node's trial ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// It would not start or unseal; the reason is the last lines of its log.
    Refused(String),
    /// It served every acknowledged write with its value.
    Whole,
    /// It served, answering some reads with errors (none missing or wrong without one).
    ReadErrors(usize),
    /// It served with acknowledged writes missing (404) or different: silent loss.
    SilentLoss { missing: usize, wrong: usize },
}

fn damage(dir: &Path, damage: Damage) -> Result<String> {
    let (file, what) = match damage {
        Damage::Flip(at) => {
            let path = dir.join("db");
            let mut f = OpenOptions::new().read(true).write(true).open(&path)?;
            let len = f.metadata()?.len();
            let offset = ((len as f64) * at) as u64;
            let mut bytes = vec![0u8; 64.min((len - offset) as usize)];
            f.seek(SeekFrom::Start(offset))?;
            f.read_exact(&mut bytes)?;
            for b in &mut bytes {
                *b = !*b;
            }
            f.seek(SeekFrom::Start(offset))?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            (
                path,
                format!("flipped {} bytes at {offset} of {len}", bytes.len()),
            )
        }
        Damage::Truncate(keep) => {
            let path = dir.join("db");
            let f = OpenOptions::new().write(true).open(&path)?;
            let len = f.metadata()?.len();
            let to = ((len as f64) * keep) as u64;
            f.set_len(to)?;
            f.sync_all()?;
            (path, format!("truncated from {len} to {to} bytes"))
        }
    };
    Ok(format!(
        "{}: {what}",
        file.file_name().unwrap_or_default().to_string_lossy()
    ))
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        fs::remove_dir_all(to)?;
    }
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .context("run cp -a")?;
    ensure!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
    Ok(())
}

fn value(i: usize) -> Value {
    json!({ "v": format!("value-{i}") })
}

/// Starts `node` on its (damaged) data directory, unseals it with `keys`, and reads back every
/// acknowledged write.
async fn trial(node: &mut Node, keys: &[String]) -> Result<Outcome> {
    let log_from = node.log().len();
    let refused = |node: &Node| {
        let log = node.log();
        Outcome::Refused(
            log[log_from.min(log.len())..]
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .join(" | "),
        )
    };
    if node.start().await.is_err() {
        return Ok(refused(node));
    }
    if node.api().unseal_all(keys).await.is_err() {
        return Ok(refused(node));
    }
    let mut active = false;
    for _ in 0..100 {
        if node.health_code().await == Some(200) {
            active = true;
            break;
        }
        if !node.is_running() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !active {
        return Ok(refused(node));
    }
    let api = node.api();
    let (mut missing, mut wrong, mut errors) = (0, 0, 0);
    for i in 0..WRITES {
        let resp = api.get(&format!("kv/data/k-{i}")).await?;
        match resp.status.as_u16() {
            200 if resp.json["data"]["data"] == value(i) => {}
            200 => wrong += 1,
            404 => missing += 1,
            _ => errors += 1,
        }
    }
    Ok(if missing + wrong > 0 {
        Outcome::SilentLoss { missing, wrong }
    } else if errors > 0 {
        Outcome::ReadErrors(errors)
    } else {
        Outcome::Whole
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_stores_never_serve_less_than_was_acknowledged() -> Result<()> {
    let mut cluster = Cluster::single(NodeOptions::default()).await?;
    let node = cluster.node();
    let init = node.init(1, 1).await?;
    node.unseal().await?;
    let api = node.api();
    api.mount_kv("kv", 2).await?;
    for i in 0..WRITES {
        api.kv2_put("kv", &format!("k-{i}"), value(i))
            .await?
            .expect(200, "write")?;
    }
    let status = node.sigterm().await?;
    ensure!(status.success(), "clean stop before the damage: {status}");
    let data = node.data_dir.clone();
    let pristine = data.with_file_name("data.pristine");
    copy_dir(&data, &pristine)?;
    let listing: Vec<String> = fs::read_dir(&pristine)?
        .flatten()
        .map(|e| {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            format!("{} ({len} bytes)", e.file_name().to_string_lossy())
        })
        .collect();
    eprintln!("data directory after {WRITES} writes: {listing:?}");

    let keys = &init.keys[..init.threshold];
    let mut outcomes = Vec::new();
    for d in DAMAGES {
        copy_dir(&pristine, &data)?;
        let done = damage(&data, *d)?;
        let outcome = trial(node, keys).await?;
        if node.is_running() {
            node.kill9()?;
        }
        eprintln!("damage {done}: {outcome:?}");
        outcomes.push((done, outcome));
    }
    let count = |f: &dyn Fn(&Outcome) -> bool| outcomes.iter().filter(|(_, o)| f(o)).count();
    let whole = count(&|o| *o == Outcome::Whole);
    let refused = count(&|o| matches!(o, Outcome::Refused(_)));
    let read_errors = count(&|o| matches!(o, Outcome::ReadErrors(_)));
    let silent = count(&|o| matches!(o, Outcome::SilentLoss { .. }));
    let lost: usize = outcomes
        .iter()
        .map(|(_, o)| match o {
            Outcome::SilentLoss { missing, wrong } => missing + wrong,
            _ => 0,
        })
        .sum();
    eprintln!(
        "{} damaged nodes: {whole} came back whole, {refused} refused to serve, {read_errors} \
         served with read errors, {silent} silently served less ({lost} acknowledged writes \
         missing or different)",
        DAMAGES.len()
    );
    let mut figures = Figures {
        scenario: "damaged stores (one node, db bytes flipped or truncated)".into(),
        rounds: DAMAGES.len() as u32,
        operations: WRITES as u64,
        failed: 0,
        lost: lost as u64,
        longest_unavailability_ms: f64::NAN,
        extra: serde_json::Map::new(),
    };
    figures.extra.insert("whole".into(), json!(whole));
    figures.extra.insert("refused".into(), json!(refused));
    figures
        .extra
        .insert("read_errors".into(), json!(read_errors));
    figures.extra.insert("silent_loss".into(), json!(silent));
    figures.print();
    for (done, outcome) in &outcomes {
        if let Outcome::Refused(why) = outcome {
            ensure!(
                why.contains("is damaged") && why.contains("move the directory aside"),
                "after {done} the node refused without saying why and what to do: {why}"
            );
        }
    }
    ensure!(
        silent == 0,
        "{silent} damaged nodes served with {lost} acknowledged writes missing or different: {outcomes:#?}"
    );
    Ok(())
}

/// A follower of a 3-node cluster, its `db` cut in half while it was stopped, refuses to start
/// and says what to do; done as it says (the data directory moved aside, the node started,
/// unsealed with the cluster's keys: it rejoins under its node id through `retry_join`), it
/// is replicated to from scratch, and every acknowledged write (before the damage, while it
/// was out, after) is in every node's own store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_follower_refuses_to_start_and_rejoins_whole_as_told() -> Result<()> {
    let mut cluster = Cluster::prepare_ha(3, NodeOptions::default())?;
    let keys = cluster.form(1, 1).await?;
    let active = cluster.active().await?;
    let follower = cluster.others(active)[0];
    let api = cluster.nodes[active].api();
    api.mount_kv("kv", 2).await?;
    let mut acknowledged = Vec::new();
    let mut write = |api: &keyhold_tests::Api, phase: &str, count: usize| {
        let api = api.clone();
        let phase = phase.to_string();
        let start = acknowledged.len();
        acknowledged.extend((0..count).map(|i| (format!("{phase}-{i}"), value(start + i))));
        let batch = acknowledged[start..].to_vec();
        async move {
            for (key, data) in batch {
                api.kv2_put("kv", &key, data).await?.expect(200, "write")?;
            }
            anyhow::Ok(())
        }
    };
    write(&api, "before", 200).await?;
    cluster.wait_caught_up().await?;
    let status = cluster.nodes[follower].sigterm().await?;
    ensure!(status.success(), "clean stop of the follower: {status}");
    let data = cluster.nodes[follower].data_dir.clone();
    let done = damage(&data, Damage::Truncate(0.5))?;
    eprintln!("{}: {done}", cluster.nodes[follower].id);
    write(&api, "while-out", 50).await?;

    let refused = cluster.nodes[follower].start().await;
    let log = cluster.nodes[follower].log();
    ensure!(
        refused.is_err() && log.contains("is damaged") && log.contains("move the directory aside"),
        "the damaged follower started ({refused:?}) or did not say why not and what to do:\n{}",
        cluster.nodes[follower].log_tail(10)
    );
    // As the message says: move the directory aside and start again; unseal to rejoin.
    let aside = data.with_file_name("data.damaged");
    fs::rename(&data, &aside)?;
    fs::create_dir(&data)?;
    cluster.nodes[follower].start().await?;
    cluster.join(follower, &keys).await?;
    write(&api, "after", 50).await?;
    cluster.wait_voters(3, "the damaged follower back").await?;
    let lost = super::partitions::every_node_holds(&mut cluster, &acknowledged).await?;
    ensure!(lost == 0, "{lost} acknowledged writes did not read back");
    let mut figures = Figures {
        scenario: "damaged follower refuses, rejoins as told".into(),
        rounds: 1,
        operations: acknowledged.len() as u64,
        failed: 0,
        lost,
        longest_unavailability_ms: f64::NAN,
        extra: serde_json::Map::new(),
    };
    figures.extra.insert("refused".into(), json!(1));
    figures.print();
    Ok(())
}
