//! `provision hosts check`: can `up` reach and use every host?

use super::*;

pub async fn check(env: EnvArg, json: bool, state_dir: &Path) -> Result<u8, Failure> {
    let d = load(&env, state_dir)?;
    if let environment::Provider::Local(_) = d.env.provider {
        println!(
            "{}'s nodes are processes on this machine (provider \"local\"): no hosts to check",
            d.env.name
        );
        return Ok(0);
    }
    let checks = workflows::hosts::check(&d).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&checks).expect("JSON"));
    } else {
        let rows = checks
            .iter()
            .map(|c| {
                vec![
                    c.node.clone(),
                    c.address.clone(),
                    if c.ok { "ok" } else { "FAILED" }.to_string(),
                    c.os.clone().unwrap_or_default(),
                    c.systemd.clone().unwrap_or_default(),
                    c.detail.clone(),
                ]
            })
            .collect();
        println!(
            "{}",
            output::table(
                &["node", "address", "check", "os", "systemd", "detail"],
                rows
            )
        );
    }
    Ok(if checks.iter().all(|c| c.ok) {
        0
    } else {
        EXIT_FAILED
    })
}
