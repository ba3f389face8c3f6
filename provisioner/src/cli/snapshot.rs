//! `provision snapshot save|list|restore`: Raft snapshots in the environment's S3 bucket.

use super::*;

pub async fn run(command: SnapshotCommand, state_dir: &Path) -> Result<u8, Failure> {
    use crate::workflows::snapshot as snapshots;
    let print_json = |value: &dyn erased_json::Json| println!("{}", value.pretty());
    match command {
        SnapshotCommand::Save { env, json } => {
            let d = load(&env, state_dir)?;
            let saved = snapshots::save(&d).await?;
            if json {
                print_json(&saved);
            } else {
                println!(
                    "Saved {} ({} bytes{}, sha256 {}) from {}",
                    saved.url,
                    saved.size,
                    saved
                        .raft_index
                        .map(|i| format!(", raft index {i}"))
                        .unwrap_or_default(),
                    saved.sha256,
                    saved.node
                );
            }
        }
        SnapshotCommand::List { env, json } => {
            let d = load(&env, state_dir)?;
            let listed = snapshots::list(&d).await?;
            if json {
                print_json(&listed);
            } else {
                let rows = listed
                    .iter()
                    .map(|l| {
                        vec![
                            l.key.clone(),
                            l.size.to_string(),
                            l.time.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                        ]
                    })
                    .collect();
                println!("{}", output::table(&["key", "size", "time"], rows));
            }
        }
        SnapshotCommand::Verify {
            env,
            from,
            json,
            identity,
        } => {
            let (d, _lock) = load_locked(&env, state_dir, "provision snapshot verify")?;
            let report = crate::workflows::drill::verify(&d, &from, &identity.identity).await?;
            if json {
                print_json(&report);
            } else if report.ok {
                println!(
                    "Verified {} (raft index {}, {} keys): {} ({:.1}s)",
                    report.snapshot,
                    report.raft_index,
                    report.keys,
                    report.detail,
                    report.restore_seconds
                );
            } else {
                println!("FAILED {}: {}", report.snapshot, report.detail);
            }
            if !report.ok {
                return Ok(EXIT_FAILED);
            }
        }
        SnapshotCommand::DrillAgent { env } => {
            // Refused at once (exit 3) when the environment is wrong; then read again every
            // round, so an edited schedule applies without a restart.
            load(&env, state_dir)?;
            crate::workflows::drill_agent::run(|| {
                load(&env, state_dir).map_err(|failure| anyhow::anyhow!(exit_code(&failure).1))
            })
            .await?;
        }
        SnapshotCommand::Restore {
            env,
            from,
            json,
            identity,
        } => {
            let (d, _lock) = load_locked(&env, state_dir, "provision snapshot restore")?;
            // A restore replaces every secret, policy and token: it takes a root token (the
            // admin policy, as the production guide writes it, only reads Raft state).
            let (token, generated) = d.operation_root_token(&identity.identity).await?;
            let restored = snapshots::restore(&d, &from, &token).await;
            if generated {
                // After a restore the generated token belonged to the old data and is gone
                // with it; revoking is only needed when the restore did not happen.
                if restored.is_err() {
                    if let Ok(cluster) = d.cluster() {
                        let _ = cluster.revoke_self(&token).await;
                    }
                }
            }
            let restored = restored?;
            if json {
                print_json(&restored);
            } else {
                println!(
                    "Restored {} ({} bytes, raft index {} term {}) on {}; the cluster serves again",
                    restored.url,
                    restored.size,
                    restored.raft_index,
                    restored.raft_term,
                    restored.node
                );
            }
        }
    }
    Ok(0)
}

/// Pretty JSON of any serializable value, behind `dyn`.
mod erased_json {
    pub trait Json {
        fn pretty(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn pretty(&self) -> String {
            serde_json::to_string_pretty(self).expect("JSON")
        }
    }
}
