//! rustls configurations for Ferry's mutual TLS (TLS 1.3 only, ring provider).
//!
//! * [`server_config`] — the control plane: presents its chain (leaf + CA, so enrolling agents
//!   can pin the CA), verifies client certificates against the CA roots when they are offered,
//!   and admits certificate-less clients only for enrollment (the caller enforces that).
//! * [`client_config`] — an enrolled agent: presents its certificate, trusts only Ferry's CA.
//! * [`enrollment_client_config`] — an agent that has only a token: trusts the server's chain
//!   only if it contains a CA whose SHA-256 fingerprint equals the one in the token.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;

use crate::{CertError, fingerprint, pem_to_der};

/// The one crypto provider Ferry uses. Installing it as the process default is harmless when
/// another part of the process already did.
pub fn provider() -> Arc<CryptoProvider> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pems: &[&str]) -> Result<Arc<RootCertStore>, CertError> {
    let mut roots = RootCertStore::empty();
    for pem in ca_pems {
        roots.add(pem_to_der(pem)?)?;
    }
    Ok(Arc::new(roots))
}

fn chain(pem: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::InvalidCert(e.to_string()))?;
    if certs.is_empty() {
        return Err(CertError::InvalidCert("no certificate in PEM".into()));
    }
    Ok(certs)
}

fn key(pem: &str) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| CertError::InvalidCert(e.to_string()))
}

/// Server side. `chain_pem` is the server certificate followed by the CA certificate;
/// `trusted_ca_pems` are the roots client certificates must chain to (several during a CA
/// rotation's overlap window).
pub fn server_config(
    chain_pem: &str,
    key_pem: &str,
    trusted_ca_pems: &[&str],
    alpn: &[u8],
) -> Result<ServerConfig, CertError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(trusted_ca_pems)?, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| CertError::Tls(e.to_string()))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain(chain_pem)?, key(key_pem)?)?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

/// Client side for an enrolled agent: presents `cert_pem`/`key_pem`, trusts `ca_pem` only.
pub fn client_config(ca_pem: &str, cert_pem: &str, key_pem: &str, alpn: &[u8]) -> Result<ClientConfig, CertError> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&[ca_pem])?)
        .with_client_auth_cert(chain(cert_pem)?, key(key_pem)?)?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

/// Client side for enrollment: no client certificate; the server is trusted only if its chain
/// carries a CA with SHA-256 fingerprint `ca_fingerprint` (lowercase hex) that signed the leaf.
pub fn enrollment_client_config(ca_fingerprint: &str, alpn: &[u8]) -> Result<ClientConfig, CertError> {
    let provider = provider();
    let verifier = PinnedCaVerifier {
        fingerprint: ca_fingerprint.to_ascii_lowercase(),
        algorithms: provider.signature_verification_algorithms,
        provider: provider.clone(),
    };
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

/// Verifies a server chain against the CA it carries, after checking that CA's fingerprint
/// against the pin (kubeadm's discovery-hash idea, applied inside the handshake).
#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: String,
    algorithms: WebPkiSupportedAlgorithms,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c) == self.fingerprint)
            .ok_or(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Ca, Validity, csr_pem, generate_key};

    #[test]
    fn configs_build_from_issued_material() {
        let ca = Ca::generate("t").unwrap();
        let server = ca.issue_server(&["127.0.0.1".into()], Duration::from_secs(3600)).unwrap();
        let chain = format!("{}{}", server.cert_pem, ca.cert_pem());
        server_config(&chain, &server.key_pem, &[ca.cert_pem()], b"ferry/1").unwrap();
        let key = generate_key().unwrap();
        let issued = ca
            .sign_agent_csr(&csr_pem(&key, "a").unwrap(), "a-1", Validity::from_now(Duration::from_secs(60)))
            .unwrap();
        client_config(ca.cert_pem(), &issued.cert_pem, &key.serialize_pem(), b"ferry/1").unwrap();
        enrollment_client_config(&ca.fingerprint(), b"ferry/1").unwrap();
        assert!(client_config(ca.cert_pem(), "nope", &key.serialize_pem(), b"x").is_err());
    }
}
