//! Audit devices as an operator runs them (issue 16). A `syslog` device declared in the server
//! config writes to a unix datagram socket the test binds, as a syslog daemon would; a `socket`
//! device enabled through `sys/audit` sends to a TCP listener the test runs. Requests are served
//! while any device logs them, refused when none does, and served again once a device is back;
//! a TCP peer that accepts but never reads cannot hang requests; and with `log_level = "trace"`
//! no secret, password or token reaches the server log or an audit file in clear.

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use keyhold_tests::{eventually, Api, Cluster, NodeOptions};
use serde_json::{json, Value};

/// A local syslog daemon's socket: a bound unix datagram socket, read on demand.
struct SyslogSocket {
    path: PathBuf,
    socket: UnixDatagram,
}

impl SyslogSocket {
    fn bind(path: &Path) -> Result<SyslogSocket> {
        // A socket file left by an earlier bind refuses a new one.
        let _ = std::fs::remove_file(path);
        let socket =
            UnixDatagram::bind(path).with_context(|| format!("bind {}", path.display()))?;
        socket.set_nonblocking(true)?;
        Ok(SyslogSocket {
            path: path.to_path_buf(),
            socket,
        })
    }

    /// Every message received so far.
    fn drain(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => out.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(out),
                Err(e) => return Err(e).context("read the syslog socket"),
            }
        }
    }

    /// The daemon goes away: the socket is closed and its file removed.
    fn stop(self) -> Result<()> {
        drop(self.socket);
        std::fs::remove_file(&self.path).context("remove the syslog socket")
    }
}

/// A TCP audit collector: accepts connections and reads newline-separated lines from each, on
/// its own thread, until stopped (which closes the listener and every connection).
struct TcpCollector {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    lines: mpsc::Receiver<String>,
    thread: Option<JoinHandle<()>>,
}

impl TcpCollector {
    fn start(addr: SocketAddr) -> Result<TcpCollector> {
        let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, lines) = mpsc::channel();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut conns: Vec<(TcpStream, Vec<u8>)> = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((stream, _)) = listener.accept() {
                    let _ = stream.set_nonblocking(true);
                    conns.push((stream, Vec::new()));
                }
                let mut idle = true;
                conns.retain_mut(|(stream, pending)| match stream.read(&mut buf) {
                    Ok(0) => false,
                    Ok(n) => {
                        idle = false;
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = pending.drain(..=end).collect();
                            let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
                        }
                        true
                    }
                    Err(e) => e.kind() == ErrorKind::WouldBlock,
                });
                if idle {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        Ok(TcpCollector {
            addr,
            stop,
            lines,
            thread: Some(thread),
        })
    }

    /// Every line received so far.
    fn drain(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for TcpCollector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The JSON audit entries carried by syslog messages (`<PRI>stamp tag[pid]: {json}`).
fn syslog_entries(messages: &[String], tag: &str) -> Result<Vec<Value>> {
    messages
        .iter()
        .map(|m| {
            ensure!(m.starts_with('<'), "not a syslog message: {m}");
            let (_, json) = m
                .split_once(&format!(" {tag}["))
                .and_then(|(_, rest)| rest.split_once("]: "))
                .with_context(|| format!("no `{tag}[pid]: ` in {m}"))?;
            serde_json::from_str(json.trim_end()).with_context(|| format!("parse {json}"))
        })
        .collect()
}

fn entries(lines: &[String]) -> Result<Vec<Value>> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l.trim_end()).with_context(|| format!("parse {l}")))
        .collect()
}

/// The request paths of the `request` entries among `entries`.
fn request_paths(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e["type"] == "request")
        .filter_map(|e| e["request"]["path"].as_str().map(str::to_string))
        .collect()
}

/// Polls `collect` (bounded) until the entries it has gathered include a request for `path`.
async fn wait_for_request<F>(what: &str, path: &str, mut collect: F) -> Result<Vec<Value>>
where
    F: FnMut() -> Result<Vec<Value>>,
{
    let mut seen = Vec::new();
    eventually(what, 100, Duration::from_millis(50), || {
        let got = collect();
        let found = match got {
            Ok(new) => {
                seen.extend(new);
                request_paths(&seen).iter().any(|p| p == path)
            }
            Err(e) => return std::future::ready(Err(e)),
        };
        std::future::ready(Ok(found.then(|| seen.clone())))
    })
    .await
}

async fn kv_write(api: &Api, key: &str) -> Result<u16> {
    let resp = api.kv2_put("secret", key, json!({"n": key})).await?;
    Ok(resp.status.as_u16())
}

/// Lines of the server log that report `device` failing (logged once per change of state).
fn failure_reports(log: &str, device: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("audit device failed to log") && l.contains(device))
        .count()
}

#[tokio::test]
async fn audit_devices_fail_over_fail_closed_and_recover() -> Result<()> {
    let mut cluster = Cluster::prepare(1, NodeOptions::default())?;
    let syslog_path = cluster.dir().join("syslog.sock");
    let syslog = SyslogSocket::bind(&syslog_path)?;
    let collector = TcpCollector::start("127.0.0.1:0".parse()?)?;
    let tcp_addr = collector.addr;
    {
        let node = cluster.node();
        node.options.extra_top.extend([
            "audit \"syslog\" \"syslog\" {".to_string(),
            "  options {".to_string(),
            format!("    socket_path = \"{}\"", syslog_path.display()),
            "    tag         = \"keyhold\"".to_string(),
            "    facility    = \"LOCAL3\"".to_string(),
            "  }".to_string(),
            "}".to_string(),
        ]);
        node.write_config()?;
        node.start().await?;
        node.init_and_unseal(1, 1).await?;
    }
    let node = cluster.node();
    let api = node.api();
    api.post(
        "sys/audit/tcp",
        json!({"type": "socket", "options": {"address": tcp_addr.to_string(), "socket_type": "tcp"}}),
    )
    .await?
    .expect(204, "enable the socket device")?;
    api.mount_kv("secret", 2).await?;

    // Both devices log every request.
    ensure!(
        kv_write(&api, "both").await? == 200,
        "write with both devices"
    );
    let from_syslog = wait_for_request("syslog entry", "secret/data/both", || {
        syslog_entries(&syslog.drain()?, "keyhold")
    })
    .await?;
    let raw = from_syslog
        .iter()
        .find(|e| e["request"]["path"] == "secret/data/both")
        .context("the syslog entry")?;
    ensure!(
        raw["request"]["data"]["data"]["n"]
            .as_str()
            .is_some_and(|v| v.starts_with("hmac-sha256:")),
        "syslog entries are hashed: {raw}"
    );
    wait_for_request("tcp entry", "secret/data/both", || {
        entries(&collector.drain())
    })
    .await?;
    let listed = api.get("sys/audit").await?.expect(200, "list devices")?;
    ensure!(
        listed.json["syslog/"]["type"] == "syslog" && listed.json["tcp/"]["type"] == "socket",
        "sys/audit lists both devices: {}",
        listed.text
    );

    // A config-declared device cannot be disabled or replaced through the API.
    for resp in [
        api.delete("sys/audit/syslog").await?,
        api.post(
            "sys/audit/syslog",
            json!({"type": "file", "options": {"file_path": "discard"}}),
        )
        .await?,
    ] {
        ensure!(
            resp.status == 400 && resp.errors().contains("keyhold.hcl"),
            "changing a config-declared device: expected 400 naming the config file, got {} {}",
            resp.status,
            resp.text
        );
    }

    // The syslog daemon goes away: requests are served and audited by the socket device.
    syslog.stop()?;
    for i in 0..3 {
        let key = format!("no-syslog-{i}");
        ensure!(
            kv_write(&api, &key).await? == 200,
            "write {key} without syslog"
        );
        wait_for_request("tcp entry", &format!("secret/data/{key}"), || {
            entries(&collector.drain())
        })
        .await?;
    }

    // The collector goes away too: no device logs, so requests are refused.
    collector.stop();
    let api_ref = &api;
    eventually(
        "requests refused",
        100,
        Duration::from_millis(50),
        || async move { Ok((kv_write(api_ref, "refused-probe").await? == 500).then_some(())) },
    )
    .await?;
    ensure!(
        kv_write(&api, "refused").await? == 500,
        "a write with every device down was served"
    );

    // The daemon is back: service resumes, logged by syslog alone.
    let syslog = SyslogSocket::bind(&syslog_path)?;
    eventually(
        "served again",
        100,
        Duration::from_millis(50),
        || async move { Ok((kv_write(api_ref, "syslog-back").await? == 200).then_some(())) },
    )
    .await?;
    wait_for_request("syslog entry", "secret/data/syslog-back", || {
        syslog_entries(&syslog.drain()?, "keyhold")
    })
    .await?;
    ensure!(
        api.kv2_get("secret", "refused").await?.is_none(),
        "the refused write reached storage"
    );

    // The collector is back on the same address: the socket device reconnects.
    let collector = TcpCollector::start(tcp_addr)?;
    let collector_ref = &collector;
    eventually(
        "tcp device reconnected",
        100,
        Duration::from_millis(50),
        || async move {
            ensure!(
                kv_write(api_ref, "tcp-back").await? == 200,
                "write tcp-back"
            );
            Ok(request_paths(&entries(&collector_ref.drain())?)
                .iter()
                .any(|p| p == "secret/data/tcp-back")
                .then_some(()))
        },
    )
    .await?;

    // Failures were logged once per change of state, and counted per device.
    let log = node.log();
    ensure!(
        failure_reports(&log, "syslog/") == 1,
        "syslog/ failures reported {} times (once expected):\n{}",
        failure_reports(&log, "syslog/"),
        node.log_tail(60)
    );
    ensure!(
        log.lines()
            .filter(|l| l.contains("audit device recovered"))
            .count()
            >= 2,
        "no recovery reported for both devices:\n{}",
        node.log_tail(60)
    );
    let metrics = api
        .get("sys/metrics?format=prometheus")
        .await?
        .expect(200, "metrics")?;
    for device in ["syslog", "socket"] {
        let name = format!("vault_audit_{device}_log_request_failure{{");
        let value: f64 = metrics
            .text
            .lines()
            .find(|l| l.starts_with(&name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name}...}} in the metrics"))?;
        ensure!(value >= 1.0, "{name}...}} = {value}");
    }
    ensure!(
        metrics
            .text
            .lines()
            .any(|l| l.starts_with("vault_audit_log_request_failure")),
        "no vault_audit_log_request_failure in the metrics"
    );
    collector.stop();
    Ok(())
}

#[tokio::test]
async fn a_socket_peer_that_never_reads_does_not_hang_requests() -> Result<()> {
    let mut cluster = Cluster::single_active(NodeOptions::default()).await?;
    let node = cluster.node();
    let api = node.api();
    let audit_log = node.dir.join("audit.log");
    // Accepts connections (the kernel does, from the backlog) and never reads them.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    api.post(
        "sys/audit/file",
        json!({"type": "file", "options": {"file_path": audit_log.display().to_string()}}),
    )
    .await?
    .expect(204, "enable the file device")?;
    api.post(
        "sys/audit/stuck",
        json!({"type": "socket", "options": {
            "address": addr.to_string(),
            "write_timeout": "300ms",
            // Raw lines carry the values, so the socket buffers fill after a few writes.
            "log_raw": "true",
        }}),
    )
    .await?
    .expect(204, "enable the socket device")?;
    api.mount_kv("secret", 2).await?;
    let big = "x".repeat(256 * 1024);
    // Far more than loopback's socket buffers hold: the socket device blocks, times out and
    // keeps failing; the file device logs every request, so all of them are served.
    let writes = 60;
    let mut slowest = Duration::ZERO;
    for i in 0..writes {
        let started = std::time::Instant::now();
        let resp = api
            .kv2_put("secret", &format!("big-{i}"), json!({ "v": big }))
            .await?;
        slowest = slowest.max(started.elapsed());
        ensure!(
            resp.status == 200,
            "write {i}: {} {}\n{}",
            resp.status,
            resp.text,
            node.log_tail(30)
        );
    }
    // Reported, not asserted: each request waits at most the device's write_timeout per line.
    eprintln!("slowest of {writes} writes beside a peer that never reads: {slowest:?}");
    let logged = request_paths(&entries(
        &std::fs::read_to_string(&audit_log)?
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>(),
    )?);
    ensure!(
        (0..writes).all(|i| logged.contains(&format!("secret/data/big-{i}"))),
        "the file device missed requests"
    );
    ensure!(
        failure_reports(&node.log(), "stuck/") >= 1,
        "the stuck socket device was never reported:\n{}",
        node.log_tail(40)
    );
    drop(listener);
    Ok(())
}

#[tokio::test]
async fn no_secret_reaches_logs_or_audit_files_in_clear() -> Result<()> {
    let mut cluster = Cluster::prepare(
        1,
        NodeOptions {
            log_level: "trace",
            ..NodeOptions::default()
        },
    )?;
    let audit_log = cluster.dir().join("audit.log");
    let keys = {
        let node = cluster.node();
        node.options.extra_top.extend([
            "audit \"file\" \"file\" {".to_string(),
            format!("  options {{ file_path = \"{}\" }}", audit_log.display()),
            "}".to_string(),
        ]);
        node.write_config()?;
        node.start().await?;
        node.init_and_unseal(1, 1).await?
    };
    let node = cluster.node();
    let api = node.api();
    let kv_secrets = ["kv-secret-4f1c9a", "kv-secret-8b2d7e", "kv-secret-c03e51"];
    let password = "userpass-pw-7d19e2";
    api.mount_kv("secret", 2).await?;
    for (i, secret) in kv_secrets.iter().enumerate() {
        api.kv2_put("secret", &format!("app{i}"), json!({ "password": secret }))
            .await?
            .expect(200, "kv write")?;
    }
    let read = api.kv2_get("secret", "app0").await?.context("read app0")?;
    ensure!(read["password"] == kv_secrets[0], "read back: {read}");
    let child = api.create_token(json!({"policies": ["default"]})).await?;
    api.with_token(Some(&child))
        .get("auth/token/lookup-self")
        .await?
        .expect(200, "lookup-self with the child token")?;
    api.post("sys/auth/userpass", json!({"type": "userpass"}))
        .await?
        .expect_ok("enable userpass")?;
    api.post(
        "auth/userpass/users/alice",
        json!({"password": password, "policies": "default"}),
    )
    .await?
    .expect_ok("create alice")?;
    let login = api
        .post("auth/userpass/login/alice", json!({ "password": password }))
        .await?
        .expect(200, "userpass login")?;
    let login_token = login.json["auth"]["client_token"]
        .as_str()
        .context("login token")?
        .to_string();
    let login_accessor = login.json["auth"]["accessor"]
        .as_str()
        .context("login accessor")?
        .to_string();
    api.with_token(Some(&login_token))
        .get("auth/token/lookup-self")
        .await?
        .expect(200, "lookup-self with the login token")?;

    let mut secrets: Vec<(&str, String)> = vec![
        ("root token", keys.root_token.clone()),
        ("child token", child.clone()),
        ("login token", login_token.clone()),
        ("login accessor", login_accessor),
        ("password", password.to_string()),
    ];
    secrets.extend(kv_secrets.iter().map(|s| ("kv value", s.to_string())));
    secrets.extend(keys.keys.iter().map(|k| ("unseal key", k.clone())));
    secrets.extend(keys.keys_base64.iter().map(|k| ("unseal key", k.clone())));

    let audit = std::fs::read_to_string(&audit_log)?;
    let log = node.log();
    ensure!(
        log.lines()
            .any(|l| l.contains("TRACE") || l.contains("DEBUG")),
        "the server did not log at trace level"
    );
    let mut leaks = Vec::new();
    for (what, value) in &secrets {
        // The last characters of a token id are enough to find it in any rendering.
        let needle = value.strip_prefix("hvs.").unwrap_or(value);
        for (file, text) in [("server log", &log), ("audit file", &audit)] {
            if text.contains(needle) {
                leaks.push(format!("{what} in the {file}"));
            }
        }
    }
    ensure!(leaks.is_empty(), "in clear: {}", leaks.join(", "));

    // What the audit file holds instead: the values' HMACs.
    for value in [
        kv_secrets[0],
        password,
        login_token.as_str(),
        child.as_str(),
    ] {
        let hashed = api
            .post("sys/audit-hash/file", json!({ "input": value }))
            .await?
            .expect(200, "audit-hash")?;
        let hash = hashed.json["hash"].as_str().context("hash")?;
        ensure!(
            audit.contains(hash),
            "the HMAC of a secret is not in the audit file"
        );
    }
    Ok(())
}

/// Every JSON line of the server's log files in `dir` (the live one and the rotated ones).
fn json_log_lines(dir: &Path) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.starts_with("server") {
            continue;
        }
        for line in std::fs::read_to_string(&path)?.lines() {
            out.push(
                serde_json::from_str(line)
                    .with_context(|| format!("{name}: not a JSON log line: {line}"))?,
            );
        }
    }
    Ok(out)
}

/// How many rotated log files sit beside `server.log`.
fn rotated_logs(dir: &Path) -> Result<usize> {
    Ok(std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "server.log")
        .count())
}

fn debug_requests(lines: &[Value]) -> usize {
    lines
        .iter()
        .filter(|l| l["level"] == "DEBUG" && l["fields"]["message"] == "request")
        .count()
}

#[tokio::test]
async fn sighup_applies_the_config_log_level_to_a_rotated_json_log_file() -> Result<()> {
    let mut cluster = Cluster::prepare(1, NodeOptions::default())?;
    let logs = cluster.dir().join("logs");
    std::fs::create_dir(&logs)?;
    let node = cluster.node();
    node.options.extra_top.extend([
        format!("log_file = \"{}\"", logs.join("server.log").display()),
        "log_format = \"json\"".to_string(),
        "log_rotate_bytes = 4096".to_string(),
        "log_rotate_max_files = 2".to_string(),
    ]);
    node.write_config()?;
    node.start().await?;
    node.init_and_unseal(1, 1).await?;
    let api = node.api();
    for _ in 0..5 {
        api.get("sys/mounts").await?.expect(200, "read mounts")?;
    }
    let before = json_log_lines(&logs)?;
    ensure!(!before.is_empty(), "nothing in the log file");
    ensure!(
        debug_requests(&before) == 0,
        "debug lines at log_level = info"
    );

    node.options.log_level = "debug";
    node.write_config()?;
    node.sighup()?;
    let api = node.api();
    eventually(
        "debug lines after SIGHUP",
        100,
        Duration::from_millis(50),
        || {
            let api = api.clone();
            let logs = logs.clone();
            async move {
                for _ in 0..20 {
                    api.get("sys/mounts").await?.expect(200, "read mounts")?;
                }
                let rotated = rotated_logs(&logs)?;
                Ok((debug_requests(&json_log_lines(&logs)?) >= 5 && rotated > 0).then_some(()))
            }
        },
    )
    .await?;
    let lines = json_log_lines(&logs)?;
    ensure!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "SIGHUP: log level set from the config file"),
        "the level change was not logged"
    );
    let rotated = rotated_logs(&logs)?;
    ensure!(
        (1..=2).contains(&rotated),
        "{rotated} rotated log files with log_rotate_max_files = 2"
    );
    Ok(())
}

#[tokio::test]
async fn config_check_names_the_stanza_of_a_bad_audit_device() -> Result<()> {
    use super::bad_input::config_check;
    let dir = keyhold_tests::test_dir("keyhold-audit-check-")?;
    let config = |device: &str| {
        format!(
            "storage \"inmem\" {{}}\ndisable_mlock = true\nlistener \"tcp\" {{\n  address = \"127.0.0.1:8200\"\n  tls_disable = true\n}}\n{device}\n"
        )
    };
    let good = dir.path().join("good.hcl");
    std::fs::write(
        &good,
        config(
            "audit \"socket\" \"siem\" {\n  options {\n    address = \"127.0.0.1:9090\"\n    write_timeout = \"1s\"\n  }\n}",
        ),
    )?;
    let (code, out) = config_check(&good).await?;
    ensure!(code == Some(0), "a good socket device refused: {out}");
    for (device, wants) in [
        (
            "audit \"syslog\" \"sys\" {\n  options { facility = \"NOPE\" }\n}",
            &["bad.hcl:7", "facility", "NOPE"][..],
        ),
        (
            "audit \"socket\" \"siem\" {\n  options { address = \"127.0.0.1\" }\n}",
            &["bad.hcl:7", "needs a port"][..],
        ),
        (
            "audit \"file\" \"f\" {\n  options { file_path = \"/tmp/a.log\"\n    colour = \"blue\" }\n}",
            &["bad.hcl:7", "unknown option \"colour\""][..],
        ),
    ] {
        let bad = dir.path().join("bad.hcl");
        std::fs::write(&bad, config(device))?;
        let (code, out) = config_check(&bad).await?;
        ensure!(
            code != Some(0) && wants.iter().all(|w| out.contains(w)),
            "{device}: exit {code:?}, {out}"
        );
    }
    Ok(())
}
