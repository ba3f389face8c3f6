//! `provision down`: stop every node; `--purge` also removes data, state, certificates and
//! secrets.

use super::*;

pub async fn run(env: EnvArg, purge: bool, state_dir: &Path) -> Result<u8, Failure> {
    let d = load(&env, state_dir)?;
    let lock = d.dir.lock("provision down").map_err(anyhow::Error::from)?;
    let mut progress = Progress::new(false);
    workflows::down::down(&d, purge, &mut progress).await?;
    drop(lock);
    Ok(0)
}
