//! The cluster's TLS material and the rustls configurations built from it:
//! one CA and one node certificate shared by every member (as Vault's raft
//! TLS keyring), for the fixed name [`CLUSTER_SERVER_NAME`]. Both sides
//! authenticate: the listener requires a client certificate issued by the
//! cluster CA, and clients check the listener against the same CA. The
//! server keeps [`ClusterTls`] behind the barrier, so only a process holding
//! the unseal keys can join, vote or read replicated data.
//!
//! Rotation ([`ClusterTls::begin_rotation`], [`ClusterTls::advance`]) is a new
//! generation in three steps, each compatible with its neighbours so that
//! nodes may be one step apart while a change spreads through Raft: every
//! node trusts the old and the new CA ([`RotationPhase::TrustBoth`]), then
//! every node presents the new certificate ([`RotationPhase::PresentNew`]),
//! then the old CA is dropped. The active node moves to the next step only
//! when every member proves, on a fresh handshake made with
//! [`ClusterTls::probe_client_config`], that it has taken the current one.

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

/// How long generated certificates last, in years: rotation is an
/// operator's choice (`sys/storage/raft/cluster-tls/rotate`), not forced by expiry.
const LIFETIME_YEARS: i32 = 100;

/// Where the route a rotation probe asks for lives on the cluster port.
pub(crate) const PROBE_PATH: &str = "/v1/cluster/tls/probe";

/// The cluster's trusted CAs and the shared node certificate and key, PEM.
#[derive(Clone, Serialize, Deserialize)]
pub struct ClusterTls {
    /// Every CA a peer's certificate may come from: one, or the old and the
    /// new during a rotation.
    pub ca_cert_pem: String,
    /// The certificate this node presents, as server and as client.
    pub cert_pem: String,
    pub key_pem: String,
    /// Counts rotations begun; 0 for the keyring made at init.
    #[serde(default)]
    pub generation: u64,
    /// A rotation under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<PendingRotation>,
}

/// The step a rotation has reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RotationPhase {
    /// Every node trusts both CAs and still presents the old certificate.
    TrustBoth,
    /// Every node trusts both CAs and presents the new certificate.
    PresentNew,
}

/// The new CA and certificate of a rotation under way.
#[derive(Clone, Serialize, Deserialize)]
pub struct PendingRotation {
    pub phase: RotationPhase,
    pub new_ca_cert_pem: String,
    pub new_cert_pem: String,
    pub new_key_pem: String,
}

impl Drop for ClusterTls {
    fn drop(&mut self) {
        self.key_pem.zeroize();
    }
}

impl Drop for PendingRotation {
    fn drop(&mut self) {
        self.new_key_pem.zeroize();
    }
}

impl fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterTls")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .field("generation", &self.generation)
            .field("rotation", &self.rotation)
            .finish()
    }
}

impl fmt::Debug for PendingRotation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingRotation")
            .field("phase", &self.phase)
            .field("new_ca_cert_pem", &self.new_ca_cert_pem)
            .field("new_cert_pem", &self.new_cert_pem)
            .field("new_key_pem", &"<redacted>")
            .finish()
    }
}

/// SHA-256 of each certificate in `pem`, lowercase hex.
pub fn fingerprints(pem: &str) -> Vec<String> {
    use sha2::Digest;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(|c| c.ok())
        .map(|der| hex::encode(sha2::Sha256::digest(der.as_ref())))
        .collect()
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
            generation: 0,
            rotation: None,
        })
    }

    /// The first step of a rotation: a new CA and certificate, the new CA
    /// trusted beside the current one, the current certificate still
    /// presented. Refused while a rotation is under way.
    pub fn begin_rotation(&self) -> Result<ClusterTls, ClusterError> {
        if self.rotation.is_some() {
            return Err(ClusterError::Tls(
                "a cluster TLS rotation is already under way; wait for it to finish \
                 (GET sys/storage/raft/cluster-tls)"
                    .into(),
            ));
        }
        let mut fresh = ClusterTls::generate()?;
        let new_ca_cert_pem = std::mem::take(&mut fresh.ca_cert_pem);
        let new_cert_pem = std::mem::take(&mut fresh.cert_pem);
        let new_key_pem = std::mem::take(&mut fresh.key_pem);
        Ok(ClusterTls {
            ca_cert_pem: format!("{}\n{}", self.ca_cert_pem.trim_end(), new_ca_cert_pem),
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
            generation: self.generation + 1,
            rotation: Some(PendingRotation {
                phase: RotationPhase::TrustBoth,
                new_ca_cert_pem,
                new_cert_pem,
                new_key_pem,
            }),
        })
    }

    /// The next step of the rotation under way: present the new certificate,
    /// then drop the old CA. `None` when no rotation is under way.
    pub fn advance(&self) -> Option<ClusterTls> {
        let rotation = self.rotation.as_ref()?;
        Some(match rotation.phase {
            RotationPhase::TrustBoth => ClusterTls {
                ca_cert_pem: self.ca_cert_pem.clone(),
                cert_pem: rotation.new_cert_pem.clone(),
                key_pem: rotation.new_key_pem.clone(),
                generation: self.generation,
                rotation: Some({
                    let mut next = rotation.clone();
                    next.phase = RotationPhase::PresentNew;
                    next
                }),
            },
            RotationPhase::PresentNew => ClusterTls {
                ca_cert_pem: rotation.new_ca_cert_pem.clone(),
                cert_pem: rotation.new_cert_pem.clone(),
                key_pem: rotation.new_key_pem.clone(),
                generation: self.generation,
                rotation: None,
            },
        })
    }

    /// A client that succeeds against a peer only if the peer has taken the
    /// current step of the rotation: it presents the new certificate (the
    /// peer must trust the new CA) and, once the new certificate is being
    /// presented, trusts only the new CA (the peer must present it too).
    /// `None` when no rotation is under way.
    pub fn probe_client_config(&self) -> Option<Result<rustls::ClientConfig, ClusterError>> {
        let rotation = self.rotation.as_ref()?;
        let roots = match rotation.phase {
            RotationPhase::TrustBoth => &self.ca_cert_pem,
            RotationPhase::PresentNew => &rotation.new_ca_cert_pem,
        };
        Some(client_config_from(
            roots,
            &rotation.new_cert_pem,
            &rotation.new_key_pem,
        ))
    }

    /// What `sys/storage/raft/cluster-tls` shows: fingerprints, never keys.
    pub fn status(&self) -> serde_json::Value {
        let phase = match self.rotation.as_ref().map(|r| r.phase) {
            None => "stable",
            Some(RotationPhase::TrustBoth) => "trust_both",
            Some(RotationPhase::PresentNew) => "present_new",
        };
        serde_json::json!({
            "generation": self.generation,
            "phase": phase,
            "ca_fingerprints_sha256": fingerprints(&self.ca_cert_pem),
            "cert_fingerprint_sha256": fingerprints(&self.cert_pem).first(),
        })
    }

    /// Whether `other` has the same trust and identity (what a reload changes).
    pub fn same_material(&self, other: &ClusterTls) -> bool {
        self.ca_cert_pem == other.ca_cert_pem
            && self.cert_pem == other.cert_pem
            && self.key_pem == other.key_pem
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, ClusterError> {
        roots_from(&self.ca_cert_pem)
    }

    fn identity(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ClusterError> {
        identity_from(&self.cert_pem, &self.key_pem)
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
        client_config_from(&self.ca_cert_pem, &self.cert_pem, &self.key_pem)
    }
}

fn roots_from(ca_pem: &str) -> Result<Arc<RootCertStore>, ClusterError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
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

fn identity_from(
    cert_pem: &str,
    key_pem: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ClusterError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error("parse the node certificate", e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| tls_error("parse the node key", e))?;
    Ok((chain, key))
}

fn client_config_from(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<rustls::ClientConfig, ClusterError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let webpki = WebPkiServerVerifier::builder_with_provider(roots_from(ca_pem)?, provider.clone())
        .build()
        .map_err(|e| tls_error("build the server certificate verifier", e))?;
    let (chain, key) = identity_from(cert_pem, key_pem)?;
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

/// Whether the peer at `cluster_addr` has taken the current step of the
/// rotation in `tls` (see [`ClusterTls::probe_client_config`]): a fresh
/// handshake and one request, answered.
pub async fn probe(tls: &ClusterTls, cluster_addr: &str) -> Result<(), ClusterError> {
    let Some(config) = tls.probe_client_config() else {
        return Ok(());
    };
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(config?)
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| tls_error("build the probe client", e))?;
    let response = client
        .get(format!("https://{cluster_addr}{PROBE_PATH}"))
        .send()
        .await
        .map_err(|e| ClusterError::Tls(format!("probe {cluster_addr}: {e}")))?;
    if !response.status().is_success() {
        return Err(ClusterError::Tls(format!(
            "probe {cluster_addr}: answered {}",
            response.status()
        )));
    }
    Ok(())
}

impl super::RaftNode {
    /// Uses `tls` from now on: for new handshakes on this node's cluster
    /// listener and for its own RPCs. Open connections keep theirs.
    pub fn reload_tls(&self, tls: &ClusterTls) -> Result<(), ClusterError> {
        self.client.configure(tls)?;
        let listener = self.listener.lock().expect("listener lock").clone();
        if let Some(listener) = listener {
            listener.reload_tls(tls)?;
        }
        Ok(())
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

    /// A real handshake over an in-memory pipe, then one byte each way (a
    /// TLS 1.3 server refuses a client certificate only after the client
    /// thinks the handshake is done).
    async fn talks(server: rustls::ServerConfig, client: rustls::ClientConfig) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let serve = async move {
            let mut tls = acceptor.accept(a).await.ok()?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.ok()?;
            tls.write_all(&byte).await.ok()?;
            tls.flush().await.ok()
        };
        let call = async move {
            let name = ServerName::try_from("peer.example").unwrap();
            let mut tls = connector.connect(name, b).await.ok()?;
            tls.write_all(b"x").await.ok()?;
            tls.flush().await.ok()?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.ok()
        };
        let run = async { tokio::join!(serve, call) };
        match tokio::time::timeout(std::time::Duration::from_secs(10), run).await {
            Ok((Some(()), Some(_))) => true,
            Ok(_) => false,
            Err(_) => panic!("a handshake over a pipe neither finished nor failed in 10s"),
        }
    }

    #[tokio::test]
    async fn every_rotation_step_talks_to_its_neighbours_and_the_probe_proves_the_step() {
        let steps = {
            let s0 = ClusterTls::generate().unwrap();
            let s1 = s0.begin_rotation().unwrap();
            let s2 = s1.advance().unwrap();
            let s3 = s2.advance().unwrap();
            vec![s0, s1, s2, s3]
        };
        assert!(steps[1].begin_rotation().is_err(), "one rotation at a time");
        assert!(steps[3].rotation.is_none() && steps[3].advance().is_none());
        assert_eq!(steps[3].generation, 1);
        assert_eq!(fingerprints(&steps[1].ca_cert_pem).len(), 2);
        assert_eq!(
            fingerprints(&steps[3].ca_cert_pem),
            fingerprints(&steps[1].rotation.as_ref().unwrap().new_ca_cert_pem)
        );
        assert_ne!(steps[0].cert_pem, steps[3].cert_pem);
        for (i, server) in steps.iter().enumerate() {
            for (j, client) in steps.iter().enumerate() {
                let ok = talks(
                    server.server_config().unwrap(),
                    client.client_config().unwrap(),
                )
                .await;
                // Neighbours (nodes one step apart) talk; two steps apart they cannot.
                assert_eq!(ok, i.abs_diff(j) <= 1, "server at step {i}, client at {j}");
            }
        }
        // The probe of step k succeeds only against a node that took step k.
        for k in [1, 2] {
            for (i, server) in steps.iter().enumerate() {
                let probe = steps[k].probe_client_config().unwrap().unwrap();
                let ok = talks(server.server_config().unwrap(), probe).await;
                assert_eq!(ok, i >= k, "probe of step {k} against a node at step {i}");
            }
        }
        let status = steps[1].status();
        assert_eq!(status["phase"], "trust_both");
        assert!(!status.to_string().contains("PRIVATE"), "{status}");
        let debug = format!("{:?}", steps[1]);
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        let back: ClusterTls =
            serde_json::from_str(&serde_json::to_string(&steps[2]).unwrap()).unwrap();
        assert_eq!(
            back.rotation.as_ref().map(|r| r.phase),
            Some(RotationPhase::PresentNew)
        );
        // A keyring stored before rotation existed reads as generation 0.
        let old = serde_json::json!({
            "ca_cert_pem": steps[0].ca_cert_pem,
            "cert_pem": steps[0].cert_pem,
            "key_pem": steps[0].key_pem,
        });
        let old: ClusterTls = serde_json::from_value(old).unwrap();
        assert!(old.generation == 0 && old.rotation.is_none());
    }
}
