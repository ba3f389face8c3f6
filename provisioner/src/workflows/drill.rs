//! `provision snapshot verify`: a restore drill. A snapshot from the environment's bucket is
//! downloaded (refused unless its checksum matches), restored offline into a throw-away one-node
//! cluster on this machine (its own loopback address, directory and certificate from the
//! environment's CA, the environment's seal), unsealed with what the environment has (its
//! encrypted init output, or the KMS/transit key), checked (the admin login works, the
//! environment's engines and auth methods are mounted, and everything the snapshot's inventory
//! lists is served: `inventory::verify`), and torn down, whatever happened. The result and the snapshot's age are kept in the state
//! file and shown by `provision status`, so a broken backup is found before it is needed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use keyhold_snapshot::DEFAULT_NAME_PREFIX;
use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, Endpoint};
use crate::deployment::{
    Deployment, AUTO_UNSEAL_TIMEOUT, FORM_TIMEOUT, START_TIMEOUT, STOP_TIMEOUT, UNSEALER_TOKEN_KEY,
};
use crate::environment::{Provider, Seal};
use crate::pki::Ca;
use crate::providers::local::{LocalProvider, LocalSettings};
use crate::providers::{Host, Provider as _, Service};
use crate::render::{self, Layout, NodeSpec, Renderer};
use crate::state::State;
use crate::steps::tls::issue_node_certs;
use crate::workflows::inventory::{self, Inventory, Verified};
use crate::workflows::snapshot::{env_s3, parse_from, s3_store};

/// The drill node's name (its Raft node id and certificate SAN).
const DRILL: &str = "drill";

/// What a drill found, kept in `state.json` (`cluster.last_drill`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    pub snapshot: String,
    /// When the snapshot was taken (from its object name), if known.
    pub snapshot_time: Option<DateTime<Utc>>,
    pub verified_at: DateTime<Utc>,
    pub ok: bool,
    /// Policies in the snapshot, and served by the restored node.
    pub policies: usize,
    pub keys: u64,
    /// What the restored node was found to serve of the snapshot's inventory.
    #[serde(default)]
    pub inventory: Option<Verified>,
    pub raft_index: u64,
    /// From the download to a serving restored node.
    pub restore_seconds: f64,
    pub detail: String,
}

/// Where drills of an environment whose nodes are not on this machine run: 127.0.200.240-250.
const REMOTE_DRILL_BASE: Ipv4Addr = Ipv4Addr::new(127, 0, 200, 1);

/// The local provider's settings the drill node runs under: the environment's own for a local
/// environment (its drill sits beside its nodes), else a range of its own.
fn drill_settings(d: &Deployment) -> LocalSettings {
    match &d.env.provider {
        Provider::Local(local) => local.clone(),
        Provider::Ssh(_) => LocalSettings {
            address_base: REMOTE_DRILL_BASE,
        },
    }
}

/// A free loopback address for the drill node, beside the environment's own range.
fn drill_address(d: &Deployment) -> Result<IpAddr> {
    let [a, b, c, _] = drill_settings(d).address_base.octets();
    for last in 240..=250u8 {
        let ip = Ipv4Addr::new(a, b, c, last);
        let free = [d.env.listener.api_port, d.env.listener.cluster_port]
            .iter()
            .all(|port| {
                std::net::TcpListener::bind(SocketAddr::new(IpAddr::V4(ip), *port)).is_ok()
            });
        if free {
            return Ok(IpAddr::V4(ip));
        }
    }
    bail!("no free loopback address for a restore drill in {a}.{b}.{c}.240-250")
}

/// Runs a drill on the snapshot `from` names and records its result, passed or failed, in the
/// state file. An error only when the drill could not run at all (no bucket configured).
pub async fn verify(
    d: &Deployment,
    from: &str,
    identity: &[std::path::PathBuf],
) -> Result<DrillReport> {
    let s3 = env_s3(d)?;
    let started = Instant::now();
    let report = match run_drill(d, from, identity).await {
        Ok(report) => report,
        Err(e) => DrillReport {
            snapshot: from.to_string(),
            snapshot_time: from
                .strip_prefix(&format!("s3://{}/", s3.bucket))
                .and_then(|key| {
                    keyhold_snapshot::naming::parse_object_key(key, &s3.prefix, DEFAULT_NAME_PREFIX)
                }),
            verified_at: Utc::now(),
            ok: false,
            policies: 0,
            keys: 0,
            inventory: None,
            raft_index: 0,
            restore_seconds: started.elapsed().as_secs_f64(),
            detail: format!("{e:#}"),
        },
    };
    if let Some(mut state) = State::load(&d.dir)? {
        state.cluster.last_drill = Some(report.clone());
        state.save(&d.dir)?;
    }
    write_drill_metrics(d, &report)?;
    Ok(report)
}

/// Where a drill writes `keyhold_restore_drill_*`, for node_exporter's textfile collector on
/// the operator's host: `.provision/ENV/keyhold_restore_drill.prom`.
pub fn drill_metrics_file(d: &Deployment) -> std::path::PathBuf {
    d.dir.root().join("keyhold_restore_drill.prom")
}

/// The drill's result as a Prometheus textfile; the last success survives a failed drill.
fn write_drill_metrics(d: &Deployment, report: &DrillReport) -> Result<()> {
    use keyhold_snapshot::textfile;
    let path = drill_metrics_file(d);
    let previous = |name: &str| textfile::read_value(&path, name);
    let mut success = previous("keyhold_restore_drill_last_success_timestamp_seconds");
    let mut age = previous("keyhold_restore_drill_last_verified_snapshot_age_seconds");
    let at = report.verified_at.timestamp() as f64;
    if report.ok {
        success = Some(at);
        age = report
            .snapshot_time
            .map(|t| (report.verified_at - t).num_seconds().max(0) as f64);
    }
    let mut samples = vec![
        ("keyhold_restore_drill_last_run_timestamp_seconds", at),
        (
            "keyhold_restore_drill_last_result",
            if report.ok { 1.0 } else { 0.0 },
        ),
    ];
    if let Some(success) = success {
        samples.push((
            "keyhold_restore_drill_last_success_timestamp_seconds",
            success,
        ));
    }
    if let Some(age) = age {
        samples.push((
            "keyhold_restore_drill_last_verified_snapshot_age_seconds",
            age,
        ));
    }
    textfile::write(&path, &d.env.name, textfile::DRILL_METRICS, &samples)
        .with_context(|| format!("write the drill's metrics to {}", path.display()))
}

pub async fn run_drill(
    d: &Deployment,
    from: &str,
    identity: &[std::path::PathBuf],
) -> Result<DrillReport> {
    let s3 = env_s3(d)?;
    let which = parse_from(from, s3)?;
    let store = s3_store(s3).await;
    let root = d.dir.root().join(DRILL);
    // What a drill killed half-way left: its node stopped, its files gone.
    tear_down(d).await;
    if root.exists() {
        std::fs::remove_dir_all(&root).with_context(|| format!("remove {}", root.display()))?;
    }
    crate::state::create_private_dir(&root)?;
    let started = Instant::now();
    let downloaded = match store
        .download(DEFAULT_NAME_PREFIX, &which, &root.join("drill.snap"))
        .await
    {
        Ok(downloaded) => downloaded,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&root);
            bail!("the snapshot fails its drill: {e}");
        }
    };
    let url = store.url(&downloaded.key);
    let snapshot_time = keyhold_snapshot::naming::parse_object_key(
        &downloaded.key,
        &s3.prefix,
        DEFAULT_NAME_PREFIX,
    );
    let archive = std::fs::read(&downloaded.path)
        .with_context(|| format!("read {}", downloaded.path.display()))?;
    let inventory = match Inventory::read(&archive) {
        Ok(inventory) => inventory,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&root);
            bail!("{url} fails its drill: {e:#}");
        }
    };

    // The drill node: the environment's seal, one node, no snapshot agent.
    let mut env = d.env.clone();
    env.nodes = 1;
    env.snapshots = None;
    env.unsealer = None;
    let address = drill_address(d)?;
    let url_of = |port| format!("https://{}", SocketAddr::new(address, port));
    let node = NodeSpec {
        name: DRILL.to_string(),
        index: 1,
        address,
        api_addr: url_of(env.listener.api_port),
        cluster_addr: url_of(env.listener.cluster_port),
        peers: Vec::new(),
        layout: Layout::local(root.join("node")),
    };
    let settings = drill_settings(d);
    env.provider = Provider::Local(settings.clone());
    let provider = LocalProvider::new(&settings, root.clone(), None);
    let host = provider.host(&node);
    let result = drill(
        d,
        &env,
        &node,
        host.as_ref(),
        &downloaded.path,
        &inventory,
        identity,
    )
    .await;
    // Torn down whatever happened.
    let _ = host.stop(Service::Server, STOP_TIMEOUT).await;
    let _ = std::fs::remove_dir_all(&root);
    let (verified, detail, ok) = match result {
        Ok(verified) => {
            let detail = format!(
                "restored and served: the admin login, {}",
                verified.summary()
            );
            (Some(verified), detail, true)
        }
        Err(e) => (None, format!("{e:#}"), false),
    };
    Ok(DrillReport {
        snapshot: url,
        snapshot_time,
        verified_at: Utc::now(),
        ok,
        policies: verified.as_ref().map_or(0, |v| v.policies),
        keys: inventory.keys,
        inventory: verified,
        raft_index: inventory.raft_index,
        restore_seconds: started.elapsed().as_secs_f64(),
        detail,
    })
}

/// Stops a drill node left running (its drill was cancelled or killed) and removes its files.
pub async fn tear_down(d: &Deployment) {
    let root = d.dir.root().join(DRILL);
    if !root.exists() {
        return;
    }
    let layout = Layout::local(root.join("node"));
    let host = crate::providers::local::LocalHost::new(DRILL, layout.root, layout.binary, None);
    let _ = host.stop(Service::Server, STOP_TIMEOUT).await;
    let _ = std::fs::remove_dir_all(&root);
}

/// Restores, starts, unseals and checks the drill node against the snapshot's inventory.
async fn drill(
    d: &Deployment,
    env: &crate::environment::Environment,
    node: &NodeSpec,
    host: &dyn Host,
    archive: &Path,
    inventory: &Inventory,
    identity: &[std::path::PathBuf],
) -> Result<Verified> {
    let (ca, _) = Ca::ensure(&d.dir.tls_dir(), &d.env.name, d.env.tls.ca_lifetime)?;
    host.ensure_dir(Path::new(Layout::TLS_DIR), 0o700, None)
        .await?;
    host.put_file(
        &Path::new(Layout::TLS_DIR).join(render::CA_CERT),
        ca.cert_pem().as_bytes(),
        0o644,
        None,
    )
    .await?;
    issue_node_certs(d, host, node, &ca, false).await?;
    host.ensure_dir(Path::new(Layout::DATA_DIR), 0o700, None)
        .await?;
    host.ensure_dir(Path::new(Layout::LOG_DIR), 0o750, None)
        .await?;
    let transit_token = match &d.env.seal {
        Seal::Transit(_) if d.unsealer.is_some() => {
            let identities = d.identities(identity)?;
            d.unsealer_store()?
                .load_credentials(&identities)?
                .remove(UNSEALER_TOKEN_KEY)
        }
        _ => None,
    };
    if let Some(content) = d.node_environment_file(transit_token.as_deref()) {
        host.put_file(Path::new(Layout::ENV_FILE), content.as_bytes(), 0o600, None)
            .await?;
    }
    let mut config = None;
    for file in Renderer::new()?.render_node(env, node)? {
        host.put_file(&file.path, file.content.as_bytes(), file.mode, None)
            .await?;
        if file.path == Path::new(Layout::SERVER_CONFIG) {
            config = Some(node.layout.root.join(&file.path));
        }
    }
    let config = config.context("no server config was rendered for the drill node")?;
    host.install_file(&d.binary, Path::new(Layout::BINARY), 0o755)
        .await?;
    restore_offline(host, node, &config, archive, Duration::from_secs(120)).await?;
    host.start(Service::Server).await?;
    let ca_pem = std::fs::read(d.ca_file())?;
    let cluster = Cluster::new(
        vec![Endpoint {
            name: node.name.clone(),
            api_addr: node.api_addr.clone(),
        }],
        ca_pem,
    );
    cluster.wait_responding(0, START_TIMEOUT).await?;
    // The shares (unseal or recovery keys): they unseal a Shamir node, and authorise the root
    // token the inventory check lists everything with.
    let init = d
        .init_secrets(identity)
        .context("open the environment's init output to unseal the restored node")?;
    if d.env.seal.is_auto() {
        cluster.wait_auto_unsealed(0, AUTO_UNSEAL_TIMEOUT).await?;
    } else {
        cluster.unseal(0, &init.unseal_keys_b64).await?;
    }
    cluster.wait_active(FORM_TIMEOUT).await?;
    cluster.wait_serving(0, FORM_TIMEOUT).await?;
    // The environment's admin login, as the snapshot knows it.
    let token = d
        .admin_token_on(&cluster, identity)
        .await
        .context("log in as the environment's admin on the restored node")?;
    let client = cluster.client(0, Some(&token))?;
    let mounts = client.mounts().await.context("read sys/mounts")?;
    for engine in &d.env.secrets {
        if !mounts.contains_key(&format!("{}/", engine.path)) {
            bail!("the restored node has no {}/ engine", engine.path);
        }
    }
    let methods = client.auth_methods().await.context("read sys/auth")?;
    for method in &d.env.auth {
        if !methods.contains_key(&format!("{}/", method.path())) {
            bail!("the restored node has no auth/{}/ method", method.path());
        }
    }
    let root = cluster
        .generate_root(&init.unseal_keys_b64)
        .await
        .context("generate a root token on the restored node from the shares")?;
    // Two tokens made since the restore: the admin login and the root token.
    inventory::verify(&cluster.client(0, Some(&root))?, inventory, 2).await
}

/// `keyhold operator raft snapshot restore -offline` on `node`'s host: seeds its empty data
/// directory (named by its server `config`) from `archive` (a file on this machine, put on the
/// host first and removed after), bounded by `timeout`. On a systemd host the restored data is
/// then given to the service user, as the server would have written it.
pub async fn restore_offline(
    host: &dyn Host,
    node: &NodeSpec,
    config: &Path,
    archive: &Path,
    timeout: Duration,
) -> Result<()> {
    const STAGED: &str = "opt/keyhold/restore.snap";
    host.install_file(archive, Path::new(STAGED), 0o600)
        .await
        .with_context(|| format!("put the snapshot on {}", node.name))?;
    let binary = node.layout.binary.display().to_string();
    let restored = crate::providers::run_ok(
        host,
        &[
            &binary,
            "operator",
            "raft",
            "snapshot",
            "restore",
            "-offline",
            &format!("-config={}", config.display()),
            &node.layout.path(STAGED).display().to_string(),
        ],
        timeout,
    )
    .await;
    let _ = host
        .run(&["rm", "-f", STAGED], Duration::from_secs(60))
        .await;
    restored.with_context(|| format!("the offline restore into {} failed", node.name))?;
    if let Some(owner) = node.layout.service_owner() {
        crate::providers::run_ok(
            host,
            &[
                "chown",
                "-R",
                &format!("{}:{}", owner.user, owner.group),
                Layout::DATA_DIR,
            ],
            Duration::from_secs(300),
        )
        .await
        .with_context(|| format!("give the restored data to {} on {}", owner.user, node.name))?;
    }
    Ok(())
}
