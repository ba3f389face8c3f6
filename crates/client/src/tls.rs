//! The rustls configuration of the client: which CAs to trust, which certificate to present,
//! which name to check, and (only when asked) no verification at all.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::config::{CaCert, ClientConfig};
use super::ClientError;

/// Bundles where Linux distributions keep the system's trusted CAs, tried in order when no CA
/// is configured but the client still needs its own rustls config.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// True when the config asks for anything reqwest's default TLS setup does not do.
pub(super) fn needs_custom(config: &ClientConfig) -> bool {
    config.ca_cert.is_some()
        || config.client_cert.is_some()
        || config.skip_verify
        || config.tls_server_name.is_some()
}

pub(super) fn rustls_config(config: &ClientConfig) -> Result<rustls::ClientConfig, ClientError> {
    let identity =
        match (&config.client_cert, &config.client_key) {
            (Some(cert), Some(key)) => {
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    ClientError::Config(format!("reading client key {}: {e}", key.display()))
                })?;
                Some((read_certs(cert)?, key))
            }
            (None, None) => None,
            _ => return Err(ClientError::Config(
                "VAULT_CLIENT_CERT and VAULT_CLIENT_KEY (or -client-cert and -client-key) must be \
             given together"
                    .into(),
            )),
        };
    let roots = match config.skip_verify {
        true => None,
        false => Some(root_store(config.ca_cert.as_ref())?),
    };
    build(roots, config.tls_server_name.as_deref(), identity)
}

/// TLS settings held as PEM text rather than in files: a server's `retry_join` stanza (or the
/// body of `sys/storage/raft/join`) carries the leader's CA and a client certificate inline.
#[derive(Debug, Clone, Copy, Default)]
pub struct PemTls<'a> {
    /// The CA bundle to trust; `None` trusts the system's CAs, as the CLI does.
    pub ca_cert: Option<&'a [u8]>,
    /// The client certificate chain to present; given with `client_key` or not at all.
    pub client_cert: Option<&'a [u8]>,
    pub client_key: Option<&'a [u8]>,
    /// The name to check the server's certificate against instead of the address's host.
    pub tls_server_name: Option<&'a str>,
}

impl PemTls<'_> {
    /// True when these settings ask for anything reqwest's default TLS setup (the platform's
    /// trusted CAs, no client certificate) does not do: then [`rustls_config_from_pem`] is
    /// needed, exactly as [`crate::Client::new`] decides for its own config.
    pub fn needs_custom(&self) -> bool {
        self.ca_cert.is_some()
            || self.client_cert.is_some()
            || self.client_key.is_some()
            || self.tls_server_name.is_some()
    }
}

/// The rustls client config for `tls`, built as the CLI builds its own: the CA given, else the
/// system bundle (`SSL_CERT_FILE`, then the distributions' usual files); the certificate checked
/// against `tls_server_name` when one is given; the client certificate presented when given.
pub fn rustls_config_from_pem(tls: &PemTls<'_>) -> Result<rustls::ClientConfig, ClientError> {
    let identity = match (tls.client_cert, tls.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ClientError::Config(format!("parsing client certificate PEM: {e}")))?;
            if chain.is_empty() {
                return Err(ClientError::Config(
                    "no PEM certificate found in the client certificate".into(),
                ));
            }
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|_| {
                ClientError::Config("the client key is not a PEM private key".into())
            })?;
            Some((chain, key))
        }
        (None, None) => None,
        _ => {
            return Err(ClientError::Config(
                "a client certificate and its key must be given together".into(),
            ))
        }
    };
    let ca = tls.ca_cert.map(|pem| CaCert::Pem(pem.to_vec()));
    build(
        Some(root_store(ca.as_ref())?),
        tls.tls_server_name,
        identity,
    )
}

/// The one place a client rustls config is assembled. `roots: None` is `-tls-skip-verify`.
fn build(
    roots: Option<RootCertStore>,
    server_name: Option<&str>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Config(format!("TLS setup: {e}")))?;

    let verifier: Arc<dyn ServerCertVerifier> = match roots {
        None => Arc::new(AcceptAnyCertificate(provider)),
        Some(roots) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ClientError::Config(format!("TLS setup: {e}")))?;
            match server_name {
                Some(name) => {
                    let name = ServerName::try_from(name.to_string()).map_err(|e| {
                        ClientError::Config(format!("invalid TLS server name {name:?}: {e}"))
                    })?;
                    Arc::new(NameOverride {
                        inner: webpki,
                        name,
                    })
                }
                None => webpki,
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| ClientError::Config(format!("client certificate: {e}"))),
        None => Ok(builder.with_no_client_auth()),
    }
}

fn root_store(ca: Option<&CaCert>) -> Result<RootCertStore, ClientError> {
    let mut roots = RootCertStore::empty();
    let certs = match ca {
        Some(CaCert::File(path)) => read_certs(path)?,
        Some(CaCert::Pem(pem)) => CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Config(format!("parsing CA PEM: {e}")))?,
        Some(CaCert::Dir(dir)) => {
            let entries = std::fs::read_dir(dir).map_err(|e| {
                ClientError::Config(format!("reading CA directory {}: {e}", dir.display()))
            })?;
            let mut certs = Vec::new();
            for entry in entries.flatten() {
                if entry.path().is_file() {
                    certs.extend(read_certs(&entry.path())?);
                }
            }
            certs
        }
        None => {
            let bundle = std::env::var_os("SSL_CERT_FILE")
                .map(std::path::PathBuf::from)
                .into_iter()
                .chain(SYSTEM_BUNDLES.iter().map(Into::into))
                .find(|p| p.is_file());
            match bundle {
                Some(path) => read_certs(&path)?,
                None => Vec::new(),
            }
        }
    };
    let (_, _) = roots.add_parsable_certificates(certs);
    if roots.is_empty() {
        return Err(ClientError::Config(
            "no CA certificate found to verify the server with; set VAULT_CACERT (or -ca-cert)"
                .into(),
        ));
    }
    Ok(roots)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            ClientError::Config(format!("reading certificates from {}: {e}", path.display()))
        })?;
    if certs.is_empty() {
        return Err(ClientError::Config(format!(
            "no PEM certificate found in {}",
            path.display()
        )));
    }
    Ok(certs)
}

/// Full WebPKI verification, but against a fixed name rather than the host
/// in the address: `VAULT_TLS_SERVER_NAME`, or the cluster port's
/// `cluster.keyhold.internal` when dialling a peer by IP.
#[derive(Debug)]
pub struct NameOverride {
    pub inner: Arc<WebPkiServerVerifier>,
    pub name: ServerName<'static>,
}

impl ServerCertVerifier for NameOverride {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `-tls-skip-verify`: any certificate is accepted, but handshake signatures are still
/// checked so the connection is at least consistent with the certificate presented.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
