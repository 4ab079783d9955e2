//! The cluster's certificate authority: its key and certificate, the agent
//! endpoint's server certificate, and client certificates issued from CSRs.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

/// Errors from certificate work.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate signing request is invalid: {0}")]
    Csr(rcgen::Error),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("system random source failed")]
    Random,
    #[error("invalid subject alternative name {name:?}: {reason}")]
    San { name: String, reason: String },
    #[error(
        "certificate signing request is for another key than the node's certificate; renewal keeps the node's key"
    )]
    OtherKey,
}

/// The cluster CA.
pub struct Ca {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &hex::encode(self.fingerprint()))
            .finish()
    }
}

/// A freshly issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub serial_hex: String,
    pub not_after: SystemTime,
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = skiff_shared::random_bytes::<16>().map_err(|_| PkiError::Random)?;
    bytes[0] &= 0x7f; // keep it positive
    Ok(SerialNumber::from_slice(&bytes))
}

fn offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

impl Ca {
    /// Creates a new CA for the cluster named `cluster_id`, valid ten years.
    pub fn generate(cluster_id: &str) -> Result<(Self, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("Skiff cluster CA {cluster_id}"));
        dn.push(DnType::OrganizationName, "Skiff");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = SystemTime::now();
        params.not_before = offset(now - Duration::from_secs(3600));
        params.not_after = offset(now + Duration::from_secs(10 * 365 * 86400));
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        let ca = Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        };
        Ok((ca, key_pem))
    }

    /// Loads a CA from its certificate and key.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let der = skiff_shared::tls::certs_from_pem(cert_pem, "CA certificate")
            .map_err(|e| PkiError::San {
                name: "ca.crt".into(),
                reason: e.to_string(),
            })?
            .remove(0);
        let issuer = Issuer::from_ca_cert_der(&der, key)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            cert_der: der.to_vec(),
            issuer,
        })
    }

    /// SHA-256 of the CA certificate: what join tokens carry.
    pub fn fingerprint(&self) -> [u8; 32] {
        skiff_shared::tls::fingerprint(&self.cert_der)
    }

    /// Issues the agent endpoint's server certificate for `names` (DNS names
    /// or IP addresses). Returns the certificate and its new key, both PEM.
    pub fn issue_server(
        &self,
        names: &[String],
        ttl: Duration,
    ) -> Result<(Issued, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "skiff-coordinator");
        params.distinguished_name = dn;
        params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_, _>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let issued = self.sign(params, &key, ttl)?;
        Ok((issued, key.serialize_pem()))
    }

    /// Issues a client certificate naming `node_id` for the key in `csr_pem`.
    /// Only the CSR's public key is used; the subject comes from the coordinator.
    pub fn issue_client(
        &self,
        csr_pem: &str,
        node_id: &str,
        ttl: Duration,
    ) -> Result<Issued, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::Csr)?;
        self.issue_client_for(&csr, node_id, ttl)
    }

    /// Renews a client certificate: like [`Ca::issue_client`], but only for
    /// a CSR whose public key is `current_key` (the raw public key of the
    /// certificate the node holds, see [`cert_public_key`]). The CSR's
    /// signature is checked first, so it proves the key is held.
    pub fn renew_client(
        &self,
        csr_pem: &str,
        node_id: &str,
        ttl: Duration,
        current_key: &[u8],
    ) -> Result<Issued, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::Csr)?;
        if rcgen::PublicKeyData::der_bytes(&csr.public_key) != current_key {
            return Err(PkiError::OtherKey);
        }
        self.issue_client_for(&csr, node_id, ttl)
    }

    fn issue_client_for(
        &self,
        csr: &CertificateSigningRequestParams,
        node_id: &str,
        ttl: Duration,
    ) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        dn.push(DnType::OrganizationName, "Skiff nodes");
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params, &csr.public_key, ttl)
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        public_key: &impl rcgen::PublicKeyData,
        ttl: Duration,
    ) -> Result<Issued, PkiError> {
        let now = SystemTime::now();
        let not_after = now + ttl;
        // Allow for clocks a little behind ours, but keep most of the
        // certificate's life after issue (agents renew at half of it).
        let backdate = (ttl / 10).min(Duration::from_secs(300));
        params.not_before = offset(now - backdate);
        params.not_after = offset(not_after);
        let serial = random_serial()?;
        let serial_hex = hex::encode(serial.to_bytes());
        params.serial_number = Some(serial);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(public_key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            serial_hex,
            not_after,
        })
    }
}

/// Checks that `name` can go into a server certificate.
pub fn check_san(name: &str) -> Result<(), PkiError> {
    san(name).map(|_| ())
}

fn san(name: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
        });
    if !valid {
        return Err(PkiError::San {
            name: name.to_owned(),
            reason: "not an IP address or a DNS name".to_owned(),
        });
    }
    let dns = name
        .to_owned()
        .try_into()
        .map_err(|e: rcgen::Error| PkiError::San {
            name: name.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(SanType::DnsName(dns))
}

/// The raw public key (the subjectPublicKey bits) of a certificate, as
/// [`Ca::renew_client`] compares it.
pub fn cert_public_key(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.public_key().subject_public_key.data.to_vec())
}

/// Reads the common name and expiry of a certificate.
pub fn cert_subject(der: &[u8]) -> Option<(String, SystemTime)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some((cn, SystemTime::UNIX_EPOCH + Duration::from_secs(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_client_cert_naming_node_from_csr_key() {
        let (ca, key_pem) = Ca::generate("c1").unwrap();
        let ca = Ca::load(&ca.cert_pem, &key_pem).unwrap();
        let agent_key = KeyPair::generate().unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&agent_key)
            .unwrap();
        let issued = ca
            .issue_client(&csr.pem().unwrap(), "n-abc", Duration::from_secs(60))
            .unwrap();
        let der = skiff_shared::tls::certs_from_pem(&issued.cert_pem, "t")
            .unwrap()
            .remove(0);
        let (cn, not_after) = cert_subject(&der).unwrap();
        assert_eq!(cn, "n-abc");
        assert!(not_after > SystemTime::now());
        assert!(
            ca.issue_client("garbage", "n", Duration::from_secs(1))
                .is_err()
        );
    }

    #[test]
    fn renewal_is_only_for_the_key_of_the_current_certificate() {
        let (ca, _) = Ca::generate("c1").unwrap();
        let csr_of = |key: &KeyPair| {
            CertificateParams::default()
                .serialize_request(key)
                .unwrap()
                .pem()
                .unwrap()
        };
        let node_key = KeyPair::generate().unwrap();
        let issued = ca
            .issue_client(&csr_of(&node_key), "n-1", Duration::from_secs(60))
            .unwrap();
        let der = skiff_shared::tls::certs_from_pem(&issued.cert_pem, "t")
            .unwrap()
            .remove(0);
        let current = cert_public_key(&der).unwrap();

        let renewed = ca
            .renew_client(&csr_of(&node_key), "n-1", Duration::from_secs(60), &current)
            .unwrap();
        let der = skiff_shared::tls::certs_from_pem(&renewed.cert_pem, "t")
            .unwrap()
            .remove(0);
        assert_eq!(cert_public_key(&der).unwrap(), current, "same key");

        let other = KeyPair::generate().unwrap();
        assert!(matches!(
            ca.renew_client(&csr_of(&other), "n-1", Duration::from_secs(60), &current),
            Err(PkiError::OtherKey)
        ));
        assert!(matches!(
            ca.renew_client("garbage", "n-1", Duration::from_secs(60), &current),
            Err(PkiError::Csr(_))
        ));
    }

    #[test]
    fn server_cert_takes_ips_and_names_and_refuses_junk() {
        let (ca, _) = Ca::generate("c1").unwrap();
        let names = vec![
            "127.0.0.1".to_owned(),
            "coord.example".to_owned(),
            "::1".to_owned(),
        ];
        assert!(ca.issue_server(&names, Duration::from_secs(60)).is_ok());
        assert!(
            ca.issue_server(&["bad name!".to_owned()], Duration::from_secs(60))
                .is_err()
        );
    }
}
