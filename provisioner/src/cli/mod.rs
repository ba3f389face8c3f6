//! The `provision` command line: its arguments (clap), one file per command, and the one place
//! where an outcome becomes an exit code ([`Failure`], [`exit_code`]).

mod certs;
mod down;
mod dr;
mod env;
mod hosts;
mod image;
mod load;
mod plan;
mod render;
mod snapshot;
mod status;
mod unseal;
mod up;
mod upgrade;
mod validate;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::deployment::Deployment;
use crate::engine::{self as output, Progress};
use crate::environment::{self, DEFAULT_ENVIRONMENT};
use crate::state::LockError;
use crate::workflows;

/// Exit codes: 0 success (for `plan`: nothing to do), 1 the command failed, 2 `plan` found
/// changes (as `terraform plan -detailed-exitcode`), 3 the environment file or the command
/// line is wrong (nothing was done), 4 another provision command holds the environment's lock.
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_CHANGES: u8 = 2;
pub const EXIT_INVALID: u8 = 3;
pub const EXIT_LOCKED: u8 = 4;

#[derive(Parser)]
#[command(
    name = "provision",
    version,
    about = "Turns an environment file into a running Keyhold cluster, then operates it",
    after_help = "Exit codes: 0 success (plan: no changes), 1 failure, 2 plan has changes, \
                  3 invalid environment or arguments, 4 environment locked by another command."
)]
pub struct Cli {
    /// Where state, certificates, secrets and local nodes are kept.
    #[arg(
        long,
        global = true,
        env = "PROVISION_STATE_DIR",
        default_value = ".provision"
    )]
    pub state_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args)]
pub struct EnvArg {
    /// The environment: a name (environments/NAME.hcl) or a path to an .hcl file.
    #[arg(long = "env", short = 'e', env = "PROVISION_ENV", default_value = DEFAULT_ENVIRONMENT)]
    pub env: String,
}

#[derive(Args)]
pub struct IdentityArg {
    /// An age identity file that opens the environment's secrets (default: the local
    /// identity provision generated in the state directory). Repeat for per-share recipients.
    #[arg(long = "identity", short = 'i')]
    pub identity: Vec<PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// Write every file each node would receive into DIR/NODE/, the environment's
    /// Prometheus scrape config, alert rules and Grafana dashboard into DIR/monitoring/, and
    /// the operator host's restore drill agent unit (with scheduled drills) into DIR/operator/.
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
    /// Read and write KV v2 secrets as a Vault client does (retrying through leadership changes)
    /// and check at the end that every acknowledged write is there; exit 1 on any failure or
    /// lost write.
    Load {
        #[command(flatten)]
        env: EnvArg,
        /// How long to run (`30s`, `5m`).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        duration: std::time::Duration,
        /// Operations started per second.
        #[arg(long, default_value_t = 50)]
        rate: u32,
        /// The share of operations that are writes (0 to 1).
        #[arg(long, default_value_t = 0.5)]
        write_ratio: f64,
        /// How long one operation may retry before it counts as failed.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        op_timeout: std::time::Duration,
        /// Operations in flight at most.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        identity: IdentityArg,
    },
    /// Roll a new keyhold binary onto the cluster one node at a time (standbys first, the
    /// active node last, leadership handed to the new version), after a snapshot; refuses an
    /// unhealthy cluster and a downgrade; resumable; --rollback returns to the previous binaries.
    Upgrade {
        #[command(flatten)]
        env: EnvArg,
        /// The new `keyhold` binary.
        #[arg(
            long,
            required_unless_present = "rollback",
            conflicts_with = "rollback"
        )]
        binary: Option<PathBuf>,
        /// Put back the binary each node ran before the last upgrade (standbys first).
        #[arg(long)]
        rollback: bool,
        /// Check and show the order; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Run the workload (`provision load`) through it and report failed operations, lost
        /// writes and the longest write gap; exit 1 if anything failed or was lost.
        #[arg(long)]
        with_load: bool,
        /// Operations per second of the workload with --with-load.
        #[arg(long, default_value_t = 20)]
        load_rate: u32,
        #[arg(long)]
        json: bool,
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
    /// The environment's hosts (provider "ssh"): reachable, host key known, root or sudo,
    /// systemd.
    Hosts {
        #[command(subcommand)]
        command: HostsCommand,
    },
    /// Machine images: `image build images/NAME.hcl` makes a hardened Debian image (qcow2,
    /// kernel and initrd, rootfs tarball, Packer-format manifest) with the playbooks `up` runs.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Disaster recovery from the environment's S3 snapshots.
    Dr {
        #[command(subcommand)]
        command: DrCommand,
    },
    /// Raft snapshots in the environment's S3 bucket (`snapshots { s3 { ... } }`).
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
}

#[derive(Subcommand)]
pub enum HostsCommand {
    /// Log in to every host as `up` would (host key checked) and check that it has what the
    /// server needs; exit 1 when one fails.
    Check {
        #[command(flatten)]
        env: EnvArg,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Build the image a definition describes, unless one of the same inputs (definition,
    /// playbooks, keyhold binary, rendered unit) is already built; check its hardening.
    Build {
        /// The image definition (`images/debian-bookworm-keyhold.hcl`).
        definition: PathBuf,
        /// Where images and manifest.json go (default: ~/.cache/keyhold/images).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The keyhold binary the image carries (default: the one beside provision).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Build again even when an image of the same inputs exists.
        #[arg(long)]
        force: bool,
        /// Print what was built as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum SnapshotCommand {
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
    /// A restore drill: restore a snapshot offline into a throw-away one-node cluster, unseal
    /// it with what the environment has, check it serves what the snapshot holds, tear it
    /// down; the result shows in `provision status`. Exit 1 when the snapshot fails.
    Verify {
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
    /// Scheduled restore drills (`snapshots { drill { ... } }`): a drill of every new upload,
    /// or of the latest snapshot on a timer, until SIGTERM. `up` runs it for a local
    /// environment; on a host that keeps the state, `provision render` writes its unit.
    DrillAgent {
        #[command(flatten)]
        env: EnvArg,
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
pub enum DrCommand {
    /// Rebuild the cluster after every node was lost: the snapshot must pass a restore drill
    /// first; old data is moved aside, never deleted; reports RTO and RPO.
    Rebuild {
        #[command(flatten)]
        env: EnvArg,
        /// `latest`, or `s3://BUCKET/KEY`.
        #[arg(long, default_value = "latest")]
        from: String,
        /// Rebuild the snapshot as another environment (a name or an .hcl file) that was never
        /// initialised, with addresses of its own and a seal that opens the snapshot; the
        /// environment named by --env is only read (its bucket, keys and logins).
        #[arg(long, value_name = "NEW_ENV")]
        into: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        identity: IdentityArg,
    },
}

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Subjects, SANs and expiry of the CA and every node certificate.
    Show {
        #[command(flatten)]
        env: EnvArg,
        #[arg(long)]
        json: bool,
    },
    /// New node certificates from the environment's CA, node by node (standbys first), each
    /// reloaded without a restart and checked to present it before the next; then a new
    /// generation of the cluster port's TLS keyring.
    Rotate {
        #[command(flatten)]
        env: EnvArg,
        /// Also replace the CA (new key): trusted beside the old one until every node has a
        /// certificate from it, then alone. Resumable: run it again after an interruption.
        #[arg(long)]
        ca: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        identity: IdentityArg,
    },
}

/// Why the command stopped, mapped to an exit code in one place.
pub enum Failure {
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

/// A duration on the command line, as Vault writes them (`30s`, `5m`, `1h30m`).
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    keyhold_client::go_duration::parse_duration(text)
}

/// The exit code and message of a failed command.
pub fn exit_code(failure: &Failure) -> (u8, String) {
    match failure {
        Failure::Invalid(msg) => (EXIT_INVALID, msg.clone()),
        Failure::Locked(msg) => (EXIT_LOCKED, msg.clone()),
        Failure::Failed(e) => (EXIT_FAILED, format!("{e:#}")),
    }
}

pub fn load(env: &EnvArg, state_dir: &Path) -> Result<Deployment, Failure> {
    let file = environment::resolve(&env.env);
    let environment = environment::load(&file).map_err(|e| Failure::Invalid(e.to_string()))?;
    Deployment::new(environment, state_dir).map_err(|e| Failure::Invalid(format!("{e:#}")))
}

/// `load`, then the environment's lock for `command` (held until the returned `Lock` drops).
pub fn load_locked(
    env: &EnvArg,
    state_dir: &Path,
    command: &str,
) -> Result<(Deployment, crate::state::Lock), Failure> {
    let d = load(env, state_dir)?;
    let lock = d.dir.lock(command).map_err(anyhow::Error::from)?;
    Ok((d, lock))
}

/// Runs the command; the exit code of a success (`plan` says 2 for "changes").
pub async fn run(cli: Cli) -> Result<u8, Failure> {
    let state_dir = cli.state_dir.as_path();
    match cli.command {
        Command::Validate { env } => validate::run(env),
        Command::Up {
            env,
            json,
            show_secrets,
            identity,
        } => up::run(env, json, show_secrets, identity, state_dir).await,
        Command::Plan { env, json } => plan::run(env, json, state_dir).await,
        Command::Render {
            env,
            out,
            host_layout,
        } => render::run(env, out, host_layout, state_dir),
        Command::Status { env, json } => status::run(env, json, state_dir).await,
        Command::Env { env, identity } => env::run(env, identity, state_dir).await,
        Command::Unseal { env, identity } => unseal::run(env, identity, state_dir).await,
        Command::Down { env, purge } => down::run(env, purge, state_dir).await,
        Command::Upgrade {
            env,
            binary,
            rollback,
            dry_run,
            with_load,
            load_rate,
            json,
            identity,
        } => {
            let goal = match binary {
                Some(binary) if !rollback => workflows::upgrade::Goal::Upgrade { binary },
                _ => workflows::upgrade::Goal::Rollback,
            };
            let load = with_load.then_some(load_rate);
            upgrade::run(env, goal, dry_run, load, json, identity, state_dir).await
        }
        Command::Load {
            env,
            duration,
            rate,
            write_ratio,
            op_timeout,
            concurrency,
            json,
            identity,
        } => {
            let spec = workflows::load::LoadSpec {
                duration,
                rate,
                write_ratio,
                op_timeout,
                concurrency,
            };
            load::run(env, spec, json, identity, state_dir).await
        }
        Command::Snapshot { command } => snapshot::run(command, state_dir).await,
        Command::Hosts {
            command: HostsCommand::Check { env, json },
        } => hosts::check(env, json, state_dir).await,
        Command::Image {
            command:
                ImageCommand::Build {
                    definition,
                    out,
                    binary,
                    force,
                    json,
                },
        } => image::build(definition, out, binary, force, json).await,
        Command::Dr {
            command:
                DrCommand::Rebuild {
                    env,
                    from,
                    into,
                    json,
                    identity,
                },
        } => dr::rebuild(env, &from, into, json, identity, state_dir).await,
        Command::Certs {
            command: CertsCommand::Show { env, json },
        } => certs::run(env, json, state_dir).await,
        Command::Certs {
            command:
                CertsCommand::Rotate {
                    env,
                    ca,
                    json,
                    identity,
                },
        } => certs::rotate(env, ca, json, identity, state_dir).await,
    }
}

fn status_table(status: &workflows::status::StatusReport) -> String {
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
pub fn shell_quote(value: &str) -> String {
    if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:@%+=,".contains(c))
    {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', "'\\''"))
    }
}
