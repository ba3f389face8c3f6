//! The audit broker: the set of enabled devices and the fail-closed rule.
//!
//! A line is handed to every device at once (each device's writer thread
//! works in parallel) and the broker waits for the confirmations against one
//! shared deadline, so a request waits at most one write timeout however
//! many devices there are, and no time at all on a device already known to
//! be blocked.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::entry::{Entry, FormatOptions};
use super::file::{DeviceOptions, PendingWrite, Sink, WriteError};
use super::hash::Salt;
use super::AuditDeviceConfig;
use crate::error::{Error, Result};
use crate::logical::{Auth, Request, Response, StorageView};

const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// One enabled device.
struct Device {
    config: AuditDeviceConfig,
    salt: Salt,
    format: FormatOptions,
    sink: Sink,
    /// Whether the last write failed; failures are logged on the transition
    /// only, so a dead device does not flood the server log.
    failing: AtomicBool,
}

/// The enabled audit devices. Cheap to share behind an `Arc`; every method
/// takes `&self`.
pub struct AuditBroker {
    devices: RwLock<BTreeMap<String, Arc<Device>>>,
    write_timeout: Duration,
}

impl Default for AuditBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for AuditBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditBroker")
            .field("devices", &self.devices())
            .field("write_timeout", &self.write_timeout)
            .finish()
    }
}

impl AuditBroker {
    /// A broker with no devices (auditing off) and a 5 s write timeout.
    pub fn new() -> Self {
        Self::with_write_timeout(DEFAULT_WRITE_TIMEOUT)
    }

    /// How long a request waits for a device to confirm a line before that
    /// device counts as failed for the request and as blocked afterwards.
    pub fn with_write_timeout(write_timeout: Duration) -> Self {
        AuditBroker {
            devices: RwLock::new(BTreeMap::new()),
            write_timeout,
        }
    }

    /// Validates the device's options, opens it, and loads its salt from
    /// `view` (creating one on first use). Nothing is enabled on error.
    pub async fn enable(&self, config: &AuditDeviceConfig, view: StorageView) -> Result<()> {
        let path = normalize_path(&config.path)?;
        self.check_path_free(&path)?;
        let options = DeviceOptions::parse(&config.r#type, &config.options)?;
        let sink = Sink::open(&path, options.target, self.write_timeout).await?;
        let salt = Salt::load_or_create(&view).await?;
        let device = Arc::new(Device {
            config: AuditDeviceConfig {
                path: path.clone(),
                ..config.clone()
            },
            salt,
            format: options.format,
            sink,
            failing: AtomicBool::new(false),
        });
        let mut devices = self.write_devices();
        // Checked again: another enable may have won while this one opened.
        check_path_free(&devices, &path)?;
        devices.insert(path, device);
        Ok(())
    }

    /// Disables the device at `path`; false if none was enabled there. Its
    /// writer thread finishes the lines already queued and closes the file.
    pub async fn disable(&self, path: &str) -> bool {
        let Ok(path) = normalize_path(path) else {
            return false;
        };
        self.write_devices().remove(&path).is_some()
    }

    /// The enabled devices' configurations, ordered by path.
    pub fn devices(&self) -> Vec<AuditDeviceConfig> {
        self.read_devices()
            .values()
            .map(|d| d.config.clone())
            .collect()
    }

    /// True when no device is enabled, i.e. auditing is off.
    pub fn is_empty(&self) -> bool {
        self.read_devices().is_empty()
    }

    /// Paths of devices that are blocked or whose last write failed.
    pub fn unhealthy_devices(&self) -> Vec<String> {
        self.read_devices()
            .iter()
            .filter(|(_, d)| d.sink.is_blocked() || d.failing.load(Ordering::Relaxed))
            .map(|(path, _)| path.clone())
            .collect()
    }

    /// Logs a request before it is routed. `Err(AuditFailed)` when devices
    /// are enabled and none of them logged it: the request must not be served.
    pub async fn log_request(
        &self,
        req: &Request,
        auth: Option<&Auth>,
        error: Option<&str>,
    ) -> Result<()> {
        let devices = self.snapshot();
        if devices.is_empty() {
            return Ok(());
        }
        let entry = Entry::request(req, auth, error);
        self.log(&devices, &entry, Kind::Request).await
    }

    /// Logs a response (or a failure, with `error`). `Err(AuditFailed)` when
    /// devices are enabled and none of them logged it: the answer must not
    /// be sent.
    pub async fn log_response(
        &self,
        req: &Request,
        auth: Option<&Auth>,
        resp: Option<&Response>,
        error: Option<&str>,
    ) -> Result<()> {
        let devices = self.snapshot();
        if devices.is_empty() {
            return Ok(());
        }
        let entry = Entry::response(req, auth, resp, error);
        self.log(&devices, &entry, Kind::Response).await
    }

    /// `sys/audit-hash/:path`: `input` hashed as the device at `path` hashes
    /// values in its log.
    pub async fn hash(&self, path: &str, input: &str) -> Result<String> {
        let path = normalize_path(path)?;
        let devices = self.read_devices();
        let device = devices
            .get(&path)
            .ok_or_else(|| Error::invalid(format!("unknown audit backend {path:?}")))?;
        Ok(device.salt.hmac(input))
    }

    /// Reopens every device's file, e.g. on SIGHUP after logrotate moved it.
    /// Until then a device keeps writing to the file it opened, even one that
    /// was renamed or deleted (as Vault does, hashicorp/vault#31718).
    /// Failures are logged, not returned: a device that cannot reopen keeps
    /// failing its writes (and so fails closed if it is the only one).
    pub async fn reopen(&self) {
        let devices = self.snapshot();
        let deadline = tokio::time::Instant::now() + self.write_timeout;
        let started: Vec<_> = devices.iter().map(|d| (d, d.sink.reopen())).collect();
        for (device, started) in started {
            let result = match started {
                Ok(pending) => pending.wait(deadline).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => tracing::info!(device = %device.config.path, "audit device reopened"),
                Err(e) => {
                    tracing::error!(device = %device.config.path, "reopen audit device: {e}")
                }
            }
        }
    }

    async fn log(&self, devices: &[Arc<Device>], entry: &Entry, kind: Kind) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.write_timeout;
        // Everything is queued before anything is awaited, so the devices
        // write in parallel and the total wait is bounded by one timeout.
        let started: Vec<(&Arc<Device>, Result<PendingWrite, WriteError>)> = devices
            .iter()
            .map(|d| (d, d.sink.write(entry.render(&d.salt, &d.format))))
            .collect();
        let mut failures = Vec::new();
        let mut logged = 0;
        for (device, started) in started {
            let result = match started {
                Ok(pending) => pending.wait(deadline).await,
                Err(e) => Err(e),
            };
            let was_failing = device.failing.swap(result.is_err(), Ordering::Relaxed);
            match result {
                Ok(()) => {
                    logged += 1;
                    if was_failing {
                        tracing::info!(device = %device.config.path, "audit device recovered");
                    }
                }
                Err(e) => {
                    metrics::counter!(
                        kind.device_failure_metric(&device.config.r#type),
                        "path" => device.config.path.clone()
                    )
                    .increment(1);
                    if !was_failing {
                        tracing::warn!(
                            device = %device.config.path,
                            "audit device failed to log the {}: {e}", kind.as_str()
                        );
                    }
                    failures.push(format!("{}: {e}", device.config.path));
                }
            }
        }
        if logged > 0 {
            return Ok(());
        }
        metrics::counter!(kind.failure_metric()).increment(1);
        tracing::error!(
            failures = %failures.join("; "),
            "no audit device succeeded in logging the {}; refusing the request",
            kind.as_str()
        );
        Err(Error::AuditFailed)
    }

    fn snapshot(&self) -> Vec<Arc<Device>> {
        self.read_devices().values().cloned().collect()
    }

    fn check_path_free(&self, path: &str) -> Result<()> {
        check_path_free(&self.read_devices(), path)
    }

    fn read_devices(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Device>>> {
        self.devices.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_devices(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Device>>> {
        self.devices.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Request,
    Response,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::Response => "response",
        }
    }

    /// Vault's metric names, so existing alerts on audit failures fire.
    fn failure_metric(self) -> &'static str {
        match self {
            Kind::Request => "vault.audit.log_request_failure",
            Kind::Response => "vault.audit.log_response_failure",
        }
    }

    /// One device's failures, by type and labelled with its path
    /// (`vault.audit.socket.log_request_failure{path="socket/"}`).
    fn device_failure_metric(self, device_type: &str) -> String {
        format!("vault.audit.{device_type}.{}_failure", self.metric_stem())
    }

    fn metric_stem(self) -> &'static str {
        match self {
            Kind::Request => "log_request",
            Kind::Response => "log_response",
        }
    }
}

/// `file` and `file/` name the same device.
fn normalize_path(path: &str) -> Result<String> {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return Err(Error::invalid("audit device path cannot be empty"));
    }
    Ok(format!("{trimmed}/"))
}

/// As in Vault, a path may not equal, contain or sit under an enabled one.
fn check_path_free(devices: &BTreeMap<String, Arc<Device>>, path: &str) -> Result<()> {
    if devices
        .keys()
        .any(|existing| existing.starts_with(path) || path.starts_with(existing.as_str()))
    {
        return Err(Error::invalid(format!("path already in use: {path}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    use std::time::Instant;

    use serde_json::{json, Value};

    use super::*;
    use crate::logical::{Lease, MountInfo, Operation};

    const SECRET: &str = "correct-horse-battery-staple";
    const TOKEN: &str = "hvs.plaintext-client-token";
    const ACCESSOR: &str = "plaintext-token-accessor";
    const NEW_TOKEN: &str = "hvs.minted-by-this-response";

    /// Device options as written in a test table.
    type Options = &'static [(&'static str, &'static str)];
    type Breakage = fn(&Path);

    /// Short, so the blocking tests stay fast; every wait below is bounded.
    const TIMEOUT: Duration = Duration::from_millis(200);

    fn config(path: &str, options: &[(&str, &str)]) -> AuditDeviceConfig {
        AuditDeviceConfig {
            path: path.into(),
            r#type: "file".into(),
            description: String::new(),
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            local: false,
        }
    }

    fn file_config(path: &str, file: &Path, extra: &[(&str, &str)]) -> AuditDeviceConfig {
        let file = file.to_str().unwrap();
        let mut options = vec![("file_path", file)];
        options.extend_from_slice(extra);
        config(path, &options)
    }

    /// A KV v2 write by an authenticated caller, and its answer (which also
    /// carries a new token, as a login would, to cover `response.auth`).
    fn kv_write() -> (Request, Auth, Response) {
        let mut req = Request::new(Operation::Update, "secret/data/app")
            .with_token(TOKEN)
            .with_data(json!({
                "data": {"password": SECRET, "port": 5432, "enabled": true},
                "options": {"cas": 0},
            }));
        req.remote_addr = Some("127.0.0.1:40000".parse().unwrap());
        req.mount = Some(MountInfo {
            path: "secret/".into(),
            kind: "kv".into(),
            accessor: "kv_1234".into(),
            ..Default::default()
        });
        let auth = Auth {
            client_token: TOKEN.into(),
            accessor: ACCESSOR.into(),
            display_name: "userpass-alice".into(),
            policies: vec!["default".into(), "app".into()],
            token_type: "service".into(),
            lease_duration: 3600,
            issue_time: 1_700_000_000,
            ..Default::default()
        };
        let resp = Response {
            data: Some(
                json!({"version": 3, "echo": SECRET, "created_time": "2024-01-01T00:00:00Z"})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
            auth: Some(Auth {
                client_token: NEW_TOKEN.into(),
                accessor: "new-accessor".into(),
                ..Default::default()
            }),
            lease: Some(Lease {
                lease_id: "secret/creds/abc".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        (req, auth, resp)
    }

    fn read_lines(path: &Path, prefix: &str) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l.strip_prefix(prefix).expect("prefix")).unwrap())
            .collect()
    }

    async fn log_kv_write(broker: &AuditBroker) -> Result<()> {
        let (req, auth, resp) = kv_write();
        broker.log_request(&req, Some(&auth), None).await?;
        broker
            .log_response(&req, Some(&auth), Some(&resp), None)
            .await
    }

    async fn bounded<F: std::future::Future>(what: &str, fut: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .unwrap_or_else(|_| panic!("{what} did not finish within 10s"))
    }

    #[test]
    fn broker_and_its_futures_can_cross_threads() {
        fn assert_send_sync<T: Send + Sync>(_: &T) {}
        fn assert_send<T: Send>(_: T) {}
        let broker = AuditBroker::new();
        assert_send_sync(&broker);
        let (req, auth, resp) = kv_write();
        assert_send(broker.log_request(&req, Some(&auth), None));
        assert_send(broker.log_response(&req, Some(&auth), Some(&resp), None));
        assert_send(broker.enable(&config("f", &[]), StorageView::inmem()));
        assert_send(broker.hash("f", "x"));
        assert_send(broker.reopen());
        assert_send(broker.disable("f"));
    }

    #[tokio::test]
    async fn entries_hash_every_secret_and_match_audit_hash() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let broker = AuditBroker::new();
        broker
            .enable(&file_config("file", &log, &[]), StorageView::inmem())
            .await
            .unwrap();
        log_kv_write(&broker).await.unwrap();

        let text = std::fs::read_to_string(&log).unwrap();
        for plain in [SECRET, TOKEN, ACCESSOR, NEW_TOKEN, "new-accessor"] {
            assert!(!text.contains(plain), "{plain} reached the log");
        }
        let hash = |s: &str| {
            let broker = &broker;
            let s = s.to_string();
            async move { Value::from(broker.hash("file/", &s).await.unwrap()) }
        };
        let lines = read_lines(&log, "");
        assert_eq!(lines.len(), 2);
        let (request, response) = (&lines[0], &lines[1]);
        assert_eq!(request["type"], "request");
        assert_eq!(response["type"], "response");
        for line in &lines {
            assert_eq!(line["auth"]["client_token"], hash(TOKEN).await);
            assert_eq!(line["auth"]["accessor"], hash(ACCESSOR).await);
            assert_eq!(line["auth"]["display_name"], "userpass-alice");
            assert_eq!(line["auth"]["policies"], json!(["default", "app"]));
            assert_eq!(line["auth"]["token_ttl"], 3600);
            assert_eq!(line["auth"]["token_issue_time"], "2023-11-14T22:13:20Z");
            let r = &line["request"];
            assert_eq!(r["client_token"], hash(TOKEN).await);
            assert_eq!(r["client_token_accessor"], hash(ACCESSOR).await);
            assert_eq!(r["data"]["data"]["password"], hash(SECRET).await);
            assert_eq!(r["data"]["data"]["port"], 5432);
            assert_eq!(r["data"]["data"]["enabled"], true);
            assert_eq!(r["data"]["options"]["cas"], 0);
            assert_eq!(r["operation"], "update");
            assert_eq!(r["path"], "secret/data/app");
            assert_eq!(r["mount_point"], "secret/");
            assert_eq!(r["mount_type"], "kv");
            assert_eq!(r["mount_accessor"], "kv_1234");
            assert_eq!(r["remote_address"], "127.0.0.1");
            assert_eq!(r["remote_port"], 40000);
        }
        let r = &response["response"];
        assert_eq!(r["data"]["echo"], hash(SECRET).await);
        assert_eq!(r["data"]["version"], 3);
        assert_eq!(r["auth"]["client_token"], hash(NEW_TOKEN).await);
        assert_eq!(r["auth"]["accessor"], hash("new-accessor").await);
        assert_eq!(r["secret"]["lease_id"], "secret/creds/abc");
        assert_eq!(r["mount_type"], "kv");
    }

    #[tokio::test]
    async fn format_options_change_what_is_hashed_and_how_lines_look() {
        let dir = tempfile::tempdir().unwrap();
        let broker = AuditBroker::new();
        let cases: &[(&str, Options)] = &[
            ("plain-accessor", &[("hmac_accessor", "false")]),
            ("raw", &[("log_raw", "true")]),
            ("prefixed", &[("prefix", "@cee: ")]),
        ];
        for (name, options) in cases {
            let log = dir.path().join(name);
            broker
                .enable(&file_config(name, &log, options), StorageView::inmem())
                .await
                .unwrap();
        }
        log_kv_write(&broker).await.unwrap();
        let plain_accessor = read_lines(&dir.path().join("plain-accessor"), "");
        assert_eq!(plain_accessor[0]["auth"]["accessor"], ACCESSOR);
        assert_eq!(
            plain_accessor[0]["request"]["client_token_accessor"],
            ACCESSOR
        );
        let hashed = broker.hash("plain-accessor/", TOKEN).await.unwrap();
        assert_eq!(plain_accessor[0]["auth"]["client_token"], hashed.as_str());

        let raw = read_lines(&dir.path().join("raw"), "");
        assert_eq!(raw[0]["request"]["data"]["data"]["password"], SECRET);
        assert_eq!(raw[0]["auth"]["client_token"], TOKEN);
        assert_eq!(raw[1]["response"]["auth"]["client_token"], NEW_TOKEN);

        let prefixed = read_lines(&dir.path().join("prefixed"), "@cee: ");
        assert_eq!(prefixed.len(), 2);
    }

    #[tokio::test]
    async fn mode_is_applied_unless_zero() {
        let dir = tempfile::tempdir().unwrap();
        let broker = AuditBroker::new();
        let kept = dir.path().join("kept");
        std::fs::write(&kept, b"").unwrap();
        std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cases: &[(&str, Options, u32)] = &[
            ("default", &[], 0o600),
            ("group", &[("mode", "0640")], 0o640),
            ("kept", &[("mode", "0000")], 0o644),
        ];
        for (name, options, _) in cases {
            let path = dir.path().join(name);
            broker
                .enable(&file_config(name, &path, options), StorageView::inmem())
                .await
                .unwrap();
        }
        for (name, _, mode) in cases {
            let meta = std::fs::metadata(dir.path().join(name)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, *mode, "{name}");
        }
    }

    #[tokio::test]
    async fn enable_rejects_bad_devices_and_enables_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let broker = AuditBroker::new();
        broker
            .enable(
                &file_config("file", &dir.path().join("a.log"), &[]),
                StorageView::inmem(),
            )
            .await
            .unwrap();
        let missing = dir.path().join("no-such-dir/audit.log");
        let mut syslog = config("syslog", &[("facility", "NOPE")]);
        syslog.r#type = "syslog".into();
        let mut unknown = config("kafka", &[]);
        unknown.r#type = "kafka".into();
        let cases: Vec<(AuditDeviceConfig, &str)> = vec![
            (
                config("file/", &[("file_path", "stdout")]),
                "path already in use",
            ),
            (
                config("file/nested", &[("file_path", "stdout")]),
                "path already in use",
            ),
            (
                syslog,
                "facility: \"NOPE\" is not a syslog facility",
            ),
            (
                unknown,
                "audit device type \"kafka\" is not supported by this build; supported: file, syslog, socket",
            ),
            (
                file_config("missing", &missing, &[]),
                "no-such-dir/audit.log",
            ),
            (
                file_config("isdir", dir.path(), &[]),
                "cannot open audit file",
            ),
            (
                config("jsonx", &[("file_path", "stdout"), ("format", "jsonx")]),
                "jsonx",
            ),
            (config("", &[("file_path", "stdout")]), "cannot be empty"),
        ];
        for (config, expected) in cases {
            let err = broker
                .enable(&config, StorageView::inmem())
                .await
                .unwrap_err();
            assert!(
                matches!(err, Error::InvalidRequest(ref m) if m.contains(expected)),
                "{}: {err}",
                config.path
            );
        }
        let paths: Vec<_> = broker.devices().into_iter().map(|d| d.path).collect();
        assert_eq!(paths, ["file/"]);
    }

    #[tokio::test]
    async fn no_devices_means_auditing_off_and_discard_always_logs() {
        let broker = AuditBroker::new();
        assert!(broker.is_empty());
        log_kv_write(&broker).await.unwrap();
        broker
            .enable(
                &config("null", &[("file_path", "discard")]),
                StorageView::inmem(),
            )
            .await
            .unwrap();
        assert!(!broker.is_empty());
        log_kv_write(&broker).await.unwrap();
        assert!(broker.disable("null").await);
        assert!(!broker.disable("null/").await);
        assert!(broker.is_empty());
    }

    /// Breaks a device's file so that reopening it fails.
    fn break_by_removing_dir(log: &Path) {
        std::fs::remove_dir_all(log.parent().unwrap()).unwrap();
    }

    fn break_by_replacing_with_dir(log: &Path) {
        std::fs::rename(log, log.with_extension("old")).unwrap();
        std::fs::create_dir(log).unwrap();
    }

    #[tokio::test]
    async fn fails_closed_when_no_device_can_write() {
        let breakages: &[(&str, Breakage)] = &[
            ("directory removed", break_by_removing_dir),
            ("file replaced by a directory", break_by_replacing_with_dir),
        ];
        for (what, break_file) in breakages {
            let dir = tempfile::tempdir().unwrap();
            let log = dir.path().join("sub/audit.log");
            std::fs::create_dir(log.parent().unwrap()).unwrap();
            let healthy = dir.path().join("healthy.log");

            let alone = AuditBroker::with_write_timeout(TIMEOUT);
            let paired = AuditBroker::with_write_timeout(TIMEOUT);
            for broker in [&alone, &paired] {
                broker
                    .enable(&file_config("broken", &log, &[]), StorageView::inmem())
                    .await
                    .unwrap();
            }
            paired
                .enable(&file_config("healthy", &healthy, &[]), StorageView::inmem())
                .await
                .unwrap();
            log_kv_write(&alone).await.unwrap();

            break_file(&log);
            alone.reopen().await;
            paired.reopen().await;

            let err = log_kv_write(&alone).await.unwrap_err();
            assert!(matches!(err, Error::AuditFailed), "{what}: {err}");
            assert_eq!(err.to_string(), "internal error", "{what}");
            assert_eq!(alone.unhealthy_devices(), ["broken/"], "{what}");

            log_kv_write(&paired).await.unwrap();
            assert_eq!(read_lines(&healthy, "").len(), 2, "{what}");
            assert_eq!(paired.unhealthy_devices(), ["broken/"], "{what}");
        }
    }

    fn mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .expect("run mkfifo");
        assert!(status.success(), "mkfifo {}", path.display());
    }

    /// Reads a FIFO until every writer has closed it; the result arrives on
    /// the returned channel.
    fn drain_fifo(path: PathBuf) -> std::sync::mpsc::Receiver<String> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let _ = tx.send(text);
        });
        rx
    }

    #[tokio::test]
    async fn a_blocked_device_never_hangs_requests() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("audit.fifo");
        mkfifo(&fifo);
        let healthy = dir.path().join("healthy.log");

        // Only device: enabling returns, and requests fail within the timeout.
        let alone = AuditBroker::with_write_timeout(TIMEOUT);
        bounded(
            "enable on a FIFO",
            alone.enable(&file_config("fifo", &fifo, &[]), StorageView::inmem()),
        )
        .await
        .unwrap();
        let started = Instant::now();
        let err = bounded("first write", log_kv_write(&alone))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::AuditFailed));
        assert!(started.elapsed() < TIMEOUT * 5, "{:?}", started.elapsed());
        // Now known to be blocked: later requests fail without waiting.
        let started = Instant::now();
        assert!(bounded("second write", log_kv_write(&alone)).await.is_err());
        assert!(started.elapsed() < TIMEOUT, "{:?}", started.elapsed());
        assert_eq!(alone.unhealthy_devices(), ["fifo/"]);

        // Beside a healthy device, every request is logged and served.
        let paired = AuditBroker::with_write_timeout(TIMEOUT);
        for (name, path) in [("fifo", &fifo), ("healthy", &healthy)] {
            bounded(
                "enable",
                paired.enable(&file_config(name, path, &[]), StorageView::inmem()),
            )
            .await
            .unwrap();
        }
        for _ in 0..3 {
            bounded("paired write", log_kv_write(&paired))
                .await
                .unwrap();
        }
        assert_eq!(read_lines(&healthy, "").len(), 6);
        assert_eq!(paired.unhealthy_devices(), ["fifo/"]);

        // A reader appears: the blocked opens complete and the device heals.
        let reader = drain_fifo(fifo.clone());
        let mut recovered = false;
        for _ in 0..100 {
            if log_kv_write(&alone).await.is_ok() {
                recovered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(recovered, "the FIFO device did not recover once read");
        assert!(alone.unhealthy_devices().is_empty());
        drop(alone);
        drop(paired);
        let text = reader
            .recv_timeout(Duration::from_secs(10))
            .expect("FIFO reader finished");
        assert!(text.lines().count() >= 2, "{text}");
        assert!(!text.contains(SECRET));
    }

    #[tokio::test]
    async fn reopen_follows_a_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let rotated = dir.path().join("audit.log.1");
        let broker = AuditBroker::new();
        broker
            .enable(&file_config("file", &log, &[]), StorageView::inmem())
            .await
            .unwrap();
        log_kv_write(&broker).await.unwrap();
        std::fs::rename(&log, &rotated).unwrap();
        // Until the reopen, lines follow the renamed file (as in Vault).
        log_kv_write(&broker).await.unwrap();
        broker.reopen().await;
        log_kv_write(&broker).await.unwrap();
        assert_eq!(read_lines(&rotated, "").len(), 4);
        let fresh = read_lines(&log, "");
        assert_eq!(fresh.len(), 2);
        assert_eq!(fresh[0]["type"], "request");
        let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[tokio::test]
    async fn salt_survives_restarts_and_is_replaced_after_disable() {
        let view = StorageView::inmem();
        let device = config("file", &[("file_path", "discard")]);
        let broker = AuditBroker::new();
        broker.enable(&device, view.clone()).await.unwrap();
        let first = broker.hash("file", SECRET).await.unwrap();
        assert!(first.starts_with("hmac-sha256:"));
        assert_eq!(first.len(), "hmac-sha256:".len() + 64);

        // A new broker over the same view (an unseal) keeps the salt.
        let restarted = AuditBroker::new();
        restarted.enable(&device, view.clone()).await.unwrap();
        assert_eq!(restarted.hash("file/", SECRET).await.unwrap(), first);

        // Disable, and the core clears the device's view: a new salt.
        assert!(broker.disable("file/").await);
        view.clear("").await.unwrap();
        broker.enable(&device, view.clone()).await.unwrap();
        assert_ne!(broker.hash("file/", SECRET).await.unwrap(), first);

        let err = broker.hash("nope", SECRET).await.unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(ref m) if m.contains("nope/")));
    }
}
