//! The environment's certificate authority, the node and client certificates it issues, and
//! reading certificates back (`provision certs show`, and deciding when a node's must be reissued).

use std::fmt;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde::Serialize;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use zeroize::Zeroizing;

use crate::state::{fingerprint, write_atomic, CertRecord};

/// The CA certificate's file name in the TLS directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA key's file name in the TLS directory (0600).
pub const CA_KEY_FILE: &str = "ca.key";

/// How far back a new certificate's validity starts, so that a host whose clock is a little
/// behind ours does not reject it as not yet valid.
const BACKDATE: chrono::Duration = chrono::Duration::minutes(5);

/// One environment's CA, able to issue certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    info: CertInfo,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("subject", &self.info.subject)
            .field("fingerprint_sha256", &self.info.fingerprint_sha256)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads the CA from `dir/ca.crt` and `dir/ca.key`, or creates both when neither exists.
    /// The flag is true when the CA was created; `lifetime` applies only then. A pair that is
    /// half there, or whose key is not the certificate's, is refused: replacing the CA would
    /// silently invalidate every certificate it issued.
    pub fn ensure(dir: &Path, env_name: &str, lifetime: Duration) -> Result<(Ca, bool)> {
        Ca::ensure_files(
            &dir.join(CA_CERT_FILE),
            &dir.join(CA_KEY_FILE),
            &format!("Keyhold {env_name} CA"),
            lifetime,
        )
    }

    /// [`Ca::ensure`] with the files and the name of a new CA given: the next CA of a
    /// rotation lives beside the current one until it replaces it.
    pub fn ensure_files(
        cert_path: &Path,
        key_path: &Path,
        common_name: &str,
        lifetime: Duration,
    ) -> Result<(Ca, bool)> {
        let (cert_path, key_path) = (cert_path.to_path_buf(), key_path.to_path_buf());
        let exists = |path: &Path| {
            path.try_exists()
                .with_context(|| format!("look for {}", path.display()))
        };
        let new_ca = "create a new CA (every node certificate is then reissued, and clients \
                      must trust the new CA)";
        match (exists(&cert_path)?, exists(&key_path)?) {
            (true, true) => Ok((Ca::load(&cert_path, &key_path)?, false)),
            (false, false) => Ok((
                Ca::create(&cert_path, &key_path, common_name, lifetime)?,
                true,
            )),
            (true, false) => bail!(
                "found the CA certificate {} but not its key {}: restore the key from a backup, \
                 or remove the certificate to {new_ca}",
                cert_path.display(),
                key_path.display()
            ),
            (false, true) => bail!(
                "found the CA key {} but not its certificate {}: restore the certificate from a \
                 backup, or remove the key to {new_ca}",
                key_path.display(),
                cert_path.display()
            ),
        }
    }

    fn create(
        cert_path: &Path,
        key_path: &Path,
        common_name: &str,
        lifetime: Duration,
    ) -> Result<Ca> {
        let key = KeyPair::generate().context("generate the CA key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = named(common_name);
        // Path length 0: this CA signs node and client certificates, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = Utc::now();
        set_validity(&mut params, now - BACKDATE, add(now, lifetime)?)?;
        let cert = params
            .self_signed(&key)
            .context("self-sign the CA certificate")?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        // The key first: a crash in between leaves a key without a certificate, which `ensure`
        // reports, rather than a certificate nobody can issue under.
        write_atomic(key_path, key_pem.as_bytes(), 0o600)
            .with_context(|| format!("write CA key to {}", key_path.display()))?;
        write_atomic(cert_path, cert.pem().as_bytes(), 0o644)
            .with_context(|| format!("write CA certificate to {}", cert_path.display()))?;
        Ok(Ca {
            info: CertInfo::from_x509(&parse_der(cert.der())?)?,
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads an existing CA; during a rotation the certificate file may hold more than one
    /// certificate, and the one for the key is taken.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Ca> {
        let reading_cert = || format!("read CA certificate {}", cert_path.display());
        let file_pem = fs::read_to_string(cert_path).with_context(reading_cert)?;
        let key_pem = Zeroizing::new(
            fs::read_to_string(key_path)
                .with_context(|| format!("read CA key {}", key_path.display()))?,
        );
        let key = KeyPair::from_pem(&key_pem).with_context(|| {
            format!("read CA key {}: not a PEM private key", key_path.display())
        })?;
        // During a CA rotation the file is a bundle (old and new CA): the CA is the one whose
        // key this is; with one certificate, any mismatch is reported below.
        let blocks = certificate_blocks(&file_pem);
        let cert_pem = blocks
            .iter()
            .find(|block| {
                pem_to_der(block).ok().is_some_and(|der| {
                    parse_der(&der).is_ok_and(|x509| {
                        x509.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
                    })
                })
            })
            .or(blocks.first())
            .cloned()
            .unwrap_or(file_pem);
        let der = pem_to_der(&cert_pem).with_context(reading_cert)?;
        let x509 = parse_der(&der).with_context(reading_cert)?;
        let info = CertInfo::from_x509(&x509).with_context(reading_cert)?;
        if !info.is_ca {
            bail!(
                "{} is not a CA certificate (it has no basicConstraints CA:TRUE); restore the \
                 environment's CA certificate, or remove {} and {} to create a new CA",
                cert_path.display(),
                cert_path.display(),
                key_path.display()
            );
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            bail!(
                "{} and {} do not belong together (the certificate is not for this key); restore \
                 the matching pair from a backup, or remove both to create a new CA (every node \
                 certificate is then reissued, and clients must trust the new CA)",
                cert_path.display(),
                key_path.display()
            );
        }
        let issuer = Issuer::from_ca_cert_der(&der.into(), key)
            .with_context(|| format!("load the CA from {}", cert_path.display()))?;
        Ok(Ca {
            issuer,
            cert_pem,
            info,
        })
    }

    /// The CA certificate, PEM: what nodes and clients trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    /// A node certificate: for serving the API and cluster ports, and for dialling other nodes
    /// (so both server and client authentication).
    pub fn issue_server(
        &self,
        common_name: &str,
        dns_names: &[String],
        ips: &[IpAddr],
        lifetime: Duration,
    ) -> Result<Issued> {
        let mut sans = Vec::new();
        for name in dns_names {
            if name.parse::<IpAddr>().is_ok() {
                bail!("{name:?} is an IP address: give it as one, not as a DNS name");
            }
            let san = SanType::DnsName(
                Ia5String::try_from(name.as_str())
                    .with_context(|| format!("DNS name {name:?} for {common_name}"))?,
            );
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        for ip in ips {
            let san = SanType::IpAddress(*ip);
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        if sans.is_empty() {
            bail!(
                "a server certificate for {common_name} needs at least one DNS name or IP address"
            );
        }
        self.issue(
            common_name,
            sans,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            lifetime,
        )
    }

    /// A client certificate, for the cluster port or a listener that requires one.
    pub fn issue_client(&self, common_name: &str, lifetime: Duration) -> Result<Issued> {
        self.issue(
            common_name,
            Vec::new(),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            lifetime,
        )
    }

    fn issue(
        &self,
        common_name: &str,
        subject_alt_names: Vec<SanType>,
        extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
        lifetime: Duration,
    ) -> Result<Issued> {
        let key = Zeroizing::new(KeyPair::generate().context("generate a key")?);
        let mut params = CertificateParams::default();
        params.distinguished_name = named(common_name);
        params.subject_alt_names = subject_alt_names;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = extended_key_usages;
        params.use_authority_key_identifier_extension = true;
        let now = Utc::now();
        // Not past the CA: a certificate outliving its issuer is invalid from then on anyway.
        let not_after = add(now, lifetime)?.min(self.info.not_after);
        set_validity(&mut params, now - BACKDATE, not_after)?;
        let cert = params
            .signed_by(&*key, &self.issuer)
            .with_context(|| format!("sign the certificate for {common_name}"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }
}

/// A certificate and its private key, PEM. The key is cleared from memory when dropped and
/// never printed by `Debug`.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
}

impl Issued {
    pub fn info(&self) -> Result<CertInfo> {
        inspect_pem(&self.cert_pem)
    }
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

/// Writes a certificate (0644) and its key (0600, from the moment the file exists), each
/// atomically, so that a server reloading on SIGHUP never reads half a file. Missing parent
/// directories are created 0700.
pub fn write_pair(cert_path: &Path, key_path: &Path, issued: &Issued) -> Result<()> {
    write_atomic(key_path, issued.key_pem.as_bytes(), 0o600)
        .with_context(|| format!("write key to {}", key_path.display()))?;
    write_atomic(cert_path, issued.cert_pem.as_bytes(), 0o644)
        .with_context(|| format!("write certificate to {}", cert_path.display()))
}

/// Splits names given as text (as `tls.extra_sans`) into DNS names and IP addresses.
pub fn split_sans(names: &[String]) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for name in names {
        match name.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(name.clone()),
        }
    }
    (dns, ips)
}

/// What `provision certs show` prints about a certificate, and what reissuing decides on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// As `CN=keyhold-1`.
    pub subject: String,
    pub issuer: String,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<String>,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// Lowercase hex.
    pub serial: String,
    /// SHA-256 of the DER, lowercase hex.
    pub fingerprint_sha256: String,
    pub is_ca: bool,
    /// Hex; identifies the certificate's key (set on every certificate issued here).
    pub subject_key_id: Option<String>,
    /// Hex; the issuing CA's subject key id.
    pub authority_key_id: Option<String>,
}

fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>> {
    let (_, x509) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    Ok(x509)
}

impl CertInfo {
    fn from_x509(x509: &X509Certificate<'_>) -> Result<CertInfo> {
        let mut info = CertInfo {
            subject: x509.subject().to_string(),
            issuer: x509.issuer().to_string(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            not_before: to_chrono(x509.validity().not_before.timestamp())?,
            not_after: to_chrono(x509.validity().not_after.timestamp())?,
            serial: hex::encode(x509.raw_serial()),
            fingerprint_sha256: fingerprint(x509.as_raw()),
            is_ca: x509.is_ca(),
            subject_key_id: None,
            authority_key_id: None,
        };
        read_extensions(x509, &mut info)?;
        Ok(info)
    }
}

fn read_extensions(x509: &X509Certificate<'_>, info: &mut CertInfo) -> Result<()> {
    for extension in x509.iter_extensions() {
        match extension.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(dns) => info.dns_names.push(dns.to_string()),
                        GeneralName::IPAddress(bytes) => {
                            info.ip_addresses.push(ip_to_string(bytes))
                        }
                        _ => {}
                    }
                }
            }
            ParsedExtension::SubjectKeyIdentifier(id) => {
                info.subject_key_id = Some(hex::encode(id.0));
            }
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                info.authority_key_id = aki.key_identifier.as_ref().map(|id| hex::encode(id.0));
            }
            ParsedExtension::ParseError { error } => {
                bail!("bad {} extension: {error}", extension.oid)
            }
            _ => {}
        }
    }
    Ok(())
}

impl From<&CertInfo> for CertRecord {
    fn from(info: &CertInfo) -> CertRecord {
        CertRecord {
            fingerprint_sha256: info.fingerprint_sha256.clone(),
            not_after: info.not_after,
        }
    }
}

/// Reads the first certificate in a PEM file.
pub fn inspect_file(path: &Path) -> Result<CertInfo> {
    let pem =
        fs::read_to_string(path).with_context(|| format!("read certificate {}", path.display()))?;
    inspect_pem(&pem).with_context(|| format!("read certificate {}", path.display()))
}

/// Reads a certificate in DER (as a server presents it).
pub fn inspect_der(der: &[u8]) -> Result<CertInfo> {
    CertInfo::from_x509(&parse_der(der)?)
}

/// Each `CERTIFICATE` block of `pem`, as its own PEM text.
pub fn certificate_blocks(pem: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut blocks = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let end = start + len + END.len();
        blocks.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    blocks
}

/// Whether `ca` issued the certificate `info` describes (by key id, else by name).
pub fn issued_by(info: &CertInfo, ca: &CertInfo) -> bool {
    match (&info.authority_key_id, &ca.subject_key_id) {
        (Some(authority), Some(ca_key)) => authority == ca_key,
        _ => info.issuer == ca.subject,
    }
}

/// Reads the first certificate in `pem`.
pub fn inspect_pem(pem: &str) -> Result<CertInfo> {
    CertInfo::from_x509(&parse_der(&pem_to_der(pem)?)?)
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("no PEM block ({e})"))?;
    if block.label != "CERTIFICATE" {
        // Only the label: the block may be a private key.
        bail!(
            "the first PEM block is a {}, not a CERTIFICATE",
            block.label
        );
    }
    Ok(block.contents)
}

/// Why a node's existing certificate must be reissued for the wanted names by `ca`, or `None`
/// when it can stay. Names in the certificate beyond the wanted ones are no reason.
pub fn reissue_reason(
    info: &CertInfo,
    wanted_dns: &[String],
    wanted_ips: &[IpAddr],
    ca: &CertInfo,
    renew_before: Duration,
) -> Option<String> {
    let mut reasons = Vec::new();

    if !issued_by(info, ca) {
        reasons.push(format!(
            "issued by another CA ({}{}) than the environment's",
            info.issuer,
            info.authority_key_id
                .as_ref()
                .map_or_else(String::new, |id| format!(", key id {id}"))
        ));
    }

    let mut missing = Vec::new();
    for name in wanted_dns {
        if !info.dns_names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            missing.push(format!("DNS name {name}"));
        }
    }
    for ip in wanted_ips {
        let ip = ip.to_string();
        if !info.ip_addresses.contains(&ip) {
            missing.push(format!("IP address {ip}"));
        }
    }
    if !missing.is_empty() {
        reasons.push(format!("missing {}", missing.join(", ")));
    }

    let now = Utc::now();
    let not_after = info.not_after.to_rfc3339_opts(SecondsFormat::Secs, true);
    match (info.not_after - now).to_std() {
        Err(_) => reasons.push(format!("expired at {not_after}")),
        Ok(left) if left <= renew_before => reasons.push(format!(
            "expires in {} (at {not_after}), within the renewal window of {}",
            humantime::format_duration(Duration::from_secs(left.as_secs() / 60 * 60)),
            humantime::format_duration(renew_before)
        )),
        Ok(_) => {}
    }

    (!reasons.is_empty()).then(|| reasons.join("; "))
}

fn named(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn add(at: DateTime<Utc>, lifetime: Duration) -> Result<DateTime<Utc>> {
    if lifetime.is_zero() {
        bail!("a certificate lifetime must be more than zero");
    }
    chrono::Duration::from_std(lifetime)
        .ok()
        .and_then(|d| at.checked_add_signed(d))
        .with_context(|| {
            format!(
                "a certificate lifetime of {} is too long",
                humantime::format_duration(lifetime)
            )
        })
}

fn set_validity(
    params: &mut CertificateParams,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
) -> Result<()> {
    let convert = |at: DateTime<Utc>| {
        time::OffsetDateTime::from_unix_timestamp(at.timestamp())
            .with_context(|| format!("certificate time {at} is out of range"))
    };
    params.not_before = convert(not_before)?;
    params.not_after = convert(not_after)?;
    Ok(())
}

fn to_chrono(unix_seconds: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp(unix_seconds, 0)
        .with_context(|| format!("certificate time {unix_seconds} is out of range"))
}

fn ip_to_string(bytes: &[u8]) -> String {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        Ipv4Addr::from(v4).to_string()
    } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        Ipv6Addr::from(v6).to_string()
    } else {
        format!("invalid IP address 0x{}", hex::encode(bytes))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::server::WebPkiClientVerifier;
    use rustls::RootCertStore;

    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);
    const YEAR: Duration = Duration::from_secs(365 * 24 * 60 * 60);

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn new_ca(dir: &Path) -> Ca {
        let (ca, created) = Ca::ensure(dir, "local", 10 * YEAR).unwrap();
        assert!(created);
        ca
    }

    fn node_cert(ca: &Ca) -> Issued {
        ca.issue_server(
            "keyhold-1",
            &["keyhold-1".to_string(), "lb.example.com".to_string()],
            &["127.0.1.1".parse().unwrap(), "::1".parse().unwrap()],
            YEAR,
        )
        .unwrap()
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn roots(ca_pem: &str) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(der(ca_pem)).unwrap();
        Arc::new(roots)
    }

    /// Verifies `cert_pem` as a server certificate for `name`, the way a TLS client would.
    fn verify_server(ca_pem: &str, cert_pem: &str, name: &str) -> Result<(), rustls::Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca_pem), provider)
            .build()
            .unwrap();
        let name = ServerName::try_from(name.to_string()).unwrap();
        verifier
            .verify_server_cert(&der(cert_pem), &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    /// Verifies `cert_pem` as a client certificate, the way a TLS server would.
    fn verify_client(ca_pem: &str, cert_pem: &str) -> Result<(), rustls::Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_pem), provider)
            .build()
            .unwrap();
        verifier
            .verify_client_cert(&der(cert_pem), &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn ensure_creates_the_ca_once_then_loads_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tls");
        let first = new_ca(&dir);
        assert_eq!(first.info().subject, "CN=Keyhold local CA");
        assert_eq!(first.info().issuer, first.info().subject);
        assert!(first.info().is_ca);
        assert!(first.info().subject_key_id.is_some());
        assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode(&dir.join(CA_CERT_FILE)), 0o644);
        assert_eq!(mode(&dir), 0o700);
        let key_before = fs::read(dir.join(CA_KEY_FILE)).unwrap();

        let (second, created) = Ca::ensure(&dir, "local", YEAR).unwrap();
        assert!(!created);
        assert_eq!(second.info(), first.info());
        assert_eq!(second.cert_pem(), first.cert_pem());
        assert_eq!(fs::read(dir.join(CA_KEY_FILE)).unwrap(), key_before);
        assert_eq!(
            inspect_file(&dir.join(CA_CERT_FILE))
                .unwrap()
                .fingerprint_sha256,
            first.info().fingerprint_sha256
        );
        let record = CertRecord::from(second.info());
        assert_eq!(record.fingerprint_sha256, first.info().fingerprint_sha256);
    }

    #[test]
    fn ca_validity_follows_the_lifetime() {
        let tmp = tempfile::tempdir().unwrap();
        let (ca, _) = Ca::ensure(tmp.path(), "ci", 2 * DAY).unwrap();
        let now = Utc::now();
        let left = ca.info().not_after - now;
        assert!(left > chrono::Duration::hours(47) && left <= chrono::Duration::hours(48));
        assert!(ca.info().not_before < now);
        assert_eq!(ca.info().subject, "CN=Keyhold ci CA");
    }

    #[test]
    fn half_a_ca_is_refused() {
        // (file left in place, what the error must say)
        let cases = [
            (CA_CERT_FILE, "found the CA certificate"),
            (CA_KEY_FILE, "found the CA key"),
        ];
        for (keep, want) in cases {
            let tmp = tempfile::tempdir().unwrap();
            new_ca(tmp.path());
            let other = if keep == CA_CERT_FILE {
                CA_KEY_FILE
            } else {
                CA_CERT_FILE
            };
            fs::remove_file(tmp.path().join(other)).unwrap();
            let before = fs::read(tmp.path().join(keep)).unwrap();
            let err = format!("{:#}", Ca::ensure(tmp.path(), "local", YEAR).unwrap_err());
            assert!(err.contains(want), "{err}");
            assert!(err.contains("restore"), "{err}");
            assert!(!tmp.path().join(other).exists(), "{other} was recreated");
            assert_eq!(fs::read(tmp.path().join(keep)).unwrap(), before);
        }
    }

    #[test]
    fn a_key_from_another_ca_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        new_ca(&a);
        new_ca(&b);
        fs::copy(b.join(CA_KEY_FILE), a.join(CA_KEY_FILE)).unwrap();
        let err = format!("{:#}", Ca::ensure(&a, "local", YEAR).unwrap_err());
        assert!(err.contains("do not belong together"), "{err}");
    }

    #[test]
    fn a_ca_file_that_is_not_a_certificate_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = new_ca(tmp.path());
        let leaf = node_cert(&ca);
        // (what ca.crt holds, what the error must say)
        let cases = [
            ("not pem at all", "no PEM block"),
            (leaf.key_pem.as_str(), "PRIVATE KEY, not a CERTIFICATE"),
            (leaf.cert_pem.as_str(), "is not a CA certificate"),
        ];
        for (contents, want) in cases {
            fs::write(tmp.path().join(CA_CERT_FILE), contents).unwrap();
            let err = format!("{:#}", Ca::ensure(tmp.path(), "local", YEAR).unwrap_err());
            assert!(err.contains(want), "{want}: {err}");
            assert!(err.contains(CA_CERT_FILE), "{err}");
            assert!(
                !err.contains("BEGIN"),
                "the file's contents were echoed: {err}"
            );
        }
    }

    #[test]
    fn a_server_certificate_verifies_for_each_of_its_names() {
        let tmp = tempfile::tempdir().unwrap();
        new_ca(tmp.path());
        // Issue with the CA as loaded from disk, as every run after the first does.
        let (ca, _) = Ca::ensure(tmp.path(), "local", YEAR).unwrap();
        let issued = node_cert(&ca);
        for name in ["keyhold-1", "lb.example.com", "127.0.1.1", "::1"] {
            verify_server(ca.cert_pem(), &issued.cert_pem, name)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        // Nodes dial each other with the same certificate.
        verify_client(ca.cert_pem(), &issued.cert_pem).unwrap();

        for name in ["keyhold-2", "127.0.1.2"] {
            assert!(
                verify_server(ca.cert_pem(), &issued.cert_pem, name).is_err(),
                "{name}"
            );
        }
        let other = Ca::ensure(&tmp.path().join("other"), "local", YEAR)
            .unwrap()
            .0;
        assert!(verify_server(other.cert_pem(), &issued.cert_pem, "keyhold-1").is_err());
    }

    #[test]
    fn a_client_certificate_verifies_as_a_client_only() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = new_ca(tmp.path());
        let issued = ca.issue_client("provision", YEAR).unwrap();
        verify_client(ca.cert_pem(), &issued.cert_pem).unwrap();
        let info = issued.info().unwrap();
        assert_eq!(info.subject, "CN=provision");
        assert!(info.dns_names.is_empty() && info.ip_addresses.is_empty());
    }

    #[test]
    fn an_issued_key_belongs_to_its_certificate() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = new_ca(tmp.path());
        let issued = node_cert(&ca);
        let key = KeyPair::from_pem(&issued.key_pem).unwrap();
        let cert = der(&issued.cert_pem);
        let (_, x509) = x509_parser::parse_x509_certificate(&cert).unwrap();
        assert_eq!(
            x509.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
    }

    #[test]
    fn names_round_trip_through_inspect() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = new_ca(tmp.path());
        let issued = node_cert(&ca);
        let info = inspect_pem(&issued.cert_pem).unwrap();
        assert_eq!(info.subject, "CN=keyhold-1");
        assert_eq!(info.issuer, "CN=Keyhold local CA");
        assert_eq!(info.dns_names, ["keyhold-1", "lb.example.com"]);
        assert_eq!(info.ip_addresses, ["127.0.1.1", "::1"]);
        assert!(!info.is_ca);
        assert_eq!(info.authority_key_id, ca.info().subject_key_id);
        assert_eq!(
            info.fingerprint_sha256,
            fingerprint(der(&issued.cert_pem).as_ref())
        );
        assert!(!info.serial.is_empty() && info.serial.chars().all(|c| c.is_ascii_hexdigit()));
        let left = info.not_after - Utc::now();
        assert!(left > chrono::Duration::days(364) && left <= chrono::Duration::days(365));
        assert!(reissue_reason(
            &info,
            &["keyhold-1".to_string()],
            &["127.0.1.1".parse().unwrap()],
            ca.info(),
            30 * DAY
        )
        .is_none());
    }

    #[test]
    fn duplicate_names_are_issued_once() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = new_ca(tmp.path());
        let ip: IpAddr = "127.0.1.1".parse().unwrap();
        let issued = ca
            .issue_server("n", &["a".into(), "a".into()], &[ip, ip], YEAR)
            .unwrap();
        let info = issued.info().unwrap();
        assert_eq!(info.dns_names, ["a"]);
        assert_eq!(info.ip_addresses, ["127.0.1.1"]);
    }

    #[test]
    fn a_certificate_does_not_outlive_its_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let (ca, _) = Ca::ensure(tmp.path(), "local", DAY).unwrap();
        let info = ca.issue_client("c", YEAR).unwrap().info().unwrap();
        assert!(info.not_after <= ca.info().not_after);
    }

    #[test]
    fn bad_issue_requests_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = new_ca(tmp.path());
        // (DNS names, IPs, lifetime, what the error must say)
        let cases: [(&[&str], &[&str], Duration, &str); 4] = [
            (&[], &[], YEAR, "needs at least one DNS name or IP address"),
            (&["10.0.0.1"], &[], YEAR, "is an IP address"),
            (&["nœud"], &[], YEAR, "DNS name \"nœud\""),
            (&["a"], &[], Duration::ZERO, "more than zero"),
        ];
        for (dns, ips, lifetime, want) in cases {
            let dns: Vec<String> = dns.iter().map(|s| s.to_string()).collect();
            let ips: Vec<IpAddr> = ips.iter().map(|s| s.parse().unwrap()).collect();
            let err = format!(
                "{:#}",
                ca.issue_server("n", &dns, &ips, lifetime).unwrap_err()
            );
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn write_pair_keeps_the_key_private() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = new_ca(tmp.path());
        let issued = node_cert(&ca);
        let dir = tmp.path().join("nodes/keyhold-1/tls");
        let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
        for _ in 0..2 {
            write_pair(&cert, &key, &issued).unwrap();
            assert_eq!(mode(&key), 0o600);
            assert_eq!(mode(&cert), 0o644);
        }
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(fs::read_to_string(&key).unwrap(), *issued.key_pem);
        assert_eq!(inspect_file(&cert).unwrap(), issued.info().unwrap());
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            2,
            "temporary files left"
        );
    }

    #[test]
    fn debug_output_shows_no_key() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = new_ca(tmp.path());
        let issued = node_cert(&ca);
        for debug in [format!("{issued:?}"), format!("{ca:?}")] {
            assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        }
    }

    #[test]
    fn inspect_file_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("junk.crt");
        fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = format!("{:#}", inspect_file(&path).unwrap_err());
        assert!(err.contains("junk.crt"), "{err}");
        assert!(err.contains("not an X.509 certificate"), "{err}");
    }

    #[test]
    fn split_sans_separates_addresses_from_names() {
        let names = ["lb.example.com", "10.0.0.1", "fd00::1", "keyhold"].map(String::from);
        let (dns, ips) = split_sans(&names);
        assert_eq!(dns, ["lb.example.com", "keyhold"]);
        assert_eq!(
            ips,
            [
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "fd00::1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn a_certificate_from_a_recreated_ca_of_the_same_name_is_reissued() {
        let tmp = tempfile::tempdir().unwrap();
        let old = new_ca(&tmp.path().join("old"));
        let new = new_ca(&tmp.path().join("new"));
        assert_eq!(old.info().subject, new.info().subject);
        let info = node_cert(&old).info().unwrap();
        let reason = reissue_reason(&info, &[], &[], new.info(), DAY).unwrap();
        assert!(
            reason.starts_with("issued by another CA (CN=Keyhold local CA, key id "),
            "{reason}"
        );
    }

    #[test]
    fn reissue_reasons() {
        let ca = CertInfo {
            subject: "CN=Keyhold local CA".into(),
            issuer: "CN=Keyhold local CA".into(),
            dns_names: vec![],
            ip_addresses: vec![],
            not_before: Utc::now() - chrono::Duration::days(1),
            not_after: Utc::now() + chrono::Duration::days(3650),
            serial: "01".into(),
            fingerprint_sha256: "ca".into(),
            is_ca: true,
            subject_key_id: Some("aa".into()),
            authority_key_id: Some("aa".into()),
        };
        let base = CertInfo {
            subject: "CN=keyhold-1".into(),
            dns_names: vec!["keyhold-1".into(), "lb.example.com".into()],
            ip_addresses: vec!["127.0.1.1".into(), "::1".into()],
            not_after: Utc::now() + chrono::Duration::days(365),
            serial: "02".into(),
            fingerprint_sha256: "node".into(),
            is_ca: false,
            subject_key_id: Some("bb".into()),
            ..ca.clone()
        };
        fn days(n: i64) -> DateTime<Utc> {
            Utc::now() + chrono::Duration::days(n)
        }
        type Edit = fn(&mut CertInfo);
        let wanted_dns = ["keyhold-1".to_string(), "LB.example.com".to_string()];
        let wanted_ips: [IpAddr; 2] = ["127.0.1.1".parse().unwrap(), "::1".parse().unwrap()];
        // (what is changed in a certificate that is fine, what the reason must contain; "" for
        // no reason)
        let cases: Vec<(&str, Edit, &str)> = vec![
            ("as wanted", |_| {}, ""),
            (
                "extra names",
                |c| c.dns_names.push("old.example.com".into()),
                "",
            ),
            (
                "missing a DNS name",
                |c| c.dns_names.retain(|n| n != "lb.example.com"),
                "missing DNS name LB.example.com",
            ),
            (
                "missing an IP",
                |c| c.ip_addresses.retain(|n| n != "::1"),
                "missing IP address ::1",
            ),
            (
                "missing both",
                |c| {
                    c.dns_names.clear();
                    c.ip_addresses.clear()
                },
                "missing DNS name keyhold-1, DNS name LB.example.com, IP address 127.0.1.1, \
                 IP address ::1",
            ),
            (
                "expires within the window",
                |c| c.not_after = days(10),
                "expires in 9days 23h 59m",
            ),
            (
                "expires just outside the window",
                |c| c.not_after = days(31),
                "",
            ),
            ("expired", |c| c.not_after = days(-1), "expired at "),
            (
                "another CA by key id",
                |c| c.authority_key_id = Some("cc".into()),
                "issued by another CA (CN=Keyhold local CA, key id cc)",
            ),
            (
                "no key id, another issuer",
                |c| {
                    c.authority_key_id = None;
                    c.issuer = "CN=Someone else".into()
                },
                "issued by another CA (CN=Someone else)",
            ),
            ("no key id, same issuer", |c| c.authority_key_id = None, ""),
            (
                "several reasons",
                |c| {
                    c.authority_key_id = Some("cc".into());
                    c.not_after = days(-1)
                },
                "than the environment's; expired at",
            ),
        ];
        for (name, edit, want) in cases {
            let mut info = base.clone();
            edit(&mut info);
            let got = reissue_reason(&info, &wanted_dns, &wanted_ips, &ca, 30 * DAY);
            match (want, got) {
                ("", None) => {}
                ("", Some(reason)) => panic!("{name}: unexpected reason {reason:?}"),
                (_, None) => panic!("{name}: no reason, wanted {want:?}"),
                (_, Some(reason)) => assert!(reason.contains(want), "{name}: {reason:?}"),
            }
        }
    }
}
