//! Reading identity and validity back out of DER certificates.

use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::{AGENT_URI_PREFIX, CertError, hex, validate_agent_id};

/// What Ferry needs to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Lowercase hex, as the CA recorded it.
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Present when the certificate has a `spiffe://ferry/agent/<id>` URI SAN.
    pub agent_id: Option<String>,
}

pub fn cert_info(der: &[u8]) -> Result<CertInfo, CertError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::InvalidCert(e.to_string()))?;
    let validity = cert.validity();
    let ts = |t: x509_parser::time::ASN1Time| {
        OffsetDateTime::from_unix_timestamp(t.timestamp()).map_err(|e| CertError::InvalidCert(e.to_string()))
    };
    let mut agent_id = None;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && let Some(id) = uri.strip_prefix(AGENT_URI_PREFIX)
                && validate_agent_id(id).is_ok()
            {
                agent_id = Some(id.to_string());
            }
        }
    }
    Ok(CertInfo {
        serial: hex(cert.raw_serial()),
        not_before: ts(validity.not_before)?,
        not_after: ts(validity.not_after)?,
        agent_id,
    })
}

/// The agent id named by an agent certificate's URI SAN.
pub fn agent_id_from_cert(der: &[u8]) -> Result<String, CertError> {
    cert_info(der)?.agent_id.ok_or_else(|| CertError::InvalidCert("no spiffe://ferry/agent/<id> URI SAN".into()))
}
