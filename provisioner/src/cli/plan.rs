//! `provision plan`: what `up` would do; exit 0 when nothing, 2 when there are changes.

use super::*;

pub async fn run(env: EnvArg, json: bool, state_dir: &Path) -> Result<u8, Failure> {
    let (d, _lock) = load_locked(&env, state_dir, "provision plan")?;
    let changes = workflows::up::plan(&d).await?;
    if json {
        let out = serde_json::json!({ "environment": d.env.name, "changes": changes });
        println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
    } else if changes.is_empty() {
        println!("No changes. Environment {} is as described.", d.env.name);
    } else {
        println!("provision up --env {} would:", d.env.name);
        for c in &changes {
            match &c.node {
                Some(node) => println!("  ~ {node}: {}", c.action),
                None => println!("  ~ cluster: {}", c.action),
            }
        }
        println!("{} change(s).", changes.len());
    }
    Ok(if changes.is_empty() { 0 } else { EXIT_CHANGES })
}
