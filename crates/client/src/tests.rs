//! Client tests: env config through an injected source, and requests against a tiny local
//! axum server that records what it received.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method as HttpMethod, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::*;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn config_from_env_source() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join(".vault-token"), "hvs.fromfile\n").unwrap();
    let home = home.path().to_str().unwrap().to_string();

    let c = ClientConfig::from_env_source(env(&[])).unwrap();
    assert_eq!(c, ClientConfig::default());
    assert_eq!(c.address, "https://127.0.0.1:8200");
    assert_eq!(c.timeout, Duration::from_secs(60));

    let c = ClientConfig::from_env_source(env(&[
        ("VAULT_ADDR", "https://10.0.0.5:8200"),
        ("VAULT_TOKEN", "hvs.env"),
        ("HOME", &home),
        ("VAULT_CACERT", "/etc/ca.pem"),
        ("VAULT_CAPATH", "/etc/cas"),
        ("VAULT_CLIENT_CERT", "/c.pem"),
        ("VAULT_CLIENT_KEY", "/k.pem"),
        ("VAULT_SKIP_VERIFY", "true"),
        ("VAULT_TLS_SERVER_NAME", "vault.internal"),
        ("VAULT_CLIENT_TIMEOUT", "1m30s"),
        ("VAULT_NAMESPACE", "team-a"),
    ]))
    .unwrap();
    assert_eq!(c.address, "https://10.0.0.5:8200");
    assert_eq!(c.token.as_deref(), Some("hvs.env"));
    assert_eq!(c.ca_cert, Some(CaCert::File("/etc/ca.pem".into())));
    assert_eq!(c.client_cert, Some("/c.pem".into()));
    assert_eq!(c.client_key, Some("/k.pem".into()));
    assert!(c.skip_verify);
    assert_eq!(c.tls_server_name.as_deref(), Some("vault.internal"));
    assert_eq!(c.timeout, Duration::from_secs(90));
    assert_eq!(c.namespace.as_deref(), Some("team-a"));

    // No VAULT_TOKEN: the token helper's file; an empty variable counts as unset.
    let c = ClientConfig::from_env_source(env(&[("VAULT_TOKEN", ""), ("HOME", &home)])).unwrap();
    assert_eq!(c.token.as_deref(), Some("hvs.fromfile"));
    let c = ClientConfig::from_env_source(env(&[("VAULT_CAPATH", "/etc/cas")])).unwrap();
    assert_eq!(c.ca_cert, Some(CaCert::Dir("/etc/cas".into())));
    let c = ClientConfig::from_env_source(env(&[("VAULT_CLIENT_TIMEOUT", "5")])).unwrap();
    assert_eq!(c.timeout, Duration::from_secs(5));

    for (k, v) in [
        ("VAULT_SKIP_VERIFY", "yes please"),
        ("VAULT_CLIENT_TIMEOUT", "soon"),
    ] {
        let err = ClientConfig::from_env_source(env(&[(k, v)])).unwrap_err();
        assert!(err.to_string().contains(k), "{err}");
    }
}

#[test]
fn debug_never_shows_the_token() {
    let mut config = ClientConfig::new("http://127.0.0.1:1");
    config.token = Some("hvs.SECRET".into());
    let client = Client::new(&config).unwrap();
    for text in [format!("{config:?}"), format!("{client:?}")] {
        assert!(!text.contains("hvs.SECRET"), "{text}");
        assert!(text.contains("redacted"), "{text}");
    }
    let init = InitResponse {
        keys: vec!["aa".into()],
        keys_base64: vec!["qq==".into()],
        root_token: "hvs.ROOT".into(),
        ..Default::default()
    };
    let text = format!("{init:?}");
    assert!(
        !text.contains("hvs.ROOT") && !text.contains("aa\""),
        "{text}"
    );
}

#[test]
fn bad_addresses_and_tls_files_are_config_errors() {
    for addr in ["not a url", "ftp://127.0.0.1:8200"] {
        let err = Client::new(&ClientConfig::new(addr)).unwrap_err();
        assert!(matches!(err, ClientError::Config(_)), "{addr}: {err}");
    }
    let mut config = ClientConfig::new("https://127.0.0.1:8200");
    config.ca_cert = Some(CaCert::File("/nonexistent/ca.pem".into()));
    let err = Client::new(&config).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");

    config.ca_cert = None;
    config.client_cert = Some("/c.pem".into());
    let err = Client::new(&config).unwrap_err();
    assert!(err.to_string().contains("together"), "{err}");
}

#[test]
fn tls_config_from_pem_ca() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["vault.internal".into()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&key).unwrap();
    let mut config = ClientConfig::new("https://127.0.0.1:8200");
    config.ca_cert = Some(CaCert::Pem(ca.pem().into_bytes()));
    config.tls_server_name = Some("vault.internal".into());
    Client::new(&config).unwrap();

    config.ca_cert = Some(CaCert::Pem(b"not pem".to_vec()));
    assert!(Client::new(&config).is_err());

    let mut config = ClientConfig::new("https://127.0.0.1:8200");
    config.skip_verify = true;
    Client::new(&config).unwrap();
}

/// What the test server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    token: Option<String>,
    vault_request: Option<String>,
    namespace: Option<String>,
    content_type: Option<String>,
    body: String,
}

async fn serve() -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = axum::Router::new().fallback(
        move |method: HttpMethod, uri: Uri, headers: HeaderMap, body: Bytes| {
            let log = log.clone();
            async move {
                let header = |k: &str| {
                    headers
                        .get(k)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                log.lock().unwrap().push(Seen {
                    method: method.to_string(),
                    path: uri.to_string(),
                    token: header("x-vault-token"),
                    vault_request: header("x-vault-request"),
                    namespace: header("x-vault-namespace"),
                    content_type: header("content-type"),
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
                respond(method.as_str(), uri.path())
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

fn json_response(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap();
    (status, axum::Json(body)).into_response()
}

fn respond(method: &str, path: &str) -> Response {
    match (method, path) {
        ("GET", "/v1/secret/foo") => json_response(
            200,
            json!({"request_id": "r1", "lease_id": "", "lease_duration": 0, "renewable": false,
                   "data": {"a": "b"}, "warnings": null}),
        ),
        ("LIST", "/v1/secret/") => json_response(200, json!({"data": {"keys": ["foo", "bar/"]}})),
        ("LIST", "/v1/empty/") | ("GET", "/v1/secret/missing") => {
            json_response(404, json!({"errors": []}))
        }
        ("PUT", "/v1/sys/unseal") => json_response(
            400,
            json!({"errors": ["invalid key", "Unseal key must be 33 bytes"]}),
        ),
        ("PUT", "/v1/sys/seal") => StatusCode::NO_CONTENT.into_response(),
        ("GET", "/v1/sys/seal-status") => json_response(
            200,
            json!({"type": "shamir", "initialized": true, "sealed": true, "t": 3, "n": 5,
                   "progress": 1, "nonce": "abc", "version": "0.1.0", "storage_type": "raft"}),
        ),
        ("GET", "/v1/sys/health") => json_response(
            429,
            json!({"initialized": true, "sealed": false, "standby": true, "version": "0.1.0"}),
        ),
        ("GET", "/v1/sys/key-status") => json_response(
            200,
            json!({"term": 2, "install_time": "2026-01-01T00:00:00Z", "encryptions": 7,
                   "data": {"term": 2, "install_time": "2026-01-01T00:00:00Z", "encryptions": 7}}),
        ),
        ("PATCH", "/v1/secret/data/foo") => json_response(200, json!({"data": {"version": 2}})),
        ("GET", "/v1/raw") => (StatusCode::BAD_GATEWAY, "upstream went away").into_response(),
        ("GET", "/v1/metrics") => {
            ([("content-type", "text/plain")], "vault_core_unsealed 1\n").into_response()
        }
        _ => json_response(404, json!({"errors": ["no handler for route"]})),
    }
}

async fn client(addr: &str, token: Option<&str>) -> Client {
    let mut config = ClientConfig::new(addr);
    config.token = token.map(str::to_string);
    config.namespace = Some("ns1".into());
    Client::new(&config).unwrap()
}

#[tokio::test]
async fn requests_carry_vault_headers_and_verbs() {
    let (addr, seen) = serve().await;
    let c = client(&addr, Some("hvs.tok")).await;

    let secret = c.read("secret/foo").await.unwrap().unwrap();
    assert_eq!(secret.data.unwrap()["a"], "b");
    let keys = c.list("secret/").await.unwrap().unwrap();
    assert_eq!(keys.data.unwrap()["keys"], json!(["foo", "bar/"]));
    assert!(c.list("empty/").await.unwrap().is_none());
    assert!(c.read("secret/missing").await.unwrap().is_none());
    c.seal().await.unwrap();
    c.patch("secret/data/foo", &json!({"data": {"x": "y"}}))
        .await
        .unwrap();

    let seen = seen.lock().unwrap().clone();
    let methods: Vec<(&str, &str)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.path.as_str()))
        .collect();
    assert_eq!(
        methods,
        [
            ("GET", "/v1/secret/foo"),
            ("LIST", "/v1/secret/"),
            ("LIST", "/v1/empty/"),
            ("GET", "/v1/secret/missing"),
            ("PUT", "/v1/sys/seal"),
            ("PATCH", "/v1/secret/data/foo"),
        ]
    );
    for s in &seen {
        assert_eq!(s.token.as_deref(), Some("hvs.tok"), "{s:?}");
        assert_eq!(s.vault_request.as_deref(), Some("true"), "{s:?}");
        assert_eq!(s.namespace.as_deref(), Some("ns1"), "{s:?}");
    }
    let patch = seen.last().unwrap();
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(patch.body, r#"{"data":{"x":"y"}}"#);
}

#[tokio::test]
async fn no_token_header_without_a_token() {
    let (addr, seen) = serve().await;
    let c = client(&addr, None).await;
    let status = c.seal_status().await.unwrap();
    assert!(status.sealed);
    assert_eq!((status.t, status.n, status.progress), (3, 5, 1));
    assert_eq!(status.seal_type, "shamir");
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].token, None);
    assert_eq!(seen[0].vault_request.as_deref(), Some("true"));
}

#[tokio::test]
async fn api_errors_read_like_vault() {
    let (addr, _) = serve().await;
    let c = client(&addr, Some("hvs.secret-token")).await;
    let err = c.unseal("bad").await.unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert_eq!(
        err.to_string(),
        format!(
            "Error making API request.\n\nURL: PUT {addr}/v1/sys/unseal\nCode: 400. Errors:\n\n\
             * invalid key\n* Unseal key must be 33 bytes"
        )
    );
    assert!(!format!("{err} {err:?}").contains("hvs.secret-token"));

    let err = c.request(Method::Get, "raw", None).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "Error making API request.\n\nURL: GET {addr}/v1/raw\nCode: 502. Raw Message:\n\n\
             upstream went away"
        )
    );
}

#[tokio::test]
async fn typed_sys_answers() {
    let (addr, _) = serve().await;
    let c = client(&addr, None).await;
    let health = c.health(&HealthQuery::default()).await.unwrap();
    assert_eq!(health.status, 429);
    assert!(health.standby);
    let ks = c.key_status().await.unwrap();
    assert_eq!((ks.term, ks.encryptions), (2, 7));
    let raw = c.request(Method::Get, "metrics", None).await.unwrap();
    assert_eq!(raw.body, Body::Raw(b"vault_core_unsealed 1\n".to_vec()));
}

#[tokio::test]
async fn transport_errors_name_the_address() {
    // Bind then drop, so nothing listens on the port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("http://127.0.0.1:{port}");
    let c = client(&addr, Some("hvs.secret-token")).await;
    let err = c.seal_status().await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ClientError::Transport { .. }), "{text}");
    assert!(
        text.contains(&format!("GET {addr}/v1/sys/seal-status")),
        "{text}"
    );
    assert!(
        text.contains("VAULT_ADDR") && text.contains("VAULT_CACERT"),
        "{text}"
    );
    assert!(!text.contains("hvs.secret-token"));
}

/// A CA, a server certificate for `vault-1.internal` only (no IP SAN, so an address alone
/// cannot pass), and a client certificate, all as PEM.
struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(params, ca_key);
    let leaf = |name: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca: ca_cert.pem(),
        server: leaf("vault-1.internal"),
        client: leaf("client.internal"),
    }
}

/// An HTTPS server on 127.0.0.1 that requires a client certificate from `pki`'s CA.
async fn serve_mtls(pki: &Pki) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca.as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(pki.server.0.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(pki.server.1.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|| async { "ok" });
    let server = axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config)),
    )
    .unwrap();
    tokio::spawn(async move { server.serve(app.into_make_service()).await });
    format!("https://127.0.0.1:{}/", addr.port())
}

/// The PEM-held settings a server's `retry_join` uses: each one matters on a real handshake.
#[tokio::test]
async fn pem_tls_settings_on_a_real_handshake() {
    use crate::tls::{rustls_config_from_pem, PemTls};
    let (pki, other) = (pki(), pki());
    let url = serve_mtls(&pki).await;
    let full = PemTls {
        ca_cert: Some(pki.ca.as_bytes()),
        client_cert: Some(pki.client.0.as_bytes()),
        client_key: Some(pki.client.1.as_bytes()),
        tls_server_name: Some("vault-1.internal"),
    };
    let get = |tls: PemTls<'_>| {
        let url = url.clone();
        let config = rustls_config_from_pem(&tls);
        async move {
            let http = reqwest::Client::builder()
                .tls_backend_preconfigured(config?)
                .build()
                .unwrap();
            http.get(&url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .map_err(|e| ClientError::Config(format!("{e:?}")))
        }
    };
    let cases: &[(&str, PemTls<'_>, bool)] = &[
        ("everything given", full, true),
        // The certificate names vault-1.internal, not the address dialled.
        (
            "no server name",
            PemTls {
                tls_server_name: None,
                ..full
            },
            false,
        ),
        (
            "wrong server name",
            PemTls {
                tls_server_name: Some("vault-2.internal"),
                ..full
            },
            false,
        ),
        // The server requires a client certificate.
        (
            "no client certificate",
            PemTls {
                client_cert: None,
                client_key: None,
                ..full
            },
            false,
        ),
        (
            "another CA",
            PemTls {
                ca_cert: Some(other.ca.as_bytes()),
                ..full
            },
            false,
        ),
    ];
    for (what, tls, ok) in cases {
        let got = get(*tls).await;
        assert_eq!(got.is_ok(), *ok, "{what}: {got:?}");
        if *ok {
            assert_eq!(got.unwrap(), 200, "{what}");
        }
    }

    // Settings that cannot work are refused before any connection.
    for (what, tls) in [
        (
            "certificate without its key",
            PemTls {
                client_key: None,
                ..full
            },
        ),
        (
            "key without its certificate",
            PemTls {
                client_cert: None,
                ..full
            },
        ),
        (
            "a key that is not PEM",
            PemTls {
                client_key: Some(b"not a key"),
                ..full
            },
        ),
    ] {
        let err = rustls_config_from_pem(&tls).unwrap_err();
        assert!(matches!(err, ClientError::Config(_)), "{what}: {err}");
    }
    assert!(full.needs_custom());
    assert!(!PemTls::default().needs_custom());
}

#[test]
fn consistency_keeps_the_newest_index_it_can_order() {
    use base64::Engine;
    let index =
        |n: u64| base64::engine::general_purpose::STANDARD.encode(format!("cluster-a:{n}:00ff"));
    let c = Consistency::default();
    assert_eq!(c.header(), None);
    c.record(&index(7));
    c.record(&index(5)); // an older state, from a node that is behind: not kept
    assert_eq!(c.header(), Some(index(7)));
    c.record(&index(9));
    assert_eq!(c.header(), Some(index(9)));
    // A value in another server's format cannot be ordered: the newest answer's is kept.
    c.record("opaque-vault-wal-state");
    assert_eq!(c.header().as_deref(), Some("opaque-vault-wal-state"));
    // Clones share the state (one per cluster session).
    let clone = c.clone();
    clone.record(&index(3));
    assert_eq!(c.header(), Some(index(3)));
}
