//! TLS for the agent link: TLS 1.3 only, ring backend, certificates from the
//! cluster CA.
//!
//! At join the agent knows only the CA's fingerprint (from the token), so it
//! connects with [`PinnedCaVerifier`], which accepts the server only if the
//! chain it presents contains a CA with that exact SHA-256 and the server
//! certificate verifies against that CA for the name dialled. The secret is
//! sent only after that handshake succeeded.

use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The one crypto provider Skiff uses: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    crate::sha256(der)
}

/// Errors loading certificates and keys.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("no PEM certificate found in {what}")]
    NoCertificate { what: String },
    #[error("no PEM private key found in {what}")]
    NoKey { what: String },
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// Parses every certificate in a PEM text.
pub fn certs_from_pem(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            what: what.to_owned(),
        });
    }
    Ok(certs)
}

/// Parses the first private key in a PEM text.
pub fn key_from_pem(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| PemError::NoKey {
        what: what.to_owned(),
    })
}

/// Checks the server against a CA known only by its fingerprint, and keeps
/// that CA so the caller can store it.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
    ca: Mutex<Option<CertificateDer<'static>>>,
}

impl PinnedCaVerifier {
    pub fn new(fingerprint: [u8; 32]) -> Arc<Self> {
        Arc::new(Self {
            fingerprint,
            provider: provider(),
            ca: Mutex::new(None),
        })
    }

    /// The CA certificate that matched, once a handshake succeeded.
    pub fn ca(&self) -> Option<CertificateDer<'static>> {
        self.ca.lock().ok().and_then(|g| g.clone())
    }
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
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the coordinator's CA does not match the fingerprint in the join token ({}); \
                     check the coordinator address and the token",
                    hex::encode(self.fingerprint)
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)?;
        if let Ok(mut slot) = self.ca.lock() {
            *slot = Some(ca.clone().into_owned());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is enabled on every Skiff connection.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS 1.3 client configuration that trusts only the CA with `fingerprint`,
/// for the join request. Returns the verifier so the CA can be read back.
pub fn join_client_config(
    fingerprint: [u8; 32],
) -> Result<(ClientConfig, Arc<PinnedCaVerifier>), PemError> {
    let verifier = PinnedCaVerifier::new(fingerprint);
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    Ok((config, verifier))
}

/// The agent's link configuration: trusts the cluster CA, presents the
/// agent's certificate, offers [`crate::protocol::ALPN_LINK`].
pub fn link_client_config(
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ClientConfig, PemError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![crate::protocol::ALPN_LINK.to_vec()];
    Ok(config)
}

/// Splits `host:port` (with `[v6]:port`) into a TLS server name and the address to dial.
pub fn server_name_of(addr: &str) -> Result<ServerName<'static>, String> {
    let host = match addr.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => h,
        _ => {
            return Err(format!(
                "invalid coordinator address {addr:?}: expected HOST:PORT"
            ));
        }
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .map_err(|_| format!("invalid coordinator host {host:?} in {addr:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        assert!(server_name_of("coord.example:7443").is_ok());
        assert!(server_name_of("127.0.0.1:7443").is_ok());
        assert!(server_name_of("[::1]:7443").is_ok());
        assert!(server_name_of("coord.example").is_err());
        assert!(server_name_of(":7443").is_err());
        assert!(server_name_of("bad host:1").is_err());
    }
}
