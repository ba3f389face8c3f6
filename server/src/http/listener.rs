//! TCP listeners: plain HTTP (`tls_disable`) or rustls with the listener's
//! minimum version and client-certificate policy. Certificates are reloaded
//! in place on SIGHUP: new handshakes use the new files, open connections
//! keep theirs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum_server::tls_rustls::RustlsConfig;
use axum_server::Handle;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use super::client_cert::ClientCertAcceptor;
use super::idle::IdleTimeoutAcceptor;
use crate::config::{ListenerConfig, TlsVersion};

/// Controls one running listener.
#[derive(Clone)]
pub struct ListenerHandle {
    pub address: SocketAddr,
    handle: Handle<SocketAddr>,
    tls: Option<(RustlsConfig, ListenerConfig)>,
}

impl ListenerHandle {
    /// Re-reads the certificate, key and client CA; on error the old ones stay.
    pub fn reload_tls(&self) {
        if let Some((rustls_config, listener)) = &self.tls {
            match tls_server_config(listener) {
                Ok(config) => {
                    rustls_config.reload_from_config(Arc::new(config));
                    tracing::info!(address = %self.address, "TLS certificates reloaded");
                }
                Err(e) => {
                    tracing::error!(address = %self.address, error = %format!("{e:#}"), "TLS reload failed; keeping the previous certificates")
                }
            }
        }
    }

    /// Stops accepting, lets in-flight requests finish for up to `grace`.
    pub fn shutdown(&self, grace: Duration) {
        self.handle.graceful_shutdown(Some(grace));
    }
}

/// `keyhold.tls.certificate_expiry_seconds{listener}`: the listener's
/// certificate's not-after as a Unix time, set at start and on every reload,
/// so an alert can say "expires within 30 days" without probing.
fn record_certificate_expiry(listener: &ListenerConfig, leaf: &CertificateDer<'_>) {
    match x509_parser::parse_x509_certificate(leaf) {
        Ok((_, cert)) => metrics::gauge!(
            "keyhold.tls.certificate_expiry_seconds",
            "listener" => listener.address.clone(),
        )
        .set(cert.validity().not_after.timestamp() as f64),
        Err(e) => {
            tracing::warn!(address = %listener.address, error = %e, "could not read the certificate's expiry for metrics")
        }
    }
}

/// The rustls server config for a listener's TLS settings.
pub fn tls_server_config(listener: &ListenerConfig) -> anyhow::Result<rustls::ServerConfig> {
    let cert_path = listener
        .tls_cert_file
        .as_ref()
        .context("tls_cert_file is required unless tls_disable = true")?;
    let key_path = listener
        .tls_key_file
        .as_ref()
        .context("tls_key_file is required unless tls_disable = true")?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("read tls_cert_file {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!(
                "parse tls_cert_file {} (expected PEM certificates)",
                cert_path.display()
            )
        })?;
    if certs.is_empty() {
        bail!(
            "tls_cert_file {} holds no PEM certificate",
            cert_path.display()
        );
    }
    record_certificate_expiry(listener, &certs[0]);
    let key = PrivateKeyDer::from_pem_file(key_path).with_context(|| {
        format!(
            "read tls_key_file {} (expected a PEM private key)",
            key_path.display()
        )
    })?;

    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if !listener.tls_cipher_suites.is_empty() {
        restrict_cipher_suites(&mut provider, &listener.tls_cipher_suites)?;
    }
    let provider = Arc::new(provider);
    let versions: &[&'static rustls::SupportedProtocolVersion] =
        match (listener.tls_min_version, listener.tls_max_version) {
            (TlsVersion::Tls13, _) => &[&rustls::version::TLS13],
            (TlsVersion::Tls12, Some(TlsVersion::Tls12)) => &[&rustls::version::TLS12],
            (TlsVersion::Tls12, _) => &[&rustls::version::TLS13, &rustls::version::TLS12],
        };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .context("configure TLS versions")?;

    let builder = match (
        &listener.tls_client_ca_file,
        listener.tls_require_and_verify_client_cert,
        listener.tls_disable_client_certs,
    ) {
        (_, false, true) | (None, false, _) => builder.with_no_client_auth(),
        (None, true, _) => {
            bail!("tls_require_and_verify_client_cert = true needs tls_client_ca_file")
        }
        (Some(ca), require, _) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("read tls_client_ca_file {}", ca.display()))?
            {
                let cert =
                    cert.with_context(|| format!("parse tls_client_ca_file {}", ca.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("add CA from tls_client_ca_file {}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if require {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .context("build the client certificate verifier")?,
            )
        }
    };
    let mut config = builder.with_single_cert(certs, key).with_context(|| {
        format!(
            "the certificate in tls_cert_file {} and the key in tls_key_file {} do not match \
             (or the key type is unsupported)",
            cert_path.display(),
            key_path.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Keeps only the configured suites (Go's names, as Vault's `tls_cipher_suites`). TLS 1.2
/// suites are always restricted to the list; TLS 1.3 suites only when the list names one, as
/// Go, and so Vault, never restricts TLS 1.3.
fn restrict_cipher_suites(
    provider: &mut rustls::crypto::CryptoProvider,
    names: &[String],
) -> anyhow::Result<()> {
    let wanted: Vec<String> = names
        .iter()
        .map(|n| {
            let n = n.trim();
            let n = if n.ends_with("_CHACHA20_POLY1305") {
                format!("{n}_SHA256")
            } else {
                n.to_string()
            };
            // Go names TLS 1.3 suites without the version: TLS_AES_128_GCM_SHA256.
            match n.strip_prefix("TLS_") {
                Some(rest) if !rest.starts_with("ECDHE") => format!("TLS13_{rest}"),
                _ => n,
            }
        })
        .collect();
    for (name, rustls_name) in names.iter().zip(&wanted) {
        if !provider
            .cipher_suites
            .iter()
            .any(|s| s.suite().as_str() == Some(rustls_name.as_str()))
        {
            bail!("tls_cipher_suites: {name:?} is not a cipher suite this build can serve");
        }
    }
    let restrict_tls13 = wanted.iter().any(|n| n.starts_with("TLS13_"));
    provider.cipher_suites.retain(|suite| {
        let name = suite.suite().as_str().unwrap_or_default();
        let tls13 = name.starts_with("TLS13_");
        (tls13 && !restrict_tls13) || wanted.iter().any(|w| w == name)
    });
    Ok(())
}

/// Binds and serves `app` on the listener; returns once it is accepting.
pub async fn serve_listener(
    listener: &ListenerConfig,
    app: axum::Router,
) -> anyhow::Result<(ListenerHandle, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let address: SocketAddr = listener.address.parse().with_context(|| {
        format!(
            "listener address {:?} must be IP:PORT (e.g. 127.0.0.1:8200)",
            listener.address
        )
    })?;
    // Bind here so an address in use is reported before anything else starts.
    let std_listener = std::net::TcpListener::bind(address)
        .with_context(|| format!("bind listener {address}: is another server using the port?"))?;
    std_listener.set_nonblocking(true)?;
    let local = std_listener.local_addr()?;
    let handle: Handle<SocketAddr> = Handle::new();
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    let idle = IdleTimeoutAcceptor {
        idle: listener.http_idle_timeout,
    };
    // hyper enforces the header timeout only with a timer; its clock starts whenever the
    // connection waits for a request head, so a keep-alive connection with no next request
    // is also closed after http_read_header_timeout (or http_idle_timeout, if shorter).
    let limit_headers = |builder: &mut hyper_util::server::conn::auto::Builder<_>| {
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(listener.http_read_header_timeout);
    };
    let (tls, task) = if listener.tls_disable {
        let mut server = axum_server::from_tcp(std_listener)?
            .acceptor(idle)
            .handle(handle.clone());
        limit_headers(server.http_builder());
        (
            None,
            tokio::spawn(async move { server.serve(service).await }),
        )
    } else {
        let rustls_config = RustlsConfig::from_config(Arc::new(tls_server_config(listener)?));
        let handshake = listener.http_read_header_timeout;
        let mut server = axum_server::from_tcp_rustls(std_listener, rustls_config.clone())?
            .map(|tls| ClientCertAcceptor {
                inner: tls.handshake_timeout(handshake).acceptor(idle),
            })
            .handle(handle.clone());
        limit_headers(server.http_builder());
        (
            Some((rustls_config, listener.clone())),
            tokio::spawn(async move { server.serve(service).await }),
        )
    };
    Ok((
        ListenerHandle {
            address: local,
            handle,
            tls,
        },
        task,
    ))
}
