//! TLS certificates for HTTP routes and the ACME account: the chain in
//! the clear, the private key and the account's credentials only sealed
//! (see [`crate::certs`]).

use async_trait::async_trait;

use super::{Result, StoreError};

/// Where a certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertSource {
    /// An admin uploaded it.
    Upload,
    /// The coordinator obtained it from the ACME directory.
    Acme,
}

impl CertSource {
    /// As stored, and as the API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upload => "upload",
            Self::Acme => "acme",
        }
    }

    /// From the stored text.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "upload" => Ok(Self::Upload),
            "acme" => Ok(Self::Acme),
            other => Err(StoreError::Corrupt(format!(
                "unknown certificate source {other:?}"
            ))),
        }
    }
}

/// A stored certificate, without its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRow {
    /// Random, 16 hex digits.
    pub id: String,
    /// The DNS names of its subjectAltName, lower case, sorted.
    pub domains: Vec<String>,
    /// The leaf, then any intermediates, PEM.
    pub chain_pem: String,
    /// The leaf's issuer, as a distinguished name.
    pub issuer: String,
    pub not_before: i64,
    pub not_after: i64,
    pub source: CertSource,
    pub created_at: i64,
}

/// Certificates and the ACME account, the secrets sealed.
#[async_trait]
pub trait CertStore: Send + Sync {
    /// Every certificate, oldest first.
    async fn certificates(&self) -> Result<Vec<CertRow>>;
    /// Stores a certificate with its sealed private key.
    async fn insert_certificate(&self, row: &CertRow, key_sealed: &str) -> Result<()>;
    /// A certificate's sealed private key.
    async fn sealed_certificate_key(&self, id: &str) -> Result<Option<String>>;
    /// Forgets a certificate and its key; false if there was none.
    async fn remove_certificate(&self, id: &str) -> Result<bool>;
    /// The sealed credentials of the account on an ACME directory.
    async fn acme_account(&self, directory: &str) -> Result<Option<String>>;
    /// Records (or replaces) the account on an ACME directory.
    async fn put_acme_account(&self, directory: &str, sealed: &str, now: i64) -> Result<()>;
}
