//! The typed environment: what an `environments/NAME.hcl` file says, with every default
//! filled in. Built by [`super::load`]; read by the planner, the renderer and the providers.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

pub use keyhold_config::TlsVersion;
use serde::Serialize;

/// The node counts a Raft cluster is run with: 1 (a one-voter cluster), 3 or 5.
pub const NODE_COUNTS: &[usize] = &[1, 3, 5];

/// One environment: a cluster and everything configured in it.
#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    /// The environment's name: the file's stem (`local` for `environments/local.hcl`).
    pub name: String,
    /// The environment file, as given.
    pub file: PathBuf,
    pub provider: Provider,
    /// 1, 3 or 5.
    pub nodes: usize,
    pub server: Server,
    pub listener: Listener,
    pub raft: Raft,
    pub autopilot: Autopilot,
    pub log: Log,
    pub seal: Seal,
    pub init: Init,
    pub tls: Tls,
    pub audit: Vec<AuditDevice>,
    pub policies: Vec<PolicyFile>,
    pub auth: Vec<AuthMethod>,
    pub secrets: Vec<SecretsEngine>,
    pub admin: Admin,
    pub snapshots: Option<Snapshots>,
    /// A one-node Shamir Keyhold the local provider runs beside the cluster, whose transit
    /// engine seals it (`unsealer { address }`; only with `seal "transit"`).
    pub unsealer: Option<Unsealer>,
}

/// The transit unsealer of a local environment: its own loopback address, laid out under
/// `.provision/ENV/nodes/unsealer/`, with a certificate from the environment's CA.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unsealer {
    pub address: Ipv4Addr,
}

/// Where and how nodes run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Provider {
    /// Processes on this machine, each on its own loopback address.
    Local(crate::providers::local::LocalSettings),
    /// Existing Linux hosts over SSH, the server run by systemd.
    Ssh(crate::providers::ssh::SshSettings),
}

impl Provider {
    pub fn kind(&self) -> &'static str {
        match self {
            Provider::Local(_) => "local",
            Provider::Ssh(_) => "ssh",
        }
    }
}

/// Which server binary the nodes run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Server {
    /// An explicit path to the `keyhold` binary; otherwise the one beside `provision`, then `PATH`.
    pub binary: Option<PathBuf>,
    /// When set, the binary's `keyhold version` must report this version.
    pub version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listener {
    /// The client API port (8200).
    pub api_port: u16,
    /// The cluster (Raft and forwarding) port (8201).
    pub cluster_port: u16,
    pub tls_min_version: TlsVersion,
    /// The largest request body the API accepts, bytes (Vault's `max_request_size`; the
    /// server's default, 32 MiB, when unset). A snapshot restore, and so `dr rebuild` and
    /// `snapshot restore`, posts the whole archive in one request.
    pub max_request_size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Raft {
    pub performance_multiplier: u32,
    /// Raft log entries after which a snapshot is taken (Vault's default 8192).
    pub snapshot_threshold: Option<u64>,
}

/// Autopilot settings written to `sys/storage/raft/autopilot/configuration` after init.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Autopilot {
    pub cleanup_dead_servers: bool,
    pub dead_server_last_contact_threshold: Duration,
    pub last_contact_threshold: Duration,
    pub max_trailing_logs: u64,
    pub min_quorum: u32,
    pub server_stabilization_time: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Log {
    /// trace, debug, info, warn, error.
    pub level: String,
    /// standard or json.
    pub format: String,
    pub rotate_bytes: Option<u64>,
    pub rotate_duration: Option<Duration>,
    pub rotate_max_files: Option<u32>,
}

/// How the cluster's root key is protected.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Seal {
    /// Unseal key shares, split with Shamir's scheme.
    Shamir,
    /// Auto-unseal with an AWS KMS key (Vault's `seal "awskms"`). Credentials come from the
    /// standard AWS chain of the node (for local nodes: `AWS_*` passed from `provision`'s
    /// environment into the node's environment file), never from this file.
    #[serde(rename = "awskms")]
    AwsKms(AwsKms),
    /// Auto-unseal with the transit engine of another Keyhold or Vault (Vault's
    /// `seal "transit"`). The token is `VAULT_TOKEN` in the node's environment file.
    Transit(TransitSeal),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AwsKms {
    pub region: Option<String>,
    /// A key id, ARN or `alias/NAME`. A missing alias is created by `up` on the local provider.
    pub kms_key_id: String,
    /// A KMS endpoint other than AWS's (moto, LocalStack).
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransitSeal {
    pub address: String,
    pub key_name: String,
    pub mount_path: String,
    pub namespace: Option<String>,
    pub tls_ca_cert: Option<PathBuf>,
    pub tls_client_cert: Option<PathBuf>,
    pub tls_client_key: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    pub disable_renewal: bool,
}

impl Seal {
    pub fn kind(&self) -> &'static str {
        match self {
            Seal::Shamir => "shamir",
            Seal::AwsKms(_) => "awskms",
            Seal::Transit(_) => "transit",
        }
    }

    /// Nodes unseal themselves (awskms, transit); init returns recovery keys, not unseal keys.
    pub fn is_auto(&self) -> bool {
        !matches!(self, Seal::Shamir)
    }
}

/// `operator init` parameters and where its output goes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Init {
    /// How many key shares init makes, and how many open: unseal key shares under a Shamir
    /// seal (`secret_shares`/`secret_threshold` in the file), recovery key shares under an auto
    /// seal (`recovery_shares`/`recovery_threshold`).
    pub secret_shares: u8,
    pub secret_threshold: u8,
    /// age recipients (`age1...`). Either one list for the whole init output, or exactly one per
    /// share (`per_share_recipients`). Empty: a local identity is generated (local/ci only).
    pub recipients: Vec<String>,
    /// Share i is encrypted to `recipients[i]` only; the root token and admin credentials to all.
    pub per_share_recipients: bool,
    /// Revoke the initial root token once the cluster is configured.
    pub revoke_root_token: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tls {
    pub ca_lifetime: Duration,
    pub cert_lifetime: Duration,
    /// Extra DNS names or IP addresses put in every node certificate (a load balancer's name).
    pub extra_sans: Vec<String>,
}

/// An audit device, declared in every node's server config (`audit "file" "NAME"`). Every
/// shipped environment declares one; an environment without an `audit` stanza has none, and its
/// devices can then be managed through the API (`sys/audit`), as the compatibility suite does.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditDevice {
    /// The device type: `file`.
    pub kind: String,
    /// Its mount path (`file/`).
    pub path: String,
    /// Where a `file` device writes: a file name inside the node's log directory, or an
    /// absolute path.
    pub file_path: String,
    /// Extra options passed as-is (`log_raw`, `hmac_accessor`, `format`, `mode`, ...).
    pub options: Vec<(String, String)>,
}

/// An ACL policy written after init from a file beside the environment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyFile {
    pub name: String,
    /// The policy file (resolved against the environment file's directory).
    pub file: PathBuf,
}

/// An auth method to enable, with what to create in it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AuthMethod {
    Userpass {
        path: String,
        users: Vec<UserpassUser>,
    },
    Approle {
        path: String,
        roles: Vec<AppRole>,
    },
}

impl AuthMethod {
    pub fn kind(&self) -> &'static str {
        match self {
            AuthMethod::Userpass { .. } => "userpass",
            AuthMethod::Approle { .. } => "approle",
        }
    }

    pub fn path(&self) -> &str {
        match self {
            AuthMethod::Userpass { path, .. } | AuthMethod::Approle { path, .. } => path,
        }
    }
}

/// A userpass user; its password is generated by the provisioner and kept encrypted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserpassUser {
    pub name: String,
    pub policies: Vec<String>,
    pub token_ttl: Option<Duration>,
    pub token_max_ttl: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppRole {
    pub name: String,
    pub token_policies: Vec<String>,
    pub token_ttl: Option<Duration>,
    pub token_max_ttl: Option<Duration>,
    pub secret_id_ttl: Option<Duration>,
    pub secret_id_num_uses: Option<u64>,
}

/// A secrets engine mounted after init.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SecretsEngine {
    /// `kv` (the only engine type today; transit arrives with auto-unseal).
    pub kind: String,
    pub path: String,
    /// KV version: 1 or 2.
    pub version: u8,
}

/// The login `provision env` hands out: a userpass user of this environment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Admin {
    /// The userpass mount path.
    pub auth_path: String,
    pub user: String,
}

/// Scheduled snapshots (taken by the snapshot agent; see the auto-unseal and snapshots issue).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshots {
    /// A systemd `OnCalendar=` expression (`hourly`, `*-*-* *:00/15:00`).
    pub schedule: String,
    /// Keep at most this many snapshots.
    pub retain: Option<u32>,
    /// Keep everything younger than this.
    pub retain_for: Option<Duration>,
    /// Where the agent stores them; without it no agent config is rendered.
    pub s3: Option<SnapshotS3>,
    /// Scheduled restore drills of what lands in the bucket (`drill { ... }`).
    pub drill: Option<DrillSchedule>,
}

/// `snapshots { drill { ... } }`: when the drill agent (`provision snapshot drill-agent`, on
/// the operator's host, where the environment's state is) runs `provision snapshot verify`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DrillSchedule {
    /// On its own timer: the snapshot agent's schedule syntax (`weekly`, `every 6h`, ...).
    pub schedule: Option<String>,
    /// After every upload: each new object in the bucket is drilled once.
    pub after_upload: bool,
    /// How often the bucket is looked at for a new upload (and the timer checked).
    pub poll_interval: Duration,
}

/// The drill agent's default `poll_interval`.
pub const DEFAULT_DRILL_POLL: Duration = Duration::from_secs(60);

/// `snapshots { s3 { ... } }`: the bucket the snapshot agent uploads to (the agent config's
/// `s3` block, and what `provision snapshot` reads).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SnapshotS3 {
    pub bucket: String,
    /// Put in front of every object name as written (`"prod/"`).
    pub prefix: String,
    pub region: String,
    /// An S3-compatible endpoint (moto, MinIO); path-style addressing is used with it.
    pub endpoint: Option<String>,
    /// SSE-KMS key for the objects.
    pub kms_key_id: Option<String>,
}

impl Environment {
    /// Node names: `keyhold-1` .. `keyhold-N`.
    pub fn node_names(&self) -> Vec<String> {
        (1..=self.nodes).map(|i| format!("keyhold-{i}")).collect()
    }

    /// Where the snapshot agent's AppRole role lives: the environment's own AppRole mount
    /// when it enables one, `approle` (enabled by `up`) otherwise.
    pub fn snapshot_approle_mount(&self) -> &str {
        self.auth
            .iter()
            .find(|m| matches!(m, AuthMethod::Approle { .. }))
            .map_or("approle", |m| m.path().trim_matches('/'))
    }
}
