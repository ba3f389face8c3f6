//! Bad input is refused cleanly and costs nothing: broken or unknown config keys are named with
//! their line, a wrong unseal key resets progress without losing data, malformed or oversized
//! bodies get 400/413, unknown paths 404, and truncated requests do not take the server down.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use keyhold_tests::{keyhold_bin, Cluster, NodeOptions, RawTls, RawTlsOptions};
use reqwest::Method;
use serde_json::json;

/// Runs `keyhold server -config=PATH -check` and returns (exit code, stderr + stdout).
/// Bounded: a check that has not exited after 200 x 50 ms is killed and reported.
pub(crate) async fn config_check(path: &Path) -> Result<(Option<i32>, String)> {
    let out_path = path.with_extension("out");
    let out = std::fs::File::create(&out_path)?;
    let mut child = Command::new(keyhold_bin()?)
        .arg("server")
        .arg(format!("-config={}", path.display()))
        .arg("-check")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("spawn keyhold server -check")?;
    for _ in 0..200 {
        if let Some(status) = child.try_wait()? {
            return Ok((status.code(), std::fs::read_to_string(&out_path)?));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    bail!("`keyhold server -check` did not exit after 200 polls")
}

/// Whether `text` points at line `line`, as `file:LINE`, `LINE:COL` or `line LINE`.
fn mentions_line(text: &str, line: usize) -> bool {
    [
        format!(":{line}:"),
        format!(":{line} "),
        format!(":{line}\n"),
        format!(":{line},"),
        format!(":{line})"),
        format!("line {line}"),
    ]
    .iter()
    .any(|p| text.contains(p.as_str()))
}

struct ConfigCase {
    name: &'static str,
    hcl: String,
    /// None: must pass. Some((line, words)): must fail, naming the line and each word.
    error: Option<(usize, Vec<&'static str>)>,
}

#[tokio::test]
async fn config_check_names_the_bad_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let data = data.display();
    let cases = [
        ConfigCase {
            name: "valid raft config",
            hcl: format!(
                "storage \"raft\" {{\n  path = \"{data}\"\n  node_id = \"n1\"\n}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:8200\"\n  tls_disable = true\n}}\ndisable_mlock = true\napi_addr = \"https://127.0.0.1:8200\"\ncluster_addr = \"https://127.0.0.1:8201\"\n"
            ),
            error: None,
        },
        ConfigCase {
            name: "valid inmem config",
            hcl: "storage \"inmem\" {}\nlistener \"tcp\" {\n  address = \"127.0.0.1:8200\"\n  tls_disable = true\n}\ndisable_mlock = true\n".to_string(),
            error: None,
        },
        ConfigCase {
            name: "unterminated block",
            hcl: format!(
                "storage \"raft\" {{\n  path = \"{data}\"\n  node_id = \"n1\"\n}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:8200\"\n  tls_disable = true\n"
            ),
            // Where a parser reports a missing `}` varies (last line or end of file): only the
            // file is required for this case, so the line check uses the opening line 5 OR 7 OR 8.
            error: Some((0, vec![])),
        },
        ConfigCase {
            name: "unterminated string",
            hcl: format!(
                "storage \"raft\" {{\n  path = \"{data}\"\n  node_id = \"n1\n}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:8200\"\n  tls_disable = true\n}}\n"
            ),
            error: Some((3, vec![])),
        },
        ConfigCase {
            name: "assignment without value",
            hcl: "storage \"inmem\" {}\nlistener \"tcp\" {\n  address = \"127.0.0.1:8200\"\n  tls_disable =\n}\n".to_string(),
            error: Some((4, vec![])),
        },
        ConfigCase {
            name: "unknown key in storage block",
            hcl: format!(
                "storage \"raft\" {{\n  path = \"{data}\"\n  node_id = \"n1\"\n  colour = \"blue\"\n}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:8200\"\n  tls_disable = true\n}}\n"
            ),
            error: Some((4, vec!["colour"])),
        },
        ConfigCase {
            name: "unknown key in listener block",
            hcl: "storage \"inmem\" {}\nlistener \"tcp\" {\n  address = \"127.0.0.1:8200\"\n  tls_disable = true\n  tls_wibble = \"x\"\n}\n".to_string(),
            error: Some((5, vec!["tls_wibble"])),
        },
        ConfigCase {
            name: "unknown top-level key",
            hcl: "storage \"inmem\" {}\nlistener \"tcp\" {\n  address = \"127.0.0.1:8200\"\n  tls_disable = true\n}\ndisable_mlock = true\nmax_leases_ever = 3\n".to_string(),
            error: Some((7, vec!["max_leases_ever"])),
        },
    ];
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let path = dir.path().join(format!("case{i}.hcl"));
        std::fs::write(&path, &case.hcl)?;
        let (code, output) = config_check(&path).await?;
        let file = path.display().to_string();
        let problem = match &case.error {
            None if code == Some(0) => None,
            None => Some(format!("expected exit 0, got {code:?}")),
            Some(_) if code == Some(0) || code.is_none() => {
                Some(format!("expected a non-zero exit, got {code:?}"))
            }
            Some((line, words)) => {
                let mut p = Vec::new();
                if !output.contains(&file) && !output.contains(&format!("case{i}.hcl")) {
                    p.push(format!("does not name the file {file}"));
                }
                let line_ok = match line {
                    0 => [5, 7, 8].iter().any(|l| mentions_line(&output, *l)),
                    l => mentions_line(&output, *l),
                };
                if !line_ok {
                    p.push(format!("does not name line {line}"));
                }
                for w in words {
                    if !output.contains(w) {
                        p.push(format!("does not name the key `{w}`"));
                    }
                }
                (!p.is_empty()).then(|| p.join(", "))
            }
        };
        if let Some(problem) = problem {
            failures.push(format!("{}: {problem}; output: {output:?}", case.name));
        }
    }
    ensure!(
        failures.is_empty(),
        "config -check cases failed:\n{}",
        failures.join("\n")
    );
    Ok(())
}

#[tokio::test]
async fn wrong_unseal_key_resets_progress_and_loses_nothing() -> Result<()> {
    let mut cluster = Cluster::single(NodeOptions::default()).await?;
    let node = cluster.node();
    let keys = node.init(3, 2).await?;
    node.unseal().await?;
    let api = node.api();
    api.mount_kv("secret", 2).await?;
    api.kv2_put("secret", "kept", json!({"v": "before seal"}))
        .await?
        .expect(200, "write before seal")?;
    api.put("sys/seal", json!({}))
        .await?
        .expect(204, "PUT sys/seal")?;

    // Not a key at all: refused at once, progress untouched.
    let r = api
        .put("sys/unseal", json!({"key": "not-hex-or-base64!"}))
        .await?;
    ensure!(
        r.status == 400,
        "malformed unseal key: expected 400, got {} {}",
        r.status,
        r.text
    );

    // One good share, then a well-formed share that is wrong (a real share with its key bytes
    // flipped, x-coordinate kept): the threshold is reached, combining fails, progress resets.
    let p1 = api
        .put("sys/unseal", json!({"key": keys.keys[0]}))
        .await?
        .expect(200, "first share")?;
    ensure!(
        p1.json["progress"] == json!(1),
        "progress after one share: {}",
        p1.text
    );
    let mut wrong = hex_decode(&keys.keys[1])?;
    let last = wrong.len() - 1;
    for b in &mut wrong[..last] {
        *b ^= 0x5a;
    }
    let r = api
        .put("sys/unseal", json!({"key": hex_encode(&wrong)}))
        .await?;
    ensure!(
        r.status == 400,
        "wrong share completing the threshold: expected 400, got {} {}",
        r.status,
        r.text
    );
    let status = api.seal_status().await?;
    ensure!(
        status["sealed"] == json!(true) && status["progress"] == json!(0),
        "after a wrong share: expected sealed with progress 0, got {status}"
    );

    // The right shares still work, and the data is intact.
    api.unseal_all(&keys.keys[1..3]).await?;
    node.wait_active().await?;
    assert_eq!(
        node.api().kv2_get("secret", "kept").await?,
        Some(json!({"v": "before seal"}))
    );
    Ok(())
}

fn hex_decode(s: &str) -> Result<Vec<u8>> {
    ensure!(s.len().is_multiple_of(2), "odd-length hex");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("hex"))
        .collect()
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn malformed_json_body_is_400() -> Result<()> {
    let mut cluster = Cluster::single_active(NodeOptions::default()).await?;
    let api = cluster.node().api();
    api.mount_kv("secret", 2).await?;
    let endpoints = [
        (Method::POST, "secret/data/x"),
        (Method::PUT, "sys/policies/acl/p"),
        (Method::POST, "auth/token/create"),
        (Method::POST, "sys/mounts/m2"),
        (Method::PUT, "sys/unseal"),
    ];
    let bodies: [&[u8]; 3] = [b"{\"data\":", b"not json", b"[1, 2"];
    let mut failures = Vec::new();
    for (method, path) in &endpoints {
        for body in bodies {
            let r = api.request_raw(method.clone(), path, body.to_vec()).await?;
            if r.status != 400 || r.json.get("errors").is_none() {
                failures.push(format!(
                    "{method} /v1/{path} body {:?}: expected 400 with an errors array, got {} {}",
                    String::from_utf8_lossy(body),
                    r.status,
                    r.text
                ));
            }
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    // Nothing was written by the refused requests.
    assert_eq!(api.kv2_get("secret", "x").await?, None);
    Ok(())
}

#[tokio::test]
async fn body_over_max_request_size_is_413() -> Result<()> {
    let mut cluster = Cluster::single_active(NodeOptions {
        max_request_size: Some(4096),
        ..NodeOptions::default()
    })
    .await?;
    let api = cluster.node().api();
    api.mount_kv("secret", 2).await?;
    api.kv2_put("secret", "small", json!({"v": "x".repeat(1024)}))
        .await?
        .expect(200, "a 1 KiB write under a 4 KiB limit")?;
    let r = api
        .kv2_put("secret", "big", json!({"v": "x".repeat(16 * 1024)}))
        .await?;
    ensure!(
        r.status == 413,
        "a 16 KiB write over a 4 KiB limit: expected 413, got {} {}",
        r.status,
        r.text
    );
    assert_eq!(
        api.kv2_get("secret", "big").await?,
        None,
        "the refused write must not exist"
    );
    // Bodies far past the limit and far past what the sockets buffer, sent whole before the
    // answer is read (no `Expect: 100-continue`), as Python's requests (hvac) and a raw
    // HTTP/1.1 client do: the client still gets its answer, not a reset connection (it did
    // over TLS before the server read on after refusing).
    let node = cluster.node();
    let token = node.init_keys.as_ref().unwrap().root_token.clone();
    let (addr, ca, ip) = (
        node.socket_addr(),
        node.ca_pem().to_string(),
        node.ip.to_string(),
    );
    let answers = tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
        let big = vec![b'x'; 8 << 20];
        let mut failures = Vec::new();
        for (path, with_token, want, what) in [
            ("/v1/secret/data/huge", true, 413, "an 8 MiB JSON body"),
            (
                "/v1/sys/storage/raft/snapshot",
                true,
                413,
                "an 8 MiB snapshot restore",
            ),
            (
                "/v1/secret/data/huge",
                false,
                403,
                "an 8 MiB body without a token",
            ),
        ] {
            let headers: Vec<(&str, &str)> = if with_token {
                vec![("X-Vault-Token", token.as_str())]
            } else {
                Vec::new()
            };
            let answer = RawTls::connect(addr, &ip, &ca, &RawTlsOptions::default())
                .and_then(|mut c| c.request("PUT", path, &headers, &big));
            match answer {
                Ok(r) if r.status == want => {}
                Ok(r) => failures.push(format!("{what}: expected {want}, got {}", r.status)),
                Err(e) => failures.push(format!("{what}: no answer: {e:#}")),
            }
        }
        Ok(failures)
    })
    .await??;
    ensure!(answers.is_empty(), "{}", answers.join("\n"));
    api.get("sys/health")
        .await?
        .expect(200, "health after the refusal")?;
    Ok(())
}

/// `max_request_duration` cuts off a request that cannot finish: here requests stuck behind the
/// only audit device, a FIFO nobody reads (its own write timeout is 5 s, the listener's limit
/// 1 s). The client gets a 500 naming the limit instead of hanging, and the server keeps serving.
#[tokio::test]
async fn request_over_max_request_duration_is_cut_off() -> Result<()> {
    let mut cluster = Cluster::single_active(NodeOptions {
        extra_listener: vec!["max_request_duration = \"1s\"".into()],
        ..NodeOptions::default()
    })
    .await?;
    let fifo = cluster.dir().join("audit.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status()?;
    ensure!(made.success(), "mkfifo {}", fifo.display());
    let api = cluster.node().api();
    // Enabling it is already cut off: its own response is audited through the new device.
    let enable = api
        .put(
            "sys/audit/stuck",
            json!({"type": "file", "options": {"file_path": fifo.to_string_lossy()}}),
        )
        .await?;
    let read = api.get("sys/mounts").await?;
    for (what, r) in [
        ("enable the stuck device", enable),
        ("a read behind it", read),
    ] {
        ensure!(
            r.status == 500 && r.errors().contains("max_request_duration"),
            "{what}: expected 500 naming max_request_duration, got {} {}",
            r.status,
            r.text
        );
    }
    api.get("sys/health")
        .await?
        .expect(200, "health (unaudited) while the device is stuck")?;
    Ok(())
}

#[tokio::test]
async fn unknown_paths_are_404() -> Result<()> {
    let mut cluster = Cluster::single_active(NodeOptions::default()).await?;
    let api = cluster.node().api();
    let mut failures = Vec::new();
    for path in [
        "nonexistent/path",
        "sys/no-such-endpoint",
        "auth/nomount/login",
    ] {
        let r = api.get(path).await?;
        if r.status != 404 {
            failures.push(format!(
                "GET /v1/{path}: expected 404, got {} {}",
                r.status, r.text
            ));
        }
    }
    let outside = api
        .http()
        .get(format!("{}/v2/sys/health", api.base))
        .send()
        .await?;
    if outside.status() != 404 {
        failures.push(format!(
            "GET /v2/sys/health: expected 404, got {}",
            outside.status()
        ));
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[tokio::test]
async fn truncated_requests_do_not_crash_the_server() -> Result<()> {
    let mut cluster = Cluster::single_active(NodeOptions::default()).await?;
    let node = cluster.node();
    let api = node.api();
    api.mount_kv("secret", 2).await?;
    let token = node.init_keys.as_ref().unwrap().root_token.clone();
    let addr = node.socket_addr();
    let ca = node.ca_pem().to_string();
    let ip = node.ip.to_string();
    let rounds = tokio::task::spawn_blocking(move || -> Result<usize> {
        for _ in 0..10 {
            // Body shorter than its Content-Length, then the connection closes.
            let mut c = RawTls::connect(addr, &ip, &ca, &RawTlsOptions::default())?;
            c.send(
                format!(
                    "POST /v1/secret/data/truncated HTTP/1.1\r\nHost: localhost\r\nX-Vault-Token: {token}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"data\": {{\"v\":"
                )
                .as_bytes(),
            )?;
            c.close();
            // Headers cut off mid-line.
            let mut c = RawTls::connect(addr, &ip, &ca, &RawTlsOptions::default())?;
            c.send(b"GET /v1/sys/health HTTP/1.1\r\nHost: loc")?;
            c.close();
            // Not TLS at all: plaintext HTTP to the TLS port, then close.
            let mut tcp = std::net::TcpStream::connect(addr)?;
            std::io::Write::write_all(&mut tcp, b"GET /v1/sys/health HTTP/1.1\r\n\r\n")?;
            drop(tcp);
        }
        Ok(10)
    })
    .await??;
    ensure!(rounds == 10);
    ensure!(
        node.is_running(),
        "server exited after truncated requests; log:\n{}",
        node.log_tail(40)
    );
    api.get("sys/health")
        .await?
        .expect(200, "health after truncated requests")?;
    assert_eq!(
        api.kv2_get("secret", "truncated").await?,
        None,
        "a truncated body must not be written"
    );
    Ok(())
}

#[tokio::test]
async fn init_parameters_are_validated() -> Result<()> {
    let mut cluster = Cluster::single(NodeOptions::default()).await?;
    let api = cluster.node().api();
    // Shamir needs 2 <= threshold <= shares <= 255, except the unsplit 1-of-1.
    let refused = [
        json!({"secret_shares": 3, "secret_threshold": 4}),
        json!({"secret_shares": 3, "secret_threshold": 1}),
        json!({"secret_shares": 0, "secret_threshold": 0}),
        json!({"secret_shares": 256, "secret_threshold": 2}),
        json!({"secret_shares": "three", "secret_threshold": 2}),
    ];
    let mut failures = Vec::new();
    for body in &refused {
        let r = api.put("sys/init", body.clone()).await?;
        if r.status != 400 {
            failures.push(format!(
                "PUT sys/init {body}: expected 400, got {} {}",
                r.status, r.text
            ));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    let still = api.get("sys/init").await?.expect(200, "GET sys/init")?;
    assert_eq!(
        still.json["initialized"],
        json!(false),
        "refused inits must initialise nothing"
    );

    api.init(1, 1).await?;
    let again = api
        .put(
            "sys/init",
            json!({"secret_shares": 1, "secret_threshold": 1}),
        )
        .await?;
    ensure!(
        again.status == 400,
        "a second init: expected 400, got {} {}",
        again.status,
        again.text
    );
    Ok(())
}

/// A storage value altered on disk (a flipped ciphertext byte, or a value moved to another path)
/// is refused by the barrier with a 500 naming the integrity failure, never returned as data; and
/// every other secret is still served, so nothing else is lost. The values are reached through
/// the store's own API while the server is stopped, as an attacker with disk access would.
///
/// Not covered here: random bit flips in sled's own log files. sled treats a record that fails
/// its CRC as the end of the log on recovery, so later acknowledged writes would silently
/// disappear; `damaged_stores` shows the server refusing such a store at start.
#[tokio::test]
async fn tampered_storage_value_is_refused_and_nothing_else_is_lost() -> Result<()> {
    use keyhold::physical::{sled_store::SledStore, Backend};

    let mut cluster = Cluster::single(NodeOptions::default()).await?;
    let node = cluster.node();
    let keys = node.init(1, 1).await?;
    node.unseal().await?;
    let api = node.api();
    api.mount_kv("secret", 2).await?;
    let expected: Vec<(String, serde_json::Value)> = (0..10)
        .map(|i| (format!("k{i}"), json!({ "v": format!("value-{i}") })))
        .collect();
    for (key, value) in &expected {
        api.kv2_put("secret", key, value.clone())
            .await?
            .expect(200, "write")?;
    }
    let status = node.sigterm().await?;
    ensure!(status.success(), "clean stop before tampering: {status}");

    let tampered = ["k3", "k4", "k5"];
    {
        let store = SledStore::open(&node.data_dir)?;
        let entries = store.export()?;
        let version_key = |name: &str| {
            entries
                .iter()
                .find(|(k, _)| {
                    k.starts_with("logical/") && k.ends_with(&format!("/versions/{name}/1"))
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .ok_or_else(|| {
                    anyhow::anyhow!("no stored version for {name} in {} entries", entries.len())
                })
        };
        let (k3, mut v3) = version_key("k3")?;
        let middle = v3.len() / 2;
        v3[middle] ^= 0x01;
        store.put(&k3, v3).await?;
        // A valid ciphertext moved to another path fails too: the path is the associated data.
        let (k4, v4) = version_key("k4")?;
        let (k5, v5) = version_key("k5")?;
        store.put(&k4, v5).await?;
        store.put(&k5, v4).await?;
    }

    node.start().await?;
    node.api().unseal_all(&keys.keys).await?;
    // A restarted raft node is briefly a standby after unseal (as in Vault): wait until active.
    node.wait_active().await?;
    let api = node.api();
    for (key, value) in &expected {
        let r = api.get(&format!("secret/data/{key}")).await?;
        if tampered.contains(&key.as_str()) {
            ensure!(
                r.status == 500,
                "{key}: tampered value answered {} {}",
                r.status,
                r.json
            );
            let errors = r.errors();
            ensure!(
                errors.contains("failed its integrity check")
                    && !errors.contains("value-")
                    && !errors.contains("logical/")
                    && !errors.contains("versions/"),
                "{key}: the error should name the integrity failure and neither data nor \
                 storage path: {errors}"
            );
        } else {
            ensure!(
                r.status == 200,
                "{key}: untouched value answered {} {}",
                r.status,
                r.json
            );
            ensure!(
                r.json["data"]["data"] == *value,
                "{key}: read back {}",
                r.json["data"]["data"]
            );
        }
    }
    api.kv2_put("secret", "after", json!({"ok": true}))
        .await?
        .expect(200, "write after tamper")?;
    ensure!(
        api.kv2_get("secret", "after").await?.is_some(),
        "a write after the tamper reads back"
    );
    Ok(())
}
