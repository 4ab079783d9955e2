//! TLS certificates for HTTP routes as the API shows them:
//! `POST /api/v1/certificates` (upload a chain and its key),
//! `GET /api/v1/certificates`, `DELETE /api/v1/certificates/{id}`,
//! `POST /api/v1/certificates/renew` (a new ACME certificate now).
//! A private key goes in once and never comes out.

use serde::{Deserialize, Serialize};

/// The largest certificate chain, and the largest private key, accepted
/// (PEM bytes each).
pub const MAX_CERTIFICATE_PEM_BYTES: usize = 64 * 1024;

/// A certificate to upload: the chain (leaf first, then any
/// intermediates) and its private key (PKCS#8, RSA or EC), PEM.
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddCertificate {
    pub chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for AddCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddCertificate")
            .field("chain_pem", &self.chain_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Where a certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CertificateSource {
    /// Uploaded by an admin.
    Upload,
    /// Obtained by the coordinator from its ACME directory.
    Acme,
    /// A source a newer coordinator sends.
    #[serde(other)]
    Other,
}

impl CertificateSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upload => "upload",
            Self::Acme => "acme",
            Self::Other => "other",
        }
    }
}

/// A stored certificate: never its key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CertificateView {
    pub id: String,
    /// The DNS names it covers (lower case, `*.` for wildcards).
    pub domains: Vec<String>,
    /// The leaf's issuer, as a distinguished name.
    pub issuer: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    pub source: CertificateSource,
    /// Whether edge hosts serve it: valid now, and the newest valid one
    /// for at least one of its domains.
    pub served: bool,
    /// When it was stored, RFC 3339.
    pub created_at: String,
}

/// A domain to get a new ACME certificate for now, valid one or not.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RenewCertificate {
    /// A route's domain; a wildcard only when the coordinator has
    /// `[acme.dns01]` (HTTP-01 cannot prove one).
    pub domain: String,
}

/// A renewal asked for: the coordinator orders the certificate from its
/// ACME directory in the background; it replaces `replaces` once issued
/// (failures show in the events).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CertificateRenewal {
    /// The domain, lower case.
    pub domain: String,
    /// The ids of the certificates that serve the domain now.
    pub replaces: Vec<String>,
}
