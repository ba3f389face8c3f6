//! `provision certs show` (subjects, SANs and expiry of the CA and every certificate) and
//! `provision certs rotate [--ca]` (new node certificates, reloaded node by node; a new CA with
//! `--ca`; a new cluster port keyring).

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

pub async fn rotate(
    env: EnvArg,
    new_ca: bool,
    json: bool,
    identity: IdentityArg,
    state_dir: &Path,
) -> Result<u8, Failure> {
    let (d, _lock) = load_locked(&env, state_dir, "provision certs rotate")?;
    let mut progress = Progress::new(json);
    // Refusals first: an unhealthy cluster is left exactly as it was, without even a token.
    workflows::certs::preflight(&d, new_ca).await?;
    // Beginning a cluster TLS rotation needs sudo, which the admin policy does not give.
    let (token, generated) = d.operation_root_token(&identity.identity).await?;
    let report = workflows::certs::rotate(&d, &mut progress, new_ca, &token).await;
    if generated {
        if let Ok(cluster) = d.cluster() {
            let _ = cluster.revoke_self(&token).await;
        }
    }
    let report = report?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report).expect("JSON"));
    } else {
        let ca = match &report.ca {
            Some(ca) => format!(
                "; new CA {}… replaces {}…",
                &ca.new_fingerprint_sha256[..16],
                &ca.old_fingerprint_sha256[..16]
            ),
            None => String::new(),
        };
        eprintln!(
            "Rotated {} node certificate(s) and the cluster port's keyring (generation {}) in \
             {:.1}s{ca}; clients trust {}.",
            report.nodes.len(),
            report.cluster_tls.generation,
            progress.elapsed().as_secs_f64(),
            d.ca_file().display()
        );
    }
    Ok(0)
}
