//! What a stranger with network access, or a careless operator, can do to a server: one case per
//! finding of the security review (issue 11). Each starts a real server and shows a limit holding:
//! hostile JSON bodies refused cheaply, slow headers cut off, no mount table without a token,
//! control characters refused in paths, private data files, no-store and HSTS headers, cipher
//! suites applied, mismatched certificate and key named by `-check`, and the Raft join handshake
//! (a challenge holding only a nonce sealed by the seal, one guess per challenge, junk challenges
//! that cannot block a real join, the listener's client certificate required).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use keyhold_tests::{Api, Cluster, NodeOptions, RawTls, RawTlsOptions};
use reqwest::Method;
use serde_json::json;

/// Resident memory of `pid` in KiB, from /proc.
fn vm_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    line.split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()
        .context("parse VmRSS")
}

/// `{"k0":0,"k1":0,...}` with `n` keys.
fn many_keys(n: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(n * 12);
    body.push(b'{');
    for i in 0..n {
        if i > 0 {
            body.push(b',');
        }
        write!(body, "\"k{i}\":0").expect("write to Vec");
    }
    body.push(b'}');
    body
}

/// Whether a read ended because the server closed the connection (or answered 408), rather than
/// because the client's own read timeout ran out.
fn closed_by_server(result: Result<keyhold_tests::RawResponse>) -> bool {
    match result {
        Ok(r) => r.status == 408,
        Err(e) => {
            let e = format!("{e:#}").to_ascii_lowercase();
            !(e.contains("timed out") || e.contains("would block") || e.contains("temporarily"))
        }
    }
}

fn deep(depth: usize) -> Vec<u8> {
    let mut s = String::from("{\"a\":");
    s.push_str(&"[".repeat(depth));
    s.push_str(&"]".repeat(depth));
    s.push('}');
    s.into_bytes()
}

fn long_string(len: usize) -> Vec<u8> {
    format!("{{\"a\":\"{}\"}}", "x".repeat(len)).into_bytes()
}

fn long_array(n: usize) -> Vec<u8> {
    let items = vec!["0"; n].join(",");
    format!("{{\"a\":[{items}]}}").into_bytes()
}

#[tokio::test]
async fn json_limits_refuse_hostile_bodies_cheaply() -> Result<()> {
    let mut cluster = Cluster::single_active(NodeOptions::default()).await?;
    let node = cluster.node();
    let pid = node.pid().context("server pid")?;
    let api = node.api();
    api.mount_kv("secret", 2).await?;
    let audit_path = node.dir.join("audit.log");
    api.put(
        "sys/audit/file",
        json!({"type": "file", "options": {"file_path": audit_path.display().to_string()}}),
    )
    .await?
    .expect(204, "enable file audit")?;

    // Vault's defaults: depth 300, string 1 MiB, 10000 object entries, 10000 array elements.
    // At the limit a body passes (the engine answers); one past it is refused with 400.
    let cases: [(&str, Vec<u8>, Vec<u8>); 4] = [
        ("max_json_depth", deep(299), deep(300)),
        (
            "max_json_string_value_length",
            long_string(1 << 20),
            long_string((1 << 20) + 1),
        ),
        (
            "max_json_object_entry_count",
            many_keys(10_000),
            many_keys(10_001),
        ),
        (
            "max_json_array_element_count",
            long_array(10_000),
            long_array(10_001),
        ),
    ];
    for (key, at_limit, past_limit) in cases {
        let ok = api
            .request_raw(Method::PUT, "secret/data/limits", at_limit)
            .await?;
        ensure!(
            ok.status != 400 || !ok.errors().contains(key),
            "{key}: a body at the limit was refused: {}",
            ok.text
        );
        let started = Instant::now();
        let r = api
            .request_raw(Method::PUT, "secret/data/limits", past_limit)
            .await?;
        println!("{key}: refused in {:?}", started.elapsed());
        ensure!(
            r.status == 400 && r.errors().contains(key),
            "{key}: a body past the limit answered {} {}",
            r.status,
            r.text
        );
    }

    // The reported attack: 2.4 million keys in 28 MiB, three at a time, no token. Then once
    // more with a token (refused by the entry count while it streams in).
    let hostile = many_keys(2_400_000);
    println!("hostile body: {} bytes", hostile.len());
    let rss_before = vm_rss_kib(pid)?;
    let audit_before = std::fs::metadata(&audit_path)?.len();
    let anonymous = api.with_token(None);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let anonymous = anonymous.clone();
        let body = hostile.clone();
        tasks.push(tokio::spawn(async move {
            anonymous
                .request_raw(Method::PUT, "secret/data/flood", body)
                .await
        }));
    }
    for task in tasks {
        let r = task.await??;
        ensure!(
            r.status == 403,
            "unauthenticated hostile body: {} {}",
            r.status,
            r.text
        );
    }
    println!(
        "3 unauthenticated hostile bodies refused in {:?}",
        started.elapsed()
    );
    let r = api
        .request_raw(Method::PUT, "secret/data/flood", hostile.clone())
        .await?;
    ensure!(
        r.status == 400 && r.errors().contains("max_json_object_entry_count"),
        "authenticated hostile body: {} {}",
        r.status,
        r.text
    );
    let rss_after = vm_rss_kib(pid)?;
    let audit_growth = std::fs::metadata(&audit_path)?.len() - audit_before;
    println!(
        "VmRSS {rss_before} KiB -> {rss_after} KiB; audit log +{audit_growth} bytes for 4 hostile requests"
    );
    ensure!(
        rss_after < rss_before + 64 * 1024,
        "resident memory grew by more than 64 MiB: {rss_before} -> {rss_after} KiB"
    );
    ensure!(
        audit_growth < 64 * 1024,
        "the audit log grew by {audit_growth} bytes for refused requests"
    );
    let health = node.health_code().await;
    ensure!(health == Some(200), "health after the flood: {health:?}");
    Ok(())
}

/// The load test: authenticated reads with and without a flood of unauthenticated 8 MiB bodies
/// (4 senders, 12 bodies each). Bounded in count; the slowdown is printed, not asserted.
#[tokio::test]
async fn unauthenticated_flood_barely_slows_authenticated_reads() -> Result<()> {
    const READS: usize = 200;
    let mut cluster = Cluster::single_active(NodeOptions::default()).await?;
    let node = cluster.node();
    let api = node.api();
    api.mount_kv("secret", 2).await?;
    api.kv2_put("secret", "read-me", json!({"v": 1}))
        .await?
        .expect(200, "seed")?;
    let reads = |api: keyhold_tests::Api| async move {
        let started = Instant::now();
        for _ in 0..READS {
            api.get("secret/data/read-me")
                .await?
                .expect(200, "authenticated read")?;
        }
        anyhow::Ok(started.elapsed())
    };
    let quiet = reads(api.clone()).await?;

    let body = many_keys(700_000);
    let anonymous = api.with_token(None);
    let mut flood = Vec::new();
    for _ in 0..4 {
        let anonymous = anonymous.clone();
        let body = body.clone();
        flood.push(tokio::spawn(async move {
            let mut refused = 0;
            for _ in 0..12 {
                if let Ok(r) = anonymous
                    .request_raw(Method::PUT, "secret/data/flood", body.clone())
                    .await
                {
                    refused += usize::from(r.status == 403);
                }
            }
            refused
        }));
    }
    let loaded = reads(api.clone()).await?;
    let mut refused = 0;
    for task in flood {
        refused += task.await?;
    }
    println!(
        "{READS} authenticated reads: {quiet:?} quiet, {loaded:?} under a flood of {refused} \
         unauthenticated {}-byte bodies (factor {:.2}; the review saw reads stall for >10 s)",
        body.len(),
        loaded.as_secs_f64() / quiet.as_secs_f64().max(1e-9)
    );
    ensure!(
        refused == 48,
        "every flood body is refused with 403: {refused}/48"
    );
    Ok(())
}

#[tokio::test]
async fn headers_slow_to_arrive_and_idle_connections_are_closed() -> Result<()> {
    let mut cluster = Cluster::single(NodeOptions {
        extra_listener: vec![
            "http_read_header_timeout = \"1s\"".into(),
            "http_idle_timeout = \"2s\"".into(),
        ],
        ..NodeOptions::default()
    })
    .await?;
    let node = cluster.node();
    let addr = node.socket_addr();
    let ip = node.ip.to_string();
    let ca = node.ca_pem().to_string();

    // Partial headers over TLS: closed once the header timeout passes.
    let started = Instant::now();
    let mut c = RawTls::connect(addr, &ip, &ca, &RawTlsOptions::default())?;
    c.send(b"GET /v1/sys/health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")?;
    let closed = closed_by_server(c.read_response());
    println!(
        "partial headers: connection closed after {:?}",
        started.elapsed()
    );
    ensure!(closed, "a connection with partial headers got a response");

    // A TCP connection that never starts its TLS handshake.
    let started = Instant::now();
    let mut tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut buf = [0u8; 16];
    let read = tcp.read(&mut buf);
    println!(
        "silent TCP connection: {read:?} after {:?}",
        started.elapsed()
    );
    ensure!(
        matches!(&read, Ok(0))
            || matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "a silent connection was not closed by the server: {read:?}"
    );

    // A keep-alive connection after its answer: closed when idle.
    let mut c = RawTls::connect(addr, &ip, &ca, &RawTlsOptions::default())?;
    let r = c.request("GET", "/v1/sys/health", &[], b"")?;
    ensure!(
        r.status == 501,
        "health of an uninitialised node: {}",
        r.status
    );
    let started = Instant::now();
    let closed = closed_by_server(c.read_response());
    println!(
        "idle keep-alive connection: closed after {:?}",
        started.elapsed()
    );
    ensure!(closed, "an idle connection got a second response");
    Ok(())
}

#[tokio::test]
async fn no_mount_table_without_a_token() -> Result<()> {
    let mut cluster = Cluster::single_active(NodeOptions::default()).await?;
    let api = cluster.node().api();
    api.mount_kv("secret", 2).await?;
    let anonymous = api.with_token(None);
    let r = anonymous
        .get("sys/internal/ui/mounts")
        .await?
        .expect_ok("ui mounts")?;
    ensure!(
        r.json["data"]["secret"] == json!({}) && r.json["data"]["auth"] == json!({}),
        "an unauthenticated caller saw mounts: {}",
        r.text
    );
    let r = anonymous.get("sys/internal/ui/mounts/secret").await?;
    ensure!(
        r.status == 403,
        "ui mount detail without a token: {} {}",
        r.status,
        r.text
    );
    let bogus = api.with_token(Some("hvs.not-a-token"));
    let r = bogus
        .get("sys/internal/ui/mounts")
        .await?
        .expect_ok("ui mounts, bad token")?;
    ensure!(
        r.json["data"]["secret"] == json!({}),
        "a bad token saw mounts: {}",
        r.text
    );

    // A token sees what its policies reach (root: everything).
    let r = api
        .get("sys/internal/ui/mounts")
        .await?
        .expect_ok("ui mounts as root")?;
    ensure!(
        r.json["data"]["secret"].get("secret/").is_some(),
        "root does not see secret/: {}",
        r.text
    );
    // Marked visible: shown to everyone, as in Vault.
    api.put(
        "sys/mounts/secret/tune",
        json!({"listing_visibility": "unauth"}),
    )
    .await?
    .expect(204, "tune listing_visibility")?;
    let r = anonymous
        .get("sys/internal/ui/mounts")
        .await?
        .expect_ok("ui mounts")?;
    ensure!(
        r.json["data"]["secret"].get("secret/").is_some(),
        "a mount tuned listing_visibility=unauth is hidden: {}",
        r.text
    );
    Ok(())
}

#[tokio::test]
async fn control_characters_and_invalid_utf8_in_paths_are_400() -> Result<()> {
    let mut cluster = Cluster::single_active(NodeOptions::default()).await?;
    let api = cluster.node().api();
    api.mount_kv("secret", 2).await?;
    for key in ["a%00b", "a%0d%0ab", "a%0a", "%fe", "%ff", "a%c3"] {
        let r = api
            .put(&format!("secret/data/{key}"), json!({"data": {"v": 1}}))
            .await?;
        ensure!(r.status == 400, "write to {key:?}: {} {}", r.status, r.text);
        let r = api.get(&format!("secret/data/{key}")).await?;
        ensure!(r.status == 400, "read of {key:?}: {} {}", r.status, r.text);
    }
    api.kv2_put("secret", "caf%C3%A9", json!({"v": 1}))
        .await?
        .expect(200, "a valid UTF-8 key is accepted")?;
    Ok(())
}

#[tokio::test]
async fn private_data_files_and_hardening_headers() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut cluster = Cluster::single_active(NodeOptions::default()).await?;
    let node = cluster.node();
    let api = node.api();
    api.mount_kv("secret", 2).await?;
    api.kv2_put("secret", "x", json!({"v": 1}))
        .await?
        .expect(200, "write")?;

    let mut loose = Vec::new();
    let mut stack = vec![node.data_dir.clone()];
    let mut seen = 0;
    while let Some(path) = stack.pop() {
        seen += 1;
        ensure!(seen < 10_000, "too many entries under the data directory");
        let meta = std::fs::symlink_metadata(&path)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            loose.push(format!("{} {mode:o}", path.display()));
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    println!("checked {seen} entries under the data directory");
    ensure!(loose.is_empty(), "group/other can read: {loose:?}");

    let resp = api
        .http()
        .get(api.url("secret/data/x"))
        .header("X-Vault-Token", api.token.clone().unwrap_or_default())
        .send()
        .await?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    ensure!(
        header("cache-control") == "no-store",
        "Cache-Control: {:?}",
        header("cache-control")
    );
    ensure!(
        header("strict-transport-security").starts_with("max-age="),
        "Strict-Transport-Security: {:?}",
        header("strict-transport-security")
    );
    Ok(())
}

/// A rustls client that offers exactly one cipher suite.
fn connect_with_suite(
    addr: std::net::SocketAddr,
    server_name: &str,
    ca_pem: &str,
    suite: rustls::SupportedCipherSuite,
) -> Result<rustls::CipherSuite> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let versions: &[&'static rustls::SupportedProtocolVersion] = match suite {
        rustls::SupportedCipherSuite::Tls13(_) => &[&rustls::version::TLS13],
        rustls::SupportedCipherSuite::Tls12(_) => &[&rustls::version::TLS12],
    };
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![suite],
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_protocol_versions(versions)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(
        std::sync::Arc::new(config),
        ServerName::try_from(server_name.to_string())?,
    )?;
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut rounds = 0;
    while conn.is_handshaking() {
        rounds += 1;
        ensure!(rounds < 50, "handshake did not finish in 50 rounds");
        conn.complete_io(&mut tcp)?;
    }
    conn.negotiated_cipher_suite()
        .map(|s| s.suite())
        .context("no suite negotiated")
}

/// Which of the client's suites a server with `configured` lets a client negotiate.
async fn negotiable(cluster: &mut Cluster, configured: &str) -> Result<Vec<String>> {
    let node = cluster.node();
    node.options.extra_listener = vec![format!("tls_cipher_suites = \"{configured}\"")];
    node.write_config()?;
    node.restart().await?;
    let (addr, ip, ca) = (
        node.socket_addr(),
        node.ip.to_string(),
        node.ca_pem().to_string(),
    );
    let mut got = Vec::new();
    for suite in rustls::crypto::aws_lc_rs::default_provider().cipher_suites {
        let name = format!("{:?}", suite.suite());
        match connect_with_suite(addr, &ip, &ca, suite) {
            Ok(s) => got.push(format!("{s:?}")),
            Err(e) => println!("  {name}: refused ({e})"),
        }
    }
    println!("tls_cipher_suites = {configured:?}: negotiated {got:?}");
    Ok(got)
}

#[tokio::test]
async fn configured_cipher_suites_are_exactly_what_clients_negotiate() -> Result<()> {
    // The harness's certificates are ECDSA: only ECDSA and TLS 1.3 suites can ever be negotiated.
    let mut cluster = Cluster::single(NodeOptions::default()).await?;
    let got = negotiable(&mut cluster, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256").await?;
    let mut want = vec![
        "TLS13_AES_256_GCM_SHA384".to_string(),
        "TLS13_AES_128_GCM_SHA256".to_string(),
        "TLS13_CHACHA20_POLY1305_SHA256".to_string(),
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".to_string(),
    ];
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    // TLS 1.3 suites are not restricted by a TLS 1.2-only list, as in Vault (Go).
    ensure!(
        sorted(got) == sorted(want.clone()),
        "one TLS 1.2 suite configured"
    );

    let got = negotiable(
        &mut cluster,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305, TLS_AES_256_GCM_SHA384",
    )
    .await?;
    want = vec![
        "TLS13_AES_256_GCM_SHA384".to_string(),
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256".to_string(),
    ];
    ensure!(
        sorted(got) == sorted(want),
        "a TLS 1.2 and a TLS 1.3 suite configured"
    );
    Ok(())
}

#[tokio::test]
async fn config_check_refuses_bad_tls_and_accepts_vaults_hardening_keys() -> Result<()> {
    use super::bad_input::config_check;
    let dir = keyhold_tests::test_dir("keyhold-check-")?;
    let pki = keyhold_tests::Pki::new(dir.path(), "ca")?;
    let a = pki
        .issue_server("a", &["127.0.0.1".to_string()])?
        .write(dir.path(), "a")?;
    let b = pki
        .issue_server("b", &["127.0.0.1".to_string()])?
        .write(dir.path(), "b")?;
    let listener = |cert: &std::path::Path, key: &std::path::Path, extra: &str| {
        format!(
            "storage \"inmem\" {{}}\ndisable_mlock = true\nlistener \"tcp\" {{\n  address = \"127.0.0.1:8200\"\n  tls_cert_file = \"{}\"\n  tls_key_file = \"{}\"\n{extra}}}\n",
            cert.display(),
            key.display()
        )
    };
    // Vault's hardening keys, set as a Vault config would set them.
    let hardening = "  http_read_header_timeout = \"5s\"\n  http_idle_timeout = \"1m\"\n  max_json_depth = 100\n  max_json_string_value_length = 65536\n  max_json_object_entry_count = 500\n  max_json_array_element_count = 500\n  tls_cipher_suites = \"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\"\n";
    let path = dir.path().join("hardening.hcl");
    std::fs::write(&path, listener(&a.cert, &a.key, hardening))?;
    let (code, out) = config_check(&path).await?;
    ensure!(code == Some(0), "Vault's hardening keys refused: {out}");

    // Bogus, RC4 and CBC suite names: refused with the file and line 7.
    for name in [
        "TLS_BOGUS_SUITE",
        "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
        "TLS_RSA_WITH_AES_128_CBC_SHA",
    ] {
        let path = dir.path().join("suites.hcl");
        let extra = format!("  tls_cipher_suites = \"{name}\"\n");
        std::fs::write(&path, listener(&a.cert, &a.key, &extra))?;
        let (code, out) = config_check(&path).await?;
        ensure!(
            code != Some(0) && out.contains("suites.hcl:7") && out.contains(name),
            "suite {name}: exit {code:?}, {out}"
        );
    }

    // A certificate with another certificate's key: both files named.
    let path = dir.path().join("mismatch.hcl");
    std::fs::write(&path, listener(&a.cert, &b.key, ""))?;
    let (code, out) = config_check(&path).await?;
    println!("mismatched certificate and key: {out}");
    ensure!(
        code != Some(0)
            && out.contains(&a.cert.display().to_string())
            && out.contains(&b.key.display().to_string()),
        "mismatched certificate and key: exit {code:?}, {out}"
    );
    Ok(())
}

/// Userpass enabled with the user `alice` (password `right`): a root API and an anonymous one.
async fn userpass_with_alice(cluster: &mut Cluster) -> Result<(Api, Api)> {
    let api = cluster.node().api();
    let anonymous = api.with_token(None);
    api.put("sys/auth/userpass", json!({"type": "userpass"}))
        .await?
        .expect(204, "enable userpass")?;
    api.put("auth/userpass/users/alice", json!({"password": "right"}))
        .await?
        .expect_ok("create alice")?;
    Ok((api, anonymous))
}

/// `count` logins as `alice` with wrong passwords, each refused with 400 (bad credentials).
async fn wrong_passwords(anonymous: &Api, count: usize) -> Result<()> {
    for i in 1..=count {
        let r = anonymous
            .put(
                "auth/userpass/login/alice",
                json!({"password": format!("wrong-{i}")}),
            )
            .await?;
        ensure!(
            r.status == 400,
            "wrong password {i}: {} {}",
            r.status,
            r.text
        );
    }
    Ok(())
}

#[tokio::test]
async fn failed_logins_lock_the_user_until_unlocked() -> Result<()> {
    let mut cluster = Cluster::single_active(NodeOptions {
        extra_top: vec!["user_lockout \"approle\" {\n  lockout_threshold = \"3\"\n}".into()],
        ..NodeOptions::default()
    })
    .await?;
    let (api, anonymous) = userpass_with_alice(&mut cluster).await?;

    // Vault's defaults: five failures lock the user; the sixth attempt is refused even with the
    // right password.
    wrong_passwords(&anonymous, 5).await?;
    let r = anonymous
        .put("auth/userpass/login/alice", json!({"password": "right"}))
        .await?;
    println!("right password after 5 failures: {} {}", r.status, r.text);
    ensure!(
        r.status == 403 && r.errors().contains("permission denied"),
        "a locked user logged in: {} {}",
        r.status,
        r.text
    );
    // Another user on the same mount is not affected.
    api.put("auth/userpass/users/bob", json!({"password": "bobs"}))
        .await?
        .expect_ok("create bob")?;
    anonymous
        .put("auth/userpass/login/bob", json!({"password": "bobs"}))
        .await?
        .expect(200, "bob logs in")?;

    let locked = api
        .get("sys/locked-users")
        .await?
        .expect(200, "sys/locked-users")?;
    let accessor = api.get("sys/auth").await?.json["data"]["userpass/"]["accessor"]
        .as_str()
        .context("userpass accessor")?
        .to_string();
    ensure!(
        locked.json["data"]["total"] == json!(1)
            && locked.json["data"]["by_namespace"][0]["mount_accessors"][0]["mount_accessor"]
                == json!(accessor)
            && locked.json["data"]["by_namespace"][0]["mount_accessors"][0]["alias_identifiers"]
                == json!(["alice"]),
        "sys/locked-users: {}",
        locked.text
    );
    let r = anonymous.get("sys/locked-users").await?;
    ensure!(
        r.status == 403,
        "sys/locked-users without a token: {}",
        r.status
    );
    api.post(
        &format!("sys/locked-users/{accessor}/unlock/alice"),
        json!({}),
    )
    .await?
    .expect(204, "unlock alice")?;
    anonymous
        .put("auth/userpass/login/alice", json!({"password": "right"}))
        .await?
        .expect(200, "alice after unlock")?;

    // AppRole: the config stanza sets 3 for approle; a mount tune can switch lockout off.
    api.put("sys/auth/approle", json!({"type": "approle"}))
        .await?
        .expect(204, "enable approle")?;
    api.put("auth/approle/role/app", json!({}))
        .await?
        .expect(204, "create role")?;
    let role_id = api.get("auth/approle/role/app/role-id").await?.json["data"]["role_id"]
        .as_str()
        .context("role_id")?
        .to_string();
    let secret_id = api
        .post("auth/approle/role/app/secret-id", json!({}))
        .await?
        .json["data"]["secret_id"]
        .as_str()
        .context("secret_id")?
        .to_string();
    for i in 1..=3 {
        let r = anonymous
            .put(
                "auth/approle/login",
                json!({"role_id": role_id, "secret_id": format!("bad-{i}")}),
            )
            .await?;
        ensure!(
            r.status == 400,
            "bad secret_id {i}: {} {}",
            r.status,
            r.text
        );
    }
    let r = anonymous
        .put(
            "auth/approle/login",
            json!({"role_id": role_id, "secret_id": secret_id}),
        )
        .await?;
    ensure!(
        r.status == 403,
        "a locked role_id logged in: {} {}",
        r.status,
        r.text
    );
    let tune = api
        .get("sys/auth/approle/tune")
        .await?
        .expect(200, "read tune")?;
    println!("approle tune: {}", tune.json["data"]);
    api.put(
        "sys/auth/approle/tune",
        json!({"user_lockout_config": {"lockout_disable": true}}),
    )
    .await?
    .expect(204, "disable lockout on approle")?;
    let tune = api.get("sys/auth/approle/tune").await?;
    ensure!(
        tune.json["data"]["user_lockout_config"]["lockout_disable"] == json!(true),
        "tune read back: {}",
        tune.text
    );
    anonymous
        .put(
            "auth/approle/login",
            json!({"role_id": role_id, "secret_id": secret_id}),
        )
        .await?
        .expect(200, "approle login with lockout disabled")?;
    Ok(())
}

#[tokio::test]
async fn junk_join_challenges_cannot_block_a_real_join() -> Result<()> {
    let mut cluster = Cluster::prepare_ha(2, NodeOptions::default())?;
    cluster.nodes[0].start().await?;
    let keys = cluster.init_first(1, 1).await?;
    cluster
        .set_autopilot(0, json!({"server_stabilization_time": "1s"}))
        .await?;

    // A stranger fills the challenge table from 20 loopback sources, 6 junk ids each (also
    // taking the real joiner's name, n2): each source gets at most 4 slots, and the table keeps
    // the newest challenges, so nothing stays blocked.
    let url = cluster.nodes[0]
        .api()
        .url("sys/storage/raft/bootstrap/challenge");
    let (mut issued, mut refused) = (0, 0);
    for source in 1..=20u8 {
        let client = keyhold_tests::client_builder(&cluster.pki.ca_pem)?
            .local_address(std::net::IpAddr::from([127, 0, 9, source]))
            .build()?;
        for junk in 0..6 {
            let id = if junk == 0 {
                "n2".to_string()
            } else {
                format!("junk-{source}-{junk}")
            };
            let r = client
                .put(&url)
                .json(&json!({"server_id": id}))
                .send()
                .await?;
            match r.status().as_u16() {
                200 => issued += 1,
                400 => refused += 1,
                other => anyhow::bail!("junk challenge from 127.0.9.{source}: {other}"),
            }
        }
    }
    println!("junk challenges: {issued} issued, {refused} refused (4 per source)");
    ensure!(
        issued == 80 && refused == 40,
        "per-source cap: {issued} issued, {refused} refused"
    );

    cluster.nodes[1].start().await?;
    cluster.join(1, &keys).await?;
    cluster
        .wait_voters(2, "join after a junk challenge flood")
        .await?;
    Ok(())
}

/// A stranger's view of the join handshake: the challenge is Vault's two fields, a nonce sealed
/// by the seal and the seal config, with no keyring or root key ciphertext; asking again gets
/// the same challenge; a wrong answer is refused and spends the challenge.
#[tokio::test]
async fn join_challenge_holds_only_a_sealed_nonce_and_a_wrong_answer_is_refused() -> Result<()> {
    use base64::Engine;
    let cluster = Cluster::single_active(NodeOptions::default()).await?;
    let node = &cluster.nodes[0];
    let stranger = keyhold_tests::client_builder(&cluster.pki.ca_pem)?.build()?;
    let challenge_url = node.api().url("sys/storage/raft/bootstrap/challenge");
    let answer_url = node.api().url("sys/storage/raft/bootstrap/answer");

    let ask = || async {
        let r = stranger
            .put(&challenge_url)
            .json(&json!({"server_id": "stranger"}))
            .send()
            .await?;
        ensure!(r.status() == 200, "challenge: HTTP {}", r.status());
        Ok::<_, anyhow::Error>(r.json::<serde_json::Value>().await?)
    };
    let first = ask().await?;
    let mut fields: Vec<&str> = first
        .as_object()
        .context("the challenge is a JSON object")?
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    ensure!(
        fields == ["challenge", "seal_config"],
        "the challenge must carry only challenge and seal_config: {first}"
    );
    ensure!(
        first["seal_config"]["type"] == json!("shamir")
            && first["seal_config"]["secret_threshold"] == json!(1),
        "seal_config: {first}"
    );
    let sealed = base64::engine::general_purpose::STANDARD.decode(
        first["challenge"]
            .as_str()
            .context("challenge is a string")?,
    )?;
    // term (4) + version (1) + nonce (12) + the 32-byte secret + tag (16): a sealed nonce, no
    // room for a keyring or a wrapped root key.
    ensure!(sealed.len() == 65, "sealed nonce of {} bytes", sealed.len());
    ensure!(ask().await? == first, "asking again changed the challenge");

    let answer = |server_id: &'static str| {
        let (stranger, url) = (&stranger, &answer_url);
        async move {
            let r = stranger
                .put(url)
                .json(&json!({
                    "server_id": server_id,
                    "answer": base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
                    "cluster_addr": "127.0.0.1:9",
                    "api_addr": "https://127.0.0.1:9",
                }))
                .send()
                .await?;
            let status = r.status().as_u16();
            Ok::<_, anyhow::Error>((status, r.text().await?))
        }
    };
    let (status, body) = answer("stranger").await?;
    ensure!(
        status == 403,
        "a wrong answer: expected 403, got {status} {body}"
    );
    ensure!(
        !body.contains("tls") && !body.contains("key_material"),
        "a refused answer leaked something: {body}"
    );
    let (status, body) = answer("stranger").await?;
    ensure!(
        status == 400,
        "a second guess at a spent challenge: expected 400, got {status} {body}"
    );
    let (status, body) = answer("never-asked").await?;
    ensure!(
        status == 400,
        "an answer with no challenge: expected 400, got {status} {body}"
    );
    Ok(())
}

/// With a `tls_client_ca_file` on the listener (certificates not required elsewhere), the join
/// handshake needs a client certificate signed by it; a joiner with `leader_client_cert_file`
/// still forms the cluster through retry_join.
#[tokio::test]
async fn join_handshake_needs_the_listeners_client_certificate() -> Result<()> {
    let mut cluster = Cluster::prepare(2, NodeOptions::default())?;
    let client = cluster.pki.issue_client("joiner")?;
    let files = client.write(cluster.dir(), "joiner-client")?;
    let leader = cluster.nodes[0].api_addr().to_string();
    let ca_path = cluster.pki.ca_path.clone();
    for node in &mut cluster.nodes {
        node.options
            .extra_listener
            .push(format!("tls_client_ca_file = \"{}\"", ca_path.display()));
    }
    cluster.nodes[1].options.extra_raft.extend([
        "performance_multiplier = 1".to_string(),
        "retry_join {".to_string(),
        format!("  leader_api_addr      = \"{leader}\""),
        format!("  leader_ca_cert_file  = \"{}\"", ca_path.display()),
        format!("  leader_client_cert_file = \"{}\"", files.cert.display()),
        format!("  leader_client_key_file  = \"{}\"", files.key.display()),
        "}".to_string(),
    ]);
    for node in &cluster.nodes {
        node.write_config()?;
    }
    cluster.nodes[0].start().await?;
    let keys = cluster.init_first(1, 1).await?;
    cluster
        .set_autopilot(0, json!({"server_stabilization_time": "1s"}))
        .await?;

    let url = cluster.nodes[0]
        .api()
        .url("sys/storage/raft/bootstrap/challenge");
    let without = keyhold_tests::client_builder(&cluster.pki.ca_pem)?.build()?;
    let r = without
        .put(&url)
        .json(&json!({"server_id": "stranger"}))
        .send()
        .await?;
    let status = r.status().as_u16();
    let body = r.text().await?;
    ensure!(
        status == 403 && body.contains("client certificate"),
        "a challenge without a client certificate: expected 403, got {status} {body}"
    );
    let health = without
        .get(cluster.nodes[0].api().url("sys/health"))
        .send()
        .await?;
    ensure!(
        health.status() == 200,
        "other routes still answer without a certificate: sys/health {}",
        health.status()
    );
    let with = keyhold_tests::client_builder(&cluster.pki.ca_pem)?
        .identity(reqwest::Identity::from_pem(&client.identity_pem())?)
        .build()?;
    let r = with
        .put(&url)
        .json(&json!({"server_id": "stranger"}))
        .send()
        .await?;
    ensure!(
        r.status() == 200,
        "a challenge with the client certificate: HTTP {}",
        r.status()
    );

    cluster.nodes[1].start().await?;
    cluster.join(1, &keys).await?;
    cluster
        .wait_voters(2, "join with the listener's client certificate")
        .await?;
    Ok(())
}

/// Vault's global switch: with `VAULT_DISABLE_USER_LOCKOUT=true` in the server's environment,
/// no number of wrong passwords locks a user out.
#[tokio::test]
async fn the_environment_can_turn_user_lockout_off() -> Result<()> {
    let mut cluster = Cluster::single_active(NodeOptions {
        env: vec![("VAULT_DISABLE_USER_LOCKOUT".into(), "true".into())],
        ..NodeOptions::default()
    })
    .await?;
    let (_, anonymous) = userpass_with_alice(&mut cluster).await?;
    wrong_passwords(&anonymous, 7).await?;
    anonymous
        .put("auth/userpass/login/alice", json!({"password": "right"}))
        .await?
        .expect(200, "the right password after 7 failures, lockout off")?;
    Ok(())
}
