//! `provision down`: stop every node; `--purge` also removes data, state, certificates and
//! secrets.

use super::*;

pub async fn run(env: EnvArg, purge: bool, state_dir: &Path) -> Result<u8, Failure> {
    let (d, lock) = load_locked(&env, state_dir, "provision down")?;
    let mut progress = Progress::new(false);
    workflows::down::down(&d, purge, &mut progress).await?;
    drop(lock);
    Ok(0)
}
