//! Certificate renewal over the link, for one connection: a renewal is
//! issued only for the key of the certificate the agent connected with,
//! and at a bounded rate. Refusals are counted; after
//! [`MAX_REFUSED_RENEWALS`] on one connection the link is closed.
//!
//! Agents renew at about half their certificate's life, so a legitimate
//! agent asks once per connection or a few times over a long one, always
//! for its own key, and never meets these limits.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::pki::{Ca, Issued, PkiError};

/// Refused renewal requests one connection may send before it is closed.
pub const MAX_REFUSED_RENEWALS: u32 = 3;
/// Renewals issued on one connection within [`Renewals::window`].
const RENEWALS_PER_WINDOW: usize = 3;

/// What to do with one renewal request.
#[derive(Debug)]
pub enum Decision {
    /// Issue this certificate.
    Issue(Issued),
    /// Refuse it, for this reason (sent back to the agent and logged).
    Refuse(String),
    /// Refuse it and close the link, for this reason.
    Close(String),
}

/// The renewal state of one connection.
#[derive(Debug)]
pub struct Renewals {
    /// The raw public key of the certificate the agent connected with.
    key: Vec<u8>,
    /// A quarter of the certificate lifetime: at most
    /// [`RENEWALS_PER_WINDOW`] renewals are issued in any such window.
    window: Duration,
    issued: VecDeque<Instant>,
    refused: u32,
}

impl Renewals {
    /// The state of a connection whose client certificate holds `key`, on
    /// a coordinator issuing certificates for `cert_ttl`.
    pub fn new(key: Vec<u8>, cert_ttl: Duration) -> Self {
        Self {
            key,
            window: cert_ttl / 4,
            issued: VecDeque::new(),
            refused: 0,
        }
    }

    /// Decides on one request at `now`: checks the rate, then the CSR
    /// (its signature, then that its key is the connection's), and only
    /// then signs.
    pub fn decide(
        &mut self,
        ca: &Ca,
        node_id: &str,
        csr_pem: &str,
        cert_ttl: Duration,
        now: Instant,
    ) -> Decision {
        while self
            .issued
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            self.issued.pop_front();
        }
        let outcome = if self.issued.len() >= RENEWALS_PER_WINDOW {
            Err(format!(
                "renewing too often: {RENEWALS_PER_WINDOW} certificates were issued on this link within {:?}",
                self.window
            ))
        } else {
            ca.renew_client(csr_pem, node_id, cert_ttl, &self.key)
                .map_err(|e| match e {
                    PkiError::OtherKey | PkiError::Csr(_) => e.to_string(),
                    other => format!("the certificate could not be issued: {other}"),
                })
        };
        match outcome {
            Ok(issued) => {
                self.issued.push_back(now);
                Decision::Issue(issued)
            }
            Err(why) => {
                self.refused += 1;
                if self.refused >= MAX_REFUSED_RENEWALS {
                    Decision::Close(format!(
                        "{} renewal requests refused on this link, the last: {why}",
                        self.refused
                    ))
                } else {
                    Decision::Refuse(why)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    const TTL: Duration = Duration::from_secs(3600);

    fn csr_of(key: &KeyPair) -> String {
        CertificateParams::default()
            .serialize_request(key)
            .unwrap()
            .pem()
            .unwrap()
    }

    fn setup() -> (Ca, KeyPair, Renewals) {
        let (ca, _) = Ca::generate("c1").unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = ca.issue_client(&csr_of(&key), "n-1", TTL).unwrap();
        let der = skiff_shared::tls::certs_from_pem(&cert.cert_pem, "t")
            .unwrap()
            .remove(0);
        let current = crate::pki::cert_public_key(&der).unwrap();
        (ca, key, Renewals::new(current, TTL))
    }

    #[test]
    fn another_key_is_refused_and_enough_refusals_close_the_link() {
        let (ca, key, mut r) = setup();
        let now = Instant::now();
        let other = csr_of(&KeyPair::generate().unwrap());
        for _ in 1..MAX_REFUSED_RENEWALS {
            match r.decide(&ca, "n-1", &other, TTL, now) {
                Decision::Refuse(why) => assert!(why.contains("another key"), "{why}"),
                d => panic!("{d:?}"),
            }
        }
        // The node's own key still renews between refusals.
        assert!(matches!(
            r.decide(&ca, "n-1", &csr_of(&key), TTL, now),
            Decision::Issue(_)
        ));
        match r.decide(&ca, "n-1", "garbage", TTL, now) {
            Decision::Close(why) => assert!(why.contains("3 renewal requests refused"), "{why}"),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn renewals_for_the_own_key_are_rate_limited() {
        let (ca, key, mut r) = setup();
        let start = Instant::now();
        let csr = csr_of(&key);
        for _ in 0..RENEWALS_PER_WINDOW {
            assert!(matches!(
                r.decide(&ca, "n-1", &csr, TTL, start),
                Decision::Issue(_)
            ));
        }
        match r.decide(&ca, "n-1", &csr, TTL, start + Duration::from_secs(1)) {
            Decision::Refuse(why) => assert!(why.contains("too often"), "{why}"),
            d => panic!("{d:?}"),
        }
        // A window later there is room again.
        assert!(matches!(
            r.decide(&ca, "n-1", &csr, TTL, start + TTL / 4),
            Decision::Issue(_)
        ));
    }
}
