//! `provision unseal`: unseal every sealed node from the encrypted init output.

use super::*;

pub async fn run(env: EnvArg, identity: IdentityArg, state_dir: &Path) -> Result<u8, Failure> {
    let d = load(&env, state_dir)?;
    let _lock = d
        .dir
        .lock("provision unseal")
        .map_err(anyhow::Error::from)?;
    let mut progress = Progress::new(false);
    workflows::unseal::unseal(&d, &identity.identity, &mut progress).await?;
    Ok(0)
}
