//! AWS for the tests: moto's server mode (`python3 -m moto.server`, from
//! tests/compat/requirements.txt) on a loopback address, reached through the real aws-sdk
//! clients; real AWS is out of reach here.
//!
//! The system under test reaches moto through a front door: a small TCP proxy on its own port
//! that can be shut ([`Moto::set_reachable`]`(false)`: the listener and every connection through
//! it close, so new connections are refused) and opened again on the same address, while moto
//! behind it keeps its in-memory state (buckets, objects, KMS keys). [`Moto::cut_after`] shuts
//! it in the middle of a transfer. The harness's own clients ([`Moto::s3`], [`Moto::kms`]) go
//! straight to moto, so a test can look at the bucket during an outage.
//!
//! Addresses: tests start moto on 127.0.40.x to 127.0.49.x, one address per test (see
//! [`moto_ip`]); nothing else in the harness uses that range.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::{Credentials, Region};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

use crate::node::free_port;

/// The region every test uses.
pub const REGION: &str = "us-east-1";

/// The environment a process under test needs to reach moto with the standard credential
/// chain: static test credentials and the region.
pub const AWS_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", REGION),
];

/// The loopback address of a test's moto: 127.0.(40 + slot / 250).(1 + slot % 250), so slots
/// 0 to 2499 stay in 127.0.40.x to 127.0.49.x.
pub fn moto_ip(slot: u16) -> Ipv4Addr {
    assert!(
        slot < 2500,
        "moto slot {slot} is outside 127.0.40.x-127.0.49.x"
    );
    Ipv4Addr::new(127, 0, 40 + (slot / 250) as u8, 1 + (slot % 250) as u8)
}

/// One moto server and its front door. Dropping it kills moto.
pub struct Moto {
    child: Child,
    moto: SocketAddr,
    door: FrontDoor,
    log_path: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
    // Dropped last: moto's log lives here.
    _dir: tempfile::TempDir,
}

impl Moto {
    /// Starts moto on `ip` (a free port) and opens its front door on another free port of
    /// `ip`; waits (bounded: 300 x 100 ms) until moto answers HTTP.
    pub async fn start(ip: Ipv4Addr) -> Result<Moto> {
        let dir = crate::test_dir("keyhold-moto-")?;
        let log_path = dir.path().join("moto.log");
        let log = File::create(&log_path).context("create moto.log")?;
        let port = free_port(ip)?;
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                &ip.to_string(),
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context(
                "spawn python3 -m moto.server (pip install -r tests/compat/requirements.txt)",
            )?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("moto-front-door")
            .enable_all()
            .build()
            .context("start the front door's runtime")?;
        let moto = SocketAddr::from((ip, port));
        let door_addr = SocketAddr::from((ip, free_port(ip)?));
        let door = FrontDoor::new(door_addr, moto, runtime.handle().clone());
        let mut moto = Moto {
            child,
            moto,
            door,
            log_path,
            runtime: Some(runtime),
            _dir: dir,
        };
        moto.wait_answering().await?;
        moto.door.open()?;
        Ok(moto)
    }

    async fn wait_answering(&mut self) -> Result<()> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("http://{}/moto-api/", self.moto);
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "moto exited with {status} before answering; log:\n{}",
                    self.log()
                );
            }
            if http.get(&url).send().await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "moto did not answer {url} in 300 tries; log:\n{}",
            self.log()
        )
    }

    /// The endpoint for the system under test: the front door, `http://IP:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.door.addr)
    }

    /// moto itself, bypassing the front door.
    pub fn direct_endpoint(&self) -> String {
        format!("http://{}", self.moto)
    }

    /// Opens or shuts the front door. Shut: the listener is closed and every connection through
    /// it is dropped, so clients get "connection refused"; open: listening again on the same
    /// address. Returns once the change has taken effect.
    pub async fn set_reachable(&self, reachable: bool) -> Result<()> {
        if reachable {
            self.door.open()
        } else {
            self.door.shut().await;
            Ok(())
        }
    }

    /// Shuts the front door (as `set_reachable(false)`) once `bytes` more bytes have gone
    /// through it towards moto, in the middle of whatever request carries them.
    pub fn cut_after(&self, bytes: u64) {
        self.door
            .shared
            .budget
            .store(i64::try_from(bytes).unwrap_or(i64::MAX), Ordering::SeqCst);
    }

    /// Whether the front door is open (it may have been cut).
    pub fn is_reachable(&self) -> bool {
        self.door.shared.state.lock().unwrap().accept.is_some()
    }

    /// The AWS config of the harness's own clients: straight to moto, static test credentials.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(BehaviorVersion::v2026_01_12())
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new("test", "test", None, None, "moto"))
            .endpoint_url(self.direct_endpoint())
            .load()
            .await
    }

    /// An S3 client straight to moto (path-style).
    pub async fn s3(&self) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::config::Builder::from(&self.sdk_config().await)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// A KMS client straight to moto.
    pub async fn kms(&self) -> aws_sdk_kms::Client {
        aws_sdk_kms::Client::new(&self.sdk_config().await)
    }

    /// Creates bucket `name` (in `REGION`).
    pub async fn create_bucket(&self, name: &str) -> Result<()> {
        self.s3()
            .await
            .create_bucket()
            .bucket(name)
            .send()
            .await
            .with_context(|| format!("create bucket {name} in moto"))?;
        Ok(())
    }

    /// Creates a symmetric KMS key with the alias `alias/<alias>`; returns its key id.
    pub async fn create_kms_key(&self, alias: &str) -> Result<String> {
        let kms = self.kms().await;
        let key = kms
            .create_key()
            .description("keyhold test key")
            .send()
            .await
            .context("create a KMS key in moto")?;
        let id = key
            .key_metadata()
            .map(|m| m.key_id().to_string())
            .context("CreateKey answered without key metadata")?;
        kms.create_alias()
            .alias_name(format!("alias/{alias}"))
            .target_key_id(&id)
            .send()
            .await
            .with_context(|| format!("create alias/{alias} in moto"))?;
        Ok(id)
    }

    /// Every key in `bucket`, sorted.
    pub async fn object_keys(&self, bucket: &str) -> Result<Vec<String>> {
        let s3 = self.s3().await;
        let mut pages = s3.list_objects_v2().bucket(bucket).into_paginator().send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.with_context(|| format!("list bucket {bucket} in moto"))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
        }
        keys.sort();
        Ok(keys)
    }

    /// moto's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The switchable TCP proxy in front of moto. It runs on the harness's own runtime, so it keeps
/// forwarding while a test blocks on a child process.
struct FrontDoor {
    addr: SocketAddr,
    backend: SocketAddr,
    runtime: tokio::runtime::Handle,
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<DoorState>,
    /// Bytes that may still go towards moto before the door shuts; `i64::MAX` for no limit.
    budget: AtomicI64,
}

#[derive(Default)]
struct DoorState {
    /// The accept loop, which owns the listener; `None` while shut.
    accept: Option<JoinHandle<()>>,
    connections: Vec<AbortHandle>,
}

impl FrontDoor {
    fn new(addr: SocketAddr, backend: SocketAddr, runtime: tokio::runtime::Handle) -> FrontDoor {
        FrontDoor {
            addr,
            backend,
            runtime,
            shared: Arc::new(Shared {
                state: Mutex::new(DoorState::default()),
                budget: AtomicI64::new(i64::MAX),
            }),
        }
    }

    /// Listens on `addr` (bound here, so the address is taken when this returns).
    fn open(&self) -> Result<()> {
        let mut state = self.shared.state.lock().unwrap();
        if state.accept.is_some() {
            return Ok(());
        }
        self.shared.budget.store(i64::MAX, Ordering::SeqCst);
        // std sets SO_REUSEADDR on Unix, so the address can be bound again right after a shut.
        let listener = bind_again(self.addr)?;
        listener.set_nonblocking(true)?;
        let shared = Arc::clone(&self.shared);
        let backend = self.backend;
        let runtime = self.runtime.clone();
        state.accept = Some(self.runtime.spawn(async move {
            let Ok(listener) = TcpListener::from_std(listener) else {
                return;
            };
            while let Ok((client, _)) = listener.accept().await {
                let task = runtime.spawn(forward(client, backend, Arc::clone(&shared)));
                let mut state = shared.state.lock().unwrap();
                state.connections.retain(|c| !c.is_finished());
                state.connections.push(task.abort_handle());
            }
        }));
        Ok(())
    }

    async fn shut(&self) {
        if let Some(accept) = self.shared.close() {
            let _ = accept.await;
        }
    }
}

/// Binds `addr`, waiting (bounded: 200 x 10 ms) for a listener just closed by a cut to go.
fn bind_again(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let mut last = None;
    for _ in 0..200 {
        match std::net::TcpListener::bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e).with_context(|| format!("bind the moto front door on {addr}")),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(last.expect("200 tries")).with_context(|| format!("bind the moto front door on {addr}"))
}

impl Shared {
    /// Stops accepting and drops every connection; returns the accept task to wait on.
    fn close(&self) -> Option<JoinHandle<()>> {
        let mut state = self.state.lock().unwrap();
        for connection in state.connections.drain(..) {
            connection.abort();
        }
        let accept = state.accept.take()?;
        accept.abort();
        Some(accept)
    }
}

/// Copies bytes both ways between a client and moto; towards moto, counts them against the
/// budget and shuts the door when it runs out.
async fn forward(client: TcpStream, backend: SocketAddr, shared: Arc<Shared>) {
    let Ok(upstream) = TcpStream::connect(backend).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let towards_moto = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let left = shared.budget.fetch_sub(n as i64, Ordering::SeqCst);
            if left <= n as i64 {
                let allowed = usize::try_from(left.max(0)).unwrap_or(0);
                let _ = upstream_write.write_all(&buf[..allowed]).await;
                shared.close();
                return;
            }
            if upstream_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = upstream_write.shutdown().await;
    };
    let towards_client = async {
        let _ = tokio::io::copy(&mut upstream_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(towards_moto, towards_client);
}
