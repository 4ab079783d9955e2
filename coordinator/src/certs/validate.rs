//! Checks a certificate chain and its private key before anything is
//! stored: PEM that parses, a leaf and optional intermediates in order,
//! a key that matches the leaf, DNS names a route can serve, not expired.
//! Every error names the problem and the fix, and never holds key bytes.

use base64::Engine as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use skiff_api_types::certs::MAX_CERTIFICATE_PEM_BYTES;
use x509_parser::pem::Pem;
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

/// Why a certificate or its key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("the {0} is larger than 64 KiB: pass one certificate chain and one key")]
    TooLarge(&'static str),
    #[error(
        "the certificate file holds no PEM certificate: pass the chain in PEM (-----BEGIN CERTIFICATE-----), leaf first"
    )]
    NoCertificate,
    #[error("the certificate file is not valid PEM ({0}): pass the chain in PEM, leaf first")]
    BadPem(String),
    #[error(
        "the certificate file holds a {0} block: pass only certificates there (leaf first, then intermediates), and the private key apart"
    )]
    WrongBlock(String),
    #[error(
        "certificate {index} of the chain is not a valid X.509 certificate ({reason}): pass the PEM your CA issued"
    )]
    BadCertificate { index: usize, reason: String },
    #[error(
        "certificate {index} of the chain is not the issuer of the one before it: put the leaf first, then each issuer in turn"
    )]
    OutOfOrder { index: usize },
    #[error(
        "certificate {index} of the chain does not carry a valid signature of its issuer: it was altered or is not the one your CA issued; pass the PEM your CA issued"
    )]
    BadSignature { index: usize },
    #[error(
        "the key file holds no private key: pass it in PEM (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY), unencrypted"
    )]
    NoKey,
    #[error(
        "the private key is of a type that cannot be served: use an RSA, ECDSA (P-256 or P-384) or Ed25519 key"
    )]
    UnsupportedKey,
    #[error(
        "the private key does not match the certificate's public key: pass the key the certificate was issued for"
    )]
    KeyMismatch,
    #[error("the certificate expired on {0}: renew it with its CA, then add the new one")]
    Expired(String),
    #[error(
        "the certificate names no DNS name in its subjectAltName: issue one for the domains of your routes"
    )]
    NoNames,
    #[error("the certificate names {name:?}, which no route can serve: {reason}")]
    BadName { name: String, reason: String },
}

/// A checked certificate: its chain and key normalised to PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Checked {
    /// DNS names of the leaf's subjectAltName, lower case, sorted, unique.
    pub domains: Vec<String>,
    /// The chain's certificates only, PEM.
    pub chain_pem: String,
    /// The private key, PEM.
    pub key_pem: String,
    pub issuer: String,
    /// Unix milliseconds.
    pub not_before: i64,
    pub not_after: i64,
}

impl std::fmt::Debug for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checked")
            .field("domains", &self.domains)
            .field("issuer", &self.issuer)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Checks a chain and its key at `now_ms`.
///
/// # Errors
/// The first problem found, with its fix.
pub fn check(chain_pem: &str, key_pem: &str, now_ms: i64) -> Result<Checked, CertError> {
    if chain_pem.len() > MAX_CERTIFICATE_PEM_BYTES {
        return Err(CertError::TooLarge("certificate chain"));
    }
    if key_pem.len() > MAX_CERTIFICATE_PEM_BYTES {
        return Err(CertError::TooLarge("private key"));
    }
    let mut ders = Vec::new();
    for block in Pem::iter_from_buffer(chain_pem.as_bytes()) {
        let block = block.map_err(|e| CertError::BadPem(e.to_string()))?;
        if block.label != "CERTIFICATE" {
            // The label only: never the block, which may be a key.
            return Err(CertError::WrongBlock(
                block.label.chars().take(40).collect(),
            ));
        }
        ders.push(block.contents);
    }
    if ders.is_empty() {
        return Err(CertError::NoCertificate);
    }
    let mut parsed = Vec::with_capacity(ders.len());
    for (i, der) in ders.iter().enumerate() {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::BadCertificate {
            index: i + 1,
            reason: e.to_string(),
        })?;
        parsed.push(cert);
    }
    for (i, pair) in parsed.windows(2).enumerate() {
        if pair[0].issuer().as_raw() != pair[1].subject().as_raw() {
            return Err(CertError::OutOfOrder { index: i + 2 });
        }
    }
    // Each certificate is signed by the next; the last, when it issued
    // itself, by its own key (an issuer left out cannot be checked here).
    for (i, cert) in parsed.iter().enumerate() {
        let issuer = match parsed.get(i + 1) {
            Some(next) => Some(next.public_key()),
            None if cert.issuer().as_raw() == cert.subject().as_raw() => None,
            None => continue,
        };
        cert.verify_signature(issuer)
            .map_err(|_| CertError::BadSignature { index: i + 1 })?;
    }
    let leaf = &parsed[0];
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| CertError::NoKey)?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|_| CertError::UnsupportedKey)?;
    let certified = rustls::sign::CertifiedKey::new(
        ders.iter()
            .map(|d| CertificateDer::from(d.clone()))
            .collect(),
        signer,
    );
    certified.keys_match().map_err(|_| CertError::KeyMismatch)?;
    let not_before = leaf.validity().not_before.timestamp().saturating_mul(1000);
    let not_after = leaf.validity().not_after.timestamp().saturating_mul(1000);
    if not_after <= now_ms {
        return Err(CertError::Expired(leaf.validity().not_after.to_string()));
    }
    let mut domains = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(n) = name {
                let n = n.to_ascii_lowercase();
                skiff_shared::sections::ingress::check_domain(&n).map_err(|e| {
                    CertError::BadName {
                        name: n.clone(),
                        reason: e.to_string(),
                    }
                })?;
                domains.push(n);
            }
        }
    }
    domains.sort();
    domains.dedup();
    if domains.is_empty() {
        return Err(CertError::NoNames);
    }
    let chain_pem = ders.iter().map(|d| pem("CERTIFICATE", d)).collect();
    let (label, bytes) = match &key {
        PrivateKeyDer::Pkcs1(k) => ("RSA PRIVATE KEY", k.secret_pkcs1_der()),
        PrivateKeyDer::Sec1(k) => ("EC PRIVATE KEY", k.secret_sec1_der()),
        PrivateKeyDer::Pkcs8(k) => ("PRIVATE KEY", k.secret_pkcs8_der()),
        _ => return Err(CertError::UnsupportedKey),
    };
    Ok(Checked {
        domains,
        chain_pem,
        key_pem: pem(label, bytes),
        issuer: leaf.issuer().to_string(),
        not_before,
        not_after,
    })
}

/// One PEM block, in 64-character lines.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
