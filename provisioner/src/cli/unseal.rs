//! `provision unseal`: unseal every sealed node from the encrypted init output.

use super::*;

pub async fn run(env: EnvArg, identity: IdentityArg, state_dir: &Path) -> Result<u8, Failure> {
    let (d, _lock) = load_locked(&env, state_dir, "provision unseal")?;
    let mut progress = Progress::new(false);
    workflows::unseal::unseal(&d, &identity.identity, &mut progress).await?;
    Ok(0)
}
