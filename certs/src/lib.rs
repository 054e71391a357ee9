//! Ferry's own certificate authority and the rustls configurations built on it.
//!
//! * [`Ca`] — create/persist the CA (rcgen), issue the control plane's server certificate and
//!   sign agents' CSRs into short-lived client certificates naming `spiffe://ferry/agent/<id>`.
//! * [`tls`] — rustls client and server configurations for TLS 1.3 mutual authentication, and the
//!   fingerprint-pinning verifier an agent uses while it enrolls.
//! * [`inspect`] — read an agent id, serial and expiry back out of a DER certificate.
//!
//! Pure crypto and file I/O; no networking. Keys are ECDSA P-256 generated with ring.

pub mod inspect;
pub mod tls;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

pub use inspect::{CertInfo, agent_id_from_cert, cert_info};

/// The DNS name every control-plane certificate carries and agents verify, whatever address
/// they dial. Only Ferry's CA can issue it, and agent certificates cannot serve as server
/// certificates (their EKU is client-auth only), so the address may change freely.
pub const CONTROL_PLANE_NAME: &str = "control-plane.ferry.internal";
/// URI SAN prefix of agent certificates.
pub const AGENT_URI_PREFIX: &str = "spiffe://ferry/agent/";

/// How far back `not_before` is set, to tolerate modest clock skew between hosts.
const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),
    #[error("invalid certificate: {0}")]
    InvalidCert(String),
    #[error("invalid agent id {0:?}: use 1-64 characters from [a-z0-9-]")]
    InvalidAgentId(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("TLS configuration: {0}")]
    Tls(String),
}

impl From<rustls::Error> for CertError {
    fn from(e: rustls::Error) -> Self {
        CertError::Tls(e.to_string())
    }
}

/// A certificate issued by the CA.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub serial: String,
    pub not_after: OffsetDateTime,
}

/// A certificate together with the private key the CA generated for it (server certificates).
#[derive(Debug, Clone)]
pub struct IssuedWithKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The validity window of a certificate.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// Valid from a little before now for `lifetime`. The backdating (for clock skew) is at most
    /// a tenth of the lifetime, so that "renew when a third of the lifetime is left", computed
    /// from the certificate itself, still means what it says for short lifetimes.
    pub fn from_now(lifetime: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        Self { not_before: now - BACKDATE.min(lifetime / 10), not_after: now + lifetime }
    }
}

/// Ferry's certificate authority.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("fingerprint", &self.fingerprint()).finish_non_exhaustive()
    }
}

impl Ca {
    /// Generates a new CA valid for ten years.
    pub fn generate(common_name: &str) -> Result<Self, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Ferry");
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let v = Validity::from_now(Duration::from_secs(10 * 365 * 24 * 3600));
        params.not_before = v.not_before;
        params.not_after = v.not_after;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Self::from_parts(cert.pem(), key)
    }

    /// Loads a CA from its PEM certificate and PEM private key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        Self::from_parts(cert_pem.to_string(), key)
    }

    fn from_parts(cert_pem: String, key: KeyPair) -> Result<Self, CertError> {
        let cert_der = pem_to_der(&cert_pem)?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Self { cert_pem, cert_der, issuer })
    }

    /// Loads `ca.crt` + `ca.key` from `dir`, creating them (key mode 0600) on first use.
    pub fn load_or_create(dir: &Path, common_name: &str) -> Result<Self, CertError> {
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        if cert_path.exists() || key_path.exists() {
            let cert = read(&cert_path)?;
            let key = read(&key_path)?;
            return Self::from_pem(&cert, &key);
        }
        let ca = Self::generate(common_name)?;
        write_private(&key_path, &ca.issuer.key().serialize_pem())?;
        write_public(&cert_path, &ca.cert_pem)?;
        Ok(ca)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate's DER, lowercase hex: what bootstrap tokens carry.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }

    /// Issues the control plane's server certificate. It always names [`CONTROL_PLANE_NAME`];
    /// `extra_sans` adds DNS names or IP addresses.
    pub fn issue_server(&self, extra_sans: &[String], lifetime: Duration) -> Result<IssuedWithKey, CertError> {
        let key = KeyPair::generate()?;
        let mut sans = vec![CONTROL_PLANE_NAME.to_string()];
        sans.extend(extra_sans.iter().filter(|s| !s.is_empty()).cloned());
        sans.dedup();
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = dn("ferry control plane");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let v = Validity::from_now(lifetime);
        params.not_before = v.not_before;
        params.not_after = v.not_after;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedWithKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Signs an agent's CSR. Only the CSR's public key (and its proof of possession) is used:
    /// subject, SANs and usages are Ferry's, so an agent cannot ask for another identity.
    pub fn sign_agent_csr(&self, csr_pem: &str, agent_id: &str, validity: Validity) -> Result<Issued, CertError> {
        validate_agent_id(agent_id)?;
        let mut csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CertError::InvalidCsr(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(agent_id);
        params.subject_alt_names = vec![SanType::URI(
            format!("{AGENT_URI_PREFIX}{agent_id}")
                .try_into()
                .map_err(|_| CertError::InvalidAgentId(agent_id.into()))?,
        )];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial();
        let serial_hex = hex(&serial.to_bytes());
        params.serial_number = Some(serial);
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        csr.params = params;
        let cert = csr.signed_by(&self.issuer)?;
        Ok(Issued { cert_pem: cert.pem(), serial: serial_hex, not_after: validity.not_after })
    }
}

/// Generates a fresh agent key pair (ECDSA P-256).
pub fn generate_key() -> Result<KeyPair, CertError> {
    Ok(KeyPair::generate()?)
}

/// Loads a PEM private key.
pub fn key_from_pem(pem: &str) -> Result<KeyPair, CertError> {
    Ok(KeyPair::from_pem(pem)?)
}

/// Builds a PEM CSR for `key`. The subject is informational only; the CA ignores it.
pub fn csr_pem(key: &KeyPair, name: &str) -> Result<String, CertError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(name);
    Ok(params.serialize_request(key)?.pem()?)
}

/// Agent ids are short, lowercase and URI-safe.
pub fn validate_agent_id(id: &str) -> Result<(), CertError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok { Ok(()) } else { Err(CertError::InvalidAgentId(id.into())) }
}

/// SHA-256 of a DER certificate, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Parses the first certificate of a PEM document.
pub fn pem_to_der(pem: &str) -> Result<CertificateDer<'static>, CertError> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| CertError::InvalidCert(e.to_string()))
}

/// Writes a private file: created with mode 0600 before any byte is written.
pub fn write_private(path: &Path, contents: &str) -> Result<(), CertError> {
    let io = |source| CertError::Io { path: path.display().to_string(), source };
    let tmp = path.with_extension("tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

/// Writes a public file atomically (write to a temporary name, then rename).
pub fn write_public(path: &Path, contents: &str) -> Result<(), CertError> {
    let io = |source| CertError::Io { path: path.display().to_string(), source };
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

fn read(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::Io { path: path.display().to_string(), source })
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Ferry");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("system random number generator");
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte to strip
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_persists_with_private_key_mode_0600_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), "test ca").unwrap();
        let again = Ca::load_or_create(dir.path(), "test ca").unwrap();
        assert_eq!(ca.fingerprint(), again.fingerprint());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("ca.key")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A certificate signed by the reloaded CA names the same issuer.
        let key = generate_key().unwrap();
        let issued = again
            .sign_agent_csr(&csr_pem(&key, "x").unwrap(), "agent-1", Validity::from_now(Duration::from_secs(60)))
            .unwrap();
        let info = cert_info(&pem_to_der(&issued.cert_pem).unwrap()).unwrap();
        assert_eq!(info.agent_id.as_deref(), Some("agent-1"));
    }

    #[test]
    fn agent_certificate_names_the_ca_chosen_identity_not_the_csr_subject() {
        let ca = Ca::generate("t").unwrap();
        let key = generate_key().unwrap();
        let csr = csr_pem(&key, "i-want-to-be-admin").unwrap();
        let issued = ca.sign_agent_csr(&csr, "agent-7", Validity::from_now(Duration::from_secs(30))).unwrap();
        let der = pem_to_der(&issued.cert_pem).unwrap();
        let info = cert_info(&der).unwrap();
        assert_eq!(info.agent_id.as_deref(), Some("agent-7"));
        assert_eq!(info.serial, issued.serial);
        let left = info.not_after - OffsetDateTime::now_utc();
        assert!(left <= time::Duration::seconds(31) && left > time::Duration::seconds(20));
        assert_eq!(agent_id_from_cert(&der).unwrap(), "agent-7");
    }

    #[test]
    fn bad_csrs_and_ids_are_errors() {
        let ca = Ca::generate("t").unwrap();
        let v = Validity::from_now(Duration::from_secs(30));
        assert!(matches!(ca.sign_agent_csr("garbage", "agent-1", v), Err(CertError::InvalidCsr(_))));
        let key = generate_key().unwrap();
        let csr = csr_pem(&key, "x").unwrap();
        // Tamper with the CSR body: the signature check must fail.
        let mut lines: Vec<String> = csr.lines().map(str::to_string).collect();
        let mid = lines.len() / 2;
        let flipped: String = lines[mid]
            .chars()
            .map(|c| {
                if c == 'A' {
                    'B'
                } else if c == 'B' {
                    'A'
                } else {
                    c
                }
            })
            .collect();
        lines[mid] = flipped;
        assert!(ca.sign_agent_csr(&lines.join("\n"), "agent-1", v).is_err());
        for bad in ["", "Agent", "a/b", &"a".repeat(65)] {
            assert!(ca.sign_agent_csr(&csr, bad, v).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fingerprint_is_sha256_hex() {
        let ca = Ca::generate("t").unwrap();
        let fp = ca.fingerprint();
        assert_eq!(fp.len(), 64);
        assert!(fp.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(fp, Ca::generate("t").unwrap().fingerprint());
    }
}
