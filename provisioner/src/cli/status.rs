//! `provision status`: per node role, version, Raft index, last contact, health; exit 1
//! unless every node serves.

use super::*;

pub async fn run(env: EnvArg, json: bool, state_dir: &Path) -> Result<u8, Failure> {
    let d = load(&env, state_dir)?;
    let status = workflows::status::status(&d).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status).expect("JSON"));
    } else {
        println!("{}", status_table(&status));
        println!(
            "Failure tolerance: {} node(s){}",
            status.failure_tolerance,
            if status.autopilot {
                ""
            } else {
                " (estimated; autopilot not readable)"
            }
        );
        if let Some(agent) = &status.drill_agent {
            let when =
                workflows::drill_agent::describe(agent.schedule.as_deref(), agent.after_upload);
            match agent.pid {
                Some(pid) => println!(
                    "Restore drills: {when}; agent running (pid {pid}, log {})",
                    agent.log.display()
                ),
                None => println!(
                    "Restore drills: {when}; agent NOT running (`provision up` starts it; log {})",
                    agent.log.display()
                ),
            }
        }
        if let Some(drill) = &status.last_drill {
            let age = |t: chrono::DateTime<chrono::Utc>| {
                let h = (chrono::Utc::now() - t).num_minutes() as f64 / 60.0;
                format!("{h:.1}h")
            };
            println!(
                "Last restore drill: {} {} ago, {} (snapshot age then: {}): {}",
                if drill.ok { "passed" } else { "FAILED" },
                age(drill.verified_at),
                drill.snapshot,
                drill
                    .snapshot_time
                    .map(|t| format!(
                        "{:.1}h",
                        (drill.verified_at - t).num_minutes() as f64 / 60.0
                    ))
                    .unwrap_or_else(|| "unknown".into()),
                drill.detail
            );
        }
    }
    let all_up = status.nodes.iter().chain(status.unsealer.iter()).all(|n| {
        matches!(
            n.role,
            crate::cluster::Role::Active | crate::cluster::Role::Standby
        )
    });
    Ok(if all_up { 0 } else { EXIT_FAILED })
}
