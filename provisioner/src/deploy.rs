//! One environment being provisioned: its nodes, hosts and state, and the commands that act
//! on it. `up` is a sequence of idempotent steps, each of which looks at what exists (files,
//! processes, the API) before it acts, so a second run changes nothing and a run interrupted
//! anywhere is finished by the next. `plan` asks the same questions and acts on none.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use chrono::Utc;
use rand::distributions::{Alphanumeric, DistString};
use serde::Serialize;

use crate::certs::{self, Ca};
use crate::cluster::{credential_key, retrying, Cluster, Endpoint, Role};
use crate::environment::{AuthMethod, Environment, Provider, Seal};
use crate::host::{Host, LocalHost, ServiceState};
use crate::output::{Outcome, Progress};
use crate::render::{self, Layout, NodeSpec, Renderer};
use crate::secrets::{self, InitSecrets, SecretStore};
use crate::state::{fingerprint, State, StateDir};
use zeroize::Zeroizing;

/// Renew a node certificate this long before it expires (at most: see `cert_reason`).
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a node may take to answer after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a joining node may take to receive its join challenge.
const JOIN_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the cluster may take to elect a leader and promote every node to voter.
const FORM_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a node has to stop gracefully (it hands leadership over first).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node under an auto seal may take to unseal itself after it starts or is
/// initialised (the server retries its KMS with backoff; a KMS that does not answer in this
/// time is reported with the server's own warning).
const AUTO_UNSEAL_TIMEOUT: Duration = Duration::from_secs(60);
/// The unsealer's node name (its Raft node id, certificate SAN and directory under `nodes/`).
pub const UNSEALER: &str = "unsealer";
/// The policy on the unsealer that the transit seal's token holds.
const UNSEALER_POLICY: &str = "autounseal";
/// The period of the transit seal's token: the server renews it at half its TTL.
const UNSEALER_TOKEN_PERIOD: &str = "24h";
/// Where the transit seal's token is kept in the unsealer's encrypted credentials.
const UNSEALER_TOKEN_KEY: &str = "transit-seal-token";

/// An environment, resolved: where its nodes live and what they run.
pub struct Deployment {
    pub env: Environment,
    pub dir: StateDir,
    pub binary: PathBuf,
    pub nodes: Vec<NodeSpec>,
    /// The one-node transit unsealer (`unsealer { address }`), if the environment has one.
    pub unsealer: Option<NodeSpec>,
}

/// One change `up` would make, as `plan` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// The node it concerns, or None for the cluster as a whole.
    pub node: Option<String>,
    pub action: String,
}

impl Deployment {
    /// Resolves `env` under the state root (`.provision`): the server binary, each node's
    /// address, directory and files.
    pub fn new(env: Environment, state_root: &Path) -> Result<Deployment> {
        let state_root = std::path::absolute(state_root)
            .with_context(|| format!("resolve {}", state_root.display()))?;
        let dir = StateDir::new(state_root.join(&env.name));
        let binary = resolve_binary(&env)?;
        let Provider::Local(local) = &env.provider;
        let base = u32::from(local.address_base);
        let addresses: Vec<IpAddr> = (0..env.nodes as u32)
            .map(|i| IpAddr::V4(Ipv4Addr::from(base + i)))
            .collect();
        let nodes_dir = dir.nodes_dir();
        let nodes = NodeSpec::cluster(&env, &addresses, |name| {
            Layout::local(nodes_dir.join(name), binary.clone())
        })?;
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
                layout: Layout::local(nodes_dir.join(UNSEALER), binary.clone()),
            }
        });
        Ok(Deployment {
            env,
            dir,
            binary,
            nodes,
            unsealer,
        })
    }

    pub fn host(&self, node: &NodeSpec) -> LocalHost {
        LocalHost::new(
            &node.name,
            node.layout.root.clone(),
            self.binary.clone(),
            PathBuf::from(Layout::SERVER_CONFIG),
            Path::new(Layout::LOG_DIR).join("keyhold.out"),
        )
    }

    /// The node's snapshot agent process, when the environment stores snapshots in S3.
    pub fn agent_host(&self, node: &NodeSpec) -> Option<LocalHost> {
        let snapshots = self.env.snapshots.as_ref().filter(|s| s.s3.is_some())?;
        Some(LocalHost::snapshot_agent(
            &node.name,
            node.layout.root.clone(),
            self.binary.clone(),
            PathBuf::from(Layout::SNAPSHOT_AGENT_CONFIG),
            &snapshots.schedule,
        ))
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

    /// Where an audit `file` device writes, as configured in the cluster. Local nodes run with
    /// their own directory as working directory, so one relative path serves every node.
    fn audit_file_path(file_path: &str) -> String {
        if matches!(file_path, "stdout" | "discard") || file_path.starts_with('/') {
            file_path.to_string()
        } else {
            Path::new(Layout::LOG_DIR)
                .join(file_path)
                .display()
                .to_string()
        }
    }

    /// The private environment file (0600) of a local node: for an awskms seal, the `AWS_*`
    /// credentials `provision` itself runs with, so a node restarted later by another `up`
    /// still reaches KMS; for a transit seal, `VAULT_TOKEN`: the token `up` made on the
    /// environment's unsealer, else provision's own `VAULT_TOKEN`. None when nothing needs
    /// passing on (the file is left as it is).
    fn local_environment_file(&self, transit_token: Option<&str>) -> Option<String> {
        let from_env = |names: &[&str]| -> Vec<(String, String)> {
            names
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
                .collect()
        };
        let mut vars: Vec<(String, String)> = match (&self.env.seal, transit_token) {
            (Seal::AwsKms(_), _) => from_env(crate::kms::AWS_VARIABLES),
            (Seal::Transit(_), Some(token)) => vec![("VAULT_TOKEN".into(), token.to_string())],
            (Seal::Transit(_), None) => from_env(&["VAULT_TOKEN"]),
            (Seal::Shamir, _) => Vec::new(),
        };
        // The snapshot agent reaches S3 with provision's own AWS credentials.
        if self.env.snapshots.as_ref().is_some_and(|s| s.s3.is_some()) {
            for (k, v) in from_env(crate::kms::AWS_VARIABLES) {
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

    fn env_fingerprint(&self) -> Result<String> {
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

    fn load_state(&self, env_fingerprint: &str) -> Result<State> {
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
    fn identities(&self, given: &[PathBuf]) -> Result<Vec<secrets::Identity>> {
        if !given.is_empty() {
            return secrets::read_identities(given);
        }
        let local = self.dir.identity_file();
        if local.exists() {
            return secrets::read_identities(&[local]);
        }
        bail!(
            "no identity to decrypt {}'s secrets: pass --identity FILE (an age identity of one \
             of the environment's recipients)",
            self.env.name
        )
    }

    /// The unsealer's own secret store (`secrets/unsealer/`: its init output, one share and
    /// its root token, and the transit seal's token), encrypted to the environment's recipients.
    fn unsealer_store(&self) -> Result<SecretStore> {
        let (store, _) = self.secret_store()?;
        Ok(store.sibling(self.dir.secrets_dir().join(UNSEALER)))
    }

    /// The environment with only what its unsealer runs: one Shamir node, no snapshots.
    fn unsealer_env(&self) -> Environment {
        let mut env = self.env.clone();
        env.seal = Seal::Shamir;
        env.nodes = 1;
        env.unsealer = None;
        env.snapshots = None;
        env
    }

    fn unsealer_cluster(&self, unsealer: &NodeSpec) -> Result<Cluster> {
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
    fn secret_store(&self) -> Result<(SecretStore, bool)> {
        let init = &self.env.init;
        let (recipients, created) = if init.recipients.is_empty() {
            let path = self.dir.identity_file();
            if path.exists() {
                let ids = secrets::read_identities(std::slice::from_ref(&path))?;
                let public: Vec<String> = ids.iter().map(|i| i.to_public().to_string()).collect();
                (public, false)
            } else {
                crate::state::create_private_dir(self.dir.root())?;
                (vec![secrets::generate_identity(&path)?], true)
            }
        } else {
            (init.recipients.clone(), false)
        };
        let parsed = secrets::parse_recipients(&recipients)
            .with_context(|| format!("init.recipients in {}", self.env.file.display()))?;
        Ok((
            SecretStore::new(self.dir.secrets_dir(), parsed, init.per_share_recipients),
            created,
        ))
    }

    fn wanted_sans(&self, node: &NodeSpec) -> (Vec<String>, Vec<IpAddr>) {
        let mut dns = vec![node.name.clone(), "localhost".to_string()];
        let mut ips = vec![node.address];
        if node.address != IpAddr::V4(Ipv4Addr::LOCALHOST) {
            ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        let (extra_dns, extra_ips) = certs::split_sans(&self.env.tls.extra_sans);
        dns.extend(extra_dns);
        ips.extend(extra_ips);
        (dns, ips)
    }

    /// Issues `node`'s server certificate from `ca` and writes it and its key to the node.
    fn issue_server_cert(&self, host: &LocalHost, node: &NodeSpec, ca: &Ca) -> Result<()> {
        let (dns, ips) = self.wanted_sans(node);
        let cert = ca.issue_server(&node.name, &dns, &ips, self.env.tls.cert_lifetime)?;
        let tls = Path::new(Layout::TLS_DIR);
        host.put_file(&tls.join(render::NODE_KEY), cert.key_pem.as_bytes(), 0o600)?;
        host.put_file(
            &tls.join(render::NODE_CERT),
            cert.cert_pem.as_bytes(),
            0o644,
        )?;
        Ok(())
    }

    /// Why `node`'s certificate must be (re)issued, or None.
    fn cert_reason(&self, node: &NodeSpec, ca: Option<&certs::CertInfo>) -> Option<String> {
        let path = node.layout.tls_file(render::NODE_CERT);
        let Some(ca) = ca else {
            return Some("no CA yet".into());
        };
        let key = node.layout.tls_file(render::NODE_KEY);
        if !key.exists() {
            return Some("no certificate yet".into());
        }
        match certs::inspect_file(&path) {
            Err(_) => Some("no certificate yet".into()),
            Ok(info) => {
                let (dns, ips) = self.wanted_sans(node);
                // A certificate shorter-lived than the window (ci.hcl: 24h) would be due again
                // on every run; those are renewed once two thirds of their lifetime are gone.
                let renew_before = RENEW_BEFORE.min(self.env.tls.cert_lifetime / 3);
                certs::reissue_reason(&info, &dns, &ips, ca, renew_before)
            }
        }
    }

    /// What `up` would do, asking every question `up` asks and acting on none.
    pub async fn plan(&self) -> Result<Vec<Change>> {
        let mut changes = Vec::new();
        let add = |changes: &mut Vec<Change>, node: Option<&str>, action: String| {
            changes.push(Change {
                node: node.map(str::to_string),
                action,
            })
        };
        let ca_info = certs::inspect_file(&self.ca_file()).ok();
        if ca_info.is_none() {
            add(&mut changes, None, "create the environment's CA".into());
        }
        if let Seal::AwsKms(kms) = &self.env.seal {
            match crate::kms::key_state(kms).await {
                Ok(crate::kms::KeyState::Exists(_)) => {}
                Ok(crate::kms::KeyState::MissingAlias) => add(
                    &mut changes,
                    None,
                    format!(
                        "create a symmetric KMS key and its alias {} ({})",
                        kms.kms_key_id,
                        kms.endpoint.as_deref().unwrap_or("AWS")
                    ),
                ),
                Err(e) => add(
                    &mut changes,
                    None,
                    format!("check the KMS key (cannot be read now: {e:#})"),
                ),
            }
        }
        if let Some(unsealer) = &self.unsealer {
            let name = Some(unsealer.name.as_str());
            if ca_info.is_some() {
                if let Some(reason) = self.cert_reason(unsealer, ca_info.as_ref()) {
                    add(
                        &mut changes,
                        name,
                        format!("issue its certificate ({reason})"),
                    );
                }
            }
            match self.host(unsealer).service_state()? {
                ServiceState::Stopped => add(
                    &mut changes,
                    name,
                    "start, initialise if new, and unseal the transit unsealer".into(),
                ),
                ServiceState::Running { .. } => {
                    let health = match ca_info {
                        Some(_) => self.unsealer_cluster(unsealer)?.health(0).await,
                        None => None,
                    };
                    if Role::from_health(health.as_ref()) != Role::Active {
                        add(&mut changes, name, "unseal the transit unsealer".into());
                    }
                }
            }
        }
        let renderer = Renderer::new()?;
        let state = State::load(&self.dir)?;
        let mut config_changed = BTreeSet::new();
        for node in &self.nodes {
            if let Some(reason) = self.cert_reason(node, ca_info.as_ref()) {
                add(
                    &mut changes,
                    Some(&node.name),
                    format!("issue its certificate ({reason})"),
                );
            }
            let host = self.host(node);
            for file in renderer.render_node(&self.env, node)? {
                let old = host.read_file(&file.path)?;
                if old.as_deref() != Some(file.content.as_bytes()) {
                    let verb = if old.is_none() { "write" } else { "update" };
                    add(
                        &mut changes,
                        Some(&node.name),
                        format!("{verb} {} ({})", file.path.display(), file.purpose),
                    );
                }
                if file.path == Path::new(Layout::SERVER_CONFIG) {
                    let running_with = state
                        .as_ref()
                        .and_then(|s| s.nodes.get(&node.name))
                        .map(|n| n.config_sha256.as_str());
                    if running_with != Some(fingerprint(file.content.as_bytes()).as_str()) {
                        config_changed.insert(node.name.clone());
                    }
                }
            }
            match host.service_state()? {
                ServiceState::Stopped => add(&mut changes, Some(&node.name), "start it".into()),
                ServiceState::Running { .. } if config_changed.contains(&node.name) => add(
                    &mut changes,
                    Some(&node.name),
                    "restart it (its config changed)".into(),
                ),
                ServiceState::Running { .. } => {}
            }
        }
        if ca_info.is_none() {
            // Nothing can be asked of the cluster before it has certificates.
            add(&mut changes, None, "initialise the cluster".into());
            add(&mut changes, None, "unseal every node".into());
            add(
                &mut changes,
                None,
                "configure audit, policies, secrets engines and auth methods".into(),
            );
            return Ok(changes);
        }
        let cluster = self.cluster()?;
        let roles = cluster.roles().await;
        let any_initialized = roles
            .iter()
            .any(|(r, _)| matches!(r, Role::Active | Role::Standby | Role::Sealed));
        // Stopped nodes (after `down`) answer nothing, but `up` starts and unseals them.
        let initialized_before = state
            .as_ref()
            .is_some_and(|s| s.cluster.initialized_at.is_some());
        if !any_initialized && !initialized_before {
            add(&mut changes, None, "initialise the cluster".into());
        }
        for (node, (role, _)) in self.nodes.iter().zip(&roles) {
            if matches!(role, Role::Sealed | Role::Uninitialized | Role::Down) {
                add(&mut changes, Some(&node.name), "unseal it".into());
            }
        }
        let fingerprint = self.env_fingerprint()?;
        let configured = state
            .as_ref()
            .and_then(|s| s.cluster.configured_fingerprint.clone());
        if configured.as_deref() != Some(fingerprint.as_str()) {
            add(
                &mut changes,
                None,
                "configure audit, policies, secrets engines and auth methods".into(),
            );
        }
        if self.env.init.revoke_root_token
            && !state.as_ref().is_some_and(|s| s.cluster.root_token_revoked)
        {
            add(&mut changes, None, "revoke the initial root token".into());
        }
        Ok(changes)
    }

    /// Brings the environment to what its file says. See the module comment.
    pub async fn up(&self, identity: &[PathBuf], progress: &mut Progress) -> Result<UpReport> {
        // What this run applies; read once, so one run cannot record a file it did not apply.
        let env_fingerprint = self.env_fingerprint()?;
        let mut state = self.load_state(&env_fingerprint)?;
        let mut report = UpReport::default();

        // Certificates.
        let step = progress.start("certificates");
        let (ca, ca_created) = Ca::ensure(
            &self.dir.tls_dir(),
            &self.env.name,
            self.env.tls.ca_lifetime,
        )?;
        let mut issued = Vec::new();
        let mut reload = Vec::new();
        for node in &self.nodes {
            let host = self.host(node);
            host.ensure_dir(Path::new(Layout::TLS_DIR), 0o700)?;
            let mut changed = host.put_file(
                &Path::new(Layout::TLS_DIR).join(render::CA_CERT),
                ca.cert_pem().as_bytes(),
                0o644,
            )?;
            if let Some(reason) = self.cert_reason(node, Some(ca.info())) {
                self.issue_server_cert(&host, node, &ca)?;
                let tls = Path::new(Layout::TLS_DIR);
                let client =
                    ca.issue_client(&format!("{}-client", node.name), self.env.tls.cert_lifetime)?;
                host.put_file(
                    &tls.join(render::CLIENT_KEY),
                    client.key_pem.as_bytes(),
                    0o600,
                )?;
                host.put_file(
                    &tls.join(render::CLIENT_CERT),
                    client.cert_pem.as_bytes(),
                    0o644,
                )?;
                issued.push(format!("{} ({reason})", node.name));
                changed = true;
            }
            if changed {
                reload.push(node.name.clone());
            }
            let info = certs::inspect_file(&node.layout.tls_file(render::NODE_CERT))?;
            let entry = state.nodes.entry(node.name.clone()).or_default();
            entry.cert_fingerprint_sha256 = info.fingerprint_sha256;
            entry.cert_not_after = info.not_after;
        }
        // The CA file the clients (and `provision env`) use.
        crate::state::write_atomic(&self.ca_file(), ca.cert_pem().as_bytes(), 0o644)?;
        state.ca = Some(ca.info().into());
        let detail = match (ca_created, issued.is_empty()) {
            (true, _) => format!("created the CA; issued {}", issued.join(", ")),
            (false, true) => "all valid".to_string(),
            (false, false) => format!("issued {}", issued.join(", ")),
        };
        let outcome = if ca_created || !issued.is_empty() {
            Outcome::Changed
        } else {
            Outcome::Ok
        };
        progress.finish(step, outcome, detail);
        state.save(&self.dir)?;

        // The transit unsealer, before any node needs it: its token goes into the nodes'
        // environment files.
        let transit_token = match &self.unsealer {
            Some(unsealer) => Some(
                self.up_unsealer(unsealer, &ca, identity, &mut state, progress)
                    .await?,
            ),
            None => None,
        };

        // Files.
        let step = progress.start("files");
        let renderer = Renderer::new()?;
        let mut written = Vec::new();
        // The server config each node should run with; a running node started with another
        // (state records the config each process was started with) is restarted, one node at
        // a time, once the cluster is unsealed.
        let mut config_sha = BTreeMap::new();
        // Nodes whose environment file changed: a running one is restarted like one whose
        // config changed (it reads the file only at start).
        let mut env_changed = BTreeSet::new();
        let env_file = self.local_environment_file(transit_token.as_deref().map(|t| t.as_str()));
        for node in &self.nodes {
            let host = self.host(node);
            host.ensure_dir(Path::new(Layout::DATA_DIR), 0o700)?;
            host.ensure_dir(Path::new(Layout::LOG_DIR), 0o750)?;
            if let Some(content) = &env_file {
                if host.put_file(Path::new(Layout::ENV_FILE), content.as_bytes(), 0o600)? {
                    written.push(format!("{}:{}", node.name, Layout::ENV_FILE));
                    env_changed.insert(node.name.clone());
                }
            }
            for file in renderer.render_node(&self.env, node)? {
                if host.put_file(&file.path, file.content.as_bytes(), file.mode)? {
                    written.push(format!("{}:{}", node.name, file.path.display()));
                }
                if file.path == Path::new(Layout::SERVER_CONFIG) {
                    config_sha.insert(node.name.clone(), fingerprint(file.content.as_bytes()));
                }
            }
        }
        let outcome = if written.is_empty() {
            Outcome::Ok
        } else {
            Outcome::Changed
        };
        let detail = if written.is_empty() {
            "up to date".to_string()
        } else {
            format!("wrote {} file(s)", written.len())
        };
        progress.finish(step, outcome, detail);

        // The seal's KMS key, before any node needs it.
        if let Seal::AwsKms(kms) = &self.env.seal {
            let step = progress.start("kms key");
            let (id, created) = crate::kms::ensure_key(kms, &self.env.name).await?;
            if created {
                progress.finish(
                    step,
                    Outcome::Changed,
                    format!("created key {id} and alias {}", kms.kms_key_id),
                );
            } else {
                progress.finish(step, Outcome::Ok, format!("{} exists", kms.kms_key_id));
            }
        }

        // Processes.
        let step = progress.start("nodes");
        let binary_sha = fingerprint(
            &std::fs::read(&self.binary)
                .with_context(|| format!("read {}", self.binary.display()))?,
        );
        let cluster = self.cluster()?;
        let mut started = Vec::new();
        let mut restart: Vec<usize> = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let host = self.host(node);
            let running = matches!(host.service_state()?, ServiceState::Running { .. });
            let wanted_config = config_sha.get(&node.name).cloned().unwrap_or_default();
            let entry = state.nodes.entry(node.name.clone()).or_default();
            if !running {
                host.start_service()?;
                entry.config_sha256 = wanted_config;
                started.push(node.name.clone());
            } else if entry.config_sha256 != wanted_config || env_changed.contains(&node.name) {
                restart.push(i);
            } else if reload.contains(&node.name) {
                host.reload_service()?;
                started.push(format!("{} (reloaded: certificates changed)", node.name));
            }
            cluster.wait_responding(i, START_TIMEOUT).await?;
            entry.address = node.address.to_string();
            entry.api_addr = node.api_addr.clone();
            entry.binary = self.binary.clone();
            entry.binary_sha256 = binary_sha.clone();
            if let ServiceState::Running { pid } = host.service_state()? {
                if entry.pid != Some(pid) {
                    entry.started_at = Some(Utc::now());
                }
                entry.pid = Some(pid);
            }
        }
        state.save(&self.dir)?;
        let outcome = if started.is_empty() {
            Outcome::Ok
        } else {
            Outcome::Changed
        };
        let detail = if started.is_empty() {
            format!("{} running", self.nodes.len())
        } else {
            format!("started {}", started.join(", "))
        };
        progress.finish(step, outcome, detail);

        // Init.
        let step = progress.start("init");
        let (store, identity_created) = self.secret_store()?;
        report.identity_created = identity_created;
        let roles = cluster.roles().await;
        let initialized = roles
            .iter()
            .any(|(r, _)| matches!(r, Role::Active | Role::Standby | Role::Sealed));
        if initialized {
            if !store.has_init() {
                bail!(
                    "the cluster is initialised but its init output is not in {}; without the \
                     unseal shares nothing can be done. If this cluster holds nothing of value, \
                     run `provision down --env {} --purge` and `provision up` again",
                    self.dir.secrets_dir().display(),
                    self.env.name
                );
            }
            progress.finish(step, Outcome::Ok, "already initialised");
        } else {
            if let Some(at) = state.cluster.initialized_at {
                bail!(
                    "state says the cluster was initialised at {at}, but no node reports being \
                     initialised: its data is gone. Restore it from a snapshot, or run \
                     `provision down --env {} --purge` to start again",
                    self.env.name
                );
            }
            if store.has_init() {
                bail!(
                    "{} already holds init output of an earlier cluster, and no node is \
                     initialised; move it away (it may be the only copy of that cluster's \
                     keys) or purge the environment",
                    self.dir.secrets_dir().display()
                );
            }
            let init = &self.env.init;
            let auto = self.env.seal.is_auto();
            let out = cluster
                .init(0, init.secret_shares, init.secret_threshold, auto)
                .await?;
            // Kept before anything else happens: these shares are the cluster's only keys.
            let files = store.save_init(&InitSecrets {
                unseal_keys_b64: if auto {
                    out.recovery_keys_base64.clone()
                } else {
                    out.keys_base64.clone()
                },
                root_token: out.root_token.clone(),
                created_at: Utc::now(),
                recovery: auto,
            })?;
            state.cluster.initialized_at = Some(Utc::now());
            state.cluster.root_token_revoked = false;
            state.save(&self.dir)?;
            progress.finish(
                step,
                Outcome::Changed,
                format!(
                    "{} {}shares (threshold {}) encrypted to {}",
                    init.secret_shares,
                    if auto { "recovery " } else { "" },
                    init.secret_threshold,
                    files
                        .iter()
                        .map(|f| f.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        let identities = self.identities(identity)?;
        let init_secrets = store.load_init(&identities)?;
        let keys = &init_secrets.unseal_keys_b64;

        // Unseal: the first initialised node, then the rest (which join through retry_join).
        // Under an auto seal every node unseals itself: wait for it, bounded.
        if self.env.seal.is_auto() {
            let step = progress.start("auto-unseal");
            let started = std::time::Instant::now();
            for i in 0..self.nodes.len() {
                progress.note(
                    &step,
                    &format!("waiting for {} to unseal itself", self.nodes[i].name),
                );
                cluster.wait_auto_unsealed(i, AUTO_UNSEAL_TIMEOUT).await?;
            }
            progress.finish(
                step,
                Outcome::Ok,
                format!(
                    "every node unsealed itself ({}, {:.1}s)",
                    self.env.seal.kind(),
                    started.elapsed().as_secs_f64()
                ),
            );
        }
        let step = progress.start("unseal");
        let mut unsealed = Vec::new();
        let roles = cluster.roles().await;
        let first = roles
            .iter()
            .position(|(r, _)| !matches!(r, Role::Uninitialized | Role::Down))
            .unwrap_or(0);
        let mut order: Vec<usize> = vec![first];
        order.extend((0..self.nodes.len()).filter(|i| *i != first));
        for i in order.into_iter().filter(|_| !self.env.seal.is_auto()) {
            let role = Role::from_health(cluster.health(i).await.as_ref());
            match role {
                Role::Active | Role::Standby => continue,
                Role::Uninitialized => {
                    progress.note(
                        &step,
                        &format!("{} waits for its join challenge", self.nodes[i].name),
                    );
                    cluster.wait_initialized(i, JOIN_TIMEOUT).await?;
                }
                Role::Sealed | Role::Down => {}
            }
            cluster.unseal(i, keys).await?;
            unsealed.push(self.nodes[i].name.clone());
        }
        let outcome = if unsealed.is_empty() {
            Outcome::Ok
        } else {
            Outcome::Changed
        };
        let detail = if self.env.seal.is_auto() {
            "not needed: the nodes unseal themselves".to_string()
        } else if unsealed.is_empty() {
            "all unsealed".to_string()
        } else {
            format!("unsealed {}", unsealed.join(", "))
        };
        progress.finish(step, outcome, detail);

        if !restart.is_empty() {
            let step = progress.start("rolling restart");
            let restarted = self
                .rolling_restart(
                    &cluster,
                    &restart,
                    keys,
                    &config_sha,
                    &mut state,
                    progress,
                    &step,
                )
                .await?;
            progress.finish(
                step,
                Outcome::Changed,
                format!("restarted {} (config changed)", restarted.join(", ")),
            );
        }

        let needs_config =
            state.cluster.configured_fingerprint.as_deref() != Some(env_fingerprint.as_str());

        // Cluster formation: one active node and every node a voter.
        let step = progress.start("raft");
        cluster.wait_active(FORM_TIMEOUT).await?;
        // A token for what follows: the initial root token while it lives, else a root token
        // generated from the shares for this run only.
        let (root_token, generated_root) = match state.cluster.root_token_revoked {
            false => (Some(init_secrets.root_token.clone()), false),
            true if needs_config => (Some(cluster.generate_root(keys).await?), true),
            true => (None, false),
        };
        let (mut credentials, credentials_changed) = self.credentials(&store, &identities)?;
        if credentials_changed {
            store.save_credentials(&credentials)?;
        }
        let admin_token = match &root_token {
            Some(t) => t.clone(),
            None => self.admin_login(&cluster, &credentials).await?,
        };
        if let Some(token) = &root_token {
            // Autopilot first, so that joined nodes are promoted on this environment's timers.
            if needs_config {
                cluster.configure_autopilot(&self.env, token).await?;
            }
        }
        progress.note(&step, "waiting for every node to become a voter");
        cluster.wait_voters(&admin_token, FORM_TIMEOUT).await?;
        progress.finish(
            step,
            Outcome::Ok,
            format!("{} voters, one active", self.nodes.len()),
        );

        // Configuration.
        let step = progress.start("configure");
        if needs_config {
            let token = root_token
                .as_deref()
                .ok_or_else(|| anyhow!("no root token"))?;
            // Idempotent, so retried whole through a leadership change.
            let created = retrying(|| {
                cluster.configure(&self.env, token, &Self::audit_file_path, &credentials)
            })
            .await?;
            state.cluster.configured_fingerprint = Some(env_fingerprint.clone());
            state.save(&self.dir)?;
            let detail = if created.is_empty() {
                "policies, users and roles written".to_string()
            } else {
                format!("created {}", created.join(", "))
            };
            progress.finish(step, Outcome::Changed, detail);
        } else {
            progress.finish(step, Outcome::Ok, "as configured");
        }

        // Snapshots to S3: the bucket, and the agent's policy, role and credential files.
        if let Some(s3) = self.env.snapshots.as_ref().and_then(|s| s.s3.as_ref()) {
            let step = progress.start("snapshots");
            // The policy and role need a root token: this run's, or (only when a node lacks
            // its credential files) one generated from the shares for this step alone.
            let (token, generated) = match (&root_token, crate::snapshots::files_present(self)?) {
                (Some(t), _) => (Some(t.clone()), false),
                (None, true) => (None, false),
                (None, false) => (Some(cluster.generate_root(keys).await?), true),
            };
            let changed = crate::snapshots::prepare(self, &cluster, token.as_deref(), s3).await;
            if let (true, Some(t)) = (generated, &token) {
                cluster.revoke_self(t).await?;
            }
            let mut changed = changed?;
            // Local provider: one scheduled agent per node, started again when it died.
            for node in &self.nodes {
                let Some(agent) = self.agent_host(node) else {
                    continue;
                };
                let pid = match agent.service_state()? {
                    ServiceState::Running { pid } => pid,
                    ServiceState::Stopped => {
                        agent.start_service()?;
                        changed.push(format!("{}: started the snapshot agent", node.name));
                        match agent.service_state()? {
                            ServiceState::Running { pid } => pid,
                            ServiceState::Stopped => {
                                bail!(
                                    "{}'s snapshot agent stopped right after it started",
                                    node.name
                                )
                            }
                        }
                    }
                };
                state
                    .nodes
                    .entry(node.name.clone())
                    .or_default()
                    .snapshot_agent_pid = Some(pid);
            }
            state.save(&self.dir)?;
            if changed.is_empty() {
                progress.finish(
                    step,
                    Outcome::Ok,
                    format!("agent ready (bucket {})", s3.bucket),
                );
            } else {
                progress.finish(step, Outcome::Changed, changed.join(", "));
            }
        }

        // The admin login must work before the root token goes.
        let step = progress.start("admin login");
        self.admin_login(&cluster, &credentials).await?;
        progress.finish(
            step,
            Outcome::Ok,
            format!(
                "{} via auth/{}",
                self.env.admin.user, self.env.admin.auth_path
            ),
        );
        credentials.clear();

        let step = progress.start("root token");
        if generated_root {
            if let Some(t) = &root_token {
                cluster.revoke_self(t).await?;
            }
        }
        if self.env.init.revoke_root_token && !state.cluster.root_token_revoked {
            cluster.revoke_self(&init_secrets.root_token).await?;
            state.cluster.root_token_revoked = true;
            state.save(&self.dir)?;
            progress.finish(step, Outcome::Changed, "initial root token revoked");
        } else if state.cluster.root_token_revoked {
            progress.finish(step, Outcome::Ok, "revoked");
        } else {
            progress.finish(step, Outcome::Ok, "kept (init.revoke_root_token = false)");
        }

        state.cluster.last_up = Some(Utc::now());
        state.env_fingerprint_sha256 = env_fingerprint;
        state.save(&self.dir)?;
        report.secret_files = store.files()?;
        Ok(report)
    }

    /// The transit unsealer: certificate, config, process, init (one share, kept encrypted
    /// in `secrets/unsealer/`), unseal, the transit engine, key and policy, and the seal's
    /// periodic token (kept encrypted beside the init output and reused while it lives).
    /// Every part is checked before it is acted on, so a second run changes nothing and a
    /// dead unsealer is started and unsealed again. Returns the seal's token.
    async fn up_unsealer(
        &self,
        unsealer: &NodeSpec,
        ca: &Ca,
        identity: &[PathBuf],
        state: &mut State,
        progress: &mut Progress,
    ) -> Result<Zeroizing<String>> {
        let Seal::Transit(transit) = &self.env.seal else {
            bail!("an unsealer serves a transit seal only");
        };
        let step = progress.start("unsealer");
        let mut did: Vec<String> = Vec::new();
        let host = self.host(unsealer);
        let tls = Path::new(Layout::TLS_DIR);
        host.ensure_dir(tls, 0o700)?;
        let mut reload =
            host.put_file(&tls.join(render::CA_CERT), ca.cert_pem().as_bytes(), 0o644)?;
        if let Some(reason) = self.cert_reason(unsealer, Some(ca.info())) {
            self.issue_server_cert(&host, unsealer, ca)?;
            did.push(format!("issued its certificate ({reason})"));
            reload = true;
        }
        host.ensure_dir(Path::new(Layout::DATA_DIR), 0o700)?;
        host.ensure_dir(Path::new(Layout::LOG_DIR), 0o750)?;
        let env = self.unsealer_env();
        let mut config = String::new();
        for file in Renderer::new()?.render_node(&env, unsealer)? {
            if host.put_file(&file.path, file.content.as_bytes(), file.mode)? {
                did.push(format!("wrote {}", file.path.display()));
            }
            if file.path == Path::new(Layout::SERVER_CONFIG) {
                config = fingerprint(file.content.as_bytes());
            }
        }
        let entry = state.nodes.entry(unsealer.name.clone()).or_default();
        match host.service_state()? {
            ServiceState::Stopped => {
                host.start_service()?;
                did.push("started".into());
            }
            ServiceState::Running { .. } if entry.config_sha256 != config => {
                host.stop_service(STOP_TIMEOUT)?;
                host.start_service()?;
                did.push("restarted (its config changed)".into());
            }
            ServiceState::Running { .. } if reload => {
                host.reload_service()?;
                did.push("reloaded (certificates changed)".into());
            }
            ServiceState::Running { .. } => {}
        }
        entry.config_sha256 = config;
        entry.address = unsealer.address.to_string();
        entry.api_addr = unsealer.api_addr.clone();
        entry.binary = self.binary.clone();
        if let ServiceState::Running { pid } = host.service_state()? {
            if entry.pid != Some(pid) {
                entry.started_at = Some(Utc::now());
            }
            entry.pid = Some(pid);
        }
        state.save(&self.dir)?;

        let cluster = self.unsealer_cluster(unsealer)?;
        let health = cluster.wait_responding(0, START_TIMEOUT).await?;
        let store = self.unsealer_store()?;
        if !health.initialized {
            if store.has_init() {
                bail!(
                    "the unsealer answers uninitialised but {} holds its init output: its data \
                     is gone, and with it the key that seals the cluster. Restore it, or run \
                     `provision down --env {} --purge` to start again",
                    store.dir().display(),
                    self.env.name
                );
            }
            let out = cluster.init(0, 1, 1, false).await?;
            store.save_init(&InitSecrets {
                unseal_keys_b64: out.keys_base64.clone(),
                root_token: out.root_token.clone(),
                created_at: Utc::now(),
                recovery: false,
            })?;
            did.push("initialised (1 share, encrypted)".into());
        } else if !store.has_init() {
            bail!(
                "the unsealer is initialised but its init output is not in {}; without its \
                 share it cannot be unsealed. If the environment holds nothing of value, run \
                 `provision down --env {} --purge`",
                store.dir().display(),
                self.env.name
            );
        }
        let identities = self.identities(identity)?;
        let init = store.load_init(&identities)?;
        if Role::from_health(cluster.health(0).await.as_ref()) != Role::Active {
            let sealed = cluster.health(0).await.is_some_and(|h| h.sealed);
            cluster.unseal(0, &init.unseal_keys_b64).await?;
            if sealed {
                did.push("unsealed".into());
            }
            cluster.wait_active(FORM_TIMEOUT).await?;
        }
        let created = retrying(|| {
            cluster.configure_transit_unsealer(
                &init.root_token,
                &transit.mount_path,
                &transit.key_name,
                UNSEALER_POLICY,
            )
        })
        .await?;
        did.extend(created.into_iter().map(|c| format!("created {c}")));

        let mut creds = store.load_credentials(&identities)?;
        let live = match creds.get(UNSEALER_TOKEN_KEY) {
            Some(token) => cluster.token_is_live(0, token).await?,
            None => false,
        };
        if !live {
            let token = cluster
                .create_periodic_token(
                    &init.root_token,
                    UNSEALER_POLICY,
                    UNSEALER_TOKEN_PERIOD,
                    &format!("{}-transit-seal", self.env.name),
                )
                .await?;
            creds.insert(UNSEALER_TOKEN_KEY.to_string(), token);
            store.save_credentials(&creds)?;
            did.push(format!(
                "made the seal's token (policy {UNSEALER_POLICY}, period {UNSEALER_TOKEN_PERIOD})"
            ));
        }
        let token = Zeroizing::new(creds.remove(UNSEALER_TOKEN_KEY).unwrap_or_default());
        creds.clear();
        if did.is_empty() {
            progress.finish(
                step,
                Outcome::Ok,
                format!(
                    "unsealed at {}, {}{} ready",
                    unsealer.api_addr, transit.mount_path, transit.key_name
                ),
            );
        } else {
            progress.finish(step, Outcome::Changed, did.join("; "));
        }
        Ok(token)
    }

    /// Restarts `nodes` one at a time, standbys first and the active node last (it hands
    /// leadership over as it stops), unsealing each and waiting for it to serve again before
    /// the next, so the cluster keeps a quorum throughout.
    #[allow(clippy::too_many_arguments)]
    async fn rolling_restart(
        &self,
        cluster: &Cluster,
        nodes: &[usize],
        keys: &[String],
        config_sha: &BTreeMap<String, String>,
        state: &mut State,
        progress: &Progress,
        step: &crate::output::Running,
    ) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for i in active_last(nodes, cluster.active().await) {
            let node = &self.nodes[i];
            progress.note(step, &format!("restarting {}", node.name));
            let host = self.host(node);
            host.stop_service(STOP_TIMEOUT)?;
            host.start_service()?;
            cluster.wait_responding(i, START_TIMEOUT).await?;
            if self.env.seal.is_auto() {
                cluster.wait_auto_unsealed(i, AUTO_UNSEAL_TIMEOUT).await?;
            } else {
                cluster.unseal(i, keys).await?;
            }
            cluster.wait_serving(i, FORM_TIMEOUT).await?;
            let entry = state.nodes.entry(node.name.clone()).or_default();
            entry.config_sha256 = config_sha.get(&node.name).cloned().unwrap_or_default();
            entry.started_at = Some(Utc::now());
            if let ServiceState::Running { pid } = host.service_state()? {
                entry.pid = Some(pid);
            }
            state.save(&self.dir)?;
            done.push(node.name.clone());
        }
        Ok(done)
    }

    /// The generated userpass passwords, with any missing one generated now. The flag is true
    /// when one was generated.
    fn credentials(
        &self,
        store: &SecretStore,
        identities: &[secrets::Identity],
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

    async fn admin_login(
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
        let identities = self.identities(identity)?;
        let (store, _) = self.secret_store()?;
        let creds = store.load_credentials(&identities)?;
        let cluster = self.cluster()?;
        self.admin_login(&cluster, &creds).await
    }

    /// Unseals every sealed node from the encrypted init output.
    pub async fn unseal(&self, identity: &[PathBuf], progress: &mut Progress) -> Result<()> {
        if let Some(unsealer) = &self.unsealer {
            let step = progress.start(format!("unseal {}", unsealer.name));
            let cluster = self.unsealer_cluster(unsealer)?;
            match Role::from_health(cluster.health(0).await.as_ref()) {
                Role::Active | Role::Standby => progress.finish(step, Outcome::Ok, "unsealed"),
                Role::Down => progress.finish(
                    step,
                    Outcome::Failed,
                    "not running (`provision up` starts it)",
                ),
                Role::Sealed | Role::Uninitialized => {
                    let identities = self.identities(identity)?;
                    let init = self.unsealer_store()?.load_init(&identities)?;
                    cluster.unseal(0, &init.unseal_keys_b64).await?;
                    progress.finish(step, Outcome::Changed, "unsealed");
                }
            }
        }
        if self.env.seal.is_auto() {
            let cluster = self.cluster()?;
            for (i, node) in self.nodes.iter().enumerate() {
                let step = progress.start(format!("unseal {}", node.name));
                match Role::from_health(cluster.health(i).await.as_ref()) {
                    Role::Active | Role::Standby => progress.finish(
                        step,
                        Outcome::Ok,
                        format!("unsealed ({} auto-unseal)", self.env.seal.kind()),
                    ),
                    Role::Down => progress.finish(
                        step,
                        Outcome::Failed,
                        "not running (`provision up` starts it)",
                    ),
                    Role::Sealed | Role::Uninitialized => {
                        progress.note(&step, "the environment auto-unseals: waiting for it");
                        cluster.wait_auto_unsealed(i, AUTO_UNSEAL_TIMEOUT).await?;
                        progress.finish(step, Outcome::Ok, "unsealed itself");
                    }
                }
            }
            return Ok(());
        }
        let identities = self.identities(identity)?;
        let (store, _) = self.secret_store()?;
        let init = store.load_init(&identities)?;
        let cluster = self.cluster()?;
        for (i, node) in self.nodes.iter().enumerate() {
            let step = progress.start(format!("unseal {}", node.name));
            match Role::from_health(cluster.health(i).await.as_ref()) {
                Role::Active | Role::Standby => progress.finish(step, Outcome::Ok, "unsealed"),
                Role::Down => progress.finish(
                    step,
                    Outcome::Failed,
                    "not running (`provision up` starts it)",
                ),
                Role::Uninitialized => {
                    cluster.wait_initialized(i, JOIN_TIMEOUT).await?;
                    cluster.unseal(i, &init.unseal_keys_b64).await?;
                    progress.finish(step, Outcome::Changed, "joined and unsealed");
                }
                Role::Sealed => {
                    cluster.unseal(i, &init.unseal_keys_b64).await?;
                    progress.finish(step, Outcome::Changed, "unsealed");
                }
            }
        }
        Ok(())
    }

    /// Stops every node, standbys first and the active node last (so leadership moves once).
    pub async fn down(&self, purge: bool, progress: &mut Progress) -> Result<()> {
        let active = match self.cluster() {
            Ok(c) => c.active().await,
            Err(_) => None,
        };
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        for node in &self.nodes {
            if let Some(agent) = self.agent_host(node) {
                let step = progress.start(format!("stop {} snapshot agent", node.name));
                if agent.stop_service(STOP_TIMEOUT)? {
                    progress.finish(step, Outcome::Changed, "stopped");
                } else {
                    progress.finish(step, Outcome::Ok, "not running");
                }
            }
        }
        for i in active_last(&all, active) {
            let node = &self.nodes[i];
            let step = progress.start(format!("stop {}", node.name));
            if self.host(node).stop_service(STOP_TIMEOUT)? {
                progress.finish(step, Outcome::Changed, "stopped");
            } else {
                progress.finish(step, Outcome::Ok, "not running");
            }
        }
        if let Some(unsealer) = &self.unsealer {
            // Last: the nodes no longer need it.
            let step = progress.start(format!("stop {}", unsealer.name));
            if self.host(unsealer).stop_service(STOP_TIMEOUT)? {
                progress.finish(step, Outcome::Changed, "stopped");
            } else {
                progress.finish(step, Outcome::Ok, "not running");
            }
        }
        if purge {
            let step = progress.start("purge");
            let root = self.dir.root();
            if root.exists() {
                std::fs::remove_dir_all(root)
                    .with_context(|| format!("remove {}", root.display()))?;
                progress.finish(
                    step,
                    Outcome::Changed,
                    format!("removed {}", root.display()),
                );
            } else {
                progress.finish(step, Outcome::Ok, "nothing to remove");
            }
        } else if let Ok(Some(mut state)) = State::load(&self.dir) {
            for node in state.nodes.values_mut() {
                node.pid = None;
            }
            state.save(&self.dir)?;
        }
        Ok(())
    }

    /// The decrypted init output, for `--show-secrets`.
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

    pub fn init_secrets(&self, identity: &[PathBuf]) -> Result<InitSecrets> {
        let identities = self.identities(identity)?;
        let (store, _) = self.secret_store()?;
        store.load_init(&identities)
    }
}

/// What `up` tells the user at the end besides the steps.
#[derive(Debug, Default, Serialize)]
pub struct UpReport {
    /// The local identity was generated by this run.
    pub identity_created: bool,
    pub secret_files: Vec<PathBuf>,
}

/// `nodes` with the active one (if among them) moved to the end: standbys are stopped or
/// restarted first, so leadership moves at most once.
fn active_last(nodes: &[usize], active: Option<usize>) -> Vec<usize> {
    let (mut standbys, active): (Vec<usize>, Vec<usize>) =
        nodes.iter().partition(|i| Some(**i) != active);
    standbys.extend(active);
    standbys
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

/// One node in `provision status`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub address: String,
    pub role: Role,
    pub version: Option<String>,
    pub raft_applied_index: Option<u64>,
    /// Time since the leader last heard from it, as autopilot reports it (Go duration text).
    pub last_contact: Option<String>,
    /// The `sys/health` status code; None when the node does not answer.
    pub health_code: Option<u16>,
    pub pid: Option<u32>,
}

/// `provision status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub environment: String,
    pub nodes: Vec<NodeStatus>,
    /// How many voters may fail with the cluster still serving.
    pub failure_tolerance: i64,
    /// Whether autopilot (read with the admin login) supplied the figures above.
    pub autopilot: bool,
    /// The transit unsealer, if the environment has one.
    pub unsealer: Option<NodeStatus>,
}

impl Deployment {
    pub async fn status(&self) -> Result<StatusReport> {
        let cluster = self.cluster()?;
        let token = self.admin_token(&[]).await.ok();
        let autopilot = match &token {
            Some(t) => cluster.autopilot_state(t).await,
            None => None,
        };
        let mut nodes = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let health = cluster.health(i).await;
            let role = Role::from_health(health.as_ref());
            let leader = match role {
                Role::Active | Role::Standby => cluster.leader(i).await,
                _ => None,
            };
            let pid = match self.host(node).service_state()? {
                ServiceState::Running { pid } => Some(pid),
                ServiceState::Stopped => None,
            };
            nodes.push(NodeStatus {
                name: node.name.clone(),
                address: node.api_addr.clone(),
                role,
                version: health.as_ref().map(|h| h.version.clone()),
                raft_applied_index: leader.map(|l| l.raft_applied_index),
                last_contact: autopilot
                    .as_ref()
                    .and_then(|a| a.servers.get(&node.name))
                    .map(|s| s.last_contact.clone()),
                health_code: health.as_ref().map(|h| h.status),
                pid,
            });
        }
        let serving = nodes
            .iter()
            .filter(|n| matches!(n.role, Role::Active | Role::Standby))
            .count() as i64;
        let quorum = (self.nodes.len() / 2 + 1) as i64;
        let failure_tolerance = match &autopilot {
            Some(a) => a.failure_tolerance,
            None => (serving - quorum).max(0),
        };
        let unsealer = match &self.unsealer {
            Some(u) => {
                let health = self.unsealer_cluster(u)?.health(0).await;
                Some(NodeStatus {
                    name: u.name.clone(),
                    address: u.api_addr.clone(),
                    role: Role::from_health(health.as_ref()),
                    version: health.as_ref().map(|h| h.version.clone()),
                    raft_applied_index: None,
                    last_contact: None,
                    health_code: health.as_ref().map(|h| h.status),
                    pid: match self.host(u).service_state()? {
                        ServiceState::Running { pid } => Some(pid),
                        ServiceState::Stopped => None,
                    },
                })
            }
            None => None,
        };
        Ok(StatusReport {
            environment: self.env.name.clone(),
            nodes,
            failure_tolerance,
            autopilot: autopilot.is_some(),
            unsealer,
        })
    }

    /// `provision render`: every file each node receives, under `out/NODE/`. With
    /// `host_layout`, the files a systemd host at these addresses would receive (units,
    /// hardening files and all), whatever this environment's provider is.
    pub fn render_to(&self, out: &Path, host_layout: bool) -> Result<Vec<PathBuf>> {
        let renderer = Renderer::new()?;
        let mut written = Vec::new();
        let nodes = if host_layout {
            let addresses: Vec<IpAddr> = self.nodes.iter().map(|n| n.address).collect();
            NodeSpec::cluster(&self.env, &addresses, |_| Layout::system())?
        } else {
            self.nodes.clone()
        };
        for node in &nodes {
            for file in renderer.render_node(&self.env, node)? {
                let path = out.join(&node.name).join(&file.path);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("create {}", parent.display()))?;
                }
                crate::state::write_atomic(&path, file.content.as_bytes(), file.mode)?;
                written.push(path);
            }
        }
        Ok(written)
    }

    /// `provision certs show`: the CA and every node's certificates.
    pub fn certificates(&self) -> Result<Vec<(String, PathBuf, certs::CertInfo)>> {
        let mut out = Vec::new();
        let ca = self.ca_file();
        if !ca.exists() {
            bail!(
                "{} has no certificates yet; `provision up --env {}` creates them",
                self.env.name,
                self.env.name
            );
        }
        out.push(("CA".to_string(), ca.clone(), certs::inspect_file(&ca)?));
        for node in &self.nodes {
            for (what, file) in [
                ("server", render::NODE_CERT),
                ("client", render::CLIENT_CERT),
            ] {
                let path = node.layout.tls_file(file);
                if path.exists() {
                    let info = certs::inspect_file(&path)?;
                    out.push((format!("{} {what}", node.name), path, info));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::active_last;

    #[test]
    fn the_active_node_goes_last() {
        let cases: &[(&[usize], Option<usize>, &[usize])] = &[
            (&[0, 1, 2], Some(0), &[1, 2, 0]),
            (&[0, 1, 2], Some(2), &[0, 1, 2]),
            (&[0, 1, 2], None, &[0, 1, 2]),
            (&[1, 2], Some(0), &[1, 2]),
            (&[], Some(1), &[]),
        ];
        for (nodes, active, want) in cases {
            assert_eq!(
                active_last(nodes, *active),
                *want,
                "{nodes:?} active {active:?}"
            );
        }
    }
}
