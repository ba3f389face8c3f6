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
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Config(format!("TLS setup: {e}")))?;

    let verifier: Arc<dyn ServerCertVerifier> = if config.skip_verify {
        Arc::new(AcceptAnyCertificate(provider))
    } else {
        let roots = root_store(config.ca_cert.as_ref())?;
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| ClientError::Config(format!("TLS setup: {e}")))?;
        match &config.tls_server_name {
            Some(name) => {
                let name = ServerName::try_from(name.clone()).map_err(|e| {
                    ClientError::Config(format!("invalid TLS server name {name:?}: {e}"))
                })?;
                Arc::new(NameOverride {
                    inner: webpki,
                    name,
                })
            }
            None => webpki,
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);

    let tls =
        match (&config.client_cert, &config.client_key) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    ClientError::Config(format!("reading client key {}: {e}", key.display()))
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| ClientError::Config(format!("client certificate: {e}")))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(ClientError::Config(
                "VAULT_CLIENT_CERT and VAULT_CLIENT_KEY (or -client-cert and -client-key) must be \
                 given together"
                    .into(),
            )),
        };
    Ok(tls)
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
