//! `provision down`: stop every node; `--purge` also removes data, state, certificates and
//! secrets.

use super::*;

pub async fn run(env: EnvArg, purge: bool, state_dir: &Path) -> Result<u8, Failure> {
    // The restore drill agent first: a drill in progress holds the lock until the agent,
    // stopped, has torn it down.
    let d = load(&env, state_dir)?;
    if workflows::drill_agent::stop(&d).await? {
        eprintln!("Stopped the restore drill agent");
    }
    let (d, lock) = load_locked(&env, state_dir, "provision down")?;
    let mut progress = Progress::new(false);
    workflows::down::down(&d, purge, &mut progress).await?;
    drop(lock);
    Ok(0)
}
