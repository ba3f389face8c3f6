//! The command line, as clap types. Names follow the `vault` CLI; argv has already been
//! rewritten from Go-style flags by `argv::preprocess`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "keyhold",
    version,
    about = "Keyhold: a secrets server that speaks HashiCorp Vault's HTTP API, and its CLI",
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes; each overrides its `VAULT_*` variable.
#[derive(Debug, Clone, Default, Args)]
pub struct GlobalArgs {
    /// Address of the server (VAULT_ADDR).
    #[arg(long, global = true, value_name = "ADDR")]
    pub address: Option<String>,
    /// PEM bundle of the CA that signs the server's certificate (VAULT_CACERT).
    #[arg(long = "ca-cert", global = true, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Directory of PEM CA certificates (VAULT_CAPATH).
    #[arg(long = "ca-path", global = true, value_name = "DIR")]
    pub ca_path: Option<PathBuf>,
    /// Client certificate for TLS authentication (VAULT_CLIENT_CERT).
    #[arg(long = "client-cert", global = true, value_name = "FILE")]
    pub client_cert: Option<PathBuf>,
    /// Client key for TLS authentication (VAULT_CLIENT_KEY).
    #[arg(long = "client-key", global = true, value_name = "FILE")]
    pub client_key: Option<PathBuf>,
    /// Do not verify the server's certificate (VAULT_SKIP_VERIFY). Insecure.
    #[arg(long = "tls-skip-verify", global = true)]
    pub tls_skip_verify: bool,
    /// Name to check the server's certificate against (VAULT_TLS_SERVER_NAME).
    #[arg(long = "tls-server-name", global = true, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Namespace sent as X-Vault-Namespace (VAULT_NAMESPACE).
    #[arg(long, alias = "ns", global = true)]
    pub namespace: Option<String>,
    /// Output format: table, json or yaml (VAULT_FORMAT).
    #[arg(long, global = true)]
    pub format: Option<String>,
    /// Print only this field of the answer, raw.
    #[arg(long, global = true)]
    pub field: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a server.
    Server(ServerCmd),
    /// Print seal and HA status; exit 0 unsealed, 2 sealed, 1 error.
    Status,
    /// Print the version.
    Version,
    /// Operator commands: init, unseal, seal, rekey, generate-root, rotate, key-status.
    #[command(subcommand)]
    Operator(OperatorCmd),
    /// Read data at a path.
    Read(PathData),
    /// Write data to a path.
    Write(WriteCmd),
    /// List the keys under a path.
    List(PathArg),
    /// Delete data at a path.
    Delete(PathData),
    /// Key/value secrets engine (v1 and v2).
    #[command(subcommand)]
    Kv(KvCmd),
    /// Enable, disable and list secrets engines.
    #[command(subcommand)]
    Secrets(SecretsCmd),
    /// Enable, disable and list auth methods.
    #[command(subcommand)]
    Auth(AuthCmd),
    /// Enable, disable and list audit devices.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Write, read, list and delete ACL policies.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Create, look up, renew and revoke tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Authenticate and store the token in ~/.vault-token.
    Login(LoginCmd),
    /// Take the cluster's snapshot on the active node, store it in S3, prune old ones.
    SnapshotAgent(SnapshotAgentCmd),
    /// Any command this CLI does not implement yet.
    #[command(external_subcommand)]
    Other(Vec<String>),
}

#[derive(Debug, Args)]
pub struct ServerCmd {
    /// Config file or directory; repeatable.
    #[arg(long, value_name = "FILE")]
    pub config: Vec<PathBuf>,
    /// In-memory, TLS off, initialised and unsealed at start.
    #[arg(long)]
    pub dev: bool,
    #[arg(long = "dev-root-token-id")]
    pub dev_root_token_id: Option<String>,
    #[arg(long = "dev-listen-address")]
    pub dev_listen_address: Option<String>,
    /// Validate the config and exit.
    #[arg(long)]
    pub check: bool,
    #[arg(long = "log-level")]
    pub log_level: Option<String>,
}

#[derive(Debug, Args)]
pub struct SnapshotAgentCmd {
    /// The agent's config file (HCL): the node, the login, the bucket, the retention.
    #[arg(long, value_name = "FILE")]
    pub config: std::path::PathBuf,
    /// Run one pass and exit (the default; what the systemd timer runs).
    #[arg(long, conflicts_with = "schedule")]
    pub once: bool,
    /// Stay up and run a pass at each time EXPR says: minutely, hourly, daily, weekly,
    /// monthly, *:M/N, *-*-* *:M/N:00, or every DURATION. Times are UTC.
    #[arg(long, value_name = "EXPR")]
    pub schedule: Option<String>,
    /// Check the config file (and -schedule) and exit.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Subcommand)]
pub enum OperatorCmd {
    /// Initialise a server: make the root key, split it into shares, print them.
    Init(InitCmd),
    /// Give one unseal key share.
    Unseal(UnsealCmd),
    /// Seal the server.
    Seal,
    /// Hand leadership to another node.
    StepDown,
    /// Make new unseal key shares.
    Rekey(RekeyCmd),
    /// Make a new root token from unseal key shares.
    GenerateRoot(GenerateRootCmd),
    /// Start a new barrier key term.
    Rotate,
    /// Print the barrier key term.
    KeyStatus,
    /// Integrated (Raft) storage: peers, join, remove-peer, snapshots, autopilot.
    #[command(subcommand)]
    Raft(RaftCmd),
    /// List the nodes of the HA cluster (sys/ha-status).
    Members,
    /// Any operator command this CLI does not implement yet.
    #[command(external_subcommand)]
    Other(Vec<String>),
}

#[derive(Debug, Subcommand)]
pub enum RaftCmd {
    /// Print the Raft peer set.
    ListPeers(DrTokenArg),
    /// Ask the server to join a Raft cluster through its leader's API address.
    Join(RaftJoinCmd),
    /// Remove a node from the Raft cluster.
    RemovePeer(RaftRemovePeerCmd),
    /// Save, restore and inspect Raft snapshots.
    #[command(subcommand)]
    Snapshot(RaftSnapshotCmd),
    /// Read and change autopilot's configuration, print its view of the cluster.
    #[command(subcommand)]
    Autopilot(AutopilotCmd),
}

/// Vault Enterprise's DR operation token; parsed so its use gets a clear error.
#[derive(Debug, Args)]
pub struct DrTokenArg {
    #[arg(long = "dr-token")]
    pub dr_token: Option<String>,
}

#[derive(Debug, Args)]
pub struct RaftJoinCmd {
    /// Keep retrying the join until it succeeds.
    #[arg(long)]
    pub retry: bool,
    /// Join as a non-voter.
    #[arg(long = "non-voter")]
    pub non_voter: bool,
    /// CA certificate (PEM) that signs the leader's certificate; `@file` reads a file.
    #[arg(long = "leader-ca-cert")]
    pub leader_ca_cert: Option<String>,
    /// Client certificate (PEM) for the leader; `@file` reads a file.
    #[arg(long = "leader-client-cert")]
    pub leader_client_cert: Option<String>,
    /// Client key (PEM) for the leader; `@file` reads a file.
    #[arg(long = "leader-client-key")]
    pub leader_client_key: Option<String>,
    /// Name to check the leader's certificate against.
    #[arg(long = "leader-tls-servername")]
    pub leader_tls_servername: Option<String>,
    /// Cloud auto-join only (not supported by keyhold).
    #[arg(long = "auto-join-scheme")]
    pub auto_join_scheme: Option<String>,
    /// Cloud auto-join only (not supported by keyhold).
    #[arg(long = "auto-join-port")]
    pub auto_join_port: Option<u16>,
    /// The leader's API address, e.g. https://vault-1.internal:8200.
    #[arg(value_name = "LEADER_API_ADDR")]
    pub leader: Option<String>,
}

#[derive(Debug, Args)]
pub struct RaftRemovePeerCmd {
    #[arg(long = "dr-token")]
    pub dr_token: Option<String>,
    /// The node id, as `list-peers` shows it.
    #[arg(value_name = "SERVER_ID")]
    pub server_id: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum RaftSnapshotCmd {
    /// Save a snapshot of the cluster to FILE (written atomically, mode 0600).
    Save {
        #[arg(value_name = "FILE")]
        file: String,
    },
    /// Restore the cluster from the snapshot in FILE.
    Restore(RaftSnapshotRestoreCmd),
    /// Check a snapshot file offline and print its metadata and key usage.
    Inspect(RaftSnapshotInspectCmd),
}

#[derive(Debug, Args)]
pub struct RaftSnapshotRestoreCmd {
    /// Restore even if the snapshot's sealed checksums do not open with this cluster's seal.
    #[arg(long)]
    pub force: bool,
    /// Seed an empty data directory without a running server (needs -config).
    #[arg(long)]
    pub offline: bool,
    /// With -offline: the server's config file(s), for the storage path.
    #[arg(long, value_name = "FILE")]
    pub config: Vec<std::path::PathBuf>,
    #[arg(value_name = "FILE")]
    pub file: String,
}

#[derive(Debug, Args)]
pub struct RaftSnapshotInspectCmd {
    /// Break the keys of the snapshot down by prefix (default true).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = go_bool)]
    pub details: Option<bool>,
    /// Key prefix depth of the breakdown; 0 for whole keys.
    #[arg(long, default_value_t = 2, allow_negative_numbers = true)]
    pub depth: i64,
    /// Only keys with this prefix.
    #[arg(long)]
    pub filter: Option<String>,
    #[arg(value_name = "FILE")]
    pub file: String,
}

#[derive(Debug, Subcommand)]
pub enum AutopilotCmd {
    /// Print autopilot's configuration.
    GetConfig(DrTokenArg),
    /// Change autopilot's configuration. Flags may also be written without their dash
    /// (`min-quorum=3`), as some published runbooks do.
    SetConfig(AutopilotSetConfigCmd),
    /// Print the cluster's health as autopilot sees it.
    State(DrTokenArg),
}

#[derive(Debug, Args)]
pub struct AutopilotSetConfigCmd {
    /// Remove dead servers from the peer set (never below -min-quorum).
    #[arg(long = "cleanup-dead-servers", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = go_bool)]
    pub cleanup_dead_servers: Option<bool>,
    /// How long a server may go without contact from the leader and stay healthy.
    #[arg(long = "last-contact-threshold", value_parser = go_duration)]
    pub last_contact_threshold: Option<std::time::Duration>,
    /// How long a server may go without contact before it counts as dead.
    #[arg(long = "dead-server-last-contact-threshold", value_parser = go_duration)]
    pub dead_server_last_contact_threshold: Option<std::time::Duration>,
    /// How many log entries a server may trail the leader by and stay healthy.
    #[arg(long = "max-trailing-logs")]
    pub max_trailing_logs: Option<u64>,
    /// Fewest voters dead-server cleanup may leave.
    #[arg(long = "min-quorum")]
    pub min_quorum: Option<u64>,
    /// How long a new server must be healthy before it is promoted to voter.
    #[arg(long = "server-stabilization-time", value_parser = go_duration)]
    pub server_stabilization_time: Option<std::time::Duration>,
    /// Turn off automated upgrade migrations.
    #[arg(long = "disable-upgrade-migration", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = go_bool)]
    pub disable_upgrade_migration: Option<bool>,
    #[arg(long = "dr-token")]
    pub dr_token: Option<String>,
}

/// A boolean as Go's `flag` package reads one (`1`, `t`, `TRUE`, `false`...).
fn go_bool(s: &str) -> Result<bool, String> {
    crate::client::parse_bool(s).ok_or_else(|| format!("invalid boolean value {s:?}"))
}

/// A duration as Vault's flags read one: Go text (`10s`, `24h`), or a number of seconds.
fn go_duration(s: &str) -> Result<std::time::Duration, String> {
    crate::client::go_duration::parse_duration_second(s)
        .ok_or_else(|| format!("invalid duration {s:?} (expected e.g. 10s, 5m, 24h)"))
}

#[derive(Debug, Args)]
pub struct InitCmd {
    #[arg(long = "key-shares", alias = "n", default_value_t = 5)]
    pub key_shares: u32,
    #[arg(long = "key-threshold", alias = "t", default_value_t = 3)]
    pub key_threshold: u32,
    #[arg(long = "recovery-shares", default_value_t = 5)]
    pub recovery_shares: u32,
    #[arg(long = "recovery-threshold", default_value_t = 3)]
    pub recovery_threshold: u32,
    /// Print whether the server is initialised (exit 0 yes, 2 no).
    #[arg(long)]
    pub status: bool,
}

#[derive(Debug, Args)]
pub struct UnsealCmd {
    /// The key share; prompted (or read from stdin) when absent or `-`.
    pub key: Option<String>,
    /// Forget the shares given so far.
    #[arg(long)]
    pub reset: bool,
    /// Seal migration.
    #[arg(long)]
    pub migrate: bool,
}

#[derive(Debug, Args)]
pub struct RekeyCmd {
    pub key: Option<String>,
    #[arg(long)]
    pub init: bool,
    #[arg(long)]
    pub cancel: bool,
    #[arg(long)]
    pub status: bool,
    #[arg(long = "key-shares", alias = "n", default_value_t = 5)]
    pub key_shares: u32,
    #[arg(long = "key-threshold", alias = "t", default_value_t = 3)]
    pub key_threshold: u32,
    #[arg(long)]
    pub nonce: Option<String>,
    /// Require the new shares to be proven before they replace the old ones.
    #[arg(long)]
    pub verify: bool,
    /// `barrier` (the unseal keys) or `recovery` (the recovery keys of an auto-unseal seal).
    #[arg(long, default_value = "barrier")]
    pub target: String,
}

#[derive(Debug, Args)]
pub struct GenerateRootCmd {
    pub key: Option<String>,
    #[arg(long)]
    pub init: bool,
    #[arg(long)]
    pub cancel: bool,
    #[arg(long)]
    pub status: bool,
    #[arg(long = "generate-otp")]
    pub generate_otp: bool,
    #[arg(long)]
    pub otp: Option<String>,
    #[arg(long)]
    pub nonce: Option<String>,
    /// Decode an encoded root token with -otp.
    #[arg(long)]
    pub decode: Option<String>,
    #[arg(long = "pgp-key")]
    pub pgp_key: Option<String>,
    /// DR operation tokens are a Vault Enterprise feature.
    #[arg(long = "dr-token")]
    pub dr_token: bool,
}

#[derive(Debug, Args)]
pub struct PathArg {
    pub path: String,
}

#[derive(Debug, Args)]
pub struct PathData {
    pub path: String,
    /// key=value pairs (sent as query parameters for read and delete).
    pub data: Vec<String>,
}

#[derive(Debug, Args)]
pub struct WriteCmd {
    /// Allow a write with no data.
    #[arg(long = "force", alias = "f")]
    pub force: bool,
    pub path: String,
    /// key=value, key=@file, key=- (stdin), or - (a JSON object on stdin).
    pub data: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum KvCmd {
    Get(KvGetCmd),
    Put(KvPutCmd),
    Patch(KvPutCmd),
    List(KvPathCmd),
    Delete(KvVersionsCmd),
    Undelete(KvVersionsCmd),
    Destroy(KvVersionsCmd),
    #[command(subcommand)]
    Metadata(KvMetadataCmd),
}

#[derive(Debug, Args)]
pub struct KvPathCmd {
    #[arg(long)]
    pub mount: Option<String>,
    pub path: String,
}

#[derive(Debug, Args)]
pub struct KvGetCmd {
    #[arg(long)]
    pub mount: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub version: u64,
    pub path: String,
}

#[derive(Debug, Args)]
pub struct KvPutCmd {
    #[arg(long)]
    pub mount: Option<String>,
    /// Check-and-set: write only if the current version is this (0: only if absent).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub cas: i64,
    pub path: String,
    pub data: Vec<String>,
}

#[derive(Debug, Args)]
pub struct KvVersionsCmd {
    #[arg(long)]
    pub mount: Option<String>,
    /// Versions, comma-separated or repeated.
    #[arg(long, value_delimiter = ',')]
    pub versions: Vec<String>,
    pub path: String,
}

#[derive(Debug, Subcommand)]
pub enum KvMetadataCmd {
    Get(KvPathCmd),
    Put(KvMetadataPutCmd),
    Delete(KvPathCmd),
}

#[derive(Debug, Args)]
pub struct KvMetadataPutCmd {
    #[arg(long)]
    pub mount: Option<String>,
    #[arg(long = "max-versions")]
    pub max_versions: Option<u64>,
    #[arg(long = "cas-required", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub cas_required: Option<bool>,
    #[arg(long = "delete-version-after")]
    pub delete_version_after: Option<String>,
    /// key=value, repeatable.
    #[arg(long = "custom-metadata")]
    pub custom_metadata: Vec<String>,
    pub path: String,
}

#[derive(Debug, Subcommand)]
pub enum SecretsCmd {
    Enable(SecretsEnableCmd),
    Disable(PathArg),
    List(ListDetailed),
}

#[derive(Debug, Args)]
pub struct SecretsEnableCmd {
    #[arg(long)]
    pub path: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// KV version (`-version=2` is `-options=version=2`).
    #[arg(long)]
    pub version: Option<u32>,
    /// key=value, repeatable.
    #[arg(long)]
    pub options: Vec<String>,
    #[arg(long = "default-lease-ttl")]
    pub default_lease_ttl: Option<String>,
    #[arg(long = "max-lease-ttl")]
    pub max_lease_ttl: Option<String>,
    #[arg(long)]
    pub local: bool,
    #[arg(long = "seal-wrap")]
    pub seal_wrap: bool,
    /// The engine type, e.g. kv or transit.
    #[arg(value_name = "TYPE")]
    pub engine_type: String,
}

#[derive(Debug, Args)]
pub struct ListDetailed {
    #[arg(long)]
    pub detailed: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuthCmd {
    Enable(AuthEnableCmd),
    Disable(PathArg),
    List(ListDetailed),
}

#[derive(Debug, Args)]
pub struct AuthEnableCmd {
    #[arg(long)]
    pub path: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    #[arg(long)]
    pub local: bool,
    #[arg(value_name = "TYPE")]
    pub method_type: String,
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    Enable(AuditEnableCmd),
    Disable(PathArg),
    List(ListDetailed),
}

#[derive(Debug, Args)]
pub struct AuditEnableCmd {
    #[arg(long)]
    pub path: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    #[arg(long)]
    pub local: bool,
    #[arg(value_name = "TYPE")]
    pub device_type: String,
    /// Device options, key=value.
    pub options: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Upload a policy from a file, or `-` for stdin.
    Write {
        name: String,
        file: String,
    },
    Read {
        name: String,
    },
    List,
    Delete {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    Create(TokenCreateCmd),
    Lookup(TokenTargetCmd),
    Renew(TokenRenewCmd),
    Revoke(TokenRevokeCmd),
}

#[derive(Debug, Args)]
pub struct TokenCreateCmd {
    /// Policy to attach; repeatable or comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub policy: Vec<String>,
    #[arg(long)]
    pub ttl: Option<String>,
    #[arg(long = "explicit-max-ttl")]
    pub explicit_max_ttl: Option<String>,
    #[arg(long)]
    pub period: Option<String>,
    #[arg(long)]
    pub orphan: bool,
    #[arg(long = "use-limit")]
    pub use_limit: Option<u64>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub renewable: Option<bool>,
    #[arg(long = "display-name")]
    pub display_name: Option<String>,
    #[arg(long = "no-default-policy")]
    pub no_default_policy: bool,
    /// service or batch.
    #[arg(long = "type")]
    pub token_type: Option<String>,
    #[arg(long)]
    pub id: Option<String>,
    #[arg(long)]
    pub role: Option<String>,
    /// key=value metadata, repeatable.
    #[arg(long)]
    pub metadata: Vec<String>,
}

#[derive(Debug, Args)]
pub struct TokenTargetCmd {
    /// The token (or accessor with -accessor); the current token when absent.
    pub token: Option<String>,
    #[arg(long)]
    pub accessor: bool,
}

#[derive(Debug, Args)]
pub struct TokenRenewCmd {
    pub token: Option<String>,
    #[arg(long)]
    pub accessor: bool,
    #[arg(long, alias = "i")]
    pub increment: Option<String>,
}

#[derive(Debug, Args)]
pub struct TokenRevokeCmd {
    pub token: Option<String>,
    #[arg(long)]
    pub accessor: bool,
    #[arg(long = "self")]
    pub self_: bool,
    /// `orphan` revokes the token but not its children.
    #[arg(long)]
    pub mode: Option<String>,
}

#[derive(Debug, Args)]
pub struct LoginCmd {
    /// token, userpass or approle.
    #[arg(long, default_value = "token")]
    pub method: String,
    /// Mount path of the auth method (default: the method name).
    #[arg(long)]
    pub path: Option<String>,
    /// Do not store the token in ~/.vault-token.
    #[arg(long = "no-store")]
    pub no_store: bool,
    /// Print only the token; implies -no-store.
    #[arg(long = "token-only")]
    pub token_only: bool,
    /// Do not print the token (still stored).
    #[arg(long = "no-print")]
    pub no_print: bool,
    /// A token (method token), or key=value credentials (username=, password=, role_id=...).
    pub args: Vec<String>,
}
