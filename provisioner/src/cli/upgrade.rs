//! `provision upgrade`: a rolling upgrade (or `--rollback`), optionally with the workload
//! running through it; prints each node's versions and time, and the workload's figures.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::*;
use crate::workflows::load::{LoadReport, LoadSpec};
use crate::workflows::upgrade::{Goal, UpgradeReport};

/// The upgrade's report with the workload's, as `--json` prints it.
#[derive(serde::Serialize)]
struct Printed<'a> {
    #[serde(flatten)]
    upgrade: &'a UpgradeReport,
    load: Option<&'a LoadReport>,
}

pub async fn run(
    env: EnvArg,
    goal: Goal,
    dry_run: bool,
    load_rate: Option<u32>,
    json: bool,
    identity: IdentityArg,
    state_dir: &Path,
) -> Result<u8, Failure> {
    let (d, _lock) = load_locked(&env, state_dir, "provision upgrade")?;
    let token = d
        .admin_token(&identity.identity)
        .await
        .context("log in with the environment's admin user")?;
    let mut progress = Progress::new(json);
    let stop = AtomicBool::new(false);
    let workload = async {
        match load_rate {
            Some(rate) if !dry_run => Some(
                workflows::load::run_until(
                    &d,
                    token.clone(),
                    LoadSpec {
                        // Bounded even if the upgrade never returned.
                        duration: Duration::from_secs(3600),
                        rate,
                        write_ratio: 0.5,
                        op_timeout: Duration::from_secs(10),
                        concurrency: 32,
                    },
                    &stop,
                )
                .await,
            ),
            _ => None,
        }
    };
    let upgrade = async {
        let result = workflows::upgrade::upgrade(
            &d,
            &token,
            &identity.identity,
            goal,
            dry_run,
            &mut progress,
        )
        .await;
        stop.store(true, Ordering::SeqCst);
        result
    };
    let (result, load) = tokio::join!(upgrade, workload);
    let load = load.transpose()?;
    if let Some(l) = &load {
        if !json || result.is_err() {
            eprintln!(
                "workload: {} operations, {} failed, {} lost writes ({} verified), p50/p99/max \
                 {:.1}/{:.1}/{:.1} ms, longest write gap {:.0} ms",
                l.operations,
                l.failures,
                l.lost_writes,
                l.verified,
                l.p50_ms,
                l.p99_ms,
                l.max_ms,
                l.longest_write_gap_ms
            );
            for e in &l.errors {
                eprintln!("  {e}");
            }
        }
    }
    let report = result?;
    if json {
        let printed = Printed {
            upgrade: &report,
            load: load.as_ref(),
        };
        println!("{}", serde_json::to_string_pretty(&printed).expect("JSON"));
    } else {
        let rows = report
            .nodes
            .iter()
            .map(|n| {
                vec![
                    n.node.clone(),
                    n.from_version.clone(),
                    n.to_version.clone(),
                    n.outcome.clone(),
                    format!("{:.1}s", n.seconds),
                    if n.was_active { "yes" } else { "" }.to_string(),
                ]
            })
            .collect();
        println!(
            "{}",
            output::table(
                &["node", "from", "to", "outcome", "time", "was active"],
                rows
            )
        );
        if !dry_run {
            eprintln!(
                "{} {} to {} in {:.1}s; active now {} ({}). Snapshot taken before: {}",
                if report.rollback {
                    "Rolled back"
                } else {
                    "Upgraded"
                },
                d.env.name,
                report.version,
                report.seconds,
                report.active_after.as_deref().unwrap_or("-"),
                report.active_version_after.as_deref().unwrap_or("-"),
                report.snapshot.display()
            );
        }
    }
    match load {
        Some(l) if !l.clean() => Err(Failure::Failed(anyhow::anyhow!(
            "the workload saw {} failed operation(s) and {} lost write(s) during the {}",
            l.failures,
            l.lost_writes,
            if report.rollback {
                "rollback"
            } else {
                "upgrade"
            }
        ))),
        _ => Ok(0),
    }
}
