//! The `provision` binary: parse arguments, load the environment, run the command, map the
//! outcome to an exit code that scripts can rely on (see [`ExitCode`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use provisioner::deploy::Deployment;
use provisioner::environment::{self, DEFAULT_ENVIRONMENT};
use provisioner::output::{self, Progress};
use provisioner::state::LockError;

/// Exit codes: 0 success (for `plan`: nothing to do), 1 the command failed, 2 `plan` found
/// changes (as `terraform plan -detailed-exitcode`), 3 the environment file or the command
/// line is wrong (nothing was done), 4 another provision command holds the environment's lock.
const EXIT_FAILED: u8 = 1;
const EXIT_CHANGES: u8 = 2;
const EXIT_INVALID: u8 = 3;
const EXIT_LOCKED: u8 = 4;

#[derive(Parser)]
#[command(
    name = "provision",
    version,
    about = "Turns an environment file into a running Keyhold cluster, then operates it",
    after_help = "Exit codes: 0 success (plan: no changes), 1 failure, 2 plan has changes, \
                  3 invalid environment or arguments, 4 environment locked by another command."
)]
struct Cli {
    /// Where state, certificates, secrets and local nodes are kept.
    #[arg(
        long,
        global = true,
        env = "PROVISION_STATE_DIR",
        default_value = ".provision"
    )]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct EnvArg {
    /// The environment: a name (environments/NAME.hcl) or a path to an .hcl file.
    #[arg(long = "env", short = 'e', env = "PROVISION_ENV", default_value = DEFAULT_ENVIRONMENT)]
    env: String,
}

#[derive(Args)]
struct IdentityArg {
    /// An age identity file that opens the environment's secrets (default: the local
    /// identity provision generated in the state directory). Repeat for per-share recipients.
    #[arg(long = "identity", short = 'i')]
    identity: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Create or heal the environment's cluster (idempotent).
    Up {
        #[command(flatten)]
        env: EnvArg,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Also print the unseal shares and root token (decrypted with the local identity).
        #[arg(long)]
        show_secrets: bool,
        #[command(flatten)]
        identity: IdentityArg,
    },
    /// Show what `up` would do; exit 0 when nothing, 2 when there are changes.
    Plan {
        #[command(flatten)]
        env: EnvArg,
        #[arg(long)]
        json: bool,
    },
    /// Write every file each node would receive into DIR/NODE/.
    Render {
        #[command(flatten)]
        env: EnvArg,
        #[arg(long)]
        out: PathBuf,
        /// Render what a systemd host would receive (server config, hardened units, sysctl,
        /// limits, coredump and logrotate files) instead of what this provider's nodes get.
        #[arg(long)]
        host_layout: bool,
    },
    /// Check an environment file and say what is wrong with it.
    Validate {
        #[command(flatten)]
        env: EnvArg,
    },
    /// Per node: role, version, Raft index, last contact, health; and failure tolerance.
    Status {
        #[command(flatten)]
        env: EnvArg,
        #[arg(long)]
        json: bool,
    },
    /// Print `export VAULT_ADDR=... VAULT_CACERT=... VAULT_TOKEN=...` for `eval`.
    Env {
        #[command(flatten)]
        env: EnvArg,
        #[command(flatten)]
        identity: IdentityArg,
    },
    /// Unseal every sealed node from the encrypted init output.
    Unseal {
        #[command(flatten)]
        env: EnvArg,
        #[command(flatten)]
        identity: IdentityArg,
    },
    /// Stop every node; --purge also removes data, state, certificates and secrets.
    Down {
        #[command(flatten)]
        env: EnvArg,
        #[arg(long)]
        purge: bool,
    },
    /// Certificates of the environment.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Raft snapshots in the environment's S3 bucket (`snapshots { s3 { ... } }`).
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Take a snapshot now: one snapshot agent pass on the active node.
    Save {
        #[command(flatten)]
        env: EnvArg,
        #[arg(long)]
        json: bool,
    },
    /// The snapshots in the bucket, oldest first: key, size, time.
    List {
        #[command(flatten)]
        env: EnvArg,
        #[arg(long)]
        json: bool,
    },
    /// Download a snapshot (refused unless its checksum matches) and force-restore it on the
    /// active node, then wait until the cluster serves again.
    Restore {
        #[command(flatten)]
        env: EnvArg,
        /// `latest`, or `s3://BUCKET/KEY`.
        #[arg(long, default_value = "latest")]
        from: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        identity: IdentityArg,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Subjects, SANs and expiry of the CA and every node certificate.
    Show {
        #[command(flatten)]
        env: EnvArg,
        #[arg(long)]
        json: bool,
    },
}

/// Why the command stopped, mapped to an exit code in one place.
enum Failure {
    Invalid(String),
    Locked(String),
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<LockError>() {
            Ok(lock @ LockError::Held { .. }) => Failure::Locked(lock.to_string()),
            Ok(other) => Failure::Failed(other.into()),
            Err(e) => Failure::Failed(e),
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_INVALID } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(Failure::Invalid(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(EXIT_INVALID)
        }
        Err(Failure::Locked(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(EXIT_LOCKED)
        }
        Err(Failure::Failed(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn load(env: &EnvArg, state_dir: &Path) -> Result<Deployment, Failure> {
    let file = environment::resolve(&env.env);
    let environment = environment::load(&file).map_err(|e| Failure::Invalid(e.to_string()))?;
    Deployment::new(environment, state_dir).map_err(|e| Failure::Invalid(format!("{e:#}")))
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    let state_dir = cli.state_dir;
    match cli.command {
        Command::Validate { env } => {
            let file = environment::resolve(&env.env);
            let e = environment::load(&file).map_err(|e| Failure::Invalid(e.to_string()))?;
            println!(
                "{}: environment {:?} is valid ({} nodes, provider {})",
                file.display(),
                e.name,
                e.nodes,
                e.provider.kind()
            );
            Ok(0)
        }
        Command::Up {
            env,
            json,
            show_secrets,
            identity,
        } => {
            let d = load(&env, &state_dir)?;
            let _lock = d.dir.lock("provision up").map_err(anyhow::Error::from)?;
            let mut progress = Progress::new(json);
            progress.say(&format!(
                "provision up: environment {} ({} nodes, {})",
                d.env.name,
                d.nodes.len(),
                d.env.file.display()
            ));
            let report = d.up(&identity.identity, &mut progress).await?;
            let status = d.status().await?;
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
        Command::Plan { env, json } => {
            let d = load(&env, &state_dir)?;
            let _lock = d.dir.lock("provision plan").map_err(anyhow::Error::from)?;
            let changes = d.plan().await?;
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
        Command::Render {
            env,
            out,
            host_layout,
        } => {
            let d = load(&env, &state_dir)?;
            let files = d.render_to(&out, host_layout)?;
            for f in &files {
                println!("{}", f.display());
            }
            eprintln!(
                "Rendered {} file(s) for {} node(s) into {} (TLS keys are not rendered: `provision up` issues them).",
                files.len(),
                d.nodes.len(),
                out.display()
            );
            Ok(0)
        }
        Command::Status { env, json } => {
            let d = load(&env, &state_dir)?;
            let status = d.status().await?;
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
            }
            let all_up = status.nodes.iter().chain(status.unsealer.iter()).all(|n| {
                matches!(
                    n.role,
                    provisioner::cluster::Role::Active | provisioner::cluster::Role::Standby
                )
            });
            Ok(if all_up { 0 } else { EXIT_FAILED })
        }
        Command::Env { env, identity } => {
            let d = load(&env, &state_dir)?;
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
        Command::Unseal { env, identity } => {
            let d = load(&env, &state_dir)?;
            let _lock = d
                .dir
                .lock("provision unseal")
                .map_err(anyhow::Error::from)?;
            let mut progress = Progress::new(false);
            d.unseal(&identity.identity, &mut progress).await?;
            Ok(0)
        }
        Command::Down { env, purge } => {
            let d = load(&env, &state_dir)?;
            let lock = d.dir.lock("provision down").map_err(anyhow::Error::from)?;
            let mut progress = Progress::new(false);
            d.down(purge, &mut progress).await?;
            drop(lock);
            Ok(0)
        }
        Command::Snapshot { command } => snapshot_command(command, &state_dir).await,
        Command::Certs {
            command: CertsCommand::Show { env, json },
        } => {
            let d = load(&env, &state_dir)?;
            let certs = d.certificates()?;
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
    }
}

async fn snapshot_command(command: SnapshotCommand, state_dir: &Path) -> Result<u8, Failure> {
    use provisioner::snapshots;
    let print_json = |value: &dyn erased_json::Json| println!("{}", value.pretty());
    match command {
        SnapshotCommand::Save { env, json } => {
            let d = load(&env, state_dir)?;
            let saved = snapshots::save(&d).await?;
            if json {
                print_json(&saved);
            } else {
                println!(
                    "Saved {} ({} bytes, raft index {}, sha256 {}) from {}",
                    saved.url, saved.size, saved.raft_index, saved.sha256, saved.node
                );
            }
        }
        SnapshotCommand::List { env, json } => {
            let d = load(&env, state_dir)?;
            let listed = snapshots::list(&d).await?;
            if json {
                print_json(&listed);
            } else {
                let rows = listed
                    .iter()
                    .map(|l| {
                        vec![
                            l.key.clone(),
                            l.size.to_string(),
                            l.time.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                        ]
                    })
                    .collect();
                println!("{}", output::table(&["key", "size", "time"], rows));
            }
        }
        SnapshotCommand::Restore {
            env,
            from,
            json,
            identity,
        } => {
            let d = load(&env, state_dir)?;
            let _lock = d
                .dir
                .lock("provision snapshot restore")
                .map_err(anyhow::Error::from)?;
            // A restore replaces every secret, policy and token: it takes a root token (the
            // admin policy, as the production guide writes it, only reads Raft state).
            let (token, generated) = d.operation_root_token(&identity.identity).await?;
            let restored = snapshots::restore(&d, &from, &token).await;
            if generated {
                // After a restore the generated token belonged to the old data and is gone
                // with it; revoking is only needed when the restore did not happen.
                if restored.is_err() {
                    if let Ok(cluster) = d.cluster() {
                        let _ = cluster.revoke_self(&token).await;
                    }
                }
            }
            let restored = restored?;
            if json {
                print_json(&restored);
            } else {
                println!(
                    "Restored {} ({} bytes, raft index {} term {}) on {}; the cluster serves again",
                    restored.url,
                    restored.size,
                    restored.raft_index,
                    restored.raft_term,
                    restored.node
                );
            }
        }
    }
    Ok(0)
}

/// Pretty JSON of any serializable value, behind `dyn`.
mod erased_json {
    pub trait Json {
        fn pretty(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn pretty(&self) -> String {
            serde_json::to_string_pretty(self).expect("JSON")
        }
    }
}

fn status_table(status: &provisioner::deploy::StatusReport) -> String {
    let rows = status
        .nodes
        .iter()
        .chain(status.unsealer.iter())
        .map(|n| {
            vec![
                n.name.clone(),
                n.address.clone(),
                n.role.as_str().to_string(),
                n.version.clone().unwrap_or_else(|| "-".into()),
                n.raft_applied_index
                    .map_or_else(|| "-".into(), |i| i.to_string()),
                n.last_contact.clone().unwrap_or_else(|| "-".into()),
                n.health_code.map_or_else(|| "-".into(), |c| c.to_string()),
            ]
        })
        .collect();
    output::table(
        &[
            "node",
            "address",
            "role",
            "version",
            "applied",
            "last contact",
            "health",
        ],
        rows,
    )
}

/// Quotes a value for a POSIX shell's `eval`.
fn shell_quote(value: &str) -> String {
    if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:@%+=,".contains(c))
    {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', "'\\''"))
    }
}
