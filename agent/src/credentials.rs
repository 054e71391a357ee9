//! The agent's identity material: its certificate, private key and the CA it trusts, checked
//! for consistency whenever it is assembled.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ferry_certs::{CertInfo, cert_info, pem_to_der};
use rustls::pki_types::UnixTime;
use rustls::server::WebPkiClientVerifier;
use time::OffsetDateTime;

/// Inconsistent or unusable certificate material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CredentialError(pub String);

fn err(msg: impl fmt::Display) -> CredentialError {
    CredentialError(msg.to_string())
}

/// A certificate, its private key and the CA, known to belong together.
#[derive(Clone)]
pub struct Credentials {
    pub agent_id: String,
    pub ca_pem: String,
    pub cert_pem: String,
    key_pem: String,
    pub info: CertInfo,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("agent_id", &self.agent_id)
            .field("serial", &self.info.serial)
            .field("not_after", &self.info.not_after)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Assembles stored credentials: the certificate parses and names `agent_id`, the key
    /// matches the certificate and the CA parses. Expiry is deliberately not checked: an expired
    /// certificate is how the agent learns it must re-enroll.
    pub fn new(agent_id: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, CredentialError> {
        let der = pem_to_der(cert_pem).map_err(err)?;
        let info = cert_info(&der).map_err(err)?;
        match info.agent_id.as_deref() {
            Some(id) if id == agent_id => {}
            Some(id) => return Err(err(format!("the certificate names agent {id}, expected {agent_id}"))),
            None => return Err(err("the certificate names no agent (no spiffe://ferry/agent/<id> URI SAN)")),
        }
        // Building the TLS configuration parses the CA and the key and checks that the key is
        // the certificate's.
        ferry_certs::tls::client_config(ca_pem, cert_pem, key_pem, ferry_protocol::ALPN).map_err(err)?;
        Ok(Self {
            agent_id: agent_id.to_string(),
            ca_pem: ca_pem.to_string(),
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            info,
        })
    }

    /// Assembles freshly issued credentials (enrollment or renewal): on top of [`Self::new`],
    /// the certificate must be a client certificate signed by the CA and not yet expired.
    pub fn issued(agent_id: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, CredentialError> {
        let creds = Self::new(agent_id, ca_pem, cert_pem, key_pem)?;
        verify_signed_by_ca(ca_pem, cert_pem, &creds.info)?;
        if creds.is_expired(OffsetDateTime::now_utc()) {
            return Err(err(format!("the certificate already expired at {}", fmt_time(creds.info.not_after))));
        }
        Ok(creds)
    }

    /// Splits a `client.pem` (certificate chain then private key) and assembles it.
    pub fn from_client_pem(agent_id: &str, ca_pem: &str, client_pem: &str) -> Result<Self, CredentialError> {
        let (cert_pem, key_pem) = split_pem(client_pem)?;
        Self::new(agent_id, ca_pem, &cert_pem, &key_pem)
    }

    /// The `client.pem` contents: certificate PEM followed by the private key PEM.
    pub fn client_pem(&self) -> String {
        let mut s = self.cert_pem.clone();
        if !s.ends_with('\n') {
            s.push('\n');
        }
        s.push_str(&self.key_pem);
        s
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The rustls configuration of a session: present this certificate, trust only the CA.
    pub fn tls_config(&self) -> Result<rustls::ClientConfig, ferry_certs::CertError> {
        ferry_certs::tls::client_config(&self.ca_pem, &self.cert_pem, &self.key_pem, ferry_protocol::ALPN)
    }

    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        now >= self.info.not_after
    }
}

/// RFC 3339, for messages.
pub fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// Checks the signature chain and the client-auth usage. The check runs at the middle of the
/// certificate's validity window so that clock skew between the agent and the control plane
/// cannot turn a good certificate into a "not valid yet" error; expiry is checked separately.
fn verify_signed_by_ca(ca_pem: &str, cert_pem: &str, info: &CertInfo) -> Result<(), CredentialError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pem_to_der(ca_pem).map_err(err)?).map_err(err)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), ferry_certs::tls::provider())
        .build()
        .map_err(err)?;
    let mid: OffsetDateTime = info.not_before + (info.not_after - info.not_before) / 2i32;
    let at = UnixTime::since_unix_epoch(Duration::from_secs(mid.unix_timestamp().max(0) as u64));
    let der = pem_to_der(cert_pem).map_err(err)?;
    verifier
        .verify_client_cert(&der, &[], at)
        .map_err(|e| err(format!("the certificate is not a client certificate of our CA: {e}")))?;
    Ok(())
}

/// Splits PEM text into (certificates, the one private key).
fn split_pem(text: &str) -> Result<(String, String), CredentialError> {
    let mut certs = String::new();
    let mut keys = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(label) = line.strip_prefix("-----BEGIN ").and_then(|r| r.strip_suffix("-----")) {
            if current.is_some() {
                return Err(err("malformed PEM: BEGIN inside a block"));
            }
            current = Some((label.to_string(), format!("{line}\n")));
        } else if let Some(label) = line.strip_prefix("-----END ").and_then(|r| r.strip_suffix("-----")) {
            let Some((begin, mut block)) = current.take() else {
                return Err(err("malformed PEM: END without BEGIN"));
            };
            if begin != label {
                return Err(err(format!("malformed PEM: BEGIN {begin} ended by END {label}")));
            }
            block.push_str(line);
            block.push('\n');
            if label == "CERTIFICATE" {
                certs.push_str(&block);
            } else if label.ends_with("PRIVATE KEY") {
                keys.push(block);
            }
        } else if let Some((_, block)) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    if current.is_some() {
        return Err(err("malformed PEM: unterminated block"));
    }
    if certs.is_empty() {
        return Err(err("no certificate"));
    }
    match keys.len() {
        1 => Ok((certs, keys.remove(0))),
        0 => Err(err("no private key")),
        n => Err(err(format!("{n} private keys, expected one"))),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use ferry_certs::{Ca, Validity, csr_pem, generate_key};

    use super::*;

    /// A CA and credentials it issued for `agent_id`.
    pub(crate) fn issue(ca: &Ca, agent_id: &str, lifetime: Duration) -> Credentials {
        let key = generate_key().unwrap();
        let issued = ca.sign_agent_csr(&csr_pem(&key, "t").unwrap(), agent_id, Validity::from_now(lifetime)).unwrap();
        Credentials::issued(agent_id, ca.cert_pem(), &issued.cert_pem, &key.serialize_pem()).unwrap()
    }

    #[test]
    fn client_pem_round_trips() {
        let ca = Ca::generate("t").unwrap();
        let creds = issue(&ca, "agent-1", Duration::from_secs(600));
        let pem = creds.client_pem();
        let back = Credentials::from_client_pem("agent-1", ca.cert_pem(), &pem).unwrap();
        assert_eq!(back.cert_pem, creds.cert_pem);
        assert_eq!(back.key_pem(), creds.key_pem());
        assert_eq!(back.info, creds.info);
        assert!(!format!("{back:?}").contains("PRIVATE KEY"));
        back.tls_config().unwrap();
    }

    #[test]
    fn inconsistent_material_is_refused() {
        let ca = Ca::generate("t").unwrap();
        let creds = issue(&ca, "agent-1", Duration::from_secs(600));
        // Wrong agent id.
        assert!(Credentials::new("agent-2", ca.cert_pem(), &creds.cert_pem, creds.key_pem()).is_err());
        // Another key.
        let other = generate_key().unwrap().serialize_pem();
        assert!(Credentials::new("agent-1", ca.cert_pem(), &creds.cert_pem, &other).is_err());
        // Signed by another CA: fine to load, refused as freshly issued.
        let other_ca = Ca::generate("other").unwrap();
        assert!(Credentials::new("agent-1", other_ca.cert_pem(), &creds.cert_pem, creds.key_pem()).is_ok());
        assert!(Credentials::issued("agent-1", other_ca.cert_pem(), &creds.cert_pem, creds.key_pem()).is_err());
        // Broken PEM documents.
        for bad in ["", "garbage", &creds.cert_pem, creds.key_pem(), &creds.client_pem()[..40]] {
            assert!(Credentials::from_client_pem("agent-1", ca.cert_pem(), bad).is_err(), "{bad:?}");
        }
        let two_keys = format!("{}{}", creds.client_pem(), creds.key_pem());
        assert!(Credentials::from_client_pem("agent-1", ca.cert_pem(), &two_keys).is_err());
    }

    #[test]
    fn expiry() {
        let ca = Ca::generate("t").unwrap();
        let creds = issue(&ca, "agent-1", Duration::from_secs(600));
        let now = OffsetDateTime::now_utc();
        assert!(!creds.is_expired(now));
        assert!(creds.is_expired(now + time::Duration::seconds(601)));
    }
}
