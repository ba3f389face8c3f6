//! One `keyhold server` process on its own loopback address: its directory (config, TLS, data,
//! log), its lifecycle (start, kill -9, SIGTERM, SIGHUP, restart) and an [`Api`] handle on it.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::api::{Api, InitKeys};
use crate::pki::{CertFiles, IssuedCert, Pki};

/// Where a node keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// `storage "raft"`: durable, the production backend.
    Raft,
    /// `storage "inmem"`: lost on exit.
    Inmem,
}

/// TLS settings of the node's listener.
#[derive(Clone, Debug, Default)]
pub struct ListenerTls {
    /// `tls_min_version`, e.g. `"tls13"`.
    pub min_version: Option<&'static str>,
    /// Sets `tls_client_ca_file` to the harness CA and `tls_require_and_verify_client_cert = true`.
    pub require_client_cert: bool,
}

/// How to configure a node. `Default` is a durable raft node behind a TLS listener.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub storage: Storage,
    /// `None` writes `tls_disable = true`.
    pub tls: Option<ListenerTls>,
    /// `max_request_size` of the listener, in bytes.
    pub max_request_size: Option<u64>,
    /// Lines added inside the `listener "tcp"` block.
    pub extra_listener: Vec<String>,
    /// Lines added at the top level of the config file.
    pub extra_top: Vec<String>,
    /// Lines added inside the `storage "raft"` block (`performance_multiplier = 1`, `retry_join`
    /// blocks); ignored for inmem storage.
    pub extra_raft: Vec<String>,
    /// Environment variables for the server process (AWS credentials for a KMS seal).
    pub env: Vec<(String, String)>,
    pub log_level: &'static str,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            storage: Storage::Raft,
            tls: Some(ListenerTls::default()),
            max_request_size: None,
            extra_listener: Vec::new(),
            extra_top: Vec::new(),
            extra_raft: Vec::new(),
            env: Vec::new(),
            log_level: "info",
        }
    }
}

/// The `keyhold` binary under test: `$KEYHOLD_BIN`, else `keyhold` in the cargo target directory
/// this test executable was built into (`target/debug/deps/<test>` -> `target/debug/keyhold`).
pub fn keyhold_bin() -> Result<PathBuf> {
    if let Some(path) = binary_from_env("KEYHOLD_BIN")? {
        return Ok(path);
    }
    let exe = std::env::current_exe().context("locate the test executable")?;
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|debug| debug.join("keyhold"))
        .context("test executable has no grandparent directory")?;
    if !candidate.is_file() {
        bail!(
            "no keyhold binary at {}: run `cargo build -p keyhold --bin keyhold` first, or set KEYHOLD_BIN",
            candidate.display()
        );
    }
    Ok(candidate)
}

/// The version `scripts/test` builds the second `keyhold` binary with (`KEYHOLD_VERSION` at build
/// time), for the upgrade tests: newer than the crate's own.
pub const NEXT_VERSION: &str = "0.2.0";

/// A `keyhold` binary that reports [`NEXT_VERSION`], for the upgrade tests: `$KEYHOLD_NEXT_BIN`
/// (`scripts/test` builds it with `KEYHOLD_VERSION=0.2.0` into a target directory of its own).
pub fn next_keyhold_bin() -> Result<PathBuf> {
    match binary_from_env("KEYHOLD_NEXT_BIN")? {
        Some(path) => Ok(path),
        None => bail!(
            "KEYHOLD_NEXT_BIN is not set: the upgrade tests need a second keyhold binary of \
             version {NEXT_VERSION}; `scripts/test` builds one (KEYHOLD_VERSION={NEXT_VERSION} \
             cargo build --workspace --bin keyhold, copied to $CARGO_TARGET_DIR/next-version/)"
        ),
    }
}

/// The `provision` binary: `$PROVISION_BIN` (`scripts/test` sets it), else `provision` beside
/// the `keyhold` binary under test.
pub fn provision_bin() -> Result<PathBuf> {
    if let Some(path) = binary_from_env("PROVISION_BIN")? {
        return Ok(path);
    }
    let candidate = keyhold_bin()?.with_file_name("provision");
    if !candidate.is_file() {
        bail!(
            "no provision binary at {}: run `cargo build -p provisioner --bin provision` first, or set PROVISION_BIN",
            candidate.display()
        );
    }
    Ok(candidate)
}

/// The path in `var`, which must name a file, or `None` when `var` is unset.
fn binary_from_env(var: &str) -> Result<Option<PathBuf>> {
    let Some(path) = std::env::var_os(var) else {
        return Ok(None);
    };
    let path = PathBuf::from(path);
    if !path.is_file() {
        bail!("{var}={} is not a file", path.display());
    }
    Ok(Some(path))
}

/// A free TCP port on `ip` whose successor is free too (left for a cluster port, which Vault
/// places at api port + 1 by default). The port is released before the server binds it, so
/// another process could take it in between; on loopback in a test run that is rare and shows
/// up as a clear "address in use" in the node's log.
pub fn free_port(ip: Ipv4Addr) -> Result<u16> {
    for _ in 0..64 {
        let first = TcpListener::bind((ip, 0)).with_context(|| format!("bind {ip}:0"))?;
        let port = first.local_addr()?.port();
        if port == u16::MAX {
            continue;
        }
        if TcpListener::bind((ip, port + 1)).is_ok() {
            return Ok(port);
        }
    }
    bail!("found no pair of free ports on {ip} in 64 tries")
}

/// Polls `check` up to `attempts` times, `interval` apart, until it yields `Some`.
pub async fn eventually<T, F, Fut>(
    what: &str,
    attempts: u32,
    interval: Duration,
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let mut last_err = None;
    for _ in 0..attempts {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        tokio::time::sleep(interval).await;
    }
    match last_err {
        Some(e) => Err(e.context(format!("{what}: not reached after {attempts} attempts"))),
        None => bail!("{what}: not reached after {attempts} attempts"),
    }
}

/// One server process and everything on disk that belongs to it.
pub struct Node {
    /// Raft node id, `n1`, `n2`, ...
    pub id: String,
    /// This node's own loopback address (127.0.0.1 for the first node, .2, .3, ... after).
    pub ip: Ipv4Addr,
    pub port: u16,
    pub dir: PathBuf,
    pub data_dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// The listener's certificate files; replace them and `sighup()` to rotate.
    pub tls_files: Option<CertFiles>,
    /// The certificate the listener was started with.
    pub server_cert: Option<IssuedCert>,
    pub options: NodeOptions,
    /// Set by `init`; kept across restarts.
    pub init_keys: Option<InitKeys>,
    bin: PathBuf,
    extra_args: Vec<String>,
    dev_args: Option<Vec<String>>,
    /// The network namespace the server runs in (`nsenter --net=PATH`), if not this one.
    netns: Option<PathBuf>,
    child: Option<Child>,
    api: Api,
    /// The certificate the harness's own client presents, when the listener requires one.
    pub client_cert: Option<IssuedCert>,
    ca_pem: String,
    ca_path: PathBuf,
}

impl Node {
    /// Lays out the node's directory and config under `dir` without starting it.
    /// `index` is 0-based; node `i` listens on 127.0.0.(i+1).
    pub fn prepare(pki: &Pki, dir: &Path, index: u8, options: NodeOptions) -> Result<Node> {
        let ip = Ipv4Addr::new(127, 0, 0, index + 1);
        Node::prepare_at(pki, dir, index, ip, free_port(ip)?, options)
    }

    /// Lays out node `index` (0-based) to listen on `ip:port` (and the cluster port on
    /// `port + 1`), without starting it: for a node in a network namespace of its own, where
    /// the address exists only inside (see [`Node::set_netns`]).
    pub fn prepare_at(
        pki: &Pki,
        dir: &Path,
        index: u8,
        ip: Ipv4Addr,
        port: u16,
        options: NodeOptions,
    ) -> Result<Node> {
        let id = format!("n{}", index + 1);
        let dir = dir.join(&id);
        let data_dir = dir.join("data");
        fs::create_dir_all(&data_dir).with_context(|| format!("create {}", data_dir.display()))?;
        let (tls_files, server_cert) = match options.tls {
            Some(_) => {
                let cert = pki.issue_server(
                    &format!("keyhold {id}"),
                    &[
                        "localhost".to_string(),
                        "127.0.0.1".to_string(),
                        ip.to_string(),
                    ],
                )?;
                (Some(cert.write(&dir, "server")?), Some(cert))
            }
            None => (None, None),
        };
        // A listener that requires client certificates needs one from the harness's own client too.
        let client_cert = match &options.tls {
            Some(tls) if tls.require_client_cert => Some(pki.issue_client("keyhold-harness")?),
            _ => None,
        };
        let mut builder = client_builder(&pki.ca_pem)?;
        if let Some(cert) = &client_cert {
            builder = builder.identity(
                reqwest::Identity::from_pem(&cert.identity_pem()).context("client identity")?,
            );
        }
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let node = Node {
            id,
            ip,
            port,
            config_path: dir.join("keyhold.hcl"),
            log_path: dir.join("keyhold.log"),
            dir,
            data_dir,
            tls_files,
            server_cert,
            options,
            init_keys: None,
            bin: keyhold_bin()?,
            extra_args: Vec::new(),
            dev_args: None,
            netns: None,
            child: None,
            api: Api::new(builder.build()?, format!("{scheme}://{ip}:{port}")),
            client_cert,
            ca_pem: pki.ca_pem.clone(),
            ca_path: pki.ca_path.clone(),
        };
        node.write_config()?;
        Ok(node)
    }

    /// Writes the config file from `options`: after changing them, before the next `start`.
    pub fn write_config(&self) -> Result<()> {
        fs::write(&self.config_path, self.render_config())
            .with_context(|| format!("write {}", self.config_path.display()))
    }

    /// The server config this node runs with, as HCL.
    fn render_config(&self) -> String {
        let o = &self.options;
        let ca_path = &self.ca_path;
        let mut hcl = String::new();
        match o.storage {
            Storage::Raft => {
                let _ = writeln!(hcl, "storage \"raft\" {{");
                let _ = writeln!(hcl, "  path    = \"{}\"", self.data_dir.display());
                let _ = writeln!(hcl, "  node_id = \"{}\"", self.id);
                for line in &o.extra_raft {
                    let _ = writeln!(hcl, "  {line}");
                }
                let _ = writeln!(hcl, "}}\n");
            }
            Storage::Inmem => hcl.push_str("storage \"inmem\" {}\n\n"),
        }
        let _ = writeln!(hcl, "listener \"tcp\" {{");
        let _ = writeln!(hcl, "  address = \"{}:{}\"", self.ip, self.port);
        match (&o.tls, &self.tls_files) {
            (Some(tls), Some(files)) => {
                let _ = writeln!(hcl, "  tls_cert_file = \"{}\"", files.cert.display());
                let _ = writeln!(hcl, "  tls_key_file  = \"{}\"", files.key.display());
                if let Some(v) = tls.min_version {
                    let _ = writeln!(hcl, "  tls_min_version = \"{v}\"");
                }
                if tls.require_client_cert {
                    let _ = writeln!(hcl, "  tls_client_ca_file = \"{}\"", ca_path.display());
                    let _ = writeln!(hcl, "  tls_require_and_verify_client_cert = true");
                }
            }
            _ => {
                let _ = writeln!(hcl, "  tls_disable = true");
            }
        }
        if let Some(size) = o.max_request_size {
            let _ = writeln!(hcl, "  max_request_size = {size}");
        }
        for line in &o.extra_listener {
            let _ = writeln!(hcl, "  {line}");
        }
        let _ = writeln!(hcl, "}}\n");
        let _ = writeln!(hcl, "disable_mlock = true");
        let _ = writeln!(hcl, "api_addr = \"{}\"", self.api.base);
        if o.storage == Storage::Raft {
            // Vault requires cluster_addr with raft storage; it is api port + 1, kept free by `free_port`.
            let _ = writeln!(
                hcl,
                "cluster_addr = \"https://{}:{}\"",
                self.ip,
                self.port + 1
            );
        }
        let _ = writeln!(hcl, "cluster_name = \"keyhold-test\"");
        let _ = writeln!(hcl, "log_level = \"{}\"", o.log_level);
        for line in &o.extra_top {
            let _ = writeln!(hcl, "{line}");
        }
        hcl
    }

    /// Extra command-line arguments after `server -config=...`.
    /// Runs this node with another `keyhold` binary from its next start.
    pub fn set_bin(&mut self, bin: PathBuf) {
        self.bin = bin;
    }

    /// Runs the server in the network namespace at `path` (`/run/netns/NAME`) from its next
    /// start. `nsenter` execs the server, so the pid the harness signals is the server's.
    pub fn set_netns(&mut self, path: PathBuf) {
        self.netns = Some(path);
    }

    pub fn set_extra_args(&mut self, args: &[&str]) {
        self.extra_args = args.iter().map(|a| a.to_string()).collect();
    }

    /// Runs `keyhold server <args>` instead of `keyhold server -config=...` (for `-dev`). The
    /// args must make the server listen on this node's address with TLS off.
    pub fn set_dev_args(&mut self, args: &[&str]) {
        self.dev_args = Some(args.iter().map(|a| a.to_string()).collect());
        self.api = self.api.with_token(None);
        self.api.base = format!("http://{}:{}", self.ip, self.port);
    }

    /// An API handle with the root token if the node has been initialised through the harness.
    /// Joins this node's API handles to `session` (read-your-writes across one cluster's nodes).
    pub fn join_session(&mut self, session: crate::api::Session) {
        self.api = self.api.clone().with_session(session);
    }

    pub fn api(&self) -> Api {
        let token = self.init_keys.as_ref().map(|k| k.root_token.as_str());
        self.api.with_token(token)
    }

    /// The node's `api_addr`, `https://127.0.0.N:PORT`: what other nodes name in `retry_join`.
    pub fn api_addr(&self) -> &str {
        &self.api.base
    }

    /// Whether the harness has a process for this node (not killed, stopped or never started).
    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    /// The status `GET /v1/sys/health` answers (200 active, 429 standby, 503 sealed, 501
    /// uninitialised), or `None` when nothing answers within two seconds.
    pub async fn health_code(&self) -> Option<u16> {
        self.api
            .http()
            .get(self.api.url("sys/health"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    /// Unseals a cluster member with `keys` (one at a time until unsealed), then waits (bounded:
    /// 400 x 50 ms) until it serves as the active node or a standby (health 200 or 429).
    pub async fn unseal_member(&self, keys: &[String]) -> Result<()> {
        self.api
            .unseal_all(keys)
            .await
            .with_context(|| format!("unseal {}", self.id))?;
        let mut last = None;
        for _ in 0..400 {
            last = self.health_code().await;
            if matches!(last, Some(200 | 429)) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "{} unsealed but health never said active (200) or standby (429) in 400 polls; last: {last:?}; log:\n{}",
            self.id,
            self.log_tail(40)
        )
    }

    /// The CA certificate (PEM) this node's certificates chain to.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// An HTTP client builder that trusts this node's CA, for tests that need their own client.
    pub fn client_builder(&self) -> Result<reqwest::ClientBuilder> {
        client_builder(&self.ca_pem)
    }

    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.port))
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Spawns the server and waits (bounded: 400 x 50 ms) until `/v1/sys/health` answers at all.
    pub async fn start(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("node {} is already running", self.id);
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("open {}", self.log_path.display()))?;
        let args = match &self.dev_args {
            Some(dev) => dev.clone(),
            None => std::iter::once(format!("-config={}", self.config_path.display()))
                .chain(self.extra_args.iter().cloned())
                .collect(),
        };
        let mut command = match &self.netns {
            Some(netns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", netns.display())).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        let child = command
            .arg("server")
            .args(&args)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        self.child = Some(child);
        self.wait_serving().await
    }

    /// Waits until the listener answers `/v1/sys/health` with any HTTP status.
    pub async fn wait_serving(&mut self) -> Result<()> {
        let url = self.api.url("sys/health");
        let http = self.api.http().clone();
        for _ in 0..400 {
            if let Some(child) = &mut self.child {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "node {} exited with {status} before serving; log:\n{}",
                        self.id,
                        self.log_tail(60)
                    );
                }
            }
            let attempt = http.get(&url).timeout(Duration::from_secs(2)).send().await;
            if attempt.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "node {} did not answer {url} after 400 attempts; log:\n{}",
            self.id,
            self.log_tail(60)
        )
    }

    /// Initialises the node (Shamir `shares`/`threshold`) and remembers the keys and root token.
    pub async fn init(&mut self, shares: usize, threshold: usize) -> Result<InitKeys> {
        let keys = self.api.init(shares, threshold).await?;
        self.init_keys = Some(keys.clone());
        Ok(keys)
    }

    /// Unseals with the given keys (one at a time until unsealed).
    pub async fn unseal_all(&self, keys: &[String]) -> Result<()> {
        self.api.unseal_all(keys).await
    }

    /// Unseals with the keys remembered from `init`, then waits (bounded) for health to say active.
    pub async fn unseal(&self) -> Result<()> {
        let keys = self
            .init_keys
            .as_ref()
            .context("unseal: node was not initialised through the harness")?;
        self.api.unseal_all(&keys.keys[..keys.threshold]).await?;
        self.wait_active().await
    }

    /// Waits (bounded: 600 x 50 ms) for `GET /v1/sys/health` to answer 200.
    pub async fn wait_active(&self) -> Result<()> {
        let api = self.api.clone();
        // 600 x 50 ms: an auto-unseal node reaches active only after its KMS (moto) answers,
        // which a loaded CI machine running the whole suite in parallel has seen take over
        // 10 s.
        eventually(
            "health 200 (active)",
            600,
            Duration::from_millis(50),
            || {
                let api = api.clone();
                async move {
                    let r = api.get("sys/health").await?;
                    Ok((r.status.as_u16() == 200).then_some(()))
                }
            },
        )
        .await
    }

    /// Init with one share, unseal, and wait until active: the usual start of a test.
    pub async fn init_and_unseal(&mut self, shares: usize, threshold: usize) -> Result<InitKeys> {
        let keys = self.init(shares, threshold).await?;
        self.unseal().await?;
        Ok(keys)
    }

    fn signal(&self, signal: libc::c_int) -> Result<()> {
        let pid = self.pid().context("node is not running")?;
        let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
        // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid is our own
        // child, not yet reaped (we hold its `Child`), so it cannot name a recycled process.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc != 0 {
            bail!(
                "kill({pid}, {signal}) failed: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// SIGKILL, and reap the process.
    pub fn kill9(&mut self) -> Result<()> {
        let mut child = self.child.take().context("kill9: node is not running")?;
        child.kill().context("SIGKILL")?;
        child.wait().context("reap after SIGKILL")?;
        Ok(())
    }

    /// Sends `signal` (SIGTERM, SIGINT) and waits for the process to exit, bounded by
    /// `attempts` x 50 ms. The bound only keeps a hung server from hanging the test.
    pub async fn stop_with(&mut self, signal: libc::c_int, attempts: u32) -> Result<ExitStatus> {
        self.signal(signal)?;
        for _ in 0..attempts {
            let child = self.child.as_mut().context("node is not running")?;
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "node {} still running {attempts} polls after signal {signal}; log:\n{}",
            self.id,
            self.log_tail(40)
        )
    }

    /// SIGTERM and wait for a graceful exit (bounded, 600 x 50 ms).
    pub async fn sigterm(&mut self) -> Result<ExitStatus> {
        self.stop_with(libc::SIGTERM, 600).await
    }

    /// SIGHUP: reopen audit files and reload TLS certificates.
    pub fn sighup(&self) -> Result<()> {
        self.signal(libc::SIGHUP)
    }

    /// Starts the node again; a still-running process is killed with SIGKILL first.
    pub async fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            self.kill9()?;
        }
        self.start().await
    }

    /// Everything the server printed, across restarts.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `lines` lines of the log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A reqwest client builder that trusts only the harness CA (not the system roots).
pub fn client_builder(ca_pem: &str) -> Result<reqwest::ClientBuilder> {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).context("parse CA PEM")?;
    Ok(reqwest::Client::builder()
        .tls_certs_only([ca])
        .no_proxy()
        .connect_timeout(Duration::from_secs(5)))
}
