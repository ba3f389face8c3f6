//! `provision upgrade` end to end on the local provider: a cluster made by `provision up` on
//! the crate's version is rolled to a second real build of `keyhold` that reports
//! [`NEXT_VERSION`] (built by `scripts/test`), with the workload generator running through it;
//! then rolled back. Refusals (an unhealthy cluster, a downgrade, nothing to roll back) change
//! nothing; a binary that does not start stops the upgrade with the cluster serving; an upgrade
//! killed midway is finished by running it again.
//!
//! Figures (each node's time, the workload's longest write gap) are printed for the record;
//! nothing asserts on time.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use keyhold_tests::provision::{clean_load, EnvSpec, Provisioned};
use keyhold_tests::{keyhold_bin, next_keyhold_bin, slow_tests_enabled, NEXT_VERSION};
use serde_json::{json, Value};

// Each test's own third octet of its loopback range (see `loopback_base`).
const SLOT_UPGRADE: u8 = 40;
const SLOT_REFUSALS: u8 = 41;
const SLOT_RESUME: u8 = 42;
const SLOT_FIVE: u8 = 43;

/// Each node's version as `provision status --json` reports it, in node order.
async fn versions(p: &mut Provisioned) -> Result<Vec<String>> {
    let (_, status) = p.status().await?;
    status["nodes"]
        .as_array()
        .with_context(|| format!("no nodes in {status}"))?
        .iter()
        .map(|n| {
            n["version"]
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("no version in {n}"))
        })
        .collect()
}

/// SHA-256 of every node's installed binary, in node order.
fn installed(p: &Provisioned) -> Result<Vec<String>> {
    (1..=p.nodes)
        .map(|n| {
            let path = p.node_dir(n).join("usr/local/bin/keyhold");
            let bytes = fs::read(&path).with_context(|| format!("read {}", path.display()))?;
            Ok(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)))
        })
        .collect()
}

fn print_nodes(report: &Value) {
    for n in report["nodes"].as_array().into_iter().flatten() {
        println!(
            "  {} {} -> {} {} in {}s{}",
            n["node"],
            n["from_version"],
            n["to_version"],
            n["outcome"],
            n["seconds"],
            if n["was_active"] == json!(true) {
                " (was active)"
            } else {
                ""
            }
        );
    }
}

/// Upgrade under load (3 nodes), the active node last and leadership on the new version;
/// a downgrade refused; rollback under load; plan clean after each.
#[tokio::test]
async fn upgrade_and_rollback_under_load_fail_nothing_and_lose_nothing() -> Result<()> {
    let next = next_keyhold_bin()?;
    let current = keyhold_bin()?;
    let mut p = Provisioned::new("upgrade", SLOT_UPGRADE, EnvSpec::nodes(3))?;
    p.up_json().await?;
    let old = keyhold::VERSION.to_string();
    ensure!(versions(&mut p).await? == vec![old.clone(); 3]);
    let next_arg = next.display().to_string();

    // The same binary again: nothing to do, nothing taken.
    let same = p
        .run(&[
            "upgrade",
            "--binary",
            &current.display().to_string(),
            "--json",
        ])
        .await?
        .expect(0)?
        .json()?;
    ensure!(
        same["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().all(|n| n["outcome"] == json!("already done"))),
        "{same}"
    );
    ensure!(
        !p.env_dir().join("upgrades").exists(),
        "no snapshot for nothing"
    );

    // A dry run: the order, standbys first; nothing changes.
    let before = installed(&p)?;
    let plan = p
        .run(&["upgrade", "--binary", &next_arg, "--dry-run", "--json"])
        .await?
        .expect(0)?
        .json()?;
    let planned = plan["nodes"].as_array().context("nodes")?;
    ensure!(planned.len() == 3, "{plan}");
    ensure!(
        planned[2]["was_active"] == json!(true)
            && planned[..2].iter().all(|n| n["was_active"] == json!(false)),
        "the active node goes last: {plan}"
    );
    ensure!(installed(&p)? == before, "a dry run changed a binary");
    ensure!(versions(&mut p).await? == vec![old.clone(); 3]);

    // The upgrade, with the workload running through it.
    let report = p
        .run(&["upgrade", "--binary", &next_arg, "--with-load", "--json"])
        .await?
        .expect(0)?
        .json()?;
    println!("upgrade {old} -> {NEXT_VERSION}:");
    print_nodes(&report);
    clean_load(&report)?;
    let nodes = report["nodes"].as_array().context("nodes")?;
    ensure!(
        nodes.len() == 3
            && nodes.iter().all(
                |n| n["outcome"] == json!("upgraded") && n["to_version"] == json!(NEXT_VERSION)
            ),
        "{report}"
    );
    ensure!(
        nodes[2]["was_active"] == json!(true),
        "the active node went last: {report}"
    );
    ensure!(
        report["active_version_after"] == json!(NEXT_VERSION),
        "leadership is on the new version: {report}"
    );
    let snapshot = PathBuf::from(report["snapshot"].as_str().context("snapshot")?);
    let meta = fs::metadata(&snapshot).with_context(|| format!("{}", snapshot.display()))?;
    ensure!(meta.len() > 0 && meta.permissions().mode() & 0o777 == 0o600);
    ensure!(versions(&mut p).await? == vec![NEXT_VERSION.to_string(); 3]);
    for n in 1..=3 {
        let previous = p.node_dir(n).join("usr/local/bin/keyhold.previous");
        ensure!(
            previous.is_file(),
            "{} keeps its previous binary",
            p.node_name(n)
        );
    }
    p.run(&["plan"]).await?.expect(0)?;

    // A downgrade is refused and changes nothing.
    let before = installed(&p)?;
    let refused = p
        .run(&["upgrade", "--binary", &current.display().to_string()])
        .await?
        .expect(1)?;
    ensure!(
        refused.stderr.contains("older than") && refused.stderr.contains("nothing was changed"),
        "{}",
        refused.stderr
    );
    ensure!(
        installed(&p)? == before,
        "the refused downgrade changed a binary"
    );

    // The rollback, under load: every node back on the version it ran.
    let back = p
        .run(&["upgrade", "--rollback", "--with-load", "--json"])
        .await?
        .expect(0)?
        .json()?;
    println!("rollback:");
    print_nodes(&back);
    clean_load(&back)?;
    ensure!(versions(&mut p).await? == vec![old.clone(); 3], "{back}");
    let again = p.run(&["upgrade", "--rollback"]).await?.expect(1)?;
    ensure!(
        again.stderr.contains("already rolled back"),
        "{}",
        again.stderr
    );
    p.run(&["plan"]).await?.expect(0)?;
    Ok(())
}

/// A script posing as a keyhold binary of `version` that cannot serve.
fn broken_binary(dir: &Path, version: &str) -> Result<PathBuf> {
    let path = dir.join("keyhold-broken");
    fs::write(
        &path,
        format!(
            "#!/bin/sh\nif [ \"$1\" = version ]; then echo '{{\"version\": \"{version}\"}}'; exit 0; fi\n\
             echo 'this build cannot start' >&2\nexit 1\n"
        ),
    )?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// Refusals change nothing: an unhealthy cluster, nothing to roll back. A binary that does not
/// start stops the upgrade at the first node, which runs its previous binary again.
#[tokio::test]
async fn refusals_change_nothing_and_a_broken_binary_leaves_the_cluster_serving() -> Result<()> {
    let next = next_keyhold_bin()?;
    let mut p = Provisioned::new("upgrade-refusals", SLOT_REFUSALS, EnvSpec::nodes(3))?;
    p.up_json().await?;
    let next_arg = next.display().to_string();
    let before = installed(&p)?;

    let nothing = p.run(&["upgrade", "--rollback"]).await?.expect(1)?;
    ensure!(
        nothing.stderr.contains("no upgrade to roll back"),
        "{}",
        nothing.stderr
    );

    // A standby down: refused before anything is touched.
    let roles = p.roles().await?;
    let standby = roles
        .iter()
        .position(|r| r == "standby")
        .context("a standby")? as u8
        + 1;
    p.kill9_node(standby).await?;
    let refused = p
        .run(&["upgrade", "--binary", &next_arg])
        .await?
        .expect(1)?;
    ensure!(
        refused.stderr.contains(&p.node_name(standby))
            && refused.stderr.contains("nothing was changed"),
        "{}",
        refused.stderr
    );
    ensure!(installed(&p)? == before);
    ensure!(!p.env_dir().join("upgrades").exists(), "no snapshot taken");
    p.run(&["up"]).await?.expect(0)?;

    // A build that cannot start: the first node is put back, the cluster serves.
    let broken = broken_binary(p.dir(), NEXT_VERSION)?;
    let failed = p
        .run(&["upgrade", "--binary", &broken.display().to_string()])
        .await?
        .expect(1)?;
    println!("{}", failed.stderr);
    ensure!(
        failed.stderr.contains("runs its previous one again")
            && failed.stderr.contains("the cluster is serving")
            && failed.stderr.contains("--rollback"),
        "{}",
        failed.stderr
    );
    let roles = p.roles().await?;
    ensure!(
        roles.iter().filter(|r| *r == "active").count() == 1
            && roles.iter().filter(|r| *r == "standby").count() == 2,
        "{roles:?}"
    );
    ensure!(versions(&mut p).await? == vec![keyhold::VERSION.to_string(); 3]);
    ensure!(
        installed(&p)? == before,
        "every node runs its previous binary"
    );
    Ok(())
}

/// An upgrade killed after its first node finishes when run again; the nodes upgraded before
/// are not touched twice.
#[tokio::test]
async fn an_upgrade_killed_midway_is_finished_by_the_next_run() -> Result<()> {
    let next = next_keyhold_bin()?;
    let mut p = Provisioned::new("upgrade-resume", SLOT_RESUME, EnvSpec::nodes(3))?;
    p.up_json().await?;
    let next_arg = next.display().to_string();
    let state_file = p.env_dir().join("state.json");
    let running = p.spawn(&["upgrade", "--binary", &next_arg])?;
    let mut done_first = None;
    for _ in 0..1200 {
        let state: Value = serde_json::from_slice(&fs::read(&state_file)?)?;
        if let Some(first) = state["upgrade"]["nodes_done"]
            .as_array()
            .and_then(|d| d.first())
        {
            done_first = first.as_str().map(str::to_string);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.signal_group(libc::SIGKILL)?;
    let killed = running.wait().await?;
    let first = done_first.with_context(|| format!("no node was upgraded: {}", killed.stderr))?;
    let report = p
        .run(&["upgrade", "--binary", &next_arg, "--json"])
        .await?
        .expect(0)?
        .json()?;
    print_nodes(&report);
    ensure!(report["resumed"] == json!(true), "{report}");
    let nodes = report["nodes"].as_array().context("nodes")?;
    ensure!(
        nodes
            .iter()
            .any(|n| n["node"] == json!(first) && n["outcome"] == json!("already done")),
        "{first} was not upgraded twice: {report}"
    );
    ensure!(versions(&mut p).await? == vec![NEXT_VERSION.to_string(); 3]);
    ensure!(
        report["active_version_after"] == json!(NEXT_VERSION),
        "{report}"
    );
    Ok(())
}

/// Five nodes under load (slow tier).
#[tokio::test]
async fn slow_upgrade_of_five_nodes_under_load() -> Result<()> {
    if !slow_tests_enabled("slow_upgrade_of_five_nodes_under_load") {
        return Ok(());
    }
    let next = next_keyhold_bin()?;
    let mut p = Provisioned::new("upgrade-five", SLOT_FIVE, EnvSpec::nodes(5))?;
    p.up_json().await?;
    let report = p.upgrade_under_load(&next).await?;
    print_nodes(&report);
    ensure!(versions(&mut p).await? == vec![NEXT_VERSION.to_string(); 5]);
    ensure!(
        report["active_version_after"] == json!(NEXT_VERSION),
        "{report}"
    );
    Ok(())
}
