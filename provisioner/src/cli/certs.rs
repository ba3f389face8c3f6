//! `provision certs show` (subjects, SANs and expiry of the CA and every certificate) and
//! `provision certs rotate` (new node certificates, reloaded node by node).

use super::*;

pub async fn run(env: EnvArg, json: bool, state_dir: &Path) -> Result<u8, Failure> {
    let d = load(&env, state_dir)?;
    let certs = workflows::inspect::certificates(&d).await?;
    if json {
        let out: Vec<_> = certs
            .iter()
            .map(|(what, path, info)| serde_json::json!({"certificate": what, "path": path, "info": info}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
    } else {
        let rows = certs
            .iter()
            .map(|(what, _, info)| {
                let sans: Vec<String> = info
                    .dns_names
                    .iter()
                    .chain(&info.ip_addresses)
                    .cloned()
                    .collect();
                vec![
                    what.clone(),
                    info.subject.clone(),
                    sans.join(", "),
                    info.not_after.format("%Y-%m-%d %H:%M UTC").to_string(),
                    format!("{}d", (info.not_after - chrono::Utc::now()).num_days()),
                ]
            })
            .collect();
        println!(
            "{}",
            output::table(&["certificate", "subject", "SANs", "expires", "left"], rows)
        );
    }
    Ok(0)
}

pub async fn rotate(env: EnvArg, json: bool, state_dir: &Path) -> Result<u8, Failure> {
    let (d, _lock) = load_locked(&env, state_dir, "provision certs rotate")?;
    let mut progress = Progress::new(json);
    let rotated = workflows::certs::rotate(&d, &mut progress).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rotated).expect("JSON"));
    } else {
        eprintln!(
            "Rotated {} node certificate(s) in {:.1}s; clients keep trusting {}.",
            rotated.len(),
            progress.elapsed().as_secs_f64(),
            d.ca_file().display()
        );
    }
    Ok(0)
}
