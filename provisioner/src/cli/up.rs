//! `provision up`: create or heal the environment's cluster (idempotent), then print the
//! status table, or JSON with `--json`.

use super::*;

pub async fn run(
    env: EnvArg,
    json: bool,
    show_secrets: bool,
    identity: IdentityArg,
    state_dir: &Path,
) -> Result<u8, Failure> {
    let (d, _lock) = load_locked(&env, state_dir, "provision up")?;
    let mut progress = Progress::new(json);
    progress.say(&format!(
        "provision up: environment {} ({} nodes, {})",
        d.env.name,
        d.nodes.len(),
        d.env.file.display()
    ));
    let report = workflows::up::up(&d, &identity.identity, &mut progress).await?;
    let status = workflows::status::status(&d).await?;
    let changed = progress.changed();
    if json {
        let mut out = serde_json::json!({
            "environment": d.env.name,
            "changed": changed,
            "steps": progress.steps,
            "nodes": status.nodes,
            "unsealer": status.unsealer,
            "failure_tolerance": status.failure_tolerance,
            "secret_files": report.secret_files,
            "ca_cert": d.ca_file(),
        });
        if show_secrets {
            let secrets = d.init_secrets(&identity.identity)?;
            let key = if secrets.recovery {
                "recovery_keys_b64"
            } else {
                "unseal_keys_b64"
            };
            out[key] = secrets.unseal_keys_b64.clone().into();
            out["root_token"] = secrets.root_token.clone().into();
        }
        println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
    } else {
        eprintln!("{}", status_table(&status));
        eprintln!(
            "{} ({:.1}s). Unseal shares and root token are encrypted in {} (age).",
            if changed {
                "Applied"
            } else {
                "No changes: the cluster is as described"
            },
            progress.elapsed().as_secs_f64(),
            d.dir.secrets_dir().display()
        );
        if report.identity_created {
            eprintln!(
                "Generated the age identity {} (0600) to decrypt them: keep it safe, or \
                 name your own recipients in init {{ recipients = [...] }}.",
                d.dir.identity_file().display()
            );
        }
        eprintln!("Use it: eval \"$(provision env --env {})\"", d.env.name);
    }
    if show_secrets && !json {
        let secrets = d.init_secrets(&identity.identity)?;
        let what = if secrets.recovery {
            "Recovery Key"
        } else {
            "Unseal Key"
        };
        for (i, key) in secrets.unseal_keys_b64.iter().enumerate() {
            println!("{what} {}: {key}", i + 1);
        }
        println!("Initial Root Token: {}", secrets.root_token);
    }
    Ok(0)
}
