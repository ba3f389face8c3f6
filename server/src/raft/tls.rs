//! The cluster's TLS material and the rustls configurations built from it:
//! one CA and one node certificate shared by every member (as Vault's raft
//! TLS keyring), for the fixed name [`CLUSTER_SERVER_NAME`]. Both sides
//! authenticate: the listener requires a client certificate issued by the
//! cluster CA, and clients check the listener against the same CA. The
//! server keeps [`ClusterTls`] behind the barrier, so only a process holding
//! the unseal keys can join, vote or read replicated data.

use std::fmt;
use std::sync::Arc;

use chrono::Datelike;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use super::ClusterError;

/// The name in the shared node certificate, checked by every client
/// whatever address it dialled.
pub const CLUSTER_SERVER_NAME: &str = "cluster.keyhold.internal";

/// How long generated certificates last, in years. Rotation (a new CA and
/// certificate distributed through the replicated store) is for later.
const LIFETIME_YEARS: i32 = 100;

/// The cluster's CA certificate and the shared node certificate and key, PEM.
#[derive(Clone, Serialize, Deserialize)]
pub struct ClusterTls {
    pub ca_cert_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Drop for ClusterTls {
    fn drop(&mut self) {
        self.key_pem.zeroize();
    }
}

impl fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterTls")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

fn tls_error(what: &str, e: impl fmt::Display) -> ClusterError {
    ClusterError::Tls(format!("{what}: {e}"))
}

impl ClusterTls {
    /// A new cluster CA and node certificate (ECDSA P-256).
    pub fn generate() -> Result<ClusterTls, ClusterError> {
        let year = chrono::Utc::now().year();
        let validity = |params: &mut CertificateParams| {
            params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
            params.not_after = rcgen::date_time_ymd(year + LIFETIME_YEARS, 1, 1);
        };
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| tls_error("generate the cluster CA key", e))?;
        let mut ca = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| tls_error("cluster CA parameters", e))?;
        ca.distinguished_name
            .push(DnType::CommonName, "Keyhold cluster CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut ca);
        let ca_cert = ca
            .self_signed(&ca_key)
            .map_err(|e| tls_error("self-sign the cluster CA", e))?;
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| tls_error("generate the node key", e))?;
        let mut node = CertificateParams::new(vec![CLUSTER_SERVER_NAME.to_string()])
            .map_err(|e| tls_error("node certificate parameters", e))?;
        node.distinguished_name
            .push(DnType::CommonName, CLUSTER_SERVER_NAME);
        node.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        node.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        validity(&mut node);
        let cert = node
            .signed_by(&key, &issuer)
            .map_err(|e| tls_error("sign the node certificate", e))?;
        Ok(ClusterTls {
            ca_cert_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, ClusterError> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_cert_pem.as_bytes()) {
            roots
                .add(cert.map_err(|e| tls_error("parse the cluster CA", e))?)
                .map_err(|e| tls_error("add the cluster CA", e))?;
        }
        if roots.is_empty() {
            return Err(ClusterError::Tls(
                "the cluster CA PEM holds no certificate".into(),
            ));
        }
        Ok(Arc::new(roots))
    }

    fn identity(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ClusterError> {
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_error("parse the node certificate", e))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| tls_error("parse the node key", e))?;
        Ok((chain, key))
    }

    /// The listener's config: a client certificate issued by the cluster CA
    /// is required, or the handshake fails.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, ClusterError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone())
            .build()
            .map_err(|e| tls_error("build the client certificate verifier", e))?;
        let (chain, key) = self.identity()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error("TLS versions", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| tls_error("the node certificate and key", e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The client's config: presents the node certificate and accepts only
    /// a server certificate for [`CLUSTER_SERVER_NAME`] from the cluster CA,
    /// whatever `IP:PORT` was dialled.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, ClusterError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let webpki = WebPkiServerVerifier::builder_with_provider(self.roots()?, provider.clone())
            .build()
            .map_err(|e| tls_error("build the server certificate verifier", e))?;
        let (chain, key) = self.identity()?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error("TLS versions", e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::client::tls::NameOverride {
                inner: webpki,
                name: ServerName::try_from(CLUSTER_SERVER_NAME).expect("a valid DNS name"),
            }))
            .with_client_auth_cert(chain, key)
            .map_err(|e| tls_error("the node certificate and key", e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

#[cfg(test)]
impl ClusterTls {
    /// A client that trusts the cluster CA but presents no certificate.
    pub(crate) fn anonymous_client_config(&self) -> rustls::ClientConfig {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let webpki =
            WebPkiServerVerifier::builder_with_provider(self.roots().unwrap(), provider.clone())
                .build()
                .unwrap();
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::client::tls::NameOverride {
                inner: webpki,
                name: ServerName::try_from(CLUSTER_SERVER_NAME).unwrap(),
            }))
            .with_no_client_auth()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_material_builds_both_configs_and_redacts_the_key() {
        let tls = ClusterTls::generate().unwrap();
        tls.server_config().unwrap();
        tls.client_config().unwrap();
        let debug = format!("{tls:?}");
        assert!(debug.contains("<redacted>"));
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        let json = serde_json::to_string(&tls).unwrap();
        let back: ClusterTls = serde_json::from_str(&json).unwrap();
        assert_eq!(back.key_pem, tls.key_pem);
    }
}
