//! One environment, resolved: its provider, its nodes (names, addresses, where their files
//! live), the `keyhold` binary they run and its state directory; and what every workflow asks
//! of it (the cluster's API, the secret store, credentials, tokens).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rand::distributions::{Alphanumeric, DistString};

use crate::cluster::{credential_key, Cluster, Endpoint};
use crate::environment::{AuthMethod, Environment, Seal};
use crate::pki;
use crate::providers::{self, Host, Provider};
use crate::render::{self, Layout, NodeSpec};
use crate::secret_zero::{self, InitSecrets, SecretStore};
use crate::state::{fingerprint, State, StateDir};

/// Renew a node certificate this long before it expires (at most: see `cert_reason`).
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a node may take to answer after it starts.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a joining node may take to receive its join challenge.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the cluster may take to elect a leader and promote every node to voter.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a node has to stop gracefully (it hands leadership over first).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node under an auto seal may take to unseal itself after it starts or is
/// initialised (the server retries its KMS with backoff; a KMS that does not answer in this
/// time is reported with the server's own warning).
pub const AUTO_UNSEAL_TIMEOUT: Duration = Duration::from_secs(60);
/// The unsealer's node name (its Raft node id, certificate SAN and directory under `nodes/`).
pub const UNSEALER: &str = "unsealer";
/// The policy on the unsealer that the transit seal's token holds.
pub const UNSEALER_POLICY: &str = "autounseal";
/// The period of the transit seal's token: the server renews it at half its TTL.
pub const UNSEALER_TOKEN_PERIOD: Duration = Duration::from_secs(24 * 3600);
/// Where the transit seal's token is kept in the unsealer's encrypted credentials.
pub const UNSEALER_TOKEN_KEY: &str = "transit-seal-token";

/// An environment, resolved: where its nodes live and what they run.
#[derive(Clone)]
pub struct Deployment {
    pub env: Environment,
    pub dir: StateDir,
    pub binary: PathBuf,
    pub provider: Arc<dyn Provider>,
    pub nodes: Vec<NodeSpec>,
    /// The one-node transit unsealer (`unsealer { address }`), if the environment has one.
    pub unsealer: Option<NodeSpec>,
}

impl Deployment {
    /// Resolves `env` under the state root (`.provision`): the server binary, the provider,
    /// each node's address, directory and files.
    pub fn new(env: Environment, state_root: &Path) -> Result<Deployment> {
        let state_root = std::path::absolute(state_root)
            .with_context(|| format!("resolve {}", state_root.display()))?;
        let dir = StateDir::new(state_root.join(&env.name));
        let binary = resolve_binary(&env)?;
        let provider = providers::for_environment(&env, &dir);
        let addresses = provider.addresses(env.nodes);
        let nodes = NodeSpec::cluster(&env, &addresses, |name| provider.layout(name))?;
        let unsealer = env.unsealer.as_ref().map(|u| {
            let address = IpAddr::V4(u.address);
            let url = |port| format!("https://{}", std::net::SocketAddr::new(address, port));
            NodeSpec {
                name: UNSEALER.to_string(),
                index: 0,
                address,
                api_addr: url(env.listener.api_port),
                cluster_addr: url(env.listener.cluster_port),
                peers: Vec::new(),
                layout: provider.layout(UNSEALER),
            }
        });
        Ok(Deployment {
            env,
            dir,
            binary,
            provider,
            nodes,
            unsealer,
        })
    }

    /// The host that carries `node`.
    pub fn host(&self, node: &NodeSpec) -> Arc<dyn Host> {
        self.provider.host(node)
    }

    /// Whether `host` needs the environment's binary: it has none, or its server is stopped
    /// and has another (a running server keeps the binary it runs until `provision upgrade`
    /// replaces it, node by node).
    pub async fn binary_wanted(&self, host: &dyn Host) -> Result<bool> {
        let present = host
            .run(&["test", "-e", Layout::BINARY], Duration::from_secs(10))
            .await?
            .success();
        if !present {
            return Ok(true);
        }
        Ok(matches!(
            host.service_state(providers::Service::Server).await?,
            providers::ServiceState::Stopped
        ))
    }

    /// Installs the environment's binary on `host` where [`Deployment::binary_wanted`] says
    /// so; true when it changed.
    pub async fn install_binary(&self, host: &dyn Host) -> Result<bool> {
        if !self.binary_wanted(host).await? {
            return Ok(false);
        }
        host.install_file(&self.binary, Path::new(Layout::BINARY), 0o755)
            .await
            .with_context(|| format!("install {} on {}", self.binary.display(), host.node()))
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.tls_dir().join(render::CA_CERT)
    }

    pub fn cluster(&self) -> Result<Cluster> {
        let ca = std::fs::read(self.ca_file()).with_context(|| {
            format!(
                "read the environment's CA {} (run `provision up --env {}` first)",
                self.ca_file().display(),
                self.env.name
            )
        })?;
        let endpoints = self
            .nodes
            .iter()
            .map(|n| Endpoint {
                name: n.name.clone(),
                api_addr: n.api_addr.clone(),
            })
            .collect();
        Ok(Cluster::new(endpoints, ca))
    }

    /// The private environment file (0600) of a node (`EnvironmentFile=` of its units on a
    /// host): for an awskms seal, the `AWS_*` credentials `provision` itself runs with, so a
    /// node restarted later still reaches KMS; for a transit seal, `VAULT_TOKEN`: the token `up` made on the
    /// environment's unsealer, else provision's own `VAULT_TOKEN`. None when nothing needs
    /// passing on (the file is left as it is).
    pub fn node_environment_file(&self, transit_token: Option<&str>) -> Option<String> {
        let from_env = |names: &[&str]| -> Vec<(String, String)> {
            names
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
                .collect()
        };
        let mut vars: Vec<(String, String)> = match (&self.env.seal, transit_token) {
            (Seal::AwsKms(_), _) => from_env(crate::aws::kms::AWS_VARIABLES),
            (Seal::Transit(_), Some(token)) => vec![("VAULT_TOKEN".into(), token.to_string())],
            (Seal::Transit(_), None) => from_env(&["VAULT_TOKEN"]),
            (Seal::Shamir, _) => Vec::new(),
        };
        // The snapshot agent reaches S3 with provision's own AWS credentials.
        if self.env.snapshots.as_ref().is_some_and(|s| s.s3.is_some()) {
            for (k, v) in from_env(crate::aws::kms::AWS_VARIABLES) {
                if !vars.iter().any(|(have, _)| have == &k) {
                    vars.push((k, v));
                }
            }
        }
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(_, v)| !v.is_empty() && !v.contains('\n'))
            .collect();
        if vars.is_empty() {
            return None;
        }
        Some(render::credentials_env_file(&self.env.name, &vars))
    }

    pub fn env_fingerprint(&self) -> Result<String> {
        let mut bytes = std::fs::read(&self.env.file)
            .with_context(|| format!("read {}", self.env.file.display()))?;
        for policy in &self.env.policies {
            bytes.extend(
                std::fs::read(&policy.file)
                    .with_context(|| format!("read {}", policy.file.display()))?,
            );
        }
        Ok(fingerprint(&bytes))
    }

    pub fn load_state(&self, env_fingerprint: &str) -> Result<State> {
        Ok(match State::load(&self.dir)? {
            Some(state) => state,
            None => State::new(
                &self.env.name,
                self.env.file.clone(),
                env_fingerprint.to_string(),
                self.env.provider.kind(),
            ),
        })
    }

    /// The identity files that open this environment's secrets: the ones given, else the
    /// generated local identity.
    pub fn identities(&self, given: &[PathBuf]) -> Result<Vec<secret_zero::Identity>> {
        if !given.is_empty() {
            return secret_zero::read_identities(given);
        }
        let local = self.dir.identity_file();
        if local.exists() {
            return secret_zero::read_identities(&[local]);
        }
        bail!(
            "no identity to decrypt {}'s secrets: pass --identity FILE (an age identity of one \
             of the environment's recipients)",
            self.env.name
        )
    }

    /// The unsealer's own secret store (`secrets/unsealer/`: its init output, one share and
    /// its root token, and the transit seal's token), encrypted to the environment's recipients.
    pub fn unsealer_store(&self) -> Result<SecretStore> {
        let (store, _) = self.secret_store()?;
        Ok(store.sibling(self.dir.secrets_dir().join(UNSEALER)))
    }

    /// The environment with only what its unsealer runs: one Shamir node, no snapshots.
    pub fn unsealer_env(&self) -> Environment {
        let mut env = self.env.clone();
        env.seal = Seal::Shamir;
        env.nodes = 1;
        env.unsealer = None;
        env.snapshots = None;
        env
    }

    pub fn unsealer_cluster(&self, unsealer: &NodeSpec) -> Result<Cluster> {
        let ca = std::fs::read(self.ca_file())
            .with_context(|| format!("read the environment's CA {}", self.ca_file().display()))?;
        Ok(Cluster::new(
            vec![Endpoint {
                name: unsealer.name.clone(),
                api_addr: unsealer.api_addr.clone(),
            }],
            ca,
        ))
    }

    /// The secret store, creating the local identity when the environment names no
    /// recipients. The flag is true when the identity was created now.
    pub fn secret_store(&self) -> Result<(SecretStore, bool)> {
        let init = &self.env.init;
        let (recipients, created) = if init.recipients.is_empty() {
            let path = self.dir.identity_file();
            if path.exists() {
                let ids = secret_zero::read_identities(std::slice::from_ref(&path))?;
                let public: Vec<String> = ids.iter().map(|i| i.to_public().to_string()).collect();
                (public, false)
            } else {
                crate::state::create_private_dir(self.dir.root())?;
                (vec![secret_zero::generate_identity(&path)?], true)
            }
        } else {
            (init.recipients.clone(), false)
        };
        let parsed = secret_zero::parse_recipients(&recipients)
            .with_context(|| format!("init.recipients in {}", self.env.file.display()))?;
        Ok((
            SecretStore::new(self.dir.secrets_dir(), parsed, init.per_share_recipients),
            created,
        ))
    }

    pub fn wanted_sans(&self, node: &NodeSpec) -> (Vec<String>, Vec<IpAddr>) {
        let mut dns = vec![node.name.clone(), "localhost".to_string()];
        let mut ips = vec![node.address];
        if node.address != IpAddr::V4(Ipv4Addr::LOCALHOST) {
            ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        let (extra_dns, extra_ips) = pki::split_sans(&self.env.tls.extra_sans);
        dns.extend(extra_dns);
        ips.extend(extra_ips);
        (dns, ips)
    }

    /// Why `node`'s certificate must be (re)issued, or None; read from its host.
    pub async fn cert_reason(
        &self,
        host: &dyn Host,
        node: &NodeSpec,
        ca: Option<&pki::CertInfo>,
    ) -> Result<Option<String>> {
        let Some(ca) = ca else {
            return Ok(Some("no CA yet".into()));
        };
        let tls = Path::new(Layout::TLS_DIR);
        if host.read_file(&tls.join(render::NODE_KEY)).await?.is_none() {
            return Ok(Some("no certificate yet".into()));
        }
        let cert = host.read_file(&tls.join(render::NODE_CERT)).await?;
        let info = cert.and_then(|pem| pki::inspect_pem(&String::from_utf8_lossy(&pem)).ok());
        Ok(match info {
            None => Some("no certificate yet".into()),
            Some(info) => {
                let (dns, ips) = self.wanted_sans(node);
                // A certificate shorter-lived than the window (ci.hcl: 24h) would be due again
                // on every run; those are renewed once two thirds of their lifetime are gone.
                let renew_before = RENEW_BEFORE.min(self.env.tls.cert_lifetime / 3);
                pki::reissue_reason(&info, &dns, &ips, ca, renew_before)
            }
        })
    }

    /// The generated userpass passwords, with any missing one generated now. The flag is true
    /// when one was generated.
    pub fn credentials(
        &self,
        store: &SecretStore,
        identities: &[secret_zero::Identity],
    ) -> Result<(BTreeMap<String, String>, bool)> {
        let mut creds = store.load_credentials(identities)?;
        let mut changed = false;
        for method in &self.env.auth {
            if let AuthMethod::Userpass { path, users } = method {
                for user in users {
                    creds
                        .entry(credential_key(path, &user.name))
                        .or_insert_with(|| {
                            changed = true;
                            Alphanumeric.sample_string(&mut rand::thread_rng(), 32)
                        });
                }
            }
        }
        Ok((creds, changed))
    }

    pub async fn admin_login(
        &self,
        cluster: &Cluster,
        credentials: &BTreeMap<String, String>,
    ) -> Result<String> {
        let admin = &self.env.admin;
        let key = credential_key(&admin.auth_path, &admin.user);
        let password = credentials
            .get(&key)
            .ok_or_else(|| anyhow!("no password for the admin login {key}; run `provision up`"))?;
        cluster
            .login_userpass(&admin.auth_path, &admin.user, password)
            .await
    }

    /// An admin token for `provision env` and `status`.
    pub async fn admin_token(&self, identity: &[PathBuf]) -> Result<String> {
        self.admin_token_on(&self.cluster()?, identity).await
    }

    /// A token of the environment's admin login on `cluster` (this environment's, or a cluster
    /// restored from its snapshot), with the password from the encrypted credentials.
    pub async fn admin_token_on(&self, cluster: &Cluster, identity: &[PathBuf]) -> Result<String> {
        let identities = self.identities(identity)?;
        let (store, _) = self.secret_store()?;
        let creds = store.load_credentials(&identities)?;
        self.admin_login(cluster, &creds).await
    }

    /// A root token for one operation that needs more than the admin policy allows (a
    /// snapshot restore replaces everything): the initial root token while it lives, else one
    /// generated from the (unseal or recovery) shares. The second value says whether it was
    /// generated, and must then be revoked once the operation is over.
    pub async fn operation_root_token(&self, identity: &[PathBuf]) -> Result<(String, bool)> {
        let init = self
            .init_secrets(identity)
            .context("open the init output (the shares and root token) with the identity")?;
        let revoked = State::load(&self.dir)?.is_some_and(|s| s.cluster.root_token_revoked);
        if !revoked {
            return Ok((init.root_token.clone(), false));
        }
        let token = self
            .cluster()?
            .generate_root(&init.unseal_keys_b64)
            .await
            .context("generate a root token for this operation from the shares")?;
        Ok((token, true))
    }

    /// The decrypted init output (for `--show-secrets` and the workflows that need shares).
    pub fn init_secrets(&self, identity: &[PathBuf]) -> Result<InitSecrets> {
        let identities = self.identities(identity)?;
        let (store, _) = self.secret_store()?;
        store.load_init(&identities)
    }
}

/// The version `binary` reports (`keyhold version -format=json`).
pub fn binary_version(binary: &Path) -> Result<semver::Version> {
    let out = Command::new(binary)
        .args(["version", "-format=json"])
        .output()
        .with_context(|| format!("run {} version", binary.display()))?;
    if !out.status.success() {
        bail!(
            "{} version failed ({}): is it a keyhold binary for this machine?",
            binary.display(),
            out.status
        );
    }
    let reported: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{} version printed no JSON: is it a keyhold binary?",
            binary.display()
        )
    })?;
    let text = reported["version"].as_str().unwrap_or_default();
    semver::Version::parse(text.trim_start_matches('v')).with_context(|| {
        format!(
            "{} reports version {text:?}, not a semantic version",
            binary.display()
        )
    })
}

/// The `keyhold` binary nodes run: `server.binary`, else the one beside `provision`, else
/// `keyhold` on `PATH`. With `server.version`, its version must match.
pub fn resolve_binary(env: &Environment) -> Result<PathBuf> {
    let found = match &env.server.binary {
        Some(path) => Some(path.clone()),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("keyhold")))
            .filter(|p| crate::environment::is_executable(p))
            .or_else(|| {
                std::env::var_os("PATH").and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|d| d.join("keyhold"))
                        .find(|p| crate::environment::is_executable(p))
                })
            }),
    };
    let Some(binary) = found else {
        bail!(
            "no keyhold binary: build it (`cargo build --release` puts it beside provision), put \
             it on PATH, or set server {{ binary = \"...\" }} in {}",
            env.file.display()
        );
    };
    let binary =
        std::path::absolute(&binary).with_context(|| format!("resolve {}", binary.display()))?;
    if let Some(wanted) = &env.server.version {
        let out = Command::new(&binary)
            .arg("version")
            .output()
            .with_context(|| format!("run {} version", binary.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let wanted_v = wanted.trim_start_matches('v');
        let matches = text
            .split_whitespace()
            .any(|w| w.trim_start_matches('v') == wanted_v);
        if !matches {
            bail!(
                "{} reports {:?}, but {} asks for version {wanted}",
                binary.display(),
                text.trim(),
                env.file.display()
            );
        }
    }
    Ok(binary)
}
