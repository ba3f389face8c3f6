//! Cluster operations over the Vault HTTP API (`keyhold_client`): health, init, unseal,
//! waiting for Raft membership, configuration (audit, policies, mounts, auth methods, users),
//! admin login and root-token handling. The provisioner never reaches a server any other way.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use keyhold_client::admin::{AppRoleRole, TokenRequest, TokenSettings};
use keyhold_client::{
    AutopilotConfigUpdate, AutopilotState, CaCert, Client, ClientConfig, ClientError, HealthQuery,
    HealthResponse, InitRequest, InitResponse, LeaderResponse,
};

use crate::environment::{AuthMethod, Environment};

/// How a node answered `sys/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Active,
    Standby,
    Sealed,
    Uninitialized,
    Down,
}

impl Role {
    pub fn from_health(health: Option<&HealthResponse>) -> Role {
        match health {
            None => Role::Down,
            Some(h) if !h.initialized => Role::Uninitialized,
            Some(h) if h.sealed => Role::Sealed,
            Some(h) if h.standby => Role::Standby,
            Some(_) => Role::Active,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Standby => "standby",
            Role::Sealed => "sealed",
            Role::Uninitialized => "uninitialized",
            Role::Down => "down",
        }
    }
}

/// One node as the API sees it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    /// `https://ADDR:PORT`.
    pub api_addr: String,
}

/// Clients for every node of a cluster, trusting the environment's CA.
pub struct Cluster {
    pub nodes: Vec<Endpoint>,
    ca_pem: Vec<u8>,
}

/// The timeout of one API call made while provisioning.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// The timeout of one `sys/unseal` call: a node joining a cluster answers the last share only
/// once the cluster's data has reached it (the server bounds that wait at 120 s), which takes
/// longer than any other call when the cluster holds much data.
const UNSEAL_CALL_TIMEOUT: Duration = Duration::from_secs(150);
/// How long a call that failed as calls fail during a Raft leadership change is tried again
/// (see [`retrying`]).
const RETRY_FOR: Duration = Duration::from_secs(30);

impl Cluster {
    pub fn new(nodes: Vec<Endpoint>, ca_pem: Vec<u8>) -> Self {
        Cluster { nodes, ca_pem }
    }

    pub fn client(&self, node: usize, token: Option<&str>) -> Result<Client> {
        self.client_with_timeout(node, token, CALL_TIMEOUT)
    }

    fn client_with_timeout(
        &self,
        node: usize,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Client> {
        let mut config = ClientConfig::new(self.nodes[node].api_addr.clone());
        config.ca_cert = Some(CaCert::Pem(self.ca_pem.clone()));
        config.token = token.map(str::to_string);
        config.timeout = timeout;
        Client::new(&config).with_context(|| format!("client for {}", self.nodes[node].name))
    }

    /// `sys/health` of one node; None when it does not answer.
    pub async fn health(&self, node: usize) -> Option<HealthResponse> {
        let client = self.client(node, None).ok()?;
        let query = HealthQuery {
            standby_ok: false,
            ..HealthQuery::default()
        };
        tokio::time::timeout(Duration::from_secs(5), client.health(&query))
            .await
            .ok()?
            .ok()
    }

    pub async fn roles(&self) -> Vec<(Role, Option<HealthResponse>)> {
        let mut out = Vec::new();
        for i in 0..self.nodes.len() {
            let health = self.health(i).await;
            out.push((Role::from_health(health.as_ref()), health));
        }
        out
    }

    pub async fn leader(&self, node: usize) -> Option<LeaderResponse> {
        let client = self.client(node, None).ok()?;
        tokio::time::timeout(Duration::from_secs(5), client.leader())
            .await
            .ok()?
            .ok()
    }

    /// Waits until `node` answers `sys/health` at all.
    pub async fn wait_responding(&self, node: usize, timeout: Duration) -> Result<HealthResponse> {
        poll(timeout, Duration::from_millis(50), async || {
            self.health(node).await
        })
        .await
        .ok_or_else(|| {
            anyhow!(
                "{} ({}) did not answer within {}s; see its log under the node's \
                     var/log/keyhold directory",
                self.nodes[node].name,
                self.nodes[node].api_addr,
                timeout.as_secs()
            )
        })
    }

    /// Index of the active node, if one answers as active.
    pub async fn active(&self) -> Option<usize> {
        for i in 0..self.nodes.len() {
            if Role::from_health(self.health(i).await.as_ref()) == Role::Active {
                return Some(i);
            }
        }
        None
    }

    pub async fn wait_active(&self, timeout: Duration) -> Result<usize> {
        poll(timeout, Duration::from_millis(50), async || {
            self.active().await
        })
        .await
        .ok_or_else(|| {
            anyhow!(
                "no node became active within {}s (a Raft leader is elected once a \
                     majority of nodes is unsealed)",
                timeout.as_secs()
            )
        })
    }

    /// Waits until `node` answers as active or standby, with an active node in the cluster.
    pub async fn wait_serving(&self, node: usize, timeout: Duration) -> Result<()> {
        let mut role = Role::Down;
        let serving = poll(timeout, Duration::from_millis(100), async || {
            role = Role::from_health(self.health(node).await.as_ref());
            let serving = matches!(role, Role::Active | Role::Standby);
            (serving && self.active().await.is_some()).then_some(())
        })
        .await;
        serving.ok_or_else(|| {
            anyhow!(
                "{} did not serve again within {}s after its restart (last seen: {})",
                self.nodes[node].name,
                timeout.as_secs(),
                role.as_str()
            )
        })
    }

    /// Waits until a joining `node` has received its join challenge through `retry_join`
    /// (it then reports itself initialised and can be unsealed).
    pub async fn wait_initialized(&self, node: usize, timeout: Duration) -> Result<()> {
        poll(timeout, Duration::from_millis(100), async || {
            self.health(node).await.filter(|h| h.initialized).map(drop)
        })
        .await
        .ok_or_else(|| {
            anyhow!(
                "{} did not receive a join challenge within {}s: it joins through retry_join, \
                 so another node must be unsealed and reachable at its api_addr",
                self.nodes[node].name,
                timeout.as_secs()
            )
        })
    }

    /// `sys/init` with `shares`/`threshold` unseal key shares, or, under an auto seal
    /// (`recovery`), recovery key shares.
    pub async fn init(
        &self,
        node: usize,
        shares: u8,
        threshold: u8,
        recovery: bool,
    ) -> Result<InitResponse> {
        let client = self.client(node, None)?;
        let req = if recovery {
            InitRequest {
                recovery_shares: shares.into(),
                recovery_threshold: threshold.into(),
                ..InitRequest::default()
            }
        } else {
            InitRequest {
                secret_shares: shares.into(),
                secret_threshold: threshold.into(),
                ..InitRequest::default()
            }
        };
        client
            .init(&req)
            .await
            .with_context(|| format!("initialise the cluster on {}", self.nodes[node].name))
    }

    /// Gives `node` shares until it is unsealed. Any half-finished attempt is reset first so
    /// that shares from another attempt do not mix with ours.
    pub async fn unseal(&self, node: usize, keys: &[String]) -> Result<()> {
        let name = &self.nodes[node].name;
        let client = self.client_with_timeout(node, None, UNSEAL_CALL_TIMEOUT)?;
        let status = client
            .seal_status()
            .await
            .with_context(|| format!("read the seal status of {name}"))?;
        if !status.sealed {
            return Ok(());
        }
        if status.progress > 0 {
            client
                .unseal_reset()
                .await
                .with_context(|| format!("reset the unseal progress of {name}"))?;
        }
        for key in keys {
            let status = client
                .unseal(key)
                .await
                .with_context(|| format!("unseal {name}"))?;
            if !status.sealed {
                return Ok(());
            }
        }
        bail!(
            "{name} is still sealed after {} shares; the shares do not belong to this \
             cluster's key, or too few could be decrypted",
            keys.len()
        )
    }

    /// Waits until `node` has unsealed itself (auto seal). If it does not within `timeout`,
    /// the error carries what `sys/seal-status` says (the server's "auto-unseal failed ..."
    /// warning names the KMS error and the next retry).
    pub async fn wait_auto_unsealed(&self, node: usize, timeout: Duration) -> Result<()> {
        let done = poll(timeout, Duration::from_millis(100), async || {
            matches!(
                Role::from_health(self.health(node).await.as_ref()),
                Role::Active | Role::Standby
            )
            .then_some(())
        })
        .await;
        if done.is_some() {
            return Ok(());
        }
        let name = &self.nodes[node].name;
        let why = match self.client(node, None)?.seal_status().await {
            Ok(status) if !status.warnings.is_empty() => status.warnings.join("; "),
            Ok(status) if !status.initialized => "it is not initialised (it joins through \
                 retry_join once another node is unsealed)"
                .to_string(),
            Ok(_) => "no warning reported; see its log".to_string(),
            Err(e) => format!("seal-status: {e}"),
        };
        bail!(
            "{name} did not unseal itself within {}s: {why}",
            timeout.as_secs()
        )
    }

    /// Waits until every node is unsealed and a voter in the Raft configuration (autopilot
    /// promotes a joined node once it has been stable for `server_stabilization_time`).
    pub async fn wait_voters(&self, token: &str, timeout: Duration) -> Result<()> {
        let wanted: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
        let mut last = String::new();
        let done = poll(timeout, Duration::from_millis(100), async || {
            let active = self.active().await?;
            let client = match self.client(active, Some(token)) {
                Ok(client) => client,
                Err(e) => {
                    last = format!("{e:#}");
                    return None;
                }
            };
            match client.raft_configuration().await {
                Ok(config) => {
                    let voters: Vec<&str> = config
                        .servers
                        .iter()
                        .filter(|s| s.voter)
                        .map(|s| s.node_id.as_str())
                        .collect();
                    if wanted.iter().all(|n| voters.contains(n)) {
                        return Some(());
                    }
                    last = format!("voters so far: {}", voters.join(", "));
                }
                Err(e) => last = e.to_string(),
            }
            None
        })
        .await;
        done.ok_or_else(|| {
            anyhow!(
                "not every node became a Raft voter within {}s ({last}); check \
                 `provision status` and the nodes' logs",
                timeout.as_secs()
            )
        })
    }

    pub async fn autopilot_state(&self, token: &str) -> Option<AutopilotState> {
        let active = self.active().await?;
        let client = self.client(active, Some(token)).ok()?;
        client.autopilot_state().await.ok().flatten()
    }

    /// Logs in with userpass and returns the client token.
    pub async fn login_userpass(&self, path: &str, user: &str, password: &str) -> Result<String> {
        let secret = retrying(|| async {
            let node = self.any_unsealed().await?;
            let client = self.client(node, None)?;
            client
                .userpass_login(path, user, password)
                .await
                .with_context(|| format!("log in as {user} (auth/{path})"))
        })
        .await?;
        Ok(secret.client_token)
    }

    pub async fn revoke_self(&self, token: &str) -> Result<()> {
        retrying(|| async {
            let node = self.any_unsealed().await?;
            let client = self.client(node, Some(token))?;
            client
                .token_revoke_self()
                .await
                .context("revoke the root token")
        })
        .await?;
        Ok(())
    }

    /// A fresh root token from unseal shares (`sys/generate-root` with a server-made OTP), as
    /// the production guide advises once the initial root token is revoked. The caller revokes
    /// it when done.
    pub async fn generate_root(&self, keys: &[String]) -> Result<String> {
        let node = self.any_unsealed().await?;
        let client = self.client(node, None)?;
        let status = client.generate_root_status().await?;
        if status.started {
            client.generate_root_cancel().await?;
        }
        let status = client
            .generate_root_init(None, None)
            .await
            .context("start generating a root token")?;
        let (otp, nonce) = (status.otp.clone(), status.nonce.clone());
        for key in keys {
            let status = client
                .generate_root_update(key, &nonce)
                .await
                .context("give a share to generate-root")?;
            if status.complete {
                return keyhold_client::decode_root_token(&status.encoded_token, &otp)
                    .map_err(|e| anyhow!("decode the generated root token: {e}"));
            }
        }
        let _ = client.generate_root_cancel().await;
        bail!("generate-root did not complete with the available shares")
    }

    async fn any_unsealed(&self) -> Result<usize> {
        if let Some(i) = self.active().await {
            return Ok(i);
        }
        for i in 0..self.nodes.len() {
            if Role::from_health(self.health(i).await.as_ref()) == Role::Standby {
                return Ok(i);
            }
        }
        bail!("no node is unsealed; run `provision up` (or `provision unseal`) first")
    }

    /// Writes the environment's autopilot settings.
    pub async fn configure_autopilot(&self, env: &Environment, token: &str) -> Result<()> {
        let a = &env.autopilot;
        let update = AutopilotConfigUpdate {
            cleanup_dead_servers: Some(a.cleanup_dead_servers),
            last_contact_threshold: Some(a.last_contact_threshold),
            dead_server_last_contact_threshold: Some(a.dead_server_last_contact_threshold),
            max_trailing_logs: Some(a.max_trailing_logs),
            min_quorum: Some(a.min_quorum.into()),
            server_stabilization_time: Some(a.server_stabilization_time),
            disable_upgrade_migration: None,
        };
        retrying(|| async {
            let node = self.any_unsealed().await?;
            let client = self.client(node, Some(token))?;
            client
                .autopilot_set_configuration(&update)
                .await
                .context("write the autopilot configuration")
        })
        .await?;
        Ok(())
    }

    /// Makes the cluster's configuration match the environment: autopilot, policies, secrets
    /// engines, auth methods, users and roles. Every call is idempotent; the answer lists what
    /// was created (mounts that already exist are left alone). Audit devices are not here:
    /// they are declared in each node's rendered config, so a node is audited from its first
    /// request and the API cannot disable them.
    pub async fn configure(
        &self,
        env: &Environment,
        token: &str,
        passwords: &BTreeMap<String, String>,
    ) -> Result<Vec<String>> {
        self.configure_autopilot(env, token).await?;
        let node = self.any_unsealed().await?;
        let client = self.client(node, Some(token))?;
        let mut created = Vec::new();

        for policy in &env.policies {
            let text = std::fs::read_to_string(&policy.file)
                .with_context(|| format!("read policy file {}", policy.file.display()))?;
            client
                .policy_write(&policy.name, &text)
                .await
                .with_context(|| format!("write policy {}", policy.name))?;
        }

        let mounts = client.mounts().await.context("read sys/mounts")?;
        for engine in &env.secrets {
            let key = format!("{}/", engine.path);
            match mounts.get(&key) {
                Some(kind) if kind == &engine.kind => {}
                Some(kind) => bail!(
                    "{} is already mounted as a {kind} engine; the environment wants {}: \
                     disable it by hand or change the environment's path",
                    key,
                    engine.kind
                ),
                None => {
                    let options = BTreeMap::from([("version".into(), engine.version.to_string())]);
                    client
                        .mount(&engine.path, &engine.kind, &options)
                        .await
                        .with_context(|| format!("mount {} at {key}", engine.kind))?;
                    created.push(format!("secrets engine {key}"));
                }
            }
        }

        let methods = client.auth_methods().await.context("read sys/auth")?;
        for method in &env.auth {
            let key = format!("{}/", method.path());
            match methods.get(&key) {
                Some(kind) if kind == method.kind() => {}
                Some(kind) => bail!(
                    "auth/{key} is already a {kind} method; the environment wants {}",
                    method.kind()
                ),
                None => {
                    client
                        .enable_auth(method.path(), method.kind())
                        .await
                        .with_context(|| format!("enable auth method {key}"))?;
                    created.push(format!("auth method {key}"));
                }
            }
            match method {
                AuthMethod::Userpass { path, users } => {
                    for user in users {
                        let id = credential_key(path, &user.name);
                        let password = passwords
                            .get(&id)
                            .ok_or_else(|| anyhow!("no generated password for {id}"))?;
                        let token = TokenSettings {
                            policies: user.policies.clone(),
                            ttl: user.token_ttl,
                            max_ttl: user.token_max_ttl,
                        };
                        client
                            .userpass_write(path, &user.name, password, token)
                            .await
                            .with_context(|| format!("write user {id}"))?;
                    }
                }
                AuthMethod::Approle { path, roles } => {
                    for role in roles {
                        let settings = AppRoleRole {
                            token: TokenSettings {
                                policies: role.token_policies.clone(),
                                ttl: role.token_ttl,
                                max_ttl: role.token_max_ttl,
                            },
                            secret_id_ttl: role.secret_id_ttl,
                            secret_id_num_uses: role.secret_id_num_uses,
                        };
                        client
                            .approle_role_write(path, &role.name, settings)
                            .await
                            .with_context(|| format!("write role {path}/{}", role.name))?;
                    }
                }
            }
        }
        Ok(created)
    }
}

/// The ACL policy of the token a transit seal uses: encrypt and decrypt with one key, nothing
/// else (the token's `default` policy lets the seal look itself up and renew itself).
pub fn transit_seal_policy(mount: &str, key: &str) -> String {
    let mount = mount.trim_matches('/');
    format!(
        "# Written by provision: what a transit-sealed node may do on its unsealer.\n\
         path \"{mount}/encrypt/{key}\" {{\n  capabilities = [\"update\"]\n}}\n\n\
         path \"{mount}/decrypt/{key}\" {{\n  capabilities = [\"update\"]\n}}\n"
    )
}

impl Cluster {
    /// On an unsealer (node 0 of this `Cluster`): the transit engine at `mount`, the key
    /// `key` in it, and `policy` allowing exactly encrypt and decrypt with that key. What
    /// exists is left alone (the policy is written again: it is the same text). Returns what
    /// was created.
    pub async fn configure_transit_unsealer(
        &self,
        token: &str,
        mount: &str,
        key: &str,
        policy: &str,
    ) -> Result<Vec<String>> {
        let client = self.client(0, Some(token))?;
        let mount = mount.trim_matches('/');
        let mut created = Vec::new();
        let mounts = client
            .mounts()
            .await
            .context("read sys/mounts on the unsealer")?;
        match mounts.get(&format!("{mount}/")).map(String::as_str) {
            Some("transit") => {}
            Some(other) => bail!(
                "{mount}/ on the unsealer is a {other} engine, not transit; disable it by hand"
            ),
            None => {
                client
                    .mount(mount, "transit", &BTreeMap::new())
                    .await
                    .with_context(|| format!("mount transit at {mount}/ on the unsealer"))?;
                created.push(format!("transit engine {mount}/"));
            }
        }
        let key_path = format!("{mount}/keys/{key}");
        if !client
            .transit_key_exists(mount, key)
            .await
            .with_context(|| format!("read {key_path} on the unsealer"))?
        {
            client
                .transit_key_create(mount, key, "aes256-gcm96")
                .await
                .with_context(|| format!("create the transit key {key_path}"))?;
            created.push(format!("key {key_path}"));
        }
        client
            .policy_write(policy, &transit_seal_policy(mount, key))
            .await
            .with_context(|| format!("write policy {policy} on the unsealer"))?;
        Ok(created)
    }

    /// Whether `token` is a live token on `node` (`auth/token/lookup-self` answers).
    pub async fn token_is_live(&self, node: usize, token: &str) -> Result<bool> {
        let client = self.client(node, Some(token))?;
        let found = client
            .token_lookup_self()
            .await
            .context("look up the transit seal's token")?;
        Ok(found.is_some())
    }

    /// A periodic orphan token with `policy` (and `default`, so it can renew itself): the
    /// token of a transit seal, renewed by the server at half its TTL and never expiring
    /// while it is renewed. Not tied to the creating token, which may be revoked.
    pub async fn create_periodic_token(
        &self,
        token: &str,
        policy: &str,
        period: Duration,
        display_name: &str,
    ) -> Result<String> {
        let client = self.client(0, Some(token))?;
        let made = client
            .token_create(&TokenRequest {
                policies: vec![policy.to_string()],
                period: Some(period),
                display_name: Some(display_name.to_string()),
                orphan: true,
            })
            .await
            .context("create the transit seal's token on the unsealer")?;
        Ok(made.client_token)
    }
}

/// Calls `check` every `every` until it answers `Some`, or `timeout` has passed (`None`):
/// the one bounded wait behind every `wait_*` here.
pub async fn poll<T>(
    timeout: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = check().await {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// Runs `call` again, for up to [`RETRY_FOR`], while it fails as calls fail while the Raft
/// leadership moves (the old leader answers 503 "leadership is changing", or a node does not
/// answer): each attempt picks its node afresh. Other failures are returned at once.
pub async fn retrying<T, F, Fut>(mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = Instant::now() + RETRY_FOR;
    loop {
        match call().await {
            Err(e) if is_transient(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            done => return done,
        }
    }
}

fn is_transient(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|cause| match cause.downcast_ref::<ClientError>() {
            Some(ClientError::Transport { .. }) => true,
            Some(err) => matches!(err.status(), Some(500 | 502 | 503 | 504)),
            None => false,
        })
}

/// The key a generated userpass password is kept under in the encrypted credentials.
pub fn credential_key(auth_path: &str, user: &str) -> String {
    format!("userpass/{auth_path}/{user}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyhold_client::ApiError;

    fn api(status: u16) -> anyhow::Error {
        anyhow::Error::new(ClientError::Api(Box::new(ApiError {
            method: "PUT".into(),
            url: "https://127.0.0.1:8200/v1/auth/userpass/login/admin".into(),
            status,
            errors: vec!["leadership is changing".into()],
            raw: false,
            body: None,
        })))
    }

    #[test]
    fn only_what_a_leadership_change_causes_is_retried() {
        let transport = anyhow::Error::new(ClientError::Transport {
            method: "PUT".into(),
            url: "https://127.0.0.1:8200/v1/sys/audit/file".into(),
            address: "https://127.0.0.1:8200".into(),
            cause: "connection refused".into(),
        });
        let cases = [
            ("503, as the old leader answers", api(503), true),
            (
                "503 under context",
                api(503).context("log in as admin"),
                true,
            ),
            ("500", api(500), true),
            ("no answer", transport, true),
            ("403", api(403), false),
            ("400", api(400), false),
            ("not a client error", anyhow!("no node is unsealed"), false),
        ];
        for (what, error, transient) in cases {
            assert_eq!(is_transient(&error), transient, "{what}: {error:#}");
        }
    }
}
