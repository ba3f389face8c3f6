//! `provision env`: `export VAULT_ADDR=... VAULT_CACERT=... VAULT_TOKEN=...` for `eval`, with
//! a token of the environment's admin login.

use super::*;

pub async fn run(env: EnvArg, identity: IdentityArg, state_dir: &Path) -> Result<u8, Failure> {
    let d = load(&env, state_dir)?;
    let cluster = d.cluster()?;
    let node = cluster.active().await.unwrap_or(0);
    let token = d
        .admin_token(&identity.identity)
        .await
        .context("log in with the environment's admin user")?;
    println!("export VAULT_ADDR={}", shell_quote(&d.nodes[node].api_addr));
    println!(
        "export VAULT_CACERT={}",
        shell_quote(&d.ca_file().display().to_string())
    );
    println!("export VAULT_TOKEN={}", shell_quote(&token));
    Ok(0)
}
