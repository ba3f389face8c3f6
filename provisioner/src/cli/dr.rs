//! `provision dr rebuild`: the cluster rebuilt from an S3 snapshot after every node was lost.

use super::*;

pub async fn rebuild(
    env: EnvArg,
    from: &str,
    json: bool,
    identity: IdentityArg,
    state_dir: &Path,
) -> Result<u8, Failure> {
    let (d, _lock) = load_locked(&env, state_dir, "provision dr rebuild")?;
    let mut progress = Progress::new(json);
    let report = workflows::dr::rebuild(&d, from, &identity.identity, &mut progress).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report).expect("JSON"));
    } else {
        eprintln!(
            "Rebuilt {} from {} (raft index {}): RTO {:.1}s, RPO {}; served: {}. Old data \
             kept in:",
            d.env.name,
            report.snapshot,
            report.raft_index,
            report.rto_seconds,
            report
                .rpo_seconds
                .map_or_else(|| "unknown".to_string(), |s| format!("{s:.0}s")),
            report.verified.summary()
        );
        for path in &report.moved_aside {
            eprintln!("  {}", path.display());
        }
    }
    Ok(0)
}
