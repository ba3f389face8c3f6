//! A throw-away certificate authority for one test: CA, node (server) certificates and client
//! certificates, written as PEM files with private keys kept 0600, as an operator would lay them out.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A CA that can issue server and client certificates.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// Where the CA certificate was written.
    pub ca_path: PathBuf,
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Where an issued certificate and key were written.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// Creates a new CA named `name` and writes its certificate to `dir/<name>.pem`.
    pub fn new(dir: &Path, name: &str) -> Result<Pki> {
        let key = KeyPair::generate().context("generate CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).context("self-sign CA")?;
        let ca_pem = cert.pem();
        let ca_path = dir.join(format!("{name}.pem"));
        fs::write(&ca_path, &ca_pem).with_context(|| format!("write {}", ca_path.display()))?;
        Ok(Pki {
            issuer: Issuer::new(params, key),
            ca_pem,
            ca_path,
        })
    }

    /// Issues a server certificate for the given DNS names and IP addresses.
    pub fn issue_server(&self, common_name: &str, names: &[String]) -> Result<IssuedCert> {
        self.issue(common_name, names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// Issues a client certificate (for listeners that require and verify client certificates).
    pub fn issue_client(&self, common_name: &str) -> Result<IssuedCert> {
        self.issue(common_name, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(
        &self,
        common_name: &str,
        names: &[String],
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<IssuedCert> {
        let key = KeyPair::generate().context("generate leaf key")?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("sign certificate for {common_name}"))?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl IssuedCert {
    /// Writes `dir/<stem>.crt` and `dir/<stem>.key` (0600). Each file is written beside its final
    /// name and renamed into place, so a server reloading on SIGHUP never reads half a file.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<CertFiles> {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        write_atomically(&cert, self.cert_pem.as_bytes(), 0o644)?;
        write_atomically(&key, self.key_pem.as_bytes(), 0o600)?;
        Ok(CertFiles { cert, key })
    }

    /// The certificate and key concatenated, as reqwest's `Identity::from_pem` wants them.
    pub fn identity_pem(&self) -> Vec<u8> {
        format!("{}\n{}", self.cert_pem, self.key_pem).into_bytes()
    }

    /// The DER bytes of the certificate, to compare with what a server presents.
    pub fn cert_der(&self) -> Result<Vec<u8>> {
        pem_to_der(&self.cert_pem)
    }
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("rename into {}", path.display()))?;
    Ok(())
}

/// Decodes the first certificate in `pem` to DER.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).context("decode PEM certificate")?;
    Ok(der.to_vec())
}
