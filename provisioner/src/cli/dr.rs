//! `provision dr rebuild`: the cluster rebuilt from an S3 snapshot after every node was lost.

use super::*;

pub async fn rebuild(
    env: EnvArg,
    from: &str,
    into: Option<String>,
    json: bool,
    identity: IdentityArg,
    state_dir: &Path,
) -> Result<u8, Failure> {
    let (d, _lock) = load_locked(&env, state_dir, "provision dr rebuild")?;
    let mut progress = Progress::new(json);
    let (target, report) = match into {
        None => {
            let report =
                workflows::dr::rebuild(&d, from, &identity.identity, &mut progress).await?;
            (d, report)
        }
        Some(into) => {
            let into = EnvArg { env: into };
            workflows::dr::refuse_itself(&d, &load(&into, state_dir)?)?;
            let (new, _new_lock) = load_locked(&into, state_dir, "provision dr rebuild --into")?;
            let report =
                workflows::dr::rebuild_into(&d, &new, from, &identity.identity, &mut progress)
                    .await?;
            (new, report)
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report).expect("JSON"));
    } else {
        eprintln!(
            "Rebuilt {} from {} (raft index {}): RTO {:.1}s, RPO {}; served: {}.{}",
            target.env.name,
            report.snapshot,
            report.raft_index,
            report.rto_seconds,
            report
                .rpo_seconds
                .map_or_else(|| "unknown".to_string(), |s| format!("{s:.0}s")),
            report.verified.summary(),
            if report.moved_aside.is_empty() {
                ""
            } else {
                " Old data kept in:"
            }
        );
        for path in &report.moved_aside {
            eprintln!("  {}", path.display());
        }
    }
    Ok(0)
}
